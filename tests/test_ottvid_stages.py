"""Unit tests per OTT-Vid stage, each against an independent oracle."""
import math

import numpy as np
import ot
import pytest
import torch

from ottvid.stages import budget, mass, merge, spatial, transport


def _random_problem(P, K, seed):
    g = torch.Generator().manual_seed(seed)
    C = torch.rand(P, K, K, generator=g, dtype=torch.float64)
    a = torch.rand(P, K, generator=g, dtype=torch.float64) + 0.1
    b = torch.rand(P, K, generator=g, dtype=torch.float64) + 0.1
    return a, b, C


@pytest.mark.filterwarnings("ignore:Sinkhorn did not converge")  # stopThr=-1: exactly 200 iterations, by design
@pytest.mark.parametrize("eps,method", [(0.01, "sinkhorn_log"), (0.02, "sinkhorn_log"), (0.1, "sinkhorn")])
def test_sinkhorn_matches_pot(eps, method):
    a, b, C = _random_problem(5, 12, seed=int(eps * 1000))
    plan = transport.sinkhorn(a, b, C, eps, iters=200)
    W = transport.transport_difficulty(plan, C)
    for p in range(5):
        an, bn = (a[p] / a[p].sum()).numpy(), (b[p] / b[p].sum()).numpy()
        ref = ot.sinkhorn(an, bn, C[p].numpy(), reg=eps, method=method, numItermax=200, stopThr=-1.0)
        np.testing.assert_allclose(plan[p].numpy(), ref, rtol=1e-7, atol=1e-12)
        np.testing.assert_allclose(W[p].item(), float((ref * C[p].numpy()).sum()), rtol=1e-7)
        # rows are updated last, so the frame-t marginal is exact
        np.testing.assert_allclose(plan[p].sum(1).numpy(), an, rtol=1e-9)


def test_sinkhorn_float32_log_domain_stays_finite_at_small_eps():
    a, b, C = _random_problem(3, 30, seed=1)
    plan = transport.sinkhorn(a.float(), b.float(), C.float() * 3, eps=0.01, iters=200)
    assert torch.isfinite(plan).all()
    torch.testing.assert_close(plan.sum((1, 2)), torch.ones(3), atol=1e-4, rtol=0)


def test_total_budget_follows_official_rounding():
    # ott_a: T=16, 14x14, r=0.25, K=74 -> 1184 - 784 = 400 (not K*T*(1-r_t) = 402.85)
    assert budget.total_budget(16, 74, 196, 0.25) == 400
    assert budget.total_budget(8, 49, 196, 0.25) == 0          # gamma = 0
    assert budget.total_budget(2, 1, 5, 0.5) == 0               # round(5.0) = 5 > T*K


def test_allocate_sums_to_total_and_respects_caps():
    W = torch.tensor([0.10, 0.11, 0.5, 0.9, 0.12])
    caps = torch.full((5,), 9, dtype=torch.long)
    a = budget.allocate(W, 30, caps, tau_b=0.05)
    assert int(a.B_t.sum()) == 30 and bool((a.B_t <= caps).all())
    assert a.overflow >= 1 and a.rounds >= 2          # the cheap pairs overflow and are re-spread
    # monotone: a harder pair never gets more budget than an easier one
    order = torch.argsort(W)
    assert bool((a.B_t[order][:-1] >= a.B_t[order][1:]).all())


def test_allocate_uniform_and_infeasible():
    W = torch.rand(7)
    caps = torch.full((7,), 100, dtype=torch.long)
    u = budget.allocate(W, 23, caps, tau_b=math.inf)
    assert int(u.B_t.sum()) == 23 and int(u.B_t.max() - u.B_t.min()) <= 1
    small = budget.allocate(W, 50, torch.full((7,), 3, dtype=torch.long), tau_b=0.3)
    assert small.B_t.tolist() == [3] * 7 and small.unused == 50 - 21


def _sequential_greedy(plan, B):
    """Oracle: the official walk, one entry at a time: fetch min(5B, K^2) entries by torch.topk,
    mask them, claim each column once in that order, fetch again while short."""
    K = plan.shape[1]
    flat = plan.flatten().clone()
    taken, out, fetched = set(), {}, 0
    while len(out) < B and fetched < K * K:
        k = min(5 * B, K * K - fetched)
        idx = torch.topk(flat, k).indices
        flat[idx] = -math.inf
        fetched += k
        for f in idx.tolist():
            if len(out) == B:
                break
            i, j = divmod(f, K)
            if j not in taken:
                taken.add(j)
                out[j] = i
    return out


