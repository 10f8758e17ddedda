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
    consecutive frames that alpha_t averages (`transport.pair_alpha`), from the same unit tokens.
    """
    T, N, D = x.shape
    sim = torch.empty(T, N, N, dtype=torch.float32, device=x.device)
    adj = torch.empty(max(T - 1, 0), N, dtype=torch.float32, device=x.device) if colocated else None
    spans = gemm_spans(T, chunk_elems // max(1, N * D), x.device)
    rows = max(j - i for i, j in spans)
    buf = torch.empty(rows, N, D, dtype=torch.float32, device=x.device)
    prod = torch.empty(rows, N, D, dtype=torch.float32, device=x.device) if colocated else None
    prev = torch.empty(1, N, D, dtype=torch.float32, device=x.device) if colocated and len(spans) > 1 else None
    for i, j in spans:
        xn = F.normalize(x[i:j].float(), p=2, dim=-1, out=buf[:j - i])
        torch.bmm(xn, xn.transpose(1, 2), out=sim[i:j])
        if colocated:   # elementwise products, then the sum over D: the bits of (xn[:-1] * xn[1:]).sum(-1)
            if i > 0:
                torch.sum(torch.mul(prev, xn[:1], out=prod[:1]), dim=-1, out=adj[i - 1:i])
            if j - i > 1:
                torch.sum(torch.mul(xn[:-1], xn[1:], out=prod[:j - i - 1]), dim=-1, out=adj[i:j - 1])
            if j < T:   # the next span's first pair needs this span's last frame
                prev.copy_(xn[-1:])
    return (sim, adj) if colocated else sim


def normalized_saliency(saliency: torch.Tensor) -> torch.Tensor:
    """w_{t,i} = s_{t,i} / (sum_n s_{t,n} + 1e-8) in float32."""
    w = saliency.float()
    return w / (w.sum(dim=-1, keepdim=True) + 1e-8)


#: at most this many candidate rows per gain product: numpy's BLAS (OpenBLAS) keeps a
#: matrix-vector product this small on the calling thread (larger ones wake its own threads,
#: which then spin against torch's)
FRAME_ROWS = 128


def _matvec(rows: np.ndarray, v: np.ndarray) -> np.ndarray:
    """rows @ v, at most FRAME_ROWS rows (axis -2) per product."""
    m = rows.shape[-2]
    if m <= FRAME_ROWS:
        return rows @ v
    return np.concatenate([rows[..., i:i + FRAME_ROWS, :] @ v for i in range(0, m, FRAME_ROWS)], axis=rows.ndim - 2)


def coverage_gains(S: np.ndarray, MU: np.ndarray, CW: np.ndarray, CDW: Optional[np.ndarray], frames: np.ndarray,
                   cand: np.ndarray, symmetric: bool) -> np.ndarray:
    """Eq. 1 marginal gains gain(j) = [w_j] sum_i c_i max(0, sim_ij - mu_i) of the (F, m) candidates
    `cand` of the (F,) `frames`, in numpy: S (T, N, N) similarities, MU (T, N) covers, CW (T, N)
    cover weights c, CDW (T, N) SCOPE's w_j or None (float32 arrays).

    The columns sim[f, :, cand] are read as rows when sim is symmetric (contiguous copies);
    max(s, mu) - mu is max(0, s - mu) exactly; then one batched matrix-vector product per
    FRAME_ROWS candidates. Sums in numpy's order, not the official step's (`official_gains`):
    `coverage_select` allows for that (`rounding_margin`).
    """
    if symmetric:
        rows = S[frames[:, None], cand]                                                  # (F, m, N)
    else:
        rows = S[frames[:, None, None], np.arange(S.shape[1])[:, None], cand[:, None, :]].transpose(0, 2, 1)
    mu = MU[frames][:, None, :]
    np.maximum(rows, mu, out=rows)
    rows -= mu
    cw = CW[frames][:, :, None]
    g = _matvec(rows, cw)[:, :, 0]
    if CDW is not None:
        g *= np.take_along_axis(CDW[frames], cand, 1)
    return g


def official_gains(sim: torch.Tensor, mu: Optional[torch.Tensor], cover_w: torch.Tensor,
                   cand_w: Optional[torch.Tensor]) -> torch.Tensor:
    """(T, N) gains of every token of every frame, computed as the official batched step does
    (one (T, N, N) clamped difference, one transposed `bmm` with the (T, N, 1) cover weights,
    then w_j times that for SCOPE): the same calls on the same shapes, hence its bits on any
    device. A frame's gains depend only on its own rows of `sim` and `mu`. `mu=None` is the
    official step 0 (covers 0): sim - 0 is sim exactly, so the clamp alone, one (T, N, N) pass
    fewer."""
    diff = sim.clamp_min(0) if mu is None else (sim - mu.unsqueeze(2)).clamp_min(0)
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


def _official_picks(sim: torch.Tensor, mu: torch.Tensor, cover_w: torch.Tensor, cand_w: Optional[torch.Tensor],
                    bound: torch.Tensor, frames: torch.Tensor, min_batch: int) -> torch.Tensor:
    """Near-ties: the official step's picks of the (F,) `frames`, the argmax of their `official_rows`
    with the picked tokens (bound -inf) masked; those gains become the frames' bounds (in place)."""
    gains = official_rows(sim, mu, cover_w, cand_w, frames, min_batch)
    gains.masked_fill_(bound.index_select(0, frames) == float("-inf"), float("-inf"))
    bound.index_copy_(0, frames, gains)
    return gains.argmax(dim=1)


