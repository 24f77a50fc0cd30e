"""Small widgets the pages share: a number with its definition on hover, the names of an epsilon slider's points,
the DP guarantee badge, the runs-side-by-side table, and the row height at which table cells wrap."""

from __future__ import annotations

import math

import streamlit as st

from backend.views import compare
from backend.views.definitions import DEFINITIONS
from ui import loaders
from ui.markup import plain

# st.dataframe wraps the text of a cell only when its rows are taller than 4rem (64 px): then long descriptions show
# in full on up to three lines instead of being cut off at the column's edge.
WRAP_ROW_HEIGHT = 72


def metric(label: str, value: float | None, definition: str, fmt: str = "{:.1f}x", delta: str | None = None,
           delta_color: str = "inverse") -> None:
    """A number with its definition on hover; 'n/a' when absent. A chip that is not a change (delta_color "off": a
    CI, a baseline) carries no arrow, which would read as "increasing"."""
    shown = "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)
    st.metric(label, shown, delta=delta, help=definition, delta_color=delta_color,
              delta_arrow="off" if delta_color == "off" else "auto")


def slider_points(labels: list[str], note: str) -> None:
    """Name every point of an epsilon slider under it (the slider shows only the chosen one; labels are numbers
    made by mitigation.epsilon_label, never dataset text)."""
    st.caption(f"Drag along the stored points, left to right: ε = {' · '.join(labels)}. {note}")


def guarantee_badge(guarantee: str, privacy_unit: str, objective: str) -> None:
    color = {"certified": "green", "nominal": "orange"}.get(guarantee, "gray")
    st.markdown(f":{color}-badge[{plain(guarantee or 'no DP')}] :blue-badge[privacy unit: {plain(privacy_unit or '?')}] "
                f":gray-badge[objective: {plain(objective or '?')}]",
                help=DEFINITIONS.get(guarantee, "Epsilon = inf: heads retrained without DP (the baseline)."))


def comparison_table(run_ids: tuple[str, ...]) -> None:
    """Per audited model: linear-probe and zero-shot macro AUROC and lift at N=100 and the largest N, with CIs."""
    table = loaders.model_comparison(run_ids)
    if table.empty:
        return
    ci = "95% CI from a bootstrap over patients."
    st.dataframe(compare.comparison_display(table), hide_index=True, row_height=WRAP_ROW_HEIGHT, column_config={
        "Run": st.column_config.TextColumn(width="large", help="model · data · for a DP run its ε, guarantee and "
                                                               "privacy unit · run id"),
        "Linear-probe AUROC [95% CI]": st.column_config.TextColumn(help=DEFINITIONS["auroc"] + " " + ci),
        "Zero-shot AUROC [95% CI]": st.column_config.TextColumn(
            help="Zero-shot: per finding, cosine with a positive minus a negative prompt. " + ci),
        "Lift at N=100 [95% CI]": st.column_config.TextColumn(
            help=DEFINITIONS["lift"] + " Random pool, study level, Recall@1; at N=100 or the largest N "
                 "below it. " + ci),
        "Lift at the largest N [95% CI]": st.column_config.TextColumn(
            help=DEFINITIONS["lift"] + " At the largest pool the split allows (the whole database). " + ci),
        "AUROCs from": st.column_config.TextColumn(
            help="A probe run (the model ladder's, or a probe job), else the original-model reference of an epsilon "
                 "sweep on the same data; 'not measured' when neither is stored."),
    })
