"""HoliTom (outer-LLM stage): official fixtures, stage oracles and properties."""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st

import baselines.holitom as ht
from ottvid.contract import VideoTokens
from ottvid.registry import build_compressor

FIX = Path(__file__).parent / "fixtures" / "holitom"
CASES = sorted(p.stem for p in FIX.glob("ht_*.pt"))


def make(**kw):
    return build_compressor("holitom", **kw)


def load(case):
    return torch.load(FIX / f"{case}.pt", weights_only=False)


def video_of(inp):
    return VideoTokens(features=inp["features"], grid_hw=tuple(inp["grid_hw"]), saliency=inp["saliency"])


def flat(pos, grid_hw):
    H, W = grid_hw
    return pos[:, 0] * H * W + pos[:, 1] * W + pos[:, 2]


def random_video(T, H, W, D, seed, dtype=torch.float32, drift=1.0):
    """Scenes (random cuts) whose positions are still, slowly or fast changing, so that the
    segmentation meets static windows, dynamic positions and boundaries."""
    g = torch.Generator().manual_seed(seed)
    N = H * W
    scene = (torch.rand(T, generator=g) < 0.25).cumsum(0)                       # scene id per frame
    bases = torch.randn(int(scene.max()) + 1, N, D, generator=g)
    speed = drift * torch.tensor([0.0, 0.3, 1.5])[torch.randint(0, 3, (1, N, 1), generator=g)]
    x = bases[scene] + (speed * torch.randn(T, N, D, generator=g)).cumsum(0)
    sal = torch.rand(T, N, generator=g)
    return VideoTokens(features=x.to(dtype), grid_hw=(H, W), saliency=(sal / sal.sum(1, keepdim=True)).to(dtype))

# ---------------------------------------------------------------- official fixtures

def test_fixtures_present():
    assert CASES, "no HoliTom fixtures copied into tests/fixtures/holitom"


@pytest.mark.parametrize("case", CASES)
def test_matches_official(case):
    d = load(case)
    inp, prm, ref, trace = d["inputs"], d["params"], d["output"], d["trace"]
    comp = make(retention=prm["retention"])
    assert comp.params.tau == prm["T(tau)"] and comp.params.beta == prm["BETA"]
    assert comp.params.K == prm["K"] and comp.params.D == prm["D"]
    assert comp.params.max_window_size == prm["MAX_WINDOW_SIZE"]
    torch.manual_seed(prm["torch_seed"])
    out = comp(video_of(inp))
    s = out.stats
    assert s["segments"] == [list(x) for x in trace["segments"]]
    assert s["temporal_removed"] == trace["total_reduced"]
    assert s["retention_after_static"] == trace["retain_ratio_after_static"]
    assert out.count == ref["count"] == ref["features"].shape[0]
    assert s["static_clusters"] == trace["token_kind"].count("static")
    grid = tuple(inp["grid_hw"])
    a, b = flat(out.positions, grid), flat(ref["positions"], grid)
    sa, ia = a.sort()
    sb, ib = b.sort()
    assert torch.equal(sa, sb), "different multiset of (t,h,w) slots"
    assert torch.allclose(out.features[ia], ref["features"][ib], atol=1e-4, rtol=0)
    mode = prm["model_config"]["mm_newline_position"]
    if mode == "one_token":
        assert torch.equal(out.positions, ref["positions"])
        assert torch.allclose(out.features, ref["features"], atol=1e-4, rtol=0)
    else:
        # `grid` mode lists every frame in raster order with a segment's statics in its first
        # frame, i.e. exactly our tokens sorted by (t, h, w).
        assert mode == "grid"
        assert torch.equal(out.positions[ia], ref["positions"])


@pytest.mark.parametrize("case", CASES)
def test_fixture_seed_insensitive_and_deterministic(case):
    d = load(case)
    comp = make(retention=d["params"]["retention"])
    outs = []
    for seed in (0, 0, 99):
        torch.manual_seed(seed)
        outs.append(comp(video_of(d["inputs"])))
    assert torch.equal(outs[0].features, outs[1].features)
    assert torch.equal(outs[0].positions, outs[2].positions)  # NOTES: no near-ties in these cases


# ---------------------------------------------------------------- knob mapping

