"""What the pages show, computed from the store (pure pandas; no Streamlit, no SQL, no torch).

Finished runs never change, so everything keyed by a finished run id is safe to cache in the UI.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from backend import models, settings, specs
from backend.errors import RelinkError
from backend.runs import jobs, ladder, provenance, snapshot, store
from backend.sources import LABELS as LABELS  # re-exported: the pages import no source code
from backend.sources import get_source, list_sources, load_source
from backend.sources.schema import match_attributes
from backend.specs import (
    DEFAULT_EPSILONS,
    MATCH_ATTRIBUTES,
    POOL_KINDS,
    DPSpec,
    LadderSpec,
    SourceSpec,
    SweepSpec,
    pool_name,
    spec_from_json,
)

# The model registry imports torch (seconds); the dashboard lists names without it.


def sources_table() -> list[dict[str, Any]]:
    """The registered sources, one row each, for the Data page."""
    return [{"source": s.name, "description": s.description, "needs a folder": s.needs_root,
             "credentialed": s.credentialed} for s in list_sources()]


def known_models() -> dict[str, str]:
    """Registered model name -> what it is and where its weights come from (the torch-free registry)."""
    return {e.name: f"{e.description}; weights: {e.weights}" for e in models.list_models()}


def models_table() -> list[dict[str, str]]:
    """The registered models for the Models and jobs page: name, what it is, where its weights come from."""
    return [{"model": e.name, "what": e.description, "weights": e.weights} for e in models.list_models()]


def is_hub_model(name: str) -> bool:
    return name in models.MODELS and models.get_model(name).hub


DEFINITIONS: dict[str, str] = {
    "recall": "Recall@K(N): probability that the true report is among the K most similar of a pool of N "
              "candidate reports that contains it (exact expectation over random pools).",
    "chance": "Chance: K/N, the recall of an attacker who ranks the pool at random.",
    "lift": "Lift: Recall@K(N) divided by chance K/N; 1 means no re-linkage beyond guessing.",
    "effective_n": "Effective N: the pool size actually used; pathology-matched pools are capped where too "
                   "few studies share the query's 14-label vector.",
    "random": "Random pool: distractor reports drawn from all other studies (other studies of the same patient "
              "excluded).",
    "hard": "Pathology-matched pool: distractors only from studies with the same 14 labels, which removes the "
            "disease-label shortcut.",
    "study": "Study level: the exact report of the query image must be retrieved.",
    "patient": "Patient level: any report of the same patient in the top K counts (linkage to the person).",
    "epsilon": "Epsilon: the differential-privacy budget of the projection-head training (smaller = more "
               "private); inf = retrained without DP.",
    "certified": "Certified: the loss is per-example decomposable, so the accountant's epsilon is a real "
                 "guarantee for the stated privacy unit.",
    "nominal": "Nominal: in-batch contrastive loss couples examples, so per-sample clipping does not bound one "
               "example's influence; the epsilon is what the accountant reports, not a proven guarantee.",
    "auroc": "AUROC: area under the ROC curve of a per-label classifier on the projected image embeddings "
             "(0.5 = chance, 1 = perfect); macro = mean over labels with enough positives.",
    "reduction": "Re-linkage reduction: 1 - Recall@1(DP heads) / Recall@1(non-private retrained heads), at the "
                 "largest pool size.",
    "members": "Members: a seeded random subset of the train split's patients (their pairs trained the heads); "
               "non-members: as many test-split patients. Each group is audited on its own reports with the same pool "
               "sizes N (random pool, study level, Recall@1); the gap is member minus non-member Recall@1, its 95% CI "
               "from resampling the patients of both groups independently.",
    "rank": "Rank of the true report among all candidate reports (1 = the attacker's first guess): 1 + the reports "
            "scored higher + half the reports scored equal (ties broken at random, on average); the same patient's "
            "other studies are left out, as in the audit.",
}


def spec_info(spec_json: str) -> dict[str, Any]:
    """source / model / epsilon / objective of a stored spec (any kind), for labels and filters."""
    try:
        spec = json.loads(spec_json or "{}")
    except json.JSONDecodeError:
        return {}
    node = spec.get("base", spec)  # a sweep's shared DPSpec
    node = node.get("audit", node) if "embed" not in node and "source" not in node else node
    embed = node.get("embed", {})
    source = node.get("source") or embed.get("source") or {}
    return {"source": source.get("name", ""), "model": node.get("model") or embed.get("model", ""),
            "objective": node.get("objective", ""), "privacy_unit": node.get("privacy_unit", ""),
            "split": embed.get("split", ""), "source_options": source.get("options", {})}


def catalog(kind: str | None = None, status: str = "done") -> pd.DataFrame:
    """Runs (finished ones by default) with source and model columns, newest first."""
    runs = store.list_runs(kind=kind, status=status)
    info = pd.DataFrame([spec_info(s) for s in runs["spec"]], index=runs.index)
    return pd.concat([runs, info], axis=1) if len(runs) else runs.assign(source=[], model=[])


def latest(kind: str, source: str | None = None, model: str | None = None) -> str | None:
    """The newest finished run of a kind; for sweeps, a sweep still running that has stored points comes first
    (its points appear on the pages as soon as each is stored)."""
    runs = catalog(kind)
    if kind == "sweep":
        running = catalog(kind, status="running")
        if len(running):
            running = running[[len(store.load_sweep_points(r)) > 0 for r in running["run_id"]]]
            runs = pd.concat([running, runs], ignore_index=True) if len(runs) else running
    if source and len(runs):
        runs = runs[runs["source"] == source]
    if model and len(runs):
        runs = runs[runs["model"] == model]
    return str(runs["run_id"].iloc[0]) if len(runs) else None


def audit_runs(source: str | None = None) -> pd.DataFrame:
    """The newest finished audit per model (for overlays)."""
    runs = catalog("audit")
    if source and len(runs):
        runs = runs[runs["source"] == source]
    return runs.drop_duplicates("model") if len(runs) else runs


def relink_rows(run_ids: list[str], variant: str | None = None) -> pd.DataFrame:
    """Tidy re-linkage rows of some runs, with the model name as `model`."""
    rows = store.load_metrics(run_ids)
    if variant is not None and len(rows):
        rows = rows[rows["variant"] == variant]
    models = {r: spec_info((store.get_run(r) or {}).get("spec", "{}")).get("model", r) for r in run_ids}
    return rows.assign(model=rows["run_id"].map(models))


# ---------------------------------------------------------------- runs side by side

OWN_VARIANT = {"audit": "model", "dp": "dp"}  # the rows a run's curves are drawn from: its own, not its transfer rows


def _data_label(info: dict[str, Any]) -> str:
    options = ", ".join(f"{k}={v}" for k, v in sorted((info.get("source_options") or {}).items()))
    return f"{info.get('source', '')}" + (f" ({options})" if options else "")


def run_labels(run_ids: list[str]) -> dict[str, str]:
    """Run id -> the name a reader sees on the overlay: model · data (source and its options) · for a DP run its
    epsilon, guarantee (certified / nominal) and privacy unit (pair / patient) · the run id (two audits of one model
    on one dataset stay apart)."""
    privacy = store.load_privacy(run_ids).set_index("run_id") if run_ids else pd.DataFrame()
    stored = store.list_runs(status=None)  # one read for all of them (the run picker labels every stored run)
    runs = {r["run_id"]: r for r in stored[stored["run_id"].isin(list(run_ids))].to_dict(orient="records")}
    out = {}
    for run_id in run_ids:
        run = runs.get(run_id) or {}
        info = spec_info(run.get("spec", "{}"))
        parts = [info.get("model") or "?", _data_label(info)]
        if run.get("kind") == "dp":
            try:
                eps = float(json.loads(run.get("spec") or "{}").get("epsilon", math.nan))
            except (TypeError, ValueError):
                eps = math.nan
            rec = privacy.loc[run_id] if run_id in privacy.index else {}
            guarantee = str(rec.get("guarantee") or "") if len(rec) else ""
            unit = str(rec.get("privacy_unit") or info.get("privacy_unit") or "")
            what = RETRAINED if not math.isfinite(eps) else f"DP heads ε={eps:g} {guarantee}"
            parts.append(f"{what}, per {unit}" if unit else what)
        parts.append(run_id)
        out[run_id] = " · ".join(p for p in parts if p)
    return out


def overlay_runs() -> pd.DataFrame:
    """Every finished run with re-linkage curves of its own (audits and DP runs, newest first): run_id, kind,
    model, source, label (run_labels) and chip (the label without its data part), for the Re-linkage page's run
    picker."""
    runs = catalog()
    if not len(runs):
        return pd.DataFrame(columns=["run_id", "kind", "model", "source", "label", "chip"])
    runs = runs[runs["kind"].isin(list(OWN_VARIANT))]
    labels = run_labels(runs["run_id"].tolist())
    runs = runs.assign(label=runs["run_id"].map(labels))
    runs["chip"] = [_chip(label) for label in runs["label"]]
    return runs[["run_id", "kind", "model", "source", "label", "chip"]].reset_index(drop=True)


def _chip(label: str) -> str:
    """A run's short name for a picker chip: its label without the data part (model · [DP heads ...] · run id)."""
    parts = label.split(" · ")
    return " · ".join([parts[0], *parts[2:]]) if len(parts) > 2 else label


