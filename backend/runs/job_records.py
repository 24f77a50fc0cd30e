"""One job's record: the Job row of the store, reading it, ending it, and the lock under which jobs are claimed.

Shared by the job API (backend/runs/jobs.py), the one-job-per-GPU queue (backend/runs/gpu_queue.py) and the
worker (backend/runs/worker.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

from backend import settings
from backend.errors import JobError
from backend.runs import store

ACTIVE = ("queued", "running")
GPU_QUEUE = "waiting for a GPU"  # the device of a job that waits for a free GPU (status "queued", no worker yet)
_SUBMIT_LOCK = threading.RLock()
_lock_depth = 0  # how deep this process holds submit_lock (only the outermost takes the file lock)


@dataclass
class Job:
    """One launch of a worker (or, for a run finished earlier, the record that finished it)."""

    job_id: str
    run_id: str
    kind: str
    status: str
    done: int = 0
    total: int = 0
    message: str = ""
    pid: int | None = None
    created: float | None = None
    started: float | None = None
    heartbeat: float | None = None
    finished: float | None = None
    log_path: str = ""
    traceback: str = ""
    device: str = ""
    spec: str = ""
    cancel_requested: bool = False

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else (1.0 if self.status == "done" else 0.0)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def waiting(self) -> bool:
        """Queued for a free GPU: no worker started yet."""
        return self.status == "queued" and self.device == GPU_QUEUE

    @property
    def gpu(self) -> str:
        """The GPU this job holds ("" when it is not pinned to one): the CUDA_VISIBLE_DEVICES value of its worker."""
        head = self.device.split(" ", 1)[0]
        return head[len("cuda:"):] if self.active and head.startswith("cuda:") else ""

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        names = {f.name for f in fields(cls)}
        clean = {k: (None if _is_missing(v) else v) for k, v in row.items() if k in names}
        for key in ("message", "log_path", "traceback", "device", "spec"):
            clean[key] = clean.get(key) or ""
        for key in ("done", "total"):
            clean[key] = int(clean.get(key) or 0)
        if clean.get("pid") is not None:
            clean["pid"] = int(clean["pid"])
        clean["cancel_requested"] = bool(clean.get("cancel_requested") or False)
        return cls(**clean)


def _is_missing(value: Any) -> bool:
    try:
        return value is None or value != value  # NaN / NaT from a DataFrame row
    except (TypeError, ValueError):
        return False


def get_job(job_id: str) -> Job:
    row = store.get_job(job_id)
    if row is None:
        raise JobError(f"No job {job_id!r}; `python -m backend jobs` lists the known ones.")
    return Job.from_row(row)


def record_end(job_id: str, run_id: str, status: str, message: str, tb: str) -> None:
    store.set_run_status(run_id, status)  # the run first: a watcher that sees the job end sees the run ended too
    store.update_job(job_id, status=status, finished=time.time(), message=message, traceback=tb)


@contextmanager
def submit_lock() -> Iterator[None]:
    """Check-and-insert of a run's job, and the claim of a GPU, are atomic across threads and processes (two
    dashboards, a CLI, finishing workers): a thread lock, then settings.exclusive on
    cache/jobs/.submit.lock (released if the process dies). Re-entrant within a thread (submit -> refresh ->
    start_queued): only the outermost level takes the file lock."""
    global _lock_depth
    with _SUBMIT_LOCK:
        if _lock_depth:
            _lock_depth += 1
            try:
                yield
            finally:
                _lock_depth -= 1
            return
        with settings.exclusive(settings.cache_subdir("jobs") / ".submit.lock"):
            _lock_depth = 1
            try:
                yield
            finally:
                _lock_depth = 0
