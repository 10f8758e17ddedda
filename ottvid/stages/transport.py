"""Temporal OT between neighbouring frames (Sec. 3.3, Eq. 4-7), batched over the T-1 pairs."""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F

from . import script, spatial

ALPHA_MODES = ("position", "kernel", "global")


def grid_coords(H: int, W: int, device: torch.device) -> torch.Tensor:
    """p = (h/(H-1), w/(W-1)): each axis normalised to [0, 1] separately (official code), (H*W, 2)."""
    gy, gx = torch.meshgrid(torch.linspace(0, 1, H, device=device),
                            torch.linspace(0, 1, W, device=device), indexing="ij")
    return torch.stack([gy.flatten(), gx.flatten()], dim=-1)


#: the grid the official LLaVA path reads kept indices with, whatever the real grid (it never
#: passes grid_hw, so LLaVA-OV's 14x14 indices are read as rows of 13: cost coordinates only)
OFFICIAL_LLAVA_GRID = (13, 13)


def llava_coords(sel: torch.Tensor, grid_hw: tuple[int, int] = OFFICIAL_LLAVA_GRID) -> torch.Tensor:
    """(T, K) local indices -> (T, K, 2) cost coordinates of the official LLaVA path:
    ((n // W) / (H - 1), (n % W) / (W - 1)) in float32, with (H, W) = (13, 13) by default
    (division, not `grid_coords`' linspace: they differ by an ulp at 5/12 and 8/12)."""
    H, W = grid_hw
    return torch.stack([(sel // W).float() / max(1, H - 1), (sel % W).float() / max(1, W - 1)], dim=-1)


def pair_alpha(features: torch.Tensor, grid_hw: tuple[int, int], alpha: str | float,
               colocated: torch.Tensor | None = None) -> torch.Tensor:
    """alpha_t = 1 - clamp(s_t, 0, 1) / 2 (Sec. 3.3), s_t from the pre-pruning frames t, t+1.

    position: mean cosine of co-located tokens (default); kernel: the same after 3x3
    average pooling without padding; global: cosine of the frame-mean tokens (Table A6).
    A number fixes alpha_t. Computed in the input dtype, as the official code does;
    `colocated` may pass the (T-1, N) co-located cosines for `position` when the caller
    already has them in that dtype (`spatial.cosine_similarity(..., colocated=True)`).
    """
    T, N, D = features.shape
    if not isinstance(alpha, str):
        return torch.full((T - 1,), float(alpha), device=features.device)
    x = features
    if alpha == "kernel":
        H, W = grid_hw
        if H >= 3 and W >= 3:
            grid = x.transpose(1, 2).reshape(T, D, H, W)
            x = F.avg_pool2d(grid, kernel_size=3, stride=1).flatten(2).transpose(1, 2)
    elif alpha == "global":
        x = x.mean(dim=1, keepdim=True)
    elif alpha != "position":
        raise ValueError(f"alpha: must be one of {list(ALPHA_MODES)} or a number, got {alpha!r}")
    if alpha == "position" and colocated is not None:
        s = colocated.mean(-1)
    else:
        xn = F.normalize(x, dim=-1)
        s = (xn[:-1] * xn[1:]).sum(-1).mean(-1)
    return (0.5 + 0.5 * (1.0 - s).clamp(0.0, 1.0)).float()


def pair_cost(feat: torch.Tensor, pos: torch.Tensor, alpha: torch.Tensor, chunk_elems: int = 1 << 22) -> torch.Tensor:
    """Eq. 4-5 for every pair: C_t = alpha_t (1 - max(0, cos)) + (1 - alpha_t) ||p_i - p_j|| / sqrt(2).

    feat: (T, K, D) kept tokens (float32); pos: (T, K, 2); returns (T-1, K, K). The official
    `bmm` of the unit tokens over the pair spans of `spatial.gemm_spans` (the bits of one call on
    all pairs), the unit tokens of a span's frames made in one reused buffer (row-wise: the bits
    of normalising all).
    """
    T, K, D = feat.shape
    dot = torch.empty(max(T - 1, 0), K, K, dtype=torch.float32, device=feat.device)
    if T > 1:
        spans = spatial.gemm_spans(T - 1, chunk_elems // max(1, K * D) - 1, feat.device)
        buf = torch.empty(max(j - i for i, j in spans) + 1, K, D, dtype=torch.float32, device=feat.device)
        for i, j in spans:   # pairs i ... j-1: frames i ... j
            xn = F.normalize(feat[i:j + 1], dim=-1, out=buf[:j + 1 - i])
            torch.bmm(xn[:-1], xn[1:].transpose(1, 2), out=dot[i:j])
    c_sem = dot.clamp_min_(0.0).neg_().add_(1.0)                  # 1 - max(0, cos), same rounding
    c_loc = (pos[:-1].unsqueeze(2) - pos[1:].unsqueeze(1)).norm(dim=-1) / math.sqrt(2.0)
    a = alpha.view(-1, 1, 1)
    return a * c_sem + (1.0 - a) * c_loc


def sinkhorn(m_a: torch.Tensor, m_b: torch.Tensor, C: torch.Tensor, eps: float, iters: int) -> torch.Tensor:
    """Eq. 6: entropic OT plans for a batch of problems, (P, K) x (P, K) x (P, K, K) -> (P, K, K).

    Marginals are the masses normalised to 1. Exactly `iters` iterations, columns then
    rows, so row marginals are exact. Log domain for eps < 0.05 (official switch); each
    log-sum-exp is `_logsumexp_into`, the same operations as `torch.logsumexp` (same bits)
    on two (P, K, K) buffers reused across iterations instead of fresh allocations.
    """
    a = m_a / m_a.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    b = m_b / m_b.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    if eps < 0.05:
        log_a, log_b = a.clamp_min(1e-30).log(), b.clamp_min(1e-30).log()
        log_K = -C / eps
        # finite costs keep every potential finite (each sum holds exp(0) = 1): no inf guard needed
        fin = bool(torch.isfinite(log_K).all()) and bool(torch.isfinite(log_a).all()) and bool(torch.isfinite(log_b).all())
        log_u, log_v = script.run(_log_sinkhorn_loop, log_K, log_a, log_b, iters, fin, _LSE_FLOOR)
        return (log_u.unsqueeze(-1) + log_K + log_v.unsqueeze(-2)).exp()
    K_mat = torch.exp(-C / eps)
    u = torch.ones_like(a)
    for _ in range(iters):
        v = b / torch.bmm(K_mat.transpose(1, 2), u.unsqueeze(2)).squeeze(2).clamp_min(1e-12)
        u = a / torch.bmm(K_mat, v.unsqueeze(2)).squeeze(2).clamp_min(1e-12)
    return u.unsqueeze(2) * K_mat * v.unsqueeze(1)


#: exp(x) for x below about -87.3 is a float32 denormal, which the vectorised CPU exp computes
#: ~50x slower; log-sum-exp terms are clamped to exp(-87) ~ 1.6e-38 instead (see _logsumexp_into).
_LSE_FLOOR = -87.0


def _log_sinkhorn_loop(log_K: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor, iters: int,
                       finite: bool, floor: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """`sinkhorn`'s log-domain iterations (TorchScript-compatible): the potentials (log u, log v).

    Every buffer and view is made once: each half-step is 9 kernels, no allocation. `floor` is
    `_LSE_FLOOR` (an argument: TorchScript reads no module globals).
    """
    P, K = log_a.shape[0], log_a.shape[1]
    log_u, log_v = torch.zeros_like(log_a), torch.zeros_like(log_b)
    buf = torch.empty_like(log_K)
    lu_col, lv_row = log_u.unsqueeze(-1), log_v.unsqueeze(-2)     # views of the updated potentials
    mx_c, mx_r = log_b.new_empty([P, 1, K]), log_a.new_empty([P, K, 1])
    lse_c, lse_r = torch.empty_like(log_b), torch.empty_like(log_a)
    mx_c_flat, mx_r_flat = mx_c.view(P, K), mx_r.view(P, K)
    for _ in range(iters):
        torch.add(log_K, lu_col, out=buf)
        torch.sub(log_b, _logsumexp_into(buf, -2, finite, floor, mx_c, lse_c, mx_c_flat), out=log_v)
        torch.add(log_K, lv_row, out=buf)
        torch.sub(log_a, _logsumexp_into(buf, -1, finite, floor, mx_r, lse_r, mx_r_flat), out=log_u)
    return log_u, log_v


def _logsumexp_into(z: torch.Tensor, dim: int, finite: bool, floor: float, mx: torch.Tensor,
                    out: torch.Tensor, mx_flat: torch.Tensor) -> torch.Tensor:
    """torch.logsumexp(z, dim) computed as torch does it (max shift, inf-safe), overwriting z, into
    the buffers `mx` (the keepdim max), its view `mx_flat` without `dim`, and `out`.

    finite=True skips the infinite-max guard, a no-op when every z is finite.

    One departure: shifted terms below `floor` (-87) are raised to it before `exp`, i.e. summands
    under 1.6e-38 (denormals) become 1.6e-38. Every sum holds the max term exp(0) = 1, so even K of
    them (< 1e-34) sit far below half an ulp of the sum: the result keeps torch's bits (checked
    against torch.logsumexp in the tests) while the exp avoids its slow denormal path.
    """
    torch.amax(z, dim=[dim], keepdim=True, out=mx)
    if not finite:
        mx.masked_fill_(mx.abs() == float("inf"), 0.0)
    z.sub_(mx).clamp_min_(floor).exp_()
    torch.sum(z, dim=[dim], out=out)
    return out.log_().add_(mx_flat)


def transport_difficulty(plan: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """Eq. 7: W_t = sum_ij P_t,ij C_t,ij, (P,)."""
    return (plan * C).sum(dim=(1, 2))
