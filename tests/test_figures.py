"""The plotly figures: what each trace shows is the data it was given, on the axes it belongs to."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from backend.views import figures


def _curves() -> pd.DataFrame:
    rows = []
    for series, scale in (("ε=1", 0.5), ("retrained, no DP", 1.0)):
        for pool in ("random", "hard"):
            for n in (10, 100, 1000):
                r = scale * (2.0 if pool == "hard" else 1.0) / n
                rows.append({"series": series, "pool_kind": pool, "level": "study", "k": 1, "n": n, "recall": r,
                             "ci_low": 0.8 * r, "ci_high": 1.2 * r, "lift": r * n, "chance": 1 / n})
    return pd.DataFrame(rows)


def _points() -> pd.DataFrame:
    return pd.DataFrame({"epsilon": [0.34, 1.0, math.inf], "auroc_change": [-0.02, -0.01, 0.0],
                         "reduction": [0.6, 0.3, 0.0]})


def test_mitigation_view_puts_curves_left_and_rings_the_selected_epsilon_right() -> None:
    curves, pts = _curves(), _points()
    fig = figures.mitigation_view(curves, pts, 1.0, title="Recall@1 at ε=1")
    assert fig.layout.title.text == "Recall@1 at ε=1"
    left = [t for t in fig.data if t.xaxis == "x"]
    right = [t for t in fig.data if t.xaxis == "x2"]
    lines = [t for t in left if t.mode == "lines+markers"]
    assert len(lines) == 4  # 2 series x 2 pools, each with its CI band
    assert len([t for t in left if t.fill == "toself"]) == 4
    for t in lines:  # every plotted point is a row of the input, unchanged
        series, pool = t.name.split(" · ")[0], "hard" if "pathology" in t.name else "random"
        want = curves[(curves["series"] == series) & (curves["pool_kind"] == pool)].sort_values("n")
        np.testing.assert_allclose(t.x, want["n"])
        np.testing.assert_allclose(t.y, want["recall"])
    chance = next(t for t in left if (t.name or "").startswith("chance"))
    np.testing.assert_allclose(chance.y, [0.1, 0.01, 0.001])
    ring = next(t for t in right if t.name == "selected ε")
    assert list(ring.x) == [-0.01] and list(ring.y) == [0.3]
    assert fig.layout.xaxis.type == "log" and fig.layout.xaxis2.type != "log"
    inf_ring = next(t for t in figures.mitigation_view(curves, pts, math.inf, title="x").data if t.name == "selected ε")
    assert list(inf_ring.y) == [0.0]


def test_lift_mode_divides_by_chance_and_draws_chance_at_one() -> None:
    import pandas as pd

    rows = pd.DataFrame({"model": "m", "pool_kind": ["random", "random", "hard"], "level": "study", "k": 1,
                         "n": [10, 100, 100], "recall": [0.5, 0.1, 0.2], "ci_low": [0.4, 0.05, 0.1],
                         "ci_high": [0.6, 0.15, 0.3], "chance": [0.1, 0.01, 0.04], "lift": [5.0, 10.0, 5.0],
                         "effective_n": [10, 100, 25]})
    fig = figures.recall_curves(rows, k=1, y="lift")
    lines = {t.name: t for t in fig.data if t.name}
    assert list(lines["m · random pool · study"].y) == [5.0, 10.0]
    assert list(lines["m · pathology-matched · study"].y) == [5.0]
    band = next(t for t in fig.data if t.fill == "toself" and t.legendgroup == "m · pathology-matched · study")
    assert sorted(band.y) == [2.5, 7.5]  # 0.1 / 0.04 and 0.3 / 0.04
    chance = next(t for t in fig.data if t.name and t.name.startswith("chance"))
    assert set(chance.y) == {1.0}


def test_auroc_axis_never_hides_a_bar_below_the_usual_floor() -> None:
    import pandas as pd

    probe = pd.DataFrame({"method": "zero-shot", "label": ["a", "b"], "auroc": [0.37, 0.8], "ci_low": [0.30, 0.75],
                          "ci_high": [0.45, 0.85], "series": "x"})
    low, high = figures.auroc_bars(probe, series="series", method="zero-shot").layout.yaxis.range
    assert low <= 0.30 and high == 1.0


def test_sweep_series_keep_one_colour_whichever_epsilon_the_slider_selects() -> None:
    """Colours are keyed by the series label (one per epsilon of the sweep, one per reference), not by the order in
    which a figure happens to draw its series: moving the slider must not swap them."""
    from backend.views.mitigation import ORIGINAL, RETRAINED

    pts = _points()

    def colours(selected: float, label: str) -> dict[str, str]:
        rows = _curves().replace({"series": {"ε=1": label, "retrained, no DP": RETRAINED}})
        if math.isinf(selected):
            rows = rows[rows["series"] == RETRAINED]
        rows = pd.concat([rows, rows[rows["series"] == RETRAINED].assign(series=ORIGINAL)], ignore_index=True)
        fig = figures.mitigation_view(rows, pts, selected, title="t")
        return {t.name.split(" · ")[0]: t.line.color for t in fig.data
                if t.mode == "lines+markers" and t.xaxis == "x" and "random" in t.name}

    at_034, at_1, at_inf = colours(0.34, "ε=0.34"), colours(1.0, "ε=1"), colours(math.inf, RETRAINED)
    assert at_034[RETRAINED] == at_1[RETRAINED] == at_inf[RETRAINED]
    assert at_034[ORIGINAL] == at_1[ORIGINAL] == at_inf[ORIGINAL]
    assert at_034["ε=0.34"] != at_1["ε=1"]  # each epsilon its own colour
    assert len({at_1["ε=1"], at_1[RETRAINED], at_1[ORIGINAL]}) == 3
    assert figures.sweep_colors(pts["epsilon"])["ε=1"] == at_1["ε=1"]


def test_the_selected_epsilon_is_drawn_bold_and_the_references_thin() -> None:
    from backend.views.mitigation import RETRAINED

    rows = _curves().replace({"series": {"retrained, no DP": RETRAINED}})
    fig = figures.mitigation_view(rows, _points(), 1.0, title="t")
    width = {t.name: t.line.width for t in fig.data if t.mode == "lines+markers" and t.xaxis == "x"}
    assert width["ε=1 · random pool · study"] > width[f"{RETRAINED} · random pool · study"]
    last = [t for t in fig.data if t.mode == "lines+markers" and t.xaxis == "x"][-1]
    assert last.name.startswith("ε=1 ")  # the selected series on top


def test_frontier_joins_points_in_epsilon_order_and_its_ring_leaves_the_label_readable() -> None:
    pts = pd.DataFrame({"epsilon": [math.inf, 1.0, 0.34, 8.0], "auroc_change": [0.0, -0.01, -0.02, -0.005],
                        "reduction": [0.0, 0.3, 0.6, 0.1]})
    fig = figures.frontier(pts, selected=1.0)
    line = next(t for t in fig.data if t.name == "sweep")
    assert list(line.x) == [-0.02, -0.01, -0.005, 0.0] and list(line.y) == [0.6, 0.3, 0.1, 0.0]  # 0.34, 1, 8, inf
    assert list(line.text) == ["ε=0.34", "", "ε=8", "ε=∞"]  # the selected label is not under the ring
    ring = next(t for t in fig.data if t.name == "selected ε")
    assert list(ring.x) == [-0.01] and list(ring.y) == [0.3]
    (label,) = fig.layout.annotations  # the selected label: above the ring, on a background that no label covers
    assert "ε=1" in label.text and (label.x, label.y) == (-0.01, 0.3) and label.ay < -18 and label.bgcolor
    low, high = fig.layout.yaxis.range
    assert high > 0.6 + 0.1 and low < 0.0  # headroom for the top point's label
    view = figures.mitigation_view(_curves(), pts, 1.0, title="t")  # the same label on the combined figure's frontier
    note = next(a for a in view.layout.annotations if "ε=1" in a.text)
    assert (note.xref, note.yref, note.x, note.y) == ("x2", "y2", -0.01, 0.3)
    assert list(line.textposition) == ["top center"] * 4  # no point near the selected one


def test_a_label_next_to_the_selected_point_goes_below_its_marker() -> None:
    """Two epsilons whose points nearly coincide (as 0.01 and 0.05 often do): the neighbour's label is printed
    below its marker, clear of the selected label's box above the ring; far points keep theirs above."""
    pts = pd.DataFrame({"epsilon": [math.inf, 8.0, 0.05, 0.01], "auroc_change": [0.0, -0.006, -0.0043, -0.0042],
                        "reduction": [0.0, 0.0, 0.45, 0.44]})
    for sel, near in ((0.01, "ε=0.05"), (0.05, "ε=0.01")):
        line = next(t for t in figures.frontier(pts, selected=sel).data if t.name == "sweep")
        pos = dict(zip(line.customdata, line.textposition, strict=True))
        assert pos[near] == "bottom center" and pos["ε=8"] == pos["ε=∞"] == "top center"
        assert f"<br>{near}" in line.text and "ε=8" in line.text  # one line lower, clear of the ring
    line = next(t for t in figures.frontier(pts, selected=None).data if t.name == "sweep")
    assert list(line.textposition) == ["top center"] * 4


