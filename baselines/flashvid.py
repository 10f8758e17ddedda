"""FlashVID, outer-LLM stage (inner-LLM FastV pruning off): DySeg -> ADTS -> TSTM -> DPC-kNN.

Follows the official implementation (Fanziyang-v/FlashVID @ 1d37422, `flashvid/utils.py`
and `flashvid/token_selection.py`), which produced the published numbers; see
docs/methods/flashvid.md for every place it departs from the paper.

Per frame the budget B = ceil(N * r * expansion) is split into nA = ceil(alpha * B)
ADTS tokens (copied unchanged) and nS = B - nA "merging" tokens, which come from
tree-based spatio-temporal merging (TSTM) followed by per-frame DPC-kNN with the
adaptive contextual ratio. All of it runs per DySeg segment; the output is sorted by
global slot index t * N + h * W + w, i.e. the order in which the LLM receives it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ottvid.contract import CompressedTokens, VideoTokens
from ottvid.registry import (Compressor, check_choice, check_int, check_range,
                             check_retention, register)

ADTS_VARIANTS = ("attn_div", "attn_div_v2")
_SALIENCY_SCALE = 1e6  # official numeric-range factor on the attention (no effect on the argmax)
_DPC_MAX_K = 7         # official DPC-kNN neighbourhood: k = min(num_clusters, 7)
_DPC_NOISE = 1e-6      # official tie-breaking noise on the DPC-kNN density


# ---------------------------------------------------------------------------
# Budget
# ---------------------------------------------------------------------------

def frame_budget(num_tokens: int, retention: float, expansion: float, alpha: float) -> tuple[int, int, int]:
    """Per-frame budget (B, nA, nS): B = ceil(N*r*expansion) (capped at N), nA = ceil(B*alpha), nS = B - nA."""
    budget = min(math.ceil(num_tokens * retention * expansion), num_tokens)
    n_adts = math.ceil(budget * alpha)
    return budget, n_adts, budget - n_adts


# ---------------------------------------------------------------------------
# DySeg (Sec. 3.2 of the paper: dynamic video segmentation)
# ---------------------------------------------------------------------------

def dyseg(features: torch.Tensor, segment_threshold: float, min_segment_num: int,
          complementary_segment: bool = True) -> torch.Tensor:
    """Segment lengths (S,) int64 from cuts where cos(m_t, m_{t+1}) < segment_threshold.

    m_t is the mean token of frame t. If fewer than `min_segment_num` segments result and
    `complementary_segment` is set, the most dissimilar remaining transitions are cut too
    (cut transitions count as similarity 1 for that choice, as in the official code, so a
    request beyond the remaining transitions yields empty segments). Runs in the input dtype.
    """
    T = features.shape[0]
    frame_means = features.mean(1)
    unit = frame_means / frame_means.norm(p=2, dim=-1, keepdim=True)
    transition = (unit[:-1] * unit[1:]).sum(-1)  # (T-1,)
    cuts = torch.where(transition < segment_threshold)[0]
    n_segments = cuts.numel() + 1
    if n_segments < min_segment_num and complementary_segment:
        remaining = transition.masked_fill(transition < segment_threshold, 1.0)
        extra = torch.topk(remaining, k=min(min_segment_num - n_segments, remaining.shape[0]), largest=False).indices
        cuts = torch.cat([cuts, extra]).sort().values
    bounds = torch.cat([cuts.new_full((1,), -1), cuts, cuts.new_full((1,), T - 1)])
    return torch.diff(bounds)


# ---------------------------------------------------------------------------
# ADTS (Sec. 3.3: attention- and diversity-based token selection)
# ---------------------------------------------------------------------------

def _calibrated_distances(features: torch.Tensor, saliency: torch.Tensor, variant: str,
                          segment_lengths: list[int]) -> torch.Tensor:
    """D[t, i, j] = (1 - cos(x_i, x_j)) * s_j * 1e6 (* e_j for ADTSv2), float32, (T, N, N).

    ADTSv2's event relevance e_j = mean_c <x_j, m_c> over the frames c of x_j's segment.
    """
    x = features.float()
    s = saliency.float() * _SALIENCY_SCALE
    unit = x / x.norm(p=2, dim=-1, keepdim=True)
    T, N, _ = x.shape
    dist = x.new_empty(T, N, N)
    start = 0
    for length in segment_lengths:   # one `bmm` per segment, the official call (a BLAS may sum by batch size)
        sl = slice(start, start + length)
        if length:
            dist[sl] = 1.0 - torch.bmm(unit[sl], unit[sl].transpose(-1, -2))
        start += length
    if variant == "attn_div":
        return dist * s.unsqueeze(1)
    frame_means = x.mean(1)
    relevance = torch.empty_like(s)
    start = 0
    for length in segment_lengths:
        sl = slice(start, start + length)
        relevance[sl] = torch.einsum("b n d, c d -> b c n", x[sl], frame_means[sl]).mean(1)
        start += length
    return dist * s.unsqueeze(1) * relevance.unsqueeze(1)


def adts_select(features: torch.Tensor, saliency: torch.Tensor, k: int, *, variant: str = "attn_div",
                segment_lengths: list[int] | None = None) -> torch.Tensor:
    """ADTS: per frame, greedy max-min selection on saliency-calibrated cosine distances.

    features (T, N, D), saliency (T, N) (any positive per-frame scale). Returns (T, k)
    int64 local indices sorted ascending. The first pick maximises s_j times the distance
    to j's nearest other token; each next pick maximises s_j times the distance to the
    closest picked token (ties to the lowest index). `attn_div` (ADTSv1) excludes picked
    tokens; `attn_div_v2` multiplies in the event relevance and, like the official code,
    does not exclude them. `segment_lengths` (default: one segment): v2's relevance, and the
    distances' `bmm`, one per segment as the official code calls it (same values; a BLAS may
    round by batch size). The greedy runs over all frames in one batch, k steps.
    """
    check_choice("variant", variant, ADTS_VARIANTS)
    if features.dim() != 3:
        raise ValueError(f"features: expected (T, N, D), got {tuple(features.shape)}")
    T, N, _ = features.shape
    if tuple(saliency.shape) != (T, N):
        raise ValueError(f"saliency: expected shape {(T, N)}, got {tuple(saliency.shape)}")
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= N:
        raise ValueError(f"k: must be an integer in [0, {N}], got {k!r}")
    if segment_lengths is None:
        segment_lengths = [T]
    if sum(segment_lengths) != T or any(int(n) < 0 for n in segment_lengths):
        raise ValueError(f"segment_lengths: must be non-negative and sum to T={T}, got {segment_lengths}")
    keep = torch.zeros(T, k, dtype=torch.long, device=features.device)
    if k == 0 or T == 0:
        return keep
    dist = _calibrated_distances(features, saliency, variant, [int(n) for n in segment_lengths])
    # Initialisation: second-smallest entry of each column (the smallest is the self-distance).
    init = torch.topk(dist, k=min(2, N), dim=1, largest=False).values[:, -1, :]
    keep[:, 0] = init.argmax(-1)
    rows = torch.arange(T, device=features.device)
    closest = dist[rows, keep[:, 0]]  # (T, N): min over picked p of D[p, j]
    picked = torch.zeros(T, N, dtype=torch.bool, device=features.device)
    picked[rows, keep[:, 0]] = True
    for i in range(1, k):
        score = closest.masked_fill(picked, -1.0) if variant == "attn_div" else closest
        keep[:, i] = score.argmax(-1)
        picked[rows, keep[:, i]] = True
        closest = torch.minimum(closest, dist[rows, keep[:, i]])
    return keep.sort(-1).values


# ---------------------------------------------------------------------------
# TSTM (Sec. 3.4: tree-based spatio-temporal token merging)
# ---------------------------------------------------------------------------

def tstm_parents(features: torch.Tensor, candidate: torch.Tensor, segment_start: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma, parent), each (T, N): best cosine match of token (t, n) in frame t-1 among candidates.

    Pairs involving a non-candidate (ADTS) token score -1; the first frame of every
    segment gets sigma = -1 (it never merges). Ties go to the lowest index. Input dtype.
    One `einsum` per segment, as the official code calls it (a BLAS may round by batch size).
    """
    T, N, _ = features.shape
    sigma = features.new_full((T, N), -1.0)
    parent = torch.full((T, N), -1, dtype=torch.long, device=features.device)
    if T > 1:
        unit = features / features.norm(p=2, dim=-1, keepdim=True)
        cuts = sorted({0, T, *segment_start.nonzero().flatten().tolist()})
        for a, b in zip(cuts[:-1], cuts[1:]):   # one `einsum` per segment, the official call
            if b - a < 2:
                continue
            sims = torch.einsum("b n d, b m d -> b n m", unit[a + 1:b], unit[a:b - 1])
            sims = sims.masked_fill(~candidate[a + 1:b].unsqueeze(-1), -1.0)
            sims = sims.masked_fill(~candidate[a:b - 1].unsqueeze(1), -1.0)
            best, arg = sims.max(dim=-1)
            sigma[a + 1:b] = best
            parent[a + 1:b] = arg
    sigma[segment_start] = -1.0
    parent[segment_start] = -1
    return sigma, parent


