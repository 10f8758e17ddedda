"""doc_to_visual / doc_to_text / scoring of the synthetic tasks.

Prompts and scoring are lmms-eval's own functions for the real benchmark (imported from
`lmms_eval.tasks.<benchmark>.utils`); only the video lookup differs: videos are read from
the generated shard under `cache/synthetic/<benchmark>/videos/`.
"""
from __future__ import annotations

from pathlib import Path

from lmms_eval.tasks.longvideobench import utils as lvb
from lmms_eval.tasks.mlvu import utils as mlvu
from lmms_eval.tasks.mvbench import utils as mvb
from lmms_eval.tasks.timelens import utils as tl
from lmms_eval.tasks.videomme import utils as vmme

# lmms-eval imports this file by path (not as `tasks.synthetic.utils`), so resolve the shard
# root from the file's location here; it is the same folder as `tasks.synthetic.paths.DATA_ROOT`.
DATA_ROOT = Path(__file__).resolve().parents[2] / "cache" / "synthetic"


def video_path(benchmark: str, rel: str) -> str:
    """Absolute path of a shard video from the relative name stored in its annotation."""
    return str(DATA_ROOT / benchmark / "videos" / rel)

# ---- MVBench -----------------------------------------------------------------------------
mvbench_doc_to_text = mvb.mvbench_doc_to_text
mvbench_process_results = mvb.mvbench_process_results
mvbench_aggregate_results = mvb.mvbench_aggregate_results


def mvbench_doc_to_visual(doc, lmms_eval_specific_kwargs=None):
    return [video_path("mvbench", doc["video"])]


# ---- Video-MME ---------------------------------------------------------------------------
videomme_doc_to_text = vmme.videomme_doc_to_text
videomme_process_results = vmme.videomme_process_results
videomme_aggregate_results = vmme.videomme_aggregate_results


def videomme_doc_to_visual(doc):
    return [video_path("videomme", doc["videoID"] + ".mp4")]


# ---- LongVideoBench ----------------------------------------------------------------------
longvideobench_doc_to_text = lvb.longvideobench_doc_to_text
longvideobench_process_results = lvb.longvideobench_process_results
longvideobench_aggregate_results = lvb.longvideobench_aggregate_results


def longvideobench_doc_to_visual(doc):
    return [video_path("longvideobench", doc["video_path"])]


# ---- MLVU (dev) --------------------------------------------------------------------------
mlvu_doc_to_text = mlvu.mlvu_doc_to_text
mlvu_process_results = mlvu.mlvu_process_results
mlvu_aggregate_results_dev = mlvu.mlvu_aggregate_results_dev


def mlvu_doc_to_visual(doc):
    return [video_path("mlvu", doc["video_name"])]


# ---- TimeLens (Charades / ActivityNet) ---------------------------------------------------
timelens_doc_to_text = tl.timelens_doc_to_text
timelens_doc_to_target = tl.timelens_doc_to_target
timelens_process_results = tl.timelens_process_results
timelens_aggregate_iou3 = tl.timelens_aggregate_iou3
timelens_aggregate_iou5 = tl.timelens_aggregate_iou5
timelens_aggregate_iou7 = tl.timelens_aggregate_iou7
timelens_aggregate_miou = tl.timelens_aggregate_miou


def charades_timelens_doc_to_visual(doc):
    return [video_path("charades_timelens", doc["video_path"])]


def activitynet_timelens_doc_to_visual(doc):
    return [video_path("activitynet_timelens", doc["video_path"])]
