"""The Overview's verdict against the stored rows, read independently from the store."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from backend.runs import store
from backend.views import catalog, status, verdict
from tests.helpers.seed import add_side_information, seed_store


@pytest.fixture(scope="module")
def ids(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    import os

    old = os.environ.get("CXR_CACHE_DIR")
    out = seed_store(Path(tmp_path_factory.mktemp("verdict")))
    yield out
    if old is not None:
        os.environ["CXR_CACHE_DIR"] = old


def test_verdict_numbers_are_the_stored_rows(ids: dict[str, str]) -> None:
    v = verdict.verdict(ids["audit:demo"], ids["sweep"])
    lines = {line["key"]: line for line in v["lines"]}
    rows = store.load_metrics(ids["audit:demo"]).query("variant == 'model' and k == 1 and level == 'study'")
    for pool in ("random", "hard"):
        sel = rows[rows["pool_kind"] == pool]
        at100 = sel[sel["n"] <= 100].sort_values("n").iloc[-1]
        top = sel.sort_values("n").iloc[-1]
        assert lines[f"lift_{pool}_100"]["lift"] == pytest.approx(at100["recall"] / at100["chance"])
        assert lines[f"lift_{pool}_max"]["n"] == top["n"]
        assert lines[f"lift_{pool}_max"]["lift_low"] == pytest.approx(top["ci_low"] / top["chance"])
    pts = store.load_sweep_points(ids["sweep"])
    strongest = pts[np.isfinite(pts["epsilon"])].sort_values("epsilon").iloc[0]
    retrained = pts[~np.isfinite(pts["epsilon"])].iloc[0]
    assert v["epsilon"] == strongest["epsilon"]

    def r1_100(run_id: str) -> float:
        m = store.load_metrics(run_id).query("variant == 'dp' and k == 1 and level == 'study' and pool_kind == 'random'")
        return float(m[m["n"] <= 100].sort_values("n")["recall"].iloc[-1])

    a, b = r1_100(retrained["run_id"]), r1_100(strongest["run_id"])
    assert lines["dp_100"]["change"] == pytest.approx(b / a - 1)
    assert ("fewer" in lines["dp_100"]["sentence"]) == (b <= a)
    probe = store.load_probe(strongest["run_id"]).query("variant == 'dp' and label == 'macro' and method == 'linear'")
    assert lines["auroc_linear"]["after"] == pytest.approx(float(probe["auroc"].iloc[0]))
    assert all(isinstance(line["sentence"], str) and not math.isnan(line.get("change", 0.0)) for line in v["lines"])


def test_verdict_chooses_the_asked_epsilon(ids: dict[str, str]) -> None:
    pts = store.load_sweep_points(ids["sweep"])
    eps = sorted(e for e in pts["epsilon"] if math.isfinite(e))[-1]
    assert verdict.verdict(ids["audit:demo"], ids["sweep"], epsilon=eps)["epsilon"] == eps
    assert verdict.verdict(None, None) == {"lines": []}


def test_job_times_estimate_the_time_left_from_the_pace_so_far() -> None:
    t = status.job_times(started=1000.0, finished=None, fraction=0.25, now=1060.0)
    assert t["elapsed_s"] == 60 and t["left_s"] == pytest.approx(180) and "about 0:03:00 left" in t["text"]
    assert status.job_times(1000.0, None, 0.01, 1060.0)["left_s"] is None  # too early to say
    done = status.job_times(1000.0, 1090.0, 1.0, 5000.0)
    assert done["elapsed_s"] == 90 and done["left_s"] is None and "took 0:01:30" in done["text"]
    assert status.job_times(None, None, 0.0, 5.0)["text"] == "not started"


def test_run_inputs_names_the_data_hash(ids: dict[str, str]) -> None:
    run_id = ids["audit:demo"]
    store.set_run_inputs(run_id, {"data_hash": "abcdef0123456789", "n_pairs": 1234})
    assert status.run_inputs(run_id) == f"run {run_id}: computed from data abcdef012345 (1,234 pairs)"
    assert status.run_inputs(None) == ""


def test_report_opens_with_the_verdict_caveats_and_readable_names(ids: dict[str, str]) -> None:
    """The HTML report leads with the verdict (the same sentences as the Overview, with CIs),
    the privacy caveats, a SYNTHETIC warning on synthetic data, a utility section, no raw column names."""
    from backend.views import report

    source, model = "synthetic", "demo"  # the seeded store's demo audit and sweep (tests/helpers/seed.py)
    assert catalog.latest("audit", source, model) == ids["audit:demo"]
    text = report.build_report(source, model)
    v = verdict.verdict(catalog.latest("audit", source, model), verdict.headline(source, model).get("sweep_run"))
    import html as html_mod

    for line in v["lines"]:
        assert html_mod.escape(line["sentence"]) in text
    assert text.index("Verdict") < text.index("privacy caveats") < text.index("The threat")
    assert all(html_mod.escape(c) in text for c in report.CAVEATS)
    assert "95% CI" in text and "Clinical utility at the strongest epsilon" in text
    assert ">r1_random<" not in text and ">auroc_linear<" not in text and "Recall@1, random pool, largest N" in text
    assert "@media print" in text
    assert (html_mod.escape(report.SYNTHETIC_WARNING) in text) == (source == "synthetic")


def test_the_dp_cut_is_read_at_100_1000_and_the_largest_n_and_no_strongest_line(ids: dict[str, str]) -> None:
    v = verdict.verdict(ids["audit:demo"], ids["sweep"])
    lines = {x["key"]: x for x in v["lines"]}
    assert "strongest" not in lines  # the noisiest maximum of the curve is not a claim of its own
    pts = store.load_sweep_points(ids["sweep"])
    dp_id = pts[np.isfinite(pts["epsilon"])].sort_values("epsilon")["run_id"].iloc[0]
    ref_id = pts[~np.isfinite(pts["epsilon"])]["run_id"].iloc[0]

    def r1(run_id: str, n: int) -> float:
        m = store.load_metrics(run_id).query("variant == 'dp' and k == 1 and level == 'study' and pool_kind == 'random'")
        return float(m.loc[m["n"] == n, "recall"].iloc[0])

    for tag, n in (("100", 100), ("1000", 1000), ("max", 2000)):
        line = lines[f"dp_{tag}"]
        assert line["n"] == n and line["cut"] == pytest.approx(1 - r1(dp_id, n) / r1(ref_id, n))
        assert f"Recall@1 at N={n:,} (random pool)" in line["sentence"] and "retrained without DP" in line["sentence"]
        # the seeded sweep kept no per-query outcomes: the cut stands without a CI, and says so
        assert math.isnan(line["cut_low"]) and "CI needs a recompute" in line["sentence"]


def test_members_are_checked_at_every_n() -> None:
    import pandas as pd

    rows = pd.DataFrame({"n": [2, 5, 10, 100, 1000], "gap_ci_low": [0.01, 0.002, -0.01, -0.02, -0.01],
                         "gap_ci_high": [0.05, 0.03, 0.02, 0.01, 0.01]})
    said = verdict.members_verdict(rows)
    assert said.startswith("checked at all 5 pool sizes measured (N=2 to 1,000)") and "above 0 at N=2, 5:" in said
    rows["gap_ci_low"] = -0.01
    assert verdict.members_verdict(rows).startswith("no measurable memorisation at any of the 5 pool sizes")


@pytest.fixture()
def side_info(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A seeded store plus an audit with a side-information pool and a sweep whose points measured members."""
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path))  # first: monkeypatch restores the earlier value afterwards
    out = seed_store(tmp_path)
    return add_side_information(out)


