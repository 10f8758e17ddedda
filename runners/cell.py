"""A cell = (backbone, method + hyperparameters, benchmark): resolution, validation, identity.

`resolve_cell(cfg)` turns a composed Hydra config into a plain `Cell`, validating every value
with the method registry (`ottvid.build_compressor`) before anything is loaded, so a typo or an
out-of-range value fails in milliseconds with a message naming it and the valid choices.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

import ottvid
from ottvid.registry import check_retention

from .lmms_prompts import prompt_model

# Top-level config keys that are not method hyperparameters.
BASE_KEYS = {"retention", "seed", "limit", "batch_size", "force", "dry_run", "results_dir", "experiment_name",
             "progress", "share_encoding", "slurm", "wandb", "backbone", "method", "benchmark", "grid", "launcher", "fail_fast", "hydra",
             "tables_dir"}


# Keys of the backbone / benchmark groups the harness reads; any other key would change nothing.
BACKBONE_KEYS = {"name", "family", "model", "pretrained", "tiny", "device", "dtype", "max_frames_num", "fps", "vtg",
                 "fastvid_variant", "ottvid_variant", "prompt_model", "model_args"}
BENCHMARK_KEYS = {"name", "task", "metric", "scale", "family", "column", "synthetic", "include_defaults", "model_args"}


class CellError(ValueError):
    """An invalid cell (bad override); raised before any model work."""


@dataclass(frozen=True)
class Cell:
    backbone: dict
    method: str
    hparams: dict            # every hyperparameter of the method, registry defaults filled in
    benchmark: dict
    seed: int = 0
    limit: int | None = None
    batch_size: int = 1
    experiment: str = "adhoc"
    model_args_extra: dict = field(default_factory=dict)
    # False: every stage of every sample is measured in this cell alone (Table 4's latencies), so the
    # cell never reuses a result computed with shared encoding (its identity says so)
    share_encoding: bool = True

    # -- identity -------------------------------------------------------------------------
    def identity(self) -> dict:
        """What determines the result (and so the file name): not the experiment tag."""
        b = self.backbone
        return {
            "backbone": {k: b.get(k) for k in ("name", "model", "pretrained", "max_frames_num", "fps", "dtype")},
            "prompt_model": prompt_model(b),   # lmms-eval model name the task prompts are built for
            "method": self.method,
            "hparams": {k: _canon(v) for k, v in sorted(self.hparams.items())},
            "task": self.benchmark["task"],
            "model_args_extra": {k: _canon(v) for k, v in sorted(self.model_args_extra.items())},
            "seed": self.seed,
            "limit": self.limit,
            **({} if self.share_encoding else {"timing": "per_cell"}),
        }

    @property
    def key(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def retention(self) -> float:
        return float(self.hparams.get("retention", 1.0))

    @property
    def label(self) -> str:
        extra = ",".join(f"{k}={_fmt(v)}" for k, v in sorted(self.hparams.items())
                         if k != "retention" and v != self.defaults().get(k))
        return (f"{self.backbone['name']}/{self.method}@{_fmt(self.retention)}"
                f"{'[' + extra + ']' if extra else ''}/{self.benchmark['name']}")

    def filename(self) -> str:
        return f"{self.benchmark['name']}__{self.backbone['name']}__{self.method}__r{_fmt(self.retention)}__{self.key}.json"

    def defaults(self) -> dict:
        return ottvid.method_params(self.method)

    def model_args(self, pretrained: str | None = None) -> dict:
        """`model_args` of the lmms-eval plugin (keys fixed by the adapters' interface)."""
        b = self.backbone
        args = {"pretrained": pretrained or b["pretrained"], "method": self.method, **self.hparams,
                "max_frames_num": b["max_frames_num"], "device": b["device"], "dtype": b["dtype"], "seed": self.seed}
        if b.get("fps") is not None:
            args["fps"] = b["fps"]
        args["prompt_model"] = prompt_model(b) or "none"
        args.update(self.model_args_extra)
        return args

    def as_dict(self) -> dict:
        d = asdict(self)
        d["key"] = self.key
        d["label"] = self.label
        return d


def _canon(v: Any) -> Any:
    if isinstance(v, float):
        if math.isinf(v):
            return "inf"
        return round(v, 10)
    return v


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:g}"
    return str(v)


def _choices(msg: str, choices) -> str:
    return f"{msg}; choices: {', '.join(map(str, choices))}"


