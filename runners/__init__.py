"""Runners: Hydra entry points (evaluate one cell, sweep an experiment, aggregate tables), the
lmms-eval model plugin, the result store. Data path: config -> Cell -> lmms-eval -> cell JSON -> table."""
