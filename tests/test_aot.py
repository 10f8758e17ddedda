"""AOT (arXiv 2603.01400) tests derived from the paper's equations; see docs/methods/aot.md."""
from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from baselines.aot import (
    AOT,
    PAPER_ANCHORS,
    _cos_cost,
    dyseg_cuts,
    inter_frame_assign,
    inter_frame_update,
    intra_frame_ot,
    paper_anchor_count,
    select_anchors,
    sinkhorn,
    token_budget,
    uniform_clips,
    window_ids,
)
from ottvid import VideoTokens

torch.set_num_threads(1)  # tiny tensors: threading only adds contention on shared CPUs


def make(**kw) -> AOT:
    """What build_compressor('aot', **kw) constructs."""
    return AOT(AOT.Params(**kw))


def video(T=4, H=4, W=5, D=16, seed=0, dtype=torch.float32, device="cpu", frame_features=False):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(T, H * W, D, generator=g)
    s = torch.rand(T, H * W, generator=g) + 1e-3
    s = s / s.sum(1, keepdim=True)
    ff = torch.randn(T, 8, generator=g) if frame_features else None
    return VideoTokens(features=f.to(dtype).to(device), grid_hw=(H, W), saliency=s.to(device),
                       frame_features=None if ff is None else ff.to(device))


def slot_features(v: VideoTokens, pos: torch.Tensor) -> torch.Tensor:
    return v.features[pos[:, 0], pos[:, 1] * v.grid_hw[1] + pos[:, 2]]


# ------------------------------------------------------------------ Sinkhorn (Eq. 5) vs POT

@pytest.mark.parametrize("m,n,eps,iters", [(5, 9, 0.1, 100), (17, 23, 0.1, 100), (70, 126, 0.1, 100),
                                           (30, 12, 0.05, 1500), (12, 12, 0.01, 3000)])
def test_sinkhorn_matches_pot(m, n, eps, iters):
    """Same marginals / epsilon / iterations as ot.sinkhorn; the paper's setting (0.1, 100) converges,
    smaller eps needs more iterations (eps=0.01 also exercises our log-domain path)."""
    g = torch.Generator().manual_seed(m * n)
    x, y = torch.randn(3, m, 8, generator=g), torch.randn(3, n, 8, generator=g)
    C = _cos_cost(x, y).double()
    a = torch.rand(3, m, generator=g).double() + 0.1
    b = torch.rand(3, n, generator=g).double() + 0.1
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    P = sinkhorn(C, a, b, eps, iters)
    assert P.shape == (3, m, n) and P.dtype == torch.float32
    for k in range(3):
        ref = ot.sinkhorn(a[k].numpy(), b[k].numpy(), C[k].numpy(), eps, method="sinkhorn_log",
                          numItermax=iters, stopThr=0.0, warn=False)
        conv = ot.sinkhorn(a[k].numpy(), b[k].numpy(), C[k].numpy(), eps, method="sinkhorn_log",
                           numItermax=20000, stopThr=1e-13, warn=False)
        assert np.abs(ref - conv).max() < 1e-9  # POT itself converged, so the iteration order is immaterial
        np.testing.assert_allclose(P[k].double().numpy(), ref, rtol=2e-4, atol=1e-7)
        np.testing.assert_allclose(P[k].sum(0).double().numpy(), b[k].numpy(), rtol=1e-4)  # last update: v


def test_sinkhorn_follows_paper_iteration_order():
    """Eq. 5: v(0)=1, u(t)=a/(K v(t-1)), v(t)=b/(K^T u(t)); checked after a few (non-converged) steps."""
    g = torch.Generator().manual_seed(3)
    C = _cos_cost(torch.randn(2, 6, 4, generator=g), torch.randn(2, 9, 4, generator=g)).double()
    a, b = torch.full((2, 6), 1 / 6).double(), torch.full((2, 9), 1 / 9).double()
    for eps in (0.1, 0.02):  # plain and log-domain paths
        K = torch.exp(-C / eps)
        v = torch.ones(2, 9).double()
        for _ in range(3):
            u = a / torch.einsum("bmn,bn->bm", K, v)
            v = b / torch.einsum("bmn,bm->bn", K, u)
        ref = u.unsqueeze(-1) * K * v.unsqueeze(-2)
        torch.testing.assert_close(sinkhorn(C, a, b, eps, 3).double(), ref, rtol=1e-4, atol=1e-9)


