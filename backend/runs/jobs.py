"""Submit, watch and cancel jobs; each runs in a detached worker process (`python -m backend worker JOB_ID`,
backend/runs/worker.py).

submit(spec) returns the finished run's job when the same spec already finished (nothing is recomputed),
the running job when it is in flight, and otherwise starts a worker. A spec whose inputs can change under
its run id (a file-based source: csv, openi, mimic-cxr, chexpert-plus; or a `local:` checkpoint the user can
overwrite) always gets a worker: it computes the inputs again (backend.runs.inputs: the data hash of the pair
table and image files, the weights' identity) and compares them with those the finished run records;
unchanged, the job ends at once and the run is reused, changed, the run is recomputed. The hash is computed in the worker, not at submit: loading a large source (and checking its
images) would block the dashboard for seconds to minutes, and the worker does it detached. A cancel request
is a flag in the store that the worker's progress callback checks, escalated to SIGTERM after a grace period.
A worker that died (pid gone or heartbeat stale) is shown as "stale"; what it finished (embedding
chunks on disk) is kept and a resubmission resumes from there.

A job whose kind uses torch, on a machine with GPUs, waits for a GPU of its own (backend/runs/gpu_queue.py):
submit and every refresh() start the queued jobs that a free GPU lets start.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from backend import settings
from backend.public_bank import check_banks
from backend.runs import gpu_queue, store
from backend.runs.inputs import changeable
from backend.runs.job_records import ACTIVE, GPU_QUEUE, Job, get_job, record_end, submit_lock
from backend.runs.kinds import get_job_kind, kind_for_spec
from backend.runs.worker import import_pending

STALE_AFTER_S = 120.0  # a live pid with a silent heartbeat (hung, or starved on a busy machine)
START_TIMEOUT_S = 60.0

# What the dashboard and the command line call (Job and get_job live with the job's record).
__all__ = ["Job", "cancel", "get_job", "list_jobs", "pid_alive", "read_log", "refresh", "submit"]


# ---------------------------------------------------------------- submit / query


def submit(spec: Any, *, kind: str | None = None) -> Job:
    """Run `spec` in a detached worker unless it already finished or is running (see module doc)."""
    job_kind = get_job_kind(kind) if kind else kind_for_spec(spec)
    check_banks(spec)  # a certified sweep without its public bank fails here, in seconds, saying what to do
    run_id = spec.run_id()
    with submit_lock():
        refresh()
        run = store.get_run(run_id)
        if run and run["status"] == "done" and not changeable(spec):
            return _finished_job(run)
        active = store.list_jobs(run_id=run_id, statuses=ACTIVE)
        if len(active):
            return Job.from_row(active.iloc[0].to_dict())
        job_id = f"{run_id}-{uuid.uuid4().hex[:6]}"
        log_path = settings.cache_subdir("jobs") / f"{job_id}.log"
        queue = job_kind.uses_torch and bool(gpu_queue.job_devices())
        store.upsert_run(run_id, job_kind.name, spec.to_json(), "queued")
        store.insert_job(job_id, {"run_id": run_id, "kind": job_kind.name, "spec": spec.to_json(), "status": "queued",
                                  "done": 0, "total": 0, "created": time.time(), "log_path": str(log_path),
                                  "message": "queued: waiting for a free GPU" if queue else "starting worker",
                                  "device": GPU_QUEUE if queue else "", "cancel_requested": False})
        if queue:  # a free GPU starts it now, else it waits in line
            gpu_queue.start_queued()
            return get_job(job_id)
    gpu_queue.spawn_worker(job_id, log_path)
    return get_job(job_id)


def _finished_job(run: dict[str, Any]) -> Job:
    jobs = store.list_jobs(run_id=run["run_id"], statuses=("done",))
    if len(jobs):
        return Job.from_row(jobs.iloc[0].to_dict())
    return Job(job_id="", run_id=run["run_id"], kind=run["kind"], status="done", done=1, total=1,
               message="finished earlier", finished=run.get("finished"), device=run.get("device") or "")


def list_jobs(limit: int = 50) -> list[Job]:
    """Recent jobs, newest first, after marking dead workers stale."""
    refresh()
    return [Job.from_row(r) for r in store.list_jobs(limit=limit).to_dict("records")]


def read_log(job: Job, max_chars: int = 20_000) -> str:
    path = Path(job.log_path) if job.log_path else None
    if not path or not path.is_file():
        return ""
    text = path.read_text(errors="replace")
    return text[-max_chars:]


def pid_alive(pid: int | None) -> bool:
    """True when the process exists and is not a zombie."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return True


def refresh(now: float | None = None) -> list[str]:
    """Mark active jobs whose worker is gone (or silent for STALE_AFTER_S) as stale, then start queued jobs on
    the GPUs that are free; returns the ids marked stale. A process that only reads the cache
    (settings.reading_only: `python -m backend jobs` on a read-only copy) changes nothing."""
    if settings.is_reading_only():
        return []
    import_pending()  # first: a worker that kept its result in a file and exited is done, not stale
    now = now or time.time()
    stale, waiting = [], False
    for row in store.list_jobs(statuses=ACTIVE, limit=1_000_000).to_dict("records"):
        job = Job.from_row(row)
        if job.waiting:  # no worker yet: it waits for a GPU, however long
            waiting = True
            continue
        beat = job.heartbeat or job.created or now
        limit = STALE_AFTER_S if job.heartbeat else START_TIMEOUT_S
        if (job.pid and not pid_alive(job.pid)) or now - beat > limit:
            why = "its worker process is gone" if job.pid and not pid_alive(job.pid) else "no heartbeat"
            record_end(job.job_id, job.run_id, "stale",
                       f"stale: {why}; finished chunks are kept, submit again to resume", "")
            stale.append(job.job_id)
    if waiting:  # a GPU may have freed up (a job ended, or its worker died just now)
        gpu_queue.start_queued()
    return stale


# ---------------------------------------------------------------- cancel


def cancel(job_id: str, *, grace_s: float = 5.0, wait: bool = False) -> Job:
    """Ask a job to stop (checked at its next progress call); terminate it after `grace_s` if it has not."""
    job = get_job(job_id)
    if job.waiting:
        with submit_lock():  # not started meanwhile by another process
            if get_job(job_id).waiting:
                record_end(job_id, job.run_id, "cancelled", "cancelled while waiting for a GPU (never started)", "")
                return get_job(job_id)
        job = get_job(job_id)
    if not job.active:
        return job
    store.update_job(job_id, cancel_requested=True, message="cancel requested")
    if wait:
        _escalate(job_id, grace_s)
    else:
        threading.Thread(target=_escalate, args=(job_id, grace_s), daemon=True).start()
    return get_job(job_id)


def _escalate(job_id: str, grace_s: float) -> None:
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not get_job(job_id).active:
            return
        time.sleep(0.2)
    job = get_job(job_id)
    if not job.active:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if job.pid and pid_alive(job.pid):
            try:
                os.killpg(job.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            time.sleep(1.0)
    if get_job(job_id).active:
        record_end(job_id, job.run_id, "cancelled", "cancelled (terminated)", "")

