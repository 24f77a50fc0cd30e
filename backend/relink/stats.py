"""The exact arithmetic behind backend.relink: expected Recall@K of a uniformly drawn pool from per-query
beater/tie counts (hypergeometric laws, vectorised over queries), chance levels, and the patient bootstrap.

Conventions: arrays of counts are float64 (exact for integers below 2**53); "entries" are flattened
(query, pool size) combinations of shape (E,).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import sparse
from scipy.special import gammaln

# Terms past the tie threshold summed directly where the pmf decays at least 4x per step (error < 4**-TAIL).
TAIL = 24
DIRECT_RATIO = 0.25


def _log_comb(n: np.ndarray, k: np.ndarray) -> np.ndarray:
    """log C(n, k) for 0 <= k <= n (float arrays)."""
    return gammaln(n + 1.0) - gammaln(k + 1.0) - gammaln(n - k + 1.0)


def hypergeom_window(pop: np.ndarray, succ: np.ndarray, draws: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `width` support points of Z ~ Hypergeom(pop, succ, draws) (draws without replacement
    from pop items of which succ are marked; Z = marked items drawn).

    Args: pop, succ, draws: (E,) with 0 <= succ <= pop and 0 <= draws <= pop.
    Returns (start (E,), pmf (E, width)) with pmf[e, l] = P(Z_e = start_e + l); start_e is the lowest support
    point max(0, draws - (pop - succ)). The first term comes from log-gamma, the rest from the exact ratio
    recurrence (log-concave, so ratios never blow up); terms under ~1e-308 underflow to 0.
    """
    pop, succ, draws = (np.asarray(a, dtype=np.float64) for a in (pop, succ, draws))
    lo = np.maximum(0.0, draws - (pop - succ))
    hi = np.minimum(succ, draws)
    out = np.empty((pop.shape[0], width))
    p = np.exp(_log_comb(succ, lo) + _log_comb(pop - succ, draws - lo) - _log_comb(pop, draws))
    out[:, 0] = p
    slack = pop - succ - draws  # (k + 1 + slack) >= 1 for every support point k >= lo
    for step in range(1, width):
        k = lo + (step - 1)
        ratio = (succ - k) * (draws - k) / ((k + 1.0) * (slack + k + 1.0))
        p = p * np.where(k < hi, ratio, 0.0)
        out[:, step] = p
    return lo, out


def tie_factor(pop: np.ndarray, ties: np.ndarray, draws: np.ndarray, j: np.ndarray) -> np.ndarray:
    """E[min(j, Y + 1) / (Y + 1)] for Y ~ Hypergeom(pop, ties, draws): the chance that the true report,
    tied with the Y drawn ties and broken uniformly at random, lands in the first j of its tie block.

    Args: pop, ties, draws: (E,); j: (E, c) integer thresholds (j <= 0 gives 0).
    Returns (E, c). Uses E[1{Y >= j} / (Y + 1)] = (pop+1)/((ties+1)(draws+1)) P(Y' >= j + 1) with
    Y' ~ Hypergeom(pop+1, ties+1, draws+1): summed directly where the tail decays fast (no cancellation),
    as a complement of the head where it does not (then the tail is not small, so no precision is lost).
    """
    pop, ties, draws = (np.asarray(a, dtype=np.float64) for a in (pop, ties, draws))
    jmax = max(int(j.max(initial=1)), 1)
    width = jmax + TAIL
    start, pmf = hypergeom_window(pop, ties, draws, width)
    y = start[:, None] + np.arange(width)
    inv = pmf / (y + 1.0)
    p_zero = np.where(draws + 1 <= pop - ties,
                      np.exp(_log_comb(pop - ties, np.minimum(draws + 1, pop - ties)) - _log_comb(pop + 1, draws + 1)), 0.0)
    mean_inv = (pop + 1) / ((ties + 1) * (draws + 1)) * (1.0 - p_zero)  # E[1/(Y+1)]
    hi = np.minimum(ties, draws)
    out = np.zeros(j.shape)
    for col in range(j.shape[1]):
        jj = j[:, col].astype(np.float64)
        below = y < jj[:, None]
        head = (pmf * below).sum(1)
        tail_direct = (inv * ~below).sum(1)
        tail_comp = np.maximum(mean_inv - (inv * below).sum(1), 0.0)
        jc = np.maximum(jj, 0.0)
        ratio = (ties - jc) * (draws - jc) / ((jc + 1.0) * np.maximum(pop - ties - draws + jc + 1.0, 1.0))
        direct = (hi < start + width) | ((start <= jj) & (ratio <= DIRECT_RATIO))
        value = head + jj * np.where(direct, tail_direct, tail_comp)
        out[:, col] = np.where(jj >= 1, np.minimum(value, 1.0), 0.0)
    return out


