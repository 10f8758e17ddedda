"""The compression contract: what every method receives and returns (DESIGN.md)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


def _check(cond: bool, arg: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"{arg}: {msg}")


@dataclass
class VideoTokens:
    """Post-projector visual tokens of one video, as the LLM would see them.

    features: (T, N, D) frame-major, grid row-major; saliency: (T, N), non-negative, rows sum to 1;
    encoder_features: (T, N, De) pre-projector features; frame_features: (T, Df)
    one global feature per frame; timestamps: (T,) seconds. Every tensor must be finite;
    a bad shape or value raises ValueError naming the field.
    """

    features: torch.Tensor
    grid_hw: tuple[int, int]
    saliency: torch.Tensor
    encoder_features: torch.Tensor | None = None
    frame_features: torch.Tensor | None = None
    timestamps: torch.Tensor | None = None

    def __post_init__(self) -> None:
        f = self.features
        _check(torch.is_tensor(f) and f.dim() == 3, "features", f"expected a (T, N, D) tensor, got {_shape(f)}")
        T, N, _ = f.shape
        _check(T >= 1 and N >= 1, "features", f"empty video {tuple(f.shape)}")
        _check(f.is_floating_point(), "features", f"expected a float tensor, got {f.dtype}")
        _check(len(tuple(self.grid_hw)) == 2, "grid_hw", f"expected (H, W), got {self.grid_hw!r}")
        H, W = (int(v) for v in self.grid_hw)
        self.grid_hw = (H, W)
        _check(H * W == N, "grid_hw", f"H*W = {H}*{W} = {H * W} does not match N = {N} tokens per frame")
        s = self.saliency
        _check(torch.is_tensor(s) and tuple(s.shape) == (T, N), "saliency", f"expected shape {(T, N)}, got {_shape(s)}")
        if self.encoder_features is not None:
            e = self.encoder_features
            _check(torch.is_tensor(e) and e.dim() == 3 and tuple(e.shape[:2]) == (T, N),
                   "encoder_features", f"expected shape ({T}, {N}, De), got {_shape(e)}")
        if self.frame_features is not None:
            g = self.frame_features
            _check(torch.is_tensor(g) and g.dim() == 2 and g.shape[0] == T,
                   "frame_features", f"expected shape ({T}, Df), got {_shape(g)}")
        if self.timestamps is not None:
            ts = self.timestamps
            _check(torch.is_tensor(ts) and tuple(ts.shape) == (T,), "timestamps", f"expected shape ({T},), got {_shape(ts)}")
        self._check_values()

    def _check_values(self) -> None:
        """Values every method relies on (after the shape checks): finite tensors, and saliency a
        distribution per frame (non-negative, rows summing to 1 within the dtype's rounding)."""
        for name in ("features", "saliency", "encoder_features", "frame_features", "timestamps"):
            x = getattr(self, name)
            if x is not None and x.is_floating_point() and not bool(torch.isfinite(x.detach()).all()):
                raise ValueError(f"{name}: {int((~torch.isfinite(x.detach())).sum())} non-finite value(s) (NaN or inf)")
        s = self.saliency.detach()
        _check(s.is_floating_point(), "saliency", f"expected a float tensor, got {s.dtype}")
        if not bool((s >= 0).all()):
            raise ValueError(f"saliency: negative values (min {float(s.min()):.3g}); expected a distribution over "
                             "the N tokens of each frame")
        err = (s.float().sum(-1) - 1).abs()
        tol = max(1e-3, 4 * torch.finfo(s.dtype).eps)
        if not bool((err <= tol).all()):
            worst = int(err.argmax())
            raise ValueError(f"saliency: rows must sum to 1 (within {tol:.1e}); frame {worst} sums to "
                             f"{float(s[worst].float().sum()):.6g}")

    @property
    def num_frames(self) -> int:
        return self.features.shape[0]

    @property
    def tokens_per_frame(self) -> int:
        return self.features.shape[1]

    def grid_positions(self) -> torch.Tensor:
        """(T, N, 3) int64 (t, h, w) of every input slot."""
        T, N = self.features.shape[:2]
        H, W = self.grid_hw
        dev = self.features.device
        t = torch.arange(T, device=dev).view(T, 1).expand(T, N)
        n = torch.arange(N, device=dev).view(1, N).expand(T, N)
        return torch.stack([t, n // W, n % W], dim=-1)


@dataclass
class CompressedTokens:
    """Tokens entering the LLM, in order, each with the (t, h, w) slot whose position it takes."""

    features: torch.Tensor
    positions: torch.Tensor
    stats: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(self.features.dim() == 2, "features", f"expected (M, D), got {_shape(self.features)}")
        _check(tuple(self.positions.shape) == (self.features.shape[0], 3), "positions",
               f"expected ({self.features.shape[0]}, 3), got {_shape(self.positions)}")
        self.positions = self.positions.to(torch.int64)

    @property
    def count(self) -> int:
        return self.features.shape[0]

    def flat_index(self, grid_hw: tuple[int, int]) -> torch.Tensor:
        """(M,) global slot index t*N + h*W + w of each token."""
        H, W = grid_hw
        p = self.positions
        return p[:, 0] * (H * W) + p[:, 1] * W + p[:, 2]


def _shape(x: Any) -> str:
    return str(tuple(x.shape)) if torch.is_tensor(x) else type(x).__name__