def run_rows(run_ids: list[str]) -> pd.DataFrame:
    """Tidy re-linkage rows of any finished runs, each run's own variant (OWN_VARIANT), with `model` and `run`
    (its run_labels name) columns: the rows the overlay and its lift table show."""
    rows = store.load_metrics(run_ids)
    kinds = {r: (store.get_run(r) or {}).get("kind", "") for r in run_ids}
    rows = rows[rows["variant"] == rows["run_id"].map(lambda r: OWN_VARIANT.get(kinds.get(r), "model"))]
    labels = run_labels(list(run_ids))
    models = {r: spec_info((store.get_run(r) or {}).get("spec", "{}")).get("model", r) for r in run_ids}
    return rows.assign(model=rows["run_id"].map(models), run=rows["run_id"].map(labels))


def lift_at(rows: pd.DataFrame, n: int | None, k: int = 1, pool: str = "random", level: str = "study") -> float:
    """Lift at pool size n (None: the largest N stored); NaN when absent."""
    sel = rows[(rows["k"] == k) & (rows["pool_kind"] == pool) & (rows["level"] == level)]
    if not len(sel):
        return math.nan
    n = int(sel["n"].max()) if n is None else n
    hit = sel[sel["n"] == n]
    return float(hit["lift"].iloc[0]) if len(hit) else math.nan


