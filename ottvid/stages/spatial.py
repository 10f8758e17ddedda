"""Spatial stage (Sec. 3.2, App. B.1): keep K tokens per frame, batched over frames.

`coverage` is OTT-Vid's saliency-weighted coverage (Eq. 1); `topk`, `divprune`, `adts`
and `scope` are the alternatives of Table A1. Every selector returns (T, K) local
indices sorted ascending (raster order), as the official code does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SPATIAL_METHODS = ("coverage", "topk", "divprune", "adts", "scope")


def keep_per_frame(N: int, r_s: float) -> int:
    """K = max(1, floor(N * r_s)) capped at N; r_s >= 1 keeps the whole frame (official Qwen path)."""
    if r_s >= 1.0:
        return N
    return min(N, max(1, int(N * r_s)))


def cosine_similarity(x: torch.Tensor, colocated: bool = False, chunk_elems: int = 1 << 22):
    """(T, N, D) -> (T, N, N) float32 cosine similarity (L2-normalised dot products).

    Computed a few frames at a time, so the unit-norm tokens never exist for the whole video
    at once (row-wise normalisation and per-frame `bmm`: the same bits as one batched call).
    With `colocated=True` also returns (T-1, N) sum_d xn_t xn_{t+1}, the co-located cosine of
    consecutive frames that alpha_t averages (`transport.pair_alpha`), from the same unit tokens.
    """
    T, N, D = x.shape
    sim = torch.empty(T, N, N, dtype=torch.float32, device=x.device)
    adj = torch.empty(max(T - 1, 0), N, dtype=torch.float32, device=x.device) if colocated else None
    step = max(1, chunk_elems // max(1, N * D))
    prev = None
    for i in range(0, T, step):
        j = min(T, i + step)
        xn = F.normalize(x[i:j].float(), p=2, dim=-1)
        torch.bmm(xn, xn.transpose(1, 2), out=sim[i:j])
        if colocated:
            if prev is not None:
                torch.sum(prev * xn[:1], dim=-1, out=adj[i - 1:i])
            if j - i > 1:
                torch.sum(xn[:-1] * xn[1:], dim=-1, out=adj[i:j - 1])
            prev = xn[-1:]
    return (sim, adj) if colocated else sim


def normalized_saliency(saliency: torch.Tensor) -> torch.Tensor:
    """w_{t,i} = s_{t,i} / (sum_n s_{t,n} + 1e-8) in float32."""
    w = saliency.float()
    return w / (w.sum(dim=-1, keepdim=True) + 1e-8)


def coverage_gains(sim_t: torch.Tensor, mu: torch.Tensor, cover_w: torch.Tensor, cand_w: torch.Tensor | None,
                   cand: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 1 marginal gains gain(j) = [w_j] sum_i c_i max(0, sim_ij - mu_i) of the (F, m) candidates
    `cand` of `frames` (default: every frame); `sim_t` is the similarity transposed, contiguous
    (column j of frame t = row t*N + j). As in a full step, the clamped (F, N, m) columns are
    contracted with the cover weights c by one transposed `bmm`, so a candidate's gain has the
    same bits whichever subset it is evaluated in (checked in the tests).
    """
    T, N, _ = sim_t.shape
    F_, m = cand.shape
    base = (torch.arange(T, device=cand.device) if frames is None else frames).view(-1, 1) * N
    if frames is not None:
        mu, cover_w = mu.index_select(0, frames), cover_w.index_select(0, frames)
        cand_w = None if cand_w is None else cand_w.index_select(0, frames)
    cols = sim_t.reshape(T * N, N).index_select(0, (base + cand).reshape(-1)).view(F_, m, N)
    diff = cols.sub_(mu.unsqueeze(1)).clamp_min_(0).transpose(1, 2).contiguous()   # (F, N, m)
    gain = torch.bmm(diff.transpose(1, 2), cover_w.unsqueeze(2)).squeeze(2)
    return gain if cand_w is None else torch.gather(cand_w, 1, cand) * gain


