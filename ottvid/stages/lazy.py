"""The CPU coverage greedy (Eq. 1): lazy, certified against the official step, compiled by numba.

The official step re-evaluates every gain g_j = [w_j] sum_i c_i max(0, sim_ij - mu_i) of a frame
and takes the argmax. Here a gain is evaluated only when it may win, in float64 from the float32
terms, and a pick is made only when it is the official pick whatever order the official code
sums in (`Margins`); otherwise `greedy` hands the step back to the caller, which takes it from
the official call (`spatial.coverage_select`). numba compiles the loops once per machine
(`compiled`: cached next to this file); a step is a few heap operations and row passes, not
interpreter calls.
"""
from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np


def compiled(**flags):
    """numba.njit (no GIL, no bounds checks, `flags`), its machine code cached next to the module;
    where no cache location is writable (numba raises at decoration), compiled in each process."""
    def wrap(fn):
        try:
            return numba.njit(cache=True, nogil=True, boundscheck=False, **flags)(fn)
        except RuntimeError:
            return numba.njit(cache=False, nogil=True, boundscheck=False, **flags)(fn)
    return wrap


class Margins(NamedTuple):
    """Rounding bounds of the certification, for N covered tokens (n = N + 8, the 8 as slack).

    E is a gain's exact value: sum_i c_i d_ij of the float32 terms d_ij = max(0, sim_ij - mu_i)
    (one IEEE subtraction, the same bits in every implementation), times w_j for SCOPE. Any
    float32 evaluation O of it (the official one, whatever its order: N + 1 rounded non-negative
    products and sums) has |O - E| <= gamma E + delta, gamma = n u / (1 - n u), u = 2^-24, delta
    = 4 n 2^-150 for products in the subnormal range. Ours, in float64 (each product exact, the
    sum in any order) has |G - E| <= eps64 E, eps64 = 4 n 2^-53, which also covers the
    roundings of the float64 bound arithmetic. Covers mu only grow, so every d_ij and E only
    shrink: an upper bound of E at an earlier step bounds it at every later one.
    """
    gamma: float
    delta: float
    eps64: float

    @classmethod
    def for_tokens(cls, N: int) -> "Margins":
        n = N + 8
        u = 2.0 ** -24
        return cls(n * u / (1 - n * u), 4 * n * 2.0 ** -150, 4 * n * 2.0 ** -53)

    def upper_from_official(self, gains: np.ndarray) -> np.ndarray:
        """Upper bounds of E from official float32 gains (-inf, a picked token, stays -inf)."""
        g = gains.astype(np.float64)
        return np.where(g == -np.inf, -np.inf, (g + self.delta) / (1 - self.gamma) * (1 + self.eps64))


@compiled(fastmath={"reassoc", "contract"})
def _gain(col, mu, cw):
    """sum_i c_i max(0, col_i - mu_i) in float64: exact products, the sum in any order (reassociated
    into SIMD lanes; no other fast-math licence: infinities and NaN keep their meaning)."""
    total = 0.0
    zero = np.float32(0.0)
    for i in range(mu.shape[0]):
        total += np.float64(cw[i]) * np.float64(max(col[i] - mu[i], zero))
    return total


@compiled()
def _column_sums(s, cw, out):
    """out_j = sum_i c_i max(0, s_ij) in float64, every gain at mu = 0 (step 0) from one pass over
    the rows of s (no column reads, symmetric or not)."""
    out[:] = 0.0
    zero = np.float32(0.0)
    for i in range(s.shape[0]):
        c = np.float64(cw[i])
        row = s[i]
        for j in range(row.shape[0]):
            out[j] += c * np.float64(max(row[j], zero))


@numba.njit(inline="always")
def _before(key, idx, a, b):
    """Heap order: larger bound first, the lower token index on equal bounds."""
    return key[a] > key[b] or (key[a] == key[b] and idx[a] < idx[b])


