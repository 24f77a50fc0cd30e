"""Embedding on several devices at once (every GPU of a machine): one process per device, started by
torch.multiprocessing (spawn, as CUDA requires), each computing its share of the job's chunks into the job's
chunk folder. The parent then assembles the chunks exactly as a one-device run does, so the result is the
same arrays (the chunk boundaries and batches are fixed by the cache key), and a killed shard restarts from
its last finished chunk like any embedding job.

Devices: $CXR_EMBED_DEVICES (a comma list such as "cuda:0,cuda:1", or "all" for every visible GPU);
otherwise every visible GPU when the job's device is "cuda" (no index) or the default on a machine with more
than one, else the one device.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from backend.errors import JobError
from backend.progress import ProgressLike


def embed_devices(device: str | torch.device | None) -> list[str]:
    """The devices an embedding job uses (see the module docstring); one entry means no extra processes."""
    want = os.environ.get("CXR_EMBED_DEVICES", "").strip()
    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if want == "all":
        return [f"cuda:{i}" for i in range(n_gpu)] or [str(device or "cpu")]
    if want:
        return [d.strip() for d in want.split(",") if d.strip()]
    if n_gpu > 1 and (device is None or str(device) == "cuda"):
        return [f"cuda:{i}" for i in range(n_gpu)]
    return [str(device) if device is not None else ("cuda" if n_gpu else "cpu")]


def owner(chunk: int, world: int) -> int:
    """The rank that computes chunk number `chunk` (round robin: every shard gets images and texts)."""
    return chunk % world


def _run(target: Callable[..., None], rank: int, world: int, device: str, args: tuple, error_file: str) -> None:
    try:
        target(rank, world, device, *args)
    except BaseException:
        Path(error_file).write_text(traceback.format_exc())
        raise


def run_shards(target: Callable[..., None], devices: Sequence[str], args: tuple, folder: Path,
               count_done: Callable[[], int], total: int, progress: ProgressLike) -> None:
    """Run target(rank, world, device, *args) in one spawned process per device and wait for all of them,
    reporting count_done() / total as they go. Raises JobError with the first failed shard's traceback."""
    ctx = torch.multiprocessing.get_context("spawn")
    world = len(devices)
    errors = [folder / f"shard-{rank}.error" for rank in range(world)]
    for err in errors:
        err.unlink(missing_ok=True)
    procs = [ctx.Process(target=_run, args=(target, rank, world, dev, args, str(errors[rank])), daemon=True)
             for rank, dev in enumerate(devices)]
    for proc in procs:
        proc.start()
    try:
        while any(p.is_alive() for p in procs):
            progress(min(count_done(), total), total, f"embedding on {world} devices")
            time.sleep(0.5)
    finally:
        for proc in procs:
            if proc.is_alive():  # the parent was interrupted (cancelled job): stop the shards too
                proc.terminate()
            proc.join()
    failed = [(rank, p.exitcode) for rank, p in enumerate(procs) if p.exitcode != 0]
    if failed:
        rank, code = failed[0]
        detail = errors[rank].read_text() if errors[rank].is_file() else f"exit code {code} (killed?)"
        raise JobError(f"Embedding shard {rank} on {devices[rank]} failed; finished chunks are kept and a rerun "
                       f"resumes from them.\n{detail}")
