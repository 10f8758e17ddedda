"""Hydra entry points (evaluate one cell, sweep an experiment, aggregate tables), the result
store and the lmms-eval glue. Data path: config -> Cell -> lmms-eval -> cell JSON -> table."""
