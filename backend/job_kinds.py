"""The job-kind registry: what a worker runs for each kind of spec, resolved lazily by name.

A kind's target ("module:function", called as target(spec, progress)) is imported only inside the
worker, so a module that is missing or broken fails that one job with a clear message and never the
dashboard. A kind's `persist` turns the target's result into store records (backend/results.py).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from backend import specs
from backend.errors import JobError, SpecError
from backend.progress import ProgressLike, null_progress
from backend.specs import AuditSpec, EmbedSpec, SourceSpec, SpecMixin, SweepSpec


@dataclass(frozen=True)
class SelfTestSpec(SpecMixin):
    """A trivial job that counts to `steps` with a pause per step; fails at step `fail_at` when >= 0.
    Used by the tests and as a smoke check of the job machinery (no torch, no data)."""

    steps: int = 5
    delay_s: float = 0.1
    fail_at: int = -1
    tag: str = ""


@dataclass(frozen=True)
class DemoSpec(SpecMixin):
    """The one-button demo: prepare the demo model, audit its test split, then (when DP is available)
    a small epsilon sweep. Each part is stored as its own run so the pages find it."""

    audit: AuditSpec = field(default_factory=AuditSpec)
    sweep: SweepSpec | None = field(default_factory=lambda: SweepSpec(epsilons=(1.0, 8.0, math.inf)))


@dataclass(frozen=True)
class JobKind:
    name: str
    spec_type: type
    target: str  # "module:function", imported in the worker only
    persist: str  # "module:function" (run_id, spec, result, device) -> None
    description: str
    uses_torch: bool = True

    def resolve(self) -> Callable[..., Any]:
        return _resolve(self.target, self.name)

    def resolve_persist(self) -> Callable[..., Any]:
        return _resolve(self.persist, self.name)


_KINDS: dict[str, JobKind] = {}


def _resolve(dotted: str, kind: str) -> Callable[..., Any]:
    module_name, _, attr = dotted.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise JobError(f"Job kind {kind!r} needs {module_name} ({exc.name} is not installed or not written "
                       "yet). Update the code or pick another job.") from exc
    if not hasattr(module, attr):
        raise JobError(f"Job kind {kind!r} needs {dotted}, which does not exist in this version of the code.")
    return getattr(module, attr)


def register_job_kind(kind: JobKind) -> None:
    _KINDS[kind.name] = kind


def get_job_kind(name: str) -> JobKind:
    if name not in _KINDS:
        raise JobError(f"Unknown job kind {name!r}; known kinds: {', '.join(_KINDS)}.")
    return _KINDS[name]


def list_job_kinds() -> list[JobKind]:
    return list(_KINDS.values())


def kind_for_spec(spec: Any) -> JobKind:
    for kind in _KINDS.values():
        if type(spec) is kind.spec_type:
            return kind
    raise JobError(f"No job kind runs a {type(spec).__name__}; known kinds: {', '.join(_KINDS)}.")


# ---------------------------------------------------------------- spec JSON round trip

_SPEC_TYPES: dict[str, type] = {
    cls.__name__: cls for cls in (specs.SourceSpec, specs.EmbedSpec, specs.AuditSpec, specs.DPSpec, specs.SweepSpec,
                                  SelfTestSpec, DemoSpec)
}


def spec_from_json(text: str) -> Any:
    """Rebuild a spec from its canonical JSON (the inverse of spec.to_json())."""
    return _decode(json.loads(text))


def _decode(data: Any) -> Any:
    if not isinstance(data, dict) or "kind" not in data:
        return data
    cls = _SPEC_TYPES.get(data["kind"])
    if cls is None:
        raise SpecError(f"Unknown spec kind {data['kind']!r} in a stored job; known: {', '.join(_SPEC_TYPES)}.")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _coerce(data[f.name], hints.get(f.name))
    return cls(**kwargs)


def _coerce(value: Any, hint: Any) -> Any:
    if isinstance(value, dict) and "kind" in value:
        return _decode(value)
    if isinstance(value, str) and value in ("inf", "-inf", "nan") and "float" in str(hint):
        return float(value)
    if isinstance(value, list):
        inner = typing.get_args(hint)
        item_hint = inner[0] if inner else None
        return tuple(_coerce(v, item_hint) for v in value)
    return value


# ---------------------------------------------------------------- built-in targets


def run_selftest(spec: SelfTestSpec, progress: ProgressLike | None = None) -> dict[str, Any]:
    """Count to spec.steps, calling progress after each step (the cancel check rides on it)."""
    progress = progress or null_progress
    for step in range(spec.steps):
        if step == spec.fail_at:
            raise ValueError(f"selftest failed on purpose at step {step}")
        time.sleep(spec.delay_s)
        progress(step + 1, spec.steps, f"step {step + 1}/{spec.steps}")
    return {"steps": spec.steps, "tag": spec.tag}


def default_demo_spec(n_patients: int | None = None) -> DemoSpec:
    """The dashboard's demo: the synthetic source (sized by `n_patients`, else $CXR_DEMO_N_PATIENTS, else the
    source's default) and the demo model; a three-point sweep (epsilon 1, 8, inf)."""
    n_patients = n_patients or int(os.environ.get("CXR_DEMO_N_PATIENTS", "0") or 0)
    options = {"n_patients": n_patients} if n_patients else {}
    audit = AuditSpec(embed=EmbedSpec(source=SourceSpec(name="synthetic", options=options), model="demo"))
    base = specs.DPSpec(source=audit.embed.source, model="demo", audit=audit)
    return DemoSpec(audit=audit, sweep=SweepSpec(base=base, epsilons=(1.0, 8.0, math.inf)))


for _kind in (
    JobKind("selftest", SelfTestSpec, "backend.job_kinds:run_selftest", "backend.results:persist_selftest",
            "count with progress (checks the job machinery)", uses_torch=False),
    JobKind("embed", EmbedSpec, "backend.embed:embed_split", "backend.results:persist_embed",
            "embed one split (images and reports); resumable"),
    JobKind("audit", AuditSpec, "backend.audit:run_audit", "backend.results:persist_audit",
            "embed and measure re-linkage"),
    JobKind("dp", specs.DPSpec, "backend.dp:run_dp", "backend.results:persist_dp",
            "train projection heads (DP or not), audit and probe"),
    JobKind("sweep", SweepSpec, "backend.dp:run_sweep", "backend.results:persist_sweep",
            "one DP run per epsilon"),
    JobKind("demo", DemoSpec, "backend.results:run_demo", "backend.results:persist_demo",
            "prepare the demo model, audit it, and sweep epsilon"),
):
    register_job_kind(_kind)
