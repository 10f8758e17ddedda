"""Run an experiment's grid: `python -m runners.sweep experiment=table1 [dry_run=true]`.

The grid is the experiment config's `grid:` list of sub-grids (cartesian products of Hydra
overrides; `@registry` in `method` = every registered method but vanilla). Every cell is
composed and validated first (a bad value fails before any model loads), duplicates are
merged (vanilla at any ratio is one cell), done cells are skipped, and the rest run:

- `launcher=local` (default): in this process, ordered so each model loads once, with a
  progress bar over cells (lmms-eval's bar runs over samples);
- `launcher=hydra`: one `runners.evaluate` Hydra multirun per sub-grid through
  `hydra/launcher` (e.g. `hydra/launcher=slurm`: one SLURM job per cell).

`scale=demo` (configs/scale/demo.yaml) runs the same grid with each real backbone replaced by
its tiny offline twin and each real benchmark by its synthetic twin (CPU); `scale=real` (default)
runs the grid as written. The W&B group is the experiment's name (`<name>-demo` at demo scale);
cells the grid shares with an earlier experiment are not re-evaluated, but are logged into this
experiment's group too, so each group holds its whole grid.

Any other override (backbone=..., limit=..., wandb.mode=...) applies to every cell.
"""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
import traceback
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

import ottvid

from .cell import Cell, CellError, cell_path, resolve_cell
from . import store
from .run import new_record, now as run_now, plain_config, run_cell, try_claim
from .store import REPO_ROOT, is_done, resolve_dir

CONFIG_DIR = str(REPO_ROOT / "configs")
SWEEP_KEYS = {"launcher", "fail_fast", "scale", "gpus", "only_group"}
SCALED_AXES = ("backbone", "benchmark")


def _fmt(v) -> str:
    if isinstance(v, float) and v == float("inf"):
        return "inf"
    return str(v)


def expand_grid(grid: list[dict]) -> list[list[list[str]]]:
    """Sub-grids -> for each, the list of override lists of its cells."""
    out = []
    for sub in grid:
        keys = list(sub)
        values = []
        for k in keys:
            vals = sub[k] if isinstance(sub[k], list) else [sub[k]]
            if k == "method":
                vals = [m for v in vals for m in ([x for x in ottvid.list_methods() if x != "vanilla"]
                                                  if v == "@registry" else [v])]
            values.append(vals)
        out.append([[f"{k}={_fmt(v)}" for k, v in zip(keys, combo)] for combo in itertools.product(*values)])
    return out


def load_scale(name: str) -> dict:
    """configs/scale/<name>.yaml: {name, backbone: {real: twin}, benchmark: {real: twin}, overrides,
    figures_backbone (default backbone of Figures A2 / A4)}."""
    path = Path(CONFIG_DIR) / "scale" / f"{name}.yaml"
    if not path.is_file():
        raise CellError(f"unknown scale {name!r}; choices: " + ", ".join(
            sorted(p.stem for p in (Path(CONFIG_DIR) / "scale").glob("*.yaml"))))
    sc = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    return {"name": name, "overrides": list(sc.get("overrides") or []), "figures_backbone": sc.get("figures_backbone"),
            **{ax: dict(sc.get(ax) or {}) for ax in SCALED_AXES}}


def scale_of(argv: list[str]) -> dict:
    """The scale named on the command line (`scale=...`, default real)."""
    return load_scale(_split_overrides(argv)[1].get("scale", "real"))


def apply_scale(grid: list[dict], scale: dict) -> list[dict]:
    """The grid with each backbone / benchmark value replaced by its twin at this scale. A value that
    is already a twin stays; at a non-real scale, any other value is an error (a real 7B backbone
    must never run unnoticed inside a demo-scale grid)."""
    out = []
    for sub in grid:
        new = dict(sub)
        for ax in SCALED_AXES:
            mapping = scale[ax]
            if ax not in sub or not mapping:
                continue
            vals = sub[ax] if isinstance(sub[ax], list) else [sub[ax]]
            bad = [v for v in vals if v not in mapping and v not in mapping.values()]
            if bad:
                raise CellError(f"{ax} {bad} has no twin at scale {scale['name']!r}; "
                                f"configs/scale/{scale['name']}.yaml maps: {', '.join(mapping)}")
            new[ax] = [mapping.get(v, v) for v in vals]
        out.append(new)
    return out


