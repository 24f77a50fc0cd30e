"""The canonical pair table that every source produces (DESIGN.md section 2), and the helpers
every source shares: label list, section policy, patient-disjoint split, validation.

One row per image-report pair. Pairs with the same study_id share one report.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from backend.errors import SourceError

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

    def digest(self, pairs: pd.DataFrame | None = None) -> str:
        """table_digest of `pairs` (default: every pair of the source) with this source's image files."""
        return table_digest(self.pairs if pairs is None else pairs, self.image_file)


def table_digest(pairs: pd.DataFrame, image_file: Callable[[str], Path] | None = None) -> str:
    """16 hex of SHA-256 over everything a result computed from `pairs` depends on: every column of the
    table (ids, patients, labels, view, site, split, report ...) and, when `image_file` is given, the
    (size, mtime_ns) of each image file, so an image replaced in place changes the digest too."""
    h = hashlib.sha256()
    cols = sorted(str(c) for c in pairs.columns)
    h.update(json.dumps(cols).encode())
    h.update(pd.util.hash_pandas_object(pairs[cols], index=False).to_numpy().tobytes())
    if image_file is not None:
        stats = []
        for rel in pairs["image_path"].astype(str):
            try:
                st = os.stat(image_file(rel))
                stats.append((st.st_size, st.st_mtime_ns))
            except (OSError, ValueError):
                stats.append((-1, -1))  # missing: it counts as content too
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
    return out.reset_index(drop=True)


def label_matrix(pairs: pd.DataFrame) -> np.ndarray:
    """The (n, 14) float32 label matrix (1/0/NaN) in LABELS order."""
    return pairs[list(LABELS)].to_numpy(dtype=np.float32)
