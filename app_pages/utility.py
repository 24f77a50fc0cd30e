"""Utility and transfer: per-label AUROC before and after DP, heads transferred to another source, and a sweep
with a transfer target launched from here."""

import streamlit as st

from backend.errors import RelinkError
from backend.specs import DEFAULT_EPSILONS, SourceSpec, parse_options
from backend.views import figures, launch, mitigation
from backend.views.definitions import DEFINITIONS
from ui import job_widgets, loaders, markup, navigation, widgets

source, model = navigation.selection()
st.title("Utility and transfer")
st.markdown(DEFINITIONS["auroc"])
sweep_id = loaders.latest("sweep", source, model)
sweep_pending = job_widgets.pending_note("sweep", source, model, sweep_id)  # a sweep queued or running, in any session
view = loaders.sweep_view(sweep_id) if sweep_id else None
finite = [e for e in view.points["epsilon"] if e != float("inf")] if view is not None else []
if view is None:
    if not sweep_pending:
        st.info(f"No finished epsilon sweep for {markup.plain(model)} on {markup.plain(source)} yet (Mitigation page, or "
                "launch one with a transfer target below).")
elif not finite:
    st.info("This sweep has no DP point (only epsilon = inf).")
else:
    eps = st.select_slider("Compare no DP with ε", finite, value=finite[0], format_func=mitigation.epsilon_label,
                           help=DEFINITIONS["epsilon"])
    widgets.slider_points([mitigation.epsilon_label(e) for e in finite], "Smaller ε is stronger privacy.")
    before_after, transfer = mitigation.utility_frames(view, eps)
    st.caption("Linear probe: logistic regression per label on projected image embeddings. Zero-shot: text prompts "
               "scored against the projected image embeddings (sensitive to image-text alignment).")
    tabs = st.tabs(["Linear probe", "Zero-shot"])
    for tab, method in zip(tabs, ("linear", "zero-shot"), strict=True):
        with tab:
            st.plotly_chart(figures.auroc_bars(before_after, series="series", method=method,
                                               title=f"{method} AUROC per label: no DP vs ε={eps:g}",
                                               colors=figures.sweep_colors(view.points["epsilon"])),
                            key=f"auroc-{method}")
            sel = before_after[before_after["method"] == method]
            table = sel.assign(auroc=sel.apply(lambda r: f"{r['auroc']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]",
                                               axis=1)
                               ).pivot_table(index="label", columns="series", values="auroc", aggfunc="first")
            table = table.reindex(["macro", *[i for i in table.index if i != "macro"]])  # the summary row first
            table = table.reset_index()
            st.dataframe(table, height=36 * (len(table) + 1) + 4, hide_index=True, column_config={
                "label": st.column_config.TextColumn(width=230),  # "Enlarged Cardiomediastinum" in full
                **{c: st.column_config.TextColumn(help=DEFINITIONS["auroc"] + " [95% CI, bootstrap over patients]")
                   for c in table.columns if c != "label"}})

    st.subheader("Transfer")
    st.caption("Heads trained on this dataset, applied without retraining to another source's test split.")
    if len(transfer):
        st.dataframe(transfer, hide_index=True, column_config={
            "recall": st.column_config.NumberColumn(format="%.4f", help=DEFINITIONS["recall"]),
            "lift": st.column_config.NumberColumn(format="%.1fx", help=DEFINITIONS["lift"]),
            "epsilon": st.column_config.NumberColumn(help=DEFINITIONS["epsilon"]),
            "n": st.column_config.NumberColumn(help="Largest pool size measured on the target source.")})
    else:
        st.caption("No transfer results in this sweep: launch a sweep with a transfer target below.")

st.subheader("Launch a sweep with a transfer target")
current = loaders.sweep_spec(sweep_id)
st.caption(f"Trains the DP heads on {markup.plain(source)} with the settings of "
           + ("the sweep shown above" if current else "a default sweep") + ", then applies each point's heads, "
           "without retraining, to the target's test split (the command line's `sweep --transfer SOURCE:key=value`). "
           "It runs as a background job like every launch.")
c1, c2 = st.columns([1, 2])
targets = loaders.source_names()
target_name = c1.selectbox("Transfer target", targets, key="transfer-target",
                           help="The dataset whose test split the heads are applied to.")
options_text = c2.text_input("Target options", value="sites=B" if target_name == "synthetic" else "",
                             key=f"transfer-options-{target_name}",
                             help="key=value pairs, comma separated (values read as JSON), e.g. sites=B: the synthetic "
                                  "patients rendered and reported in site B's style.")
root = None
if launch.needs_root(target_name):
    root = st.text_input(f"Folder of the {target_name} dataset", value=launch.default_root(target_name),
                         key=f"transfer-root-{target_name}", help="Checked by loading the dataset when you launch."
                         ).strip() or None
grid = sorted(set(DEFAULT_EPSILONS) | set(current.epsilons if current else ()))
epsilons = st.multiselect("ε grid", grid, default=list(current.epsilons if current else DEFAULT_EPSILONS),
                          format_func=mitigation.epsilon_label, key="transfer-epsilons",
                          help=DEFINITIONS["epsilon"])
n_targets = len(current.base.transfer) + 1 if current else 1
st.caption(markup.plain(launch.sweep_estimate(len(epsilons or DEFAULT_EPSILONS), n_targets)))
if st.button("Launch sweep with transfer", type="primary"):
    try:
        target = SourceSpec(name=target_name, root=root, options=parse_options(options_text))
        spec = launch.transfer_sweep(current.base if current else None, source, model, target, tuple(epsilons))
    except RelinkError as exc:
        markup.show_error(exc)
    else:
        job = job_widgets.submit(spec) if job_widgets.source_loads(target) else None
        if job is not None and job.active:
            st.session_state["transfer_job"] = job.job_id
if st.session_state.get("transfer_job") and st.session_state["transfer_job"] != sweep_pending:  # else shown above
    job_widgets.watch_job(st.session_state["transfer_job"])
