"""The dashboard's Recompute button, timed: the one-button demo job (audit of the demo model's test split,
then the default epsilon sweep) with the demo model already trained, from an otherwise empty cache
(embeddings, results and store start empty each time), repeated.

    python -m bench.demo_recompute [--repeats 3] [--json OUT] [--timeline]

The demo weights come from the current cache (CXR_CACHE_DIR; `python -m backend prepare-demo` trains them
first when missing) and are copied into a scratch cache per repeat. The device is the job's own choice
(CUDA when present). Prints one JSON line per repeat: total, the audit part and the sweep part in seconds
(split where the job's progress crosses from the audit's share of the bar to the sweep's, from
backend.runs.demo.demo_plan), and the device.
Goals: <= 8 minutes on a quiet 2-core CPU, <= 2 minutes on one GPU.
--timeline: also print to stderr, whenever the job's message changes phase, the seconds since the start, the bar's
share and the time-left estimate the dashboard shows (elapsed x (1 - f) / f), so a run shows where its time goes and
how well the estimate held (the last row of each repeat: the true time left is 0).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def one_run(models: Path, scratch: Path, timeline: bool = False) -> dict:
    from backend.runs.demo import bar_marks, default_demo_spec, demo_plan, run_demo
    from backend.runs.worker import device_label

    shutil.copytree(models, scratch / "models")
    os.environ["CXR_CACHE_DIR"] = str(scratch)
    spec = default_demo_spec()
    train_end, audit_end = (m / 1000 for m in bar_marks(demo_plan(spec)))  # the audit ends where the sweep begins
    marks: dict[str, float] = {}
    start = time.perf_counter()

    phase = [""]

    def progress(done: float, total: float, message: str = "") -> None:
        share = done / total if total else 0.0
        name = message.split("(")[0].strip()
        if timeline and name != phase[0]:
            phase[0] = name
            elapsed = time.perf_counter() - start
            left = f"{elapsed * (1 - share) / share:7.0f}" if share >= 0.02 else "      -"
            print(f"{elapsed:8.1f} s  {share:5.3f}  left~{left} s  {message[:100]}", file=sys.stderr, flush=True)
        if share >= train_end and "audit" not in marks:
            marks["audit"] = time.perf_counter()
        if share > audit_end and "sweep" not in marks:
            marks["sweep"] = time.perf_counter()

    out = run_demo(spec, progress)
    end = time.perf_counter()
    a, s = marks.get("audit", start), marks.get("sweep", end)
    return {"device": device_label(), "total_s": end - start, "audit_s": s - a, "sweep_s": end - s,
            "audit_run": out["audit_run"], "sweep_run": out["sweep_run"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--timeline", action="store_true", help="print each phase with its time and time-left estimate")
    args = parser.parse_args()
    from backend import settings
    from backend.models.demo import prepare_demo

    prepare_demo()  # the cached weights (trained now when missing)
    models = settings.cache_subdir("models")
    rows = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="cxr-recompute-") as tmp:
            row = one_run(models, Path(tmp), args.timeline)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text("\n".join(json.dumps(r) for r in rows) + "\n")


if __name__ == "__main__":
    main()
