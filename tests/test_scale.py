"""Demo scale (configs/scale/demo.yaml): the same grids on tiny backbones and synthetic shards,
aggregated apart from the real cells; Makefile targets (dry runs); figures from cell JSONs of a scale."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from runners import aggregate, figures, store
from runners.cell import CellError
from runners.sweep import apply_scale, load_scale, plan

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}


def _sig(cells, scale):
    """(backbone as its real name, method, hyperparameters, benchmark column) of every cell."""
    real_of = {v: k for k, v in load_scale(scale)["backbone"].items()}
    return Counter((real_of.get(c.backbone["name"], c.backbone["name"]), c.method,
                    json.dumps(c.hparams, sort_keys=True, default=str), c.benchmark["column"]) for c, _, _ in cells)


def test_scale_maps_cover_every_real_config():
    demo = load_scale("demo")
    for ax in ("backbone", "benchmark"):
        real = {p.stem for p in (REPO / "configs" / ax).glob("*.yaml") if not p.stem.startswith(("tiny_", "synth_"))}
        assert set(demo[ax]) == real
        assert all((REPO / "configs" / ax / f"{v}.yaml").is_file() for v in demo[ax].values())
    assert load_scale("real")["backbone"] == {} and load_scale("real")["benchmark"] == {}
    with pytest.raises(CellError, match="unknown scale 'huge'; choices: demo, real"):
        load_scale("huge")


def test_apply_scale_maps_and_rejects_unmapped_values():
    demo = load_scale("demo")
    grid = [{"backbone": ["qwen2_5_vl_7b", "tiny_llava_video"], "method": ["ottvid"], "benchmark": "mvbench"}]
    assert apply_scale(grid, demo) == [{"backbone": ["tiny_qwen2_5_vl", "tiny_llava_video"], "method": ["ottvid"],
                                        "benchmark": ["synth_mvbench"]}]
    with pytest.raises(CellError, match="no twin at scale 'demo'"):
        apply_scale([{"backbone": ["some_70b"]}], demo)
    assert apply_scale(grid, load_scale("real")) == grid


@pytest.mark.parametrize("exp", ["table4", "table3"])
def test_demo_plan_is_the_real_plan_on_twins(tmp_path, exp):
    _, real, _ = plan([f"experiment={exp}", f"results_dir={tmp_path}"])
    _, demo, _ = plan([f"experiment={exp}", "scale=demo", f"results_dir={tmp_path}"])
    assert {c.backbone["name"] for c, _, _ in real} == {"qwen2_5_vl_7b"}
    assert {c.backbone["name"] for c, _, _ in demo} == {"tiny_qwen2_5_vl"}
    assert all(c.benchmark["name"].startswith("synth_") and c.backbone["tiny"] for c, _, _ in demo)
    assert _sig(demo, "demo") == _sig(real, "demo")             # same methods, ratios, knobs, columns
    assert not {c.key for c, _, _ in real} & {c.key for c, _, _ in demo}
    if exp == "table4":
        assert Counter((c.method, c.retention) for c, _, _ in demo) == Counter(
            {("vanilla", 1.0): 6, ("fastvid", 0.1): 6, ("unicomp", 0.1): 6, ("ottvid", 0.1): 6})


def test_demo_plan_table2_uses_both_tiny_llava_twins(tmp_path):
    _, demo, _ = plan(["experiment=table2", "scale=demo", f"results_dir={tmp_path}"])
    assert {c.backbone["name"] for c, _, _ in demo} == {"tiny_llava_onevision", "tiny_llava_video"}
    assert len(demo) == 2 * 4 * (1 + 5 * 2)


def _fake(cell, score):
    sc = {str(i): score for i in range(4)}
    return {"cell": cell.as_dict(), "status": "done", "score": score, "n": 4,
            "per_sample": {"scores": sc, "groups": None}, "stats_summary": {}}


def test_aggregate_reads_only_its_scale_and_sets_published_beside(tmp_path):
    """Real and demo cells of table3 in one results dir: each scale's table reads only its own cells,
    says its scale, and every ablation row carries the paper's Table A2 numbers for its variant."""
    for args, score in ((["experiment=table3"], 50.0), (["experiment=table3", "scale=demo"], 20.0)):
        _, cells, _ = plan(args + [f"results_dir={tmp_path}"])
        for cell, _, _ in cells:
            store.atomic_write_json(tmp_path / cell.filename(), _fake(cell, score))
    demo = aggregate.build(["experiment=table3", "scale=demo", f"results_dir={tmp_path}"])
    real = aggregate.build(["experiment=table3", f"results_dir={tmp_path}"])
    assert demo["scale"] == "demo" and demo["demo"] and not real["demo"]
    assert set(demo["long"].score) == {20.0} and set(real["long"].score) == {50.0}
    assert aggregate.tables_dir(demo) == REPO / "results" / "tables" / "demo"
    assert aggregate.tables_dir(real) == REPO / "results" / "tables"
    assert "**Demo scale**" in aggregate.header(demo) and "Demo scale" not in aggregate.header(real)
    for t in (demo, real):
        rows = {r["knobs"]: r for r in t["rows"] if r["method"] == "ottvid"}
        assert set(rows) == {"mass=loo,budget=adaptive", "mass=loo,budget=uniform", "mass=uniform,budget=adaptive",
                             "mass=uniform,budget=uniform"}
        bb = t["backbones"][0]
        assert rows["mass=uniform,budget=uniform"]["paper"][(bb, "activitynet_timelens")] == 13.5
        assert rows["mass=loo,budget=adaptive"]["paper"]["vtg_avg"] == 73.9
        assert rows["mass=loo,budget=uniform"]["setting"] == "budget=uniform"
        assert "vqa_p_vs_ottvid" in rows["mass=loo,budget=uniform"]         # tested against the default row
        md, df, _ = aggregate.render(t)
        assert md.count("| *published* |") == 4 and "ottvid (mass=uniform,budget=uniform)" in md
        assert df["paper:vtg_avg"].notna().sum() == 4
        assert "| 13.5 |" in aggregate.delta(t, df)


