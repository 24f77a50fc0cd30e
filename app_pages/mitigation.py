"""Mitigation: an epsilon slider over the stored sweep (instant), the badge, curves, AUROC, frontier."""

import pandas as pd
import streamlit as st

from backend.specs import (
    DEFAULT_EPSILONS,
    DEFAULT_SWEEP_RECIPE,
    OBJECTIVES,
    PRIVACY_UNITS,
)
from backend.views import cuts, launch, mitigation
from backend.views.definitions import DEFINITIONS
from ui import job_widgets, loaders, markup, navigation, widgets

source, model = navigation.selection()
st.title("Mitigation: differentially private projection heads")
sweep_id = loaders.latest("sweep", source, model)
audit_id = loaders.latest("audit", source, model)
sweep_pending = job_widgets.pending_note("sweep", source, model, sweep_id)  # a sweep queued or running, in any session

if sweep_id:
    view = loaders.sweep_view(sweep_id)  # read once per finished sweep; the slider below only re-renders
    pts = view.points
    labels = [mitigation.epsilon_label(e) for e in pts["epsilon"]]
    figs = loaders.mitigation_figures(sweep_id, audit_id)
    status, stored, planned = mitigation.sweep_progress(sweep_id)
    if status != "done":
        st.caption(f"This sweep is still running: {stored} of {planned} points stored so far (each appears here as "
                   "soon as it is computed; reload to see the next).")

    @st.fragment
    def _explore() -> None:
        choice = st.select_slider("Privacy budget ε", labels, value=labels[0], key="epsilon",
                                  help=DEFINITIONS["epsilon"])
        widgets.slider_points(labels, "Smaller ε is stronger privacy; inf is the same heads trained without DP.")
        p = pts.iloc[labels.index(choice)]
        ref = mitigation.reference_point(pts)
        widgets.guarantee_badge(str(p.get("guarantee") or ""), str(p.get("privacy_unit") or ""),
                                str(p.get("objective") or ""))
        is_ref = ref is not None and p["run_id"] == ref["run_id"]
        tags = [t for t in ("100", "1000", "max") if f"n_{t}" in pts.columns and pd.notna(p.get(f"n_{t}"))]
        cols = st.columns(len(tags) + 2)
        for col, tag in zip(cols, tags, strict=False):  # Recall@1 where it is measurable, each card naming its N
            with col:
                delta = None if ref is None or is_ref else f"{-float(p[f'cut_{tag}']):+.0%} vs retrained heads"
                widgets.metric(cuts.n_phrase(int(p[f"n_{tag}"]), card=True), float(p[f"r1_{tag}"]), DEFINITIONS["recall"],
                               fmt="{:.4f}", delta=delta, delta_color="inverse")
                if not is_ref:
                    st.caption("cut " + markup.plain(cuts.interval(float(p[f"cut_{tag}"]), float(p[f"cut_{tag}_low"]),
                                                                   float(p[f"cut_{tag}_high"]), "{:.0%}")))
        for col, (key, ci, name) in zip(cols[len(tags):], (("auroc_linear", "auroc_change", "Linear-probe macro AUROC"),
                                                           ("auroc_zero_shot", "zero_shot_change", "Zero-shot macro AUROC")),
                                        strict=True):
            with col:
                delta = None if ref is None or is_ref else f"{p[key] - ref[key]:+.3f} vs retrained heads"
                widgets.metric(name, float(p[key]), DEFINITIONS["auroc"], fmt="{:.3f}", delta=delta, delta_color="normal")
                if not is_ref and ref is not None:
                    st.caption("change " + markup.plain(cuts.interval(float(p[key] - ref[key]), float(p[f"{ci}_low"]),
                                                                      float(p[f"{ci}_high"]), "{:+.3f}")))
        change = ("the reference: heads retrained without DP" if is_ref else
                  "against the heads retrained without DP (the baseline of every number here); the frontier reads "
                  f"the cut at {'N=100' if '100' in tags else 'the largest N'}")
        st.caption(f"{change} · noise multiplier {p.get('noise_multiplier', float('nan')):.3g}"
                   f" · delta {p.get('delta', float('nan')):.2g} · accountant's ε {p.get('epsilon_achieved', float('nan')):.3g}"
                   f" · run {markup.plain(p['run_id'])}",
                   help=DEFINITIONS["reduction"])
        st.plotly_chart(figs[choice], key="mitigation_view", theme=None)

    _explore()

    st.subheader("Members vs non-members", help=DEFINITIONS["members"])
    members, groups = loaders.members_table(sweep_id)
    every_n = loaders.members_table(sweep_id, every_n=True)[0]
    if members.empty:
        st.caption("This sweep did not measure members against non-members (sweeps launched from now on do); "
                   "`python -m backend members` measures them for any model and epsilons.")
    else:
        if groups:
            st.caption(markup.plain(f"{groups['members']['patients']} member patients (train split, "
                                    f"{groups['members']['pairs']} pairs) against {groups['non_members']['patients']} "
                                    f"non-member patients (test split, {groups['non_members']['pairs']} pairs); both "
                                    f"audited with the same pool sizes N, up to {groups['largest_common_n']}."))
        st.dataframe(mitigation.members_display(members), hide_index=True)
        note = mitigation.members_note(every_n)
        if note:
            st.info(markup.plain(note))
elif not sweep_pending:
    st.info(f"No finished epsilon sweep for {markup.plain(model)} on {markup.plain(source)} yet. Launch one below.")

st.subheader("Launch a new sweep")
st.caption(DEFINITIONS["nominal"])
no_bank = launch.bank_warning(source)
if no_bank:  # said before launching: a certified sweep would stop at once
    st.warning(markup.plain(no_bank))
with st.form("sweep"):
    eps = st.multiselect("ε grid", list(DEFAULT_EPSILONS), default=list(DEFAULT_EPSILONS),  # full width: no chip cut
                         format_func=mitigation.epsilon_label, help=DEFINITIONS["epsilon"])
    c2, c3 = st.columns(2)
    objective = c2.selectbox("Objective", OBJECTIVES, help=DEFINITIONS["certified"], index=0 if no_bank else
                             OBJECTIVES.index(DEFAULT_SWEEP_RECIPE["objective"]))
    unit = c3.selectbox("Privacy unit", PRIVACY_UNITS, index=PRIVACY_UNITS.index(DEFAULT_SWEEP_RECIPE["privacy_unit"]),
                        help="pair: one image-report pair is protected; patient: all of one patient's pairs.")
    st.caption(markup.plain(launch.sweep_estimate(len(DEFAULT_EPSILONS))) + " (for the default grid)")
    if st.form_submit_button("Launch sweep", type="primary"):
        job = job_widgets.submit(launch.launch_sweep(source, model, objective, unit, tuple(eps)))
        if job is not None and job.active:
            st.session_state["sweep_job"] = job.job_id
if st.session_state.get("sweep_job") and st.session_state["sweep_job"] != sweep_pending:  # else shown above
    job_widgets.watch_job(st.session_state["sweep_job"])
