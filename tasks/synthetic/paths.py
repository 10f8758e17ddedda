"""Where the synthetic shards live: `cache/synthetic/<benchmark>/` inside the repository.

Resolved from this file's location (no environment variables), so the task YAMLs,
their `doc_to_visual` and the generator agree wherever the repository is cloned.
"""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_ROOT = REPO_ROOT / "cache" / "synthetic"

# benchmark key -> lmms-eval task name of its synthetic twin
TASK_NAMES = {
    "mvbench": "synth_mvbench",
    "videomme": "synth_videomme",
    "longvideobench": "synth_longvideobench",
    "mlvu": "synth_mlvu",
    "charades_timelens": "synth_charades_timelens",
    "activitynet_timelens": "synth_activitynet_timelens",
}
BENCHMARKS = tuple(TASK_NAMES)


def video_path(benchmark: str, rel: str) -> str:
    """Absolute path of a shard's video, from the relative path stored in its annotation."""
    return str(DATA_ROOT / benchmark / "videos" / rel)
