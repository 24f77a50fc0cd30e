"""Every command line that README.md and docs/ show (`python -m backend ...`, `cxr-relink ...`, `./run.sh cli ...`)
parses with the real parser, so the docs cannot drift from the code."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from backend.__main__ import build_parser

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
STARTS = (("python", "-m", "backend"), ("python3", "-m", "backend"), ("cxr-relink",), ("./run.sh", "cli"))
ENV = re.compile(r"^[A-Z_][A-Z0-9_]*=")
INLINE = re.compile(r"`([^`\n]+)`")
META = re.compile(r"^([A-Z][A-Z_]*|\.\.\.)$")
LAUNCHERS = ("torchrun", "srun")  # launchers whose `-m backend ...` is the backend's command line


def _snippets(text: str) -> list[tuple[int, str]]:
    """(line number, text) of every fenced code line (continuations joined) and every inline code span."""
    out: list[tuple[int, str]] = []
    fenced, pending, start = False, "", 0
    for no, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced, pending = not fenced, ""
            continue
        if fenced:
            if not pending:
                start = no
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            out.append((start, pending + line))
            pending = ""
        else:
            out += [(no, m.group(1)) for m in INLINE.finditer(line)]
    return out


def commands(text: str) -> list[tuple[int, list[str]]]:
    """The backend's argument lists in `text`: after an optional `$ ` prompt and VAR=value prefixes, up to a
    comment, a pipe, a redirection or the next command of the line; optional groups `[...]` unwrapped."""
    found = []
    for no, snippet in _snippets(text):
        try:
            lexer = shlex.shlex(snippet.strip().removeprefix("$ "), posix=True, punctuation_chars=";&|<>")
            lexer.whitespace_split, lexer.commenters = True, "#"
            tokens = list(lexer)
        except ValueError:
            continue
        while tokens and ENV.match(tokens[0]):
            tokens.pop(0)
        if tokens[:1] and tokens[0] in LAUNCHERS and "-m" in tokens:  # torchrun [options] -m backend ARGS
            i = tokens.index("-m")
            tokens = ["python", *tokens[i:]]
        for start in STARTS:
            if tuple(tokens[:len(start)]) == start:
                args = tokens[len(start):]
                cut = next((i for i, t in enumerate(args) if t and set(t) <= set(";&|<>")), len(args))
                # usage notation: [--flag X] is parsed as given (every flag shown must exist); a line with no
                # command or a placeholder for it (`cxr-relink COMMAND ...`) shows the general form only
                args = [t.strip("[]") for t in args[:cut] if t.strip("[]")]
                if args and not META.match(args[0]):
                    found.append((no, args))
                break
    return found


def _exact(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The parser and its subparsers without abbreviations: a doc must spell each flag as the code does."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _exact(sub)
    return parser


def parse_error(args: list[str]) -> str | None:
    """None when the real parser takes `args` (--help included), else argparse's message."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            _exact(build_parser()).parse_args(args)
    except SystemExit as exc:
        return None if exc.code == 0 else err.getvalue().strip().splitlines()[-1]
    return None


def test_the_docs_show_the_common_commands() -> None:
    """The scan finds the commands (a scan that finds nothing would pass every doc)."""
    shown = {args[0] for doc in DOCS for _, args in commands(doc.read_text()) if args}
    assert {"audit", "sources", "sweep", "dp", "export", "recompute-demo"} <= shown


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_documented_command_parses(doc: Path) -> None:
    bad = [f"{doc.name}:{no}: {' '.join(args)}\n    {why}"
           for no, args in commands(doc.read_text()) if (why := parse_error(args)) is not None]
    assert not bad, "documented commands the parser refuses:\n" + "\n".join(bad)


def test_a_removed_or_misspelled_flag_is_caught() -> None:
    text = ("Run `python -m backend audit --no-such-flag 1 --json out.json` or:\n\n```bash\n"
            "CXR_CACHE_DIR=/tmp/c python -m backend sweep \\\n    --epsilons 1 inf --objectiv in-batch  # typo\n"
            "cxr-relink audit --json out.json | tail\ncxr-relink COMMAND --help\n"
            "python -m backend ladder [--rungs demo] [--estimat]\n"
            "srun torchrun --nnodes 2 --nproc-per-node 8 \\\n  -m backend audit --json out.json --nproc 2\n```\n")
    found = commands(text)
    assert [args[0] for _, args in found] == ["audit", "sweep", "audit", "ladder", "audit"]
    errors = [parse_error(args) for _, args in found]
    assert "--no-such-flag" in errors[0] and "--objectiv" in errors[1] and errors[2] is None
    assert "--estimat" in errors[3] and "--nproc" in errors[4]
