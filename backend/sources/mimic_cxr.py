"""`mimic-cxr`: MIMIC-CXR-JPG 2.0.0 images + the MIMIC-CXR reports (PhysioNet, credentialed access).

Layout under `root` (the official names; each CSV may be gzipped or not):
    mimic-cxr-2.0.0-metadata.csv(.gz)   dicom_id, subject_id, study_id, ViewPosition, ...   (required)
    mimic-cxr-2.0.0-split.csv(.gz)      dicom_id, study_id, subject_id, split train/validate/test
                                        (the official split, used as is; absent -> patient-hash split; an image
                                        the file lacks takes its patient's split from the file, else the hash's)
    mimic-cxr-2.0.0-chexpert.csv(.gz)   subject_id, study_id + 14 labels 1/0/-1/blank (absent -> NaN labels)
    files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.jpg            the images (read lazily)
and the reports, from the MIMIC-CXR (not -JPG) project: `mimic-cxr-reports.zip` read as downloaded, or the
folder it was extracted into (the one holding files/, or files/ itself), named by `reports_root` (default: root's
mimic-cxr-reports.zip, else its mimic-cxr-reports/ folder, else root itself):
    files/pXX/pXXXXXXXX/sXXXXXXXX.txt   free text with FINDINGS: / IMPRESSION: headings

Side information: `year` from the metadata's StudyDate (YYYYMMDD). MIMIC dates are shifted into
the future (2100-2200) by a random offset per patient, so it is the shifted year: consistent across one
patient's studies (their order and spacing are real), not comparable between patients, and not the calendar
year. With option patients_csv=<MIMIC-IV hosp/patients.csv(.gz)> (another credentialed PhysioNet project;
relative to root or absolute): `sex` from its gender (F/M) and the age at each study, anchor_age + (study year -
anchor_year) when anchor_year is there (both in the same shifted time; MIMIC-IV gives anchor_age 91 to everyone
over 89), else anchor_age, -> age_band. A subject the file lacks has no sex/age (stats['sex_known'] counts).

One pair per image (dicom_id); study = study_id; patient = subject_id. Labels: the CheXpert labeller
file shipped with MIMIC-CXR-JPG; blank (not mentioned) -> `blank_as` (default 0.0), -1 -> NaN.
A study whose report file is missing is dropped and counted (stats['dropped_missing_report']).
"""

from __future__ import annotations

import logging
import re
import zipfile
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
    find_optional,
    image_stats,
    label_columns,
    make_reader,
    read_table,
    require_root,
)
from backend.sources.schema import (
    AGE_RANGE,
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

METADATA = "mimic-cxr-2.0.0-metadata.csv"
CHEXPERT = "mimic-cxr-2.0.0-chexpert.csv"
SPLIT = "mimic-cxr-2.0.0-split.csv"
_HEADING = re.compile(r"^\s*([A-Z][A-Z /&()-]{2,40}):", re.M)
_FINDINGS_NAMES = ("FINDINGS", "FINDING", "FINDINGS AND IMPRESSION")
_IMPRESSION_NAMES = ("IMPRESSION", "IMPRESSIONS", "CONCLUSION", "CONCLUSIONS", "SUMMARY")


def parse_report(text: str) -> tuple[str, str]:
    """(findings, impression) of a MIMIC-CXR report ('' when a section is absent).

    Sections run from a heading 'NAME:' at the start of a line to the next heading. A report with
    neither heading keeps its last paragraph as the impression (as MIMIC-CXR's own section parser does)."""
    sections: dict[str, str] = {}
    heads = list(_HEADING.finditer(text))
    for k, head in enumerate(heads):
        end = heads[k + 1].start() if k + 1 < len(heads) else len(text)
        name = head.group(1).strip()
        body = " ".join(text[head.end():end].split())
        if body:
            sections[name] = (sections.get(name, "") + " " + body).strip()
    findings = next((sections[n] for n in _FINDINGS_NAMES if n in sections), "")
    impression = next((sections[n] for n in _IMPRESSION_NAMES if n in sections), "")
    if not findings and not impression:
        paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip() and "FINAL REPORT" not in p]
        last = paragraphs[-1] if paragraphs else ""
        impression = "" if _HEADING.match(last) else " ".join(last.split())
    return findings, impression