def lift_table(rows: pd.DataFrame, k: int = 1, by: str = "model") -> pd.DataFrame:
    """Recall@k and lift at N=100 and the largest N, per `by` (model, or run for runs side by side), pool and level."""
    out = []
    for (name, pool, level), g in rows[rows["k"] == k].groupby([by, "pool_kind", "level"]):
        for n in sorted({100, int(g["n"].max())}):
            hit = g[g["n"] == n]
            if len(hit):
                r = hit.iloc[0]
                out.append({by: name, "pool": pool, "level": level, "N": n, f"Recall@{k}": r["recall"],
                            "CI": f"{r['ci_low']:.3f}-{r['ci_high']:.3f}", "effective N": r["effective_n"],
                            "chance": r["chance"], "lift": r["lift"]})
    return pd.DataFrame(out)


def probe_for(model: str, source: str, options: dict[str, Any] | None = None) -> tuple[str | None, str, str]:
    """Where the linear-probe and zero-shot AUROCs of `model`'s own embeddings on this dataset are stored:
    (run id, probe variant, what it is) of the newest probe run (ProbeSpec, the ladder's), else of the newest epsilon
    sweep's original-model reference (the same probes of the same heads), else (None, '', 'not measured')."""
    options = options or {}
    for kind, variant, what in (("probe", "model", "probe run"), ("sweep", "original", "epsilon sweep's original model")):
        runs = catalog(kind)
        if not len(runs):
            continue
        runs = runs[(runs["model"] == model) & (runs["source"] == source)]
        runs = runs[np.array([dict(o or {}) == options for o in runs["source_options"]], dtype=bool)]
        for run_id in runs["run_id"]:
            probe = store.load_probe(run_id)
            if len(probe) and (probe["variant"] == variant).any():
                return str(run_id), variant, what
    return None, "", "not measured"


def _macro_ci(probe: pd.DataFrame, method: str) -> tuple[float, float, float]:
    sel = probe[(probe["method"] == method) & (probe["label"] == "macro")]
    if not len(sel):
        return (math.nan, math.nan, math.nan)
    r = sel.iloc[0]
    return float(r["auroc"]), float(r["ci_low"]), float(r["ci_high"])