def test_relinkage_models_keep_their_colour_whichever_are_overlaid() -> None:
    rows = pd.DataFrame([{"model": m, "pool_kind": "random", "level": "study", "k": 1, "n": n, "recall": 0.5 / n,
                          "ci_low": 0.4 / n, "ci_high": 0.6 / n, "chance": 1 / n, "lift": 0.5, "effective_n": n}
                         for m in ("a", "b", "c") for n in (10, 100)])
    colors = figures.series_colors(["a", "b", "c"])  # every audited model, in the page's order

    def line_colors(models: list[str]) -> dict[str, str]:
        fig = figures.recall_curves(rows[rows["model"].isin(models)], colors=colors)
        return {t.name.split(" · ")[0]: t.line.color for t in fig.data if t.mode == "lines+markers"}

    both, only_c = line_colors(["a", "c"]), line_colors(["c"])
    assert both["c"] == only_c["c"] == colors["c"] and both["a"] != both["c"]


def test_runs_side_by_side_one_trace_per_run_and_pool_in_one_colour(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Audit runs and a DP run overlaid: the lift and the recall figure each have one line per (run, pool), and a
    run's colour is the same in both and whichever other runs are shown."""
    from backend.runs import store
    from backend.views import compare
    from tests.helpers.seed import seed_store

    ids = seed_store(tmp_path)
    dp = store.load_sweep_points(ids["sweep"]).sort_values("epsilon")["run_id"].iloc[0]
    chosen = [ids["audit:demo"], ids["audit:openai-vit-b-16"], dp]
    rows = compare.run_rows(chosen)
    rows = rows[rows["level"] == "study"]
    labels = compare.run_labels(chosen)
    colors = figures.run_label_colors(labels, chosen)
    lines = {}
    for y in ("lift", "recall"):
        fig = figures.recall_curves(rows, k=1, y=y, series="run", colors=colors)
        drawn = [t for t in fig.data if t.mode == "lines+markers"]
        keys = [tuple(t.name.split(" · ")[-3:-1]) + (t.name,) for t in drawn]
        assert len(keys) == len(set(keys))
        expected = {(r, p) for r, p in rows.groupby(["run_id", "pool_kind"]).groups}
        assert len(drawn) == len(expected)
        lines[y] = {t.name: t.line.color for t in drawn}
    assert lines["lift"] == lines["recall"]
    for run_id in chosen:
        mine = {c for name, c in lines["lift"].items() if run_id in name}
        assert mine == {figures.run_colors(chosen)[run_id]}
    assert len(set(figures.run_colors(chosen).values())) == 3
    assert figures.run_colors(chosen[1:])[dp] == figures.run_colors([dp, chosen[1]])[dp]
    assert "nominal, per pair" in labels[dp] and "demo · synthetic (n_patients=2000)" in labels[dp]
    assert labels[ids["audit:demo"]] == f"demo · synthetic (n_patients=2000) · {ids['audit:demo']}"
    table = compare.model_comparison(chosen).set_index("audit_run")
    dp_rows = store.load_metrics(dp).query("variant == 'dp' and k == 1 and level == 'study' and pool_kind == 'random'")
    top = dp_rows.sort_values("n").iloc[-1]
    assert table.loc[dp, "lift_max"] == pytest.approx(top["recall"] / top["chance"])
    probe = store.load_probe(dp).query("variant == 'dp' and label == 'macro' and method == 'linear'")
    assert table.loc[dp, "linear"] == pytest.approx(float(probe["auroc"].iloc[0]))


def test_series_names_are_text_not_plotly_markup() -> None:
    """Plotly renders <a href>, <b>, <br> in trace names; a model name or source option is shown as its text."""
    rows = pd.DataFrame([{"model": "<a href='http://example.invalid'>x</a>", "pool_kind": "random", "level": "study",
                          "k": 1, "n": n, "recall": 0.5 / n, "ci_low": 0.4 / n, "ci_high": 0.6 / n, "chance": 1 / n,
                          "lift": 0.5, "effective_n": n} for n in (10, 100)])
    names = [t.name for t in figures.recall_curves(rows).data if t.mode == "lines+markers"]
    assert names == ["&lt;a href='http://example.invalid'&gt;x&lt;/a&gt; · random pool · study"]
    # quotes stay quotes: plotly decodes &lt; &gt; &amp; only, so &quot; or &#x27; would be shown as written
    rows["model"] = 'local:/models/"best" & co'
    names = [t.name for t in figures.recall_curves(rows).data if t.mode == "lines+markers"]
    assert names == ['local:/models/"best" &amp; co · random pool · study']


def test_pool_size_axes_label_the_1_2_5_steps_in_full() -> None:
    """Pool-size axes tick at 1, 2, 5, 10, 20, ... up to the largest N, labelled as numbers (not plotly's bare
    '2', '5' between decades)."""
    assert figures.pool_size_ticks(2_829) == {
        "tickvals": [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000],
        "ticktext": ["1", "2", "5", "10", "20", "50", "100", "200", "500", "1,000", "2,000"]}
    curves = _curves()
    for fig, axis in ((figures.recall_curves(curves, series="series"), "xaxis"),
                      (figures.mitigation_view(curves, _points(), 1.0, title="t"), "xaxis")):
        ax = fig.layout[axis]
        assert ax.type == "log" and list(ax.tickvals) == [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
        assert list(ax.ticktext)[-1] == "1,000"
