"""Configs, validation, store, sweep planning, launchers and aggregation (no model needed),
plus one slow end-to-end sweep on the tiny backbone."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

import ottvid
from runners import aggregate, store
from runners.cell import CellError
from runners.sweep import plan

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}
B6 = ["mvbench", "videomme", "longvideobench", "mlvu", "charades_timelens", "activitynet_timelens"]


def test_method_configs_carry_the_registry_defaults():
    for m in ottvid.list_methods():
        raw = OmegaConf.create(yaml.safe_load(open(REPO / "configs" / "method" / f"{m}.yaml")))
        y = OmegaConf.to_container(raw, resolve=True)  # no backbone: backbone-chosen knobs take their default
        assert y.pop("method") == {"name": m}
        y.pop("retention", None)
        p = ottvid.method_params(m)
        p.pop("retention")
        assert y == p, m


def test_table1_plan_is_exactly_the_paper_grid(tmp_path):
    _, cells, _ = plan(["experiment=table1", f"results_dir={tmp_path}"])
    got = {(c.backbone["name"], c.method, c.retention, c.benchmark["name"]) for c, _, _ in cells}
    want = {("qwen2_5_vl_7b", "vanilla", 1.0, b) for b in B6} | {
        ("qwen2_5_vl_7b", m, r, b) for m in ("holitom", "fastvid", "flashvid", "unicomp", "ottvid")
        for r in (0.25, 0.2, 0.15, 0.1) for b in B6}
    assert len(cells) == len(got) == 126 and got == want
    # FastVID runs its official Qwen2.5-VL port on Qwen2.5-VL (the backbone config chooses the variant)
    assert {c.hparams["variant"] for c, _, _ in cells if c.method == "fastvid"} == {"qwen2_5_vl"}
    assert all(set(c.hparams) == set(ottvid.method_params(c.method)) for c, _, _ in cells)
    assert {c.hparams["variant"] for c, _, _ in cells if c.method == "ottvid"} == {"qwen2_5_vl"}


def test_table2_ottvid_follows_the_official_llava_path(tmp_path):
    """OTT-Vid's official LLaVA path on the LLaVA backbones (backbone config `ottvid_variant`)."""
    _, cells, _ = plan(["experiment=table2", f"results_dir={tmp_path}"])
    ott = [c for c, _, _ in cells if c.method == "ottvid"]
    assert ott and {c.backbone["name"] for c in ott} <= {"llava_ov_7b", "llava_video_7b"}
    assert {c.hparams["variant"] for c in ott} == {"llava"}


@pytest.mark.parametrize("override, needle", [
    ("retention=1.5", "retention: must be a number in (0, 1], got 1.5"),
    ("gamma=2", "gamma"),
    ("tau_b=-1", "tau_b"),
])
def test_invalid_values_fail_before_any_model(tmp_path, override, needle):
    with pytest.raises(CellError, match=None) as e:
        plan(["experiment=tau_b", override, f"results_dir={tmp_path}"])
    assert needle in str(e.value)


