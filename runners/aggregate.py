"""Build an experiment's table from results/runs: `python -m runners.aggregate experiment=table1`.

Rows: vanilla, then (method, retention, setting) in the experiment's order; columns: each
backbone's benchmarks with VQA / VTG Avg. (%) = mean over the family of 100 x score / our own
vanilla score (missing if any benchmark or the vanilla run is missing). Every score carries a
95% bootstrap interval from its per-sample scores; every non-OTT-Vid row a paired bootstrap
test against OTT-Vid (same backbone and retention, same samples) on its Avg. (%) difference.
Rows of an ablation are named by the knobs its sub-grid varies (e.g. `ottvid (tau_b=0.3)`), and
their paired test is against OTT-Vid's default setting. Every row the paper prints is followed by
its published numbers (results/paper/published.csv) in the same columns; the CSV carries them as
`paper:<column>`. Writes results/tables/<experiment>.{md,csv,tex}, <experiment>_delta.md
(reproduced minus published) and <experiment>_long.csv. Missing cells print as "—", never as 0;
a stored cell that failed, or where some samples failed, prints as `failed` / `incomplete (k/n
failed)` and stays out of the averages unless `include_incomplete=true` (then flagged ‡). Two
benchmarks filling one column is an error.

`scale=demo` (see runners/sweep.py) aggregates the demo-scale cells of the same grid (tiny
backbones, synthetic shards) into results/tables/demo/, with a header saying so; the published
numbers beside them are matched through the scale's backbone map and stay the paper's real ones.
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
PAPER_TITLE = {"table1": "Table 1", "table2": "Table 2", "tableA2": "Table 3 / A2", "table4": "Table 4",
               "tableA1": "Table A1", "tableA3": "Table A3", "tableA4": "Table A4", "tableA5": "Table A5",
               "tableA6": "Table A6"}
GRID_AXES = {"backbone", "method", "benchmark", "retention"}
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
    obs, boots, used = 0.0, np.zeros(B), 0
    for sa, sb, v in zip(a, b, va):
        if v == 0:  # no defined retention on this benchmark: left out, as in Avg. (%)
            continue
        common = sorted(set(sa) & set(sb))
        if not common or v is None:
            return math.nan, math.nan
        x = np.array([sa[i] - sb[i] for i in common], dtype=float)
        obs += 100 * x.mean() / v
        boots += 100 * x[rng.integers(0, len(x), size=(B, len(x)))].mean(axis=1) / v
        used += 1
    if not used:
        return math.nan, math.nan
    obs /= used
    boots /= used
    centered = boots - boots.mean()  # null distribution: shift to zero mean
    p = float(np.mean(np.abs(centered) >= abs(obs)))
    return obs, max(p, 1.0 / B)


def collect(argv: list[str]):
    """The experiment's cells (in grid order) joined with their stored runs and their knobs (the
    hyperparameters their sub-grid varies, as the method resolved them)."""
    from .sweep import plan

    base, cells, _ = plan(argv)
    runs = resolve_dir(base.results_dir)
    recs = []
    for cell, ov, _ in cells:
        rec = store.read(runs / cell.filename())
        knobs = {}
        for o in ov:
            k = o.partition("=")[0]
            if k not in GRID_AXES and k in cell.hparams:
                knobs[k] = cell.hparams[k]
        recs.append((cell, rec if rec and rec.get("status") in ("done", "incomplete", "failed") else None, knobs))
    return base, recs


OPT_IN = "include_incomplete"  # aggregate-only key: `include_incomplete=true` puts incomplete cells' scores in


def _state(rec: dict | None) -> str:
    """What a stored cell that is not in the table shows instead of a score ("" if it is in)."""
    if rec is None or rec.get("status") == "done":
        return ""
    if rec.get("n_failed") is not None and rec.get("n_samples"):
        return f"{rec['status']} ({rec['n_failed']}/{rec['n_samples']} failed)"
    return "failed"


def _check_columns(df: pd.DataFrame) -> None:
    """Two benchmarks filling one table column (e.g. mvbench and its synthetic twin) is an error."""
    for (bb, col), g in df.groupby(["backbone", "column"], sort=False):
        names = sorted(set(g.benchmark))
        if len(names) > 1:
            raise CellError(f"benchmarks {names} both fill column {col!r} of backbone {bb!r}: one table column takes "
                            f"one benchmark (aggregate them in separate experiments or grids)")


def _setting(cell) -> str:
    d = cell.defaults()
    return ",".join(f"{k}={_f(v)}" for k, v in sorted(cell.hparams.items()) if k != "retention" and v != d.get(k))


def _f(v) -> str:
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:g}"
    return str(v)


def build(argv: list[str]) -> dict:
    from .sweep import scale_of

    opt = [a for a in argv if a.lstrip("+").partition("=")[0] == OPT_IN]
    argv = [a for a in argv if a not in opt]
    include_incomplete = bool(opt) and opt[-1].partition("=")[2].lower() in ("true", "1", "yes")
    base, recs = collect(argv)
    scale = scale_of(argv)
    exp = str(base.experiment_name)
    long = []
    for cell, stored, knobs in recs:
        b = cell.benchmark
        ok = stored is not None and (stored["status"] == "done" or (include_incomplete and stored["status"] == "incomplete"))
        rec = stored if ok else None
        row = {"backbone": cell.backbone["name"], "method": cell.method, "retention": cell.retention,
               "setting": _setting(cell), "knobs": ",".join(f"{k}={_f(v)}" for k, v in knobs.items()),
               "tiny": bool(cell.backbone.get("tiny")), "column": b["column"], "family": b["family"], "benchmark": b["name"],
               "score": rec["score"] if rec else math.nan, "n": rec["n"] if rec else 0,
               "scores": rec["per_sample"]["scores"] if rec else None,
               "groups": rec["per_sample"].get("groups") if rec else None,
               "stats": rec.get("stats_summary") if rec else None,
               "state": _state(stored) if rec is None else ("" if stored["status"] == "done" else _state(stored))}
        row["ci_lo"], row["ci_hi"] = bootstrap_ci(row["scores"], row["groups"]) if rec else (math.nan, math.nan)
        long.append(row)
    df = pd.DataFrame(long)
    if len(df):
        _check_columns(df)
    rowkey = ["backbone", "method", "retention", "setting"]
    # vanilla score per (backbone, column)
    van = {(r.backbone, r.column): r.score for r in df[df.method == "vanilla"].itertuples()}
    fams = {"vqa": [c for c in dict.fromkeys(df[df.family == "vqa"].column)],
            "vtg": [c for c in dict.fromkeys(df[df.family == "vtg"].column)]}
    summary = []
    for key, g in df.groupby(rowkey, sort=False):
        rec = dict(zip(rowkey, key))
        rec["knobs"] = g.knobs.iloc[0]
        by = {r.column: r for r in g.itertuples()}
        for fam, cols in fams.items():
            if not cols:
                continue
            # Avg. (%): a missing cell (or vanilla run) makes it missing; a benchmark where our vanilla
            # scores 0 has no defined retention and is left out (flagged with a dagger when rendered)
            rel, undefined = [], []
            for c in cols:
                v = van.get((key[0], c))
                if c not in by or v is None or math.isnan(v):
                    rel.append(math.nan)
                elif v == 0:
                    undefined.append(c)
                else:
                    rel.append(100 * by[c].score / v)
            rec[f"{fam}_avg"] = float(np.mean(rel)) if rel and not any(math.isnan(x) for x in rel) else math.nan
            rec[f"{fam}_avg_undefined"] = undefined
            # paired test against OTT-Vid (default settings) at the same backbone and retention; an
            # OTT-Vid ablation row (non-default setting) is tested against that default row
            ref = df[(df.backbone == key[0]) & (df.method == "ottvid") & (df.retention == key[2]) & (df.setting == "")]
            refby = {r.column: r for r in ref.itertuples()}
            if not (key[1] == "ottvid" and key[3] == "") and all(c in by and c in refby and by[c].scores and refby[c].scores for c in cols):
                d, p = paired_test([by[c].scores for c in cols], [refby[c].scores for c in cols],
                                   [van.get((key[0], c)) for c in cols])
                rec[f"{fam}_diff_vs_ottvid"], rec[f"{fam}_p_vs_ottvid"] = d, p
        for c, r in by.items():
            rec[(r.backbone, c)] = r.score
            rec[(r.backbone, c, "ci")] = (r.ci_lo, r.ci_hi)
            rec[(r.backbone, c, "state")] = r.state
        for s in ("ttft_ms", "compress_ms", "vision_ms", "prefill_ms", "peak_mem_gb", "tflops"):
            vals = [r.stats[s]["mean"] for r in by.values() if r.stats and s in r.stats]
            if vals:
                rec[s] = float(np.mean(vals))
        summary.append(rec)
    t = {"experiment": exp, "long": df, "rows": summary, "fams": fams, "scale": scale["name"],
         "demo": bool(len(df)) and bool(df.tiny.all()), "twin_of": {v: k for k, v in scale["backbone"].items()},
         "backbones": list(dict.fromkeys(df.backbone)), "paper_table": EXPERIMENT_TABLE.get(exp)}
    attach_published(t)
    return t


def _same(a, b) -> bool:
    """Hyperparameter values equal as numbers (1.0 == 1, inf == inf) or as strings."""
    try:
        return math.isclose(float(a), float(b)) or (math.isinf(float(a)) and float(a) == float(b))
    except (TypeError, ValueError):
        return str(a) == str(b)


def _parse_variant(v: str) -> dict:
    return dict(kv.split("=", 1) for kv in v.split(",")) if v else {}


def _real_backbone(t: dict, name: str) -> str:
    """The real backbone a row's backbone stands for (its own name at the real scale)."""
    if name in t["twin_of"]:
        return t["twin_of"][name]
    if t["experiment"] == "demo":  # `make demo`: the tiny Qwen2.5-VL twin of Table 1's backbone
        from .sweep import load_scale

        return {v: k for k, v in load_scale("demo")["backbone"].items()}.get(name, name)
    return name


