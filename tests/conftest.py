"""Shared test helpers: fixture loading and a small synthetic video generator."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ottvid import VideoTokens

FIXTURES = Path(__file__).parent / "fixtures"


def load_fixture(method: str, case: str) -> dict:
    return torch.load(FIXTURES / method / f"{case}.pt", weights_only=False)


def fixture_video(inputs: dict) -> VideoTokens:
    """VideoTokens from a fixture's stored `inputs` (never regenerated)."""
    return VideoTokens(
        features=inputs["features"], grid_hw=tuple(inputs["grid_hw"]), saliency=inputs["saliency"],
        encoder_features=inputs.get("encoder_features"), frame_features=inputs.get("frame_features"),
        timestamps=inputs.get("timestamps"),
    )


def none_to_inf(v):
    return math.inf if v is None else v


def synthetic_video(T: int, H: int, W: int, D: int, seed: int = 0, dtype=torch.float32,
                    static: bool = False) -> VideoTokens:
    """Drifting tokens with a scene cut half-way (or identical frames when static)."""
    g = torch.Generator().manual_seed(seed)
    N = H * W
    base = torch.randn(1, N, D, generator=g)
    if static:
        x = base.expand(T, N, D).clone()
    else:
        drift = torch.cumsum(0.3 * torch.randn(T, N, D, generator=g), 0)
        cut = torch.zeros(T, 1, 1)
        cut[T // 2:] = 1.0
        x = base + drift + cut * 2 * torch.randn(1, N, D, generator=g)
    s = torch.rand(1 if static else T, N, generator=g).expand(T, N) ** 3 + 1e-6
    s = s / s.sum(-1, keepdim=True)
    enc = torch.randn(T, N, max(4, D // 2), generator=g)
    return VideoTokens(features=x.to(dtype), grid_hw=(H, W), saliency=s, encoder_features=enc,
                       frame_features=x.float().mean(1), timestamps=torch.arange(T, dtype=torch.float32))


@pytest.fixture
def make_video():
    return synthetic_video
