"""The detached worker's runtime: the body of `python -m backend worker JOB_ID` (run_worker).

The worker records its pid, a heartbeat, throttled progress and, on failure, the traceback; a cancel request
is a flag in the store that the progress callback checks (it raises JobError), and a SIGTERM (the escalation
of a cancel) ends the work the same way. A spec that reads a file-based source loads the source table first
and compares its data hash (backend.sources.inputs.data_inputs) with the one the finished run records:
unchanged, the job ends at once and the run is reused; changed, the run is recomputed. A held database never
stops the work: progress and heartbeat writes are skipped, and the result write retries, then keeps the result
in jobs/<job_id>.pending.pkl for the next refresh() to import (import_pending). As it exits, the worker starts
the next job queued for its GPU.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from typing import Any

from backend import settings
from backend.errors import JobError, StoreError
from backend.progress import ProgressLike
from backend.runs import store
from backend.runs.gpu_queue import start_next
from backend.runs.inputs import run_inputs, same_inputs
from backend.runs.job_records import get_job, record_end
from backend.runs.kinds import get_job_kind
from backend.specs import spec_from_json

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.5
HEARTBEAT_S = 2.0
BEAT_WRITE_TIMEOUT_S = 1.0  # progress and heartbeat writes wait this long for a held database, then are skipped
# The final result write retries this long (env CXR_RESULT_WRITE_TIMEOUT_S), then saves the result to
# jobs/<job_id>.pending.pkl, which the next refresh() imports: a held database never loses a result.
RESULT_WRITE_TIMEOUT_S = float(os.environ.get("CXR_RESULT_WRITE_TIMEOUT_S", "600"))
PENDING_SUFFIX = ".pending.pkl"


class _Cancelled(JobError):
    pass


class _Unwritten:
    """The newest progress call that the throttle (or a held database) kept out of the store; the heartbeat
    writes it, so the stored message is never older than one heartbeat (a phase that announces itself and
    then computes for minutes without another progress call still shows its own message). Both writers hold
    `lock` from taking the fields to writing them, so an older call never overwrites a newer one."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.fields: dict[str, Any] = {}

    def take(self) -> dict[str, Any]:
        with self.lock:
            fields, self.fields = self.fields, {}
        return fields

    def close(self) -> None:
        """The work ended: nothing more is written (the job's final message must stay)."""
        with self.lock:
            self.fields, self.closed = {}, True

    closed = False


def _progress_writer(job_id: str, unwritten: _Unwritten | None = None) -> ProgressLike:
    """The callback the job's code calls: throttled into the store; raises JobError once cancel is requested.
    A call the throttle skips is kept in `unwritten` for the heartbeat to write. The first call is always
    written: the monotonic clock starts near 0 on a machine booted moments ago, so no start value can stand
    for "never written"."""
    last: list[float | None] = [None]
    unwritten = unwritten or _Unwritten()

    def progress(done: int, total: int, message: str = "") -> None:
        fields = {"done": int(done), "total": int(total), "message": str(message)[:500]}
        now = time.monotonic()
        with unwritten.lock:
            if unwritten.closed:
                return
            if last[0] is not None and now - last[0] < PROGRESS_INTERVAL_S and done < total:
                unwritten.fields = fields
                return
            last[0] = now
            unwritten.fields = {}  # this write supersedes it
            try:
                cancelled = store.update_job(job_id, **fields, heartbeat=time.time(), timeout_s=BEAT_WRITE_TIMEOUT_S)
            except StoreError as exc:  # a held database never stops the work; the next call or beat writes it
                unwritten.fields = fields
                log.warning("progress of %s not recorded (%s); computing on", job_id, exc)
                return
        if cancelled:
            raise _Cancelled(f"Job {job_id} was cancelled; finished chunks are kept.")

    return progress


