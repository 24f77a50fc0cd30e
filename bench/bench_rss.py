"""Peak memory of the CPU re-linkage check at full scale (43,793 query images against M candidate reports),
against the baseline of just holding its inputs, both measured in the same child process.

One child process per case: it imports the engine (numpy, pandas, scipy, torch), builds the inputs
(bench.bench_relink.synthetic), resets its high-water mark (writes 5 to /proc/self/clear_refs) and reads
VmHWM: the RSS of holding the inputs, the baseline. It then runs the curve as bench_relink --scale does
(random and hard pools, K in {1, 5, 10}, every N of the default grid, 200 patient-bootstrap resamples, CPU)
and reads VmHWM again: peak / baseline is the ratio printed, with the peak in MB and the wall time. A sampler
thread notes the RSS every 20 ms under the engine step that runs (normalising, counting, the curve, ...),
so the holders show ("setup": everything outside those steps: the id codes, the label groups, the gaps
between steps; a step shorter than 20 ms, or one that holds the GIL throughout, may go unseen there;
VmHWM sees everything). The child also prints its progress, RSS and peak to stderr every 30 s.

Variants:
  copy  the engine called as before: image and report embeddings of every pair (n x d each); the engine
        copies the rows it uses (normalised, candidates sorted by label group)
  lean  only the queries' image embeddings (the rows the engine reads), and overwrite_emb=True: the engine
        normalises and reorders the caller's arrays in place instead of copying them (the same result bits)

--curve-only: only the step after the counting (the curve, the bootstrap, the per-query table), on random
counts of the check's shape: its scratch does not depend on the values, and it takes a minute, not an hour.

Usage: python -m bench.bench_rss [--candidates 100000 400000] [--variants copy lean] [--queries 43793] [--json]
       python -m bench.bench_rss --curve-only [--candidates 400000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STEPS = ("normalised_rows", "_group_sizes", "curve_rows", "per_query_frame", "summary_dict")  # in backend.relink.curves


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class _Sampler:
    """RSS every `every` seconds, the maximum kept per engine step (the step names set by the wrappers)."""

    def __init__(self, every: float = 0.02) -> None:
        self.step, self.peaks, self.every = "setup", {}, every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            rss = _status_mb("VmRSS")
            self.peaks[self.step] = max(self.peaks.get(self.step, 0.0), rss)

    def wrap(self, module: object, name: str) -> None:
        inner = getattr(module, name)

        def wrapped(*args: object, **kwargs: object) -> object:
            outer, self.step = self.step, name
            try:
                return inner(*args, **kwargs)
            finally:
                self.step = outer

        setattr(module, name, wrapped)


def run_case(n_queries: int, n_candidates: int, variant: str) -> dict:
    """One case in this process; returns its figures."""
    import backend.relink.counts as counts
    import backend.relink.curves as relink
    from bench.bench_relink import synthetic

    data = synthetic(n_queries, seed=n_queries, n_studies=n_candidates, query_images_only=variant == "lean")
    inputs_mb = sum(v.nbytes for v in data.values()) / 2**20
    sampler = _Sampler()
    for name in STEPS:
        sampler.wrap(relink, name)
    sampler.wrap(counts, "count_all")
    reset = _reset_hwm()
    base = _status_mb("VmHWM") if reset else _status_mb("VmRSS")
    sampler.thread.start()
    start = time.perf_counter()
    last = [start]

    def progress(done: int, total: int, message: str = "") -> None:  # a line on stderr every 30 s
        now = time.perf_counter()
        if now - last[0] >= 30 or done == total:
            last[0] = now
            print(f"[{now - start:6.0f} s] {done}/{total} queries counted; RSS {_status_mb('VmRSS'):.0f} MB, "
                  f"peak {_status_mb('VmHWM'):.0f} MB", file=sys.stderr, flush=True)

    res = relink.relink_curves(**data, pools=("random", "hard"), ks=(1, 5, 10), n_bootstrap=200, seed=0,
                               device="cpu", overwrite_emb=variant == "lean", progress=progress)
    seconds = time.perf_counter() - start
    sampler.stop.set()
    sampler.thread.join()
    peak = _status_mb("VmHWM")
    return {"variant": variant, "n_queries": res.summary["n_queries"], "n_candidates": res.summary["n_candidates"],
            "n_pairs": int(data["report_emb"].shape[0]), "input_arrays_mb": inputs_mb, "rss_inputs_mb": base,
            "hwm_reset": reset, "peak_rss_mb": peak, "ratio_peak_over_inputs": peak / base, "curve_s": seconds,
            "rss_by_step_mb": {k: round(v) for k, v in sampler.peaks.items()},
            "r1_random_study_full": float(res.rows.query("pool_kind == 'full' and level == 'study' and k == 1")
                                          .recall.iloc[0])}


def run_curve_case(n_queries: int, n_candidates: int) -> dict:
    """The curve step alone (curve_rows, summary_dict, per_query_frame) on per-query counts of the shape of
    the check (n_queries queries, about n_candidates eligible distractors each, 10% of queries with ties, ~6
    queries per patient), drawn at random: its scratch memory does not depend on the values. Peak over the
    RSS of holding the counts, as run_case does; for a quick look at the step that follows the counting."""
    import numpy as np

    from backend.relink.rows import curve_rows, per_query_frame, summary_dict

    rng = np.random.default_rng(0)
    n = n_queries
    r = rng.integers(1, 4, size=n)
    m = n_candidates - r
    mh = m // 12
    groups = {"m": m, "mh": mh, "pm": m, "pmh": mh, "r": r}
    counts = {"score": rng.random(n).astype(np.float32)}
    for b_key, t_key, pool in (("b", "t", m), ("bh", "th", mh), ("pb", "pt", m), ("pbh", "pth", mh)):
        counts[b_key] = np.floor(rng.random(n) ** 3 * pool).astype(np.int64)
        counts[t_key] = np.where(rng.random(n) < 0.1, rng.integers(1, 4, size=n), 0)
    q_patient = np.arange(n) // 6
    reset = _reset_hwm()
    base = _status_mb("VmHWM") if reset else _status_mb("VmRSS")
    start = time.perf_counter()
    curve_rows(counts, groups, q_patient, kinds=["random", "hard"], ks=[1, 5, 10], n_grid=None, n_bootstrap=200,
               seed=0, device=None)
    summary_dict(counts, groups, q_patient, n_bootstrap=200, seed=0, n_candidates=n_candidates,
                 include_same_patient=False, extra={})
    per_query_frame(np.arange(n), None, np.arange(n), q_patient, counts, groups)
    peak = _status_mb("VmHWM")
    return {"variant": "curve-only", "n_queries": n, "n_candidates": n_candidates, "rss_inputs_mb": base,
            "hwm_reset": reset, "peak_rss_mb": peak, "curve_step_extra_mb": peak - base,
            "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=43_793)
    parser.add_argument("--candidates", type=int, nargs="+", default=[100_000, 400_000])
    parser.add_argument("--variants", nargs="+", default=["copy", "lean"], choices=["copy", "lean"])
    parser.add_argument("--json", action="store_true", help="print each case's figures as JSON too")
    parser.add_argument("--curve-only", action="store_true",
                        help="only the step after the counting, on random counts of the check's shape (quick)")
    parser.add_argument("--case", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        q, m = int(args.case[0]), int(args.case[1])
        print(json.dumps(run_curve_case(q, m) if args.case[2] == "curve-only" else run_case(q, m, args.case[2])))
        return
    if args.curve_only:
        for m in args.candidates:
            cmd = [sys.executable, "-m", "bench.bench_rss", "--case", str(args.queries), str(m), "curve-only"]
            fig = json.loads(subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True, cwd=REPO)
                             .stdout.strip().splitlines()[-1])
            print(f"{fig['n_queries']} queries x {fig['n_candidates']} candidates, the curve step alone: peak RSS "
                  f"{fig['peak_rss_mb']:.0f} MB vs {fig['rss_inputs_mb']:.0f} MB holding the counts: "
                  f"+{fig['curve_step_extra_mb']:.0f} MB; {fig['seconds']:.0f} s", flush=True)
        return
    for m in args.candidates:
        for variant in args.variants:
            cmd = [sys.executable, "-m", "bench.bench_rss", "--case", str(args.queries), str(m), variant]
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False, cwd=REPO)  # stderr: live
            if proc.returncode != 0:
                print(f"case {args.queries} x {m} ({variant}) failed (exit code {proc.returncode}; its "
                      "traceback is above)", flush=True)
                continue
            fig = json.loads(proc.stdout.strip().splitlines()[-1])
            if args.json:
                print(json.dumps(fig, indent=1))
            note = "" if fig["hwm_reset"] else " (could not reset VmHWM: the baseline is the RSS after generation)"
            print(f"{fig['n_queries']} queries x {fig['n_candidates']} candidates, {variant}: peak RSS "
                  f"{fig['peak_rss_mb']:.0f} MB vs {fig['rss_inputs_mb']:.0f} MB holding the inputs "
                  f"({fig['input_arrays_mb']:.0f} MB of arrays): {fig['ratio_peak_over_inputs']:.2f}x, "
                  f"+{fig['peak_rss_mb'] - fig['rss_inputs_mb']:.0f} MB; curve {fig['curve_s']:.0f} s; "
                  f"by step {fig['rss_by_step_mb']}{note}", flush=True)


if __name__ == "__main__":
    main()
