"""Report: download a self-contained HTML audit report for a privacy review board."""

import streamlit as st

from backend.views import export, report
from ui import job_widgets, loaders, markup, navigation

source, model = navigation.selection()
st.title("Audit report")
st.markdown("One HTML file with the figures, headline numbers, definitions, the full specification of every run "
            "and the software versions, for a privacy review board. It opens offline.")
head = loaders.headline(source, model)
if not job_widgets.pending_note("audit", source, model, head.get("audit_run")) and not head.get("audit_run"):
    st.info(f"No finished audit of {markup.plain(model)} on {markup.plain(source)} yet; the report would be empty.")
st.download_button("Download the HTML audit report", data=lambda: report.build_report(source, model),
                   file_name=f"relink-audit-{source}-{model}.html", mime="text/html", type="primary", help="Built from the finished runs of this dataset and model.")
for key, what in (("audit_run", "audit"), ("sweep_run", "epsilon sweep")):
    run_id = head.get(key)
    if run_id:
        st.download_button(f"Download all results of the {what} (zip)", data=lambda r=run_id: export.archive_bytes(r),
                           file_name=export.file_name(run_id), mime="application/zip", key=f"export_{key}",
                           help=f"Run {run_id}: spec, provenance, curve rows (JSON and CSV), AUROCs, sweep points, "
                                "members rows and the per-query table when stored, with a README; the same file as "
                                "`python -m backend export RUN_ID` and Models and jobs, Stored runs.")
