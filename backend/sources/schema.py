"""The canonical pair table that every source produces (DESIGN.md section 2), and the helpers
every source shares: label list, section policy, patient-disjoint split, validation.

One row per image-report pair. Pairs with the same study_id share one report.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from backend.errors import SourceError
from backend.specs import MATCH_ATTRIBUTES

log = logging.getLogger(__name__)

# CheXpert order. Values: 1.0 positive, 0.0 negative, NaN unknown/uncertain (-1 becomes NaN).
LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

BASE_COLUMNS: tuple[str, ...] = (
    "pair_id",
    "study_id",
    "patient_id",
    "image_path",
    "view",
    "findings",
    "impression",
    "report",
    "split",
    "site",
)
PAIR_COLUMNS: tuple[str, ...] = BASE_COLUMNS + LABELS
# Optional side information: what an attacker may know beside the image and use to shrink the pool
# (AuditSpec.match). A source provides the columns it can fill; `age` (years at the study) is kept for reading,
# pools match on `age_band`. Images and report texts never depend on them, so the embedding cache key leaves
# them out (backend.embed.compute.embedding_key); a job's data hash covers them only when the job matches pools
# on them (backend.sources.inputs.data_inputs).
SIDE_COLUMNS: tuple[str, ...] = ("sex", "age", "age_band", "year")
SEX_VALUES: tuple[str, ...] = ("F", "M")
# Accepted spellings (case-insensitive) and what they mean; blank and the unknown markers are missing values.
_SEX_ALIASES = {"F": "F", "FEMALE": "F", "W": "F", "WOMAN": "F", "M": "M", "MALE": "M", "MAN": "M"}
SEX_UNKNOWN: tuple[str, ...] = ("", "U", "UNK", "UNKNOWN", "NAN", "NONE", "NA", "N/A")
# Age bands: the usual adult bands of chest radiograph cohorts (0-17 only for paediatric rows of a user's CSV).
AGE_BANDS: tuple[tuple[str, int], ...] = (("0-17", 0), ("18-39", 18), ("40-59", 40), ("60-79", 60), ("80+", 80))
AGE_RANGE: tuple[int, int] = (0, 120)
YEAR_RANGE: tuple[int, int] = (1900, 2300)  # MIMIC's per-patient shifted years (2100-2200) included

SECTION_POLICIES: tuple[str, ...] = ("findings+impression", "findings", "impression", "longest")
SPLITS: tuple[str, ...] = ("train", "val", "test")
DEFAULT_SPLIT_FRACTIONS: tuple[float, float, float] = (0.7, 0.1, 0.2)

_VIEW_ALIASES = {
    "PA": "PA", "POSTEROANTERIOR": "PA", "AP": "AP", "ANTEROPOSTERIOR": "AP", "AP SUPINE": "AP",
    "LATERAL": "LATERAL", "LL": "LATERAL", "RL": "LATERAL", "LAT": "LATERAL", "LEFT LATERAL": "LATERAL",
    "RIGHT LATERAL": "LATERAL", "LAO": "LAO", "RAO": "RAO", "LPO": "LPO", "RPO": "RPO",
}


@dataclass
class SourceData:
    """What `load_source` returns.

    pairs       the canonical pair table (PAIR_COLUMNS, in that order, plus optional extra columns)
    read_image  image_path -> PIL image (mode "L" or "RGB"); raises ImageReadError naming the file
    stats       counts a user should see: pairs_total, dropped_empty_report, skipped_images, ...
    image_file  image_path -> the file on disk (file-based sources); None when images are generated
    """

    name: str
    pairs: pd.DataFrame
    read_image: Callable[[str], Image.Image]
    root: str | None = None
    stats: dict[str, int] = field(default_factory=dict)
    image_file: Callable[[str], Path] | None = None

    def digest(self, pairs: pd.DataFrame | None = None, side_information: bool = True) -> str:
        """table_digest of `pairs` (default: every pair of the source) with this source's image files; without the
        SIDE_COLUMNS when side_information is False (for results that do not depend on them)."""
        table = self.pairs if pairs is None else pairs
        if not side_information:
            table = table.drop(columns=[c for c in SIDE_COLUMNS if c in table.columns])
        return table_digest(table, self.image_file)


def combined_digest(digests: list[str]) -> str:
    """One 16-hex digest for results computed from several sources: the digest itself for one source, else
    SHA-256 over the digests in order (what a run records as its data_hash)."""
    return digests[0] if len(digests) == 1 else hashlib.sha256("|".join(digests).encode()).hexdigest()[:16]


def table_digest(pairs: pd.DataFrame, image_file: Callable[[str], Path] | None = None) -> str:
    """16 hex of SHA-256 over everything a result computed from `pairs` depends on: every column of the
    table (ids, patients, labels, view, site, split, report ...) and, when `image_file` is given, each image
    file's identity on disk: size, mtime_ns, inode and ctime_ns. So an image replaced in place changes the digest,
    and so do two images of one size and one mtime swapped (a folder unpacked from a zip gives every file one
    mtime): a rename gives a path another inode, a rewrite a new ctime, which no user can set back. The price is
    on the safe side: a dataset copied or moved to another disk gets a new digest and its results are computed
    again (the files are not read here: a content hash would read every byte of a dataset on every new load)."""
    h = hashlib.sha256()
    cols = sorted(str(c) for c in pairs.columns)
    h.update(json.dumps(cols).encode())
    h.update(pd.util.hash_pandas_object(pairs[cols], index=False).to_numpy().tobytes())
    if image_file is not None:
        stats = []
        for rel in pairs["image_path"].astype(str):
            try:
                st = os.stat(image_file(rel))
                stats.append((st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns))
            except (OSError, ValueError):
                stats.append((-1, -1, -1, -1))  # missing: it counts as content too
        h.update(np.asarray(stats, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def normalise_view(value: object) -> str:
    """Map a view/position string to PA, AP, LATERAL, ... ('UNKNOWN' when empty)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "UNKNOWN"
    text = str(value).strip().upper()
    if not text:
        return "UNKNOWN"
    return _VIEW_ALIASES.get(text, text)


