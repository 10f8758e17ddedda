"""Transport mass of the kept tokens (Sec. 3.2, Eq. 2-3; App. B.1 variants), batched over frames.

Every variant scores each kept token by how much the frame would lose without it,
then maps the score to mass by the negative softmax of Eq. 3: important tokens get
small mass and resist compression. tau_m = inf gives uniform mass.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def negative_softmax(u: torch.Tensor, tau_m: float) -> torch.Tensor:
    """Eq. 3: u~ = u / (max_k u + 1e-8), m = softmax(-u~ / tau_m) over each frame's K tokens."""
    if math.isinf(tau_m):
        return uniform_mass(u.shape[0], u.shape[1], u.device)
    s = u / (u.max(dim=1, keepdim=True).values + 1e-8)
    logits = -s / tau_m
    m = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
    return m / m.sum(dim=1, keepdim=True)


def uniform_mass(T: int, K: int, device: torch.device) -> torch.Tensor:
    """Uniform mass (the official `tau_m=None`): ones, renormalised by Sinkhorn."""
    return torch.ones(T, K, device=device)


def fill_unselected(saliency: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
    """(T, N) saliency as the official LLaVA path rebuilds it for the mass: it keeps only the
    selected tokens' saliency, so every other token gets the frame's mean selected saliency
    (in the saliency's dtype); the selected positions keep their own value."""
    s_sel = torch.gather(saliency, 1, sel)
    full = s_sel.mean(dim=1, keepdim=True).expand(-1, saliency.shape[1]).clone()
    return full.scatter_(1, sel, s_sel)


def _loo_gaps(sim: torch.Tensor, sel: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """Eq. 2: u_k = sum_{i: k^(i)=k} w_i max(0, sigma_i1 - sigma_i2) over all N tokens of the frame."""
    T, N, _ = sim.shape
    K = sel.shape[1]
    S = torch.gather(sim, 2, sel.unsqueeze(1).expand(T, N, K))
    top2 = S.topk(min(2, K), dim=2)
    best = top2.values[..., 0]
    second = top2.values[..., 1] if K >= 2 else torch.zeros_like(best)
    gap = (best - second).clamp_min_(0)
    if w is not None:
        gap = gap * w
    u = sim.new_zeros(T, K)
    return u.scatter_add_(1, top2.indices[..., 0], gap)


def loo_mass(sim: torch.Tensor, w: torch.Tensor, sel: torch.Tensor, tau_m: float) -> torch.Tensor:
    """OTT-Vid leave-one-out mass (Eq. 2-3) from the full-frame similarity and saliency weights w."""
    return negative_softmax(_loo_gaps(sim, sel, w), tau_m)


def scope_mass(sim: torch.Tensor, saliency: torch.Tensor, sel: torch.Tensor, tau_m: float) -> torch.Tensor:
    """SCOPE (App. B.1): unweighted leave-one-out coverage loss scaled by the token's own saliency w_j."""
    w_sel = torch.gather(saliency.float(), 1, sel)
    w_sel = w_sel / (w_sel.sum(dim=-1, keepdim=True) + 1e-8)
    return negative_softmax(_loo_gaps(sim, sel, None) * w_sel, tau_m)


def saliency_mass(saliency: torch.Tensor, sel: torch.Tensor, tau_m: float) -> torch.Tensor:
    """Top-K (App. B.1): m_j from the token's own saliency."""
    return negative_softmax(torch.gather(saliency.float(), 1, sel), tau_m)


def isolation_mass(kept: torch.Tensor, tau_m: float, saliency: torch.Tensor | None = None) -> torch.Tensor:
    """DivPrune / ADTS (App. B.1): iso_j = [w_j *] min_{k in S, k != j} (1 - cos(j, k))."""
    T, K, _ = kept.shape
    xn = F.normalize(kept.float(), p=2, dim=-1)
    dist = 1.0 - torch.bmm(xn, xn.transpose(1, 2))
    if saliency is not None:
        dist = dist * saliency.float().unsqueeze(1)
    if K == 1:
        return uniform_mass(T, K, kept.device)
    eye = torch.eye(K, dtype=torch.bool, device=kept.device).unsqueeze(0)
    iso = dist.masked_fill(eye, float("inf")).min(dim=1).values
    return negative_softmax(iso, tau_m)


def mass_for(spatial: str, *, sim: torch.Tensor | None, saliency: torch.Tensor, sel: torch.Tensor,
             kept: torch.Tensor, w: torch.Tensor | None, tau_m: float) -> torch.Tensor:
    """The mass function that mirrors each spatial selector (App. B.1)."""
    if math.isinf(tau_m):
        return uniform_mass(sel.shape[0], sel.shape[1], sel.device)
    if spatial == "coverage":
        return loo_mass(sim, w, sel, tau_m)
    if spatial == "scope":
        return scope_mass(sim, saliency, sel, tau_m)
    if spatial == "topk":
        return saliency_mass(saliency, sel, tau_m)
    if spatial == "divprune":
        return isolation_mass(kept, tau_m)
    if spatial == "adts":
        return isolation_mass(kept, tau_m, saliency=torch.gather(saliency.float(), 1, sel))
    raise ValueError(f"spatial: unknown spatial method {spatial!r}")
