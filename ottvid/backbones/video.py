"""Frame sampling (PROTOCOL.md).

- LLaVA: decord, uniform N frames (`load_frames`).
- Qwen2.5-VL: qwen-vl-utils itself, called as the official OTT-Vid wrapper calls it
  (`read_video_qwen_vl`): it picks the frames and resizes them (per-frame token ceiling included).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Frames:
    """Decoded frames with their source indices and times.

    `pixels` is what the processor receives: (T, H, W, 3) uint8 (LLaVA) or qwen-vl-utils' resized
    (T, 3, H, W) float tensor (Qwen2.5-VL). `images()` gives (T, H, W, 3) uint8 for display.
    """

    pixels: Any
    indices: list[int]
    timestamps: list[float]
    native_fps: float
    total_frames: int
    element: dict | None = None                  # the qwen-vl-utils video element that produced them
    decoded_indices: list[int] | None = None     # frames qwen-vl-utils decoded, before any subsampling
    subsample_positions: list[int] | None = None  # positions kept from `decoded_indices` (VTG cap)

    @property
    def duration(self) -> float:
        return self.total_frames / self.native_fps if self.native_fps > 0 else float(len(self.indices))

    @property
    def sampled_fps(self) -> float:
        """Frames fed per second of video (what transformers' `VideoMetadata.sampled_fps` computes)."""
        return len(self.indices) / self.total_frames * self.native_fps

    @property
    def resized_hw(self) -> tuple[int, int]:
        """(H, W) of the frames the processor receives."""
        shape = tuple(self.pixels.shape)
        return (shape[2], shape[3]) if hasattr(self.pixels, "detach") else (shape[1], shape[2])

    def images(self) -> np.ndarray:
        """(T, H, W, 3) uint8 frames."""
        x = self.pixels
        if hasattr(x, "detach"):
            x = x.detach().cpu().numpy()
        x = np.asarray(x)
        if x.shape[-1] != 3:
            x = x.transpose(0, 2, 3, 1)
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)


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


def vqa_nframes(total: int, max_frames: int) -> int:
    """Frames the official Qwen2.5-VL wrapper asks qwen-vl-utils for (VQA): even, at least 2."""
    return max(2, min(max_frames, total) // 2 * 2)


def subsample_positions(n: int, cap: int) -> list[int]:
    """The official wrapper's VTG cap: `linspace(0, n-1, cap)` (int), unique, last frame kept; all if n <= cap."""
    if n <= cap:
        return list(range(n))
    idx = np.unique(np.linspace(0, n - 1, cap, dtype=int))
    if n - 1 not in idx:
        idx = np.unique(np.append(idx, n - 1))
    return idx.tolist()


def read_video_qwen_vl(path: str, *, min_pixels: int, max_pixels: int, max_frames: int = 32,
                       fps: float | None = None, vtg_max_frames: int = 768) -> Frames:
    """Frames as the official OTT-Vid Qwen2.5-VL wrapper gets them from qwen-vl-utils.

    VQA (`fps=None`): `nframes = vqa_nframes(total, max_frames)` uniform frames (qwen-vl-utils rounds
    `linspace`). VTG (`fps` given): qwen-vl-utils samples at `fps` (its own 4..768-frame bounds), then
    the wrapper's cap `subsample_positions(n, vtg_max_frames)`. The resize (bicubic, antialiased) and
    its bounds are qwen-vl-utils' own: `min_pixels`/`max_pixels` of the element, its per-frame ceiling
    of 768 tokens and its total-pixel budget. The official runs decoded with decord; another
    qwen-vl-utils reader backend is refused.
    """
    import decord
    from qwen_vl_utils import process_vision_info

    if not Path(path).is_file():
        raise FileNotFoundError(f"video: {path} does not exist")
    ele: dict[str, Any] = {"type": "video", "video": str(path), "max_pixels": int(max_pixels),
                           "min_pixels": int(min_pixels)}
    if fps is None:
        total = len(decord.VideoReader(str(path)))
        ele["nframes"] = vqa_nframes(total, int(max_frames))
    elif float(fps) != 2.0:   # 2 fps is qwen-vl-utils' default: the official VTG runs pass no fps
        ele["fps"] = float(fps)
    _, videos = process_vision_info([{"role": "user", "content": [ele]}], return_video_metadata=True)
    video, meta = videos[0]
    if meta.get("video_backend") != "decord":
        raise RuntimeError(f"video: qwen-vl-utils read {path} with {meta.get('video_backend')!r}; the official "
                           "runs used decord (set FORCE_QWENVL_VIDEO_READER=decord or uninstall torchcodec)")
    decoded = [int(i) for i in meta["frames_indices"]]
    keep = subsample_positions(len(decoded), int(vtg_max_frames)) if fps is not None else list(range(len(decoded)))
    if len(keep) < len(decoded):
        video = video[keep]
    native = float(meta["fps"])
    idx = [decoded[i] for i in keep]
    return Frames(pixels=video, indices=idx, timestamps=[i / native for i in idx], native_fps=native,
                  total_frames=int(meta["total_num_frames"]), element=ele, decoded_indices=decoded,
                  subsample_positions=keep if len(keep) < len(decoded) else None)