def _heartbeat(job_id: str, stop: threading.Event, unwritten: _Unwritten | None = None) -> None:
    unwritten = unwritten or _Unwritten()
    while not stop.wait(HEARTBEAT_S):
        with unwritten.lock:
            fields = unwritten.take()
            try:
                store.update_job(job_id, heartbeat=time.time(), timeout_s=BEAT_WRITE_TIMEOUT_S, **fields)
            except Exception as exc:  # a missed beat is harmless; the next one retries
                if not unwritten.closed:
                    unwritten.fields = unwritten.fields or fields
                log.warning("heartbeat of %s skipped (%s)", job_id, exc)


def device_label(uses_torch: bool = True, gpu: str = "") -> str:
    """"cuda (GPU name)" or "cpu": the device the worker's torch code will use. A worker pinned to GPU `gpu`:
    "cuda:<gpu> (GPU name)" once its code has imported torch, "cuda:<gpu>" before (no torch import for it)."""
    if gpu:
        torch = sys.modules.get("torch")
        if torch is None:
            return f"cuda:{gpu}"
        return f"cuda:{gpu} ({torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CUDA unavailable: cpu'})"
    if not uses_torch:
        return "cpu"
    try:
        import torch
    except ImportError:
        return "cpu (torch not installed)"
    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return "cpu"


def run_worker(job_id: str) -> int:
    """The body of `python -m backend worker JOB_ID`: run the job, record the outcome; returns an exit code."""
    job = _retry(lambda: get_job(job_id), f"reading job {job_id}", RESULT_WRITE_TIMEOUT_S)
    if job.cancel_requested:
        store.update_job(job_id, status="cancelled", finished=time.time(), message="cancelled before start")
        start_next()
        return 1
    signal.signal(signal.SIGTERM, _raise_cancel)
    now = time.time()
    try:
        store.update_job(job_id, status="running", pid=os.getpid(), started=now, heartbeat=now, message="running")
        store.set_run_status(job.run_id, "running")
    except store.DatabaseBusy as exc:  # the heartbeat and the result say it later; start computing now
        log.warning("job %s: start not recorded (%s); computing on", job_id, exc)
    stop, unwritten = threading.Event(), _Unwritten()
    threading.Thread(target=_heartbeat, args=(job_id, stop, unwritten), daemon=True).start()
    try:
        kind = get_job_kind(job.kind)
        spec = spec_from_json(job.spec)
        gpu = job.device[len("cuda:"):].split(" ", 1)[0] if job.device.startswith("cuda:") else ""
        device = device_label(kind.uses_torch, gpu)
        try:
            store.update_job(job_id, device=device, timeout_s=BEAT_WRITE_TIMEOUT_S)
        except StoreError as exc:
            log.warning("job %s: device not recorded (%s)", job_id, exc)
        log.info("job %s (%s) on %s", job_id, kind.name, device)
        inputs = run_inputs(spec)
        run = (_retry(lambda: store.get_run(job.run_id), "reading the run", RESULT_WRITE_TIMEOUT_S) or {}) \
            if inputs else {}
        if inputs and run.get("status") == "done" and same_inputs((run.get("summary") or {}).get("inputs"), inputs):
            _retry(lambda: store.update_job(job_id, status="done", finished=time.time(), done=1, total=1,
                                            message="inputs unchanged: the finished run is reused"),
                   "recording the reuse", RESULT_WRITE_TIMEOUT_S)
            return 0
        if inputs and run.get("status") == "done":
            log.info("job %s: the data or the weights changed since run %s finished; recomputing it", job_id,
                     job.run_id)
        result = kind.resolve()(spec, _progress_writer(job_id, unwritten))
        unwritten.close()
        device = device_label(kind.uses_torch, gpu) if gpu else device  # with the GPU's name, once torch ran
        _save_result({"job_id": job_id, "run_id": job.run_id, "kind": kind.name, "spec": job.spec,
                      "result": result, "device": device, "inputs": inputs}, spec)
        return 0
    except _Cancelled as exc:
        unwritten.close()
        why = str(exc)
        _soft(lambda: record_end(job_id, job.run_id, "cancelled", why, ""), "the cancel")
        return 1
    except BaseException as exc:  # record every failure, including SystemExit from a library
        unwritten.close()
        tb, why = traceback.format_exc(), f"{type(exc).__name__}: {exc}"[:500]
        log.error("job %s failed:\n%s", job_id, tb)  # the log first: the store says "done"
        _soft(lambda: record_end(job_id, job.run_id, "failed", why, tb), "the failure")
        return 1
    finally:
        stop.set()
        start_next()  # this job's GPU is free


