"""AOT: token Anchors with local-global Optimal Transport (Li et al., arXiv 2603.01400).

No official code exists; this follows the paper's Sec. 3 and Algorithms 1-2 (appendix), with
every open choice written down in docs/methods/aot.md.

  anchors   per frame, M anchors = local top-K_w by saliency in each cell of a windows x windows
            grid (Eq. 8) plus global top-K by saliency among the rest (Eq. 7), |x_l| ~ |x_g|.
  intra     per frame, Sinkhorn plan between the M anchors and the N-M other tokens on the cost
            1 - cos (Eq. 9, uniform marginals, Sec. 6.1); mass m_j (Eq. 10) and mass-normalised
            aggregation x~_j = (x_j + lam_intra sum_i T_ij x_i) / (1 + lam_intra m_j) (Eq. 11-12).
  inter     frames split into clips (uniform, or FastVID's DySeg, Sec. 8); the first frame's
            intra tokens are the clip anchors A(1); for each later frame, Sinkhorn between A and the
            frame's tokens S (Eq. 13-14), row-normalised assignment p_ij and q_i = max_j p_ij
            (Eq. 15); tokens with q_i < tau are kept as they are, the others are aggregated into
            the anchors (Eq. 16).  tau is tuned so that the output hits the retention exactly
            (Sec. 7: "adjust the keep ratio for inter-frame compression ... by tuning tau").
  output    clip anchors at their first-frame slots + kept high-change tokens at their own slots,
            sorted by slot (t, h, w).

Sinkhorn: entropy 0.1, 100 iterations (Sec. 6.2 / 7), log-domain, batched over frames / clips.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ottvid.contract import CompressedTokens, VideoTokens
from ottvid.registry import Compressor, check_choice, check_int, check_range, check_retention, register

# Sec. 7: intra-frame anchors per frame for each retention, keyed by the per-frame token grid of
# the two backbones the paper configures (LLaVA-OV 32 frames x 196, LLaVA-Video 64 frames x 169).
PAPER_ANCHORS: dict[int, dict[float, int]] = {
    196: {0.10: 126, 0.15: 144, 0.20: 196, 0.25: 205},
    169: {0.10: 108, 0.15: 144, 0.20: 176, 0.25: 198},
}
_RATIOS = (0.10, 0.15, 0.20, 0.25)


def _anchor_fraction_curve(N: int) -> list[float]:
    """M/N at the four paper ratios: the backbone's own row for N in PAPER_ANCHORS, else the mean of both rows."""
    if N in PAPER_ANCHORS:
        return [PAPER_ANCHORS[N][r] / N for r in _RATIOS]
    rows = [[PAPER_ANCHORS[n][r] / n for r in _RATIOS] for n in PAPER_ANCHORS]
    return [sum(col) / len(col) for col in zip(*rows)]


def paper_anchor_count(retention: float, N: int) -> int:
    """Anchors per frame before feasibility clamping (Sec. 7 table, interpolated; docs/methods/aot.md).

    rho(r) = M/N is piecewise linear through the paper's four points; below r=0.10 it scales as
    rho(0.10) * r / 0.10 (same inter-frame keep ratio as at 10 %), above 0.25 it stays at rho(0.25).
    """
    rho = _anchor_fraction_curve(N)
    r = retention
    if r <= _RATIOS[0]:
        frac = rho[0] * r / _RATIOS[0]
    elif r >= _RATIOS[-1]:
        frac = rho[-1]
    else:
        k = max(i for i in range(len(_RATIOS) - 1) if _RATIOS[i] <= r)
        w = (r - _RATIOS[k]) / (_RATIOS[k + 1] - _RATIOS[k])
        frac = rho[k] + w * (rho[k + 1] - rho[k])
    return int(math.floor(frac * N + 0.5))


def token_budget(retention: float, T: int, N: int) -> int:
    """B = max(1, round-half-up(r * T * N)): the exact number of tokens AOT outputs."""
    return max(1, int(math.floor(retention * T * N + 0.5)))


# ---------------------------------------------------------------- Sinkhorn (Eq. 4-5, 23-24, 30-31)