def test_verdict_says_what_side_information_and_membership_do(side_info: dict[str, str]) -> None:
    v = verdict.verdict(side_info["audit:sideinfo"], side_info["sweep"])
    lines = {x["key"]: x for x in v["lines"]}
    rows = store.load_metrics("audit-sideinfo").query("k == 1 and level == 'study'")
    for tag, n in (("100", 100), ("max", 2000)):
        line = lines[f"matched:sex+age_band_{tag}"]
        m = rows[(rows["pool_kind"] == "matched:sex+age_band") & (rows["n"] == n)].iloc[0]
        r = rows[(rows["pool_kind"] == "random") & (rows["n"] == n)].iloc[0]
        assert line["n"] == n
        assert line["delta"] == pytest.approx(m["recall"] / m["chance"] - r["recall"] / r["chance"])
        assert line["delta_low"] == pytest.approx(m["ci_low"] / m["chance"] - r["ci_high"] / r["chance"])
        assert line["delta_high"] == pytest.approx(m["ci_high"] / m["chance"] - r["ci_low"] / r["chance"])
        assert "matched on sex, age band" in line["sentence"]
        capped = m["effective_n"] < n - 0.5  # fewer matching reports than N: the sentence says how many
        assert (f"(about {m['effective_n']:,.0f} such reports exist on average)" in line["sentence"]) == capped
    # the shipped demo's case: at N=2,829 only about 446 reports match on sex and age band
    assert verdict._capped({"n": 2829, "effective_n": 446.3}) == " (about 446 such reports exist on average)"
    assert verdict._capped({"n": 100, "effective_n": 100.0}) == ""
    pts = store.load_sweep_points(side_info["sweep"])
    strongest = pts[np.isfinite(pts["epsilon"])].sort_values("epsilon").iloc[0]
    i = int(pts.index[pts["run_id"] == strongest["run_id"]][0])
    gap = lines["members_100"]
    assert gap["n"] == 100 and gap["epsilon"] == strongest["epsilon"]
    assert (gap["delta"], gap["delta_low"], gap["delta_high"]) == pytest.approx((0.01 * i, 0.01 * i - 0.02,
                                                                                 0.01 * i + 0.02 + 0.1))
    assert lines["members_max"]["n"] == 200
    assert ("contains 0" in gap["sentence"]) == (0.01 * i - 0.02 <= 0)
    for key in ("members_100", "members_max", "matched:sex+age_band_100"):
        assert key in lines
    from backend.views import report

    text = report.build_report("synthetic", "demo")
    import html as html_mod

    shown = verdict.verdict(catalog.latest("audit", "synthetic", "demo"),
                            verdict.headline("synthetic", "demo").get("sweep_run"))
    assert any(x["key"].startswith("members_") for x in shown["lines"])
    for line in shown["lines"]:
        assert html_mod.escape(line["sentence"]) in text
    assert provenance_named(text, catalog.latest("audit", "synthetic", "demo"))