def _soft(write: Any, what: str) -> None:
    """A bookkeeping write that must not end the worker: retried for a while, then logged and skipped."""
    try:
        _retry(write, f"recording {what}", 60.0)
    except StoreError as exc:
        log.warning("could not record %s: %s", what, exc)


def _retry(write: Any, what: str, limit_s: float) -> Any:
    """Call `write` until the database is free (DatabaseBusy retried with backoff for up to limit_s seconds)."""
    deadline = time.monotonic() + limit_s
    delay = 1.0
    while True:
        try:
            return write()
        except store.DatabaseBusy as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            log.warning("%s: the database is busy; waiting and retrying (%.0f s left): %s",
                        what, left, exc)
            time.sleep(min(delay, max(left, 0.0)))
            delay = min(delay * 2, 30.0)


def _persist(record: dict[str, Any], spec: Any) -> None:
    get_job_kind(record["kind"]).resolve_persist()(record["run_id"], spec, record["result"], record["device"])
    if record.get("inputs"):
        store.set_run_inputs(record["run_id"], record["inputs"])
    store.complete_job(record["job_id"], record.get("message", "done"))


def _save_result(record: dict[str, Any], spec: Any) -> None:
    """Store a finished job's result, retrying while the database is held (RESULT_WRITE_TIMEOUT_S); if it
    still cannot be written, keep it in jobs/<job_id>.pending.pkl for the next refresh() to import."""
    try:
        _retry(lambda: _persist(record, spec), f"saving the result of job {record['job_id']}", RESULT_WRITE_TIMEOUT_S)
        return
    except StoreError as exc:
        path = settings.cache_subdir("jobs") / f"{record['job_id']}{PENDING_SUFFIX}"
        kept = {**record, "message": f"done (result imported from {path.name})"}
        settings.atomic_write(path, lambda p: p.write_bytes(pickle.dumps(kept)))
        log.error("job %s: the result could not be written to the database (%s); it is kept in %s and is "
                  "imported by the next refresh (opening the dashboard's job list or submitting a job).",
                  record["job_id"], exc, path)


def import_pending() -> list[str]:
    """Write the results that workers kept in jobs/*.pending.pkl (the database was held) into the store;
    returns the job ids imported. A file is claimed by renaming it, so two processes never import one twice."""
    done = []
    for path in sorted(settings.cache_subdir("jobs").glob(f"*{PENDING_SUFFIX}")):
        claimed = path.with_name(f"{path.name}.importing-{os.getpid()}")
        try:
            os.replace(path, claimed)
        except FileNotFoundError:
            continue  # another process claimed it
        try:
            with open(claimed, "rb") as fh:
                record = pickle.load(fh)
            _persist(record, spec_from_json(record["spec"]))
        except StoreError:
            os.replace(claimed, path)  # the database is still held: the next refresh tries again
            raise
        except Exception:
            log.error("could not import the kept result %s; it is left as %s", path, claimed, exc_info=True)
            continue
        claimed.unlink(missing_ok=True)
        done.append(record["job_id"])
    return done


def _raise_cancel(signum: int, frame: Any) -> None:
    raise _Cancelled("terminated by a cancel request (SIGTERM); finished chunks are kept.")