def wandb_group_name(base, scale: dict) -> str:
    """Explicit `wandb.group`, else the experiment name (suffixed `-<scale>` off the real scale)."""
    if base.wandb.get("group"):
        return str(base.wandb.group)
    return str(base.experiment_name) + ("" if scale["name"] == "real" else f"-{scale['name']}")


def _split_overrides(argv: list[str]) -> tuple[list[str], dict]:
    """Sweep-only keys (launcher, fail_fast, scale) vs overrides passed on to every cell."""
    cell_ov, opts = [], {}
    for a in argv:
        k, _, v = a.partition("=")
        if k.lstrip("+") in SWEEP_KEYS:
            opts[k.lstrip("+")] = v
        else:
            cell_ov.append(a)
    return cell_ov, opts


class Composer:
    """`compose("evaluate", base + ov)` for the cells of a grid, composed once per choice of config
    groups (backbone=, method=, benchmark=, ...): a cell's plain `key=value` overrides are then set on a
    copy, as Hydra would set them. Anything else (`+key`, `~key`, a key the config lacks) composes in
    full, so Hydra's own errors stay. Hydra's compose costs ~0.5 s, and a grid has hundreds of cells."""

    def __init__(self, base: list[str]):
        from hydra.core.override_parser.overrides_parser import OverridesParser

        self.base, self.parser, self.memo = list(base), OverridesParser.create(), {}

    def __call__(self, ov: list[str]):
        from hydra.core.override_parser.types import OverrideType

        groups, values = [], []
        for o, p in zip(ov, self.parser.parse_overrides(ov)):
            if (Path(CONFIG_DIR) / p.key_or_group).is_dir():
                groups.append(o)
            else:
                values.append(p)
        key = tuple(groups)
        if key not in self.memo:
            self.memo[key] = compose("evaluate", overrides=self.base + groups)
        cfg = self.memo[key].copy()
        for p in values:
            if p.type != OverrideType.CHANGE or p.is_sweep_override() or p.package or \
                    OmegaConf.select(cfg, p.key_or_group, default="__absent__") == "__absent__":
                return compose("evaluate", overrides=self.base + ov)
            OmegaConf.update(cfg, p.key_or_group, p.value(), merge=False)
        return cfg


def plan(argv: list[str], fast: bool = True) -> tuple[object, list[tuple[Cell, list[str], dict]], list[list[list[str]]]]:
    """Compose and validate every cell of the experiment (at the `scale=` given, default real).
    Raises CellError on the first bad one. `fast`: compose through `Composer` (same configs)."""
    overrides, opts = _split_overrides(argv)
    scale = load_scale(opts.get("scale", "real"))
    overrides = scale["overrides"] + overrides
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        base = compose("evaluate", overrides=overrides)
        if not base.get("grid"):
            raise CellError("no grid: pass experiment=<name>; choices: " + ", ".join(
                sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))))
        grid = apply_scale(OmegaConf.to_container(base.grid, resolve=True), scale)
        subgrids = expand_grid(grid)
        cells, seen = [], set()
        composer = Composer(overrides) if fast else None
        for sub in subgrids:
            for ov in sub:
                try:
                    cfg = composer(ov) if composer else compose("evaluate", overrides=overrides + ov)
                except Exception as e:  # hydra's own message lists the valid options
                    raise CellError(f"{' '.join(ov)}: {e}") from None
                cell = resolve_cell(cfg)
                if cell.key in seen:
                    continue
                seen.add(cell.key)
                cells.append((cell, ov, plain_config(cfg)))
    return base, cells, subgrids


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from . import dist

    dist.init()  # a rank of a data-parallel launch (launcher=torchrun) joins its process group
    rc = _main(argv)
    dist.shutdown()  # on a normal return only: after an exception another rank may still wait in a collective
    return rc


