"""Transport-derived budget allocation (Sec. 3.4, Eq. 8; App. C.1 overflow redistribution)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def total_budget(T: int, K: int, N: int, r: float) -> int:
    """B_tot = max(0, T*K - round(r*T*N)): exactly enough merges to land on round(r*T*N) tokens.

    The paper writes K*T*(1 - r_t); the official code uses this form, which absorbs the
    flooring of K (NOTES.md section 1.9). Python `round` (half to even), as the official code.
    """
    return max(0, T * K - int(round(T * N * r)))


def llava_total_budget(T: int, K: int, r: float, r_s: float) -> int:
    """B_tot on the official LLaVA path: T*K minus keep = max(1, round(T*K * (r / max(r_s, 1e-6)))).

    The keep target is a share r_t = r / r_s of the T*K spatially kept tokens (Python floats,
    in this order), not round(r*T*N) of the input as on the Qwen path (`total_budget`).
    """
    keep = max(1, int(round(T * K * (r / max(r_s, 1e-6)))))
    return max(0, T * K - keep)


@dataclass
class Allocation:
    """Per-pair budgets B_t and what the redistribution did."""

    B_t: torch.Tensor          # (P,) int64, sums to B_tot whenever sum(caps) >= B_tot
    beta_t: torch.Tensor       # (P,) float32 softmax weights of the first round
    overflow: int              # pairs whose first-round share exceeded their cap (App. C.1)
    rounds: int                # redistribution rounds run
    unused: int                # budget left when every pair hit its cap


def _largest_remainder(share: torch.Tensor, total: int) -> torch.Tensor:
    """floor(share), then +1 to the `leftover` largest fractional parts, picked by `torch.topk`
    as the official code does (exact ties in its order, e.g. mirrored pairs of static video)."""
    base = share.floor()
    out = base.long()
    leftover = total - int(out.sum().item())
    if leftover > 0:
        out[torch.topk(share - base, k=leftover).indices] += 1
    return out


def allocate(W: torch.Tensor, B_tot: int, caps: torch.Tensor, tau_b: float) -> Allocation:
    """Eq. 8 with integer budgets: B = largest-remainder(softmax(-W / tau_b) * remaining).

    Pairs are capped at `caps` (K_{t+1} - 1 in the official code). Overflow from capped
    pairs is re-spread by the softmax over the still-active pairs until none remains
    (App. C.1). tau_b = inf gives the uniform allocation.
    """
    P = W.shape[0]
    device = W.device
    B = torch.zeros(P, dtype=torch.long, device=device)
    active = torch.ones(P, dtype=torch.bool, device=device)
    remaining, rounds, overflow = int(B_tot), 0, 0
    beta0 = _softmax_weights(W.float(), tau_b)
    while remaining > 0 and bool(active.any()):
        rounds += 1
        idx = active.nonzero(as_tuple=True)[0]
        beta = beta0 if rounds == 1 else _softmax_weights(W.float()[idx], tau_b)
        want = _largest_remainder(beta * remaining, remaining)
        room = caps[idx] - B[idx]
        applied = torch.minimum(want, room)
        if rounds == 1:
            overflow = int((want > room).sum().item())
        B[idx] += applied
        remaining = int((want - applied).sum().item())
        active[idx[B[idx] >= caps[idx]]] = False
        if int(applied.sum().item()) == 0:
            break
    return Allocation(B_t=B, beta_t=beta0, overflow=overflow, rounds=rounds, unused=remaining)


def _softmax_weights(W: torch.Tensor, tau_b: float) -> torch.Tensor:
    if math.isinf(tau_b):
        return torch.full_like(W, 1.0 / W.numel())
    return torch.softmax(-W / tau_b, dim=0)
