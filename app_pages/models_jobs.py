"""Models and jobs: pick a model and dataset, launch embedding or audit jobs, watch them."""

import streamlit as st

from backend.specs import MATCH_ATTRIBUTES, POOL_KINDS, AuditSpec, EmbedSpec, LadderSpec, SourceSpec
from backend.views import catalog, export, launch
from backend.views.definitions import DEFINITIONS
from ui import job_widgets, loaders, markup, navigation, widgets

source, model = navigation.selection()
st.title("Models and jobs")
st.caption(f"Jobs run in detached worker processes on: **{loaders.device_summary()}**. They survive page reloads; "
           "`python -m backend jobs` lists them from a terminal.")

st.dataframe(catalog.models_table(), hide_index=True, row_height=widgets.WRAP_ROW_HEIGHT, column_config={
    "model": st.column_config.TextColumn(width="small"),  # tall rows wrap long text instead of cutting it off
    "what": st.column_config.TextColumn(width="large", help="What the model is and what it was trained on."),
    "weights": st.column_config.TextColumn(width="large", help="Where its weights come from.")})
custom = st.text_input("Or a local open_clip checkpoint", placeholder="local:/path/to/checkpoint.pt",
                       help="local:<path>[#config] loads any open_clip checkpoint from disk (no download).")
chosen = custom.strip() or model
warning = launch.hub_warning(chosen)
if warning:
    st.warning(markup.plain(warning))

root = None
if launch.needs_root(source):
    root = st.text_input(f"Folder of the {source} dataset", value=launch.default_root(source), key=f"root-{source}",
                         help="The dataset's folder on this machine (the command line's --root); checked by loading "
                              "the dataset when you launch.").strip() or None

with st.form("launch"):
    where = f" from folder {markup.plain(root)}" if root else ""
    st.markdown(f"**Launch on dataset {markup.plain(source)}{where} with model {markup.plain(chosen)}**")
    c1, c2, c3 = st.columns(3)
    split = c1.selectbox("Split", ["test", "val", "train", "all"], help="Which patient-disjoint split to embed.")
    pools = c2.multiselect("Pools", list(POOL_KINDS), default=list(POOL_KINDS),
                           help=DEFINITIONS["random"] + " " + DEFINITIONS["hard"])
    n_boot = c3.number_input("Bootstrap resamples", 0, 2000, 200, help="Patient-level bootstrap for the 95% CIs.")
    side = st.multiselect(
        "Also a pool matched on what the attacker knows", [a for a in MATCH_ATTRIBUTES if a != "labels"],
        placeholder="none (random and pathology-matched pools only)", format_func=lambda a: a.replace("_", " "),
        help="One more pool per audit: candidate reports whose patients share every chosen attribute with the query "
             "(e.g. sex and age band), as an attacker who knows them would restrict the candidates. Its curve is shown "
             "against its effective N on Re-linkage. The command line: audit --match sex+age_band.")
    b1, b2 = st.columns(2)
    embed_clicked = b1.form_submit_button("Embed only", help="Embed images and reports (resumable, cached).")
    audit_clicked = b2.form_submit_button("Embed and audit", type="primary",
                                          help="Embed, then measure Recall@K against pool size.")
match = ("+".join(a for a in MATCH_ATTRIBUTES if a in side),) if side and audit_clicked else ()
dataset = SourceSpec(name=source, root=root)
if embed_clicked or audit_clicked:
    embed = EmbedSpec(source=dataset, model=chosen, split=split)
    spec = AuditSpec(embed=embed, pools=tuple(pools) or POOL_KINDS, n_bootstrap=int(n_boot),
                     match=match) if audit_clicked else embed
    if job_widgets.launch_ok(spec):  # the model, the bootstrap, the pools, the data and its split: before any job
        job_widgets.submit(spec)

st.subheader("The model ladder")
st.markdown("Three demo models of the same architecture, trained by the project with increasing in-domain "
            "specialisation (demo-weak: site A style only, 3,000 pairs, 4 epochs; demo: 12,000 pairs, 8 epochs; "
            "demo-strong: 18,000 pairs, 12 epochs), each audited on the same synthetic test split and probed. Each "
            "rung's results appear on Re-linkage and Overview as soon as they are stored.")
ladder_spec = LadderSpec()
estimate = launch.ladder_estimate(ladder_spec)
st.caption(markup.plain(estimate["text"]))
if st.button("Train the ladder", help="One background job: train each rung (cached), audit it, probe it. "
             + estimate["text"]):
    job = job_widgets.submit(ladder_spec)
    if job is not None:
        st.session_state["ladder_job"] = job.job_id
running = st.session_state.get("ladder_job") or job_widgets.active_job_id("ladder")
if running:
    job_widgets.watch_job(running)

st.subheader("Stored runs")
st.caption("Where each finished run comes from: the code version that computed it (git commit; -dirty: with "
           "uncommitted changes), the hash of the data it read, and when it started and ended. Export writes every "
           "result of one run as a zip: spec and provenance (JSON), curve rows (JSON and CSV), per-label AUROCs, sweep "
           "points, members rows and the per-query table when stored, with a README naming each file. The command "
           "line: `python -m backend export RUN_ID --out FILE.zip`.")
stored = loaders.provenance_table()
if len(stored):
    st.dataframe(stored, hide_index=True, column_config={
        "code version": st.column_config.TextColumn(help="git commit of the code that stored the run (-dirty: with "
                                                         "uncommitted changes; unknown: not a git checkout)."),
        "data hash": st.column_config.TextColumn(help="16 hex of SHA-256 over the pair table and each image file's "
                                                      "size and time, as the run recorded it."),
        "duration (s)": st.column_config.TextColumn(help="finished - started; a sweep's point starts when the "
                                                         "previous point was stored.")})
    picked = st.selectbox("Run to export", stored["run"].tolist(), key="export_run",
                          format_func=lambda r: " · ".join(str(v) for v in stored.loc[stored["run"] == r,
                                                                                   ["run", "kind", "model", "dataset"]]
                                                           .iloc[0]))
    st.download_button("Download all results of this run (zip)", data=lambda: export.archive_bytes(picked),
                       file_name=export.file_name(picked), mime="application/zip", key="export_zip",
                       help="One zip archive: the same file as `python -m backend export RUN_ID`.")
else:
    st.info("No finished runs yet: their provenance and export appear here.")

st.subheader("Jobs")


@st.fragment(run_every=job_widgets.poll_seconds())
def _jobs() -> None:
    job_widgets.job_list(limit=20)


_jobs()