@pytest.mark.parametrize("exp,table", [("tau_b", "tableA3"), ("tau_m", "tableA4"), ("tau_c", "tableA5"),
                                       ("alpha", "tableA6"), ("spatial", "tableA1")])
def test_every_ablation_row_finds_its_published_variant(tmp_path, exp, table):
    """Knob values as the grid writes them (1.0, inf, position) match the paper's variant strings."""
    import pandas as pd

    assert aggregate.EXPERIMENT_TABLE[exp] == table
    _, cells, _ = plan([f"experiment={exp}", "scale=demo", f"results_dir={tmp_path}"])
    for cell, _, _ in cells:
        if cell.benchmark["name"] == "synth_mvbench":
            store.atomic_write_json(tmp_path / cell.filename(), _fake(cell, 10.0))
    t = aggregate.build([f"experiment={exp}", "scale=demo", f"results_dir={tmp_path}"])
    pub = pd.read_csv(aggregate.PAPER, keep_default_na=False)
    variants = set(pub[pub.table == table].variant)
    rows = [r for r in t["rows"] if r["method"] == "ottvid"]
    assert len(rows) == len(variants) and all(len(r["paper"]) == 8 for r in rows)


def test_make_targets_dry_run():
    if not shutil.which("make"):
        pytest.skip("no make")

    def n(*args):
        r = subprocess.run(["make", "-n", *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout

    out = n("efficiency", "SCALE=demo")
    assert "tasks.synthetic.generate" in out
    assert "runners.sweep experiment=table4 scale=demo" in out and "runners.aggregate experiment=table4 scale=demo" in out
    out = n("efficiency")
    assert "scale=" not in out and "tasks.synthetic.generate" not in out
    out = n("fig3", "SCALE=demo")
    assert "experiment=gamma_sweep scale=demo" in out and "runners.figures fig3 --scale demo" in out
    out = n("figures", "SCALE=demo")
    assert "experiment=figures scale=demo" in out and "runners.figures all --scale demo" in out
    out = n("ablations", "SCALE=demo")
    for e in ("table3", "spatial", "tau_b", "tau_m", "tau_c", "alpha", "gamma_sweep"):
        assert e in out
    assert "scale=demo" in out and "runners.figures fig3 --scale demo" in out
    out = n("table2", "SCALE=demo")
    assert "experiment=table2 scale=demo" in out
    out = n("visualize")
    assert "runners.visualize --video tests/data/moving_square.mp4 --backbone tiny_qwen2_5_vl --method ottvid " \
           "--retention 0.1" in out
    out = n("visualize", "METHOD=fastvid", "RETENTION=0.25", "SET=tau=0.8")
    assert "--method fastvid --retention 0.25" in out and "--set tau=0.8" in out
    assert "runners.sweep experiment=tau_b scale=demo dry_run=true" in n("sweep", "EXP=tau_b", "SCALE=demo", "DRY=1")


def _cell(bb, bench, fam, method, score, samples, tiny, gamma=0.3, **hp):
    h = {} if method == "vanilla" else {"retention": 0.1, "gamma": gamma, "tau_b": 0.3, **hp}
    return {"status": "done", "score": score, "n": len(samples), "sample_stats": samples,
            "cell": {"backbone": {"name": bb, "tiny": tiny}, "method": method, "hparams": h,
                     "benchmark": {"name": bench, "family": fam}}}


def test_figures_read_only_their_scale_and_default_settings(tmp_path):
    """Figures from cell JSONs: a demo-scale cell never enters a real-scale figure (nor the reverse), and
    an ablation cell at gamma = 0.3 (tau_m = 1) never enters Figure A2; Figure 3 only reads the
    gamma sweep (other knobs at their defaults)."""
    runs = tmp_path / "runs"
    runs.mkdir()
    st = lambda B, ms=5.0: {"doc_id": len(B), "compress_ms": ms,
                            "method_stats": {"B_t": B, "beta_t": [b / sum(B) for b in B], "W_t": [0.1] * len(B),
                                             "budget_overflow": 0, "r_s": 0.1 ** 0.7}}
    cells = [
        _cell("qwen2_5_vl_7b", "mvbench", "vqa", "vanilla", 60.0, [], False),
        _cell("qwen2_5_vl_7b", "mvbench", "vqa", "ottvid", 54.0, [st([2, 2, 2]), st([1, 3])], False),
        _cell("qwen2_5_vl_7b", "mvbench", "vqa", "ottvid", 30.0, [st([1, 5], 99.0)], False, tau_m=1.0),
        _cell("qwen2_5_vl_7b", "mvbench", "vqa", "ottvid", 57.0, [st([1, 1, 4], 9.0)], False, gamma=0.5),
        _cell("tiny_llava_onevision", "synth_mvbench", "vqa", "ottvid", 20.0, [st([1, 2, 3])], True),
        _cell("tiny_qwen2_5_vl", "synth_mvbench", "vqa", "vanilla", 20.0, [], True),
        _cell("tiny_qwen2_5_vl", "synth_mvbench", "vqa", "ottvid", 20.0, [st([3, 1])], True),
    ]
    for i, c in enumerate(cells):
        (runs / f"c{i}.json").write_text(json.dumps(c))
    out = tmp_path / "fig"
    assert figures.main(["figA2", "--runs", str(runs), "--out", str(out)]) == 0
    rows = list(__import__("csv").DictReader(open(out / "figA2_budget_cv.csv")))
    assert [(r["benchmark"], round(float(r["cv"]), 3)) for r in rows] == [("mvbench", 0.0), ("mvbench", 0.5)]
    assert figures.main(["fig3", "--runs", str(runs), "--out", str(out)]) == 0
    rows = list(__import__("csv").DictReader(open(out / "fig3_gamma.csv")))
    assert [(float(r["gamma"]), float(r["compress_ms"]), float(r["avg"])) for r in rows] == [
        (0.3, 5.0, 90.0), (0.5, 9.0, 95.0)]
    demo = tmp_path / "demo"
    assert figures.main(["all", "--scale", "demo", "--runs", str(runs), "--out", str(demo)]) == 0
    rows = list(__import__("csv").DictReader(open(demo / "figA2_budget_cv.csv")))
    assert [r["benchmark"] for r in rows] == ["synth_mvbench"]                   # the tiny LLaVA-OV twin only
    rows = list(__import__("csv").DictReader(open(demo / "figA3_rho.csv")))
    assert {r["backbone"] for r in rows} == {"tiny_llava_onevision", "tiny_qwen2_5_vl"}
    for name in ("figA2_budget_cv", "figA3_rho", "figA4_budget_time"):
        assert (demo / f"{name}.png").stat().st_size > 1000
