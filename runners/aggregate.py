"""Build an experiment's table from results/runs: `python -m runners.aggregate experiment=table1`.

Rows: vanilla, then (method, retention, setting) in the experiment's order; columns: each
backbone's benchmarks with VQA / VTG Avg. (%) = mean over the family of 100 x score / our own
vanilla score (missing if any benchmark or the vanilla run is missing). Every score carries a
95% bootstrap interval from its per-sample scores; every non-OTT-Vid row a paired bootstrap
test against OTT-Vid (same backbone and retention, same samples) on its Avg. (%) difference.
Writes results/tables/<experiment>.{md,csv,tex} and <experiment>_delta.md (reproduced minus
published, from results/paper/published.csv). Missing cells print as "—", never as 0.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from . import store
from .cell import CellError
from .store import REPO_ROOT, resolve_dir

PAPER = REPO_ROOT / "results" / "paper" / "published.csv"
EXPERIMENT_TABLE = {"table1": "table1", "demo": "table1", "table2": "table2", "table3": "tableA2",
                    "table4": "table4", "tau_b": "tableA3", "tau_m": "tableA4", "tau_c": "tableA5",
                    "alpha": "tableA6", "spatial": "tableA1"}
B = 2000  # bootstrap resamples


def _stat(scores: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """Benchmark score from (resamples, n) per-sample scores: mean, or mean of group means."""
    if groups is None:
        return scores.mean(axis=-1)
    out = [scores[..., groups == g].mean(axis=-1) for g in np.unique(groups)]
    return np.mean(out, axis=0)


def bootstrap_ci(scores: dict, groups: dict | None, seed: int = 0) -> tuple[float, float]:
    ids = sorted(scores)
    if not ids:
        return (math.nan, math.nan)
    x = np.array([scores[i] for i in ids], dtype=float)
    g = np.array([groups[i] for i in ids]) if groups else None
    idx = np.random.default_rng(seed).integers(0, len(ids), size=(B, len(ids)))
    if g is None:
        s = _stat(x[idx], None)
    else:  # resample within each group (stratified), keeping the group structure
        s = np.zeros(B)
        for gv in np.unique(g):
            sel = np.flatnonzero(g == gv)
            j = np.random.default_rng(seed + 1).integers(0, len(sel), size=(B, len(sel)))
            s += x[sel][j].mean(axis=1)
        s /= len(np.unique(g))
    lo, hi = np.percentile(s, [2.5, 97.5])
    return float(lo), float(hi)


def paired_test(a: list[dict], b: list[dict], va: list[float], seed: int = 0) -> tuple[float, float]:
    """Paired bootstrap over the benchmarks of a row: statistic = Avg.(%) of a minus Avg.(%) of b
    (same vanilla denominators), resampling each benchmark's common samples jointly.
    Returns (observed difference in points, two-sided p-value)."""
    rng = np.random.default_rng(seed)
    obs, boots = 0.0, np.zeros(B)
    for sa, sb, v in zip(a, b, va):
        common = sorted(set(sa) & set(sb))
        if not common or not v:
            return math.nan, math.nan
        x = np.array([sa[i] - sb[i] for i in common], dtype=float)
        obs += 100 * x.mean() / v
        boots += 100 * x[rng.integers(0, len(x), size=(B, len(x)))].mean(axis=1) / v
    obs /= len(a)
    boots /= len(a)
    centered = boots - boots.mean()  # null distribution: shift to zero mean
    p = float(np.mean(np.abs(centered) >= abs(obs)))
    return obs, max(p, 1.0 / B)


def collect(argv: list[str]):
    """The experiment's cells (in grid order) joined with their stored runs."""
    from .sweep import plan

    base, cells, _ = plan(argv)
    runs = resolve_dir(base.results_dir)
    recs = []
    for cell, ov, _ in cells:
        rec = store.read(runs / cell.filename())
        recs.append((cell, rec if rec and rec.get("status") == "done" else None))
    return base, recs


def _setting(cell) -> str:
    d = cell.defaults()
    return ",".join(f"{k}={_f(v)}" for k, v in sorted(cell.hparams.items()) if k != "retention" and v != d.get(k))


def _f(v) -> str:
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:g}"
    return str(v)


