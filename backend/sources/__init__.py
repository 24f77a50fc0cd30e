"""Registry of data sources. Each source module registers a loader:

    loader(root: str | None, section_policy: str, **options) -> SourceData

`load_source(name, root=None, section_policy="findings+impression", **options)` is the one entry point.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from backend.errors import SourceError, SpecError
from backend.registry import Registry
from backend.sources.schema import LABELS, PAIR_COLUMNS, SourceData, known, match_attributes, match_coverage

__all__ = ["LABELS", "PAIR_COLUMNS", "SourceData", "SourceInfo", "list_sources", "get_source", "load_source",
           "register_source", "check_match", "check_matchable", "SOURCES"]


@dataclass(frozen=True)
class SourceInfo:
    name: str
    description: str
    loader: Callable[..., SourceData]
    needs_root: bool  # True for datasets the user must point at (credentialed or downloaded)
    credentialed: bool = False
    # attributes a side-information pool must not match on for this source, each with the reason (e.g. MIMIC's
    # per-patient date shift makes `year` incomparable across patients)
    unmatchable: tuple[tuple[str, str], ...] = ()
    # where a missing side-information attribute comes from for this source (attribute, what to do), e.g. MIMIC's
    # sex and age need MIMIC-IV's patients file
    match_hints: tuple[tuple[str, str], ...] = ()


_BUILTIN_MODULES = ("synthetic", "openi", "mimic_cxr", "chexpert_plus", "csv_source")


def _load_builtins() -> None:
    for mod in _BUILTIN_MODULES:
        importlib.import_module(f"backend.sources.{mod}")


SOURCES: Registry[SourceInfo] = Registry("source", SourceError, builtins=_load_builtins)
register_source = SOURCES.register
list_sources = SOURCES.list
get_source = SOURCES.get


def check_match(name: str, match: tuple[str, ...] | list[str]) -> None:
    """Refuse side-information pools (`--match` entries, "+"-joined attributes) that source `name` cannot support
    honestly (SourceInfo.unmatchable): SpecError with the reason and what to match on instead."""
    refused = dict(get_source(name).unmatchable)
    for entry in match:
        for attribute in entry.split("+"):
            if attribute in refused:
                raise SpecError(f"Cannot match pools on {attribute!r} for source {name!r} ({entry}): {refused[attribute]}")


def check_matchable(name: str, pairs: pd.DataFrame, match: tuple[str, ...] | list[str]) -> dict[str, dict[str, int]]:
    """Before any embedding: the pairs each side-information pool of `match` is measured on (the policy:
    schema.match_coverage) as {match: {"pairs": kept, "left_out": n}}. SpecError saying what to do when a pool
    can be served for fewer than two studies (e.g. no pair has the attribute: a view pool on data without views
    would silently be the random pool)."""
    check_match(name, match)
    hints = dict(get_source(name).match_hints)
    out = {}
    for entry in match:
        covered = match_coverage(pairs, entry)
        if pairs.loc[covered, "study_id"].nunique() < 2:
            lacking = [a for a in entry.split("+") if not known(pairs, a).any()] or entry.split("+")
            hint = " ".join(hints[a] for a in lacking if a in hints)
            raise SpecError(f"Cannot match pools on {entry!r}: {' and '.join(lacking)} is known for "
                            f"{int(covered.sum())} of {len(pairs)} pairs of this {name} data, too few for a pool. "
                            f"{hint + ' ' if hint else ''}Or match on what the data gives: "
                            f"{', '.join(match_attributes(pairs))}.")
        out[entry] = {"pairs": int(covered.sum()), "left_out": int((~covered).sum())}
    return out


def load_source(name: str, root: str | None = None, section_policy: str = "findings+impression",
                **options: object) -> SourceData:
    """Load a source as the canonical pair table (see backend.sources.schema)."""
    info = get_source(name)
    return info.loader(root=root, section_policy=section_policy, **options)
