"""Spatial stage (Sec. 3.2, App. B.1): keep K tokens per frame, batched over frames.

`coverage` is OTT-Vid's saliency-weighted coverage (Eq. 1); `topk`, `divprune`, `adts`
and `scope` are the alternatives of Table A1. Every selector returns (T, K) local
indices sorted ascending (raster order), as the official code does.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from . import script

SPATIAL_METHODS = ("coverage", "topk", "divprune", "adts", "scope")


def keep_per_frame(N: int, r_s: float, by_round: bool = False) -> int:
    """K = max(1, floor(N * r_s)) capped at N (official Qwen path); by_round=True: round(N * r_s)
    (Python float64, half to even; official LLaVA path). r_s >= 1 keeps the whole frame."""
    if r_s >= 1.0:
        return N
    return min(N, max(1, int(round(N * r_s)) if by_round else int(N * r_s)))


def cosine_similarity(x: torch.Tensor, colocated: bool = False, chunk_elems: int = 1 << 22):
    """(T, N, D) -> (T, N, N) float32 cosine similarity (L2-normalised dot products).

    Computed a few frames (at least two) at a time into one reused buffer of unit-norm tokens (row-wise
    normalisation: the same bits as normalising the whole video at once), each chunk's Gram
    matrices by `gram_into`. With `colocated=True` also returns (T-1, N) sum_d xn_t xn_{t+1},
    the co-located cosine of consecutive frames that alpha_t averages (`transport.pair_alpha`),
    from the same unit tokens.
    """
    T, N, D = x.shape
    sim = torch.empty(T, N, N, dtype=torch.float32, device=x.device)
    adj = torch.empty(max(T - 1, 0), N, dtype=torch.float32, device=x.device) if colocated else None
    # an even number of frames, at least 2: the batched GEMMs split evenly over 2 threads, one frame
    # each, which is faster than one frame on both (1.1x on 2 frames of 702 x 3584, measured)
    step = max(2, chunk_elems // max(1, N * D))
    step = min(T, step - step % 2)
    buf = torch.empty(step, N, D, dtype=torch.float32, device=x.device)
    prod = torch.empty(step, N, D, dtype=torch.float32, device=x.device) if colocated else None
    prev = torch.empty(1, N, D, dtype=torch.float32, device=x.device) if colocated and step < T else None
    for i in range(0, T, step):
        j = min(T, i + step)
        xn = F.normalize(x[i:j].float(), p=2, dim=-1, out=buf[:j - i])
        gram_into(xn, sim[i:j])
        if colocated:   # elementwise products, then the sum over D: the bits of (xn[:-1] * xn[1:]).sum(-1)
            if i > 0:
                torch.sum(torch.mul(prev, xn[:1], out=prod[:1]), dim=-1, out=adj[i - 1:i])
            if j - i > 1:
                torch.sum(torch.mul(xn[:-1], xn[1:], out=prod[:j - i - 1]), dim=-1, out=adj[i:j - 1])
            if j < T:   # the next chunk's first pair needs this chunk's last frame
                prev.copy_(xn[-1:])
    return (sim, adj) if colocated else sim


def gram_blocks(N: int) -> list[int]:
    """Row cuts of the CPU Gram split: panels of 64 rows, a remainder under 32 joining the last
    one; one panel below N = 96. MKL keeps the one-call bits for blocks of >= 12 rows (fewer
    take gemv-like paths with other sums); 32 leaves a margin (tested)."""
    if N < 96:
        return [0, N]
    cuts = list(range(0, N, 64)) + [N]
    if cuts[-1] - cuts[-2] < 32:
        cuts.pop(-2)
    return cuts


def gram_into(xn: torch.Tensor, out: torch.Tensor) -> None:
    """out = xn @ xn^T per frame, (F, N, D) -> (F, N, N).

    On CUDA one `bmm`, the official call. On CPU each panel of rows (`gram_blocks`) is multiplied
    with the rows from its own start on, and the part right of its diagonal block is mirrored
    below: about a third fewer flops, and panels MKL runs faster than the whole (1.3x at
    N = 196, measured). With MKL this has the bits of the single `bmm`, whose result is exactly
    symmetric there (both checked in the tests); elsewhere it is the same sums to within
    rounding, and symmetric.
    """
    N = xn.shape[1]
    cuts = gram_blocks(N) if xn.device.type == "cpu" else [0, N]
    if len(cuts) == 2:
        torch.bmm(xn, xn.transpose(1, 2), out=out)
        return
    for a, b in zip(cuts[:-1], cuts[1:]):
        panel = torch.bmm(xn[:, a:b], xn[:, a:].transpose(1, 2))       # (F, b - a, N - a)
        out[:, a:b, a:] = panel
        if b < N:
            out[:, b:, a:b] = panel[:, :, b - a:].transpose(1, 2)


def normalized_saliency(saliency: torch.Tensor) -> torch.Tensor:
    """w_{t,i} = s_{t,i} / (sum_n s_{t,n} + 1e-8) in float32."""
    w = saliency.float()
    return w / (w.sum(dim=-1, keepdim=True) + 1e-8)


def coverage_gains(sim: torch.Tensor, mu: torch.Tensor, cover_w: torch.Tensor, cand_w: Optional[torch.Tensor],
                   cand: torch.Tensor, frames: Optional[torch.Tensor] = None, symmetric: bool = False,
                   row0: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Eq. 1 marginal gains gain(j) = [w_j] sum_i c_i max(0, sim_ij - mu_i) of the (F, m) candidates
    `cand` of `frames` (default: every frame). As in a full step, the clamped (F, N, m) columns are
    contracted with the cover weights c by one transposed `bmm`, so a candidate's gain has the
    same bits whichever subset it is evaluated in (checked in the tests). `symmetric` (sim equal to
    its transpose) reads the columns as rows, which is cheaper than a gather; `row0` may pass the
    (T,) first flat row t*N of every frame. TorchScript-compatible (`coverage_select`).
    """
    T, N = sim.shape[0], sim.shape[1]
    F_, m = cand.shape[0], cand.shape[1]
    if frames is not None:
        mu, cover_w = mu.index_select(0, frames), cover_w.index_select(0, frames)
        if cand_w is not None:
            cand_w = cand_w.index_select(0, frames)
    if symmetric:   # columns are rows: contiguous row copies, then one transposing copy
        if row0 is None:
            row0 = torch.arange(T, device=cand.device) * N
        if frames is not None:
            row0 = row0.index_select(0, frames)
        rows = sim.reshape(T * N, N).index_select(0, (row0.view(-1, 1) + cand).reshape(-1)).view(F_, m, N)
        diff = rows.sub_(mu.unsqueeze(1)).clamp_min_(0).transpose(1, 2).contiguous()   # (F, N, m)
    else:
        sub = sim
        if frames is not None:
            sub = sim.index_select(0, frames)
        diff = torch.gather(sub, 2, cand.unsqueeze(1).expand(F_, N, m))             # (F, N, m): sim[f, i, cand]
        diff.sub_(mu.unsqueeze(2)).clamp_min_(0)
    gain = torch.bmm(diff.transpose(1, 2), cover_w.unsqueeze(2)).squeeze(2)
    if cand_w is not None:
        gain = torch.gather(cand_w, 1, cand) * gain
    return gain


