"""Plotly figures shared by the dashboard and the HTML report (no Streamlit here)."""

from __future__ import annotations

import hashlib
import html
import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative, sample_colorscale

from backend.specs import POOL_NAMES, pool_name
from backend.views.definitions import STUDY_LABEL, STUDY_LIFT
from backend.views.mitigation import ORIGINAL, RETRAINED, epsilon_label, series_label

POOL_DASH = {"random": "solid", "hard": "dash", "full": "dot"}
POOL_NAME = POOL_NAMES
REFERENCE_COLORS = {ORIGINAL: "#7F7F7F", RETRAINED: "#2CA02C"}  # grey, green: never a colour of the epsilon scale


def _rgba(color: str, alpha: float) -> str:
    if color.startswith("rgb("):
        r, g, b = (int(float(v)) for v in color[4:-1].split(","))
    else:
        color = color.lstrip("#")
        r, g, b = (int(color[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def series_colors(names: list[str]) -> dict[str, str]:
    """One fixed colour per series name, by its place in the full list of names (e.g. every audited model), so a
    series keeps its colour whichever of them a page shows."""
    palette = qualitative.Plotly
    return {name: palette[i % len(palette)] for i, name in enumerate(dict.fromkeys(names))}


def run_colors(run_ids: list[str]) -> dict[str, str]:
    """One colour per run id for runs side by side, the same in every chart: a fixed place in the qualitative
    Plotly palette from a hash of the run id (so a run keeps its colour as others are added or removed), the next
    free place when two of the runs shown would share one (ids taken in sorted order, so the result does not depend
    on the order they were picked in); colours repeat only beyond the palette's 10."""
    palette = qualitative.Plotly
    out: dict[str, str] = {}
    for run_id in sorted(set(run_ids)):
        spot = int(hashlib.sha256(run_id.encode()).hexdigest(), 16) % len(palette)
        for step in range(len(palette)):
            if palette[(spot + step) % len(palette)] not in out.values():
                spot = (spot + step) % len(palette)
                break
        out[run_id] = palette[spot]
    return out


def run_label_colors(labels: dict[str, str], run_ids: list[str]) -> dict[str, str]:
    """run_colors keyed by each run's label (the `series` value the overlay draws), for recall_curves."""
    return {labels.get(r, r): color for r, color in run_colors(run_ids).items()}


def sweep_colors(epsilons: list[float] | pd.Series) -> dict[str, str]:
    """Series label -> colour for a sweep: each finite epsilon a fixed colour of a purple-to-orange scale by its
    rank in the grid (stronger privacy darker), the two references their own (REFERENCE_COLORS). Keyed by the
    label (mitigation.series_label), never by drawing order, so colours do not swap when the slider moves."""
    finite = sorted({float(e) for e in epsilons if math.isfinite(e)})
    spots = [0.08 + 0.7 * i / max(1, len(finite) - 1) for i in range(len(finite))]
    colors = dict(zip((series_label(e) for e in finite), sample_colorscale("Plasma", spots) if finite else [],
                      strict=True))
    return {**colors, **REFERENCE_COLORS}


def pool_size_ticks(n_max: float) -> dict[str, list]:
    """Log-axis ticks at 1-2-5 steps up to n_max, labelled in full ("20", "2,000"; plotly's own minor labels
    read "2", "5" between decades), for an x axis of pool sizes."""
    values, base = [], 1
    while base <= max(float(n_max), 1.0):
        values += [v for v in (base, 2 * base, 5 * base) if v <= n_max]
        base *= 10
    return {"tickvals": values, "ticktext": [f"{v:,}" for v in values]}


def recall_curves(rows: pd.DataFrame, *, k: int = 1, series: str = "model", title: str = "",
                  show_chance: bool = True, y: str = "recall", colors: dict[str, str] | None = None,
                  emphasis: str | None = None) -> go.Figure:
    """Recall@k (y="recall") or lift over chance (y="lift": recall / chance, so that pools of different
    effective size compare fairly) against pool size N (log x) with CI bands, one line per (series value, pool,
    level). rows: tidy relink rows plus a `series` column (model name, epsilon label ...). colors: series value ->
    colour (fixed per series; series_colors / sweep_colors), else by order of appearance. emphasis: one series
    value drawn bold with its CI band, the others thin and faded (so that overlapping curves stay readable)."""
    fig = go.Figure()
    sel = rows[rows["k"] == k].sort_values("n")
    if y == "lift":
        sel = sel.assign(recall=sel["lift"], ci_low=sel["ci_low"] / sel["chance"], ci_high=sel["ci_high"] / sel["chance"])
    palette = qualitative.Plotly
    groups = list(sel.groupby(series, sort=False))
    if emphasis is not None:  # the emphasised series last: drawn on top of the others
        groups.sort(key=lambda item: item[0] == emphasis)
    for i, (name, g_series) in enumerate(groups):
        color = (colors or {}).get(name) or palette[i % len(palette)]
        faded = emphasis is not None and name != emphasis
        for (pool, level), g in g_series.groupby(["pool_kind", "level"]):
            # plotly renders tags in names (text only: < > & escaped) and decodes &lt; &gt; &amp; but not &quot;
            label = html.escape(f"{name} · {pool_name(pool)} · {level}", quote=False)
            x = g["n"].tolist()
            width = (1.5 if faded else 3.0 if emphasis is not None else 2.0) * (1.0 if level == "study" else 0.5)
            fig.add_trace(go.Scatter(x=x + x[::-1], y=g["ci_high"].tolist() + g["ci_low"].tolist()[::-1],
                                     fill="toself", fillcolor=_rgba(color, 0.06 if faded else 0.15), line={"width": 0},
                                     mode="lines", hoverinfo="skip", showlegend=False, legendgroup=label))
            fig.add_trace(go.Scatter(
                x=x, y=g["recall"], mode="lines+markers", name=label, legendgroup=label, opacity=0.7 if faded else 1.0,
                marker={"size": 4 if faded else 6},
                line={"color": color, "dash": POOL_DASH.get(pool, "dashdot"), "width": width},
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
                      xaxis=pool_size_ticks(float(sel["n"].max()) if len(sel) else 1.0),
                      yaxis_range=None if y == "lift" else [0, 1.02],
                      legend={"font": {"size": 11}, "orientation": "h", "yanchor": "top", "y": -0.18, "x": 0},
                      margin={"l": 50, "r": 20, "t": 50, "b": 40})
    return fig


def overview_lift(rows: pd.DataFrame, *, title: str = "", study: bool = True) -> go.Figure:
    """Lift of Recall@1 over chance against pool size N (log-log), one colour per pool with its CI band, the chance
    line at 1x and, with `study`, the study's real-data figures as labelled reference markers (STUDY_LIFT)."""
    sel = rows[(rows["k"] == 1) & (rows["level"] == "study")]
    names = [pool_name(p) for p in sel["pool_kind"]]
    palette = qualitative.D3
    colors = {name: palette[i % len(palette)] for i, name in enumerate(dict.fromkeys(names))}
    fig = recall_curves(sel.assign(series=names), series="series", y="lift", colors=colors,
                        title=title or "Lift of Recall@1 over chance against pool size")
    for trace in fig.data:  # one legend entry per pool: "random pool", not "random pool · random pool · study"
        if trace.name and " · " in trace.name:
            trace.name = trace.name.split(" · ")[0]
    if study:
        fig.add_trace(go.Scatter(x=[n for n, _ in STUDY_LIFT], y=[v for _, v in STUDY_LIFT], mode="markers+text",
                                 name=f"study: {STUDY_LABEL}", text=[f"study: {v:g}x" for _, v in STUDY_LIFT],
                                 textposition="top center", marker={"symbol": "diamond-open", "size": 12,
                                                                    "color": "#444444", "line": {"width": 2}},
                                 hovertemplate="study (real data): N=%{x:,}, lift %{y:g}x<extra></extra>"))
    n_max = max([float(sel["n"].max()) if len(sel) else 1.0, *(float(n) for n, _ in STUDY_LIFT if study)])
    fig.update_layout(yaxis_type="log", yaxis_title="lift of Recall@1 over chance (log scale)",
                      xaxis=pool_size_ticks(n_max))
    return fig


def frontier(points: pd.DataFrame, selected: float | None = None, at: str = "100") -> go.Figure:
    """The cut of Recall@1 at the read point `at` ("100", "1000", "max": views.cuts.read_points) against the
    linear-probe AUROC change, one marker per epsilon with its paired 95% CIs as error bars (where stored), joined
    in epsilon order (inf, the retrained heads without DP, last). The selected epsilon is ringed, and its label is
    an annotation with a background, above the ring (a label on the plain marker would sit under the ring, and
    points close together would print their labels over it)."""
    fig = go.Figure()
    points = points.sort_values("epsilon", kind="stable")  # inf sorts last
    if f"cut_{at}" in points.columns:
        points = points.assign(reduction=points[f"cut_{at}"])
        where = f"N={int(points[f'n_{at}'].dropna().iloc[0]):,}" if points[f"n_{at}"].notna().any() else "largest N"
    else:
        where = "largest N"
    colors = sweep_colors(points["epsilon"])
    labels = [f"ε={epsilon_label(e)}".replace("inf (no DP)", "∞") for e in points["epsilon"]]
    chosen = _same(points["epsilon"], selected) if selected is not None else pd.Series(False, index=points.index)
    positions = _label_positions(points, chosen)
    # a label below a point beside the ring starts one line lower, clear of the ring's lower edge
    text = ["" if hit else (f"<br>{t}" if pos == "bottom center" else t)
            for t, hit, pos in zip(labels, chosen, positions, strict=True)]
    bars = {}
    if f"cut_{at}_low" in points.columns and points[f"cut_{at}_low"].notna().any():
        bars = {"error_y": {"type": "data", "symmetric": False, "array": points[f"cut_{at}_high"] - points["reduction"],
                            "arrayminus": points["reduction"] - points[f"cut_{at}_low"], "color": "#999999"},
                "error_x": {"type": "data", "symmetric": False,
                            "array": points["auroc_change_high"] - points["auroc_change"],
                            "arrayminus": points["auroc_change"] - points["auroc_change_low"], "color": "#999999"}}
    fig.add_trace(go.Scatter(x=points["auroc_change"], y=points["reduction"], mode="lines+markers+text", **bars,
                             text=text, customdata=labels, textposition=positions, name="sweep",
                             line={"color": "#BBBBBB", "width": 1},
                             marker={"size": 9, "color": [colors.get(series_label(e), "#444444")
                                                          for e in points["epsilon"]]},
                             hovertemplate="%{customdata}<br>AUROC change=%{x:+.3f}<br>Recall@1 cut at " + where +
                                           "=%{y:.1%}<extra></extra>"))
    if selected is not None:
        hit = points[chosen]
        fig.add_trace(go.Scatter(x=hit["auroc_change"], y=hit["reduction"], mode="markers", name="selected ε",
                                 hoverinfo="skip", marker={"size": 18, "color": "red", "symbol": "circle-open",
                                                           "line": {"width": 3}}))
        for x, y, text in zip(hit["auroc_change"], hit["reduction"],
                              [t for t, h in zip(labels, chosen, strict=True) if h], strict=True):
            fig.add_annotation(x=x, y=y, text=f"<b>{text}</b>", showarrow=True, arrowcolor="red", arrowwidth=1.5,
                               ax=0, ay=-34, standoff=10, font={"color": "red"}, bgcolor="rgba(255,255,255,0.92)",
                               bordercolor="red", borderpad=2)
    y = pd.concat([points[c] for c in ("reduction", f"cut_{at}_low", f"cut_{at}_high") if c in points.columns]).dropna()
    if len(y):  # headroom above the highest point for its label (and the selected label's box)
        span = max(float(y.max() - y.min()), 0.05)
        fig.update_yaxes(range=[float(y.min()) - 0.1 * span, float(y.max()) + 0.3 * span])
    fig.update_layout(title="Privacy-utility frontier", showlegend=False,
                      xaxis_title="linear-probe macro AUROC change vs retrained heads, no DP",
                      yaxis_title=f"Recall@1 cut at {where} (random pool) vs retrained heads", yaxis_tickformat=".0%",
                      height=380,
                      margin={"l": 50, "r": 20, "t": 50, "b": 40})
    return fig


def _label_positions(points: pd.DataFrame, chosen: pd.Series, near: tuple[float, float] = (0.08, 0.2)) -> list[str]:
    """Each point's label above it, except next to the selected point, whose label box sits above its ring: a
    point within `near` (fractions of the x and y spans) of it has its label below (ε=0.01 and 0.05 often
    nearly coincide)."""
    x, y = points["auroc_change"].to_numpy(float), points["reduction"].to_numpy(float)
    hit = chosen.to_numpy(bool)
    if not hit.any():
        return ["top center"] * len(points)
    finite = np.isfinite(x) & np.isfinite(y)
    span_x = max(float(np.ptp(x[finite])) if finite.any() else 0.0, 1e-9)
    span_y = max(float(np.ptp(y[finite])) if finite.any() else 0.0, 1e-9)
    sx, sy = x[hit][0], y[hit][0]
    close = (np.abs(x - sx) <= near[0] * span_x) & (np.abs(y - sy) <= near[1] * span_y) & ~hit
    return ["bottom center" if c else "top center" for c in close]


def _same(series: pd.Series, value: float) -> pd.Series:
    if math.isinf(value):
        return series.apply(lambda v: math.isinf(v))
    return (series - value).abs() < 1e-12


def auroc_bars(probe: pd.DataFrame, *, series: str, method: str = "linear", title: str = "",
               colors: dict[str, str] | None = None) -> go.Figure:
    """Per-label AUROC bars, one group per series value (e.g. before/after), with CI whiskers; colors: series value
    -> colour (e.g. sweep_colors, the Mitigation page's)."""
    fig = go.Figure()
    sel = probe[probe["method"] == method]
    for name, g in sel.groupby(series, sort=False):
        fig.add_trace(go.Bar(x=g["label"], y=g["auroc"], name=str(name), marker_color=(colors or {}).get(str(name)),
                             error_y={"type": "data", "symmetric": False, "array": g["ci_high"] - g["auroc"],
                                      "arrayminus": g["auroc"] - g["ci_low"]}))
    floor = min(0.4, float(sel["ci_low"].min()) - 0.05) if len(sel) and sel["ci_low"].notna().any() else 0.4
    fig.update_layout(barmode="group", title=title or f"{method} AUROC per label", yaxis_range=[max(0.0, floor), 1.0],
                      yaxis_title="AUROC", height=420, margin={"l": 50, "r": 20, "t": 50, "b": 120})
    return fig


def mitigation_view(curves: pd.DataFrame, points: pd.DataFrame, selected: float, *, title: str,
                    at: str = "100") -> go.Figure:
    """The Mitigation page's one figure: Recall@1 curves (left, log N) beside the privacy-utility frontier
    (right) with the selected epsilon ringed. One figure, so that a slider move redraws one plot, not two
    (each plotly redraw costs the browser about 130 ms). Colours are fixed per series over the whole sweep
    (sweep_colors); the selected epsilon is drawn bold, the two references thin."""
    from plotly.subplots import make_subplots

    left = recall_curves(curves, series="series", title=title, colors=sweep_colors(points["epsilon"]),
                         emphasis=series_label(selected))
    right = frontier(points, selected=selected, at=at)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.62, 0.38], horizontal_spacing=0.09,
                        subplot_titles=("Recall@1 against pool size N", "Privacy-utility frontier"))
    for trace in left.data:
        fig.add_trace(trace, row=1, col=1)
    for trace in right.data:
        fig.add_trace(trace.update(showlegend=False), row=1, col=2)
    for note in right.layout.annotations:  # the selected epsilon's label, on the frontier's axes
        fig.add_annotation(note.update(xref="x2", yref="y2"))
    fig.update_xaxes(type="log", title_text="pool size N (log scale)", row=1, col=1,
                     **pool_size_ticks(float(curves["n"].max()) if len(curves) else 1.0))
    fig.update_yaxes(range=[0, 1.02], title_text="Recall@1", row=1, col=1)
    fig.update_xaxes(title_text=right.layout.xaxis.title.text, row=1, col=2)
    fig.update_yaxes(title_text=right.layout.yaxis.title.text, tickformat=".0%", range=right.layout.yaxis.range,
                     row=1, col=2)
    fig.update_layout(title=title, height=620, legend=left.layout.legend, margin={"l": 50, "r": 20, "t": 80, "b": 40})
    return fig
