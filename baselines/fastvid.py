"""FastVID: dynamic temporal segmentation (DySeg) + density spatiotemporal pruning (STPrune).

Follows the official LLaVA-OneVision implementation (LunarShen/FastVID @ a40a109,
``fastvid_llavaonevision/.../modeling_qwen2.py``, the FastVID block of ``Qwen2Model.forward``),
which produced the published numbers. See docs/methods/fastvid.md for the departures from the
paper and the extensions to settings the official code does not run (T < c, K > N - S, ...).

Stages (paper Sec. 3):
  DySeg   cut between frames t, t+1 when cos(g_t, g_{t+1}) is among the c-1 smallest or < tau.
  ATS     per frame keep the top-S tokens by saliency verbatim (S = R - floor(R d), R = floor(N r)).
  STPrune per segment, anchor frames (every p-th from the segment end) get the context budget
          K_L = floor(C L / ceil(L/p)); anchors are the top-K tokens by DPC-kNN score
          delta * rho (+ 1e-6 U(0,1) tie noise on rho).
  DTM     every pool token joins its most cosine-similar anchor; the anchor becomes
          y = w x_a + (1 - w) mean(assigned), w = max(1 / (n + 1), beta).

``variant="qwen2_5_vl"`` instead follows the official Qwen2.5-VL integration
(``fastvid_qwen25vl/.../modeling_qwen2_5_vl.py``, ``Qwen2_5_VLForConditionalGeneration.forward``):
tau 0.84, near-duplicate frames (cosine >= ignore_tau = 0.95 to the next) collapsed inside a
segment, per-segment budgets with context max(int(R L d), 1) capped at N // 2 per anchor frame,
per-frame noise draws and per-anchor-frame merge pools (see `qwen_budgets`, `_compress_qwen2_5_vl`).
"""
from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass

import torch

from ottvid.contract import CompressedTokens, VideoTokens
from ottvid.registry import Compressor, check_choice, check_int, check_range, check_retention, register
from ottvid.stages.spatial import gemm_spans, official_batch

#: number of nearest neighbours (self included) in the DPC-kNN local density, as in the official code.
DENSITY_KNN = 4
#: scale of the uniform tie-breaking noise added to the density.
DENSITY_NOISE = 1e-6
#: defaults that differ between the official integrations (the scripts of each backbone):
#: LLaVA-OneVision `fastvid_llavaonevision/scripts/eval.sh`, Qwen2.5-VL `fastvid_qwen25vl/scripts/eval.sh`.
VARIANT_DEFAULTS = {
    "llava": {"tau": 0.9},
    "qwen2_5_vl": {"tau": 0.84, "ignore_tau": 0.95},
}


# ---------------------------------------------------------------- budgets ---------------------

def frame_budgets(N: int, retention: float, d: float) -> tuple[int, int, int]:
    """Per-frame budget (R, S, C): R = int(N r), C = int(R d) context, S = R - C salient (Sec. 3.2)."""
    R = int(N * retention)
    C = int(R * d)
    return R, R - C, C


def anchor_budgets(segment_sizes: list[int], C: int, p: int) -> list[int]:
    """Context budget per frame (official 'anchor token distribution').

    A segment of length L has m = ceil(L / p) anchor frames (its last frame and every p-th one
    before it); each gets floor(C L / m) context tokens, every other frame 0.
    """
    out: list[int] = []
    for L in segment_sizes:
        m = (L + p - 1) // p
        k = (C * L) // m
        out.extend(k if (L - 1 - i) % p == 0 else 0 for i in range(L))
    return out


# ---------------------------------------------------------------- DySeg -----------------------

