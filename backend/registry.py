"""One registry pattern for sources, models and job kinds: a dict of frozen entries keyed by `name`,
with register / get / list, and one `resolve("module:function")` for what an entry names lazily.

Entries name heavy code ("backend.models.openclip:load_openai_b16") instead of holding it, so listing a
registry never imports torch, open_clip or faiss; the code is imported only when an entry is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any, Generic, Protocol, TypeVar

from backend.errors import RelinkError


class Named(Protocol):
    @property
    def name(self) -> str: ...


E = TypeVar("E", bound=Named)


class Registry(Generic[E]):
    """Entries by name, in registration order. `what` names an entry in messages ("source", "model");
    `error` is the exception an unknown name raises; `builtins` (optional) is called before every lookup,
    once, to import the modules that register the built-in entries."""

    def __init__(self, what: str, error: type[RelinkError], builtins: Callable[[], Iterable[Any]] | None = None,
                 hint: str = "") -> None:
        self.what, self.error, self.hint = what, error, hint
        self._entries: dict[str, E] = {}
        self._builtins = builtins

    def _ensure(self) -> None:
        if self._builtins is not None:
            load, self._builtins = self._builtins, None
            load()

    def register(self, entry: E) -> E:
        """Add (or replace) an entry; returns it."""
        self._entries[entry.name] = entry
        return entry

    def get(self, name: str) -> E:
        """The entry called `name`; `error` naming the known entries when there is none."""
        self._ensure()
        if name not in self._entries:
            known = ", ".join(self._entries) or "none"
            raise self.error(f"Unknown {self.what} {name!r}. Known {self.what}s: {known}{self.hint}.")
        return self._entries[name]

    def list(self) -> list[E]:
        """Every entry, in registration order."""
        self._ensure()
        return list(self._entries.values())

    def names(self) -> list[str]:
        return [e.name for e in self.list()]

    def __contains__(self, name: object) -> bool:
        self._ensure()
        return name in self._entries


def resolve(dotted: str, what: str = "this entry", error: type[RelinkError] = RelinkError) -> Callable[..., Any]:
    """The function named "module:function", imported now. A missing module or function raises `error`
    saying which (so a broken or unwritten module fails the one entry that needs it, never the others)."""
    module_name, _, attr = dotted.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise error(f"{what} needs {module_name} ({exc.name} is not installed or not written yet). "
                    "Update the code or pick another.") from exc
    if not attr or not hasattr(module, attr):
        raise error(f"{what} needs {dotted}, which does not exist in this version of the code.")
    return getattr(module, attr)
