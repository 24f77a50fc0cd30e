"""Paths and switches, from environment variables with sensible defaults.

CXR_CACHE_DIR   where the DuckDB file, embeddings, logs and model weights live (default: <repo>/cache)
CXR_OPENI_ROOT  folder with the OpenI archives (no default: `python -m backend download openi --dest DIR` makes one)
CXR_MIMIC_ROOT, CXR_CHEXPERT_PLUS_ROOT  folders of the credentialed datasets (no default)
CXR_DEMO_SNAPSHOT  1 (default): the app imports the shipped demo results on start; 0: it does not (tests)
CXR_IMAGE_CHECK_WORKERS  threads that check a source's images (default: CPU count + 4, at most 32)
CXR_IMAGE_LOADER  auto | reference | fast | gpu: how file images are decoded (backend/embed/images.py)
CXR_GPU_CPU_SHARE  0 (default) to below 1: the share of JPEGs the gpu loader decodes on CPU threads beside nvJPEG
CXR_EMBED_DEVICES  e.g. cuda:0,cuda:1 or all: embed on several devices at once (backend/embed/shards.py)
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from backend.errors import CacheError, DeviceError, OutputError, SourceError

REPO_ROOT = Path(__file__).resolve().parent.parent


_WRITABLE: set[Path] = set()  # folders already shown to be writable in this process
_READING_ONLY = [False]  # this process only reads the cache (export, jobs): a read-only cache folder will do


@contextlib.contextmanager
def reading_only() -> Iterator[None]:
    """While the block runs, this process only reads the cache (the export and jobs commands): a cache folder that
    exists but cannot be written (a read-only copy, a read-only mount) is used as it is, the results database is
    opened read-only, and nothing is written into the cache."""
    before = _READING_ONLY[0]
    _READING_ONLY[0] = True
    try:
        yield
    finally:
        _READING_ONLY[0] = before


def is_reading_only() -> bool:
    return _READING_ONLY[0]


def _ensure_folder(path: Path) -> Path:
    """Create `path` and check that a file can be written in it (once per process); CacheError otherwise. In a
    process that only reads (reading_only), an existing readable folder is enough."""
    if _READING_ONLY[0] and path.is_dir() and os.access(path, os.R_OK | os.X_OK):
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)  # every call: a test or a user may have removed it
        if path not in _WRITABLE:
            with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
                pass
    except OSError as exc:
        raise CacheError(
            f"Cache folder {str(path)!r} cannot be created or written ({exc.strerror or exc}); set CXR_CACHE_DIR "
            "to a writable folder (e.g. CXR_CACHE_DIR=~/cxr-cache) or fix its permissions."
        ) from exc
    _WRITABLE.add(path)
    return path


def cache_dir() -> Path:
    """The cache folder (created on first use). Read on every call so tests can redirect it.

    Raises CacheError (naming the folder and CXR_CACHE_DIR) when it cannot be created or written."""
    return _ensure_folder(Path(os.environ.get("CXR_CACHE_DIR", REPO_ROOT / "cache")).expanduser())


@contextlib.contextmanager
def exclusive(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created) across processes while the block runs. When another
    process holds it, on_wait() is called once and the block waits its turn. The OS releases the lock of a
    process that dies, so a killed holder never blocks the next one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Write `path` whole or not at all: `write(tmp)` fills a temporary sibling, which then replaces `path` in one
    rename, so a crash, a kill or a full disk never leaves a half file and never destroys the file that was
    there. OutputError (naming the file, the reason and what to do) when the disk refuses; other errors of
    `write` are raised as they are. The temporary file is removed in every case."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        kept = "the file that was there is unchanged" if path.exists() else "nothing was written"
        raise OutputError(f"Could not write {str(path)!r} ({exc.strerror or exc}); {kept}. Free some space or "
                          "choose a writable folder, then run it again.") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path


def cache_subdir(name: str) -> Path:
    """A named folder under the cache (embeddings, models, jobs, downloads ...); CacheError when not writable."""
    return _ensure_folder(cache_dir() / name)


def db_path() -> Path:
    """The DuckDB results database."""
    return cache_dir() / "relink.duckdb"


def data_root(source: str) -> Path | None:
    """The default root folder of a source from its environment variable, or None (no source has a default
    folder: a dataset lives wherever its user put it)."""
    var = {
        "openi": "CXR_OPENI_ROOT",
        "mimic-cxr": "CXR_MIMIC_ROOT",
        "chexpert-plus": "CXR_CHEXPERT_PLUS_ROOT",
    }.get(source)
    if var and os.environ.get(var):
        return Path(os.environ[var]).expanduser()
    return None


@lru_cache(maxsize=1)
def listed_gpus() -> tuple[str, ...] | None:
    """The lines of `nvidia-smi -L` ("GPU 0: NVIDIA H100 ... (UUID: ...)"), read once per process without
    importing torch or making a CUDA context; None when nvidia-smi is absent or does not answer (logged)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        logging.getLogger(__name__).warning("nvidia-smi -L failed (%s)", exc)
        return None
    return tuple(line.strip() for line in out.splitlines() if line.startswith("GPU "))


