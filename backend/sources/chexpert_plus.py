"""`chexpert-plus`: CheXpert Plus (Stanford AIMI, credentialed access), reports + images + CheXbert labels.

Layout under `root` (official names):
    df_chexpert_plus_240401.csv    one row per image: path_to_image (e.g. train/patient00001/study1/
                                   view1_frontal.jpg), deid_patient_id, section_findings, section_impression,
                                   frontal_lateral (Frontal/Lateral), ap_pa (AP/PA/blank), optional split, ...
                                   (option csv= names another file; .csv.gz works too)
    images                         at path_to_image, relative to root, or the release's PNG copies:
                                   PNG/<path_to_image with .png> (also PNG/PNG/..., as the PNG zip unpacks
                                   into a PNG folder), <path_to_image with .png>
    chexbert_labels/report_fixed.json   CheXbert labels, JSON lines {"path_to_image": ..., "<label>": 1/0/-1/null}
                                   (also found: impression_fixed.json, findings_fixed.json, in root or in
                                   chexbert_labels/; option labels= names any JSON-lines or CSV file keyed by
                                   path_to_image with CheXpert label columns). Absent -> labels NaN (logged).

One pair per image; study = patient/study folder of path_to_image; patient = deid_patient_id.
Side information: `sex` (Female/Male) and `age` of the CSV give the columns sex and age / age_band
(schema.AGE_BANDS); the release has no study dates, so `year` only from a `year` column a derived CSV adds.
Missing columns: not provided.
Split (option split=): "auto" (default) uses the CSV's split column when it holds train, val (valid) and
test, else the patient-hash split (the release's train/valid split has no test set, which the audit needs);
"official" always uses the column (train/valid -> train/val); "hash" always uses the patient-hash split.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from backend.errors import SourceError
from backend.settings import data_root
from backend.sources import SourceInfo, register_source
from backend.sources.csv_source import normalise_split
from backend.sources.files import (
    drop_bad_images,
    find_file,
    image_stats,
    inside_root,
    label_columns,
    make_reader,
    read_table,
    require_root,
)
from backend.sources.schema import (
    LABELS,
    SourceData,
    apply_section_policy,
    assign_split,
    finalize_pairs,
    normalise_view,
    side_information,
    side_stats,
)

log = logging.getLogger(__name__)

CSV_NAME = "df_chexpert_plus_240401.csv"
REQUIRED = ("path_to_image", "deid_patient_id", "section_findings", "section_impression")
LABEL_FILES = ("chexbert_labels/report_fixed.json", "report_fixed.json", "chexbert_labels/impression_fixed.json",
               "impression_fixed.json", "chexbert_labels/findings_fixed.json", "findings_fixed.json")


PNG_FOLDERS = ("PNG", "PNG/PNG")  # the PNG release unpacks to PNG/ (or PNG/PNG/ when unzipped into a PNG folder)


def resolve_image(root: Path, image_path: str) -> Path:
    """The file of a path_to_image: as given, else the PNG copy (<folder>/<path>.png for each of PNG_FOLDERS,
    or <path>.png beside the csv); the path as given when none exists (its error names it)."""
    direct = root / image_path
    if direct.is_file():
        return direct
    png = Path(image_path).with_suffix(".png")
    for candidate in (*(root / folder / png for folder in PNG_FOLDERS), root / png,
                      *(root / folder / image_path for folder in PNG_FOLDERS)):
        if candidate.is_file():
            return candidate
    return direct


def read_labels(path: Path, blank_as: float) -> pd.DataFrame:
    """path_to_image + 14 label columns (1/0/NaN) from a JSON-lines or CSV CheXbert labels file."""
    try:
        if path.suffix in (".json", ".jsonl") or path.name.endswith((".json.gz", ".jsonl.gz")):
            table = pd.read_json(path, lines=True)
        else:
            table = pd.read_csv(path, low_memory=False)
    except (OSError, ValueError) as exc:
        raise SourceError(f"Cannot read CheXbert labels {str(path)!r} ({exc}); expected JSON lines or CSV.") from exc
    if "path_to_image" not in table.columns:
        raise SourceError(f"CheXbert labels {str(path)!r} have no 'path_to_image' column; use the release's "
                          "chexbert_labels/*.json or a CSV keyed by path_to_image.")
    if not any(lab in table.columns for lab in LABELS):
        raise SourceError(f"CheXbert labels {str(path)!r} have none of the 14 CheXpert label columns.")
    labels = label_columns(table, blank_as, what=f"CheXbert labels {str(path)!r}")
    labels.insert(0, "path_to_image", table["path_to_image"].astype(str))
    return labels.drop_duplicates("path_to_image")


def _find_labels(base: Path, labels: str | None) -> Path | None:
    if labels is not None:
        path = Path(labels) if Path(labels).is_absolute() else base / labels
        if not path.is_file():
            raise SourceError(f"CheXbert labels file {str(path)!r} does not exist; check the labels= option.")
        return path
    try:
        return find_file(base, LABEL_FILES, "labels")
    except SourceError:
        log.warning("chexpert-plus: no CheXbert labels file in %s; labels will be NaN", base)
        return None


def _study_of(path_to_image: str) -> str:
    parts = Path(path_to_image).parts
    return "/".join(parts[-3:-1]) if len(parts) >= 3 else str(Path(path_to_image).parent)


def _view(frontal_lateral: object, ap_pa: object) -> str:
    if str(frontal_lateral).strip().lower() == "lateral":
        return "LATERAL"
    view = normalise_view(ap_pa)
    return "FRONTAL" if view == "UNKNOWN" and str(frontal_lateral).strip().lower() == "frontal" else view


def demographics(table: pd.DataFrame, csv_path: Path) -> pd.DataFrame:
    """The side information the release CSV carries: `sex` (Female/Male; Unknown -> unknown) and `age` (years at
    the study) -> age_band. The release has no dates (patient_report_date_order only orders a patient's reports):
    `year` only from a `year` column a derived CSV may add. A column the CSV lacks is not provided; an odd value
    is unknown (logged), not an error."""
    return side_information(f"CheXpert Plus CSV {str(csv_path)!r}", strict=False,
                            **{col: table[col] for col in ("sex", "age", "year") if col in table.columns})


def _official_split(table: pd.DataFrame, csv_path: Path, split: str) -> np.ndarray | None:
    """The CSV's split as train/val/test, or None when the hash split is to be used.

    'auto' keeps the official split only when it has all three of train, val and test (the release's
    train/valid split has no test set, and the audit needs one); 'official' always keeps it."""
    if split == "hash":
        return None
    if "split" not in table.columns:
        if split == "official":
            raise SourceError(f"CheXpert Plus CSV {str(csv_path)!r} has no 'split' column; use split='hash'.")
        return None
    values = normalise_split(table["split"], f"CheXpert Plus CSV {str(csv_path)!r}").to_numpy()
    if split == "auto" and set(values) != {"train", "val", "test"}:
        log.info("chexpert-plus: the CSV's split has only %s; using the patient-hash split", sorted(set(values)))
        return None
    return values


def load_chexpert_plus(root: str | None = None, section_policy: str = "findings+impression", *,
                       csv: str | None = None, labels: str | None = None, split: str = "auto",
                       blank_as: float = 0.0, check_images: bool = False, **options: object) -> SourceData:
    """Load CheXpert Plus as the canonical pair table (see module docstring)."""
    if options:
        raise SourceError(f"Unknown option(s) for source 'chexpert-plus': {sorted(options)}; "
                          "known: csv, labels, split, blank_as, check_images.")
    if split not in ("auto", "official", "hash"):
        raise SourceError(f"chexpert-plus: split must be 'auto', 'official' or 'hash', not {split!r}.")

    base = require_root(root if root is not None else data_root("chexpert-plus"), "chexpert-plus",
                        "CXR_CHEXPERT_PLUS_ROOT")
    csv_path = find_file(base, (csv or CSV_NAME,), "CheXpert Plus CSV",
                         "Point root at the CheXpert Plus folder or pass csv=<file>.")
    table = read_table(csv_path, REQUIRED, "CheXpert Plus CSV", dtype={"deid_patient_id": str})
    label_path = _find_labels(base, labels)
    if label_path is not None:
        table = table.merge(read_labels(label_path, blank_as), on="path_to_image", how="left")
    else:
        table = table.assign(**{lab: np.nan for lab in LABELS})
    paths = table["path_to_image"].astype(str)
    inside_root(base, paths, f"CheXpert Plus CSV {str(csv_path)!r}")
    pairs = pd.DataFrame({
        "pair_id": paths, "study_id": [_study_of(p) for p in paths],
        "patient_id": table["deid_patient_id"].astype(str), "image_path": paths,
        "view": [_view(f, a) for f, a in zip(table.get("frontal_lateral", pd.Series(index=table.index)),
                                             table.get("ap_pa", pd.Series(index=table.index)), strict=True)],
        "findings": table["section_findings"], "impression": table["section_impression"], "site": "chexpert-plus",
    })
    pairs = pd.concat([pairs, table[list(LABELS)], demographics(table, csv_path)], axis=1)
    official = _official_split(table, csv_path, split)
    if official is not None:
        pairs["split"] = official
    pairs, dropped = apply_section_policy(pairs, section_policy)
    skipped = 0
    if check_images:
        pairs, skipped = drop_bad_images(pairs, base, resolve_image, "chexpert-plus")
    if "split" not in pairs.columns:
        pairs["split"] = assign_split(pairs["patient_id"])
    out = finalize_pairs(pairs, "chexpert-plus")
    stats = {"rows": len(table), "pairs": len(out), "studies": int(out["study_id"].nunique()),
             "patients": int(out["patient_id"].nunique()), "dropped_empty_report": dropped,
             **image_stats(check_images, skipped), "labelled": int(label_path is not None), "official_split": int(official is not None),
             **side_stats(out)}
    return SourceData(name="chexpert-plus", pairs=out, read_image=make_reader(base, resolve_image, _IMAGE_HINT),
                      root=str(base), stats=stats, image_file=lambda p: resolve_image(base, p))


_IMAGE_HINT = "point root at the CheXpert Plus folder holding the images (or their PNG/ copies)"

register_source(SourceInfo(
    name="chexpert-plus",
    description="CheXpert Plus (Stanford AIMI, credentialed): CSV of reports + images + CheXbert labels.",
    loader=load_chexpert_plus,
    needs_root=True,
    credentialed=True,
))
