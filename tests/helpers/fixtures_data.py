"""Writers of tiny data trees in the EXACT official layouts (OpenI, MIMIC-CXR-JPG, CheXpert Plus), for tests.

Images are a few pixels, made with PIL; every writer returns what a test needs to check the load.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from backend.sources.schema import LABELS


def write_image(path: Path, seed: int = 0, size: int = 16, fmt: str | None = None) -> Path:
    """A tiny grayscale image (PNG or JPEG by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)
    Image.fromarray(arr, mode="L").save(path, format=fmt)
    return path


def write_corrupt(path: Path) -> Path:
    """A file with an image suffix whose bytes are not an image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an image")
    return path


# ---- OpenI ------------------------------------------------------------------------------------------

def openi_xml(number: int, findings: str, impression: str, image_ids: list[str], mesh: list[str] = ()) -> str:
    """One ecgen-radiology XML in NLM's format (trimmed to the elements a parser reads)."""
    sections = "".join(
        f'<AbstractText Label="{label}">{text}</AbstractText>\n'
        for label, text in (("COMPARISON", "None."), ("INDICATION", "Cough"), ("FINDINGS", findings),
                            ("IMPRESSION", impression))
    )
    images = "".join(
        f'<parentImage id="{i}"><figureId>F1</figureId><caption>Xray Chest PA and Lateral</caption>'
        f"<panel type=\"single\"><url>/hadoop/storage/radiology/extract/{i}.jpg</url></panel></parentImage>\n"
        for i in image_ids
    )
    mesh_xml = "".join(f"<major>{m}</major>" for m in mesh)
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<eCitation>\n<meta type="rr"/>\n'
        f'<uId id="CXR{number}"/>\n<pmcId id="{number}"/>\n<docSource>CXR</docSource>\n'
        "<MedlineCitation><Article><Abstract>\n"
        f"{sections}</Abstract></Article></MedlineCitation>\n<MeSH>{mesh_xml}</MeSH>\n{images}</eCitation>\n"
    )


OPENI_REPORTS = [
    # number, findings, impression, image ids, mesh
    (1, "The heart is normal in size. No pleural effusion or pneumothorax.", "Normal chest.",
     ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"], ["normal"]),
    (2, "Cardiomegaly. Small right pleural effusion.", "Cardiomegaly with effusion.",
     ["CXR2_IM-0652-1001", "CXR2_IM-0652-2001"], ["Cardiomegaly/mild"]),
    (3, "", "Possible pneumonia in the left lower lobe.", ["CXR3_IM-1384-1001"], []),
    (4, "", "", ["CXR4_IM-2050-1001"], []),  # empty report: dropped and counted
    (5, "Lungs are clear.", "No acute disease.", [], ["normal"]),  # no images: no pair
]


def write_openi(root: Path, *, archive: bool = True, images: bool = True, metadata: bool = True) -> Path:
    """OpenI layout: NLMCXR_reports.tgz (or ecgen-radiology/), NLMCXR_png/, nlmcxr_dicom_metadata.csv.gz."""
    root.mkdir(parents=True, exist_ok=True)
    xmls = {f"ecgen-radiology/{n}.xml": openi_xml(n, f, i, ids, m) for n, f, i, ids, m in OPENI_REPORTS}
    if archive:
        with tarfile.open(root / "NLMCXR_reports.tgz", "w:gz") as tar:
            for name, text in xmls.items():
                data = text.encode()
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    else:
        for name, text in xmls.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)
    ids = [i for *_, ids, _m in OPENI_REPORTS for i in ids]
    if images:
        for k, image_id in enumerate(ids):
            write_image(root / "NLMCXR_png" / f"{image_id}.png", seed=k)
    if metadata:
        views = {"CXR1_IM-0001-3001": "PA", "CXR1_IM-0001-4001": "LL", "CXR2_IM-0652-1001": "AP",
                 "CXR2_IM-0652-2001": "LATERAL"}
        meta = pd.DataFrame({"imageid": list(views), "Patient ID": [1, 1, 2, 2], "View Position": list(views.values())})
        with gzip.open(root / "nlmcxr_dicom_metadata.csv.gz", "wt") as fh:
            meta.to_csv(fh, index=False)
    return root


def write_openi_kaggle(root: Path) -> Path:
    """The Kaggle copy of OpenI: indiana_reports.csv, indiana_projections.csv, images/images_normalized/<n>_IM-....
    dcm.png, holding OPENI_REPORTS (the XML's CXR<n>_... image ids without 'CXR', frontal first)."""
    reports, projections = [], []
    for k, (n, findings, impression, ids, mesh) in enumerate(OPENI_REPORTS):
        reports.append({"uid": n, "MeSH": ";".join(mesh), "Problems": "normal", "image": "Xray Chest PA",
                        "indication": "Cough", "comparison": "None.", "findings": findings or None,
                        "impression": impression or None})
        for v, image_id in enumerate(ids):
            name = image_id.replace("CXR1_1_", "CXR1_").removeprefix("CXR") + ".dcm.png"
            projections.append({"uid": n, "filename": name, "projection": "Frontal" if v == 0 else "Lateral"})
            write_image(root / "images" / "images_normalized" / name, seed=10 * k + v)
    pd.DataFrame(reports).to_csv(root / "indiana_reports.csv", index=False)
    pd.DataFrame(projections).to_csv(root / "indiana_projections.csv", index=False)
    return root


