"""Compression execution (Sec. 3.4): top-B_t matches per pair, merge below tau_c else prune,
union-find over all pairs at once, uniform averaging per component."""
from __future__ import annotations

from dataclasses import dataclass

import torch


#: the official matcher fetches budget * 5 plan entries per `torch.topk` call
TOPK_SAFETY = 5


def greedy_matches(plan: torch.Tensor, B_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-B_t plan entries per pair with each frame-(t+1) token (column) used at most once.

    As the official matcher: the entries of P_t are fetched in `torch.topk` order,
    min(5 B_t, K^2) at a time (fetched entries are then masked out), and (i, j) is accepted
    unless column j is taken, until B_t are accepted. The walk over one fetch is vectorised
    (first occurrence of each column); exact ties follow `torch.topk`'s own order, which is
    why every pair gets its own `topk` call with the official k.
    Returns (accepted (P, K) bool over columns j, parent row i (P, K)).
    """
    P, K, _ = plan.shape
    dev = plan.device
    accepted = torch.zeros(P, K, dtype=torch.bool, device=dev)
    parent_row = torch.zeros(P, K, dtype=torch.long, device=dev)
    total = K * K
    for p, b in enumerate(B_t.tolist()):
        if b <= 0:
            continue
        flat = plan[p].reshape(-1).clone()
        taken = accepted[p]
        n = fetched = 0
        while n < b and fetched < total:
            k = min(b * TOPK_SAFETY, total - fetched)
            idx = torch.topk(flat, k).indices
            flat[idx] = float("-inf")
            fetched += k
            col = idx % K
            pos = torch.arange(k, device=dev)
            first = torch.full((K,), k, dtype=torch.long, device=dev).scatter_reduce_(0, col, pos, reduce="amin")
            new = (first[col] == pos) & ~taken[col]          # first sight of a free column, in topk order
            keep = idx[new][: b - n]
            j = keep % K
            taken[j] = True
            parent_row[p, j] = keep // K
            n += int(keep.numel())
    return accepted, parent_row


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
