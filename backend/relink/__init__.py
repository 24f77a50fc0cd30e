"""The re-linkage metric engine: exact expected Recall@K(N) at every pool size, from one blocked pass.

Attack model (DESIGN.md section 3). The attacker holds one de-identified image and a pool of N candidate
reports that contains its true report, and ranks the pool by cosine similarity. Recall@K(N) is the
probability that the true report lands in the top K.

Semantics, precisely:
- Inputs are per image-report pair (n rows). Pairs with the same study_id share one report, so the candidate
  reports are the unique studies (m of them); a study's report embedding, text, patient and label vector
  are those of its first pair. Every pair's image is a query (or those selected by `query_mask`; all studies
  stay candidates). Scores are cosine similarities (embeddings are L2-normalised again, defensively),
  computed in float32.
- Eligible distractors of query i: every other study, except other studies of the same patient
  (included with include_same_patient=True). Among its M_i eligible distractors, b_i "beaters" score
  strictly above the true report and t_i "ties" tie with it: a text-identical report (same report_text,
  whatever the float noise in its embedding) or exactly the same score. Ties are broken uniformly at random.
- Pools. random: N - 1 distractors drawn uniformly without replacement from the M_i eligible ones.
  hard (pathology-matched): only distractors whose 14-label vector equals the true study's (NaN, i.e.
  uncertain or unknown, counts as 0 when matching). full: N = M_i + 1, the whole eligible database.
  Where M_i + 1 < N the pool cannot be filled: that query uses all M_i distractors (effective N = M_i + 1,
  its chance K / (M_i + 1)), stays in the average, and the row reports the mean effective N and the
  fraction of capped queries (capped_frac).
- Expected Recall@K(N), exactly, with no pool sampling: the pool holds X beaters and Y ties (a multivariate
  hypergeometric draw over beaters / ties / others) and P(rank <= K) = sum_{x<K} sum_y P(x, y) min(K-x, y+1)/(y+1);
  with t_i = 0 it is hypergeom.cdf(K - 1, M_i, b_i, N - 1) (see backend.relink.stats.expected_recall). Exact up to
  float64 round-off in log-gamma (about 1e-9 absolute for pools of 400,000).
- Patient level (level="patient"): the pool holds all of the patient's reports plus N - 1 distractors from
  other patients (for hard pools: with the true study's label vector); a hit is any of the patient's
  reports in the top K. That happens exactly when the patient's best-scoring report is in the top K, so
  beaters and ties are counted against it (ties: text-identical to it or the same score; the true report
  is the anchor whenever it shares the best score). The patient's own reports are never distractors here,
  whatever include_same_patient says, so patient level >= study level (with the default exclusion).
  Its chance is 1 - C(N-1, K) / C(N-1+r, K) for a patient with r reports (K / N when r = 1), and its
  effective N counts the distractors + 1.
- Grid: N in 2, 5, 10, 20, 50, 100, ... (1-2-5 steps) up to the largest random pool, which is included.
  "full" rows have one point per K and level, with n = the mean pool size rounded (effective_n: unrounded).
- Chance = K / N (per query with the capped N, averaged); lift = recall / chance (no CI).
- Confidence intervals: 95% percentile bootstrap over patients (patients resampled with replacement,
  n_bootstrap times), by multinomial weights on per-patient sums.
- Rank in the full database: 1 + b_i + t_i / 2 (expected rank, random tie-breaking); its mean and median
  with the same patient bootstrap are in `summary`.
- The counts come from one blocked pass (backend.relink.counts): memory O(block x m), never n x m. Results do not
  depend on the block size (up to float32 round-off in the matmul, which may only matter for scores within
  one ulp of each other).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from backend.errors import SpecError
from backend.progress import ProgressLike
from backend.relink.index import ReportIndex, build_index, top_k
from backend.relink.rows import (
    CURVE_COLUMNS,
    ROW_COLUMNS,
    curve_rows,
    default_grid,
    distinct_rows,
    per_query_frame,
    summary_dict,
)
from backend.specs import POOL_KINDS, POOL_NAMES

log = logging.getLogger(__name__)

__all__ = ["RelinkResult", "relink_curves", "default_grid", "top_k", "build_index", "ReportIndex", "POOLS",
           "ROW_COLUMNS", "CURVE_COLUMNS"]

POOLS: tuple[str, ...] = tuple(POOL_NAMES)
NORMALISE_THREADS = 8  # at most: the step is bound by memory bandwidth, and each thread holds a chunk's temporary


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


def normalised_rows(arr: np.ndarray, rows: np.ndarray, name: str, *, in_place: bool = False,
                    chunk: int = 1 << 13) -> np.ndarray:
    """L2-normalised arr[rows] (only the rows in use are copied); raises SpecError on NaN/inf/zero rows.

    in_place: gather and normalise inside arr itself (arr must be a writable C-contiguous float32 array;
    the result is the view arr[:len(rows)], the rest of arr is left unspecified) instead of a copy.
    Done in row chunks with np.linalg.norm's own arithmetic (the same float32 bits as one call over all rows,
    without its n x d temporaries), the chunks on up to NORMALISE_THREADS cores (numpy releases the GIL in its
    loops: 400,000 reports take 2.5 s on one core; each thread holds one chunk's 16 MB temporary). Of several
    bad chunks, the first in row order names the error, whichever thread finishes first."""
    out = take_rows_in_place(arr, rows) if in_place else np.empty((rows.shape[0], arr.shape[1]), dtype=arr.dtype)

    def one(a: int) -> None:
        sub = out[a:a + chunk]
        if not in_place:
            np.take(arr, rows[a:a + chunk], axis=0, out=sub)
        norm = np.sqrt(np.add.reduce(sub * sub, axis=1, keepdims=True))
        # a NaN or an infinity makes the row's norm non-finite: only then are the values themselves checked
        if not np.isfinite(norm).all() and not np.isfinite(sub).all():
            raise SpecError(f"{name} contains NaN or infinite values; re-embed the split.")
        if (norm == 0).any():
            raise SpecError(f"{name} has all-zero rows (row {int(rows[a + np.flatnonzero(norm[:, 0] == 0)[0]])}); "
                            "cosine is undefined.")
        sub /= norm

    starts = range(0, out.shape[0], chunk)
    with ThreadPoolExecutor(max(1, min(os.cpu_count() or 1, NORMALISE_THREADS, len(starts)))) as pool:
        list(pool.map(one, starts))  # in order: the first failing chunk's error is the one raised
    return out


def take_rows_in_place(arr: np.ndarray, rows: np.ndarray, chunk: int = 1 << 13) -> np.ndarray:
    """arr[:k] = arr[rows] (k = len(rows), distinct rows) without a second copy of arr: the rows in increasing
    order are moved forward chunk by chunk (never onto a row still to be read), then permuted into place by
    following the permutation's cycles with one spare row. Returns the view arr[:k]."""
    k = rows.shape[0]
    ordered = np.sort(rows)
    if not np.array_equal(ordered, np.arange(k)):
        for a in range(0, k, chunk):  # ordered[i] >= i: the rows read in chunk a are not written before it
            b = min(a + chunk, k)
            arr[a:b] = arr[ordered[a:b]]
    target = np.searchsorted(ordered, rows).tolist()  # out row i is the moved row target[i]
    seen = bytearray(k)
    for start in range(k):
        if seen[start] or target[start] == start:
            continue
        spare, j = arr[start].copy(), start
        while True:
            seen[j] = 1
            nxt = target[j]
            if nxt == start:
                arr[j] = spare
                break
            arr[j] = arr[nxt]
            j = nxt
    return arr[:k]


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
                  query_mask: np.ndarray | None = None, overwrite_emb: bool = False) -> RelinkResult:
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
    counts = count_all(normalised_rows(img, q_rows, "image_emb", in_place=own_img), true, cands,
                       include_same_patient=include_same_patient, block_size=block_size, device=device,
                       progress=progress)
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
