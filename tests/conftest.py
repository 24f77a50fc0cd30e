"""Shared test setup: offline, seeded, a private cache folder per test session, one torch thread."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("CXR_OFFLINE", "1")
os.environ["CXR_JOB_DEVICES"] = "none"  # no one-job-per-GPU queue on a GPU machine; tests/test_jobs.py sets fake GPUs
os.environ["CXR_DEMO_SNAPSHOT"] = "0"  # pages show what a test seeds; tests/test_snapshot.py switches it on

REPO = Path(__file__).resolve().parent.parent

SHARED_OPENI = REPO.parent / "shared" / "data" / "openi"
if (SHARED_OPENI / "NLMCXR_reports.tgz").is_file():  # the real OpenI reports, where a checkout has them beside it
    os.environ.setdefault("CXR_OPENI_ROOT", str(SHARED_OPENI))


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test session writes its cache (DuckDB, embeddings, weights) to a fresh temp folder."""
    path = tmp_path_factory.mktemp("cxr-cache")
    os.environ["CXR_CACHE_DIR"] = str(path)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    return path


@pytest.fixture()
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache folder of this test's own (CXR_CACHE_DIR = its tmp_path): its store, embeddings and jobs
    are seen by no other test. A test that needs a second cache sets CXR_CACHE_DIR itself."""
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture()
def openi_dir() -> Path:
    """The real OpenI reports beside the repository; the test is skipped when they are absent."""
    if not (SHARED_OPENI / "NLMCXR_reports.tgz").is_file():
        pytest.skip("the real OpenI reports are absent (../shared/data/openi beside the checkout)")
    return SHARED_OPENI


@pytest.fixture()
def tmpfs(tmp_path: Path):
    """mount(size) -> a folder on a fresh tmpfs of that size ("16k", "2m"): a disk that fills up, for the tests
    of writes on a full disk. Skipped where this machine does not let the test mount one (not root)."""
    import subprocess

    mounted: list[Path] = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"disk-{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not root'})")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=False)
