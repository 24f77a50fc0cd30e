"""Utility of an embedding: a linear probe and zero-shot classification, per label AUROC and macro AUROC.

- `linear_probe`: one scikit-learn LogisticRegression per label (standardised inputs, fitted to its optimum
  by Newton's method: `fit_probe`) fitted on the train split's embeddings and scored on the test split. A
  linear probe on a linear projection of frozen features is nearly blind to what the heads do (any invertible head leaves it unchanged), so also:
- `zero_shot`: cross-modal utility, score_il = <u_i, t(positive prompt l)> - <u_i, t(negative prompt l)>
  with L2-normalised image embeddings u and prompt embeddings t (the softmax over the two prompts is
  monotone in this difference, so its AUROC is the same).

Labels are 1/0/NaN; NaN entries are masked per label. A label with fewer than `min_positives`
positives (or negatives) in the train split, or fewer than `min_test` in the test split, is excluded
from the macro average and listed with the reason. CIs bootstrap over patients (not pairs): each
replicate draws patients with replacement and weights their rows by the draw counts.
"""

from __future__ import annotations

import logging
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from backend.errors import SpecError
from backend.sources.schema import LABELS

log = logging.getLogger(__name__)

# (positive prompt, negative prompt) per label, in CheXpert order, phrased like report sentences.
ZERO_SHOT_PROMPTS: dict[str, tuple[str, str]] = {
    "No Finding": ("No acute cardiopulmonary abnormality.", "Acute cardiopulmonary abnormality."),
    "Enlarged Cardiomediastinum": ("Enlarged cardiomediastinal silhouette.", "Normal mediastinal contour."),
    "Cardiomegaly": ("Cardiomegaly.", "Heart size is normal."),
    "Lung Opacity": ("Lung opacity.", "The lungs are clear."),
    "Lung Lesion": ("Pulmonary nodule.", "No pulmonary nodule."),
    "Edema": ("Pulmonary edema.", "No pulmonary edema."),
    "Consolidation": ("Focal consolidation.", "No focal consolidation."),
    "Pneumonia": ("Pneumonia.", "No pneumonia."),
    "Atelectasis": ("Atelectasis.", "No atelectasis."),
    "Pneumothorax": ("Pneumothorax.", "No pneumothorax."),
    "Pleural Effusion": ("Pleural effusion.", "No pleural effusion."),
    "Pleural Other": ("Pleural thickening.", "No pleural thickening."),
    "Fracture": ("Rib fracture.", "No acute bony abnormality."),
    "Support Devices": ("Support device in place.", "No support devices."),
}
assert tuple(ZERO_SHOT_PROMPTS) == LABELS  # a module invariant, not a user error

ROW_COLUMNS = ("label", "auroc", "ci_low", "ci_high", "n_pos", "n_neg", "excluded", "reason")


@dataclass
class ProbeResult:
    """rows: DataFrame ROW_COLUMNS, one row per label then one 'macro' row; excluded: labels left out."""

    rows: pd.DataFrame
    macro_auroc: float
    macro_ci: tuple[float, float]
    excluded: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"macro_auroc": self.macro_auroc, "macro_ci": list(self.macro_ci), "excluded": self.excluded,
                "rows": self.rows.replace({np.nan: None}).to_dict(orient="records")}


def _counts(y: np.ndarray) -> tuple[int, int]:
    return int(np.nansum(y == 1)), int(np.nansum(y == 0))


def _exclusion(train_y: np.ndarray | None, test_y: np.ndarray, min_positives: int, min_test: int) -> str:
    """Why a label cannot be scored ('' when it can)."""
    if train_y is not None:
        pos, neg = _counts(train_y)
        if min(pos, neg) == 0:
            return f"single class in train ({pos} positive, {neg} negative)"
        if min(pos, neg) < min_positives:
            return f"too few train examples of one class ({pos} positive, {neg} negative; need {min_positives})"
    pos, neg = _counts(test_y)
    if min(pos, neg) < max(1, min_test):
        return f"too few test examples of one class ({pos} positive, {neg} negative; need {max(1, min_test)})"
    return ""


