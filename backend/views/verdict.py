"""The verdict (pure pandas over the store): the headline numbers before and after mitigation, and the Overview's
and the report's lines, each a number with its interval and a plain sentence (re-linkage lift per pool, what side
information does, the DP heads against the retrained heads at N=100, 1,000 and the largest N, the members gap over
every N and the utility kept)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from backend.runs import store
from backend.runs.cuts import read_points
from backend.specs import MATCH_PREFIX, pool_name
from backend.views import cuts
from backend.views.catalog import latest, paired_sweep, spec_info
from backend.views.compare import lift_at, point
from backend.views.definitions import STUDY_LABEL, STUDY_LIFT
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
        synthetic = spec_info((store.get_run(audit_id) or {}).get("spec") or "{}").get("source") == "synthetic"
        out["lines"] += _matched_lines(rows, synthetic=synthetic)
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
            out["epsilon"] = float(chosen["epsilon"])
            out["guarantee"], out["privacy_unit"] = str(chosen.get("guarantee") or ""), str(chosen.get("privacy_unit") or "")
            out["objective"] = str(chosen.get("objective") or "")
            out["lines"] += _dp_lines(view, chosen, ref, out)
            info = spec_info((store.get_run(sweep_id) or {}).get("spec") or "{}")
            out["lines"] += _members_lines(sweep_id, float(chosen["epsilon"]), demo=info.get("model") == "demo")
            for key, name in (("auroc_linear", "linear-probe"), ("auroc_zero_shot", "zero-shot")):
                before, after = float(ref[key]), float(chosen[key])
                ci = "auroc_change" if key == "auroc_linear" else "zero_shot_change"
                low, high = float(chosen.get(f"{ci}_low", math.nan)), float(chosen.get(f"{ci}_high", math.nan))
                out["lines"].append({
                    "key": key, "before": before, "after": after, "change": after - before, "change_low": low,
                    "change_high": high, "label": f"{name} macro AUROC with DP heads (ε={out['epsilon']:g})",
                    "sentence": (f"The {name} macro AUROC over the 14 findings moves from {before:.3f} (retrained heads, "
                                 f"no DP: the baseline) to {after:.3f}: {_ci_text(after - before, low, high, '{:+.3f}')}. "
                                 + utility_words(low, high))})
    return out


def _ci_text(value: float, low: float, high: float, fmt: str) -> str:
    """"+0.004 (paired 95% CI -0.002 to +0.010)", or "... (CI needs a recompute)" without the CI."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{fmt.format(value)} (CI needs a recompute: the sweep was stored without its per-query outcomes)"
    return f"{fmt.format(value)} (paired 95% CI {fmt.format(low)} to {fmt.format(high)})"


def _dp_lines(view: Any, chosen: pd.Series, ref: pd.Series, out: dict[str, Any]) -> list[dict[str, Any]]:
    """Recall@1 of the DP heads against the retrained heads (the baseline) at each read point of the random pool
    (N=100, 1,000 and the largest N: runs.cuts.read_points), with the cut's paired CI (keys dp_100, dp_1000, dp_max)."""
    own = view.metrics[view.metrics["variant"] == "dp"]
    dp_rows, ref_rows = own[own["run_id"] == chosen["run_id"]], own[own["run_id"] == ref["run_id"]]
    lines = []
    for tag, n in read_points(own).items():
        a, b = point(ref_rows, n), point(dp_rows, n)
        if a is None or b is None:
            continue
        cut = float(chosen.get(f"cut_{tag}", math.nan))
        low, high = float(chosen.get(f"cut_{tag}_low", math.nan)), float(chosen.get(f"cut_{tag}_high", math.nan))
        verb = ("fewer first-guess re-links" if cut >= 0 else "more first-guess re-links: the noise moved the heads, "
                "it did not remove what they share with the frozen encoders")
        ci = (f"paired 95% CI {low:.0%} to {high:.0%} fewer" if np.isfinite(low) and np.isfinite(high) else
              "CI needs a recompute: the sweep was stored without its per-query outcomes")
        lines.append({
            "key": f"dp_{tag}", "pool": "random", "n": b["n"], "before": a, "after": b, "change": -cut,
            "cut": cut, "cut_low": low, "cut_high": high, "delta": b["recall"] - a["recall"],
            "label": f"{cuts.n_phrase(b['n'])}, DP heads ε={out['epsilon']:g} vs retrained heads",
            "sentence": (f"With DP heads at ε={out['epsilon']:g} ({out['guarantee']}, per {out['privacy_unit']}), "
                         f"Recall@1 at N={b['n']:,} (random pool) is {b['recall']:.4f} (95% CI {b['ci_low']:.4f}-"
                         f"{b['ci_high']:.4f}) against {a['recall']:.4f} ({a['ci_low']:.4f}-{a['ci_high']:.4f}) for "
                         f"the heads retrained without DP (the baseline): {abs(cut):.0%} {verb} ({ci}).")})
    return lines


