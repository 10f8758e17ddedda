"""Compression execution (Sec. 3.4): top-B_t matches per pair, merge below tau_c else prune,
union-find over all pairs at once, uniform averaging per component."""
from __future__ import annotations

from dataclasses import dataclass

import torch


def greedy_matches(plan: torch.Tensor, B_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-B_t plan entries per pair with each frame-(t+1) token (column) used at most once.

    The official matcher walks the entries of P_t in `torch.topk` order, fetching
    min(5 B_t, K^2) at a time (fetched entries then masked out), and accepts (i, j) unless
    column j is taken, until B_t are accepted. Without exact ties among the entries it can
    reach (those >= the B_t-th accepted value) that order is the descending one, and the walk
    is the same as ranking the columns by their best entry and keeping the first B_t, done here
    for all pairs at once (`_rank_columns`); pairs with such ties (uniform mass saturates many
    entries at 1/K) are walked in topk's own order (`_topk_walk`).
    Returns (accepted (P, K) bool over columns j, parent row i (P, K)).
    """
    accepted, parent_row, v_B = _rank_columns(plan, B_t)
    P = plan.shape[0]
    flat = plan.reshape(P, -1)
    reach = (flat >= v_B.unsqueeze(1)).sum(dim=1)                # entries the walk can reach
    k = int(reach.max()) if P else 0
    if k < 2:
        return accepted, parent_row
    desc = flat.topk(k, dim=1).values                            # sorted, largest first
    tied = ((desc[:, 1:] == desc[:, :-1]) & (torch.arange(1, k, device=plan.device) < reach.unsqueeze(1))).any(dim=1)
    for p in tied.nonzero().flatten().tolist():
        accepted[p], parent_row[p] = _topk_walk(plan[p], int(B_t[p]))
    return accepted, parent_row


def _rank_columns(plan: torch.Tensor, B_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Columns ranked by their best entry (ties to the lower flat index i*K+j), first B_t kept;
    also the B_t-th accepted value per pair (+inf where B_t = 0)."""
    P, K, _ = plan.shape
    row = plan.argmax(dim=1)                                    # first max: lowest i on ties
    best = torch.gather(plan, 1, row.unsqueeze(1)).squeeze(1)   # (P, K)
    flat = row * K + torch.arange(K, device=plan.device)
    by_flat = flat.argsort(dim=1, stable=True)
    ranked = torch.sort(torch.gather(best, 1, by_flat), dim=1, descending=True, stable=True)
    order = torch.gather(by_flat, 1, ranked.indices)            # columns, best first
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(K, device=plan.device).expand(P, K))
    B = B_t.clamp(0, K)
    v_B = torch.gather(ranked.values, 1, (B - 1).clamp_min(0).view(P, 1)).squeeze(1)
    v_B = torch.where(B > 0, v_B, torch.full_like(v_B, float("inf")))
    return rank < B_t.view(P, 1), row, v_B


#: the official matcher fetches budget * 5 plan entries per `torch.topk` call
TOPK_SAFETY = 5


def _topk_walk(plan_t: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The official walk over one (K, K) plan, in `torch.topk` order, vectorised per fetch."""
    K = plan_t.shape[0]
    dev = plan_t.device
    taken = torch.zeros(K, dtype=torch.bool, device=dev)
    parent = torch.zeros(K, dtype=torch.long, device=dev)
    flat = plan_t.reshape(-1).clone()
    n = fetched = 0
    while n < b and fetched < K * K:
        k = min(b * TOPK_SAFETY, K * K - fetched)
        idx = torch.topk(flat, k).indices
        flat[idx] = float("-inf")
        fetched += k
        col = idx % K
        pos = torch.arange(k, device=dev)
        first = torch.full((K,), k, dtype=torch.long, device=dev).scatter_reduce_(0, col, pos, reduce="amin")
        keep = idx[(first[col] == pos) & ~taken[col]][: b - n]   # first sight of a free column
        taken[keep % K] = True
        parent[keep % K] = keep // K
        n += int(keep.numel())
    return taken, parent


@dataclass
class MergeResult:
    keep: torch.Tensor        # (T*K,) bool: surviving component roots
    features: torch.Tensor    # (M, D) float32 means of the surviving components, in slot order of keep
    n_merged: int             # union edges (C <= tau_c)
    n_pruned: int             # matches with C > tau_c: the source and its subtree are dropped
    n_discarded: int          # tokens dropped with pruned subtrees
    max_span: int             # longest chain, in frames


def union_merge(kept: torch.Tensor, C: torch.Tensor, accepted: torch.Tensor, parent_row: torch.Tensor,
                tau_c: float) -> MergeResult:
    """Resolve all pairs' matches at once (Sec. 3.4).

    kept: (T, K, D) float32; C: (T-1, K, K); accepted / parent_row: (T-1, K) per column j.
    A match (t,i) <- (t+1,j) with C <= tau_c is a union edge; with C > tau_c the source
    becomes a pruned root and its whole downstream subtree is dropped (official rule).
    Components are averaged uniformly; the root is the earliest-frame member (anchor).
    """
    T, K, D = kept.shape
    dev = kept.device
    n = T * K
    parent = torch.arange(n, device=dev)
    pair, col = accepted.nonzero(as_tuple=True)
    prow = parent_row[pair, col]
    cost = C[pair, prow, col]
    child, par = (pair + 1) * K + col, pair * K + prow
    merge = cost <= tau_c
    parent[child[merge]] = par[merge]
    pruned = torch.zeros(n, dtype=torch.bool, device=dev)
    pruned[child[~merge]] = True
    root, hops = parent, 0
    while True:  # pointer doubling: at most ceil(log2 T) rounds
        nxt = root[root]
        if torch.equal(nxt, root):
            break
        root, hops = nxt, hops + 1
    flat = kept.reshape(n, D)
    is_root = root == torch.arange(n, device=dev)
    keep = is_root & ~pruned
    # sums only for the surviving components: slot -> its component's output row, the rest to a
    # scratch row M; index_add_ adds in slot order per row, as a sum over every root would
    M = int(keep.sum().item())
    out_row = torch.cumsum(keep, 0) - 1
    dest = torch.where(keep[root], out_row[root], torch.full_like(root, M))
    sums = flat.new_zeros(M + 1, D).index_add_(0, dest, flat)[:M]
    count = torch.bincount(dest, minlength=M + 1)[:M].to(flat.dtype)      # integers: exact in float32
    frame = torch.arange(n, device=dev) // K
    span = frame - frame[root]                                            # frames from each slot's root
    return MergeResult(
        keep=keep,
        features=sums / count.clamp_min(1.0).unsqueeze(-1),
        n_merged=int(merge.sum().item()),
        n_pruned=int((~merge).sum().item()),
        n_discarded=int(pruned[root].sum().item()),
        max_span=int(span.max().item()) + 1,
    )