@pytest.mark.parametrize("seed", range(8))
def test_greedy_matches_equals_sequential_walk(seed):
    g = torch.Generator().manual_seed(seed)
    P, K = 4, 9 + 10 * (seed % 4 == 3)
    plan = torch.rand(P, K, K, generator=g)
    if seed % 2:  # many exact ties, as with uniform mass
        plan = (plan * 4).floor() / 4
    B = torch.randint(0, K, (P,), generator=g)
    acc, row = merge.greedy_matches(plan, B)
    for p in range(P):
        ref = _sequential_greedy(plan[p], int(B[p]))
        got = {int(j): int(row[p, j]) for j in acc[p].nonzero().flatten()}
        assert got == ref


def test_union_merge_chains_average_uniformly_and_prune_drops_subtree():
    K = 2
    kept = torch.tensor([[[1.0], [10.0]], [[2.0], [20.0]], [[3.0], [30.0]]])
    C = torch.zeros(2, K, K)
    C[1, 1, 1] = 0.9  # (1,1) <- (2,1) is an expensive match: pruned
    accepted = torch.tensor([[True, True], [True, True]])
    parent_row = torch.tensor([[0, 0], [0, 1]])  # (0,0)<-(1,0), (0,0)<-(1,1), (1,0)<-(2,0), (1,1)<-(2,1)
    res = merge.union_merge(kept, C, accepted, parent_row, tau_c=0.3)
    assert res.keep.tolist() == [True, True, False, False, False, False]
    # component of (0,0): {1, 2, 20, 3} -> uniform mean; (2,1) was pruned, not averaged
    assert res.features[0].item() == pytest.approx((1 + 2 + 20 + 3) / 4)
    assert res.n_merged == 3 and res.n_pruned == 1 and res.n_discarded == 1 and res.max_span == 3


def test_coverage_select_matches_bruteforce_greedy():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 12, 5, generator=g)
    s = torch.rand(2, 12, generator=g)
    sim = spatial.cosine_similarity(x)
    w = spatial.normalized_saliency(s)
    got = spatial.coverage_select(sim, w, 4)
    for t in range(2):
        chosen, mu = [], torch.zeros(12)
        for _ in range(4):
            gains = [(-math.inf if j in chosen else float((w[t] * (sim[t, :, j] - mu).clamp_min(0)).sum()))
                     for j in range(12)]
            j = int(np.argmax(gains))
            chosen.append(j)
            mu = torch.maximum(mu, sim[t, :, j])
        assert got[t].tolist() == sorted(chosen)


def test_loo_mass_definition():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 10, 6, generator=g)
    w = torch.rand(1, 10, generator=g)
    w = w / w.sum()
    sim = spatial.cosine_similarity(x)
    sel = torch.tensor([[1, 4, 7]])
    m = mass.loo_mass(sim, w, sel, tau_m=0.3)
    S = sim[0][:, sel[0]]
    top = S.topk(2, dim=1)
    u = torch.zeros(3)
    for i in range(10):
        u[top.indices[i, 0]] += w[0, i] * (top.values[i, 0] - top.values[i, 1])
    ref = torch.softmax(-(u / (u.max() + 1e-8)) / 0.3, 0)
    torch.testing.assert_close(m[0], ref)
    assert torch.equal(mass.loo_mass(sim, w, sel, math.inf), torch.ones(1, 3))


def test_alpha_variants():
    x = torch.randn(3, 16, 8)
    x[1] = x[0]  # identical pair -> s = 1 -> alpha = 0.5
    a = transport.pair_alpha(x, (4, 4), "position")
    assert a[0].item() == pytest.approx(0.5, abs=1e-6)
    assert torch.all((a >= 0.5) & (a <= 1.0))
    assert transport.pair_alpha(x, (4, 4), "global")[0].item() == pytest.approx(0.5, abs=1e-6)
    assert transport.pair_alpha(x, (4, 4), "kernel")[0].item() == pytest.approx(0.5, abs=1e-6)
    assert transport.pair_alpha(-x, (4, 4), "position").shape == (2,)
    assert transport.pair_alpha(x, (4, 4), 0.7).tolist() == pytest.approx([0.7, 0.7])
    y = torch.randn(2, 16, 8)
    y[1] = -y[0]  # anti-correlated: s < 0 clamps to alpha = 1
    assert transport.pair_alpha(y, (4, 4), "position")[0].item() == pytest.approx(1.0)


