"""Property tests of OTT-Vid over random shapes, ratios and hyperparameters."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import synthetic_video
from ottvid import VideoTokens, build_compressor

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def expected_count(T, N, r, gamma):
    """Documented target: M = T*K - min(B_tot, (T-1)(K-1)), B_tot = max(0, T*K - round(r*T*N))."""
    r_s = r ** (1 - gamma)
    K = N if r_s >= 1 else min(N, max(1, int(N * r_s)))
    B_tot = max(0, T * K - round(r * T * N))
    if T < 2:
        return T * K
    return T * K - min(B_tot, (T - 1) * (K - 1))


@SETTINGS
@given(T=st.integers(1, 6), H=st.integers(1, 6), W=st.integers(1, 6), D=st.integers(2, 12),
       r=st.floats(0.01, 1.0), gamma=st.sampled_from([0.0, 0.3, 0.6, 1.0]),
       tau_m=st.sampled_from([0.1, 0.3, math.inf]), tau_b=st.sampled_from([0.1, 0.3, math.inf]),
       tau_c=st.sampled_from([0.0, 0.3, math.inf]), alpha=st.sampled_from(["position", "kernel", "global", 0.5, 1.0]),
       spatial=st.sampled_from(["coverage", "topk", "divprune", "scope", "adts"]), seed=st.integers(0, 1000))
def test_count_budgets_and_positions(T, H, W, D, r, gamma, tau_m, tau_b, tau_c, alpha, spatial, seed):
    v = synthetic_video(T, H, W, D, seed=seed)
    out = build_compressor("ottvid", retention=r, gamma=gamma, tau_m=tau_m, tau_b=tau_b, tau_c=tau_c,
                           alpha=alpha, spatial=spatial)(v)
    N = H * W
    assert out.count == expected_count(T, N, r, gamma)
    s = out.stats
    if s["B_t"]:
        assert sum(s["B_t"]) == min(s["B_tot"], (T - 1) * (s["K"] - 1))
        assert max(s["B_t"]) <= s["K"] - 1
    pos = out.positions
    assert pos.dtype == torch.int64
    assert ((pos[:, 0] >= 0) & (pos[:, 0] < T) & (pos[:, 1] < H) & (pos[:, 2] < W)).all()
    flat = out.flat_index((H, W))
    assert torch.equal(flat, flat.unique())  # distinct slots, raster order
    assert torch.isfinite(out.features).all()


@SETTINGS
@given(T=st.integers(2, 5), H=st.integers(2, 5), W=st.integers(2, 5), r=st.floats(0.05, 0.9), seed=st.integers(0, 99))
def test_bf16_finite_and_close_in_count(T, H, W, r, seed):
    v = synthetic_video(T, H, W, 8, seed=seed, dtype=torch.bfloat16)
    out = build_compressor("ottvid", retention=r)(v)
    assert out.features.dtype == torch.bfloat16
    assert torch.isfinite(out.features.float()).all()
    assert out.count == expected_count(T, H * W, r, 0.3)


def test_deterministic():
    v = synthetic_video(6, 5, 5, 16, seed=3)
    c = build_compressor("ottvid", retention=0.2)
    a, b = c(v), c(v)
    assert torch.equal(a.positions, b.positions) and torch.equal(a.features, b.features)


def test_single_frame_and_single_token():
    out = build_compressor("ottvid", retention=0.3)(synthetic_video(1, 4, 4, 8))
    assert out.count == 6 and out.stats["W_t"] == []  # T = 1: spatial stage only, K = int(16 * 0.3**0.7)
    out = build_compressor("ottvid", retention=0.05, gamma=0.0)(synthetic_video(5, 3, 3, 8))  # K = 1
    assert out.count == 5 and torch.equal(out.positions[:, 0], torch.arange(5))


def test_identical_frames_merge_cleanly():
    v = synthetic_video(8, 6, 6, 16, static=True)
    out = build_compressor("ottvid", retention=0.1)(v)
    assert out.count == round(0.1 * 8 * 36)
    assert out.stats["n_pruned"] == 0  # identical frames: every match is cheap
    assert all(a == pytest.approx(0.5) for a in out.stats["alpha_t"])


def test_retention_one_is_vanilla():
    v = synthetic_video(4, 3, 5, 8)
    out = build_compressor("ottvid", retention=1.0)(v)
    ref = build_compressor("vanilla")(v)
    assert torch.equal(out.positions, ref.positions) and torch.equal(out.features, ref.features)


def test_switches_are_aliases_of_infinite_temperatures():
    v = synthetic_video(6, 5, 5, 16, seed=9)
    a = build_compressor("ottvid", retention=0.15, mass="uniform", budget="uniform")(v)
    b = build_compressor("ottvid", retention=0.15, tau_m=math.inf, tau_b=math.inf)(v)
    assert torch.equal(a.features, b.features) and torch.equal(a.positions, b.positions)


@pytest.mark.parametrize("kwargs,arg", [
    (dict(retention=0.0), "retention"), (dict(retention=1.5), "retention"), (dict(retention="x"), "retention"),
    (dict(gamma=-0.1), "gamma"), (dict(gamma=1.2), "gamma"), (dict(tau_m=0), "tau_m"), (dict(tau_b=-1), "tau_b"),
    (dict(tau_c=float("nan")), "tau_c"), (dict(sinkhorn_eps=0), "sinkhorn_eps"), (dict(sinkhorn_iters=0), "sinkhorn_iters"),
    (dict(mass="lo"), "mass"), (dict(budget="x"), "budget"), (dict(alpha="conv"), "alpha"), (dict(alpha=2.0), "alpha"),
    (dict(spatial="random"), "spatial"), (dict(tau_x=1), "tau_x"),
])
def test_bad_arguments_name_the_argument(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        build_compressor("ottvid", **kwargs)


def test_unknown_method_lists_choices():
    with pytest.raises(ValueError, match="unknown method 'ottvd'.*ottvid"):
        build_compressor("ottvd")


@pytest.mark.parametrize("kwargs,arg", [
    (dict(features=torch.randn(2, 6)), "features"),
    (dict(grid_hw=(2, 2)), "grid_hw"),
    (dict(saliency=torch.rand(2, 5)), "saliency"),
    (dict(encoder_features=torch.randn(2, 5, 3)), "encoder_features"),
    (dict(frame_features=torch.randn(3, 4)), "frame_features"),
    (dict(timestamps=torch.arange(3.0)), "timestamps"),
])
def test_video_tokens_validate_shapes(kwargs, arg):
    base = dict(features=torch.randn(2, 6, 4), grid_hw=(2, 3), saliency=torch.rand(2, 6))
    with pytest.raises(ValueError, match=arg):
        VideoTokens(**{**base, **kwargs})


def test_tau_c_inf_merges_every_match_and_zero_prunes_every_match():
    """tau_c = inf is the official `None` (no threshold); tau_c = 0 prunes every costly match."""
    v = synthetic_video(8, 6, 6, 16, seed=4)
    merged = build_compressor("ottvid", retention=0.1, tau_c=math.inf)(v).stats
    assert merged["n_pruned"] == 0 and merged["n_merged"] == sum(merged["B_t"])
    pruned = build_compressor("ottvid", retention=0.1, tau_c=0.0)(v)
    assert pruned.stats["n_merged"] + pruned.stats["n_pruned"] == sum(pruned.stats["B_t"])
    assert pruned.count == round(0.1 * 8 * 36)  # pruning never changes the count