def _check(x: np.ndarray, y: np.ndarray, labels: tuple[str, ...], what: str) -> None:
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or y.shape[1] != len(labels):
        raise SpecError(f"{what}: need x (n, d) and y (n, {len(labels)}) with the same n; got {x.shape} and {y.shape}.")


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 test_patient: np.ndarray, *, labels: tuple[str, ...] = LABELS, min_positives: int = 10,
                 min_test: int = 5, n_bootstrap: int = 200, seed: int = 0, c: float = 1.0,
                 solver: str = "auto") -> ProbeResult:
    """Per-label logistic regression on (n_train, d) features, AUROC on (n_test, d); y arrays (n, L) of 1/0/NaN.

    test_patient (n_test,): patient ids for the bootstrap. solver: see probe_device.
    """
    _check(train_x, train_y, labels, "linear_probe train")
    _check(test_x, test_y, labels, "linear_probe test")
    scores = np.full(test_y.shape, np.nan)
    reasons = [_exclusion(train_y[:, j], test_y[:, j], min_positives, min_test) for j in range(len(labels))]
    device = probe_device(solver)
    if device is None:
        for j in (j for j, r in enumerate(reasons) if not r):
            keep = ~np.isnan(train_y[:, j])
            scores[:, j] = fit_probe(train_x[keep], train_y[keep, j], c).decision_function(np.asarray(test_x, np.float64))
    else:
        used = [j for j, r in enumerate(reasons) if not r]
        scores[:, used] = newton_probes(train_x, train_y[:, used], test_x, c, device)
    return auroc_table(scores, test_y, test_patient, reasons, labels=labels, n_bootstrap=n_bootstrap, seed=seed)


SOLVERS: tuple[str, ...] = ("auto", "sklearn", "torch")


def probe_device(solver: str) -> str | None:
    """Where linear_probe fits: None for scikit-learn on the CPU, else the torch device of `newton_probes`.
    "auto": torch on CUDA when this process already uses torch and a GPU is present (the sweep's probes were
    the slowest part of a GPU recompute), else scikit-learn; "torch": torch on CUDA when present, else on the CPU."""
    if solver not in SOLVERS:
        raise SpecError(f"Unknown probe solver {solver!r}; use one of {', '.join(SOLVERS)}.")
    if solver == "sklearn" or (solver == "auto" and "torch" not in sys.modules):
        return None
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "cpu" if solver == "torch" else None


def newton_probes(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, c: float, device: str, *,
                  tol: float = 1e-10, max_iter: int = 100) -> np.ndarray:
    """(n_test, L) decision values of fit_probe's model for each column of train_y (1/0/NaN; NaN rows left out
    of that label's fit, scaler included), fitted in float64 torch on `device`: the same optimum (standardised
    features, L2 logistic loss C * sum of log-losses + |w|^2 / 2, intercept not penalised) by Newton's method
    with Cholesky solves and a backtracking line search, to a mean gradient below `tol` as scikit-learn's
    newton-cholesky. Equal to fit_probe's decision values within about 1e-8 (tests/test_probe.py)."""
    import torch

    x_all = torch.as_tensor(np.asarray(train_x), device=device).double()
    x_test = torch.as_tensor(np.asarray(test_x), device=device).double()
    out = np.empty((len(test_x), train_y.shape[1]))
    for j in range(train_y.shape[1]):
        keep = torch.as_tensor(~np.isnan(train_y[:, j]), device=device)
        x = x_all[keep]
        y = torch.as_tensor(train_y[:, j], device=device).double()[keep]
        mean, sd = x.mean(0), x.std(0, correction=0)
        sd = torch.where(sd < 10 * torch.finfo(torch.float64).eps, torch.ones_like(sd), sd)  # sklearn's zero-scale rule
        z = torch.cat([(x - mean) / sd, torch.ones(len(x), 1, dtype=x.dtype, device=device)], 1)
        penalty = torch.ones(z.shape[1], dtype=x.dtype, device=device) / c
        penalty[-1] = 0.0
        w = _newton_logistic(z, y, penalty, tol * len(x), max_iter)
        coef = w[:-1] / sd
        out[:, j] = (x_test @ coef + (w[-1] - mean @ coef)).cpu().numpy()
    return out


def _newton_logistic(z: Any, y: Any, penalty: Any, tol: float, max_iter: int) -> Any:
    """argmin_w sum(softplus(z w) - y * z w) + sum(penalty * w^2) / 2 (torch float64): Newton steps with Cholesky
    solves and Armijo backtracking until the largest gradient entry is <= tol."""
    import torch

    def loss(w: Any) -> float:
        t = z @ w
        return float(torch.nn.functional.softplus(t).sum() - y @ t + 0.5 * (penalty * w * w).sum())

    w = torch.zeros(z.shape[1], dtype=z.dtype, device=z.device)
    for _ in range(max_iter):
        p = torch.sigmoid(z @ w)
        grad = z.T @ (p - y) + penalty * w
        if float(grad.abs().max()) <= tol:
            break
        a = z * torch.sqrt(p * (1 - p))[:, None]
        step = torch.cholesky_solve(-grad[:, None], torch.linalg.cholesky(a.T @ a + torch.diag(penalty)))[:, 0]
        f0, slope, t = loss(w), float(grad @ step), 1.0
        while loss(w + t * step) > f0 + 1e-4 * t * slope and t > 1e-12:
            t /= 2
        w = w + t * step
    return w


