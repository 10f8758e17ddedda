"""W&B: one run per cell, grouped by experiment (or by multirun sweep); offline unless logged in."""
from __future__ import annotations

import os
from typing import Any


def resolve_mode(mode: str) -> str:
    """`auto`: online when an API key is configured (env or ~/.netrc), else offline."""
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        import netrc

        n = netrc.netrc()
        if n.authenticators("api.wandb.ai"):
            return "online"
    except (OSError, netrc.NetrcParseError):
        pass
    return "offline"


def run_id(key: str) -> str:
    """A fresh W&B run id for each logging of a cell: its key plus a random suffix, so re-logging a cell
    (a rerun, or into another experiment's group) never resumes or overwrites an earlier run."""
    from wandb.util import generate_id

    return f"{key}-{generate_id(8)}"


def log_cell(wcfg: dict, group: str, record: dict, run_dir: str) -> dict | None:
    """Log one cell's config and metrics; returns {mode, id, group, dir} or None if disabled."""
    if not wcfg.get("enabled", True):
        return None
    mode = resolve_mode(str(wcfg.get("mode", "auto")))
    if mode == "disabled":
        return None
    import wandb

    cell = record["cell"]
    os.makedirs(run_dir, exist_ok=True)
    run = wandb.init(project=wcfg.get("project", "ottvid-harness"), entity=wcfg.get("entity"), group=group,
                     job_type=cell["benchmark"]["name"], name=cell["label"], id=run_id(cell["key"]),
                     config={"cell": cell, "key": cell["key"]}, mode=mode, dir=run_dir, reinit="finish_previous",
                     settings=wandb.Settings(silent=True, console="off", x_disable_stats=True))
    metrics: dict[str, Any] = {"status": 1.0 if record["status"] == "done" else 0.0}
    if record.get("score") is not None:
        metrics["score"] = record["score"]
    for k, v in (record.get("stats_summary") or {}).items():
        if isinstance(v, dict) and "mean" in v:
            metrics[f"stats/{k}_mean"] = v["mean"]
        elif isinstance(v, (int, float)):
            metrics[f"stats/{k}"] = v
    run.log(metrics)
    run.summary.update(metrics)
    info = {"mode": mode, "id": run.id, "group": group, "dir": run.dir}
    run.finish()
    return info