#: CPU inputs of one frame, or of at most PER_FRAME_MAX_T frames of at least PER_FRAME_MIN_N tokens,
#: run the greedy one frame at a time (`_coverage_frame_loop`, frames side by side on the cores)
PER_FRAME_MAX_T = 4
PER_FRAME_MIN_N = 300


def coverage_select(sim: torch.Tensor, w: torch.Tensor, K: int, *, weight: str = "covered",
                    probe: int = 16, per_frame: Optional[bool] = None) -> torch.Tensor:
    """Greedy saliency-weighted coverage (Eq. 1), batched over frames.

    weight="covered" (OTT-Vid): gain(j) = sum_i w_i max(0, sim_ij - mu_i).
    weight="candidate" (SCOPE): gain(j) = w_j * sum_i (1/N) max(0, sim_ij - mu_i).
    mu starts at 0; ties go to the lowest index.

    Lazy greedy, exact. Covers mu only grow, so every gain is non-negative and a gain computed
    at an earlier step bounds the gain now from above (`bound`). Each step re-evaluates the
    `probe` candidates of largest bound per frame and writes the fresh gains into `bound`. A
    frame is decided when its largest remaining bound is below the best fresh gain by a relative
    1e-6, or is 0 (a bound of 0 is the exact gain); undecided frames evaluate twice as many
    candidates, up to all N. The pick is then the argmax of `bound` (lowest index on ties),
    which is the full re-evaluation's argmax: every fresh gain is computed as in the full step
    (`coverage_gains`) and no unevaluated bound can reach the best. The loop runs in TorchScript
    on CPU (`script.run`: the same kernels, fewer interpreter cycles between them). Step 0 (every
    gain at mu = 0) is one batched call. CPU inputs of one frame, or of a few large frames
    (`PER_FRAME_MAX_T`, `PER_FRAME_MIN_N`), then run the steps frame by frame
    (`_coverage_frame_loop`: fewer, cheaper kernels a step, the same picks), the frames side by
    side on worker threads (`script.run_each`), unless `per_frame` says otherwise.
    """
    T, N = sim.shape[0], sim.shape[1]
    K = min(K, N)
    cover_w = w if weight == "covered" else torch.full_like(w, 1.0 / N)
    cand_w = w if weight == "candidate" else None
    # step 0 (mu = 0): every gain, as one full bmm
    bound = torch.bmm(sim.clamp_min(0).transpose(1, 2), cover_w.unsqueeze(2)).squeeze(2)
    if cand_w is not None:
        bound = cand_w * bound
    if per_frame is None:
        per_frame = sim.device.type == "cpu" and (T == 1 or (T <= PER_FRAME_MAX_T and N >= PER_FRAME_MIN_N))
    if per_frame and T > 0:
        calls = [(sim[t], cover_w[t], None if cand_w is None else cand_w[t], bound[t], K, probe) for t in range(T)]
        return torch.stack(script.run_each(_coverage_frame_loop, calls))
    return script.run(_coverage_loop, sim, cover_w, cand_w, bound, K, probe)