def _row_error(what: str, column: str, index: object, value: object, expected: str) -> SourceError:
    row = f"row {int(index) + 1}" if isinstance(index, int | np.integer) else f"row {index!r}"
    value = value.item() if isinstance(value, np.generic) else value
    return SourceError(f"{what}: {row}, column {column!r}: {value!r} is not {expected}.")


def _refuse(bad: pd.Series, values: pd.Series, what: str, column: str, expected: str, strict: bool) -> None:
    """SourceError naming the first bad row (strict), else a logged count: the caller then treats them as unknown."""
    if not bad.any():
        return
    i = bad.idxmax()
    if strict:
        raise _row_error(what, column, i, values[i], expected)
    log.warning("%s: %d value(s) of column %r are not %s (e.g. %r); taken as unknown", what, int(bad.sum()), column,
                expected, values[i])


def normalise_sex(values: pd.Series, what: str, column: str = "sex", strict: bool = True) -> pd.Series:
    """Sex as "F" / "M" (object; None where unknown). Accepted (any case): F, female, W, woman / M, male, man;
    blank and unknown markers (SEX_UNKNOWN) are missing. Anything else: SourceError naming the row (index + 1 for a
    positional index, else the index label) and the column; with strict=False it is unknown (logged)."""
    text = values.map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip().upper())
    out = text.map(_SEX_ALIASES)
    _refuse(out.isna() & ~text.isin(SEX_UNKNOWN), values, what, column,
            "a sex (F/female or M/male; blank or 'unknown' when unknown)", strict)
    return out.astype(object).where(out.notna(), None)


def _numbers(values: pd.Series, what: str, column: str, lo: int, hi: int, expected: str,
             whole: bool = False, strict: bool = True) -> pd.Series:
    """Numeric values in [lo, hi] as float (NaN where blank, and where bad unless strict)."""
    num = pd.to_numeric(values, errors="coerce").astype("float64")
    blank = values.isna() | (values.astype(str).str.strip() == "")
    bad = (num.isna() & ~blank) | (num < lo) | (num > hi)
    if whole:
        bad |= num.notna() & (num != np.floor(num))
    _refuse(bad, values, what, column, expected, strict)
    return num.where(~bad)


def age_band(age: float | None) -> str | None:
    """The band (AGE_BANDS) of an age in years, None when unknown."""
    if age is None or not np.isfinite(age):
        return None
    return [name for name, lo in AGE_BANDS if age >= lo][-1]


