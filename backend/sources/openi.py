"""OpenI: the Indiana University chest X-ray collection (NLM), in its official layout.

Layout under `root` (NLM's files unless said otherwise; everything but the reports is optional):
    NLMCXR_reports.tgz            ecgen-radiology/1.xml ... 3955.xml (read straight from the archive)
      or ecgen-radiology/         the same XML files, extracted
    NLMCXR_png/                   CXR<uid>_IM-<a>-<b>.png, one per <parentImage id=...> (or the PNGs directly
                                  in root, as `tar xzf NLMCXR_png.tgz` leaves them)
    nlmcxr_dicom_metadata.csv(.gz)  one row per image id with the DICOM 'View Position' (PA, AP, LL, ...):
                                  NOT part of NLM's download; torchxrayvision derives it from NLM's DICOM
                                  files and publishes it. Without it every view is UNKNOWN (a view pool is
                                  refused, never a silent random pool)

or the widely used Kaggle copy ("Chest X-rays (Indiana University)"), read when NLM's reports are absent:
    indiana_reports.csv           uid, MeSH (";"-separated), findings, impression, ...   (one row per report)
    indiana_projections.csv       uid, filename (<n>_IM-....dcm.png), projection (Frontal / Lateral)
    images/images_normalized/     the PNGs by filename (or images_normalized/ in root)
  its uid is NLM's report number and CXR<filename without .dcm.png> NLM's image id, so pair and study ids are
  those of NLM's layout; the view is the projection (FRONTAL / LATERAL).

Pairs: one per parentImage; study = report XML (study_id 'openi-<n>' for ecgen-radiology/<n>.xml).
OpenI has NO patient identifier across reports, so patient_id = study_id: a patient with several reports
counts as several patients (patient-level linkage and patient-disjoint splits are per report here).
Labels: the rule-based labeller (backend.sources.labeler) over FINDINGS+IMPRESSION, plus MeSH positives.
Images are read lazily: the pairs load without the PNG folder; reading a missing image raises
ImageReadError naming the file. Provenance and licence: CC BY-NC-ND 4.0 (stated in each XML).
"""

from __future__ import annotations

import logging
import re
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from backend.errors import SourceError
from backend.settings import data_root
from backend.sources import SourceInfo, register_source
from backend.sources.files import (
    drop_bad_images,
    find_file,
    find_optional,
    image_stats,
    make_reader,
    read_table,
    require_root,
)
from backend.sources.labeler import label_reports
from backend.sources.schema import (
    LABELS,
    SourceData,
    apply_section_policy,
    assign_split,
    finalize_pairs,
    normalise_view,
)

log = logging.getLogger(__name__)

REPORTS_ARCHIVE = "NLMCXR_reports.tgz"
REPORTS_DIR = "ecgen-radiology"
PNG_DIR = "NLMCXR_png"
METADATA_NAMES = ("nlmcxr_dicom_metadata.csv",)
_IMAGE_HINT = ("the OpenI PNGs come from NLM's NLMCXR_png.tgz: python -m backend download openi --dest <root> "
               "(extracts them into <root>/NLMCXR_png/)")
_XML_NAME = re.compile(r"(?:^|/)ecgen-radiology/(\d+)\.xml$")
_ALT_ID = re.compile(r"^(CXR\d+)_\d+_(IM-.*)$")  # CXR1_1_IM-0001-3001 is CXR1_IM-0001-3001 in the metadata


@dataclass
class OpenIReport:
    """One parsed report XML."""

    number: int
    uid: str
    findings: str
    impression: str
    indication: str
    comparison: str
    image_ids: list[str] = field(default_factory=list)
    mesh: list[str] = field(default_factory=list)


def _text(node: ET.Element | None) -> str:
    return " ".join("".join(node.itertext()).split()) if node is not None else ""


def parse_report(xml_bytes: bytes, number: int) -> OpenIReport:
    """Parse one ecgen-radiology XML; SourceError naming the file when it is not valid XML."""
    try:
        tree = ET.fromstring(xml_bytes)
    except ET.ParseError as exc:
        raise SourceError(f"OpenI report ecgen-radiology/{number}.xml is not valid XML ({exc}); "
                          "re-download NLMCXR_reports.tgz.") from exc
    sections = {node.get("Label", "").upper(): _text(node) for node in tree.iter("AbstractText")}
    uid_node = tree.find("uId")
    mesh_node = tree.find("MeSH")
    return OpenIReport(
        number=number,
        uid=uid_node.get("id", f"CXR{number}") if uid_node is not None else f"CXR{number}",
        findings=sections.get("FINDINGS", ""),
        impression=sections.get("IMPRESSION", ""),
        indication=sections.get("INDICATION", ""),
        comparison=sections.get("COMPARISON", ""),
        image_ids=[n.get("id", "") for n in tree.iter("parentImage") if n.get("id")],
        mesh=[_text(m) for m in mesh_node] if mesh_node is not None else [],
    )