@pytest.mark.parametrize("override, needle", [("method=ottvd", "ottvid"), ("benchmark=mvbnch", "mvbench")])
def test_typos_name_the_value_and_the_choices(override, needle):
    r = subprocess.run([sys.executable, "-m", "runners.evaluate", override, "dry_run=true"], cwd=REPO, env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    err = r.stderr + r.stdout
    assert override.split("=")[1] in err and needle in err and "Available options" in err


def test_vtg_on_llava_is_rejected(tmp_path):
    with pytest.raises(CellError, match="temporal grounding"):
        plan(["experiment=table1", f"results_dir={tmp_path}",
              "grid=[{backbone:[llava_ov_7b],method:[vanilla],benchmark:[charades_timelens]}]"])


def test_multirun_gives_four_cells_in_one_group(tmp_path):
    r = subprocess.run([sys.executable, "-m", "runners.evaluate", "-m", "method=ottvid", "retention=0.1,0.25",
                        "tau_b=0.1,0.3", "dry_run=true", f"results_dir={tmp_path}",
                        f"hydra.sweep.dir={tmp_path}/mr"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stdout.splitlines() if l.startswith("[dry-run]")]
    assert len(lines) == 4 and len({l.split()[-1] for l in lines}) == 4


def test_submitit_local_launcher_runs_cells(tmp_path):
    r = subprocess.run([sys.executable, "-m", "runners.evaluate", "-m", "hydra/launcher=local_submitit",
                        "retention=0.1,0.2", "dry_run=true", f"results_dir={tmp_path}/runs",
                        f"hydra.sweep.dir={tmp_path}/mr"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    outs = sorted((tmp_path / "mr" / ".submitit").rglob("*_log.out"))
    assert len(outs) == 2
    assert all("[dry-run] pending" in o.read_text() for o in outs)


def test_store_atomic_write_and_claims(tmp_path):
    p = tmp_path / "x.json"
    store.atomic_write_json(p, {"status": "done", "v": float("inf")})
    assert store.is_done(p) and json.loads(p.read_text())["v"] == "inf"
    assert not list(tmp_path.glob("*.tmp"))
    a, b = store.Claim(p), store.Claim(p)
    assert a.acquire() and not b.acquire()
    a.release()
    assert b.acquire()
    b.release()
    # a claim left by a dead process on this host is stale
    store.atomic_write_json(p.with_suffix(".lock"), {"pid": 2 ** 22 + 12345, "host": os.uname().nodename, "time": 9e9})
    assert store.Claim(p).acquire()


def _fake_run(cell, scores, groups=None):
    s = aggregate._stat(__import__("numpy").array(list(scores.values()), float), None) if not groups else None
    return {"cell": cell.as_dict(), "status": "done", "score": float(s) if s is not None else
            float(sum(scores.values()) / len(scores)), "n": len(scores),
            "per_sample": {"scores": scores, "groups": groups}, "stats_summary": {}}


def test_aggregate_layout_missing_cells_and_tests(tmp_path):
    args = ["experiment=demo", f"results_dir={tmp_path}"]
    _, cells, _ = plan(args)
    import numpy as np
    rng = np.random.default_rng(0)
    for cell, _, _ in cells:
        if cell.method == "fastvid" and cell.retention == 0.1 and cell.benchmark["name"] == "synth_mvbench":
            continue  # a missing cell
        base = 60 if cell.method in ("vanilla", "ottvid") else 40
        sc = {str(i): float(base + 40 * (rng.random() < 0.5)) for i in range(20)}
        store.atomic_write_json(tmp_path / cell.filename(), _fake_run(cell, sc))
    t = aggregate.build(args)
    md, df, tex = aggregate.render(t)
    row = df[(df.method == "fastvid") & (df.retention == 0.1)].iloc[0]
    assert np.isnan(row["mvbench"]) and np.isnan(row["vqa_avg"]) and not np.isnan(row["vtg_avg"])
    van = df[df.method == "vanilla"].iloc[0]
    assert van["vqa_avg"] == pytest.approx(100.0) and van["vtg_avg"] == pytest.approx(100.0)
    assert "—" in md and "**" in md and "[" in md
    hol = [r for r in t["rows"] if r["method"] == "holitom" and r["retention"] == 0.25][0]
    assert hol["vqa_diff_vs_ottvid"] < 0 and hol["vqa_p_vs_ottvid"] < 0.05


def test_avg_leaves_out_benchmarks_where_vanilla_scores_zero(tmp_path):
    """Retention is undefined where our vanilla scores 0: that benchmark is left out of Avg. (%) and the
    average is flagged; a missing cell still makes the average missing."""
    args = ["experiment=demo", f"results_dir={tmp_path}"]
    _, cells, _ = plan(args)
    for cell, _, _ in cells:
        zero = cell.method == "vanilla" and cell.benchmark["name"] == "synth_mlvu"
        sc = {str(i): 0.0 if zero else float(100 * (i % 2 if cell.method == "vanilla" else i % 4 == 0))
              for i in range(8)}
        store.atomic_write_json(tmp_path / cell.filename(), _fake_run(cell, sc))
    t = aggregate.build(args)
    md, df, _ = aggregate.render(t)
    ott = [r for r in t["rows"] if r["method"] == "ottvid" and r["retention"] == 0.1][0]
    assert ott["vqa_avg_undefined"] == ["mlvu"]
    assert ott["vqa_avg"] == pytest.approx(50.0)  # 25 / 50 on the three benchmarks with a defined ratio
    line = next(x for x in md.splitlines() if x.startswith("| ottvid | 10% |"))
    assert "50.0**†" in line or "50.0†" in line  # flagged in the table
    assert not ott["vtg_avg_undefined"]


def test_bootstrap_ci_and_paired_test_behave():
    ci = aggregate.bootstrap_ci({str(i): float(i % 2) * 100 for i in range(200)}, None)
    assert ci[0] < 50 < ci[1] and ci[1] - ci[0] < 20
    a = {str(i): float(i % 2) * 100 for i in range(100)}
    d, p = aggregate.paired_test([a], [dict(a)], [50.0])
    assert d == 0 and p == 1.0


@pytest.mark.slow
def test_demo_sweep_end_to_end_and_resume(tmp_path):
    """Two synthetic shards x vanilla + ottvid@0.1 on the tiny Qwen2.5-VL; a deleted cell (as if the
    sweep was killed) is the only one recomputed on rerun."""
    runs = tmp_path / "runs"
    args = [sys.executable, "-m", "runners.sweep", "experiment=demo", f"results_dir={runs}", "progress=false",
            "wandb.mode=offline", "limit=2",
            "grid=[{backbone:[tiny_qwen2_5_vl],method:[vanilla,ottvid],retention:[0.1],"
            "benchmark:[synth_mvbench,synth_charades_timelens]}]"]
    r = subprocess.run(args, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    files = sorted(runs.glob("*.json"))
    assert len(files) == 4
    recs = [json.loads(f.read_text()) for f in files]
    assert all(x["status"] == "done" and x["n"] == 2 and x["versions"]["torch"] for x in recs)
    assert all(len(x["per_sample"]["scores"]) == 2 and x["stats_summary"]["samples"] == 2 for x in recs)
    mt = {f: f.stat().st_mtime_ns for f in files}
    files[0].unlink()
    r = subprocess.run(args, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert "1 to run" in r.stdout, r.stdout[-2000:]
    assert all(f.stat().st_mtime_ns == mt[f] for f in files[1:]) and files[0].exists()


def test_claim_survives_pid_reuse_and_the_empty_lock_window(tmp_path):
    """A lock whose pid is alive but belongs to another process (pid reused after the holder died) is
    stale; a lock that is still empty (another claimant between create and write) is not; a live
    holder's lock is never taken, and releasing only removes one's own lock."""
    p = tmp_path / "cell.json"
    lock = p.with_suffix(".lock")
    host = os.uname().nodename
    # pid 1 is alive but started long before this holder did: the pid was reused
    store.atomic_write_json(lock, {"pid": 1, "host": host, "time": 9e9, "start": 12345.0, "token": "old"})
    c = store.Claim(p)
    assert c.acquire(), "a claim whose pid now belongs to another process must be taken over"
    assert json.loads(lock.read_text())["token"] == c.token
    other = store.Claim(p)
    assert not other.acquire()  # a live holder (this process) keeps it
    other.release()
    assert lock.exists()  # releasing a claim one does not hold removes nothing
    c.release()
    assert not lock.exists()
    # the create-then-write window of another claimant: an empty lock just created is held
    lock.write_text("")
    assert not store.Claim(p).acquire() and lock.exists()
    # ... but an empty lock left behind for longer than the grace period is stale
    old = os.path.getmtime(lock) - 3600
    os.utime(lock, (old, old))
    d = store.Claim(p)
    assert d.acquire()
    d.release()
    # the lock file appears with its content: no reader ever sees it empty
    e = store.Claim(p)
    assert e.acquire() and json.loads(lock.read_text())["pid"] == os.getpid()
    e.release()
    assert not list(tmp_path.glob(".*"))  # no private temporary files left behind


def test_wandb_run_ids_never_collide_across_relogs(tmp_path, monkeypatch):
    """Logging the same cell twice (a rerun, or into a second experiment's group, even within the same
    second) gives two distinct W&B runs."""
    from runners import wandb_log

    _, cells, _ = plan(["experiment=demo", f"results_dir={tmp_path}"])
    rec = _fake_run(cells[0][0], {"0": 100.0})
    rec["started"] = "2025-01-01T00:00:00+00:00"
    ids = [wandb_log.log_cell({"mode": "offline"}, g, rec, str(tmp_path / "wandb"))["id"] for g in ("a", "b", "a")]
    assert len(set(ids)) == 3 and all(i.startswith(cells[0][0].key) for i in ids)


@pytest.mark.parametrize("override, needle", [
    ("+method.gamma=0.5", r"method.gamma=0.5 changes nothing: hyperparameters are top-level keys; write gamma=0.5"),
    ("+method.foo=1", r"method.foo=1 changes nothing.*'foo' is not a hyperparameter of 'ottvid'; choices: .*tau_b"),
    ("+backbone.max_frames=16", r"backbone.max_frames changes nothing.*backbone.model_args.max_frames.*max_frames_num"),
    ("+benchmark.tau_b=0.1", r"benchmark.tau_b changes nothing.*top-level key \(tau_b=...\)"),
])
def test_overrides_that_change_nothing_are_rejected_with_the_right_spelling(override, needle):
    from runners.cell import resolve_cell

    def cell(*ov):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
            return resolve_cell(compose("evaluate", overrides=["method=ottvid", *ov]))

    with pytest.raises(CellError, match=needle):
        cell(override)
    assert cell("gamma=0.5").hparams["gamma"] == 0.5  # the right spelling does what was meant


def test_failed_and_incomplete_cells_show_as_such_and_stay_out_unless_opted_in(tmp_path):
    args = ["experiment=demo", f"results_dir={tmp_path}"]
    _, cells, _ = plan(args)
    for cell, _, _ in cells:
        sc = {str(i): float(100 * (i % 2)) for i in range(8)}
        rec = _fake_run(cell, sc)
        if cell.method == "ottvid" and cell.retention == 0.1:
            if cell.benchmark["name"] == "synth_mvbench":
                rec.update(status="incomplete", n_failed=1, n_samples=8)
            elif cell.benchmark["name"] == "synth_videomme":
                rec = {"cell": cell.as_dict(), "status": "failed", "error": "RuntimeError: boom"}
        store.atomic_write_json(tmp_path / cell.filename(), rec)
    md, df, _ = aggregate.render(aggregate.build(args))
    line = next(x for x in md.splitlines() if x.startswith("| ottvid | 10% |"))
    assert "incomplete (1/8 failed)" in line and "| failed |" in line
    row = df[(df.method == "ottvid") & (df.retention == 0.1)].iloc[0]
    assert math.isnan(row["mvbench"]) and math.isnan(row["vqa_avg"])
    md, df, _ = aggregate.render(aggregate.build(args + ["include_incomplete=true"]))
    line = next(x for x in md.splitlines() if x.startswith("| ottvid | 10% |"))
    assert "50.0" in line and "‡incomplete (1/8 failed)" in line and "| failed |" in line
    assert df[(df.method == "ottvid") & (df.retention == 0.1)].iloc[0]["mvbench"] == pytest.approx(50.0)


def test_two_benchmarks_in_one_column_is_an_error(tmp_path):
    args = ["experiment=demo", f"results_dir={tmp_path}",
            "grid=[{backbone:[tiny_qwen2_5_vl],method:[vanilla],benchmark:[synth_mvbench,mvbench]}]"]
    with pytest.raises(CellError, match=r"\['mvbench', 'synth_mvbench'\] both fill column 'mvbench'"):
        aggregate.build(args)


@pytest.mark.parametrize("share", ["true", "false"])
def test_sweep_counts_are_true_when_another_sweep_shares_the_results_dir(tmp_path, monkeypatch, capsys, share):
    """Of three pending cells, one is being run by another sweep (its claim is held) and one is finished
    by another sweep while this one runs: this sweep evaluates one and says so (per cell or shared)."""
    from runners import lmms_glue, sweep

    args = ["experiment=demo", f"results_dir={tmp_path}", "wandb.mode=disabled", "progress=false",
            f"share_encoding={share}",
            "grid=[{backbone:[tiny_qwen2_5_vl],method:[vanilla],benchmark:[synth_mlvu,synth_mvbench,synth_videomme]}]"]
    base, cells, _ = plan(args)
    by = {c.benchmark["name"]: c for c, _, _ in cells}
    held = store.Claim(tmp_path / by["synth_mlvu"].filename())
    assert held.acquire()  # another sweep is running this cell

    def fake_evaluate(cell, lm=None):  # meanwhile another sweep finishes synth_videomme
        other = by["synth_videomme"]
        store.atomic_write_json(tmp_path / other.filename(), _fake_run(other, {"0": 100.0}))
        return {"metric": "x", "metrics": {}, "score": 50.0, "n": 2, "n_samples": 2, "n_failed": 0,
                "failed_samples": [], "per_sample": {"scores": {"0": 0.0, "1": 100.0}, "groups": None}}

    monkeypatch.setattr(lmms_glue, "evaluate", fake_evaluate)
    rc = sweep._local(base, cells, tmp_path, "g", fail_fast=False)
    held.release()
    out = capsys.readouterr().out
    assert rc == 0
    assert "1 evaluated, 0 failed, 1 already done by another process, 1 running in another process" in out
    assert store.read(tmp_path / by["synth_videomme"].filename())["score"] == 100.0  # not re-evaluated
