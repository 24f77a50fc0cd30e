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

from backend.relink.bootstrap import bootstrap_means, bootstrap_medians, bootstrap_weights, percentile_ci
from backend.relink.stats import Xp, expected_recall, group_chance, xp_of

# (pool kind, level) -> keys of (eligible, beaters, ties) in the group-size and count dicts
COMBOS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("random", "study"): ("m", "b", "t"), ("hard", "study"): ("mh", "bh", "th"),
    ("random", "patient"): ("pm", "pb", "pt"), ("hard", "patient"): ("pmh", "pbh", "pth"),
}
PER_QUERY_N: tuple[int, ...] = (10, 100, 1000)
LEVELS: tuple[str, ...] = ("study", "patient")
PIECE_ENTRIES = 1 << 14  # (distinct rows x pool sizes) per piece of the CPU curve (fastest of 2^12-2^18 at 43,793
# queries, on one thread too: the scratch stays in cache); the threads take pieces, each
# with its own small scratch (about 100 bytes an entry), so no thread holds a whole pool kind's scratch
TORCH_ON_CPU = False  # True runs the GPU's torch code path on the CPU (tests compare it with numpy's)
CURVE_COLUMNS: tuple[str, ...] = ("pool_kind", "level", "k", "n", "recall", "ci_low", "ci_high", "chance", "lift",
                                  "effective_n")  # what the store keeps and a headline shows
ROW_COLUMNS: tuple[str, ...] = (*CURVE_COLUMNS, "capped_frac")  # what the engine returns

# "The same numbers" on any x86-64 CPU (docs/METRICS.md, "The same numbers on another machine"). The keys and the
# effective N are identical bit for bit (counts and pool sizes: integers and sums in one fixed order). Recall@k is
# an expectation over pools, computed through exp and log-gamma, and the CIs go through the bootstrap's matrix
# product: numpy's SIMD kernels (its AVX-512 exp and log among them) and OpenBLAS pick CPU-specific code at run
# time, so those columns agree to a few units in the last place (seen: 1 ulp in recall, up to 7 in a CI bound,
# 8e-16 relative) and are compared with CROSS_CPU_RTOL. On one machine every column is reproduced bit for bit.
EXACT_ACROSS_CPUS: tuple[str, ...] = ("pool_kind", "level", "k", "n", "effective_n")
CROSS_CPU_RTOL = 1e-12


def curve_differences(got: pd.DataFrame, expected: pd.DataFrame) -> list[str]:
    """Where two curve tables (the CURVE_COLUMNS of the same audit) differ beyond what another CPU explains:
    an EXACT_ACROSS_CPUS column not identical, or another column beyond CROSS_CPU_RTOL (NaN equals NaN). Rows are
    matched by (pool_kind, level, k, n). Empty when they agree."""
    keys = ["pool_kind", "level", "k", "n"]
    a = got[list(CURVE_COLUMNS)].sort_values(keys).reset_index(drop=True)
    b = expected[list(CURVE_COLUMNS)].sort_values(keys).reset_index(drop=True)
    if len(a) != len(b):
        return [f"{len(a)} rows against {len(b)}"]
    out = []
    for col in CURVE_COLUMNS:
        x, y = a[col].to_numpy(), b[col].to_numpy()
        if col in EXACT_ACROSS_CPUS:
            same = np.array([u == v or (u != u and v != v) for u, v in zip(x, y, strict=True)])
        else:
            x, y = x.astype(np.float64), y.astype(np.float64)
            same = np.isclose(x, y, rtol=CROSS_CPU_RTOL, atol=0.0, equal_nan=True)
        if not same.all():
            i = int(np.flatnonzero(~same)[0])
            out.append(f"{col}: {int((~same).sum())} rows differ, e.g. {dict(a.loc[i, keys])}: {x[i]!r} vs {y[i]!r}")
    return out


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


def _chances(draws: Any, r: Any | None, ks: Sequence[int]) -> list[Any]:
    """Per-query chance of a hit for each K: K / (draws + 1) for one true report, group_chance for r patient
    reports."""
    if r is None:
        xp = xp_of(draws)
        return [xp.clip_high(k / (draws + 1.0), 1.0) for k in ks]
    if isinstance(draws, np.ndarray):  # few distinct (draws, r) pairs (N - 1 unless capped; 1-10 studies): each once
        first, inverse = distinct_rows(draws, r)  # integer-valued float64 counts
        return [group_chance(draws[first], r[first], k)[inverse] for k in ks]  # elementwise: the same bits per query
    return [group_chance(draws, r, k) for k in ks]


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


def _curve(xp: Any, elig: Any, beat: Any, tie: Any, grid: Sequence[int], ks: Sequence[int]) -> tuple[Any, Any]:
    """Expected recall per row for pools of N - 1 distractors, N in grid (rows, G, nk), and in the whole
    eligible database (rows, nk). Capped entries (N - 1 >= eligible) are the whole-database value."""
    n_q = elig.shape[0]
    draws = xp.minimum(xp.f64(grid)[None, :] - 1.0, elig[:, None])
    full = expected_recall(elig, beat, tie, elig, ks)
    values = xp.repeat_axis1(full[:, None, :], len(grid))
    open_q, open_g = xp.nonzero2(draws < elig[:, None])
    if xp.size(open_q):
        values[open_q, open_g] = expected_recall(elig[open_q], beat[open_q], tie[open_q], draws[open_q, open_g], ks)
    return values.reshape(n_q, len(grid), len(ks)), full


