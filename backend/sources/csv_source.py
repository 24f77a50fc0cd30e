"""`csv`: a user's own folder of image-report pairs described by one CSV file.

Layout under `root`:
    pairs.csv (or the file named by option csv=..., relative to root or absolute; .csv.gz works too)
    the images, at the paths the CSV gives (relative to root, or absolute)

Columns (required): image_path, patient_id, and report text as `report` and/or `findings`/`impression`.
Optional: study_id (default: one study per distinct (patient_id, report)), view, split (train/val/test;
'valid'/'validate' accepted; default: patient-hash split), site (default 'csv'), and any of the 14
CheXpert label columns with their CheXpert names (1 / 0 / -1 uncertain / blank = not mentioned).

Optional side information (what pools can be matched on besides labels, view and site):
`sex` (F/female/woman/w or M/male/man/m, any case; blank or unknown/u/unk = unknown), `age` (years at the study,
a number from 0 to 120; its band is derived) or `age_band` (one of 0-17, 18-39, 40-59, 60-79, 80+; used only
without an age column), `year` (of the study, a whole number from 1900 to 2300). A bad value is refused with a
SourceError naming its row (counted from 1 after the header) and column; blank cells are unknown, and a pool
cannot match on a column with unknown cells.

Label cells: a number equal to 1 (positive), 0 (negative) or -1 (uncertain), written e.g. 1, 0, -1, 1.0, 0.0,
-1.0; or blank (an empty cell, NaN, NA). Uncertain (-1) becomes NaN (unknown) as everywhere in the project and
blank becomes 0 (not mentioned = negative). Anything else (yes, True, positive, 2 ...) is refused with a
SourceError naming the column and the first bad values.

Refused with a SourceError: a CSV with a header but no rows; duplicate rows (the same image_path twice, or
the same pair_id twice when a pair_id column is given); relative image paths that lead outside the folder
(e.g. '../x.png'; absolute paths are allowed).

Section policy: when findings/impression columns exist they are used; a `report` column alone is the
text for every policy. Pairs with no text are dropped (stats['dropped_empty_report']); missing or corrupt
images are skipped (stats['skipped_images']) unless check_images=False.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from backend.errors import SourceError
from backend.sources import SourceInfo, register_source
from backend.sources.files import (
    drop_bad_images,
    image_stats,
    inside_root,
    label_columns,
    make_reader,
    read_table,
    require_root,
)
from backend.sources.schema import (
    LABELS,
    SECTION_POLICIES,
    SourceData,
    apply_section_policy,
    assign_split,
    finalize_pairs,
    normalise_view,
    side_information,
    side_stats,
)

log = logging.getLogger(__name__)

DEFAULT_CSV = "pairs.csv"
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validate": "val",
                  "validation": "val", "test": "test", "testing": "test"}


def normalise_split(values: pd.Series, what: str) -> pd.Series:
    """Map split names (train/valid/validate/test ...) to train/val/test; SourceError on anything else."""
    mapped = values.astype(str).str.strip().str.lower().map(_SPLIT_ALIASES)
    if mapped.isna().any():
        bad = sorted({"(blank)" if pd.isna(v) else str(v) for v in values[mapped.isna()]})[:5]
        raise SourceError(f"{what}: unknown split value(s) {bad}; use train, val (or valid/validate) and test.")
    return mapped


def _text_columns(table: pd.DataFrame, path: Path) -> tuple[pd.Series, pd.Series]:
    """(findings, impression) columns; a lone `report` column stands in for both sections."""
    has_sections = "findings" in table.columns or "impression" in table.columns
    if not has_sections and "report" not in table.columns:
        raise SourceError(f"CSV {str(path)!r} has no report text: add a column 'report' (or 'findings' and/or "
                          "'impression').")
    empty = pd.Series([None] * len(table), index=table.index, dtype=object)
    if has_sections:
        return table.get("findings", empty), table.get("impression", empty)
    return table["report"], empty


def _resolve_csv(base: Path, csv: str | None) -> Path:
    name = csv or DEFAULT_CSV
    path = Path(name) if Path(name).is_absolute() else base / name
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.is_file():
            return candidate
    raise SourceError(f"No CSV file {str(path)!r}; put your pairs in {DEFAULT_CSV} or pass csv=<file name>.")


def load_csv_source(root: str | None = None, section_policy: str = "findings+impression", *, csv: str | None = None,
                    check_images: bool = True, site: str = "csv", **options: object) -> SourceData:
    """Load a user's folder (see module docstring) as the canonical pair table."""
    if options:
        raise SourceError(f"Unknown option(s) for source 'csv': {sorted(options)}; known: csv, check_images, site.")
    if section_policy not in SECTION_POLICIES:
        raise SourceError(f"Unknown section policy {section_policy!r}; choose one of {', '.join(SECTION_POLICIES)}.")
    base = require_root(root, "csv")
    path = _resolve_csv(base, csv)
    table = read_table(path, ["image_path", "patient_id"], "CSV", dtype={"patient_id": str, "study_id": str})
    if table.empty:
        raise SourceError(f"CSV {str(path)!r} has a header but no rows; add one row per image-report pair.")
    _check_duplicates(table, path)
    misses = near_misses([str(c) for c in table.columns])
    for col, name in misses.items():
        log.warning("csv %s: column %r is not read; did you mean %r? Rename it to use it.", path, col, name)
    inside_root(base, table["image_path"].astype(str), f"CSV {str(path)!r}")
    findings, impression = _text_columns(table, path)
    report_only = "findings" not in table.columns and "impression" not in table.columns
    pairs = pd.DataFrame({
        "image_path": table["image_path"].astype(str),
        "patient_id": table["patient_id"].astype(str).str.strip(),
        "view": [normalise_view(v) for v in table["view"]] if "view" in table.columns else "UNKNOWN",
        "findings": findings,
        "impression": impression,
        "site": table["site"].astype(str) if "site" in table.columns else site,
    })
    if (pairs["patient_id"].isin(["", "nan", "None"])).any() or table["patient_id"].isna().any():
        raise SourceError(f"CSV {str(path)!r}: some rows have no patient_id; every row needs one.")
    side = side_information(f"CSV {str(path)!r}", **{key: table[col] for key, col in (
        ("sex", "sex"), ("age", "age"), ("age_band_values", "age_band"), ("year", "year")) if col in table.columns})
    pairs = pd.concat([pairs, label_columns(table, what=f"CSV {str(path)!r}"), side], axis=1)
    policy = "findings" if report_only else section_policy  # a lone report column is the text for every policy
    pairs["pair_id"] = [f"csv-{i}" for i in range(len(pairs))]
    if "split" in table.columns:
        pairs["split"] = normalise_split(table["split"], f"CSV {str(path)!r}").to_numpy()
    pairs, dropped = apply_section_policy(pairs, policy)
    pairs["study_id"] = _study_ids(table if "study_id" in table.columns else None, pairs)
    skipped = 0
    if check_images:
        pairs, skipped = drop_bad_images(pairs, base, source="csv")
    if "split" not in pairs.columns:
        pairs["split"] = assign_split(pairs["patient_id"])
    out = finalize_pairs(pairs, "csv")
    stats = {"rows": len(table), "pairs": len(out), "studies": int(out["study_id"].nunique()),
             "patients": int(out["patient_id"].nunique()), "dropped_empty_report": dropped, **image_stats(check_images, skipped),
             "labelled_columns": sum(lab in table.columns for lab in LABELS), **side_stats(out),
             **({"unread_columns": misses} if misses else {})}
    return SourceData(name="csv", pairs=out, read_image=make_reader(base), root=str(base), stats=stats,
                      image_file=lambda p: base / p)