def attach_published(t: dict) -> None:
    """row["paper"] = {column: published value} for every row the paper prints: same (real) backbone,
    method, retention, and the row's knobs equal to the published variant (`mass=loo,budget=adaptive`,
    `tau_b=inf`; no knobs = the main comparison row)."""
    for r in t["rows"]:
        r["paper"] = {}
    if not t["paper_table"] or not PAPER.is_file():
        return
    pub = pd.read_csv(PAPER, keep_default_na=False)
    pub = pub[pub.table == t["paper_table"]]
    for r in t["rows"]:
        knobs = _parse_variant(r.get("knobs", ""))
        real = _real_backbone(t, r["backbone"])
        for p in pub.itertuples():
            if p.backbone != real or p.method != r["method"] or abs(float(p.retention) - r["retention"]) > 1e-9:
                continue
            var = _parse_variant(p.variant)
            if set(var) != set(knobs) or not all(_same(var[k], knobs[k]) for k in var):
                continue
            col = p.benchmark if p.benchmark in ("vqa_avg", "vtg_avg") or p.benchmark.endswith(("_ms", "_gb")) \
                or p.benchmark == "tflops" else (r["backbone"], p.benchmark)
            r["paper"][col] = float(p.score)


def _cell_txt(v, ci=None, bold=False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    s = f"{v:.1f}"
    if ci and not any(math.isnan(x) for x in ci):
        s += f" [{ci[0]:.1f}, {ci[1]:.1f}]"
    return f"**{s}**" if bold else s


def _value(r: dict, col: tuple) -> tuple[float, tuple | None]:
    """A row's value in column (backbone, column): a score with its interval, or the row's Avg. (%)
    (under its own backbone only: a row is one backbone's)."""
    if col[1].endswith("_avg"):
        return (r.get(col[1], math.nan) if col[0] == r["backbone"] else math.nan), None
    return r.get(col, math.nan), r.get((*col, "ci"))


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
            v = _value(r, col)[0]
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            k = (col, r["retention"])
            best[k] = max(best.get(k, -math.inf), v)
    header = ["Method", "Ret."] + [f"{bb}:{c}" if len(t["backbones"]) > 1 else c for bb, c in cols] + ["p vs OTT-Vid"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    flat = []
    for r in rows:
        label = r.get("knobs") or r["setting"]
        name = r["method"] + (f" ({label})" if label else "")
        cells_txt = []
        out = {"method": r["method"], "setting": r["setting"], "retention": r["retention"]}
        for col in cols:
            v, ci = _value(r, col)
            isbest = r["method"] != "vanilla" and not (isinstance(v, float) and math.isnan(v)) and \
                v == best.get((col, r["retention"]))
            txt = _cell_txt(v, ci, isbest)
            state = r.get((*col, "state"))
            if state:  # a stored cell with failed samples: out of the table, or in it flagged (include_incomplete)
                txt = state if txt == "—" else f"{txt} ‡{state}"
            if col[1].endswith("_avg") and col[0] == r["backbone"] and r.get(col[1] + "_undefined") and txt != "—":
                txt += "†"
            cells_txt.append(txt)
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
        paper = r.get("paper") or {}
        ptxt = []
        for col in cols:
            v = paper.get(col[1] if col[1].endswith("_avg") else col) if col[0] == r["backbone"] else None
            ptxt.append(f"*{v:.1f}*" if v is not None else "")
            if v is not None:
                out["paper:" + (f"{col[0]}:{col[1]}" if len(t["backbones"]) > 1 else col[1])] = v
        flat.append(out)
        lines.append("| " + " | ".join([name, f"{100 * r['retention']:g}%"] + cells_txt + ["; ".join(ps) or ""]) + " |")
        if any(ptxt):
            lines.append("| *published* | | " + " | ".join(ptxt) + " | |")
    md = "\n".join(lines)
    df = pd.DataFrame(flat)
    tex = df.drop(columns=[c for c in df.columns if c.endswith(("_ci_lo", "_ci_hi")) or c.startswith("paper:")]).to_latex(
        index=False, float_format="%.1f", na_rep="--", escape=True)
    return md, df, tex


def delta(t: dict, df: pd.DataFrame) -> str:
    """Published vs reproduced, for every number the paper prints for one of this table's rows."""
    if not t["paper_table"] or not PAPER.is_file():
        return "No published counterpart for this experiment.\n"
    lines = ["| backbone | method | ret. | setting | benchmark | published | reproduced | delta |",
             "|---|---|---|---|---|---|---|---|"]
    for r in t["rows"]:
        for col, pv in (r.get("paper") or {}).items():
            mine = r.get(col)
            bench = col[1] if isinstance(col, tuple) else col
            d = "—" if mine is None or (isinstance(mine, float) and math.isnan(mine)) else f"{mine - pv:+.1f}"
            lines.append(f"| {r['backbone']} | {r['method']} | {r['retention']:g} | {r.get('knobs') or r['setting']} | "
                         f"{bench} | {pv:.1f} | {_cell_txt(mine)} | {d} |")
    return "\n".join(lines) + "\n"


def tables_dir(t: dict) -> Path:
    """results/tables/ at the real scale (and for `make demo`'s own table1), results/tables/<scale>/ else."""
    out = REPO_ROOT / "results" / "tables"
    return out if t["scale"] == "real" else out / t["scale"]


def header(t: dict) -> str:
    """The table's provenance: experiment, scale, backbones, and what the published rows are."""
    scale = t["scale"] if not (t["demo"] and t["scale"] == "real") else "demo (tiny backbones named by the experiment)"
    src = f"Experiment `{t['experiment']}`, scale `{scale}`; backbones: {', '.join(t['backbones'])}.\n"
    if t["demo"]:
        src += ("\n**Demo scale**: tiny random-weight twins of the backbones on the synthetic shards "
                "(configs/scale/demo.yaml, tasks/synthetic). The scores and latencies exercise the pipeline; "
                "they are not comparable with the published numbers.\n")
    if t["paper_table"]:
        src += (f"*published* rows: the paper's {PAPER_TITLE.get(t['paper_table'], t['paper_table'])} "
                f"(results/paper/published.csv, real backbones and benchmarks).\n")
    return src


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        t = build(argv)
    except CellError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    md, df, tex = render(t)
    out = tables_dir(t)
    out.mkdir(parents=True, exist_ok=True)
    exp = t["experiment"]
    name = "table1" if exp == "demo" else exp
    note = ("Scores: accuracy / mIoU (%) with 95% bootstrap intervals; Avg. (%) relative to this run's own "
            "vanilla; **bold** = best per retention; p: paired bootstrap vs OTT-Vid on the same samples; "
            "— = never run; `failed` / `incomplete (k/n failed)` = run, but the cell or k of its n samples failed "
            "(listed in its JSON): left out of the table and its averages unless `include_incomplete=true`, which "
            "puts an incomplete cell's score in (failed samples count as wrong) flagged ‡; † = averaged over the benchmarks where our vanilla scores above 0 (on a benchmark "
            "where vanilla scores 0, retention is undefined).\n")
    src = header(t)
    store.atomic_write_text(out / f"{name}.md", f"# {name}\n\n{src}{note}\n{md}\n")
    store.atomic_write_text(out / f"{name}.csv", df.to_csv(index=False))
    store.atomic_write_text(out / f"{name}.tex", tex)
    store.atomic_write_text(out / f"{name}_delta.md", f"# {name}: published vs reproduced\n\n{delta(t, df)}")
    t["long"].drop(columns=["scores", "groups", "stats"]).to_csv(out / f"{name}_long.csv", index=False)
    if exp == "table4":  # the paper's efficiency layout (runners/efficiency_table.py)
        from .efficiency_table import published_frame, table4_frame, table4_markdown

        eff, pub = table4_frame(t["rows"]), published_frame(t["rows"])
        store.atomic_write_text(out / "table4_efficiency.md", "# Table 4: efficiency at r = 0.10\n\n" + src + note
                                + "Latency: mean per sample (ms); TTFT (speedup vs vanilla); TFLOPs: analytic LLM "
                                "prefill (docs/efficiency.md); peak memory: CUDA only (— on CPU).\n\n"
                                + table4_markdown(eff, pub) + "\n")
        store.atomic_write_text(out / "table4_efficiency.csv", pd.concat(
            [eff.assign(source="reproduced"), pub.assign(source="published")]).to_csv(index=False))
        print(table4_markdown(eff, pub))
    print(f"wrote {out / (name + '.md')} (+ .csv, .tex, _delta.md)")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
