"""UniComp: equivalence with the official outputs, stage unit tests, properties."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ottvid.registry as registry
from baselines.unicomp import (UniComp, frame_groups, fuse_groups, reconcile_budget, redundancy_cover,
                               token_allocation)
from ottvid import VideoTokens

FIX = Path(__file__).parent / "fixtures" / "unicomp"
CASES = sorted(p.stem for p in FIX.glob("uc_*.pt"))


@pytest.fixture
def build():
    return lambda **kw: registry.build_compressor("unicomp", **kw)


def _video(features, enc=None, frame=None, grid=None):
    T, N, _ = features.shape
    grid = grid or (1, N)
    sal = torch.full((T, N), 1.0 / N, dtype=features.dtype)
    return VideoTokens(features=features, grid_hw=grid, saliency=sal, encoder_features=enc, frame_features=frame)


def _load(case):
    return torch.load(FIX / f"{case}.pt", weights_only=False)


# ---------------------------------------------------------------- fixtures -----

@pytest.mark.parametrize("case", CASES)
def test_matches_official(case, build):
    d = _load(case)
    i, p, o, aux = d["inputs"], d["params"], d["output"], d["aux"]
    enc = i["encoder_features"] if p["metric"] == "encoder_features" else None
    video = VideoTokens(features=i["features"], grid_hw=i["grid_hw"], saliency=i["saliency"],
                        encoder_features=enc, timestamps=i["timestamps"])
    torch.manual_seed(0)
    out = build(retention=p["retention"])(video)  # defaults: Uf 0.005, Uc 0.2
    assert out.count == o["count"]
    assert torch.equal(out.positions, o["positions"])
    torch.testing.assert_close(out.features, o["features"], atol=1e-4, rtol=0)
    s = out.stats
    assert s["group_start"] == aux["group_start"].tolist()
    assert s["group_size"] == aux["group_size"].tolist()
    assert s["min_interval"] == p["min_interval"] and s["budget"] == p["max_tokens"]
    assert s["tokens_per_frame"] == aux["tokens_per_frame"].tolist()
    assert s["sdc_candidates"] == aux["sdc_candidates"].tolist()
    assert s["per_group_count"] == aux["per_frame_count"].tolist()
    H, W = i["grid_hw"]
    flat = out.positions[:, 1] * W + out.positions[:, 2]
    assert torch.equal(flat, aux["source_index"])


@pytest.mark.parametrize("case", CASES)
def test_metric_none_equals_missing_keys(case):
    """metric='none' ignores encoder_features; it equals a video without them (the fallback)."""
    i = _load(case)["inputs"]
    with_keys = VideoTokens(features=i["features"], grid_hw=i["grid_hw"], saliency=i["saliency"],
                            encoder_features=i["encoder_features"])
    without = VideoTokens(features=i["features"], grid_hw=i["grid_hw"], saliency=i["saliency"])
    a = UniComp(UniComp.Params(retention=0.15, metric="none"))(with_keys)
    b = UniComp(UniComp.Params(retention=0.15))(without)
    c = UniComp(UniComp.Params(retention=0.15))(with_keys)
    assert torch.equal(a.features, b.features) and torch.equal(a.positions, b.positions)
    assert b.stats["metric"] == "features" and c.stats["metric"] == "encoder_features"
    assert not (c.count == a.count and torch.equal(c.positions, a.positions))


@pytest.mark.parametrize("case", CASES)
def test_merged_token_is_half_self_half_neighbourhood_mean(case):
    """Output = mix_weights @ fused frame, rows: 1/2 + 1/(2|A_i|) on self, 1/(2|A_i|) on neighbours."""
    d = _load(case)
    i, aux = d["inputs"], d["aux"]
    fused, _ = fuse_groups(i["features"], aux["group_size"].tolist())
    rows = torch.cat([w @ fused[g] for g, w in enumerate(aux["mix_weights"])])
    torch.testing.assert_close(rows, d["output"]["features"], atol=1e-4, rtol=0)
    for w in aux["mix_weights"]:
        nz = w > 0
        self_w = w.max(-1).values
        torch.testing.assert_close(self_w, 0.5 + 0.5 / nz.sum(-1), atol=1e-6, rtol=0)


# ---------------------------------------------------------------- FGF ----------

def test_fgf_group_cap_is_min_interval_plus_one():
    x = torch.randn(1, 6, 8).expand(11, 6, 8).contiguous()  # identical frames always fuse
    assert frame_groups(x, 0.005, int(1 / 0.25)) == [5, 5, 1]
    assert frame_groups(x, 0.005, 0) == [1] * 11
    out = UniComp(UniComp.Params(retention=0.25))(_video(x, grid=(2, 3)))
    assert out.stats["group_start"] == [0, 5, 10] and out.stats["group_size"] == [5, 5, 1]


def test_fgf_compares_with_the_anchor_not_the_previous_frame():
    """Slow drift: every adjacent pair is within Uf, but the anchor distance grows past it."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, generator=g), torch.randn(16, generator=g)
    angles = torch.arange(8) * 0.05  # 1 - cos(0.05) ~ 0.00125 per step
    base = torch.stack([torch.cos(t) * a + torch.sin(t) * (b - (b @ a) / (a @ a) * a) for t in angles])
    x = base[:, None, :].repeat(1, 4, 1)
    v = torch.nn.functional.normalize(x.mean(1), dim=-1)
    adj = 1 - (v[1:] * v[:-1]).sum(-1)
    assert bool((adj <= 0.005).all())
    sizes = frame_groups(x, 0.005, 100)
    assert len(sizes) > 1 and sizes[0] < 8