def build(argv: list[str]) -> dict:
    base, recs = collect(argv)
    exp = str(base.experiment_name)
    long = []
    for cell, rec in recs:
        b = cell.benchmark
        row = {"backbone": cell.backbone["name"], "method": cell.method, "retention": cell.retention,
               "setting": _setting(cell), "column": b["column"], "family": b["family"], "benchmark": b["name"],
               "score": rec["score"] if rec else math.nan, "n": rec["n"] if rec else 0,
               "scores": rec["per_sample"]["scores"] if rec else None,
               "groups": rec["per_sample"].get("groups") if rec else None,
               "stats": rec.get("stats_summary") if rec else None}
        row["ci_lo"], row["ci_hi"] = bootstrap_ci(row["scores"], row["groups"]) if rec else (math.nan, math.nan)
        long.append(row)
    df = pd.DataFrame(long)
    rowkey = ["backbone", "method", "retention", "setting"]
    # vanilla score per (backbone, column)
    van = {(r.backbone, r.column): r.score for r in df[df.method == "vanilla"].itertuples()}
    van_scores = {(r.backbone, r.column): r.scores for r in df[df.method == "vanilla"].itertuples()}
    fams = {"vqa": [c for c in dict.fromkeys(df[df.family == "vqa"].column)],
            "vtg": [c for c in dict.fromkeys(df[df.family == "vtg"].column)]}
    summary = []
    for key, g in df.groupby(rowkey, sort=False):
        rec = dict(zip(rowkey, key))
        by = {r.column: r for r in g.itertuples()}
        for fam, cols in fams.items():
            if not cols:
                continue
            rel = [100 * by[c].score / van[(key[0], c)] if c in by and van.get((key[0], c)) else math.nan for c in cols]
            rec[f"{fam}_avg"] = float(np.mean(rel)) if rel and not any(math.isnan(x) for x in rel) else math.nan
            # paired test against OTT-Vid (default settings) at the same backbone and retention
            ref = df[(df.backbone == key[0]) & (df.method == "ottvid") & (df.retention == key[2]) & (df.setting == "")]
            refby = {r.column: r for r in ref.itertuples()}
            if key[1] not in ("ottvid",) and all(c in by and c in refby and by[c].scores and refby[c].scores for c in cols):
                d, p = paired_test([by[c].scores for c in cols], [refby[c].scores for c in cols],
                                   [van.get((key[0], c)) for c in cols])
                rec[f"{fam}_diff_vs_ottvid"], rec[f"{fam}_p_vs_ottvid"] = d, p
        for c, r in by.items():
            rec[(r.backbone, c)] = r.score
            rec[(r.backbone, c, "ci")] = (r.ci_lo, r.ci_hi)
        for s in ("ttft_ms", "compress_ms", "vision_ms", "prefill_ms", "peak_mem_gb", "tflops"):
            vals = [r.stats[s]["mean"] for r in by.values() if r.stats and s in r.stats]
            if vals:
                rec[s] = float(np.mean(vals))
        summary.append(rec)
    _ = van_scores
    return {"experiment": exp, "long": df, "rows": summary, "fams": fams,
            "backbones": list(dict.fromkeys(df.backbone)), "paper_table": EXPERIMENT_TABLE.get(exp)}


