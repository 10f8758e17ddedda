"""Diagnostic figures of the paper (Figure 3, App. C Figures A2-A4): PNG + the CSV behind each.

Every figure function takes plain Python data (lists of per-sample `method_stats` dicts as OTT-Vid
writes them, see docs/ottvid.md) so it can be drawn from hand-made numbers as well as from the
cell JSONs of results/runs/. The CLI reads those JSONs:

    python -m runners.figures fig3  [--runs results/runs] [--out results/figures] [--backbone qwen2_5_vl_7b]
    python -m runners.figures figA2 [--backbone qwen2_5_vl_7b] [--retention 0.1]
    python -m runners.figures figA3 [--retention 0.1]
    python -m runners.figures figA4 [--dynamic BENCH:DOC_ID] [--static BENCH:DOC_ID] [--backbone ...]
        (without --dynamic/--static: the videos with the largest / smallest CV of B_t)
    python -m runners.figures all   (Figures A2-A4)

`--scale demo` (configs/scale/demo.yaml) reads the demo-scale cells instead: the default backbone is
the tiny twin of Qwen2.5-VL-7B, Figure A3's rows are the tiny backbones, and the files go to
results/figures/demo/. At any scale only cells of that scale are read, and only OTT-Vid cells whose
other hyperparameters are the registry defaults (so an ablation's cells at gamma = 0.3 never enter
Figure A2, nor a tau_b = 1 cell Figure 3); a cell stored twice (e.g. with and without `limit`)
counts once, the one with the most samples.

Definitions (paper App. C): CV = sigma(B_t) / mu(B_t) over the T-1 pairs of one video (population
std); rho_t = B_t / B_uniform with B_uniform = B_tot / (T-1). The budgets before the feasibility
cap are beta_t B_tot (beta_t = the first-round softmax weights in the stats), so rho_t = beta_t (T-1);
the overflow threshold is rho* = (T-1) / (T (1 - r_t)) (Eq. A1) with r_t = r / r_s = r^gamma, and the
measured overflow rate is sum(budget_overflow) / sum(T-1) (pairs whose first-round share exceeded
the cap, as the budget stage counts them).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BLUE, RED = "#3b6fb6", "#d62728"
BENCH_ORDER = ("mvbench", "videomme", "longvideobench", "mlvu", "charades_timelens", "activitynet_timelens")


def _bench_rank(name: str) -> tuple[int, str]:
    """The paper's column order (a synthetic twin `synth_<x>` ranks as <x>); unknown names last."""
    base = name[len("synth_"):] if name.startswith("synth_") else name
    return (BENCH_ORDER.index(base) if base in BENCH_ORDER else len(BENCH_ORDER), name)


# ---------------------------------------------------------------- statistics

def budget_cv(B_t: Sequence[float]) -> float:
    """CV = sigma(B_t) / mu(B_t) of one video's pairwise budgets (App. C.2); nan without budget."""
    b = np.asarray(B_t, dtype=float)
    if b.size == 0 or b.mean() == 0:
        return math.nan
    return float(b.std() / b.mean())


def budget_ratios(stats: Mapping[str, Any]) -> np.ndarray:
    """rho_t = beta_t (T-1) of one video: first-round budget over the uniform share (App. C.3)."""
    beta = np.asarray(stats["beta_t"], dtype=float)
    return beta * len(beta)


def temporal_retention(stats: Mapping[str, Any], retention: float) -> float:
    """r_t = r / r_s (= r^gamma), from the retention r and the spatial share r_s in the stats."""
    return float(retention) / float(stats["r_s"])


def overflow_threshold(T: int, r_t: float) -> float:
    """rho* = (T-1) / (T (1 - r_t)), Eq. (A1)."""
    return (T - 1) / (T * (1.0 - r_t)) if r_t < 1 else math.inf


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow(r)
    return path


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return path