def utility_words(low: float, high: float) -> str:
    """What a paired CI of an AUROC change says: a measurable cost (below 0), no measurable change, or a gain."""
    if high < 0:
        return "A measurable cost in clinical utility: the whole 95% CI lies below 0."
    if low > 0:
        return "A measurable gain: the whole 95% CI lies above 0."
    if math.isfinite(low) and math.isfinite(high):
        return "No measurable change in clinical utility: the 95% CI contains 0."
    return "The clinical utility the DP heads keep (its CI needs a recompute)."


def _range(a_low: float, a_high: float, b_low: float, b_high: float) -> tuple[float, float]:
    """A conservative range of b - a from the two 95% CIs (the Minkowski difference; wider than a paired bootstrap
    would give, never narrower)."""
    return b_low - a_high, b_high - a_low


def _capped(p: dict[str, float]) -> str:
    """ " (about E such reports exist on average)" when a pool's mean effective N is below its N, else ""."""
    return f" (about {p['effective_n']:,.0f} such reports exist on average)" if p["effective_n"] < p["n"] - 0.5 else ""


SEX_AGE_NOT_IN_IMAGES = ("On this synthetic data sex and age are not in the images, so the model cannot use them: what "
                         "the attacker gains comes from the smaller pool alone.")


def _matched_lines(rows: pd.DataFrame, *, synthetic: bool = False) -> list[dict[str, Any]]:
    """Per side-information pool (pool_kind "matched:<attrs>"): its lift at N=100 and at its largest N against the
    random pool's at the same N, the difference with a conservative range (_range), and what the attacker gains:
    the absolute Recall@1 in the matched pool (as few candidates as match) against the random pool's at N."""
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
            gain = m["recall"] / r["recall"] if r["recall"] > 0 else math.nan
            sentence = (f"With pools {name} (distractors share what the attacker knows of the patient), lift at "
                        f"N={m['n']:,}{_capped(m)} is {m['lift']:.1f}x (95% CI {m['lift_low']:.1f}-{m['lift_high']:.1f}) "
                        f"against {r['lift']:.1f}x ({r['lift_low']:.1f}-{r['lift_high']:.1f}) in random pools: "
                        f"{delta:+.1f}x (conservative range {low:+.1f} to {high:+.1f}, from the two CIs). What the "
                        f"attacker gains: Recall@1 {r['recall']:.4f} among {r['effective_n']:,.0f} candidates without "
                        f"side information, {m['recall']:.4f} (95% CI {m['ci_low']:.4f}-{m['ci_high']:.4f}) among the "
                        f"{m['effective_n']:,.0f} that match" + (f" ({gain:.1f} times as often)." if np.isfinite(gain)
                                                                  else "."))
            out.append({
                "key": f"{kind}_{tag}", "pool": kind, **m, "random": r, "delta": delta, "delta_low": low,
                "delta_high": high, "gain": gain, "label": f"Side information: {name}, N={m['n']:,}",
                "sentence": sentence + (" " + SEX_AGE_NOT_IN_IMAGES if synthetic else "")})
    return out


ENCODERS_SAW_MEMBERS = ("On the demo the train patients also trained the frozen encoders: DP on the heads cannot "
                        "remove what the encoders learned from them.")