@compiled()
def _sift_down(key, idx, p, n):
    while True:
        c = 2 * p + 1
        if c >= n:
            return
        if c + 1 < n and _before(key, idx, c + 1, c):
            c += 1
        if not _before(key, idx, c, p):
            return
        key[p], key[c] = key[c], key[p]
        idx[p], idx[c] = idx[c], idx[p]
        p = c


@compiled()
def _sift_up(key, idx, p):
    while p > 0:
        q = (p - 1) // 2
        if not _before(key, idx, p, q):
            break
        key[p], key[q] = key[q], key[p]
        idx[p], idx[q] = idx[q], idx[p]
        p = q
    return p


@compiled()
def greedy(S, cols, CW, CDW, scope, UB, MU, picks, t0, k0, gamma, delta, eps64):
    """The lazy greedy of frames t0 ... T-1 from step k0 of frame t0; returns (t, k) of the first
    step whose pick it cannot certify, or (T, 0) when every frame has its K picks.

    S (T, N, N) float32 similarities; cols (T, N, N) their columns as rows (S itself when every
    frame is symmetric); CW (T, N) cover weights c; CDW (T, N) SCOPE's w_j (read when `scope`);
    UB (T, N) float64 upper bounds of the exact gains, -inf for picked tokens (read at k0 > 0,
    e.g. from an official step; written); MU (T, N) float32 covers; picks (T, K) int64. All
    updated in place. A step: the candidate of largest bound (a heap) is evaluated until the top
    one is fresh (evaluated at this step); it is the pick when its lowest possible official gain
    exceeds the highest possible official gain of the runner-up (the larger child of the heap's
    root), which is evaluated too when stale. Two fresh gains within rounding: handed back.
    """
    T, N = UB.shape
    K = picks.shape[1]
    neg = -np.inf
    lo, hi = 1.0 - gamma, 1.0 + gamma
    stamp = np.empty(N, np.int64)      # the step a token's bound was evaluated at (-1: earlier)
    low = np.empty(N, np.float64)      # lower bound of E, valid at that step
    key = np.empty(N, np.float64)
    idx = np.empty(N, np.int64)
    acc = np.empty(N, np.float64)
    for t in range(t0, T):
        s, col_of, ub, mu, cw = S[t], cols[t], UB[t], MU[t], CW[t]
        k_start = k0 if t == t0 else 0
        stamp[:] = -1
        if k_start == 0:   # step 0 (mu = 0): every gain
            _column_sums(s, cw, acc)
            for j in range(N):
                g = acc[j] * np.float64(CDW[t, j]) if scope else acc[j]
                ub[j], low[j], stamp[j] = g * (1.0 + eps64), g * (1.0 - eps64), 0
        n = 0
        for j in range(N):
            if ub[j] != neg:
                key[n], idx[n] = ub[j], j
                n += 1
        for p in range(n // 2 - 1, -1, -1):
            _sift_down(key, idx, p, n)
        for k in range(k_start, K):
            while True:
                top = 0
                j = idx[0]
                if stamp[j] == k:
                    runner = -1
                    if n > 1:
                        runner = 2 if n > 2 and _before(key, idx, 2, 1) else 1
                    if runner < 0 or key[runner] * hi + delta < low[j] * lo - delta:
                        break   # certified: the official argmax
                    top = runner
                    j = idx[runner]
                    if stamp[j] == k:
                        return t, k   # a near-tie (or an exact one): the official step decides
                g = _gain(col_of[j], mu, cw)
                if scope:
                    g *= np.float64(CDW[t, j])
                ub[j], low[j], stamp[j] = g * (1.0 + eps64), g * (1.0 - eps64), k
                key[top] = ub[j]
                _sift_down(key, idx, _sift_up(key, idx, top), n)
            b = idx[0]
            n -= 1
            key[0], idx[0] = key[n], idx[n]
            _sift_down(key, idx, 0, n)
            picks[t, k] = b
            ub[b] = neg
            col = col_of[b]
            for i in range(N):
                if col[i] > mu[i]:
                    mu[i] = col[i]
    return T, 0
