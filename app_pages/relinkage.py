"""Re-linkage: lift and Recall@K against pool size, any stored runs overlaid (one colour per run), pools and levels,
a lift table and the runs side by side."""

import streamlit as st

from backend.specs import MATCH_PREFIX, POOL_KINDS
from backend.views import compare, figures, status
from backend.views.definitions import DEFINITIONS
from ui import job_widgets, loaders, markup, navigation, widgets

source, model = navigation.selection()
st.title("Re-linkage")
st.markdown(DEFINITIONS["recall"] + " " + DEFINITIONS["lift"])
runs = loaders.audit_runs(source)
pending = job_widgets.pending_note("audit", source, None, str(runs["run_id"].iloc[0]) if len(runs) else None)
if not len(runs):
    if pending:
        st.stop()
    st.info(f"No finished audit on {markup.plain(source)} yet. Run the demo on Overview or launch one on Models and jobs.")
    st.stop()

catalog = loaders.overlay_runs()
labels = dict(zip(catalog["run_id"], catalog["label"], strict=True))
default = [r for r in runs["run_id"].tolist()[:4] if r in labels]  # the newest audit of each model on this dataset
chips = dict(zip(catalog["run_id"], catalog["chip"], strict=True))
# On a row of its own, with short names (the legend and the tables give the whole name): chips that fit.
chosen = st.multiselect("Runs", catalog["run_id"].tolist(), default=default, format_func=lambda r: chips.get(r, r),
                        key="overlay_runs",
                        help="Any stored audit or DP run, overlaid; each keeps one colour in every chart. Default: the "
                             "newest audit of each model on this dataset.")
c2, _ = st.columns([1, 4])
if not chosen:
    st.info("Pick at least one run.")
    st.stop()
rows_all = loaders.run_rows(tuple(chosen))
ks = sorted(rows_all["k"].unique().tolist())
k = c2.selectbox("K", ks, help="Top-K: the attacker succeeds when the true report is among the K best-scored.")
# Pills on a row of their own, not chips in a narrow column (which cut "pathology-matched" off): whole names.
c3, c4 = st.columns([3, 2])
kinds = sorted(rows_all["pool_kind"].unique())
pools = c3.pills("Pools", kinds, selection_mode="multi",  # random, pathology-matched and every side-information pool
                 default=[p for p in kinds if p in POOL_KINDS or str(p).startswith(MATCH_PREFIX)],
                 format_func=figures.pool_name,
                 help=DEFINITIONS["random"] + " " + DEFINITIONS["hard"] + " Matched on sex, age "
                      "band ...: distractors share those attributes with the query (what an attacker who knows them "
                      "would keep); fewer reports match, so compare lifts, not raw recall.") or []
levels = c4.pills("Level", ["study", "patient"], selection_mode="multi", default=["study"],
                  help=DEFINITIONS["study"] + " " + DEFINITIONS["patient"]) or []
rows = rows_all[rows_all["pool_kind"].isin(pools) & rows_all["level"].isin(levels)]
if not len(rows):
    st.info("Pick at least one pool and level.")
    st.stop()
colors = figures.run_label_colors(labels, chosen)
st.caption("Lift (Recall@K divided by chance K/N) puts pools of different effective size on one scale: a "
           "pathology-matched pool is often smaller than N, which raises its raw recall. Each run keeps its colour in "
           "both charts; the line style is the pool.")
st.plotly_chart(figures.recall_curves(rows, k=k, y="lift", series="run", colors=colors,
                                      title=f"Lift of Recall@{k} over chance against pool size"), key="lift_curves")
st.plotly_chart(figures.recall_curves(rows, k=k, y="recall", series="run", colors=colors,
                                      title=f"Recall@{k} against pool size"), key="recall_curves")
st.caption("Shaded bands: 95% CIs from a bootstrap over patients. Dotted black: chance (lift 1x; K/N on the recall "
           "scale). Log x axis.")

st.subheader(f"Lift table (K={k})")
table = compare.lift_table(rows, k=k, by="run")
st.dataframe(table, hide_index=True, row_height=widgets.WRAP_ROW_HEIGHT, column_config={
    "run": st.column_config.TextColumn(width="large", help="model · data · for a DP run its ε, guarantee and privacy "
                                                           "unit · run id"),
    f"Recall@{k}": st.column_config.NumberColumn(format="%.4f", help=DEFINITIONS["recall"]),
    "chance": st.column_config.NumberColumn(format="%.4f", help=DEFINITIONS["chance"]),
    "lift": st.column_config.NumberColumn(format="%.1fx", help=DEFINITIONS["lift"]),
    "N": st.column_config.NumberColumn(help="Pool size: candidate reports including the true one."),
    "CI": st.column_config.TextColumn(help="95% CI of the recall, bootstrap over patients."),
    "effective N": st.column_config.NumberColumn(format="%.0f", help=DEFINITIONS["effective_n"]),
})
st.subheader("Runs side by side")
st.caption("Per run picked above: clinical utility (macro AUROC over the 14 findings) beside re-linkage (lift of "
           "Recall@1 over chance, random pool, study level). The model ladder (Models and jobs) fills it for the "
           "demo-weak, demo and demo-strong rungs; any audited models compare the same way.")
widgets.comparison_table(tuple(chosen))
st.caption(markup.plain(" · ".join(status.run_inputs(r) for r in chosen)),
           help="The data hash covers the whole pair table (ids, patients, labels, reports) and every image file's "
                "size and time: a run over data that changed since is recomputed when it is launched again.")
hard = rows[(rows["pool_kind"] == "hard") & (rows["effective_n"] < rows["n"])]
if len(hard):
    st.caption(DEFINITIONS["effective_n"] + f" Here that happens from N={int(hard['n'].min()):,} on: for "
               "some images fewer studies share all 14 findings than the pool asks for, so their pool holds all of "
               "them and is smaller than N.")