def side_information(what: str, *, sex: pd.Series | None = None, age: pd.Series | None = None,
                     age_band_values: pd.Series | None = None, year: pd.Series | None = None,
                     strict: bool = True) -> pd.DataFrame:
    """The SIDE_COLUMNS a source can fill, validated (one helper for every source): `sex` normalised
    (normalise_sex), `age` a number from 0 to 120 (its band derived), `age_band` one of AGE_BANDS when given
    without ages, `year` a whole number (YEAR_RANGE). Returns only the columns given (age also gives age_band),
    on the index of the inputs. A bad value: SourceError naming its row and column (strict: a user's own table),
    else unknown and logged (strict=False: a public release, whose odd rows must not stop the whole source)."""
    cols: dict[str, pd.Series] = {}
    if sex is not None:
        cols["sex"] = normalise_sex(sex, what, strict=strict)
    if age is not None:
        ages = _numbers(age, what, "age", *AGE_RANGE, f"an age in years from {AGE_RANGE[0]} to {AGE_RANGE[1]}",
                        strict=strict)
        cols["age"] = ages
        cols["age_band"] = ages.map(age_band).astype(object).where(ages.notna(), None)
    elif age_band_values is not None:
        text = age_band_values.map(lambda v: None if pd.isna(v) or not str(v).strip() else str(v).strip())
        bad = text.notna() & ~text.isin([name for name, _ in AGE_BANDS])
        _refuse(bad, age_band_values, what, "age_band", f"an age band ({', '.join(n for n, _ in AGE_BANDS)})", strict)
        cols["age_band"] = text.where(~bad, None).astype(object)
    if year is not None:
        years = _numbers(year, what, "year", *YEAR_RANGE, f"a year (a whole number from {YEAR_RANGE[0]} to "
                         f"{YEAR_RANGE[1]})", whole=True, strict=strict)
        cols["year"] = years.astype("Int64")
    index = next(iter(cols.values())).index if cols else None
    return pd.DataFrame(cols, index=index)


def side_stats(pairs: pd.DataFrame) -> dict[str, int]:
    """How many pairs have each side information column the table carries ({"sex_known": n, ...})."""
    return {f"{c}_known": int(pairs[c].notna().sum()) for c in SIDE_COLUMNS if c in pairs.columns}


UNKNOWN_VIEW = "UNKNOWN"  # normalise_view of a blank or unreadable view


def known(pairs: pd.DataFrame, column: str) -> np.ndarray:
    """Which pairs have a value in `column`: not missing, not blank, and for `view` not UNKNOWN_VIEW ("labels", the
    14 label columns, is known everywhere: an unknown label counts as 0). All False when the column is absent."""
    if column == "labels":
        return np.ones(len(pairs), dtype=bool)
    if column not in pairs.columns:
        return np.zeros(len(pairs), dtype=bool)
    col = pairs[column]
    text = col.astype(str).str.strip()
    ok = col.notna() & (text != "") & (text.str.lower() != "none")
    if column == "view":
        ok &= text.str.upper() != UNKNOWN_VIEW
    return ok.to_numpy(dtype=bool)


def filled(pairs: pd.DataFrame, column: str) -> bool:
    """Whether every pair of the table has a value in `column` (see known)."""
    return bool(known(pairs, column).all()) and column in pairs.columns


def match_attributes(pairs: pd.DataFrame) -> list[str]:
    """The attributes (backend.specs.MATCH_ATTRIBUTES) pools can match on in this table: "labels" always, the
    others when at least one pair has a value (pairs without one are left out of that pool: match_coverage)."""
    return [a for a in MATCH_ATTRIBUTES if known(pairs, a).any()]


def match_coverage(pairs: pd.DataFrame, match: str) -> np.ndarray:
    """The pairs a side-information pool ("sex+age_band") is measured on: those with every attribute known.

    The one policy for a pair that lacks one (a subject absent from MIMIC-IV's patients file, sex "Unknown",
    a view the data does not give): it is left out of that matched pool, as query and as candidate (an attacker
    matching on sex cannot place a report whose sex nobody knows), and counted (AuditResult.counts
    ["matched_pools"]); every other pool keeps it."""
    mask = np.ones(len(pairs), dtype=bool)
    for attribute in match.split("+"):
        mask &= known(pairs, attribute)
    return mask


def _clean(text: object) -> str:
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return ""
    return " ".join(str(text).split())


