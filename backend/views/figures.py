"""Plotly figures shared by the dashboard and the HTML report (no Streamlit here)."""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from backend.specs import POOL_NAMES
from backend.views.dashboard import epsilon_label

POOL_DASH = {"random": "solid", "hard": "dash", "full": "dot"}
POOL_NAME = POOL_NAMES


def _rgba(color: str, alpha: float) -> str:
    color = color.lstrip("#")
    r, g, b = (int(color[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def recall_curves(rows: pd.DataFrame, *, k: int = 1, series: str = "model", title: str = "",
                  show_chance: bool = True, y: str = "recall") -> go.Figure:
    """Recall@k (y="recall") or lift over chance (y="lift": recall / chance, so that pools of different
    effective size compare fairly) against pool size N (log x) with CI bands, one line per (series value, pool,
    level). rows: tidy relink rows plus a `series` column (model name, epsilon label ...)."""
    fig = go.Figure()
    sel = rows[rows["k"] == k].sort_values("n")
    if y == "lift":
        sel = sel.assign(recall=sel["lift"], ci_low=sel["ci_low"] / sel["chance"], ci_high=sel["ci_high"] / sel["chance"])
    palette = qualitative.Plotly
    for i, (name, g_series) in enumerate(sel.groupby(series, sort=False)):
        color = palette[i % len(palette)]
        for (pool, level), g in g_series.groupby(["pool_kind", "level"]):
            label = f"{name} · {POOL_NAME.get(pool, pool)} · {level}"
            x = g["n"].tolist()
            fig.add_trace(go.Scatter(x=x + x[::-1], y=g["ci_high"].tolist() + g["ci_low"].tolist()[::-1],
                                     fill="toself", fillcolor=_rgba(color, 0.15), line={"width": 0}, mode="lines",
                                     hoverinfo="skip", showlegend=False, legendgroup=label))
            fig.add_trace(go.Scatter(
                x=x, y=g["recall"], mode="lines+markers", name=label, legendgroup=label,
                line={"color": color, "dash": POOL_DASH.get(pool, "solid"), "width": 2 if level == "study" else 1},
                customdata=g[["ci_low", "ci_high", "lift", "chance"]].to_numpy(),
                hovertemplate=(f"{label}<br>N=%{{x}}<br>Recall@{k}=%{{y:.3f}} (95% CI %{{customdata[0]:.3f}}-"
                               "%{customdata[1]:.3f})<br>lift=%{customdata[2]:.1f}x, chance=%{customdata[3]:.4f}"
                               "<extra></extra>")))
    if show_chance and len(sel):
        ns = sorted(sel["n"].unique())
        fig.add_trace(go.Scatter(x=ns, y=[1.0] * len(ns) if y == "lift" else [min(1.0, k / n) for n in ns], mode="lines",
                                 name="chance (lift 1x, every pool)" if y == "lift" else f"chance (K/N, K={k})",
                                 line={"color": "black", "dash": "dot", "width": 1}))
    what = f"lift of Recall@{k} over chance" if y == "lift" else f"Recall@{k}"
    fig.update_layout(title=title or f"{what[0].upper()}{what[1:]} against pool size", xaxis_title="pool size N (log scale)",
                      yaxis_title=what, xaxis_type="log", height=560,
                      yaxis_range=None if y == "lift" else [0, 1.02],
                      legend={"font": {"size": 11}, "orientation": "h", "yanchor": "top", "y": -0.18, "x": 0},
                      margin={"l": 50, "r": 20, "t": 50, "b": 40})
    return fig


def frontier(points: pd.DataFrame, selected: float | None = None) -> go.Figure:
    """Re-linkage reduction against linear-probe AUROC change, one marker per epsilon."""
    fig = go.Figure()
    labels = [epsilon_label(e) for e in points["epsilon"]]
    fig.add_trace(go.Scatter(x=points["auroc_change"], y=points["reduction"], mode="lines+markers+text",
                             text=[f"ε={t}".replace("inf (no DP)", "∞") for t in labels], textposition="top center",
                             name="sweep",
                             hovertemplate="ε=%{text}<br>AUROC change=%{x:+.3f}<br>re-linkage reduction=%{y:.1%}"
                                           "<extra></extra>"))
    if selected is not None:
        hit = points[_same(points["epsilon"], selected)]
        fig.add_trace(go.Scatter(x=hit["auroc_change"], y=hit["reduction"], mode="markers", name="selected ε",
                                 marker={"size": 16, "color": "red", "symbol": "circle-open", "line": {"width": 3}}))
    fig.update_layout(title="Privacy-utility frontier", showlegend=False, xaxis_title="linear-probe macro AUROC change vs no DP",
                      yaxis_title="Recall@1 reduction at largest N", yaxis_tickformat=".0%", height=380,
                      margin={"l": 50, "r": 20, "t": 50, "b": 40})
    return fig


def _same(series: pd.Series, value: float) -> pd.Series:
    if math.isinf(value):
        return series.apply(lambda v: math.isinf(v))
    return (series - value).abs() < 1e-12


def auroc_bars(probe: pd.DataFrame, *, series: str, method: str = "linear", title: str = "") -> go.Figure:
    """Per-label AUROC bars, one group per series value (e.g. before/after), with CI whiskers."""
    fig = go.Figure()
    sel = probe[probe["method"] == method]
    for name, g in sel.groupby(series, sort=False):
        fig.add_trace(go.Bar(x=g["label"], y=g["auroc"], name=str(name),
                             error_y={"type": "data", "symmetric": False, "array": g["ci_high"] - g["auroc"],
                                      "arrayminus": g["auroc"] - g["ci_low"]}))
    floor = min(0.4, float(sel["ci_low"].min()) - 0.05) if len(sel) and sel["ci_low"].notna().any() else 0.4
    fig.update_layout(barmode="group", title=title or f"{method} AUROC per label", yaxis_range=[max(0.0, floor), 1.0],
                      yaxis_title="AUROC", height=420, margin={"l": 50, "r": 20, "t": 50, "b": 120})
    return fig


def mitigation_view(curves: pd.DataFrame, points: pd.DataFrame, selected: float, *, title: str) -> go.Figure:
    """The Mitigation page's one figure: Recall@1 curves (left, log N) beside the privacy-utility frontier
    (right) with the selected epsilon ringed. One figure, so that a slider move redraws one plot, not two
    (each plotly redraw costs the browser about 130 ms)."""
    from plotly.subplots import make_subplots

    left, right = recall_curves(curves, series="series", title=title), frontier(points, selected=selected)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.62, 0.38], horizontal_spacing=0.09,
                        subplot_titles=("Recall@1 against pool size N", "Privacy-utility frontier"))
    for trace in left.data:
        fig.add_trace(trace, row=1, col=1)
    for trace in right.data:
        fig.add_trace(trace.update(showlegend=False), row=1, col=2)
    fig.update_xaxes(type="log", title_text="pool size N (log scale)", row=1, col=1)
    fig.update_yaxes(range=[0, 1.02], title_text="Recall@1", row=1, col=1)
    fig.update_xaxes(title_text="linear-probe macro AUROC change vs no DP", row=1, col=2)
    fig.update_yaxes(title_text="Recall@1 reduction at largest N", tickformat=".0%", row=1, col=2)
    fig.update_layout(title=title, height=620, legend=left.layout.legend, margin={"l": 50, "r": 20, "t": 80, "b": 40})
    return fig
