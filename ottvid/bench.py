"""Compression latency at paper-shaped inputs: `python -m ottvid.bench` (or `make bench`).

Times every registered method (median of repeats after warm-up) on synthetic tokens
with video-like structure (static background, drifting subject, a scene cut), on CPU
and, when present, CUDA (with synchronisation). r = 0.10 by default.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from . import VideoTokens, build_compressor, list_methods

# (name, T, H, W): LLaVA-OV 32x196, LLaVA-Video 64x169, Qwen2.5-VL 32 frames -> 16 steps of ~700
# tokens (26x27 at max_pixels), and a long VTG video at 2 fps (180 steps of 12x16 tokens).
SHAPES = {
    "llava_ov": (32, 14, 14),
    "llava_video": (64, 13, 13),
    "qwen2_5_vl": (16, 26, 27),
    "vtg_long": (180, 12, 16),
}
D_LLM, D_ENC = 3584, 1152


def paper_video(T: int, H: int, W: int, device: str, dtype: torch.dtype, seed: int = 0) -> VideoTokens:
    """Synthetic post-projector tokens with the similarity structure of real video."""
    g = torch.Generator().manual_seed(seed)
    N = H * W
    basis = torch.randn(64, D_LLM, generator=g)
    scene = torch.randn(2, N, 64, generator=g)
    t = torch.arange(T).view(T, 1, 1)
    codes = torch.where(t < T // 2, scene[0], scene[1]) + 0.2 * torch.randn(T, N, 64, generator=g)
    x = (codes @ basis / 8).to(device=device, dtype=dtype)
    sal = torch.softmax(torch.randn(T, N, generator=g) * 2, dim=-1).to(device)
    enc = torch.randn(T, N, D_ENC, generator=g).to(device=device, dtype=dtype)
    return VideoTokens(features=x, grid_hw=(H, W), saliency=sal, encoder_features=enc,
                       frame_features=x.float().mean(1), timestamps=torch.arange(T, dtype=torch.float32, device=device))


def time_method(name: str, video: VideoTokens, retention: float, repeats: int) -> tuple[float, int]:
    """Median wall time (ms) of one compression call, and the output token count."""
    compress = build_compressor(name, retention=1.0) if name == "vanilla" else build_compressor(name, retention=retention)
    cuda = video.features.is_cuda
    out = compress(video)  # warm-up
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = compress(video)
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), out.count


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="*", default=None, help="default: every registered method")
    ap.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--devices", nargs="*", default=None, help="default: cpu, plus cuda when available")
    ap.add_argument("--retention", type=float, default=0.10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args(argv)
    methods = args.methods or [m for m in list_methods() if m != "vanilla"]
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    dtype = getattr(torch, args.dtype)
    print(f"# compression latency, r={args.retention}, {args.dtype}, median of {args.repeats} "
          f"(torch {torch.__version__}, {torch.get_num_threads()} CPU threads)")
    print(f"{'device':<6} {'shape':<12} {'T x N':>10} {'method':<10} {'ms':>10} {'tokens out':>11}")
    for device in devices:
        for shape in args.shapes:
            T, H, W = SHAPES[shape]
            video = paper_video(T, H, W, device, dtype)
            for name in methods:
                ms, count = time_method(name, video, args.retention, args.repeats)
                print(f"{device:<6} {shape:<12} {f'{T}x{H * W}':>10} {name:<10} {ms:>10.1f} {count:>11}", flush=True)


if __name__ == "__main__":
    main()
