"""Evaluate one cell: `python -m runners.evaluate backbone=... method=... benchmark=... retention=...`.

Hydra multirun sweeps any axis, on any launcher, with one W&B group per sweep:
    python -m runners.evaluate -m method=ottvid retention=0.1,0.25 tau_b=0.1,0.3
    python -m runners.evaluate -m hydra/launcher=slurm benchmark=mvbench,videomme method=ottvid,fastvid
Done cells are skipped (force=true re-runs); a failing cell is stored as failed (one with
failed samples as incomplete) and the sweep goes on; the exit status is non-zero when a cell
failed or is incomplete (a busy cell, claimed by another process, exits 0 with `[busy]`);
dry_run=true validates and prints the cell without evaluating it.
"""
from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from .cell import CellError, cell_path, resolve_cell
from .run import plain_config, run_cell
from .store import is_done, resolve_dir


def wandb_group(cfg: DictConfig) -> str:
    """The W&B group: explicit, else the experiment, else (for `-m`) the multirun sweep id."""
    if cfg.wandb.get("group"):
        return str(cfg.wandb.group)
    if cfg.experiment_name != "adhoc":
        return str(cfg.experiment_name)
    try:
        hc = HydraConfig.get()
        if hc.mode is not None and hc.mode.name == "MULTIRUN":
            return "sweep-" + hc.sweep.dir.replace("/", "_").replace(":", "")
    except ValueError:
        pass
    return "adhoc"


@hydra.main(config_path="../configs", config_name="evaluate", version_base=None)
def main(cfg: DictConfig) -> str:
    try:
        cell = resolve_cell(cfg)
    except CellError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    runs = resolve_dir(cfg.results_dir)
    path = cell_path(cell, runs)
    if cfg.dry_run:
        state = "done" if is_done(path) else "pending"
        print(f"[dry-run] {state:7s} {cell.label}  -> {path.name}")
        return state
    outcome, rec = run_cell(cell, runs, force=bool(cfg.force), wandb_cfg=OmegaConf.to_container(cfg.wandb),
                            wandb_group=wandb_group(cfg), config=plain_config(cfg))
    msg = f"[{outcome}] {cell.label}"
    if rec and rec.get("score") is not None:
        msg += f"  score={rec['score']:.2f} n={rec['n']}"
    if rec and rec.get("error"):
        msg += f"  error={rec['error']}"
    print(msg, flush=True)
    if outcome in ("failed", "incomplete"):
        if _multirun():  # Hydra runs the other jobs, then fails the sweep (non-zero exit)
            raise CellFailed(msg)
        raise SystemExit(1)
    return outcome


class CellFailed(RuntimeError):
    """A cell of a multirun failed or is incomplete (its record says why)."""


def _multirun() -> bool:
    try:
        hc = HydraConfig.get()
    except ValueError:
        return False
    return hc.mode is not None and hc.mode.name == "MULTIRUN"


if __name__ == "__main__":
    main()
