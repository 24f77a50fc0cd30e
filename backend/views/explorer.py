"""The pair explorer's engine: one audited run's embeddings -> per-image retrieval, ranks, shared words.

Works on a finished audit run's embedding artifact: an embedding cache folder (backend.embed.files)
or a portable npz. Candidates are one report per study (pairs of a study share their report).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from backend.embed import load_embedding_set
from backend.errors import ImageReadError, StoreError
from backend.relink import ReportIndex, build_index, top_k
from backend.runs import store
from backend.sources import load_source
from backend.sources.schema import LABELS

STOPWORDS = frozenset(
    "the and with without there this that are was were has have for from into onto of on in at to by is be as "
    "no not or an a its it any seen noted there's which within left right both".split())
WORD = re.compile(r"[A-Za-z][A-Za-z\-]+")


@dataclass
class PairSet:
    """meta: one row per pair (pair_id, study_id, patient_id, report, view, image_path, 14 labels, rank);
    image_emb (n, d); cand_emb (m, d) one report per study, cand_study (m,), cand_report (m,)."""

    run_id: str
    meta: pd.DataFrame
    image_emb: np.ndarray
    cand_emb: np.ndarray
    cand_study: np.ndarray
    cand_report: np.ndarray
    doc_freq: dict[str, float] | None = None  # word -> fraction of candidate reports that contain it
    cand_patient: np.ndarray = field(init=False, repr=False)  # the patient of each candidate report
    index: ReportIndex = field(init=False, repr=False)  # exact faiss search over the candidates, built once

    def __post_init__(self) -> None:
        if self.doc_freq is None:
            self.doc_freq = document_frequencies(self.cand_report)
        by_study = self.meta.drop_duplicates("study_id").set_index("study_id")["patient_id"]
        self.cand_patient = by_study.reindex(self.cand_study).to_numpy()
        self.index = build_index(self.cand_emb)


def _load_arrays(path: str) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    if path.endswith(".npz"):
        with np.load(path) as z:
            data = {k: z[k] for k in z.files}
        meta = pd.DataFrame({k: data[k].astype(str) for k in ("pair_id", "study_id", "patient_id", "report")})
        for key in ("image_path", "view"):
            meta[key] = data[key].astype(str) if key in data else ""
        for i, name in enumerate(LABELS):
            meta[name] = data["labels"][:, i]
        return meta, data["image_emb"], data["report_emb"]

    es = load_embedding_set(path)
    return es.meta.reset_index(drop=True), es.image_emb, es.report_emb


def load_pairs(run_id: str) -> PairSet:
    """The explorer's view of a finished audit run; StoreError when its embeddings are gone."""
    run = store.get_run(run_id)
    path = str((run or {}).get("artifacts", {}).get("embeddings") or "")
    if not path or not Path(path).exists():
        raise StoreError(f"Run {run_id} has no embedding file on disk ({path or 'none recorded'}); run its audit "
                         "again (Models and jobs) to recreate it.")
    meta, image_emb, report_emb = _load_arrays(path)
    per_query = store.load_per_query(run_id)
    first = ~meta["study_id"].duplicated()
    cand_emb, cand_study = report_emb[first.to_numpy()], meta.loc[first, "study_id"].to_numpy()
    cand_report = meta.loc[first, "report"].to_numpy()
    if per_query is not None and "rank_full" in per_query.columns:
        meta = meta.merge(per_query[["pair_id", "rank_full"]], on="pair_id", how="left")
    else:
        meta["rank_full"] = [_rank(image_emb[i], cand_emb, cand_study, s) for i, s in enumerate(meta["study_id"])]
    return PairSet(run_id, meta, image_emb, cand_emb, cand_study, cand_report)


def _rank(query: np.ndarray, cand_emb: np.ndarray, cand_study: np.ndarray, study: str) -> int:
    scores = cand_emb @ query
    true = scores[cand_study == study]
    return int((scores > true.max()).sum()) + 1 if len(true) else -1


def choices(ps: PairSet, labels: list[str] | None = None, search: str = "", most_relinkable: bool = True,
            limit: int = 500) -> pd.DataFrame:
    """Pairs to choose from: every label in `labels` positive, `search` in the report or ids; easiest
    to re-link (lowest true-report rank) first when asked."""
    sel = ps.meta
    for label in labels or []:
        sel = sel[sel[label] == 1]
    if search:
        needle = search.lower()
        hay = sel["report"].str.lower() + " " + sel["pair_id"].str.lower() + " " + sel["patient_id"].str.lower()
        sel = sel[hay.str.contains(needle, regex=False)]
    if most_relinkable:
        sel = sel.sort_values(["rank_full", "pair_id"])
    return sel.head(limit)


