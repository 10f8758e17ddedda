"""The sequential CPU loops (greedy coverage, Sinkhorn) run in the TorchScript interpreter.

Those loops are hundreds of small kernels one after another. On CPU, the Python interpreter
between two kernels costs about as much as the kernels, and TorchScript's interpreter costs
less. `run(fn, *args)` calls `torch.jit.script(fn)` on CPU inputs, with graph optimisation
off (`torch.jit.optimized_execution(False)`): no fusion, no shape specialisation, the same ATen
calls in the same order as the Python function, hence the same bits (checked in the tests).
CUDA inputs take the Python function: their cost is launches, not the interpreter, and that
path stays the one the official code runs.

`torch.jit.script` is deprecated upstream (torch.compile, its successor, generates its own kernels
and would change the bits); where it is missing or fails to compile a function, `run` falls back
to the Python function, with the same result. OTTVID_EAGER=1 forces the fallback.

`run_each(fn, calls)` runs independent calls (one frame each) side by side: a TorchScript call
releases the GIL, so a pool of `torch.get_num_threads()` worker threads keeps every core busy
with the small, single-threaded kernels of one loop each. Each worker runs its kernels on one
intra-op thread: an OpenMP region entered from a second thread would start a second team that
competes with the main one for the rest of the process (2.4x slower batched greedy afterwards,
measured), and the kernels give the same bits on one thread (tested).
"""
from __future__ import annotations

import functools
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

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


@functools.cache
def _pool(workers: int, pid: int) -> ThreadPoolExecutor:
    """Worker threads with one intra-op thread each (`pid`: a forked child makes its own)."""
    return ThreadPoolExecutor(workers, thread_name_prefix="ottvid", initializer=torch.set_num_threads, initargs=(1,))


def run_each(fn: Callable, calls: Sequence[tuple]) -> list:
    """[run(fn, *args) for args in calls], the calls spread over worker threads where that helps:
    CPU inputs, more than one call and one thread, and `fn` compiled (Python holds the GIL)."""
    threads = torch.get_num_threads()
    if len(calls) < 2 or threads < 2 or _compiled(fn, calls[0][0]) is None:
        return [run(fn, *args) for args in calls]
    try:
        return list(_pool(min(threads, len(calls)), os.getpid()).map(lambda args: run(fn, *args), calls))
    finally:   # a worker's first set_num_threads(1) also set the default that new threads start from
        torch.set_num_threads(threads)
