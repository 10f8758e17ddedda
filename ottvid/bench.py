"""Compression latency and memory at paper-shaped inputs: `python -m ottvid.bench` (or `make bench`).

Three reports, each optional (docs/efficiency.md, "make bench"):

- latency: every registered method (median of repeats after warm-up) on synthetic tokens
  with video-like structure (static background, drifting subject, a scene cut), on CPU
  and, when present, CUDA (with synchronisation), beside the paper's Table 4 compression
  column on CUDA. r = 0.10 by default.
- official: with `--official-ottvid DIR` (an extracted minseokii/OTT-Vid tree, never
  vendored), the official OTT-Vid functions and ours alternated in one process on
  identical inputs; the kept positions must agree, medians and their ratio (the speed-up) are
  printed, and the ratio of the fastest calls ("best-of", the less noise-prone estimate on a
  shared machine).
- scaling: T = 64 ... 768 frames of 14x14 tokens, time and peak memory per method, each
  case in a fresh subprocess (peak memory = growth of the process's peak resident set,
  or of CUDA's peak allocation, over the resident input; see `measure_case`).
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.util
import io
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
import types

import torch

from . import VideoTokens, build_compressor, list_methods

# (name, T, H, W): LLaVA-OV 32x196, LLaVA-Video 64x169, Qwen2.5-VL 32 frames -> 16 steps of ~700
# tokens (26x27 at max_pixels), and a long VTG video at 2 fps (180 steps of 12x16 tokens).
SHAPES = {
    "llava_ov": (32, 14, 14),
    "llava_video": (64, 13, 13),
    "qwen2_5_vl": (16, 26, 27),
    "vtg_long": (180, 12, 16),
    # N ~ 700 at other frame counts (issue 12: "at N ~ 700 for any T")
    "qwen_T1": (1, 26, 27),
    "qwen_T2": (2, 26, 27),
    "qwen_T4": (4, 26, 27),
    "qwen_T64": (64, 26, 27),
}
#: the paper backbones' shapes: the latency table's default
LATENCY_SHAPES = ("llava_ov", "llava_video", "qwen2_5_vl", "vtg_long")
#: the shapes of the official-vs-ours comparison (issue 12's table)
OFFICIAL_SHAPES = ("llava_ov", "qwen2_5_vl", "vtg_long")
SCALING_T = (64, 128, 256, 512, 768)
D_LLM, D_ENC = 3584, 1152
#: paper Table 4, compression latency (ms) at r = 0.10 on Qwen2.5-VL-7B inputs (one GPU)
PAPER_TABLE4_MS = {"ottvid": 48.0, "fastvid": 17.3, "unicomp": 286.1}


def paper_video(T: int, H: int, W: int, device: str, dtype: torch.dtype, seed: int = 0,
                d_llm: int = D_LLM, d_enc: int = D_ENC) -> VideoTokens:
    """Synthetic post-projector tokens with the similarity structure of real video."""
    g = torch.Generator().manual_seed(seed)
    N = H * W
    basis = torch.randn(64, d_llm, generator=g)
    scene = torch.randn(2, N, 64, generator=g)
    t = torch.arange(T).view(T, 1, 1)
    codes = torch.where(t < T // 2, scene[0], scene[1]) + 0.2 * torch.randn(T, N, 64, generator=g)
    x = (codes @ basis).div_(8).to(device=device, dtype=dtype)
    del codes
    sal = torch.softmax(torch.randn(T, N, generator=g) * 2, dim=-1).to(device)
    enc = torch.randn(T, N, d_enc, generator=g).to(device=device, dtype=dtype)
    return VideoTokens(features=x, grid_hw=(H, W), saliency=sal, encoder_features=enc,
                       frame_features=x.float().mean(1), timestamps=torch.arange(T, dtype=torch.float32, device=device))


def _sync(video: VideoTokens) -> None:
    if video.features.is_cuda:
        torch.cuda.synchronize()


def time_method(name: str, video: VideoTokens, retention: float, repeats: int) -> tuple[float, int]:
    """Median wall time (ms) of one compression call, and the output token count."""
    compress = build_compressor(name, retention=1.0) if name == "vanilla" else build_compressor(name, retention=retention)
    out = compress(video)  # warm-up
    times = []
    for _ in range(repeats):
        _sync(video)
        t0 = time.perf_counter()
        out = compress(video)
        _sync(video)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), out.count


# ---------------------------------------------------------------- the official OTT-Vid -------

def load_official_ottvid(root: str | os.PathLike) -> dict:
    """Import the official OTT-Vid functions from an extracted minseokii/OTT-Vid tree.

    The tree's `ottvid` package is mounted as `ottvid_official` (it would shadow ours);
    its spatial and temporal modules import only torch. From the Qwen2.5-VL backbone
    module, which patches transformers classes, only the compression glue is taken: the
    functions `_run_spatial`, `_run_temporal` and the leave-one-out mass they call,
    compiled from the file's own source into `ottvid_official.backbones.qwen2_5_vl` (where the
    LLaVA backbone module imports that mass from). Returns {"PipelineConfig", "run_spatial",
    "run_temporal"}.
    """
    pkg_dir = pathlib.Path(root) / "ottvid"
    glue = pkg_dir / "backbones" / "qwen2_5_vl.py"
    for f in (pkg_dir / "config.py", pkg_dir / "spatial" / "facility_location.py",
              pkg_dir / "temporal" / "ot_merge.py", glue):
        if not f.is_file():
            raise ValueError(f"official_ottvid: {root} is not an extracted minseokii/OTT-Vid tree (no {f})")
    name = "ottvid_official"

    def mount(mod: str, path: pathlib.Path, package: bool = False) -> types.ModuleType:
        spec = importlib.util.spec_from_file_location(
            f"{name}{mod}", path, submodule_search_locations=[str(path.parent)] if package else None)
        m = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = m
        spec.loader.exec_module(m)
        return m

    root_pkg = types.ModuleType(name)
    root_pkg.__path__ = [str(pkg_dir)]
    sys.modules[name] = root_pkg
    config = mount(".config", pkg_dir / "config.py")
    mount(".spatial", pkg_dir / "spatial" / "__init__.py", package=True)
    mount(".temporal", pkg_dir / "temporal" / "__init__.py", package=True)
    backbones = types.ModuleType(f"{name}.backbones")
    backbones.__path__ = [str(pkg_dir / "backbones")]
    sys.modules[backbones.__name__] = backbones
    wanted = {"_run_spatial", "_run_temporal", "_batched_terminal_leave_one_out_mass", "_terminal_leave_one_out_mass"}
    tree = ast.parse(glue.read_text())
    body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted]
    if {n.name for n in body} != wanted:
        raise ValueError(f"official_ottvid: {glue} lacks {sorted(wanted - {n.name for n in body})}")
    qwen = types.ModuleType(f"{name}.backbones.qwen2_5_vl")
    qwen.__dict__.update(__package__=backbones.__name__, torch=torch, F=torch.nn.functional, os=os)
    exec(compile(ast.Module(body=body, type_ignores=[]), str(glue), "exec"), qwen.__dict__)
    sys.modules[qwen.__name__] = qwen
    return {"PipelineConfig": config.PipelineConfig, "run_spatial": qwen._run_spatial,
            "run_temporal": qwen._run_temporal}


def official_ottvid(official: dict, video: VideoTokens, retention: float = 0.10) -> tuple[torch.Tensor, torch.Tensor]:
    """The official Qwen2.5-VL compression path (spatial then temporal) at the paper's defaults.

    Returns (features (M, D), flat slot indices t*N + n (M,)), in the order the LLM gets them.
    """
    T, N, D = video.features.shape
    H, W = video.grid_hw
    cfg = official["PipelineConfig"](
        total_retention_ratio=retention, temporal_share=0.3, enable_temporal=True, ot_mass_tau=0.3,
        ot_budget_temperature=0.3, ot_cost_threshold=0.3, ot_sinkhorn_eps=0.01, ot_sinkhorn_iters=200)
    thw = torch.tensor([[T, 2 * H, 2 * W]])  # merged grid = (H, W) with spatial_merge_size 2
    emb = video.features.reshape(T * N, D)
    with contextlib.redirect_stdout(io.StringIO()):  # the official spatial stage prints a line per call
        tok, idx = official["run_spatial"](emb, video.saliency, thw, 2, cfg)
        tok, idx, _ = official["run_temporal"](tok, idx, thw, 2, cfg, pre_video_embeds=emb, saliency=video.saliency)
    return tok, idx


def compare_official(official_dir: str, shapes: list[str], retention: float, repeats: int,
                     device: str = "cpu") -> list[dict]:
    """Official OTT-Vid vs ours, alternated call by call on the same inputs; kept positions asserted."""
    official = load_official_ottvid(official_dir)
    ours = build_compressor("ottvid", retention=retention)
    rows = []
    for shape in shapes:
        T, H, W = SHAPES[shape]
        video = paper_video(T, H, W, device, torch.float32)
        t_off, t_ours = [], []
        for rep in range(repeats + 1):  # the first round is a warm-up
            _sync(video)
            t0 = time.perf_counter()
            tok, idx = official_ottvid(official, video, retention)
            _sync(video)
            t1 = time.perf_counter()
            out = ours(video)
            _sync(video)
            t2 = time.perf_counter()
            if not torch.equal(out.flat_index(video.grid_hw).cpu(), idx.cpu()):
                raise AssertionError(f"{shape}: kept positions differ from the official OTT-Vid")
            diff = float((out.features.float() - tok.float()).abs().max())
            if rep:
                t_off.append((t1 - t0) * 1e3)
                t_ours.append((t2 - t1) * 1e3)
        off, me = statistics.median(t_off), statistics.median(t_ours)
        rows.append({"shape": shape, "T": T, "N": H * W, "official_ms": off, "ours_ms": me,
                     "speedup": off / me, "best_speedup": min(t_off) / min(t_ours),
                     "tokens": out.count, "max_feature_diff": diff})
    return rows


# ---------------------------------------------------------------- scaling ---------------------

def _rss_kib(field: str) -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure_case(method: str, T: int, H: int, W: int, D: int, retention: float, device: str) -> dict:
    """One compression call on a fresh input, in this process: wall time and peak extra memory.

    CPU: the peak resident set (VmHWM) is reset to the current one once the input is built
    (/proc/self/clear_refs), so `peak_extra_bytes` = VmHWM after the call - VmRSS before it:
    the most memory the call held at once beyond the resident input (page granularity, what
    the OS saw; `run_case_subprocess` makes glibc return large freed buffers at once, so this
    is live memory, not allocator retention). CUDA: torch.cuda.max_memory_allocated during the
    call - allocated before.
    """
    video = paper_video(T, H, W, device, torch.float32, d_llm=D, d_enc=min(D, D_ENC))
    compress = build_compressor(method, retention=1.0 if method == "vanilla" else retention)
    input_bytes = video.features.numel() * video.features.element_size()
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        pathlib.Path("/proc/self/clear_refs").write_text("5")
        base = _rss_kib("VmRSS") * 1024
    t0 = time.perf_counter()
    out = compress(video)
    _sync(video)
    ms = (time.perf_counter() - t0) * 1e3
    peak = torch.cuda.max_memory_allocated() if cuda else _rss_kib("VmHWM") * 1024
    return {"method": method, "T": T, "N": H * W, "D": D, "ms": ms, "tokens": out.count,
            "input_bytes": input_bytes, "peak_extra_bytes": max(0, peak - base)}


def run_case_subprocess(method: str, T: int, H: int, W: int, D: int, retention: float, device: str,
                        threads: int | None = None, timeout: float = 1800) -> dict:
    """`measure_case` in a fresh interpreter (so one case's peak cannot hide another's)."""
    cmd = [sys.executable, "-m", "ottvid.bench", "--case", json.dumps(
        {"method": method, "T": T, "H": H, "W": W, "D": D, "retention": retention, "device": device})]
    # glibc keeps freed heap pages resident (RSS then overstates what is live); with a fixed small
    # mmap threshold every large buffer is returned on free, so the peak RSS tracks live memory
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        return {"method": method, "T": T, "N": H * W, "D": D, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- CLI -------------------------

def _latency(methods: list[str], shapes: list[str], devices: list[str], retention: float, repeats: int,
             dtype: torch.dtype) -> None:
    print(f"{'device':<6} {'shape':<12} {'T x N':>10} {'method':<10} {'ms':>10} {'tokens out':>11} {'paper ms':>9}")
    for device in devices:
        for shape in shapes:
            T, H, W = SHAPES[shape]
            video = paper_video(T, H, W, device, dtype)
            for name in methods:
                ms, count = time_method(name, video, retention, repeats)
                paper = PAPER_TABLE4_MS.get(name) if device.startswith("cuda") and shape == "qwen2_5_vl" else None
                print(f"{device:<6} {shape:<12} {f'{T}x{H * W}':>10} {name:<10} {ms:>10.1f} {count:>11} "
                      f"{'' if paper is None else f'{paper:.1f}':>9}", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="*", default=None, help="default: every registered method")
    ap.add_argument("--shapes", nargs="*", default=list(LATENCY_SHAPES), choices=list(SHAPES))
    ap.add_argument("--devices", nargs="*", default=None, help="default: cpu, plus cuda when available")
    ap.add_argument("--retention", type=float, default=0.10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--official-ottvid", default=os.environ.get("OFFICIAL_OTTVID") or None, metavar="DIR",
                    help="extracted minseokii/OTT-Vid tree: time it against ours (default: $OFFICIAL_OTTVID)")
    ap.add_argument("--official-shapes", nargs="*", default=list(OFFICIAL_SHAPES), choices=list(SHAPES),
                    help="shapes of the official comparison (default: issue 12's three)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["latency", "official", "scaling"])
    ap.add_argument("--scaling-T", nargs="*", type=int, default=list(SCALING_T))
    ap.add_argument("--scaling-D", type=int, default=D_LLM, help="feature width of the scaling table")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case:
        c = json.loads(args.case)
        print(json.dumps(measure_case(c["method"], c["T"], c["H"], c["W"], c["D"], c["retention"], c["device"])))
        return
    methods = args.methods or [m for m in list_methods() if m != "vanilla"]
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    dtype = getattr(torch, args.dtype)
    print(f"# compression, r={args.retention}, median of {args.repeats} "
          f"(torch {torch.__version__}, {torch.get_num_threads()} CPU threads)")
    if "latency" not in args.skip:
        print(f"\n## latency ({args.dtype}); paper ms = Table 4 compression column (Qwen2.5-VL-7B, GPU)")
        _latency(methods, args.shapes, devices, args.retention, args.repeats, dtype)
    if "official" not in args.skip and args.official_ottvid:
        for device in devices:
            print(f"\n## OTT-Vid: official ({args.official_ottvid}) vs ours, alternated, same kept positions, {device}")
            print(f"{'shape':<12} {'T x N':>10} {'official ms':>12} {'ours ms':>9} {'speed-up':>9} {'best-of':>8} "
                  f"{'tokens':>7} {'max |dfeat|':>12}")
            for row in compare_official(args.official_ottvid, args.official_shapes, args.retention, args.repeats, device):
                shape_txt = f"{row['T']}x{row['N']}"
                print(f"{row['shape']:<12} {shape_txt:>10} {row['official_ms']:>12.1f} {row['ours_ms']:>9.1f} "
                      f"{row['speedup']:>8.2f}x {row['best_speedup']:>7.2f}x {row['tokens']:>7} "
                      f"{row['max_feature_diff']:>12.2e}", flush=True)
    if "scaling" not in args.skip:
        for device in devices:
            print(f"\n## scaling: T x 14x14 tokens, D={args.scaling_D}, one subprocess per case, {device}; "
                  f"peak = most memory held beyond the input (x input size)")
            print(f"{'method':<10} {'T':>5} {'input GB':>9} {'ms':>10} {'peak GB':>8} {'x input':>8} {'tokens':>7}")
            for name in methods:
                for T in args.scaling_T:
                    row = run_case_subprocess(name, T, 14, 14, args.scaling_D, args.retention, device,
                                              threads=torch.get_num_threads())
                    if "error" in row:
                        print(f"{name:<10} {T:>5} failed: {row['error']}", flush=True)
                        continue
                    gb = row["input_bytes"] / 2**30
                    print(f"{name:<10} {T:>5} {gb:>9.2f} {row['ms']:>10.1f} {row['peak_extra_bytes'] / 2**30:>8.2f} "
                          f"{row['peak_extra_bytes'] / row['input_bytes']:>8.2f} {row['tokens']:>7}", flush=True)


if __name__ == "__main__":
    main()
