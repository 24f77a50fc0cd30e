"""What is registered and what is stored, for the selectors and the Data and Models pages: the sources and models
(the torch-free registries), and the stored runs with the source and model their spec names (pure pandas over the
store; no Streamlit, no SQL, no torch).

Finished runs never change, so everything keyed by a finished run id is safe to cache in the UI.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from backend import models
from backend.errors import RelinkError
from backend.runs import store
from backend.sources import list_sources

DEFAULT_SOURCE = "synthetic"  # first in the dataset selector: generated here, no patient data


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


def stored_runs(kind: str | None = None, status: str = "done") -> pd.DataFrame:
    """Runs (finished ones by default) with source and model columns, newest first."""
    runs = store.list_runs(kind=kind, status=status)
    info = pd.DataFrame([spec_info(s) for s in runs["spec"]], index=runs.index)
    return pd.concat([runs, info], axis=1) if len(runs) else runs.assign(source=[], model=[])


def latest(kind: str, source: str | None = None, model: str | None = None) -> str | None:
    """The newest finished run of a kind; for sweeps, a sweep still running that has stored points comes first
    (its points appear on the pages as soon as each is stored)."""
    runs = stored_runs(kind)
    if kind == "sweep":
        running = stored_runs(kind, status="running")
        if len(running):
            running = running[[len(store.load_sweep_points(r)) > 0 for r in running["run_id"]]]
            runs = pd.concat([running, runs], ignore_index=True) if len(runs) else running
    if source and len(runs):
        runs = runs[runs["source"] == source]
    if model and len(runs):
        runs = runs[runs["model"] == model]
    return str(runs["run_id"].iloc[0]) if len(runs) else None


def data_identity(run_id: str) -> dict[str, Any]:
    """What a run was computed from, to pair only runs of the same data: the source spec (name, folder, options,
    section policy), the data hash, the local weights' identity and the weights hash of the model it used (when it
    recorded them), and whether it was evaluated on transfer targets too (their data then enters its hash)."""
    run = store.get_run(run_id) or {}
    return row_identity(run.get("spec"), run.get("summary"))


def row_identity(spec_text: str | None, summary: dict[str, Any] | str | None) -> dict[str, Any]:
    """data_identity of a run from its stored spec and summary (a row of stored_runs: its summary as JSON text)."""
    try:
        spec = json.loads(spec_text or "{}")
        summary = json.loads(summary) if isinstance(summary, str) else summary
    except json.JSONDecodeError:
        spec, summary = {}, None
    node = spec.get("base", spec)
    source = node.get("source") or (node.get("embed") or {}).get("source") or {}
    inputs = (summary or {}).get("inputs") or {}
    return {"source": {k: source.get(k) for k in ("name", "root", "options", "section_policy")},
            "data_hash": inputs.get("data_hash"), "weights": inputs.get("weights"),
            "weights_hash": inputs.get("weights_hash"), "transfer": bool(node.get("transfer"))}


def same_data(a: dict[str, Any], b: dict[str, Any], *, weights: bool = True) -> bool:
    """Whether two data_identity values name the same data (and, with `weights`, the same weights: local
    checkpoints' identity and the weights hash): the same source spec always; the same data hash and weights where
    both runs recorded them (a sweep with transfer
    targets hashes their data too, so its hash is compared with nothing)."""
    if a["source"] != b["source"]:
        return False
    if a["data_hash"] and b["data_hash"] and not (a["transfer"] or b["transfer"]) and a["data_hash"] != b["data_hash"]:
        return False
    if weights and a.get("weights_hash") and b.get("weights_hash") and a["weights_hash"] != b["weights_hash"]:
        return False
    return not (weights and a["weights"] and b["weights"] and a["weights"] != b["weights"])


def describe_data(identity: dict[str, Any]) -> str:
    """A short text of what data a run read, for the note that two runs differ."""
    src = identity["source"]
    parts = [str(src.get("name") or "?")]
    if src.get("root"):
        parts.append(f"folder {src['root']}")
    if src.get("options"):
        parts.append(", ".join(f"{k}={v}" for k, v in sorted(src["options"].items())))
    if identity["data_hash"]:
        parts.append(f"data {identity['data_hash']}")
    return " · ".join(parts)


def paired_sweep(audit_id: str, model: str | None) -> tuple[str | None, str | None]:
    """The newest sweep of `model` computed from the same data as audit `audit_id` (same_data), and a note when
    the newest sweep of that source and model was computed from other data (it is then not shown beside it)."""
    identity = data_identity(audit_id)
    newest = latest("sweep", identity["source"]["name"], model)
    if newest is None or same_data(identity, data_identity(newest)):
        return newest, None
    runs = stored_runs("sweep")
    runs = runs[(runs["source"] == identity["source"]["name"]) & (runs["model"] == model)] if len(runs) else runs
    match = next((str(r.run_id) for r in runs.itertuples() if same_data(identity, row_identity(r.spec, r.summary))),
                 None) if len(runs) else None
    note = (f"The newest epsilon sweep ({newest}) was computed from other data ({describe_data(data_identity(newest))}) "
            f"than this audit ({describe_data(identity)}); "
            + (f"shown beside it: the newest sweep on the same data ({match})." if match else
               "no sweep on the same data is stored, so no mitigation is shown beside this audit."))
    return match, note


def audit_runs(source: str | None = None) -> pd.DataFrame:
    """The newest finished audit per model (for overlays and model comparisons), all of one data set: that of the
    newest audit of `source` (same_data, the models' weights aside), so two folders or option sets of one source
    are never compared as if they were one."""
    runs = stored_runs("audit")
    if source and len(runs):
        runs = runs[runs["source"] == source]
        if len(runs):
            reference = row_identity(runs["spec"].iloc[0], runs["summary"].iloc[0])
            runs = runs[[same_data(reference, row_identity(r.spec, r.summary), weights=False)
                         for r in runs.itertuples()]]
    return runs.drop_duplicates("model") if len(runs) else runs


def relink_rows(run_ids: list[str], variant: str | None = None) -> pd.DataFrame:
    """Tidy re-linkage rows of some runs, with the model name as `model`."""
    rows = store.load_metrics(run_ids)
    if variant is not None and len(rows):
        rows = rows[rows["variant"] == variant]
    return rows.assign(model=rows["run_id"].map(run_models(run_ids)))


def run_models(run_ids: list[str]) -> dict[str, str]:
    """Run id -> the model its stored spec names (the run id where it names none)."""
    return {r: spec_info((store.get_run(r) or {}).get("spec", "{}")).get("model", r) for r in run_ids}


def source_names() -> list[str]:
    """The dataset selector's names: every registered source (DEFAULT_SOURCE first), then the sources known only
    from stored runs."""
    names = [s.name for s in list_sources()]
    done = _runs_or_empty()
    extra = sorted(set(done["source"]) - set(names)) if len(done) else []
    return sorted(set(names) | {DEFAULT_SOURCE}, key=lambda n: (n != DEFAULT_SOURCE, n)) + extra


def model_names() -> list[str]:
    """The model selector's names: every registered model, then the models known only from stored runs."""
    done = _runs_or_empty()
    stored = sorted(set(done["model"]) - set(known_models())) if len(done) else []
    return list(known_models()) + [m for m in stored if m]


def _runs_or_empty() -> pd.DataFrame:
    """Finished runs for the selectors; none when the store cannot be read right now (the page says why)."""
    try:
        return stored_runs()
    except RelinkError:
        return pd.DataFrame()
