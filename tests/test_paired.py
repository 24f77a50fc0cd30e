"""Paired-bootstrap CIs of the cut and of the AUROC change of each sweep point against the retrained heads, checked
against a direct loop over the same patient resamples (scipy's hypergeometric law, scikit-learn's weighted AUROC),
on a small sweep computed here (fake embeddings: no model)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from backend.runs import store
from backend.runs.cuts import read_points
from backend.sources.schema import LABELS
from backend.specs import AuditSpec, DPSpec, EmbedSpec, SourceSpec, SweepSpec

N_BOOT, SEED = 40, 3


@pytest.fixture()
def sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A stored 3-point sweep (its per-query outcomes kept), computed on fake embedding sets."""
    import backend.dp.sweep as dp
    from backend.dp.eval import EvalInputs
    from backend.runs import persist
    from tests.test_dp import _fake_set

    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path))
    source = SourceSpec(options={"n_patients": 7})
    audit = AuditSpec(embed=EmbedSpec(source=source, model="fake", split="test"), n_bootstrap=N_BOOT, seed=SEED, ks=(1,))
    base = DPSpec(source=source, model="fake", audit=audit, epochs=1, batch_size=30, lr=0.01, delta=1e-4, init="random")
    spec = SweepSpec(base=base, epsilons=(0.5, 8.0, math.inf))
    prompts = np.random.default_rng(0).normal(size=(2, 14, 12)).astype(np.float32)
    train, test = _fake_set(), _fake_set(n_patients=80, seed=1)
    monkeypatch.setattr(dp, "prepare", lambda *a, **k: EvalInputs(train, test, None, prompts[0], prompts[1], 10.0))
    results = dp.run_sweep(spec)
    store.upsert_run(spec.run_id(), "sweep", spec.to_json(), "running")
    persist.persist_sweep(spec.run_id(), spec, results, "cpu")
    return spec.run_id()


def _direct_cut(a: np.ndarray, b: np.ndarray, patient: np.ndarray) -> tuple[float, float]:
    """The paired percentile CI of 1 - mean(b) / mean(a), one resample at a time (a resample whose baseline
    re-links no query has no cut: left out)."""
    codes, uniq = pd.factorize(patient)
    draws = np.random.default_rng(SEED).integers(0, len(uniq), size=(N_BOOT, len(uniq)))
    cuts = []
    for row in draws:
        w = np.bincount(row, minlength=len(uniq))[codes].astype(float)
        if np.sum(w * a) > 0:
            cuts.append(1 - np.sum(w * b) / np.sum(w * a))
    return float(np.quantile(cuts, 0.025)), float(np.quantile(cuts, 0.975))


def _direct_auroc_change(base: pd.DataFrame, point: pd.DataFrame, method: str) -> tuple[float, float, float]:
    codes, uniq = pd.factorize(base["patient_id"])
    labels = [x for x in LABELS if np.isfinite(base[f"{method}:{x}"]).all()]
    draws = np.random.default_rng(SEED).integers(0, len(uniq), size=(N_BOOT, len(uniq)))

    def macro(frame: pd.DataFrame, w: np.ndarray) -> float:
        vals = []
        for x in labels:
            y = frame[f"y:{x}"].to_numpy()
            m = ~np.isnan(y) & (w > 0)
            if len(set(y[m])) == 2:
                vals.append(roc_auc_score(y[m], frame[f"{method}:{x}"].to_numpy()[m], sample_weight=w[m]))
        return float(np.mean(vals))

    ones = np.ones(len(base))
    diffs = []
    for row in draws:
        w = np.bincount(row, minlength=len(uniq))[codes].astype(float)
        diffs.append(macro(point, w) - macro(base, w))
    return macro(point, ones) - macro(base, ones), float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))