def _kind_values(xp: Any, pool: ThreadPoolExecutor, triplets: list[tuple[np.ndarray, ...]], grid: Sequence[int],
                 ks: Sequence[int], *, with_grid: bool, one_piece: bool) -> tuple[Any, Any, list[Any]]:
    """Expected recall of one pool kind at both levels: (values (U, G, nk) or None, whole database (U, nk),
    [inverse (n_q,) per level]) over the U distinct (eligible, beaters, ties) rows of the levels together.

    Queries (of either level: most patients' best report is the true one) with the same triplet have the same
    expected recall, so each distinct triplet is computed once (the benchmark's 2 x 20,000 rows of a kind hold
    about 6,000 distinct ones). Each row's arithmetic is its own (stats.expected_recall), so the pieces that the
    threads compute give every query the bits it would get alone."""
    n_q = triplets[0][0].shape[0]
    cols = [np.concatenate([t[i] for t in triplets]) for i in range(3)]
    first, inverse = distinct_rows(*cols)
    elig, beat, tie = (xp.f64(c[first]) for c in cols)
    u = int(first.shape[0])
    full = xp.empty((u, len(ks)))
    values = xp.empty((u, len(grid), len(ks))) if with_grid else None
    step = u if one_piece else max(1, PIECE_ENTRIES // (len(grid) if with_grid else 1))

    def piece(a: int) -> None:
        b = min(a + step, u)
        if values is not None:
            values[a:b], full[a:b] = _curve(xp, elig[a:b], beat[a:b], tie[a:b], grid, ks)
        else:
            full[a:b] = expected_recall(elig[a:b], beat[a:b], tie[a:b], elig[a:b], ks)

    list(pool.map(piece, range(0, u, step)))
    inv = inverse if xp.device is None else xp.t.as_tensor(inverse, device=xp.device)
    return values, full, [inv[i * n_q:(i + 1) * n_q] for i in range(len(triplets))]


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
    kind_list = [*kinds, "full"]
    n_cols = sum(len(ks) * (1 if kind == "full" else len(grid)) * len(LEVELS) for kind in kind_list)
    values = xp.empty((len(q_patient), n_cols))  # one column per (kind, level, N, K), filled kind by kind
    meta, stats = [], []
    random_full: tuple[Any, list[Any]] | None = None  # the whole-database values: the "full" rows reuse them
    threads = 1 if on_gpu else max(1, os.cpu_count() or 1)
    # numpy/scipy release the GIL in their loops: the threads use every core on the pieces of each kind
    with ThreadPoolExecutor(threads) as pool:
        for kind in kind_list:
            base = "random" if kind == "full" else kind
            keys = [COMBOS[(base, level)] for level in LEVELS]
            triplets = [(groups[e_key], counts[b_key], counts[t_key]) for e_key, b_key, t_key in keys]
            if kind == "full":
                if random_full is None:
                    _, full, invs = _kind_values(xp, pool, triplets, grid, ks, with_grid=False, one_piece=on_gpu)
                    random_full = (full, invs)
                vals, full, invs = random_full[0][:, None, :], None, random_full[1]
            else:
                vals, full, invs = _kind_values(xp, pool, triplets, grid, ks, with_grid=True, one_piece=on_gpu)
                if kind == "random":
                    random_full = (full, invs)
            for level, (elig_np, _, _), inv in zip(LEVELS, triplets, invs, strict=True):
                elig = xp.f64(elig_np)
                draws = elig[:, None] if kind == "full" else xp.minimum(xp.f64(grid)[None, :] - 1.0, elig[:, None])
                r = xp.f64(groups["r"]) if level == "patient" else None
                pts = [int(round(float((elig + 1).mean())))] if kind == "full" else grid
                block = vals[inv].reshape(len(q_patient), -1)  # (n_q, N x K): the columns in meta's order below
                values[:, len(meta):len(meta) + block.shape[1]] = block
                del block
                for gi, n_pts in enumerate(pts):
                    capped = xp.f64(draws[:, gi] + 1 < n_pts)
                    for k, chance in zip(ks, _chances(draws[:, gi], r, ks), strict=True):
                        stats += [chance.mean(), (draws[:, gi] + 1.0).mean(), capped.mean() * (kind != "full")]
                        meta.append({"pool_kind": kind, "level": level, "k": int(k), "n": n_pts})
            del vals, full, invs  # a kind's values are let go before the next kind's are computed
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
    first, inverse = distinct_rows(groups["m"], counts["b"], counts["t"])  # each distinct triplet once: same bits
    elig, beat, tie = groups["m"][first], counts["b"][first], counts["t"][first]
    for n_pool in PER_QUERY_N:
        frame[f"r1_at_{n_pool}"] = expected_recall(elig, beat, tie, np.minimum(n_pool - 1, elig), (1,))[inverse, 0]
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
