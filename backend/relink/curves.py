"""relink_curves: the re-linkage curves of n image-report pairs (semantics in the docstring of
backend/relink/__init__.py). It checks and codes the inputs (study, patient, text and label-group codes),
sorts the candidates by label group, counts beaters and ties in one blocked pass (backend.relink.counts) and
turns the counts into rows, summary and per-query table (backend.relink.rows)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from backend.errors import SpecError
from backend.progress import ProgressLike
from backend.relink.normalise import normalised_rows
from backend.relink.rows import curve_rows, distinct_rows, per_query_frame, summary_dict
from backend.specs import POOL_KINDS, POOL_NAMES

if TYPE_CHECKING:
    from backend.distributed import Ranks

log = logging.getLogger(__name__)

POOLS: tuple[str, ...] = tuple(POOL_NAMES)


@dataclass(frozen=True)
class RelinkResult:
    """rows: tidy curve table (ROW_COLUMNS); summary: headline numbers; per_query: one row per query image."""

    rows: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)
    per_query: pd.DataFrame = field(default_factory=pd.DataFrame)


def _shape(x: Any, name: str) -> np.ndarray:
    """x as a float32 (n, d) array (a view when it already is one); raises SpecError when empty or not 2-D."""
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise SpecError(f"{name} must be a non-empty (n, d) array, got shape {arr.shape}.")
    return arr


def _codes(values: Any, name: str, n: int) -> np.ndarray:
    """(n,) dense int64 codes of per-pair ids/texts; raises SpecError on a length mismatch or missing values."""
    arr = np.asarray(values, dtype=object).ravel() if not isinstance(values, pd.Series) else values.to_numpy(object)
    if arr.shape[0] != n:
        raise SpecError(f"{name} has {arr.shape[0]} entries but there are {n} pairs; pass one per pair.")
    if pd.isna(arr).any():
        raise SpecError(f"{name} has missing values; every pair needs one.")
    return pd.factorize(arr)[0].astype(np.int64)


def _label_groups(labels: Any, n: int) -> np.ndarray:
    """(n,) id of each pair's label vector (NaN counted as 0); all pairs one group when labels is None.

    Ids number the distinct vectors in lexicographic order (as np.unique(axis=0) would): each column's values
    as order-preserving codes, then rows.distinct_rows (one mixed-radix key, fast at 400,000 rows)."""
    if labels is None:
        return np.zeros(n, dtype=np.int64)
    arr = np.asarray(labels, dtype=np.float64)
    arr = arr.reshape(n, -1) if arr.ndim == 1 and arr.shape[0] == n else arr
    if arr.ndim != 2 or arr.shape[0] != n:
        raise SpecError(f"labels must be (n, n_labels) with n = {n} pairs, got shape {arr.shape}.")
    arr = np.nan_to_num(arr, nan=0.0)
    codes = [np.unique(col, return_inverse=True)[1].ravel() for col in arr.T]  # order-preserving per column
    return distinct_rows(*codes)[1].astype(np.int64)


def _check_options(pools: Sequence[str], ks: Sequence[int], n_grid: Sequence[int] | None, n_bootstrap: int,
                   block_size: int | None) -> tuple[list[str], list[int]]:
    """Validate the options; returns (pool kinds without "full", sorted unique Ks)."""
    kinds = list(dict.fromkeys(pools))
    bad = [p for p in kinds if p not in POOLS]
    if bad:
        raise SpecError(f"Unknown pool kind(s) {bad}; use {list(POOLS)}.")
    k_list = sorted({int(k) for k in ks})
    if not k_list or k_list[0] < 1:
        raise SpecError(f"ks must be positive integers, got {list(ks)}.")
    if n_grid is not None and (len(n_grid) == 0 or min(int(v) for v in n_grid) < 1):
        raise SpecError(f"n_grid must hold pool sizes >= 1, got {list(n_grid)}.")
    if n_bootstrap < 0:
        raise SpecError(f"n_bootstrap must be >= 0, got {n_bootstrap}.")
    if block_size is not None and int(block_size) < 1:
        raise SpecError(f"block_size must be >= 1 query rows (or None for automatic), got {block_size}.")
    return [p for p in kinds if p != "full"], k_list


def relink_curves(image_emb: np.ndarray, report_emb: np.ndarray, study_id: Sequence[Any], patient_id: Sequence[Any],
                  report_text: Sequence[Any], labels: np.ndarray | None, *, pools: Sequence[str] = POOL_KINDS,
                  ks: Sequence[int] = (1, 5, 10), n_grid: Sequence[int] | None = None, include_same_patient: bool = False,
                  n_bootstrap: int = 200, seed: int = 0, block_size: int | None = None, device: str | None = None,
                  progress: ProgressLike | None = None, pair_id: Sequence[Any] | None = None,
                  query_mask: np.ndarray | None = None, overwrite_emb: bool = False,
                  ranks: Ranks | None = None) -> RelinkResult:
    """Re-linkage curves of n image-report pairs (semantics in the module docstring).

    Args:
        image_emb, report_emb: (n, d) embeddings of each pair's image and report. With a query_mask,
        image_emb may instead hold only the queries' images (query_mask.sum(), d), in pair order: the
        only rows it reads (at 400,000 pairs and 43,793 queries that is 90 MB instead of 820 MB).
        study_id, patient_id, report_text: (n,) per pair; labels: (n, 14) 1/0/NaN (None: one label group).
        pools: "random" and/or "hard"; the "full" pool is always reported. ks: the Ks of Recall@K.
        n_grid: pool sizes N (default default_grid(largest pool)). block_size: query rows per block
        (default: about 16M similarities per block). device: torch device (default CUDA when available).
        pair_id: (n,) ids copied into per_query. query_mask: (n,) bool, which pairs are queries (default all).
        overwrite_emb: normalise and reorder image_emb and report_emb inside the caller's arrays (when they
        are writable C-contiguous float32 arrays) instead of copying them; their contents are unspecified
        afterwards. Saves a copy of the candidate reports (0.8 GB at 400,000 candidates); the results are
        the same bits.
        ranks: this process's place in a torchrun group (backend.distributed): it counts its share of the queries
        (a contiguous run in label order) against every candidate, the counts of all ranks are gathered, and every
        rank returns the result of one process, bit for bit (the counts are per query).
    Returns RelinkResult (rows, summary, per_query). Raises SpecError on malformed inputs.
    """
    from backend.relink.counts import (  # late: torch (off the dashboard's path)
        build_candidates,
        count_all,
        resolve_device,
    )

    kinds, k_list = _check_options(pools, ks, n_grid, n_bootstrap, block_size)
    img, rep = _shape(image_emb, "image_emb"), _shape(report_emb, "report_emb")
    n = rep.shape[0]
    n_masked = None if query_mask is None else int(np.count_nonzero(np.asarray(query_mask, dtype=bool)))
    if img.shape[1] != rep.shape[1] or img.shape[0] not in (n, n_masked):
        raise SpecError(f"image_emb {img.shape} and report_emb {rep.shape} must have the same shape (one row per "
                        "pair), or image_emb one row per query (query_mask.sum() rows).")
    study, patient, text = (_codes(v, name, n) for v, name in
                            ((study_id, "study_id"), (patient_id, "patient_id"), (report_text, "report_text")))
    label = _label_groups(labels, n)
    mask = np.ones(n, bool) if query_mask is None else np.asarray(query_mask, dtype=bool).ravel()
    if mask.shape[0] != n or not mask.any():
        raise SpecError(f"query_mask must be (n,) = ({n},) bool with at least one query.")
    first = np.unique(study, return_index=True)[1]  # study code -> its first pair
    if (patient[first][study] != patient).any():
        bad = int(np.flatnonzero(patient[first][study] != patient)[0])
        raise SpecError(f"study {np.asarray(study_id, dtype=object)[bad]!r} belongs to two patients; fix the pair table.")
    perm = np.argsort(label[first], kind="stable")  # candidates sorted by label group (see backend.relink.counts)
    rows = first[perm]
    own_rep = overwrite_emb and _writable(rep)
    own_img = overwrite_emb and _writable(img) and not np.may_share_memory(img, rep)
    cands = build_candidates(normalised_rows(rep, rows, "report_emb", in_place=own_rep), patient[rows],
                             pd.factorize(text[first])[0][perm], label[rows])
    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.size)
    queries = np.flatnonzero(mask)
    true = inv[study[queries]]
    log.info("relink: %d queries, %d candidate reports, device %s", queries.size, cands.m, resolve_device(device))
    q_rows = queries if img.shape[0] == n else np.arange(queries.size)
    # a torchrun rank counts a contiguous run of the queries in label order (count_all's own order), then gathers
    order = np.argsort(cands.label[true], kind="stable") if ranks is not None else np.arange(queries.size)
    a, b = ranks.share(queries.size) if ranks is not None else (0, queries.size)
    sel = order[a:b]
    counts = count_all(normalised_rows(img, q_rows[sel], "image_emb", in_place=own_img), true[sel], cands,
                       include_same_patient=include_same_patient, block_size=block_size, device=device,
                       progress=progress)
    if ranks is not None:
        gathered = ranks.gather_rows(counts, queries.size)  # in `order`
        counts = {key: np.empty_like(val) for key, val in gathered.items()}
        for key, val in gathered.items():
            counts[key][order] = val
    cands.emb = cands.emb[:0]  # counted: the candidates' matrix (0.8 GB at 400,000) is not held through the curve
    groups = _group_sizes(cands, true, include_same_patient)
    q_patient = pd.factorize(patient[queries])[0]
    rows, extra = curve_rows(counts, groups, q_patient, kinds=kinds, ks=k_list, n_grid=n_grid,
                             n_bootstrap=n_bootstrap, seed=seed, device=resolve_device(device))
    ids = None if pair_id is None else np.asarray(pair_id, dtype=object)[queries]
    per_query = per_query_frame(queries, ids, np.asarray(study_id, dtype=object)[queries],
                                np.asarray(patient_id, dtype=object)[queries], counts, groups)
    summary = summary_dict(counts, groups, q_patient, n_bootstrap=n_bootstrap, seed=seed, n_candidates=cands.m,
                           include_same_patient=include_same_patient, extra=extra)
    return RelinkResult(rows=rows, summary=summary, per_query=per_query)


def _writable(arr: np.ndarray) -> bool:
    """Can arr be normalised in place (a writable C-contiguous float32 array: the caller's or our own copy)."""
    return bool(arr.flags.writeable and arr.flags.c_contiguous)


def _group_sizes(cands: Any, true: np.ndarray, include_same_patient: bool) -> dict[str, np.ndarray]:
    """Per query (n_q,): eligible distractors for each pool and level, and the patient's number of studies."""
    n_pat = np.diff(cands.pat_ptr)[cands.patient[true]]
    n_lab = (cands.lab_end - cands.lab_start)[cands.label[true]]
    key = cands.patient * (int(cands.label.max()) + 1) + cands.label
    uniq, inverse, sizes = np.unique(key, return_inverse=True, return_counts=True)
    n_pat_lab = sizes[inverse.ravel()][true]  # the patient's studies sharing the true study's labels
    own = 0 if include_same_patient else 1
    return {"m": cands.m - 1 - own * (n_pat - 1), "mh": n_lab - 1 - own * (n_pat_lab - 1),
            "pm": cands.m - n_pat, "pmh": n_lab - n_pat_lab, "r": n_pat}
