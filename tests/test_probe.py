"""Linear-probe and zero-shot AUROC: separable labels give ~1, random ones ~0.5, a single-class or rare
label is excluded with its reason, NaN labels are masked, CIs bootstrap over patients."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from backend.errors import SpecError
from backend.probe import linear_probe, zero_shot

LABELS = ("A", "B", "C", "D")


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 4)) < 0.4).astype(np.float32)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    x[:, 0] += 4 * y[:, 0]  # A: separable along feature 0
    x[:, 1] += 1 * y[:, 1]  # B: weakly informative
    y[:, 2] = 0.0  # C: a single class
    y[rng.random(n) < 0.2, 1] = np.nan  # NaN labels are masked
    patient = np.repeat(np.arange(n // 2), 2)  # two pairs per patient
    return x, y, patient


def test_linear_probe_separable_rare_and_single_class_labels() -> None:
    tx, ty, _ = _data(400, 0)
    sx, sy, sp = _data(200, 1)
    res = linear_probe(tx, ty, sx, sy, sp, labels=LABELS, n_bootstrap=30)
    rows = res.rows.set_index("label")
    assert rows.loc["A", "auroc"] > 0.97
    assert 0.6 < rows.loc["B", "auroc"] < 0.9
    assert 0.35 < rows.loc["D", "auroc"] < 0.65  # uninformative: chance
    assert res.excluded == ["C"] and "single class in train" in rows.loc["C", "reason"]
    assert np.isnan(rows.loc["C", "auroc"])
    assert res.macro_auroc == pytest.approx(rows.loc[["A", "B", "D"], "auroc"].mean())
    assert rows.loc["A", "ci_low"] <= rows.loc["A", "auroc"] <= rows.loc["A", "ci_high"]
    assert res.macro_ci[0] < res.macro_auroc < res.macro_ci[1]
    assert rows.loc["B", "n_pos"] + rows.loc["B", "n_neg"] < 200  # NaNs not counted


def test_too_few_positives_are_excluded_not_scored() -> None:
    tx, ty, _ = _data(400, 0)
    sx, sy, sp = _data(200, 1)
    ty[:, 3] = 0.0
    ty[:5, 3] = 1.0  # 5 positives in train < min_positives = 10
    res = linear_probe(tx, ty, sx, sy, sp, labels=LABELS, n_bootstrap=0)
    assert res.excluded == ["C", "D"]
    assert "too few train" in res.rows.set_index("label").loc["D", "reason"]
    assert np.isnan(res.macro_ci[0])  # no bootstrap asked


def test_zero_shot_aligned_prompts_give_auroc_near_one() -> None:
    rng = np.random.default_rng(0)
    n, d = 300, 6
    y = (rng.random((n, 4)) < 0.5).astype(np.float32)
    y[:, 3] = 1.0  # single class: excluded
    pos, neg = np.eye(4, d), -np.eye(4, d)
    img = rng.normal(scale=0.3, size=(n, d)) + np.hstack([2 * y - 1, np.zeros((n, d - 4))])
    res = zero_shot(img, pos, neg, y, np.arange(n), labels=LABELS, n_bootstrap=20)
    rows = res.rows.set_index("label")
    assert (rows.loc[["A", "B", "C"], "auroc"] > 0.99).all()
    assert res.excluded == ["D"]
    # flipping the prompts flips the AUROC
    flipped = zero_shot(img, neg, pos, y, np.arange(n), labels=LABELS, n_bootstrap=0)
    assert flipped.macro_auroc == pytest.approx(1 - res.macro_auroc)


def test_patient_bootstrap_weights_equal_row_duplication() -> None:
    """The bootstrap weights rows by draw counts; sklearn's weighted AUROC equals duplicating rows."""
    rng = np.random.default_rng(3)
    y, s, w = rng.integers(0, 2, 50), rng.normal(size=50), rng.integers(0, 3, 50)
    keep = w > 0
    assert roc_auc_score(y[keep], s[keep], sample_weight=w[keep]) == pytest.approx(roc_auc_score(np.repeat(y, w), np.repeat(s, w)))