def rounding_margin(N: int) -> tuple[float, float, float]:
    """(lo, hi, delta) bracketing any float32 evaluation G of a gain from another one H of the same gain.

    A gain is a sum of N + 1 non-negative rounded products (N for the cover weights, one for
    SCOPE's w_j). Summed in any order, each evaluation is within gamma = n u / (1 - n u) (u =
    2^-24, n = N + 8 for margin) of the exact sum, relatively, plus n 2^-150 per evaluation for
    products in the subnormal range (delta = 4 n 2^-150 covers both). Hence G >= lo H - delta and
    G <= hi H + delta, with hi = (1 + gamma) / (1 - gamma) = 1 / lo. As covers only grow, every
    later exact gain is also at most hi H + delta (the bound a lazy step keeps).
    """
    n = N + 8
    gamma = n * 2.0 ** -24 / (1 - n * 2.0 ** -24)
    hi = (1 + gamma) / (1 - gamma)
    return 1.0 / hi, hi, 4 * n * 2.0 ** -150


#: CPU inputs of at most PER_FRAME_MAX_T frames run the greedy one frame at a time
#: (`_coverage_frame_loop`, 1-D arrays: fewer, cheaper calls); more frames all at once
#: (`_coverage_loop`). Measured on 2 threads (docs/efficiency.md): per frame 1 x 702 7.3 ms,
#: 4 x 702 33.6 against 12.9 and 36.3 batched; 12 x 196: 8.0 against 5.5
PER_FRAME_MAX_T = 4


