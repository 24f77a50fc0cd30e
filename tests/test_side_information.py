"""Side information in the data sources: sex, age / age band and year from the synthetic generator,
CheXpert Plus, MIMIC-CXR (+ MIMIC-IV patients) and a user's CSV; the shared validation helper and its named
errors; the embedding cache key that leaves them out; matched pools on them against explicit pool sampling."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from backend.audit import audit_embeddings
from backend.embed.compute import embedding_key
from backend.errors import SourceError, SpecError
from backend.sources import load_source
from backend.sources.schema import (
    AGE_BANDS,
    PAIR_COLUMNS,
    SIDE_COLUMNS,
    age_band,
    match_attributes,
    match_coverage,
    normalise_sex,
    side_information,
    table_digest,
)
from backend.specs import AuditSpec, EmbedSpec
from tests.helpers.fixtures_data import CHEXPERT_PLUS_CSV, write_chexpert_plus, write_mimic
from tests.test_csv_source import _folder, _rows
from tests.test_matched_pools import _es, _study_attr, assert_matched_pools_equal_sampling
from tests.test_relink import KS, _data

# What the generator produced before side information existed (main at 95db933): table_digest of the canonical
# columns + synth_attrs, a hash of every 10th rendered image (64 px) and of the report texts. The demo weights,
# the cached demo embeddings and the shipped snapshot were made from exactly these.
BEFORE = {(0, 30): "22234aff93c5fbe5", (3, 25): "d454fa9f13046a48"}
IMAGES_BEFORE = "fad000ba52da8768"  # seed 3, 25 patients, image_size 64, pairs 0, 10, 20, ...
REPORTS_BEFORE = "309c32ab01fed347"


@pytest.fixture(scope="module")
def synth() -> pd.DataFrame:
    return load_source("synthetic", n_patients=600, seed=0).pairs


def test_synthetic_side_information_leaves_everything_else_byte_identical() -> None:
    for (seed, n), digest in BEFORE.items():
        pairs = load_source("synthetic", n_patients=n, seed=seed).pairs
        assert set(SIDE_COLUMNS) <= set(pairs.columns)
        assert table_digest(pairs[[*PAIR_COLUMNS, "synth_attrs"]]) == digest
        # ... so the embedding cache key, which leaves the side information out, is unchanged too
        assert table_digest(pairs.drop(columns=list(SIDE_COLUMNS))) == digest
    data = load_source("synthetic", n_patients=25, seed=3, image_size=64)
    h = hashlib.sha256()
    for path in data.pairs["image_path"].iloc[::10]:
        h.update(data.read_image(path).tobytes())
    assert h.hexdigest()[:16] == IMAGES_BEFORE
    assert hashlib.sha256("\x00".join(data.pairs["report"]).encode()).hexdigest()[:16] == REPORTS_BEFORE


def test_synthetic_demographics_are_persistent_plausible_and_not_in_the_reports(synth: pd.DataFrame) -> None:
    studies = synth.drop_duplicates("study_id")
    assert (synth.groupby("study_id")[list(SIDE_COLUMNS)].nunique() == 1).all().all()  # a study's pairs agree
    assert (studies.groupby("patient_id")["sex"].nunique() == 1).all()
    assert set(studies["sex"]) == {"F", "M"} and 0.4 < (studies["sex"] == "F").mean() < 0.6
    assert studies["age"].between(18, 95).all() and 55 < studies["age"].mean() < 70
    assert 0.5 < studies["age"].between(50, 80).mean() < 0.8  # skewed toward 50-80
    assert studies["year"].between(2010, 2022).all() and studies["year"].nunique() == 13
    assert (studies["age_band"] == studies["age"].map(age_band)).all()
    assert set(studies["age_band"]) == {"18-39", "40-59", "60-79", "80+"}
    for _, p in studies.groupby("patient_id"):  # study order = time order
        years, ages = p["year"].to_numpy(dtype=int), p["age"].to_numpy()
        assert (np.diff(years) >= 0).all()
        assert (ages == np.minimum(ages[0] + years - years[0], 95)).all()  # the age grows with the year
    said = re.compile(r"\b(female|male|woman|man|gentleman|lady|year[- ]old|years old|aged|20[12]\d)\b", re.I)
    assert not any(said.search(text) for text in synth["report"])
    assert match_attributes(synth) == ["labels", "view", "site", "sex", "age_band", "year"]


def test_shared_helpers() -> None:
    got = normalise_sex(pd.Series(["F", "female", "Woman", " m ", "MALE", "man", "", None, "unknown", "U"]), "t")
    assert got.tolist() == ["F", "F", "F", "M", "M", "M", None, None, None, None]
    assert [age_band(a) for a in (0, 17.9, 18, 39, 40, 59.5, 60, 79, 80, 120, float("nan"))] == [
        "0-17", "0-17", "18-39", "18-39", "40-59", "40-59", "60-79", "60-79", "80+", "80+", None]
    assert [name for name, _ in AGE_BANDS] == ["0-17", "18-39", "40-59", "60-79", "80+"]
    side = side_information("t", sex=pd.Series(["f", "M"]), age=pd.Series([33, ""]), year=pd.Series(["2014", 2015.0]))
    assert side["sex"].tolist() == ["F", "M"] and side["age_band"].tolist() == ["18-39", None]
    assert side["year"].tolist() == [2014, 2015] and str(side["year"].dtype) == "Int64"
    with pytest.raises(SourceError, match=r"t: row 2, column 'sex': 'x'"):
        side_information("t", sex=pd.Series(["F", "x"]))
    lenient = side_information("t", sex=pd.Series(["F", "x"]), age=pd.Series([40, 200]), strict=False)
    assert lenient["sex"].tolist() == ["F", None] and lenient["age_band"].tolist() == ["40-59", None]
    assert side_information("t").empty


@pytest.mark.parametrize(("column", "value", "match"), [
    ("sex", "yes", "column 'sex': 'yes' is not a sex"), ("age", 130, "column 'age': 130 is not an age"),
    ("age", "old", "column 'age': 'old' is not an age"), ("age", -1, "column 'age'"),
    ("year", 2015.5, "column 'year': 2015.5 is not a year"), ("year", "last", "column 'year'"),
    ("age_band", "90-99", "column 'age_band': '90-99' is not an age band")])
def test_csv_bad_side_information_names_row_and_column(tmp_path: Path, column: str, value: object, match: str) -> None:
    rows = _rows()
    for r in rows:
        r[column] = {"sex": "F", "age": 50, "year": 2016, "age_band": "40-59"}[column]
    rows[3][column] = value
    with pytest.raises(SourceError, match=f"pairs.csv'?: row 4, {match}"):
        load_source("csv", root=str(_folder(tmp_path, rows)))


def test_csv_side_information(tmp_path: Path) -> None:
    rows = _rows(8)
    for k, r in enumerate(rows):
        r.update(sex=["F", "male", "W", "m"][k // 2 % 4], age=[17, 44.5, 61, 85][k // 2 % 4], year=2010 + k // 2)
    data = load_source("csv", root=str(_folder(tmp_path, rows)))
    p = data.pairs
    assert p["sex"].tolist() == ["F", "F", "M", "M", "F", "F", "M", "M"]
    assert p["age_band"].tolist() == ["0-17", "0-17", "40-59", "40-59", "60-79", "60-79", "80+", "80+"]
    assert p["year"].tolist() == [2010, 2010, 2011, 2011, 2012, 2012, 2013, 2013]
    assert data.stats["sex_known"] == 8 and match_attributes(p)[-3:] == ["sex", "age_band", "year"]
    bands = _rows(4)
    for k, r in enumerate(bands):
        r["age_band"] = ["80+", "", "18-39", "60-79"][k]
    p = load_source("csv", root=str(_folder(tmp_path / "b", bands))).pairs
    assert p["age_band"].tolist() == ["80+", None, "18-39", "60-79"] and "age" not in p.columns
    assert "age_band" in match_attributes(p)  # a blank band: that pair is left out of age-band pools
    assert match_coverage(p, "age_band").tolist() == [True, False, True, True]
    plain = load_source("csv", root=str(_folder(tmp_path / "c", _rows(4)))).pairs
    assert not set(SIDE_COLUMNS) & set(plain.columns) and match_attributes(plain) == ["labels", "site"]  # no view column: every view UNKNOWN


def test_chexpert_plus_sex_and_age(tmp_path: Path) -> None:
    write_chexpert_plus(tmp_path)
    csv = tmp_path / CHEXPERT_PLUS_CSV
    table = pd.read_csv(csv)
    table["sex"] = np.where(table["deid_patient_id"] == "patient00002", "Male", "Female")
    table.loc[table["deid_patient_id"] == "patient00003", "sex"] = "Unknown"
    table["age"] = np.where(table["deid_patient_id"] == "patient00004", 85, 38)
    table.to_csv(csv, index=False)
    data = load_source("chexpert-plus", root=str(tmp_path))
    by = data.pairs.drop_duplicates("patient_id").set_index("patient_id")
    assert by["sex"].tolist() == ["F", "M", None, "F"] and by["age_band"].tolist() == ["18-39"] * 3 + ["80+"]
    assert "year" not in data.pairs.columns and data.stats["sex_known"] == 9
    assert match_attributes(data.pairs) == ["labels", "view", "site", "sex", "age_band"]
    assert (match_coverage(data.pairs, "sex+age_band") == (data.pairs["patient_id"] != "patient00003")).all()
    table.assign(year=2011).to_csv(csv, index=False)  # a derived CSV with a year column
    assert (load_source("chexpert-plus", root=str(tmp_path)).pairs["year"] == 2011).all()
    table.drop(columns=["sex", "age"]).to_csv(csv, index=False)
    assert not set(SIDE_COLUMNS) & set(load_source("chexpert-plus", root=str(tmp_path)).pairs.columns)


def test_mimic_year_and_patients_file(tmp_path: Path) -> None:
    info = write_mimic(tmp_path)
    pairs = load_source("mimic-cxr", root=str(tmp_path)).pairs
    assert (pairs["year"] == 2180).all() and "sex" not in pairs.columns  # the fixture's (shifted) StudyDate
    subjects = sorted({m["subject_id"] for m in info["meta"]})
    pd.DataFrame({"subject_id": subjects, "gender": ["F", "M", "M"], "anchor_age": [52, 91, 30],
                  "anchor_year": [2178, 2180, 2190], "dod": ""}).to_csv(tmp_path / "patients.csv.gz", index=False)
    data = load_source("mimic-cxr", root=str(tmp_path), patients_csv="patients.csv.gz")
    by = data.pairs.drop_duplicates("patient_id").set_index("patient_id")
    assert by["sex"].tolist() == ["F", "M", "M"]
    assert by["age"].tolist() == [54, 91, 20] and by["age_band"].tolist() == ["40-59", "80+", "18-39"]
    assert match_attributes(data.pairs)[-3:] == ["sex", "age_band", "year"] and data.stats["sex_known"] == 12
    with pytest.raises(SourceError, match=r"nowhere\.csv.*does not exist.*subject_id, gender, anchor_age"):
        load_source("mimic-cxr", root=str(tmp_path), patients_csv=str(tmp_path / "nowhere.csv"))
    pd.DataFrame({"subject_id": subjects, "sex": ["F", "M", "M"]}).to_csv(tmp_path / "p2.csv", index=False)
    with pytest.raises(SourceError, match=r"MIMIC-IV patients file .*p2\.csv.*no column\(s\) \['gender', 'anchor_age'\]"):
        load_source("mimic-cxr", root=str(tmp_path), patients_csv="p2.csv")


def test_embedding_key_leaves_side_information_out() -> None:
    pairs = load_source("synthetic", n_patients=8, seed=1).pairs
    lm = SimpleNamespace(weights_id="w", preprocess_id="p")
    key = embedding_key(EmbedSpec(), lm, pairs)  # type: ignore[arg-type]
    changed = pairs.assign(sex="F", year=1999, age=20.0, age_band="18-39")
    assert embedding_key(EmbedSpec(), lm, changed) == key  # type: ignore[arg-type]
    assert embedding_key(EmbedSpec(), lm, pairs.drop(columns=list(SIDE_COLUMNS))) == key  # type: ignore[arg-type]
    assert embedding_key(EmbedSpec(), lm, pairs.assign(site="x")) != key  # type: ignore[arg-type]


def test_matched_pools_on_sex_age_band_year_equal_explicit_pool_sampling() -> None:
    data = _data(seed=11, n_patients=40)
    rng = np.random.default_rng(5)
    sex_of = {p: "FM"[int(rng.integers(2))] for p in np.unique(data["patient_id"])}  # per patient, as in real data
    es = _es(data, _study_attr(data, 0, ["PA", "AP"]))
    es.meta["sex"] = [sex_of[p] for p in data["patient_id"]]
    es.meta["age_band"] = _study_attr(data, 1, ["40-59", "60-79"])
    es.meta["year"] = pd.array(_study_attr(data, 2, ["2015", "2016"]).astype(int), dtype="Int64")
    matches = ("sex+age_band", "sex+age_band+year")
    assert_matched_pools_equal_sampling(es, data, matches, AuditSpec(ks=KS, n_bootstrap=0, match=matches))
    es.meta.loc[0, "year"] = pd.NA  # one pair without a year: left out of the year pool only, and counted
    counts = audit_embeddings(es, AuditSpec(ks=(1,), n_bootstrap=0, match=("sex", "sex+year"))).counts
    assert counts["matched_pools"] == {"sex": {"pairs": len(es), "left_out": 0},
                                       "sex+year": {"pairs": len(es) - 1, "left_out": 1}}
    es.meta["year"] = pd.NA
    with pytest.raises(SpecError, match="'sex\\+year'.*year is known for 0 of .*gives: labels, view, sex, age_band"):
        audit_embeddings(es, AuditSpec(match=("sex+year",)))


def test_portable_npz_keeps_the_side_information(tmp_path: Path) -> None:
    from backend.embed import load_npz, save_npz

    data = _data(seed=12, n_patients=20)
    es = _es(data, _study_attr(data, 0, ["PA", "AP"]))
    es.meta["sex"] = _study_attr(data, 1, ["F", "M"])
    es.meta["age_band"] = _study_attr(data, 2, ["18-39", "80+"])
    es.meta["year"] = pd.array(_study_attr(data, 3, ["2011", "2020"]).astype(int), dtype="Int64")
    back = load_npz(save_npz(es, tmp_path / "e.npz"))
    for col in ("sex", "age_band", "year"):
        assert back.meta[col].tolist() == es.meta[col].tolist()
    spec = AuditSpec(ks=(1,), n_bootstrap=0, match=("sex+age_band+year",))
    pd.testing.assert_frame_equal(audit_embeddings(back, spec).rows, audit_embeddings(es, spec).rows)
    es.meta.loc[0, "sex"] = None
    assert load_npz(save_npz(es, tmp_path / "f.npz")).meta["sex"].iloc[0] is None


def test_a_finished_run_over_files_depends_on_the_side_information_only_when_it_matches_on_it(tmp_path: Path) -> None:
    from backend.sources.inputs import data_inputs, matches_side_information
    from backend.specs import DPSpec, SourceSpec

    rows = _rows(8)
    for k, r in enumerate(rows):
        r.update(sex="FM"[k % 2], year=2012)
    source = SourceSpec(name="csv", root=str(_folder(tmp_path, rows)))
    plain = AuditSpec(embed=EmbedSpec(source=source))
    matched = AuditSpec(embed=EmbedSpec(source=source), match=("view", "sex+year"))
    assert not matches_side_information(plain) and not matches_side_information(AuditSpec(match=("view+site",)))
    assert matches_side_information(matched) and matches_side_information(DPSpec(source=source, audit=matched))
    before = [data_inputs(spec)["data_hash"] for spec in (plain, matched)]
    rows[5]["sex"] = "F"  # a corrected side information value (the images stay as they are)
    pd.DataFrame(rows).to_csv(tmp_path / "pairs.csv", index=False)
    after = [data_inputs(spec)["data_hash"] for spec in (plain, matched)]
    assert after[0] == before[0]  # nothing of the plain audit depends on sex: its finished run stays valid
    assert after[1] != before[1]  # the matched pools do: recomputed
    assert after[1] == load_source("csv", root=source.root).digest()  # what an AuditResult records