def resolve_cell(cfg: DictConfig) -> Cell:
    """Validate a composed config and return its cell. Raises CellError naming the bad value."""
    c = OmegaConf.to_container(cfg, resolve=True)
    methods = ottvid.list_methods()
    method = (c.get("method") or {}).get("name")
    if method not in methods:
        raise CellError(_choices(f"unknown method {method!r}", methods))
    hp_names = list(ottvid.method_params(method))
    _reject_no_ops(c, method, hp_names)
    unknown = sorted(k for k in c if k not in BASE_KEYS and k not in hp_names)
    if unknown:
        raise CellError(_choices(f"unknown hyperparameter(s) {unknown} for method {method!r}", hp_names))
    try:  # the shared top-level key, checked by the registry's rule even for vanilla (which ignores it)
        r = check_retention(c.get("retention"))
    except ValueError as e:
        raise CellError(str(e)) from None
    hparams = {k: c[k] for k in hp_names if k in c and k != "retention"}
    if "retention" in hp_names:
        hparams["retention"] = 1.0 if method == "vanilla" else r
    # drop nulls so that the registry's default (e.g. "derived from retention") applies
    given = {k: v for k, v in hparams.items() if v is not None}
    try:
        compressor = ottvid.build_compressor(method, **given)
    except (ValueError, TypeError) as e:
        raise CellError(f"method {method!r}: {e}") from e
    resolved = _params_dict(compressor, hp_names, given)

    bk, bm = c.get("backbone") or {}, c.get("benchmark") or {}
    for need in ("name", "model", "family", "max_frames_num", "device", "dtype"):
        if need not in bk:
            raise CellError(f"backbone config lacks {need!r}")
    for need in ("name", "task", "metric", "family", "column"):
        if need not in bm:
            raise CellError(f"benchmark config lacks {need!r}")
    if bm["family"] == "vtg" and not bk.get("vtg", False):
        raise CellError(f"benchmark {bm['name']!r} is temporal grounding, which backbone {bk['name']!r} does not "
                        f"support (PROTOCOL.md: VTG on Qwen2.5-VL only)")
    try:
        prompt_model(bk)
    except ValueError as e:
        raise CellError(str(e)) from None
    if not bk.get("tiny") and not bk.get("pretrained"):
        raise CellError(f"backbone {bk['name']!r}: `pretrained` is required for a non-tiny backbone")
    limit = c.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise CellError(f"limit: must be a positive integer or null, got {limit!r}")
    return Cell(backbone=bk, method=method, hparams=resolved, benchmark=bm, seed=int(c.get("seed", 0)),
                limit=limit, batch_size=int(c.get("batch_size", 1)), experiment=str(c.get("experiment_name", "adhoc")),
                model_args_extra={**(bk.get("model_args") or {}), **(bm.get("model_args") or {})},
                share_encoding=bool(c.get("share_encoding", True)))


def _reject_no_ops(c: dict, method: str, hp_names: list[str]) -> None:
    """A key the harness never reads (e.g. `+method.gamma=0.5`, which leaves gamma at its default)
    is an error naming the spelling that does what was meant."""
    for k, v in (c.get("method") or {}).items():
        if k == "name":
            continue
        if k in hp_names:
            raise CellError(f"method.{k}={v} changes nothing: hyperparameters are top-level keys; write {k}={v}")
        raise CellError(_choices(f"method.{k}={v} changes nothing: the method group only takes `name`, and {k!r} "
                                 f"is not a hyperparameter of {method!r}", hp_names))
    for group, allowed in (("backbone", BACKBONE_KEYS), ("benchmark", BENCHMARK_KEYS)):
        extra = sorted(set(c.get(group) or {}) - allowed)
        if extra:
            k = extra[0]
            hint = f"; a hyperparameter is a top-level key ({k}=...)" if k in hp_names else \
                f"; extra plugin arguments go under {group}.model_args.{k}"
            raise CellError(_choices(f"{group}.{k} changes nothing: the harness reads only these {group} keys"
                                     + hint, sorted(allowed)))


def _params_dict(compressor: Any, names: list[str], given: dict) -> dict:
    """The validated hyperparameters as the method will use them (defaults filled in)."""
    params = getattr(compressor, "params", None)
    out = {}
    for k in names:
        v = getattr(params, k, given.get(k))
        out[k] = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
    return out


def cell_path(cell: Cell, runs_dir: Path) -> Path:
    return Path(runs_dir) / cell.filename()
