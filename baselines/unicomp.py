"""UniComp: uniqueness-driven video token compression (TimeMarker-LLM/UniComp, CVPR'26).

Three stages, computed as in the official evaluation glue (non-AUTO path of
`prepare_inputs_labels_for_multimodal`, commit 1904269), see docs/methods/unicomp.md:

1. Frame Group Fusion (FGF): anchor-based greedy grouping of frames whose mean-token
   cosine distance to the group's first frame is <= Uf (at most min_interval + 1 frames
   per group); each group becomes the plain mean of its frames.
2. Token Allocation (TA): per-group budget from a softmax over frame uniqueness.
3. Spatial Dynamic Compression (SDC): greedy redundancy cover in token-uniqueness order
   on the keys (neighbours: 1 - cos < Uc), each survivor half-merged with the mean of its
   neighbourhood, truncated to the group's budget and emitted in raster order.

Uniqueness everywhere is u(a, b) = 1 - cos(a, b); an item's uniqueness in a set is its
mean pairwise uniqueness (ranked through the mean cosine similarity, self included).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ottvid.contract import CompressedTokens, VideoTokens
from ottvid.registry import Compressor, check_choice, check_int, check_range, check_retention, register
from ottvid.stages.spatial import gemm_spans

AUTO_MIN_INTERVAL = 1_000_000  # the official AUTO mode's group-size limit (effectively none)


# ---------------------------------------------------------------- FGF ---------

def frame_groups(features: torch.Tensor, Uf: float, min_interval: int) -> list[int]:
    """FGF segmentation: group sizes of the anchor-based temporal scan.

    v_t = normalize(mean_n X_t); frame t joins the open group while
    1 - cos(v_t, v_anchor) <= Uf and the group holds at most `min_interval` frames;
    otherwise t opens a new group (it becomes the new anchor).
    """
    T = features.shape[0]
    v = F.normalize(features.float().mean(1), dim=-1)
    u = (1 - _pairwise_cosine(v)).tolist()
    sizes, anchor, n = [], 0, 1
    for t in range(1, T):  # sequential by construction: the anchor moves with the scan
        if u[t][anchor] <= Uf and n <= min_interval:
            n += 1
        else:
            sizes.append(n)
            anchor, n = t, 1
    sizes.append(n)
    return sizes


def _pairwise_cosine(v: torch.Tensor, chunk_elems: int = 1 << 22) -> torch.Tensor:
    """(T, T) torch.cosine_similarity(v[:, None], v[None], dim=-1), a block of rows at a time.

    The broadcast form builds (rows, T, D) temporaries; in blocks they stay bounded (linear
    memory in T), and each entry is computed by the same element-wise ops (same bits).
    """
    T, D = v.shape
    step = max(1, chunk_elems // max(1, T * D))
    return torch.cat([torch.cosine_similarity(v[i:i + step, None, :], v[None, :, :], dim=-1)
                      for i in range(0, T, step)])


def fuse_groups(features: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """FGF fusion: each group's frames averaged token by token (float32), cast back.

    Returns the fused frames (G, N, D) in the input dtype and the anchors (first frame of
    each group), shape (G,) int64.
    """
    dev = features.device
    size = torch.tensor(sizes, device=dev)
    start = torch.cumsum(size, 0) - size
    if max(sizes) == 1:  # nothing fused: the mean of one frame is the frame itself (no copy)
        return features, start
    x = features.float()
    acc = x.index_select(0, start)
    N, D = x.shape[1:]
    step = max(1, (1 << 24) // max(1, N * D))  # groups per batch: each batch's copy stays bounded
    for k in range(1, max(sizes)):  # position inside the group, batched across groups
        has = torch.nonzero(size > k).squeeze(1)
        for i in range(0, has.numel(), step):
            g = has[i:i + step]
            acc.index_add_(0, g, x.index_select(0, start[g] + k))
    fused = acc.div_(size.view(-1, 1, 1).to(acc.dtype)).to(features.dtype)
    return fused, start


# ---------------------------------------------------------------- TA ----------

def token_allocation(fused: torch.Tensor, budget: int, max_per_frame: int,
                     global_feature: torch.Tensor | None = None) -> tuple[list[int], int]:
    """TA: per-group token budgets t_f and the per-group cap.

    g_f = normalize(global feature) or, without one, normalize(channel mean of the fused
    frame) (a length-N vector: the official fallback averages over channels);
    s_f = mean_g cos(g_f, g_g); q_f = (mean(s) - s_f) * sqrt(G); cap = min(N, max(1,
    2 * (B // G))); t_f = floor(softmax(q)_f * B), clipped at cap, the clipped surplus
    spread evenly over unclipped frames until nothing exceeds the cap (only if some frame
    was clipped; the flooring remainder is otherwise left unused).
    """
    G = fused.shape[0]
    q = group_uniqueness(fused, global_feature)
    cap = min(max_per_frame, max(1, int((budget // G) * 2)))
    if G <= budget // cap:
        return [cap] * G, cap
    t = torch.floor(torch.softmax(q, dim=-1) * budget).int()
    over = t > cap
    t[over] = cap
    pad = _even_share(budget - int(t.sum()), int((~over).sum()))
    while bool(over.any()) and pad > 0:
        t[~over] += pad
        over = t > cap
        t[over] = cap
        pad = _even_share(budget - int(t.sum()), int((~over).sum()))
    return [int(v) for v in t.tolist()], cap


def group_uniqueness(fused: torch.Tensor, global_feature: torch.Tensor | None = None) -> torch.Tensor:
    """TA's score q_f = (mean(s) - s_f) sqrt(G), s_f = mean_g cos(g_f, g_g) (see `token_allocation`)."""
    G = fused.shape[0]
    if global_feature is not None:
        g = F.normalize(global_feature.float(), p=2, dim=-1)
    else:
        g = F.normalize(fused.float().mean(dim=-1), p=2, dim=-1)
    s = _pairwise_cosine(g).mean(dim=-1)
    return (s.mean() - s) * (G ** 0.5)


def at_least_one(per_group: list[int], q: torch.Tensor) -> list[int]:
    """Every group's budget floored to 0 (B < G, or all shares < 1): the most unique group
    (largest q, first on ties) gets one token, so the video keeps >= 1 (not in the official code)."""
    if sum(per_group) > 0:
        return per_group
    out = list(per_group)
    out[int(torch.argmax(q))] = 1
    return out


def _even_share(extra: int, among: int) -> int:
    return max(0, extra) // among if among > 0 else 0


# ---------------------------------------------------------------- SDC ---------

def redundancy_cover(neighbours: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Greedy cover in uniqueness order, batched across frames.

    neighbours: (G, N, N) bool, symmetric; order: (G, N) token indices, most unique first.
    A token is kept iff none of its neighbours that come earlier in `order` is kept.
    Returns kept (G, N) bool in *sorted* order (entry i refers to token order[:, i]).
    Resolved in waves: a token is decided kept once every earlier neighbour is decided
    dropped, dropped once any earlier neighbour is kept (same result as the sequential
    scan; the first undecided token of every frame is always resolved, so <= N waves).
    """
    G, N = order.shape
    rows = torch.gather(neighbours, 1, order[:, :, None].expand(G, N, N))
    sorted_nb = torch.gather(rows, 2, order[:, None, :].expand(G, N, N))
    earlier = sorted_nb & torch.ones(N, N, dtype=torch.bool, device=order.device).tril(-1)
    kept = torch.zeros(G, N, dtype=torch.bool, device=order.device)
    dropped = torch.zeros_like(kept)
    while True:
        undecided = ~(kept | dropped)
        if not bool(undecided.any()):
            return kept
        hit = (earlier & kept[:, None, :]).any(-1)
        pending = (earlier & ~dropped[:, None, :]).any(-1)
        dropped |= undecided & hit
        kept |= undecided & ~pending


def reconcile_budget(candidates: list[int], budget: list[int]) -> list[int]:
    """SDC budget reconciliation: when sum(n_f) > sum(t_f), frames with n_f < t_f donate
    their unused budget, split evenly (floor) once over the other frames."""
    if sum(candidates) <= sum(budget):
        return list(budget)
    short = [n < t for n, t in zip(candidates, budget)]
    spare = sum(t - n for n, t, s in zip(candidates, budget, short) if s)
    if spare <= 0:
        return list(budget)
    share = spare // sum(not s for s in short)
    return [t if s else t + share for t, s in zip(budget, short)]


def spatial_dynamic_compression(fused: torch.Tensor, metric: torch.Tensor, budget: list[int],
                                Uc: float) -> tuple[torch.Tensor, torch.Tensor, dict[str, list[int]]]:
    """SDC on every group at once.

    K = normalize(metric) (in the metric's dtype, as the official code), S = K K^T;
    token order by mean_j S_ij ascending (most unique first); neighbourhood
    A_ij = [1 - S_ij < Uc]; greedy cover (`redundancy_cover`) gives the candidates C_f;
    a survivor becomes x_i/2 + mean_{j in A_i} x_j / 2 (float32, fused features);
    the first t_f' candidates (after `reconcile_budget`) are emitted in raster order.
    Returns the output tokens (M, D), their (group, grid index) (M, 2) and counts.
    """
    G, N, _ = fused.shape
    # K K^T a span of groups at a time (`gemm_spans`: the one batched call's bits, no full copy of K)
    sim = torch.empty(G, N, N, dtype=metric.dtype, device=metric.device)
    for i, j in gemm_spans(G, (1 << 24) // max(1, N * metric.shape[-1]), metric.device):
        k = F.normalize(metric[i:j].detach(), p=2, dim=-1)
        sim[i:j] = torch.matmul(k, k.transpose(1, 2))
    order = torch.argsort(sim.mean(dim=-1), dim=-1, descending=False)
    nb = (1 - sim) < Uc
    kept_sorted = redundancy_cover(nb, order)
    candidates = [int(v) for v in kept_sorted.sum(-1).tolist()]
    final = reconcile_budget(candidates, budget)
    limit = torch.tensor(final, device=fused.device).view(G, 1)
    take_sorted = kept_sorted & (torch.cumsum(kept_sorted.int(), dim=-1) <= limit)
    take = torch.zeros_like(take_sorted).scatter(1, order, take_sorted)
    g_idx, n_idx = take.nonzero(as_tuple=True)  # group-major, raster within a group
    x = fused.float()
    D = x.shape[-1]
    # neighbourhood means only of the emitted tokens, a span of groups at a time (`gemm_spans`: the
    # bits of one batched call, without a (G, N, D) array)
    out = []
    for i, j in gemm_spans(G, (1 << 24) // max(1, N * D), fused.device):
        a = nb[i:j].float()
        mean_nb = torch.bmm(a, x[i:j]) / a.sum(-1, keepdim=True).clamp(min=1)
        sel = (g_idx >= i) & (g_idx < j)
        gi, ni = g_idx[sel] - i, n_idx[sel]
        out.append(((mean_nb[gi, ni] + x[i:j][gi, ni]) / 2).to(fused.dtype))
        del mean_nb
    out = torch.cat(out) if out else x.new_zeros(0, D).to(fused.dtype)
    counts = {
        "sdc_candidates": candidates,
        "sdc_budget": final,
        "per_group_count": [int(v) for v in take.sum(-1).tolist()],
    }
    return out, torch.stack([g_idx, n_idx], dim=-1), counts


# ---------------------------------------------------------------- method ------

@register("unicomp")
class UniComp(Compressor):
    """UniComp (FGF -> TA -> SDC) as run by the official evaluation scripts."""

    @dataclass
    class Params:
        """retention r: B = int(r*T*N) tokens, min_interval = int(1/r) unless given;
        Uf: FGF join threshold on 1-cos (<=); Uc: SDC neighbourhood threshold on 1-cos (<);
        metric: SDC keys, `encoder_features` (when the adapter provides them, else the
        fused features) or `none` (always the fused features, official metric=None);
        global_metric: TA's per-frame vector, `frame_features` (when provided, else the
        channel-mean fallback) or `none` (always the fallback); min_interval: max group
        size - 1 (None: int(1/r), or 1e6 with auto); auto: the official AUTO mode (no TA,
        t_f = B // G, SDC always runs)."""

        retention: float = 0.25
        Uf: float = 0.005
        Uc: float = 0.2
        metric: str = "encoder_features"
        global_metric: str = "frame_features"
        min_interval: int | None = None
        auto: bool = False

        def __post_init__(self) -> None:
            self.retention = check_retention(self.retention)
            self.Uf = check_range("Uf", self.Uf, 0.0, 2.0)
            self.Uc = check_range("Uc", self.Uc, 0.0, 2.0, lo_open=True)
            self.metric = check_choice("metric", self.metric, ("encoder_features", "none"))
            self.global_metric = check_choice("global_metric", self.global_metric, ("frame_features", "none"))
            if self.min_interval is not None:
                self.min_interval = check_int("min_interval", self.min_interval, 0)
            if not isinstance(self.auto, bool):
                raise ValueError(f"auto: must be a bool, got {self.auto!r}")

    def compress(self, video: VideoTokens) -> CompressedTokens:
        p = self.params
        X = video.features
        T, N, D = X.shape
        W = video.grid_hw[1]
        r = p.retention
        if p.min_interval is not None:
            min_interval = p.min_interval
        else:
            min_interval = AUTO_MIN_INTERVAL if p.auto else int(1 / r)

        sizes = frame_groups(X, p.Uf, min_interval)
        fused, anchors = fuse_groups(X, sizes)
        G = len(sizes)
        budget = int(r * T * N)  # original T, as the glue
        use_keys = p.metric == "encoder_features" and video.encoder_features is not None
        if use_keys:  # the anchors' keys; all of them (no copy) when no frame was fused
            enc = video.encoder_features
            metric = enc if G == T else enc.index_select(0, anchors)
        else:
            metric = fused
        use_global = p.global_metric == "frame_features" and video.frame_features is not None
        stats: dict[str, Any] = {
            "tokens_in": T * N, "frames": T, "groups": G, "fused_frames": T - G,
            "group_start": [int(v) for v in anchors.tolist()], "group_size": sizes,
            "min_interval": min_interval, "budget": budget,
            "metric": "encoder_features" if use_keys else "features",
            "global_metric": "frame_features" if use_global else "channel_mean",
        }

        if p.auto or G * N > budget:
            glob = video.frame_features[anchors] if use_global else None
            if p.auto:
                per_group, cap = [budget // G] * G, None
            else:
                per_group, cap = token_allocation(fused, budget, N, glob)
            if sum(per_group) == 0:
                per_group = at_least_one(per_group, group_uniqueness(fused, glob))
                stats["min_one_token"] = True
            out, where, counts = spatial_dynamic_compression(fused, metric, per_group, p.Uc)
            stats.update(compressed=True, cap=cap, tokens_per_frame=per_group, **counts)
            stats["merged"] = sum(N - c for c in counts["sdc_candidates"])
            stats["truncated"] = sum(c - k for c, k in zip(counts["sdc_candidates"], counts["per_group_count"]))
            g_idx, n_idx = where[:, 0], where[:, 1]
        else:  # the glue skips TA/SDC when the fused frames already fit the budget
            out = fused.reshape(G * N, D)
            g_idx = torch.arange(G, device=X.device).repeat_interleave(N)
            n_idx = torch.arange(N, device=X.device).repeat(G)
            stats.update(compressed=False, cap=None, tokens_per_frame=[N] * G, sdc_candidates=[N] * G,
                         sdc_budget=[N] * G, per_group_count=[N] * G, merged=0, truncated=0)

        positions = torch.stack([anchors[g_idx], n_idx // W, n_idx % W], dim=-1)
        stats["tokens_out"] = int(out.shape[0])
        return CompressedTokens(features=out, positions=positions, stats=stats)
