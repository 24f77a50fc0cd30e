"""Side-information pools (AuditSpec.match): the pathology-matched engine over attribute groups. Checked
against explicit pool sampling (Monte Carlo) on small data, against the pathology-matched pool itself
when matching on the labels alone (identical), named errors for attributes the data lacks, and run ids
unchanged for audits without side information."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from backend.audit import audit_embeddings, match_codes
from backend.embed import EmbeddingSet
from backend.errors import SpecError
from backend.sources.schema import LABELS
from backend.specs import AuditSpec, pool_name
from tests.test_relink import KS, _data, _mc, _row


def _es(data: dict, view: np.ndarray, site: np.ndarray | None = None) -> EmbeddingSet:
    n = len(data["study_id"])
    meta = pd.DataFrame({"pair_id": [f"p{i}" for i in range(n)], "study_id": data["study_id"],
                         "patient_id": data["patient_id"], "report": data["report_text"], "view": view})
    if site is not None:
        meta["site"] = site
    for i, name in enumerate(LABELS):
        meta[name] = data["labels"][:, i] if i < data["labels"].shape[1] else 0.0
    return EmbeddingSet(meta, data["image_emb"].astype(np.float32), data["report_emb"].astype(np.float32), None,
                        None, {})


def _study_attr(data: dict, seed: int, values: list[str]) -> np.ndarray:
    """One attribute value per study (all pairs of a study share it, like sex, age band or year)."""
    rng = np.random.default_rng(seed)
    codes = {s: values[int(rng.integers(len(values)))] for s in np.unique(data["study_id"])}
    return np.array([codes[s] for s in data["study_id"]])


def test_matched_pool_equals_explicit_pool_sampling() -> None:
    data = _data(seed=1, dup_texts=True)
    view = _study_attr(data, 0, ["PA", "AP"])
    es = _es(data, view)
    spec = AuditSpec(ks=KS, n_bootstrap=0, match=("view", "labels+view"))
    assert_matched_pools_equal_sampling(es, data, spec.match, spec)


def assert_matched_pools_equal_sampling(es: EmbeddingSet, data: dict, matches: tuple[str, ...],
                                        spec: AuditSpec, n_pools: tuple[int, ...] = (2, 5, 10)) -> None:
    """Each matched pool's study-level Recall@K (spec.ks) within 4.5 standard errors of explicit pool sampling."""
    rows = audit_embeddings(es, spec).rows
    for match in matches:
        groups = match_codes(es, match.split("+"))
        mc_data = dict(data, labels=groups)  # the independent sampler draws distractors with equal vectors
        for n_pool in n_pools:
            mean, se = _mc(mc_data, n_pool, spec.ks, True, "study", n_pools=300, seed=n_pool)
            for i, k in enumerate(spec.ks):
                got = rows[(rows.pool_kind == f"matched:{match}") & (rows.level == "study") & (rows.k == k)
                           & (rows.n == n_pool)].recall.iloc[0]
                assert abs(got - mean[i]) <= 4.5 * se[i] + 1e-9, (match, n_pool, k, got, mean[i], se[i])


def test_matching_on_labels_alone_is_the_pathology_matched_pool() -> None:
    data = _data(seed=6)
    es = _es(data, _study_attr(data, 1, ["PA"]))
    res = audit_embeddings(es, AuditSpec(n_bootstrap=30, match=("labels",)))
    hard = res.rows[res.rows.pool_kind == "hard"].drop(columns="pool_kind").reset_index(drop=True)
    matched = res.rows[res.rows.pool_kind == "matched:labels"].drop(columns="pool_kind").reset_index(drop=True)
    pd.testing.assert_frame_equal(matched, hard, check_exact=True)
    assert _row(dataclasses.replace(res), "random", "study", 1, 2).recall >= 0  # the usual pools are still there


def test_side_information_shrinks_the_effective_pool() -> None:
    data = _data(seed=7)
    es = _es(data, _study_attr(data, 2, ["PA", "AP", "LL"]), _study_attr(data, 3, ["A", "B"]))
    rows = audit_embeddings(es, AuditSpec(ks=(1,), n_bootstrap=0, match=("view", "view+site"))).rows
    big = int(rows.n.max())

    def eff(kind: str) -> float:
        return rows[(rows.pool_kind == kind) & (rows.level == "study") & (rows.n == big)].effective_n.iloc[0]

    assert eff("random") > eff("matched:view") > eff("matched:view+site")


