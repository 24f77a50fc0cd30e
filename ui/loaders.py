"""Cached loaders: what the pages read, from backend.views (no SQL, no ML here).

Caching: a finished run never changes (DESIGN.md section 5), so loaders keyed by a finished run id use
st.cache_data without expiry; lists of runs and jobs change and are read fresh (or with a short ttl).
No database connection is ever cached.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from backend.errors import RelinkError
from backend.views import catalog, compare, data, explorer, launch, mitigation, status
from backend.views import verdict as verdict_view


@st.cache_data(ttl=2, show_spinner=False)
def source_names() -> list[str]:
    return catalog.source_names()


@st.cache_data(ttl=2, show_spinner=False)
def model_names() -> list[str]:
    return catalog.model_names()


@st.cache_data(ttl=2, show_spinner=False)
def headline(source: str, model: str) -> dict[str, Any]:
    return verdict_view.headline(source, model)


@st.cache_data(ttl=2, show_spinner=False)
def verdict(audit_id: str, sweep_id: str | None) -> dict[str, Any]:
    return verdict_view.verdict(audit_id, sweep_id)


@st.cache_data(ttl=2, show_spinner=False)
def audit_runs(source: str) -> pd.DataFrame:
    return catalog.audit_runs(source)


@st.cache_data(ttl=2, show_spinner=False)
def latest(kind: str, source: str, model: str | None) -> str | None:
    return catalog.latest(kind, source, model)


@st.cache_data(show_spinner=False, max_entries=64)
def relink_rows(run_ids: tuple[str, ...]) -> pd.DataFrame:
    """Finished runs only: cached for good."""
    return catalog.relink_rows(list(run_ids), variant="model")


@st.cache_data(ttl=2, show_spinner=False)
def overlay_runs() -> pd.DataFrame:
    return compare.overlay_runs()


@st.cache_data(show_spinner=False, max_entries=64)
def run_rows(run_ids: tuple[str, ...]) -> pd.DataFrame:
    """Finished runs only: cached for good."""
    return compare.run_rows(list(run_ids))


@st.cache_data(ttl=2, show_spinner=False)
def provenance_table() -> pd.DataFrame:
    return status.provenance_table()


@st.cache_data(ttl=2, show_spinner=False, max_entries=16)
def model_comparison(run_ids: tuple[str, ...]) -> pd.DataFrame:
    """The side-by-side table of audited models (a probe may be stored after the audit: short ttl)."""
    return compare.model_comparison(list(run_ids))


def sweep_view(sweep_id: str) -> mitigation.SweepView:
    """A sweep, read from the store once per process (again when a running sweep stored another point); the
    epsilon slider only re-renders."""
    return _sweep_view(sweep_id, mitigation.sweep_progress(sweep_id))


@st.cache_data(show_spinner=False, max_entries=16)
def _sweep_view(sweep_id: str, version: tuple[str, int, int]) -> mitigation.SweepView:
    return mitigation.sweep_view(sweep_id)


@st.cache_data(show_spinner=False, max_entries=16)
def members_table(sweep_id: str, every_n: bool = False) -> tuple[pd.DataFrame, dict]:
    """Members against non-members stored with a finished sweep (empty when it did not measure them); at N=100 and
    the largest N, or at every N measured."""
    return mitigation.members_table(sweep_id, every_n=every_n)


@st.cache_data(show_spinner=False, max_entries=16)
def sweep_spec(sweep_id: str | None) -> Any:
    """The SweepSpec of a finished sweep (its settings, for a new launch), or None."""
    return launch.sweep_spec(sweep_id)


def mitigation_figures(sweep_id: str, audit_id: str | None) -> dict[str, Any]:
    """Epsilon label -> the figure of recall curves beside the frontier, built once per sweep (and each time a
    running sweep stored another point) so that the slider only swaps prebuilt figures (building one costs
    ~0.1 s of plotly validation). Read-only."""
    return _mitigation_figures(sweep_id, audit_id, mitigation.sweep_progress(sweep_id))


@st.cache_resource(show_spinner="Preparing the sweep's figures ...", max_entries=8)
def _mitigation_figures(sweep_id: str, audit_id: str | None, version: tuple[str, int, int]) -> dict[str, Any]:
    from backend.views import figures

    view = _sweep_view(sweep_id, version)
    pts = view.points
    original = relink_rows((audit_id,)) if audit_id else None
    ref = mitigation.reference_point(pts)
    ref_run = str(ref["run_id"]) if ref is not None else None
    out = {}
    for p in pts.itertuples():
        label = mitigation.epsilon_label(p.epsilon)
        curves = mitigation.mitigation_curves(view, p.run_id, ref_run, original, mitigation.series_label(p.epsilon))
        out[label] = figures.mitigation_view(curves, pts, float(p.epsilon), title=f"Recall@1 at ε={label}")
    return out


@st.cache_resource(show_spinner="Loading the run's embeddings ...", max_entries=4)
def pair_set(run_id: str) -> explorer.PairSet:
    return explorer.load_pairs(run_id)


@st.cache_resource(show_spinner="Loading the source to read images ...", max_entries=2)
def run_source(run_id: str) -> Any:
    return explorer.load_run_source(run_id)


@st.cache_resource(show_spinner="Loading the dataset ...", max_entries=3, ttl=60)
def source_data(name: str, root: str | None = None) -> Any:
    """A loaded source (pair table + image reader) from its folder (None: the source's default), default options;
    read-only, so shared; loaded again after a minute (a folder's files may change)."""
    return data.load(name, root)


def source_tables(name: str, root: str | None = None) -> tuple[pd.DataFrame, dict[str, int]]:
    loaded = source_data(name, root)
    return loaded.pairs, dict(loaded.stats)


def run_source_image(name: str, image_path: str, root: str | None = None) -> Any:
    return explorer.read_image(image_path, source_data(name, root))


@st.cache_data(show_spinner=False)
def device_summary() -> str:
    return launch.device_summary()


def pair_image(run_id: str, image_path: str) -> Any:
    """An explorer image (explorer.read_image): an absolute file path directly, else through the run's (cached)
    source, loaded only then, against the dataset's folder."""
    return explorer.read_image(image_path, lambda: run_source(run_id))


@st.cache_data(show_spinner=False, ttl=60)
def data_changed_since(run_id: str) -> bool:
    """Whether the run's data changed since it was computed (explorer.data_changed_since); False when its source
    cannot be loaded here (the image says why)."""
    try:
        return explorer.data_changed_since(run_id, run_source(run_id))
    except RelinkError:
        return False
