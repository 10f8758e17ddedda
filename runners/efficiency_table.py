"""Table 4 layout (efficiency at r = 0.10): latency per stage with speedup, peak memory, TFLOPs, Avg. (%).

`table4_frame(rows)` takes the aggregator's summary rows (one dict per (backbone, method, retention,
setting) with the per-sample means `vision_ms`, `compress_ms`, `prefill_ms`, `ttft_ms`, `peak_mem_gb`,
`tflops` averaged over the benchmarks, and `vqa_avg` / `vtg_avg`) and returns the table as a pandas
DataFrame; `table4_markdown(df)` renders it as the paper prints it. `python -m runners.aggregate
experiment=table4` writes results/tables/table4_efficiency.{md,csv} with these.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

METHODS = ("vanilla", "fastvid", "unicomp", "ottvid")
NAMES = {"vanilla": "Vanilla", "fastvid": "FastVID", "unicomp": "UniComp", "ottvid": "OTT-Vid"}
STAGES = ("vision_ms", "compress_ms", "prefill_ms", "ttft_ms")


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def _pick(cands: list[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The method's default row: empty setting; else the backbone-chosen variant (FastVID's official
    Qwen2.5-VL port carries its own tau/ignore_tau, so its setting is not empty); else the only row."""
    plain = [r for r in cands if not r.get("setting")]
    if plain:
        return plain[0]
    variant = [r for r in cands if "variant=" in (r.get("setting") or "")]
    if len(variant) == 1:
        return variant[0]
    return cands[0] if len(cands) == 1 else None


def table4_frame(rows: Iterable[Mapping[str, Any]], retention: float = 0.1, methods: Sequence[str] = METHODS,
                 backbone: str | None = None) -> pd.DataFrame:
    """One row per method (vanilla at 100%, the others at `retention`, each at its default setting).

    Columns: method, retention, setting (the row's non-default hyperparameters), the four latencies (ms), `<stage>_speedup` = vanilla / method for
    prefill and TTFT, peak_mem_gb, tflops, vqa_avg, vtg_avg. Missing values are NaN.
    """
    cands: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        if backbone and r.get("backbone") != backbone:
            continue
        m = r.get("method")
        if m not in methods:
            continue
        if m != "vanilla" and abs(_num(r.get("retention")) - retention) > 1e-9:
            continue
        cands.setdefault(m, []).append(r)
    picked = {m: p for m, c in cands.items() if (p := _pick(c)) is not None}
    out = []
    van = picked.get("vanilla", {})
    for m in methods:
        if m not in picked:
            continue
        r = picked[m]
        rec = {"method": m, "retention": 1.0 if m == "vanilla" else retention, "setting": r.get("setting") or ""}
        for s in STAGES:
            rec[s] = math.nan if (m == "vanilla" and s == "compress_ms") else _num(r.get(s))
        for s in ("prefill_ms", "ttft_ms"):
            base = _num(van.get(s))
            rec[s.replace("_ms", "_speedup")] = base / rec[s] if rec[s] and not math.isnan(base) else math.nan
        for s in ("peak_mem_gb", "tflops", "vqa_avg", "vtg_avg"):
            rec[s] = _num(r.get(s))
        out.append(rec)
    cols = ["method", "retention", "setting", *STAGES, "prefill_speedup", "ttft_speedup", "peak_mem_gb", "tflops",
            "vqa_avg", "vtg_avg"]
    return pd.DataFrame(out, columns=cols)


def _f(v: float, fmt: str = "{:.1f}") -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def published_frame(rows: Iterable[Mapping[str, Any]], retention: float = 0.1) -> pd.DataFrame:
    """The paper's Table 4 in the same layout, from the aggregator's rows' `paper` dicts (the published
    values matched to each row; empty where the paper prints none)."""
    pub = [{k: r.get(k) for k in ("backbone", "method", "retention", "setting")} | dict(r["paper"])
           for r in rows if r.get("paper")]
    df = table4_frame(pub, retention)
    return df[[any(not math.isnan(_num(v)) for v in row[list(STAGES) + ["tflops"]]) for _, row in df.iterrows()]] \
        if len(df) else df


def _tf(v: float) -> str:
    """TFLOPs with two decimals; three significant digits below 0.01 (the tiny demo backbones)."""
    return _f(v, "{:.2f}" if v is None or math.isnan(v) or abs(v) >= 0.01 else "{:.3g}")


def _line(r, name: str) -> str:
    comp = "–" if r.method == "vanilla" else _f(r.compress_ms)
    ttft = _f(r.ttft_ms) + ("" if math.isnan(r.ttft_speedup) else f" ({r.ttft_speedup:.1f}×)")
    return (f"| {name} | {100 * r.retention:g}% | {_f(r.vision_ms)} | {comp} | "
            f"{_f(r.prefill_ms)} | {ttft} | {_f(r.peak_mem_gb, '{:.2f}')} | {_tf(r.tflops)} | "
            f"{_f(r.vqa_avg)} | {_f(r.vtg_avg)} |")


def table4_markdown(df: pd.DataFrame, published: pd.DataFrame | None = None) -> str:
    """Markdown in the paper's layout; TTFT carries its speedup vs vanilla, e.g. `938.0 (2.0×)`.
    With `published` (same layout), each method's row is followed by the paper's, in italics."""
    head = ("| Method | Ret. | Vision (ms) | Comp. (ms) | LLM (ms) | TTFT (ms) | Peak Mem. (GB) | TFLOPs | "
            "VQA (%) | VTG (%) |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|"]
    pub = {r.method: r for r in published.itertuples()} if published is not None else {}
    for r in df.itertuples():
        lines.append(_line(r, NAMES.get(r.method, r.method)))
        if r.method in pub:
            lines.append(_line(pub[r.method], "*published*"))
    return "\n".join(lines)


__all__ = ["METHODS", "published_frame", "table4_frame", "table4_markdown"]
