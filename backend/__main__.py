"""Command line: `python -m backend COMMAND ...`. Every job the dashboard can launch is a command here.

Commands are contributed by the modules in backend/cli/ (each defines `register(subparsers)` and sets
`func` on its parsers); every module listed in CLI_MODULES must import.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from backend.errors import RelinkError

CLI_MODULES = ("data", "audit", "dp", "demo", "jobs", "snapshot", "ladder", "export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr-relink", description="CXR Re-Link Audit, headless.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in CLI_MODULES:
        importlib.import_module(f"backend.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except RelinkError as exc:  # a user error: one clear line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished chunks are kept and the job resumes when run again", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
