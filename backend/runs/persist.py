"""Turn what a job returned into store records (one finished run per spec).

Each persist function is `persist_<kind>(run_id, spec, result, device)`; they read the result objects
of backend.audit / backend.dp through their documented attributes (docs/INTERFACES.md) and tolerate
optional parts being absent.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from backend.runs import store
from backend.runs.cuts import paired_summary


def _get(obj: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        if isinstance(obj, dict) and name in obj:
            return obj[name]
        if hasattr(obj, name):
            return getattr(obj, name)
    return default


def persist_selftest(run_id: str, spec: Any, result: dict[str, Any], device: str) -> None:
    store.finish_run(run_id, summary=result, device=device)


def persist_embed(run_id: str, spec: Any, result: Any, device: str) -> None:
    """EmbeddingSet (.meta DataFrame, .path cache folder) -> one finished embed run."""
    path = _get(result, "path")
    meta = _get(result, "meta")
    n = 0 if meta is None else len(meta)  # a DataFrame has no truth value: never `meta or []`
    inputs = dict((_get(result, "info", default={}) or {}).get("inputs") or {})
    store.finish_run(run_id, summary={"n_pairs": n, "inputs": inputs}, artifacts={"embeddings": str(path) if path else ""},
                     device=device)


def persist_audit(run_id: str, spec: Any, result: Any, device: str) -> None:
    """AuditResult (.rows, .summary, .per_query, .embedding_path) -> one finished audit run."""
    artifacts = {"embeddings": str(_get(result, "embedding_path", default="") or "")}
    per_query = _get(result, "per_query")
    if isinstance(per_query, pd.DataFrame) and len(per_query):
        artifacts["per_query"] = store.save_per_query(run_id, per_query)
    store.upsert_run(run_id, "audit", spec.to_json(), "running")
    summary = dict(_get(result, "summary", default={}) or {})
    summary["counts"] = dict(_get(result, "counts", default={}) or {})
    summary["inputs"] = dict(_get(result, "inputs", default={}) or {})
    store.finish_run(run_id, summary=summary, artifacts=artifacts, device=device, metrics={"model": _get(result, "rows")})


METHODS = {"linear-probe": "linear", "linear": "linear", "zero-shot": "zero-shot"}


def _by_target(rows: pd.DataFrame | None, own: str, other: str) -> dict[str, pd.DataFrame]:
    """Split rows by their `target` column: 'in-domain' -> `own`, a transfer source -> f"{other}{source}"."""
    if rows is None or not len(rows):
        return {}
    if "target" not in rows.columns:
        return {own: rows}
    return {(own if t == "in-domain" else f"{other}{t}"): g.drop(columns=["target"])
            for t, g in rows.groupby("target", sort=False)}


def dp_records(result: Any, variant: str = "dp") -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    """(metrics, probe) store records of one DPResult: in-domain rows under `variant`, transfer rows under
    'transfer:<source>:<variant>'; probe methods normalised to 'linear' / 'zero-shot'; probes on the frozen
    encoder features (the reference) under 'frozen'."""
    metrics = _by_target(_get(result, "relink_rows", "rows"), variant, "transfer:")
    metrics = {k if k == variant else f"{k}:{variant}": v for k, v in metrics.items()}
    probe_rows = _get(result, "probe_rows")
    probe: dict[str, pd.DataFrame] = {}
    if isinstance(probe_rows, pd.DataFrame) and len(probe_rows):
        rows = probe_rows.assign(method=probe_rows["method"].map(lambda m: METHODS.get(m, m)))
        if "features" in rows.columns:
            frozen = rows[rows["features"] == "frozen"]
            rows = rows[rows["features"] != "frozen"]
            probe.update({f"frozen{'' if k == 'x' else ':' + k}": v for k, v in _by_target(frozen, "x", "").items()})
        for k, v in _by_target(rows, variant, "transfer:").items():
            probe[k if k == variant else f"{k}:{variant}"] = v
    return metrics, probe


def members_summary(result: Any) -> dict[str, Any]:
    """{"members": rows (backend.dp.members.MEMBER_COLUMNS, one per N), "members_groups": sizes} of a DPResult that
    measured members against non-members (kept in the run's summary); {} otherwise."""
    rows = _get(result, "members")
    if rows is None:
        return {}
    if isinstance(rows, pd.DataFrame):
        rows = rows.to_dict(orient="records")
    return {"members": list(rows), "members_groups": dict(_get(result, "members_groups", default={}) or {})}


def persist_dp(run_id: str, spec: Any, result: Any, device: str, started: float | None = None) -> None:
    """DPResult (relink rows, probe rows, privacy dict, transfer as `target`, per-query outcomes as the run's
    per_query artifact) -> one finished DP run. started: when its computation began (a sweep's point: see
    `_point_start`), else when the run began running."""
    metrics, probe = dp_records(result)
    store.upsert_run(run_id, "dp", spec.to_json(), "running")
    summary = dict(_get(result, "relink_summary", "summary", default={}) or {})
    summary["label"] = _get(result, "label", default="dp")
    summary.update(members_summary(result))
    summary.update(_inputs_summary(result))
    per_query = _get(result, "per_query")
    artifacts = ({"per_query": store.save_per_query(run_id, per_query)}
                 if isinstance(per_query, pd.DataFrame) and len(per_query) else None)
    store.finish_run(run_id, summary=summary, device=device, metrics=metrics, probe=probe, artifacts=artifacts,
                     privacy=dict(_get(result, "privacy", default={}) or {}), started=started)


def _inputs_summary(result: Any) -> dict[str, Any]:
    """{"inputs": {"data_hash", "n_pairs", "weights_hash"}} of a DPResult that recorded the data or the weights it
    was computed from, else {}."""
    inputs = dict(_get(result, "inputs", default={}) or {})
    return {"inputs": inputs} if inputs.get("data_hash") or inputs.get("weights_hash") else {}


def _stored_inputs(run_ids: list[str]) -> dict[str, Any]:
    """{"inputs": ...} of the first of `run_ids` whose summary records its data (a sweep's points share theirs)."""
    for rid in run_ids:
        inputs = ((store.get_run(rid) or {}).get("summary") or {}).get("inputs") or {}
        if inputs.get("data_hash") or inputs.get("weights_hash"):
            return {"inputs": dict(inputs)}
    return {}


def _point_start(sweep_id: str) -> float | None:
    """When the next point of a running sweep began computing: the end of its latest point stored since the sweep
    started, else the sweep's start (its points are computed one after another in one job); None when the sweep's
    start is not recorded."""
    points = store.load_sweep_points(sweep_id)["run_id"].tolist()
    times = store.run_times([sweep_id, *points])
    marks = [*times.loc[times["run_id"] == sweep_id, "started"], *times.loc[times["run_id"] != sweep_id, "finished"]]
    own = times.loc[times["run_id"] == sweep_id, "started"].dropna()
    if not len(own):
        return None
    return max(float(t) for t in marks if pd.notna(t))


def persist_sweep(run_id: str, spec: Any, results: list[Any], device: str) -> None:
    """Every DP point of a sweep becomes its own DP run; the sweep run lists them in grid order and keeps
    the 'original model' reference (the model's own heads, evaluated the same way) as its own rows."""
    points, metrics, probe, own = [], {}, {}, {}
    for result in results:
        if _get(result, "label") == "original":
            metrics, probe = dp_records(result, variant="original")
            own = {**members_summary(result), **_inputs_summary(result)}
            continue
        point_spec = _get(result, "spec")
        point_id = point_spec.run_id()
        # a recomputed sweep (its data changed) renews its points; stored together, they share the sweep's start
        persist_dp(point_id, point_spec, result, device, started=_point_start(run_id))
        points.append((point_spec.epsilon, point_id))
    order = {e: i for i, e in enumerate(spec.epsilons)}
    points.sort(key=lambda p: order.get(p[0], len(order)))
    paired = paired_summary(points, spec.to_json())  # the points are stored: their cuts with paired CIs, once
    store.finish_run(run_id, summary={"n_points": len(points), **own, **paired}, device=device, sweep_points=points,
                     metrics=metrics, probe=probe)


def persist_sweep_part(run_id: str, spec: Any, result: Any, device: str) -> None:
    """Store one result of a sweep that is still running, as soon as it is computed: the 'original model'
    reference as the sweep run's own rows, a DP point as its own finished DP run listed at its grid position.
    The sweep run stays 'running' until `finish_sweep`."""
    if _get(result, "label") == "original":
        metrics, probe = dp_records(result, variant="original")
        store.add_parts(run_id, metrics=metrics, probe=probe)
        return
    point_spec = _get(result, "spec")
    point_id = point_spec.run_id()
    persist_dp(point_id, point_spec, result, device, started=_point_start(run_id))
    order = {e: i for i, e in enumerate(spec.epsilons)}
    store.add_parts(run_id, sweep_points=[(order.get(point_spec.epsilon, len(order)), point_spec.epsilon, point_id)])


def stored_sweep_parts(run_id: str) -> tuple[bool, set[str]]:
    """(whether the 'original' reference is stored, the run ids of the finished DP points listed) of a sweep
    that has not finished: what an interrupted attempt stored, which a resumed one need not compute again."""
    run = store.get_run(run_id)
    if run is None or run.get("status") == "done":
        return False, set()
    original = bool(len(store.load_metrics(run_id).query("variant == 'original'")))
    listed = store.load_sweep_points(run_id)["run_id"].tolist()
    return original, {p for p in listed if (store.get_run(p) or {}).get("status") == "done"}


def finish_sweep(run_id: str, spec: Any, device: str) -> None:
    """Mark a sweep whose parts were stored by `persist_sweep_part` as finished (its rows and points stay)."""
    points = store.load_sweep_points(run_id)
    paired = paired_summary(list(zip(points["epsilon"], points["run_id"], strict=True)), spec.to_json())
    store.finish_run(run_id, summary={"n_points": len(points), **_stored_inputs(points["run_id"].tolist()), **paired},
                     device=device, keep_parts=True)


def probe_records(rows: pd.DataFrame | None) -> dict[str, pd.DataFrame]:
    """Probe rows of a model's own embeddings (backend.dp.model_probe) -> store records: the in-domain rows on the
    projected embeddings under 'model' (methods 'linear' / 'zero-shot'), the frozen-feature linear probe under
    'frozen'."""
    if rows is None or not len(rows):
        return {}
    rows = rows[rows["target"] == "in-domain"] if "target" in rows.columns else rows
    rows = rows.assign(method=rows["method"].map(lambda m: METHODS.get(m, m)))
    if "features" not in rows.columns:
        return {"model": rows}
    return {k: v for k, v in (("model", rows[rows["features"] == "projected"]),
                              ("frozen", rows[rows["features"] == "frozen"])) if len(v)}


def persist_probe(run_id: str, spec: Any, result: pd.DataFrame, device: str) -> None:
    """The probe rows of one model (ProbeSpec) -> one finished probe run; its summary keeps the macro AUROCs."""
    probe = probe_records(result)
    summary: dict[str, Any] = {}
    own = probe.get("model")
    if own is not None:
        for method, name in (("linear", "linear_probe"), ("zero-shot", "zero_shot")):
            macro = own[(own["method"] == method) & (own["label"] == "macro")]
            if len(macro):
                summary[name] = {k: float(macro[k].iloc[0]) for k in ("auroc", "ci_low", "ci_high")}
    store.upsert_run(run_id, "probe", spec.to_json(), "running")
    store.finish_run(run_id, summary=summary, device=device, probe=probe)


def persist_ladder(run_id: str, spec: Any, result: dict[str, Any], device: str) -> None:
    store.finish_run(run_id, summary=result, device=device)


def persist_demo(run_id: str, spec: Any, result: dict[str, Any], device: str) -> None:
    store.finish_run(run_id, summary={k: v for k, v in result.items() if v is not None}, device=device)

