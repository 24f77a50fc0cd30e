"""mimic-cxr source on a tiny tree in the exact MIMIC-CXR-JPG 2.0.0 + reports layout."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from backend.errors import ImageReadError, SourceError, SpecError
from backend.sources import load_source
from backend.sources.mimic_cxr import parse_report, study_folder
from tests.helpers.fixtures_data import write_corrupt, write_mimic, zip_mimic_reports


def test_loads_official_layout_with_official_split(tmp_path: Path) -> None:
    info = write_mimic(tmp_path)
    data = load_source("mimic-cxr", root=str(tmp_path))
    pairs = data.pairs
    assert len(pairs) == info["n_images"] == 12 and pairs["study_id"].nunique() == 6
    assert pairs["patient_id"].nunique() == 3
    assert set(pairs["split"]) == {"train", "val", "test"}  # 'validate' -> 'val'
    assert pairs.groupby("patient_id")["split"].nunique().max() == 1
    assert set(pairs["view"]) == {"PA", "LATERAL"}
    assert (pairs["Pleural Effusion"] == 1.0).all() and (pairs["Pneumothorax"] == 0.0).all()
    assert pairs["Cardiomegaly"].isna().all()  # -1 (uncertain) -> NaN
    assert (pairs["Edema"] == 0.0).all()  # blank (not mentioned) -> blank_as=0.0
    assert pairs["report"].iloc[0].startswith("Patient 0 study 0: there is a small left pleural effusion.")
    assert pairs["report"].iloc[0].endswith("Small left effusion. No pneumothorax.")
    img = data.read_image(pairs["image_path"].iloc[0])
    assert img.size == (16, 16)
    assert data.stats["official_split"] == 1 and data.stats["dropped_missing_report"] == 0


def test_blank_as_nan_and_uncompressed_csvs(tmp_path: Path) -> None:
    write_mimic(tmp_path, n_patients=2, gz=False)
    pairs = load_source("mimic-cxr", root=str(tmp_path), blank_as=float("nan")).pairs
    assert pairs["Edema"].isna().all() and len(pairs) == 8
    for text in ("nan", "NaN", "unknown"):  # as --source-option blank_as=... gives it: text, not a float
        assert load_source("mimic-cxr", root=str(tmp_path), blank_as=text).pairs["Edema"].isna().all()
    assert (load_source("mimic-cxr", root=str(tmp_path), blank_as="1").pairs["Edema"] == 1.0).all()
    with pytest.raises(SourceError, match=r"blank_as='negative' is not a label value .*blank_as=nan"):
        load_source("mimic-cxr", root=str(tmp_path), blank_as="negative")


def test_reports_root_option_and_missing_report(tmp_path: Path) -> None:
    write_mimic(tmp_path / "jpg")
    reports = tmp_path / "reports"
    for txt in (tmp_path / "jpg" / "files").rglob("*.txt"):
        dest = reports / txt.relative_to(tmp_path / "jpg")
        dest.parent.mkdir(parents=True, exist_ok=True)
        txt.rename(dest)
    with pytest.raises(SourceError, match="reports_root"):
        load_source("mimic-cxr", root=str(tmp_path / "jpg"))
    first = sorted(reports.rglob("*.txt"))[0]
    first.unlink()
    data = load_source("mimic-cxr", root=str(tmp_path / "jpg"), reports_root=str(reports))
    assert data.stats["dropped_missing_report"] == 1 and len(data.pairs) == 10


def test_empty_report_is_dropped_and_counted(tmp_path: Path) -> None:
    write_mimic(tmp_path)
    txt = tmp_path / f"{study_folder(10000032, 50000000)}.txt"
    txt.write_text("                FINAL REPORT\n EXAMINATION: CHEST\n\n FINDINGS:\n\n IMPRESSION:\n\n")
    data = load_source("mimic-cxr", root=str(tmp_path))
    assert data.stats["dropped_empty_report"] == 2 and len(data.pairs) == 10


def test_corrupt_image_skipped_when_checked_and_named_when_read(tmp_path: Path) -> None:
    info = write_mimic(tmp_path)
    m = info["meta"][0]
    bad = tmp_path / study_folder(m["subject_id"], m["study_id"]) / f"{m['dicom_id']}.jpg"
    write_corrupt(bad)
    data = load_source("mimic-cxr", root=str(tmp_path))
    with pytest.raises(ImageReadError, match=m["dicom_id"]):
        data.read_image(data.pairs.loc[data.pairs["pair_id"] == m["dicom_id"], "image_path"].iloc[0])
    checked = load_source("mimic-cxr", root=str(tmp_path), check_images=True)
    assert checked.stats["skipped_images"] == 1 and len(checked.pairs) == 11


def test_missing_files_and_columns(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="needs a data folder"):
        load_source("mimic-cxr", root=None)
    with pytest.raises(SourceError, match="mimic-cxr-2.0.0-metadata.csv"):
        load_source("mimic-cxr", root=str(tmp_path))
    write_mimic(tmp_path)
    meta = pd.read_csv(tmp_path / "mimic-cxr-2.0.0-metadata.csv.gz").drop(columns=["ViewPosition"])
    meta.to_csv(tmp_path / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
    with pytest.raises(SourceError, match="ViewPosition"):
        load_source("mimic-cxr", root=str(tmp_path))


def test_without_split_and_label_files(tmp_path: Path) -> None:
    write_mimic(tmp_path)
    (tmp_path / "mimic-cxr-2.0.0-split.csv.gz").unlink()
    (tmp_path / "mimic-cxr-2.0.0-chexpert.csv.gz").unlink()
    data = load_source("mimic-cxr", root=str(tmp_path))
    assert data.stats["official_split"] == 0 and data.stats["labelled"] == 0
    assert data.pairs["Edema"].isna().all() and data.pairs.groupby("patient_id")["split"].nunique().max() == 1


def test_parse_report_sections_and_fallback() -> None:
    text = " FINAL REPORT\n INDICATION: cough\n\n FINDINGS: Lungs clear.\n Heart normal.\n\n IMPRESSION: Normal.\n"
    assert parse_report(text) == ("Lungs clear. Heart normal.", "Normal.")
    findings, impression = parse_report(" FINAL REPORT\n\n Chest radiograph.\n\n No acute process.\n")
    assert findings == "" and impression == "No acute process."
    assert parse_report("") == ("", "")


def test_reports_in_extracted_mimic_cxr_reports_folder(tmp_path: Path) -> None:
    write_mimic(tmp_path, n_patients=1)
    for txt in (tmp_path / "files").rglob("*.txt"):
        dest = tmp_path / "mimic-cxr-reports" / txt.relative_to(tmp_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        txt.rename(dest)
    data = load_source("mimic-cxr", root=str(tmp_path))
    assert len(data.pairs) == 4 and data.stats["dropped_missing_report"] == 0


def test_year_pools_are_refused_on_mimic_before_any_work(capsys: pytest.CaptureFixture) -> None:
    """MIMIC's per-patient date shift: a year-matched pool models no attacker; the command refuses it at once
    (the engine too), other attributes pass."""
    from backend.__main__ import main
    from backend.audit import run_audit
    from backend.sources import check_match
    from backend.specs import AuditSpec, EmbedSpec, SourceSpec

    assert main(["audit", "--source", "mimic-cxr", "--root", "/nonexistent", "--match", "sex+year",
                 "--json", "/tmp/never.json"]) == 2
    assert "Cannot match pools on 'year' for source 'mimic-cxr' (sex+year): MIMIC-CXR shifts" in capsys.readouterr().err
    spec = AuditSpec(embed=EmbedSpec(source=SourceSpec(name="mimic-cxr", root="/nonexistent")), match=("year",))
    with pytest.raises(SpecError, match="date|dates"):
        run_audit(spec)
    check_match("mimic-cxr", ("sex+age_band", "view"))
    check_match("synthetic", ("year",))


@pytest.mark.parametrize("top", ["", "mimic-cxr-reports/"])
def test_reports_read_from_the_zip_as_downloaded(tmp_path: Path, top: str) -> None:
    write_mimic(tmp_path / "jpg")
    expected = load_source("mimic-cxr", root=str(tmp_path / "jpg")).pairs
    archive = zip_mimic_reports(tmp_path / "jpg", tmp_path / "dl" / "mimic-cxr-reports.zip", top=top)
    assert not list((tmp_path / "jpg").rglob("*.txt"))
    data = load_source("mimic-cxr", root=str(tmp_path / "jpg"), reports_root=str(archive))
    pd.testing.assert_frame_equal(data.pairs, expected)
    archive.rename(tmp_path / "jpg" / "mimic-cxr-reports.zip")  # beside the images: found without the option
    pd.testing.assert_frame_equal(load_source("mimic-cxr", root=str(tmp_path / "jpg")).pairs, expected)


def test_reports_folder_at_either_level_and_a_bad_zip(tmp_path: Path) -> None:
    write_mimic(tmp_path / "jpg")
    expected = load_source("mimic-cxr", root=str(tmp_path / "jpg")).pairs
    for txt in (tmp_path / "jpg" / "files").rglob("*.txt"):
        dest = tmp_path / "reports" / txt.relative_to(tmp_path / "jpg")
        dest.parent.mkdir(parents=True, exist_ok=True)
        txt.rename(dest)
    for level in ("reports", "reports/files"):
        data = load_source("mimic-cxr", root=str(tmp_path / "jpg"), reports_root=str(tmp_path / level))
        pd.testing.assert_frame_equal(data.pairs, expected)
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(SourceError, match=r"not a readable zip file .*download mimic-cxr-reports.zip again"):
        load_source("mimic-cxr", root=str(tmp_path / "jpg"), reports_root=str(tmp_path / "broken.zip"))
    with pytest.raises(SourceError, match=r"do not exist; pass reports_root=<mimic-cxr-reports.zip"):
        load_source("mimic-cxr", root=str(tmp_path / "jpg"), reports_root=str(tmp_path / "nowhere.zip"))


def test_an_image_missing_from_the_split_file_takes_its_patients_split(tmp_path: Path) -> None:
    info = write_mimic(tmp_path, n_patients=4)
    full = load_source("mimic-cxr", root=str(tmp_path)).pairs.set_index("pair_id")["split"]
    split = pd.read_csv(tmp_path / "mimic-cxr-2.0.0-split.csv.gz", dtype={"dicom_id": str})
    lonely = info["meta"][-1]["subject_id"]  # every image of this patient leaves the file: the hash split
    dropped = split[(split.index % 3 == 0) | (split["subject_id"] == lonely)]
    split.drop(dropped.index).to_csv(tmp_path / "mimic-cxr-2.0.0-split.csv.gz", index=False)
    data = load_source("mimic-cxr", root=str(tmp_path))
    got = data.pairs.set_index("pair_id")["split"]
    assert data.stats["not_in_split_file"] == len(dropped)
    kept = ~got.index.isin(dropped["dicom_id"]) | (data.pairs.set_index("pair_id")["patient_id"] != f"p{lonely}")
    assert (got[kept] == full[kept]).all()
    assert data.pairs.groupby("patient_id")["split"].nunique().max() == 1
    split.loc[0, "split"] = "test" if split.loc[0, "split"] != "test" else "train"  # the file contradicts itself
    split.to_csv(tmp_path / "mimic-cxr-2.0.0-split.csv.gz", index=False)
    with pytest.raises(SourceError, match=r"split file puts patient 'p\d+' in two splits .*remove the file"):
        load_source("mimic-cxr", root=str(tmp_path))
