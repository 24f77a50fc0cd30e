"""Report: download a self-contained HTML audit report for a privacy review board."""

import streamlit as st

import ui
from backend.views import report

source, model = ui.selection()
st.title("Audit report")
st.markdown("One HTML file with the figures, headline numbers, definitions, the full specification of every run "
            "and the software versions, for a privacy review board. It opens offline.")
head = ui.headline(source, model)
if not ui.pending_note("audit", source, model, head.get("audit_run")) and not head.get("audit_run"):
    st.info(f"No finished audit of {ui.plain(model)} on {ui.plain(source)} yet; the report would be empty.")
st.download_button("Download the HTML audit report", data=lambda: report.build_report(source, model),
                   file_name=f"relink-audit-{source}-{model}.html", mime="text/html", type="primary", help="Built from the finished runs of this dataset and model.")
