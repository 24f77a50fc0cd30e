"""Turn per-query beater/tie counts (backend.relink.counts) into backend.relink's outputs: the tidy curve table with
patient-bootstrap CIs, the summary dict and the per-query table. The curve arithmetic and the bootstrap run in
torch on the chosen device (the GPU, when the counts were made there); semantics in backend/relink/__init__.py.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd

from backend.relink.stats import (
    Xp,
    bootstrap_means,
    bootstrap_medians,
    bootstrap_weights,
    expected_recall,
    group_chance,
    percentile_ci,
    xp_of,
)

# (pool kind, level) -> keys of (eligible, beaters, ties) in the group-size and count dicts
COMBOS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("random", "study"): ("m", "b", "t"), ("hard", "study"): ("mh", "bh", "th"),
    ("random", "patient"): ("pm", "pb", "pt"), ("hard", "patient"): ("pmh", "pbh", "pth"),
}
PER_QUERY_N: tuple[int, ...] = (10, 100, 1000)
CURVE_SCRATCH_BYTES = 512 << 20  # the CPU curve's threads share about this much scratch memory (curve_threads)
TORCH_ON_CPU = False  # True runs the GPU's torch code path on the CPU (tests compare it with numpy's)
CURVE_COLUMNS: tuple[str, ...] = ("pool_kind", "level", "k", "n", "recall", "ci_low", "ci_high", "chance", "lift",
                                  "effective_n")  # what the store keeps and a headline shows
ROW_COLUMNS: tuple[str, ...] = (*CURVE_COLUMNS, "capped_frac")  # what the engine returns


def curve_threads(n_queries: int, n_grid: int, kmax: int, n_combos: int) -> int:
    """Threads for the CPU curve: one per combo and core, but no more than CURVE_SCRATCH_BYTES of scratch
    (a combo's expected_recall over n_q x n_grid entries holds about five (entries, kmax) float64 arrays at
    once: at 43,793 queries and 17 pool sizes that is 0.3 GB a thread). At least one."""
    per_thread = n_queries * n_grid * kmax * 8 * 5
    return max(1, min(n_combos, os.cpu_count() or 1, CURVE_SCRATCH_BYTES // max(per_thread, 1)))


def default_grid(n_max: int) -> list[int]:
    """2, 5, 10, 20, 50, 100, ... (1-2-5 steps) below n_max, then n_max itself (n_max >= 2)."""
    grid, base = [], 1
    while True:
        for step in (2, 5, 10):
            value = base * step
            if value >= n_max:
                return sorted(set(grid + [max(int(n_max), 2)]))
            grid.append(value)
        base *= 10


def _chance(draws: Any, r: Any | None, k: int) -> Any:
    """Per-query chance of a hit: K / (draws + 1) for one true report, group_chance for r patient reports."""
    if r is None:
        return xp_of(draws).clip_high(k / (draws + 1.0), 1.0)
    if isinstance(draws, np.ndarray):  # few distinct (draws, r) pairs (N - 1 unless capped; 1-10 studies): each once
        key = draws * (float(r.max()) + 1.0) + r  # integer-valued float64: exact, distinct per pair
        _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        return group_chance(draws[first], r[first], k)[inverse.ravel()]  # elementwise: the same bits per query
    return group_chance(draws, r, k)


def distinct_rows(*cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of equal-length non-negative integer columns: (first (U,), inverse (n,)) with
    row i equal to row first[inverse[i]]. One mixed-radix int64 key when it fits (fast), else np.unique(axis=0)."""
    arrs = [np.asarray(c, dtype=np.int64) for c in cols]
    key, radix = np.zeros(arrs[0].shape[0], dtype=np.int64), 1
    for a in arrs:
        width = int(a.max()) + 1 if a.size else 1
        radix *= width
        if radix >= 2**62:  # too many combinations for one int64
            _, first, inverse = np.unique(np.stack(arrs, 1), axis=0, return_index=True, return_inverse=True)
            return first, inverse.ravel()
        key = key * width + a
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    return first, inverse.ravel()


