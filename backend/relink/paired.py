"""Paired-bootstrap comparisons of two sets of heads evaluated on the same test split: the cut in Recall@1 (relative
change against a baseline) per pool and pool size N, and the change of a probe's macro AUROC.

Both arms are resampled with the same patient draws (backend.relink.bootstrap.bootstrap_weights over the test
patients in order of first appearance, the seed of the audit), so what the two arms share (which patients were
drawn) cancels in the difference: the interval is that of the difference itself, narrower than one built from the
two separate CIs. Inputs are the per-query outcome frames that backend.dp.eval.outcome_frame makes and the store
keeps beside each DP run; each replicate's statistic is computed exactly as the point estimate (mean expected
Recall@1 per arm; macro = mean over the labels both arms scored of the per-label weighted AUROC).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from backend.errors import SpecError
from backend.relink.bootstrap import bootstrap_means, bootstrap_weights, percentile_ci, weighted_auc
from backend.relink.stats import expected_recall
from backend.sources.schema import LABELS

COUNTS = {"random": ("beaters", "ties", "eligible"), "hard": ("beaters_hard", "ties_hard", "eligible_hard")}


def recall_at(frame: pd.DataFrame, pool: str, n: int) -> np.ndarray:
    """(n_queries,) expected Recall@1 of each query in a pool of N candidates (N - 1 distractors drawn from its
    eligible ones, all of them when fewer: the engine's capped N), study level, from its counts."""
    beat, tie, elig = (frame[c].to_numpy(np.float64) for c in COUNTS[pool])
    return expected_recall(elig, beat, tie, np.minimum(float(n) - 1.0, elig), (1,))[:, 0]


def _check_same_queries(base: pd.DataFrame, point: pd.DataFrame) -> None:
    if len(base) != len(point) or not np.array_equal(base["patient_id"].astype(str).to_numpy(),
                                                     point["patient_id"].astype(str).to_numpy()):
        raise SpecError("The two runs were not evaluated on the same test queries (different patients or order): a "
                        "paired comparison needs both on one test split. Recompute both on the same data.")


def patient_weights(frame: pd.DataFrame, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes (n,), weights (n_boot, n_patients)): the patient resamples both arms share."""
    codes, uniq = pd.factorize(frame["patient_id"].astype(str))
    return codes.astype(np.int64), bootstrap_weights(len(uniq), n_boot, seed)


def paired_cuts(base: pd.DataFrame, point: pd.DataFrame, ns: Sequence[int], *, pools: Sequence[str] = ("random",),
                n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """Per pool and N: Recall@1 of both arms, the cut 1 - point / base with its paired 95% percentile CI
    (cut_low, cut_high; a resample in which the baseline re-links no query has no cut and is left out), and
    effective_n (mean pool size after capping). One row per (pool, n)."""
    _check_same_queries(base, point)
    codes, weights = patient_weights(base, n_boot, seed)
    out = []
    for pool in pools:
        elig = base[COUNTS[pool][2]].to_numpy(np.float64)
        for n in ns:
            a, b = recall_at(base, pool, n), recall_at(point, pool, n)
            boot = bootstrap_means(np.stack([a, b], axis=1), codes, weights)  # (B, 2): the same draws for both
            with np.errstate(divide="ignore", invalid="ignore"):
                cuts = 1.0 - boot[:, 1] / boot[:, 0]
            low, high = percentile_ci(cuts[np.isfinite(cuts)][:, None])
            ra, rb = float(a.mean()), float(b.mean())
            out.append({"pool_kind": pool, "n": int(n), "effective_n": float(np.minimum(float(n), elig + 1).mean()),
                        "r1_base": ra, "r1_point": rb, "cut": 1.0 - rb / ra if ra > 0 else np.nan,
                        "cut_low": float(low[0]), "cut_high": float(high[0])})
    return pd.DataFrame(out)


def macro_replicates(frame: pd.DataFrame, method: str, labels: Sequence[str], codes: np.ndarray,
                     weights: np.ndarray) -> tuple[float, np.ndarray]:
    """(macro AUROC, (B,) macro AUROC of each resample) of one arm's `method` scores over `labels`; a resample in
    which no label has both classes is NaN."""
    point, reps = [], []
    row_w = weights[:, codes]
    for name in labels:
        y = frame[f"y:{name}"].to_numpy(np.float64)
        s = frame[f"{method}:{name}"].to_numpy(np.float64)
        m = ~np.isnan(y)
        pos = y[m] == 1
        point.append(weighted_auc(s[m], pos, np.ones((1, int(m.sum()))))[0])
        reps.append(weighted_auc(s[m], pos, row_w[:, m]))
    with warnings.catch_warnings():  # a resample without any label of both classes is NaN, as documented
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
        boot = np.nanmean(np.stack(reps, axis=1), axis=1) if reps else np.full(weights.shape[0], np.nan)
    return float(np.mean(point)) if point else float("nan"), boot


def scored_labels(base: pd.DataFrame, point: pd.DataFrame, method: str) -> list[str]:
    """The labels both arms scored with `method` (finite scores in both)."""
    return [name for name in LABELS if f"{method}:{name}" in base.columns and f"{method}:{name}" in point.columns
            and np.isfinite(base[f"{method}:{name}"]).all() and np.isfinite(point[f"{method}:{name}"]).all()]


def paired_auroc(base: pd.DataFrame, point: pd.DataFrame, method: str = "linear", *, n_boot: int = 200,
                 seed: int = 0, memo: dict | None = None) -> dict[str, Any]:
    """The change of `method`'s macro AUROC (point - base; negative is a cost) with its paired 95% CI, over the
    labels both arms scored: {"base", "point", "change", "change_low", "change_high", "n_labels"}. memo: a dict
    kept across calls with one baseline, so that its replicates are computed once."""
    _check_same_queries(base, point)
    labels = scored_labels(base, point, method)
    codes, weights = patient_weights(base, n_boot, seed)
    key = (id(base), method, tuple(labels), n_boot, seed)
    if memo is None or key not in memo:
        found = macro_replicates(base, method, labels, codes, weights)
        if memo is not None:
            memo[key] = found
    a, boot_a = memo[key] if memo is not None else found
    b, boot_b = macro_replicates(point, method, labels, codes, weights)
    diff = boot_b - boot_a
    low, high = percentile_ci(diff[np.isfinite(diff)][:, None])
    return {"base": a, "point": b, "change": b - a, "change_low": float(low[0]), "change_high": float(high[0]),
            "n_labels": len(labels)}