def dyseg(g: torch.Tensor, c: int, tau: float) -> tuple[list[int], list[int], torch.Tensor]:
    """Dynamic temporal segmentation (Sec. 3.1, Eq. 1-2).

    Cuts after frame i for the c-1 lowest adjacent cosines s_i = <g_i, g_{i+1}> (normalised) and
    for every s_i < tau. Returns (segment sizes, cut indices, s). With T - 1 < c - 1 adjacent
    pairs, every pair is cut (the official code requires T >= c).
    """
    T = g.shape[0]
    gn = g / g.norm(dim=1, keepdim=True)
    s = (gn[:-1] * gn[1:]).sum(dim=1)
    if T == 1:
        return [1], [], s
    cut = s < tau
    k = min(c - 1, T - 1)
    if k > 0:
        cut[torch.topk(s, k, largest=False).indices] = True
    cuts = torch.nonzero(cut).squeeze(1).tolist()
    bounds = [-1] + cuts + [T - 1]
    return [b - a for a, b in zip(bounds[:-1], bounds[1:])], cuts, s


# ---------------------------------------------------------------- STPrune ---------------------

def density_score(tokens: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """DPC-kNN score sigma = delta * rho per frame (Sec. 3.2), on (T, n, D) non-salient tokens.

    rho_i = exp(-mean of the k=4 smallest d_ij^2), d = cdist / sqrt(D) in float32, plus 1e-6 U(0,1)
    noise (drawn here once with shape (T, n) from the global generator unless `noise` is given);
    delta_i = min d_ij over denser j (the frame's maximum distance for its density peak).
    """
    T, n, D = tokens.shape
    if noise is None:
        noise = torch.rand((T, n), device=tokens.device, dtype=torch.float32)
    if T == 0 or n == 0:
        return tokens.new_zeros((T, n), dtype=torch.float32) + noise * DENSITY_NOISE
    # frames per batch: the (n, n) work arrays stay small; `gemm_spans` keeps the one call's bits
    # (the official `cdist` covers all T frames, and its GEMM may round by batch size)
    spans = gemm_spans(T, (1 << 22) // (n * n), tokens.device)
    return torch.cat([_density_score(tokens[i:j], noise[i:j]) for i, j in spans])


def _density_score(tokens: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """`density_score` of a batch of frames (frames are independent)."""
    D = tokens.shape[-1]
    x = tokens.float()
    dist = torch.cdist(x, x) / (D ** 0.5)
    k = min(DENSITY_KNN, dist.shape[-1])
    nearest = torch.topk(dist, k=k, dim=-1, largest=False).values
    rho = (-(nearest ** 2).mean(dim=-1)).exp()
    rho = rho + noise.to(rho.dtype) * DENSITY_NOISE
    denser = (rho[:, None, :] > rho[:, :, None]).to(dist.dtype)
    dist_max = dist.flatten(1).max(dim=-1).values[:, None, None]
    delta = (dist * denser + dist_max * (1 - denser)).min(dim=-1).values
    return delta * rho


def dtm(anchors: torch.Tensor, pool: torch.Tensor, beta: float,
        pool_n: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Density token merging (Sec. 3.2, Eq. 6): (B, K, D) anchors absorb a (B, P, D) pool.

    Each pool token goes to its most cosine-similar anchor (first in anchor order on ties);
    anchor a becomes w x_a + (1 - w) mean(A_a), w = max(1 / (|A_a| + 1), beta). Computed in the
    tokens' dtype, as the official code does. `pool` may be one pool expanded over the batch
    (stride 0, never copied), with `pool_n` its L2-normalised rows, likewise expanded.
    Returns (merged tokens, |A_a| per anchor).
    """
    B, K, _ = anchors.shape
    if pool_n is None:
        pool_n = pool / pool.norm(dim=-1, keepdim=True)
    anchors_n = anchors / anchors.norm(dim=-1, keepdim=True)
    sim = torch.bmm(pool_n, anchors_n.transpose(1, 2))
    assign = torch.zeros(B, pool.shape[1], K, dtype=pool.dtype, device=pool.device)
    assign.scatter_(2, sim.argmax(dim=2, keepdim=True), 1)
    n = assign.sum(dim=1).unsqueeze(-1)
    w = (1 / (n + 1)).clamp(min=beta)
    mean = torch.bmm(assign.transpose(1, 2), pool) / n.clamp(min=1)
    return w * anchors + (1 - w) * mean, n.squeeze(-1)


#: DTM batches are cut so that one batch's (pool x anchors) work arrays stay below this many
#: elements; the pool itself is shared (expanded), so memory stays linear in T.
DTM_CHUNK_ELEMS = 1 << 24


def dtm_spans(n_batch: int, pool_tokens: int, width: int, device: torch.device) -> list[tuple[int, int]]:
    """DTM batches of about DTM_CHUNK_ELEMS // (pool_tokens * width) problems, cut by `gemm_spans`
    (each span the bits of one batched call on all: at least the thread count on CPU, one span on CUDA)."""
    return gemm_spans(n_batch, DTM_CHUNK_ELEMS // max(1, pool_tokens * width), device)


def _saliency_pool(saliency: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """g_t = sum_n a_{t,n} f_{t,n}: the analogue of SigLIP's attention-pooling head output."""
    return torch.einsum("tn,tnd->td", saliency.float(), feats.float())


# ---------------------------------------------------------------- Qwen2.5-VL variant -------

def qwen_budgets(sizes: list[int], below_ignore: list[bool], N: int, retention: float, d: float,
                 p: int) -> tuple[list[int], list[int], list[int]]:
    """Per-frame (salient, context) budgets of the official Qwen2.5-VL integration (Sec. 3.2).

    A segment of L frames has R L tokens (R = int(N r)): context C_L = max(int(R L d), 1), salient
    S_L = R L - C_L. A single frame keeps (S_L, C_L). Otherwise the segment is cut again wherever the
    adjacent cosine is below ignore_tau (`below_ignore[i]` for the pair (i, i+1)); only the last
    frame of each run is "valid", the other (near-duplicate) frames get nothing. S_L is spread over
    the V valid frames (remainder to the earliest); C_L is spread over m = ceil(V/p) anchors (the
    last valid frame and every p-th one before it, remainder to the latest), each capped at N//2;
    an anchor's salient share is capped at N - context, any other valid frame's at N.
    Returns (salient per frame, context per frame, run lengths of every segment).
    """
    R = int(N * retention)
    sal: list[int] = []
    ctx: list[int] = []
    runs_all: list[int] = []
    start = 0
    for L in sizes:
        seg_ctx = max(int(R * L * d), 1)
        seg_sal = R * L - seg_ctx
        if L == 1:
            sal.append(seg_sal)
            ctx.append(seg_ctx)
            runs_all.append(1)
        else:
            cuts = [i for i in range(L - 1) if below_ignore[start + i]]
            bounds = [-1] + cuts + [L - 1]
            runs = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
            V = len(runs)
            q, rem = divmod(seg_sal, V)
            m = (V + p - 1) // p
            qc, rc = divmod(seg_ctx, m)
            chunk = [min(qc + (k < rc), N // 2) for k in range(m)]   # k-th anchor from the end
            for j, run in enumerate(runs):
                sal.extend([0] * (run - 1))
                ctx.extend([0] * (run - 1))
                back = V - 1 - j
                k = chunk[back // p] if back % p == 0 else 0
                s_j = q + (j < rem)
                ctx.append(k)
                sal.append(min(s_j, N - k) if k > 0 else min(s_j, N))
            runs_all.extend(runs)
        start += L
    return [max(v, 0) for v in sal], ctx, runs_all


def dtm_single(anchors: torch.Tensor, anchors_n: torch.Tensor, pool: torch.Tensor, pool_n: torch.Tensor,
               beta: float) -> torch.Tensor:
    """DTM of one anchor frame (Sec. 3.2, Eq. 6) with 2-D matmuls, as the Qwen2.5-VL integration does.

    (K, D) anchors absorb a (P, D) pool; `*_n` are the L2-normalised rows. Same rule as `dtm`
    (argmax cosine, w = max(1 / (|A_a| + 1), beta)); |A_a| can be 0 here (anchors are not in their
    own pool), giving w = 1. One `mm` per frame, not a `bmm`: batched and single GEMMs round
    differently, and this reproduces the official per-frame products bit for bit.
    """
    sim = torch.mm(pool_n, anchors_n.T)
    assign = torch.zeros(pool.shape[0], anchors.shape[0], dtype=pool.dtype, device=pool.device)
    assign.scatter_(1, sim.argmax(dim=1, keepdim=True), 1)
    n = assign.sum(dim=0).unsqueeze(-1)
    w = (1 / (n + 1)).clamp(min=beta)
    mean = torch.mm(assign.T, pool) / n.clamp(min=1)
    return w * anchors + (1 - w) * mean


def _groups(keys: list) -> dict:
    """Frame indices grouped by key, in ascending frame order (one batched call per group)."""
    out: dict = {}
    for i, k in enumerate(keys):
        out.setdefault(k, []).append(i)
    return out


def _compress_qwen2_5_vl(P, video: VideoTokens) -> CompressedTokens:
    """FastVID as the official Qwen2.5-VL integration computes it (``fastvid_qwen25vl``,
    ``Qwen2_5_VLForConditionalGeneration.forward``), on the merged (post-merger) video tokens.

    g_t = frame_features, else the frame mean of `features` (official: mean of the merger output),
    DySeg as in the LLaVA variant with tau; budgets by `qwen_budgets`; salient = per-frame top-k of
    `saliency`; anchors = top-k DPC-kNN score among the frame's non-salient tokens (one
    U(0,1) (1, N - s_t) draw per anchor frame, in frame order); DTM pool of an anchor frame = every
    token of its segment except the segment's salient tokens and its own anchors.
    """
    x = video.features
    T, N, D = x.shape
    dev = x.device
    if video.frame_features is not None:
        g, g_src = video.frame_features, "frame_features"
    else:
        g, g_src = x.mean(dim=1), "frame_mean_features"
    sizes, cuts, sim = dyseg(g, P.c, P.tau)
    below = (sim < P.ignore_tau).tolist()
    sal, ctx, runs = qwen_budgets(sizes, below, N, P.retention, P.d, P.p)

    # ---- salient tokens: per-frame top-s_t by saliency (one topk per distinct s_t)
    is_sal = torch.zeros(T, N, dtype=torch.bool, device=dev)
    for k, fr in _groups(sal).items():
        if k > 0:
            fr_t = torch.tensor(fr, device=dev)
            idx = torch.topk(video.saliency[fr_t], k, dim=1).indices
            is_sal[fr_t[:, None], idx] = True

    # ---- anchors: DPC-kNN score on each anchor frame's non-salient tokens
    ctx_frames = [t for t in range(T) if ctx[t] > 0]
    noise = {t: torch.rand((1, N - sal[t]), device=dev, dtype=torch.float32) for t in ctx_frames}
    anchor_flat: dict[int, torch.Tensor] = {}
    for n_free, fr in _groups([N - sal[t] for t in ctx_frames]).items():
        frames = [ctx_frames[i] for i in fr]
        fr_t = torch.tensor(frames, device=dev)
        free_idx = torch.arange(N, device=dev).expand(len(frames), N)[~is_sal[fr_t]].view(len(frames), n_free)
        free_tok = torch.gather(x[fr_t], 1, free_idx[..., None].expand(-1, -1, D))
        score = density_score(free_tok, torch.cat([noise[t] for t in frames]))
        for k, rows in _groups([ctx[t] for t in frames]).items():
            rows_t = torch.tensor(rows, device=dev)
            a = torch.topk(score[rows_t], k, dim=-1).indices.sort(dim=-1).values
            slots = torch.gather(free_idx[rows_t], 1, a) + fr_t[rows_t, None] * N
            for i, r in enumerate(rows):
                anchor_flat[frames[r]] = slots[i]

    # ---- DTM: an anchor frame's pool = its segment minus the segment's salient tokens and its own
    # anchors (collapsed frames and other anchor frames' anchors included); one mm per anchor frame
    seg_lo = [lo for lo, L in zip([0] + list(itertools.accumulate(sizes)), sizes) for _ in range(L)]
    seg_hi = [lo + L for lo, L in zip([0] + list(itertools.accumulate(sizes)), sizes) for _ in range(L)]
    x_flat = x.reshape(T * N, D)
    not_sal = ~is_sal.reshape(-1)
    out_tok = [x_flat[~not_sal]]
    out_flat = [torch.nonzero(~not_sal).squeeze(1)]
    stat_pool = 0
    for t in ctx_frames:
        lo, hi = seg_lo[t] * N, seg_hi[t] * N
        a_idx = anchor_flat[t]
        in_pool = not_sal[lo:hi].clone()
        in_pool[a_idx - lo] = False
        p_idx = torch.nonzero(in_pool).squeeze(1) + lo
        anchors, pool = x_flat[a_idx], x_flat[p_idx]
        # unit rows of just this pool (row-wise: the same bits as normalising the whole video)
        out_tok.append(dtm_single(anchors, anchors / anchors.norm(dim=-1, keepdim=True), pool,
                                  pool / pool.norm(dim=-1, keepdim=True), P.beta))
        del pool
        out_flat.append(a_idx)
        stat_pool += int(p_idx.numel())

    # ---- assembly: raster order, each token at its own / its anchor's slot (original M-RoPE ids)
    return _assemble(video, out_tok, out_flat, g_src, sim, cuts, sizes, {
        "variant": P.variant,
        "ignore_runs": runs,
        "collapsed_frames": T - len(runs),
        "frame_retain_num": int(N * P.retention),
        "salient_per_frame": sal,
        "context_per_frame": ctx,
        "salient_kept": sum(sal),
        "anchors": sum(ctx),
        "anchor_frames": len(ctx_frames),
        "merged_pool_tokens": stat_pool,
    })


def _most_salient_token(video: VideoTokens, g_src: str, sim: torch.Tensor, cuts: list, sizes: list) -> CompressedTokens:
    """A budget of int(N r) = 0 tokens per frame (N < 1/r): the official rule keeps nothing; we keep
    the video's single most salient token (first on ties) at its own slot, so >= 1 token enters the LLM."""
    T, N, D = video.features.shape
    flat = torch.argmax(video.saliency.reshape(-1)).view(1)
    return _assemble(video, [video.features.reshape(T * N, D)[flat]], [flat], g_src, sim, cuts, sizes,
                     {"frame_retain_num": 0, "frame_salient_num": 0, "frame_context_num": 0, "min_one_token": True,
                      "salient_kept": 0, "anchors": 0})


def _assemble(video: VideoTokens, out_tok: list, out_flat: list, g_src: str, sim: torch.Tensor, cuts: list,
              sizes: list, extra: dict) -> CompressedTokens:
    """Kept tokens in raster order of their slots (each at its own or its anchor's (t, h, w)), with the
    segmentation stats both variants report plus the variant's own `extra`."""
    T, N, _ = video.features.shape
    flat = torch.cat(out_flat)
    order = torch.argsort(flat)
    flat = flat[order]
    W = video.grid_hw[1]
    stats = {
        "tokens_in": T * N,
        "tokens_out": int(flat.numel()),
        "frame_feature_source": g_src,
        "adjacent_cosine": [float(v) for v in sim.float().tolist()],
        "cut_indices": cuts,
        "segments": len(sizes),
        "segment_sizes": sizes,
        **extra,
        "pruned": T * N - int(flat.numel()),
    }
    return CompressedTokens(features=torch.cat(out_tok)[order].to(video.features.dtype),
                            positions=torch.stack([flat // N, (flat % N) // W, flat % W], dim=-1), stats=stats)


@register("fastvid")
class FastVID(Compressor):
    """FastVID (Shen et al., 2025): the official LLaVA-OneVision variant (default) or, with
    ``variant="qwen2_5_vl"``, the official Qwen2.5-VL variant (see docs/methods/fastvid.md)."""

    @dataclass
    class Params:
        retention: float = 0.25
        c: int = 8          # DySeg: minimum number of segments (c - 1 forced cuts)
        tau: float | None = None         # DySeg: cut where adjacent cosine < tau; None -> variant default
        d: float = 0.4      # STPrune: context (anchor) share of the budget
        p: int = 4          # DTM: anchor-frame stride inside a segment
        beta: float = 0.6   # DTM: minimum weight of the anchor in its merged token
        ignore_tau: float | None = None  # qwen2_5_vl only: collapse frames with cosine >= ignore_tau to the next
        variant: str = "llava"           # which official integration: "llava" (LLaVA-OV) or "qwen2_5_vl"

        def __post_init__(self) -> None:
            self.retention = check_retention(self.retention)
            self.variant = check_choice("variant", self.variant, tuple(VARIANT_DEFAULTS))
            defaults = VARIANT_DEFAULTS[self.variant]
            self.c = check_int("c", self.c, 1)
            self.tau = check_range("tau", defaults["tau"] if self.tau is None else self.tau, -1.0, 1.0)
            self.d = check_range("d", self.d, 0.0, 1.0)
            self.p = check_int("p", self.p, 1)
            self.beta = check_range("beta", self.beta, 0.0, 1.0)
            if self.variant == "qwen2_5_vl":
                v = defaults["ignore_tau"] if self.ignore_tau is None else self.ignore_tau
                self.ignore_tau = check_range("ignore_tau", v, -1.0, 1.0)
            elif self.ignore_tau is not None:
                raise ValueError(f"ignore_tau: only used by variant 'qwen2_5_vl', got {self.ignore_tau!r} "
                                 f"with variant {self.variant!r}")

    def compress(self, video: VideoTokens) -> CompressedTokens:
        if self.params.variant == "qwen2_5_vl":
            return _compress_qwen2_5_vl(self.params, video)
        return self._compress_llava(video)

    def _compress_llava(self, video: VideoTokens) -> CompressedTokens:
        """LLaVA-OneVision variant (the fixtures' algorithm)."""
        P = self.params
        x = video.features
        T, N, D = x.shape
        dev = x.device

        # ---- per-frame global feature for DySeg
        if video.frame_features is not None:
            g, g_src = video.frame_features, "frame_features"
        elif video.encoder_features is not None:
            g, g_src = _saliency_pool(video.saliency, video.encoder_features), "saliency_pooled_encoder_features"
        else:
            g, g_src = _saliency_pool(video.saliency, x), "saliency_pooled_features"
        sizes, cuts, sim = dyseg(g, P.c, P.tau)

        # ---- budgets
        R, S, C = frame_budgets(N, P.retention, P.d)
        if R == 0:
            warnings.warn(f"fastvid: int(N * retention) = int({N} * {P.retention}) = 0 tokens per frame; "
                          "the official budget rule keeps no video token: keeping the most salient one",
                          stacklevel=2)
            return _most_salient_token(video, g_src, sim, cuts, sizes)
        budget = anchor_budgets(sizes, C, P.p)
        n_free = N - S

        # ---- ATS: top-S salient tokens per frame, kept verbatim
        sal_idx = torch.topk(video.saliency, S, dim=1).indices                      # (T, S)
        keep = torch.ones(T, N, dtype=torch.bool, device=dev)
        keep.scatter_(1, sal_idx, False)
        free_idx = torch.arange(N, device=dev).expand(T, N)[keep].view(T, n_free)   # ascending
        free_tok = torch.gather(x, 1, free_idx[..., None].expand(T, n_free, D))     # (T, n_free, D)
        sal_tok = torch.gather(x, 1, sal_idx[..., None].expand(T, S, D))
        frame_ids = torch.arange(T, device=dev)
        out_tok = [sal_tok.reshape(-1, D)]
        out_flat = [(frame_ids[:, None] * N + sal_idx).reshape(-1)]

        # ---- density score for every frame (one (T, N - S) noise draw, as the official code)
        score = density_score(free_tok)

        # ---- DTM, single-frame pools: frames whose budget equals C merge their own tokens
        # (in batches of frames: each batch's copies stay a bounded slice of the input)
        stat_pool = 0
        n_single = n_multi = 0
        budget_t = torch.tensor(budget, device=dev)
        own = torch.nonzero(budget_t == C).squeeze(1) if C > 0 else budget_t.new_zeros(0)
        if own.numel():
            a_all = torch.topk(score[own], C, dim=-1).indices                        # (F, C)
            others = torch.nonzero(budget_t != C).squeeze(1)
            min_batch = official_batch(T, x.device)
            for i, j in dtm_spans(own.numel(), n_free, D, x.device):
                fr, a = own[i:j], a_all[i:j]
                if j - i < min_batch:   # joined by other frames (outputs dropped), as the official batch is
                    extra = others[:min_batch - (j - i)]
                    fr_b = torch.cat([fr, extra])
                    a_b = torch.cat([a, torch.topk(score[extra], C, dim=-1).indices])
                else:
                    fr_b, a_b = fr, a
                pool = free_tok.index_select(0, fr_b)
                anchors = torch.gather(pool, 1, a_b[..., None].expand(-1, C, D))
                merged, _ = dtm(anchors, pool, P.beta)
                out_tok.append(merged[:j - i].reshape(-1, D))
                out_flat.append((fr[:, None] * N + torch.gather(free_idx[fr], 1, a)).reshape(-1))
            stat_pool += own.numel() * n_free
            n_single = own.numel()

        # ---- DTM, segment pools: anchor frames of multi-frame segments merge all L frames; the
        # segment's pool (a view) and its unit rows exist once, shared by every anchor frame
        start = 0
        for L in sizes:
            K = budget[start + L - 1]
            if L > 1 and K > C:
                rel = [i for i in range(L) if budget[start + i] > C]
                fr_all = torch.tensor(rel, device=dev) + start
                Ke = min(K, n_free)  # the official topk requires K <= N - S
                a_all = torch.topk(score[fr_all], Ke, dim=-1).indices                # (F, Ke)
                pool = free_tok[start:start + L].reshape(1, L * n_free, D)
                pool_n = pool / pool.norm(dim=-1, keepdim=True)
                for i, j in dtm_spans(len(rel), L * n_free, Ke, x.device):   # one span: the official call
                    fr, a = fr_all[i:j], a_all[i:j]
                    anchors = torch.gather(free_tok[fr], 1, a[..., None].expand(-1, Ke, D))
                    merged, _ = dtm(anchors, pool.expand(len(fr), -1, -1), P.beta,
                                    pool_n=pool_n.expand(len(fr), -1, -1))
                    out_tok.append(merged.reshape(-1, D))
                    out_flat.append((fr[:, None] * N + torch.gather(free_idx[fr], 1, a)).reshape(-1))
                del pool_n
                stat_pool += len(rel) * L * n_free
                n_multi += len(rel)
            start += L

        # ---- assembly: raster order of the kept slots, each token at its own / anchor's slot
        return _assemble(video, out_tok, out_flat, g_src, sim, cuts, sizes, {
            "frame_retain_num": R,
            "frame_salient_num": S,
            "frame_context_num": C,
            "context_budget_per_frame": budget,
            "salient_kept": T * S,
            "anchors": sum(int(f.numel()) for f in out_flat) - T * S,
            "anchor_frames_single_pool": n_single,
            "anchor_frames_segment_pool": n_multi,
            "merged_pool_tokens": stat_pool,
        })
