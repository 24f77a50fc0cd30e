"""The job-kind registry: what a worker runs for each kind of spec, and how its result is stored.

A kind names its target ("module:function", called as target(spec, progress)) and its persist function
("module:function", called as persist(run_id, spec, result, device); backend/runs/persist.py) as strings,
imported only inside the worker, so a module that is missing or broken fails that one job with a clear
message and never the dashboard.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.errors import JobError
from backend.progress import ProgressLike, null_progress
from backend.registry import Registry, resolve
from backend.specs import AuditSpec, DemoSpec, DPSpec, EmbedSpec, LadderSpec, ProbeSpec, SelfTestSpec, SweepSpec


@dataclass(frozen=True)
class JobKind:
    name: str
    spec_type: type
    target: str  # "module:function", imported in the worker only
    persist: str  # "module:function" (run_id, spec, result, device) -> None
    description: str
    uses_torch: bool = True

    def resolve(self) -> Callable[..., Any]:
        return resolve(self.target, f"Job kind {self.name!r}", JobError)

    def resolve_persist(self) -> Callable[..., Any]:
        return resolve(self.persist, f"Job kind {self.name!r}", JobError)


JOB_KINDS: Registry[JobKind] = Registry("job kind", JobError)
register_job_kind = JOB_KINDS.register
get_job_kind = JOB_KINDS.get
list_job_kinds = JOB_KINDS.list


def kind_for_spec(spec: Any) -> JobKind:
    for kind in JOB_KINDS.list():
        if type(spec) is kind.spec_type:
            return kind
    raise JobError(f"No job kind runs a {type(spec).__name__}; known kinds: {', '.join(JOB_KINDS.names())}.")


def run_selftest(spec: SelfTestSpec, progress: ProgressLike | None = None) -> dict[str, Any]:
    """Count to spec.steps, calling progress after each step (the cancel check rides on it)."""
    progress = progress or null_progress
    for step in range(spec.steps):
        if step == spec.fail_at:
            raise ValueError(f"selftest failed on purpose at step {step}")
        time.sleep(spec.delay_s)
        progress(step + 1, spec.steps, f"step {step + 1}/{spec.steps}")
    return {"steps": spec.steps, "tag": spec.tag}


def run_selftest_gpu(spec: SelfTestSpec, progress: ProgressLike | None = None) -> dict[str, Any]:
    """run_selftest in a GPU slot (a kind that uses torch, so the one-job-per-GPU queue applies), recording
    the CUDA_VISIBLE_DEVICES its worker got; it imports no torch itself (tests/test_jobs.py runs it on CPUs).
    With $CXR_SELFTEST_GATE (a folder) set, it first holds its GPU until the file <folder>/<spec.tag> exists."""
    progress = progress or null_progress
    gate = os.environ.get("CXR_SELFTEST_GATE")
    while gate and not Path(gate, spec.tag).exists():
        progress(0, spec.steps, "waiting at the gate")  # the cancel check rides on it
        time.sleep(0.05)
    return {**run_selftest(spec, progress), "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "")}


for _kind in (
    JobKind("selftest", SelfTestSpec, "backend.runs.kinds:run_selftest", "backend.runs.persist:persist_selftest",
            "count with progress (checks the job machinery)", uses_torch=False),
    JobKind("selftest-gpu", SelfTestSpec, "backend.runs.kinds:run_selftest_gpu", "backend.runs.persist:persist_selftest",
            "count with progress in a GPU slot (checks the one-job-per-GPU queue)"),
    JobKind("embed", EmbedSpec, "backend.embed.compute:embed_split", "backend.runs.persist:persist_embed",
            "embed one split (images and reports); resumable"),
    JobKind("audit", AuditSpec, "backend.audit:run_audit", "backend.runs.persist:persist_audit",
            "embed and measure re-linkage"),
    JobKind("dp", DPSpec, "backend.dp:run_dp", "backend.runs.persist:persist_dp",
            "train projection heads (DP or not), audit and probe"),
    JobKind("sweep", SweepSpec, "backend.runs.sweeps:run_sweep_job", "backend.runs.sweeps:persist_resumed_sweep",
            "one DP run per epsilon, each stored when done; a stopped sweep resumes"),
    JobKind("demo", DemoSpec, "backend.runs.demo:run_demo", "backend.runs.persist:persist_demo",
            "prepare the demo model, audit it, and sweep epsilon"),
    JobKind("probe", ProbeSpec, "backend.runs.ladder:run_probe", "backend.runs.persist:persist_probe",
            "linear-probe and zero-shot AUROC of a model's own embeddings"),
    JobKind("ladder", LadderSpec, "backend.runs.ladder:run_ladder", "backend.runs.persist:persist_ladder",
            "train each rung of the model ladder (cached), audit and probe it"),
):
    register_job_kind(_kind)