def test_bad_shapes_are_spec_errors() -> None:
    with pytest.raises(SpecError, match="same n"):
        linear_probe(np.zeros((5, 2)), np.zeros((4, 4)), np.zeros((5, 2)), np.zeros((5, 4)), np.arange(5), labels=LABELS)
    with pytest.raises(SpecError, match="prompt embeddings"):
        zero_shot(np.zeros((5, 3)), np.zeros((4, 2)), np.zeros((4, 2)), np.zeros((5, 4)), np.arange(5), labels=LABELS)


def _sklearn_bootstrap(scores: np.ndarray, y: np.ndarray, patient: np.ndarray, used: list[int], n: int,
                       seed: int) -> np.ndarray:
    """The bootstrap as it was first written: one sklearn roc_auc_score per (resample, label)."""
    import pandas as pd

    out = np.full((n, y.shape[1]), np.nan)
    codes, uniq = pd.factorize(np.asarray(patient))
    rng = np.random.default_rng(seed)
    for b in range(n):
        weight = np.bincount(rng.integers(0, len(uniq), len(uniq)), minlength=len(uniq))[codes]
        for j in used:
            m = ~np.isnan(y[:, j]) & (weight > 0)
            if len(np.unique(y[m, j])) == 2:
                out[b, j] = roc_auc_score(y[m, j], scores[m, j], sample_weight=weight[m])
    return out


def test_vectorised_bootstrap_equals_sklearn_per_resample() -> None:
    """The one-pass weighted AUROC of every resample equals sklearn's roc_auc_score with sample weights (to float
    rounding), with tied scores, NaN labels, and resamples that miss a class (NaN)."""
    from backend.probe import bootstrap_aurocs, weighted_auc

    rng = np.random.default_rng(11)
    n, n_labels = 300, 5
    patient = rng.integers(0, 90, n)
    y = (rng.random((n, n_labels)) < [0.5, 0.3, 0.1, 0.02, 0.5]).astype(float)
    y[rng.random((n, n_labels)) < 0.1] = np.nan
    scores = np.round(rng.normal(size=(n, n_labels)) + np.nan_to_num(y) * 0.8, 1)  # rounded: many ties
    scores[:, 4] = 0.0  # every score tied: AUROC 0.5
    y[:, 3] = 0.0
    y[:2, 3] = 1.0  # two positives: some resamples draw neither patient (NaN)
    used = [0, 1, 2, 3, 4]
    fast, ref = bootstrap_aurocs(scores, y, patient, used, 60, seed=4), _sklearn_bootstrap(scores, y, patient, used, 60, 4)
    assert np.array_equal(np.isnan(fast), np.isnan(ref)) and np.isnan(ref[:, 3]).any()  # label 3: rare positives
    np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-12)
    assert np.allclose(fast[:, 4], 0.5)
    w = rng.integers(0, 3, (4, 40)).astype(float)
    s, pos = rng.normal(size=40), rng.random(40) < 0.4
    for b in range(4):
        keep = w[b] > 0
        assert weighted_auc(s, pos, w)[b] == pytest.approx(roc_auc_score(pos[keep], s[keep], sample_weight=w[b, keep]),
                                                          abs=1e-12)


def test_probe_is_fitted_to_the_optimum() -> None:
    """fit_probe reaches the optimum of the L2 logistic loss (C * sum of log-losses + |w|^2 / 2, intercept not
    penalised; solved here by 30 plain Newton steps) on ill-conditioned features - L2-normalised embeddings,
    as the probe sees them - where lbfgs at sklearn's default tolerance stops 1e-2 away."""
    from sklearn.preprocessing import StandardScaler

    from backend.probe import fit_probe

    rng = np.random.default_rng(5)
    n, d = 3000, 48
    z = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * np.linspace(0.05, 3, d)
    x = (z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32)
    y = (x @ rng.normal(size=d) + 0.3 * rng.normal(size=n) > 0).astype(int)
    xs = np.hstack([StandardScaler().fit_transform(x.astype(np.float64)), np.ones((n, 1))])
    w, penalty = np.zeros(d + 1), np.r_[np.ones(d), 0.0]
    for _ in range(30):
        p = 1 / (1 + np.exp(-xs @ w))
        hessian = xs.T @ (xs * (p * (1 - p))[:, None]) + np.diag(penalty)
        w -= np.linalg.solve(hessian, xs.T @ (p - y) + penalty * w)
    fit = fit_probe(x, y)
    np.testing.assert_allclose(fit[-1].coef_[0], w[:d], rtol=0, atol=1e-7)
    np.testing.assert_allclose(fit[-1].intercept_[0], w[d], rtol=0, atol=1e-7)
    np.testing.assert_allclose(fit.decision_function(x.astype(np.float64)), xs @ w, rtol=0, atol=1e-7)