def sinkhorn(C: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float, iters: int) -> torch.Tensor:
    """Entropic OT plan diag(u) exp(-C/eps) diag(v), batched over the leading dim (Eq. 5).

    C: (B, m, n); a: (B, m), b: (B, n) marginals. Iterates u = a / (K v), v = b / (K^T u) from
    v(0) = 1 for `iters` steps (the paper's order; Algorithm 1 lines 7-8). Plain domain (batched
    mat-vecs) when exp(-C/eps) cannot underflow in float32 (cost range / eps <= 80, always the case
    for the cosine cost at eps >= 0.025), else the same iterations in the log domain. float32 out.
    """
    C, a, b = C.float(), a.float(), b.float()
    if C.numel() and float(C.amax() - C.amin()) / eps <= _PLAIN_MAX_EXPONENT:
        shift = C.amin(dim=(-2, -1), keepdim=True)             # exp(-(C - min)/eps) <= 1; cancels in the plan
        K = torch.exp(-(C - shift) / eps)
        v = torch.ones_like(b)
        for _ in range(iters):
            u = a / (K @ v.unsqueeze(-1)).squeeze(-1)
            v = b / (K.transpose(-1, -2) @ u.unsqueeze(-1)).squeeze(-1)
        return u.unsqueeze(-1) * K * v.unsqueeze(-2)
    logK = -C / eps
    log_a, log_b = a.log(), b.log()
    g = torch.zeros_like(log_b)  # log v(0) = 0
    f = torch.zeros_like(log_a)
    for _ in range(iters):
        f = log_a - torch.logsumexp(logK + g.unsqueeze(-2), dim=-1)
        g = log_b - torch.logsumexp(logK + f.unsqueeze(-1), dim=-2)
    return torch.exp(f.unsqueeze(-1) + logK + g.unsqueeze(-2))


_PLAIN_MAX_EXPONENT = 80.0  # exp(-80) ~ 1.8e-35 > float32's smallest normal (1.2e-38)


def _cos_cost(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """C = 1 - cos(x_m, y_n) (Eq. 9, 13; Sec. 6.1), batched: (B, m, d), (B, n, d) -> (B, m, n)."""
    return 1.0 - F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).transpose(-1, -2)


# ---------------------------------------------------------------- anchors (Sec. 3.2, Eq. 7-8)

