"""What sharing the decode and the vision pass buys a sweep: `make bench-sweep`.

1. The demo grid (vanilla + every method x 4 ratios x 6 synthetic shards on the tiny Qwen2.5-VL, on
   CPU) run twice in one invocation, cell by cell (`share_encoding=false`) and sample-major, each into
   a fresh results folder: wall time of both and their ratio, and whether the cells are identical.
2. A model of the GPU-hours of the real Table 1 (Qwen2.5-VL-7B, 126 cells), per-cell vs shared, from
   per-stage costs: by default the paper's Table 4 measurements on Qwen2.5-VL-7B (vision, compression,
   prefill at r = 0.10 and 1.0) and the video decode measured here on the official protocol's own
   pipeline (qwen-vl-utils, 32 frames / 2 fps) on the bundled test videos; every other input is listed
   with its source. `--costs FILE.json` replaces any of them (e.g. from your own GPU's cell records).

    python -m runners.bench_sweep [--skip-demo] [--limit N] [--costs costs.json] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .store import REPO_ROOT

# Table 1: benchmark -> (test samples, family). The four VQA counts are the benchmarks' published
# sizes; the TimeLens splits' sizes are not known offline: the originals' test sets stand in (an
# upper bound on the refined splits) unless --costs gives `samples`.
SAMPLES = {"mvbench": (4000, "vqa"), "videomme": (2700, "vqa"), "longvideobench": (1337, "vqa"),
           "mlvu": (2174, "vqa"), "charades_timelens": (3720, "vtg"), "activitynet_timelens": (4917, "vtg")}
RATIOS = (0.25, 0.20, 0.15, 0.10)
METHODS = ("holitom", "fastvid", "flashvid", "unicomp", "ottvid")

# per-stage costs on Qwen2.5-VL-7B (ms per sample) and their source
PAPER = {
    "vision_ms": (786.0, "paper Table 4 (vision encoder, 32 frames)"),
    "prefill_ms_r1": (1088.8, "paper Table 4 (LLM prefill, vanilla)"),
    "prefill_ms_r0.1": (104.0, "paper Table 4 (LLM prefill, r = 0.10); linear in r in between"),
    "compress_ms": ({"fastvid": 17.3, "unicomp": 286.1, "ottvid": 48.0, "holitom": 48.0, "flashvid": 48.0},
                    "paper Table 4 (FastVID, UniComp, OTT-Vid); HoliTom / FlashVID not reported: OTT-Vid's"),
    "decode_token_ms": (25.0, "assumed: one greedy step of a 7B model with a KV cache"),
    "answer_tokens": ({"vqa": 2, "vtg": 16}, "assumed: an option letter + eos; a time span"),
    "model_load_s": (60.0, "assumed: a 7B checkpoint from local disk"),
}
# assumed mean video length of the VTG splits (s): Charades clips ~30 s, ActivityNet videos ~2 min
VIDEO_S = {"vqa": None, "vtg": {"charades_timelens": 30.0, "activitynet_timelens": 120.0}}


def measure_decode(repeats: int = 3) -> dict[str, float]:
    """ms to decode and resize one sample the way the official Qwen2.5-VL runs do (qwen-vl-utils, the
    7B's pixel bounds), on the bundled 640x360 30 s test video: VQA 32 frames per sample; VTG per second
    of video (2 fps)."""
    from ottvid.backbones.qwen2_5_vl import PROTOCOL
    from ottvid.backbones.video import read_video_qwen_vl

    video = str(REPO_ROOT / "tests" / "fixtures" / "protocol" / "videos" / "v640x360_30fps_30s.mp4")
    bounds = {"min_pixels": PROTOCOL["min_pixels"], "max_pixels": PROTOCOL["max_pixels"]}
    out = {}
    for mode, kw, per in (("vqa", {"max_frames": 32}, 1.0), ("vtg", {"fps": 2.0}, 30.0)):
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            read_video_qwen_vl(video, **bounds, **kw)
            ts.append((time.perf_counter() - t0) * 1e3)
        out[mode] = statistics.median(ts) / per
    return out


def prefill_ms(r: float, c: dict) -> float:
    lo, hi = c["prefill_ms_r0.1"], c["prefill_ms_r1"]
    return lo + (hi - lo) * (r - 0.1) / 0.9


def table1_gpu_hours(c: dict, decode_ms: dict[str, float]) -> dict:
    """GPU-hours of Table 1, per-cell and shared, with the decode on the critical path (as the
    harness runs it: the GPU waits while the next sample is decoded)."""
    per_cell = shared = 0.0
    rows = []
    for bench, (n, fam) in c["samples"].items():
        # VTG samples at 2 fps: vision, compression and prefill scale with the frames (Table 4: 32 frames)
        frames = 32 if fam == "vqa" else min(768, 2 * VIDEO_S["vtg"][bench])
        scale = frames / 32
        dec = decode_ms[fam] * (1.0 if fam == "vqa" else VIDEO_S["vtg"][bench])
        gen = c["decode_token_ms"] * c["answer_tokens"][fam]
        cells = [("vanilla", 1.0)] + [(m, r) for m in METHODS for r in RATIOS]
        llm = sum(scale * ((0.0 if m == "vanilla" else c["compress_ms"][m]) + prefill_ms(r, c)) + gen for m, r in cells)
        enc = dec + scale * c["vision_ms"]
        pc, sh = n * (len(cells) * enc + llm), n * (enc + llm)
        rows.append({"benchmark": bench, "samples": n, "cells": len(cells), "decode_ms": dec,
                     "per_cell_h": pc / 3.6e6, "shared_h": sh / 3.6e6})
        per_cell, shared = per_cell + pc, shared + sh
    loads_pc = len(METHODS) * len(RATIOS) + 1  # today: one load per method config
    loads_sh = len(c["samples"])               # shared: one load per group (backbone, benchmark)
    per_cell_h = per_cell / 3.6e6 + loads_pc * c["model_load_s"] / 3600
    shared_h = shared / 3.6e6 + loads_sh * c["model_load_s"] / 3600
    return {"rows": rows, "per_cell_h": per_cell_h, "shared_h": shared_h, "ratio": shared_h / per_cell_h}


def run_demo(limit: int | None) -> dict:
    """The demo grid per-cell and shared, each from scratch into its own folder, timed."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONPATH": str(REPO_ROOT)}
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in (("per_cell", ["share_encoding=false"]), ("shared", [])):
            runs = Path(tmp) / name
            cmd = [sys.executable, "-m", "runners.sweep", "experiment=demo", f"results_dir={runs}", "progress=false",
                   "wandb.mode=disabled", *extra, *([f"limit={limit}"] if limit else [])]
            t0 = time.perf_counter()
            r = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
            out[name] = time.perf_counter() - t0
            if r.returncode:
                raise SystemExit(f"{name} sweep failed:\n{(r.stdout + r.stderr)[-3000:]}")
            out[f"{name}_cells"] = {p.name.rsplit("__", 1)[0]: json.loads(p.read_text()) for p in runs.glob("*.json")}
        a, b = out.pop("per_cell_cells"), out.pop("shared_cells")
        same = sorted(a) == sorted(b) and all(
            a[k]["per_sample"] == b[k]["per_sample"] and a[k]["score"] == b[k]["score"] and
            [s["tokens_out"] for s in a[k]["sample_stats"]] == [s["tokens_out"] for s in b[k]["sample_stats"]]
            for k in a)
        out.update(cells=len(a), identical=same, ratio=out["per_cell"] / out["shared"],
                   vision_passes=sum(x["shared_encoding"]["vision_passes"] for x in b.values()) // max(1, len(b)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skip-demo", action="store_true", help="only the GPU-hours model")
    p.add_argument("--limit", type=int, default=None, help="samples per demo cell (default: all)")
    p.add_argument("--costs", type=Path, help="JSON overriding per-stage costs / sample counts")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    costs = {k: v for k, (v, _) in PAPER.items()}
    costs["samples"] = {k: n for k, (n, _) in SAMPLES.items()}
    sources = {k: s for k, (_, s) in PAPER.items()}
    if a.costs:
        given = json.loads(a.costs.read_text())
        costs.update({k: v if k != "samples" else {b: (n, SAMPLES[b][1]) for b, n in v.items()} for k, v in given.items()})
        sources.update({k: f"--costs {a.costs}" for k in given})
    costs["samples"] = {b: (v if isinstance(v, tuple) else (v, SAMPLES[b][1])) for b, v in costs["samples"].items()}
    decode = measure_decode()
    model = table1_gpu_hours(costs, decode)
    demo = None if a.skip_demo else run_demo(a.limit)
    if a.json:
        print(json.dumps({"demo": demo, "decode_ms": decode, "table1": model, "costs": costs}, indent=1, default=str))
        return 0
    if demo:
        print(f"demo grid ({demo['cells']} cells, tiny Qwen2.5-VL, CPU, {os.environ.get('OMP_NUM_THREADS', '1')} thread):"
              f" per-cell {demo['per_cell']:.1f} s, shared {demo['shared']:.1f} s -> {demo['ratio']:.2f}x;"
              f" cells identical: {demo['identical']}")
    print(f"video decode measured here (qwen-vl-utils, 640x360): VQA {decode['vqa']:.0f} ms / sample (32 frames), "
          f"VTG {decode['vtg']:.0f} ms per second of video (2 fps)")
    print("\nTable 1 (Qwen2.5-VL-7B, 126 cells), modelled GPU-hours:")
    print("| benchmark | samples | cells | decode ms | per-cell h | shared h |\n|---|---|---|---|---|---|")
    for r in model["rows"]:
        print(f"| {r['benchmark']} | {r['samples']} | {r['cells']} | {r['decode_ms']:.0f} | {r['per_cell_h']:.1f} | "
              f"{r['shared_h']:.1f} |")
    print(f"| **total** (+ model loads) | | 126 | | **{model['per_cell_h']:.1f}** | **{model['shared_h']:.1f}** |")
    print(f"shared / per-cell = {model['ratio']:.3f} (with the decode overlapped, i.e. off the critical path: "
          f"{table1_gpu_hours(costs, {'vqa': 0.0, 'vtg': 0.0})['ratio']:.3f})")
    print("\ninputs:", *(f"  {k}: {costs[k]} ({sources.get(k, 'published benchmark sizes; TimeLens: originals')})"
                         for k in (*PAPER, "samples")), sep="\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
