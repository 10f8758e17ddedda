"""Runners: Hydra entry points, the lmms-eval model plugin, the result store."""