def _iter_xml(root: Path) -> Iterator[tuple[int, bytes]]:
    """(report number, XML bytes) from the archive, else from the extracted folder."""
    archive = root / REPORTS_ARCHIVE
    folder = root / REPORTS_DIR
    if archive.is_file():
        try:
            with tarfile.open(archive, "r:*") as tar:
                for member in tar:
                    match = _XML_NAME.search(member.name)
                    if member.isfile() and match:
                        handle = tar.extractfile(member)
                        if handle is not None:
                            yield int(match.group(1)), handle.read()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise SourceError(f"OpenI archive {str(archive)!r} is unreadable or truncated ({exc}); "
                              "delete it and download it again (python -m backend download openi).") from exc
        return
    if folder.is_dir():
        for path in folder.glob("*.xml"):
            if path.stem.isdigit():
                yield int(path.stem), path.read_bytes()
        return
    raise SourceError(f"No OpenI reports in {str(root)!r}: expected {REPORTS_ARCHIVE} or an extracted "
                      f"{REPORTS_DIR}/ folder (or the Kaggle copy's {KAGGLE_REPORTS}). Get NLM's with: "
                      f"python -m backend download openi --dest {root}")


def read_reports(root: str | Path) -> list[OpenIReport]:
    """Every report of the collection, sorted by report number."""
    reports = [parse_report(data, number) for number, data in _iter_xml(Path(root))]
    if not reports:
        raise SourceError(f"The OpenI reports in {str(root)!r} hold no ecgen-radiology/<n>.xml files; "
                          "re-download NLMCXR_reports.tgz.")
    return sorted(reports, key=lambda r: r.number)


KAGGLE_REPORTS = "indiana_reports.csv"
KAGGLE_PROJECTIONS = "indiana_projections.csv"
KAGGLE_IMAGE_DIRS = ("images/images_normalized", "images_normalized")


def is_kaggle(root: Path) -> bool:
    """Whether root holds the Kaggle copy and not NLM's reports (NLM's layout wins when both are there)."""
    return (not (root / REPORTS_ARCHIVE).is_file() and not (root / REPORTS_DIR).is_dir()
            and find_optional(root, (KAGGLE_REPORTS,)) is not None)


def read_kaggle(root: Path) -> tuple[list[OpenIReport], dict[str, str], dict[str, str]]:
    """(reports, image id -> view, image id -> image path relative to root) of the Kaggle copy."""
    reports_path = find_file(root, (KAGGLE_REPORTS,), "OpenI reports table")
    table = read_table(reports_path, ["uid", "findings", "impression"], "OpenI (Kaggle) reports table")
    proj_path = find_file(root, (KAGGLE_PROJECTIONS,), "OpenI (Kaggle) projections table",
                          f"It lists each image's filename and projection beside {KAGGLE_REPORTS}.")
    proj = read_table(proj_path, ["uid", "filename", "projection"], "OpenI (Kaggle) projections table")
    image_dir = next((d for d in KAGGLE_IMAGE_DIRS if (root / d).is_dir()), KAGGLE_IMAGE_DIRS[0])
    image_id = proj["filename"].astype(str).str.replace(r"\.dcm\.png$|\.png$", "", regex=True).radd("CXR")
    images = proj.assign(image_id=image_id).groupby("uid")["image_id"].apply(list).to_dict()
    text = lambda v: "" if pd.isna(v) else " ".join(str(v).split())  # noqa: E731
    reports = [OpenIReport(number=int(r.uid), uid=f"CXR{int(r.uid)}", findings=text(r.findings),
                           impression=text(r.impression), indication=text(getattr(r, "indication", "")),
                           comparison=text(getattr(r, "comparison", "")), image_ids=images.get(r.uid, []),
                           mesh=[m.strip() for m in text(getattr(r, "MeSH", "")).split(";") if m.strip()])
               for r in table.itertuples(index=False)]
    views = {i: _view(v) for i, v in zip(image_id, proj["projection"], strict=True)}
    paths = {i: f"{image_dir}/{f}" for i, f in zip(image_id, proj["filename"].astype(str), strict=True)}
    return sorted(reports, key=lambda r: r.number), views, paths


