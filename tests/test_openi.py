"""OpenI source: the official layout (tiny tree written here), the real archive counts, the labeller."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from backend.errors import ImageReadError, SourceError
from backend.sources import load_source
from backend.sources.labeler import label_report
from backend.sources.openi import collection_stats, label_agreement, read_reports
from backend.sources.schema import LABELS, PAIR_COLUMNS
from tests.helpers.fixtures_data import write_corrupt, write_openi


def _lab(vec: np.ndarray, name: str) -> float:
    return float(vec[LABELS.index(name)])


def test_tiny_archive_loads_without_images(tmp_path: Path) -> None:
    root = write_openi(tmp_path / "openi", images=False)
    data = load_source("openi", root=str(root))
    pairs = data.pairs
    assert list(pairs.columns[: len(PAIR_COLUMNS)]) == list(PAIR_COLUMNS)
    assert len(pairs) == 5 and data.stats["dropped_empty_report"] == 1
    assert data.stats["reports"] == 5 and data.stats["reports_with_images"] == 4 and data.stats["image_ids"] == 6
    assert pairs["study_id"].nunique() == 3 and (pairs["patient_id"] == pairs["study_id"]).all()
    views = dict(zip(pairs["pair_id"], pairs["view"], strict=True))
    assert views["CXR1_1_IM-0001-3001"] == "PA"  # the metadata spells it CXR1_IM-0001-3001
    assert views["CXR1_1_IM-0001-4001"] == "LATERAL" and views["CXR2_IM-0652-1001"] == "AP"
    assert views["CXR3_IM-1384-1001"] == "UNKNOWN"
    with pytest.raises(ImageReadError, match="CXR1_1_IM-0001-3001.png"):
        data.read_image(pairs["image_path"].iloc[0])


def test_tiny_tree_images_labels_and_split(tmp_path: Path) -> None:
    root = write_openi(tmp_path / "openi")
    data = load_source("openi", root=str(root))
    img = data.read_image(data.pairs["image_path"].iloc[0])
    assert img.mode in ("L", "RGB") and img.size == (16, 16)
    by_study = data.pairs.groupby("study_id").first()
    assert by_study.loc["openi-1", "No Finding"] == 1.0 and by_study.loc["openi-1", "Pleural Effusion"] == 0.0
    assert by_study.loc["openi-2", "Cardiomegaly"] == 1.0 and by_study.loc["openi-2", "Pleural Effusion"] == 1.0
    assert math.isnan(by_study.loc["openi-3", "Pneumonia"])  # "possible pneumonia" is uncertain
    assert set(data.pairs["split"]) <= {"train", "val", "test"}
    assert data.pairs.groupby("patient_id")["split"].nunique().max() == 1


def test_extracted_folder_equals_archive(tmp_path: Path) -> None:
    a = load_source("openi", root=str(write_openi(tmp_path / "a", images=False)))
    b = load_source("openi", root=str(write_openi(tmp_path / "b", archive=False, images=False)))
    assert a.pairs.drop(columns=["image_path"]).equals(b.pairs.drop(columns=["image_path"]))


def test_corrupt_and_missing_images_are_skipped_and_counted(tmp_path: Path) -> None:
    root = write_openi(tmp_path / "openi")
    write_corrupt(root / "NLMCXR_png" / "CXR2_IM-0652-1001.png")
    (root / "NLMCXR_png" / "CXR2_IM-0652-2001.png").unlink()
    data = load_source("openi", root=str(root))
    assert data.stats["skipped_images"] == 2 and len(data.pairs) == 3
    with pytest.raises(ImageReadError, match="CXR2_IM-0652-1001.png"):
        data.read_image("NLMCXR_png/CXR2_IM-0652-1001.png")


def test_bad_roots_and_options(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        load_source("openi", root=str(tmp_path / "nowhere"))
    with pytest.raises(SourceError, match="NLMCXR_reports.tgz"):
        load_source("openi", root=str(tmp_path))
    (tmp_path / "NLMCXR_reports.tgz").write_bytes(b"\x1f\x8b broken")
    with pytest.raises(SourceError, match="unreadable or truncated"):
        load_source("openi", root=str(tmp_path))
    with pytest.raises(SourceError, match="Unknown option"):
        load_source("openi", root=str(write_openi(tmp_path / "ok", images=False)), n_patients=3)


@pytest.mark.parametrize(("text", "label", "expected"), [
    ("No pneumothorax or pleural effusion.", "Pneumothorax", 0.0),
    ("No focal consolidation, pleural effusion, or pneumothorax.", "Pleural Effusion", 0.0),
    ("Small right pleural effusion.", "Pleural Effusion", 1.0),
    ("Negative for pneumothorax.", "Pneumothorax", 0.0),
    ("There is no effusion but there is a right pneumothorax.", "Pneumothorax", 1.0),
    ("Right basilar opacity may represent pneumonia.", "Pneumonia", float("nan")),
    ("Atelectasis versus consolidation at the left base.", "Atelectasis", float("nan")),
    ("Heart size is normal.", "Cardiomegaly", 0.0),
    ("The heart is mildly enlarged.", "Cardiomegaly", 1.0),
    ("Left chest pacemaker with leads in the right ventricle.", "Support Devices", 1.0),
    ("Healed left rib fracture.", "Fracture", 1.0),
    ("Lungs are clear. No acute disease.", "No Finding", 1.0),
    ("Cardiomegaly.", "No Finding", 0.0),
])
def test_labeller_negation_and_uncertainty(text: str, label: str, expected: float) -> None:
    got = _lab(label_report(text), label)
    assert (math.isnan(got) and math.isnan(expected)) or got == expected


def test_mesh_terms_add_positives() -> None:
    assert _lab(label_report("Stable chest."), "Cardiomegaly") == 0.0
    assert _lab(label_report("Stable chest.", mesh=["Cardiomegaly/mild"]), "Cardiomegaly") == 1.0


def test_real_archive_counts(openi_dir: Path) -> None:
    """The facts in ../shared/data/openi/README.md, counted by our parser."""
    stats = collection_stats(read_reports(openi_dir))
    assert stats == {"reports": 3955, "reports_with_images": 3851, "image_ids": 7470, "with_findings": 3337,
                     "with_impression": 3820, "with_both": 3331, "distinct_findings_impression": 3067}


def test_real_archive_loads_as_pairs(openi_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "openi"
    root.mkdir()
    for name in ("NLMCXR_reports.tgz", "nlmcxr_dicom_metadata.csv.gz"):  # a private view, not a copy into the repo
        (root / name).symlink_to(openi_dir / name)
    data = load_source("openi", root=str(root))
    assert data.stats["image_ids"] == 7470 and len(data.pairs) + data.stats["dropped_empty_report"] == 7470
    assert data.pairs["view"].isin(["PA", "AP", "LATERAL", "UNKNOWN"]).all()
    assert (data.pairs["view"] != "UNKNOWN").sum() > 4000


def test_real_label_agreement(openi_dir: Path) -> None:
    """Our rule-based labels against the CheXpert-labeller file: printed, with a sane lower bound."""
    table = label_agreement(openi_dir)
    print("\n" + table.round(3).to_string(index=False))
    rows = table.set_index("label")
    assert rows.loc["macro", "accuracy"] >= 0.93
    assert rows.loc["No Finding", "kappa"] >= 0.6
    for label in ("Cardiomegaly", "Pleural Effusion", "Edema"):
        assert rows.loc[label, "kappa"] >= 0.65, label
    assert rows.loc["No Finding", "n"] == 3337


def test_pngs_extracted_flat_into_root(tmp_path: Path) -> None:
    root = write_openi(tmp_path / "openi")
    for png in (root / "NLMCXR_png").glob("*.png"):
        png.rename(root / png.name)
    (root / "NLMCXR_png").rmdir()
    data = load_source("openi", root=str(root))
    assert data.pairs["image_path"].iloc[0] == "CXR1_1_IM-0001-3001.png" and data.stats["skipped_images"] == 0
    assert data.read_image(data.pairs["image_path"].iloc[0]).size == (16, 16)


def test_the_kaggle_copy_reads_as_the_nlm_layout(tmp_path: Path) -> None:
    """indiana_reports.csv + indiana_projections.csv + images/images_normalized/: the same studies, report texts
    and labels as NLM's archive, the view from the projection, the images found."""
    from tests.helpers.fixtures_data import write_openi_kaggle

    nlm = load_source("openi", root=str(write_openi(tmp_path / "nlm"))).pairs
    (tmp_path / "kaggle").mkdir()
    data = load_source("openi", root=str(write_openi_kaggle(tmp_path / "kaggle")))
    kaggle = data.pairs
    assert data.stats["layout"] == "kaggle" and data.stats["skipped_images"] == 0
    cols = ["study_id", "report", *LABELS]
    by_study = lambda t: t.drop_duplicates("study_id")[cols].sort_values("study_id").reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(by_study(kaggle), by_study(nlm))
    assert len(kaggle) == len(nlm) and set(kaggle["pair_id"]) - set(nlm["pair_id"]) == {"CXR1_IM-0001-3001", "CXR1_IM-0001-4001"}
    assert kaggle.groupby("study_id")["view"].apply(list).to_dict()["openi-2"] == ["FRONTAL", "LATERAL"]
    assert data.read_image(kaggle["image_path"].iloc[0]).size == (16, 16)
