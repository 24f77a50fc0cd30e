"""Do the projection heads memorise the patients they were trained on? Re-linkage of members against
non-members, for the model's own heads, non-private retrained heads and DP heads.

    python -m bench.members_gap [--source-option sites=A] [--init model] [--epsilons inf 1 0.05]

DP-SGD bounds how much any one training patient changes the heads, so the re-linkage it can remove is
the part that comes from memorising the training set: members (train-split patients, whose pairs trained
the heads) re-linked better than non-members (the test split). This prints Recall@1 at N=100 and at the
largest pool on both, with 95% patient-bootstrap CIs. Members are a random subset of train patients as
large as the test split (same number of patients), so that the pools have about the same size. An
experiment, not a speed benchmark; it uses the cached embeddings of the sweep (run the sweep first, or
it embeds both splits).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys

import numpy as np

from backend.audit import audit_embeddings, headline
from backend.cli.dp import parse_option
from backend.dp import train_heads
from backend.dp.eval import prepare, project
from backend.specs import AuditSpec, DPSpec, SourceSpec


def subset(es, mask: np.ndarray):
    return dataclasses.replace(es, meta=es.meta[mask].reset_index(drop=True), image_emb=es.image_emb[mask],
                               report_emb=es.report_emb[mask], image_feat=es.image_feat[mask],
                               text_feat=es.text_feat[mask])


def recall_at_1(heads: dict, es, audit: AuditSpec) -> str:
    img, rep = project(heads, es.image_feat, "image"), project(heads, es.text_feat, "text")
    rows = headline(audit_embeddings(dataclasses.replace(es, image_emb=img, report_emb=rep), audit).rows)
    rows = rows[rows["pool_kind"] == "random"]
    return "  ".join(f"N={int(r.n):>5}: {r.recall:.4f} [{r.ci_low:.4f}, {r.ci_high:.4f}]" for r in rows.itertuples())


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
    source = SourceSpec(name=args.source, options=dict(parse_option(o) for o in args.source_option))
    base = DPSpec(source=source, model=args.model, init=args.init, audit=audit)
    inputs = prepare(base)
    train, test = inputs.train, inputs.test
    patients = train.meta["patient_id"].unique()
    chosen = np.random.default_rng(0).choice(patients, size=min(len(patients), test.meta["patient_id"].nunique()),
                                             replace=False)
    members = subset(train, train.meta["patient_id"].isin(set(chosen)).to_numpy())
    print(f"members: {members.meta['patient_id'].nunique()} train patients ({len(members.meta)} pairs); "
          f"non-members: {test.meta['patient_id'].nunique()} test patients ({len(test.meta)} pairs)")
    print(f"{'heads':36s} {'members (trained on)':70s} non-members (test)")
    print(f"{'original model':36s} {recall_at_1(dict(train.heads), members, audit):70s} "
          f"{recall_at_1(dict(train.heads), test, audit)}", flush=True)
    for eps in args.epsilons:
        heads = train_heads(dataclasses.replace(base, epsilon=eps), train, None, logit_scale=inputs.logit_scale).as_dict()
        name = "retrained, no DP" if math.isinf(eps) else f"DP eps={eps:g} (nominal)"
        print(f"{name + ', init ' + args.init:36s} {recall_at_1(heads, members, audit):70s} "
              f"{recall_at_1(heads, test, audit)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