def tstm_merge_mask(sigma: torch.Tensor, temporal_threshold: float, lower_bound: int) -> tuple[torch.Tensor, bool]:
    """Merge mask of one segment: sigma > threshold, with the soft-threshold lower bound.

    If fewer than `lower_bound` = B * T_s tokens (ADTS tokens included) would stay, the
    threshold becomes the (T_s*N - lower_bound)-th largest sigma, clamped to >= -1 + 1e-6
    (strict comparison, so lower_bound + 1 tokens stay without ties). When lower_bound
    reaches T_s*N (r*expansion = 1), nothing merges.
    """
    merge = sigma > temporal_threshold
    if int((~merge).int().sum()) >= lower_bound:
        return merge, False
    k = sigma.numel() - lower_bound
    if k <= 0:
        return torch.zeros_like(merge), True
    soft = sigma.reshape(-1).topk(k=k).values[-1]
    soft = max(soft, -1.0 + 1e-6)
    return sigma > soft, True


def tstm_aggregate(features: torch.Tensor, merge: torch.Tensor, parent: torch.Tensor) -> torch.Tensor:
    """Tree aggregation exactly as the official code: returns updated features (T, N, D).

    From the last frame backwards, each merged token adds its running (unnormalised) sum
    to its parent, and the parent's count grows by its number of direct children; each
    unmerged token (root) is divided by 1 + its number of direct children. So a root ends
    as (sum of its whole tree) / (1 + direct children), a plain mean only for depth <= 1.
    Sequential over frames, batched over the tokens of a frame; in the input dtype.
    """
    T, N, _ = features.shape
    x = features.clone()
    counts = torch.ones(T, N, dtype=x.dtype, device=x.device)
    for f in range(T - 1, -1, -1):
        root = ~merge[f]
        x[f] = torch.where(root.unsqueeze(-1), x[f] / counts[f].unsqueeze(-1), x[f])
        if f > 0 and bool(merge[f].any()):
            children = merge[f]
            one_hot = F.one_hot(parent[f][children], num_classes=N).to(x.dtype)
            x[f - 1] += torch.einsum("m n, m d -> n d", one_hot, x[f][children])
            counts[f - 1] += one_hot.sum(0)
    return x


