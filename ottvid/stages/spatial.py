"""Spatial stage (Sec. 3.2, App. B.1): keep K tokens per frame, batched over frames.

`coverage` is OTT-Vid's saliency-weighted coverage (Eq. 1); `topk`, `divprune`, `adts`
and `scope` are the alternatives of Table A1. Every selector returns (T, K) local
indices sorted ascending (raster order), as the official code does.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

SPATIAL_METHODS = ("coverage", "topk", "divprune", "adts", "scope")


def keep_per_frame(N: int, r_s: float, by_round: bool = False) -> int:
    """K = max(1, floor(N * r_s)) capped at N (official Qwen path); by_round=True: round(N * r_s)
    (Python float64, half to even; official LLaVA path). r_s >= 1 keeps the whole frame."""
    if r_s >= 1.0:
        return N
    return min(N, max(1, int(round(N * r_s)) if by_round else int(N * r_s)))


def gemm_spans(n: int, per: int, device: torch.device) -> list[tuple[int, int]]:
    """Spans of the n problems of a batched GEMM that give each problem the bits of one call on all n.

    The official code makes one `bmm` over every frame (or pair). A BLAS picks its kernel and
    its thread split from the shapes, so a problem's bits can change with the batch size: MKL
    splits a batch smaller than its thread count inside the GEMMs, with other sums (measured:
    one 196-token frame at 2 threads; batches of 4 at 16). On CPU the spans therefore hold at
    least `torch.get_num_threads()` problems, and at least `per` (rounded down to an even
    number, at least 2: a pair of frames splits evenly over 2 threads); a short remainder joins
    the last span. Elsewhere (CUDA) one span: the official call itself.
    """
    if device.type != "cpu" or n == 0:
        return [(0, n)]
    per = max(2, per)
    per = max(per - per % 2, torch.get_num_threads())
    cuts = list(range(0, n, per)) + [n]
    if len(cuts) > 2 and cuts[-1] - cuts[-2] < per:
        cuts.pop(-2)
    return list(zip(cuts[:-1], cuts[1:]))


def official_batch(T: int, device: torch.device) -> int:
    """Problems a batch must hold to give each of them the bits of the official one call on all T
    (frames or pairs): on CPU at least the thread count, and never one out of several, i.e.
    min(T, max(2, threads)) (as for `gemm_spans`); elsewhere (CUDA) all T, the call itself."""
    return min(T, max(2, torch.get_num_threads())) if device.type == "cpu" else T


def cosine_similarity(x: torch.Tensor, colocated: bool = False, chunk_elems: int = 1 << 22):
    """(T, N, D) -> (T, N, N) float32 cosine similarity (L2-normalised dot products).

    The official `bmm` of the unit tokens, made over the frame spans of `gemm_spans` (the bits
    of one call on the whole video) in one reused buffer of unit tokens (row-wise
    normalisation: the same bits as normalising the whole video at once). With
    `colocated=True` also returns (T-1, N) sum_d xn_t xn_{t+1}, the co-located cosine of
    consecutive frames that alpha_t averages (`transport.pair_alpha`), from the same unit tokens:
    elementwise products then the sum over D, the bits of (xn[:-1] * xn[1:]).sum(-1) (each row
    summed alone), made one pair at a time so that a pair's products are still in cache for
    the sum (measured 1.7-1.8x faster than all pairs at once at D = 3584).
    """
    T, N, D = x.shape
    sim = torch.empty(T, N, N, dtype=torch.float32, device=x.device)
    adj = torch.empty(max(T - 1, 0), N, dtype=torch.float32, device=x.device) if colocated else None
    spans = gemm_spans(T, chunk_elems // max(1, N * D), x.device)
    rows = max(j - i for i, j in spans)
    buf = torch.empty(rows, N, D, dtype=torch.float32, device=x.device)
    prod = torch.empty(N, D, dtype=torch.float32, device=x.device) if colocated and T > 1 else None
    prev = torch.empty(N, D, dtype=torch.float32, device=x.device) if colocated and len(spans) > 1 else None
    for i, j in spans:
        xn = F.normalize(x[i:j].float(), p=2, dim=-1, out=buf[:j - i])
        torch.bmm(xn, xn.transpose(1, 2), out=sim[i:j])
        if colocated:
            if i > 0:   # the pair across the spans: the previous span's last frame
                torch.sum(torch.mul(prev, xn[0], out=prod), dim=-1, out=adj[i - 1])
            for p in range(j - i - 1):
                torch.sum(torch.mul(xn[p], xn[p + 1], out=prod), dim=-1, out=adj[i + p])
            if j < T:
                prev.copy_(xn[-1])
    return (sim, adj) if colocated else sim


def normalized_saliency(saliency: torch.Tensor) -> torch.Tensor:
    """w_{t,i} = s_{t,i} / (sum_n s_{t,n} + 1e-8) in float32."""
    w = saliency.float()
    return w / (w.sum(dim=-1, keepdim=True) + 1e-8)


def official_gains(sim: torch.Tensor, mu: torch.Tensor, cover_w: torch.Tensor,
                   cand_w: Optional[torch.Tensor]) -> torch.Tensor:
    """(T, N) gains of every token of every frame, computed as the official batched step does
    (one (T, N, N) clamped difference, one transposed `bmm` with the (T, N, 1) cover weights,
    then w_j times that for SCOPE): the same calls on the same shapes, hence its bits on any
    device. A frame's gains depend only on its own rows of `sim` and `mu`."""
    diff = (sim - mu.unsqueeze(2)).clamp_min(0)
    gain = torch.bmm(diff.transpose(1, 2), cover_w.unsqueeze(2)).squeeze(2)
    if cand_w is not None:
        gain = cand_w * gain
    return gain


