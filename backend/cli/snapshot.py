"""Commands: snapshot make | import | check (the demo results shipped in backend/demo_snapshot/)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from backend.runs import snapshot


def _make(args: argparse.Namespace) -> int:
    manifest = snapshot.make_snapshot(Path(args.out))
    sizes = {name: info["bytes"] for name, info in manifest["files"].items()}
    print(json.dumps({"out": args.out, "runs": [r["run_id"] for r in manifest["runs"]], "files": sizes,
                      "code_version": manifest["code_version"]}, indent=1))
    return 0


def _import(args: argparse.Namespace) -> int:
    print(json.dumps({"imported": snapshot.import_snapshot(Path(args.dir))}, indent=1))
    return 0


def _check(args: argparse.Namespace) -> int:
    manifest = snapshot.read_manifest(Path(args.dir))
    if manifest is None:
        print(f"no snapshot in {args.dir}")
        return 1
    problems = snapshot.check_manifest(manifest, Path(args.dir))
    print("\n".join(problems) if problems else f"ok: made {manifest['made']} by {manifest['code_version']}")
    print(json.dumps(snapshot.describe_manifest(manifest), indent=1))  # computed when, weights hash, what is older
    return 1 if problems else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("snapshot", help="the shipped demo results: make (from this cache), import, check")
    verbs = p.add_subparsers(dest="verb", required=True)
    m = verbs.add_parser("make", help="write the finished demo runs of this cache (CXR_CACHE_DIR) as the snapshot")
    m.add_argument("--out", default=str(snapshot.SNAPSHOT_DIR))
    m.set_defaults(func=_make)
    for name, func, helptext in (("import", _import, "put the snapshot's runs into this cache's store"),
                                 ("check", _check, "does the snapshot match this code?")):
        q = verbs.add_parser(name, help=helptext)
        q.add_argument("--dir", default=str(snapshot.SNAPSHOT_DIR))
        q.set_defaults(func=func)
