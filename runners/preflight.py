"""Offline pre-flight: is everything lmms-eval will read for these tasks in the local cache?

Checked per (sub)task against what lmms-eval 0.7's own loading does (`ConfigurableTask.download`
and the tasks' utils), before any model loads, and reported for every benchmark at once:

- rows: with the datasets library offline, `datasets.load_dataset` reads only the Arrow cache
  (`<datasets cache>/<namespace>___<name>/<config>/<version>/<hash>/`, as a first online run
  leaves it), never the hub snapshot; the split the task evaluates must be in it;
- video folder (`dataset_kwargs.video`): lmms-eval skips the hub when `$HF_HOME/<cache_dir>`
  exists as a folder; when it is missing, or is a symlink made by `create_link`, it calls
  `snapshot_download(revision=<the task's revision>)`, which offline needs `refs/<revision>` in
  the hub cache (MVBench asks for `revision: video`: a first online run leaves only `refs/video`);
- videos: the sub-folder the task's utils read (`videomme/data`, `datasets/longvideobench/videos`,
  `mvbench_video/<per-subtask folder>`, `mlvu`, `timelens`). A single missing video is not a
  pre-flight failure: the sample is recorded as failed and the others go on.

`hf_home()` gives HF_HOME a default (huggingface_hub's, `~/.cache/huggingface`) when unset,
before any task util reads it (MLVU's own default would be the relative `./~/.cache/huggingface`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ottvid.backbones.common import env_flag

# task -> folder under its dataset_kwargs.cache_dir from which its utils read videos (lmms-eval 0.7.3);
# MVBench subtasks read `DATA_LIST[sub_task]` of lmms_eval/tasks/mvbench/utils.py
VIDEO_SUBDIR = {"videomme": "data", "videomme_w_subtitle": "data", "longvideobench_val_v": "videos",
                "mlvu_dev": "", "timelens_charades": "", "timelens_activitynet": ""}
# dataset_kwargs lmms-eval consumes itself; the rest go to datasets.load_dataset
_LMMS_KWARGS = {"cache_dir", "video", "builder_script", "force_download", "force_unzip", "local_files_only",
                "create_link", "From_YouTube", "load_from_disk", "max_retries", "num_proc"}


def hf_home() -> Path:
    """HF_HOME, set to huggingface_hub's default when unset (the harness's processes only)."""
    if not os.environ.get("HF_HOME"):
        from huggingface_hub import constants

        os.environ["HF_HOME"] = constants.HF_HOME
    return Path(os.path.expanduser(os.path.expandvars(os.environ["HF_HOME"])))


def datasets_cache() -> Path:
    """Where lmms-eval points datasets.load_dataset: LMMS_EVAL_DATASETS_CACHE, else HF_DATASETS_CACHE,
    else $HF_HOME/datasets."""
    for var in ("LMMS_EVAL_DATASETS_CACHE", "HF_DATASETS_CACHE"):
        if os.environ.get(var, "").strip():
            return Path(os.path.expanduser(os.path.expandvars(os.environ[var].strip())))
    return hf_home() / "datasets"


def hub_cache() -> Path:
    return Path(os.path.expanduser(os.environ.get("HF_HUB_CACHE") or str(hf_home() / "hub")))


@dataclass
class Missing:
    benchmark: str
    task: str
    repo: str
    what: str      # rows | snapshot | videos
    detail: str


def leaf_tasks(task: str, tm) -> list[str]:
    """A task, or every (nested) subtask of a group."""
    if tm.task_index[task]["type"] != "group":
        return [task]
    cfg = tm._get_config(task)
    subs = [t if isinstance(t, str) else t.get("task") for t in cfg.get("task", [])]
    return [leaf for s in subs for leaf in leaf_tasks(s, tm)]


def _hub_repo(path) -> bool:
    return isinstance(path, str) and path.count("/") == 1 and not Path(path).exists()


def dataset_repos(task: str, tm) -> list[str]:
    """Hugging Face dataset repos a task (or every subtask of a group) reads."""
    return sorted({p for t in leaf_tasks(task, tm) if _hub_repo(p := tm._get_config(t).get("dataset_path"))})


def _rows_missing(repo: str, name: str | None, split: str | None) -> str | None:
    """Why datasets' offline loader (the Arrow-cache builder it falls back to) cannot load this, or None."""
    from datasets.packaged_modules.cache.cache import Cache

    import datasets

    root = datasets_cache()
    level = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity_error()  # not its "Found the latest cached dataset configuration" per subtask
    try:
        b = Cache(cache_dir=str(root), repo_id=repo, dataset_name=repo.split("/")[-1], config_name=name,
                  version="auto", hash="auto")
    except (ValueError, FileNotFoundError, OSError) as e:
        return f"no Arrow cache of {repo}{f' config {name!r}' if name else ''} under {root} ({str(e).splitlines()[0]})"
    finally:
        datasets.logging.set_verbosity(level)
    splits = list(b.info.splits or {})
    if split and splits and split not in splits:
        return f"the Arrow cache of {repo}{f' config {name!r}' if name else ''} has splits {splits}, not {split!r}"
    return None