def test_cost_range_and_locality():
    feat = torch.randn(2, 5, 4)
    pos = transport.grid_coords(5, 1, torch.device("cpu")).expand(2, 5, 2)
    C = transport.pair_cost(feat, pos, torch.tensor([1.0]))
    assert C.min() >= 0 and C.max() <= 1 + 1e-6
    same = transport.pair_cost(feat.expand(2, 5, 4).clone() * 0 + 1, pos, torch.tensor([0.5]))
    # identical features: cost is the scaled distance only, zero on the diagonal
    assert torch.allclose(torch.diagonal(same[0]), torch.zeros(5), atol=1e-6)


@pytest.mark.parametrize("name", ["topk", "divprune", "scope", "coverage", "adts"])
def test_spatial_variants_pick_K_distinct(name):
    x = torch.randn(3, 20, 6)
    x[:, 10:] = x[:, :10]  # duplicates must not be picked twice
    s = torch.softmax(torch.randn(3, 20), -1)
    sel = spatial.select(name, x, s, 7)
    assert sel.shape == (3, 7)
    assert all(len(set(r.tolist())) == 7 for r in sel)
    assert torch.equal(sel, sel.sort(dim=1).values)


def _full_greedy(sim, w, K, weight, gains=None):
    """The official greedy: every gain re-evaluated at every step (one bmm), ties to the lowest index.
    `gains(sim, mu, cover_w, cand_w)` replaces the official step's gains (another summation order)."""
    T, N, _ = sim.shape
    mu, chosen = sim.new_zeros(T, N), torch.zeros(T, N, dtype=torch.bool)
    picks = torch.empty(T, K, dtype=torch.long)
    cover_w = w if weight == "covered" else torch.full_like(w, 1.0 / N)
    for k in range(K):
        if gains is None:
            gain = torch.bmm((sim - mu.unsqueeze(2)).clamp_min(0).transpose(1, 2), cover_w.unsqueeze(2)).squeeze(2)
            gain = w * gain if weight == "candidate" else gain
        else:
            gain = gains(sim, mu, cover_w, w if weight == "candidate" else None)
        best = torch.where(chosen, torch.tensor(float("-inf")), gain).argmax(dim=1)
        picks[:, k] = best
        chosen.scatter_(1, best.unsqueeze(1), True)
        mu = torch.maximum(mu, torch.gather(sim, 2, best.view(T, 1, 1).expand(T, N, 1)).squeeze(2))
    return picks.sort(dim=1).values


