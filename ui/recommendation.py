"""The recommendation section (Overview): the reviewer sets a target with widgets, the section names the epsilon of
the sweep that meets it at the smallest cost (backend.views.recommend), or the closest point, and the risk in words."""

from __future__ import annotations

import streamlit as st

from backend.views import cuts
from backend.views.recommend import Target, recommend
from ui import loaders
from ui.markup import plain

TAG_NAMES = {"100": "N=100", "1000": "N=1,000", "max": "the largest N"}


@st.fragment
def section(sweep_id: str) -> None:
    """The target's widgets and the recommendation; a fragment: changing the target redraws this section only."""
    st.subheader("Recommendation: which ε meets your target?")
    pts = loaders.sweep_view(sweep_id).points
    tags = [t for t in ("100", "1000", "max") if f"n_{t}" in pts.columns and pts[f"n_{t}"].notna().any()]
    if not tags:
        st.caption("This sweep has no Recall@1 of the random pool to read a cut from.")
        return
    c1, c2, c3 = st.columns(3)
    min_cut = c1.slider("At least this cut of first-guess re-links", 0, 100, 50, step=5, format="%d%%",
                        key="rec_min_cut", help="Relative to the heads retrained without DP: 50% = half as many.")
    at = c2.selectbox("read at pool size", tags, key="rec_at",
                      format_func=lambda t: f"N={int(pts[f'n_{t}'].dropna().iloc[0]):,}" if t != "max" else
                      f"N={int(pts['n_max'].dropna().iloc[0]):,} (all reports)")
    max_cost = c3.number_input("Most linear-probe macro AUROC it may cost", 0.0, 0.5, 0.01, step=0.005,
                               format="%.3f", key="rec_max_cost")
    c4, c5 = st.columns(2)
    certified = c4.checkbox("Certified points only", value=True, key="rec_certified",
                            help="Only points whose epsilon is a real DP guarantee (the public-negatives objective).")
    conservative = c5.checkbox("Judge by the conservative end of each 95% CI", value=True, key="rec_conservative",
                               help="What a board signs: the cut's lower bound and the cost's upper bound. Off: the "
                                    "point estimates.")
    got = recommend(pts, Target(min_cut=min_cut / 100, at=at, max_cost=float(max_cost), certified=certified,
                                conservative=conservative))
    st.caption(plain(f"Target: {got['rule']}."))
    (st.success if got["met"] else st.warning)(plain(got["sentence"]))
    row = got["point"] if got["met"] else got["closest"]
    if row is not None:
        n = int(row[f"n_{at}"])
        st.caption(plain(
            f"At ε={float(row['epsilon']):g}: cut at N={n:,} "
            f"{cuts.interval(float(row[f'cut_{at}']), float(row[f'cut_{at}_low']), float(row[f'cut_{at}_high']), '{:.0%}')}; "
            f"AUROC change {cuts.interval(float(row['auroc_change']), float(row['auroc_change_low']), float(row['auroc_change_high']), '{:+.3f}')}. "
            f"An attacker's first guess is the right report {got['risk']} (heads retrained without DP: {got['risk_before']})."))