def coverage_select(sim: torch.Tensor, w: torch.Tensor, K: int, *, weight: str = "covered",
                    probe: int = 16, per_frame: Optional[bool] = None) -> torch.Tensor:
    """Greedy saliency-weighted coverage (Eq. 1), batched over frames: the official picks.

    weight="covered" (OTT-Vid): gain(j) = sum_i w_i max(0, sim_ij - mu_i).
    weight="candidate" (SCOPE): gain(j) = w_j * sum_i (1/N) max(0, sim_ij - mu_i).
    mu starts at 0; the official step re-evaluates every gain and takes the argmax (lowest
    index on equal values), with its own summation order.

    On CUDA that loop itself (`_official_loop`). On CPU a lazy greedy that picks the same:
    step 0 is the official call (`official_gains` at mu = 0). Later steps re-evaluate the
    `probe` candidates of largest bound per frame (`coverage_gains`, sums in another order),
    doubling that number until no candidate left unevaluated can reach the best: covers only
    grow, so a gain evaluated earlier bounds every later one, within `rounding_margin`. A pick
    whose lead over the runner-up is beyond both evaluations' rounding is the official pick;
    otherwise (near-ties, duplicate tokens) the step's gains come from `official_gains` and the
    pick is their argmax. The lazy steps run in numpy (a call costs about a microsecond, a torch
    kernel several, and a step is a dozen small calls): all frames at once (`_coverage_loop`),
    or for at most `PER_FRAME_MAX_T` frames one frame at a time (`_coverage_frame_loop`), unless
    `per_frame` says otherwise. Near-ties' official steps run in torch, on the calling thread.
    """
    T, N = sim.shape[0], sim.shape[1]
    K = min(K, N)
    cover_w = w if weight == "covered" else torch.full_like(w, 1.0 / N)
    cand_w = w if weight == "candidate" else None
    if sim.device.type != "cpu":
        return _official_loop(sim, cover_w, cand_w, K)
    lo, hi, delta = rounding_margin(N)
    bound = official_gains(sim, None, cover_w, cand_w)    # step 0, the official bits
    if per_frame is None:
        per_frame = T <= PER_FRAME_MAX_T
    min_batch = official_batch(T, sim.device)
    if not (per_frame and T > 0):
        return _coverage_loop(sim, cover_w, cand_w, bound, K, probe, lo, hi, delta, min_batch)
    mu = torch.zeros_like(cover_w)
    picks = torch.empty(T, K, dtype=torch.long, device=sim.device)
    for t in range(T):
        s = sim[t]
        args = (s.numpy(), cover_w[t].numpy(), None if cand_w is None else cand_w[t].numpy(), bound[t].numpy(),
                mu[t].numpy(), picks[t].numpy())
        symmetric = bool(torch.equal(s, s.t()))
        k = 0
        while k < K:
            k = _coverage_frame_loop(*args, k, K, probe, lo, hi, delta, symmetric)
            if k < K:   # a near-tie: the official step's pick (its gains become the bounds)
                b = int(_official_picks(sim, mu, cover_w, cand_w, bound, torch.tensor([t]), min_batch))
                picks[t, k], bound[t, b] = b, float("-inf")
                torch.maximum(mu[t], s[:, b], out=mu[t])
                k += 1
    return picks.sort(dim=1).values


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


def _coverage_loop(sim: torch.Tensor, cover_w: torch.Tensor, cand_w: Optional[torch.Tensor], bound: torch.Tensor,
                   K: int, probe: int, lo: float, hi: float, delta: float, min_batch: int) -> torch.Tensor:
    """`coverage_select`'s lazy greedy over all frames at once, in numpy: (T, K) picks, sorted per
    frame. `bound` (T, N) holds the official step-0 gains, updated in place; (lo, hi, delta) is
    `rounding_margin(N)`, `min_batch` that of `official_rows`. A step: the `probe` largest bounds
    of every frame evaluated (`coverage_gains`), doubled for the frames where a bound not
    evaluated may still reach the best fresh gain; then the best, or on a near-tie the official
    step's pick (`_official_picks`, torch)."""
    T, N = sim.shape[0], sim.shape[1]
    symmetric = bool(torch.equal(sim, sim.transpose(1, 2)))   # a Gram bmm's result usually is
    S, B, CW = sim.numpy(), bound.numpy(), cover_w.numpy()
    CDW = None if cand_w is None else cand_w.numpy()
    mu = torch.zeros_like(cover_w)
    MU = mu.numpy()
    picks = np.empty((T, K), dtype=np.int64)
    every = np.arange(T)
    neg_inf = -np.inf
    for k in range(K):
        m = min(probe, N)
        frames = every
        while k > 0:
            sub = B[frames]
            if m < N:   # the m largest bounds, and the largest of the rest (a bound on all of them)
                order = np.argpartition(sub, N - m - 1, axis=1)
                cand = order[:, N - m:]
                rest = np.take_along_axis(sub, order[:, N - m - 1:N - m], 1)[:, 0].astype(np.float64)
            else:
                cand = np.broadcast_to(np.arange(N), (len(frames), N))
            g = coverage_gains(S, MU, CW, CDW, frames, cand, symmetric)
            if N - k < m:   # fewer than m candidates left: the picked ones (bound -inf) stay -inf
                g[np.take_along_axis(sub, cand, 1) == neg_inf] = neg_inf
            B[frames[:, None], cand] = g
            if m >= N:
                break
            open_ = rest * hi + delta >= g.max(axis=1).astype(np.float64) * lo - delta
            if not open_.any():
                break
            frames = frames[open_]
            m = min(2 * m, N)
        best = B.argmax(axis=1)   # step 0: the official gains' argmax (lowest index on equal values)
        if k > 0 and N > 1:   # the runner-up (fresh, or a bound already ruled out) within rounding of the best: official step
            top = B[every, best].astype(np.float64)
            B[every, best] = neg_inf
            second = B.max(axis=1).astype(np.float64)
            B[every, best] = top   # (float32 values: back exactly)
            tied = second * hi + delta >= top * lo - delta
            if tied.any():
                tf = every[tied]
                best[tf] = _official_picks(sim, mu, cover_w, cand_w, bound, torch.from_numpy(tf), min_batch).numpy()
        picks[:, k] = best
        B[every, best] = neg_inf
        np.maximum(MU, S[every, best] if symmetric else S[every, :, best], out=MU)
    return torch.from_numpy(picks).sort(dim=1).values


