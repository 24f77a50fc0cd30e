"""Commands: dp, sweep, probe, members (python -m backend COMMAND --help).

    python -m backend dp --source synthetic --model demo --epsilon 1 --objective public-negatives --json out.json
    python -m backend sweep --epsilons 0.34 1 inf --objective in-batch --transfer synthetic:sites=B --json sweep.json
    python -m backend probe --source synthetic --model demo --json probe.json
    python -m backend members --source synthetic --model demo --epsilons inf 1 0.05 --json members.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

from backend import settings
from backend.cli.audit import check_output
from backend.errors import SpecError
from backend.progress import phased_progress
from backend.public_bank import default_bank
from backend.specs import (
    ACCOUNTANTS,
    DEFAULT_EPSILONS,
    OBJECTIVES,
    POOL_KINDS,
    PRIVACY_UNITS,
    AuditSpec,
    DPSpec,
    SourceSpec,
    SweepSpec,
    check_ci_floor,
    parse_options,
)

log = logging.getLogger(__name__)


def parse_source(text: str) -> SourceSpec:
    """'name' or 'name:key=value,key=value' (values read as JSON when they parse) -> SourceSpec."""
    name, _, rest = text.partition(":")
    if not name:
        raise SpecError(f"Source {text!r} has no name; use e.g. synthetic:sites=B.")
    options = parse_options(rest)
    root = options.pop("root", None)
    return SourceSpec(name=name, root=root, options=options)


def _add_args(p: argparse.ArgumentParser, *, epsilon: bool, training: bool = True, evaluation: bool = True) -> None:
    """The arguments a command uses: training (the DP recipe; not for probe), epsilon (dp's single target) and
    evaluation (transfer targets, pools, K; not for members, which measures K = 1 on random pools)."""
    p.add_argument("--source", default="synthetic", help="registered source to train and test on")
    p.add_argument("--root", default=None, help="the source's data folder")
    p.add_argument("--source-option", action="append", default=[], metavar="KEY=VALUE", help="source option, repeatable")
    p.add_argument("--model", default="demo", help="registered model or local:<path>")
    if epsilon:
        p.add_argument("--epsilon", type=float, default=DPSpec.epsilon, help="target epsilon; inf = non-private retraining")
    if training:
        p.add_argument("--objective", default="in-batch", choices=OBJECTIVES,
                       help="in-batch (CLIP InfoNCE; nominal epsilon) or public-negatives (certified epsilon)")
        p.add_argument("--privacy-unit", default="pair", choices=PRIVACY_UNITS, help="protect one pair, or one patient")
        p.add_argument("--delta", type=float, default=DPSpec.delta, help="lowered automatically when not well below 1/n")
        p.add_argument("--max-grad-norm", type=float, default=DPSpec.max_grad_norm, help="clipping norm C")
        p.add_argument("--accountant", default="rdp", choices=ACCOUNTANTS)
        p.add_argument("--epochs", type=int, default=DPSpec.epochs)
        p.add_argument("--batch-size", type=int, default=DPSpec.batch_size, help="expected pairs per step")
        p.add_argument("--lr", type=float, default=DPSpec.lr)
        p.add_argument("--optimizer", default="adam", choices=("adam", "sgd"))
        p.add_argument("--init", default="model", choices=("model", "random"), help="start from the model's heads or random")
        p.add_argument("--n-negatives", type=int, default=DPSpec.n_negatives, help="public-negatives: bank reports per step")
        p.add_argument("--public-bank", default=None, metavar="SOURCE[:k=v,...]",
                       help="public report bank for public-negatives (default: the synthetic generator under another "
                       "seed for synthetic data, else OpenI from CXR_OPENI_ROOT)")
    if evaluation:  # members: random pool, K = 1, in-domain only
        p.add_argument("--transfer", action="append", default=[], metavar="SOURCE[:k=v,...]",
                       help="also evaluate on this source's test split without retraining, e.g. synthetic:sites=B")
        p.add_argument("--pools", nargs="+", default=list(POOL_KINDS), choices=POOL_KINDS)
        p.add_argument("--ks", nargs="+", type=int, default=[1, 5, 10])
    p.add_argument("--n-bootstrap", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    p.add_argument("--json", type=Path, default=None, help="write the result(s) here")


def dp_spec_from(args: argparse.Namespace) -> DPSpec:
    check_ci_floor(args.n_bootstrap)
    source = SourceSpec(name=args.source, root=args.root, options=parse_options(args.source_option))
    audit = AuditSpec(pools=tuple(getattr(args, "pools", POOL_KINDS)), ks=tuple(getattr(args, "ks", (1, 5, 10))),
                      n_bootstrap=args.n_bootstrap, seed=args.seed)
    recipe = {name: getattr(args, name) for name in _RECIPE if hasattr(args, name)}  # probe: DPSpec's defaults
    if recipe.get("public_bank") is not None:
        recipe["public_bank"] = parse_source(recipe["public_bank"])
    elif recipe.get("objective") == "public-negatives":  # the default bank of the data, named in the spec
        recipe["public_bank"] = default_bank(source)
    return DPSpec(source=source, model=args.model, epsilon=getattr(args, "epsilon", math.inf),
                  transfer=tuple(parse_source(t) for t in getattr(args, "transfer", ())), audit=audit, seed=args.seed,
                  **recipe)


_RECIPE = ("delta", "objective", "privacy_unit", "max_grad_norm", "epochs", "batch_size", "lr", "optimizer", "init",
           "accountant", "public_bank", "n_negatives")


def _show(table) -> None:
    cols = [c for c in ("label", "target", "objective", "epsilon", "guarantee", "noise_multiplier", "n_random", "r1_random",
                        "r1_hard", "probe_auroc", "zero_shot_auroc", "frozen_probe_auroc") if c in table.columns]
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))


def write_result(path: Path | None, payload: dict, run_id: str | None = None) -> None:
    """Write the result JSON to --json (when given) and, for a run id, to the cache's results/<run_id>.json too
    (so a computed result is kept even without --json)."""
    text = json.dumps(payload, indent=1, allow_nan=False)
    if run_id is not None:
        kept = settings.cache_subdir("results") / f"{run_id}.json"
        settings.atomic_write(kept, lambda p: p.write_text(text))
        log.info("kept %s", kept)
    if path is not None:
        settings.atomic_write(path, lambda p: p.write_text(text))
        log.info("wrote %s", path)


def cmd_dp(args: argparse.Namespace) -> int:
    from backend.dp import run_dp

    spec = dp_spec_from(args)
    check_output(args.json, "--json")  # before any work: training must not be lost to a bad path
    settings.check_device(args.device)
    res = run_dp(spec, phased_progress("dp"), device=args.device)
    _show(res.headline())
    write_result(args.json, res.to_dict(), spec.run_id())
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from backend.audit import records
    from backend.dp import headline_rows, run_sweep

    spec = SweepSpec(base=dp_spec_from(args), epsilons=tuple(args.epsilons))  # every point validated here
    check_output(args.json, "--json")
    settings.check_device(args.device)
    results = run_sweep(spec, phased_progress("sweep"), device=args.device)
    table = headline_rows(results)
    _show(table)
    write_result(args.json, {"kind": "sweep", "run_id": spec.run_id(), "spec": spec.to_dict(), "frontier": records(table),
                       "points": [r.to_dict() for r in results]}, spec.run_id())
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from backend.dp import original_result
    from backend.dp.eval import prepare

    spec = dp_spec_from(args)
    check_output(args.json, "--json")
    settings.check_device(args.device)
    res = original_result(spec, prepare(spec, phased_progress("probe"), need_bank=False, device=args.device))
    _show(res.headline())
    write_result(args.json, res.to_dict())
    return 0


def cmd_members(args: argparse.Namespace) -> int:
    """Members (train patients) against as many non-members (test patients): Recall@1 with CIs and the gap, for
    the original model, the heads retrained without DP and each epsilon; JSON on stdout (and in --json)."""
    base = dp_spec_from(args)
    spec = SweepSpec(base=base, epsilons=tuple(args.epsilons))  # every point validated here
    if args.max_patients is not None and args.max_patients < 2:
        raise SpecError(f"max_patients must be at least 2 (a pool needs another patient's report), got {args.max_patients}.")
    check_output(args.json, "--json")
    from backend.dp import run_members  # late: torch

    settings.check_device(args.device)
    payload = run_members(spec, phased_progress("members"), max_patients=args.max_patients, device=args.device)
    print(json.dumps(payload, indent=1, allow_nan=False))
    write_result(args.json, payload)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dp", help="train DP (or non-private, --epsilon inf) projection heads, then audit and probe")
    _add_args(p, epsilon=True)
    p.set_defaults(func=cmd_dp)
    p = sub.add_parser("sweep", help="the epsilon sweep (plus the original model and non-private retraining)")
    _add_args(p, epsilon=False)
    p.add_argument("--epsilons", nargs="+", type=float, default=list(DEFAULT_EPSILONS), help="the grid; inf allowed")
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("members", help="Recall@1 of member (train) against non-member (test) patients, and the gap, "
                       "for the original model, non-private retrained heads and each epsilon")
    _add_args(p, epsilon=False, evaluation=False)
    p.add_argument("--epsilons", nargs="+", type=float, default=[1.0, 0.34],
                   help="the DP points (the retrained heads without DP are always included)")
    p.add_argument("--max-patients", type=int, default=None,
                   help="patients per group (default: as many as the test split has)")
    p.set_defaults(func=cmd_members)
    p = sub.add_parser("probe", help="linear-probe and zero-shot AUROC of the model's own embeddings (no training)")
    _add_args(p, epsilon=False, training=False)
    p.set_defaults(func=cmd_probe)