def read_views(root: Path) -> dict[str, str]:
    """image id -> normalised view from nlmcxr_dicom_metadata.csv(.gz); {} when the file is absent."""
    path = find_optional(root, METADATA_NAMES)
    if path is None:
        return {}
    try:
        table = pd.read_csv(path, usecols=["imageid", "View Position"], low_memory=False)
    except ValueError as exc:
        raise SourceError(f"OpenI metadata {str(path)!r} lacks the columns 'imageid' and 'View Position' "
                          f"({exc}); use the official nlmcxr_dicom_metadata.csv or remove it.") from exc
    return {str(i): _view(v) for i, v in zip(table["imageid"], table["View Position"], strict=True)}


def _view(value: object) -> str:
    view = normalise_view(value)
    return "LATERAL" if "LATERAL" in view else view


def _image_dir(root: Path) -> str:
    """The folder (relative to root) that holds the PNGs: NLMCXR_png/ unless they lie in root itself."""
    if not (root / PNG_DIR).is_dir() and any(root.glob("CXR*.png")):
        return ""
    return PNG_DIR


def resolve_image(root: Path, image_path: str) -> Path:
    """The file of an image_path, trying the metadata spelling of the id when the XML one is absent."""
    path = root / image_path
    if path.is_file():
        return path
    alt = _ALT_ID.sub(r"\1_\2", path.name)
    return path.with_name(alt) if alt != path.name and path.with_name(alt).is_file() else path


