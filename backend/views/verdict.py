"""The verdict (pure pandas over the store): the headline numbers before and after mitigation, and the Overview's
and the report's lines, each a number with its interval and a plain sentence (re-linkage lift per pool, the
strongest lift measured, what side information does, the DP heads against the retrained heads, the members gap and
the utility kept)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from backend.runs import store
from backend.specs import MATCH_PREFIX, pool_name
from backend.views.catalog import latest, paired_sweep
from backend.views.compare import lift_at, point
from backend.views.mitigation import members_table, reference_point, series_label, sweep_view


def headline(source: str | None, model: str | None) -> dict[str, Any]:
    """Lift (R@1, random pool, study level) at N=100 and the largest N, before and after mitigation: the newest
    audit, and the newest sweep computed from the same data (catalog.paired_sweep; "sweep_note" says when the
    newest sweep of this source and model was computed from other data and so is not paired with it)."""
    audit_id = latest("audit", source, model)
    sweep_id, note = paired_sweep(audit_id, model) if audit_id else (latest("sweep", source, model), None)
    out: dict[str, Any] = {"audit_run": audit_id, "sweep_run": sweep_id, "sweep_note": note}
    if audit_id:
        rows = store.load_metrics(audit_id)
        out.update(before_100=lift_at(rows, 100), before_max=lift_at(rows, None),
                   n_max=int(rows["n"].max()) if len(rows) else None)
    if sweep_id:
        view = sweep_view(sweep_id)
        private = view.points[np.isfinite(view.points["epsilon"])]
        if len(private):
            strongest = private.iloc[0]
            rows = view.metrics[(view.metrics["run_id"] == strongest["run_id"]) & ~view.metrics["variant"].str.startswith("transfer:")]
            out.update(after_eps=float(strongest["epsilon"]), after_100=lift_at(rows, 100),
                       after_max=lift_at(rows, None), guarantee=str(strongest.get("guarantee", "")))
    return out


def verdict(audit_id: str | None, sweep_id: str | None = None, epsilon: float | None = None) -> dict[str, Any]:
    """The one-screen verdict: re-linkage lift at N=100 and the largest N (random and pathology-matched pools,
    with 95% CIs); the strongest measured re-linkage (the pool and N of the largest lift, key "strongest"); what side
    information does (each matched pool against the random pool at N=100 and the largest N, keys
    "matched:<attrs>_100" / "_max"); and, for one epsilon of the sweep (default: the strongest), Recall@1 and the
    macro AUROCs of the DP heads against the heads retrained without DP, and the members gap at that epsilon (keys
    "members_100" / "members_max"). Each line has a plain sentence; each delta its interval (`delta_low`,
    `delta_high`: the members gap's bootstrap CI; for the others a conservative range from the two 95% CIs)."""
    out: dict[str, Any] = {"lines": []}
    if audit_id:
        rows = store.load_metrics(audit_id)
        rows = rows[rows["variant"] == "model"]
        out["lines"] += _strongest_line(rows) + _matched_lines(rows)
        for pool, n in (("random", 100), ("random", None), ("hard", 100), ("hard", None)):
            p = point(rows, n, pool)
            if p is None:
                continue
            where = (f"{p['n']:,} candidate reports" if pool == "random" else
                     f"{p['n']:,} candidate reports that share its 14 findings (about {p['effective_n']:,.0f} "
                     "such reports exist on average)")
            out["lines"].append({
                "key": f"lift_{pool}_{'100' if n else 'max'}", "pool": pool, **p,
                "label": f"Lift at N={p['n']:,}, {pool_name(pool)}",
                "sentence": (f"An attacker holding one image and {where} picks the right report first "
                             f"{p['lift']:.1f} times more often than by guessing (Recall@1 {p['recall']:.3f}, "
                             f"95% CI {p['ci_low']:.3f}-{p['ci_high']:.3f}; chance {p['chance']:.4f}).")})
    if sweep_id:
        view = sweep_view(sweep_id)
        pts = view.points
        private = pts[np.isfinite(pts["epsilon"])]
        ref = reference_point(pts)
        if len(private) and ref is not None:
            chosen = private.iloc[0] if epsilon is None else private.iloc[(private["epsilon"] - epsilon).abs().argmin()]
            own = view.metrics[view.metrics["variant"] == "dp"]
            dp_rows, ref_rows = own[own["run_id"] == chosen["run_id"]], own[own["run_id"] == ref["run_id"]]
            out["epsilon"] = float(chosen["epsilon"])
            out["guarantee"], out["privacy_unit"] = str(chosen.get("guarantee") or ""), str(chosen.get("privacy_unit") or "")
            out["objective"] = str(chosen.get("objective") or "")
            for n in (100, None):
                a, b = point(ref_rows, n), point(dp_rows, n)
                if a is None or b is None:
                    continue
                cut = 1 - b["recall"] / a["recall"] if a["recall"] else math.nan
                verb = (f"{cut:.0%} fewer first-guess re-links" if cut >= 0 else
                        f"{-cut:.0%} more first-guess re-links: the noise moved the heads, it did not remove what "
                        "they share with the frozen encoders")
                low, high = _range(a["ci_low"], a["ci_high"], b["ci_low"], b["ci_high"])
                out["lines"].append({
                    "key": f"dp_{'100' if n else 'max'}", "pool": "random", "n": b["n"], "before": a, "after": b,
                    "change": -cut, "delta": b["recall"] - a["recall"], "delta_low": low, "delta_high": high,
                    "label": f"Recall@1 at N={b['n']:,} with DP heads (ε={out['epsilon']:g})",
                    "sentence": (f"With DP heads at ε={out['epsilon']:g} ({out['guarantee']}, per {out['privacy_unit']}), "
                                 f"Recall@1 at N={b['n']:,} is {b['recall']:.3f} (95% CI {b['ci_low']:.3f}-"
                                 f"{b['ci_high']:.3f}) against {a['recall']:.3f} ({a['ci_low']:.3f}-{a['ci_high']:.3f}) "
                                 f"for heads retrained without DP: {verb} (difference {b['recall'] - a['recall']:+.4f}, "
                                 f"conservative range {low:+.4f} to {high:+.4f}).")})
            out["lines"] += _members_lines(sweep_id, float(chosen["epsilon"]))
            for key, name in (("auroc_linear", "linear-probe"), ("auroc_zero_shot", "zero-shot")):
                before, after = float(ref[key]), float(chosen[key])
                out["lines"].append({
                    "key": key, "before": before, "after": after, "change": after - before,
                    "label": f"{name} macro AUROC with DP heads (ε={out['epsilon']:g})",
                    "sentence": (f"The {name} macro AUROC over the 14 findings moves from {before:.3f} (no DP) to "
                                 f"{after:.3f} ({after - before:+.3f}): the clinical utility the DP heads keep.")})
    return out


def _range(a_low: float, a_high: float, b_low: float, b_high: float) -> tuple[float, float]:
    """A conservative range of b - a from the two 95% CIs (the Minkowski difference; wider than a paired bootstrap
    would give, never narrower)."""
    return b_low - a_high, b_high - a_low


def _strongest_line(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """The largest lift of Recall@1 the audit measured (study level, any pool and N), with its CI."""
    sel = rows[(rows["k"] == 1) & (rows["level"] == "study")]
    if not len(sel):
        return []
    top = sel.loc[sel["lift"].idxmax()]
    p = point(sel, int(top["n"]), str(top["pool_kind"]))
    if p is None:
        return []
    pool = pool_name(str(top["pool_kind"]))
    return [{"key": "strongest", "pool": str(top["pool_kind"]), **p,
             "label": f"Strongest measured re-linkage: {pool}, N={p['n']:,}",
             "sentence": (f"The strongest re-linkage measured is in the {pool} at N={p['n']:,}: {p['lift']:.1f} times "
                          f"chance (95% CI {p['lift_low']:.1f}-{p['lift_high']:.1f}; Recall@1 {p['recall']:.3f}, "
                          f"chance {p['chance']:.4f}).")}]


def _capped(p: dict[str, float]) -> str:
    """ " (about E such reports exist on average)" when a pool's mean effective N is below its N, else ""."""
    return f" (about {p['effective_n']:,.0f} such reports exist on average)" if p["effective_n"] < p["n"] - 0.5 else ""


def _matched_lines(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """Per side-information pool (pool_kind "matched:<attrs>"): its lift at N=100 and at its largest N against the
    random pool's at the same N, the difference with a conservative range (_range)."""
    out = []
    for kind in sorted(k for k in rows["pool_kind"].unique() if str(k).startswith(MATCH_PREFIX)):
        for tag, n in (("100", 100), ("max", None)):
            m = point(rows, n, kind)
            r = point(rows, m["n"], "random") if m else None
            if m is None or r is None or r["n"] != m["n"]:
                continue
            low, high = _range(r["lift_low"], r["lift_high"], m["lift_low"], m["lift_high"])
            delta = m["lift"] - r["lift"]
            name = pool_name(kind)
            out.append({
                "key": f"{kind}_{tag}", "pool": kind, **m, "random": r, "delta": delta, "delta_low": low,
                "delta_high": high, "label": f"Side information: {name}, N={m['n']:,}",
                "sentence": (f"With pools {name} (distractors share what the attacker knows of the patient), lift at "
                             f"N={m['n']:,}{_capped(m)} is {m['lift']:.1f}x (95% CI {m['lift_low']:.1f}-{m['lift_high']:.1f}) "
                             f"against {r['lift']:.1f}x ({r['lift_low']:.1f}-{r['lift_high']:.1f}) in random pools: "
                             f"{delta:+.1f}x (conservative range {low:+.1f} to {high:+.1f}, from the two CIs).")})
    return out


def _members_lines(sweep_id: str, epsilon: float) -> list[dict[str, Any]]:
    """The members gap (member - non-member Recall@1, its bootstrap CI) of the DP heads at `epsilon`, at N=100 (or
    the largest N below it) and the largest common N; none when the sweep did not measure members."""
    table, _ = members_table(sweep_id)
    if table.empty:
        return []
    sel = table[table["heads"] == series_label(epsilon)].sort_values("n")
    out = []
    for tag, row in (("100", sel[sel["n"] <= 100].tail(1)), ("max", sel.tail(1))):
        if not len(row) or (tag == "max" and out and out[0]["n"] == int(row["n"].iloc[0])):
            continue
        r = row.iloc[0]
        gap, low, high = float(r["gap"]), float(r["gap_ci_low"]), float(r["gap_ci_high"])
        what = ("no measurable memorisation: the CI contains 0" if low <= 0 <= high else
                "the heads re-link their own training patients better" if low > 0 else
                "members are re-linked less well than non-members")
        out.append({
            "key": f"members_{tag}", "n": int(r["n"]), "epsilon": epsilon, "delta": gap, "delta_low": low,
            "delta_high": high, "member": float(r["member_recall"]), "nonmember": float(r["nonmember_recall"]),
            "label": f"Members gap at N={int(r['n']):,} (ε={epsilon:g})",
            "sentence": (f"With DP heads at ε={epsilon:g}, training patients (members) are re-linked with Recall@1 "
                         f"{float(r['member_recall']):.4f} against {float(r['nonmember_recall']):.4f} for unseen "
                         f"patients at N={int(r['n']):,}: gap {gap:+.4f} (95% CI {low:+.4f} to {high:+.4f}), {what}.")})
    return out
