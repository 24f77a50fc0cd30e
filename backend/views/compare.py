"""Runs side by side (pure pandas over the store): each run's own re-linkage rows and the name a reader sees
(run_labels), one point of a curve with its CIs, lift tables, and utility beside re-linkage per run
(model_comparison: the Re-linkage page, the Overview and the model ladder)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from backend.runs import store
from backend.views.catalog import run_models, spec_info, stored_runs
from backend.views.mitigation import RETRAINED

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
    runs = stored_runs()
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
    return rows.assign(model=rows["run_id"].map(run_models(run_ids)), run=rows["run_id"].map(labels))


def point(rows: pd.DataFrame, n: int | None, pool: str = "random", k: int = 1) -> dict[str, float] | None:
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
        runs = stored_runs(kind)
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
            p = point(rows, n) or {}
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