def test_fgf_fused_frame_is_plain_mean_and_keeps_dtype():
    x = torch.randn(5, 4, 8, dtype=torch.bfloat16)
    fused, anchors = fuse_groups(x, [2, 3])
    assert fused.dtype == torch.bfloat16 and anchors.tolist() == [0, 2]
    torch.testing.assert_close(fused, torch.stack([x[:2].float().mean(0), x[2:].float().mean(0)]).bfloat16())


# ---------------------------------------------------------------- TA -----------

def test_ta_fallback_is_channel_mean():
    fused = torch.randn(6, 10, 12)
    t_none, cap = token_allocation(fused, 20, 10)
    t_chan, _ = token_allocation(fused, 20, 10, global_feature=fused.mean(-1))
    assert t_none == t_chan and cap == min(10, 2 * (20 // 6))
    assert sum(t_none) <= 20 and max(t_none) <= cap


def test_ta_uses_frame_features_when_provided():
    torch.manual_seed(1)
    x = torch.randn(6, 9, 16)
    ff = torch.randn(6, 32)
    ff[0] *= 0  # not used by the fallback, so the allocations differ
    ff[1:3] = ff[3]
    with_ff = UniComp(UniComp.Params(retention=0.3))(_video(x, frame=ff, grid=(3, 3)))
    ignored = UniComp(UniComp.Params(retention=0.3, global_metric="none"))(_video(x, frame=ff, grid=(3, 3)))
    expect, _ = token_allocation(x, int(0.3 * 6 * 9), 9, global_feature=ff)
    assert with_ff.stats["global_metric"] == "frame_features" and with_ff.stats["tokens_per_frame"] == expect
    assert ignored.stats["global_metric"] == "channel_mean"
    assert ignored.stats["tokens_per_frame"] == token_allocation(x, int(0.3 * 6 * 9), 9)[0]


def test_ta_clipping_redistributes_only_after_a_clip():
    # One very unique frame: softmax mass above the cap is clipped and spread.
    g = torch.zeros(8, 4)
    g[:, 0] = 1
    g[0] = torch.tensor([0.0, 0.0, 0.0, 1.0])
    t, cap = token_allocation(torch.zeros(8, 3, 2), 40, 100, global_feature=g)
    assert cap == 10 and t[0] == cap and sum(t) <= 40 and max(t) <= cap
    assert sum(t) > 40 - 8  # the clipped surplus went back to the other frames
    # All frames alike: no clip, the flooring remainder is not redistributed.
    t, cap = token_allocation(torch.zeros(3, 3, 2), 10, 100, global_feature=torch.ones(3, 4))
    assert t == [3, 3, 3] and cap == 6


# ---------------------------------------------------------------- SDC ----------

def _greedy_oracle(nb, order):
    G, N = order.shape
    keep = torch.zeros(G, N, dtype=torch.bool)
    for g in range(G):
        covered = torch.zeros(N, dtype=torch.bool)
        for i in order[g].tolist():
            if not covered[i]:
                keep[g, i] = True
                covered |= nb[g, i]
    return torch.zeros_like(keep).scatter(1, order, redundancy_cover(nb, order)), keep


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 4), st.integers(1, 24), st.floats(0.05, 0.9), st.integers(0, 10_000))
def test_redundancy_cover_equals_sequential_greedy(G, N, density, seed):
    g = torch.Generator().manual_seed(seed)
    nb = torch.rand(G, N, N, generator=g) < density
    nb = nb | nb.transpose(1, 2) | torch.eye(N, dtype=torch.bool)
    order = torch.stack([torch.randperm(N, generator=g) for _ in range(G)])
    got, want = _greedy_oracle(nb, order)
    assert torch.equal(got, want)


