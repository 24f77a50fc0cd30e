"""The shared pair-table helpers: section policy, patient split, validation, spec hashing."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from backend.errors import SourceError, SpecError
from backend.sources.schema import (
    LABELS,
    PAIR_COLUMNS,
    apply_section_policy,
    assign_split,
    compose_report,
    finalize_pairs,
    normalise_view,
)
from backend.specs import AuditSpec, DPSpec, EmbedSpec, SourceSpec, SweepSpec


def _table(n: int = 6) -> pd.DataFrame:
    rows = []
    for i in range(n):
        row = {c: None for c in PAIR_COLUMNS}
        row.update(pair_id=f"p{i}", study_id=f"s{i // 2}", patient_id=f"pt{i // 4}", image_path=f"img{i}.png",
                   view="PA", findings=f"finding {i}", impression="" if i % 3 else "impression", site="x")
        row.update({label: float(i % 2) for label in LABELS})
        rows.append(row)
    df = pd.DataFrame(rows)
    df["split"] = assign_split(df["patient_id"])
    return df


def test_section_policies_compose_as_documented() -> None:
    assert compose_report(" Heart  normal. ", "No acute disease.", "findings+impression") == \
        "Heart normal. No acute disease."
    assert compose_report("a b c", "d", "longest") == "a b c"
    assert compose_report(None, "d", "findings") == ""
    assert compose_report(float("nan"), "d", "impression") == "d"
    with pytest.raises(SourceError, match="section policy"):
        compose_report("a", "b", "everything")


def test_empty_reports_are_dropped_and_counted() -> None:
    df = _table()
    out, dropped = apply_section_policy(df, "impression")
    assert dropped == int((df["impression"].fillna("").str.len() == 0).sum()) == 4
    assert (out["report"] == "impression").all()


def test_split_is_patient_disjoint_stable_and_near_fractions() -> None:
    ids = [f"patient-{i}" for i in range(5000)]
    first = assign_split(ids)
    # Same patient, same split, whatever else is loaded and in whatever order.
    again = assign_split(list(reversed(ids)))[::-1]
    assert (first == again).all()
    assert (assign_split(ids[:10]) == first[:10]).all()
    share = pd.Series(first).value_counts(normalize=True)
    assert abs(share["train"] - 0.7) < 0.03 and abs(share["test"] - 0.2) < 0.03
    with pytest.raises(SourceError, match="fractions"):
        assign_split(ids, fractions=(0.5, 0.5, 0.5))


def test_finalize_checks_invariants() -> None:
    df = _table()
    out = finalize_pairs(df, "t")
    assert list(out.columns[: len(PAIR_COLUMNS)]) == list(PAIR_COLUMNS)
    with pytest.raises(SourceError, match="column"):
        finalize_pairs(df.drop(columns=["patient_id"]), "t")
    dup = df.copy()
    dup.loc[1, "pair_id"] = "p0"
    with pytest.raises(SourceError, match="occurs twice"):
        finalize_pairs(dup, "t")
    leak = df.copy()
    leak.loc[0, "split"], leak.loc[1, "split"] = "train", "test"
    with pytest.raises(SourceError, match="two splits"):
        finalize_pairs(leak, "t")
    unc = df.copy()
    unc.loc[0, "Edema"] = -1
    assert np.isnan(finalize_pairs(unc, "t").loc[0, "Edema"])


def test_views_normalise() -> None:
    assert [normalise_view(v) for v in ("pa", "LL", " ap ", None, "")] == ["PA", "LATERAL", "AP", "UNKNOWN", "UNKNOWN"]


def test_spec_ids_are_stable_and_distinct() -> None:
    a = AuditSpec(embed=EmbedSpec(source=SourceSpec(options={"n_patients": 10, "seed": 1})))
    b = AuditSpec(embed=EmbedSpec(source=SourceSpec(options={"seed": 1, "n_patients": 10})))
    assert a.run_id() == b.run_id() and a.run_id().startswith("audit-")
    assert a.run_id() != AuditSpec(n_bootstrap=10).run_id()
    sweep = SweepSpec(epsilons=(1.0, math.inf))
    assert [p.private for p in sweep.points()] == [True, False]
    assert '"inf"' in sweep.to_json()


@pytest.mark.parametrize("bad", [dict(epsilon=0), dict(epsilon=-1), dict(delta=0), dict(delta=1.5),
                                 dict(max_grad_norm=0), dict(objective="x"), dict(privacy_unit="study")])
def test_invalid_dp_specs_raise(bad: dict) -> None:
    with pytest.raises(SpecError):
        DPSpec(**bad)


def test_invalid_audit_specs_raise() -> None:
    with pytest.raises(SpecError, match="pool"):
        AuditSpec(pools=("easy",))
    with pytest.raises(SpecError, match="K"):
        AuditSpec(ks=(0,))
    with pytest.raises(SpecError, match="split"):
        EmbedSpec(split="holdout")
