"""Members against non-members (backend/dp/members.py): disjoint equal-sized groups, the gap equal to the
difference of two independent audits, a planted memorisation found (CI above 0) and none found where there is none
(CI around 0), and the `members` command's JSON on a tiny setting."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from backend.audit import audit_embeddings
from backend.dp.members import (
    MEMBER_COLUMNS,
    gap_contains_zero,
    group_audit_spec,
    largest_pool,
    member_groups,
    members_gap,
    members_headline,
)
from backend.embed.files import EmbeddingSet
from backend.sources.schema import LABELS
from backend.specs import AuditSpec

D = 16


def _split(prefix: str, n_patients: int, noise: float, seed: int, studies: tuple[int, ...] = (1, 2)) -> EmbeddingSet:
    """n_patients patients with 1 or 2 studies (one pair each); image features = report features + noise; heads identity."""
    rng = np.random.default_rng(seed)
    per = [studies[p % len(studies)] for p in range(n_patients)]
    patient = np.repeat(np.arange(n_patients), per)
    n = len(patient)
    text = rng.normal(size=(n, D)).astype(np.float32)
    image = (text + noise * rng.normal(size=(n, D))).astype(np.float32)
    meta = pd.DataFrame({"pair_id": [f"{prefix}-{i}" for i in range(n)], "study_id": [f"{prefix}-s{i}" for i in range(n)],
                         "patient_id": [f"{prefix}-p{p}" for p in patient], "report": [f"{prefix} report {i}" for i in range(n)],
                         "view": "PA", "site": "x", "split": prefix})
    for j, name in enumerate(LABELS):
        meta[name] = (rng.random(n) < 0.2).astype(np.float32) if j < 3 else 0.0
    heads = {"kind": "linear", "image_w": np.eye(D, dtype=np.float32), "image_b": None,
             "text_w": np.eye(D, dtype=np.float32), "text_b": None}

    def unit(a: np.ndarray) -> np.ndarray:
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    return EmbeddingSet(meta, unit(image), unit(text), image, text, heads)


AUDIT = AuditSpec(n_bootstrap=200, seed=4)


def test_groups_are_disjoint_equal_sized_and_share_their_pool_sizes() -> None:
    train, test = _split("train", 150, 1.0, 0), _split("test", 80, 1.0, 1)
    groups = member_groups(train, test, seed=3)
    m_pat, n_pat = set(groups.members.meta["patient_id"]), set(groups.non_members.meta["patient_id"])
    assert len(m_pat) == len(n_pat) == groups.n_patients == 80 and not (m_pat & n_pat)
    assert m_pat <= set(train.meta["patient_id"]) and n_pat == set(test.meta["patient_id"])
    # members keep all their pairs; the draw is seeded
    assert len(groups.members.meta) == train.meta["patient_id"].isin(m_pat).sum()
    assert set(member_groups(train, test, seed=3).members.meta["patient_id"]) == m_pat
    assert set(member_groups(train, test, seed=4).members.meta["patient_id"]) != m_pat
    # capped: both groups shrink to max_patients
    small = member_groups(train, test, max_patients=25, seed=0)
    assert small.members.meta["patient_id"].nunique() == small.non_members.meta["patient_id"].nunique() == 25
    # a test patient who is also in train is never a non-member
    leak = dataclasses.replace(test, meta=test.meta.assign(patient_id=test.meta["patient_id"].replace("test-p0", "train-p0")))
    g = member_groups(train, leak, seed=3)
    assert "train-p0" not in set(g.non_members.meta["patient_id"]) and g.n_patients == 79
    # one grid for both: up to the smaller largest pool
    common = min(largest_pool(groups.members.meta), largest_pool(groups.non_members.meta))
    assert groups.n_grid[-1] == common and 100 in groups.n_grid
    d = groups.describe()
    assert d["members"]["patients"] == d["non_members"]["patients"] == 80 and d["largest_common_n"] == common


def test_gap_is_the_difference_of_two_independent_audits() -> None:
    train, test = _split("train", 150, 1.0, 0), _split("test", 80, 1.2, 1)
    groups = member_groups(train, test, seed=1)
    rows = members_gap(train.heads, groups, AUDIT)
    assert list(rows.columns) == list(MEMBER_COLUMNS) and list(rows["n"]) == list(groups.n_grid)
    for es, prefix, group in ((groups.members, "member", "members"), (groups.non_members, "nonmember", "non_members")):
        res = audit_embeddings(es, group_audit_spec(AUDIT, group), n_grid=groups.n_grid)  # identity heads: es as is
        ref = res.rows[(res.rows["pool_kind"] == "random") & (res.rows["level"] == "study") & (res.rows["k"] == 1)]
        ref = ref.set_index("n").loc[list(groups.n_grid)]
        np.testing.assert_allclose(rows[f"{prefix}_recall"], ref["recall"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(rows[f"{prefix}_ci_low"], ref["ci_low"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(rows[f"{prefix}_effective_n"], ref["effective_n"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(rows["gap"], rows["member_recall"] - rows["nonmember_recall"], rtol=0, atol=1e-12)
    assert (rows["gap_ci_low"] <= rows["gap"]).all() and (rows["gap"] <= rows["gap_ci_high"]).all()
    # the gap's CI is wider than either group's (two independent resamplings)
    width = rows["gap_ci_high"] - rows["gap_ci_low"]
    assert (width >= rows["member_ci_high"] - rows["member_ci_low"] - 1e-9).all()
    head = members_headline(rows)
    assert list(head["n"]) == [100, groups.n_grid[-1]]


def test_planted_memorisation_shows_a_gap_and_none_shows_zero() -> None:
    test = _split("test", 150, 1.5, 1)
    memorised = _split("train", 400, 1.0, 0)  # member images closer to their own reports than anyone else's are
    rows = members_headline(members_gap(memorised.heads, member_groups(memorised, test, seed=0), AUDIT))
    assert (rows["gap"] > 0.1).all() and (rows["gap_ci_low"] > 0).all() and not gap_contains_zero(rows)
    honest = _split("train", 400, 1.5, 0)  # members drawn like non-members
    rows = members_headline(members_gap(honest.heads, member_groups(honest, test, seed=0), AUDIT))
    assert ((rows["gap_ci_low"] < 0) & (rows["gap_ci_high"] > 0)).all() and gap_contains_zero(rows)
    assert (rows["gap_ci_high"] - rows["gap_ci_low"] < 0.25).all()  # the CI is not vacuous


def test_too_few_patients_is_a_spec_error() -> None:
    from backend.errors import SpecError

    with pytest.raises(SpecError, match="at least 2 patients"):
        member_groups(_split("train", 20, 1.0, 0), _split("test", 1, 1.0, 1))
    with pytest.raises(SpecError, match="max_patients"):
        member_groups(_split("train", 20, 1.0, 0), _split("test", 5, 1.0, 1), max_patients=1)


def test_cli_members_prints_json_with_both_groups_and_the_gap(tmp_path: Path, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    from backend.__main__ import main
    from tests.helpers.tiny_models import register_tiny_models

    register_tiny_models()
    out = tmp_path / "members.json"
    rc = main(["members", "--model", "tiny-random", "--source-option", "n_patients=40", "--source-option", "image_size=64",
               "--epsilons", "inf", "4", "--epochs", "1", "--batch-size", "16", "--n-bootstrap", "50",
               "--json", str(out)])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == json.loads(out.read_text())
    assert doc["kind"] == "members" and doc["groups"]["members"]["patients"] == doc["groups"]["non_members"]["patients"]
    labels = [p["label"] for p in doc["points"]]
    assert labels == ["original", "retrained", "dp"]
    assert [p["target_epsilon"] for p in doc["points"]] == [None, None, 4.0]  # inf is written as null (JSON)
    for point in doc["points"]:
        assert {"label", "target_epsilon", "epsilon", "guarantee", "headline", "curves", "gap_contains_zero"} <= set(point)
        assert set(MEMBER_COLUMNS) <= set(point["headline"][0]) and len(point["curves"]) == len(doc["groups"]["pool_sizes"])
        for row in point["headline"]:
            assert math.isclose(row["gap"], row["member_recall"] - row["nonmember_recall"], abs_tol=1e-12)
            assert 0 <= row["member_recall"] <= 1 and row["gap_ci_low"] <= row["gap"] <= row["gap_ci_high"]


def test_cli_members_bad_inputs_are_named_errors(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    from backend.__main__ import main

    for argv, message in ((["--epsilons", "1", "-2"], "Every sweep epsilon must be > 0"),
                          (["--max-patients", "1"], "max_patients must be at least 2"),
                          (["--json", str(tmp_path)], "is a folder")):
        assert main(["members", "--model", "local:/nonexistent/model", "--source-option", "n_patients=20", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("error: ") == 1 and message in err and "Traceback" not in err


def test_sweep_stores_members_per_point_and_the_mitigation_page_shows_them(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest

    from backend.dp import run_sweep
    from backend.runs import store
    from backend.runs.persist import persist_sweep
    from backend.specs import DPSpec, SourceSpec, SweepSpec
    from backend.views import mitigation
    from tests.helpers.tiny_models import register_tiny_models

    register_tiny_models()
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path))
    base = DPSpec(source=SourceSpec(options={"n_patients": 40, "image_size": 64}), model="tiny-random", epochs=1,
                  batch_size=16, audit=AuditSpec(n_bootstrap=20))
    spec = SweepSpec(base=base, epsilons=(4.0, math.inf))
    results = run_sweep(spec)
    assert all(r.members is not None and list(r.members.columns) == list(MEMBER_COLUMNS) for r in results)
    assert "members" in results[1].to_dict() and results[1].members_groups["n_patients"] >= 2
    store.upsert_run(spec.run_id(), "sweep", spec.to_json(), "running")
    persist_sweep(spec.run_id(), spec, results, "cpu")
    table, groups = mitigation.members_table(spec.run_id())
    assert list(dict.fromkeys(table["heads"])) == [mitigation.ORIGINAL, mitigation.RETRAINED, "ε=4"]
    assert groups["members"]["patients"] == groups["non_members"]["patients"] == results[0].members_groups["n_patients"]
    np.testing.assert_allclose(table["gap"], table["member_recall"] - table["nonmember_recall"], atol=1e-12)
    original = members_headline(results[0].members)
    np.testing.assert_allclose(table[table["heads"] == mitigation.ORIGINAL]["gap"], original["gap"], atol=1e-12)
    shown = mitigation.members_display(table)
    assert list(shown.columns) == ["Heads", "N", "Members R@1 [95% CI]", "Non-members R@1 [95% CI]", "Gap [95% CI]"]
    note = mitigation.members_note(table)
    assert note.startswith(mitigation.MEMBERS_NO_GAP if gap_contains_zero(table) else mitigation.MEMBERS_GAP)
    # the page
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=60)
    at.session_state["model"] = "tiny-random"
    at.run()
    at.switch_page("app_pages/mitigation.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Members vs non-members" in [h.value for h in at.subheader]
    frames = [d.value for d in at.dataframe if "Gap [95% CI]" in d.value.columns]
    assert len(frames) == 1 and len(frames[0]) == len(table)
    assert note is None or any(note.split(":")[0] in i.value.replace("\\", "") for i in at.info)


def test_members_note_names_what_dp_does_and_does_not_protect() -> None:
    from backend.views import mitigation

    rows = pd.DataFrame({"heads": ["ε=1", "ε=1"], "n": [2, 1000], "gap_ci_low": [-0.01, -0.02],
                         "gap_ci_high": [0.02, 0.01]})
    assert mitigation.members_note(rows) == (mitigation.MEMBERS_NO_GAP +
                                             " Checked at every pool size measured (N=2, 1,000).")
    assert "capability of the model, not memorisation" in mitigation.MEMBERS_NO_GAP
    assert mitigation.members_note(rows.assign(gap_ci_low=[0.01, -0.02])) == (mitigation.MEMBERS_GAP +
                                                                            " Above 0 at: ε=1: N=2.")
    assert mitigation.members_note(pd.DataFrame()) is None
    # an older sweep (no members stored) reads as empty
    assert mitigation._members_rows(None).empty