# ------------------------------------------------------------------ anchors (Eq. 7-8)

def test_window_grid():
    wid, sizes = window_ids((14, 14), 3)
    assert sizes.tolist() == [25, 25, 20, 25, 25, 20, 20, 20, 16]
    assert wid.view(14, 14)[0, 0] == 0 and wid.view(14, 14)[13, 13] == 8
    _, sizes = window_ids((2, 5), 3)  # fewer rows than windows: 2 x 3 cells
    assert sizes.numel() == 6 and int(sizes.sum()) == 10


@settings(max_examples=20, deadline=None)
@given(H=st.integers(2, 7), W=st.integers(2, 7), frac=st.floats(0.05, 0.95), lr=st.floats(0.0, 1.0),
       windows=st.integers(1, 4), seed=st.integers(0, 99))
def test_anchors_are_window_topk_union_global_topk(H, W, frac, lr, windows, seed):
    N = H * W
    M = max(1, min(N - 1, round(frac * N)))
    sal = torch.rand(3, N, generator=torch.Generator().manual_seed(seed))
    idx, split = select_anchors(sal, (H, W), M, windows, lr)
    assert idx.shape == (3, M)
    wid, sizes = window_ids((H, W), windows)
    n_win = sizes.numel()
    K_w = min(math.floor(M * lr + 0.5) // n_win, int(sizes.min()))
    assert split == {"local": n_win * K_w, "global": M - n_win * K_w}
    for t in range(3):
        s = sal[t].tolist()
        local = set()
        for w in range(n_win):
            members = [n for n in range(N) if int(wid[n]) == w]
            local |= set(sorted(members, key=lambda n: (-s[n], n))[:K_w])
        rest = sorted((n for n in range(N) if n not in local), key=lambda n: (-s[n], n))
        glob = set(rest[: M - len(local)])
        assert not (local & glob)
        assert idx[t].tolist() == sorted(local | glob)  # union, no duplicates, ascending


# ------------------------------------------------------------------ intra-frame OT (Eq. 9-12)

def test_intra_frame_aggregation_eq11():
    v = video(T=3, H=4, W=4, D=8, seed=5)
    x = v.features
    idx, _ = select_anchors(v.saliency, v.grid_hw, 6, 2, 0.5)
    out, plan = intra_frame_ot(x, idx, 0.7, 0.1, 100)
    for t in range(3):
        a_idx = idx[t].tolist()
        u_idx = [n for n in range(16) if n not in a_idx]
        xa, xu = x[t, a_idx].double(), x[t, u_idx].double()
        C = (1 - torch.nn.functional.normalize(xa, dim=-1) @ torch.nn.functional.normalize(xu, dim=-1).T).numpy()
        Tp = ot.sinkhorn(np.full(6, 1 / 6), np.full(10, 1 / 10), C, 0.1, numItermax=100, stopThr=0.0, warn=False)
        Tp = torch.from_numpy(Tp)
        m = Tp.sum(1, keepdim=True)  # Eq. 10: mass received by each anchor
        ref = (xa + 0.7 * Tp @ xu) / (1 + 0.7 * m)
        torch.testing.assert_close(out[t].double(), ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(plan[t].double(), Tp, rtol=1e-3, atol=1e-7)


# ------------------------------------------------------------------ inter-frame OT (Eq. 13-16)

def test_inter_frame_gate_and_update():
    g = torch.Generator().manual_seed(11)
    A, S = torch.randn(2, 7, 8, generator=g), torch.randn(2, 7, 8, generator=g)
    p, q = inter_frame_assign(A, S, 0.1, 100)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 7))  # Eq. 15 row normalisation
    for k in range(2):
        C = _cos_cost(A[k:k + 1], S[k:k + 1])[0].double().numpy()
        Tp = ot.sinkhorn(np.full(7, 1 / 7), np.full(7, 1 / 7), C, 0.1, numItermax=100, stopThr=0.0, warn=False).T
        pr = Tp / Tp.sum(1, keepdims=True)
        np.testing.assert_allclose(q[k].double().numpy(), pr.max(1), rtol=1e-3)
    tau = float(q.median())
    merge = q >= tau
    new = inter_frame_update(A, S, p, merge, 1.0)
    for k in range(2):
        w = p[k] * merge[k].unsqueeze(-1)  # only tokens with q >= tau contribute
        ref = (A[k] + w.T @ S[k]) / (1 + w.sum(0).unsqueeze(-1))
        torch.testing.assert_close(new[k], ref)
    # tokens with q < tau do not move the anchors at all
    S2 = S.clone()
    S2[~merge] = 1e3
    torch.testing.assert_close(inter_frame_update(A, S2, p, merge, 1.0), new)