def study_folder(subject_id: int | str, study_id: int | str) -> str:
    """files/pXX/pXXXXXXXX/sXXXXXXXX (relative), the official path of a study."""
    subject = str(subject_id)
    return f"files/p{subject[:2]}/p{subject}/s{study_id}"


REPORTS_ZIP = "mimic-cxr-reports.zip"
_REPORT_ENTRY = re.compile(r"(?:^|/)files/p\d+/p(\d+)/s(\d+)\.txt$")


class ReportFiles:
    """The MIMIC-CXR reports, where the publisher's download leaves them: `mimic-cxr-reports.zip` read in place
    (entries files/pXX/pXXXXXXXX/sXXXXXXXX.txt, with or without a top folder), or the extracted folder named at
    either level (the folder that holds files/, or files/ itself). `text(subject, study)` -> the report or None."""

    def __init__(self, location: Path) -> None:
        self.location = location
        self._zip: zipfile.ZipFile | None = None
        self._entries: dict[tuple[str, str], str] = {}
        if location.is_file():
            try:
                self._zip = zipfile.ZipFile(location)
                names = self._zip.namelist()
            except (zipfile.BadZipFile, OSError) as exc:
                raise SourceError(f"MIMIC-CXR reports archive {str(location)!r} is not a readable zip file ({exc}); "
                                  f"download {REPORTS_ZIP} again from physionet.org/content/mimic-cxr.") from exc
            for name in names:
                match = _REPORT_ENTRY.search(name)
                if match:
                    self._entries[(match.group(1), match.group(2))] = name
            self.base = location
        else:
            self.base = location.parent if location.name == "files" and not (location / "files").is_dir() else location

    def text(self, subject_id: object, study_id: object) -> str | None:
        if self._zip is not None:
            name = self._entries.get((str(subject_id), str(study_id)))
            return self._zip.read(name).decode("utf-8", errors="replace") if name is not None else None
        path = self.base / f"{study_folder(subject_id, study_id)}.txt"
        return path.read_text(errors="replace") if path.is_file() else None

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def report_files(root: Path, reports_root: str | None) -> ReportFiles:
    """Where the reports are: `reports_root` (the zip, or the extracted folder at either level; relative to root
    or absolute), else root's mimic-cxr-reports.zip, mimic-cxr-reports/ folder or root itself."""
    if reports_root is not None:
        given = Path(reports_root).expanduser()
        given = given if given.is_absolute() else root / given
        if not given.exists():
            raise SourceError(f"MIMIC-CXR reports {str(given)!r} do not exist; pass reports_root=<{REPORTS_ZIP} as "
                              "downloaded, or the folder it was extracted into>.")
        return ReportFiles(given)
    for candidate in (root / REPORTS_ZIP, root / "mimic-cxr-reports"):
        if candidate.exists():
            return ReportFiles(candidate)
    return ReportFiles(root)


def read_study_reports(reports: ReportFiles, studies: pd.DataFrame) -> pd.DataFrame:
    """study_id, findings, impression for every (subject_id, study_id) whose report exists."""
    rows = []
    for subject, study in zip(studies["subject_id"], studies["study_id"], strict=True):
        text = reports.text(subject, study)
        if text is not None:
            findings, impression = parse_report(text)
            rows.append({"study_id": study, "findings": findings or None, "impression": impression or None})
    return pd.DataFrame(rows, columns=["study_id", "findings", "impression"])


def _labels(root: Path, blank_as: float) -> pd.DataFrame | None:
    path = find_optional(root, (CHEXPERT,))
    if path is None:
        log.warning("mimic-cxr: no %s(.gz) in %s; labels will be NaN", CHEXPERT, root)
        return None
    table = read_table(path, ["study_id"], "MIMIC-CXR chexpert labels")
    labels = label_columns(table, blank_as, what=f"MIMIC-CXR labels {str(path)!r}")
    return pd.concat([table[["study_id"]], labels], axis=1).drop_duplicates("study_id")


