"""The sequential CPU loop of Sinkhorn runs in the TorchScript interpreter.

That loop is hundreds of small kernels one after another. On CPU, the Python interpreter
between two kernels costs about as much as the kernels, and TorchScript's interpreter costs
less. `run(fn, *args)` calls `torch.jit.script(fn)` on CPU inputs, with graph optimisation
off (`torch.jit.optimized_execution(False)`): no fusion, no shape specialisation, the same ATen
calls in the same order as the Python function, hence the same bits (checked in the tests).
CUDA inputs take the Python function: their cost is launches, not the interpreter, and that
path stays the one the official code runs.

`torch.jit.script` is deprecated upstream (torch.compile, its successor, generates its own kernels
and would change the bits); where it is missing or fails to compile a function, `run` falls back
to the Python function, with the same result. OTTVID_EAGER=1 forces the fallback.
"""
from __future__ import annotations

import functools
import os
import warnings
from typing import Callable

import torch


@functools.cache
def scripted(fn: Callable) -> Callable | None:
    """fn compiled by TorchScript, or None where it cannot be."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)   # the deprecation notice, once per function
            return torch.jit.script(fn)
    except Exception as e:  # noqa: BLE001 (any failure means: run the Python function)
        warnings.warn(f"TorchScript could not compile {fn.__qualname__} ({type(e).__name__}); running it in Python")
        return None


def _compiled(fn: Callable, first: torch.Tensor) -> Callable | None:
    """The TorchScript fn that `run` calls for this first argument (a CPU tensor, OTTVID_EAGER
    unset), or None: then `run` calls the Python fn."""
    if first.device.type == "cpu" and os.environ.get("OTTVID_EAGER") != "1":
        return scripted(fn)
    return None


def run(fn: Callable, *args):
    """fn(*args); in TorchScript, graph optimisation off, when the first argument is a CPU tensor."""
    compiled = _compiled(fn, args[0])
    if compiled is not None:
        with torch.jit.optimized_execution(False):
            return compiled(*args)
    return fn(*args)
