"""The patient bootstrap, one implementation for every metric: multinomial resample weights over groups
(patients) from a seed, weighted means, medians and AUROCs of per-row values under them, and percentile intervals.

A replicate draws the groups with replacement (numpy's default_rng(seed), one draw of all groups per
replicate, in order) and weights each group by how often it was drawn; callers weight rows by their group's
count (backend.relink.rows, backend.dp.members, backend.probe.auroc).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import sparse

from backend.relink.stats import xp_of


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


def bootstrap_means(values: Any, group: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Means of the columns of values (n, P) over bootstrap resamples of groups: weights (B, G) -> (B, P) numpy.

    values: a numpy array (sparse group sums, on the CPU) or a tensor (index_add and one (B, G) x (G, P)
    product on its device)."""
    g = weights.shape[1]
    counts = np.bincount(group, minlength=g).astype(np.float64)
    if isinstance(values, np.ndarray):
        return (weights @ group_sums(values, group, g)) / (weights @ counts)[:, None]
    xp = xp_of(values)
    t = xp.t
    sums = t.zeros((g, values.shape[1]), dtype=t.float64, device=xp.device)
    sums.index_add_(0, t.as_tensor(group, dtype=t.int64, device=xp.device), xp.f64(values))
    w = xp.f64(weights)
    return ((w @ sums) / (w @ xp.f64(counts))[:, None]).cpu().numpy()


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


def weighted_auc(score: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(B,) AUROC of score (n,) for the classes positive (n,) bool under each row of weights (B, n): the
    weighted probability that a positive scores above a negative, equal scores counting one half - what
    sklearn's roc_auc_score(positive, score, sample_weight=w) computes, for all B weightings in one pass
    (sorted once). With integer weights every sum is exact in float64 and only the final division rounds.
    NaN where one class has zero total weight."""
    order = np.argsort(score, kind="stable")
    s, pos, w = score[order], positive[order], weights[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # groups of equal scores, ascending
    p = np.add.reduceat(np.where(pos, w, 0.0), starts, axis=1)
    q = np.add.reduceat(np.where(pos, 0.0, w), starts, axis=1)
    below = np.cumsum(q, axis=1) - q  # negative weight strictly below each group
    total_p, total_q = p.sum(axis=1), q.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (p * (below + 0.5 * q)).sum(axis=1) / (total_p * total_q)
    return np.where((total_p > 0) & (total_q > 0), auc, np.nan)