def _coverage_loop(sim: torch.Tensor, cover_w: torch.Tensor, cand_w: Optional[torch.Tensor], bound: torch.Tensor,
                   K: int, probe: int) -> torch.Tensor:
    """`coverage_select`'s greedy over all frames at once (TorchScript-compatible): (T, K) picks,
    sorted per frame. `bound` (T, N) holds the step-0 gains; it is updated in place."""
    T, N = sim.shape[0], sim.shape[1]
    dev = sim.device
    mu = torch.zeros([T, N], dtype=sim.dtype, device=dev)
    picks = torch.empty([T, K], dtype=torch.long, device=dev)
    neg_inf = float("-inf")
    symmetric = bool(torch.equal(sim, sim.transpose(1, 2)))   # always on CPU (`gram_into`)
    flat = sim.reshape(T * N, N)
    rows = torch.arange(T, device=dev) * N
    for k in range(K):
        frames: Optional[torch.Tensor] = None
        m = min(probe, N)
        while k > 0:
            src = bound
            if frames is not None:
                src = bound.index_select(0, frames)
            vals, cand = src.topk(min(m + 1, N), dim=1)
            g = coverage_gains(sim, mu, cover_w, cand_w, cand[:, :m], frames, symmetric, rows)
            if N - k < m:   # fewer than m candidates left: the picked ones (bound -inf) stay -inf
                g.masked_fill_(vals[:, :m] == neg_inf, neg_inf)
            src.scatter_(1, cand[:, :m], g)
            if frames is not None:
                bound.index_copy_(0, frames, src)
            if m >= N:
                break
            rest = vals[:, m]                                  # largest bound not evaluated
            # open: rest > 0 and rest >= best * (1 - 1e-6); 1e-45 is float32's least positive value
            open_ = rest >= g.amax(dim=1).mul_(1 - 1e-6).clamp_min_(1e-45)
            if not bool(open_.any()):
                break
            if frames is None:
                frames = open_.nonzero().squeeze(1)
            else:
                frames = frames[open_]
            m = min(2 * m, N)
        best = bound.argmax(dim=1)
        picks[:, k] = best
        bound.scatter_(1, best.unsqueeze(1), neg_inf)
        if symmetric:
            col = flat.index_select(0, rows + best)
        else:
            col = torch.gather(sim, 2, best.view(T, 1, 1).expand(T, N, 1)).squeeze(2)
        torch.maximum(mu, col, out=mu)
    return picks.sort(dim=1).values