def coverage_select(sim: torch.Tensor, w: torch.Tensor, K: int, *, weight: str = "covered",
                    probe: int = 16) -> torch.Tensor:
    """Greedy saliency-weighted coverage (Eq. 1), batched over frames.

    weight="covered" (OTT-Vid): gain(j) = sum_i w_i max(0, sim_ij - mu_i).
    weight="candidate" (SCOPE): gain(j) = w_j * sum_i (1/N) max(0, sim_ij - mu_i).
    mu starts at 0; ties go to the lowest index.

    Lazy greedy, exact: covers mu only grow, so a gain computed at an earlier step bounds the
    gain now from above. Each step re-evaluates the `probe` candidates of largest bound per
    frame; where a remaining bound still comes within a relative 1e-6 of the best fresh gain,
    every such candidate is evaluated too. The pick is the argmax of the fresh gains (lowest
    index on ties), which is the full re-evaluation's argmax: every fresh gain is computed as
    in the full step (`coverage_gains`) and no unevaluated bound can reach it.
    """
    T, N, _ = sim.shape
    K = min(K, N)
    dev = sim.device
    mu = sim.new_zeros(T, N)
    cover_w = w if weight == "covered" else torch.full_like(w, 1.0 / N)
    cand_w = w if weight == "candidate" else None
    picks = torch.empty(T, K, dtype=torch.long, device=dev)
    neg_inf = float("-inf")
    # step 0 (mu = 0): every gain, as one full bmm
    gain = torch.bmm(sim.clamp_min(0).transpose(1, 2), cover_w.unsqueeze(2)).squeeze(2)
    bound = gain if cand_w is None else cand_w * gain
    sim_t = sim.transpose(1, 2).contiguous()
    rows = torch.arange(T, device=dev) * N
    fresh = bound
    for k in range(K):
        if k > 0:
            stale = bound
            fresh = torch.full_like(bound, neg_inf)
            frames, m = None, min(probe, N)
            for _ in range(2):
                src = stale if frames is None else stale.index_select(0, frames)
                vals, cand = src.topk(m, dim=1)
                g = coverage_gains(sim_t, mu, cover_w, cand_w, cand, frames).masked_fill_(vals == neg_inf, neg_inf)
                flat = ((rows.view(-1, 1) if frames is None else rows[frames].view(-1, 1)) + cand).reshape(-1)
                fresh.view(-1).index_copy_(0, flat, g.reshape(-1))
                stale = stale.clone() if frames is None else stale
                stale.view(-1).index_fill_(0, flat, neg_inf)
                best = fresh.amax(dim=1, keepdim=True)
                reach = stale >= best - 1e-6 * best.abs()      # bounds that could still tie or win
                need = reach.sum(dim=1)
                if not bool(need.any()):
                    break
                frames = need.nonzero().squeeze(1)
                m = int(need.max())
            bound = torch.maximum(fresh, stale)
        best = fresh.argmax(dim=1)
        picks[:, k] = best
        bound = bound.scatter(1, best.unsqueeze(1), neg_inf)
        mu = torch.maximum(mu, sim_t.reshape(T * N, N).index_select(0, rows + best))
    return picks.sort(dim=1).values


def topk_select(saliency: torch.Tensor, K: int) -> torch.Tensor:
    """Saliency top-K per frame (Table A1 'Saliency'); ties to the lower index."""
    order = torch.sort(saliency.float(), dim=1, descending=True, stable=True).indices
    return order[:, :K].sort(dim=1).values


def divprune_select(sim: torch.Tensor, K: int) -> torch.Tensor:
    """DivPrune max-min diversity on cosine distance (no saliency).

    First pick: the token farthest from its nearest other token; then repeatedly the
    token whose distance to the selected set is largest. Selected tokens are masked so
    the K picks stay distinct even on duplicate tokens.
    """
    T, N, _ = sim.shape
    K = min(K, N)
    dist = 1.0 - sim
    picks = torch.empty(T, K, dtype=torch.long, device=sim.device)
    if N == 1:
        return picks.zero_()
    first = torch.topk(dist, 2, dim=1, largest=False).values[:, 1, :]
    picks[:, 0] = first.argmax(dim=1)
    chosen = torch.zeros(T, N, dtype=torch.bool, device=sim.device)
    chosen.scatter_(1, picks[:, :1], True)
    min_dist = torch.gather(dist, 1, picks[:, :1].unsqueeze(2).expand(T, 1, N)).squeeze(1)
    for k in range(1, K):
        score = min_dist.masked_fill(chosen, float("-inf"))
        best = score.argmax(dim=1)
        picks[:, k] = best
        chosen.scatter_(1, best.unsqueeze(1), True)
        row = torch.gather(dist, 1, best.view(T, 1, 1).expand(T, 1, N)).squeeze(1)
        min_dist = torch.minimum(min_dist, row)
    return picks.sort(dim=1).values


def select(spatial: str, features: torch.Tensor, saliency: torch.Tensor, K: int,
           sim: torch.Tensor | None = None) -> torch.Tensor:
    """Dispatch to the spatial selector named `spatial`; returns (T, K) sorted local indices."""
    if spatial == "topk":
        return topk_select(saliency, K)
    if spatial == "adts":
        from baselines.flashvid import adts_select  # FlashVID's ADTS, reused as in Table A1

        return adts_select(features, saliency, K).sort(dim=1).values
    if sim is None:
        sim = cosine_similarity(features)
    if spatial == "coverage":
        return coverage_select(sim, normalized_saliency(saliency), K, weight="covered")
    if spatial == "scope":
        return coverage_select(sim, normalized_saliency(saliency), K, weight="candidate")
    if spatial == "divprune":
        return divprune_select(sim, K)
    raise ValueError(f"spatial: must be one of {list(SPATIAL_METHODS)}, got {spatial!r}")