COMPARISON_N = 100


def model_comparison(audit_ids: list[str]) -> pd.DataFrame:
    """The ladder's table for any set of audited runs (audits, and DP runs: their own heads' rows and probes), one row
    per run (study level, random pool, Recall@1): model, audit_run, label (run_labels), probe_run, probe_from,
    linear / zero_shot macro AUROC with _low/_high (NaN when no probe was stored), and at N=100 (the largest
    N <= 100) and at the largest N: n_, recall_, lift_ with CIs."""
    out = []
    labels = run_labels(list(audit_ids))
    for audit_id in audit_ids:
        run = store.get_run(audit_id) or {}
        info = spec_info(run.get("spec", "{}"))
        rows = store.load_metrics(audit_id)
        rows = rows[rows["variant"] == OWN_VARIANT.get(run.get("kind", ""), "model")]
        row: dict[str, Any] = {"model": info.get("model", audit_id), "audit_run": audit_id, "label": labels[audit_id]}
        if run.get("kind") == "dp":
            probe_id, variant, what = audit_id, "dp", "the DP run's own heads"
        else:
            probe_id, variant, what = probe_for(row["model"], info.get("source", ""), info.get("source_options"))
        probe = store.load_probe(probe_id) if probe_id else pd.DataFrame(columns=["variant", "method", "label"])
        probe = probe[probe["variant"] == variant]
        row.update(probe_run=probe_id, probe_from=what)
        for method, name in (("linear", "linear"), ("zero-shot", "zero_shot")):
            row[name], row[f"{name}_low"], row[f"{name}_high"] = _macro_ci(probe, method)
        for tag, n in (("100", COMPARISON_N), ("max", None)):
            p = _point(rows, n) or {}
            row.update({f"n_{tag}": p.get("n", math.nan), f"recall_{tag}": p.get("recall", math.nan),
                        f"recall_{tag}_low": p.get("ci_low", math.nan), f"recall_{tag}_high": p.get("ci_high", math.nan),
                        f"lift_{tag}": p.get("lift", math.nan), f"lift_{tag}_low": p.get("lift_low", math.nan),
                        f"lift_{tag}_high": p.get("lift_high", math.nan)})
        out.append(row)
    return pd.DataFrame(out)


def comparison_display(table: pd.DataFrame) -> pd.DataFrame:
    """model_comparison's rows as the pages show them: AUROCs and lifts with their 95% CIs as text, "not measured"
    where no probe was stored."""
    def auroc(r: Any, name: str) -> str:
        v = getattr(r, name)
        return "not measured" if not np.isfinite(v) else f"{v:.3f} [{getattr(r, name + '_low'):.3f}, {getattr(r, name + '_high'):.3f}]"

    def lift(r: Any, tag: str) -> str:
        v = getattr(r, f"lift_{tag}")
        if not np.isfinite(v):
            return "n/a"
        return f"{v:.1f}x [{getattr(r, f'lift_{tag}_low'):.1f}, {getattr(r, f'lift_{tag}_high'):.1f}] at N={int(getattr(r, f'n_{tag}')):,}"

    if table.empty:
        return pd.DataFrame()
    return pd.DataFrame({
        "Model": table["model"],
        "Run": table["label"] if "label" in table.columns else table["audit_run"],
        "Linear-probe AUROC [95% CI]": [auroc(r, "linear") for r in table.itertuples()],
        "Zero-shot AUROC [95% CI]": [auroc(r, "zero_shot") for r in table.itertuples()],
        "Lift at N=100 [95% CI]": [lift(r, "100") for r in table.itertuples()],
        "Lift at the largest N [95% CI]": [lift(r, "max") for r in table.itertuples()],
        "AUROCs from": table["probe_from"],
    })