def retrieve(ps: PairSet, pair_id: str, k: int = 5) -> dict[str, Any]:
    """The top-k reports for one image: DataFrame (rank, study_id, score, is_true, report), and the true
    report's rank among the eligible candidates with the engine's definition (rank_full in the per-query
    table): 1 + the reports scored higher + half the reports scored equal, the same patient's other studies
    left out (they are not distractors in the audit)."""
    row = ps.meta.index[ps.meta["pair_id"] == pair_id]
    if not len(row):
        raise StoreError(f"Pair {pair_id!r} is not in run {ps.run_id}.")
    i = int(row[0])
    top, top_scores = top_k(ps.image_emb[i], ps.index, k)  # exact inner-product search (faiss)
    scores = ps.cand_emb @ ps.image_emb[i]
    study, patient = ps.meta.at[i, "study_id"], ps.meta.at[i, "patient_id"]
    table = pd.DataFrame({"rank": np.arange(1, len(top) + 1), "study_id": ps.cand_study[top], "score": top_scores,
                          "is_true": ps.cand_study[top] == study, "report": ps.cand_report[top]})
    is_true = ps.cand_study == study
    eligible = is_true | (ps.cand_patient != patient)
    true_score = float(scores[is_true].max())
    others = scores[eligible & ~is_true]
    rank = 1 + int((others > true_score).sum()) + int((others == true_score).sum()) / 2
    return {"row": ps.meta.loc[i], "top": table, "true_rank": rank, "true_score": true_score,
            "n_candidates": int(eligible.sum())}


def top_rival(hit: dict[str, Any]) -> pd.Series | None:
    """The best-scored retrieved report that is not the true one (the attacker's top wrong guess)."""
    others = hit["top"][~hit["top"]["is_true"]]
    return others.iloc[0] if len(others) else None


def _words(text: str) -> set[str]:
    return {w.lower() for w in WORD.findall(text)} - STOPWORDS


def document_frequencies(reports: Any) -> dict[str, float]:
    """word -> the fraction of the reports that contain it (lower case, stopwords dropped)."""
    counts: dict[str, int] = {}
    n = 0
    for text in reports:
        n += 1
        for w in _words(str(text)):
            counts[w] = counts.get(w, 0) + 1
    return {w: c / n for w, c in counts.items()} if n else {}


def shared_words(a: str, b: str, doc_freq: dict[str, float] | None = None, max_df: float = 0.05) -> set[str]:
    """Content words that two reports share; with `doc_freq`, only the distinctive ones (in at most `max_df`
    of all reports): what can link a pair, not the clinical words every report uses."""
    shared = _words(a) & _words(b)
    if doc_freq is None:
        return shared
    return {w for w in shared if doc_freq.get(w, 0.0) <= max_df}


def highlight_segments(text: str, words: set[str]) -> list[tuple[str, bool]]:
    """Split text into (segment, is_shared) pieces for rendering."""
    out, pos = [], 0
    for m in WORD.finditer(text):
        if m.group(0).lower() in words:
            if m.start() > pos:
                out.append((text[pos:m.start()], False))
            out.append((m.group(0), True))
            pos = m.end()
    if pos < len(text):
        out.append((text[pos:], False))
    return out


def same_patient(ps: PairSet, pair_id: str) -> pd.DataFrame:
    """The same patient's other studies in this split (study_id, view, report, rank)."""
    row = ps.meta[ps.meta["pair_id"] == pair_id].iloc[0]
    other = ps.meta[(ps.meta["patient_id"] == row["patient_id"]) & (ps.meta["study_id"] != row["study_id"])]
    return other[["study_id", "pair_id", "view", "report", "rank_full"]].drop_duplicates("study_id")


def load_run_source(run_id: str) -> Any:
    """The SourceData a run embedded (to read its images); SourceError when it cannot be loaded here."""

    spec = json.loads((store.get_run(run_id) or {}).get("spec") or "{}")
    source = spec.get("embed", {}).get("source") or spec.get("source") or {}
    if not source:
        raise ImageReadError(f"Run {run_id} names no source, so its images cannot be shown.")
    return load_source(source["name"], root=source.get("root"),
                       section_policy=source.get("section_policy", "findings+impression"),
                       **(source.get("options") or {}))


def read_image(image_path: str, source: Any = None) -> Image.Image:
    """The image of a pair. A relative path is the dataset's own: it is read only through the run's SourceData,
    against the dataset's folder as the embedding read it, never against the app's working folder (where a
    dataset's `assets/icon.png` would find the app's own icon). An absolute path that is a file is opened as it
    is. ImageReadError otherwise. `source`: the SourceData, or a function that loads it (called only for a
    relative path, so that an absolute one never costs a load)."""
    if image_path and Path(image_path).is_absolute() and Path(image_path).is_file():
        return Image.open(image_path)
    if callable(source):
        source = source()
    if source is None:
        raise ImageReadError(f"Image {image_path!r} is not a file and no source was given to read it.")
    return source.read_image(image_path)


def data_changed_since(run_id: str, source: Any) -> bool:
    """Whether the data the run recorded (its data hash) differs from the source as it is now: an image shown
    may then not be the one the run embedded. False when the run recorded no data hash."""
    recorded = (((store.get_run(run_id) or {}).get("summary") or {}).get("inputs") or {}).get("data_hash")
    return bool(recorded) and source is not None and source.digest() != recorded