# ---------------------------------------------------------------------------
# DPC-kNN spatial merging (Sec. 3.4, with the adaptive contextual ratio)
# ---------------------------------------------------------------------------

def dpc_knn(tokens: torch.Tensor, num_clusters: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """DPC-kNN on (n, D) tokens: returns (assignment (n,), centers (C,)) as in the official code.

    d_ij = ||x_i - x_j|| / sqrt(D) (float32); density = exp(-mean of the k smallest d^2)
    + U(0,1)*1e-6 drawn from torch's global generator (one (1, n) draw per call);
    delta_i = distance to the nearest denser token (max distance for the densest);
    centers = top-C of delta*density; tokens go to their nearest center (ties to the
    earlier center), centers to themselves.
    """
    x = tokens.float().unsqueeze(0)
    n, D = tokens.shape
    dists = torch.cdist(x, x) / math.sqrt(D)
    nearest = torch.topk(dists, k=k, dim=-1, largest=False).values
    density = torch.mean(-(nearest ** 2), dim=-1).exp()
    density = density + torch.rand_like(density) * _DPC_NOISE
    denser = density[:, None, :] > density[:, :, None]
    max_dist = dists.view(1, -1).max(dim=-1)[0].view(-1, 1, 1)
    delta = torch.where(denser, dists, max_dist).min(dim=-1).values
    centers = torch.topk(delta * density, k=num_clusters, dim=-1).indices
    assign = torch.gather(dists, -1, centers.unsqueeze(1).expand(-1, n, -1)).argmin(-1)
    assign.scatter_(-1, centers, torch.arange(num_clusters, device=assign.device).unsqueeze(0))
    return assign[0], centers[0]


def cluster_means(tokens: torch.Tensor, assign: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """Unweighted mean of each cluster's members, (C, D), in the tokens' dtype."""
    one_hot = F.one_hot(assign, num_classes=num_clusters).to(tokens.dtype)
    return torch.einsum("n c, n d -> c d", one_hot, tokens) / one_hot.sum(0).unsqueeze(-1)


# ---------------------------------------------------------------------------
# The registered method
# ---------------------------------------------------------------------------

@register("flashvid")
class FlashVID(Compressor):
    """FlashVID vision-side compression (DySeg + ADTS + TSTM + DPC-kNN), inner-LLM stage off."""

    @dataclass
    class Params:
        retention: float = 0.25
        token_selection_method: str = "attn_div"
        alpha: float = 0.7
        temporal_threshold: float = 0.8
        do_segment: bool = True
        segment_threshold: float = 0.9
        min_segment_num: int = 4
        complementary_segment: bool = True
        expansion: float = 1.0

        def __post_init__(self) -> None:
            self.retention = check_retention(self.retention)
            self.token_selection_method = check_choice("token_selection_method", self.token_selection_method, ADTS_VARIANTS)
            self.alpha = check_range("alpha", self.alpha, 0.0, 1.0)
            # sigma lies in [-1, 1]; >= 1 would leave the merging stage nothing to cluster (the
            # official code divides by zero there), < -1 would merge the masked ADTS pairs.
            self.temporal_threshold = check_range("temporal_threshold", self.temporal_threshold, -1.0, 1.0, hi_open=True)
            self.do_segment = check_choice("do_segment", self.do_segment, (True, False))
            self.segment_threshold = check_range("segment_threshold", self.segment_threshold, -1.0, 1.0)
            self.min_segment_num = check_int("min_segment_num", self.min_segment_num, 1)
            self.complementary_segment = check_choice("complementary_segment", self.complementary_segment, (True, False))
            self.expansion = check_range("expansion", self.expansion, 0.0, math.inf, lo_open=True, hi_open=True)
            for name in ("do_segment", "complementary_segment"):
                if not isinstance(getattr(self, name), bool):
                    raise ValueError(f"{name}: must be a bool, got {getattr(self, name)!r}")

    def compress(self, video: VideoTokens) -> CompressedTokens:
        p = self.params
        feats = video.features
        T, N, D = feats.shape
        H, W = video.grid_hw
        dev = feats.device
        budget, n_adts, n_merge = frame_budget(N, p.retention, p.expansion, p.alpha)

        # 1. DySeg.
        if p.do_segment:
            seg_lengths = [int(v) for v in dyseg(feats, p.segment_threshold, p.min_segment_num, p.complementary_segment)]
        else:
            seg_lengths = [T]
        starts = [sum(seg_lengths[:i]) for i in range(len(seg_lengths))]
        segments = [(a, n) for a, n in zip(starts, seg_lengths) if n > 0]  # empty segments emit nothing
        segment_start = torch.zeros(T, dtype=torch.bool, device=dev)
        segment_start[torch.tensor([a for a, _ in segments], dtype=torch.long, device=dev)] = True

        # 2. ADTS, all frames in one batch.
        adts_idx = adts_select(feats, video.saliency, n_adts, variant=p.token_selection_method, segment_lengths=seg_lengths)
        candidate = torch.ones(T, N, dtype=torch.bool, device=dev)
        candidate.scatter_(1, adts_idx, False)
        frame_offsets = torch.arange(T, device=dev).unsqueeze(1) * N
        out_feats = [feats.gather(1, adts_idx.unsqueeze(-1).expand(-1, -1, D)).reshape(-1, D)]
        out_index = [(adts_idx + frame_offsets).reshape(-1)]

        stats_seg = {"tstm_merges": [], "tstm_roots": [], "soft_threshold": [], "contextual_ratio": []}
        dpc_calls: list[tuple[int, int, int]] = []
        if n_merge > 0:
            # 3. TSTM: parents for every adjacent pair at once, merge masks per segment, one backward pass.
            sigma, parent = tstm_parents(feats, candidate, segment_start)
            merge = torch.zeros(T, N, dtype=torch.bool, device=dev)
            for a, n in segments:
                if n > 1:
                    merge[a:a + n], soft = tstm_merge_mask(sigma[a:a + n], p.temporal_threshold, budget * n)
                    stats_seg["soft_threshold"].append(soft)
                else:
                    stats_seg["soft_threshold"].append(False)
            merged = tstm_aggregate(feats, merge, parent)
            # Roots that enter spatial merging: non-ADTS roots; a one-frame segment passes its
            # whole frame, ADTS tokens included (official quirk: an index can then repeat).
            single = torch.zeros(T, dtype=torch.bool, device=dev)
            single[torch.tensor([a for a, n in segments if n == 1], dtype=torch.long, device=dev)] = True
            roots = (~merge & candidate) | single.unsqueeze(1)
            roots_per_frame = roots.sum(1).tolist()
            # 4. DPC-kNN per frame with the adaptive contextual ratio of its segment.
            for a, n in segments:
                n_roots = sum(roots_per_frame[a:a + n])
                ratio = (n_merge * n) / n_roots
                stats_seg["tstm_merges"].append(int(merge[a:a + n].sum()))
                stats_seg["tstm_roots"].append(n_roots)
                stats_seg["contextual_ratio"].append(ratio)
                for f in range(a, a + n):
                    local = torch.where(roots[f])[0]
                    tokens = merged[f, local]
                    n_clusters = math.ceil(roots_per_frame[f] * ratio)
                    if n_clusters > 0 and ratio < 1.0:
                        k = min(n_clusters, _DPC_MAX_K)
                        assign, centers = dpc_knn(tokens, n_clusters, k)
                        dpc_calls.append((roots_per_frame[f], n_clusters, k))
                        tokens, local = cluster_means(tokens, assign, n_clusters), local[centers]
                    out_feats.append(tokens)
                    out_index.append(local + f * N)

        # 5. Assembly: sort by global slot index (stable: an ADTS copy precedes its duplicate).
        all_feats = torch.cat(out_feats).to(feats.dtype)
        all_index = torch.cat(out_index)
        order = torch.sort(all_index, stable=True).indices
        g = all_index[order]
        n_local = g % N
        positions = torch.stack([g // N, n_local // W, n_local % W], dim=-1)
        stats = {
            "tokens_in": T * N,
            "tokens_out": int(g.numel()),
            "token_budget_per_frame": budget,
            "adts_per_frame": n_adts,
            "merge_per_frame": n_merge,
            "segments": len(segments),
            "segment_lengths": seg_lengths,
            "adts_tokens": n_adts * T,
            "merged_tokens": int(g.numel()) - n_adts * T,
            **stats_seg,
            "dpc_calls": len(dpc_calls),
            "dpc_clusters": sum(c for _, c, _ in dpc_calls),
            "duplicated_positions": int(g.numel() - torch.unique(g).numel()),
        }
        return CompressedTokens(features=all_feats[order], positions=positions, stats=stats)
