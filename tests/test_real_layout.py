"""The REAL lmms-eval tasks on a tiny HF_HOME in the layout a first online run leaves
(tasks/real_layout.py): offline pre-flight, `runners.evaluate`, and a sweep where videos are
missing or broken."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runners import lmms_glue, preflight

REPO = Path(__file__).resolve().parents[1]
REAL = {"mvbench": "mvbench", "videomme": "videomme", "longvideobench": "longvideobench_val_v", "mlvu": "mlvu_dev",
        "charades_timelens": "timelens_charades", "activitynet_timelens": "timelens_activitynet"}


@pytest.fixture(scope="module")
def real_home(tmp_path_factory):
    from tasks.real_layout import build

    home = tmp_path_factory.mktemp("hf_home")
    build(home, per_task=2)
    return home


@pytest.fixture(scope="module")
def tm():
    return lmms_glue.task_manager(include_defaults=True)


@pytest.fixture
def home(real_home, tmp_path, monkeypatch):
    """A private copy of the real-layout HF_HOME, set as HF_HOME (hub offline)."""
    h = tmp_path / "hf"
    shutil.copytree(real_home, h, symlinks=True)
    monkeypatch.setenv("HF_HOME", str(h))
    for var in ("HF_HUB_CACHE", "HF_DATASETS_CACHE", "LMMS_EVAL_DATASETS_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return h


def _env(h: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HOME": str(h), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}


def test_group_tasks_list_their_subtasks_datasets(tm):
    assert len(preflight.leaf_tasks("mvbench", tm)) == 20
    assert preflight.dataset_repos("mvbench", tm) == ["OpenGVLab/MVBench"]
    assert preflight.dataset_repos("timelens_charades", tm) == ["kcz358/timelens"]
    assert preflight.dataset_repos("synth_mvbench", tm) == []  # local json shard


def test_populated_real_cache_passes_the_preflight(home, tm):
    """Only refs/video exists for MVBench (its tasks ask for `revision: video`)."""
    assert [p.name for p in (home / "hub" / "datasets--OpenGVLab--MVBench" / "refs").iterdir()] == ["video"]
    assert preflight.missing(REAL, tm) == []


def test_arrow_cache_and_video_folders_without_hub_snapshots_pass(home, tm):
    """lmms-eval reads the Arrow cache and the extracted video folders; it asks the hub only when a
    video folder is missing (or is a create_link symlink)."""
    shutil.rmtree(home / "hub")
    assert preflight.missing(REAL, tm) == []


def test_create_link_symlink_needs_the_tasks_revision(home, tm):
    """A `create_link` symlink makes lmms-eval call snapshot_download(revision='video') even when the
    folder exists: that needs refs/video, not refs/main."""
    snap = next((home / "hub" / "datasets--OpenGVLab--MVBench" / "snapshots").iterdir())
    shutil.copytree(home / "mvbench_video", snap, dirs_exist_ok=True)
    shutil.rmtree(home / "mvbench_video")
    (home / "mvbench_video").symlink_to(snap)
    assert preflight.missing({"mvbench": "mvbench"}, tm) == []
    refs = home / "hub" / "datasets--OpenGVLab--MVBench" / "refs"
    (refs / "video").rename(refs / "main")
    miss = preflight.missing({"mvbench": "mvbench"}, tm)
    assert len(miss) == 20 and {m.what for m in miss} == {"snapshot"} and "revision 'video'" in miss[0].detail


def test_empty_cache_names_every_missing_piece_of_every_benchmark(tmp_path, monkeypatch, tm):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)
    with pytest.raises(FileNotFoundError) as e:
        preflight.check({**REAL, "synth_mvbench": "synth_mvbench"}, tm)
    msg = str(e.value)
    for bench, repo in [("mvbench", "OpenGVLab/MVBench"), ("videomme", "lmms-eval/Video-MME"),
                        ("longvideobench", "longvideobench/LongVideoBench"), ("mlvu", "sy1998/MLVU_dev"),
                        ("charades_timelens", "kcz358/timelens"), ("activitynet_timelens", "kcz358/timelens")]:
        assert f"  {bench} ({repo}):" in msg
    assert "synth_mvbench" not in msg and "6 benchmark(s)" in msg
    assert "refs/video" in msg and "HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0" in msg
    assert "huggingface.co/datasets/lmms-eval/Video-MME" in msg


def test_missing_video_folder_is_named(home, tm):
    shutil.rmtree(home / "videomme" / "data")
    miss = preflight.missing(REAL, tm)
    assert [(m.benchmark, m.what) for m in miss] == [("videomme", "videos")]
    assert str(home / "videomme" / "data") in miss[0].detail


@pytest.mark.slow
def test_real_mvbench_through_runners_evaluate(real_home, tmp_path):
    """The `mvbench` group (20 subtasks) on the tiny Qwen2.5-VL: its score is the mean of its 20
    subtasks' accuracies, as MVBench documents it (and lmms-eval's group gives none of its own)."""
    runs = tmp_path / "runs"
    r = subprocess.run([sys.executable, "-m", "runners.evaluate", "backbone=tiny_qwen2_5_vl", "method=ottvid",
                        "retention=0.25", "benchmark=mvbench", f"results_dir={runs}", "progress=false"],
                       cwd=REPO, env=_env(real_home), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    (f,) = runs.glob("*.json")
    rec = json.loads(f.read_text())
    assert rec["status"] == "done" and rec["n"] == 40 and rec["n_failed"] == 0
    subs = {t: m["mvbench_accuracy,none"] for t, m in rec["metrics"].items() if t != "mvbench"}
    assert len(subs) == 20
    assert rec["score"] == pytest.approx(sum(subs.values()) / 20)
    assert set(rec["per_sample"]["groups"].values()) == set(subs)


@pytest.mark.slow
def test_sweep_with_missing_and_broken_videos_finishes_everything_else(home, tmp_path):
    """Video-MME's and MLVU's utils sys.exit on a missing video, a truncated mp4 fails to decode: each such
    sample is recorded (doc id, path, error), its cell is incomplete, every other sample and cell finishes,
    the sweep exits non-zero with true counts, and the table shows the failures."""
    gone = home / "videomme" / "data" / "vmme_1.mp4"
    gone.unlink()
    (home / "mlvu" / "mlvu_1.mp4").unlink()
    broken = home / "datasets" / "longvideobench" / "videos" / "lvb_0.mp4"
    broken.write_bytes(broken.read_bytes()[:300])
    runs = tmp_path / "runs"
    grid = ("grid=[{backbone:[tiny_qwen2_5_vl],method:[vanilla,ottvid],retention:[0.1],benchmark:[mvbench,videomme,"
            "longvideobench,mlvu,charades_timelens,activitynet_timelens]}]")
    args = ["experiment=table1", f"results_dir={runs}", grid]
    r = subprocess.run([sys.executable, "-m", "runners.sweep", *args, "progress=false"], cwd=REPO, env=_env(home),
                       capture_output=True, text=True, timeout=1500)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out[-3000:]
    assert "6 evaluated, 6 incomplete (some samples failed), 0 failed" in r.stdout, out[-3000:]
    recs = {(x["cell"]["method"], x["cell"]["benchmark"]["name"]): x
            for x in (json.loads(p.read_text()) for p in runs.glob("*.json"))}
    assert len(recs) == 12
    for (method, bench), rec in recs.items():
        if bench in ("videomme", "mlvu", "longvideobench"):
            assert rec["status"] == "incomplete" and rec["n_failed"] == 1 and rec["n_samples"] == 2, rec.get("error")
            (f,) = rec["failed_samples"]
            assert f["doc_id"] is not None and f["error"]
            assert rec["per_sample"]["scores"][f["id"]] == 0.0
        else:
            assert rec["status"] == "done" and rec["n_failed"] == 0, rec.get("error")
    vm = recs[("vanilla", "videomme")]["failed_samples"][0]
    assert "SystemExit" in vm["error"] and str(gone) in vm["error"]
    lvb = recs[("vanilla", "longvideobench")]["failed_samples"][0]
    assert lvb["path"] == str(broken)

    from runners import aggregate

    md, _, _ = aggregate.render(aggregate.build(args))
    line = next(x for x in md.splitlines() if x.startswith("| ottvid | 10% |"))
    assert line.count("incomplete (1/2 failed)") == 3


def test_empty_cache_fails_the_sweep_and_evaluate_before_any_model(tmp_path):
    """Every missing benchmark of a sweep is reported at once, before any model loads (exit 2); a single
    cell whose data is missing is stored as failed and `runners.evaluate` exits non-zero."""
    env = _env(tmp_path / "empty")
    grid = "grid=[{backbone:[tiny_qwen2_5_vl],method:[vanilla],benchmark:[mvbench,videomme,mlvu]}]"
    r = subprocess.run([sys.executable, "-m", "runners.sweep", "experiment=table1", grid, f"results_dir={tmp_path / 'r'}"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, (r.stdout + r.stderr)[-3000:]
    assert "3 benchmark(s)" in r.stderr and "OpenGVLab/MVBench" in r.stderr and "sy1998/MLVU_dev" in r.stderr
    assert not (tmp_path / "r").exists() or not list((tmp_path / "r").glob("*.json"))
    assert not (REPO / "cache" / "tiny").exists() or "build_tiny" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "runners.evaluate", "backbone=tiny_qwen2_5_vl", "method=vanilla",
                        "benchmark=videomme", f"results_dir={tmp_path / 'r'}"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, (r.stdout + r.stderr)[-3000:]
    (f,) = (tmp_path / "r").glob("*.json")
    rec = json.loads(f.read_text())
    assert rec["status"] == "failed" and "DatasetsMissing" in rec["error"] and "lmms-eval/Video-MME" in rec["error"]


def test_unset_hf_home_gets_huggingface_hubs_default():
    """MLVU's utils would read videos from the relative `./~/.cache/huggingface` without it."""
    env = {k: v for k, v in _env(REPO).items() if k != "HF_HOME"}
    code = ("from runners import lmms_glue; lmms_glue.task_manager(False); import os; "
            "from lmms_eval.tasks.mlvu import utils; print(utils.base_cache_dir); print(os.environ['HF_HOME'])")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    mlvu_dir, hf_home = r.stdout.split()[-2:]
    assert os.path.isabs(mlvu_dir) and mlvu_dir == hf_home == os.path.expanduser("~/.cache/huggingface")
