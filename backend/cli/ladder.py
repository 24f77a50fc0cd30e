"""Command: ladder (python -m backend ladder --help).

    python -m backend ladder                                # demo-weak, demo, demo-strong on the default synthetic data
    python -m backend ladder --rungs demo-weak demo --json ladder.json
    python -m backend ladder --estimate                     # only the time estimate from what is cached

Trains each rung (cached), audits it on the same test split and probes it (the job the dashboard's "Train the
ladder" button runs, in this process); every audit and probe is stored in the results database like the
dashboard's, and a JSON document goes to stdout (and to --json): per rung its training config, the linear-probe
and zero-shot macro AUROCs with 95% CIs, and Recall@1 lift (random pool, study level) at N=100 and at the largest
N with 95% CIs.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from backend.cli.audit import check_output
from backend.cli.dp import write_result
from backend.models import get_model
from backend.models.demo_config import RUNGS
from backend.progress import phased_progress
from backend.runs.ladder import ladder_estimate, run_ladder
from backend.specs import LADDER_RUNGS, LadderSpec, SourceSpec, check_ci_floor, parse_options
from backend.views.compare import model_comparison


def _num(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def rung_records(table: Any) -> list[dict[str, Any]]:
    """model_comparison rows -> one JSON record per rung (None where not measured)."""
    out = []
    for r in table.to_dict(orient="records"):
        rung = RUNGS.get(r["model"])
        rec: dict[str, Any] = {"model": r["model"], "specialisation": rung.specialisation if rung else None,
                               "config_key": rung.config.key() if rung else None,
                               "steps": rung.config.planned_steps() if rung else None,
                               "audit_run": r["audit_run"],
                               "probe_run": r["probe_run"] if isinstance(r["probe_run"], str) else None,
                               "probe_from": r["probe_from"]}
        for name, key in (("linear_probe_auroc", "linear"), ("zero_shot_auroc", "zero_shot")):
            v = _num(r[key])
            rec[name] = None if v is None else {"auroc": v, "ci_low": _num(r[f"{key}_low"]), "ci_high": _num(r[f"{key}_high"])}
        for name, tag in (("lift_n100", "100"), ("lift_largest_n", "max")):
            n = _num(r[f"n_{tag}"])
            rec[name] = None if n is None else {
                "n": int(n), "recall": _num(r[f"recall_{tag}"]), "recall_ci_low": _num(r[f"recall_{tag}_low"]),
                "recall_ci_high": _num(r[f"recall_{tag}_high"]), "lift": _num(r[f"lift_{tag}"]),
                "lift_ci_low": _num(r[f"lift_{tag}_low"]), "lift_ci_high": _num(r[f"lift_{tag}_high"])}
        out.append(rec)
    return out


def cmd_ladder(args: argparse.Namespace) -> int:
    for name in args.rungs:  # unknown models fail before any work (the registry is torch-free)
        get_model(name)
    source = SourceSpec(name=args.source, root=args.root, options=parse_options(args.source_option))
    check_ci_floor(args.n_bootstrap)
    spec = LadderSpec(rungs=tuple(args.rungs), source=source, n_bootstrap=args.n_bootstrap, seed=args.seed,
                      probe=not args.no_probe)
    if args.estimate:
        print(ladder_estimate(spec)["text"])
        return 0
    check_output(args.json, "--json")
    result = run_ladder(spec, phased_progress("ladder"))
    table = model_comparison([r["audit_run"] for r in result["rungs"]])
    payload = {"kind": "ladder", "run_id": spec.run_id(), "spec": spec.to_dict(),
               "definitions": {"lift": "Recall@1 / chance, random pool, study level; CIs: 95% patient bootstrap",
                               "n100": "N=100, or the largest N below it when the split is smaller"},
               "rungs": rung_records(table)}
    print(json.dumps(payload, indent=1, allow_nan=False))
    write_result(args.json, payload, spec.run_id())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ladder", help="train, audit and probe the model ladder (demo-weak, demo, demo-strong); JSON")
    p.add_argument("--rungs", nargs="+", default=list(LADDER_RUNGS), help="registered models, weakest first")
    p.add_argument("--source", default="synthetic", help="the source whose test split every rung is audited on")
    p.add_argument("--root", default=None, help="the source's data folder")
    p.add_argument("--source-option", action="append", default=[], metavar="KEY=VALUE", help="source option, repeatable")
    p.add_argument("--n-bootstrap", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-probe", action="store_true", help="audit only (the table then says 'not measured')")
    p.add_argument("--estimate", action="store_true", help="print the time estimate and stop")
    p.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    p.set_defaults(func=cmd_ladder)
