"""Runs across processes and machines with torch.distributed, as `torchrun` starts them (docs/SCALE.md).

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in every process it starts. With
WORLD_SIZE > 1, `process_group` joins the group (NCCL when this rank's device is a GPU, gloo on CPUs) and yields
a `Ranks`: this process's rank and device, and the few collectives the embedding and the curve need (a barrier,
rank 0's value to everyone, per-row arrays gathered in order). Without torchrun (or WORLD_SIZE 1) it yields None
and every command runs as one process, unchanged.

Rank r computes on cuda:LOCAL_RANK when the host has GPUs (or --device cuda), on the CPU otherwise. The collectives
wait up to $CXR_DIST_TIMEOUT_S seconds (default 3 hours: a rank that finished its embedding chunks waits at the
barrier while the slowest one finishes its own).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from backend.errors import SpecError

log = logging.getLogger(__name__)
DEFAULT_TIMEOUT_S = 3 * 3600


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise SpecError(f"{name}={value!r} is not an integer; torchrun sets it, so unset it outside torchrun.") from None


def share(n: int, rank: int, world: int) -> tuple[int, int]:
    """The contiguous items [a, b) of n that rank `rank` of `world` takes (sizes differ by at most one)."""
    return rank * n // world, (rank + 1) * n // world


def _as_int64(arr: np.ndarray) -> np.ndarray:
    """The bits of a 4- or 8-byte array as int64 values (lossless; _from_int64 reverses it)."""
    arr = np.ascontiguousarray(arr)
    if arr.dtype.itemsize == 8:
        return arr.view(np.int64)
    if arr.dtype.itemsize == 4:
        return arr.view(np.int32).astype(np.int64)
    raise TypeError(f"cannot gather arrays of dtype {arr.dtype}")


def _from_int64(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    values = np.ascontiguousarray(values, dtype=np.int64)
    return values.view(dtype) if dtype.itemsize == 8 else values.astype(np.int32).view(dtype)


@dataclass(frozen=True)
class Ranks:
    """This process's place in a torchrun group (rank 0 of `world` leads: it alone writes results)."""

    rank: int
    world: int
    local_rank: int
    device: str
    local_world: int = 1  # processes on this host

    @property
    def lead(self) -> bool:
        return self.rank == 0

    def share(self, n: int) -> tuple[int, int]:
        """This rank's contiguous items [a, b) of n."""
        return share(n, self.rank, self.world)

    def barrier(self) -> None:
        dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` on every rank (any picklable object; the other ranks' values are ignored)."""
        box = [value if self.lead else None]
        dist.broadcast_object_list(box, src=0, device=self._comm_device())
        return box[0]

    def gather_rows(self, part: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        """Every rank's `part` (1-D arrays of the same keys and dtypes, this rank's share(n) rows) joined in rank
        order into n rows, on every rank. The bits travel as int64, so floats arrive exactly."""
        sizes = [b - a for a, b in (share(n, r, self.world) for r in range(self.world))]
        keys = sorted(part)
        if any(part[k].shape != (sizes[self.rank],) for k in keys):
            raise ValueError(f"rank {self.rank}: every array must hold its {sizes[self.rank]} rows")
        packed = np.zeros((len(keys), max(sizes)), dtype=np.int64)
        for i, key in enumerate(keys):
            packed[i, :sizes[self.rank]] = _as_int64(part[key])
        mine = torch.from_numpy(packed).to(self._comm_device())
        parts = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(parts, mine)
        full = np.concatenate([p.cpu().numpy()[:, :size] for p, size in zip(parts, sizes, strict=True)], axis=1)
        return {key: _from_int64(full[i], part[key].dtype) for i, key in enumerate(keys)}

    def _comm_device(self) -> torch.device:
        return torch.device(self.device) if self.device.startswith("cuda") else torch.device("cpu")


def torchrun_env() -> tuple[int, int, int, int] | None:
    """(rank, world size, local rank, processes on this host) when torchrun started this process with more than one
    process, else None."""
    world = _env_int("WORLD_SIZE")
    if world is None or world <= 1:
        return None
    rank, local = _env_int("RANK"), _env_int("LOCAL_RANK")
    if rank is None or not 0 <= rank < world:
        raise SpecError(f"WORLD_SIZE={world} but RANK is {os.environ.get('RANK')!r}; start the command with torchrun, "
                        "which sets both.")
    return rank, world, local if local is not None else rank, _env_int("LOCAL_WORLD_SIZE") or 1


def rank_device(device: str | None, local_rank: int) -> str:
    """This rank's device: cuda:LOCAL_RANK for None (on a host with GPUs) or "cuda", "cpu" for "cpu"."""
    if device in (None, "cuda"):
        n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n_gpu == 0:
            if device == "cuda":
                raise SpecError("--device cuda, but this machine has no CUDA GPU; leave --device out or use cpu.")
            return "cpu"
        if local_rank >= n_gpu:
            raise SpecError(f"local rank {local_rank} has no GPU of its own (this host has {n_gpu}); start at most "
                            f"{n_gpu} processes per node (torchrun --nproc-per-node {n_gpu}).")
        return f"cuda:{local_rank}"
    if device == "cpu":
        return "cpu"
    raise SpecError(f"--device {device} under torchrun: every rank takes the GPU of its local rank; pass --device "
                    "cuda (or leave it out) or --device cpu.")


def timeout_s() -> float:
    value = os.environ.get("CXR_DIST_TIMEOUT_S", "").strip()
    try:
        return float(value) if value else float(DEFAULT_TIMEOUT_S)
    except ValueError:
        raise SpecError(f"CXR_DIST_TIMEOUT_S={value!r} is not a number of seconds.") from None


@contextlib.contextmanager
def process_group(device: str | None) -> Iterator[Ranks | None]:
    """Join the torchrun group for the block (None, and nothing done, outside torchrun); left at the end."""
    env = torchrun_env()
    if env is None:
        yield None
        return
    rank, world, local, local_world = env
    dev = rank_device(device, local)
    backend = "nccl" if dev.startswith("cuda") else "gloo"
    if dev.startswith("cuda"):
        torch.cuda.set_device(dev)
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s()))
    log.info("rank %d of %d (local rank %d) on %s, %s", rank, world, local, dev, backend)
    try:
        yield Ranks(rank, world, local, dev, local_world)
    finally:
        dist.destroy_process_group()