def official_rows(sim: torch.Tensor, mu: torch.Tensor, cover_w: torch.Tensor, cand_w: Optional[torch.Tensor],
                  frames: torch.Tensor, min_batch: int) -> torch.Tensor:
    """`official_gains` of the (F,) `frames` only, (F, N): the official call on those frames,
    joined by the first others up to `min_batch` frames (`official_batch`: the whole call's bits)."""
    F_ = frames.shape[0]
    fr = frames
    if F_ < min_batch:
        rest = torch.ones(sim.shape[0], dtype=torch.bool, device=sim.device)
        rest[frames] = False
        fr = torch.cat([frames, rest.nonzero().squeeze(1)[:min_batch - F_]])
    cw = None if cand_w is None else cand_w.index_select(0, fr)
    gains = official_gains(sim.index_select(0, fr), mu.index_select(0, fr), cover_w.index_select(0, fr), cw)
    return gains[:F_]


def coverage_select(sim: torch.Tensor, w: torch.Tensor, K: int, *, weight: str = "covered") -> torch.Tensor:
    """Greedy saliency-weighted coverage (Eq. 1), batched over frames: the official picks.

    weight="covered" (OTT-Vid): gain(j) = sum_i w_i max(0, sim_ij - mu_i).
    weight="candidate" (SCOPE): gain(j) = w_j * sum_i (1/N) max(0, sim_ij - mu_i).
    mu starts at 0; the official step re-evaluates every gain and takes the argmax (lowest
    index on equal values), with its own summation order.

    On CUDA that loop itself (`_official_loop`). On CPU the lazy greedy of `lazy.greedy`
    (compiled): gains evaluated only when they may win, picks certified to be the official ones
    whatever order the official code sums in; a step it cannot certify (a near-tie, duplicate
    tokens) is the official step of that frame (`official_rows`, the whole call's bits) and its
    argmax, whose gains then bound the frame's next steps.
    """
    T, N = sim.shape[0], sim.shape[1]
    K = min(K, N)
    cover_w = w if weight == "covered" else torch.full_like(w, 1.0 / N)
    cand_w = w if weight == "candidate" else None
    if sim.device.type != "cpu":
        return _official_loop(sim, cover_w, cand_w, K)
    from . import lazy   # numba: imported with the first CPU greedy, not with the package

    sim, cover_w = sim.contiguous(), cover_w.contiguous()
    cols = sim if torch.equal(sim, sim.transpose(1, 2)) else sim.transpose(1, 2).contiguous()   # column j as a row
    margins = lazy.Margins.for_tokens(N)
    mu = torch.zeros_like(cover_w)
    S, C, CW, MU = sim.numpy(), cols.numpy(), cover_w.numpy(), mu.numpy()
    CDW = CW if cand_w is None else cand_w.contiguous().numpy()
    UB = np.empty((T, N), dtype=np.float64)
    picks = np.empty((T, K), dtype=np.int64)
    min_batch = official_batch(T, sim.device)
    t, k = 0, 0
    while True:
        t, k = lazy.greedy(S, C, CW, CDW, cand_w is not None, UB, MU, picks, t, k, *margins)
        if t == T:
            return torch.from_numpy(picks).sort(dim=1).values
        gains = official_rows(sim, mu, cover_w, cand_w, torch.tensor([t]), min_batch)[0].numpy()
        gains[UB[t] == -np.inf] = -np.inf   # the picked tokens
        b = int(gains.argmax())
        UB[t] = margins.upper_from_official(gains)
        UB[t, b] = -np.inf
        picks[t, k] = b
        np.maximum(MU[t], C[t, b], out=MU[t])
        t, k = (t + 1, 0) if k + 1 == K else (t, k + 1)


def _official_loop(sim: torch.Tensor, cover_w: torch.Tensor, cand_w: Optional[torch.Tensor], K: int) -> torch.Tensor:
    """The official greedy: every gain re-evaluated each step (`official_gains`), picked ones
    masked, argmax, covers raised by the picked column. (T, K) picks, sorted per frame."""
    T, N = sim.shape[0], sim.shape[1]
    mu = torch.zeros_like(cover_w)
    mask = torch.zeros(T, N, dtype=torch.bool, device=sim.device)
    picks = torch.empty(T, K, dtype=torch.long, device=sim.device)
    neg_inf = torch.tensor(float("-inf"), device=sim.device)
    for k in range(K):
        best = torch.where(mask, neg_inf, official_gains(sim, mu, cover_w, cand_w)).argmax(dim=1)
        picks[:, k] = best
        mask.scatter_(1, best.unsqueeze(1), True)
        torch.maximum(mu, torch.gather(sim, 2, best.view(T, 1, 1).expand(T, N, 1)).squeeze(2), out=mu)
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