def fit_probe(x: np.ndarray, y: np.ndarray, c: float = 1.0) -> Any:
    """StandardScaler + L2 logistic regression (C=c) of y (n,) 0/1 on x (n, d), fitted to its optimum: Newton's
    method (Cholesky) in float64 to a gradient below 1e-10, a handful of iterations. (lbfgs at sklearn's default
    tolerance on float32 features stopped up to 0.01 test AUROC away from the optimum on the demo's embeddings,
    after hundreds of iterations.)"""
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, solver="newton-cholesky", tol=1e-10, max_iter=1000))
    return model.fit(np.asarray(x, np.float64), np.asarray(y).astype(int))


def zero_shot(image_emb: np.ndarray, pos_emb: np.ndarray, neg_emb: np.ndarray, test_y: np.ndarray,
              test_patient: np.ndarray, *, labels: tuple[str, ...] = LABELS, min_test: int = 5,
              n_bootstrap: int = 200, seed: int = 0) -> ProbeResult:
    """Zero-shot AUROC: image_emb (n, d) against prompt embeddings pos_emb, neg_emb (L, d) (normalised here)."""
    _check(image_emb, test_y, labels, "zero_shot")
    if pos_emb.shape != (len(labels), image_emb.shape[1]) or neg_emb.shape != pos_emb.shape:
        raise SpecError(f"zero_shot: prompt embeddings must be ({len(labels)}, {image_emb.shape[1]}), got {pos_emb.shape}, {neg_emb.shape}.")

    def unit(a: np.ndarray) -> np.ndarray:
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    scores = unit(image_emb) @ (unit(pos_emb) - unit(neg_emb)).T
    reasons = [_exclusion(None, test_y[:, j], 0, min_test) for j in range(len(labels))]
    return auroc_table(scores, test_y, test_patient, reasons, labels=labels, n_bootstrap=n_bootstrap, seed=seed)


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
        pos, neg = _counts(y[:, j])
        rows.append((name, point[j], lo, hi, pos, neg, bool(reasons[j]), reasons[j]))
    macro = float(np.mean(point[used])) if used else float("nan")
    macro_ci = _ci(_row_nanmean(boots[:, used])) if used and n_bootstrap else (np.nan, np.nan)
    rows.append(("macro", macro, macro_ci[0], macro_ci[1], len(used), len(labels) - len(used), False,
                 f"mean over {len(used)} of {len(labels)} labels"))
    excluded = [labels[j] for j, r in enumerate(reasons) if r]
    if excluded:
        log.info("AUROC: %d label(s) excluded: %s", len(excluded), ", ".join(excluded))
    return ProbeResult(pd.DataFrame(rows, columns=list(ROW_COLUMNS)), macro, macro_ci, excluded)


def bootstrap_aurocs(scores: np.ndarray, y: np.ndarray, patient: np.ndarray, used: list[int], n: int, seed: int) -> np.ndarray:
    """(n, L) AUROCs over patient resamples (rows weighted by how often their patient was drawn); a resample in
    which one class of a label has no row is NaN for that label."""
    out = np.full((n, y.shape[1]), np.nan)
    if not n or not used:
        return out
    weights = patient_weights(patient, n, seed)
    for j in used:
        m = ~np.isnan(y[:, j])
        out[:, j] = weighted_auc(scores[m, j], y[m, j] == 1, weights[:, m])
    return out


def patient_weights(patient: np.ndarray, n: int, seed: int) -> np.ndarray:
    """(n, rows) float64 bootstrap weights: replicate b draws the patients with replacement (numpy's
    default_rng(seed), one draw of all patients per replicate) and weights each row by its patient's count."""
    codes, uniq = pd.factorize(np.asarray(patient))
    rng = np.random.default_rng(seed)
    counts = np.stack([np.bincount(rng.integers(0, len(uniq), len(uniq)), minlength=len(uniq)) for _ in range(n)])
    return counts[:, codes].astype(np.float64)


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


def _row_nanmean(values: np.ndarray) -> np.ndarray:
    """np.nanmean along rows, without its "Mean of empty slice" warning for a row with no finite value (a resample
    in which no label had both classes: NaN, which _ci leaves out)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=1)


def _ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    v = values[~np.isnan(values)]
    if not len(v):
        return (float("nan"), float("nan"))
    a = (1 - level) / 2
    return float(np.quantile(v, a)), float(np.quantile(v, 1 - a))