def expected_recall(eligible: np.ndarray, beaters: np.ndarray, ties: np.ndarray, draws: np.ndarray,
                    ks: Sequence[int]) -> np.ndarray:
    """Exact P(true report ranks within the top K) for a pool of the true report plus `draws` distractors
    drawn uniformly without replacement from `eligible` ones, of which `beaters` score strictly higher and
    `ties` tie (ties broken uniformly at random).

    P = sum_{x<K} P(X = x) E[min(K - x, Y + 1) / (Y + 1)], X ~ Hypergeom(eligible, beaters, draws) and,
    given X = x, Y ~ Hypergeom(eligible - beaters, ties, draws - x). With ties = 0 it is the hypergeometric
    cdf P(X <= K - 1).

    Args: eligible, beaters, ties, draws: (E,) counts with beaters + ties <= eligible, draws <= eligible.
    Returns (E, len(ks)) float64.
    """
    eligible, beaters, ties, draws = (np.asarray(a, dtype=np.float64) for a in (eligible, beaters, ties, draws))
    ks_arr = np.asarray(ks, dtype=np.float64)
    kmax = int(ks_arr.max())
    start, pmf = hypergeom_window(eligible, beaters, draws, kmax)
    x = start[:, None] + np.arange(kmax)
    out = np.stack([(pmf * (x < k)).sum(1) for k in ks_arr], axis=1)
    tied = np.flatnonzero(ties > 0)
    if tied.size == 0:
        return np.minimum(out, 1.0)
    out[tied] = 0.0
    for step in range(kmax):
        xs = start[tied] + step
        keep = (xs < kmax) & (pmf[tied, step] > 0)
        rows, xs = tied[keep], xs[keep]
        if rows.size == 0:
            continue
        j = ks_arr[None, :] - xs[:, None]
        g = tie_factor(eligible[rows] - beaters[rows], ties[rows], draws[rows] - xs, j)
        out[rows] += pmf[rows, step][:, None] * g
    return np.minimum(out, 1.0)


def group_chance(draws: np.ndarray, group: np.ndarray, k: int) -> np.ndarray:
    """Chance that at least one of `group` target items lands in the top k of a randomly ordered pool of
    group + draws items: 1 - C(draws, k) / C(draws + group, k). With group = 1 it is min(1, k / (draws + 1)).

    Args: draws, group: (E,) counts (group >= 1). Returns (E,).
    """
    draws = np.asarray(draws, dtype=np.float64)
    group = np.asarray(group, dtype=np.float64)
    ok = draws >= k
    d = np.where(ok, draws, k)
    log_none = gammaln(d + 1) - gammaln(d - k + 1) - gammaln(d + group + 1) + gammaln(d + group - k + 1)
    return np.where(ok, -np.expm1(log_none), 1.0)


def bootstrap_weights(n_groups: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_groups) multinomial counts: each row resamples the groups (patients) with replacement."""
    rng = np.random.default_rng(seed)
    if n_boot <= 0 or n_groups <= 0:
        return np.zeros((0, n_groups))
    draws = rng.integers(0, n_groups, size=(n_boot, n_groups)) + (np.arange(n_boot) * n_groups)[:, None]
    return np.bincount(draws.ravel(), minlength=n_boot * n_groups).reshape(n_boot, n_groups).astype(np.float64)


def group_sums(values: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """Per-group column sums: values (n, P), group (n,) in [0, n_groups) -> (n_groups, P)."""
    n = group.shape[0]
    member = sparse.csr_matrix((np.ones(n), (group, np.arange(n))), shape=(n_groups, n))
    return np.asarray(member @ values)


def bootstrap_means(values: np.ndarray, group: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Means of the columns of values (n, P) over bootstrap resamples of groups: weights (B, G) -> (B, P)."""
    g = weights.shape[1]
    sums = group_sums(values, group, g)
    counts = np.bincount(group, minlength=g).astype(np.float64)
    return (weights @ sums) / (weights @ counts)[:, None]


def percentile_ci(boot: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of bootstrap replicates boot (B, P) -> (low (P,), high (P,)); NaN when B = 0."""
    if boot.shape[0] == 0:
        nan = np.full(boot.shape[1:], np.nan)
        return nan, nan.copy()
    alpha = (1.0 - level) / 2.0
    return np.quantile(boot, alpha, axis=0), np.quantile(boot, 1.0 - alpha, axis=0)


def bootstrap_medians(values: np.ndarray, group: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """np.median of each resample (groups repeated as weights (B, G) say), without materialising it.

    Args: values (n,), group (n,). Returns (B,)."""
    order = np.argsort(values, kind="stable")
    sorted_vals = values[order]
    out = np.empty(weights.shape[0])
    for b in range(weights.shape[0]):
        cum = np.cumsum(weights[b, group[order]])
        total = int(round(cum[-1]))
        lo = sorted_vals[np.searchsorted(cum, (total - 1) // 2, side="right")]
        hi = sorted_vals[np.searchsorted(cum, total // 2, side="right")]
        out[b] = 0.5 * (lo + hi)
    return out