def test_tau_rule():
    assert [ht.tau_for_retention(r) for r in (0.10, 0.15, 0.20, 0.25)] == [0.65, 0.80, 0.80, 0.80]
    assert ht.tau_for_retention(0.05) == 0.65 and ht.tau_for_retention(0.125) == 0.65
    assert ht.tau_for_retention(0.126) == 0.80 and ht.tau_for_retention(1.0) == 0.80
    p = make(retention=0.1).params
    assert (p.tau, p.beta, p.D, p.K, p.max_window_size, p.no_beta) == (0.65, 0.6, 0.0, 7, 1024, False)
    assert make(retention=0.1, tau=0.9).params.tau == 0.9


@pytest.mark.parametrize("kw,arg", [
    (dict(retention=0.0), "retention"), (dict(retention=1.5), "retention"),
    (dict(tau=1.2), "tau"), (dict(tau="x"), "tau"), (dict(beta=-0.1), "beta"),
    (dict(D=2.0), "D"), (dict(K=0), "K"), (dict(K=2.5), "K"),
    (dict(max_window_size=0), "max_window_size"), (dict(no_beta=1), "no_beta"),
])
def test_bad_arguments(kw, arg):
    with pytest.raises(ValueError, match=arg):
        make(**kw)


def test_unknown_hyperparameter():
    with pytest.raises(ValueError):
        make(retention=0.1, gamma=0.3)


# ---------------------------------------------------------------- stage oracles (naive loops)

def naive_values(stable):
    T = stable.shape[0] + 1
    V = torch.zeros(T, T, dtype=torch.int64)
    for s in range(T):
        for e in range(s + 1, T):
            V[s, e] = (e - s) * int(stable[s:e].all(0).sum())
    return V


def naive_dp(V, maxw):
    T = V.shape[0]
    dp, prev = [0] * T, [0] * T
    for i in range(T):
        best, arg = (dp[i - 1] if i else 0), i
        for w in range(2, min(i + 1, maxw) + 1):
            j = i - w
            val = (dp[j] if j >= 0 else 0) + int(V[j + 1, i])
            if val > best:
                best, arg = val, j + 1
        dp[i], prev[i] = best, arg
    segs, i = [], T - 1
    while i >= 0:
        segs.append((prev[i], i))
        i = prev[i] - 1
    return segs[::-1], dp[-1]


def partitions(T):
    for cuts in itertools.product([0, 1], repeat=max(T - 1, 0)):
        segs, s = [], 0
        for i, c in enumerate(cuts):
            if c:
                segs.append((s, i))
                s = i + 1
        yield segs + [(s, T - 1)]


@settings(max_examples=20, deadline=None)
@given(T=st.integers(1, 8), N=st.integers(1, 6), p=st.floats(0.2, 0.95), maxw=st.integers(1, 9), seed=st.integers(0, 999))
def test_segmentation_oracles(T, N, p, maxw, seed):
    g = torch.Generator().manual_seed(seed)
    stable = torch.rand(T - 1, N, generator=g) < p
    V = ht.static_window_values(stable)
    assert torch.equal(V, naive_values(stable))
    segs, R = ht.select_static_windows(V, maxw)
    assert (segs, R) == naive_dp(V, maxw)
    assert segs[0][0] == 0 and segs[-1][1] == T - 1
    assert all(b[0] == a[1] + 1 for a, b in zip(segs, segs[1:]))
    assert all(1 <= e - s + 1 <= maxw for s, e in segs)
    best = max(sum(int(V[s, e]) for s, e in P) for P in partitions(T) if all(e - s + 1 <= maxw for s, e in P))
    assert R == best == sum(int(V[s, e]) for s, e in segs)


def naive_dpc_knn(x, c, k):
    """Density-peak clustering written token by token (same noise draw as the official code)."""
    L, D = x.shape
    d = [[float(torch.linalg.vector_norm(x[i] - x[j])) / math.sqrt(D) for j in range(L)] for i in range(L)]
    rho = torch.tensor([math.exp(-sum(v * v for v in sorted(row)[:k]) / k) for row in d])
    rho = rho + torch.rand(1, L)[0] * 1e-6
    dmax = max(max(row) for row in d)
    delta = [min([d[i][j] for j in range(L) if rho[j] > rho[i]], default=dmax) for i in range(L)]
    score = torch.tensor(delta) * rho
    centres = sorted(int(i) for i in score.topk(c).indices)
    return centres, d