def test_the_cut_and_the_auroc_change_carry_paired_bootstrap_cis(sweep: str) -> None:
    from backend.views import mitigation

    view = mitigation.sweep_view(sweep)
    pts = view.points
    ref = pts[~np.isfinite(pts["epsilon"])].iloc[0]
    base = store.load_per_query(ref["run_id"])
    assert base is not None and len(base) == 160 and (base["ties"] == 0).all()
    for p in pts[np.isfinite(pts["epsilon"])].itertuples():
        point = store.load_per_query(p.run_id)
        rows = store.load_metrics(p.run_id).query("variant == 'dp' and pool_kind == 'random' and level == 'study' "
                                                  "and k == 1")
        assert p.paired and set(read_points(rows.assign(variant="dp"))) == {"100", "max"}
        for tag in ("100", "max"):
            n = int(getattr(p, f"n_{tag}"))

            def r1(frame: pd.DataFrame, n: int = n) -> np.ndarray:  # P(no beater among the N - 1 drawn)
                draws = np.minimum(n - 1, frame["eligible"])
                return stats.hypergeom.pmf(0, frame["eligible"], frame["beaters"], draws)

            a, b = r1(base), r1(point)
            assert b.mean() == pytest.approx(float(rows.loc[rows["n"] == n, "recall"].iloc[0]), rel=1e-9)
            assert getattr(p, f"cut_{tag}") == pytest.approx(1 - b.mean() / a.mean(), rel=1e-9)
            low, high = _direct_cut(a, b, base["patient_id"].to_numpy())
            assert (getattr(p, f"cut_{tag}_low"), getattr(p, f"cut_{tag}_high")) == pytest.approx((low, high), rel=1e-9)
            assert low <= getattr(p, f"cut_{tag}") <= high
        change, low, high = _direct_auroc_change(base, point, "linear")
        assert p.auroc_change == pytest.approx(change, abs=1e-12)
        assert (p.auroc_change_low, p.auroc_change_high) == pytest.approx((low, high), abs=1e-12)


def test_the_cis_are_kept_at_the_sweeps_finish_and_read_without_the_outcomes(sweep: str) -> None:
    """The finished sweep's summary holds every point's cut and AUROC change with their paired CIs (what a page and
    a shipped snapshot read); they are matched to the points by epsilon, so a renamed copy of the runs reads them."""
    from backend.views import mitigation

    computed = mitigation.sweep_view(sweep).points
    kept = store.get_run(sweep)["summary"]["paired_cuts"]
    assert {r["epsilon"] for r in kept} == {0.5, 8.0, None}
    for run_id in store.load_sweep_points(sweep)["run_id"]:
        Path(store.get_run(run_id)["artifacts"]["per_query"]).unlink()
    read = mitigation.sweep_view(sweep).points
    cols = [c for c in computed.columns if c.startswith(("cut_", "auroc_change", "zero_shot_change"))]
    assert read["paired"].sum() == 3 and len(cols) >= 8
    pd.testing.assert_frame_equal(read[cols], computed[cols], check_exact=True)


def test_a_sweep_without_per_query_outcomes_shows_the_cut_without_a_ci(sweep: str) -> None:
    from backend.views import cuts, mitigation

    for run_id in store.load_sweep_points(sweep)["run_id"]:
        Path(store.get_run(run_id)["artifacts"]["per_query"]).unlink()  # as an older sweep stores it
    summary = {k: v for k, v in store.get_run(sweep)["summary"].items() if k != "paired_cuts"}  # stored before
    with store.connect() as con:
        con.execute("UPDATE runs SET summary = ? WHERE run_id = ?", [json.dumps(summary), sweep])
    pts = mitigation.sweep_view(sweep).points
    dp = pts[np.isfinite(pts["epsilon"])]
    assert not dp["paired"].any() and dp["cut_100"].notna().all() and dp["cut_100_low"].isna().all()
    assert cuts.interval(0.25, math.nan, math.nan) == "+25% (CI needs a recompute)"
    assert cuts.interval(0.25, 0.1, 0.4) == "+25% [95% CI +10% to +40%]"


def test_the_report_opens_with_the_recommendation_and_holds_cis_and_the_members_table(sweep: str) -> None:
    import html

    from backend.views import mitigation, report
    from backend.views.recommend import Target, recommend

    text = report.build_report("synthetic", "fake")
    want = recommend(mitigation.sweep_view(sweep).points, Target())
    assert text.index("<h2>Recommendation</h2>") < text.index("<h2>Verdict</h2>")
    assert html.escape(want["sentence"]) in text and html.escape(want["rule"]) in text
    # one baseline per table, named in its column headers; every cut and cost with its paired CI
    assert "retrained heads, no DP (baseline) [95% CI]" in text and "original model (as audited)" in text
    assert "Recall@1 cut at N=100 vs retrained heads, no DP [paired 95% CI]" in text
    assert "[95% CI" in text and "CI needs a recompute" not in text
    members, _ = mitigation.members_table(sweep, every_n=True)
    assert not members.empty and "<h2>Members against non-members</h2>" in text
    for n in sorted(set(members["n"])):
        assert f"<td>{n}</td>" in text  # every N measured
