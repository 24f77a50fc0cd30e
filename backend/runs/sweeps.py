"""The epsilon sweep as a job that resumes: every part is stored as soon as it is computed (the original model's
reference, then each epsilon point as its own DP run), so the pages show the points while the sweep runs and a
sweep stopped midway (cancelled, killed, a machine restarted) computes only what it had not stored when it is
submitted again. The demo job runs its sweep the same way (backend/runs/demo.py).

The heavy part (backend.dp.run_sweep) is resolved by name when the job runs: importing this module imports no
torch.
"""

from __future__ import annotations

import logging
from typing import Any

from backend.errors import JobError
from backend.progress import ProgressLike, null_progress
from backend.registry import resolve
from backend.runs import store
from backend.runs.inputs import changeable, run_inputs, same_inputs
from backend.runs.persist import finish_sweep, persist_sweep_part, stored_sweep_parts
from backend.runs.worker import device_label
from backend.specs import SweepSpec

log = logging.getLogger(__name__)


def resume_sweep(spec: SweepSpec, progress: ProgressLike, *, device: str, prep_share: float = 0.4) -> None:
    """Compute what the sweep run has not stored yet and store each part as it comes (backend.runs.persist);
    the run stays 'running' until finish_sweep. Stored points computed from other data or weights than the spec
    reads now (a file edited, a checkpoint overwritten after the sweep stopped) are computed again, all of them."""
    sweep_id = spec.run_id()
    has_original, stored = stored_sweep_parts(sweep_id)
    if stored and changeable(spec):
        now = run_inputs(spec) or {}
        if not all(same_inputs(((store.get_run(p) or {}).get("summary") or {}).get("inputs"), now) for p in stored):
            log.info("sweep %s: its data or weights changed since it stopped; computing every point again", sweep_id)
            has_original, stored = False, set()
    if stored or has_original:
        log.info("sweep %s resumes: %d point(s)%s stored", sweep_id, len(stored),
                 " and the original model's reference" if has_original else "")
    store.upsert_run(sweep_id, "sweep", spec.to_json(), "running")
    run_sweep = resolve("backend.dp:run_sweep", "The sweep", JobError)
    run_sweep(spec, progress, include_original=not has_original, skip=stored, prep_share=prep_share,
              on_result=lambda result: persist_sweep_part(sweep_id, spec, result, device))


def run_sweep_job(spec: SweepSpec, progress: ProgressLike | None = None) -> dict[str, Any]:
    """The "sweep" job kind: resume_sweep, then finished by persist_resumed_sweep."""
    resume_sweep(spec, progress or null_progress, device=device_label())
    return {"sweep_run": spec.run_id()}


def persist_resumed_sweep(run_id: str, spec: SweepSpec, result: dict[str, Any], device: str) -> None:
    """Every part is stored already: mark the sweep run finished (its rows and points stay)."""
    finish_sweep(run_id, spec, device)