def provenance_named(text: str, run_id: str) -> bool:
    """The report names every provenance field of the run, with its code version."""
    import html as html_mod

    from backend.runs import provenance

    prov = store.get_provenance(run_id)
    names = all(html_mod.escape(name) in text for name in provenance.FIELD_NAMES.values())
    return names and prov["code_version"] in text and run_id in text


def test_verdict_without_matched_pools_or_members_has_no_such_lines(ids: dict[str, str]) -> None:
    keys = {x["key"] for x in verdict.verdict(ids["audit:demo"], ids["sweep"])["lines"]}
    assert not any(k.startswith(("matched:", "members_")) for k in keys)


def test_the_overview_pairs_an_audit_only_with_a_sweep_of_the_same_data(fresh_cache: Path) -> None:
    """Two data sets of one source and one model (two synthetic option sets; two csv folders alike): the newest
    sweep is paired with the audit only when it was computed from the same data, and the page says when not."""
    import time

    from backend.runs import store
    from backend.specs import AuditSpec, DPSpec, EmbedSpec, SourceSpec, SweepSpec
    from backend.views import catalog, verdict

    def stored(spec: object, kind: str, data_hash: str) -> str:
        store.upsert_run(spec.run_id(), kind, spec.to_json(), "running")
        store.finish_run(spec.run_id(), summary={"inputs": {"data_hash": data_hash}})
        time.sleep(0.01)  # distinct creation times: "newest" is well defined
        return spec.run_id()

    a, b = SourceSpec(options={"n_patients": 40}), SourceSpec(options={"n_patients": 99})
    audit = stored(AuditSpec(embed=EmbedSpec(source=a, model="demo")), "audit", "aaaa")
    sweep_b = stored(SweepSpec(base=DPSpec(source=b, model="demo"), epsilons=(1.0,)), "sweep", "bbbb")
    sweep, note = catalog.paired_sweep(audit, "demo")
    assert sweep is None and sweep_b in note and "other data" in note and "n_patients=99" in note
    head = verdict.headline("synthetic", "demo")
    assert head["audit_run"] == audit and head["sweep_run"] is None and head["sweep_note"] == note
    sweep_a = stored(SweepSpec(base=DPSpec(source=a, model="demo"), epsilons=(2.0,)), "sweep", "aaaa")
    assert catalog.paired_sweep(audit, "demo") == (sweep_a, None)  # the newest is on the same data
    sweep_b2 = stored(SweepSpec(base=DPSpec(source=b, model="demo"), epsilons=(3.0,)), "sweep", "bbbb")
    sweep, note = catalog.paired_sweep(audit, "demo")
    assert sweep == sweep_a and sweep_b2 in note and sweep_a in note
    edited = stored(SweepSpec(base=DPSpec(source=a, model="demo"), epsilons=(4.0,)), "sweep", "cccc")
    sweep, note = catalog.paired_sweep(audit, "demo")  # the same options, but the data changed since the audit
    assert sweep == sweep_a and edited in note


