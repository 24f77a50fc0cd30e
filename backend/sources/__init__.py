"""Registry of data sources. Each source module registers a loader:

    loader(root: str | None, section_policy: str, **options) -> SourceData

`load_source(name, root=None, section_policy="findings+impression", **options)` is the one entry point.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from backend.errors import SourceError
from backend.sources.schema import LABELS, PAIR_COLUMNS, SourceData

__all__ = ["LABELS", "PAIR_COLUMNS", "SourceData", "SourceInfo", "list_sources", "get_source", "load_source",
           "register_source"]


@dataclass(frozen=True)
class SourceInfo:
    name: str
    description: str
    loader: Callable[..., SourceData]
    needs_root: bool  # True for datasets the user must point at (credentialed or downloaded)
    credentialed: bool = False


_REGISTRY: dict[str, SourceInfo] = {}
_BUILTIN_MODULES = ("synthetic", "openi", "mimic_cxr", "chexpert_plus", "csv_source")


def register_source(info: SourceInfo) -> None:
    """Add (or replace) a source in the registry."""
    _REGISTRY[info.name] = info


def _load_builtins() -> None:
    for mod in _BUILTIN_MODULES:
        try:
            importlib.import_module(f"backend.sources.{mod}")
        except ModuleNotFoundError as exc:  # a module not written yet must not break the others
            if exc.name != f"backend.sources.{mod}":
                raise


def list_sources() -> list[SourceInfo]:
    """Every registered source, in registration order."""
    _load_builtins()
    return list(_REGISTRY.values())


def get_source(name: str) -> SourceInfo:
    """The registry entry of a source; SourceError naming the known ones when unknown."""
    _load_builtins()
    if name not in _REGISTRY:
        raise SourceError(f"Unknown source {name!r}. Known sources: {', '.join(_REGISTRY)}.")
    return _REGISTRY[name]


def load_source(name: str, root: str | None = None, section_policy: str = "findings+impression",
                **options: object) -> SourceData:
    """Load a source as the canonical pair table (see backend.sources.schema)."""
    info = get_source(name)
    return info.loader(root=root, section_policy=section_policy, **options)