def _main(argv: list[str]) -> int:
    try:
        base, cells, subgrids = plan(argv)
        scale = scale_of(argv)
    except CellError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    overrides, opts = _split_overrides(argv)
    runs = resolve_dir(base.results_dir)
    done = [c for c, _, _ in cells if is_done(cell_path(c, runs))]
    pending = [t for t in cells if not (not base.force and is_done(cell_path(t[0], runs)))]
    if opts.get("only_group"):  # one SLURM array task: the cells of one group
        from .shared import group_key

        cells = [t for t in cells if group_key(t[0]) == opts["only_group"]]
        pending = [t for t in pending if group_key(t[0]) == opts["only_group"]]
        done = [c for c in done if group_key(c) == opts["only_group"]]
    tag = "" if scale["name"] == "real" else f" (scale {scale['name']})"
    print(f"experiment {base.experiment_name}{tag}: {len(cells)} cells, {len(done)} done, "
          f"{len(pending)} to run -> {runs}", flush=True)
    if base.dry_run:
        for c, _, _ in cells:
            state = "done" if is_done(cell_path(c, runs)) else "pending"
            print(f"  {state:7s} {c.label}")
        return 0
    try:  # every missing dataset / video folder of every benchmark, before any model loads
        preflight_check([c for c, _, _ in pending])
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    group = wandb_group_name(base, scale)
    launcher = opts.get("launcher", base.get("launcher", "local"))
    if launcher == "hydra":
        return _via_hydra(scale["overrides"] + overrides + [f"wandb.group={group}"], subgrids)
    rest = [a for a in argv if a.partition("=")[0].lstrip("+") not in ("launcher", "gpus")]
    if launcher == "torchrun":
        return _via_torchrun(rest, opts.get("gpus"))
    if launcher == "slurm":
        return _via_slurm(base, rest, pending)
    if launcher != "local":
        print(f"error: launcher={launcher!r}; choices: local, torchrun, slurm, hydra", file=sys.stderr)
        return 2
    rc = _local(base, pending, runs, group, fail_fast=str(opts.get("fail_fast", base.get("fail_fast", False))).lower() == "true")
    todo = {t[0].key for t in pending}
    _log_shared_cells(base, [c for c, _, _ in cells if c.key not in todo], runs, group)
    return rc


def preflight_check(cells: list[Cell]) -> None:
    """runners.preflight over the benchmarks of these cells (synthetic shards need none)."""
    from . import lmms_glue, preflight

    by_defaults: dict[bool, dict[str, str]] = {}
    for c in cells:
        if not c.benchmark.get("synthetic"):
            by_defaults.setdefault(bool(c.benchmark.get("include_defaults", True)), {})[c.benchmark["name"]] = \
                c.benchmark["task"]
    miss = [m for inc, b in by_defaults.items() for m in preflight.missing(b, lmms_glue.task_manager(inc))]
    if miss:
        raise preflight.DatasetsMissing(preflight.report(miss))


def _local(base, pending, runs: Path, group: str, fail_fast: bool) -> int:
    """Run the pending cells in this process (one rank of a data-parallel launch runs them all too).
    `share_encoding` (default): sample-major per group of cells sharing their visual input
    (runners/shared.py); otherwise cell by cell, each model loaded once per load setting."""
    from tqdm import tqdm

    from . import dist

    # one checkpoint load per backbone; per-cell: a method's benchmarks back to back
    pending = sorted(pending, key=lambda t: (t[0].backbone["name"], t[0].method,
                                             repr(sorted(t[0].hparams.items())), t[0].benchmark["name"]))
    wcfg = OmegaConf.to_container(base.wandb, resolve=True)
    counts = dict.fromkeys(OUTCOMES, 0)
    bar = tqdm(total=len(pending), desc=f"{base.experiment_name} cells", unit="cell",
               disable=not base.progress or not dist.is_main(), file=sys.stdout, position=0)

    def record(cell, outcome, rec) -> bool:
        """Count one cell's outcome; True when the sweep must stop (fail_fast)."""
        counts[outcome] = counts.get(outcome, 0) + 1
        bar.update(1)
        if outcome in ("failed", "incomplete"):
            tqdm.write(f"[{outcome}] {cell.label}: {rec.get('error')}")
            return fail_fast
        return False

    from .shared import plan_groups

    stop = False
    shared = {t[0].key: t for t in pending if t[0].share_encoding}
    for cells in plan_groups([t[0] for t in shared.values()]):
        stop = _run_group(base, [shared[c.key] for c in cells], runs, wcfg, group, record)
        if stop:
            break
    for cell, _, cfg in [t for t in pending if not t[0].share_encoding and not stop]:
        bar.set_postfix_str(cell.label[-60:])
        outcome, rec = run_cell(cell, runs, force=bool(base.force), wandb_cfg=wcfg, wandb_group=group, config=cfg)
        if record(cell, outcome, rec):
            break
    bar.close()
    if not dist.is_main():
        return 0
    print(summary(counts), flush=True)
    return 1 if counts["failed"] or counts["incomplete"] else 0


