"""Data commands: `sources` (list the sources, optionally load one and show its counts),
`download openi` (fetch NLM's archives with progress, resume and checksum) and `openi-agreement`
(our rule-based OpenI labels against a CheXpert-labeller file).

    python -m backend sources
    python -m backend sources --name openi --root DIR --counts
    python -m backend sources --name mimic-cxr --root DIR --source-option reports_root=DIR2 --counts
    python -m backend download openi --dest DIR [--reports-only] [--no-verify]
    python -m backend openi-agreement [--root DIR] [--reference FILE]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from backend.errors import SourceError, SpecError
from backend.progress import tqdm_progress
from backend.settings import data_root
from backend.sources import get_source, list_sources, load_source
from backend.sources.download import OPENI_BASE_URL, download_openi
from backend.sources.openi import label_agreement
from backend.specs import parse_options


def _sources(args: argparse.Namespace) -> int:
    options = parse_options(args.source_option)
    if options and not args.name:
        raise SpecError("--source-option belongs to one source: add --name (e.g. --name mimic-cxr "
                        "--source-option reports_root=DIR).")
    infos = [get_source(args.name)] if args.name else list_sources()
    for info in infos:
        tags = ", ".join(t for t, on in (("needs --root", info.needs_root), ("credentialed", info.credentialed)) if on)
        print(f"{info.name:15s} {info.description}" + (f"  [{tags}]" if tags else ""))
        if not (args.counts or args.root or options):
            continue
        root = args.root or (str(data_root(info.name)) if data_root(info.name) else None)
        if info.needs_root and root is None:
            print("    (no folder: pass --root DIR)")
            continue
        try:
            data = load_source(info.name, root=root, section_policy=args.section_policy, **options)
        except SourceError as exc:
            if args.name:
                raise
            print(f"    not loadable: {exc}")
            continue
        stats = {**data.stats, "splits": data.pairs["split"].value_counts().to_dict()}
        print("    " + json.dumps(stats, default=int))
        if data.stats.get("images_checked") == 0:
            print("    images not checked: a missing or unreadable image stops an audit when it is reached; "
                  "--source-option check_images=true checks them now and skips and counts the bad ones")
    return 0


def _download_openi(args: argparse.Namespace) -> int:
    bars: dict[str, Callable[[int, int, str], None]] = {}

    def progress(done: int, total: int, message: str = "") -> None:
        name = message.split(" ")[0]
        if name not in bars:
            bars[name] = tqdm_progress(name)
        bars[name](done, total, "")

    written = download_openi(Path(args.dest), images=not args.reports_only, base_url=args.base_url or OPENI_BASE_URL,
                             verify=not args.no_verify, progress=progress)
    for path in written:
        print(path)
    print(f"load it with: python -m backend sources --name openi --root {args.dest} --counts")
    return 0


def _agreement(args: argparse.Namespace) -> int:
    table = label_agreement(args.root, args.reference, use_mesh=not args.no_mesh)
    table = table.round(3)
    print(_markdown(table) if args.markdown else table.to_string(index=False))
    return 0


def _markdown(table: pd.DataFrame) -> str:
    """A GitHub markdown table (no extra dependency)."""
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + " --- |" * len(table.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the data commands to the top-level parser."""
    p = subparsers.add_parser("sources", help="list the data sources (and their counts with --counts/--root)")
    p.add_argument("--name", help="only this source (e.g. openi, mimic-cxr, chexpert-plus, csv, synthetic)")
    p.add_argument("--root", help="the source's data folder (implies --counts)")
    p.add_argument("--counts", action="store_true", help="load each source and show its counts")
    p.add_argument("--section-policy", default="findings+impression",
                   help="findings+impression (default), findings, impression or longest")
    p.add_argument("--source-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the --name source, repeatable (implies --counts), e.g. reports_root=DIR")
    p.set_defaults(func=_sources)

    d = subparsers.add_parser("download", help="download a public dataset (OpenI) with progress, resume, checksum")
    dsub = d.add_subparsers(dest="dataset", required=True)
    o = dsub.add_parser("openi", help="NLM's NLMCXR_reports.tgz and NLMCXR_png.tgz (~1.3 GB)")
    o.add_argument("--dest", required=True, help="folder to write into (becomes the openi --root)")
    o.add_argument("--reports-only", action="store_true", help="skip the 1.3 GB image archive")
    o.add_argument("--no-verify", action="store_true", help="skip the pinned checksum of the reports archive")
    o.add_argument("--base-url", help="a mirror of https://openi.nlm.nih.gov/imgs/collections/")
    o.set_defaults(func=_download_openi)

    a = subparsers.add_parser("openi-agreement", help="per-label agreement of our OpenI labels with a "
                                                      "CheXpert-labeller file (accuracy, Cohen's kappa)")
    a.add_argument("--root", help="OpenI folder (default: CXR_OPENI_ROOT)")
    a.add_argument("--reference", help="labels JSON (default: <root>/chexpert14_labels.json)")
    a.add_argument("--no-mesh", action="store_true", help="text rules only, without MeSH positives")
    a.add_argument("--markdown", action="store_true", help="print a markdown table")
    a.set_defaults(func=_agreement)
