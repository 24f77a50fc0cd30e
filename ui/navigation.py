"""Navigation: the dashboard's pages, the shared dataset and model selectors in the sidebar, and the selection a
page reads."""

from __future__ import annotations

from typing import Any

import streamlit as st

from backend.views import catalog
from ui import loaders

# No icons: ":material/...:" icons make every page load fetch a font from a CDN (tests/test_browser.py fails on
# any request to a host other than the app's), and emoji render as empty boxes where no emoji font is installed.
PAGE_SPECS: tuple[tuple[str, str], ...] = (
    ("app_pages/overview.py", "Overview"),
    ("app_pages/data.py", "Data"),
    ("app_pages/models_jobs.py", "Models and jobs"),
    ("app_pages/relinkage.py", "Re-linkage"),
    ("app_pages/explorer.py", "Pair explorer"),
    ("app_pages/mitigation.py", "Mitigation"),
    ("app_pages/utility.py", "Utility and transfer"),
    ("app_pages/report.py", "Report"),
)


def pages() -> list[Any]:
    """The dashboard's pages, registered explicitly (the first is the default)."""
    return [st.Page(path, title=title, default=i == 0) for i, (path, title) in enumerate(PAGE_SPECS)]


def selection() -> tuple[str, str]:
    """(dataset, model) chosen in app.py's sidebar, for a page. Pages live in app_pages/ (not pages/, which
    would switch Streamlit to its old auto-discovered multipage mode), so every run goes through app.py."""
    return st.session_state["selection"]


def sidebar() -> tuple[str, str]:
    """The shared dataset and model selectors (kept in session state across pages)."""
    with st.sidebar:
        st.markdown("### Audit target")
        sources = loaders.source_names()
        source = st.selectbox("Dataset", sources, key="dataset",
                              help="The de-identified image-report pairs under audit. 'synthetic' is generated here "
                                   "(no patient data).")
        models = loaders.model_names()
        model = st.selectbox("Model", models, key="model",
                             help="; ".join(f"{k}: {v}" for k, v in catalog.known_models().items()))
        st.caption(f"Jobs run on: {loaders.device_summary()}")
    return source, model