def _run_group(base, items, runs: Path, wcfg: dict, group: str, record) -> bool:
    """One group of cells sharing their visual input: claim them, load the checkpoint once, then run each
    cell through lmms-eval with the group's shared encoding (runners/shared.py). True: stop the sweep."""
    from . import dist, lmms_glue
    from .shared import CellView, SharedEncoding

    force = bool(base.force)
    claims, outcomes = {}, {}
    if dist.is_main():
        for cell, _, _ in items:
            outcome, claim = try_claim(cell, runs, force)
            if outcome is None:
                claims[cell.key] = claim
            else:
                outcomes[cell.key] = outcome
    outcomes = dist.broadcast(outcomes)
    for cell, _, _ in items:
        if cell.key in outcomes and record(cell, outcomes[cell.key], store.read(cell_path(cell, runs)) or {}):
            _release(claims)
            return True
    todo = [t for t in items if t[0].key not in outcomes]
    if not todo:
        return False
    stop = False
    shared = None
    try:
        lm = lmms_glue.load_model(todo[0][0])
        shared = SharedEncoding(lm, [c for c, _, _ in todo], runs, rank=dist.rank(), progress=bool(base.progress))
        if force and dist.is_main():
            for log in shared.logs.values():
                log.discard()
        dist.barrier()
        for i, (cell, _, cfg) in enumerate(todo):
            if shared.bar is not None:
                shared.bar.set_postfix_str(f"cells {i}/{len(todo)} done")
            outcome, rec = run_cell(cell, runs, force=force, wandb_cfg=wcfg, wandb_group=group, config=cfg,
                                    lm=CellView(shared, cell), claim=claims.get(cell.key) or store.Claim(cell_path(cell, runs)))
            claims.pop(cell.key, None)
            shared.retire(cell, finished=outcome in ("done", "worker"))
            if record(cell, outcome, rec or {}):
                stop = True
                break
    except Exception as e:  # noqa: BLE001 - e.g. the checkpoint failed to load: every cell of the group fails
        if not dist.is_main():
            raise
        for cell, _, cfg in todo:
            if cell.key in claims:
                rec = {**new_record(cell, cfg, "failed"), "error": f"{type(e).__name__}: {e}",
                       "traceback": traceback.format_exc(), "finished": run_now()}
                store.atomic_write_json(cell_path(cell, runs), rec)
                if record(cell, "failed", rec):
                    stop = True
    finally:
        if shared is not None:
            shared.close()
        _release(claims)
    return stop


def _release(claims: dict) -> None:
    for c in claims.values():
        c.release()
    claims.clear()


# what run_cell reports per cell, in the order of the summary line
OUTCOMES = {"done": "evaluated", "incomplete": "incomplete (some samples failed)", "failed": "failed",
            "skipped": "already done by another process", "busy": "running in another process"}


def summary(counts: dict[str, int]) -> str:
    """`3 evaluated, 1 incomplete (...), ...`: what this sweep did with each cell it tried."""
    return ", ".join(f"{counts[k]} {v}" for k, v in OUTCOMES.items() if counts[k] or k in ("done", "failed"))


def _logged_groups(rec: dict) -> set[str]:
    groups = set((rec.get("wandb_groups") or {}))
    first = rec.get("wandb") or {}
    if isinstance(first, dict) and first.get("group"):
        groups.add(first["group"])
    return groups


