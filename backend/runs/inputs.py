"""What a run was computed from, beyond its spec: the user's data files and the user's model checkpoints.

A spec that reads a file-based source (backend.sources.inputs: data the user can edit) or a `local:` checkpoint
(weights the user can overwrite in place) names inputs that can change under the same run id. A finished run
records them (summary["inputs"]: data_hash, n_pairs, weights, and the weights hash of the model it used,
weights_hash, which every run records whatever its model); a resubmission computes them again in the worker
and reuses the run only when every one is unchanged (backend/runs/worker.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from backend.models import LOCAL_PREFIX, local_weights_id
from backend.sources.inputs import data_inputs, file_sources


def local_models(spec: Any) -> list[str]:
    """The `local:` model names inside a spec (every `model` field of it and its nested specs), each once."""
    found: dict[str, None] = {}

    def visit(value: Any) -> None:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                item = getattr(value, f.name)
                if f.name == "model" and isinstance(item, str) and item.startswith(LOCAL_PREFIX):
                    found.setdefault(item)
                else:
                    visit(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)

    visit(spec)
    return list(found)


def changeable(spec: Any) -> bool:
    """Whether the spec's inputs can change under its run id (user data files or a local checkpoint)."""
    return bool(file_sources(spec) or local_models(spec))


def run_inputs(spec: Any) -> dict[str, Any] | None:
    """{"data_hash", "n_pairs"} of the spec's file-based sources and {"weights": {model: identity}} of its local
    checkpoints; None when it has neither (its run id says everything)."""
    inputs = dict(data_inputs(spec) or {})
    weights = {name: local_weights_id(name) for name in local_models(spec)}
    if weights:
        inputs["weights"] = weights
    return inputs or None


IDENTITY_KEYS = ("data_hash", "weights", "weights_hash")  # what identifies a run's inputs beyond its spec


def same_inputs(recorded: dict[str, Any] | None, now: dict[str, Any]) -> bool:
    """Whether a finished run's recorded inputs are the ones computed now: the data hash, every local checkpoint's
    identity and the weights hash (backend.models.digest) of the model it used, each where `now` knows it."""
    recorded = recorded or {}
    return all(recorded.get(key) == now.get(key) for key in IDENTITY_KEYS if key in now)
