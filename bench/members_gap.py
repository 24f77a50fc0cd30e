"""Do the projection heads memorise the patients they were trained on? Re-linkage of members against
non-members, for the model's own heads, non-private retrained heads and DP heads, as a table.

    python -m bench.members_gap [--source-option sites=A] [--init model] [--epsilons inf 1 0.05]

The measurement is the engine's (`backend/dp/members.py`, `python -m backend members` for its JSON): members
are a seeded random subset of train patients as large as the test split (same number of patients), both groups
audited with the same pool sizes N; Recall@1 at N=100 and at the largest common N with 95% patient-bootstrap
CIs, and the gap (member - non-member) with its CI. An experiment, not a speed benchmark; it uses the cached
embeddings of the sweep (run the sweep first, or it embeds both splits).
"""

from __future__ import annotations

import argparse
import math
import sys

from backend.dp import run_members
from backend.specs import AuditSpec, DPSpec, SourceSpec, SweepSpec, parse_options


def _cell(value: float | None, low: float | None, high: float | None, sign: str = "") -> str:
    if value is None:
        return "n/a"
    ci = f" [{low:{sign}.4f}, {high:{sign}.4f}]" if low is not None and high is not None else ""
    return f"{value:{sign}.4f}{ci}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="synthetic")
    ap.add_argument("--source-option", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--model", default="demo")
    ap.add_argument("--init", default="model", choices=("model", "random"))
    ap.add_argument("--epsilons", nargs="+", type=float, default=[math.inf, 1.0, 0.05])
    ap.add_argument("--n-bootstrap", type=int, default=50)
    args = ap.parse_args()
    audit = AuditSpec(pools=("random",), ks=(1,), n_bootstrap=args.n_bootstrap)
    source = SourceSpec(name=args.source, options=parse_options(args.source_option))
    base = DPSpec(source=source, model=args.model, init=args.init, audit=audit)
    doc = run_members(SweepSpec(base=base, epsilons=tuple(args.epsilons)))
    g = doc["groups"]
    print(f"members: {g['members']['patients']} train patients ({g['members']['pairs']} pairs); non-members: "
          f"{g['non_members']['patients']} test patients ({g['non_members']['pairs']} pairs); {g['pools']}")
    print(f"{'heads':34s} {'N':>6s}  {'members (trained on)':26s} {'non-members (test)':26s} gap")
    for p in doc["points"]:
        name = {"original": "original model", "retrained": "retrained, no DP"}.get(p["label"]) or \
            f"DP eps={p['target_epsilon']:g} ({p['guarantee']})"
        for r in p["headline"]:
            print(f"{name + ', init ' + args.init:34s} {r['n']:>6d}  "
                  f"{_cell(r['member_recall'], r['member_ci_low'], r['member_ci_high']):26s} "
                  f"{_cell(r['nonmember_recall'], r['nonmember_ci_low'], r['nonmember_ci_high']):26s} "
                  f"{_cell(r['gap'], r['gap_ci_low'], r['gap_ci_high'], '+')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
