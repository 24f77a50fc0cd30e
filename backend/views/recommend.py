"""The recommendation: for a target a reviewer sets (at least this cut of first-guess re-links at a pool size, at most
this linear-probe macro AUROC cost, certified or not), the epsilon of the sweep that meets it at the smallest cost,
or "no point of this sweep meets it" and the closest point; and the risk in words a clinician reads.

The rule (docs/METRICS.md, "Recommendation"): a point meets the target when its cut is at least the minimum and its
cost at most the maximum, both read conservatively by default, from the paired 95% CI's unfavourable end (the cut's
lower bound, the cost's upper bound: what a board can sign), or from the point estimates when the reviewer asks.
A point without CIs (stored before they were kept) cannot be confirmed conservatively. Among the points that meet
it, the smallest cost wins (then the larger cut, then the larger epsilon). When none meets it, the closest is the
point with the smallest shortfall relative to the target (the cut it lacks as a share of the minimum cut plus the
cost it exceeds by as a share of the maximum cost; a required certification it lacks counts as one more).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Target:
    """min_cut: the least relative cut of Recall@1 against the retrained heads (0.5 = half as many first-guess
    re-links), read at pool size tag `at` ("100", "1000" or "max": views.cuts.read_points); max_cost: the most
    linear-probe macro AUROC it may lose; certified: only certified points qualify; conservative: judge by the
    CI bounds (else by the point estimates)."""

    min_cut: float = 0.5
    at: str = "100"
    max_cost: float = 0.01
    certified: bool = True
    conservative: bool = True

    def describe(self, n: int | None) -> str:
        where = f"N={n:,}" if n else f"N={self.at}"
        return (f"at least {self.min_cut:.0%} fewer first-guess re-links at {where} (random pool) than the retrained "
                f"heads, linear-probe macro AUROC cost at most {self.max_cost:.3f}"
                f"{', certified' if self.certified else ''}; judged by "
                f"{'the conservative end of each 95% CI' if self.conservative else 'the point estimates'}")


def one_in(p: float) -> str:
    """A probability as "1 in N" with two significant digits ("1 in 10", "1 in 230"); "none" at 0."""
    if not np.isfinite(p) or p <= 0:
        return "none"
    if p >= 0.5:
        return f"{p:.0%}"
    n = 1.0 / p
    digits = max(0, int(math.floor(math.log10(n))) - 1)
    return f"1 in {int(math.floor(n / 10 ** digits + 0.5)) * 10 ** digits:,}"  # half up


def risk_words(r1_100: float, n_100: int | None, r1_max: float, n_max: int | None) -> str:
    """"about 1 in 10 at 100 candidates; 1 in 250 among all 2,829 reports": how often an attacker's first guess
    is the right report."""
    parts = []
    if n_100 and np.isfinite(r1_100):
        parts.append(f"about {one_in(r1_100)} at {n_100:,} candidates")
    if n_max and np.isfinite(r1_max) and n_max != n_100:
        parts.append(f"{one_in(r1_max)} among all {n_max:,} reports")
    return "; ".join(parts)


def point_risk(p: pd.Series | None) -> str:
    """risk_words of one sweep point (its Recall@1 at N=100, or the largest N below it, and at the largest N)."""
    if p is None:
        return ""

    def num(key: str) -> float:
        value = p.get(key)
        return float(value) if value is not None and pd.notna(value) else math.nan

    n_100, n_max = num("n_100"), num("n_max")
    return risk_words(num("r1_100"), int(n_100) if np.isfinite(n_100) else None, num("r1_max"),
                      int(n_max) if np.isfinite(n_max) else None)


def _bounds(p: pd.Series, target: Target) -> tuple[float, float, bool]:
    """(cut, cost, judged): the cut and the AUROC cost the rule reads, and whether they could be read (False: the
    conservative rule without a CI)."""
    cut = float(p.get(f"cut_{target.at}", math.nan))
    cost = -float(p.get("auroc_change", math.nan))
    if not target.conservative:
        return cut, cost, np.isfinite(cut) and np.isfinite(cost)
    low, cost_high = float(p.get(f"cut_{target.at}_low", math.nan)), -float(p.get("auroc_change_low", math.nan))
    return low, cost_high, np.isfinite(low) and np.isfinite(cost_high)


def recommend(points: pd.DataFrame, target: Target) -> dict[str, Any]:
    """The recommendation over a sweep's points (mitigation.SweepView.points: epsilon, guarantee, privacy_unit,
    auroc_change and cuts.point_cuts's columns). Returns {"met": bool, "epsilon", "point" (the row, or None),
    "closest" (the nearest row when none meets it), "why" (what the closest misses), "rule", "sentence", "risk"
    (risk_words of the recommended or closest point), "risk_before" (of the retrained heads)}."""
    dp = points[np.isfinite(points["epsilon"])] if len(points) else points
    ref = points[~np.isfinite(points["epsilon"])] if len(points) else points
    n = int(dp[f"n_{target.at}"].iloc[0]) if len(dp) and f"n_{target.at}" in dp.columns else None
    out: dict[str, Any] = {"met": False, "epsilon": None, "point": None, "closest": None, "why": "", "n": n,
                           "rule": target.describe(n), "risk": "",
                           "risk_before": point_risk(ref.iloc[0]) if len(ref) else ""}
    if not len(dp) or f"cut_{target.at}" not in dp.columns:
        out["sentence"] = "No DP point of this sweep is read at this pool size: no recommendation."
        return out
    rows = []
    for _, p in dp.iterrows():
        cut, cost, judged = _bounds(p, target)
        certified = str(p.get("guarantee") or "") == "certified"
        misses = []
        if target.certified and not certified:
            misses.append(f"its guarantee is {p.get('guarantee') or 'unknown'}, not certified")
        if not judged:
            misses.append("its CI is missing (CI needs a recompute)")
        else:
            if cut < target.min_cut:
                misses.append(f"cut {cut:.0%} < {target.min_cut:.0%}")
            if cost > target.max_cost:
                misses.append(f"AUROC cost {cost:.3f} > {target.max_cost:.3f}")
        short = (max(0.0, target.min_cut - cut) / max(target.min_cut, 0.01)  # shortfalls relative to the target
                 + max(0.0, cost - target.max_cost) / max(target.max_cost, 0.001) if judged else math.inf)
        rows.append((not misses, cost if judged else math.inf, -cut if judged else math.inf, -float(p["epsilon"]),
                     short + (1.0 if target.certified and not certified else 0.0), p, misses))
    meeting = sorted((r for r in rows if r[0]), key=lambda r: (r[1], r[2], r[3]))
    if meeting:
        best = meeting[0][5]
        out.update(met=True, epsilon=float(best["epsilon"]), point=best, risk=point_risk(best))
        cut, cost, _ = _bounds(best, target)
        out["sentence"] = (f"Recommended: ε={float(best['epsilon']):g} ({best.get('guarantee') or '?'}, per "
                           f"{best.get('privacy_unit') or '?'}), the smallest-cost point that meets the target: cut "
                           f"{cut:.0%} or more and AUROC cost {cost:.3f} or less "
                           f"({'conservative ends of the 95% CIs' if target.conservative else 'point estimates'}).")
        return out
    closest = min(rows, key=lambda r: (r[4], r[1]))
    out.update(closest=closest[5], why="; ".join(closest[6]), risk=point_risk(closest[5]))
    out["sentence"] = (f"No point of this sweep meets it. Closest: ε={float(closest[5]['epsilon']):g} "
                       f"({closest[5].get('guarantee') or '?'}): {out['why']}.")
    return out
