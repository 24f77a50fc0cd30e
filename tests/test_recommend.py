"""The recommendation rule on hand-built frontiers: the smallest-cost point that meets the target by the conservative
CI bounds (or the point estimates when asked), certified when required, else none and the closest; risk in words."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from backend.views.recommend import Target, one_in, recommend, risk_words


def frontier(rows: list[tuple]) -> pd.DataFrame:
    """(epsilon, guarantee, cut, cut_low, auroc_change, auroc_change_low) per point, plus the retrained heads."""
    out = [{"epsilon": e, "guarantee": g, "privacy_unit": "patient", "n_100": 100, "n_max": 2829, "cut_100": c,
            "cut_100_low": cl, "cut_100_high": c + 0.1, "auroc_change": a, "auroc_change_low": al,
            "r1_100": 0.1 * (1 - c), "r1_max": 0.004 * (1 - c)} for e, g, c, cl, a, al in rows]
    out.append({"epsilon": math.inf, "guarantee": "none", "privacy_unit": "", "n_100": 100, "n_max": 2829,
                "cut_100": 0.0, "cut_100_low": 0.0, "auroc_change": 0.0, "auroc_change_low": 0.0,
                "r1_100": 0.098, "r1_max": 0.0043})
    return pd.DataFrame(out)


POINTS = frontier([
    (0.34, "certified", 0.80, 0.70, -0.030, -0.040),  # big cut, too costly
    (1.0, "certified", 0.60, 0.52, -0.004, -0.008),  # meets conservatively
    (4.0, "certified", 0.55, 0.45, -0.001, -0.003),  # meets by point estimate only (cut_low 45%)
    (8.0, "nominal", 0.58, 0.56, -0.0005, -0.001),  # cheapest, but nominal
])


def test_the_smallest_cost_point_meeting_the_conservative_target_is_recommended() -> None:
    got = recommend(POINTS, Target(min_cut=0.5, max_cost=0.01))
    assert got["met"] and got["epsilon"] == 1.0
    assert "conservative" in got["rule"] and "N=100" in got["rule"]
    assert got["risk"] == "about 1 in 25 at 100 candidates; 1 in 630 among all 2,829 reports"  # 0.04, 0.0016
    assert got["risk_before"] == "about 1 in 10 at 100 candidates; 1 in 230 among all 2,829 reports"


def test_point_estimates_and_nominal_points_when_the_reviewer_allows_them() -> None:
    assert recommend(POINTS, Target(min_cut=0.5, max_cost=0.01, conservative=False))["epsilon"] == 4.0
    assert recommend(POINTS, Target(min_cut=0.5, max_cost=0.01, certified=False))["epsilon"] == 8.0


def test_no_point_meets_it_names_the_closest_and_what_it_misses() -> None:
    got = recommend(POINTS, Target(min_cut=0.75, max_cost=0.005))
    assert not got["met"] and got["epsilon"] is None
    assert got["closest"]["epsilon"] == 4.0  # 30 of 75 points of cut short (0.4); 1.0: 0.31 + 0.6, 0.34: 0.07 + 7
    assert "cut 45% < 75%" in got["why"] and got["sentence"].startswith("No point of this sweep meets it")


def test_a_point_without_its_ci_cannot_be_confirmed_conservatively() -> None:
    pts = POINTS.assign(cut_100_low=math.nan, auroc_change_low=math.nan)
    got = recommend(pts, Target())
    assert not got["met"] and "CI needs a recompute" in got["why"]
    assert recommend(pts, Target(conservative=False))["epsilon"] == 4.0


@pytest.mark.parametrize(("p", "words"), [(0.098, "1 in 10"), (0.0043, "1 in 230"), (0.5, "50%"), (0.0, "none"),
                                          (0.00012, "1 in 8,300")])
def test_risk_in_words(p: float, words: str) -> None:
    assert one_in(p) == words
    assert risk_words(0.098, 100, 0.0043, 2829) == "about 1 in 10 at 100 candidates; 1 in 230 among all 2,829 reports"
