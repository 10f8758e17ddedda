"""lmms-eval's Python API for one cell: task manager, the plugin model, per-sample scores.

Models and task indexes are cached per process, so a sweep in one process (the sweep runner,
Hydra's basic launcher) loads each (backbone, method config) once and reuses it across
benchmarks; each cell reads only the `sample_stats` entries its own evaluation appended.
"""
from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path
from typing import Any

from . import preflight
from .cell import Cell
from .lmms_prompts import prompt_model
from .scoring import sample_scores, score_from_samples
from .store import REPO_ROOT

TASKS_DIR = REPO_ROOT / "tasks"
_TASK_MANAGERS: dict[tuple[bool, str | None], Any] = {}
_MODELS: dict[str, Any] = {}
_TINY: dict[str, str] = {}
_SHARDS_READY = False  # the synthetic shards were generated (checked) in this process


def task_manager(include_defaults: bool, model_name: str | None = None):
    """lmms-eval TaskManager with `tasks/` on the include path (built-in index only if needed) whose
    tasks are built for lmms-eval model `model_name` (its model-specific prompts; runners/lmms_prompts.py).
    One task index per `include_defaults`, shared by the managers of every model name."""
    key = (include_defaults, model_name)
    if key not in _TASK_MANAGERS:
        base = _TASK_MANAGERS.get((include_defaults, None))
        if base is None:
            preflight.hf_home()  # before any task util reads HF_HOME
            from lmms_eval.tasks import TaskManager

            base = _TASK_MANAGERS[(include_defaults, None)] = TaskManager(
                include_path=str(TASKS_DIR), include_defaults=include_defaults, verbosity="WARNING")
        tm = copy.copy(base)  # same index; `model_name` is what its tasks are constructed with
        tm.model_name = model_name
        _TASK_MANAGERS[key] = tm
    return _TASK_MANAGERS[key]


def pretrained_path(cell: Cell) -> str:
    """The checkpoint to load: the configured one, or the offline tiny build for tiny backbones."""
    b = cell.backbone
    if b.get("pretrained"):
        return str(b["pretrained"])
    fam = b["family"]
    if fam not in _TINY:
        from ottvid.backbones.tiny import build_tiny

        _TINY[fam] = str(build_tiny(fam, REPO_ROOT / "cache" / "tiny" / fam))
    return _TINY[fam]


def load_model(cell: Cell):
    """The lmms-eval plugin instance for this cell. The checkpoint is loaded once per load setting
    (checkpoint, device, dtype, protocol); a new method or hyperparameters only switch the compressor."""
    from lmms_eval.models import get_model

    from .lmms_models import split_model_args

    args = cell.model_args(pretrained_path(cell))
    method, hparams = split_model_args(args)
    load_args = {k: v for k, v in args.items() if k != "method" and k not in hparams}
    key = repr(sorted(load_args.items()))
    if key not in _MODELS:
        _MODELS.clear()  # keep one model resident
        cls = get_model(cell.backbone["model"])
        _MODELS[key] = cls(**args, batch_size=cell.batch_size)
    lm = _MODELS[key]
    lm.configure(method, **hparams)
    return lm