def members_verdict(table: pd.DataFrame) -> str:
    """What the members gap says over every pool size N measured (table: one point's rows, one per N): no
    measurable memorisation when every gap's CI contains 0, else the N where it lies above (or below) 0."""
    ns = table.sort_values("n")
    above = [int(n) for n, lo in zip(ns["n"], ns["gap_ci_low"], strict=True) if lo > 0]
    below = [int(n) for n, hi in zip(ns["n"], ns["gap_ci_high"], strict=True) if hi < 0]
    span = f"N={int(ns['n'].min()):,} to {int(ns['n'].max()):,}" if len(ns) > 1 else f"N={int(ns['n'].iloc[0]):,}"
    if not above and not below:
        return (f"no measurable memorisation at any of the {len(ns)} pool sizes measured ({span}): every gap's "
                "95% CI contains 0")
    parts = []
    if above:
        parts.append(f"the gap's 95% CI lies above 0 at N={', '.join(f'{n:,}' for n in above)}: there the heads "
                     "re-link their own training patients better (memorisation)")
    if below:
        parts.append(f"members are re-linked less well than non-members at N={', '.join(f'{n:,}' for n in below)}")
    return f"checked at all {len(ns)} pool sizes measured ({span}): " + "; ".join(parts)


def _members_lines(sweep_id: str, epsilon: float, *, demo: bool = False) -> list[dict[str, Any]]:
    """The members gap (member - non-member Recall@1, its bootstrap CI) of the DP heads at `epsilon`, at N=100 (or
    the largest N below it) and the largest common N, each with what the gap says over every N measured
    (members_verdict); none when the sweep did not measure members."""
    table, _ = members_table(sweep_id, every_n=True)
    if table.empty:
        return []
    sel = table[table["heads"] == series_label(epsilon)].sort_values("n")
    if not len(sel):
        return []
    what = members_verdict(sel) + "." + (" " + ENCODERS_SAW_MEMBERS if demo else "")
    out = []
    for tag, row in (("100", sel[sel["n"] <= 100].tail(1)), ("max", sel.tail(1))):
        if not len(row) or (tag == "max" and out and out[0]["n"] == int(row["n"].iloc[0])):
            continue
        r = row.iloc[0]
        gap, low, high = float(r["gap"]), float(r["gap_ci_low"]), float(r["gap_ci_high"])
        out.append({
            "key": f"members_{tag}", "n": int(r["n"]), "epsilon": epsilon, "delta": gap, "delta_low": low,
            "delta_high": high, "member": float(r["member_recall"]), "nonmember": float(r["nonmember_recall"]),
            "label": f"Members gap at N={int(r['n']):,} (ε={epsilon:g})",
            "sentence": (f"With DP heads at ε={epsilon:g}, training patients (members) are re-linked with Recall@1 "
                         f"{float(r['member_recall']):.4f} against {float(r['nonmember_recall']):.4f} for unseen "
                         f"patients at N={int(r['n']):,}: gap {gap:+.4f} (95% CI {low:+.4f} to {high:+.4f}). Over every "
                         f"N: {what}")})
    return out


def study_comparison(rows: pd.DataFrame) -> str:
    """One sentence comparing the shape of this audit's lift curve (random pool, study level, Recall@1, from N=100 to
    the largest N) with the study's real-data figures (STUDY_LIFT), labelled as the study's; "" without rows."""
    a, b = point(rows, 100), point(rows, None)
    if a is None or b is None:
        return ""
    (n1, v1), (n2, v2) = STUDY_LIFT[0], STUDY_LIFT[-1]
    study = f"{STUDY_LABEL} report about {v1:g}x at N={n1:,} and {v2:g}x at N={n2:,} (the diamond markers)"
    if b["n"] <= a["n"]:
        return f"Here lift is {b['lift']:.1f}x at N={b['n']:,}; for comparison, {study}."
    grows = b["lift_low"] > a["lift_high"]
    shape = ("the same shape: lift grows with the pool size" if grows else
             "unlike the study, lift here does not grow measurably with N (the CIs overlap)" if b["lift"] >= a["lift"]
             else "unlike the study, lift here falls with N")
    return (f"This audit's lift goes from {a['lift']:.1f}x at N={a['n']:,} to {b['lift']:.1f}x (95% CI "
            f"{b['lift_low']:.1f}-{b['lift_high']:.1f}) at N={b['n']:,}; {study}: {shape}.")
