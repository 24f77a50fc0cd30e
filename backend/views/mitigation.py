"""An epsilon sweep as the Mitigation and Utility pages show it (pure pandas over the store): the names of its
series, the sweep read once (SweepView) with its reference point, the recall curves of one point beside the
references, the utility and transfer frames, and the members against non-members tables."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from backend.runs import store
from backend.runs.cuts import bootstrap_of, point_cuts, stored_cuts
from backend.specs import POOL_KINDS

# The two references every DP point is compared with, one name each on every page, figure and report.
ORIGINAL = "original model"
RETRAINED = "retrained heads, no DP"


def series_label(eps: float) -> str:
    """The name of a sweep point's series in figures and tables: "ε=1", or RETRAINED for epsilon = inf."""
    return RETRAINED if not math.isfinite(eps) else f"ε={eps:g}"


def epsilon_label(eps: float) -> str:
    return "inf (no DP)" if not math.isfinite(eps) else f"{eps:g}"


@dataclass
class SweepView:
    """Everything the Mitigation page needs about one finished sweep, read once.

    points: one row per epsilon (epsilon, run_id, guarantee, privacy_unit, objective, noise_multiplier,
    r1_random, r1_hard at the largest N, auroc_linear, auroc_zero_shot, reduction (at the largest N),
    auroc_change, zero_shot_change, and runs.cuts.point_cuts's columns: Recall@1 and the cut at N=100, 1,000 and the
    largest N with paired CIs, the AUROC changes' paired CIs, `paired`);
    metrics: relink rows of every point (+ epsilon); probe: probe rows of every point (+ epsilon)."""

    sweep_id: str
    points: pd.DataFrame
    metrics: pd.DataFrame
    probe: pd.DataFrame
    original: pd.DataFrame  # relink rows of the model's own heads evaluated with the sweep (may be empty)
    original_probe: pd.DataFrame


def _r1_at_max(rows: pd.DataFrame, pool: str) -> float:
    sel = rows[(rows["k"] == 1) & (rows["pool_kind"] == pool) & (rows["level"] == "study")]
    return float(sel.loc[sel["n"].idxmax(), "recall"]) if len(sel) else math.nan


def _macro(probe: pd.DataFrame, method: str) -> float:
    sel = probe[(probe["method"] == method) & (probe["label"] == "macro")]
    return float(sel["auroc"].iloc[0]) if len(sel) else math.nan


def sweep_progress(sweep_id: str) -> tuple[str, int, int]:
    """(status, points stored, points in the grid) of a sweep: what changes while it runs."""
    run = store.get_run(sweep_id) or {}
    try:
        planned = len(json.loads(run.get("spec") or "{}").get("epsilons", []))
    except json.JSONDecodeError:
        planned = 0
    return str(run.get("status", "")), len(store.load_sweep_points(sweep_id)), planned


def reference_point(points: pd.DataFrame) -> pd.Series | None:
    """The sweep's reference: its point at epsilon = inf (the heads retrained without DP), or None without one."""
    base = points[~np.isfinite(points["epsilon"])]
    return base.iloc[0] if len(base) else None