def test_fixed_tau_keeps_low_q_tokens_unmerged():
    """One clip of 2 frames: output = M anchors of frame 0 (Eq. 16) + frame-1 tokens with q < tau, unchanged."""
    v = video(T=2, H=4, W=4, D=8, seed=2)
    c = make(retention=0.5, anchors=8, tau=0.6, clip_len=2)
    out = c(v)
    idx, _ = select_anchors(v.saliency, v.grid_hw, 8, 3, 0.5)
    xt, _ = intra_frame_ot(v.features.float(), idx, 1.0, 0.1, 100)
    p, q = inter_frame_assign(xt[:1], xt[1:], 0.1, 100)
    kept = q[0] < 0.6
    assert out.count == 8 + int(kept.sum())
    assert out.stats["inter_kept"] == int(kept.sum()) and out.stats["inter_merged"] == int((~kept).sum())
    anchors = inter_frame_update(xt[:1], xt[1:], p, ~kept.unsqueeze(0), 1.0)[0]
    f0 = out.positions[:, 0] == 0
    assert out.positions[f0, 1:].tolist() == [[int(n) // 4, int(n) % 4] for n in idx[0]]
    torch.testing.assert_close(out.features[f0], anchors)
    f1 = out.positions[:, 0] == 1
    assert out.positions[f1, 1:].tolist() == [[int(n) // 4, int(n) % 4] for n in idx[1][kept]]
    assert torch.equal(out.features[f1], xt[1][kept])  # kept tokens are not aggregated


def test_auto_tau_keeps_the_lowest_q_tokens():
    v = video(T=2, H=5, W=5, D=8, seed=4)
    c = make(retention=0.4, clip_len=2, anchors=12)
    out = c(v)
    B = token_budget(0.4, 2, 25)  # 20 = 12 anchors + 8 kept
    assert out.count == B
    idx, _ = select_anchors(v.saliency, v.grid_hw, 12, 3, 0.5)
    xt, _ = intra_frame_ot(v.features.float(), idx, 1.0, 0.1, 100)
    _, q = inter_frame_assign(xt[:1], xt[1:], 0.1, 100)
    lowest = torch.sort(q[0], stable=True).indices[: B - 12]
    f1 = out.positions[:, 0] == 1
    got = {(int(h), int(w)) for h, w in out.positions[f1, 1:]}
    assert got == {(int(idx[1, i]) // 5, int(idx[1, i]) % 5) for i in lowest}
    assert out.stats["tau_per_step"][0] == pytest.approx(float(torch.sort(q[0]).values[B - 12]))


def test_lambda_zero_outputs_exact_anchor_tokens():
    v = video(T=6, H=5, W=4, D=12, seed=9)
    out = make(retention=0.2, lambda_intra=0.0, lambda_inter=0.0, clip_len=3)(v)
    assert torch.equal(out.features, slot_features(v, out.positions))
    idx, _ = select_anchors(v.saliency, v.grid_hw, out.stats["anchors_per_frame"], 3, 0.5)
    for t, h, w in out.positions.tolist():
        assert h * 4 + w in idx[t].tolist()  # every output token is one of its frame's anchors
    # the first frame of each clip keeps all its anchors
    for t in (0, 3):
        assert int((out.positions[:, 0] == t).sum()) == out.stats["anchors_per_frame"]


# ------------------------------------------------------------------ retention rule (Sec. 7)

def test_paper_anchor_counts():
    for N, row in PAPER_ANCHORS.items():
        for r, M in row.items():
            assert paper_anchor_count(r, N) == M
    # 205 > 196 and 176, 198 > 169 are clamped to N: the intra stage then keeps every token
    for N, T in ((196, 32), (169, 64)):
        H = int(math.isqrt(N))
        v = video(T=T, H=H, W=H, D=4, seed=0)
        for r, M in PAPER_ANCHORS[N].items():
            lengths, m, B, _ = make(retention=r).plan(v)
            assert lengths == [8] * (T // 8) and m == min(M, N) and B == token_budget(r, T, N)
    assert make(retention=0.1).plan(video(T=32, H=14, W=14, D=4))[1:3] == (126, 627)
    assert make(retention=0.1).plan(video(T=64, H=13, W=13, D=4))[1:3] == (108, 1082)
    # elsewhere: interpolation, monotone in r
    counts = [paper_anchor_count(r / 100, 144) for r in range(1, 101)]
    assert counts == sorted(counts) and counts[9] == round(144 * (126 / 196 + 108 / 169) / 2)


def test_budget_reproduces_paper_flops_eq17():
    """Eq. 17 on the retained vision tokens (Qwen2-7B LLM: 28 layers, d=3584, m=18944) gives the
    prefill TFLOPs of Table 1 (LLaVA-OV, 32 x 196) and of LLaVA-Video's vanilla row (64 x 169)."""
    def f_pre(n, layers=28, d=3584, m=18944):
        return layers * (4 * n * d * d + 2 * n * n * d + 2 * n * d * m) / 1e12

    table1 = {1.0: 40.8, 0.25: 8.7, 0.20: 7.0, 0.15: 5.2, 0.10: 3.4}
    for r, tflops in table1.items():
        assert f_pre(token_budget(r, 32, 196)) == pytest.approx(tflops, abs=0.12)
    assert f_pre(token_budget(1.0, 64, 169)) == pytest.approx(80.2, abs=0.05)


@settings(max_examples=20, deadline=None)
@given(T=st.integers(1, 8), H=st.integers(1, 5), W=st.integers(1, 5), r=st.floats(0.01, 1.0),
       mode=st.sampled_from(["uniform", "dynamic"]), clip_len=st.integers(1, 5), dyseg_c=st.integers(1, 6),
       anchors=st.one_of(st.none(), st.integers(1, 30)), seed=st.integers(0, 50))
def test_count_hits_budget_exactly(T, H, W, r, mode, clip_len, dyseg_c, anchors, seed):
    """tokens_out == B = max(1, round_half_up(r*T*N)) for every r, grid, T, clip rule, anchor override."""
    v = video(T=T, H=H, W=W, D=8, seed=seed, frame_features=True)
    c = make(retention=r, clips=mode, clip_len=clip_len, dyseg_c=dyseg_c, anchors=anchors, sinkhorn_iters=5)
    lengths, M, B, _ = c.plan(v)
    assert sum(lengths) == T and min(lengths) >= 1
    assert math.ceil(B / T) <= M <= min(H * W, B // len(lengths))
    out = c(v)
    assert out.count == B == token_budget(r, T, H * W) == out.stats["tokens_out"]
    assert out.features.shape == (B, 8) and out.positions.shape == (B, 3)
    flat = out.flat_index(v.grid_hw)
    assert torch.equal(flat, torch.sort(flat).values) and flat.unique().numel() == B  # raster order, one per slot
    assert out.stats["inter_kept"] + len(lengths) * M == B


def test_retention_one_is_identity():
    for mode in ("uniform", "dynamic"):
        v = video(T=5, H=3, W=4, D=8, seed=1, frame_features=True)
        out = make(retention=1.0, clips=mode)(v)
        assert torch.equal(out.features, v.features.reshape(-1, 8))
        assert torch.equal(out.positions, v.grid_positions().reshape(-1, 3))


def test_single_frame():
    v = video(T=1, H=6, W=6, D=8)
    out = make(retention=0.25)(v)
    assert out.count == 9 and out.stats["clips"] == 1 and (out.positions[:, 0] == 0).all()


# ------------------------------------------------------------------ clips (Sec. 3.3, Sec. 8)

def test_uniform_and_dynamic_clips():
    assert uniform_clips(32, 4) == [8] * 4 and uniform_clips(10, 2) == [5, 5] and uniform_clips(7, 3) == [2, 2, 3]
    g = torch.tensor([[1.0, 0], [1, 0.05], [0, 1], [0.05, 1], [0.1, 1], [1, 1]])
    cuts, s = dyseg_cuts(g, c=2, tau=0.9)
    assert cuts == [1, 4]  # lowest similarity first, then every other s < tau
    v = VideoTokens(features=torch.randn(6, 4, 8), grid_hw=(2, 2), saliency=torch.full((6, 4), 0.25), frame_features=g)
    out = make(retention=0.5, clips="dynamic", dyseg_c=2)(v)
    assert out.stats["clip_lengths"] == [2, 3, 1]


# ------------------------------------------------------------------ properties

@settings(max_examples=15, deadline=None)
@given(T=st.integers(1, 6), H=st.integers(2, 5), W=st.integers(2, 5), D=st.integers(8, 32),
       r=st.floats(0.05, 1.0), seed=st.integers(0, 100), mode=st.sampled_from(["uniform", "dynamic"]))
def test_deterministic_finite_dtype(T, H, W, D, r, seed, mode):
    for dtype in (torch.float32, torch.bfloat16):
        v = video(T=T, H=H, W=W, D=D, seed=seed, dtype=dtype)
        c = make(retention=r, clips=mode, clip_len=3, sinkhorn_iters=20)
        a, b = c(v), c(v)
        assert a.features.dtype == dtype and a.positions.dtype == torch.int64
        assert torch.isfinite(a.features.float()).all()
        assert torch.equal(a.features, b.features) and torch.equal(a.positions, b.positions)
        assert (a.positions[:, 0] < T).all() and (a.positions[:, 1] < H).all() and (a.positions[:, 2] < W).all()


def test_bf16_computed_in_fp32():
    """bf16 input: the same computation as on its fp32 upcast, rounded to bf16 at the end."""
    v16 = video(T=4, H=4, W=4, D=16, seed=3, dtype=torch.bfloat16)
    v32 = VideoTokens(features=v16.features.float(), grid_hw=(4, 4), saliency=v16.saliency)
    c = make(retention=0.3, clip_len=2)
    a, b = c(v16), c(v32)
    assert torch.equal(a.positions, b.positions)
    assert torch.equal(a.features, b.features.bfloat16())


def test_constant_and_duplicate_tokens_finite():
    v = VideoTokens(features=torch.ones(4, 9, 8), grid_hw=(3, 3), saliency=torch.full((4, 9), 1 / 9))
    out = make(retention=0.3)(v)
    assert torch.isfinite(out.features).all() and out.count == token_budget(0.3, 4, 9)
    torch.testing.assert_close(out.features, torch.ones_like(out.features))


@pytest.mark.parametrize("kw,arg", [
    ({"retention": 0.0}, "retention"), ({"retention": 1.5}, "retention"), ({"anchors": 0}, "anchors"),
    ({"windows": 0}, "windows"), ({"local_ratio": 1.2}, "local_ratio"), ({"lambda_intra": -1}, "lambda_intra"),
    ({"lambda_inter": float("nan")}, "lambda_inter"), ({"tau": 1.5}, "tau"), ({"sinkhorn_eps": 0.0}, "sinkhorn_eps"),
    ({"sinkhorn_iters": 0}, "sinkhorn_iters"), ({"clips": "kmeans"}, "clips"), ({"clip_len": 0}, "clip_len"),
    ({"dyseg_c": 0}, "dyseg_c"), ({"dyseg_tau": 2.0}, "dyseg_tau"), ({"anchors": 2.5}, "anchors"),
])
def test_bad_arguments(kw, arg):
    with pytest.raises(ValueError, match=arg):
        make(**kw)


def test_bad_input():
    with pytest.raises(ValueError, match="video"):
        make()(torch.randn(2, 4, 8))


def test_registered_via_build_compressor():
    from ottvid import build_compressor, method_params

    assert isinstance(build_compressor("aot", retention=0.1), AOT)
    assert method_params("aot")["sinkhorn_iters"] == 100
    with pytest.raises(ValueError, match="gamma"):
        build_compressor("aot", gamma=0.3)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    v = video(T=8, H=6, W=6, D=32, seed=7)
    vc = VideoTokens(features=v.features.cuda(), grid_hw=v.grid_hw, saliency=v.saliency.cuda())
    c = make(retention=0.2, clip_len=4)
    a, b = c(v), c(vc)
    assert b.features.device.type == "cuda" and a.count == b.count
    assert torch.equal(a.positions, b.positions.cpu())
    torch.testing.assert_close(a.features, b.features.cpu(), rtol=1e-4, atol=1e-4)