KNOWN_COLUMNS: tuple[str, ...] = ("image_path", "patient_id", "study_id", "pair_id", "report", "findings", "impression",
                                  "view", "split", "site", "sex", "age", "age_band", "year", *LABELS)


def _squash(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def near_misses(columns: list[str]) -> dict[str, str]:
    """Columns the source does not read that look like one it does (Pleural_Effusion -> Pleural Effusion,
    PatientSex -> sex, ViewPosition -> view): {column: the known name}, for known names the table lacks. Same
    letters ignoring case and separators, a known name that ends the column (PatientSex), or a close spelling."""
    import difflib

    absent = [k for k in KNOWN_COLUMNS if k not in columns]
    squashed = {_squash(k): k for k in absent}
    out = {}
    for col in columns:
        if col in KNOWN_COLUMNS:
            continue
        key = _squash(col)
        hit = squashed.get(key) or next((k for sq, k in squashed.items() if len(sq) >= 3 and
                                         (key.endswith(sq) or key.startswith(sq))), None)
        hit = hit or next(iter(difflib.get_close_matches(key, list(squashed), n=1, cutoff=0.85)), None)
        if hit is not None:
            out[col] = squashed.get(hit, hit)
    return out


def _check_duplicates(table: pd.DataFrame, path: Path) -> None:
    """SourceError naming the first duplicated pair_id (when that column exists) or image_path values."""
    for column in ("pair_id", "image_path"):
        if column not in table.columns:
            continue
        values = table[column].astype(str).str.strip()
        dup = values[values.duplicated(keep=False)]
        if len(dup):
            first = list(dict.fromkeys(dup))[:5]
            raise SourceError(f"CSV {str(path)!r} lists the same {column} more than once ({dup.nunique()} value(s), "
                              f"e.g. {first}); keep one row per image-report pair.")


def _study_ids(table: pd.DataFrame | None, pairs: pd.DataFrame) -> list[str]:
    """The CSV's study_id per kept pair, else one study per distinct (patient_id, report)."""
    if table is not None:
        row = pairs["pair_id"].str.removeprefix("csv-").astype(int)
        return table["study_id"].astype(str).to_numpy()[row.to_numpy()].tolist()
    keys = pd.Series(list(zip(pairs["patient_id"], pairs["report"], strict=True)))
    codes = pd.factorize(keys)[0]
    return [f"csv-study-{c}" for c in codes]


register_source(SourceInfo(
    name="csv",
    description="Your own folder: a CSV of image_path, report (or findings/impression), patient_id, optional labels.",
    loader=load_csv_source,
    needs_root=True,
))
