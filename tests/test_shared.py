"""Sample-major sweeps (runners/shared.py): one decode and one vision pass per (backbone, benchmark,
sample) for every cell of a group, cells identical to the per-cell path's, resume at sample
granularity, data parallel over two CPU processes identical to one."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ottvid
from runners import store, sweep
from runners.samples import SampleLog
from runners.shared import group_key, plan_groups
from runners.sweep import plan

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled",
       "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
BENCHES = ["synth_mvbench", "synth_charades_timelens"]
METHODS = ottvid.list_methods()
GRID = ("grid=[{backbone:[tiny_qwen2_5_vl],method:[" + ",".join(METHODS) + "],retention:[0.25],"
        "benchmark:[" + ",".join(BENCHES) + "]}]")
BASE = ["experiment=demo", "progress=false", "wandb.mode=disabled"]
SMALL = "grid=[{backbone:[tiny_qwen2_5_vl],method:[vanilla,ottvid,fastvid],retention:[0.25],benchmark:[%s]}]"
NOT_COMPARED = ("_ms", "_gb", "shared_stages")  # timings are measured, not reproduced


def run_sweep(runs: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runners.sweep", *BASE, f"results_dir={runs}", *extra],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=1200)


def cells_of(runs: Path) -> dict[str, dict]:
    """{cell file name without key: record}; the per-cell identity differs only in the key's timing tag."""
    return {p.name.rsplit("__", 1)[0]: json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))}


def comparable(rec: dict) -> dict:
    return {"score": rec["score"], "n": rec["n"], "per_sample": rec["per_sample"],
            "stats": [{k: v for k, v in s.items() if not k.endswith(NOT_COMPARED)} for s in rec["sample_stats"]]}


def test_groups_are_what_determines_the_visual_input(tmp_path):
    _, cells, _ = plan([*BASE, GRID, f"results_dir={tmp_path}"])
    groups = plan_groups([c for c, _, _ in cells])
    assert len(groups) == len(BENCHES)
    assert all(len(g) == len(METHODS) and len({c.benchmark["name"] for c in g}) == 1 for g in groups)
    _, other, _ = plan([*BASE, GRID, f"results_dir={tmp_path}", "seed=1"])
    assert {group_key(c) for c, _, _ in other}.isdisjoint({group_key(g[0]) for g in groups})


@pytest.mark.slow
def test_shared_cells_equal_per_cell_cells_and_encode_each_sample_once(tmp_path):
    shared, per_cell = tmp_path / "shared", tmp_path / "per_cell"
    r = run_sweep(shared, GRID, "limit=3")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    r = run_sweep(per_cell, GRID, "limit=3", "share_encoding=false")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    a, b = cells_of(shared), cells_of(per_cell)
    assert sorted(a) == sorted(b) and len(a) == len(BENCHES) * len(METHODS)
    for name in a:
        assert a[name]["status"] == b[name]["status"] == "done"
        assert comparable(a[name]) == comparable(b[name]), name
        enc = a[name]["shared_encoding"]
        # the adapter's own counters: one decode and one vision pass per sample for the whole group
        assert enc["decodes"] == enc["vision_passes"] == enc["samples_encoded"] == a[name]["n"] == 3
        assert enc["cells"] == len(METHODS)
        assert all(s["shared_stages"] == ["decode", "vision"] for s in a[name]["sample_stats"])
        assert "shared_encoding" not in b[name]
    assert not list((shared / "samples").glob("*.jsonl"))  # finished cells keep no sample logs


@pytest.mark.slow
def test_killed_group_resumes_at_the_first_unfinished_cell_sample(tmp_path, monkeypatch):
    """A kill after 4 generated (cell, sample) pairs keeps exactly those 4; the rerun generates only the
    others and decodes only the samples some cell still lacks; the cells equal an uninterrupted run."""
    from ottvid.backbones.common import Adapter

    runs = tmp_path / "runs"
    cfg = [*BASE, "limit=2", SMALL % "synth_mvbench"]
    args = [*cfg, f"results_dir={runs}"]
    calls = {"finish": 0, "encode": 0}
    real_finish, real_encode = Adapter.finish, Adapter.encode_sample

    def finish(self, *a, **k):
        if calls["finish"] == 4 and calls.get("kill"):
            raise KeyboardInterrupt("killed")  # not caught by the harness, as a kill is not
        calls["finish"] += 1
        return real_finish(self, *a, **k)

    def encode(self, *a, **k):
        calls["encode"] += 1
        return real_encode(self, *a, **k)

    monkeypatch.setattr(Adapter, "finish", finish)
    monkeypatch.setattr(Adapter, "encode_sample", encode)
    calls["kill"] = True
    with pytest.raises(KeyboardInterrupt):
        sweep.main(args)
    _, cells, _ = plan(args)
    logged = {c.key: len(SampleLog(c, runs).done) for c, _, _ in cells}
    assert sorted(logged.values()) == [1, 1, 2]  # sample 0 for all three cells, sample 1 for the first
    assert not list(runs.glob("*.json")) and not list(runs.glob("*.lock"))
    calls.update(finish=0, encode=0, kill=False)
    assert sweep.main(args) == 0
    assert calls["finish"] == 3 * 2 - 4 and calls["encode"] == 1
    recs = cells_of(runs)
    assert len(recs) == 3 and all(r["status"] == "done" for r in recs.values())
    clean = tmp_path / "clean"
    assert sweep.main([*cfg, f"results_dir={clean}"]) == 0
    ref = cells_of(clean)
    assert {k: comparable(v) for k, v in recs.items()} == {k: comparable(v) for k, v in ref.items()}


