"""Which epsilon grid shows the privacy/utility trade-off on the demo? Runs one sweep (the demo's data and
model; heads initialised as asked) and prints, per point, Recall@1 at N=100 and at the largest N (random
pools) with the cut against the non-private retrained heads, and the linear-probe and zero-shot macro
AUROC. The demo's default grid must span the transition: one point that cuts Recall@1 by >= 30% (at N=100
and the largest N) and one that cuts it by <= 5%.

    python -m bench.sweep_grid [--init random] [--epochs 5] [--epsilons 0.05 0.2 1 4 16 64 inf]
    python -m bench.sweep_grid --stored      # the same table for the demo sweep already in the store

An experiment, not a speed benchmark: it reuses the cached embeddings of the demo (CXR_CACHE_DIR).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from types import SimpleNamespace

import pandas as pd

from backend.dp import run_sweep
from backend.progress import phased_progress
from backend.runs.demo import default_demo_spec
from backend.specs import SweepSpec


def r1(rows: pd.DataFrame, n: int | None) -> tuple[float, float, float, int]:
    sel = rows[(rows["pool_kind"] == "random") & (rows["level"] == "study") & (rows["k"] == 1)
               & (rows["target"] == "in-domain")].sort_values("n")
    row = sel.iloc[-1] if n is None else sel[sel["n"] <= n].iloc[-1]
    return float(row["recall"]), float(row["ci_low"]), float(row["ci_high"]), int(row["n"])


def macro(probe: pd.DataFrame, method: str) -> float:
    sel = probe[(probe["method"] == method) & (probe["features"] == "projected") & (probe["label"] == "macro")
                & (probe["target"] == "in-domain")]
    return float(sel["auroc"].iloc[0]) if len(sel) else math.nan


def stored_results(sweep: SweepSpec) -> list[SimpleNamespace]:
    """The sweep's points as stored by the demo job, in the shape run_sweep returns (label, privacy, rows)."""
    from backend.runs import store

    out = []
    for _, pt in store.load_sweep_points(sweep.run_id()).iterrows():
        rows = store.load_metrics(pt["run_id"])
        probe = store.load_probe(pt["run_id"])
        privacy = store.load_privacy(pt["run_id"]).iloc[0].to_dict()
        privacy["target_epsilon"] = pt["epsilon"]
        rows = rows[rows["variant"] == "dp"].assign(target="in-domain")
        probe = probe[probe["variant"] == "dp"].assign(target="in-domain", features="projected")
        probe["method"] = probe["method"].replace({"linear": "linear-probe"})
        out.append(SimpleNamespace(label="dp" if math.isfinite(pt["epsilon"]) else "retrained", privacy=privacy,
                                   relink_rows=rows, probe_rows=probe))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", default="random", choices=("model", "random"))
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--max-grad-norm", type=float, default=None, help="clipping bound C (default: the demo's)")
    ap.add_argument("--epsilons", nargs="+", type=float, default=[0.05, 0.2, 1, 4, 16, 64, math.inf])
    ap.add_argument("--json", default=None, help="also write the table here")
    ap.add_argument("--stored", action="store_true", help="read the default demo sweep from the store")
    args = ap.parse_args()
    demo = default_demo_spec()
    t0 = time.perf_counter()
    if args.stored:
        args.init, args.epochs = demo.sweep.base.init, demo.sweep.base.epochs
        results = stored_results(demo.sweep)
    else:
        base = dataclasses.replace(demo.sweep.base, init=args.init, epochs=args.epochs,
                                   max_grad_norm=args.max_grad_norm or demo.sweep.base.max_grad_norm)
        results = run_sweep(SweepSpec(base=base, epsilons=tuple(args.epsilons)), phased_progress("sweep"))
    seconds = time.perf_counter() - t0
    retrained = next((r for r in results if r.label == "retrained"), None)
    ref = {n: r1(retrained.relink_rows, n)[0] for n in (100, None)} if retrained else {}
    table = []
    for res in results:
        row = {"point": res.label, "target_epsilon": res.privacy.get("target_epsilon"),
               "epsilon": res.privacy.get("epsilon"), "noise": res.privacy.get("noise_multiplier")}
        for n, name in ((100, "100"), (None, "max")):
            rec, lo, hi, n_at = r1(res.relink_rows, n)
            row.update({f"r1_{name}": rec, f"r1_{name}_ci": [lo, hi], f"n_{name}": n_at,
                        f"cut_{name}": 1 - rec / ref[n] if ref.get(n) else math.nan})
        row.update(probe=macro(res.probe_rows, "linear-probe"), zero_shot=macro(res.probe_rows, "zero-shot"))
        table.append(row)
    frame = pd.DataFrame(table)
    print(f"init={args.init} epochs={args.epochs} max_grad_norm={args.max_grad_norm or demo.sweep.base.max_grad_norm}; "
          f"{seconds:.0f} s")
    print(frame.drop(columns=["r1_100_ci", "r1_max_ci"]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    dp = frame[frame["point"] == "dp"]
    strong = dp[(dp["cut_100"] >= 0.30) & (dp["cut_max"] >= 0.30)]
    weak = dp[(dp["cut_100"] <= 0.05) & (dp["cut_max"] <= 0.05)]
    print(f"spans the transition: {bool(len(strong) and len(weak))} "
          f"(>= 30% cut at eps {list(strong['target_epsilon'])}; <= 5% cut at eps {list(weak['target_epsilon'])})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"init": args.init, "epochs": args.epochs, "seconds": seconds, "rows": table}, fh, indent=1,
                      default=float)


if __name__ == "__main__":
    main()
