"""Evaluate one cell end to end and store it: skip if done, claim, evaluate, write, log.

A failing cell is written with status `failed`, its error and traceback (a `sys.exit` inside
lmms-eval or a task util included), and the caller goes on with the next cell. A cell where
only some samples failed is `incomplete`: every failed sample is listed (doc id, video path,
error) and counts as wrong. Only `done` cells are skipped on rerun; `force=True` re-runs them.
"""
from __future__ import annotations

import datetime as dt
import time
import traceback
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from . import store
from .cell import Cell, cell_path, resolve_cell


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def try_claim(cell: Cell, runs_dir: Path, force: bool) -> tuple[str | None, store.Claim]:
    """(outcome, claim) for a cell about to run: outcome `skipped` (already done), `busy` (another process
    holds it) or None with the claim held. Called on rank 0 only."""
    path = cell_path(cell, runs_dir)
    claim = store.Claim(path)
    if not force and store.is_done(path):
        return "skipped", claim
    if not claim.acquire():
        return "busy", claim
    if not force and store.is_done(path):  # finished by another sweep while we were getting here
        claim.release()
        return "skipped", claim
    return None, claim


def new_record(cell: Cell, config: dict | None, status: str = "running") -> dict:
    """The fields every cell JSON starts with."""
    from . import lmms_glue

    return {"cell": cell.as_dict(), "status": status, "error": None, "started": now(), "experiment": cell.experiment,
            "config": config, "versions": lmms_glue.versions(), "git": lmms_glue.git_sha()}


def run_cell(cell: Cell, runs_dir: Path, *, force: bool = False, wandb_cfg: dict | None = None,
             wandb_group: str | None = None, config: dict | None = None, lm=None,
             claim: store.Claim | None = None) -> tuple[str, dict | None]:
    """Returns (outcome, record): outcome in done | incomplete | failed | skipped | busy (| worker on a
    data-parallel rank other than 0, which answers its share of the samples; rank 0 claims and writes).
    `lm`: the model lmms-eval drives (default: the plugin for this cell; a shared sweep passes a view);
    `claim`: a claim on the cell already held by the caller (a shared sweep claims its group up front)."""
    from . import dist

    path = cell_path(cell, runs_dir)
    outcome = None
    if claim is None:
        outcome, claim = try_claim(cell, runs_dir, force) if dist.is_main() else (None, store.Claim(path))
        outcome = dist.broadcast(outcome)  # every rank runs the cell, or none does
    if outcome is not None:
        return outcome, store.read(path) if outcome == "skipped" else None
    from . import lmms_glue

    with claim:
        record = new_record(cell, config)
        t0 = time.time()
        try:
            out = lmms_glue.evaluate(cell, lm)
            if out is None:  # a worker rank: rank 0 holds the results
                return "worker", None
            if out["score"] is None or out["n"] == 0:
                raise RuntimeError(f"lmms-eval reported no {out['metric']!r} for task {cell.benchmark['task']!r}: "
                                   f"{out['metrics']}")
            record.update(out)
            record["status"] = _status(out)
            if record["status"] != "done":
                f = out["failed_samples"][0]
                record["error"] = (f"{out['n_failed']} of {out['n_samples']} samples failed; first: "
                                   f"{f['id']} ({f['path']}): {f['error']}")
        except (Exception, SystemExit) as e:  # noqa: BLE001 - a failing cell is recorded, the sweep goes on
            if not dist.is_main():
                raise
            record["status"] = "failed"
            record["error"] = f"{type(e).__name__}: {e}"
            record["traceback"] = traceback.format_exc()
        record["finished"] = now()
        record["wall_s"] = time.time() - t0
        try:
            record["wandb"] = _wandb(record, wandb_cfg, wandb_group or cell.experiment, runs_dir)
        except Exception as e:  # noqa: BLE001 - logging must not lose a result
            record["wandb"] = {"error": f"{type(e).__name__}: {e}"}
        store.atomic_write_json(path, record)
    return record["status"], record


def _status(out: dict) -> str:
    """done: every sample answered; incomplete: some samples failed (recorded, counted as wrong);
    failed: all of them did."""
    if not out.get("n_failed"):
        return "done"
    return "failed" if out["n_failed"] >= out["n_samples"] else "incomplete"


def _wandb(record: dict, wcfg: dict | None, group: str, runs_dir: Path):
    from .wandb_log import log_cell

    if not wcfg:
        return None
    return log_cell(wcfg, group, record, str(Path(runs_dir).parent / "wandb"))


def cell_from_cfg(cfg: DictConfig) -> Cell:
    return resolve_cell(cfg)


def plain_config(cfg: DictConfig) -> dict:
    c = OmegaConf.to_container(cfg, resolve=True)
    c.pop("hydra", None)
    c.pop("grid", None)
    return c
