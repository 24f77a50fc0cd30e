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


def audit_runs(source: str | None = None) -> pd.DataFrame:
    """The newest finished audit per model (for overlays)."""
    runs = stored_runs("audit")
    if source and len(runs):
        runs = runs[runs["source"] == source]
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
