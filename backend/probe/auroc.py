"""Per-label AUROC, the macro AUROC and their patient-bootstrap CIs, from any scores (n, L) against labels (n, L).

Labels are 1/0/NaN; NaN entries are masked per label. A label that cannot be scored (its reason from
`exclusion`) is left out of the macro average and listed with the reason. CIs bootstrap over patients (not
pairs) with backend.relink.bootstrap: each replicate draws patients with replacement and weights their rows
by the draw counts; the AUROC of every replicate comes from one sorted pass (backend.relink.bootstrap.weighted_auc).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from backend.errors import SpecError
from backend.relink.bootstrap import bootstrap_weights, percentile_ci, weighted_auc
from backend.sources.schema import LABELS

log = logging.getLogger(__name__)

ROW_COLUMNS = ("label", "auroc", "ci_low", "ci_high", "n_pos", "n_neg", "excluded", "reason")


@dataclass
class ProbeResult:
    """rows: DataFrame ROW_COLUMNS, one row per label then one 'macro' row; excluded: labels left out; scores: the
    (n, L) scores the AUROCs were computed from, NaN in the columns of excluded labels (not serialised: a paired
    comparison of two sets of scores on the same examples needs them, backend.relink.paired)."""

    rows: pd.DataFrame
    macro_auroc: float
    macro_ci: tuple[float, float]
    excluded: list[str] = field(default_factory=list)
    scores: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {"macro_auroc": self.macro_auroc, "macro_ci": list(self.macro_ci), "excluded": self.excluded,
                "rows": self.rows.replace({np.nan: None}).to_dict(orient="records")}


def class_counts(y: np.ndarray) -> tuple[int, int]:
    """(positives, negatives) of a label column of 1/0/NaN."""
    return int(np.nansum(y == 1)), int(np.nansum(y == 0))


def exclusion(train_y: np.ndarray | None, test_y: np.ndarray, min_positives: int, min_test: int) -> str:
    """Why a label cannot be scored ('' when it can): fewer than `min_positives` positives (or negatives) in the
    train split (train_y None: no training), or fewer than `min_test` in the test split."""
    if train_y is not None:
        pos, neg = class_counts(train_y)
        if min(pos, neg) == 0:
            return f"single class in train ({pos} positive, {neg} negative)"
        if min(pos, neg) < min_positives:
            return f"too few train examples of one class ({pos} positive, {neg} negative; need {min_positives})"
    pos, neg = class_counts(test_y)
    if min(pos, neg) < max(1, min_test):
        return f"too few test examples of one class ({pos} positive, {neg} negative; need {max(1, min_test)})"
    return ""


def check_shapes(x: np.ndarray, y: np.ndarray, labels: tuple[str, ...], what: str) -> None:
    """Raises SpecError unless x is (n, d) and y (n, len(labels))."""
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or y.shape[1] != len(labels):
        raise SpecError(f"{what}: need x (n, d) and y (n, {len(labels)}) with the same n; got {x.shape} and {y.shape}.")


def auroc_table(scores: np.ndarray, y: np.ndarray, patient: np.ndarray, reasons: list[str], *,
                labels: tuple[str, ...] = LABELS, n_bootstrap: int = 200, seed: int = 0) -> ProbeResult:
    """Per-label AUROC of scores (n, L) against y (n, L) with patient-bootstrap CIs, and the macro row."""
    used = [j for j, r in enumerate(reasons) if not r]
    point = np.full(len(labels), np.nan)
    for j in used:
        m = ~np.isnan(y[:, j])
        point[j] = roc_auc_score(y[m, j], scores[m, j])
    boots = bootstrap_aurocs(scores, y, patient, used, n_bootstrap, seed)  # (n_bootstrap, L)
    rows = []
    for j, name in enumerate(labels):
        lo, hi = _ci(boots[:, j]) if j in used else (np.nan, np.nan)
        pos, neg = class_counts(y[:, j])
        rows.append((name, point[j], lo, hi, pos, neg, bool(reasons[j]), reasons[j]))
    macro = float(np.mean(point[used])) if used else float("nan")
    macro_ci = _ci(_row_nanmean(boots[:, used])) if used and n_bootstrap else (np.nan, np.nan)
    rows.append(("macro", macro, macro_ci[0], macro_ci[1], len(used), len(labels) - len(used), False,
                 f"mean over {len(used)} of {len(labels)} labels"))
    excluded = [labels[j] for j, r in enumerate(reasons) if r]
    if excluded:
        log.info("AUROC: %d label(s) excluded: %s", len(excluded), ", ".join(excluded))
    kept = np.full(scores.shape, np.nan)
    kept[:, used] = scores[:, used]
    return ProbeResult(pd.DataFrame(rows, columns=list(ROW_COLUMNS)), macro, macro_ci, excluded, kept)


def bootstrap_aurocs(scores: np.ndarray, y: np.ndarray, patient: np.ndarray, used: list[int], n: int, seed: int) -> np.ndarray:
    """(n, L) AUROCs over patient resamples (rows weighted by how often their patient was drawn:
    backend.relink.bootstrap.bootstrap_weights over the patients in order of first appearance); a resample in
    which one class of a label has no row is NaN for that label."""
    out = np.full((n, y.shape[1]), np.nan)
    if not n or not used:
        return out
    codes, uniq = pd.factorize(np.asarray(patient))
    weights = bootstrap_weights(len(uniq), n, seed)[:, codes]  # (n, rows)
    for j in used:
        m = ~np.isnan(y[:, j])
        out[:, j] = weighted_auc(scores[m, j], y[m, j] == 1, weights[:, m])
    return out


def _row_nanmean(values: np.ndarray) -> np.ndarray:
    """np.nanmean along rows, without its "Mean of empty slice" warning for a row with no finite value (a resample
    in which no label had both classes: NaN, which _ci leaves out)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=1)


def _ci(values: np.ndarray) -> tuple[float, float]:
    """The 95% percentile interval of the finite replicates in values (B,) (NaN, NaN when there is none)."""
    low, high = percentile_ci(values[~np.isnan(values)][:, None])
    return float(low[0]), float(high[0])
