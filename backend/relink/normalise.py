"""The prelude of the curve: the rows in use of an embedding matrix, L2-normalised (float32), in chunks on a
few threads, optionally inside the caller's array (`take_rows_in_place`) instead of a copy."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from backend.errors import SpecError

NORMALISE_THREADS = 8  # at most: the step is bound by memory bandwidth, and each thread holds a chunk's temporary


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
