"""Benchmark of backend.relink.relink_curves against baselines measured in the same process.

For each n (default 20,000 and 43,793; d = 512) one subprocess (so that its peak memory is its own):
  1. synthetic pairs: ~2 images per study, ~3 studies per patient, label vectors from 12 groups, image and
     report embeddings correlated, 5% of studies reuse another study's report text (text ties);
  2. the whole curve: relink_curves with every N of the default grid, K in {1, 5, 10}, random and hard
     pools, study and patient level, 200 patient-bootstrap resamples, on --device (cpu or cuda); wall time,
     peak RSS (getrusage) and on CUDA the peak GPU memory; once more without the bootstrap;
  3. baseline: one float32 matrix product of the exact shape of the curve's work, query images x candidate
     reports x d (n_q x m x d; m is about n_q / 2 here, two images per study), in torch on the same device,
     in row blocks of the engine's one-lane size (DEFAULT_BLOCK_ELEMENTS; the CPU curve counts in two lanes of
     half-height blocks on one torch thread each, which run this matmul alone at the same speed) into one
     preallocated buffer, on all torch threads; the ratio curve / matmul (goals: CPU <= 1.2,
     CUDA <= 5 at 400k candidates), the fastest of --repeats runs each (default 2), interleaved; also the
     ratio of the medians (warm curve runs over matmuls), steadier on a machine whose speed swings;
  4. the same curve by sampling 1,000 pools per N the way a study would (similarity row once per query,
     then per pool rng.choice without replacement and a count): timed on a subset of queries and N,
     extrapolated linearly to all queries, every N of the grid and both pool kinds (study level only,
     so the ratio is conservative).
--scale: 43,793 query images against 400,000 candidate reports (time and peak memory).
--profile: one more curve run under cProfile; its top functions by cumulative time (where the time goes).

Usage: python -m bench.bench_relink [--n 20000 43793] [--scale] [--skip-sampling] [--device cuda] [--repeats 5]
       [--profile]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent

D = 512
CHUNK = 50_000


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def synthetic(n_pairs: int, seed: int = 0, n_studies: int | None = None, query_images_only: bool = False) -> dict:
    """Pairs with structure: ~2 images/study, ~3 studies/patient, 12 label groups, correlated embeddings.

    n_studies > n_pairs / 2 adds report-only studies (one pair each) and a query_mask over the first n_pairs.
    query_images_only: image_emb holds the n_pairs query rows only (what backend.relink reads of it), the
    same values. The generator never holds more than the arrays it returns plus a 50,000-row chunk."""
    rng = np.random.default_rng(seed)
    base = max(1, n_pairs // 2)
    n_studies = n_studies or base
    if n_studies < base:
        raise ValueError(f"{n_pairs} query pairs make {base} studies; ask for at least that many candidates "
                         f"(got {n_studies}).")
    study_of_pair = np.minimum(np.arange(n_pairs) // 2, base - 1)
    extra = n_studies - base
    study = np.concatenate([study_of_pair, base + np.arange(extra)])
    patient = study // 3
    centers = rng.normal(size=(12, 14))
    group = np.minimum(rng.geometric(0.3, size=n_studies) - 1, 11)
    labels14 = (centers[group] > 0.3).astype(np.float32)
    labels14[rng.random(labels14.shape) < 0.02] = np.nan
    protos = rng.standard_normal(size=(12, D), dtype=np.float32)
    # the per-pair report array is built in place: the studies' rows are drawn into its tail (the report-only
    # studies' rows are already where they belong), then the query pairs' rows are gathered to its head
    report = np.empty((study.size, D), np.float32)
    rep = report[study.size - n_studies:]
    rng.standard_normal(out=rep, dtype=np.float32)  # float32 throughout: small generator peak
    for a in range(0, n_studies, CHUNK):
        rep[a:a + CHUNK] += 0.6 * protos[group[a:a + CHUNK]]
    text = np.arange(n_studies)
    dup = rng.random(n_studies) < 0.05
    src = rng.integers(0, n_studies, size=n_studies)
    text[dup] = text[src[dup]]
    rep[dup] = rep[src[dup]]
    img = np.empty((n_pairs if query_images_only else study.size, D), np.float32)
    for a in range(0, study.size, CHUNK):  # chunked to keep the generator's memory small
        s = study[a:a + CHUNK]
        chunk = 0.07 * rep[s] + rng.standard_normal(size=(s.size, D), dtype=np.float32)
        if a < img.shape[0]:
            img[a:a + CHUNK] = chunk[:img.shape[0] - a]
    report[:n_pairs] = rep[study[:n_pairs]]  # overlapping rows: numpy reads them before it writes
    mask = np.zeros(study.size, bool)
    mask[:n_pairs] = True
    return {"image_emb": img, "report_emb": report, "study_id": study, "patient_id": patient,
            "report_text": text[study].astype(str), "labels": labels14[study], "query_mask": mask}


def work_arrays(data: dict) -> tuple[np.ndarray, np.ndarray]:
    """The curve's own matrix product operands: query images (n_q, d) and candidate reports (m, d), one per
    study (its first pair), both L2-normalised, as backend.relink builds them."""
    q = data["image_emb"][data["query_mask"]]
    _, first = np.unique(data["study_id"], return_index=True)
    c = data["report_emb"][first]
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32), \
        (c / np.linalg.norm(c, axis=1, keepdims=True)).astype(np.float32)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_seconds(q: np.ndarray, c: np.ndarray, device: str = "cpu") -> float:
    """Wall time of one float32 q @ c.T (n_q x m x d, the exact shape of the curve's work) in torch on
    `device`, in row blocks of the engine's one-lane size into one preallocated buffer (the result is discarded)."""
    import torch

    from backend.relink.counts import CUDA_BLOCK_ELEMENTS, DEFAULT_BLOCK_ELEMENTS

    per_block = CUDA_BLOCK_ELEMENTS if device.startswith("cuda") else DEFAULT_BLOCK_ELEMENTS
    qt, ct = torch.from_numpy(q).to(device), torch.from_numpy(c).to(device)
    rows = max(1, min(qt.shape[0], per_block // ct.shape[0]))
    buf = torch.empty((rows, ct.shape[0]), device=device)
    _sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for a in range(0, qt.shape[0], rows):
            b = min(qt.shape[0], a + rows)
            torch.mm(qt[a:b], ct.T, out=buf[:b - a])
    _sync(device)
    return time.perf_counter() - start


def sampling_seconds(data: dict, res, n_sub: int = 20, n_pools: int = 1000, seed: int = 0) -> dict:
    """Per-query cost of 1,000 sampled pools per N (random pool, study level), fitted as a + b * N
    (N below every query's number of eligible distractors, so no pool is capped)."""
    rng = np.random.default_rng(seed)
    pq = res.per_query
    img = data["image_emb"][data["query_mask"]]
    study, patient = data["study_id"], data["patient_id"]
    _, first = np.unique(study, return_index=True)
    reps = data["report_emb"][first]
    reps = reps / np.linalg.norm(reps, axis=1, keepdims=True)
    c_pat = patient[first]
    pts, costs = [], []
    q_idx = rng.choice(len(pq), size=n_sub, replace=False)
    for n_pool in sorted({min(v, int(pq.eligible.min()) + 1) for v in (10, 100, 1000, 10000)}):
        start = time.perf_counter()
        for q in q_idx:
            v = img[q] / np.linalg.norm(img[q])
            sims = reps @ v  # the query's similarity row, once
            true = int(pq.study_id.iloc[q])
            elig = np.flatnonzero(c_pat != c_pat[true])
            take = min(n_pool - 1, elig.size)
            hits = 0
            for _ in range(n_pools):
                pool = elig[rng.choice(elig.size, size=take, replace=False)]
                hits += int((sims[pool] > sims[true]).sum() < 1)
        pts.append(n_pool)
        costs.append((time.perf_counter() - start) / n_sub)
    slope, icpt = np.polyfit(pts, costs, 1)
    return {"per_query_s": dict(zip(pts, costs, strict=True)), "fit_a_s": float(icpt), "fit_b_s_per_n": float(slope)}


def _profile(curve, top: int = 25) -> list[str]:
    """One more curve run under cProfile: the project's functions (and torch/numpy calls) by cumulative time.
    On CUDA a function that waits for the device carries the wait, so the list shows where the time goes."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    curve()
    prof.disable()
    stats = pstats.Stats(prof)
    rows = []
    for (file, line, name), (_, calls, _, cum, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = file.split("/backend/")[-1] if "/backend/" in file else None
        if where is not None or "built-in method" in name or "method '" in name:
            rows.append((cum, f"{cum:8.3f} s {calls:7d} calls  {where or ''}:{line} {name}"))
    return [text for _, text in sorted(rows, reverse=True)[:top]]


def run_case(n: int, skip_sampling: bool, n_candidates: int | None = None, device: str = "cpu",
             repeats: int = 2, profile: bool = False) -> dict:
    """One benchmark case in this process; returns its figures."""
    import torch

    from backend.relink import relink_curves

    data = synthetic(n, seed=n, n_studies=n_candidates)

    def curve(n_bootstrap: int = 200) -> tuple[float, object]:
        _sync(device)
        start = time.perf_counter()
        res = relink_curves(**data, pools=("random", "hard"), ks=(1, 5, 10), n_bootstrap=n_bootstrap, seed=0,
                            device=device)
        _sync(device)
        return time.perf_counter() - start, res

    if device.startswith("cuda"):  # CUDA context, cuBLAS handles and kernels before any timing
        small = synthetic(2000, seed=1)
        relink_curves(**small, n_bootstrap=10, device=device)
        matmul_seconds(*work_arrays(small), device=device)
    rss0 = _maxrss_mb()
    curve_s, res = curve()
    rss1 = _maxrss_mb()
    q, c = work_arrays(data)  # after the first curve, so that its peak RSS is the curve's (bench_rss: in detail)
    out = {"device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
           "n_queries": int(data["query_mask"].sum()), "n_candidates": res.summary["n_candidates"], "d": D,
           "torch_threads": torch.get_num_threads(), "curve_s": curve_s, "rows": len(res.rows),
           "grid": res.summary["n_grid"], "maxrss_before_mb": rss0, "maxrss_after_curve_mb": rss1,
           "curve_peak_delta_mb": rss1 - rss0, "frac_ties": res.summary["frac_queries_with_ties"],
           "input_arrays_mb": sum(v.nbytes for v in data.values()) / 2**20,
           "r1_random_study": res.rows.query("pool_kind == 'random' and level == 'study' and k == 1")
           .set_index("n").recall.round(4).to_dict()}
    if device.startswith("cuda"):
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    # interleaved (matmul, curve, matmul) so that load from other processes hits both alike; the baseline is
    # the exact shape of the work: queries x candidate reports x d
    # repeats - 1 more (matmul, curve) pairs then a last matmul: on a machine whose speed swings, the medians
    # are the steadier figures; the headline ratio stays min over min (the first curve run is a cold one)
    runs, mm = [curve_s], []
    for _ in range(max(1, repeats - 1)):
        mm.append(matmul_seconds(q, c, device))
        runs.append(curve()[0])
    mm.append(matmul_seconds(q, c, device))
    out["curve_runs_s"] = runs
    out["matmul_runs_s"] = mm
    out["curve_s"] = min(runs)
    out["matmul_qxcxd_s"] = min(mm)
    out["ratio_curve_over_matmul"] = out["curve_s"] / out["matmul_qxcxd_s"]
    out["ratio_median"] = float(np.median(runs[1:]) / np.median(mm))  # warm runs only
    out["curve_no_bootstrap_s"] = curve(0)[0]
    if profile:
        out["profile_top"] = _profile(curve)
    if n_candidates is None and not skip_sampling and not device.startswith("cuda"):
        samp = sampling_seconds(data, res)
        rows = res.rows[(res.rows.level == "study") & (res.rows.k == 1) & res.rows.pool_kind.isin(["random", "hard"])]
        eff_n = rows.effective_n.to_numpy()  # mean pool size actually drawn at each grid N, both kinds
        out["sampling"] = samp
        out["sampling_est_s"] = float((samp["fit_a_s"] * eff_n.size + samp["fit_b_s_per_n"] * eff_n.sum())
                                      * out["n_queries"])
        out["ratio_sampling_over_curve"] = out["sampling_est_s"] / curve_s
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="*", default=[20_000, 43_793],
                        help="numbers of query pairs (none: only --scale)")
    parser.add_argument("--scale", action="store_true", help="43,793 queries against 400,000 candidate reports")
    parser.add_argument("--scale-candidates", type=int, default=400_000)
    parser.add_argument("--skip-sampling", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="curve runs per case, interleaved with matmuls (default 2; 5+ on a noisy machine)")
    parser.add_argument("--profile", action="store_true",
                        help="one more curve run under cProfile: the top functions by cumulative time")
    parser.add_argument("--case", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--case-candidates", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.case is not None:
        print(json.dumps(run_case(args.case, args.skip_sampling, args.case_candidates, args.device,
                                  args.repeats, args.profile)))
        return
    cases = [(n, None) for n in args.n] + ([(43_793, args.scale_candidates)] if args.scale else [])
    print(f"machine: {os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB")
    for n, m in cases:
        cmd = [sys.executable, "-m", "bench.bench_relink", "--case", str(n), "--device", args.device,
               "--repeats", str(args.repeats)]
        cmd += ["--case-candidates", str(m)] if m else []
        cmd += ["--skip-sampling"] if args.skip_sampling else []
        cmd += ["--profile"] if args.profile else []
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO)
        if proc.returncode != 0:
            print(f"case n={n} m={m} failed:\n{proc.stderr[-3000:]}")
            continue
        fig = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(fig, indent=1))
        line = (f"n={fig['n_queries']} candidates={fig['n_candidates']}: curve {fig['curve_s']:.2f} s, "
                f"peak RSS {fig['maxrss_after_curve_mb']:.0f} MB (+{fig['curve_peak_delta_mb']:.0f} MB over the inputs)")
        line += (f"; {fig['device']}: q x c x d matmul {fig['matmul_qxcxd_s']:.3f} s; ratio "
                 f"{fig['ratio_curve_over_matmul']:.2f}x (medians {fig['ratio_median']:.2f}x); without bootstrap {fig['curve_no_bootstrap_s']:.2f} s")
        if "sampling_est_s" in fig:
            line += f"; sampling (extrapolated) {fig['sampling_est_s']:.0f} s = {fig['ratio_sampling_over_curve']:.0f}x"
        print(line, flush=True)


if __name__ == "__main__":
    main()