@dataclass
class SweepView:
    """Everything the Mitigation page needs about one finished sweep, read once.

    points: one row per epsilon (epsilon, run_id, guarantee, privacy_unit, objective, noise_multiplier,
    r1_random, r1_hard at the largest N, auroc_linear, auroc_zero_shot, reduction, auroc_change);
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


def sweep_view(sweep_id: str) -> SweepView:
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
    base = points[~np.isfinite(points["epsilon"])]
    ref = base.iloc[0] if len(base) else points.iloc[-1] if len(points) else None
    if ref is not None:
        points["reduction"] = 1 - points["r1_random"] / ref["r1_random"]
        points["auroc_change"] = points["auroc_linear"] - ref["auroc_linear"]
    return SweepView(sweep_id, points.sort_values("epsilon").reset_index(drop=True), metrics, probe,
                     own_rows[own_rows["variant"] == "original"], own_probe[own_probe["variant"] == "original"])


# The two references every DP point is compared with, one name each on every page, figure and report.
ORIGINAL = "original model"
RETRAINED = "retrained heads, no DP"


def series_label(eps: float) -> str:
    """The name of a sweep point's series in figures and tables: "ε=1", or RETRAINED for epsilon = inf."""
    return RETRAINED if not math.isfinite(eps) else f"ε={eps:g}"


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


def _members_rows(records: Any, n_ref: int = 100) -> pd.DataFrame:
    """Stored members rows (one per N) -> the rows at N = n_ref (or the largest N below it) and the largest N."""
    rows = pd.DataFrame(list(records or []))
    if rows.empty or "n" not in rows.columns:
        return pd.DataFrame()
    rows = rows.apply(pd.to_numeric, errors="coerce").sort_values("n")
    near = rows[rows["n"] <= n_ref]
    picks = ([near.index[-1]] if len(near) else []) + [rows.index[-1]]
    return rows.loc[list(dict.fromkeys(picks))]


