"""Method registry: every compression method registers a name, its hyperparameters and a compressor.

A method is a class with a `Params` dataclass (its hyperparameters, `retention` first,
defaults = the configuration of the paper's comparison) and `__call__(VideoTokens) ->
CompressedTokens`. `build_compressor(name, **hparams)` validates names and values
before any model work starts.
"""
from __future__ import annotations

import dataclasses
import importlib
import math
from importlib.metadata import entry_points
from typing import Any, Callable

import torch

from .contract import CompressedTokens, VideoTokens

_REGISTRY: dict[str, type] = {}
# Modules whose import registers the built-in methods; third parties use the
# `ottvid.methods` entry-point group.
_BUILTIN_MODULES = ("ottvid.vanilla", "ottvid.method", "baselines")
_loaded = False


def register(name: str) -> Callable[[type], type]:
    """Class decorator: register a compressor class under `name`."""

    def deco(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method {name!r} is already registered by {_REGISTRY[name].__module__}")
        if not dataclasses.is_dataclass(getattr(cls, "Params", None)):
            raise TypeError(f"{cls.__name__} must define a dataclass `Params`")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)
    for ep in entry_points(group="ottvid.methods"):
        ep.load()


def list_methods() -> list[str]:
    """Names of every registered method."""
    _load_all()
    return sorted(_REGISTRY)


def method_params(name: str) -> dict[str, Any]:
    """Default hyperparameters of a method (the paper's configuration)."""
    cls = _lookup(name)
    return {f.name: _default(f) for f in dataclasses.fields(cls.Params)}


def build_compressor(name: str, **hparams: Any) -> "Compressor":
    """Build a compressor; unknown names or bad values raise ValueError naming them."""
    cls = _lookup(name)
    allowed = [f.name for f in dataclasses.fields(cls.Params)]
    unknown = sorted(set(hparams) - set(allowed))
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {unknown} for method {name!r}; allowed: {allowed}")
    return cls(cls.Params(**hparams))


def _lookup(name: str) -> type:
    _load_all()
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


class Compressor:
    """Base class of registered methods: holds validated `params`, maps VideoTokens to CompressedTokens."""

    name: str = ""
    Params: type

    def __init__(self, params: Any) -> None:
        self.params = params

    def __call__(self, video: VideoTokens) -> CompressedTokens:
        if not isinstance(video, VideoTokens):
            raise ValueError(f"video: expected VideoTokens, got {type(video).__name__}")
        with torch.no_grad():  # training-free: no method builds a graph (in-place buffers need it off)
            return self.compress(video)

    def compress(self, video: VideoTokens) -> CompressedTokens:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params})"


# ---- shared validators used by every method's Params.__post_init__ ----------

def check_retention(r: Any) -> float:
    """r must be a number in (0, 1]."""
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not (0.0 < float(r) <= 1.0):
        raise ValueError(f"retention: must be a number in (0, 1], got {r!r}")
    return float(r)


def check_range(name: str, v: Any, lo: float, hi: float, *, lo_open: bool = False,
                hi_open: bool = False, allow_inf: bool = False) -> float:
    """v must lie in the interval [lo, hi] (open ends as flagged), or be +inf if allowed."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(float(v)):
        raise ValueError(f"{name}: must be a number, got {v!r}")
    v = float(v)
    if allow_inf and v == math.inf:
        return v
    ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
        extra = " or inf" if allow_inf else ""
        raise ValueError(f"{name}: must be in {lb}{lo}, {hi}{rb}{extra}, got {v!r}")
    return v


def check_int(name: str, v: Any, lo: int) -> int:
    """v must be an integer >= lo."""
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name}: must be an integer >= {lo}, got {v!r}")
    return v


def check_choice(name: str, v: Any, choices: tuple) -> Any:
    """v must be one of `choices`."""
    if v not in choices:
        raise ValueError(f"{name}: must be one of {list(choices)}, got {v!r}")
    return v
