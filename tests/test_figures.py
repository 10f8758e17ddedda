"""runners/figures.py on hand-made stats: PNGs open, axes/series counts, CSV values."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from runners import figures as F


@pytest.fixture
def figs(monkeypatch):
    """The matplotlib figures the module saves, captured as they are written."""
    captured = []
    real_save = F._save
    monkeypatch.setattr(F, "_save", lambda fig, p: (captured.append(fig), real_save(fig, p))[1])
    return captured


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _png_ok(path):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.size[0] > 100 and im.size[1] > 100


def _stats(B, beta, W=None, overflow=0, r_s=0.2):
    return {"B_t": B, "beta_t": beta, "W_t": W or [0.5] * len(B), "budget_overflow": overflow, "r_s": r_s,
            "K": 5, "B_tot": sum(B)}


def test_statistics_by_hand():
    assert F.budget_cv([2, 2, 2]) == 0
    assert F.budget_cv([1, 3]) == pytest.approx(0.5)           # std 1 (population) / mean 2
    assert math.isnan(F.budget_cv([]))
    assert F.budget_ratios({"beta_t": [0.25, 0.25, 0.5]}).tolist() == [0.75, 0.75, 1.5]
    # paper's default: r = 0.1, gamma = 0.3 -> r_t = 0.1^0.3 ~ 0.501, T = 32 -> rho* ~ 1.94
    r_s = 0.1 ** 0.7
    assert F.temporal_retention({"r_s": r_s}, 0.1) == pytest.approx(0.1 ** 0.3)
    assert F.overflow_threshold(32, 0.1 ** 0.3) == pytest.approx(1.94, abs=0.005)
    assert F.overflow_threshold(64, 0.1 ** 0.3) == pytest.approx(1.97, abs=0.005)


def test_figure3(tmp_path):
    pts = [{"gamma": 0.3, "compress_ms": 48.0, "avg": 84.9, "vqa_avg": 95.8, "vtg_avg": 73.9},
           {"gamma": 0.0, "compress_ms": 24.1, "avg": 82.1, "vqa_avg": 94.0, "vtg_avg": 70.2},
           {"gamma": 1.0, "compress_ms": 151.3, "avg": 80.4, "vqa_avg": 93.0, "vtg_avg": 67.8}]
    png, path = F.figure3(pts, tmp_path / "fig3")
    _png_ok(png)
    rows = _rows(path)
    assert [float(r["gamma"]) for r in rows] == [0.0, 0.3, 1.0]
    assert [float(r["compress_ms"]) for r in rows] == [24.1, 48.0, 151.3]
    assert float(rows[1]["avg"]) == 84.9


def test_figure3_axes(tmp_path, figs):
    F.figure3([{"gamma": g, "compress_ms": 10 * g + 1, "avg": 80 + g} for g in (0, 0.5, 1)], tmp_path / "f")
    (ax,) = figs[0].axes
    assert len(ax.lines) == 2                       # the gamma curve and the best-point marker
    assert list(ax.lines[0].get_xdata()) == [1, 6, 11]


def test_figure_a2(tmp_path, figs):
    per = {"mvbench": [{"method_stats": _stats([2, 2, 2], [1 / 3] * 3)},
                       {"method_stats": _stats([1, 3], [0.25, 0.75])},
                       {"method_stats": _stats([1, 1, 4], [0.2, 0.2, 0.6])},
                       {"method_stats": {"tokens_in": 10}}],            # a non-OTT-Vid sample: ignored
           "charades": [_stats([3, 1, 2, 2], [0.4, 0.1, 0.25, 0.25])]}
    png, path = F.figure_a2(per, tmp_path / "a2")
    _png_ok(png)
    rows = _rows(path)
    assert [r["benchmark"] for r in rows] == ["mvbench"] * 3 + ["charades"]
    cvs = [float(r["cv"]) for r in rows]
    assert cvs[:3] == pytest.approx([0.0, 0.5, np.std([1, 1, 4]) / 2])
    assert cvs[3] == pytest.approx(np.std([3, 1, 2, 2]) / 2)
    assert float(rows[0]["median_cv"]) == pytest.approx(0.5)
    (ax,) = figs[0].axes
    assert len(ax.collections) >= 2                                     # one violin body per benchmark
    red = [c for c in ax.collections if c.get_linestyle()[0][1] is not None]
    assert len(red) == 2                                                # one dashed median line per benchmark
    assert [t.get_text() for t in ax.get_xticklabels()] == ["mvbench", "charades"]
    with pytest.raises(ValueError, match="per_benchmark"):
        F.figure_a2({"x": [{"tokens_in": 1}]}, tmp_path / "none")


def test_figure_a3(tmp_path, figs):
    r_s = 0.1 ** 0.7                                                    # r = 0.1, gamma = 0.3
    T = 5
    a = [_stats([3, 3, 3, 3], [0.25] * 4, r_s=r_s),
         _stats([1, 2, 4, 5], [0.05, 0.15, 0.3, 0.5], overflow=1, r_s=r_s)]     # 0.5 * 4 = 2.0 > rho*
    b = [_stats([2, 4, 3, 3], [0.2, 0.3, 0.25, 0.25], r_s=r_s)]
    groups = {("qwen", "mvbench"): a, ("qwen", "videomme"): b, ("llava", "mvbench"): b}
    png, path = F.figure_a3(groups, 0.1, tmp_path / "a3")
    _png_ok(png)
    rows = {(r["backbone"], r["benchmark"]): r for r in _rows(path)}
    assert set(rows) == {("qwen", "mvbench"), ("qwen", "videomme"), ("llava", "mvbench")}
    q = rows[("qwen", "mvbench")]
    star = (T - 1) / (T * (1 - 0.1 ** 0.3))
    assert float(q["rho_star"]) == pytest.approx(star)
    assert int(q["pairs"]) == 8 and int(q["overflow_pairs"]) == 1
    assert float(q["overflow_rate"]) == pytest.approx(1 / 8)
    rho = np.array([1, 1, 1, 1, 0.2, 0.6, 1.2, 2.0])
    assert float(q["rho_median"]) == pytest.approx(np.median(rho))
    assert float(q["frac_rho_above_star"]) == pytest.approx(np.mean(rho > star))
    fig = figs[0]
    assert len(fig.axes) == 4                                           # 2 backbones x 2 benchmarks
    off = [ax for ax in fig.axes if not ax.axison]
    assert len(off) == 1                                                # (llava, videomme) has no data
    ax = fig.axes[0]
    assert len(ax.lines) == 1 and ax.lines[0].get_xdata()[0] == pytest.approx(star)   # the rho* line
    assert "12.50%" in ax.texts[0].get_text()


def test_figure_a4(tmp_path, figs):
    vids = {"dynamic": {"method_stats": {"W_t": [0.9, 0.2, 0.7], "B_t": [1, 6, 2]}},
            "static": {"W_t": [0.1, 0.1, 0.1], "B_t": [3, 3, 3]}}
    png, path = F.figure_a4(vids, tmp_path / "a4")
    _png_ok(png)
    rows = _rows(path)
    assert [(r["video"], int(r["pair"]), float(r["W_t"]), float(r["B_t"])) for r in rows] == [
        ("dynamic", 1, 0.9, 1.0), ("dynamic", 2, 0.2, 6.0), ("dynamic", 3, 0.7, 2.0),
        ("static", 1, 0.1, 3.0), ("static", 2, 0.1, 3.0), ("static", 3, 0.1, 3.0)]
    fig = figs[0]
    assert len(fig.axes) == 4                                           # 2 panels, each with a twin W_t axis
    bars = [ax for ax in fig.axes if ax.patches]
    assert [[p.get_height() for p in ax.patches] for ax in bars] == [[1, 6, 2], [3, 3, 3]]
    lines = [ax for ax in fig.axes if ax.lines]
    assert [list(ax.lines[0].get_ydata()) for ax in lines] == [[0.9, 0.2, 0.7], [0.1, 0.1, 0.1]]


def _cell(bench, family, method, score, samples, gamma=0.3, backbone="qwen2_5_vl_7b", retention=0.1):
    hp = {} if method == "vanilla" else {"retention": retention, "gamma": gamma, "tau_b": 0.3}
    return {"status": "done", "score": score, "sample_stats": samples,
            "cell": {"backbone": {"name": backbone}, "method": method, "hparams": hp,
                     "benchmark": {"name": bench, "family": family}}}


def test_cli_from_cell_jsons(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    st = lambda B, ms: {"doc_id": len(B), "compress_ms": ms,
                        "method_stats": _stats(B, list(np.array(B) / sum(B)), r_s=0.1 ** 0.7)}
    cells = [_cell("mvbench", "vqa", "vanilla", 60.0, []), _cell("charades", "vtg", "vanilla", 40.0, [])]
    for g, (s1, s2, ms) in {0.0: (54.0, 20.0, 10.0), 0.3: (57.0, 30.0, 20.0)}.items():
        cells += [_cell("mvbench", "vqa", "ottvid", s1, [st([2, 2, 2], ms), st([1, 5], ms + 2)], gamma=g),
                  _cell("charades", "vtg", "ottvid", s2, [st([3, 1, 2, 2], ms)], gamma=g)]
    cells.append({**_cell("mvbench", "vqa", "ottvid", 1.0, []), "status": "failed"})
    for i, c in enumerate(cells):
        (runs / f"c{i}.json").write_text(json.dumps(c))
    out = tmp_path / "fig"
    assert F.main(["fig3", "--runs", str(runs), "--out", str(out)]) == 0
    rows = _rows(out / "fig3_gamma.csv")
    assert [float(r["gamma"]) for r in rows] == [0.0, 0.3]
    assert float(rows[0]["vqa_avg"]) == pytest.approx(90.0) and float(rows[0]["vtg_avg"]) == pytest.approx(50.0)
    assert float(rows[1]["avg"]) == pytest.approx((95.0 + 75.0) / 2)
    assert float(rows[1]["compress_ms"]) == pytest.approx((20 + 22 + 20) / 3)
    assert F.main(["figA2", "--runs", str(runs), "--out", str(out)]) == 0
    assert len(_rows(out / "figA2_budget_cv.csv")) == 3                  # gamma = 0.3 cells only
    assert F.main(["figA3", "--runs", str(runs), "--out", str(out)]) == 0
    assert [r["benchmark"] for r in _rows(out / "figA3_rho.csv")] == ["mvbench"]   # VQA only
    assert F.main(["figA4", "--runs", str(runs), "--out", str(out)]) == 0
    rows = _rows(out / "figA4_budget_time.csv")
    assert rows[0]["video"].startswith("dynamic (mvbench:2)") and rows[-1]["video"].startswith("static (mvbench:3)")
    for name in ("fig3_gamma", "figA2_budget_cv", "figA3_rho", "figA4_budget_time"):
        _png_ok(out / f"{name}.png")
