"""Synthetic twins of the six benchmarks: small real mp4 videos plus annotations in each
benchmark's own schema, scored by lmms-eval's metric code for the real task."""
from .paths import BENCHMARKS, DATA_ROOT, TASK_NAMES

__all__ = ["BENCHMARKS", "DATA_ROOT", "TASK_NAMES"]
