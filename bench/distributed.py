"""The audit under torchrun against one process on the same machine: `python -m backend audit` on a synthetic
split with a random-weights checkpoint of the demo architecture (cxr-demo), from an empty cache (embedding
included), once as one process and once as `torchrun --standalone --nproc-per-node P` (gloo on the CPU, NCCL with
one GPU per rank on a GPU machine).

Prints one JSON line per run (wall time, each process's peak RSS from its VmHWM, the device) and a last line with
the ratio one / P processes of the wall times, and whether the two audit JSONs have the same rows and summary
(they must: docs/SCALE.md). torchrun sets OMP_NUM_THREADS=1 for each rank; the one process keeps its default
threads, as a user would run it.

    python -m bench.distributed [--patients 400] [--image-size 128] [--nproc 2] [--device cpu] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def worker(argv: list[str], report: Path) -> int:
    """One process of a run (under torchrun or alone): the command line, then its peak RSS into report."""
    from backend.__main__ import main

    code = main(argv)
    rank = os.environ.get("RANK", "0")
    (report.parent / f"{report.name}.rank{rank}").write_text(json.dumps({"rank": int(rank), "peak_mb": _peak_mb()}))
    return code


def run(tmp: Path, name: str, argv: list[str], nproc: int) -> dict:
    report = tmp / name
    env = {**os.environ, "CXR_CACHE_DIR": str(tmp / f"cache-{name}")}
    inner = ["-m", "bench.distributed", "--worker", str(report), "--", *argv, "--json", str(tmp / f"{name}.json")]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *inner]
    else:
        cmd = [sys.executable, *inner]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
    ranks = sorted((json.loads(p.read_text()) for p in tmp.glob(f"{name}.rank*")), key=lambda r: r["rank"])
    return {"run": name, "processes": nproc, "wall_s": round(wall, 2),
            "peak_mb_per_process": [round(r["peak_mb"]) for r in ranks]}


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        sys.exit(worker(sys.argv[4:], Path(sys.argv[2])))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=400, help="synthetic patients (about 5 images each)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--nproc", type=int, default=2, help="processes of the torchrun run")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--json", action="store_true", help="only the JSON lines")
    args = parser.parse_args()

    import torch

    from backend.models.openclip import build_architecture

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        torch.manual_seed(0)
        torch.save(build_architecture("cxr-demo")[0].state_dict(), tmp / "model.pt")
        argv = ["audit", "--source-option", f"n_patients={args.patients}", "--source-option",
                f"image_size={args.image_size}", "--split", "all", "--model", f"local:{tmp / 'model.pt'}#cxr-demo"]
        if args.device:
            argv += ["--device", args.device]
        rows = [run(tmp, "one", argv, 1), run(tmp, "ranks", argv, args.nproc)]
        one, many = (json.loads((tmp / f"{r['run']}.json").read_text()) for r in rows)
        same = one["rows"] == many["rows"] and one["summary"] == many["summary"]
        device = "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu"
        for row in rows:
            print(json.dumps({**row, "device": device, "pairs": one["counts"]["pairs"]}))
        print(json.dumps({"ratio_one_over_ranks": round(rows[0]["wall_s"] / rows[1]["wall_s"], 3),
                          "same_rows_and_summary": same, "cpus": os.cpu_count()}))
        if not args.json:
            print(f"{args.nproc} processes: {rows[1]['wall_s']} s against {rows[0]['wall_s']} s for one "
                  f"({rows[0]['wall_s'] / rows[1]['wall_s']:.2f}x), results identical: {same}", file=sys.stderr)


if __name__ == "__main__":
    main()
