"""chexpert-plus source on a tiny tree in the exact CheXpert Plus layout."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from backend.errors import ImageReadError, SourceError
from backend.sources import load_source
from tests.helpers.fixtures_data import CHEXPERT_PLUS_CSV, write_chexpert_plus, write_corrupt


def test_loads_official_layout(tmp_path: Path) -> None:
    info = write_chexpert_plus(tmp_path)
    data = load_source("chexpert-plus", root=str(tmp_path))
    pairs = data.pairs
    assert len(pairs) == info["n_images"] == 12
    assert pairs["patient_id"].nunique() == 4 and pairs["study_id"].nunique() == 8
    assert pairs.groupby("study_id")["patient_id"].nunique().max() == 1
    assert set(pairs["view"]) == {"AP", "LATERAL"}
    assert (pairs["Pleural Effusion"] == 1.0).all() and pairs["Edema"].isna().all()
    assert (pairs["Fracture"] == 0.0).all()  # null (not mentioned) -> blank_as 0.0
    assert pairs.groupby("patient_id")["split"].nunique().max() == 1
    img = data.read_image(pairs["image_path"].iloc[0])  # path_to_image .jpg resolved to PNG/...png
    assert img.size == (16, 16)
    s1 = pairs.loc[pairs["study_id"] == "patient00001/study1", "report"].iloc[0]
    assert s1 == "Findings of patient00001 study 1: small right pleural effusion. Right effusion."
    assert load_source("chexpert-plus", root=str(tmp_path), section_policy="impression").stats[
        "dropped_empty_report"] == 4


def test_split_column_official_auto_and_hash(tmp_path: Path) -> None:
    write_chexpert_plus(tmp_path, with_split=True)  # the release's train/valid: no test set
    official = load_source("chexpert-plus", root=str(tmp_path), split="official")
    assert set(official.pairs["split"]) == {"train", "val"} and official.stats["official_split"] == 1
    assert set(official.pairs.loc[official.pairs["patient_id"] == "patient00001", "split"]) == {"val"}
    auto = load_source("chexpert-plus", root=str(tmp_path))
    assert auto.stats["official_split"] == 0  # no test set: the hash split instead
    assert auto.pairs.groupby("patient_id")["split"].nunique().max() == 1
    table = pd.read_csv(tmp_path / CHEXPERT_PLUS_CSV)
    table["split"] = table["deid_patient_id"].map({"patient00001": "train", "patient00002": "valid",
                                                   "patient00003": "test", "patient00004": "test"})
    table.to_csv(tmp_path / CHEXPERT_PLUS_CSV, index=False)
    three = load_source("chexpert-plus", root=str(tmp_path))
    assert three.stats["official_split"] == 1 and set(three.pairs["split"]) == {"train", "val", "test"}
    assert load_source("chexpert-plus", root=str(tmp_path), split="hash").stats["official_split"] == 0
    with pytest.raises(SourceError, match="no 'split' column"):
        load_source("chexpert-plus", root=str(tmp_path), split="official",
                    csv=str(_without_split(tmp_path)))


def _without_split(tmp_path: Path) -> Path:
    path = tmp_path / "nosplit.csv"
    pd.read_csv(tmp_path / CHEXPERT_PLUS_CSV).drop(columns=["split"]).to_csv(path, index=False)
    return path


def test_jpeg_layout_and_labels_csv(tmp_path: Path) -> None:
    info = write_chexpert_plus(tmp_path, png=False)
    rows = [{"path_to_image": r["path_to_image"], "Cardiomegaly": 1} for r in info["rows"]]
    pd.DataFrame(rows).to_csv(tmp_path / "my_labels.csv", index=False)
    data = load_source("chexpert-plus", root=str(tmp_path), labels="my_labels.csv")
    assert (data.pairs["Cardiomegaly"] == 1.0).all() and data.pairs["Edema"].isna().all()
    assert data.read_image(data.pairs["image_path"].iloc[0]).size == (16, 16)


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="df_chexpert_plus_240401.csv"):
        load_source("chexpert-plus", root=str(tmp_path))
    info = write_chexpert_plus(tmp_path)
    table = pd.read_csv(tmp_path / CHEXPERT_PLUS_CSV).drop(columns=["deid_patient_id"])
    table.to_csv(tmp_path / "broken.csv", index=False)
    with pytest.raises(SourceError, match="deid_patient_id"):
        load_source("chexpert-plus", root=str(tmp_path), csv="broken.csv")
    with pytest.raises(SourceError, match="labels= option"):
        load_source("chexpert-plus", root=str(tmp_path), labels="nope.json")
    (tmp_path / "bad_labels.json").write_text(json.dumps({"x": 1}) + "\n")
    with pytest.raises(SourceError, match="path_to_image"):
        load_source("chexpert-plus", root=str(tmp_path), labels="bad_labels.json")
    with pytest.raises(SourceError, match="split must be"):
        load_source("chexpert-plus", root=str(tmp_path), split="random")
    first = info["rows"][0]["path_to_image"]
    write_corrupt(tmp_path / "PNG" / first.replace(".jpg", ".png"))
    data = load_source("chexpert-plus", root=str(tmp_path))
    with pytest.raises(ImageReadError, match="view1_frontal.png"):
        data.read_image(first)
    checked = load_source("chexpert-plus", root=str(tmp_path), check_images=True)
    assert checked.stats["skipped_images"] == 1 and len(checked.pairs) == 11


def test_missing_labels_file_gives_nan_labels(tmp_path: Path) -> None:
    write_chexpert_plus(tmp_path, n_patients=2)
    (tmp_path / "chexbert_labels" / "report_fixed.json").unlink()
    data = load_source("chexpert-plus", root=str(tmp_path))
    assert data.stats["labelled"] == 0 and data.pairs["Pleural Effusion"].isna().all()