def _split(root: Path) -> pd.DataFrame | None:
    path = find_optional(root, (SPLIT,))
    if path is None:
        log.warning("mimic-cxr: no %s(.gz) in %s; using the patient-hash split", SPLIT, root)
        return None
    table = read_table(path, ["dicom_id", "split"], "MIMIC-CXR split file", dtype={"dicom_id": str})
    return pd.DataFrame({"dicom_id": table["dicom_id"], "split": normalise_split(table["split"], str(path))})


def _official_split(pairs: pd.DataFrame, split: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The split file's split for each image. An image the file lacks (a partial or older file) takes the split
    its patient's other images have in the file, else the patient-hash split; returns (pairs, images the file
    lacks). SourceError when the file itself puts one patient in two splits."""
    out = pairs.merge(split, on="dicom_id", how="left")
    listed = out.dropna(subset=["split"]).groupby("patient_id")["split"]
    mixed = listed.nunique()
    if (mixed > 1).any():
        raise SourceError(f"The MIMIC-CXR split file puts patient {mixed[mixed > 1].index[0]!r} in two splits "
                          f"({', '.join(sorted(listed.unique()[mixed[mixed > 1].index[0]]))}); use the official "
                          f"{SPLIT}.gz or remove the file to use the patient-hash split.")
    missing = out["split"].isna()
    if missing.any():
        of_patient = out["patient_id"].map(listed.first())
        hashed = pd.Series(assign_split(out["patient_id"]), index=out.index)
        out["split"] = out["split"].fillna(of_patient).fillna(hashed)
        log.warning("mimic-cxr: %d image(s) are not in the split file; each takes its patient's split from the file, "
                    "or the patient-hash split for a patient the file does not list", int(missing.sum()))
    return out, int(missing.sum())


PATIENTS_COLUMNS = ("subject_id", "gender", "anchor_age")  # MIMIC-IV hosp/patients.csv; anchor_year optional


def _patients(base: Path, patients_csv: str) -> pd.DataFrame:
    """subject_id, gender, anchor_age (and anchor_year when present) of MIMIC-IV's patients.csv(.gz)."""
    path = Path(patients_csv).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise SourceError(f"MIMIC-IV patients file {str(path)!r} does not exist; pass patients_csv=<the MIMIC-IV "
                          f"hosp/patients.csv(.gz)> with columns {', '.join(PATIENTS_COLUMNS)} (and anchor_year).")
    table = read_table(path, PATIENTS_COLUMNS, "MIMIC-IV patients file")
    keep = [c for c in (*PATIENTS_COLUMNS, "anchor_year") if c in table.columns]
    return table[keep].drop_duplicates("subject_id")