# ---- MIMIC-CXR-JPG ----------------------------------------------------------------------------------

MIMIC_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough

 COMPARISON:  None.

 FINDINGS:

 {findings}

 IMPRESSION:

 {impression}
"""


def write_mimic(root: Path, n_patients: int = 3, studies_per_patient: int = 2, gz: bool = True) -> dict:
    """MIMIC-CXR-JPG layout + report files: files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom>.jpg and sXXXXXXXX.txt,
    mimic-cxr-2.0.0-{metadata,chexpert,split}.csv(.gz). Two images (PA + LATERAL) per study."""
    meta, chex, split = [], [], []
    splits = ["train", "validate", "test"]
    for p in range(n_patients):
        subject = 10000032 + p * 1111
        for s in range(studies_per_patient):
            study = 50000000 + p * 100 + s
            folder = root / "files" / f"p{str(subject)[:2]}" / f"p{subject}"
            (folder).mkdir(parents=True, exist_ok=True)
            (folder / f"s{study}.txt").write_text(MIMIC_REPORT.format(
                findings=f"Patient {p} study {s}: there is a small left pleural effusion.",
                impression="Small left effusion. No pneumothorax."))
            for v, view in enumerate(("PA", "LATERAL")):
                dicom = f"{p:02d}{s:02d}{v:02d}aa-bbbbbbbb-cccccccc-dddddddd-eeeeeeee"
                write_image(folder / f"s{study}" / f"{dicom}.jpg", seed=p * 10 + s * 2 + v, fmt="JPEG")
                meta.append({"dicom_id": dicom, "subject_id": subject, "study_id": study,
                             "PerformedProcedureStepDescription": "CHEST (PA AND LAT)", "ViewPosition": view,
                             "Rows": 16, "Columns": 16, "StudyDate": 21800506, "StudyTime": 213014.531,
                             "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)",
                             "ViewCodeSequence_CodeMeaning": "postero-anterior",
                             "PatientOrientationCodeSequence_CodeMeaning": "Erect"})
                split.append({"dicom_id": dicom, "study_id": study, "subject_id": subject, "split": splits[p % 3]})
            row = {"subject_id": subject, "study_id": study, **dict.fromkeys(LABELS, "")}
            row.update({"Pleural Effusion": 1.0, "Pneumothorax": 0.0, "Cardiomegaly": -1.0})
            chex.append(row)
    suffix = ".csv.gz" if gz else ".csv"
    for name, rows in (("metadata", meta), ("chexpert", chex), ("split", split)):
        pd.DataFrame(rows).to_csv(root / f"mimic-cxr-2.0.0-{name}{suffix}", index=False)
    return {"n_images": len(meta), "n_studies": len(chex), "meta": meta}


def zip_mimic_reports(root: Path, archive: Path, top: str = "") -> Path:
    """Move the report files of a write_mimic tree into a zip as the MIMIC-CXR project ships them
    (mimic-cxr-reports.zip: entries files/pXX/pXXXXXXXX/sXXXXXXXX.txt, under `top` when given)."""
    import zipfile

    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        for txt in sorted((root / "files").rglob("*.txt")):
            out.write(txt, f"{top}{txt.relative_to(root).as_posix()}")
            txt.unlink()
    return archive


# ---- CheXpert Plus ----------------------------------------------------------------------------------

CHEXPERT_PLUS_CSV = "df_chexpert_plus_240401.csv"


def write_chexpert_plus(root: Path, n_patients: int = 4, with_split: bool = False, png: bool = True) -> dict:
    """CheXpert Plus layout: df_chexpert_plus_240401.csv (path_to_image like train/patient00001/study1/
    view1_frontal.jpg), the images under PNG/ (as .png), chexbert_labels/report_fixed.json (JSON lines)."""
    rows, labels = [], []
    for p in range(n_patients):
        pid = f"patient{p + 1:05d}"
        for s, views in ((1, ("frontal", "lateral")), (2, ("frontal",))):
            for v, kind in enumerate(views, start=1):
                rel = f"train/{pid}/study{s}/view{v}_{kind}.jpg"
                if png:
                    write_image(root / "PNG" / rel.replace(".jpg", ".png"), seed=p * 7 + s * 3 + v)
                else:
                    write_image(root / rel, seed=p * 7 + s * 3 + v, fmt="JPEG")
                row = {"path_to_image": rel, "path_to_dcm": rel.replace(".jpg", ".dcm"),
                       "frontal_lateral": kind.capitalize(), "ap_pa": "AP" if kind == "frontal" else None,
                       "deid_patient_id": pid, "patient_report_date_order": s, "report": "full report text",
                       "section_findings": f"Findings of {pid} study {s}: small right pleural effusion.",
                       "section_impression": "Right effusion." if s == 1 else "",
                       "age": 60, "sex": "Female"}
                if with_split:
                    row["split"] = "valid" if p == 0 else "train"
                rows.append(row)
                labels.append({"path_to_image": rel, **dict.fromkeys(LABELS), "Pleural Effusion": 1.0,
                               "Edema": -1.0, "No Finding": None})
    pd.DataFrame(rows).to_csv(root / CHEXPERT_PLUS_CSV, index=False)
    (root / "chexbert_labels").mkdir(parents=True, exist_ok=True)
    with open(root / "chexbert_labels" / "report_fixed.json", "w") as fh:
        for rec in labels:
            fh.write(json.dumps(rec) + "\n")
    return {"n_images": len(rows), "rows": rows}
