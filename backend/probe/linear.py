"""The linear probe: utility of an embedding for the 14 labels, one L2 logistic regression per label.

`linear_probe` fits a classifier per label (standardised inputs, fitted to its optimum by Newton's method) on
the train split's embeddings and scores the test split: per-label and macro AUROC with patient-bootstrap CIs
(backend.probe.auroc). Two solvers reach the same optimum: scikit-learn's newton-cholesky on the CPU
(`fit_probe`) and a float64 torch Newton solver (`newton_probes`), used on a GPU (`probe_device`). A linear
probe on a linear projection of frozen features is nearly blind to what the heads do (any invertible head
leaves it unchanged); backend.probe.zero_shot measures the cross-modal cost.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from backend.errors import SpecError
from backend.probe.auroc import ProbeResult, auroc_table, check_shapes, exclusion
from backend.sources.schema import LABELS


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 test_patient: np.ndarray, *, labels: tuple[str, ...] = LABELS, min_positives: int = 10,
                 min_test: int = 5, n_bootstrap: int = 200, seed: int = 0, c: float = 1.0,
                 solver: str = "auto") -> ProbeResult:
    """Per-label logistic regression on (n_train, d) features, AUROC on (n_test, d); y arrays (n, L) of 1/0/NaN.

    test_patient (n_test,): patient ids for the bootstrap. solver: see probe_device.
    """
    check_shapes(train_x, train_y, labels, "linear_probe train")
    check_shapes(test_x, test_y, labels, "linear_probe test")
    scores = np.full(test_y.shape, np.nan)
    reasons = [exclusion(train_y[:, j], test_y[:, j], min_positives, min_test) for j in range(len(labels))]
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
