"""Compression inputs are validated before any method runs: a bad value names its field."""
import math

import pytest
import torch

from ottvid import VideoTokens, build_compressor


def _video(**kw):
    T, N = 3, 6
    base = dict(features=torch.randn(T, N, 4), grid_hw=(2, 3), saliency=torch.full((T, N), 1 / N),
                encoder_features=torch.randn(T, N, 2), frame_features=torch.randn(T, 5),
                timestamps=torch.arange(T, dtype=torch.float32))
    return VideoTokens(**{**base, **kw})


def _with(name, idx, value):
    x = _video().__dict__[name].clone()
    x[idx] = value
    return x


@pytest.mark.parametrize("field", ["features", "saliency", "encoder_features", "frame_features", "timestamps"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=rf"^{field}: .*non-finite"):
        _video(**{field: _with(field, 0, value)})


def test_negative_saliency_is_rejected():
    s = torch.full((3, 6), 1 / 6)
    s[1, 0], s[1, 1] = -0.1, 1 / 6 + 0.1  # rows still sum to 1
    with pytest.raises(ValueError, match=r"^saliency: negative"):
        _video(saliency=s)


@pytest.mark.parametrize("scale", [6.0, 0.5, 1.01])
def test_saliency_rows_must_sum_to_one(scale):
    s = torch.full((3, 6), 1 / 6)
    s[2] *= scale
    with pytest.raises(ValueError, match=r"^saliency: rows must sum to 1.*frame 2"):
        _video(saliency=s)


def test_rounding_of_a_normalized_saliency_is_accepted():
    s = torch.softmax(torch.randn(4, 729), -1)
    _video(features=torch.randn(4, 729, 4), grid_hw=(27, 27), saliency=s, encoder_features=None,
           frame_features=None, timestamps=None)
    for dt in (torch.bfloat16, torch.float16):
        _video(features=torch.randn(4, 729, 4).to(dt), grid_hw=(27, 27), saliency=s.to(dt), encoder_features=None,
               frame_features=None, timestamps=None)


def test_the_check_runs_before_any_method():
    s = torch.full((3, 6), 1 / 6)
    s[0, 0] = math.nan
    compress = build_compressor("ottvid", retention=0.5)
    with pytest.raises(ValueError, match="saliency"):
        compress(_video(saliency=s))