def _snapshot_missing(repo: str, revision: str) -> str | None:
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo, repo_type="dataset", revision=revision, local_files_only=True,
                          cache_dir=str(hub_cache()))
    except Exception as e:  # noqa: BLE001 - LocalEntryNotFoundError and friends
        return (f"hub snapshot of {repo} at revision {revision!r} (refs/{revision} under "
                f"{hub_cache() / ('datasets--' + repo.replace('/', '--'))}) is not cached ({type(e).__name__})")
    return None


def _video_subdir(task: str, cfg: dict) -> str | None:
    if task.startswith("mvbench_"):
        from lmms_eval.tasks.mvbench.utils import DATA_LIST

        sub = ((cfg.get("lmms_eval_specific_kwargs") or {}).get("default") or {}).get("sub_task")
        return DATA_LIST.get(sub)
    return VIDEO_SUBDIR.get(task)


def task_missing(benchmark: str, task: str, tm) -> list[Missing]:
    """Every piece lmms-eval needs offline for one leaf task that is not in the local cache."""
    cfg = tm._get_config(task)
    repo = cfg.get("dataset_path")
    kw = dict(cfg.get("dataset_kwargs") or {})
    out = []
    if kw.get("load_from_disk"):
        if not Path(str(repo)).exists():
            out.append(Missing(benchmark, task, str(repo), "rows", f"load_from_disk folder {repo} does not exist"))
        return out
    if not _hub_repo(repo):
        return out  # a packaged loader on local files (the synthetic shards)
    hub_off = env_flag("HF_HUB_OFFLINE")
    if env_flag("HF_DATASETS_OFFLINE") or hub_off:
        why = _rows_missing(repo, cfg.get("dataset_name"), cfg.get("test_split"))
        if why:
            out.append(Missing(benchmark, task, repo, "rows", why))
    if kw.get("video") and hub_off:
        from lmms_eval.utils import resolve_cache_dir

        home = hf_home()
        vdir = Path(resolve_cache_dir(str(kw["cache_dir"]), base_dir=str(home)))
        if not vdir.exists() or (kw.get("create_link") and vdir.is_symlink()):
            why = _snapshot_missing(repo, str(kw.get("revision", "main")))
            if why:
                out.append(Missing(benchmark, task, repo, "snapshot", f"{vdir} is missing and the {why}"
                                   if not vdir.is_symlink() else f"{vdir} is a symlink (create_link), and the {why}"))
        sub = _video_subdir(task, cfg)
        if vdir.exists() and sub is not None and not (vdir / sub).is_dir():
            out.append(Missing(benchmark, task, repo, "videos", f"video folder {vdir / sub} does not exist "
                               f"(read by lmms_eval/tasks/{task.split('_')[0]}/utils.py)"))
    return out


def missing(benchmarks: dict[str, str], tm) -> list[Missing]:
    """{benchmark name: lmms-eval task} -> every missing piece, all benchmarks at once."""
    return [m for b, task in benchmarks.items() for leaf in leaf_tasks(task, tm) for m in task_missing(b, leaf, tm)]


def report(miss: list[Missing]) -> str:
    """One block per benchmark: what is missing (subtasks collapsed) and how to get it."""
    lines = [f"offline pre-flight: {len({m.benchmark for m in miss})} benchmark(s) are not fully in the local cache "
             f"(HF_HOME={hf_home()}, HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '')}, "
             f"HF_DATASETS_OFFLINE={os.environ.get('HF_DATASETS_OFFLINE', '')}):"]
    by: dict[str, list[Missing]] = {}
    for m in miss:
        by.setdefault(m.benchmark, []).append(m)
    for b, ms in by.items():
        repos = sorted({m.repo for m in ms})
        lines.append(f"  {b} ({', '.join(repos)}):")
        seen: dict[tuple, list[str]] = {}
        for m in ms:
            seen.setdefault((m.what, m.detail if m.what != "rows" else m.detail.split(" config ")[0]), []).append(m)
        for (what, head), group in seen.items():
            if len(group) > 1:
                lines.append(f"    - {what}: {len(group)} subtasks ({', '.join(g.task for g in group)}); first: "
                             f"{group[0].detail}")
            else:
                lines.append(f"    - {what} ({group[0].task}): {group[0].detail}")
    gated = ", ".join(f"https://huggingface.co/datasets/{r}" for r in sorted({m.repo for m in miss}))
    lines.append("  how to get them: run once with network access and HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 (e.g. "
                 "`make table1 HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0`), after `huggingface-cli login` and accepting "
                 f"the terms of the gated ones ({gated}); lmms-eval then fills HF_HOME as above.")
    return "\n".join(lines)


class DatasetsMissing(FileNotFoundError):
    """Raised by `check` with the whole report as its message."""


def check(benchmarks: dict[str, str], tm) -> None:
    miss = missing(benchmarks, tm)
    if miss:
        raise DatasetsMissing(report(miss))