def report_table(reports: list[OpenIReport], views: dict[str, str], image_dir: str,
                 paths: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per parentImage, before labels, section policy and split (paths: image id -> file, when the
    layout names the files otherwise than <image_dir>/<id>.png)."""
    rows = []
    for rep in reports:
        for image_id in rep.image_ids:
            view = views.get(image_id) or views.get(_ALT_ID.sub(r"\1_\2", image_id)) or "UNKNOWN"
            rows.append({
                "pair_id": image_id, "study_id": f"openi-{rep.number}", "patient_id": f"openi-{rep.number}",
                "image_path": (paths or {}).get(image_id) or (f"{image_dir}/{image_id}.png" if image_dir
                                                              else f"{image_id}.png"),
                "view": view, "findings": rep.findings or None, "impression": rep.impression or None,
                "site": "openi", "mesh": "; ".join(rep.mesh), "report_number": rep.number,
            })
    return pd.DataFrame(rows)


def collection_stats(reports: list[OpenIReport]) -> dict[str, int]:
    """The archive counts in ../shared/data/openi/README.md (sections counted among reports with images)."""
    with_img = [r for r in reports if r.image_ids]
    texts = {" ".join(p for p in (r.findings, r.impression) if p) for r in with_img}
    return {
        "reports": len(reports), "reports_with_images": len(with_img),
        "image_ids": sum(len(r.image_ids) for r in reports),
        "with_findings": sum(bool(r.findings) for r in with_img),
        "with_impression": sum(bool(r.impression) for r in with_img),
        "with_both": sum(bool(r.findings and r.impression) for r in with_img),
        "distinct_findings_impression": len(texts),
    }


def load_openi(root: str | None = None, section_policy: str = "findings+impression", *, use_mesh: bool = True,
               check_images: bool | None = None, **options: object) -> SourceData:
    """Load OpenI as the canonical pair table (see module docstring).

    check_images: verify every PNG and skip missing/corrupt ones (counted in stats['skipped_images']);
    default: only when the PNG folder exists. use_mesh: add MeSH positives to the text labels."""
    if options:
        raise SourceError(f"Unknown option(s) for source 'openi': {sorted(options)}; known: use_mesh, check_images.")

    base = require_root(root if root is not None else data_root("openi"), "openi", "CXR_OPENI_ROOT")
    kaggle = is_kaggle(base)
    if kaggle:
        reports, views, paths = read_kaggle(base)
        image_dir = str(Path(next(iter(paths.values()), KAGGLE_IMAGE_DIRS[0])).parent)
    else:
        reports, views, paths, image_dir = read_reports(base), read_views(base), None, _image_dir(base)
    stats = collection_stats(reports)
    table = report_table(reports, views, image_dir, paths)
    texts = [" ".join(p for p in (r.findings, r.impression) if p) for r in reports]
    labels = label_reports(texts, [r.mesh for r in reports] if use_mesh else None)
    label_of = {r.number: labels[i] for i, r in enumerate(reports)}
    lab = np.stack([label_of[n] for n in table["report_number"]]) if len(table) else np.zeros((0, len(LABELS)))
    table = pd.concat([table, pd.DataFrame(lab, columns=list(LABELS))], axis=1)
    table, dropped = apply_section_policy(table, section_policy)
    skipped = 0
    png_present = image_dir == "" or (base / image_dir).is_dir()
    checked = bool(png_present if check_images is None else check_images)
    if checked:
        table, skipped = drop_bad_images(table, base, resolve_image, "openi")
    table["split"] = assign_split(table["patient_id"])
    pairs = finalize_pairs(table, "openi")
    stats.update(pairs=len(pairs), studies=int(pairs["study_id"].nunique()), patients=int(pairs["patient_id"].nunique()),
                 dropped_empty_report=dropped, images_folder_present=int(png_present), layout="kaggle" if kaggle else "nlm",
                 **image_stats(checked, skipped))
    log.debug("openi: %s", stats)
    return SourceData(name="openi", pairs=pairs, read_image=make_reader(base, resolve_image, _IMAGE_HINT), root=str(base), stats=stats,
                      image_file=lambda p: resolve_image(base, p))


REFERENCE_LABELS = "chexpert14_labels.json"
REFERENCE_ORDER: tuple[str, ...] = tuple(sorted(LABELS))  # that file lists the 14 labels ALPHABETICALLY


def label_agreement(root: str | Path | None = None, reference: str | Path | None = None, *,
                    use_mesh: bool = True) -> pd.DataFrame:
    """Per-label agreement of our rule-based labels with a CheXpert-labeller file (chexpert14_labels.json:
    {"ecgen-radiology/<n>.xml": [14 ints 0/1 in alphabetical label order]}).

    Labels are derived from FINDINGS+IMPRESSION of each referenced report. Returns one row per label
    (schema order) plus 'macro': n (reports compared, our uncertain NaN excluded), uncertain, ref_pos,
    our_pos, accuracy, kappa (Cohen's, sklearn; NaN when undefined)."""
    import json

    from sklearn.metrics import cohen_kappa_score


    base = require_root(root if root is not None else data_root("openi"), "openi", "CXR_OPENI_ROOT")
    ref_path = Path(reference) if reference is not None else base / REFERENCE_LABELS
    if not ref_path.is_file():
        raise SourceError(f"No reference label file {str(ref_path)!r}; pass reference=<chexpert14_labels.json>.")
    ref = json.loads(ref_path.read_text())
    reports = [r for r in read_reports(base) if f"{REPORTS_DIR}/{r.number}.xml" in ref]
    if not reports:
        raise SourceError(f"No report of {str(base)!r} is named in {str(ref_path)!r}; check both files.")
    texts = [" ".join(p for p in (r.findings, r.impression) if p) for r in reports]
    ours = label_reports(texts, [r.mesh for r in reports] if use_mesh else None)
    theirs = np.array([ref[f"{REPORTS_DIR}/{r.number}.xml"] for r in reports], dtype=np.float32)
    rows = []
    for j, label in enumerate(LABELS):
        y, d = theirs[:, REFERENCE_ORDER.index(label)], ours[:, j]
        ok = ~np.isnan(d)
        same = y[ok] == d[ok]
        kappa = float(cohen_kappa_score(y[ok], d[ok])) if len(set(y[ok]) | set(d[ok])) > 1 else float("nan")
        rows.append({"label": label, "n": int(ok.sum()), "uncertain": int((~ok).sum()), "ref_pos": int(y.sum()),
                     "our_pos": int(np.nansum(d)), "accuracy": float(same.mean()), "kappa": kappa})
    table = pd.DataFrame(rows)
    macro = {"label": "macro", "n": int(table["n"].min()), "uncertain": int(table["uncertain"].sum()),
             "ref_pos": int(table["ref_pos"].sum()), "our_pos": int(table["our_pos"].sum()),
             "accuracy": float(table["accuracy"].mean()), "kappa": float(table["kappa"].mean())}
    return pd.concat([table, pd.DataFrame([macro])], ignore_index=True)


register_source(SourceInfo(
    name="openi",
    description="Indiana University chest X-rays (OpenI, NLM): 3,955 reports, 7,470 images; public download.",
    loader=load_openi,
    needs_root=True,
    match_hints=(("view", "OpenI's views come from nlmcxr_dicom_metadata.csv(.gz), a table derived from NLM's "
                          "DICOM files by torchxrayvision (not in NLM's download; see docs/DATA.md): put it in the "
                          "OpenI folder."),),
))
