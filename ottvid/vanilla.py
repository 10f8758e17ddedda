"""`vanilla`: no compression; every token keeps its own (t, h, w) slot."""
from __future__ import annotations

from dataclasses import dataclass

from .contract import CompressedTokens, VideoTokens
from .registry import Compressor, check_retention, register


@register("vanilla")
class Vanilla(Compressor):
    @dataclass
    class Params:
        retention: float = 1.0

        def __post_init__(self) -> None:
            self.retention = check_retention(self.retention)
            if self.retention != 1.0:
                raise ValueError(f"retention: vanilla keeps every token, so retention must be 1.0, got {self.retention}")

    def compress(self, video: VideoTokens) -> CompressedTokens:
        T, N, D = video.features.shape
        return CompressedTokens(
            features=video.features.reshape(T * N, D),
            positions=video.grid_positions().reshape(T * N, 3),
            stats={"tokens_in": T * N, "tokens_out": T * N},
        )
