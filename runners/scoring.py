"""Per-sample scores from lmms-eval's logged samples, with the real tasks' own metric code.

Each function maps one sample's `process_results` output (the value logged under the metric
key) to a score on the table's scale (0-100), so that the mean over samples (or over groups,
where lmms-eval averages groups: MLVU task types) is the benchmark score. Bootstrap intervals
and paired tests resample these.
"""
from __future__ import annotations

import json
from typing import Any, Callable


def _mvbench(v: dict) -> float | None:
    # upstream aggregation leaves empty answers out of the denominator
    return None if v.get("pred_answer", "") == "" else 100.0 * float(v["score"])


def _videomme(v: dict) -> float:
    return 100.0 * float(v["pred_answer"] == v["answer"])


def _lvb(v: dict) -> float:
    return 100.0 * float(v["answer"] == v["parsed_pred"])


def _mlvu(v: dict) -> float:
    return 100.0 * float(v["pred_answer"] == v["answer"])


def _timelens(v: dict) -> float:
    from lmms_eval.tasks.timelens.utils import extract_time, iou

    ((key, pred),) = v.items()
    tgt = json.loads(key.rsplit(">>>", 1)[-1])
    times = extract_time(pred)
    return 100.0 * (iou(times[0], (float(tgt[0][0]), float(tgt[0][1]))) if times else 0.0)


# metric key -> (score function, group key or None)
SCORERS: dict[str, tuple[Callable[[Any], float | None], str | None]] = {
    "mvbench_accuracy": (_mvbench, None),
    "videomme_perception_score": (_videomme, None),
    "lvb_acc": (_lvb, None),
    "mlvu_percetion_score": (_mlvu, "task_type"),
    "timelens_mIOU": (_timelens, None),
}


def sample_scores(samples: list[dict], metric: str, prefix: str = "") -> tuple[dict[str, float], dict[str, str]]:
    """(doc id -> score, doc id -> group) for one task's logged samples."""
    fn, group_key = SCORERS[metric]
    scores, groups = {}, {}
    for s in samples:
        v = s[metric]
        sc = fn(v)
        if sc is None:
            continue
        did = f"{prefix}{s['doc_id']}"
        scores[did] = sc
        if group_key:
            groups[did] = str(v[group_key])
    return scores, groups


def score_from_samples(scores: dict[str, float], groups: dict[str, str] | None) -> float | None:
    """The benchmark score from per-sample scores: their mean, or the mean of group means where the
    task averages groups (MLVU task types, MVBench subtasks)."""
    if not scores:
        return None
    if not groups:
        return sum(scores.values()) / len(scores)
    by: dict[str, list[float]] = {}
    for k, v in scores.items():
        by.setdefault(groups.get(k, ""), []).append(v)
    return sum(sum(v) / len(v) for v in by.values()) / len(by)
