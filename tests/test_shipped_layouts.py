"""The documented commands on tiny trees in the layouts the publishers ship (and the variants people have):
MIMIC-CXR's reports as the downloaded zip, MIMIC-IV's patients file lacking some subjects, CheXpert Plus's PNG
release unpacked as PNG/PNG/, OpenI without its view table, a side-information pool that cannot be served."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest

from backend.__main__ import main
from backend.sources import load_source
from tests.helpers.fixtures_data import write_chexpert_plus, write_mimic, write_openi, zip_mimic_reports
from tests.helpers.tiny_models import register_tiny_models

register_tiny_models()
AUDIT = ["--model", "tiny-random", "--split", "all", "--n-bootstrap", "0", "--ks", "1"]


@pytest.fixture
def mimic(tmp_path: Path) -> tuple[Path, Path, dict]:
    """A MIMIC-CXR-JPG tree (4 patients) with its reports moved into mimic-cxr-reports.zip as downloaded."""
    info = write_mimic(tmp_path / "mimic-cxr-jpg", n_patients=4)
    archive = zip_mimic_reports(tmp_path / "mimic-cxr-jpg", tmp_path / "mimic-cxr" / "mimic-cxr-reports.zip")
    return tmp_path / "mimic-cxr-jpg", archive, info


def test_sources_counts_read_the_reports_zip_and_say_images_were_not_checked(
        mimic: tuple[Path, Path, dict], capsys: pytest.CaptureFixture) -> None:
    root, archive, info = mimic
    assert main(["sources", "--name", "mimic-cxr", "--root", str(root), "--counts",
                 "--source-option", f"reports_root={archive}", "--source-option", "blank_as=nan"]) == 0
    out = capsys.readouterr().out
    stats = json.loads(out.splitlines()[1])
    assert stats["pairs"] == info["n_images"] == 16 and stats["dropped_missing_report"] == 0
    assert stats["images_checked"] == 0 and "skipped_images" not in stats  # never "0 skipped" for unchecked images
    assert "images not checked" in out and "check_images=true" in out
    assert main(["sources", "--name", "mimic-cxr", "--root", str(root), "--source-option", f"reports_root={archive}",
                 "--source-option", "check_images=True"]) == 0
    stats = json.loads(capsys.readouterr().out.splitlines()[1])
    assert stats["images_checked"] == 1 and stats["skipped_images"] == 0


def test_audit_from_the_zip_with_subjects_missing_from_the_patients_file(
        mimic: tuple[Path, Path, dict], tmp_path: Path, fresh_cache: Path, capsys: pytest.CaptureFixture) -> None:
    """--match sex+age_band when MIMIC-IV's patients file lacks one subject: the audit finishes, that subject's pairs
    are left out of the matched pool only, and the JSON and the output count them."""
    root, archive, info = mimic
    subjects = sorted({m["subject_id"] for m in info["meta"]})
    pd.DataFrame({"subject_id": subjects[1:], "gender": ["F", "M", "F"], "anchor_age": [52, 67, 30],
                  "anchor_year": [2178, 2180, 2179]}).to_csv(tmp_path / "patients.csv.gz", index=False)
    out = tmp_path / "audit.json"
    assert main(["audit", "--source", "mimic-cxr", "--root", str(root), "--source-option", f"reports_root={archive}",
                 "--source-option", f"patients_csv={tmp_path / 'patients.csv.gz'}", "--source-option", "blank_as=nan",
                 "--match", "sex+age_band", *AUDIT, "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    missing = sum(m["subject_id"] == subjects[0] for m in info["meta"])
    assert doc["counts"]["pairs"] == 16
    assert doc["counts"]["matched_pools"] == {"sex+age_band": {"pairs": 16 - missing, "left_out": missing}}
    kinds = {r["pool_kind"] for r in doc["rows"]}
    assert {"random", "matched:sex+age_band"} <= kinds
    printed = capsys.readouterr()
    assert f"leaves out {missing:,} of 16 pairs whose sex or age_band is unknown" in printed.out
    assert "Traceback" not in printed.err


def test_a_match_that_cannot_be_served_fails_before_any_embedding(
        mimic: tuple[Path, Path, dict], tmp_path: Path, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    root, archive, _ = mimic
    import backend.audit

    def no_embedding(*args: object, **kwargs: object) -> None:
        raise AssertionError("embedding started")

    monkeypatch.setattr(backend.audit, "embed_split", no_embedding)
    start = time.perf_counter()
    assert main(["audit", "--source", "mimic-cxr", "--root", str(root), "--source-option", f"reports_root={archive}",
                 "--match", "sex", *AUDIT, "--json", str(tmp_path / "a.json")]) == 2
    err = capsys.readouterr().err
    assert "Cannot match pools on 'sex'" in err and "patients_csv=<MIMIC-IV hosp/patients.csv.gz>" in err, err
    assert "Traceback" not in err and time.perf_counter() - start < 30
    assert not (tmp_path / "a.json").exists()


@pytest.mark.parametrize("layout", ["PNG/PNG", "PNG"])
def test_chexpert_plus_png_release_audits(tmp_path: Path, fresh_cache: Path, layout: str) -> None:
    root = tmp_path / "chexpertplus"
    info = write_chexpert_plus(root)
    if layout == "PNG/PNG":  # the PNG zip unpacked into a folder named PNG
        (root / "PNG").rename(tmp_path / "inner")
        (root / "PNG").mkdir()
        (tmp_path / "inner").rename(root / "PNG" / "PNG")
    data = load_source("chexpert-plus", root=str(root), check_images=True)
    assert data.stats["skipped_images"] == 0 and len(data.pairs) == info["n_images"]
    out = tmp_path / "a.json"
    assert main(["audit", "--source", "chexpert-plus", "--root", str(root), *AUDIT, "--json", str(out)]) == 0
    assert json.loads(out.read_text())["counts"]["pairs"] == info["n_images"]


def test_openi_without_its_view_table_refuses_a_view_pool(tmp_path: Path, fresh_cache: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    write_openi(tmp_path, metadata=False)
    assert set(load_source("openi", root=str(tmp_path)).pairs["view"]) == {"UNKNOWN"}
    assert main(["audit", "--source", "openi", "--root", str(tmp_path), "--match", "view", *AUDIT,
                 "--json", str(tmp_path / "a.json")]) == 2
    err = capsys.readouterr().err
    assert "Cannot match pools on 'view'" in err and "nlmcxr_dicom_metadata.csv" in err and "torchxrayvision" in err
