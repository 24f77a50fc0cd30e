"""CXR Re-Link Audit dashboard: page config, the shared sidebar (dataset, model), and the pages.

Run with `streamlit run app.py` (or ./run.sh app). Pages read the store and submit specs; the work
happens in detached worker processes (backend/runs/worker.py).
"""

from pathlib import Path

import streamlit as st

from backend.errors import RelinkError
from ui import markup, navigation, snapshot

# The icon ships with the app: a ":material/...:" page icon makes every page load fetch it from a font CDN.
ICON = str(Path(__file__).resolve().parent / "assets" / "icon.png")
st.set_page_config(page_title="CXR Re-Link Audit", page_icon=ICON, layout="wide")

snapshot.ensure_snapshot()  # the shipped demo results, so a first start shows every page populated
page = st.navigation(navigation.pages())
try:  # the sidebar and the banner read the store too: a damaged, held or read-only one is named, never a traceback
    st.session_state["selection"] = navigation.sidebar()
    snapshot.snapshot_banner(*st.session_state["selection"])
    page.run()
except RelinkError as exc:  # e.g. the results database held by another process for too long: say what to do
    markup.show_error(exc)