@pytest.mark.parametrize("gpus", ["abc", "0", "-2", "1.5"])
def test_torchrun_launcher_rejects_a_bad_gpu_count(gpus, capsys):
    assert sweep._via_torchrun([], gpus) == 2
    assert f"gpus={gpus!r}: must be a positive integer" in capsys.readouterr().err


@pytest.mark.slow
def test_two_cpu_processes_under_torchrun_equal_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["limit=5", SMALL % "synth_mvbench,synth_charades_timelens"]
    r = run_sweep(one, *args)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    r = run_sweep(two, *args, "launcher=torchrun", "gpus=2")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "--nproc_per_node=2" in r.stdout
    a, b = cells_of(one), cells_of(two)
    assert sorted(a) == sorted(b) and len(a) == 6
    for name in a:
        assert comparable(a[name]) == comparable(b[name]), name
        # 5 samples, split over 2 ranks: still one decode and one vision pass per sample in all
        assert b[name]["shared_encoding"]["vision_passes"] == a[name]["shared_encoding"]["vision_passes"] == 5


@pytest.mark.slow
def test_slurm_launcher_runs_one_job_per_group(tmp_path):
    """submitit's local executor stands in for SLURM: one array task per group, every cell done."""
    runs = tmp_path / "runs"
    r = run_sweep(runs, "limit=1", "launcher=slurm", "slurm.cluster=local", f"slurm.folder={tmp_path / 'slurm'}",
                  SMALL % "synth_mvbench,synth_charades_timelens")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "submitted 2 jobs" in r.stdout
    recs = cells_of(runs)
    assert len(recs) == 6 and all(x["status"] == "done" for x in recs.values())
    assert len({x["shared_encoding"]["group"] for x in recs.values()}) == 2


def test_table4_cells_are_per_cell_and_never_reuse_shared_results(tmp_path):
    _, t1, _ = plan(["experiment=table1", f"results_dir={tmp_path}"])
    _, t4, _ = plan(["experiment=table4", f"results_dir={tmp_path}"])
    assert all(c.share_encoding for c, _, _ in t1) and not any(c.share_encoding for c, _, _ in t4)
    assert {c.key for c, _, _ in t1}.isdisjoint({c.key for c, _, _ in t4})


def test_sample_log_ignores_a_torn_line_and_retries_failures(tmp_path):
    _, cells, _ = plan([*BASE, GRID, f"results_dir={tmp_path}"])
    cell = cells[0][0]
    log = SampleLog(cell, tmp_path)
    log.append("t/0", {"text": "A", "stats": {}})
    log.append("t/1", {"failure": {"error": "gone"}})
    with open(log.path, "a") as f:
        f.write('{"key": "t/2", "te')  # killed mid-write
    again = SampleLog(cell, tmp_path)
    assert set(again.done) == {"t/0"}
    store.atomic_write_json(tmp_path / "x.json", {})  # the store and the logs share a folder
    again.discard()
    assert not again.files()


def test_a_new_method_config_switches_the_compressor_without_reloading(tmp_path):
    """Per-cell path too: the checkpoint loads once per load setting, methods only reconfigure it."""
    from runners import lmms_glue

    _, cells, _ = plan([*BASE, SMALL % "synth_mvbench", f"results_dir={tmp_path}"])
    models = [lmms_glue.load_model(c) for c, _, _ in cells]
    assert all(m is models[0] for m in models)
    for c, _, _ in cells:
        m = lmms_glue.load_model(c)
        assert m.adapter.method == c.method and m.adapter.hparams.get("retention", 1.0) == c.hparams.get("retention", 1.0)
    _, other, _ = plan([*BASE, SMALL % "synth_mvbench", f"results_dir={tmp_path}", "backbone.max_frames_num=4"])
    assert lmms_glue.load_model(other[0][0]) is not models[0]  # another protocol: another load


def test_ranks_leave_their_process_group_on_a_normal_return(monkeypatch):
    """A gloo group left for the interpreter's exit can abort a finished rank (exit -6, seen once in
    CI on the torchrun test): the sweep destroys it after a normal return, not after an exception
    (another rank may still wait in a collective)."""
    import torch.distributed as tdist

    from runners import dist

    monkeypatch.setenv("WORLD_SIZE", "2")   # dist.shutdown acts on multi-rank launches only
    tdist.init_process_group("gloo", store=tdist.HashStore(), rank=0, world_size=1)
    dist.shutdown()
    assert not tdist.is_initialized()
    calls = []
    monkeypatch.setattr(dist, "init", lambda: calls.append("init"))
    monkeypatch.setattr(dist, "shutdown", lambda: calls.append("shutdown"))
    monkeypatch.setattr(sweep, "_main", lambda argv: 3)
    assert sweep.main([]) == 3 and calls == ["init", "shutdown"]
    calls.clear()

    def boom(argv):
        raise RuntimeError("cell crashed")

    monkeypatch.setattr(sweep, "_main", boom)
    with pytest.raises(RuntimeError):
        sweep.main([])
    assert calls == ["init"]
