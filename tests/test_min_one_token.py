"""No method returns an empty video (issue 10): at least one visual token, whatever N, T and r."""
import itertools
import warnings

import pytest
import torch

from ottvid import VideoTokens, build_compressor, list_methods

SHAPES = list(itertools.product([1, 2, 3, 8], [(1, 1), (1, 2), (2, 2), (2, 3), (3, 4)], [0.01, 0.1, 0.25]))


def tiny_video(T: int, H: int, W: int, seed: int) -> VideoTokens:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, H * W, 8, generator=g)
    return VideoTokens(features=x, grid_hw=(H, W), saliency=torch.softmax(torch.randn(T, H * W, generator=g), -1),
                       encoder_features=torch.randn(T, H * W, 4, generator=g), frame_features=x.mean(1))


VARIANTS = [(m, {}) for m in list_methods() if m != "vanilla"] + [
    ("fastvid", {"variant": "qwen2_5_vl"}), ("unicomp", {"auto": True}), ("unicomp", {"metric": "none"})]


@pytest.mark.parametrize("method,extra", VARIANTS, ids=lambda v: v if isinstance(v, str) else str(v))
def test_every_method_keeps_at_least_one_token(method, extra):
    for T, (H, W), r in SHAPES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = build_compressor(method, retention=r, **extra)(tiny_video(T, H, W, T * 10 + H * W))
        assert out.count >= 1, f"{method} {extra}: no token for T={T}, grid={H}x{W}, r={r}"


def test_unicomp_floor_goes_to_the_most_unique_group():
    """B = int(r T N) = 1 < G: every TA share floors to 0; the group of largest q gets the one token."""
    from baselines.unicomp import at_least_one, group_uniqueness

    v = tiny_video(4, 2, 2, 3)
    v.features[1] += 5.0  # frame 1 stands apart: the most unique group
    out = build_compressor("unicomp", retention=0.1, Uf=0.0)(v)
    assert out.count == 1 and out.stats["min_one_token"]
    q = group_uniqueness(v.features, v.frame_features)
    assert int(out.positions[0, 0]) == int(q.argmax()) == 1
    assert at_least_one([0, 2], q) == [0, 2]