def test_reconcile_budget_moves_short_frames_surplus_once():
    assert reconcile_budget([5, 1, 10], [4, 4, 4]) == [5, 4, 5]
    assert reconcile_budget([1, 2, 3], [4, 4, 4]) == [4, 4, 4]  # sum n <= sum t: nothing moves
    assert reconcile_budget([9, 9], [4, 4]) == [4, 4]


def test_uncompressed_branch_when_fused_frames_fit():
    x = torch.randn(1, 6, 8).expand(8, 6, 8).contiguous()
    out = UniComp(UniComp.Params(retention=0.25))(_video(x, grid=(2, 3)))
    assert out.stats["compressed"] is False and out.stats["group_size"] == [5, 3]
    assert out.count == 12
    torch.testing.assert_close(out.features, x[0].repeat(2, 1))
    assert out.positions[:, 0].tolist() == [0] * 6 + [5] * 6


def test_auto_mode_splits_budget_evenly():
    torch.manual_seed(2)
    x = torch.randn(4, 16, 8)
    out = UniComp(UniComp.Params(retention=0.5, auto=True))(_video(x, grid=(4, 4)))
    assert out.stats["min_interval"] == 1_000_000 and out.stats["tokens_per_frame"] == [8] * 4
    assert out.count <= 32


# ---------------------------------------------------------------- properties ---

@settings(max_examples=20, deadline=None)
@given(T=st.integers(1, 8), H=st.integers(1, 4), W=st.integers(1, 5), D=st.integers(8, 32),
       r=st.floats(0.01, 1.0), Uf=st.sampled_from([0.0, 0.005, 0.05, 0.5]), Uc=st.floats(0.05, 1.0),
       drift=st.floats(0.0, 1.0), keys=st.booleans(), bf16=st.booleans(), seed=st.integers(0, 1000))
def test_properties(T, H, W, D, r, Uf, Uc, drift, keys, bf16, seed):
    g = torch.Generator().manual_seed(seed)
    N = H * W
    x = torch.randn(1, N, D, generator=g) + drift * torch.randn(T, N, D, generator=g)
    dtype = torch.bfloat16 if bf16 else torch.float32
    enc = torch.randn(T, N, 6, generator=g).to(dtype) if keys else None
    video = _video(x.to(dtype), enc=enc, grid=(H, W))
    m = UniComp(UniComp.Params(retention=r, Uf=Uf, Uc=Uc))
    out = m(video)
    again = m(video)
    assert torch.equal(out.features, again.features) and torch.equal(out.positions, again.positions)
    s = out.stats
    B, G = int(r * T * N), s["groups"]
    assert s["budget"] == B and sum(s["group_size"]) == T and G == len(s["group_start"])
    assert max(s["group_size"]) <= int(1 / r) + 1
    if G * N > B:
        # at most B tokens, but never none (B = 0 or every share floored: one token, issue 10)
        assert s["compressed"] and 1 <= out.count <= max(1, B)
        assert s["per_group_count"] == [min(n, t) for n, t in zip(s["sdc_candidates"], s["sdc_budget"])]
        assert sum(s["tokens_per_frame"]) <= max(1, B) and max(s["tokens_per_frame"]) <= s["cap"]
    else:
        assert not s["compressed"] and out.count == G * N
    assert out.count == sum(s["per_group_count"]) == s["tokens_out"]
    assert out.features.dtype == dtype and bool(torch.isfinite(out.features.float()).all())
    # positions: anchor frame of the group, raster order inside each group, no duplicates
    flat = out.positions[:, 0] * N + out.positions[:, 1] * W + out.positions[:, 2]
    assert bool((flat[1:] > flat[:-1]).all())
    assert set(out.positions[:, 0].tolist()) <= set(s["group_start"])