def naive_merge(x, centres, d, beta):
    groups = {c: [] for c in centres}
    for i in range(x.shape[0]):
        if i not in groups:
            groups[min(centres, key=lambda c: (d[i][c], centres.index(c)))].append(i)
    return torch.stack([beta * x[c] + (1 - beta) * x[groups[c]].mean(0) if groups[c] else x[c] for c in centres])


@settings(max_examples=15, deadline=None)
@given(L=st.integers(1, 12), D=st.integers(8, 16), frac=st.floats(0.05, 1.0), K=st.integers(1, 8), seed=st.integers(0, 999))
def test_dpc_knn_and_beta_merge_oracle(L, D, frac, K, seed):
    x = torch.randn(L, D, generator=torch.Generator().manual_seed(seed))
    c = max(1, round(L * frac))
    torch.manual_seed(seed)
    centres, dist = ht.cluster_dpc_knn(x[None], c, k=min(K, c))
    merged = ht.merge_by_clustering(x[None], centres, dist, 0.6, False)[0]
    torch.manual_seed(seed)
    ref_c, ref_d = naive_dpc_knn(x, c, min(K, c))
    assert centres[0].tolist() == ref_c
    assert torch.allclose(merged, naive_merge(x, ref_c, ref_d, 0.6), atol=1e-5)
    plain = ht.merge_by_clustering(x[None], centres, dist, 0.6, True)[0]
    assert torch.allclose(plain[0], torch.stack([x[i] for i in range(L)
                                                 if i == ref_c[0] or (i not in ref_c and min(ref_c, key=lambda c: (ref_d[i][c], c)) == ref_c[0])]).mean(0), atol=1e-5)


def test_single_centre_is_drawn_by_noise():
    """c = 1 makes every density exp(0): only the global-generator noise picks the centre."""
    x = torch.randn(1, 9, 8)
    picks = set()
    for seed in range(12):
        torch.manual_seed(seed)
        centres, _ = ht.cluster_dpc_knn(x, 1, k=1)
        torch.manual_seed(seed)
        noise = torch.rand(1, 9)
        dist = torch.cdist(x, x) / 8 ** 0.5
        rho = 1 + noise[0] * 1e-6
        delta = torch.stack([dist[0, i][rho > rho[i]].min() if (rho > rho[i]).any() else dist.max() for i in range(9)])
        assert int(centres) == int((delta * rho).topk(1).indices)
        picks.add(int(centres))
    assert len(picks) > 1


# ---------------------------------------------------------------- properties of the whole method

def expected_count(stats, N):
    r2 = stats["retention_after_static"]
    M = 0
    for (s, e), m in zip(stats["segments"], stats["segment_static"]):
        W = e - s + 1
        M += (round(m * r2) if W > 1 else 0) + W * math.ceil((N - m) * r2)
    return M


@settings(max_examples=20, deadline=None)
@given(T=st.integers(1, 8), H=st.integers(1, 4), W=st.integers(1, 5), D=st.integers(8, 32),
       r=st.floats(0.01, 1.0), tau=st.sampled_from([None, 0.5, 0.9]), beta=st.floats(0, 1),
       K=st.integers(1, 9), maxw=st.integers(1, 6), Dd=st.sampled_from([0.0, 0.0, 0.4]),
       no_beta=st.booleans(), bf16=st.booleans(), seed=st.integers(0, 999))