def window_ids(grid_hw: tuple[int, int], windows: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) window id of each token for a windows x windows grid of cells (row cut i*H//w), and (n_win,) cell sizes."""
    H, W = grid_hw
    wh, ww = min(windows, H), min(windows, W)
    rows = torch.arange(H, device=device) * wh // H  # cell row of each grid row: cuts at ceil(i*H/wh)
    cols = torch.arange(W, device=device) * ww // W
    wid = (rows.view(H, 1) * ww + cols.view(1, W)).reshape(-1)
    sizes = torch.bincount(wid, minlength=wh * ww)
    return wid, sizes


def select_anchors(saliency: torch.Tensor, grid_hw: tuple[int, int], M: int, windows: int,
                   local_ratio: float) -> tuple[torch.Tensor, dict]:
    """Local-global anchors (Eq. 7-8): (T, M) token indices per frame, ascending.

    Local: K_w = floor(round(M * local_ratio) / n_win) top-saliency tokens in every window (capped
    by the smallest window); global: the M - n_win*K_w highest-saliency tokens not chosen locally
    (the paper excludes local picks from the global set). Ties go to the lower index.
    """
    T, N = saliency.shape
    dev = saliency.device
    if M >= N:
        return torch.arange(N, device=dev).expand(T, N).clone(), {"local": 0, "global": N}
    wid, sizes = window_ids(grid_hw, windows, dev)
    n_win = sizes.numel()
    K_w = min(int(math.floor(M * local_ratio + 0.5)) // n_win, int(sizes.min()))
    s = saliency.float()
    local = torch.zeros(T, N, dtype=torch.bool, device=dev)
    if K_w > 0:
        order = torch.sort(s, dim=1, descending=True, stable=True).indices          # by saliency
        by_win = torch.sort(wid[order], dim=1, stable=True).indices                  # group by window
        perm = order.gather(1, by_win)                                              # (T, N)
        start = torch.cumsum(sizes, 0) - sizes
        rank = torch.arange(N, device=dev).view(1, N) - start[wid[perm]]
        local.scatter_(1, perm, rank < K_w)
    K_g = M - n_win * K_w
    g_score = s.masked_fill(local, -math.inf)
    g_idx = torch.sort(g_score, dim=1, descending=True, stable=True).indices[:, :K_g]
    chosen = local.clone()
    chosen.scatter_(1, g_idx, True)
    idx = chosen.nonzero()[:, 1].view(T, M)  # row-major nonzero: ascending per frame
    return idx, {"local": n_win * K_w, "global": K_g}


# ---------------------------------------------------------------- intra-frame OT (Eq. 9-12)

def intra_frame_ot(x: torch.Tensor, anchor_idx: torch.Tensor, lam: float, eps: float, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Aggregate every frame's unselected tokens into its anchors (Eq. 9-12), batched over frames.

    x: (T, N, D) float32; anchor_idx: (T, M). Returns x~^a (T, M, D) and the plans (T, M, N-M)
    (rows = anchors with marginal 1/M, columns = unselected tokens with marginal 1/(N-M)).
    """
    T, N, D = x.shape
    step = max(1, (1 << 24) // max(1, N * D))
    if T > step:  # frames are independent: blocks of frames keep the copies bounded (linear in T)
        parts = [intra_frame_ot(x[i:i + step], anchor_idx[i:i + step], lam, eps, iters) for i in range(0, T, step)]
        return torch.cat([a for a, _ in parts]), torch.cat([b for _, b in parts])
    M = anchor_idx.shape[1]
    xa = x.gather(1, anchor_idx.unsqueeze(-1).expand(T, M, D))
    if M >= N:
        return xa, x.new_zeros(T, M, 0)
    mask = torch.ones(T, N, dtype=torch.bool, device=x.device)
    mask.scatter_(1, anchor_idx, False)
    xu = x[mask].view(T, N - M, D)
    a = x.new_full((T, M), 1.0 / M)
    b = x.new_full((T, N - M), 1.0 / (N - M))
    plan = sinkhorn(_cos_cost(xa, xu), a, b, eps, iters)                 # T*_{ij} transposed: (T, M, N-M)
    m = plan.sum(-1, keepdim=True)                                         # Eq. 10
    return (xa + lam * plan @ xu) / (1.0 + lam * m), plan                 # Eq. 11


# ---------------------------------------------------------------- inter-frame OT (Eq. 13-16)

def inter_frame_assign(A: torch.Tensor, S: torch.Tensor, eps: float, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 13-15 for a batch of clips: p (B, M_tok, M_anc) row-normalised plan and q (B, M_tok) = max_j p_ij."""
    B, M, _ = A.shape
    u = A.new_full((B, M), 1.0 / M)
    v = A.new_full((B, S.shape[1]), 1.0 / S.shape[1])
    plan = sinkhorn(_cos_cost(A, S), u, v, eps, iters).transpose(1, 2)     # (B, tokens i, anchors j)
    p = plan / plan.sum(-1, keepdim=True)
    return p, p.max(-1).values


def inter_frame_update(A: torch.Tensor, S: torch.Tensor, p: torch.Tensor, merge: torch.Tensor, lam: float) -> torch.Tensor:
    """Eq. 16: a_j <- (a_j + lam sum_{i merged} p_ij s_i) / (1 + lam sum_{i merged} p_ij)."""
    w = p * merge.unsqueeze(-1).to(p.dtype)                                # (B, i, j)
    return (A + lam * w.transpose(1, 2) @ S) / (1.0 + lam * w.sum(1).unsqueeze(-1))


# ---------------------------------------------------------------- clips (Sec. 3.3, Sec. 8)

def uniform_clips(T: int, K: int) -> list[int]:
    """K contiguous clips of near-equal length: boundaries floor(k*T/K)."""
    cuts = [k * T // K for k in range(K + 1)]
    return [cuts[k + 1] - cuts[k] for k in range(K)]


def dyseg_cuts(g: torch.Tensor, c: int, tau: float) -> tuple[list[int], torch.Tensor]:
    """FastVID's DySeg (Sec. 8): cut after frame i if s_i = cos(g_i, g_{i+1}) is among the c-1
    smallest or below tau. Returns the cuts ordered from strongest (lowest s) to weakest, and s."""
    T = g.shape[0]
    if T < 2:
        return [], g.new_zeros(0)
    gn = F.normalize(g.float(), dim=-1)
    s = (gn[:-1] * gn[1:]).sum(-1)
    order = torch.sort(s, stable=True).indices.tolist()
    k = min(c - 1, T - 1)
    cuts = [i for j, i in enumerate(order) if j < k or float(s[i]) < tau]
    return cuts, s


def _lengths_from_cuts(T: int, cuts: list[int]) -> list[int]:
    ends = sorted(cuts) + [T - 1]
    out, prev = [], -1
    for e in ends:
        out.append(e - prev)
        prev = e
    return out


# ---------------------------------------------------------------- the method

@register("aot")
class AOT(Compressor):
    """AOT (arXiv 2603.01400): local-global anchors, intra-frame then inter-frame OT aggregation."""

    @dataclass
    class Params:
        retention: float = 0.10
        anchors: int | None = None          # M per frame; None = Sec. 7 table / interpolation
        windows: int = 3                    # local anchor windows per side (windows x windows cells)
        local_ratio: float = 0.5            # |x_l| / M (paper: |x_g| = |x_l|)
        lambda_intra: float = 1.0           # Eq. 11
        lambda_inter: float = 1.0           # Eq. 16
        tau: float | None = None            # Eq. 15 gate; None = tuned per video to hit the retention
        sinkhorn_eps: float = 0.1           # entropy lambda (Sec. 6.2, 7)
        sinkhorn_iters: int = 100           # Sec. 4.1, 7
        clips: str = "uniform"              # "uniform" | "dynamic" (Sec. 8, FastVID DySeg)
        clip_len: int = 8                   # uniform clips: ceil(T / clip_len) near-equal clips
        dyseg_c: int = 8                    # DySeg: at least c clips
        dyseg_tau: float = 0.9              # DySeg: cut where adjacent frame cosine < dyseg_tau

        def __post_init__(self) -> None:
            self.retention = check_retention(self.retention)
            if self.anchors is not None:
                self.anchors = check_int("anchors", self.anchors, 1)
            self.windows = check_int("windows", self.windows, 1)
            self.local_ratio = check_range("local_ratio", self.local_ratio, 0.0, 1.0)
            self.lambda_intra = check_range("lambda_intra", self.lambda_intra, 0.0, math.inf, hi_open=True)
            self.lambda_inter = check_range("lambda_inter", self.lambda_inter, 0.0, math.inf, hi_open=True)
            if self.tau is not None:
                self.tau = check_range("tau", self.tau, 0.0, 1.0)
            self.sinkhorn_eps = check_range("sinkhorn_eps", self.sinkhorn_eps, 0.0, math.inf, lo_open=True, hi_open=True)
            self.sinkhorn_iters = check_int("sinkhorn_iters", self.sinkhorn_iters, 1)
            self.clips = check_choice("clips", self.clips, ("uniform", "dynamic"))
            self.clip_len = check_int("clip_len", self.clip_len, 1)
            self.dyseg_c = check_int("dyseg_c", self.dyseg_c, 1)
            self.dyseg_tau = check_range("dyseg_tau", self.dyseg_tau, -1.0, 1.0)

    # -- planning: clips and anchor count (docs/methods/aot.md, "Hitting the retention")
    def plan(self, video: VideoTokens) -> tuple[list[int], int, int, dict]:
        """Clip lengths, anchors per frame M and the token budget B, with B = K*M + kept exactly."""
        p = self.params
        T, N = video.features.shape[:2]
        B = token_budget(p.retention, T, N)
        if p.clips == "uniform":
            K = -(-T // p.clip_len)
            cuts = None
        else:
            cuts, _ = dyseg_cuts(self._frame_globals(video), p.dyseg_c, p.dyseg_tau)
            K = len(cuts) + 1
        # every clip emits its M anchors and at most (L-1)*M kept tokens:
        # need ceil(B/T) <= M <= min(N, floor(B/K)); merge clips until that is feasible.
        lo = -(-B // T)
        while K > 1 and B // K < lo:
            K -= 1
        lengths = uniform_clips(T, K) if cuts is None else _lengths_from_cuts(T, cuts[:K - 1])
        M_req = p.anchors if p.anchors is not None else paper_anchor_count(p.retention, N)
        M = max(lo, min(M_req, N, B // K))
        return lengths, M, B, {"anchors_requested": M_req}

    def _frame_globals(self, video: VideoTokens) -> torch.Tensor:
        """Per-frame global feature for DySeg: frame_features, else saliency-weighted encoder (or LLM) features."""
        if video.frame_features is not None:
            return video.frame_features.float()
        src = video.encoder_features if video.encoder_features is not None else video.features
        return (video.saliency.float().unsqueeze(-1) * src.float()).sum(1)

    def compress(self, video: VideoTokens) -> CompressedTokens:
        p = self.params
        x = video.features.float()
        T, N, D = x.shape
        dev = x.device
        lengths, M, B, info = self.plan(video)
        K = len(lengths)

        # Sec. 3.2 anchors and Eq. 9-12 intra-frame aggregation, all frames at once
        anchor_idx, split = select_anchors(video.saliency, video.grid_hw, M, p.windows, p.local_ratio)
        xt, _ = intra_frame_ot(x, anchor_idx, p.lambda_intra, p.sinkhorn_eps, p.sinkhorn_iters)

        # Eq. 13-16 inter-frame OT, all clips in parallel, sequential over frames within a clip
        starts = torch.tensor([sum(lengths[:k]) for k in range(K)], device=dev)
        lens = torch.tensor(lengths, device=dev)
        L_max = max(lengths)
        quota = self._frame_quota(lengths, B - K * M) if p.tau is None else None
        A = xt[starts]                                                       # (K, M, D)
        keep = torch.zeros(T, M, dtype=torch.bool, device=dev)
        n_merged, taus = 0, []
        for l in range(1, L_max):
            active = lens > l
            frames = torch.clamp(starts + l, max=T - 1)
            S = xt[frames]
            prob, q = inter_frame_assign(A, S, p.sinkhorn_eps, p.sinkhorn_iters)
            if p.tau is None:
                need = int(quota[l])
                flat = q.masked_fill(~active.unsqueeze(-1), math.inf).reshape(-1)
                order = torch.sort(flat, stable=True).indices
                kept = torch.zeros_like(flat, dtype=torch.bool)
                kept[order[:need]] = True
                kept = kept.view(K, M)
                taus.append(float(flat[order[need]]) if need < flat.numel() and math.isfinite(float(flat[order[need]])) else None)
            else:
                kept = (q < p.tau) & active.unsqueeze(-1)
                taus.append(p.tau)
            merge = ~kept & active.unsqueeze(-1)
            A = torch.where(active.view(K, 1, 1), inter_frame_update(A, S, prob, merge, p.lambda_inter), A)
            keep[frames[active]] = kept[active]
            n_merged += int(merge.sum())

        # assembly: clip anchors at their first frame's anchor slots, kept tokens at their own slots
        slot = torch.arange(T, device=dev).view(T, 1) * N + anchor_idx      # (T, M) flat slots
        feats = torch.cat([A.reshape(K * M, D), xt[keep]], 0)
        slots = torch.cat([slot[starts].reshape(-1), slot[keep]], 0)
        order = torch.argsort(slots)
        slots = slots[order]
        H, W = video.grid_hw
        pos = torch.stack([slots // N, (slots % N) // W, slots % W], dim=-1)
        n_kept = int(keep.sum())
        stats = {
            "tokens_in": T * N, "tokens_out": K * M + n_kept, "budget": B,
            "anchors_per_frame": M, "anchors_requested": info["anchors_requested"],
            "local_anchors": split["local"], "global_anchors": split["global"],
            "clips": K, "clip_lengths": lengths,
            "intra_merged": T * (N - M), "inter_merged": n_merged, "inter_kept": n_kept,
            "tau_per_step": taus,
        }
        return CompressedTokens(features=feats[order].to(video.features.dtype), positions=pos, stats=stats)

    @staticmethod
    def _frame_quota(lengths: list[int], D: int) -> list[int]:
        """Kept high-change tokens per inter-frame step l (index l): D spread evenly over the T-K
        non-first frames, the remainder one each to the earliest such frames, summed per step."""
        later = [(s + l, l) for k, s in enumerate([sum(lengths[:k]) for k in range(len(lengths))])
                 for l in range(1, lengths[k])]
        later.sort()
        quota = [0] * (max(lengths) + 1)
        if not later:
            return quota
        base, rem = divmod(D, len(later))
        for rank, (_, l) in enumerate(later):
            quota[l] += base + (1 if rank < rem else 0)
        return quota
