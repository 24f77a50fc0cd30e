"""Submit, watch and cancel jobs; each runs in a detached worker process (`python -m backend worker JOB_ID`).

submit(spec) returns the finished run's job when the same spec already finished (nothing is recomputed),
the running job when it is in flight, and otherwise starts a worker. A spec that reads a file-based
source (csv, openi, mimic-cxr, chexpert-plus: data the user can edit) always gets a worker: it loads the
source table first and compares its data hash (every column and image file (size, mtime_ns)) with the
one the finished run records; unchanged, the job ends at once and the run is reused, changed, the run is
recomputed. The hash is computed in the worker, not at submit: loading a large source (and checking its
images) would block the dashboard for seconds to minutes, and the worker does it detached. The worker records its pid,
a heartbeat, throttled progress and, on failure, the traceback; a cancel request is a flag in the store
that the progress callback checks (it raises JobError), escalated to SIGTERM after a grace period.
A worker that died (pid gone or heartbeat stale) is shown as "stale"; what it finished (embedding
chunks on disk) is kept and a resubmission resumes from there.

One job per GPU. On a machine with GPUs (job_devices(): $CXR_JOB_DEVICES, else every GPU that nvidia-smi lists
and CUDA_VISIBLE_DEVICES leaves visible) a job whose kind uses torch is pinned to one free GPU: its worker gets
CUDA_VISIBLE_DEVICES set to that one device and the job row's device says "cuda:<device>". While every GPU
has a job, a new one waits with status "queued", device GPU_QUEUE and its place in line in its message; it
starts when a GPU frees up: the worker that finishes starts the next one, and so does every refresh() (the
dashboard's job list, `python -m backend jobs`, a submit), which also frees the GPU of a dead worker. Claims
take the same cross-process lock as submit (_submit_lock), so two processes never start one job twice or
put two jobs on one GPU. Torch-free kinds, and machines without GPUs, start a worker at once, as before.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from backend import settings
from backend.errors import JobError, StoreError
from backend.progress import ProgressLike
from backend.runs import store
from backend.runs.kinds import get_job_kind, kind_for_spec
from backend.sources.inputs import data_inputs, file_sources
from backend.specs import spec_from_json

log = logging.getLogger(__name__)

ACTIVE = ("queued", "running")
PROGRESS_INTERVAL_S = 0.5
HEARTBEAT_S = 2.0
STALE_AFTER_S = 120.0  # a live pid with a silent heartbeat (hung, or starved on a busy machine)
START_TIMEOUT_S = 60.0
BEAT_WRITE_TIMEOUT_S = 1.0  # progress and heartbeat writes wait this long for a held database, then are skipped
# The final result write retries this long (env CXR_RESULT_WRITE_TIMEOUT_S), then saves the result to
# jobs/<job_id>.pending.pkl, which the next refresh() imports: a held database never loses a result.
RESULT_WRITE_TIMEOUT_S = float(os.environ.get("CXR_RESULT_WRITE_TIMEOUT_S", "600"))
PENDING_SUFFIX = ".pending.pkl"
GPU_QUEUE = "waiting for a GPU"  # the device of a job that waits for a free GPU (status "queued", no worker yet)
_SUBMIT_LOCK = threading.RLock()
_lock_depth = 0  # how deep this process holds _submit_lock (only the outermost takes the file lock)


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


# ---------------------------------------------------------------- submit / query


def submit(spec: Any, *, kind: str | None = None) -> Job:
    """Run `spec` in a detached worker unless it already finished or is running (see module doc)."""
    job_kind = get_job_kind(kind) if kind else kind_for_spec(spec)
    run_id = spec.run_id()
    with _submit_lock():
        refresh()
        run = store.get_run(run_id)
        if run and run["status"] == "done" and not file_sources(spec):
            return _finished_job(run)
        active = store.list_jobs(run_id=run_id, statuses=ACTIVE)
        if len(active):
            return Job.from_row(active.iloc[0].to_dict())
        job_id = f"{run_id}-{uuid.uuid4().hex[:6]}"
        log_path = settings.cache_subdir("jobs") / f"{job_id}.log"
        queue = job_kind.uses_torch and bool(job_devices())
        store.upsert_run(run_id, job_kind.name, spec.to_json(), "queued")
        store.insert_job(job_id, {"run_id": run_id, "kind": job_kind.name, "spec": spec.to_json(), "status": "queued",
                                  "done": 0, "total": 0, "created": time.time(), "log_path": str(log_path),
                                  "message": "queued: waiting for a free GPU" if queue else "starting worker",
                                  "device": GPU_QUEUE if queue else "", "cancel_requested": False})
        if queue:  # a free GPU starts it now, else it waits in line
            start_queued()
            return get_job(job_id)
    _spawn(job_id, log_path)
    return get_job(job_id)


@contextmanager
def _submit_lock() -> Iterator[None]:
    """Check-and-insert of a run's job, and the claim of a GPU, are atomic across threads and processes (two
    dashboards, a CLI, finishing workers): a thread lock, then an exclusive fcntl lock on
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
        with open(settings.cache_subdir("jobs") / ".submit.lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            _lock_depth = 1
            try:
                yield
            finally:
                _lock_depth = 0
                fcntl.flock(fh, fcntl.LOCK_UN)


# ---------------------------------------------------------------- one job per GPU


def job_devices() -> list[str]:
    """The GPUs jobs are pinned to, one job each, as CUDA_VISIBLE_DEVICES values; [] means no queue.

    $CXR_JOB_DEVICES when set: a comma list ("0,1,2,3", or GPU UUIDs), or "none" to switch the queue off.
    Otherwise the GPUs that `nvidia-smi -L` lists (no torch import in the dashboard), narrowed to the entries
    of CUDA_VISIBLE_DEVICES when that is set; without nvidia-smi, torch's device count if this process
    already imported torch; else none."""
    want = os.environ.get("CXR_JOB_DEVICES", "").strip()
    if want:
        return [] if want.lower() in ("none", "off", "0 gpus") else \
            list(dict.fromkeys(d.strip() for d in want.split(",") if d.strip()))
    n_gpu = _gpu_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [str(i) for i in range(n_gpu)]
    entries = []
    for entry in (v.strip() for v in visible.split(",")):
        if not entry or entry.startswith("-"):  # CUDA ignores the entries from an invalid one on
            break
        entries.append(entry)
    return entries[:n_gpu]


@lru_cache(maxsize=1)
def _gpu_count() -> int:
    """GPUs on this machine: `nvidia-smi -L` lines (fast, no CUDA context), else torch if already imported."""
    gpus = settings.listed_gpus()
    if gpus is not None:
        return len(gpus)
    torch = sys.modules.get("torch")
    return int(torch.cuda.device_count()) if torch is not None and torch.cuda.is_available() else 0


def start_queued() -> list[str]:
    """Start waiting jobs on free GPUs, oldest first, and write the place in line of those still waiting;
    returns the ids started. Atomic across processes (_submit_lock). A process that sees no GPUs
    (job_devices() is []) starts nothing: the jobs keep waiting for one that does."""
    devices = job_devices()
    if not devices:
        return []
    with _submit_lock():
        active = [Job.from_row(r) for r in store.list_jobs(statuses=ACTIVE, limit=1_000_000).to_dict("records")]
        waiting = sorted((j for j in active if j.waiting), key=lambda j: (j.created or 0.0, j.job_id))
        if not waiting:
            return []
        busy = {j.gpu for j in active if j.gpu}
        free = [d for d in devices if d not in busy]
        started = []
        for job, gpu in zip(waiting, free, strict=False):
            store.update_job(job.job_id, device=f"cuda:{gpu}", heartbeat=time.time(),  # the start window from now
                             message=f"starting worker on GPU {gpu}")
            _spawn(job.job_id, Path(job.log_path), gpu=gpu, devices=devices)
            started.append(job.job_id)
        still = waiting[len(started):]
        for place, job in enumerate(still, 1):
            message = (f"queued: waiting for a free GPU ({place} of {len(still)} in line; all {len(devices)} "
                       "GPUs have a job)")
            if job.message != message:
                store.update_job(job.job_id, message=message)
    return started


def _start_next() -> None:
    """After a job ended: start the next queued one on the freed GPU (the next refresh does, if this fails)."""
    try:
        start_queued()
    except Exception as exc:  # never the worker's outcome
        log.warning("could not start the next queued job (%s); the next refresh (dashboard or `python -m "
                    "backend jobs`) starts it", exc)


def _finished_job(run: dict[str, Any]) -> Job:
    jobs = store.list_jobs(run_id=run["run_id"], statuses=("done",))
    if len(jobs):
        return Job.from_row(jobs.iloc[0].to_dict())
    return Job(job_id="", run_id=run["run_id"], kind=run["kind"], status="done", done=1, total=1,
               message="finished earlier", finished=run.get("finished"), device=run.get("device") or "")


def _spawn(job_id: str, log_path: Path, *, gpu: str = "", devices: list[str] | None = None) -> None:
    """Start the detached worker. gpu: pin it to that one device (CUDA_VISIBLE_DEVICES); the machine's device
    list travels as CXR_JOB_DEVICES, so that the worker, seeing one GPU, still starts the next queued job on
    the right one; CXR_EMBED_DEVICES (several GPUs for one job) does not apply to a pinned worker."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(settings.REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    if gpu:
        env["CUDA_VISIBLE_DEVICES"], env["CXR_JOB_DEVICES"] = gpu, ",".join(devices or [gpu])
        env.pop("CXR_EMBED_DEVICES", None)
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "backend", "worker", job_id], cwd=settings.REPO_ROOT,
                                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    # Reap the child when it exits so that a finished worker never lingers as a zombie that looks alive.
    threading.Thread(target=proc.wait, daemon=True, name=f"reap-{job_id}").start()
    store.update_job(job_id, pid=proc.pid)


def get_job(job_id: str) -> Job:
    row = store.get_job(job_id)
    if row is None:
        raise JobError(f"No job {job_id!r}; `python -m backend jobs` lists the known ones.")
    return Job.from_row(row)


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
    the GPUs that are free; returns the ids marked stale."""
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
            _record_end(job.job_id, job.run_id, "stale",
                        f"stale: {why}; finished chunks are kept, submit again to resume", "")
            stale.append(job.job_id)
    if waiting:  # a GPU may have freed up (a job ended, or its worker died just now)
        start_queued()
    return stale


# ---------------------------------------------------------------- cancel


def cancel(job_id: str, *, grace_s: float = 5.0, wait: bool = False) -> Job:
    """Ask a job to stop (checked at its next progress call); terminate it after `grace_s` if it has not."""
    job = get_job(job_id)
    if job.waiting:
        with _submit_lock():  # not started meanwhile by another process
            if get_job(job_id).waiting:
                _record_end(job_id, job.run_id, "cancelled", "cancelled while waiting for a GPU (never started)", "")
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
        _record_end(job_id, job.run_id, "cancelled", "cancelled (terminated)", "")


# ---------------------------------------------------------------- the worker


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
        _start_next()
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
        inputs = data_inputs(spec)
        run = (_retry(lambda: store.get_run(job.run_id), "reading the run", RESULT_WRITE_TIMEOUT_S) or {}) \
            if inputs else {}
        if inputs and run.get("status") == "done" and \
                (run.get("summary") or {}).get("inputs", {}).get("data_hash") == inputs["data_hash"]:
            _retry(lambda: store.update_job(job_id, status="done", finished=time.time(), done=1, total=1,
                                            message="inputs unchanged: the finished run is reused"),
                   "recording the reuse", RESULT_WRITE_TIMEOUT_S)
            return 0
        if inputs and run.get("status") == "done":
            log.info("job %s: the data changed since run %s finished; recomputing it", job_id, job.run_id)
        result = kind.resolve()(spec, _progress_writer(job_id, unwritten))
        unwritten.close()
        device = device_label(kind.uses_torch, gpu) if gpu else device  # with the GPU's name, once torch ran
        _save_result({"job_id": job_id, "run_id": job.run_id, "kind": kind.name, "spec": job.spec,
                      "result": result, "device": device, "inputs": inputs}, spec)
        return 0
    except _Cancelled as exc:
        unwritten.close()
        why = str(exc)
        _soft(lambda: _record_end(job_id, job.run_id, "cancelled", why, ""), "the cancel")
        return 1
    except BaseException as exc:  # record every failure, including SystemExit from a library
        unwritten.close()
        tb, why = traceback.format_exc(), f"{type(exc).__name__}: {exc}"[:500]
        log.error("job %s failed:\n%s", job_id, tb)  # the log first: the store says "done"
        _soft(lambda: _record_end(job_id, job.run_id, "failed", why, tb), "the failure")
        return 1
    finally:
        stop.set()
        _start_next()  # this job's GPU is free


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
            log.warning("%s: the database is held by another process; waiting and retrying (%.0f s left): %s",
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
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as fh:
            pickle.dump({**record, "message": f"done (result imported from {path.name})"}, fh)
        os.replace(tmp, path)
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


def _record_end(job_id: str, run_id: str, status: str, message: str, tb: str) -> None:
    store.set_run_status(run_id, status)  # the run first: a watcher that sees the job end sees the run ended too
    store.update_job(job_id, status=status, finished=time.time(), message=message, traceback=tb)
