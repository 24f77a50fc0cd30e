"""Registry of data sources. Each source module registers a loader:

    loader(root: str | None, section_policy: str, **options) -> SourceData

`load_source(name, root=None, section_policy="findings+impression", **options)` is the one entry point.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from backend.errors import SourceError
from backend.registry import Registry
from backend.sources.schema import LABELS, PAIR_COLUMNS, SourceData

__all__ = ["LABELS", "PAIR_COLUMNS", "SourceData", "SourceInfo", "list_sources", "get_source", "load_source",
           "register_source", "SOURCES"]


@dataclass(frozen=True)
class SourceInfo:
    name: str
    description: str
    loader: Callable[..., SourceData]
    needs_root: bool  # True for datasets the user must point at (credentialed or downloaded)
    credentialed: bool = False


_BUILTIN_MODULES = ("synthetic", "openi", "mimic_cxr", "chexpert_plus", "csv_source")


def _load_builtins() -> None:
    for mod in _BUILTIN_MODULES:
        try:
            importlib.import_module(f"backend.sources.{mod}")
        except ModuleNotFoundError as exc:  # a module not written yet must not break the others
            if exc.name != f"backend.sources.{mod}":
                raise


SOURCES: Registry[SourceInfo] = Registry("source", SourceError, builtins=_load_builtins)
register_source = SOURCES.register
list_sources = SOURCES.list
get_source = SOURCES.get


def load_source(name: str, root: str | None = None, section_policy: str = "findings+impression",
                **options: object) -> SourceData:
    """Load a source as the canonical pair table (see backend.sources.schema)."""
    info = get_source(name)
    return info.loader(root=root, section_policy=section_policy, **options)
