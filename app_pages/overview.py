"""Overview: the threat, the current target, headline numbers, and the one-button demo."""

import streamlit as st

from backend.runs.demo import default_demo_spec
from backend.views import catalog, cuts, figures, report, status
from backend.views.definitions import DEFINITIONS
from backend.views.verdict import study_comparison as verdict_view_sentence
from ui import job_widgets, loaders, markup, navigation, recommendation, snapshot, widgets


def demo_button(label: str, what: str, *, primary: bool) -> None:
    """The demo job's button, and the running demo's progress (this browser tab's, or any demo running)."""
    if st.button(label, type="primary" if primary else "secondary",
                 help=what + " About 30 minutes on a 2-core CPU the first time (12-14 of them train the demo "
                             "model, which later runs reuse)."):
        job = job_widgets.submit(default_demo_spec())
        if job is not None:
            st.session_state["demo_job"] = job.job_id
    running = st.session_state.get("demo_job") or job_widgets.active_job_id("demo")
    if running:  # the page reruns as each part (audit, sweep) is stored, not only when the whole job ends
        job_widgets.watch_job(running, stored_for=(source, model))


source, model = navigation.selection()
st.title("CXR Re-Link Audit")
st.markdown(
    "**The threat.** A de-identified chest radiograph can be re-linked to its own radiology report by anyone who "
    "holds the image and a pool of candidate reports and ranks them with a CLIP-style vision-language model "
    "([arXiv 2606.02276](https://arxiv.org/abs/2606.02276)). "
    "The report carries history, dates and findings the image lacks, so re-linkage undoes de-identification. "
    "This dashboard measures how far above chance a model re-links, and what differentially private projection "
    "heads change.")
st.caption(f"Dataset **{markup.plain(source)}** · model **{markup.plain(model)}**")

if source == "synthetic":
    st.warning("SYNTHETIC data: generated images and reports, no patient. The numbers show the mechanism, "
               "not the size of the risk on real data.")

head = loaders.headline(source, model)
if head.get("sweep_note"):
    st.warning(markup.plain(head["sweep_note"]))
dropped = status.drops_note(head.get("audit_run"))
if dropped:
    st.caption(markup.plain(dropped))