def _log_shared_cells(base, cells: list[Cell], runs: Path, group: str) -> int:
    """Log done cells evaluated under another experiment (shared grid points, e.g. OTT-Vid's default
    setting in every ablation) into this experiment's W&B group as well, once per group; the record
    keeps `wandb_groups` {group: run info}. Returns how many were logged."""
    from .wandb_log import log_cell

    wcfg = OmegaConf.to_container(base.wandb, resolve=True)
    n = 0
    for cell in cells:
        path = cell_path(cell, runs)
        rec = store.read(path)
        if not rec or rec.get("status") != "done" or group in _logged_groups(rec):
            continue
        with store.Claim(path) as claim:
            if not claim.acquire():
                continue
            try:  # log_cell draws a fresh W&B run id, so the cell's first run keeps its own group
                info = log_cell(wcfg, group, rec, str(Path(runs).parent / "wandb"))
            except Exception as e:  # noqa: BLE001 - logging must not lose a result
                info = {"error": f"{type(e).__name__}: {e}"}
            if info is None:  # W&B disabled
                continue
            rec.setdefault("wandb_groups", {})[group] = info
            store.atomic_write_json(path, rec)
            n += 1
    if n:
        print(f"{n} cells shared with other experiments logged to W&B group {group}", flush=True)
    return n


def _via_torchrun(argv: list[str], gpus: str | None) -> int:
    """Data parallel over samples on one node: this sweep once per GPU under torchrun (lmms-eval shards
    every task's requests by rank and gathers them on rank 0, which writes the cells)."""
    import torch

    try:
        n = int(gpus) if gpus else (torch.cuda.device_count() or 1)
    except ValueError:
        n = 0
    if n < 1:
        print(f"error: gpus={gpus!r}: must be a positive integer", file=sys.stderr)
        return 2
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           "-m", "runners.sweep", *argv, "launcher=local"]
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=REPO_ROOT, env={**os.environ})


def _via_slurm(base, argv: list[str], pending) -> int:
    """One SLURM array task per group of cells sharing their visual input (submitit); each task runs the
    group sample-major on all GPUs of its node (`launcher=torchrun` when `slurm.gpus_per_node` > 1).
    Waits for the jobs (`slurm.wait`) and returns non-zero if any failed."""
    import submitit

    from .shared import group_key

    sc = OmegaConf.to_container(base.slurm, resolve=True)
    keys = list(dict.fromkeys(group_key(t[0]) for t in pending))
    if not keys:
        print("nothing to submit", flush=True)
        return 0
    folder = resolve_dir(sc.pop("folder"))
    cluster, wait, gpus = sc.pop("cluster"), sc.pop("wait"), int(sc.get("gpus_per_node") or 1)
    ex = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cluster)
    params = {k: v for k, v in sc.items() if v is not None}
    ex.update_parameters(**{("slurm_" + k if cluster == "slurm" and k in _SLURM_ONLY else k): v
                            for k, v in params.items() if cluster == "slurm" or k not in _SLURM_ONLY})
    inner = ["launcher=torchrun", f"gpus={gpus}"] if gpus > 1 else ["launcher=local"]
    cmds = [[sys.executable, "-m", "runners.sweep", *argv, *inner, f"only_group={k}"] for k in keys]
    with ex.batch():  # one array job on SLURM
        jobs = [ex.submit(submitit.helpers.CommandFunction(c, cwd=str(REPO_ROOT))) for c in cmds]
    print(f"submitted {len(jobs)} jobs (one per group of cells sharing their visual input) -> {folder}", flush=True)
    if not wait:
        return 0
    rc = 0
    for k, job in zip(keys, jobs):
        try:
            job.result()
        except Exception as e:  # noqa: BLE001 - report every group
            print(f"[group {k} failed] {type(e).__name__}: {str(e).splitlines()[-1] if str(e) else ''}", flush=True)
            rc = 1
    return rc


# submitit parameters that exist only for the SLURM cluster (the local executor takes the rest)
_SLURM_ONLY = {"partition", "qos", "account", "constraint", "exclude", "gres", "array_parallelism", "setup"}


def _via_hydra(overrides: list[str], subgrids: list[list[list[str]]]) -> int:
    """One `runners.evaluate -m` per sub-grid (its lists joined with commas)."""
    rc = 0
    for sub in subgrids:
        axes: dict[str, list[str]] = {}
        for ov in sub:
            for o in ov:
                k, _, v = o.partition("=")
                axes.setdefault(k, [])
                if v not in axes[k]:
                    axes[k].append(v)
        cmd = [sys.executable, "-m", "runners.evaluate", "-m", *overrides,
               *[f"{k}={','.join(v)}" for k, v in axes.items()]]
        print("+", " ".join(cmd), flush=True)
        rc |= subprocess.call(cmd, cwd=REPO_ROOT, env={**os.environ})
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