def sweep_view(sweep_id: str) -> SweepView:
    """A sweep read from the store once: its points (SweepView.points, epsilon ascending) with the reduction and
    AUROC change against the reference point (without one, against the grid's last point), and their rows."""
    pts = store.load_sweep_points(sweep_id)
    ids = pts["run_id"].tolist()
    metrics = store.load_metrics(ids)
    probe = store.load_probe(ids)
    probe = probe[probe["variant"].isin(["dp"]) | probe["variant"].str.startswith("transfer:")]
    own_rows = store.load_metrics(sweep_id)
    own_probe = store.load_probe(sweep_id)
    privacy = store.load_privacy(ids).rename(columns={"epsilon": "epsilon_achieved"})
    eps = dict(zip(pts["run_id"], pts["epsilon"], strict=True))
    metrics = metrics.assign(epsilon=metrics["run_id"].map(eps))
    probe = probe.assign(epsilon=probe["run_id"].map(eps))
    own = metrics[~metrics["variant"].str.startswith("transfer:")]
    summary = []
    for run_id, e in eps.items():
        m, p = own[own["run_id"] == run_id], probe[(probe["run_id"] == run_id) & (probe["variant"] == "dp")]
        summary.append({"run_id": run_id, "epsilon": e, "r1_random": _r1_at_max(m, "random"),
                        "r1_hard": _r1_at_max(m, "hard"), "auroc_linear": _macro(p, "linear"),
                        "auroc_zero_shot": _macro(p, "zero-shot")})
    points = pts[["run_id"]].merge(pd.DataFrame(summary), on="run_id").merge(privacy, on="run_id", how="left")
    ref = reference_point(points)
    if ref is None and len(points):
        ref = points.iloc[-1]
    if ref is not None:
        points["reduction"] = 1 - points["r1_random"] / ref["r1_random"]
        points["auroc_change"] = points["auroc_linear"] - ref["auroc_linear"]
        points["zero_shot_change"] = points["auroc_zero_shot"] - ref["auroc_zero_shot"]
        run = store.get_run(sweep_id) or {}
        # kept at the sweep's finish against its epsilon = inf point; against a stand-in reference, computed here
        paired = stored_cuts(run.get("summary"), points) if not math.isfinite(float(ref["epsilon"])) else None
        if paired is None:  # a sweep stored before its finish kept them: compute from the per-query outcomes
            n_boot, seed = bootstrap_of(run.get("spec"))
            paired = point_cuts(points, metrics, str(ref["run_id"]), n_boot=n_boot, seed=seed)
        points = points.merge(paired, on="run_id", how="left")
    return SweepView(sweep_id, points.sort_values("epsilon").reset_index(drop=True), metrics, probe,
                     own_rows[own_rows["variant"] == "original"], own_probe[own_probe["variant"] == "original"])


def mitigation_curves(view: SweepView, point_run: str, ref_run: str | None, original: pd.DataFrame | None,
                      label: str) -> pd.DataFrame:
    """Study-level relink rows (random and pathology-matched pools) of one sweep point (series `label`, or
    RETRAINED when the point is the reference), the no-DP retrained heads and the original model, with a
    `series` column naming each."""
    own = view.metrics[view.metrics["variant"] == "dp"]
    parts = [own[own["run_id"] == point_run].assign(series=RETRAINED if point_run == ref_run else label)]
    if ref_run and ref_run != point_run:
        parts.append(own[own["run_id"] == ref_run].assign(series=RETRAINED))
    original = view.original if len(view.original) else original  # same evaluation as the sweep when stored
    if original is not None and len(original):
        parts.append(original.assign(series=ORIGINAL))
    out = pd.concat(parts, ignore_index=True)
    return out[(out["level"] == "study") & out["pool_kind"].isin(POOL_KINDS)]


