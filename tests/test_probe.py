"""Linear-probe and zero-shot AUROC: separable labels give ~1, random ones ~0.5, a single-class or rare
label is excluded with its reason, NaN labels are masked, CIs bootstrap over patients."""

from __future__ import annotations

import numpy as np
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
