"""One job per GPU, and starting the detached workers (`python -m backend worker JOB_ID`).

On a machine with GPUs (job_devices(): $CXR_JOB_DEVICES, else every GPU that nvidia-smi lists and
CUDA_VISIBLE_DEVICES leaves visible) a job whose kind uses torch is pinned to one free GPU: its worker gets
CUDA_VISIBLE_DEVICES set to that one device and the job row's device says "cuda:<device>". While every GPU
has a job, a new one waits with status "queued", device GPU_QUEUE and its place in line in its message; it
starts when a GPU frees up: the worker that finishes starts the next one (start_next), and so does every
refresh() (the dashboard's job list, `python -m backend jobs`, a submit), which also frees the GPU of a dead
worker. Claims take the same cross-process lock as submit (submit_lock), so two processes never start one job
twice or put two jobs on one GPU. Torch-free kinds, and machines without GPUs, start a worker at once
(spawn_worker).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from functools import lru_cache
from pathlib import Path

from backend import settings
from backend.runs import store
from backend.runs.job_records import ACTIVE, Job, submit_lock

log = logging.getLogger(__name__)


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
    returns the ids started. Atomic across processes (submit_lock). A process that sees no GPUs
    (job_devices() is []) starts nothing: the jobs keep waiting for one that does."""
    devices = job_devices()
    if not devices:
        return []
    with submit_lock():
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
            spawn_worker(job.job_id, Path(job.log_path), gpu=gpu, devices=devices)
            started.append(job.job_id)
        still = waiting[len(started):]
        for place, job in enumerate(still, 1):
            message = (f"queued: waiting for a free GPU ({place} of {len(still)} in line; all {len(devices)} "
                       "GPUs have a job)")
            if job.message != message:
                store.update_job(job.job_id, message=message)
    return started


def start_next() -> None:
    """After a job ended: start the next queued one on the freed GPU (the next refresh does, if this fails)."""
    try:
        start_queued()
    except Exception as exc:  # never the worker's outcome
        log.warning("could not start the next queued job (%s); the next refresh (dashboard or `python -m "
                    "backend jobs`) starts it", exc)


def spawn_worker(job_id: str, log_path: Path, *, gpu: str = "", devices: list[str] | None = None) -> None:
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
