"""csv source: a user's own folder with pairs.csv."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from backend.errors import ImageReadError, SourceError
from backend.sources import load_source
from tests.helpers.fixtures_data import write_corrupt, write_image


def _folder(tmp_path: Path, rows: list[dict], name: str = "pairs.csv") -> Path:
    for k, row in enumerate(rows):
        if not str(row.get("image_path", "")).startswith("missing"):
            write_image(tmp_path / row["image_path"], seed=k)
    pd.DataFrame(rows).to_csv(tmp_path / name, index=False)
    return tmp_path


def _rows(n: int = 6) -> list[dict]:
    return [{"image_path": f"img/{k}.png", "report": f"Report {k // 2}: small effusion.", "patient_id": f"P{k // 4}",
             "Pleural Effusion": 1 if k % 2 else -1, "Cardiomegaly": ""} for k in range(n)]


def test_minimal_csv(tmp_path: Path) -> None:
    data = load_source("csv", root=str(_folder(tmp_path, _rows())))
    pairs = data.pairs
    assert len(pairs) == 6 and pairs["study_id"].nunique() == 3 and pairs["patient_id"].nunique() == 2
    assert pairs.groupby("patient_id")["split"].nunique().max() == 1
    assert pairs["Pleural Effusion"].isna().sum() == 3 and (pairs["Pleural Effusion"] == 1).sum() == 3
    assert (pairs["Cardiomegaly"] == 0).all() and pairs["Edema"].isna().all()
    assert (pairs["view"] == "UNKNOWN").all() and (pairs["site"] == "csv").all()
    # a lone report column is the text for every section policy
    assert load_source("csv", root=str(tmp_path), section_policy="impression").pairs["report"].iloc[0] == \
        "Report 0: small effusion."
    assert data.read_image("img/0.png").size == (16, 16)


def test_full_csv_with_sections_split_view_and_study(tmp_path: Path) -> None:
    rows = [{"image_path": f"a/{k}.png", "findings": "Heart normal." if k else "", "impression": f"Imp {k}.",
             "patient_id": k // 2, "study_id": f"S{k // 2}", "view": "ll" if k % 2 else "pa",
             "split": ["train", "valid", "test"][k // 2]} for k in range(6)]
    data = load_source("csv", root=str(_folder(tmp_path, rows, "mine.csv")), csv="mine.csv")
    pairs = data.pairs
    assert list(pairs["split"]) == ["train", "train", "val", "val", "test", "test"]
    assert list(pairs["view"][:2]) == ["PA", "LATERAL"] and list(pairs["study_id"][:2]) == ["S0", "S0"]
    assert pairs["report"].iloc[1] == "Heart normal. Imp 1." and pairs["report"].iloc[0] == "Imp 0."
    findings_only = load_source("csv", root=str(tmp_path), csv="mine.csv", section_policy="findings")
    assert findings_only.stats["dropped_empty_report"] == 1 and findings_only.pairs["study_id"].iloc[0] == "S0"


def test_empty_report_and_bad_images_are_dropped_and_counted(tmp_path: Path) -> None:
    rows = _rows(8)
    rows[1]["report"] = "   "
    rows[2]["image_path"] = "missing/2.png"
    _folder(tmp_path, rows)
    write_corrupt(tmp_path / "img/3.png")
    data = load_source("csv", root=str(tmp_path))
    assert data.stats["dropped_empty_report"] == 1 and data.stats["skipped_images"] == 2 and len(data.pairs) == 5
    unchecked = load_source("csv", root=str(tmp_path), check_images=False)
    assert len(unchecked.pairs) == 7
    with pytest.raises(ImageReadError, match="3.png"):
        unchecked.read_image("img/3.png")
    with pytest.raises(ImageReadError, match="missing/2.png"):
        unchecked.read_image("missing/2.png")


@pytest.mark.parametrize(("drop", "match"), [("patient_id", "patient_id"), ("image_path", "image_path"),
                                             ("report", "no report text")])
def test_missing_required_column(tmp_path: Path, drop: str, match: str) -> None:
    rows = [{k: v for k, v in r.items() if k != drop} for r in _rows()]
    pd.DataFrame(rows).to_csv(tmp_path / "pairs.csv", index=False)
    with pytest.raises(SourceError, match=match):
        load_source("csv", root=str(tmp_path))


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        load_source("csv", root=str(tmp_path / "nope"))
    with pytest.raises(SourceError, match="pairs.csv"):
        load_source("csv", root=str(tmp_path))
    rows = _rows()
    rows[0]["split"] = "holdout"
    _folder(tmp_path, rows)
    with pytest.raises(SourceError, match="holdout"):
        load_source("csv", root=str(tmp_path))
    with pytest.raises(SourceError, match="section policy"):
        load_source("csv", root=str(tmp_path), section_policy="everything")
    rows = _rows()
    rows[0]["patient_id"] = None
    _folder(tmp_path, rows)
    with pytest.raises(SourceError, match="no patient_id"):
        load_source("csv", root=str(tmp_path))


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_png_and_jpeg_are_skipped_and_counted_alike(tmp_path: Path, suffix: str) -> None:
    rows = [{**r, "image_path": r["image_path"].replace(".png", suffix)} for r in _rows(6)]
    for k, row in enumerate(rows):
        write_image(tmp_path / row["image_path"], seed=k, size=64)
    pd.DataFrame(rows).to_csv(tmp_path / "pairs.csv", index=False)
    bad = tmp_path / rows[3]["image_path"]
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # truncated: the header is intact, half of the pixel data is gone
    loaded = load_source("csv", root=str(tmp_path))
    assert loaded.stats["skipped_images"] == 1 and len(loaded.pairs) == 5
    assert rows[3]["image_path"] not in set(loaded.pairs["image_path"])
    for path in loaded.pairs["image_path"]:  # every kept image reads (the audit would not abort later)
        loaded.read_image(path)


def test_accepted_label_forms(tmp_path: Path) -> None:
    """1/0/-1 in any numeric spelling, blank and NaN; -1 (uncertain) is NaN, blank is 0 (not mentioned)."""
    values = ["1", "0", "-1", "1.0", "0.0", "-1.0", "", "NaN"]
    rows = [{"image_path": f"img/{k}.png", "report": f"R {k}.", "patient_id": f"P{k}", "Edema": v}
            for k, v in enumerate(values)]
    _folder(tmp_path, rows)
    got = load_source("csv", root=str(tmp_path)).pairs.set_index("image_path")["Edema"]
    expected = [1.0, 0.0, float("nan"), 1.0, 0.0, float("nan"), 0.0, 0.0]
    assert got.loc[[r["image_path"] for r in rows]].tolist() == pytest.approx(expected, nan_ok=True)


def test_misnamed_columns_are_named_with_the_close_match(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [{"image_path": r["image_path"], "report": r["report"], "patient_id": r["patient_id"],
             "Pleural_Effusion": r["Pleural Effusion"], "PatientSex": "F", "ViewPosition": "PA", "report_date": 2020}
            for r in _rows()]
    with caplog.at_level("WARNING"):
        data = load_source("csv", root=str(_folder(tmp_path, rows)))
    assert data.stats["unread_columns"] == {"Pleural_Effusion": "Pleural Effusion", "PatientSex": "sex",
                                            "ViewPosition": "view"}
    assert "column 'Pleural_Effusion' is not read; did you mean 'Pleural Effusion'?" in caplog.text
    assert data.pairs["Pleural Effusion"].isna().all() and "sex" not in data.pairs.columns


def test_without_any_label_the_pathology_pool_is_said_to_be_the_random_pool(tmp_path: Path) -> None:
    from backend.views.data import match_summary
    from backend.views.definitions import coverage_notes

    rows = [{k: v for k, v in r.items() if k in ("image_path", "report", "patient_id")} for r in _rows()]
    pairs = load_source("csv", root=str(_folder(tmp_path, rows))).pairs
    assert "No pair has a finding label: the pathology-matched pool is the random pool" in match_summary(pairs)
    assert "No pair has a finding label" not in match_summary(load_source("csv", root=str(_folder(
        tmp_path / "b", _rows()))).pairs)
    assert any("pathology-matched pool is the random pool" in n for n in coverage_notes({"labelled_pairs": 0}))
    assert coverage_notes({"labelled_pairs": 3}) == []
