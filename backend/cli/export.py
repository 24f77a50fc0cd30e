"""`export RUN_ID --out FILE.zip`: every result of one stored run as one zip archive (backend.views.export);
`export --list`: the stored run ids."""

from __future__ import annotations

import argparse

from backend import settings
from backend.cli.audit import check_output
from backend.errors import SpecError


def _export(args: argparse.Namespace) -> int:
    with settings.reading_only():  # it only reads the cache: a read-only copy of it will do
        return _export_reading(args)


def _export_reading(args: argparse.Namespace) -> int:
    from backend.runs import store  # DuckDB and pandas only when the command runs
    from backend.views import export

    if args.list:
        runs = store.list_runs(status="done")
        if not len(runs):
            print("no finished runs yet")
        for row in runs.itertuples():
            print(f"{row.run_id:<24} {row.kind:<8} {row.label or ''}")
        return 0
    if not args.run_id:
        raise SpecError("Name a run id (`python -m backend export RUN_ID --out FILE.zip`); "
                        "`python -m backend export --list` lists them.")
    out = check_output(args.out or export.file_name(args.run_id), "--out")
    replaced = out.exists()
    export.write_archive(args.run_id, out, replace=args.force)
    print(f"{'replaced' if replaced else 'wrote'} {out} ({out.stat().st_size:,} bytes)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write all results of a run (spec, provenance, rows, README) as one zip")
    p.add_argument("run_id", nargs="?", help="the run to export (see --list)")
    p.add_argument("--out", help="the zip file to write (default: relink-results-RUN_ID.zip here)")
    p.add_argument("--force", action="store_true", help="replace the --out file when it exists")
    p.add_argument("--list", action="store_true", help="list the finished runs' ids and kinds, newest first")
    p.set_defaults(func=_export)
