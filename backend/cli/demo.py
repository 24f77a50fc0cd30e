"""Command: recompute-demo (what the Overview's "Recompute the demo on this machine" runs, in this process).

    python -m backend recompute-demo            # train the demo model (cached), audit, the epsilon sweep
    python -m backend recompute-demo --estimate # what is left to compute and its estimated seconds, then stop

Each part is stored in the cache's results database as soon as it is computed (the dashboard shows it); a run
that is stopped resumes where it was: the trained model, a stored audit and every stored sweep point are kept.
"""

from __future__ import annotations

import argparse
import json

from backend.progress import phased_progress


def _recompute(args: argparse.Namespace) -> int:
    from backend.runs.demo import default_demo_spec, demo_plan, run_demo

    spec = default_demo_spec(args.n_patients)
    plan = demo_plan(spec)
    print(json.dumps({"estimated_seconds": {k: round(v) for k, v in plan.items()},
                      "audit_run": spec.audit.run_id(), "sweep_run": spec.sweep.run_id() if spec.sweep else None},
                     indent=1))
    if args.estimate:
        return 0
    out = run_demo(spec, phased_progress("demo"))
    print(json.dumps(out, indent=1))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recompute-demo", help="recompute the demo (train the demo model, audit, epsilon sweep) and "
                       "store it, as the Overview's button does")
    p.add_argument("--n-patients", type=int, default=None,
                   help="synthetic patients (default: CXR_DEMO_N_PATIENTS, else the source's default)")
    p.add_argument("--estimate", action="store_true", help="print what is left and its estimated time, then stop")
    p.set_defaults(func=_recompute)
