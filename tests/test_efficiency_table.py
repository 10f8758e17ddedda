"""Table 4 layout (runners/efficiency_table.py) from hand-made summaries and from aggregated cells."""
from __future__ import annotations

import math

import pytest

from runners.efficiency_table import table4_frame, table4_markdown

# the paper's Table 4 (Qwen2.5-VL-7B, r = 0.10)
PAPER = {
    "vanilla": dict(vision_ms=786.0, compress_ms=0.0, prefill_ms=1088.8, ttft_ms=1874.8, peak_mem_gb=17.76,
                    tflops=120.25, vqa_avg=100.0, vtg_avg=100.0),
    "fastvid": dict(vision_ms=786.0, compress_ms=17.3, prefill_ms=104.0, ttft_ms=907.3, peak_mem_gb=17.90,
                    tflops=26.11, vqa_avg=93.4, vtg_avg=58.0),
    "unicomp": dict(vision_ms=786.0, compress_ms=286.1, prefill_ms=104.0, ttft_ms=1176.1, peak_mem_gb=23.17,
                    tflops=26.07, vqa_avg=92.4, vtg_avg=66.6),
    "ottvid": dict(vision_ms=786.0, compress_ms=48.0, prefill_ms=104.0, ttft_ms=938.0, peak_mem_gb=18.22,
                   tflops=26.11, vqa_avg=95.8, vtg_avg=73.9),
}


def _rows():
    rows = [{"backbone": "qwen2_5_vl_7b", "method": m, "retention": 1.0 if m == "vanilla" else 0.1, "setting": "",
             **v} for m, v in PAPER.items()]
    # rows the table must ignore: another retention, a non-default setting, another method
    rows += [{"backbone": "qwen2_5_vl_7b", "method": "ottvid", "retention": 0.25, "setting": "", "ttft_ms": 1.0},
             {"backbone": "qwen2_5_vl_7b", "method": "ottvid", "retention": 0.1, "setting": "gamma=0", "ttft_ms": 1.0},
             {"backbone": "qwen2_5_vl_7b", "method": "holitom", "retention": 0.1, "setting": "", "ttft_ms": 1.0}]
    rows[1]["setting"] = "ignore_tau=0.95,tau=0.84,variant=qwen2_5_vl"   # FastVID's Qwen port: its default row
    return rows[::-1]


def test_frame_and_markdown_reproduce_the_paper_layout():
    df = table4_frame(_rows())
    assert list(df.method) == ["vanilla", "fastvid", "unicomp", "ottvid"]
    assert list(df.setting) == ["", "ignore_tau=0.95,tau=0.84,variant=qwen2_5_vl", "", ""]
    ott = df.set_index("method").loc["ottvid"]
    assert ott.ttft_ms == 938.0 and ott.ttft_speedup == pytest.approx(1874.8 / 938.0)
    assert ott.prefill_speedup == pytest.approx(1088.8 / 104.0)
    assert math.isnan(df.set_index("method").loc["vanilla"].compress_ms)
    md = table4_markdown(df)
    lines = md.splitlines()
    assert lines[2] == "| Vanilla | 100% | 786.0 | – | 1088.8 | 1874.8 (1.0×) | 17.76 | 120.25 | 100.0 | 100.0 |"
    assert lines[3] == "| FastVID | 10% | 786.0 | 17.3 | 104.0 | 907.3 (2.1×) | 17.90 | 26.11 | 93.4 | 58.0 |"
    assert lines[4] == "| UniComp | 10% | 786.0 | 286.1 | 104.0 | 1176.1 (1.6×) | 23.17 | 26.07 | 92.4 | 66.6 |"
    assert lines[5] == "| OTT-Vid | 10% | 786.0 | 48.0 | 104.0 | 938.0 (2.0×) | 18.22 | 26.11 | 95.8 | 73.9 |"


def test_missing_values_print_as_dash():
    rows = [r for r in _rows() if r["method"] != "vanilla"]
    df = table4_frame(rows)
    assert list(df.method) == ["fastvid", "unicomp", "ottvid"]
    assert df.ttft_speedup.isna().all()                                  # no vanilla, no speedup
    md = table4_markdown(df)
    assert "| OTT-Vid | 10% | 786.0 | 48.0 | 104.0 | 938.0 | 18.22 |" in md
    df = table4_frame([{"method": "ottvid", "retention": 0.1, "setting": "", "ttft_ms": 5.0}])
    assert table4_markdown(df).splitlines()[2] == "| OTT-Vid | 10% | — | — | — | 5.0 | — | — | — | — |"


def test_from_aggregated_cells(tmp_path):
    """The aggregator's rows carry per-sample means (tflops included) into the Table 4 frame."""
    from runners import aggregate, store
    from runners.sweep import plan

    args = ["experiment=table4", f"results_dir={tmp_path}"]
    _, cells, _ = plan(args)
    for cell, _, _ in cells:
        p = PAPER[cell.method]
        fam = cell.benchmark["family"]
        score = 50.0 * (p[f"{fam}_avg"] / 100)
        summ = {k: {"mean": v, "median": v, "max": v, "sum": v} for k, v in p.items() if k.endswith(("_ms", "_gb"))
                or k == "tflops"}
        rec = {"cell": cell.as_dict(), "status": "done", "score": score, "n": 2,
               "per_sample": {"scores": {"0": score, "1": score}, "groups": None}, "stats_summary": summ}
        store.atomic_write_json(tmp_path / cell.filename(), rec)
    t = aggregate.build(args)
    df = table4_frame(t["rows"]).set_index("method")
    assert df.loc["ottvid"].tflops == pytest.approx(26.11)
    assert df.loc["unicomp"].compress_ms == pytest.approx(286.1)
    assert df.loc["fastvid"].vqa_avg == pytest.approx(93.4) and df.loc["fastvid"].vtg_avg == pytest.approx(58.0)
    assert df.loc["ottvid"].ttft_speedup == pytest.approx(1874.8 / 938.0)
