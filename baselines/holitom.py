"""`holitom`: HoliTom's outer-LLM token merging ("HoliTom w/o M", Shao et al., 2025).

Follows the official `holitom/llava_arch.py` (cokeshao/HoliTom @ e9b2972), which produced the
published numbers; see docs/methods/holitom.md for every departure from the paper.

Pipeline (NOTES.md steps 1-9):
  1. S_t(p) = cos(x_t(p), x_{t+1}(p))                         adjacent-frame similarity (temporal merging)
  2. V(s,e) = (e-s) |{p : S_t(p) > tau, t=s..e-1}|            tokens removed by window [s,e]
  3. dynamic programme over contiguous segments maximising sum V     (temporal segmentation)
  4. r' = min(r / ((TN-R)/TN), 1)                              retention after temporal merging
  5. per segment: static positions averaged over time, dynamic positions kept per frame
  6. dynamic: per-frame attention top-ceil(n r')  (D = 0; D > 0 adds DPC-kNN "contextual" tokens)
  7. static: DPC-kNN centres (round(m r') of them), beta-weighted merge of each cluster (spatial merging)
  8. order: per segment, static tokens then frames s..e (LLaVA-OV `one_token` order).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ottvid.contract import CompressedTokens, VideoTokens
from ottvid.registry import Compressor, check_int, check_range, check_retention, register

# tau (`T` in the official scripts) per retention: scripts/eval_ov-7b_holitom.sh, "w/o M" block,
# and scripts/eval_vid-7b_holitom.sh.  Other ratios take the tau of the nearest scripted ratio.
SCRIPT_TAU = {0.10: 0.65, 0.15: 0.80, 0.20: 0.80, 0.25: 0.80}


def tau_for_retention(r: float) -> float:
    """tau of the official script whose RETAIN_RATIO is nearest to r (ties go to the lower ratio).

    That is 0.65 for r <= 0.125 and 0.80 above (0.80 is also the code's own default `T`).
    """
    best = min(SCRIPT_TAU, key=lambda k: (abs(k - r), k))
    return SCRIPT_TAU[best]


# ---- 1-3: similarity, window values, segmentation -----------------------------------------------

def adjacent_similarity(x: torch.Tensor) -> torch.Tensor:
    """S (T-1, N): cosine of the same grid position in consecutive frames (L2-normalised first,
    as the official code does), computed in the features' own dtype."""
    T, N, D = x.shape
    out = x.new_empty(max(T - 1, 0), N)
    step = max(1, (1 << 22) // max(1, N * D))  # frames per block: temporaries stay bounded (linear in T)
    for i in range(0, T - 1, step):
        j = min(T - 1, i + step)
        xn = F.normalize(x[i:j + 1], p=2, dim=-1)   # row-wise: the same bits as the whole video at once
        out[i:j] = F.cosine_similarity(xn[:-1], xn[1:], dim=-1)
    return out


def static_window_values(stable: torch.Tensor) -> torch.Tensor:
    """V (T, T) int64 with V[s, e] = (e - s) * |Static(s, e)| for e > s, else 0.

    `stable` (T-1, N) bool is S > tau.  |Static(s, e)| counts positions whose run of consecutive
    stable pairs starting at s reaches e-1; computed from run lengths (no T x T x N cumprod).
    """
    Tm1, N = stable.shape
    T = Tm1 + 1
    dev = stable.device
    V = torch.zeros(T, T, dtype=torch.int64, device=dev)
    if Tm1 == 0:
        return V
    t = torch.arange(Tm1, device=dev).view(Tm1, 1)
    # first unstable pair at or after t (Tm1 when none): reverse cumulative minimum
    first_break = torch.where(stable, torch.full_like(t, Tm1).expand(Tm1, N), t.expand(Tm1, N))
    first_break = first_break.flip(0).cummin(0).values.flip(0)
    run = first_break - t                                    # (T-1, N) in [0, T-1-s]
    hist = torch.zeros(Tm1, T, dtype=torch.int64, device=dev)
    hist.scatter_add_(1, run, torch.ones_like(run))
    at_least = hist.flip(1).cumsum(1).flip(1)                 # at_least[s, k] = #{p: run >= k}
    length = torch.arange(T, device=dev).view(1, T) - t       # e - s
    valid = length >= 1
    counts = at_least.gather(1, length.clamp(0, T - 1))
    V[:Tm1] = torch.where(valid, length * counts, torch.zeros_like(counts))
    return V


def select_static_windows(V: torch.Tensor, max_window_size: int) -> tuple[list[tuple[int, int]], int]:
    """Dynamic programme dp[i] = max(dp[i-1], max_{w=2..min(i+1,max_window_size)} dp[i-w] + V[i-w+1, i]).

    Ties: the singleton wins, then the shortest window (strict improvement only, as officially).
    Returns the segments [(s, e), ...] in temporal order and R = dp[T-1] (tokens removed).
    """
    Vc = V.detach().to("cpu", torch.int64)
    T = Vc.shape[0]
    dp = torch.zeros(T + 1, dtype=torch.int64)               # dp[i + 1] holds dp[i]; dp[0] = dp[-1] = 0
    prev = [0] * T
    for i in range(T):
        best, best_start = int(dp[i]), i
        wmax = min(i + 1, max_window_size)
        if wmax >= 2:
            starts = i + 1 - torch.arange(2, wmax + 1)       # increasing window length
            cand = dp[starts] + Vc[starts, i]
            a = int(torch.argmax(cand))                       # first maximum = shortest window
            if int(cand[a]) > best:
                best, best_start = int(cand[a]), int(starts[a])
        dp[i + 1] = best
        prev[i] = best_start
    segments = []
    i = T - 1
    while i >= 0:
        segments.append((prev[i], i))
        i = prev[i] - 1
    return segments[::-1], int(dp[T])


# ---- 7: density-peak clustering and merge --------------------------------------------------------

def cluster_dpc_knn(x: torch.Tensor, cluster_num: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """DPC-kNN centres (B, cluster_num), sorted by index, and the distance matrix (B, L, L).

    d_ij = ||x_i - x_j|| / sqrt(D); rho_i = exp(-mean_kNN d^2) + 1e-6 U(0,1) (noise from the global
    generator, shape (B, L), float32); delta_i = distance to the nearest denser token (d_max for the
    densest); centres = top cluster_num of delta * rho.
    """
    B, L, Dm = x.shape
    dist = torch.cdist(x.float(), x.float()) / (Dm ** 0.5)
    knn = torch.topk(dist, k, dim=-1, largest=False).values
    density = (-(knn ** 2).mean(dim=-1)).exp()
    density = density + torch.rand(density.shape, device=density.device, dtype=density.dtype) * 1e-6
    denser = (density[:, None, :] > density[:, :, None]).to(dist.dtype)
    dist_max = dist.flatten(1).max(dim=-1).values[:, None, None]
    delta = (dist * denser + dist_max * (1 - denser)).min(dim=-1).values
    centres = (delta * density).topk(cluster_num, dim=-1).indices
    return torch.sort(centres, dim=-1).values, dist


def merge_by_clustering(x: torch.Tensor, centres: torch.Tensor, dist: torch.Tensor,
                        beta: float, no_beta: bool) -> torch.Tensor:
    """(B, c, D): each non-centre token joins its nearest centre (lowest index on ties); a centre
    with members becomes beta * x_c + (1 - beta) * mean(members) (the plain mean of centre and
    members when `no_beta`), a centre without members stays x_c.  Computed in float32."""
    B, L, Dm = x.shape
    c = centres.shape[1]
    xf = x.float()
    member = torch.ones(B, L, dtype=torch.bool, device=x.device).scatter(1, centres, False)
    assign = dist.gather(2, centres[:, None, :].expand(B, L, c)).argmin(dim=-1)   # (B, L)
    w = member.float()
    sums = torch.zeros(B, c, Dm, dtype=torch.float32, device=x.device)
    sums.scatter_add_(1, assign[..., None].expand(B, L, Dm), xf * w[..., None])
    cnt = torch.zeros(B, c, dtype=torch.float32, device=x.device).scatter_add_(1, assign, w)[..., None]
    xc = xf.gather(1, centres[..., None].expand(B, c, Dm))
    if no_beta:
        return (xc + sums) / (1 + cnt)
    return torch.where(cnt > 0, beta * xc + (1 - beta) * (sums / cnt.clamp(min=1)), xc)


# ---- 6: dynamic tokens ----------------------------------------------------------------------------

def select_dynamic(feat: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor, retain: float,
                   D: float, K: int, beta: float, no_beta: bool):
    """Per frame of a segment (feat (W, n, D), attn (W, n), pos (n,) flat grid index):
    the top round(ceil(n r') (1-D)) tokens by attention, copied in raster order ("dominant"), then,
    when D > 0, ceil(n r') - dominant DPC-kNN merged tokens of the rest ("contextual").
    Returns features (W, k, D), flat positions (W, k), and the dominant / contextual counts."""
    W, n, Dm = feat.shape
    total = math.ceil(n * retain)
    dominant = round(total * (1 - D))
    contextual = total - dominant
    rest = torch.ones(W, n, dtype=torch.bool, device=feat.device)
    if dominant > 0:
        rest.scatter_(1, attn.topk(dominant, dim=1).indices, False)
    pos_w = pos.view(1, n).expand(W, n)
    out_f = [feat[~rest].view(W, dominant, Dm)]
    out_p = [pos_w[~rest].view(W, dominant)]
    if contextual > 0:
        # the official D > 0 branch crashes on a broadcast (docs); this is its evident intent
        rest_f = feat[rest].view(W, n - dominant, Dm)
        rest_p = pos_w[rest].view(W, n - dominant)
        centres, dist = cluster_dpc_knn(rest_f, contextual, k=min(K, contextual))
        out_f.append(merge_by_clustering(rest_f, centres, dist, beta, no_beta).to(feat.dtype))
        out_p.append(rest_p.gather(1, centres))
    return torch.cat(out_f, 1), torch.cat(out_p, 1), dominant, contextual


@register("holitom")
class HoliTom(Compressor):
    """HoliTom outer-LLM stage: DP temporal segmentation, static/dynamic split, attention top-k of
    dynamic tokens and DPC-kNN beta-weighted merge of static tokens."""

    @dataclass
    class Params:
        retention: float = 0.10       # RETAIN_RATIO (official code default 0.1)
        tau: float | None = None      # `T`: static threshold; None -> tau_for_retention(retention)
        beta: float = 0.6             # `BETA`: weight of a cluster centre in the merge
        D: float = 0.0                # `D`: share of dynamic budget given to merged contextual tokens
        K: int = 7                    # `K`: neighbours of the DPC-kNN density
        max_window_size: int = 1024   # `MAX_WINDOW_SIZE`: longest segment
        no_beta: bool = False         # `NO_BETA` set: plain mean instead of the beta-weighted merge

        def __post_init__(self) -> None:
            self.retention = check_retention(self.retention)
            if self.tau is None:
                self.tau = tau_for_retention(self.retention)
            self.tau = check_range("tau", self.tau, -1.0, 1.0)
            self.beta = check_range("beta", self.beta, 0.0, 1.0)
            self.D = check_range("D", self.D, 0.0, 1.0)
            self.K = check_int("K", self.K, 1)
            self.max_window_size = check_int("max_window_size", self.max_window_size, 1)
            if not isinstance(self.no_beta, bool):
                raise ValueError(f"no_beta: must be a bool, got {self.no_beta!r}")

    def compress(self, video: VideoTokens) -> CompressedTokens:
        p = self.params
        x, attn = video.features, video.saliency
        T, N, Dm = x.shape
        H, Wg = video.grid_hw
        dev = x.device

        # 1-3: segmentation
        stable = adjacent_similarity(x) > p.tau                        # (T-1, N)
        segments, removed = select_static_windows(static_window_values(stable), p.max_window_size)
        # 4: the official code does this in Python floats with R a float
        total = T * N
        retain = min(p.retention / ((total - float(removed)) / total), 1)

        feats, flat, frames, seg_static = [], [], [], []
        st = dict(static_in=0, static_out=0, dynamic_in=0, dynamic_kept=0, dynamic_merged_out=0)
        all_pos = torch.arange(N, device=dev)
        for s, e in segments:
            W = e - s + 1
            if W == 1:
                static = torch.zeros(N, dtype=torch.bool, device=dev)
            else:
                static = stable[s:e].all(dim=0)
            dyn_pos = all_pos[~static]
            seg_static.append(N - dyn_pos.numel())
            # 6: dynamic tokens (drawn first, as in the official `holitom`)
            df, dp_, dom, ctx = select_dynamic(x[s:e + 1][:, ~static], attn[s:e + 1][:, ~static], dyn_pos,
                                               retain, p.D, p.K, p.beta, p.no_beta)
            st["dynamic_in"] += W * dyn_pos.numel()
            st["dynamic_kept"] += W * dom
            st["dynamic_merged_out"] += W * ctx
            # 7: static tokens
            if W > 1:
                st_pos = all_pos[static]
                m = st_pos.numel()
                c = round(m * retain)
                st["static_in"] += m
                st["static_out"] += c
                if c > 0:
                    xbar = x[s:e + 1][:, static].mean(dim=0, keepdim=True)      # (1, m, D)
                    centres, dist = cluster_dpc_knn(xbar, c, k=min(p.K, c))
                    feats.append(merge_by_clustering(xbar, centres, dist, p.beta, p.no_beta)[0].to(x.dtype))
                    flat.append(st_pos[centres[0]])
                    frames.append(torch.full((c,), s, dtype=torch.int64, device=dev))
            # 8: one_token order: statics, then frames s..e (raster within each)
            k = df.shape[1]
            feats.append(df.reshape(W * k, Dm))
            flat.append(dp_.reshape(W * k))
            frames.append(torch.arange(s, e + 1, device=dev).repeat_interleave(k))

        out = torch.cat(feats, 0).to(x.dtype)
        flat_pos = torch.cat(flat, 0).to(torch.int64)
        positions = torch.stack([torch.cat(frames, 0), flat_pos // Wg, flat_pos % Wg], dim=-1)
        stats = {
            "tokens_in": total,
            "tokens_out": int(out.shape[0]),
            "tau": p.tau,
            "segments": [[s, e] for s, e in segments],
            "num_segments": len(segments),
            "segment_static": seg_static,
            "temporal_removed": int(removed),
            "retention_after_static": retain,
            "static_positions": st["static_in"],
            "static_clusters": st["static_out"],
            "static_merged": st["static_in"] - st["static_out"],
            "dynamic_in": st["dynamic_in"],
            "dynamic_kept": st["dynamic_kept"],
            "dynamic_contextual": st["dynamic_merged_out"],
            "dynamic_pruned": st["dynamic_in"] - st["dynamic_kept"] - st["dynamic_merged_out"],
        }
        target = round(p.retention * total)
        stats["target"] = target
        if retain >= 1 and out.shape[0] < 0.9 * target:
            warnings.warn(f"holitom: {removed} of {total} tokens are temporally redundant at tau={p.tau}, so keeping "
                          f"every other token gives {out.shape[0]} < round(r*T*N) = {target}; the official rule keeps "
                          f"this count (stats['retention_after_static'] = 1)")
        return CompressedTokens(features=out, positions=positions, stats=stats)

