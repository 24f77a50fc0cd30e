"""Commands: models, prepare-demo, embed, audit (python -m backend COMMAND --help)."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from backend.embed import load_embedding_set, save_npz
from backend.errors import SpecError
from backend.models import list_models
from backend.models.demo_config import get_rung
from backend.progress import phased_progress
from backend.settings import atomic_write, check_device
from backend.sources import check_match
from backend.specs import POOL_KINDS, AuditSpec, EmbedSpec, SourceSpec, check_ci_floor, parse_options
from backend.views.definitions import coverage_notes

log = logging.getLogger(__name__)


def check_output(path: str | Path | None, flag: str) -> Path | None:
    """The output file of `flag`, checked before any work: not a folder, its folder created (or creatable) and
    writable. SpecError naming the path and what to do otherwise; None passes through."""
    if path is None:
        return None
    out = Path(path).expanduser()
    if out.is_dir():
        raise SpecError(f"{flag} {str(out)!r} is a folder; give a file name, e.g. {str(out / 'result.json')!r}.")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpecError(f"{flag} {str(out)!r}: its folder {str(parent)!r} cannot be created ({exc.strerror or exc}); "
                        "choose a path in a writable folder.") from exc
    if not os.access(parent, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise SpecError(f"{flag} {str(out)!r} cannot be written (permission denied); choose a path in a writable "
                        "folder.")
    return out


def _add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", default="synthetic", help="registered source (python -m backend sources)")
    p.add_argument("--root", default=None, help="the source's data folder (for downloaded datasets)")
    p.add_argument("--section-policy", default="findings+impression",
                   help="which report sections are embedded: findings+impression, findings, impression, longest")
    p.add_argument("--source-option", action="append", default=[], metavar="KEY=VALUE",
                   help="source option, repeatable (synthetic: n_patients=500, seed=0, image_size=128)")
    p.add_argument("--model", default="demo", help="registered model (python -m backend models) or local:<path>")
    p.add_argument("--split", default="test", choices=("train", "val", "test", "all"))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when present)")


def embed_spec_from(args: argparse.Namespace) -> EmbedSpec:
    options = parse_options(args.source_option)
    source = SourceSpec(name=args.source, root=args.root, section_policy=args.section_policy, options=options)
    return EmbedSpec(source=source, model=args.model, split=args.split, batch_size=args.batch_size)


def audit_spec_from(args: argparse.Namespace) -> AuditSpec:
    pools = list(dict.fromkeys(args.pools))
    if args.hard_negatives and "hard" not in pools:
        pools.append("hard")
    check_ci_floor(args.n_bootstrap)
    check_match(args.source, args.match)
    return AuditSpec(embed=embed_spec_from(args), pools=tuple(pools), ks=tuple(args.ks),
                     include_same_patient=args.include_same_patient, n_bootstrap=args.n_bootstrap, seed=args.seed,
                     match=tuple(dict.fromkeys(args.match)))


def cmd_models(args: argparse.Namespace) -> int:

    for info in list_models():
        print(f"{info.name:18s} {info.domain:12s} {info.description}\n{'':31s}weights: {info.weights}")
    print(f"{'local:<path>':18s} {'any':12s} an open_clip checkpoint: a folder with open_clip_config.json, "
          "or local:<file>#<config>")
    return 0


def cmd_prepare_demo(args: argparse.Namespace) -> int:
    import dataclasses

    from backend.models.demo import prepare_demo

    check_device(args.device)
    base = get_rung(args.rung).config
    changes = {k: v for k, v in (("epochs", args.epochs), ("max_pairs", args.max_pairs)) if v is not None}
    if args.n_patients is not None:
        changes["source_options"] = {**base.source_options, "n_patients": args.n_patients}
    config = dataclasses.replace(base, **changes)
    folder = prepare_demo(phased_progress("demo"), config, device=args.device or "cpu")
    print(folder)
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from backend.distributed import process_group
    from backend.embed.compute import embed_split

    check_device(args.device)
    with process_group(args.device) as ranks:  # under torchrun: this rank's share of the chunks (docs/SCALE.md)
        lead = ranks is None or ranks.lead
        es = embed_split(embed_spec_from(args), phased_progress("embed") if lead else None,
                         device=ranks.device if ranks else args.device, ranks=ranks)
    if lead:
        print(json.dumps({"path": str(es.path), "pairs": len(es), "dim": int(es.image_emb.shape[1]),
                          "distinct_reports": es.info.get("n_reports")}, indent=1))
    return 0


def cmd_topk(args: argparse.Namespace) -> int:
    from backend.audit import top_k_table
    from backend.embed.compute import embed_split

    out = check_output(args.out, "--out")
    if args.k < 1:
        raise SpecError(f"--k must be >= 1, got {args.k}.")
    check_device(args.device)
    es = embed_split(embed_spec_from(args), phased_progress("embed"), device=args.device)
    device = args.device or ("cuda" if _cuda() else "cpu")
    table = top_k_table(es, args.k, device)
    atomic_write(out, lambda p: table.to_parquet(p, index=False))
    hits = table.groupby("pair_id")["is_true_report"].any().mean()
    print(f"{len(table)} rows ({table['pair_id'].nunique()} queries x top {table['rank'].max()}) -> {out}; "
          f"true report within the top {table['rank'].max()} for {hits:.1%} of queries (device {device})")
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def cmd_audit(args: argparse.Namespace) -> int:
    from backend.audit import run_audit
    from backend.distributed import process_group

    spec = audit_spec_from(args)
    out = check_output(args.json, "--json")  # before any work: a bad path must not cost an embedding
    check_output(args.save_embeddings, "--save-embeddings")
    check_device(args.device)
    with process_group(args.device) as ranks:  # under torchrun: shared embedding and counting (docs/SCALE.md)
        lead = ranks is None or ranks.lead
        result = run_audit(spec, phased_progress("audit") if lead else None,
                           device=ranks.device if ranks else args.device, ranks=ranks)
    if not lead:
        return 0  # rank 0 alone writes
    atomic_write(out, lambda p: p.write_text(result.to_json()))
    if args.save_embeddings:
        save_npz(load_embedding_set(result.embedding_path), args.save_embeddings)
        print(f"embeddings: {args.save_embeddings}")
    print(f"{len(result.rows)} curve points -> {out}")
    for note in coverage_notes(result.counts):
        print(note)
    table = result.headline()
    if not table.empty:
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the commands of this module to `python -m backend`."""
    p = subparsers.add_parser("models", help="list the registered models")
    p.set_defaults(func=cmd_models)

    p = subparsers.add_parser("prepare-demo", help="train the demo model now (otherwise done on first use)")
    p.add_argument("--rung", default="demo", help="train this rung of the ladder instead (demo-weak, demo-strong)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--max-pairs", type=int, default=None)
    p.add_argument("--n-patients", type=int, default=None, help="synthetic patients generated for training")
    p.add_argument("--device", default=None,
                   help="train on this device (default cpu: the same weights on the same CPU family; another "
                        "CPU family or cuda gives statistically equivalent, not identical, weights)")
    p.set_defaults(func=cmd_prepare_demo)

    p = subparsers.add_parser("embed", help="embed one split (cached, resumable)")
    _add_source_args(p)
    p.set_defaults(func=cmd_embed)

    p = subparsers.add_parser("topk", help="export every query image's top-k reports over the whole database "
                              "(parquet; what an attacker would hand over)")
    _add_source_args(p)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--out", required=True, help="the parquet file to write")
    p.set_defaults(func=cmd_topk)

    p = subparsers.add_parser("audit", help="measure re-linkage of a source's split under a model")
    _add_source_args(p)
    p.add_argument("--pools", nargs="+", default=list(POOL_KINDS), choices=POOL_KINDS,
                   help="pool kinds: random (any other study), hard (same 14-label vector)")
    p.add_argument("--hard-negatives", action="store_true", help="include pathology-matched pools (same as adding hard)")
    p.add_argument("--include-same-patient", action="store_true",
                   help="let other studies of the same patient be distractors (default: excluded)")
    p.add_argument("--match", action="append", default=[], metavar="ATTR[+ATTR...]",
                   help="also a side-information pool matched on these attributes, repeatable: labels, view, site, "
                        "sex, age_band, year (those the source provides), e.g. --match view+site --match labels+view")
    p.add_argument("--ks", nargs="+", type=int, default=[1, 5, 10])
    p.add_argument("--n-bootstrap", type=int, default=200, help="bootstrap resamples over patients for the CIs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", required=True, help="write the result (spec, counts, every curve point) here")
    p.add_argument("--save-embeddings", default=None, metavar="OUT.npz",
                   help="also write image/report embeddings, ids, labels and reports to this npz")
    p.set_defaults(func=cmd_audit)