def test_the_pairs_a_source_dropped_are_named_on_the_overview_and_in_the_report(fresh_cache: Path) -> None:
    from types import SimpleNamespace

    from backend.runs import persist
    from backend.specs import AuditSpec, EmbedSpec
    from backend.views import report, status
    from tests.helpers.seed import SOURCE, relink_rows

    spec = AuditSpec(embed=EmbedSpec(source=SOURCE, model="demo"))
    result = SimpleNamespace(rows=relink_rows(0, 0.2), per_query=None, embedding_path=None, summary={},
                             counts={"pairs": 5, "dropped": {"empty_report": 5, "missing_report": 0}})
    persist.persist_audit(spec.run_id(), spec, result, "cpu")
    note = status.drops_note(spec.run_id())
    assert note == "Left out by the source before the split: 5 pair(s) with empty report."
    assert note in report.build_report("synthetic", "demo")


def test_models_are_compared_on_one_data_set_only(fresh_cache: Path) -> None:
    """The Re-linkage overlay's defaults and the model comparison take the newest audit per model of the newest
    audit's data set: an older audit of another option set of the same source is left out."""
    import time

    from backend.runs import store
    from backend.specs import AuditSpec, EmbedSpec, SourceSpec
    from backend.views import catalog

    def stored(source: SourceSpec, model: str, data_hash: str) -> str:
        spec = AuditSpec(embed=EmbedSpec(source=source, model=model))
        store.upsert_run(spec.run_id(), "audit", spec.to_json(), "running")
        store.finish_run(spec.run_id(), summary={"inputs": {"data_hash": data_hash}})
        time.sleep(0.01)
        return spec.run_id()

    a, b = SourceSpec(options={"n_patients": 40}), SourceSpec(options={"n_patients": 99})
    old_other = stored(b, "openai-vit-b-16", "bbbb")
    same_a = stored(a, "biomedclip", "aaaa")
    newest = stored(a, "demo", "aaaa")
    assert catalog.audit_runs("synthetic")["run_id"].tolist() == [newest, same_a]
    assert old_other not in catalog.audit_runs("synthetic")["run_id"].tolist()


def test_an_auroc_change_is_worded_by_its_paired_ci() -> None:
    """A fall whose whole CI is below 0 is a cost, not "the utility the DP heads keep"; a CI around 0 is no change."""
    from backend.views.verdict import utility_words

    assert utility_words(-0.095, -0.038).startswith("A measurable cost")
    assert utility_words(-0.002, 0.007).startswith("No measurable change")
    assert utility_words(0.001, 0.004).startswith("A measurable gain")
    assert "needs a recompute" in utility_words(float("nan"), float("nan"))