def evaluate(cell: Cell, lm=None) -> dict | None:
    """Run lmms-eval on the cell's task; return metrics, per-sample scores and stats (None on a
    data-parallel rank other than 0, which only answers its share of the samples). `lm`: the model to
    drive (default: the plugin for this cell; a shared sweep passes its `CellView`)."""
    from lmms_eval.evaluator import simple_evaluate

    global _SHARDS_READY
    if cell.benchmark.get("synthetic") and not _SHARDS_READY:
        from tasks.synthetic.generate import generate

        generate()  # idempotent; seconds on first use
        _SHARDS_READY = True
    tm = task_manager(bool(cell.benchmark.get("include_defaults", True)), prompt_model(cell.backbone))
    preflight.check({cell.benchmark["name"]: cell.benchmark["task"]}, tm)
    t0 = time.time()
    lm = lm if lm is not None else load_model(cell)
    t_load = time.time() - t0
    stats = getattr(lm, "sample_stats", None)
    n_before = len(stats) if isinstance(stats, list) else 0
    fails = getattr(lm, "sample_failures", None)
    f_before = len(fails) if isinstance(fails, list) else 0
    t1 = time.time()
    res = simple_evaluate(model=lm, tasks=[cell.benchmark["task"]], task_manager=tm, limit=cell.limit,
                          log_samples=True, batch_size=cell.batch_size, bootstrap_iters=0,
                          random_seed=cell.seed, numpy_random_seed=1234 + cell.seed,
                          torch_random_seed=1234 + cell.seed, fewshot_random_seed=1234 + cell.seed,
                          verbosity="WARNING", distributed_executor_backend="torchrun")
    t_eval = time.time() - t1
    from . import dist

    # data parallel: every rank answered its share; rank 0 scores and keeps every rank's records
    sharing = lm.sharing() if hasattr(lm, "sharing") else None  # a shared sweep's decode / vision counts
    mine = (list(stats[n_before:]) if isinstance(stats, list) else [],
            list(fails[f_before:]) if isinstance(fails, list) else [], sharing)
    parts = dist.gather(mine)
    if not dist.is_main():
        return None
    if res is None:
        raise RuntimeError("lmms-eval returned no results")
    per_sample, failed = _merge_ranks([p[0] for p in parts]), _merge_ranks([p[1] for p in parts])
    if sharing is not None:  # summed over ranks: each rank encoded its own share of the samples
        sharing = {**sharing, **{k: sum(p[2][k] for p in parts) for k in sharing if isinstance(sharing[k], int)
                                 and k != "cells"}}
    metric = cell.benchmark["metric"]
    results = res.get("results", {})
    samples = res.get("samples", {})
    task = cell.benchmark["task"]
    # a group task (MVBench: 20 subtasks) logs samples per subtask
    subtasks = [t for t in samples if t != task] if task not in samples else [task]
    for f in failed:
        f["id"] = f"{'' if f['task'] == task else f['task'] + '/'}{f['doc_id']}"
    scores, groups, responses = {}, {}, {}
    for t in sorted(subtasks):
        prefix = "" if t == task else f"{t}/"
        sc, gr = sample_scores(samples[t], metric, prefix)
        if t != task and not gr:  # a group's score is the mean of its subtasks' (MVBench): group by subtask
            gr = {d: t for d in sc}
        scores.update(sc)
        groups.update(gr)
        for s in samples[t]:
            r = s.get("filtered_resps") or s.get("resps")
            responses[f"{prefix}{s['doc_id']}"] = r[0] if isinstance(r, list) and r else r
    value = _headline(results, task, subtasks, metric)
    score = None if value is None else value * float(cell.benchmark.get("scale", 1.0))
    if failed:  # a failed sample counts as wrong, whatever the task's extractor makes of its empty answer
        for f in failed:
            scores[f["id"]] = 0.0
            if groups:
                groups.setdefault(f["id"], f["task"])
        score = score_from_samples(scores, groups or None)
    return {
        "metrics": {t: {k: v for k, v in m.items() if _is_number(v)} for t, m in results.items()},
        "metric": metric,
        "metric_value": value,
        "score": score,    # = lmms-eval's score (x scale), except that failed samples count as wrong
        "n": len(scores),
        "n_samples": len(responses),
        "failed_samples": failed,
        "n_failed": len(failed),
        "per_sample": {"scores": scores, "groups": groups or None, "responses": responses},
        "sample_stats": per_sample,
        "stats_summary": summarize_stats(per_sample),
        "timing": {"model_load_s": t_load, "evaluate_s": t_eval},
        **({"shared_encoding": sharing} if sharing is not None else {}),
        "lmms_eval_config": res.get("config", {}),
    }


def _merge_ranks(parts: list[list[dict]]) -> list[dict]:
    """Per-sample records of every rank in one rank-independent order (task, doc id); a doc that
    lmms-eval duplicated to pad a rank's share counts once."""
    seen: dict[tuple[str, str], dict] = {}
    for rows in parts:
        for r in rows:
            seen.setdefault((str(r.get("task")), str(r.get("doc_id"))), r)
    return [seen[k] for k in sorted(seen, key=lambda k: (k[0], k[1].zfill(12)))]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _headline(results: dict, task: str, subtasks: list[str], metric: str) -> float | None:
    """The benchmark score lmms-eval reports; for a group without its own aggregate, the mean of
    its subtasks' scores (MVBench: 20 equal-size subtasks)."""
    for t in (task,):
        for k, v in results.get(t, {}).items():
            if k.split(",")[0] == metric and _is_number(v):
                return float(v)
    vals = [float(v) for t in subtasks for k, v in results.get(t, {}).items()
            if k.split(",")[0] == metric and _is_number(v)]
    return sum(vals) / len(vals) if vals else None


STAT_FIELDS = ("tokens_in", "tokens_out", "decode_ms", "vision_ms", "compress_ms", "prefill_ms", "ttft_ms", "peak_mem_gb",
               "prefill_tokens", "tflops")


def summarize_stats(rows: list[dict]) -> dict:
    """Mean / median / max of each timing and token field over samples; achieved retention."""
    out: dict[str, Any] = {"samples": len(rows)}
    for f in STAT_FIELDS:
        vals = [float(r[f]) for r in rows if _is_number(r.get(f))]
        if vals:
            out[f] = {"mean": statistics.fmean(vals), "median": statistics.median(vals), "max": max(vals),
                      "sum": sum(vals)}
    tin = out.get("tokens_in", {}).get("sum")
    tout = out.get("tokens_out", {}).get("sum")
    if tin:
        out["achieved_retention"] = tout / tin if tout is not None else None
    return out


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "transformers", "lmms-eval", "hydra-core", "ottvid-harness", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    import platform

    out["python"] = platform.python_version()
    return out


def git_sha() -> dict:
    import subprocess

    def run(*a):
        try:
            return subprocess.run(["git", *a], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    return {"sha": run("rev-parse", "HEAD") or None, "dirty": bool(run("status", "--porcelain", "--untracked-files=no"))}
