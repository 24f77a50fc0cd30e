"""The shipped demo snapshot: imported into the store once per server process, and a banner on every page while
the numbers shown are its precomputed results."""

from __future__ import annotations

from typing import Any

import streamlit as st

from backend.errors import RelinkError
from backend.runs.snapshot import import_snapshot
from backend.views import catalog, status


@st.cache_resource(show_spinner="Loading the precomputed demo results ...")
def ensure_snapshot() -> list[str]:
    """Import the shipped demo snapshot into the store once per server process (a no-op when it is there)."""
    try:
        return import_snapshot()
    except RelinkError as exc:  # e.g. the store is held by another process: the pages say so themselves
        st.warning(f"The precomputed demo results could not be loaded: {exc}")
        return []


@st.cache_data(ttl=2, show_spinner=False)
def snapshot_note(source: str, model: str) -> dict[str, Any] | None:
    """The snapshot provenance of what the pages show for (source, model), or None for computed runs."""
    return status.snapshot_note(catalog.latest("audit", source, model))


def snapshot_banner(source: str, model: str) -> None:
    """On every page: say that the numbers shown are the shipped, precomputed demo results."""
    note = snapshot_note(source, model)
    if note:
        st.info(f"Precomputed snapshot - recompute on this machine (Overview). These demo results were computed "
                f"by this project's own code ({note.get('code_version', '?')[:12]}, {note.get('made', '?')[:10]}) "
                "and shipped with it; a run on this machine replaces them on every page.")
