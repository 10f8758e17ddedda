"""OTT-Vid (paper Sec. 3): spatial coverage pruning, importance-aware OT between neighbouring
frames, transport-derived budgets, merge/prune by union-find. Registered as `ottvid`.

The data path reads top to bottom in `OTTVid.compress`; each stage lives in ottvid/stages/.
Where the paper and the official code differ, the official code is followed
(docs/ottvid.md lists every such choice). `variant` picks which official backbone path:
`qwen2_5_vl` (default) or `llava`, which differs in K, B_tot, the mass and the cost
coordinates (docs/ottvid.md, "Backbone paths").
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .contract import CompressedTokens, VideoTokens
from .registry import Compressor, check_choice, check_int, check_range, check_retention, register
from .stages import budget, mass, merge, spatial, transport

VARIANTS = ("qwen2_5_vl", "llava")


@register("ottvid")
class OTTVid(Compressor):
    @dataclass
    class Params:
        """Defaults are the paper's configuration (Sec. 4, App. A)."""

        retention: float = 0.25      # r
        gamma: float = 0.3           # temporal share: r_s = r^(1-gamma), r_t = r^gamma
        tau_m: float = 0.3           # mass temperature (Eq. 3); inf = uniform mass
        tau_b: float = 0.3           # budget temperature (Eq. 8); inf = uniform budget
        tau_c: float = 0.3           # merge if C <= tau_c else prune; inf = always merge
        sinkhorn_eps: float = 0.01   # epsilon of Eq. 6
        sinkhorn_iters: int = 200
        mass: str = "loo"            # loo | uniform (Table 3)
        budget: str = "adaptive"     # adaptive | uniform (Table 3)
        alpha: str | float = "position"   # position | kernel | global | a number (Table A6)
        spatial: str = "coverage"    # coverage | topk | divprune | adts | scope (Table A1)
        variant: str = "qwen2_5_vl"  # official backbone path: qwen2_5_vl | llava (docs/ottvid.md)

        def __post_init__(self) -> None:
            self.retention = check_retention(self.retention)
            self.gamma = check_range("gamma", self.gamma, 0.0, 1.0)
            self.tau_m = check_range("tau_m", self.tau_m, 0.0, math.inf, lo_open=True, allow_inf=True)
            self.tau_b = check_range("tau_b", self.tau_b, 0.0, math.inf, lo_open=True, allow_inf=True)
            self.tau_c = check_range("tau_c", self.tau_c, 0.0, math.inf, allow_inf=True)
            self.sinkhorn_eps = check_range("sinkhorn_eps", self.sinkhorn_eps, 0.0, math.inf, lo_open=True, hi_open=True)
            self.sinkhorn_iters = check_int("sinkhorn_iters", self.sinkhorn_iters, 1)
            check_choice("mass", self.mass, ("loo", "uniform"))
            check_choice("budget", self.budget, ("adaptive", "uniform"))
            check_choice("spatial", self.spatial, spatial.SPATIAL_METHODS)
            check_choice("variant", self.variant, VARIANTS)
            if isinstance(self.alpha, str):
                check_choice("alpha", self.alpha, transport.ALPHA_MODES)
            else:
                self.alpha = check_range("alpha", self.alpha, 0.0, 1.0)

        @property
        def r_s(self) -> float:
            """Spatial retention r^(1-gamma) (Sec. 3.1), in Python float64 as the official code."""
            return self.retention ** (1.0 - self.gamma)

    @torch.no_grad()  # as the official functions: buffers are reused in place, no autograd graph
    def compress(self, video: VideoTokens) -> CompressedTokens:
        p = self.params
        x = video.features
        T, N, D = x.shape
        H, W = video.grid_hw
        dev = x.device
        llava = p.variant == "llava"

        # 1. Spatial stage (Eq. 1): K tokens per frame, raster order (K by floor; LLaVA path: by round).
        K = spatial.keep_per_frame(N, p.r_s, by_round=llava)
        # the similarity, and (float32 input: same dtype as the official alpha) the co-located cosines of alpha_t
        sim, colocated = None, None
        if p.spatial in ("coverage", "scope", "divprune"):
            if x.dtype == torch.float32 and p.alpha == "position":
                sim, colocated = spatial.cosine_similarity(x, colocated=True)
            else:
                sim = spatial.cosine_similarity(x)
        if K >= N:
            sel = torch.arange(N, device=dev).expand(T, N)
        else:
            sel = spatial.select(p.spatial, x, video.saliency, K, sim=sim)
        slots = (sel + torch.arange(T, device=dev).view(T, 1) * N).reshape(-1)   # t*N + n of the kept tokens
        kept = x.reshape(T * N, D).index_select(0, slots).float().view(T, K, D)
        positions = video.grid_positions().reshape(T * N, 3).index_select(0, slots).view(T, K, 3)

        # 2. Merge budget: B_tot = T*K - round(r*T*N) (LLaVA path: T*K - round(T*K*r/r_s)).
        B_tot = budget.llava_total_budget(T, K, p.retention, p.r_s) if llava else budget.total_budget(T, K, N, p.retention)
        stats = {"tokens_in": T * N, "K": K, "B_tot": B_tot, "r_s": p.r_s, "variant": p.variant}
        if T < 2 or B_tot <= 0:
            return self._output(kept.reshape(T * K, D), positions.reshape(T * K, 3), x.dtype,
                                {**stats, "W_t": [], "B_t": [], "alpha_t": [], "n_merged": 0, "n_pruned": 0})

        # 3. Mass (Eq. 2-3), cost (Eq. 4-5), Sinkhorn plans (Eq. 6), difficulty W_t (Eq. 7).
        tau_m = math.inf if p.mass == "uniform" else p.tau_m
        # LLaVA path: the LOO weights see the kept tokens' saliency only (the rest: their frame mean)
        w = spatial.normalized_saliency(mass.fill_unselected(video.saliency, sel) if llava else video.saliency)
        m = mass.mass_for(p.spatial, sim=sim, saliency=video.saliency, sel=sel, kept=kept, w=w, tau_m=tau_m)
        if llava and math.isinf(tau_m):
            m = m / K   # its uniform mass is ones / K (Sinkhorn renormalises: not always the same bits as ones)
        alpha_t = transport.pair_alpha(x, video.grid_hw, p.alpha, colocated=colocated)
        pos = transport.llava_coords(sel) if llava else transport.grid_coords(H, W, dev)[sel]
        C = transport.pair_cost(kept, pos, alpha_t)
        plan = transport.sinkhorn(m[:-1], m[1:], C, p.sinkhorn_eps, p.sinkhorn_iters)
        W_t = transport.transport_difficulty(plan, C)

        # 4. Budgets B_t (Eq. 8, App. C.1), capped at K - 1 per pair.
        tau_b = math.inf if p.budget == "uniform" else p.tau_b
        caps = torch.full((T - 1,), K - 1, dtype=torch.long, device=dev)
        alloc = budget.allocate(W_t, B_tot, caps, tau_b)

        # 5. Top-B_t matches, merge (C <= tau_c) or prune, union-find, uniform averaging.
        accepted, parent_row = merge.greedy_matches(plan, alloc.B_t)
        res = merge.union_merge(kept, C, accepted, parent_row, p.tau_c)
        stats.update(
            W_t=W_t.tolist(), B_t=alloc.B_t.tolist(), alpha_t=alpha_t.tolist(),
            beta_t=alloc.beta_t.tolist(), budget_overflow=alloc.overflow,
            budget_rounds=alloc.rounds, budget_unused=alloc.unused,
            n_merged=res.n_merged, n_pruned=res.n_pruned, n_discarded=res.n_discarded,
            max_span=res.max_span,
        )
        return self._output(res.features, positions.reshape(T * K, 3)[res.keep], x.dtype, stats)

    @staticmethod
    def _output(features: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype, stats: dict) -> CompressedTokens:
        stats["tokens_out"] = int(features.shape[0])
        return CompressedTokens(features=features.to(dtype), positions=positions, stats=stats)