def members_table(sweep_id: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Members against non-members stored with a sweep: (rows at N = 100 and the largest common N for the original
    model, the retrained heads without DP and each epsilon, with `heads` and `epsilon` columns; the groups' sizes).
    Empty when the sweep did not measure them (sweeps made before, the shipped snapshot)."""
    summary = (store.get_run(sweep_id) or {}).get("summary") or {}
    parts = [_members_rows(summary.get("members")).assign(heads=ORIGINAL, epsilon=math.inf)]
    groups = dict(summary.get("members_groups") or {})
    pts = store.load_sweep_points(sweep_id)
    for run_id, eps in sorted(zip(pts["run_id"], pts["epsilon"], strict=True), key=lambda p: -p[1]):
        point = (store.get_run(run_id) or {}).get("summary") or {}
        groups = groups or dict(point.get("members_groups") or {})
        parts.append(_members_rows(point.get("members")).assign(heads=series_label(eps), epsilon=eps))
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
    """The plain sentence under the table: MEMBERS_NO_GAP when every gap's CI contains 0, MEMBERS_GAP when one
    lies above 0, None without rows (or without CIs)."""
    if table.empty or table[["gap_ci_low", "gap_ci_high"]].isna().any().any():
        return None
    if ((table["gap_ci_low"] <= 0) & (table["gap_ci_high"] >= 0)).all():
        return MEMBERS_NO_GAP
    return MEMBERS_GAP if (table["gap_ci_low"] > 0).any() else None


def epsilon_label(eps: float) -> str:
    return "inf (no DP)" if not math.isfinite(eps) else f"{eps:g}"


def headline(source: str | None, model: str | None) -> dict[str, Any]:
    """Lift (R@1, random pool, study level) at N=100 and the largest N, before and after mitigation."""
    audit_id = latest("audit", source, model)
    sweep_id = latest("sweep", source, model)
    out: dict[str, Any] = {"audit_run": audit_id, "sweep_run": sweep_id}
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


def data_summary(pairs: pd.DataFrame, labels: tuple[str, ...]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(counts per split, label prevalence per split) of a canonical pair table."""
    counts = pairs.groupby("split").agg(pairs=("pair_id", "size"), studies=("study_id", "nunique"),
                                        patients=("patient_id", "nunique")).reset_index()
    prevalence = pairs.groupby("split")[list(labels)].mean().T.reset_index(names="label")
    return counts, prevalence


def match_summary(pairs: pd.DataFrame) -> str:
    """One sentence: the attributes side-information pools (`--match`) can use on this table, and those they cannot."""
    can = match_attributes(pairs)
    cannot = [a for a in MATCH_ATTRIBUTES if a not in can]
    name = lambda attrs: ", ".join(a.replace("_", " ") for a in attrs)  # noqa: E731
    return (f"Side-information pools (audit --match) can match on: {name(can)}."
            + (f" Not on: {name(cannot)} (not given for every pair)." if cannot else ""))


def device_summary() -> str:
    """The accelerator jobs will use, without importing torch: from nvidia-smi when present."""
    gpus = settings.listed_gpus()
    if gpus is None:
        return "CPU (no NVIDIA GPU found, or nvidia-smi did not answer)"
    return f"CUDA: {gpus[0]}" if gpus else "CPU (no GPU listed)"


def hub_warning(model: str) -> str | None:
    """A clear message when a hub model is chosen while the hub is off limits (never a hang)."""
    if is_hub_model(model) and settings.hub_offline():
        return (f"{model} needs weights from the model hub, and the hub is switched off (HF_HUB_OFFLINE/"
                "CXR_OFFLINE). Its job will stop at once unless the weights are already in the cache; copy them "
                "into the Hugging Face cache, or use local:<path> or the demo model.")
    return None


def snapshot_note(run_id: str | None) -> dict[str, Any] | None:
    """{made, code_version, original_run} when `run_id` is an imported demo snapshot run, else None."""
    run = store.get_run(run_id) if run_id else None
    return run["summary"]["snapshot"] if snapshot.is_snapshot(run) else None


def _point(rows: pd.DataFrame, n: int | None, pool: str = "random", k: int = 1) -> dict[str, float] | None:
    """Recall@k of one pool at N=n (the largest N <= n; None: the largest N), study level, with lift and CIs."""
    sel = rows[(rows["k"] == k) & (rows["pool_kind"] == pool) & (rows["level"] == "study")].sort_values("n")
    if n is not None:
        sel = sel[sel["n"] <= n]
    if not len(sel):
        return None
    r = sel.iloc[-1]
    chance = float(r["chance"])
    return {"n": int(r["n"]), "recall": float(r["recall"]), "ci_low": float(r["ci_low"]),
            "ci_high": float(r["ci_high"]), "chance": chance, "lift": float(r["lift"]),
            "lift_low": float(r["ci_low"]) / chance, "lift_high": float(r["ci_high"]) / chance,
            "effective_n": float(r["effective_n"]) if pd.notna(r.get("effective_n")) else float(r["n"])}


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
            p = _point(rows, n, pool)
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
        base = pts[~np.isfinite(pts["epsilon"])]
        if len(private) and len(base):
            chosen = private.iloc[0] if epsilon is None else private.iloc[(private["epsilon"] - epsilon).abs().argmin()]
            own = view.metrics[view.metrics["variant"] == "dp"]
            dp_rows, ref_rows = own[own["run_id"] == chosen["run_id"]], own[own["run_id"] == base.iloc[0]["run_id"]]
            out["epsilon"] = float(chosen["epsilon"])
            out["guarantee"], out["privacy_unit"] = str(chosen.get("guarantee") or ""), str(chosen.get("privacy_unit") or "")
            out["objective"] = str(chosen.get("objective") or "")
            for n in (100, None):
                a, b = _point(ref_rows, n), _point(dp_rows, n)
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
                before, after = float(base.iloc[0][key]), float(chosen[key])
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
    p = _point(sel, int(top["n"]), str(top["pool_kind"]))
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
    for kind in sorted(k for k in rows["pool_kind"].unique() if str(k).startswith(specs.MATCH_PREFIX)):
        for tag, n in (("100", 100), ("max", None)):
            m = _point(rows, n, kind)
            r = _point(rows, m["n"], "random") if m else None
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


# ---------------------------------------------------------------- launching a sweep with a transfer target


def sweep_spec(sweep_id: str | None) -> SweepSpec | None:
    """The spec of a stored sweep run (an imported snapshot keeps the real spec), or None."""
    run = store.get_run(sweep_id) if sweep_id else None
    if not run or run.get("kind") != "sweep":
        return None
    spec = spec_from_json(run["spec"])
    return spec if isinstance(spec, SweepSpec) else None


def transfer_sweep(base: DPSpec | None, source: str, model: str, target: SourceSpec,
                   epsilons: tuple[float, ...] = ()) -> SweepSpec:
    """The sweep to launch from the Utility page: the shown sweep's settings (`base`; else the defaults for this
    dataset and model) with `target` added to its transfer targets, over `epsilons` (else DEFAULT_EPSILONS).
    Heads are trained on the base's dataset as before and applied, without retraining, to the target's test split."""
    base = base or DPSpec(source=SourceSpec(name=source), model=model)
    transfer = base.transfer if target in base.transfer else (*base.transfer, target)
    return SweepSpec(base=dataclasses.replace(base, transfer=transfer),
                     epsilons=tuple(sorted(set(epsilons))) or DEFAULT_EPSILONS)


def check_source(spec: SourceSpec) -> None:
    """Load a source as a job would, raising its SourceError (bad folder, unknown option) before any job starts.
    The synthetic source is checked on a 5-patient prefix (its options are the same; the full table takes
    seconds to generate)."""
    options = dict(spec.options)
    if spec.name == "synthetic":
        options["n_patients"] = 5
    load_source(spec.name, root=spec.root, section_policy=spec.section_policy, **options)


def needs_root(name: str) -> bool:
    try:
        return get_source(name).needs_root
    except RelinkError:
        return False


# Measured on a quiet 2-core x86 CPU on the synthetic demo data (25,660 pairs; a timeline of the Recompute job,
# 2026-11-30, docs/BENCHMARKS.md): embedding the train split 140 s, then about 10 s per evaluation
# (8: the 7 points and the original-model reference); beside other jobs (load 3.5-8) the same took 21-67 s per
# evaluation and 7 min 47 s to embed, so the upper end allows BUSY_FACTOR x. A transfer target added about a quarter
# of an evaluation in the earlier measurements (17 min 19 s for 5 points with one target against 14 min without),
# and embedding a target's test split (5,090 images) takes about 36 s (the demo audit's embedding).
SWEEP_TIMES_S = {"train_embed": 140.0, "evaluation": 10.0, "transfer_evaluation": 2.5, "target_embed": 36.0}
BUSY_FACTOR = 4.0


def sweep_estimate(n_epsilons: int, n_targets: int = 0) -> str:
    """An honest time estimate of a sweep on a 2-core CPU, from the measured times above: from everything cached
    on a quiet machine to embedding the train split and each target's test split first beside other jobs."""
    t = SWEEP_TIMES_S
    evaluations = n_epsilons + 1  # and the original model
    low = evaluations * (t["evaluation"] + n_targets * t["transfer_evaluation"])
    high = BUSY_FACTOR * (low + t["train_embed"] + n_targets * t["target_embed"])
    text = (f"Estimated time on a 2-core CPU for data the size of the synthetic demo (25,660 pairs): about "
            f"{max(low / 60, 1):.0f}-{high / 60:.0f} min. {evaluations} evaluations ({n_epsilons} ε points and the "
            f"original model) take about {t['evaluation']:.0f} s each on a quiet machine")
    text += f", plus about {t['transfer_evaluation']:.1f} s each per transfer target" if n_targets else ""
    text += f"; embedding the training split adds about {t['train_embed'] / 60:.1f} min"
    text += (f" and {'the' if n_targets == 1 else 'each'} target's test split about {t['target_embed']:.0f} s"
             if n_targets else "")
    return text + (", the first time only (the lower end: all embeddings cached); beside other jobs up to "
                   f"{BUSY_FACTOR:.0f}x as long (the upper end). Measured on a 2-core x86 CPU; larger datasets "
                   "take longer, a GPU less.")


RUN_NAMES = {"audit": "Audit", "sweep": "Epsilon sweep", "ladder": "Model ladder"}


def running_jobs(kind: str, source: str | None = None, model: str | None = None) -> list[jobs.Job]:
    """Queued or running jobs that will store a run of `kind` ("audit" or "sweep") for this dataset and model
    (None: any), newest first: jobs of that kind, and demo jobs whose audit or sweep part is not stored yet. So a
    browser tab opened while another tab's (or the command line's) job runs shows it as running."""
    out = []
    for job in jobs.list_jobs(limit=50):
        if not job.active or job.kind not in (kind, "demo", "ladder"):
            continue
        if job.kind == "ladder":
            if kind == "audit" and _ladder_pending(job.spec, source, model):
                out.append(job)
            continue
        info = spec_info(job.spec)
        if (source and info.get("source") != source) or (model and info.get("model") != model):
            continue
        if job.kind == "demo":
            try:
                part = getattr(spec_from_json(job.spec), kind, None)
            except RelinkError:
                continue
            if part is None or (store.get_run(part.run_id()) or {}).get("status") == "done":
                continue
        out.append(job)
    return out


def _ladder_pending(spec_json: str, source: str | None, model: str | None) -> bool:
    """Whether a ladder job will still store an audit for this dataset (and model, when given)."""
    try:
        spec = spec_from_json(spec_json)
    except RelinkError:
        return False
    if not isinstance(spec, LadderSpec) or (source and spec.source.name != source):
        return False
    return any((store.get_run(spec.audit(r).run_id()) or {}).get("status") != "done"
               for r in spec.rungs if not model or r == model)


def ladder_estimate(spec: LadderSpec | None = None) -> dict[str, Any]:
    """The ladder job's time estimate from what is cached now (backend.runs.ladder.ladder_estimate)."""
    return ladder.ladder_estimate(spec or LadderSpec())


def pending_text(kind: str, job: jobs.Job, source: str | None, model: str | None) -> str:
    """One line for a page whose run is still being computed: "Epsilon sweep running (40%) ..."."""
    what = RUN_NAMES.get(kind, kind)
    target = " for " + " on ".join(x for x in (model, source) if x) if (model or source) else ""
    via = (f" as part of the {'demo' if job.kind == 'demo' else 'model ladder'} job"
           if job.kind in ("demo", "ladder") and kind != job.kind else "")
    step = f": {job.message}" if job.message else ""
    return (f"{what} {job.status} ({job.fraction:.0%}){target}{via}{step}. Its results appear on this page as soon "
            "as they are stored.")


def _hms(seconds: float) -> str:
    return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"


def job_times(started: float | None, finished: float | None, fraction: float, now: float) -> dict[str, Any]:
    """When a job ran and, while it runs, an estimate of the time left: elapsed x (1 - f) / f, the pace so
    far carried forward (None until 2% is done, when the pace says nothing yet)."""
    if not started:
        return {"elapsed_s": None, "left_s": None, "text": "not started"}
    end = finished or now
    elapsed = max(0.0, end - started)
    left = None if finished or fraction < 0.02 else elapsed * (1 - fraction) / fraction
    text = f"started {time.strftime('%H:%M:%S', time.localtime(started))} · "
    text += (f"ended {time.strftime('%H:%M:%S', time.localtime(finished))} · took {_hms(elapsed)}" if finished else
             f"running {_hms(elapsed)}" + (f" · about {_hms(left)} left" if left is not None else " · estimating"))
    return {"elapsed_s": elapsed, "left_s": left, "text": text}


def provenance_table(limit: int = 200) -> pd.DataFrame:
    """The finished runs (newest first, at most `limit`) with their provenance, for Models and jobs: run, kind,
    model, dataset, code version (the commit's first 12 hex), data hash, started / finished (UTC), duration (s);
    "not recorded" where a run stored before provenance was kept has none (the export has the full text)."""
    out = []
    for rec in store.provenance_records()[:limit]:
        info, text = spec_info(rec["spec"]), provenance.display(rec["provenance"])
        row = {name: text[provenance.FIELD_NAMES[key]] for key, name in PROVENANCE_COLUMNS.items()}
        row = {k: "not recorded" if v.startswith("not recorded") else v for k, v in row.items()}
        row["code version"] = re.sub(r"\b([0-9a-f]{12})[0-9a-f]{28}\b", r"\1", row["code version"])
        row["code version"] = re.sub(r" \(demo snapshot made .*\)", " (snapshot)", row["code version"])
        out.append({"run": rec["run_id"], "kind": rec["kind"], "model": info.get("model", ""),
                    "dataset": info.get("source", ""), **row})
    return pd.DataFrame(out, columns=["run", "kind", "model", "dataset", *PROVENANCE_COLUMNS.values()])


PROVENANCE_COLUMNS = {"code_version": "code version", "data_hash": "data hash", "started": "started (UTC)",
                      "finished": "finished (UTC)", "duration_s": "duration (s)"}


def run_inputs(run_id: str | None) -> str:
    """What a run was computed from, in one line: its data hash (the pair table and image files) and size."""
    run = store.get_run(run_id) if run_id else None
    inputs = ((run or {}).get("summary") or {}).get("inputs") or {}
    if not inputs.get("data_hash"):
        return f"run {run_id}: inputs not recorded (computed before data hashes were kept)" if run else ""
    return (f"run {run_id}: computed from data {str(inputs['data_hash'])[:12]} "
            f"({int(inputs.get('n_pairs') or 0):,} pairs)")