def _curve(xp: Any, elig: Any, beat: Any, tie: Any, grid: Sequence[int], ks: Sequence[int]) -> Any:
    """Expected recall per row (rows, G, nk) for pools of N - 1 distractors, N in grid.

    Capped entries (N - 1 >= eligible) are the full-pool value, computed once per row."""
    n_q = elig.shape[0]
    draws = xp.minimum(xp.f64(grid)[None, :] - 1.0, elig[:, None])
    full = expected_recall(elig, beat, tie, elig, ks)
    values = xp.repeat_axis1(full[:, None, :], len(grid))
    open_q, open_g = xp.nonzero2(draws < elig[:, None])
    if xp.size(open_q):
        values[open_q, open_g] = expected_recall(elig[open_q], beat[open_q], tie[open_q], draws[open_q, open_g], ks)
    return values.reshape(n_q, len(grid), len(ks))


def curve_rows(counts: dict[str, np.ndarray], groups: dict[str, np.ndarray], q_patient: np.ndarray, *,
               kinds: Sequence[str], ks: Sequence[int], n_grid: Sequence[int] | None, n_bootstrap: int,
               seed: int, device: Any = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The tidy rows (pool_kind, level, k, n, recall, ci_low, ci_high, chance, lift, effective_n, capped_frac).

    counts/groups: per-query arrays (n_q,); q_patient (n_q,) dense patient codes for the bootstrap. The
    arithmetic runs in numpy on the CPU (device None or cpu) or in torch on a GPU (a CUDA device); the rows
    do not depend on which beyond float64 round-off (tests/test_relink.py)."""
    on_gpu = device is not None and (str(device) != "cpu" or TORCH_ON_CPU)
    xp = Xp(device if on_gpu else None)
    grid = sorted({int(v) for v in n_grid}) if n_grid is not None else default_grid(int(groups["m"].max()) + 1)
    combos = [(kind, level) for kind in [*kinds, "full"] for level in ("study", "patient")]

    def one(combo: tuple[str, str]) -> tuple[Any, Any, Any, Any]:
        """(eligible (n_q,), values of the distinct rows (U, G or 1, nk), draws (n_q, G or 1), inverse (n_q,)).

        Queries with the same (eligible, beaters, ties) have the same expected recall: each distinct triplet
        is computed once (3-4x fewer rows on the synthetic benchmark; a well-trained model's beaters cluster
        near 0, fewer still). The arithmetic is row by row (and its window widths depend on the largest value
        of a set, not on how often a value occurs), so every query gets the same bits as without it."""
        kind, level = combo
        e_key, b_key, t_key = COMBOS[("random" if kind == "full" else kind, level)]
        first, inverse = distinct_rows(groups[e_key], counts[b_key], counts[t_key])
        elig, beat, tie = (xp.f64(np.asarray(a)[first]) for a in (groups[e_key], counts[b_key], counts[t_key]))
        elig_q = xp.f64(groups[e_key])
        inv = inverse if not on_gpu else xp.t.as_tensor(inverse, device=xp.device)
        if kind == "full":
            return elig_q, expected_recall(elig, beat, tie, elig, ks)[:, None, :], elig_q[:, None], inv
        return elig_q, _curve(xp, elig, beat, tie, grid, ks), xp.minimum(xp.f64(grid)[None, :] - 1.0, elig_q[:, None]), inv

    # the combos are independent, and numpy/scipy release the GIL in their loops: threads use every core on
    # the CPU (the results do not depend on it: each combo's arithmetic is the same), as many as the scratch
    # memory budget allows
    threads = 1 if on_gpu else curve_threads(n_queries=len(q_patient), n_grid=len(grid), kmax=max(ks),
                                             n_combos=len(combos))
    with ThreadPoolExecutor(threads) as pool:
        # each combo's (n_q, N, K) values go into one (n_q, columns) array as soon as they come: never all at once.
        # One thread: computed here, lazily, one combo at a time (a worker would compute the next combo, with its
        # scratch, while this one is copied: about 25 MB more at the peak of the 400k check)
        results = pool.map(one, combos) if threads > 1 else map(one, combos)
        values = xp.empty((len(q_patient), sum(len(ks) * (1 if kind == "full" else len(grid)) for kind, _ in combos)))
        meta, stats = [], []
        for (kind, level), (elig, vals, draws, inv) in zip(combos, results, strict=True):
            r = xp.f64(groups["r"]) if level == "patient" else None
            pts = [int(round(float((elig + 1).mean())))] if kind == "full" else grid
            for gi, n_pts in enumerate(pts):
                capped = xp.f64(draws[:, gi] + 1 < n_pts)
                for ki, k in enumerate(ks):
                    values[:, len(meta)] = vals[inv, gi, ki]
                    stats += [_chance(draws[:, gi], r, k).mean(), (draws[:, gi] + 1.0).mean(),
                              capped.mean() * (kind != "full")]
                    meta.append({"pool_kind": kind, "level": level, "k": int(k), "n": n_pts})
            del elig, vals, draws, inv
    per_row = xp.numpy(xp.stack(stats, axis=0)).reshape(-1, 3)  # one transfer: chance, effective N, capped share
    weights = bootstrap_weights(int(q_patient.max()) + 1, n_bootstrap, seed)
    low, high = percentile_ci(bootstrap_means(values, q_patient, weights))
    rows = pd.DataFrame(meta)
    rows.insert(4, "recall", xp.numpy(values.mean(0)))
    rows.insert(5, "ci_low", low)
    rows.insert(6, "ci_high", high)
    rows["chance"], rows["effective_n"], rows["capped_frac"] = per_row[:, 0], per_row[:, 1], per_row[:, 2]
    rows["lift"] = rows["recall"] / rows["chance"]
    return rows[list(ROW_COLUMNS)], {"n_grid": grid}


def per_query_frame(pair_index: np.ndarray, pair_id: np.ndarray | None, study_id: np.ndarray, patient_id: np.ndarray,
                    counts: dict[str, np.ndarray], groups: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row per query image, in input order: ids, true score, counts per pool/level, expected rank in
    the full database (1 + beaters + ties/2) and expected R@1 in random pools of N = 10, 100, 1000."""
    frame = pd.DataFrame({"pair_index": pair_index})
    if pair_id is not None:
        frame["pair_id"] = pair_id
    frame["study_id"] = study_id
    frame["patient_id"] = patient_id
    frame["score_true"] = counts["score"].astype(np.float64)
    frame["rank_full"] = 1.0 + counts["b"] + counts["t"] / 2.0
    frame["beaters"], frame["ties"], frame["eligible"] = counts["b"], counts["t"], groups["m"]
    frame["beaters_hard"], frame["ties_hard"], frame["eligible_hard"] = counts["bh"], counts["th"], groups["mh"]
    frame["patient_beaters"], frame["patient_ties"], frame["patient_eligible"] = counts["pb"], counts["pt"], groups["pm"]
    frame["patient_studies"] = groups["r"]
    for n_pool in PER_QUERY_N:
        draws = np.minimum(n_pool - 1, groups["m"])
        frame[f"r1_at_{n_pool}"] = expected_recall(groups["m"], counts["b"], counts["t"], draws, (1,))[:, 0]
    return frame


def summary_dict(counts: dict[str, np.ndarray], groups: dict[str, np.ndarray], q_patient: np.ndarray, *,
                 n_bootstrap: int, seed: int, n_candidates: int, include_same_patient: bool,
                 extra: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers: sizes, mean/median expected rank in the full database with patient-bootstrap CIs."""
    rank = 1.0 + counts["b"] + counts["t"] / 2.0
    weights = bootstrap_weights(int(q_patient.max()) + 1, n_bootstrap, seed + 1)
    mean_lo, mean_hi = percentile_ci(bootstrap_means(rank[:, None], q_patient, weights))
    med_lo, med_hi = percentile_ci(bootstrap_medians(rank, q_patient, weights)[:, None])
    return {
        "n_queries": int(rank.size), "n_candidates": int(n_candidates), "n_patients": int(q_patient.max()) + 1,
        "mean_rank": float(rank.mean()), "mean_rank_ci": [float(mean_lo[0]), float(mean_hi[0])],
        "median_rank": float(np.median(rank)), "median_rank_ci": [float(med_lo[0]), float(med_hi[0])],
        "mean_eligible": float(groups["m"].mean()), "mean_eligible_hard": float(groups["mh"].mean()),
        "frac_queries_with_ties": float(np.mean(counts["t"] > 0)),
        "include_same_patient": bool(include_same_patient), "n_bootstrap": int(n_bootstrap), "seed": int(seed),
        **extra,
    }