if head.get("audit_run"):
    verdict = loaders.verdict(head["audit_run"], head.get("sweep_run"))
    lines = {line["key"]: line for line in verdict["lines"]}
    st.subheader("Verdict: how far above chance does this model re-link?")
    st.caption("The original model (the audited model's own heads): lift of Recall@1 over chance (1x = guessing), "
               "study level, with its 95% CI.")
    keys, seen = [], set()
    for key in ("lift_random_100", "lift_random_max", "lift_hard_100", "lift_hard_max"):
        line = lines.get(key)
        if line is not None and (line["pool"], line["n"]) in seen:
            continue  # a database under N=100: the largest N is the N=100 card already, not a second card
        seen.add((line["pool"], line["n"]) if line is not None else key)
        keys.append(key)
    cols = st.columns(len(keys))
    for col, key in zip(cols, keys, strict=True):
        line = lines.get(key)
        with col:
            if line is None:
                widgets.metric(key, None, DEFINITIONS["lift"])
                continue
            short = "random pool" if line["pool"] == "random" else "pathology-matched"
            widgets.metric(f"N={line['n']:,}, {short}", line["lift"],
                           DEFINITIONS["lift"] + " " + DEFINITIONS[line["pool"]],
                           delta=f"95% CI {line['lift_low']:.1f}x-{line['lift_high']:.1f}x", delta_color="off")
            st.caption(markup.plain(line["sentence"]))
    extra = [line for line in verdict["lines"] if line["key"].startswith("matched:")]
    if extra:  # what side information does: the lift beside what the attacker gains (absolute Recall@1, pool size)
        for col, line in zip(st.columns(4), extra[:4], strict=False):
            with col:
                r = line["random"]
                widgets.metric(f"Side info: N={line['n']:,}", line["lift"], "Lift in pools whose distractors share "
                               "the matched attributes with the query: " + figures.pool_name(line["pool"]) + ". Under "
                               "it: the attacker's Recall@1 without and with the side information, and the "
                               "candidates left.",
                               delta=f"R@1 {r['recall']:.3f}→{line['recall']:.3f} in {line['effective_n']:,.0f}",
                               delta_color="off")
                st.caption(markup.plain(line["sentence"]))
    if "epsilon" in verdict:
        st.subheader(f"With DP projection heads at ε={verdict['epsilon']:g}, against the retrained heads (no DP)")
        widgets.guarantee_badge(verdict.get("guarantee", ""), verdict.get("privacy_unit", ""), verdict.get("objective", ""))
        dp_lines = [line for line in verdict["lines"] if line["key"].startswith("dp_")]
        auroc = [lines[k] for k in ("auroc_linear", "auroc_zero_shot") if k in lines]
        for col, line in zip(st.columns(len(dp_lines) + len(auroc)), [*dp_lines, *auroc], strict=True):
            with col:
                if line["key"].startswith("dp_"):
                    widgets.metric(cuts.n_phrase(line["n"], card=True), line["after"]["recall"], DEFINITIONS["recall"],
                                   fmt="{:.4f}", delta=f"{line['change']:+.0%} vs {line['before']['recall']:.4f}, "
                                                       "retrained heads", delta_color="inverse")
                else:
                    widgets.metric("Linear-probe AUROC" if line["key"] == "auroc_linear" else "Zero-shot AUROC",
                                   line["after"], DEFINITIONS["auroc"], fmt="{:.3f}",
                                   delta=f"{line['change']:+.3f} vs {line['before']:.3f}, retrained heads",
                                   delta_color="normal")
                st.caption(markup.plain(line["sentence"]))
        members = [line for line in verdict["lines"] if line["key"].startswith("members_")]
        for col, line in zip(st.columns(4), members, strict=False):
            with col:
                widgets.metric(f"Members gap, N={line['n']:,}", line["delta"], DEFINITIONS["members"],
                               fmt="{:+.4f}", delta=f"95% CI {line['delta_low']:+.4f} to {line['delta_high']:+.4f}",
                               delta_color="off")
                st.caption(markup.plain(line["sentence"]))
        base_100 = next((line["before"] for line in dp_lines if line["n"] <= 100), None)
        orig_100 = lines.get("lift_random_100")
        both = (f" At N={orig_100['n']:,} that is Recall@1 {orig_100['recall']:.4f} for the original model (the lift "
                f"cards above) and {base_100['recall']:.4f} for the retrained heads (the baseline of every number in "
                "this section)." if base_100 is not None and orig_100 is not None else "")
        st.caption("Two baselines, one per table: the lift cards above are the **original model** (the model's own "
                   "heads, as audited); every DP number here is against the **retrained heads, no DP** (trained "
                   "exactly like the DP heads but without noise: the fair comparison for what the noise does)."
                   + markup.plain(both) + " The strongest ε of the sweep is shown; slide ε on Mitigation.")
        recommendation.section(head["sweep_run"])
    with st.expander("Privacy caveats: what these numbers do not show"):
        st.markdown("\n".join(f"- {markup.plain(c)}" for c in report.CAVEATS))
    rows = loaders.relink_rows((head["audit_run"],))
    st.plotly_chart(figures.overview_lift(rows, title=f"{model} on {source}: lift of Recall@1 over chance against "
                                                      "pool size"), key="overview_curve")
    st.caption("Lift of Recall@1 over chance, study level, one colour per pool, log axes (1x = chance). "
               + markup.plain(verdict_view_sentence(rows)) + " Details on Re-linkage and Mitigation.")
    audited = loaders.audit_runs(source)
    if len(audited) > 1:
        st.subheader("Audited models side by side")
        st.caption("Utility (macro AUROC) beside re-linkage (lift of Recall@1, random pool) for every model audited on "
                   "this dataset; the curves of all of them are overlaid on Re-linkage. Train the model ladder on "
                   "Models and jobs.")
        widgets.comparison_table(tuple(audited["run_id"]))
    demo_here = bool(snapshot.snapshot_note(source, model)) and source == catalog.DEFAULT_SOURCE and model == "demo"
    if not demo_here and not job_widgets.pending_note("sweep", source, model, head.get("sweep_run")) and not head.get("sweep_run"):
        st.info("No epsilon sweep yet for this dataset and model: launch one on the Mitigation page.")
    if demo_here:  # its button shows the running demo's progress
        demo_button("Recompute the demo on this machine", "Runs the same demo (train the demo model, audit, "
                    "epsilon sweep) here in a background job; each part replaces the precomputed snapshot when it is "
                    "stored.", primary=False)
elif not (source == catalog.DEFAULT_SOURCE and model == "demo") and job_widgets.pending_note("audit", source, model, None):
    pass  # the note says that the audit is running, with its progress (the demo's button shows the demo's)
else:
    st.warning("No finished audit for this dataset and model yet.")
    if source == catalog.DEFAULT_SOURCE and model == "demo":
        demo_button("Run the demo audit", "Generates the synthetic dataset, trains the small demo model, "
                    "audits it, and runs a 7-point epsilon sweep, in a background job.", primary=True)
    else:
        st.info("Launch an audit on Models and jobs, or pick dataset 'synthetic' and model 'demo' for the demo.")
