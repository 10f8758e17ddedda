"""Frame sampling with decord (PROTOCOL.md): uniform N frames for VQA, fixed fps for VTG."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Frames:
    """Decoded frames (T, H, W, 3) uint8 with their source indices and times."""

    pixels: np.ndarray
    indices: list[int]
    timestamps: list[float]
    native_fps: float
    total_frames: int

    @property
    def duration(self) -> float:
        return self.total_frames / self.native_fps if self.native_fps > 0 else float(len(self.indices))


def uniform_indices(total: int, n: int) -> list[int]:
    """`np.linspace(0, total-1, n)` truncated to int, as lmms-eval's Qwen2.5-VL / LLaVA loaders sample."""
    if total <= 0:
        raise ValueError("video: no frames")
    return np.linspace(0, total - 1, n, dtype=int).tolist()


def fps_indices(total: int, native_fps: float, fps: float, max_frames: int, multiple: int = 1) -> list[int]:
    """Frames at `fps` (time k/fps -> nearest earlier frame), uniformly subsampled to <= max_frames,
    count rounded down to a multiple of `multiple` (Qwen pairs frames) but at least `multiple`."""
    duration = total / native_fps
    n = max(1, int(np.floor(duration * fps)))
    idx = np.minimum((np.arange(n) / fps * native_fps).astype(int), total - 1)
    if len(idx) > max_frames:
        idx = idx[np.linspace(0, len(idx) - 1, max_frames, dtype=int)]
    keep = max(multiple, len(idx) - len(idx) % multiple)
    if len(idx) < keep:  # too short: repeat the last frame
        idx = np.concatenate([idx, np.full(keep - len(idx), idx[-1])])
    return idx[:keep].tolist()


def load_frames(path: str, num_frames: int | None = None, fps: float | None = None, max_frames: int = 768,
                multiple: int = 1) -> Frames:
    """Decode `num_frames` uniform frames, or frames at `fps` (VTG), with decord."""
    from decord import VideoReader, cpu

    vr = VideoReader(str(path), ctx=cpu(0), num_threads=1)
    total, native = len(vr), float(vr.get_avg_fps())
    if fps is not None:
        idx = fps_indices(total, native, fps, max_frames, multiple)
    elif num_frames is not None:
        idx = uniform_indices(total, num_frames)
    else:
        raise ValueError("num_frames or fps must be given")
    pixels = vr.get_batch(idx).asnumpy()
    return Frames(pixels=pixels, indices=idx, timestamps=[i / native for i in idx], native_fps=native,
                  total_frames=total)