@pytest.mark.parametrize("seed", range(40))
def test_lazy_coverage_equals_full_reevaluation(seed):
    """Issue 12: the lazy greedy picks exactly what re-evaluating every gain picks (duplicates -> ties)."""
    g = torch.Generator().manual_seed(seed)
    T, N, D = int(torch.randint(1, 5, (1,), generator=g)), int(torch.randint(2, 90, (1,), generator=g)), 16
    x = torch.randn(T, N, D, generator=g) + torch.randn(1, 1, D, generator=g)
    if seed % 3 == 0:
        x[:, N // 2:] = x[:, :N - N // 2].clone()
    s = torch.rand(T, N, generator=g) ** 3 if seed % 5 else torch.ones(T, N)
    sim, w = spatial.cosine_similarity(x), spatial.normalized_saliency(s)
    K = int(torch.randint(1, N + 1, (1,), generator=g))
    skew = sim + 1e-3 * torch.rand(sim.shape, generator=g).triu(1)       # not symmetric: the transposed copy
    for s_ in (sim, skew):
        for weight in ("covered", "candidate"):
            assert torch.equal(spatial.coverage_select(s_, w, K, weight=weight), _full_greedy(s_, w, K, weight))


@pytest.mark.parametrize("N", [64, 300, 702])
def test_lazy_gains_bracket_the_official_ones(N):
    """Every float32 evaluation of a gain (the official step's among them) lies within `Margins` of
    the compiled float64 gains: from a fresh evaluation (`_gain`, `_column_sums` at mu = 0), and
    the bound kept from an official gain (`upper_from_official`)."""
    from ottvid.stages import lazy

    g = torch.Generator().manual_seed(N)
    x = torch.randn(3, N, 32, generator=g) + 0.5
    sim, w = spatial.cosine_similarity(x), spatial.normalized_saliency(torch.rand(3, N, generator=g) ** 4)
    mu = sim[:, :, 3].clamp_min(0)
    m = lazy.Margins.for_tokens(N)
    assert 0 < m.gamma < 1e-4 and m.eps64 < 1e-12
    for t in range(3):
        for cover, cand_w in ((w, None), (torch.full_like(w, 1 / N), w)):
            official = spatial.official_gains(sim, mu, cover, cand_w)[t].double().numpy()
            at_zero = spatial.official_gains(sim, torch.zeros_like(mu), cover, cand_w)[t].double().numpy()
            s, c = sim[t].numpy(), cover[t].numpy()
            fresh = np.array([lazy._gain(np.ascontiguousarray(s[:, j]), mu[t].numpy(), c) for j in range(N)])
            zero = np.empty(N)
            lazy._column_sums(s, c, zero)
            if cand_w is not None:
                fresh, zero = fresh * cand_w[t].double().numpy(), zero * cand_w[t].double().numpy()
            for ours, theirs in ((fresh, official), (zero, at_zero)):
                lo = ours * (1 - m.eps64) * (1 - m.gamma) - m.delta
                hi = ours * (1 + m.eps64) * (1 + m.gamma) + m.delta
                assert ((theirs >= lo) & (theirs <= hi)).all()
                assert (m.upper_from_official(theirs.astype(np.float32)) >= ours * (1 - m.eps64)).all()
            # the official sums differ from exact ones: the margin is not vacuous here
            assert (official != fresh.astype(np.float32)).any()


@pytest.mark.parametrize("seed", range(12))
def test_lazy_picks_are_the_official_ones_in_any_summation_order(seed, monkeypatch):
    """The certification holds for any float32 order of the official sums, not just this machine's
    BLAS: with the official gains moved by up to N u / 2 relative (a fixed pattern per token, as
    another kernel would move them) and near-duplicate tokens (gains within that much), the lazy
    picks equal the full greedy on the moved gains. Fails with a zero margin."""
    g = torch.Generator().manual_seed(100 + seed)
    T, N = 1 + seed % 3, 40 + 11 * seed
    x = torch.randn(T, N, 16, generator=g) + torch.randn(1, 1, 16, generator=g)
    half = N // 2
    x[:, half:2 * half] = x[:, :half] * (1 + 1e-6 * torch.randn(T, half, 1, generator=g)) if seed % 2 else x[:, :half]
    sim, w = spatial.cosine_similarity(x), spatial.normalized_saliency(torch.rand(T, N, generator=g) ** 2)
    K = N // 2
    pattern = 1 + (N * 2.0 ** -24) / 2 * (2 * torch.rand(T, N, generator=g) - 1)
    official_rows = spatial.official_rows

    def moved(sim_, mu, cover_w, cand_w):
        return spatial.official_gains(sim_, mu, cover_w, cand_w) * pattern

    def moved_rows(sim_, mu, cover_w, cand_w, frames, min_batch):
        return official_rows(sim_, mu, cover_w, cand_w, frames, min_batch) * pattern[frames]

    monkeypatch.setattr(spatial, "official_rows", moved_rows)
    for wt in ("covered", "candidate"):
        assert torch.equal(spatial.coverage_select(sim, w, K, weight=wt), _full_greedy(sim, w, K, wt, gains=moved))


def test_official_rows_have_the_whole_steps_bits():
    """A near-tie's official gains come from a few frames' batch: the bits of the call on all frames."""
    g = torch.Generator().manual_seed(8)
    T, N = 6, 300
    x = torch.randn(T, N, 32, generator=g) + torch.randn(1, 1, 32, generator=g)
    sim, w = spatial.cosine_similarity(x), spatial.normalized_saliency(torch.rand(T, N, generator=g))
    mu = sim[:, :, 7].clamp_min(0)
    before = torch.get_num_threads()
    try:
        for threads in sorted({1, 2, before}):
            torch.set_num_threads(threads)
            for cand_w in (None, w):
                full = spatial.official_gains(sim, mu, w, cand_w)
                for frames in ([4], [0, 5], [1, 2, 3]):
                    f = torch.tensor(frames)
                    got = spatial.official_rows(sim, mu, w, cand_w, f, min(T, max(2, threads)))
                    assert torch.equal(got, full[f])
    finally:
        torch.set_num_threads(before)


def test_official_loop_is_the_full_reevaluation():
    """The CUDA path (`_official_loop`) is the official greedy; checked here on CPU."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 50, 16, generator=g) + 0.4
    x[:, 25:] = x[:, :25].clone()
    sim, w = spatial.cosine_similarity(x), spatial.normalized_saliency(torch.rand(3, 50, generator=g))
    for wt in ("covered", "candidate"):
        cover_w = w if wt == "covered" else torch.full_like(w, 1 / 50)
        got = spatial._official_loop(sim, cover_w, w if wt == "candidate" else None, 30)
        assert torch.equal(got, _full_greedy(sim, w, 30, wt))


def test_sinkhorn_log_domain_has_torch_logsumexp_bits():
    """Reused buffers, skipped inf guard and the exp floor leave the plan bit for bit unchanged."""
    g = torch.Generator().manual_seed(1)
    P, K = 6, 40
    C, ma, mb = torch.rand(P, K, K, generator=g), torch.rand(P, K, generator=g), torch.rand(P, K, generator=g)
    eps, iters = 0.01, 60
    a, b = ma / ma.sum(-1, keepdim=True), mb / mb.sum(-1, keepdim=True)
    la, lb, lK = a.clamp_min(1e-30).log(), b.clamp_min(1e-30).log(), -C / eps
    lu, lv = torch.zeros_like(la), torch.zeros_like(lb)
    for _ in range(iters):
        lv = lb - torch.logsumexp(lK + lu.unsqueeze(-1), dim=-2)
        lu = la - torch.logsumexp(lK + lv.unsqueeze(-2), dim=-1)
    ref = (lu.unsqueeze(-1) + lK + lv.unsqueeze(-2)).exp()
    assert torch.equal(transport.sinkhorn(ma, mb, C, eps, iters), ref)


def test_gemm_spans_hold_at_least_the_thread_count():
    before = torch.get_num_threads()
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    try:
        for threads in (1, 2, 3, 8):
            torch.set_num_threads(threads)
            for n in (1, 2, 5, 7, 16, 33):
                for per in (0, 1, 2, 3, 4, 9):
                    spans = spatial.gemm_spans(n, per, cpu)
                    assert spans[0][0] == 0 and spans[-1][1] == n
                    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
                    assert all(j - i >= min(n, max(2, threads)) for i, j in spans)
        assert spatial.gemm_spans(33, 2, cuda) == [(0, 33)]   # the official single call
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("T, N", [(5, 196), (3, 702)])
def test_similarity_at_the_llm_width_has_the_one_bmm_bits(T, N):
    """At D = 3584 (the 7B LLMs) MKL's kernels change with the batch and the blocks: the spans keep
    the bits of the official single bmm, at this thread count and at 2."""
    g = torch.Generator().manual_seed(N)
    x = torch.randn(T, N, 3584, generator=g) + 0.1
    before = torch.get_num_threads()
    try:
        for threads in sorted({before, 2}):
            torch.set_num_threads(threads)
            xn = torch.nn.functional.normalize(x, dim=-1)
            one = torch.bmm(xn, xn.transpose(1, 2))
            pairs = (xn[:-1] * xn[1:]).sum(-1)
            for chunk in (1, 2 * N * 3584, 1 << 22):
                assert torch.equal(spatial.cosine_similarity(x, chunk_elems=chunk), one)
                sim, adj = spatial.cosine_similarity(x, colocated=True, chunk_elems=chunk)
                assert torch.equal(sim, one) and torch.equal(adj, pairs)   # co-located cosines, one pair at a time
    finally:
        torch.set_num_threads(before)


def test_cosine_similarity_chunks_keep_the_whole_video_bits():
    """Reused unit-token buffer and chunked co-located cosines: the bits of the one-shot formulas."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(7, 130, 40, generator=g)
    xn = torch.nn.functional.normalize(x, p=2, dim=-1)
    for chunk in (130 * 40, 3 * 130 * 40, 1 << 22):
        sim, adj = spatial.cosine_similarity(x, colocated=True, chunk_elems=chunk)
        assert torch.equal(sim, torch.bmm(xn, xn.transpose(1, 2)))
        assert torch.equal(adj, (xn[:-1] * xn[1:]).sum(-1))


def test_pair_cost_chunks_keep_the_one_shot_bits():
    """Issue 12: chunked unit tokens and the in-place 1 - max(0, cos) give the official formula's bits."""
    g = torch.Generator().manual_seed(9)
    T, K, D = 9, 13, 48
    feat, pos = torch.randn(T, K, D, generator=g), torch.rand(T, K, 2, generator=g)
    alpha = 0.5 + 0.5 * torch.rand(T - 1, generator=g)
    xn = torch.nn.functional.normalize(feat, dim=-1)
    c_sem = 1.0 - torch.bmm(xn[:-1], xn[1:].transpose(1, 2)).clamp(min=0.0)
    c_loc = (pos[:-1].unsqueeze(2) - pos[1:].unsqueeze(1)).norm(dim=-1) / math.sqrt(2.0)
    a = alpha.view(-1, 1, 1)
    ref = a * c_sem + (1.0 - a) * c_loc
    for chunk in (1, 3 * K * D, 1 << 22):
        assert torch.equal(transport.pair_cost(feat, pos, alpha, chunk_elems=chunk), ref)


def test_pair_cost_at_the_llm_width_has_the_one_bmm_bits():
    """Pairs of kept tokens at D = 3584: the official single bmm's bits whatever the span of pairs."""
    g = torch.Generator().manual_seed(2)
    T, K, D = 9, 39, 3584
    feat, pos = torch.randn(T, K, D, generator=g), torch.rand(T, K, 2, generator=g)
    alpha = 0.5 + 0.5 * torch.rand(T - 1, generator=g)
    a_n, b_n = torch.nn.functional.normalize(feat[:-1], dim=-1), torch.nn.functional.normalize(feat[1:], dim=-1)
    c_loc = (pos[:-1].unsqueeze(2) - pos[1:].unsqueeze(1)).norm(dim=-1) / math.sqrt(2.0)
    a = alpha.view(-1, 1, 1)
    before = torch.get_num_threads()
    try:
        for threads in sorted({before, 2}):   # one pair per bmm sums otherwise at 2 threads
            torch.set_num_threads(threads)
            ref = a * (1.0 - torch.bmm(a_n, b_n.transpose(1, 2)).clamp(min=0.0)) + (1.0 - a) * c_loc
            for chunk in (1, 3 * K * D, 1 << 22):
                assert torch.equal(transport.pair_cost(feat, pos, alpha, chunk_elems=chunk), ref)
    finally:
        torch.set_num_threads(before)


def test_budget_remainders_follow_topk_ties():
    """Mirrored pairs (static video) tie exactly in their fractional shares: the official
    `torch.topk` order decides who gets the +1 (here pair 2), not the lower index (pair 0)."""
    share = torch.full((5,), 2.5)
    got = budget._largest_remainder(share, 11)
    assert got.tolist() == [2, 2, 3, 2, 2]
    want = share.floor().long()
    want[torch.topk(share - share.floor(), k=1).indices] += 1
    assert torch.equal(got, want)


def test_sequential_loops_compile_in_torchscript():
    """The Sinkhorn loop must not silently fall back to Python (it would be ~1.2x slower)."""
    from ottvid.stages import script

    assert script.scripted(transport._log_sinkhorn_loop) is not None


@pytest.mark.parametrize("seed", range(6))
def test_scripted_loops_have_the_eager_bits(seed, monkeypatch):
    """TorchScript with optimisation off runs the same kernels: the plans equal the Python loop's."""
    g = torch.Generator().manual_seed(seed)
    P, K = 3 + seed, 5 + 3 * seed
    C, ma, mb = torch.rand(P, K, K, generator=g), torch.rand(P, K, generator=g), torch.rand(P, K, generator=g)
    C_inf = C.clone()
    C_inf[0, :, 1] = math.inf      # the inf-guarded log-sum-exp
    ma_zero = ma.clone()
    ma_zero[0, 0] = 0.0

    def outputs():
        return [transport.sinkhorn(a, mb, c, 0.01, 50) for a, c in ((ma, C), (ma, C_inf), (ma_zero, C))]

    scripted = outputs()
    monkeypatch.setenv("OTTVID_EAGER", "1")
    eager = outputs()
    for s_out, e_out in zip(scripted, eager):
        assert torch.equal(s_out, e_out)


def test_script_falls_back_to_python_with_a_warning():
    from ottvid.stages import script

    def not_scriptable(x: torch.Tensor, **kw):   # **kwargs: outside TorchScript
        return x + 1

    with pytest.warns(UserWarning, match="could not compile .*not_scriptable"):
        assert torch.equal(script.run(not_scriptable, torch.zeros(2)), torch.ones(2))


def test_compiled_without_a_cache_location_still_compiles():
    """A function numba cannot cache (here: no source file; elsewhere: no writable cache dir) is
    compiled per process instead of failing at import."""
    import numba

    from ottvid.stages import lazy

    scope = {}
    exec("def double(a):\n    return 2 * a\n", scope)
    with pytest.raises(RuntimeError, match="cannot cache"):
        numba.njit(cache=True)(scope["double"])
    assert lazy.compiled()(scope["double"])(21) == 42