def _side_information(table: pd.DataFrame, meta_path: Path, patients: pd.DataFrame | None) -> pd.DataFrame:
    """year (shifted, from StudyDate) and, with the patients file, sex and age at the study (see module doc)."""
    year = None
    if "StudyDate" in table.columns:
        year = (pd.to_numeric(table["StudyDate"], errors="coerce") // 10000).reset_index(drop=True)
    what = f"MIMIC-CXR-JPG metadata {str(meta_path)!r}"
    if patients is None:
        return side_information(what, year=year, strict=False)
    info = table[["subject_id"]].reset_index(drop=True).merge(patients, on="subject_id", how="left")
    age = pd.to_numeric(info["anchor_age"], errors="coerce")
    if "anchor_year" in info.columns and year is not None:
        age = age + (year - pd.to_numeric(info["anchor_year"], errors="coerce")).fillna(0)
    return side_information(what + " with the MIMIC-IV patients file", sex=info["gender"],
                            age=age.clip(upper=AGE_RANGE[1]), year=year, strict=False)


def load_mimic_cxr(root: str | None = None, section_policy: str = "findings+impression", *,
                   reports_root: str | None = None, blank_as: float = 0.0, check_images: bool = False,
                   patients_csv: str | None = None, **options: object) -> SourceData:
    """Load MIMIC-CXR-JPG + reports as the canonical pair table (see module docstring).

    check_images: verify every JPEG first, skipping missing/corrupt ones: a full decode of each, in parallel
    threads, slow on the full 377k set the first time; later loads reuse the verdicts of unchanged files
    (backend.sources.image_checks)."""
    if options:
        raise SourceError(f"Unknown option(s) for source 'mimic-cxr': {sorted(options)}; "
                          "known: reports_root, blank_as, check_images, patients_csv.")

    base = require_root(root if root is not None else data_root("mimic-cxr"), "mimic-cxr", "CXR_MIMIC_ROOT")
    meta_path = find_file(base, (METADATA,), "MIMIC-CXR-JPG metadata file",
                          "Point root at the MIMIC-CXR-JPG 2.0.0 folder (physionet.org/content/mimic-cxr-jpg).")
    meta = read_table(meta_path, ["dicom_id", "subject_id", "study_id", "ViewPosition"], "MIMIC-CXR-JPG metadata",
                      dtype={"dicom_id": str})
    patients = _patients(base, patients_csv) if patients_csv is not None else None
    studies = meta[["subject_id", "study_id"]].drop_duplicates()
    files = report_files(base, reports_root)
    try:
        reports = read_study_reports(files, studies)
    finally:
        files.close()
    missing_reports = len(studies) - len(reports)
    if len(reports) == 0:
        raise SourceError(f"No MIMIC-CXR report of this metadata's studies (files/pXX/pXXXXXXXX/sXXXXXXXX.txt) in "
                          f"{str(files.location)!r}; pass reports_root=<{REPORTS_ZIP} from the MIMIC-CXR project, or "
                          "the folder it was extracted into>.")
    table = meta.merge(reports, on="study_id", how="inner")
    labels = _labels(base, blank_as)
    if labels is not None:
        table = table.merge(labels, on="study_id", how="left")
    else:
        table = table.assign(**{lab: np.nan for lab in LABELS})
    pairs = pd.DataFrame({
        "pair_id": table["dicom_id"].astype(str), "study_id": "s" + table["study_id"].astype(str),
        "patient_id": "p" + table["subject_id"].astype(str),
        "image_path": [f"{study_folder(p, s)}/{d}.jpg" for p, s, d in
                       zip(table["subject_id"], table["study_id"], table["dicom_id"], strict=True)],
        "view": [normalise_view(v) for v in table["ViewPosition"]], "findings": table["findings"],
        "impression": table["impression"], "site": "mimic-cxr", "dicom_id": table["dicom_id"].astype(str),
    })
    side = _side_information(table, meta_path, patients)
    pairs = pd.concat([pairs, table[list(LABELS)].reset_index(drop=True), side], axis=1)
    pairs, dropped = apply_section_policy(pairs, section_policy)
    skipped = 0
    if check_images:
        pairs, skipped = drop_bad_images(pairs, base, source="mimic-cxr")
    split = _split(base)
    not_in_split = 0
    if split is not None:
        pairs, not_in_split = _official_split(pairs, split)
    else:
        pairs["split"] = assign_split(pairs["patient_id"])
    out = finalize_pairs(pairs, "mimic-cxr")
    stats = {"images": len(meta), "pairs": len(out), "studies": int(out["study_id"].nunique()),
             "patients": int(out["patient_id"].nunique()), "dropped_empty_report": dropped,
             "dropped_missing_report": int(missing_reports), **image_stats(check_images, skipped),
             "official_split": int(split is not None), **({"not_in_split_file": not_in_split} if split is not None else {}), "labelled": int(labels is not None), **side_stats(out)}
    return SourceData(name="mimic-cxr", pairs=out, read_image=make_reader(base, hint=_IMAGE_HINT), root=str(base),
                      stats=stats, image_file=lambda p: base / p)


_IMAGE_HINT = "point root at the MIMIC-CXR-JPG folder that holds files/pXX/... (the image may be absent or partial)"

register_source(SourceInfo(
    name="mimic-cxr",
    description="MIMIC-CXR-JPG + reports (PhysioNet, credentialed): point at your local copy.",
    loader=load_mimic_cxr,
    needs_root=True,
    credentialed=True,
    unmatchable=(("year", "MIMIC-CXR shifts each patient's dates by its own random offset (into 2100-2200), so "
                  "years compare only within one patient and a pool matched on them models no real attacker. "
                  "Match on sex+age_band (with patients_csv=) or view instead."),),
    match_hints=tuple((a, "MIMIC-CXR gives no sex or age: pass --source-option patients_csv=<MIMIC-IV "
                          "hosp/patients.csv.gz> (MIMIC-IV, another credentialed PhysioNet project).")
                      for a in ("sex", "age_band")),
))
