"""Registry of data sources. Each source module registers a loader:

    loader(root: str | None, section_policy: str, **options) -> SourceData

`load_source(name, root=None, section_policy="findings+impression", **options)` is the one entry point.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from backend.errors import SourceError, SpecError
from backend.registry import Registry
from backend.sources.schema import LABELS, PAIR_COLUMNS, SourceData

__all__ = ["LABELS", "PAIR_COLUMNS", "SourceData", "SourceInfo", "list_sources", "get_source", "load_source",
           "register_source", "check_match", "SOURCES"]


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


def load_source(name: str, root: str | None = None, section_policy: str = "findings+impression",
                **options: object) -> SourceData:
    """Load a source as the canonical pair table (see backend.sources.schema)."""
    info = get_source(name)
    return info.loader(root=root, section_policy=section_policy, **options)