def hub_offline() -> bool:
    """True when the model hub must not be contacted (HF_HUB_OFFLINE=1 or CXR_OFFLINE=1)."""
    return any(os.environ.get(v, "").strip() in {"1", "true", "True"} for v in ("HF_HUB_OFFLINE", "CXR_OFFLINE"))


def demo_snapshot_enabled() -> bool:
    """Whether the app imports the shipped demo snapshot on start (CXR_DEMO_SNAPSHOT, default on)."""
    return os.environ.get("CXR_DEMO_SNAPSHOT", "1").strip() not in {"0", "false", "False", "no"}


def image_check_workers() -> int:
    """Threads that check a source's images when it is loaded (CXR_IMAGE_CHECK_WORKERS, default CPU count + 4,
    at most 32: decoding runs in PIL's C code without the GIL, and the extra threads cover the waits on a slow
    or network disk). 1 checks serially. SourceError for a value that is not a whole number >= 1."""
    raw = os.environ.get("CXR_IMAGE_CHECK_WORKERS", "").strip()
    if not raw:
        return min(32, (os.cpu_count() or 1) + 4)
    if not raw.isdigit() or int(raw) < 1:
        raise SourceError(f"CXR_IMAGE_CHECK_WORKERS={raw!r} is not a whole number >= 1; set it to e.g. 8 (threads "
                          "that check images), 1 to check serially, or unset it for the default.")
    return int(raw)


_DEVICE_RE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


def check_device(device: Any) -> None:
    """Refuse a device name that is not valid or not present here (DeviceError naming the valid ones and
    those present). None means "the default" (cuda when present, else cpu) and is always accepted, as is a
    torch.device object. torch is imported only for a name other than cpu."""
    if device is None or not isinstance(device, str) or device == "cpu":
        return
    import torch

    name = device  # exactly as torch.device spells it (lower case, no spaces)
    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    has_mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    present = ", ".join(["cpu"] + [f"cuda:{i}" for i in range(n_cuda)] + (["mps"] if has_mps else []))
    if not _DEVICE_RE.match(name):
        raise DeviceError(f"Unknown device {device!r}; use cpu, cuda, cuda:N or mps (when available). "
                          f"Present here: {present}.")
    if name.startswith("cuda"):
        if int(name.partition(":")[2] or 0) < n_cuda:
            return
        what = "CUDA is not available on this machine" if n_cuda == 0 else f"this machine has {n_cuda} CUDA device(s)"
        raise DeviceError(f"Device {device!r} is not present: {what}. Present here: {present}.")
    if not has_mps:
        raise DeviceError(f"Device {device!r} is not present: MPS is not available. Present here: {present}.")