def test_r1_and_t1():
    x = torch.randn(1, 12, 8)
    out = UniComp(UniComp.Params(retention=1.0))(_video(x, grid=(3, 4)))
    assert out.count == 12 and torch.equal(out.features, x[0])
    out = UniComp(UniComp.Params(retention=0.5))(_video(x, grid=(3, 4)))
    assert out.stats["compressed"] and 1 <= out.count <= 6


# ---------------------------------------------------------------- API ----------

def test_defaults_and_registry(build):
    m = build(retention=0.1)
    assert isinstance(m, UniComp)
    p = m.params
    assert (p.Uf, p.Uc, p.metric, p.global_metric, p.min_interval, p.auto) == (
        0.005, 0.2, "encoder_features", "frame_features", None, False)
    with pytest.raises(ValueError, match="gamma"):
        build(retention=0.1, gamma=0.3)


@pytest.mark.parametrize("kw,arg", [
    (dict(retention=0.0), "retention"), (dict(retention=1.5), "retention"), (dict(retention="a"), "retention"),
    (dict(Uf=-0.1), "Uf"), (dict(Uf=3.0), "Uf"), (dict(Uc=0.0), "Uc"), (dict(Uc=float("nan")), "Uc"),
    (dict(metric="keys"), "metric"), (dict(global_metric="cls"), "global_metric"),
    (dict(min_interval=-1), "min_interval"), (dict(min_interval=2.5), "min_interval"),
    (dict(auto="yes"), "auto"),
])
def test_bad_arguments_name_the_argument(kw, arg, build):
    with pytest.raises(ValueError, match=arg):
        build(**kw)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", CASES)
def test_matches_official_on_cuda(case):
    d = _load(case)
    i, p, o = d["inputs"], d["params"], d["output"]
    enc = i["encoder_features"].cuda() if p["metric"] == "encoder_features" else None
    video = VideoTokens(features=i["features"].cuda(), grid_hw=i["grid_hw"], saliency=i["saliency"].cuda(),
                        encoder_features=enc)
    out = UniComp(UniComp.Params(retention=p["retention"]))(video)
    assert out.features.is_cuda and out.count == o["count"]
    assert torch.equal(out.positions.cpu(), o["positions"])
    torch.testing.assert_close(out.features.cpu(), o["features"], atol=1e-4, rtol=0)
    bf = UniComp(UniComp.Params(retention=p["retention"]))(
        VideoTokens(features=video.features.bfloat16(), grid_hw=i["grid_hw"], saliency=video.saliency))
    assert bf.features.dtype == torch.bfloat16 and bool(torch.isfinite(bf.features.float()).all())


def test_sdc_neighbourhood_threshold_is_strict():
    from baselines.unicomp import spatial_dynamic_compression
    keys = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    feats = torch.tensor([[[1.0, 2.0, 3.0], [5.0, 7.0, 11.0]]])
    k = torch.nn.functional.normalize(keys, dim=-1)
    at = float((1 - k @ k.transpose(1, 2))[0, 0, 1])
    out, where, c = spatial_dynamic_compression(feats, keys, [2], at)  # 1 - cos == Uc: not neighbours
    assert c["sdc_candidates"] == [2] and torch.equal(out, feats[0])
    out, where, c = spatial_dynamic_compression(feats, keys, [2], at + 1e-3)
    assert c["sdc_candidates"] == [1]
    kept = int(where[0, 1])
    torch.testing.assert_close(out[0], 0.5 * feats[0, kept] + 0.25 * (feats[0, 0] + feats[0, 1]))
