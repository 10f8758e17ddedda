"""FlashVID (outer-LLM stage): official fixtures, stage unit tests, properties, validation."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from baselines.flashvid import (FlashVID, adts_select, dpc_knn, dyseg, frame_budget,
                                tstm_aggregate, tstm_merge_mask, tstm_parents)
from ottvid.contract import VideoTokens

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "flashvid").glob("fl_*.pt"))


def build(**kw) -> FlashVID:
    return FlashVID(FlashVID.Params(**kw))


def load(path: Path):
    d = torch.load(path, weights_only=False)
    i = d["inputs"]
    return d, VideoTokens(features=i["features"], grid_hw=i["grid_hw"], saliency=i["saliency"])


def run_seeded(comp, video, seed=0):
    torch.manual_seed(seed)
    return comp(video)


def synthetic(T, H, W, D, seed, motion=0.2, cut_p=0.2, dtype=torch.float32):
    """Temporally correlated tokens with occasional shot changes, positive saliency."""
    g = torch.Generator().manual_seed(seed)
    N = H * W
    base = torch.randn(N, D, generator=g)
    frames = []
    for _ in range(T):
        if torch.rand(1, generator=g).item() < cut_p:
            base = torch.randn(N, D, generator=g)
        base = base + motion * torch.randn(N, D, generator=g)
        frames.append(base.clone())
    sal = torch.rand(T, N, generator=g) ** 3 + 1e-3
    sal = sal / sal.sum(1, keepdim=True)
    return VideoTokens(features=torch.stack(frames).to(dtype), grid_hw=(H, W), saliency=sal.to(dtype))


# --------------------------------------------------------------------------- fixtures

@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_matches_official_fixture(path):
    d, video = load(path)
    P, ref = d["params"], d["output"]
    comp = build(retention=P["retention"], token_selection_method=P["token_selection_method"],
                 alpha=P["alpha"], temporal_threshold=P["temporal_threshold"], do_segment=P["do_segment"],
                 segment_threshold=P["segment_threshold"], min_segment_num=P["min_segment_num"],
                 complementary_segment=P["complementary_segment"], expansion=P["expansion"])
    out = run_seeded(comp, video)
    assert out.count == ref["count"]
    assert torch.equal(out.positions, ref["positions"])
    assert torch.equal(out.flat_index(video.grid_hw), ref["global_index"])
    assert (out.features - ref["features"]).abs().max().item() < 1e-4
    diag = d["diagnostics"]
    assert out.stats["segment_lengths"] == diag["segment_lengths"]
    assert out.stats["contextual_ratio"] == pytest.approx(diag["adaptive_contextual_ratio_per_segment"], abs=0)
    assert out.stats["tstm_roots"] == [sum(r) for r in diag["tstm_roots_per_frame"]]
    assert out.stats["soft_threshold"] == diag["soft_threshold_inferred_per_segment"]
    assert out.stats["dpc_calls"] == len(diag["dpc_calls"])
    assert out.stats["adts_tokens"] == int((ref["source"] == 0).sum())
    assert out.stats["token_budget_per_frame"] == P["token_budget_per_frame"]
    T, N, _ = video.features.shape                                     # matched retention
    assert round(P["retention"] * T * N) <= out.count < (P["token_budget_per_frame"] + 1) * T


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_adts_select_matches_fixture(path):
    d, video = load(path)
    P = d["params"]
    T, N, _ = video.features.shape
    idx = adts_select(video.features, video.saliency, P["num_attn_div_tokens_per_frame"],
                      variant=P["token_selection_method"], segment_lengths=d["diagnostics"]["segment_lengths"])
    glob = (idx + torch.arange(T).unsqueeze(1) * N).reshape(-1)
    assert torch.equal(glob.sort().values, d["diagnostics"]["adts_global_indices"].sort().values)
    # The output's ADTS rows are exactly these tokens.
    adts_rows = d["output"]["source"] == 0
    assert torch.equal(d["output"]["global_index"][adts_rows], glob.sort().values)


def test_defaults_are_the_comparison_configuration():
    p = FlashVID.Params()
    assert (p.token_selection_method, p.alpha, p.temporal_threshold, p.segment_threshold,
            p.min_segment_num, p.complementary_segment, p.expansion, p.do_segment) == \
        ("attn_div", 0.7, 0.8, 0.9, 4, True, 1.0, True)


def test_build_compressor_by_name():
    from ottvid import build_compressor

    comp = build_compressor("flashvid", retention=0.1)
    assert isinstance(comp, FlashVID) and comp.params.retention == 0.1


# --------------------------------------------------------------------------- stages

def test_budget_split():
    assert frame_budget(196, 0.25, 1.0, 0.7) == (49, 35, 14)
    assert frame_budget(196, 0.10, 1.0, 0.7) == (20, 14, 6)
    assert frame_budget(169, 0.15, 1.0, 0.7) == (26, 19, 7)
    assert frame_budget(240, 0.20, 1.0, 0.7) == (48, 34, 14)
    assert frame_budget(196, 0.25, 1.25, 0.7) == (62, 44, 18)
    assert frame_budget(10, 1.0, 1.25, 0.7) == (10, 7, 3)  # capped at N


def _frames_with_means(sims):
    """Frame features whose per-frame mean vectors have the given consecutive cosines."""
    angles = [0.0]
    for c in sims:
        angles.append(angles[-1] + math.acos(c))
    means = torch.tensor([[math.cos(a), math.sin(a)] for a in angles], dtype=torch.float64)
    return means.unsqueeze(1).expand(-1, 3, -1).clone()


def test_dyseg_threshold_and_complementary_cuts():
    x = _frames_with_means([0.95, 0.5, 0.99, 0.93, 0.97])
    assert dyseg(x, 0.9, 1).tolist() == [2, 4]
    assert dyseg(x, 0.9, 3).tolist() == [2, 2, 2]        # adds the most dissimilar remaining transition (0.93)
    assert dyseg(x, 0.9, 4).tolist() == [1, 1, 2, 2]     # then 0.95
    assert dyseg(x, 0.9, 4, complementary_segment=False).tolist() == [2, 4]
    # More cuts requested than transitions remain: already-cut ones are picked again -> empty segments.
    assert dyseg(x, 0.9, 9).tolist() == [1, 1, 0, 1, 1, 1, 1]
    assert dyseg(x[:1], 0.9, 4).tolist() == [1]


def _naive_adts(x, s, k, variant):
    """Greedy max-min written from the definition, recomputing every step."""
    out = []
    for t in range(x.shape[0]):
        u = torch.nn.functional.normalize(x[t].double(), dim=-1)
        D = (1 - u @ u.T) * s[t].double()
        if variant == "attn_div_v2":
            D = D * (x[t].double() @ x.double().mean(1).mean(0))
        picked = [int(D.sort(0).values[1].argmax())]
        while len(picked) < k:
            score = D[picked].min(0).values
            if variant == "attn_div":
                score[picked] = -1
            picked.append(int(score.argmax()))
        out.append(sorted(picked))
    return torch.tensor(out)


@pytest.mark.parametrize("variant", ["attn_div", "attn_div_v2"])
def test_adts_select_against_definition(variant):
    video = synthetic(4, 4, 5, 16, seed=3)
    idx = adts_select(video.features, video.saliency, 7, variant=variant)
    assert idx.shape == (4, 7) and idx.dtype == torch.int64
    assert torch.equal(idx, _naive_adts(video.features, video.saliency, 7, variant))


def test_adts_select_properties():
    video = synthetic(3, 3, 4, 8, seed=5)
    x, s = video.features, video.saliency
    full = adts_select(x, s, 12)
    assert torch.equal(full, torch.arange(12).expand(3, -1))             # v1 never repeats
    base = adts_select(x, s, 5)
    assert torch.equal(base, adts_select(x, s * torch.tensor([[0.25], [3.0], [1e-3]]), 5))  # per-frame scale
    assert torch.equal(base[1:], adts_select(x[1:], s[1:], 5))           # frames independent (v1)
    assert torch.equal(adts_select(x.double(), s, 5), adts_select(x.float(), s, 5))
    assert adts_select(x, s, 0).shape == (3, 0)
    with pytest.raises(ValueError, match="variant"):
        adts_select(x, s, 3, variant="div")
    with pytest.raises(ValueError, match="k"):
        adts_select(x, s, 13)
    with pytest.raises(ValueError, match="saliency"):
        adts_select(x, s[:, :5], 3)


def test_tstm_chain_aggregation_is_tree_sum_over_direct_children():
    # One token per frame: a <- b <- c (each merges into the previous frame), plus a star.
    a, b, c = torch.tensor([1.0, 0.0]), torch.tensor([3.0, 0.0]), torch.tensor([8.0, 0.0])
    x = torch.stack([a, b, c]).unsqueeze(1)                           # (3, 1, 2)
    merge = torch.tensor([[False], [True], [True]])
    parent = torch.zeros(3, 1, dtype=torch.long)
    out = tstm_aggregate(x, merge, parent)
    assert torch.allclose(out[0, 0], (a + b + c) / 2)                  # not the mean (a+b+c)/3
    star = torch.tensor([[[2.0], [0.0]], [[4.0], [6.0]]])             # two children of token 0
    out = tstm_aggregate(star, torch.tensor([[False, False], [True, True]]), torch.zeros(2, 2, dtype=torch.long))
    assert out[0, 0].item() == pytest.approx(4.0) and out[0, 1].item() == 0.0
    assert torch.equal(x, torch.stack([a, b, c]).unsqueeze(1))         # input untouched


def test_tstm_parents_mask_adts_and_segment_starts():
    video = synthetic(4, 3, 3, 8, seed=1, motion=0.01, cut_p=0.0)
    cand = torch.ones(4, 9, dtype=torch.bool)
    cand[:, 4] = False
    start = torch.tensor([True, False, True, False])
    sigma, parent = tstm_parents(video.features, cand, start)
    assert (sigma[start] == -1).all() and (parent[start] == -1).all()
    assert (sigma[:, 4] == -1).all()
    assert (parent[~start][:, [0, 1, 2, 3, 5, 6, 7, 8]] == torch.tensor([0, 1, 2, 3, 5, 6, 7, 8])).all()


def test_tstm_soft_threshold_lower_bound():
    g = torch.Generator().manual_seed(0)
    sigma = 0.9 + 0.05 * torch.rand(4, 10, generator=g)
    sigma[0] = -1
    merge, soft = tstm_merge_mask(sigma, 0.8, lower_bound=4 * 3)
    assert soft and int((~merge).sum()) == 4 * 3 + 1                   # lower bound + 1 retained
    merge, soft = tstm_merge_mask(sigma, 0.8, lower_bound=10)
    assert not soft and int((~merge).sum()) == 10
    merge, soft = tstm_merge_mask(sigma, 0.8, lower_bound=40)          # r*expansion = 1: nothing merges
    assert soft and not merge.any()


def test_dpc_knn_noise_and_assignment():
    x = torch.cat([torch.randn(5, 4, generator=torch.Generator().manual_seed(0)) * 0.01 + 5,
                   torch.randn(6, 4, generator=torch.Generator().manual_seed(1)) * 0.01 - 5])
    torch.manual_seed(0)
    assign, centers = dpc_knn(x, 2, 2)
    after = torch.rand(3)
    torch.manual_seed(0)
    torch.rand(1, 11)                                                  # exactly one (1, n) draw per call
    assert torch.equal(after, torch.rand(3))
    assert sorted(assign[:5].unique().tolist() + assign[5:].unique().tolist()) == [0, 1]
    assert assign[centers].tolist() == [0, 1]


# --------------------------------------------------------------------------- method-level properties

def _count_bounds(out, T, N, r, expansion=1.0, alpha=0.7):
    B, _, _ = frame_budget(N, r, expansion, alpha)
    return B * T <= out.count <= B * T + T


@settings(max_examples=20, deadline=None)
@given(T=st.integers(1, 8), H=st.integers(1, 5), W=st.integers(1, 5), D=st.integers(8, 32),
       r=st.floats(0.01, 1.0), seed=st.integers(0, 10_000),
       variant=st.sampled_from(["attn_div", "attn_div_v2"]), min_seg=st.integers(1, 8),
       alpha=st.sampled_from([0.0, 0.3, 0.7, 1.0]), thr=st.sampled_from([0.5, 0.8, 0.95]),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_properties(T, H, W, D, r, seed, variant, min_seg, alpha, thr, dtype):
    video = synthetic(T, H, W, D, seed, dtype=dtype)
    N = H * W
    comp = build(retention=r, token_selection_method=variant, min_segment_num=min_seg, alpha=alpha,
                 temporal_threshold=thr)
    out = run_seeded(comp, video)
    assert _count_bounds(out, T, N, r, alpha=alpha)
    assert out.features.dtype == dtype and out.features.shape[1] == D
    assert torch.isfinite(out.features.float()).all()
    g = out.flat_index((H, W))
    assert (g[1:] >= g[:-1]).all() and (g >= 0).all() and (g < T * N).all()
    assert (out.positions[:, 1] < H).all() and (out.positions[:, 2] < W).all()
    assert out.stats["tokens_out"] == out.count and sum(out.stats["segment_lengths"]) == T
    again = run_seeded(comp, video)
    assert torch.equal(out.features, again.features) and torch.equal(out.positions, again.positions)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_full_retention(dtype):
    # Multi-frame segments at r = 1: the lower bound forbids every merge and rho = 1, so nothing changes.
    video = synthetic(5, 3, 4, 16, seed=2, motion=0.01, dtype=dtype)
    out = run_seeded(build(retention=1.0, do_segment=False), video)
    assert torch.equal(out.positions, video.grid_positions().reshape(-1, 3))
    assert torch.equal(out.features, video.features.reshape(-1, 16))
    # With DySeg, one-frame segments still cluster their non-ADTS share (official quirk), same count.
    out = run_seeded(build(retention=1.0), video)
    assert out.count == 5 * 12
    lengths = out.stats["segment_lengths"]
    multi = [t for a, n in zip([sum(lengths[:i]) for i in range(len(lengths))], lengths) if n > 1
             for t in range(a, a + n)]
    rows = torch.isin(out.positions[:, 0], torch.tensor(multi, dtype=torch.long))
    assert torch.equal(out.features[rows], video.features[multi].reshape(-1, 16))


def test_single_frame_video_and_one_frame_segment_duplicates():
    video = synthetic(1, 4, 4, 16, seed=4)
    out = run_seeded(build(retention=0.5), video)
    B, nA, nS = frame_budget(16, 0.5, 1.0, 0.7)
    assert out.count == B and out.stats["segment_lengths"] == [1]
    # A one-frame segment clusters the whole frame, ADTS tokens included: an index may repeat.
    dup_seen = 0
    for seed in range(30):
        v = synthetic(6, 3, 3, 8, seed, motion=1.0, cut_p=1.0)      # every frame its own segment
        o = run_seeded(build(retention=0.6), v)
        assert o.stats["segment_lengths"] == [1] * 6
        g = o.flat_index((3, 3))
        dup_seen += o.stats["duplicated_positions"]
        assert o.stats["duplicated_positions"] == g.numel() - g.unique().numel()
    assert dup_seen > 0


@pytest.mark.parametrize("kw, arg", [
    ({"retention": 0.0}, "retention"), ({"retention": 1.5}, "retention"),
    ({"token_selection_method": "attn"}, "token_selection_method"),
    ({"alpha": 1.2}, "alpha"), ({"alpha": -0.1}, "alpha"),
    ({"temporal_threshold": 1.0}, "temporal_threshold"), ({"temporal_threshold": -1.5}, "temporal_threshold"),
    ({"segment_threshold": 2.0}, "segment_threshold"), ({"min_segment_num": 0}, "min_segment_num"),
    ({"min_segment_num": 2.5}, "min_segment_num"), ({"complementary_segment": 1}, "complementary_segment"),
    ({"do_segment": "yes"}, "do_segment"), ({"expansion": 0.0}, "expansion"),
])
def test_bad_arguments_raise(kw, arg):
    with pytest.raises(ValueError, match=arg):
        build(**kw)


def test_do_segment_off_is_one_segment():
    video = synthetic(6, 3, 4, 16, seed=7)
    out = run_seeded(build(retention=0.25, do_segment=False), video)
    assert out.stats["segment_lengths"] == [6] and out.stats["segments"] == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("path", FIXTURES[:1], ids=[p.stem for p in FIXTURES[:1]])
def test_cuda_matches_cpu_counts(path):
    d, video = load(path)
    cuda = VideoTokens(features=video.features.cuda(), grid_hw=video.grid_hw, saliency=video.saliency.cuda())
    out = run_seeded(build(retention=d["params"]["retention"]), cuda)
    assert out.features.is_cuda and out.count == d["output"]["count"]
    assert out.stats["segment_lengths"] == d["diagnostics"]["segment_lengths"]


def test_gemms_run_per_segment_as_the_official_calls(monkeypatch):
    """The official code compresses segment by segment: ADTS's distance `bmm` and TSTM's frame-pair
    `einsum` see one segment's frames. A BLAS may round a batched GEMM by its batch size (MKL
    does on some machines), so ours makes the same calls, and the values equal one big batch."""
    g = torch.Generator().manual_seed(0)
    T, N, D = 6, 12, 16
    x = torch.randn(T, N, D, generator=g)
    sal = torch.rand(T, N, generator=g)
    lengths = [3, 1, 2]
    start = torch.zeros(T, dtype=torch.bool)
    start[[0, 3, 4]] = True
    cand = torch.rand(T, N, generator=g) > 0.3
    want_keep = {v: adts_select(x, sal, 4, variant=v, segment_lengths=[T]) for v in ("attn_div", "attn_div_v2")}
    unit = x / x.norm(p=2, dim=-1, keepdim=True)
    whole = torch.einsum("b n d, b m d -> b n m", unit[1:], unit[:-1])
    seen = []
    bmm, einsum = torch.bmm, torch.einsum
    monkeypatch.setattr(torch, "bmm", lambda a, b, **kw: seen.append(("bmm", a.shape[0])) or bmm(a, b, **kw))
    monkeypatch.setattr(torch, "einsum", lambda eq, *ops: seen.append((eq, ops[0].shape[0])) or einsum(eq, *ops))
    for v in ("attn_div", "attn_div_v2"):
        seen.clear()
        keep = adts_select(x, sal, 4, variant=v, segment_lengths=lengths)
        assert [n for op, n in seen if op == "bmm"] == lengths
        if v == "attn_div":   # v1 has no per-segment term: the same picks as one segment
            assert torch.equal(keep, want_keep[v])
    seen.clear()
    sigma, parent = tstm_parents(x, cand, start)
    assert seen == [("b n d, b m d -> b n m", 2), ("b n d, b m d -> b n m", 1)]   # segments of 3 and 2 frames
    masked = whole.masked_fill(~cand[1:].unsqueeze(-1), -1.0).masked_fill(~cand[:-1].unsqueeze(1), -1.0)
    best, arg = masked.max(dim=-1)
    inner = ~start[1:]
    assert torch.equal(sigma[1:][inner], best[inner]) and torch.equal(parent[1:][inner], arg[inner])
    assert (sigma[start] == -1).all() and (parent[start] == -1).all()
