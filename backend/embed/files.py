"""EmbeddingSet: the embeddings, pre-projection features and head weights of one split, and their
files (a finished cache folder, and the portable npz anyone can recompute the metric from)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from backend.errors import SourceError
from backend.settings import atomic_write
from backend.sources.schema import LABELS, SIDE_COLUMNS

# the side information (sex, age, age_band, year) only where the source gives it: what side-information pools match on
META_COLUMNS: tuple[str, ...] = ("pair_id", "study_id", "patient_id", "report", "view", "site", "split",
                                 "image_path") + LABELS + SIDE_COLUMNS
NPZ_SIDE: tuple[str, ...] = ("sex", "age_band", "year")  # the side information pools match on, in the portable npz
ARRAYS: tuple[str, ...] = ("image_emb", "report_emb", "image_feat", "text_feat")
DONE = "done.json"


@dataclass
class EmbeddingSet:
    """One embedded split.

    meta        DataFrame, one row per pair: META_COLUMNS (pair_id, study_id, ..., 14 label columns, and the side
                information columns the source gives)
    image_emb   (n, d) float32, L2-normalised
    report_emb  (n, d) float32, L2-normalised (pairs of one study share their report's row values)
    image_feat  (n, d_img_pre) float32 pre-projection image features (input of the image head)
    text_feat   (n, d_txt_pre) float32 pre-projection report features (input of the text head)
    heads       {"image_w" (d_img_pre, d), "image_b" (d,) | None, "text_w", "text_b", "kind": "linear"}:
                image_emb == normalize(image_feat @ image_w + image_b) up to float rounding
    info        provenance: model, weights_id, spec, key, versions, counts
    path        the cache folder it was loaded from / written to (None for an npz without features)
    """

    meta: pd.DataFrame
    image_emb: np.ndarray
    report_emb: np.ndarray
    image_feat: np.ndarray | None
    text_feat: np.ndarray | None
    heads: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.meta)

    def labels(self) -> np.ndarray:
        """(n, 14) float32 labels, 1/0/NaN, in CheXpert order."""
        return self.meta[list(LABELS)].to_numpy(dtype=np.float32)

    def subset(self, mask: np.ndarray) -> EmbeddingSet:
        """The pairs where mask (n,) is True (meta re-indexed; heads, info and path kept)."""
        mask = np.asarray(mask, dtype=bool)

        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[mask]

        return dataclasses.replace(self, meta=self.meta[mask].reset_index(drop=True), image_emb=pick(self.image_emb),
                                   report_emb=pick(self.report_emb), image_feat=pick(self.image_feat),
                                   text_feat=pick(self.text_feat))


def write_set(es: EmbeddingSet, folder: Path) -> None:
    """Write a finished set into `folder` (meta.parquet, arrays.npz, heads.npz, done.json last)."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "meta.parquet", lambda p: es.meta.to_parquet(p, index=False))
    arrays = {k: getattr(es, k) for k in ARRAYS if getattr(es, k) is not None}
    atomic_write(folder / "arrays.npz", lambda p: np.savez(open(p, "wb"), **arrays))
    heads = {k: v for k, v in es.heads.items() if isinstance(v, np.ndarray)}
    atomic_write(folder / "heads.npz", lambda p: np.savez(open(p, "wb"), **heads))
    atomic_write(folder / DONE, lambda p: p.write_text(json.dumps(es.info, indent=2, sort_keys=True, default=str)))
    es.path = folder


def load_embedding_set(path: str | Path) -> EmbeddingSet:
    """Load a finished cache folder written by embed_split (or an npz written by save_npz)."""
    p = Path(path)
    if p.is_file() and p.suffix == ".npz":
        return load_npz(p)
    if not (p / DONE).is_file():
        raise SourceError(f"{p} is not a finished embedding folder (no {DONE}); run the embed job (again).")
    meta = pd.read_parquet(p / "meta.parquet")
    with np.load(p / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    with np.load(p / "heads.npz") as z:
        heads: dict[str, Any] = {k: z[k] for k in z.files}
    heads.setdefault("image_b", None)
    heads.setdefault("text_b", None)
    heads["kind"] = "linear"
    info = json.loads((p / DONE).read_text())
    return EmbeddingSet(meta, arrays["image_emb"], arrays["report_emb"], arrays.get("image_feat"),
                        arrays.get("text_feat"), heads, info, p)


def save_npz(es: EmbeddingSet, path: str | Path) -> Path:
    """The portable file: image_emb (n,d) f32, report_emb (n,d) f32, pair_id, study_id, patient_id,
    labels (n,14) f32 with NaN, label_names, report, and view, image_path and the side information sex,
    age_band, year when known ("" where unknown; unicode arrays: loads without allow_pickle)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    m = es.meta
    data = {
        "image_emb": es.image_emb.astype(np.float32), "report_emb": es.report_emb.astype(np.float32),
        "pair_id": m["pair_id"].astype(str).to_numpy(dtype=str), "study_id": m["study_id"].astype(str).to_numpy(dtype=str),
        "patient_id": m["patient_id"].astype(str).to_numpy(dtype=str), "labels": es.labels(),
        "label_names": np.asarray(LABELS, dtype=str), "report": m["report"].astype(str).to_numpy(dtype=str),
    }
    for key in ("view", "image_path", *NPZ_SIDE):  # the explorer's view and path; side information for --match
        if key in m.columns:
            data[key] = m[key].astype(object).where(m[key].notna(), "").astype(str).to_numpy(dtype=str)
    atomic_write(p, lambda t: np.savez_compressed(open(t, "wb"), **data))
    return p


def load_npz(path: str | Path) -> EmbeddingSet:
    """An EmbeddingSet from save_npz's file (no features or heads: those stay in the cache folder)."""
    with np.load(path) as z:
        data = {k: z[k] for k in z.files}
    meta = pd.DataFrame({k: data[k].astype(object) for k in ("pair_id", "study_id", "patient_id", "report")})
    for i, name in enumerate(LABELS):
        meta[name] = data["labels"][:, i]
    for key in NPZ_SIDE:  # "" was unknown
        if key in data:
            values = pd.Series([v or None for v in data[key].tolist()], dtype=object)
            meta[key] = pd.to_numeric(values).astype("Int64") if key == "year" else values
    return EmbeddingSet(meta, data["image_emb"], data["report_emb"], None, None, {}, {"npz": str(path)}, None)