def _ottvid_stats(samples: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """method_stats of the samples that carry OTT-Vid budgets (accepts sample_stats or method_stats)."""
    out = []
    for s in samples:
        st = s.get("method_stats", s)
        if st and "B_t" in st and len(st["B_t"]) > 0:
            out.append(st)
    return out


# ---------------------------------------------------------------- Figure 3

def _label_groups(x: Sequence[float], y: Sequence[float], tol: float = 0.03) -> list[tuple[list[int], tuple]]:
    """Points closer than `tol` of the axis ranges share one label: [(indices, (x, y) of the first))]."""
    xs, ys = np.asarray(x, float), np.asarray(y, float)
    sx, sy = max(np.ptp(xs), 1e-12), max(np.ptp(ys), 1e-12)
    groups: list[tuple[list[int], tuple]] = []
    for i in np.argsort(xs, kind="stable"):
        for members, (gx, gy) in groups:
            if abs(xs[i] - gx) / sx < tol and abs(ys[i] - gy) / sy < tol:
                members.append(int(i))
                break
        else:
            groups.append(([int(i)], (float(xs[i]), float(ys[i]))))
    return [(sorted(m), xy) for m, xy in groups]


def figure3(points: Sequence[Mapping[str, float]], out: str | Path, subtitle: str = "") -> tuple[Path, Path]:
    """Average retention (%) vs compression latency (ms) over the temporal share gamma (Figure 3).

    points: {"gamma", "compress_ms", "avg"} and optionally "vqa_avg", "vtg_avg"; avg = mean of the
    VQA and VTG averages. Writes <out>.png and <out>.csv (sorted by gamma).
    """
    out = Path(out)
    pts = sorted(points, key=lambda p: p["gamma"])
    if not pts:
        raise ValueError("points: empty")
    g = [p["gamma"] for p in pts]
    x = [p["compress_ms"] for p in pts]
    y = [p["avg"] for p in pts]
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    ax.plot(x, y, "-o", color=BLUE, label="OTT-Vid")
    best = int(np.nanargmax(y))
    ax.plot([x[best]], [y[best]], "*", color=RED, ms=14, label=f"best ($\\gamma$={g[best]:g})")
    for k, (members, (xi, yi)) in enumerate(_label_groups(x, y)):  # one label per cluster of close points
        ax.annotate("$\\gamma$=" + ",".join(f"{g[i]:g}" for i in members), (xi, yi), textcoords="offset points",
                    xytext=(3, 6 if k % 2 == 0 else -11), fontsize=6.5)
    ax.set_xlabel("compression latency (ms)")
    ax.set_ylabel("average retention (%)")
    ax.set_title("Temporal share $\\gamma$" + (f"\n{subtitle}" if subtitle else ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    png = _save(fig, out.with_suffix(".png"))
    rows = [(p["gamma"], p["compress_ms"], p.get("vqa_avg", ""), p.get("vtg_avg", ""), p["avg"]) for p in pts]
    return png, _write_csv(out.with_suffix(".csv"), ["gamma", "compress_ms", "vqa_avg", "vtg_avg", "avg"], rows)


# ---------------------------------------------------------------- Figure A2

def figure_a2(per_benchmark: Mapping[str, Sequence[Mapping[str, Any]]], out: str | Path,
              subtitle: str = "") -> tuple[Path, Path]:
    """Per-video CV of B_t per benchmark: violins with box plots, red dashed medians (Figure A2).

    per_benchmark: benchmark -> samples (sample_stats or method_stats dicts). CSV rows: one per video
    (benchmark, video index, CV, median of the benchmark).
    """
    out = Path(out)
    names, cvs = [], []
    for name, samples in sorted(per_benchmark.items(), key=lambda kv: _bench_rank(kv[0])):
        v = [budget_cv(st["B_t"]) for st in _ottvid_stats(samples)]
        v = [c for c in v if not math.isnan(c)]
        if v:
            names.append(name)
            cvs.append(v)
    if not names:
        raise ValueError("per_benchmark: no sample carries OTT-Vid budgets (B_t)")
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 3.4))
    pos = np.arange(1, len(names) + 1)
    vp = ax.violinplot(cvs, positions=pos, showextrema=False, widths=0.8)
    for body in vp["bodies"]:
        body.set_facecolor(BLUE)
        body.set_alpha(0.35)
    ax.boxplot(cvs, positions=pos, widths=0.25, showfliers=False, medianprops={"color": "none"})
    med = [float(np.median(v)) for v in cvs]
    for p, m in zip(pos, med):
        ax.hlines(m, p - 0.4, p + 0.4, colors=RED, linestyles="--", lw=1.5)
        ax.annotate(f"{m:.3f}", (p, m), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=7, color=RED)
    ax.set_xticks(pos)
    ax.set_xticklabels(names, rotation=20)
    ax.set_ylabel("CV = $\\sigma(B_t)/\\mu(B_t)$")
    ax.set_title("Per-video CV of the pair budgets $B_t$ (red: median)" + (f"\n{subtitle}" if subtitle else ""),
                 fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    png = _save(fig, out.with_suffix(".png"))
    rows = [(n, i, c, m) for n, v, m in zip(names, cvs, med) for i, c in enumerate(v)]
    return png, _write_csv(out.with_suffix(".csv"), ["benchmark", "video", "cv", "median_cv"], rows)


# ---------------------------------------------------------------- Figure A3

def rho_summary(samples: Sequence[Mapping[str, Any]], retention: float) -> dict:
    """Pooled rho_t, rho* and the measured overflow rate of one (backbone, benchmark) group."""
    sts = _ottvid_stats(samples)
    if not sts:
        raise ValueError("samples: no sample carries OTT-Vid budgets")
    rho = np.concatenate([budget_ratios(st) for st in sts])
    pairs = sum(len(st["B_t"]) for st in sts)
    over = sum(int(st.get("budget_overflow", 0)) for st in sts)
    Ts = [len(st["B_t"]) + 1 for st in sts]
    # one rho* per video (T and r_t can differ, e.g. fps-sampled VTG videos); the panel shows the median
    star = float(np.median([overflow_threshold(T, temporal_retention(st, retention)) for T, st in zip(Ts, sts)]))
    return {"rho": rho, "pairs": pairs, "overflow": over, "overflow_rate": over / pairs,
            "T": float(np.median(Ts)), "rho_star": star, "rho_above_star": float(np.mean(rho > star))}


def figure_a3(groups: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]], retention: float,
              out: str | Path, bins: int = 40, subtitle: str = "") -> tuple[Path, Path]:
    """Pooled rho_t histograms, backbones as rows and benchmarks as columns (Figure A3).

    groups: (backbone, benchmark) -> samples. Each panel: histogram of rho_t, a red dashed line at
    rho*, and the measured overflow rate. CSV rows: one per panel (counts, rho*, rates, quantiles).
    """
    out = Path(out)
    if not groups:
        raise ValueError("groups: empty")
    backbones = list(dict.fromkeys(k[0] for k in groups))
    benches = sorted(dict.fromkeys(k[1] for k in groups), key=_bench_rank)
    fig, axes = plt.subplots(len(backbones), len(benches), figsize=(2.6 * len(benches), 2.1 * len(backbones)),
                             squeeze=False, sharex=True)
    rows = []
    hi = max(2.5, max(float(np.max(budget_ratios(st))) for s in groups.values() for st in _ottvid_stats(s)) * 1.05)
    for i, bb in enumerate(backbones):
        for j, bn in enumerate(benches):
            ax = axes[i][j]
            if (bb, bn) not in groups:
                ax.set_axis_off()
                continue
            s = rho_summary(groups[(bb, bn)], retention)
            ax.hist(s["rho"], bins=bins, range=(0, hi), color=BLUE, alpha=0.8)
            ax.axvline(s["rho_star"], color=RED, ls="--", lw=1.2)
            ax.text(0.97, 0.95, f"$\\rho^*$={s['rho_star']:.2f}\n>cap: {100 * s['overflow_rate']:.2f}%",
                    transform=ax.transAxes, ha="right", va="top", fontsize=7, color=RED,
                    bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
            if i == 0:
                ax.set_title(bn, fontsize=9)
            if j == 0:
                ax.set_ylabel(bb, fontsize=9)
            if i == len(backbones) - 1:
                ax.set_xlabel("$\\rho_t = B_t / B_{uniform}$", fontsize=8)
            q = np.quantile(s["rho"], [0.05, 0.5, 0.95])
            rows.append((bb, bn, s["T"], s["pairs"], s["overflow"], s["overflow_rate"], s["rho_star"],
                         s["rho_above_star"], float(np.mean((s["rho"] >= 0.5) & (s["rho"] <= 1.5))), *q))
    fig.suptitle("Pooled $\\rho_t = B_t/B_{uniform}$ (first-round share, before the cap); red: overflow threshold "
                 "$\\rho^*$" + (f"\n{subtitle}" if subtitle else ""), fontsize=9)
    fig.tight_layout()
    png = _save(fig, out.with_suffix(".png"))
    header = ["backbone", "benchmark", "T", "pairs", "overflow_pairs", "overflow_rate", "rho_star",
              "frac_rho_above_star", "frac_rho_0.5_1.5", "rho_q05", "rho_median", "rho_q95"]
    return png, _write_csv(out.with_suffix(".csv"), header, rows)


# ---------------------------------------------------------------- Figure A4

def figure_a4(videos: Mapping[str, Mapping[str, Any]], out: str | Path, subtitle: str = "") -> tuple[Path, Path]:
    """W_t (red line) and B_t (blue bars) per pair, one panel per video (Figure A4).

    videos: title (e.g. "dynamic", "static") -> method_stats (or sample_stats) with W_t and B_t.
    """
    out = Path(out)
    if not videos:
        raise ValueError("videos: empty")
    fig, axes = plt.subplots(len(videos), 1, figsize=(6.0, 2.2 * len(videos)), squeeze=False)
    rows = []
    # one W_t scale for every panel, from 0, so a static video's uniformly low W_t reads as such
    w_max = max(max(np.asarray(s.get("method_stats", s)["W_t"], float).max(initial=0) for s in videos.values()), 1e-6)
    for k, (ax, (title, s)) in enumerate(zip(axes[:, 0], videos.items())):
        st = s.get("method_stats", s)
        W, B = np.asarray(st["W_t"], float), np.asarray(st["B_t"], float)
        if W.shape != B.shape:
            raise ValueError(f"videos[{title!r}]: W_t and B_t differ in length")
        t = np.arange(1, len(B) + 1)
        ax.bar(t, B, color=BLUE, alpha=0.7, label="$B_t$")
        ax.set_ylabel("budget $B_t$", color=BLUE)
        ax.set_title(title, fontsize=9)
        tw = ax.twinx()
        tw.plot(t, W, "-o", color=RED, ms=3, label="$W_t$")
        tw.set_ylabel("$W_t$", color=RED)
        tw.set_ylim(0, 1.1 * w_max)
        if k == len(videos) - 1:
            ax.set_xlabel("frame pair $t$")
        for ti, w, b in zip(t, W, B):
            rows.append((title, int(ti), float(w), float(b)))
    if subtitle:
        fig.suptitle(subtitle, fontsize=9)
    fig.tight_layout()
    png = _save(fig, out.with_suffix(".png"))
    return png, _write_csv(out.with_suffix(".csv"), ["video", "pair", "W_t", "B_t"], rows)


# ---------------------------------------------------------------- cell JSONs

def load_runs(runs_dir: str | Path) -> list[dict]:
    """Completed cell records (results/runs/*.json, status done)."""
    out = []
    for p in sorted(Path(runs_dir).glob("*.json")):
        try:
            rec = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if rec.get("status") == "done" and "cell" in rec:
            out.append(rec)
    return out


def _hp(rec: dict, name: str, default: Any = None) -> Any:
    v = rec["cell"].get("hparams", {}).get(name, default)
    return math.inf if v == "inf" else v


def _default_hparams(method: str) -> dict:
    import ottvid

    return {k: (math.inf if v == "inf" else v) for k, v in ottvid.method_params(method).items()}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return a == b or math.isclose(a, b, rel_tol=1e-9)
    return a == b


def _select(runs: Iterable[dict], backbone: str | None = None, method: str | None = None,
            retention: float | None = None, vary: Sequence[str] = (), **hparams: Any) -> list[dict]:
    """Cells of `backbone` (None: any) and `method` at `retention` with the given hyperparameters;
    with a method, every other hyperparameter not in `vary` must be the registry default (hyperparameters
    the backbone config chooses, e.g. FastVID's variant, are not checked). One record per (backbone,
    benchmark, hyperparameters): the one with the most samples."""
    defaults = _default_hparams(method) if method else {}
    free = {"retention", *vary, *hparams}
    best: dict[tuple, dict] = {}
    for r in runs:
        c = r["cell"]
        if backbone and c["backbone"]["name"] != backbone:
            continue
        if method and c["method"] != method:
            continue
        if retention is not None and abs(float(_hp(r, "retention", 1.0)) - retention) > 1e-9:
            continue
        if any(not _same(_hp(r, k), v) for k, v in hparams.items()):
            continue
        if any(not _same(_hp(r, k, d), d) for k, d in defaults.items() if k not in free and d is not None):
            continue
        key = (c["backbone"]["name"], c["benchmark"]["name"], json.dumps(c.get("hparams", {}), sort_keys=True, default=str))
        if key not in best or (r.get("n") or 0) > (best[key].get("n") or 0):
            best[key] = r
    return list(best.values())


def scale_backbones(runs: Iterable[dict], scale: str) -> list[dict]:
    """The cells of one scale: tiny backbones at a non-real scale (its twins), real backbones at `real`."""
    if scale == "real":
        return [r for r in runs if not r["cell"]["backbone"].get("tiny")]
    from .sweep import load_scale

    twins = set(load_scale(scale)["backbone"].values())
    return [r for r in runs if r["cell"]["backbone"]["name"] in twins]


def gamma_points(runs: Sequence[dict], backbone: str, retention: float = 0.1) -> list[dict]:
    """Figure 3 points from cell records: per gamma, Avg. (%) vs this backbone's vanilla and mean compress_ms."""
    van = {r["cell"]["benchmark"]["name"]: r["score"] for r in _select(runs, backbone, "vanilla")}
    by_gamma: dict[float, list[dict]] = {}
    for r in _select(runs, backbone, "ottvid", retention, vary=("gamma",)):
        by_gamma.setdefault(float(_hp(r, "gamma")), []).append(r)
    pts = []
    for g, recs in sorted(by_gamma.items()):
        fam: dict[str, list[float]] = {}
        lat = []
        for r in recs:
            b = r["cell"]["benchmark"]
            if van.get(b["name"]):
                fam.setdefault(b["family"], []).append(100 * r["score"] / van[b["name"]])
            lat += [s["compress_ms"] for s in r.get("sample_stats", []) if s.get("compress_ms") is not None]
        if not fam or not lat:
            continue
        avgs = {f: float(np.mean(v)) for f, v in fam.items()}
        pts.append({"gamma": g, "compress_ms": float(np.mean(lat)), "vqa_avg": avgs.get("vqa", math.nan),
                    "vtg_avg": avgs.get("vtg", math.nan), "avg": float(np.mean(list(avgs.values())))})
    return pts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("figure", choices=["fig3", "figA2", "figA3", "figA4", "all"], help="all = figA2 figA3 figA4")
    ap.add_argument("--runs", default="results/runs")
    ap.add_argument("--out", default=None, help="default: results/figures (results/figures/<scale> off the real scale)")
    ap.add_argument("--scale", default="real", help="real | demo (configs/scale/): which cells to read")
    ap.add_argument("--backbone", default=None, help="default: fig3 qwen2_5_vl_7b or its twin at --scale; figA2/figA4 "
                                                     "the scale's figures_backbone; figA3 every backbone of the scale")
    ap.add_argument("--retention", type=float, default=0.1)
    ap.add_argument("--tau_b", type=float, default=0.3)
    ap.add_argument("--gamma", type=float, default=0.3)
    ap.add_argument("--dynamic", help="figA4: BENCHMARK:DOC_ID of the dynamic video (default: largest CV)")
    ap.add_argument("--static", help="figA4: BENCHMARK:DOC_ID of the static video (default: smallest CV)")
    a = ap.parse_args(argv)
    if a.figure == "all":
        rest = [x for x in (argv if argv is not None else __import__("sys").argv[1:]) if x != "all"]
        return max(main([f, *rest]) for f in ("figA2", "figA3", "figA4"))
    from .cell import CellError
    from .sweep import load_scale

    try:
        scale = load_scale(a.scale)
    except CellError as e:
        ap.error(str(e))
    from .store import resolve_dir

    runs = scale_backbones(load_runs(resolve_dir(a.runs)), a.scale)
    out = resolve_dir(a.out) if a.out else resolve_dir("results/figures") / ("" if a.scale == "real" else a.scale)
    main_bb = scale["backbone"].get("qwen2_5_vl_7b", "qwen2_5_vl_7b")      # Figure 3: the gamma sweep's backbone
    fig_bb = scale.get("figures_backbone") or main_bb                       # Figures A2 / A4
    bb = a.backbone or {"fig3": main_bb, "figA3": None}.get(a.figure, fig_bb)
    default = dict(tau_b=a.tau_b, gamma=a.gamma)
    tag = " [demo scale: tiny backbone, synthetic shards]" if a.scale != "real" else ""
    ott = f"OTT-Vid r={a.retention:g}, $\\tau_b$={a.tau_b:g}, $\\gamma$={a.gamma:g}"
    if a.figure == "fig3":
        pts = gamma_points(runs, bb, a.retention)
        if not pts:
            ap.error(f"no gamma-sweep cells of {bb} with a vanilla run in {a.runs} (run the gamma_sweep experiment)")
        res = figure3(pts, out / "fig3_gamma", subtitle=f"{bb}, OTT-Vid r={a.retention:g}{tag}")
    elif a.figure == "figA2":
        sel = _select(runs, bb, "ottvid", a.retention, **default)
        per = {}
        for r in sel:
            per.setdefault(r["cell"]["benchmark"]["name"], []).extend(r.get("sample_stats", []))
        if not per:
            ap.error(f"no OTT-Vid cell of {bb} at r={a.retention:g}, tau_b={a.tau_b:g}, gamma={a.gamma:g} in {a.runs}")
        res = figure_a2(per, out / "figA2_budget_cv", subtitle=f"{bb}, {ott}{tag}")
    elif a.figure == "figA3":
        groups = {}
        for r in _select(runs, bb, "ottvid", a.retention, **default):
            if r["cell"]["benchmark"].get("family") != "vqa":
                continue
            groups.setdefault((r["cell"]["backbone"]["name"], r["cell"]["benchmark"]["name"]), []).extend(
                r.get("sample_stats", []))
        if not groups:
            ap.error(f"no OTT-Vid VQA cell at r={a.retention:g}, tau_b={a.tau_b:g}, gamma={a.gamma:g} in {a.runs}")
        res = figure_a3(groups, a.retention, out / "figA3_rho", subtitle=f"{ott}{tag}")
    else:
        sel = _select(runs, bb, "ottvid", a.retention, **default)
        pool = [(r["cell"]["benchmark"]["name"], s) for r in sel for s in r.get("sample_stats", [])
                if _ottvid_stats([s])]
        if not pool:
            ap.error(f"no OTT-Vid sample with budgets in {a.runs}")
        vids = {}
        for title, spec in (("dynamic", a.dynamic), ("static", a.static)):
            if spec:
                bench, doc = spec.rsplit(":", 1)
                hit = [(b, s) for b, s in pool if b == bench and str(s.get("doc_id")) == doc]
                if not hit:
                    ap.error(f"--{title}: no OTT-Vid sample {spec} in {a.runs}")
            else:  # the most / least non-uniform allocation (largest / smallest CV of B_t)
                hit = sorted(pool, key=lambda bs: budget_cv(bs[1]["method_stats"]["B_t"]),
                             reverse=title == "dynamic")
            b, s = hit[0]
            vids[f"{title} ({b}:{s.get('doc_id')})"] = s
        res = figure_a4(vids, out / "figA4_budget_time", subtitle=f"{bb}, {ott}{tag}")
    print("\n".join(str(p) for p in res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
