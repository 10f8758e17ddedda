"""Synthetic shards: deterministic generator, real mp4s, each benchmark's schema, and
lmms-eval's own scoring (ground-truth answers score 100, wrong ones 0)."""
from __future__ import annotations

import json
import string
from pathlib import Path

import decord
import pytest

from tasks.synthetic import BENCHMARKS, DATA_ROOT, TASK_NAMES
from tasks.synthetic import generate as gen

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards():
    gen.generate()  # idempotent: a no-op when cache/synthetic is up to date
    return DATA_ROOT


@pytest.fixture(scope="module")
def task_dict(shards):
    from lmms_eval.evaluator import get_task_dict
    from lmms_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(REPO / "tasks"), include_defaults=False, verbosity="ERROR")
    return get_task_dict(list(TASK_NAMES.values()), tm)


def test_generator_is_deterministic_and_idempotent(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    gen.generate(a, ("mvbench", "charades_timelens"))
    gen.generate(b, ("mvbench", "charades_timelens"))
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    mtimes = {p: p.stat().st_mtime_ns for p in a.rglob("*.mp4")}
    gen.generate(a, ("mvbench", "charades_timelens"))
    assert mtimes == {p: p.stat().st_mtime_ns for p in a.rglob("*.mp4")}
    # a corrupted video is detected and rewritten
    victim = next(iter(mtimes))
    victim.write_bytes(b"broken")
    gen.generate(a, ("mvbench",))
    assert victim.read_bytes() == (b / victim.relative_to(a)).read_bytes()


def test_shard_videos_are_real_mp4(shards):
    for bench in BENCHMARKS:
        docs = [json.loads(line) for line in open(shards / bench / "test.jsonl")]
        assert 4 <= len(docs) <= 8
        for v in sorted((shards / bench / "videos").glob("*.mp4"))[:2]:
            vr = decord.VideoReader(str(v))
            assert 16 <= len(vr) <= 32 and vr[0].shape == (gen.SIZE, gen.SIZE, 3)
            assert abs(vr.get_avg_fps() - gen.FPS) < 1e-6


def test_scene_cuts_and_motion_are_in_the_pixels():
    clip = gen.cut_clip(__import__("numpy").random.default_rng(0), 3.0, 3, shape_shot=1)
    frames = gen.render(clip).astype(float)
    diffs = abs(frames[1:] - frames[:-1]).mean(axis=(1, 2, 3))
    cuts = sorted(diffs.argsort()[-2:] + 1)
    bounds = [sum(s.frames for s in clip.shots[: k + 1]) for k in range(2)]
    assert cuts == bounds  # the two largest frame differences are the scene cuts
    still = gen.render(gen.Clip([gen.Shot(8, (0, 0, 0))]))
    assert (still == still[0]).all()


def _correct_and_wrong(bench: str, doc: dict) -> tuple[str, str]:
    L = string.ascii_uppercase
    if bench == "mvbench":
        i = doc["candidates"].index(doc["answer"])
        return f"({L[i]}) {doc['answer']}", f"({L[(i + 1) % len(doc['candidates'])]})"
    if bench == "videomme":
        return doc["answer"], "ABCD"[("ABCD".index(doc["answer"]) + 1) % 4]
    if bench == "longvideobench":
        i = doc["correct_choice"]
        return L[i], L[(i + 1) % 4]
    if bench == "mlvu":
        return doc["answer"] + ")", "ABCD"[("ABCD".index(doc["answer"]) + 1) % 4] + ")"
    s, e = doc["span"][0]
    far = doc["duration"] + 5
    return f"The event happens in {s} - {e} seconds", f"The event happens in {far} - {far + 1} seconds"


@pytest.mark.parametrize("bench", BENCHMARKS)
def test_tasks_load_and_score_with_lmms_eval_metrics(task_dict, bench):
    task = task_dict[TASK_NAMES[bench]]
    docs = list(task.test_docs())
    assert len(docs) == sum(1 for _ in open(DATA_ROOT / bench / "test.jsonl"))
    for doc in docs:
        (path,) = task.doc_to_visual(doc)
        assert Path(path).is_file()
        assert isinstance(task.doc_to_text(doc), str)
    metric = {"mvbench": "mvbench_accuracy", "videomme": "videomme_perception_score", "longvideobench": "lvb_acc",
              "mlvu": "mlvu_percetion_score"}.get(bench, "timelens_mIOU")
    agg = task.aggregation()[metric]
    full = 1.0 if bench == "longvideobench" else 100.0   # upstream LVB reports a fraction
    for which, expected in ((0, full), (1, 0.0)):
        vals = [task.process_results(d, [_correct_and_wrong(bench, d)[which]])[metric] for d in docs]
        got = agg(vals, None) if bench.endswith("timelens") else agg(vals)
        assert got == pytest.approx(expected), (bench, which)
