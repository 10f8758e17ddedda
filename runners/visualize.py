"""Retained-token visualisation for any method (as the paper's Figure 4).

Decodes the frames the backbone adapter samples, runs the adapter's vision encoder and the method's
compressor exactly as in evaluation, and draws every (temporal step's first) frame with the patches
of kept tokens at full brightness and the others dimmed. A merged token lights its anchor slot (the
(t, h, w) position it takes in the LLM). The LLM grid covers the whole frame (the processors resize,
they do not crop), so grid cell (h, w) maps onto the frame proportionally. On Qwen2.5-VL one token
spans two frames (temporal patch 2): the first frame of each step is drawn.

    python -m runners.visualize --video PATH --backbone tiny_qwen2_5_vl --method ottvid --retention 0.1 --out fig.png
    python -m runners.visualize --video PATH --backbone qwen2_5_vl --pretrained Qwen/Qwen2.5-VL-7B-Instruct \\
        --method ottvid --retention 0.1 --set tau_m=inf --out uniform_mass.png
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ottvid.contract import CompressedTokens

BACKBONES = ("qwen2_5_vl", "llava_onevision", "llava_video")


def retained_mask(out: CompressedTokens, num_steps: int, grid_hw: tuple[int, int]) -> np.ndarray:
    """(T, H, W) bool: True at the slot of every output token (a merged token's anchor)."""
    H, W = grid_hw
    mask = np.zeros((num_steps, H, W), dtype=bool)
    p = out.positions.detach().cpu().long().numpy()
    if p.size:
        mask[p[:, 0], p[:, 1], p[:, 2]] = True
    return mask


def shade(frame: np.ndarray, keep: np.ndarray, dim: float = 0.25, grid: bool = True) -> np.ndarray:
    """An (h, w, 3) uint8 frame with the cells of `keep` (H, W) kept bright and the rest dimmed."""
    h, w = frame.shape[:2]
    H, W = keep.shape
    rows = np.minimum((np.arange(h) * H) // h, H - 1)
    cols = np.minimum((np.arange(w) * W) // w, W - 1)
    cell = keep[rows[:, None], cols[None, :]]                                  # (h, w) per-pixel
    img = frame.astype(np.float32) * np.where(cell, 1.0, dim)[..., None]
    if grid:  # faint cell borders
        ry = np.nonzero(np.diff(rows))[0] + 1
        cx = np.nonzero(np.diff(cols))[0] + 1
        img[ry, :, :] = img[ry, :, :] * 0.6 + 255 * 0.4 * 0.3
        img[:, cx, :] = img[:, cx, :] * 0.6 + 255 * 0.4 * 0.3
    return np.clip(img, 0, 255).astype(np.uint8)


def draw_grid(frames: list[np.ndarray], mask: np.ndarray, labels: list[str], title: str, out: str | Path,
              ncols: int = 8, dim: float = 0.25) -> Path:
    """One PNG: a panel per frame, kept patches bright, dropped ones dimmed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T = len(frames)
    ncols = max(1, min(ncols, T))
    nrows = math.ceil(T / ncols)
    h, w = frames[0].shape[:2]
    pw = 2.2
    fig, axes = plt.subplots(nrows, ncols, figsize=(pw * ncols, pw * nrows * h / w + 0.5 + 0.25 * nrows),
                             squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k < T:
            ax.imshow(shade(frames[k], mask[k], dim))
            ax.set_title(labels[k], fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out


def load_adapter(backbone: str, method: str, hparams: dict[str, Any], pretrained: str | None = None,
                 cache_dir: str = "cache", device: str | None = None, dtype: str | None = None):
    """An adapter for `backbone` (`tiny_<family>` builds the offline tiny model, else a family + checkpoint)."""
    from ottvid.backbones import load_backbone

    if backbone.startswith("tiny_"):
        from ottvid.backbones.tiny import build_tiny

        family = backbone[len("tiny_"):]
        pretrained = str(build_tiny(family, cache_dir))
    else:
        family = backbone
        if not pretrained:
            raise ValueError(f"pretrained: a checkpoint is required for backbone {backbone!r} "
                             f"(or use tiny_{backbone})")
    if family not in BACKBONES:
        raise ValueError(f"backbone: must be one of {list(BACKBONES)} or tiny_<family>, got {backbone!r}")
    return load_backbone(family, pretrained, method=method, device=device, dtype=dtype, **hparams)


@torch.no_grad()
def visualize(adapter, video_path: str, out: str | Path, question: str = "Describe the video.",
              ncols: int = 8, dim: float = 0.25) -> tuple[Path, dict]:
    """Encode + compress one video with the adapter's method and draw the retained tokens."""
    frames = adapter.load(video_path)
    inputs = adapter.build_inputs(frames, question)
    video = adapter.encode(inputs, frames)
    comp = adapter.compress(video)
    T = video.num_frames
    per_step = max(1, len(frames.indices) // T)        # frames per temporal step (2 on Qwen2.5-VL)
    mask = retained_mask(comp, T, video.grid_hw)
    images = frames.images()                           # (n, h, w, 3) uint8, as fed to the processor
    shown = [images[min(t * per_step, len(images) - 1)] for t in range(T)]
    N = video.tokens_per_frame
    labels = []
    for t in range(T):
        f0 = frames.indices[min(t * per_step, len(frames.indices) - 1)]
        step = frames.indices[t * per_step:(t + 1) * per_step] or [f0]
        span = f"frames {','.join(str(i) for i in step)}" if len(step) > 1 else f"frame {f0}"
        labels.append(f"t={t} ({span}): {int(mask[t].sum())}/{N}")
    hp = ", ".join(f"{k}={v}" for k, v in sorted(adapter.hparams.items()))
    title = (f"{adapter.family} / {adapter.method}" + (f" ({hp})" if hp else "") +
             f": {comp.count}/{T * N} tokens kept (bright = kept or merged-into slot)")
    png = draw_grid(shown, mask, labels, title, out, ncols=ncols, dim=dim)
    info = {"tokens_in": T * N, "tokens_out": int(comp.count), "kept_slots": int(mask.sum()),
            "grid_thw": [T, *video.grid_hw], "frames": list(frames.indices), "stats": comp.stats}
    return png, info


def main(argv: list[str] | None = None) -> int:
    from runners.lmms_models import parse_value

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", required=True)
    ap.add_argument("--backbone", required=True, help="tiny_qwen2_5_vl | tiny_llava_onevision | tiny_llava_video | "
                                                      "qwen2_5_vl | llava_onevision | llava_video")
    ap.add_argument("--pretrained", default=None, help="checkpoint for a real backbone")
    ap.add_argument("--method", default="ottvid")
    ap.add_argument("--retention", type=float, default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="method hyperparameter")
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache_dir", default="cache")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--ncols", type=int, default=8)
    a = ap.parse_args(argv)
    hp: dict[str, Any] = {}
    if a.retention is not None:
        hp["retention"] = a.retention
    for kv in a.set:
        if "=" not in kv:
            ap.error(f"--set: expected KEY=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        hp[k.strip()] = parse_value(v)
    try:
        ad = load_adapter(a.backbone, a.method, hp, a.pretrained, a.cache_dir, a.device, a.dtype)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}")
        return 2
    png, info = visualize(ad, a.video, a.out, ncols=a.ncols)
    print(f"wrote {png}: {info['tokens_out']}/{info['tokens_in']} tokens, grid {info['grid_thw']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