def frame_gains(s: torch.Tensor, mu: torch.Tensor, cover_w: torch.Tensor, cand_w: Optional[torch.Tensor],
                cand: torch.Tensor) -> torch.Tensor:
    """`coverage_gains` for one frame: the (m,) gains of the candidates `cand` of the (N, N) `s`.

    The columns s[:, cand] are read directly (`index_select` along dim 1), already the (N, m)
    layout whose transposed product with the cover weights has the full step's bits (tested), for
    any `s`. On CPU that product is `mv` (MKL's call for a batch-1 `bmm` as well, with fewer
    views); elsewhere the `bmm` of the full step. TorchScript-compatible.
    """
    N = s.shape[0]
    diff = s.index_select(1, cand).sub_(mu.view(N, 1)).clamp_min_(0)           # (N, m): max(0, s[i, cand] - mu_i)
    if s.is_cuda:
        g = torch.bmm(diff.t().unsqueeze(0), cover_w.view(1, N, 1)).view(cand.shape[0])
    else:
        g = torch.mv(diff.t(), cover_w)
    if cand_w is not None:
        g = cand_w.index_select(0, cand) * g
    return g


def _coverage_frame_loop(s: torch.Tensor, cover_w: torch.Tensor, cand_w: Optional[torch.Tensor], bound: torch.Tensor,
                         K: int, probe: int) -> torch.Tensor:
    """`coverage_select`'s greedy on one frame (TorchScript-compatible): (K,) sorted picks.

    The steps of `_coverage_loop` for a single (N, N) similarity `s`, with fewer kernels a step:
    the gains by `frame_gains` (no row copy and transposition), the decision and the pick as
    Python numbers. `bound` (N,) holds the step-0 gains; updated in place.
    """
    N = s.shape[0]
    mu = torch.zeros([N], dtype=s.dtype, device=s.device)
    picks = torch.empty([K], dtype=torch.long, device=s.device)
    neg_inf = float("-inf")
    b = int(bound.argmax())
    for k in range(K):
        m = min(probe, N)
        while k > 0:
            vals, cand = bound.topk(min(m + 1, N))
            cm = cand[:m]
            g = frame_gains(s, mu, cover_w, cand_w, cm)
            if N - k < m:   # fewer than m candidates left: the picked ones (bound -inf) stay -inf
                g.masked_fill_(vals[:m] == neg_inf, neg_inf)
            bound.index_copy_(0, cm, g)
            b = int(bound.argmax())
            if m >= N:
                break
            # bound[b] = max(best fresh gain, rest): decided as in `_coverage_loop`
            rest = float(vals[m])                                   # largest bound not evaluated
            if not (rest > 0.0 and rest >= float(bound[b]) * (1 - 1e-6)):
                break
            m = min(2 * m, N)
        picks[k] = b
        bound[b] = neg_inf
        torch.maximum(mu, s[:, b], out=mu)
    return picks.sort().values


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
