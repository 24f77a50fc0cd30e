"""Utility and transfer: per-label AUROC before and after DP, and heads transferred to another source."""

import streamlit as st

import ui
from backend.views import dashboard, figures

source, model = ui.selection()
st.title("Utility and transfer")
st.markdown(dashboard.DEFINITIONS["auroc"])
sweep_id = ui.latest("sweep", source, model)
if not sweep_id:
    st.info(f"No finished epsilon sweep for {ui.plain(model)} on {ui.plain(source)} yet (Mitigation page).")
    st.stop()
view = ui.sweep_view(sweep_id)
finite = [e for e in view.points["epsilon"] if e != float("inf")]
if not finite:
    st.info("This sweep has no DP point (only epsilon = inf).")
    st.stop()
eps = st.select_slider("Compare no DP with ε", finite, value=finite[0], format_func=dashboard.epsilon_label,
                       help=dashboard.DEFINITIONS["epsilon"])
before_after, transfer = dashboard.utility_frames(view, eps)
st.caption("Linear probe: logistic regression per label on projected image embeddings. Zero-shot: text prompts "
           "scored against the projected image embeddings (sensitive to image-text alignment).")
tabs = st.tabs(["Linear probe", "Zero-shot"])
for tab, method in zip(tabs, ("linear", "zero-shot"), strict=True):
    with tab:
        st.plotly_chart(figures.auroc_bars(before_after, series="series", method=method,
                                           title=f"{method} AUROC per label: no DP vs ε={eps:g}",
                                           colors=figures.sweep_colors(view.points["epsilon"])), key=f"auroc-{method}")
        sel = before_after[before_after["method"] == method]
        table = sel.assign(auroc=sel.apply(lambda r: f"{r['auroc']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]", axis=1)
                           ).pivot_table(index="label", columns="series", values="auroc", aggfunc="first")
        table = table.reindex(["macro", *[i for i in table.index if i != "macro"]])  # the summary row first
        st.dataframe(table, height=36 * (len(table) + 1) + 4, column_config={
            c: st.column_config.TextColumn(help=dashboard.DEFINITIONS["auroc"] + " [95% CI, bootstrap over patients]")
            for c in table.columns})

st.subheader("Transfer")
st.caption("Heads trained on this dataset, applied without retraining to another source's test split.")
if len(transfer):
    st.dataframe(transfer, hide_index=True, column_config={
        "recall": st.column_config.NumberColumn(format="%.4f", help=dashboard.DEFINITIONS["recall"]),
        "lift": st.column_config.NumberColumn(format="%.1fx", help=dashboard.DEFINITIONS["lift"]),
        "epsilon": st.column_config.NumberColumn(help=dashboard.DEFINITIONS["epsilon"]),
        "n": st.column_config.NumberColumn(help="Largest pool size measured on the target source.")})
else:
    st.caption("No transfer results in this sweep.")