def utility_frames(view: SweepView, eps: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-label probe rows of no-DP vs the chosen epsilon with a `series` column,
    transfer rows at the largest N for every epsilon: variant, epsilon, pool_kind, k, n, recall, lift)."""
    probe = view.probe[view.probe["variant"] == "dp"]
    finite = probe["epsilon"].apply(math.isfinite)
    chosen = probe[(probe["epsilon"] - eps).abs() < 1e-12] if math.isfinite(eps) else probe[~finite]
    parts = [view.original_probe.assign(series=ORIGINAL, epsilon=math.inf)] if len(view.original_probe) else []
    parts.append(probe[~finite].assign(series=RETRAINED))
    if math.isfinite(eps):
        parts.append(chosen.assign(series=series_label(eps)))
    before_after = pd.concat(parts, ignore_index=True)
    tr = view.metrics[view.metrics["variant"].str.startswith("transfer:") & (view.metrics["level"] == "study")]
    if len(tr):
        tr = tr.loc[tr.groupby(["variant", "epsilon", "pool_kind", "k"])["n"].idxmax()]
        tr = tr.assign(target=tr["variant"].str.split(":").str[1])
        tr = tr[["target", "epsilon", "pool_kind", "k", "n", "recall", "ci_low", "ci_high", "lift"]]
    return before_after, tr.reset_index(drop=True)


MEMBERS_NO_GAP = ("Members are re-linked no better than non-members here (every gap's 95% CI contains 0): DP on the "
                  "heads bounds what one training patient adds to them, but re-linkage that the model does for everyone, "
                  "members or not, is a capability of the model, not memorisation, and DP does not remove it.")
MEMBERS_GAP = ("Where a gap's 95% CI lies above 0, those heads re-link their own training patients better than unseen "
               "ones (memorisation): that is the part DP on the heads bounds.")


def _members_rows(records: Any, n_ref: int = 100, every_n: bool = False) -> pd.DataFrame:
    """Stored members rows (one per N) -> the rows at N = n_ref (or the largest N below it) and the largest N (every
    row with every_n)."""
    rows = pd.DataFrame(list(records or []))
    if rows.empty or "n" not in rows.columns:
        return pd.DataFrame()
    rows = rows.apply(pd.to_numeric, errors="coerce").sort_values("n")
    if every_n:
        return rows
    near = rows[rows["n"] <= n_ref]
    picks = ([near.index[-1]] if len(near) else []) + [rows.index[-1]]
    return rows.loc[list(dict.fromkeys(picks))]


def members_table(sweep_id: str, every_n: bool = False) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Members against non-members stored with a sweep: (rows at N = 100 and the largest common N, or at every N
    measured with every_n, for the original model, the retrained heads without DP and each epsilon, with `heads` and
    `epsilon` columns; the groups' sizes). Empty when the sweep did not measure them (sweeps made before, the
    shipped snapshot)."""
    summary = (store.get_run(sweep_id) or {}).get("summary") or {}
    parts = [_members_rows(summary.get("members"), every_n=every_n).assign(heads=ORIGINAL, epsilon=math.inf)]
    groups = dict(summary.get("members_groups") or {})
    pts = store.load_sweep_points(sweep_id)
    for run_id, eps in sorted(zip(pts["run_id"], pts["epsilon"], strict=True), key=lambda p: -p[1]):
        point = (store.get_run(run_id) or {}).get("summary") or {}
        groups = groups or dict(point.get("members_groups") or {})
        parts.append(_members_rows(point.get("members"), every_n=every_n).assign(heads=series_label(eps), epsilon=eps))
    parts = [p for p in parts if "n" in p.columns]
    if not parts:
        return pd.DataFrame(), groups
    out = pd.concat(parts, ignore_index=True)
    out["n"] = out["n"].astype(int)
    return out, groups


def members_display(table: pd.DataFrame) -> pd.DataFrame:
    """members_table's rows as the page shows them: heads, N, both Recall@1 values and the gap, each with its CI."""
    def fmt(v: float, lo: float, hi: float, sign: str = "") -> str:
        ci = "" if not (np.isfinite(lo) and np.isfinite(hi)) else f" [{lo:{sign}.4f}, {hi:{sign}.4f}]"
        return f"{v:{sign}.4f}{ci}"

    return pd.DataFrame({
        "Heads": table["heads"], "N": table["n"],
        "Members R@1 [95% CI]": [fmt(r.member_recall, r.member_ci_low, r.member_ci_high) for r in table.itertuples()],
        "Non-members R@1 [95% CI]": [fmt(r.nonmember_recall, r.nonmember_ci_low, r.nonmember_ci_high)
                                     for r in table.itertuples()],
        "Gap [95% CI]": [fmt(r.gap, r.gap_ci_low, r.gap_ci_high, "+") for r in table.itertuples()],
    })


def members_note(table: pd.DataFrame) -> str | None:
    """The plain sentence under the table (table: members_table's rows at every N): MEMBERS_NO_GAP when every gap's
    CI contains 0, MEMBERS_GAP naming the heads and N where one lies above 0, None without rows (or without CIs)."""
    if table.empty or table[["gap_ci_low", "gap_ci_high"]].isna().any().any():
        return None
    if ((table["gap_ci_low"] <= 0) & (table["gap_ci_high"] >= 0)).all():
        return MEMBERS_NO_GAP + f" Checked at every pool size measured (N={', '.join(f'{n:,}' for n in sorted(set(table['n'])))})."
    above = table[table["gap_ci_low"] > 0]
    if not len(above):
        return None
    where = "; ".join(f"{heads}: N={', '.join(f'{int(n):,}' for n in sorted(g['n']))}"
                      for heads, g in above.groupby("heads", sort=False))
    return MEMBERS_GAP + f" Above 0 at: {where}."