def _cell_txt(v, ci=None, bold=False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    s = f"{v:.1f}"
    if ci and not any(math.isnan(x) for x in ci):
        s += f" [{ci[0]:.1f}, {ci[1]:.1f}]"
    return f"**{s}**" if bold else s


def render(t: dict) -> tuple[str, pd.DataFrame, str]:
    rows, fams = t["rows"], t["fams"]
    cols = []
    for bb in t["backbones"]:
        for fam in ("vqa", "vtg"):
            if fams[fam]:
                cols += [(bb, c) for c in fams[fam]] + [(bb, f"{fam}_avg")]
    # best per retention (and per setting group), ignoring vanilla
    best = {}
    for col in cols:
        for r in rows:
            if r["method"] == "vanilla":
                continue
            v = r.get(col[1]) if col[1].endswith("_avg") else r.get(col)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            k = (col, r["retention"])
            best[k] = max(best.get(k, -math.inf), v)
    header = ["Method", "Ret."] + [f"{bb}:{c}" if len(t["backbones"]) > 1 else c for bb, c in cols] + ["p vs OTT-Vid"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    flat = []
    for r in rows:
        name = r["method"] + (f" ({r['setting']})" if r["setting"] else "")
        cells_txt = []
        out = {"method": r["method"], "setting": r["setting"], "retention": r["retention"]}
        for col in cols:
            if col[1].endswith("_avg"):
                v, ci = r.get(col[1], math.nan), None
            else:
                v, ci = r.get(col, math.nan), r.get((*col, "ci"))
            isbest = r["method"] != "vanilla" and not (isinstance(v, float) and math.isnan(v)) and \
                v == best.get((col, r["retention"]))
            cells_txt.append(_cell_txt(v, ci, isbest))
            key = f"{col[0]}:{col[1]}" if len(t["backbones"]) > 1 else col[1]
            out[key] = v
            if ci:
                out[key + "_ci_lo"], out[key + "_ci_hi"] = ci
        ps = [f"{fam.upper()} {r[f'{fam}_diff_vs_ottvid']:+.1f} (p={r[f'{fam}_p_vs_ottvid']:.3f})"
              for fam in ("vqa", "vtg") if f"{fam}_p_vs_ottvid" in r and not math.isnan(r[f"{fam}_p_vs_ottvid"])]
        for fam in ("vqa", "vtg"):
            for k in (f"{fam}_diff_vs_ottvid", f"{fam}_p_vs_ottvid"):
                if k in r:
                    out[k] = r[k]
        for s in ("vision_ms", "compress_ms", "prefill_ms", "ttft_ms", "peak_mem_gb", "tflops"):
            if s in r:
                out[s] = r[s]
        flat.append(out)
        lines.append("| " + " | ".join([name, f"{100 * r['retention']:g}%"] + cells_txt + ["; ".join(ps) or ""]) + " |")
    md = "\n".join(lines)
    df = pd.DataFrame(flat)
    tex = df.drop(columns=[c for c in df.columns if c.endswith(("_ci_lo", "_ci_hi"))]).to_latex(
        index=False, float_format="%.1f", na_rep="--", escape=True)
    return md, df, tex


def delta(t: dict, df: pd.DataFrame) -> str:
    """Published vs reproduced, for every number both have."""
    if not t["paper_table"] or not PAPER.is_file():
        return "No published counterpart for this experiment.\n"
    pub = pd.read_csv(PAPER, keep_default_na=False)
    pub = pub[pub.table == t["paper_table"]]
    lines = ["| backbone | method | ret. | setting | benchmark | published | reproduced | delta |", "|---|---|---|---|---|---|---|---|"]
    for r in t["rows"]:
        for p in pub.itertuples():
            if p.backbone != r["backbone"] and t["experiment"] != "demo":
                continue
            if p.method != r["method"] or abs(float(p.retention) - r["retention"]) > 1e-9:
                continue
            if p.variant and p.variant != r["setting"]:
                continue
            if not p.variant and r["setting"]:
                continue
            mine = r.get(p.benchmark) if p.benchmark.endswith("_avg") else r.get((r["backbone"], p.benchmark))
            if mine is None and p.benchmark in r:
                mine = r[p.benchmark]
            d = "—" if mine is None or (isinstance(mine, float) and math.isnan(mine)) else f"{mine - float(p.score):+.1f}"
            lines.append(f"| {r['backbone']} | {r['method']} | {r['retention']:g} | {r['setting'] or p.variant} | "
                         f"{p.benchmark} | {float(p.score):.1f} | {_cell_txt(mine)} | {d} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        t = build(argv)
    except CellError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    md, df, tex = render(t)
    out = REPO_ROOT / "results" / "tables"
    out.mkdir(parents=True, exist_ok=True)
    exp = t["experiment"]
    name = "table1" if exp == "demo" else exp
    note = ("Scores: accuracy / mIoU (%) with 95% bootstrap intervals; Avg. (%) relative to this run's own "
            "vanilla; **bold** = best per retention; p: paired bootstrap vs OTT-Vid on the same samples; "
            "— = missing.\n")
    src = f"Experiment `{exp}`; backbones: {', '.join(t['backbones'])}.\n"
    store.atomic_write_text(out / f"{name}.md", f"# {name}\n\n{src}{note}\n{md}\n")
    store.atomic_write_text(out / f"{name}.csv", df.to_csv(index=False))
    store.atomic_write_text(out / f"{name}.tex", tex)
    store.atomic_write_text(out / f"{name}_delta.md", f"# {name}: published vs reproduced\n\n{delta(t, df)}")
    t["long"].drop(columns=["scores", "groups", "stats"]).to_csv(out / f"{name}_long.csv", index=False)
    if exp == "table4":  # the paper's efficiency layout (runners/efficiency_table.py)
        from .efficiency_table import table4_frame, table4_markdown

        eff = table4_frame(t["rows"])
        store.atomic_write_text(out / "table4_efficiency.md", "# Table 4: efficiency at r = 0.10\n\n" + note
                                + "Latency: mean per sample (ms); TFLOPs: analytic LLM prefill (docs/efficiency.md).\n\n"
                                + table4_markdown(eff) + "\n")
        store.atomic_write_text(out / "table4_efficiency.csv", eff.to_csv(index=False))
        print(table4_markdown(eff))
    print(f"wrote {out / (name + '.md')} (+ .csv, .tex, _delta.md)")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
