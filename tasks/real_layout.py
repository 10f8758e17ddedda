"""A tiny HF_HOME in the layout a first online lmms-eval run leaves, built offline.

`python -m tasks.real_layout --hf-home DIR [--per-task N]` writes, for the six benchmarks'
REAL lmms-eval tasks (`mvbench` and its 20 subtasks, `videomme`, `longvideobench_val_v`,
`mlvu_dev`, `timelens_charades`, `timelens_activitynet`), a few samples each:

- `DIR/hub/datasets--<ns>--<name>/`: a snapshot (README with the repo's configs + data files)
  under `snapshots/<sha>/` and `refs/<revision>` — the revision the task asks for (MVBench:
  `video`, so only `refs/video`; the others `main`);
- `DIR/datasets/<ns>___<name>/<config>/0.0.0/<sha>/`: the Arrow cache, prepared by the `datasets`
  library's own builder from that snapshot as `load_dataset` does online (the packaged builder
  its README's configs select, same dataset name, config names and commit hash), so offline
  loading finds it;
- the video folders each task's utils read: `mvbench_video/<per-subtask folder>/`,
  `videomme/data/`, `datasets/longvideobench/videos/`, `mlvu/`, `timelens/`.

The documents are the synthetic shards' (tasks/synthetic: real mp4 files in each benchmark's
schema), so lmms-eval's prompts, answer extraction and metrics run unchanged. Used by the
tests to run the real task names end to end on a tiny backbone; a user can point HF_HOME at it
to try the real-benchmark path without downloading anything.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import yaml

from tasks.synthetic.generate import generate
from tasks.synthetic.paths import DATA_ROOT

# MVBench subtask -> its video folder under $HF_HOME/mvbench_video, as lmms-eval's MVBench utils read them
from lmms_eval.tasks.mvbench.utils import DATA_LIST as MVBENCH_SUBTASKS  # noqa: E402

# benchmark -> (hub repo, revision, {config: {split: synthetic shard}}, video folder under HF_HOME, doc key
# of the video's relative path or None for Video-MME's `<videoID>.mp4`)
REPOS = {
    "mvbench": ("OpenGVLab/MVBench", "video", {s: {"train": "mvbench"} for s in MVBENCH_SUBTASKS}, "mvbench_video",
                "video"),
    "videomme": ("lmms-eval/Video-MME", "main", {"default": {"test": "videomme"}}, "videomme/data", None),
    "longvideobench": ("longvideobench/LongVideoBench", "main", {"default": {"validation": "longvideobench"}},
                       "datasets/longvideobench/videos", "video_path"),
    "mlvu": ("sy1998/MLVU_dev", "main", {"default": {"test": "mlvu"}}, "mlvu", "video_name"),
    "timelens": ("kcz358/timelens", "main", {"default": {"charades": "charades_timelens",
                                                          "activitynet": "activitynet_timelens"}}, "timelens",
                 "video_path"),
}


def _docs(shard: str) -> list[dict]:
    return [json.loads(line) for line in (DATA_ROOT / shard / "test.jsonl").read_text().splitlines() if line]


def _video_rel(doc: dict, key: str | None) -> str:
    return doc[key] if key else doc["videoID"] + ".mp4"


def _snapshot(hub: Path, repo: str, revision: str, files: dict[str, str]) -> Path:
    """hub/datasets--ns--name/{snapshots/<sha>/<files>, refs/<revision>} (blobs inlined: same lookup)."""
    sha = hashlib.sha1((repo + json.dumps(files, sort_keys=True)).encode()).hexdigest()
    root = hub / f"datasets--{repo.replace('/', '--')}"
    snap = root / "snapshots" / sha
    for rel, text in files.items():
        (snap / rel).parent.mkdir(parents=True, exist_ok=True)
        (snap / rel).write_text(text)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / revision).write_text(sha)
    return snap


def _arrow_cache(datasets_dir: Path, repo: str, snap: Path, configs: list[str]) -> None:
    """Prepare every config as `load_dataset(repo, config)` does online: the packaged builder the hub
    module factory picks from the README's configs, with the repo id, dataset name and commit hash."""
    from datasets.load import LocalDatasetModuleFactory, get_dataset_builder_class
    from datasets.naming import camelcase_to_snakecase

    module = LocalDatasetModuleFactory(str(snap)).get_module()
    name = camelcase_to_snakecase(repo.split("/")[-1])
    module.builder_kwargs.update(dataset_name=name)
    cls = get_dataset_builder_class(module, dataset_name=name)
    with tempfile.TemporaryDirectory(dir=datasets_dir.parent) as tmp:
        for cfg in configs:
            cls(cache_dir=tmp, config_name=cfg, hash=snap.name, **module.builder_kwargs).download_and_prepare()
        # the builder refuses local data files under a hub repo id, so it wrote `<name>/...`: the online
        # run's folder is `<namespace>___<name>/...` (same config / version / hash folders and files inside)
        dst = datasets_dir / f"{repo.split('/')[0]}___{name}"
        if dst.exists():
            shutil.rmtree(dst)
        datasets_dir.mkdir(parents=True, exist_ok=True)
        shutil.move(str(Path(tmp) / name), dst)


def build(hf_home: Path, per_task: int = 2) -> dict[str, list[Path]]:
    """Write the layout under hf_home; returns {benchmark: video files written}."""
    hf_home = Path(hf_home)
    generate()  # the synthetic shards (idempotent)
    videos: dict[str, list[Path]] = {}
    for bench, (repo, revision, configs, vdir, key) in REPOS.items():
        files, written = {}, []
        card = []
        for i, (cfg, splits) in enumerate(configs.items()):
            entry = {"config_name": cfg, "data_files": []}
            for split, shard in splits.items():
                docs = _docs(shard)
                picked = [docs[(i * per_task + k) % len(docs)] for k in range(min(per_task, len(docs)))]
                rel = f"json/{cfg}_{split}.json" if len(configs) > 1 else f"data/{split}.json"
                files[rel] = "".join(json.dumps({k: v for k, v in d.items() if k != "sub_task"}) + "\n"
                                     for d in picked)
                entry["data_files"].append({"split": split, "path": rel})
                folder = hf_home / vdir / (MVBENCH_SUBTASKS[cfg] if bench == "mvbench" else "")
                for d in picked:
                    src = DATA_ROOT / shard / "videos" / _video_rel(d, key)
                    dst = folder / _video_rel(d, key)
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, dst)
                    written.append(dst)
            card.append(entry)
        files["README.md"] = "---\n" + yaml.safe_dump({"configs": card}, sort_keys=False) + "---\n"
        snap = _snapshot(hf_home / "hub", repo, revision, files)
        _arrow_cache(hf_home / "datasets", repo, snap, list(configs))
        videos[bench] = sorted(set(written))
    return videos


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hf-home", type=Path, required=True, help="the HF_HOME to fill (created if missing)")
    p.add_argument("--per-task", type=int, default=2, help="samples per task / MVBench subtask (default 2)")
    a = p.parse_args(argv)
    for bench, vids in build(a.hf_home, a.per_task).items():
        print(f"{bench}: {len(vids)} videos")


if __name__ == "__main__":
    main()
