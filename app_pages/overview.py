"""Overview: the threat, the current target, headline numbers, and the one-button demo."""

import streamlit as st

import ui
from backend.runs.demo import default_demo_spec
from backend.views import dashboard, figures

source, model = ui.selection()
st.title("CXR Re-Link Audit")
st.markdown(
    "**The threat.** A de-identified chest radiograph can be re-linked to its own radiology report by anyone who "
    "holds the image and a pool of candidate reports and ranks them with a CLIP-style vision-language model "
    "([arXiv 2606.02276](https://arxiv.org/abs/2606.02276)). "
    "The report carries history, dates and findings the image lacks, so re-linkage undoes de-identification. "
    "This dashboard measures how far above chance a model re-links, and what differentially private projection "
    "heads change.")
st.caption(f"Dataset **{ui.plain(source)}** · model **{ui.plain(model)}**")

head = ui.headline(source, model)
if head.get("audit_run"):
    n_max = head.get("n_max")
    cols = st.columns(4)
    with cols[0]:
        ui.metric("Lift at N=100, no mitigation", head.get("before_100"), dashboard.DEFINITIONS["lift"])
    with cols[1]:
        ui.metric(f"Lift at N={n_max}, no mitigation", head.get("before_max"), dashboard.DEFINITIONS["lift"])
    eps = head.get("after_eps")
    suffix = f" (ε={eps:g}, {ui.plain(head.get('guarantee', ''))})" if eps is not None else ""
    with cols[2]:
        ui.metric(f"Lift at N=100 with DP heads{suffix}", head.get("after_100"),
                  dashboard.DEFINITIONS["lift"] + " " + dashboard.DEFINITIONS["epsilon"])
    with cols[3]:
        ui.metric(f"Lift at N={n_max} with DP heads{suffix}", head.get("after_max"),
                  dashboard.DEFINITIONS["lift"] + " " + dashboard.DEFINITIONS["epsilon"])
    st.caption("Recall@1, random pools, study level. Lift 1x = chance. Details on Re-linkage and Mitigation.")
    rows = ui.relink_rows((head["audit_run"],))
    st.plotly_chart(figures.recall_curves(rows[rows["level"] == "study"], k=1, title=f"{model} on {source}: Recall@1 "
                                          "against pool size"), key="overview_curve")
    if not head.get("sweep_run"):
        st.info("No epsilon sweep yet for this dataset and model: launch one on the Mitigation page.")
    if ui.snapshot_note(source, model) and source == ui.DEFAULT_SOURCE and model == "demo":
        if st.button("Recompute the demo on this machine", icon="🔁",
                     help="Runs the same demo (train the demo model, audit, epsilon sweep) here in a background "
                          "job; each part replaces the precomputed snapshot when it is stored. About 18 minutes "
                          "on a 2-core CPU."):
            job = ui.submit(default_demo_spec())
            if job is not None:
                st.session_state["demo_job"] = job.job_id
        running = st.session_state.get("demo_job") or ui.active_job_id("demo")
        if running:
            ui.watch_job(running)
else:
    st.warning("No finished audit for this dataset and model yet.")
    if source == ui.DEFAULT_SOURCE and model == "demo":
        if st.button("Run the demo audit", type="primary", icon="▶️",
                     help="Generates the synthetic dataset, trains the small demo model, audits it, and runs a small "
                          "epsilon sweep, in a background job: about 18 minutes on a 2-core CPU the first time "
                          "(7 of them train the demo model, which later runs reuse)."):
            job = ui.submit(default_demo_spec())
            if job is not None:
                st.session_state["demo_job"] = job.job_id
        running = st.session_state.get("demo_job") or ui.active_job_id("demo")
        if running:
            ui.watch_job(running)
    else:
        st.info("Launch an audit on Models and jobs, or pick dataset 'synthetic' and model 'demo' for the demo.")
