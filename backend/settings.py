"""Paths and switches, from environment variables with sensible defaults.

CXR_CACHE_DIR   where the DuckDB file, embeddings, logs and model weights live (default: <repo>/cache)
CXR_OPENI_ROOT  folder with the OpenI archives (default: <repo>/../shared/data/openi when present)
CXR_MIMIC_ROOT, CXR_CHEXPERT_PLUS_ROOT  folders of the credentialed datasets (no default)
CXR_DEMO_SNAPSHOT  1 (default): the app imports the shipped demo results on start; 0: it does not (tests)
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """The cache folder (created on first use). Read on every call so tests can redirect it."""
    path = Path(os.environ.get("CXR_CACHE_DIR", REPO_ROOT / "cache")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_subdir(name: str) -> Path:
    """A named folder under the cache (embeddings, models, jobs, downloads ...)."""
    path = cache_dir() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def db_path() -> Path:
    """The DuckDB results database."""
    return cache_dir() / "relink.duckdb"


def shared_openi_dir() -> Path | None:
    """The real OpenI reports shipped beside the repository for tests, or None when absent."""
    env = os.environ.get("CXR_OPENI_ROOT")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "openi"
    return path if path.is_dir() else None


def data_root(source: str) -> Path | None:
    """The default root folder of a source from its environment variable, or None."""
    var = {
        "openi": "CXR_OPENI_ROOT",
        "mimic-cxr": "CXR_MIMIC_ROOT",
        "chexpert-plus": "CXR_CHEXPERT_PLUS_ROOT",
    }.get(source)
    if var and os.environ.get(var):
        return Path(os.environ[var]).expanduser()
    if source == "openi":
        return shared_openi_dir()
    return None


def hub_offline() -> bool:
    """True when the model hub must not be contacted (HF_HUB_OFFLINE=1 or CXR_OFFLINE=1)."""
    return any(os.environ.get(v, "").strip() in {"1", "true", "True"} for v in ("HF_HUB_OFFLINE", "CXR_OFFLINE"))


def demo_snapshot_enabled() -> bool:
    """Whether the app imports the shipped demo snapshot on start (CXR_DEMO_SNAPSHOT, default on)."""
    return os.environ.get("CXR_DEMO_SNAPSHOT", "1").strip() not in {"0", "false", "False", "no"}