def test_properties(T, H, W, D, r, tau, beta, K, maxw, Dd, no_beta, bf16, seed):
    dtype = torch.bfloat16 if bf16 else torch.float32
    v = random_video(T, H, W, D, seed, dtype)
    comp = make(retention=r, tau=tau, beta=beta, K=K, max_window_size=maxw, D=Dd, no_beta=no_beta)
    torch.manual_seed(seed)
    out = comp(v)
    torch.manual_seed(seed)
    again = comp(v)
    N, s = H * W, out.stats
    assert torch.equal(out.features, again.features) and torch.equal(out.positions, again.positions)
    assert out.features.dtype == dtype and out.positions.dtype == torch.int64
    assert torch.isfinite(out.features.float()).all()
    # count rule of the official code (NOTES step 9) and its bookkeeping
    assert out.count == expected_count(s, N) == s["tokens_out"]
    R = sum((e - s_) * m for (s_, e), m in zip(s["segments"], s["segment_static"]) if e > s_)
    assert s["temporal_removed"] == R
    assert s["retention_after_static"] == min(r / ((T * N - R) / (T * N)), 1)
    assert s["static_clusters"] + s["dynamic_kept"] + s["dynamic_contextual"] == out.count
    # positions: valid, distinct slots; statics sit in the first frame of their segment
    pos = out.positions
    assert ((pos >= 0).all() and (pos[:, 0] < T).all() and (pos[:, 1] < H).all() and (pos[:, 2] < W).all())
    assert flat(pos, (H, W)).unique().numel() == out.count
    # order: segments in time, frames non-decreasing
    assert (pos[1:, 0] >= pos[:-1, 0]).all()


def test_single_frame_and_full_retention():
    v = random_video(1, 3, 4, 16, 0)
    out = make(retention=0.3)(v)
    assert out.stats["segments"] == [[0, 0]] and out.count == math.ceil(12 * 0.3)
    top = v.saliency[0].topk(math.ceil(12 * 0.3)).indices.sort().values
    assert torch.equal(flat(out.positions, (3, 4)), top)
    assert torch.equal(out.features, v.features[0, top])
    # r = 1: every dynamic token kept, every static position kept as its temporal mean (as officially)
    v = random_video(6, 3, 3, 8, 1, drift=0.05)
    out = make(retention=1.0)(v)
    s = out.stats
    assert s["retention_after_static"] == 1 and out.count == 6 * 9 - s["temporal_removed"]
    assert s["static_clusters"] == s["static_positions"]


def test_non_square_grid_only_changes_position_decoding():
    v = random_video(5, 3, 7, 12, 3, drift=0.1)
    w = VideoTokens(features=v.features, grid_hw=(1, 21), saliency=v.saliency)
    torch.manual_seed(0)
    a = make(retention=0.2)(v)
    torch.manual_seed(0)
    b = make(retention=0.2)(w)
    assert torch.equal(a.features, b.features)
    assert torch.equal(flat(a.positions, (3, 7)), flat(b.positions, (1, 21)))
    assert a.stats["static_positions"] > 0


def test_static_tokens_are_temporal_means_when_kept_alone():
    """With r = 1 each static slot (s, p) carries the mean of x_t(p) over its segment."""
    v = random_video(6, 2, 3, 8, 5, drift=0.05)
    out = make(retention=1.0, tau=0.5)(v)
    checked = 0
    for (s, e), m in zip(out.stats["segments"], out.stats["segment_static"]):
        if e > s and m:
            checked += m
            static = (ht.adjacent_similarity(v.features)[s:e] > 0.5).all(0).nonzero()[:, 0]
            rows = [i for i, p in enumerate(out.positions.tolist()) if p[0] == s and p[1] * 3 + p[2] in static.tolist()][:m]
            assert len(rows) == m
            assert torch.allclose(out.features[rows], v.features[s:e + 1, static].mean(0), atol=1e-6)
    assert checked > 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", CASES)
def test_cuda_matches_fixture(case):
    d = load(case)
    inp = {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in d["inputs"].items()}
    torch.manual_seed(0)
    out = make(retention=d["params"]["retention"])(video_of(inp))
    grid = tuple(inp["grid_hw"])
    sa, ia = flat(out.positions.cpu(), grid).sort()
    sb, ib = flat(d["output"]["positions"], grid).sort()
    assert torch.equal(sa, sb)
    assert torch.allclose(out.features.cpu()[ia], d["output"]["features"][ib], atol=1e-4, rtol=0)


def test_saturated_rebalancing_warns_instead_of_landing_silently_far_from_r():
    """A static video: HoliTom's official rule cannot reach r*T*N (r' saturates at 1); it says so."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 8, generator=g).expand(6, 16, 8).clone()
    v = VideoTokens(features=x, grid_hw=(4, 4), saliency=torch.full((6, 16), 1 / 16))
    with pytest.warns(UserWarning, match="temporally redundant"):
        out = make(retention=0.5)(v)
    assert out.stats["retention_after_static"] == 1 and out.count < 0.9 * out.stats["target"]