def frame_gains(s: np.ndarray, mu: np.ndarray, cover_w: np.ndarray, cand_w: Optional[np.ndarray],
                cand: np.ndarray, symmetric: bool) -> np.ndarray:
    """`coverage_gains` for one frame, in numpy: the (m,) gains of the candidates `cand` of the
    (N, N) similarity `s` (float32 arrays), sum_i c_i max(0, s_ij - mu_i) [times w_j].

    The columns s[:, cand] are read as rows when `s` is symmetric (contiguous copies);
    max(s, mu) - mu is max(0, s - mu) exactly, one pass cheaper. Sums in numpy's order, not the
    official step's: `coverage_select` allows for that (`rounding_margin`)."""
    rows = s[cand] if symmetric else s[:, cand].T                 # (m, N): column j of s, a copy
    np.maximum(rows, mu, out=rows)
    rows -= mu
    g = _matvec(rows, cover_w)
    if cand_w is not None:
        g *= cand_w[cand]
    return g


def _coverage_frame_loop(s: np.ndarray, cover_w: np.ndarray, cand_w: Optional[np.ndarray], bound: np.ndarray,
                         mu: np.ndarray, picks: np.ndarray, k0: int, K: int, probe: int,
                         lo: float, hi: float, delta: float, symmetric: bool) -> int:
    """`coverage_select`'s lazy greedy on one frame, steps k0 ... K-1, in numpy.

    The steps of `_coverage_loop` for a single (N, N) similarity `s`: a numpy call costs about a
    microsecond where a torch kernel costs several, and a step is a dozen small calls. `bound`
    (N,) holds upper bounds (the official step-0 gains at k0 = 0), `mu` (N,) the covers, `picks`
    (K,) the picks so far (numpy views of the caller's tensors), all updated in place. Returns K
    when done, or the step whose runner-up is within rounding of the best: the caller takes that
    pick from `official_gains`.
    """
    N = s.shape[0]
    neg_inf = -np.inf
    for k in range(k0, K):
        if k == 0 or N == 1:   # the official step-0 gains: their argmax (lowest index on equal values)
            b = int(bound.argmax())
        else:
            m = min(probe, N)
            while True:
                if m < N:   # the m largest bounds, and the largest of the rest (a bound on all of them)
                    order = np.argpartition(bound, N - m - 1)
                    cand, rest = order[N - m:], float(bound[order[N - m - 1]])
                else:
                    cand, rest = np.arange(N), neg_inf
                g = frame_gains(s, mu, cover_w, cand_w, cand, symmetric)
                if N - k < m:   # fewer than m candidates left: the picked ones (bound -inf) stay -inf
                    g[bound[cand] == neg_inf] = neg_inf
                bound[cand] = g
                j = int(g.argmax())
                best = float(g[j])
                if m >= N or rest * hi + delta < best * lo - delta:
                    break
                m = min(2 * m, N)
            g[j] = neg_inf   # the runner-up: the next fresh gain, or a bound not evaluated
            second = max(float(g.max()), rest)
            if second * hi + delta >= best * lo - delta:
                return k
            b = int(cand[j])
        picks[k] = b
        bound[b] = neg_inf
        np.maximum(mu, s[b] if symmetric else s[:, b], out=mu)
    return K


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
