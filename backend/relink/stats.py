"""The exact arithmetic behind backend.relink: expected Recall@K of a uniformly drawn pool from per-query
beater/tie counts (hypergeometric laws, vectorised over queries) and chance levels (the patient bootstrap is
in backend.relink.bootstrap).

Conventions: arrays of counts are float64 (exact for integers below 2**53); "entries" are flattened
(query, pool size) combinations of shape (E,). One implementation serves two array libraries through a
small namespace (`Xp`): numpy + scipy on the CPU (fastest there: torch's CPU lgamma is ~15x slower) and
torch on a GPU, so the whole curve stays on the device that made the counts. `expected_recall` and
`group_chance` take numpy arrays or tensors and return the same kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.special import gammaln

# Terms past the tie threshold summed directly where the pmf decays at least 4x per step (error < 4**-TAIL).
TAIL = 24
SHORT_WINDOW = 8  # tie windows of this many terms for rows whose tie count has at most this many support points
CHUNK_ELEMENTS = 1 << 18  # (rows x window) float64 entries per chunk of expected_recall / tie_factor scratch (2 MB;
# row-wise arithmetic, so the results do not depend on it: 1 << 20 gave the same bits, 25 MB more scratch at 400k)
DIRECT_RATIO = 0.25


class Xp:
    """The few array operations the arithmetic needs, for numpy (device None) or torch (a torch.device)."""

    def __init__(self, device: Any = None) -> None:
        self.device = device
        if device is not None:
            import torch  # late: only for tensors on a device

            self.t = torch

    def f64(self, x: Any) -> Any:
        if self.device is None:
            return np.asarray(x, dtype=np.float64)
        return self.t.as_tensor(x, dtype=self.t.float64, device=self.device)

    def lgamma(self, x: Any) -> Any:
        return gammaln(x) if self.device is None else self.t.lgamma(x)

    def exp(self, x: Any) -> Any:
        return np.exp(x) if self.device is None else self.t.exp(x)

    def expm1(self, x: Any) -> Any:
        return np.expm1(x) if self.device is None else self.t.expm1(x)

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        if self.device is None:
            return np.where(cond, a, b)
        return self.t.where(cond, self.f64(a) if not self.t.is_tensor(a) else a, self.f64(b) if not self.t.is_tensor(b) else b)

    def minimum(self, a: Any, b: Any) -> Any:
        return np.minimum(a, b) if self.device is None else self.t.minimum(a, b)

    def clip_low(self, x: Any, low: float) -> Any:
        return np.maximum(x, low) if self.device is None else self.t.clamp(x, min=low)

    def clip_high(self, x: Any, high: float) -> Any:
        return np.minimum(x, high) if self.device is None else self.t.clamp(x, max=high)

    def empty(self, shape: tuple[int, ...]) -> Any:
        return np.empty(shape) if self.device is None else self.t.empty(shape, dtype=self.t.float64, device=self.device)

    def zeros(self, shape: tuple[int, ...]) -> Any:
        return np.zeros(shape) if self.device is None else self.t.zeros(shape, dtype=self.t.float64, device=self.device)

    def arange(self, n: int) -> Any:
        return np.arange(n, dtype=np.float64) if self.device is None else self.t.arange(n, dtype=self.t.float64, device=self.device)

    def stack(self, xs: list[Any], axis: int) -> Any:
        return np.stack(xs, axis=axis) if self.device is None else self.t.stack(xs, dim=axis)

    def flatnonzero(self, mask: Any) -> Any:
        return np.flatnonzero(mask) if self.device is None else self.t.nonzero(mask).squeeze(1)

    def size(self, x: Any) -> int:
        return int(x.size) if self.device is None else int(x.numel())

    def nonzero2(self, mask: Any) -> tuple[Any, Any]:
        return np.nonzero(mask) if self.device is None else self.t.nonzero(mask, as_tuple=True)

    def repeat_axis1(self, x: Any, n: int) -> Any:
        """(E, 1, c) -> (E, n, c), a copy."""
        return np.repeat(x, n, axis=1) if self.device is None else x.repeat(1, n, 1)

    def numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x) if self.device is None else x.cpu().numpy()


def xp_of(x: Any) -> Xp:
    """numpy's namespace for numpy arrays (and lists), torch's for a tensor (on its device)."""
    return Xp(x.device) if hasattr(x, "device") and not isinstance(x, np.ndarray) else Xp()


def _log_comb(xp: Xp, n: Any, k: Any) -> Any:
    """log C(n, k) for 0 <= k <= n (float arrays)."""
    return xp.lgamma(n + 1.0) - xp.lgamma(k + 1.0) - xp.lgamma(n - k + 1.0)


def hypergeom_window(pop: Any, succ: Any, draws: Any, width: int) -> tuple[Any, Any]:
    """The first `width` support points of Z ~ Hypergeom(pop, succ, draws) (draws without replacement
    from pop items of which succ are marked; Z = marked items drawn).

    Args: pop, succ, draws: (E,) with 0 <= succ <= pop and 0 <= draws <= pop (numpy or tensors).
    Returns (start (E,), pmf (E, width)) with pmf[e, l] = P(Z_e = start_e + l); start_e is the lowest support
    point max(0, draws - (pop - succ)). The first term comes from log-gamma, the rest from the exact ratio
    recurrence (log-concave, so ratios never blow up); terms under ~1e-308 underflow to 0.
    """
    xp = xp_of(pop)
    pop, succ, draws = (xp.f64(a) for a in (pop, succ, draws))
    lo = xp.clip_low(draws - (pop - succ), 0.0)
    out = xp.empty((pop.shape[0], width))
    p = xp.exp(_log_comb(xp, succ, lo) + _log_comb(xp, pop - succ, draws - lo) - _log_comb(xp, pop, draws))
    out[:, 0] = p
    # P(lo + j + 1) = P(lo + j) (succ - k)(draws - k) / ((k + 1)(pop - succ - draws + k + 1)) with k = lo + j; every
    # factor is an integer-valued float64 (exact), the denominator >= 1 for k >= lo, and the numerator is exactly 0
    # at k = hi = min(succ, draws), so the terms past the support are exact zeros without a mask
    a, c, e, f = succ - lo, draws - lo, lo + 1.0, pop - succ - draws + lo + 1.0
    for step in range(1, width):
        j = float(step - 1)
        p = p * ((a - j) * (c - j) / ((e + j) * (f + j)))
        out[:, step] = p
    return lo, out


def tie_factor(pop: Any, ties: Any, draws: Any, j: Any, width: int | None = None) -> Any:
    """E[min(j, Y + 1) / (Y + 1)] for Y ~ Hypergeom(pop, ties, draws): the chance that the true report,
    tied with the Y drawn ties and broken uniformly at random, lands in the first j of its tie block.

    Args: pop, ties, draws: (E,); j: (E, c) integer thresholds (j <= 0 gives 0); width: the support points
    summed per row, at least max(j) + TAIL (default exactly that). A row's value depends on its own inputs
    and the width only: a caller that fixes the width may split or merge rows freely (same bits).
    Returns (E, c). Uses E[1{Y >= j} / (Y + 1)] = (pop+1)/((ties+1)(draws+1)) P(Y' >= j + 1) with
    Y' ~ Hypergeom(pop+1, ties+1, draws+1): summed directly where the tail decays fast (no cancellation),
    as a complement of the head where it does not (then the tail is not small, so no precision is lost).
    """
    xp = xp_of(pop)
    pop, ties, draws, j = (xp.f64(a) for a in (pop, ties, draws, j))
    if width is None:
        width = max(int(j.max()) if xp.size(j) else 1, 1) + TAIL
    # one width for every row, so that a row's terms do not depend on the chunking below
    rows = max(1, CHUNK_ELEMENTS // width)
    if pop.shape[0] <= rows:
        return _tie_factor(xp, pop, ties, draws, j, width)
    out = xp.zeros(tuple(j.shape))
    for a in range(0, pop.shape[0], rows):  # row by row arithmetic: chunks bound the (rows, width) scratch
        out[a:a + rows] = _tie_factor(xp, pop[a:a + rows], ties[a:a + rows], draws[a:a + rows], j[a:a + rows], width)
    return out


def _tie_factor(xp: Xp, pop: Any, ties: Any, draws: Any, j: Any, width: int) -> Any:
    """tie_factor on float64 inputs with the window width fixed by the caller."""
    start, pmf = hypergeom_window(pop, ties, draws, width)
    y = start[:, None] + xp.arange(width)
    inv = pmf / (y + 1.0)
    p_zero = xp.where(draws + 1 <= pop - ties,
                      xp.exp(_log_comb(xp, pop - ties, xp.minimum(draws + 1, pop - ties)) - _log_comb(xp, pop + 1, draws + 1)),
                      0.0)
    mean_inv = (pop + 1) / ((ties + 1) * (draws + 1)) * (1.0 - p_zero)  # E[1/(Y+1)]
    hi = xp.minimum(ties, draws)
    out = xp.zeros(tuple(j.shape))
    for col in range(j.shape[1]):
        jj = j[:, col]
        below = y < jj[:, None]
        head = (pmf * below).sum(1)
        tail_direct = (inv * ~below).sum(1)
        tail_comp = xp.clip_low(mean_inv - (inv * below).sum(1), 0.0)
        jc = xp.clip_low(jj, 0.0)
        ratio = (ties - jc) * (draws - jc) / ((jc + 1.0) * xp.clip_low(pop - ties - draws + jc + 1.0, 1.0))
        direct = (hi < start + width) | ((start <= jj) & (ratio <= DIRECT_RATIO))
        value = head + jj * xp.where(direct, tail_direct, tail_comp)
        out[:, col] = xp.where(jj >= 1, xp.clip_high(value, 1.0), 0.0)
    return out


def expected_recall(eligible: Any, beaters: Any, ties: Any, draws: Any, ks: Sequence[int]) -> Any:
    """Exact P(true report ranks within the top K) for a pool of the true report plus `draws` distractors
    drawn uniformly without replacement from `eligible` ones, of which `beaters` score strictly higher and
    `ties` tie (ties broken uniformly at random).

    P = sum_{x<K} P(X = x) E[min(K - x, Y + 1) / (Y + 1)], X ~ Hypergeom(eligible, beaters, draws) and,
    given X = x, Y ~ Hypergeom(eligible - beaters, ties, draws - x). With ties = 0 it is the hypergeometric
    cdf P(X <= K - 1).

    Args: eligible, beaters, ties, draws: (E,) counts with beaters + ties <= eligible, draws <= eligible
    (numpy arrays, or float64 tensors of one device).
    Returns (E, len(ks)) float64, numpy or a tensor on that device like the inputs.
    """
    xp = xp_of(eligible)
    eligible, beaters, ties, draws = (xp.f64(a) for a in (eligible, beaters, ties, draws))
    ks_arr = xp.f64([float(k) for k in ks])
    kmax = int(max(ks))
    n = eligible.shape[0]
    out, start = xp.empty((n, len(ks))), xp.empty((n,))
    tied = xp.flatnonzero(ties > 0)
    pmf_tied = xp.empty((xp.size(tied), kmax))  # the window is kept for the rows with ties only
    rows = max(1, CHUNK_ELEMENTS // kmax)
    for a in range(0, n, rows):  # row by row arithmetic, in chunks: no (E, kmax) arrays
        b = min(a + rows, n)
        start[a:b], pmf = hypergeom_window(eligible[a:b], beaters[a:b], draws[a:b], kmax)
        x = start[a:b, None] + xp.arange(kmax)
        for i, k in enumerate(ks):
            out[a:b, i] = (pmf * (x < float(k))).sum(1)
        here = (tied >= a) & (tied < b)
        pmf_tied[here] = pmf[tied[here] - a]
    if xp.size(tied) == 0:
        return xp.clip_high(out, 1.0)
    out[tied] = 0.0
    for step in range(kmax):
        xs = start[tied] + step
        keep = (xs < kmax) & (pmf_tied[:, step] > 0)
        rows, xs = tied[keep], xs[keep]
        if xp.size(rows) == 0:
            continue
        # only the Ks that some row can still reach (K > x): the others' factor is 0 for every row (they would add
        # exact zeros). The window width depends on the step alone (no row has K - x above kmax - step), so each
        # row's value is its own: the curve may compute any subset of rows, in any pieces, with the same bits
        cols = xp.flatnonzero(ks_arr > xs.min())
        j = ks_arr[cols][None, :] - xs[:, None]
        pop, tie_r, dr = eligible[rows] - beaters[rows], ties[rows], draws[rows] - xs
        g = xp.empty(tuple(j.shape))
        parts = [(slice(None), kmax - step + TAIL)]  # on a GPU every row sums the step's window
        if xp.device is None:
            # rows whose tie count Y has at most SHORT_WINDOW support points (all in the benchmark: 1-2 ties) sum a
            # window of that many terms: the terms past the support are exact zeros, and numpy sums 8 terms or more
            # in eight running sums (more terms add exact zeros to them) and fewer one by one, which agree while at
            # most SHORT_WINDOW terms are nonzero: the same bits (tests/test_relink.py)
            short = xp.minimum(tie_r, dr) - xp.clip_low(dr - (pop - tie_r), 0.0) + 1.0 <= SHORT_WINDOW
            parts = [(idx, width) for idx, width in ((np.flatnonzero(short), SHORT_WINDOW),
                                                    (np.flatnonzero(~short), kmax - step + TAIL)) if idx.size]
        for part, width in parts:
            g[part] = tie_factor(pop[part], tie_r[part], dr[part], j[part], width=width)
        out[rows[:, None], cols[None, :]] += pmf_tied[keep, step][:, None] * g
    return xp.clip_high(out, 1.0)


def group_chance(draws: Any, group: Any, k: int) -> Any:
    """Chance that at least one of `group` target items lands in the top k of a randomly ordered pool of
    group + draws items: 1 - C(draws, k) / C(draws + group, k). With group = 1 it is min(1, k / (draws + 1)).

    Args: draws, group: (E,) counts (group >= 1), numpy or tensors. Returns (E,) of the same kind.
    """
    xp = xp_of(draws)
    draws, group = xp.f64(draws), xp.f64(group)
    ok = draws >= k
    d = xp.where(ok, draws, float(k))
    log_none = xp.lgamma(d + 1) - xp.lgamma(d - k + 1) - xp.lgamma(d + group + 1) + xp.lgamma(d + group - k + 1)
    return xp.where(ok, -xp.expm1(log_none), 1.0)