def compose_report(findings: object, impression: object, policy: str) -> str:
    """The text to embed for one report under a section policy ('' when nothing is left)."""
    if policy not in SECTION_POLICIES:
        raise SourceError(f"Unknown section policy {policy!r}; choose one of {', '.join(SECTION_POLICIES)}.")
    f, i = _clean(findings), _clean(impression)
    if policy == "findings":
        return f
    if policy == "impression":
        return i
    if policy == "longest":
        return f if len(f) >= len(i) else i
    return " ".join(part for part in (f, i) if part)


def apply_section_policy(pairs: pd.DataFrame, policy: str) -> tuple[pd.DataFrame, int]:
    """Fill the `report` column from findings/impression; drop pairs whose text is empty.

    Returns (pairs, number of pairs dropped)."""
    reports = [compose_report(f, i, policy) for f, i in zip(pairs["findings"], pairs["impression"], strict=False)]
    out = pairs.assign(report=reports)
    keep = out["report"].str.len() > 0
    return out.loc[keep].reset_index(drop=True), int((~keep).sum())


def assign_split(
    patient_ids: pd.Series | list[str],
    fractions: tuple[float, float, float] = DEFAULT_SPLIT_FRACTIONS,
    salt: str = "cxr-relink-v1",
) -> np.ndarray:
    """Patient-disjoint train/val/test split, stable across runs and machines.

    Each patient goes to a split by a SHA-1 hash of (salt, patient_id), so a patient's split never
    depends on which other patients are loaded."""
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) < 0:
        raise SourceError(f"Split fractions must be three non-negative numbers summing to 1, got {fractions}.")
    edges = np.cumsum(fractions)
    out = []
    for pid in patient_ids:
        digest = hashlib.sha1(f"{salt}:{pid}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        out.append(SPLITS[int(np.searchsorted(edges, u, side="right"))] if u < edges[-1] else SPLITS[-1])
    return np.asarray(out, dtype=object)


def finalize_pairs(pairs: pd.DataFrame, source: str) -> pd.DataFrame:
    """Check a source's table against the canonical schema and return it in canonical column order.

    Raises SourceError naming the missing column or the broken invariant."""
    missing = [c for c in PAIR_COLUMNS if c not in pairs.columns]
    if missing:
        raise SourceError(f"Source {source!r} produced no column(s) {missing}; this is a bug in the source module.")
    if pairs["pair_id"].duplicated().any():
        dup = pairs.loc[pairs["pair_id"].duplicated(), "pair_id"].iloc[0]
        raise SourceError(f"Source {source!r}: pair_id {dup!r} occurs twice; pair ids must be unique.")
    if pairs["patient_id"].isna().any() or (pairs["patient_id"].astype(str).str.len() == 0).any():
        raise SourceError(f"Source {source!r}: some pairs have no patient_id; every pair needs one.")
    per_patient = pairs.groupby("patient_id")["split"].nunique()
    if (per_patient > 1).any():
        raise SourceError(f"Source {source!r}: patient {per_patient[per_patient > 1].index[0]!r} is in two splits.")
    bad_split = set(pairs["split"].unique()) - set(SPLITS)
    if bad_split:
        raise SourceError(f"Source {source!r}: unknown split value(s) {sorted(bad_split)}; use {SPLITS}.")
    extra = [c for c in pairs.columns if c not in PAIR_COLUMNS]
    out = pairs[list(PAIR_COLUMNS) + extra].copy()
    for col in ("pair_id", "study_id", "patient_id", "image_path", "view", "report", "split", "site"):
        out[col] = out[col].astype(str)
    for col in LABELS:
        out[col] = pd.to_numeric(out[col], errors="coerce").astype("float32")
        out.loc[out[col] < 0, col] = np.nan  # uncertain (-1) -> NaN
    for col in ("sex", "age_band"):  # side information: text, None where unknown
        if col in out.columns:
            out[col] = out[col].astype(object).where(out[col].notna(), None)
    if "age" in out.columns:
        out["age"] = pd.to_numeric(out["age"], errors="coerce").astype("float64")
    if "year" in out.columns:
        out["year"] = pd.to_numeric(out["year"], errors="coerce").astype("Int64")
    return out.reset_index(drop=True)


def label_matrix(pairs: pd.DataFrame) -> np.ndarray:
    """The (n, 14) float32 label matrix (1/0/NaN) in LABELS order."""
    return pairs[list(LABELS)].to_numpy(dtype=np.float32)