def test_an_attribute_no_pair_has_is_refused_with_what_to_do() -> None:
    data = _data(seed=8)
    es = _es(data, _study_attr(data, 0, ["PA"]))
    with pytest.raises(SpecError, match=r"'sex'.*known for 0 of \d+ pairs.*match on what the data gives: labels, view"):
        audit_embeddings(es, AuditSpec(match=("sex",)))
    es.meta["view"] = "UNKNOWN"  # a source without views (OpenI without its metadata file): not a silent random pool
    with pytest.raises(SpecError, match=r"'view'.*known for 0 of"):
        audit_embeddings(es, AuditSpec(match=("view",)))
    with pytest.raises(SpecError, match="shoe_size"):
        AuditSpec(match=("view+shoe_size",))


def test_pairs_lacking_the_attribute_are_left_out_of_that_pool_only() -> None:
    """Studies whose view is unknown (None, blank or UNKNOWN) are neither queries nor candidates of the view pool,
    counted in counts["matched_pools"]; the pool over the others equals explicit pool sampling over the others,
    and every other pool still holds every pair."""
    data = _data(seed=9, dup_texts=False)
    view = _study_attr(data, 4, ["PA", "AP"]).astype(object)
    studies = list(dict.fromkeys(data["study_id"]))
    for value, study in zip((None, "", "UNKNOWN", None), studies[2:40:10], strict=True):
        view[data["study_id"] == study] = value
    es = _es(data, view)
    known = np.array([v not in (None, "", "UNKNOWN") for v in view])
    spec = AuditSpec(ks=KS, n_bootstrap=0, match=("view",))
    res = audit_embeddings(es, spec)
    assert res.counts["matched_pools"] == {"view": {"pairs": int(known.sum()), "left_out": int((~known).sum())}}
    plain = audit_embeddings(es, AuditSpec(ks=KS, n_bootstrap=0)).rows
    pd.testing.assert_frame_equal(res.rows[res.rows.pool_kind != "matched:view"].reset_index(drop=True), plain)
    sub = {k: v[known] for k, v in data.items()}
    sub_es = es.subset(known)
    groups = match_codes(sub_es, ["view"])
    for n_pool in (2, 5):
        mean, se = _mc(dict(sub, labels=groups), n_pool, KS, True, "study", n_pools=300, seed=n_pool)
        for i, k in enumerate(KS):
            got = res.rows[(res.rows.pool_kind == "matched:view") & (res.rows.level == "study") & (res.rows.k == k)
                           & (res.rows.n == n_pool)].recall.iloc[0]
            assert abs(got - mean[i]) <= 4.5 * se[i] + 1e-9, (n_pool, k, got, mean[i], se[i])


def test_run_ids_without_side_information_are_unchanged() -> None:
    assert "match" not in AuditSpec().to_dict() and "match" in AuditSpec(match=("view",)).to_dict()
    assert AuditSpec(match=()).run_id() == AuditSpec().run_id() != AuditSpec(match=("view",)).run_id()
    assert pool_name("matched:sex+age_band") == "matched on sex, age band" and pool_name("hard") == "pathology-matched"


def test_cli_match(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from backend.__main__ import main
    from tests.helpers.tiny_models import TINY_SOURCE_OPTIONS, register_tiny_models

    register_tiny_models()
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path))
    out = tmp_path / "a.json"
    args = ["audit", *[f"--source-option={k}={v}" for k, v in TINY_SOURCE_OPTIONS.items()], "--model", "tiny-random",
            "--split", "all", "--n-bootstrap", "50", "--ks", "1", "--json", str(out)]
    assert main([*args, "--match", "view+site", "--match", "labels+view"]) == 0
    kinds = {r["pool_kind"] for r in json.loads(out.read_text())["rows"]}
    assert kinds == {"random", "hard", "full", "matched:view+site", "matched:labels+view"}
    side = ("sex+age_band", "sex+age_band+view", "sex+age_band+view+year")  # the synthetic side information
    assert main([*args, *[f"--match={m}" for m in side]]) == 0
    assert {r["pool_kind"] for r in json.loads(out.read_text())["rows"]} == {"random", "hard", "full",
                                                                            *(f"matched:{m}" for m in side)}
    assert main([*args, "--match", "sex+shoe_size"]) == 2  # an attribute no source gives: a named error, exit 2