def test_torch_newton_probes_equal_scikit_learn() -> None:
    """newton_probes (the GPU path of linear_probe, run here on the CPU) reaches scikit-learn's optimum: decision
    values within 1e-7 per label, with NaN rows left out per label (each label's scaler fitted on its own rows),
    ill-conditioned L2-normalised features and a constant feature; the AUROC rows of linear_probe agree."""
    from backend.probe import fit_probe, newton_probes

    rng = np.random.default_rng(11)
    n, d, labels = 2500, 40, ("a", "b", "c")
    z = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * np.linspace(0.05, 3, d)
    x = (z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32)
    x[:, 3] = 0.25  # zero variance: scikit-learn's scaler leaves it unscaled
    y = np.stack([(x @ rng.normal(size=d) + s * rng.normal(size=n) > t).astype(np.float64)
                  for s, t in ((0.3, 0.0), (1.0, 0.5), (0.1, -0.2))], axis=1)
    y[rng.random((n, 3)) < [0.0, 0.2, 0.5]] = np.nan
    test = x[:700]
    got = newton_probes(x, y, test, 1.0, "cpu")
    for j in range(3):
        keep = ~np.isnan(y[:, j])
        ref = fit_probe(x[keep], y[keep, j]).decision_function(test.astype(np.float64))
        np.testing.assert_allclose(got[:, j], ref, rtol=0, atol=1e-7)
    patient = np.arange(700) // 2
    ty = np.nan_to_num(y[:700], nan=0.0)
    a = linear_probe(x, y, test, ty, patient, labels=labels, n_bootstrap=20, solver="sklearn").rows
    b = linear_probe(x, y, test, ty, patient, labels=labels, n_bootstrap=20, solver="torch").rows
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=0, atol=1e-9)
    with pytest.raises(SpecError, match="probe solver"):
        linear_probe(x, y, test, ty, patient, labels=labels, solver="gpu")


def test_auto_probe_solver_is_scikit_learn_without_a_gpu() -> None:
    """On a CPU-only machine the probes stay scikit-learn's (the shipped snapshot's numbers), torch or not."""
    import torch

    from backend.probe import probe_device

    assert probe_device("sklearn") is None
    assert probe_device("auto") == ("cuda" if torch.cuda.is_available() else None)
    assert probe_device("torch") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_macro_ci_skips_resamples_without_any_scored_label_silently() -> None:
    """A resample in which no label has both classes has no macro AUROC: it is left out of the CI, with no
    'Mean of empty slice' warning; the CI equals np.nanmean's over the resamples that have one."""
    import warnings

    from backend.probe import auroc_table, bootstrap_aurocs

    rng = np.random.default_rng(2)
    n = 40
    patient = np.arange(n) // 2
    y = np.zeros((n, 2))
    y[:2, 0] = 1.0  # one patient holds every positive: resamples without that patient score no label
    y[:, 1] = np.nan
    y[:4, 1] = [1.0, 0.0, 1.0, 0.0]
    scores = rng.normal(size=(n, 2))
    boots = bootstrap_aurocs(scores, y, patient, [0, 1], 300, seed=0)
    assert np.isnan(boots).all(axis=1).any()  # the case in question occurs
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = auroc_table(scores, y, patient, ["", ""], labels=("a", "b"), n_bootstrap=300, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        macro = np.nanmean(boots, axis=1)
    macro = macro[~np.isnan(macro)]
    assert res.macro_ci == pytest.approx((np.quantile(macro, 0.025), np.quantile(macro, 0.975)), abs=0)
