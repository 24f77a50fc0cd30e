"""Image checks at load time: parallel threads, and verdicts cached by (absolute path, size, mtime_ns)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import ImageFile

from backend import settings
from backend.errors import SourceError
from backend.sources import files, load_source
from backend.sources.files import check_image, check_images
from backend.sources.image_checks import ImageCheckCache
from tests.helpers.fixtures_data import write_corrupt, write_image

REPO = Path(__file__).resolve().parent.parent


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # header intact, half of the pixel data gone


def _dataset(root: Path, n: int = 24) -> list[str]:
    """A csv source of n pairs: PNG and JPEG images, one truncated of each, one missing, one not an image."""
    rels = [f"img/{k}.{'png' if k % 2 else 'jpg'}" for k in range(n)]
    for k, rel in enumerate(rels):
        write_image(root / rel, seed=k, size=48)
    _truncate(root / rels[3])
    _truncate(root / rels[4])
    (root / rels[5]).unlink()
    write_corrupt(root / rels[6])
    pd.DataFrame({"image_path": rels, "report": [f"Report {k}." for k in range(n)],
                  "patient_id": [f"P{k}" for k in range(n)]}).to_csv(root / "pairs.csv", index=False)
    return rels


@pytest.fixture()
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every check_image call as (file name, thread name); the real check still runs."""
    seen: list[tuple[str, str]] = []
    real = files.check_image

    def counting(path: Path) -> bool:
        seen.append((Path(path).name, threading.current_thread().name))
        return real(path)

    monkeypatch.setattr(files, "check_image", counting)
    return seen


def _kept(root: Path) -> set[str]:
    return set(load_source("csv", root=str(root)).pairs["image_path"])


def test_second_load_decodes_no_unchanged_file(tmp_path: Path, calls: list[tuple[str, str]]) -> None:
    rels = _dataset(tmp_path)
    first = load_source("csv", root=str(tmp_path))
    assert first.stats["skipped_images"] == 4 and len(first.pairs) == len(rels) - 4
    assert len(calls) == len(rels) - 1  # every file that exists was decoded once; the missing one is not cached
    calls.clear()
    second = load_source("csv", root=str(tmp_path))
    assert calls == []  # bad verdicts are cached too: the truncated and the corrupt files are not decoded again
    assert second.stats["skipped_images"] == 4
    pd.testing.assert_frame_equal(first.pairs, second.pairs)


def test_a_changed_file_is_checked_again(tmp_path: Path, calls: list[tuple[str, str]]) -> None:
    rels = _dataset(tmp_path)
    good = _kept(tmp_path)
    assert rels[8] in good and rels[3] not in good
    calls.clear()
    _truncate(tmp_path / rels[8])  # cached good, now truncated (new size)
    write_image(tmp_path / rels[3], seed=3, size=48)  # cached bad, now repaired
    after = _kept(tmp_path)
    assert sorted(name for name, _ in calls) == sorted([Path(rels[3]).name, Path(rels[8]).name])
    assert rels[8] not in after and rels[3] in after and len(after) == len(good)

    # same size, other mtime: a PNG with a damaged byte (its CRC no longer matches) is checked again and fails
    png = tmp_path / rels[9]
    data = bytearray(png.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stat = png.stat()
    png.write_bytes(bytes(data))
    os.utime(png, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert png.stat().st_size == stat.st_size
    calls.clear()
    assert rels[9] not in _kept(tmp_path) and [name for name, _ in calls] == [png.name]


def test_parallel_and_cached_verdicts_equal_the_serial_check(tmp_path: Path, calls: list[tuple[str, str]],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    rels = _dataset(tmp_path, n=60)
    (tmp_path / "img/dir.png").mkdir()
    paths = [tmp_path / r for r in rels] + [tmp_path / "img/dir.png", tmp_path / "nowhere/x.jpg"]
    serial = [check_image(p) for p in paths]
    assert serial.count(False) == 6  # 2 truncated, 1 missing, 1 not an image, a folder, a missing folder
    assert check_images(paths, workers=1) == serial
    assert {thread for _, thread in calls} == {threading.current_thread().name}  # workers=1: in this thread
    calls.clear()
    real = files.check_image
    monkeypatch.setattr(files, "check_image", lambda p: time.sleep(0.002) or real(p))  # spread over the threads
    assert check_images(paths, workers=4) == serial
    threads = {thread for _, thread in calls}
    assert len(threads) >= 2 and threading.current_thread().name not in threads
    cache = ImageCheckCache(tmp_path)
    assert check_images(paths, cache, workers=4) == serial  # first scan: fills the cache
    assert check_images(paths, cache, workers=4) == serial  # second scan: from the cache
    assert check_images(paths, cache, workers=1) == serial


def test_pil_leniency_is_off_during_the_check_and_restored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rels = _dataset(tmp_path, n=40)
    paths = [tmp_path / r for r in rels]
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    verdicts = check_images(paths, workers=4)
    assert not verdicts[3] and not verdicts[4] and verdicts.count(False) == 4
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


def test_cache_survives_a_restart_and_two_processes_filling_it_at_once(tmp_path: Path,
                                                                       calls: list[tuple[str, str]]) -> None:
    rels = _dataset(tmp_path, n=200)
    code = ("import sys; from backend.sources import load_source; "
            "print(load_source('csv', root=sys.argv[1]).stats['skipped_images'])")
    env = {**os.environ, "PYTHONPATH": str(REPO), "CXR_CACHE_DIR": str(settings.cache_dir()),
           "CXR_IMAGE_CHECK_WORKERS": "3"}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=env, cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [out.strip() for out, _ in outs] == ["4", "4"]
    cache = ImageCheckCache(tmp_path)
    assert cache.path is not None and cache.path.is_file()
    with sqlite3.connect(cache.path) as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert len(cache.load()) == len(rels) - 1
    data = load_source("csv", root=str(tmp_path))  # this process: every verdict from the other processes' cache
    assert calls == [] and data.stats["skipped_images"] == 4


def test_a_damaged_cache_file_is_replaced(tmp_path: Path, calls: list[tuple[str, str]]) -> None:
    rels = _dataset(tmp_path)
    cache = ImageCheckCache(tmp_path)
    assert cache.path is not None
    cache.path.write_bytes(b"not a database " * 100)
    assert len(_kept(tmp_path)) == len(rels) - 4 and len(calls) == len(rels) - 1  # checked, cache rebuilt
    calls.clear()
    assert len(_kept(tmp_path)) == len(rels) - 4 and calls == []


def test_no_cache_and_progress(tmp_path: Path, calls: list[tuple[str, str]]) -> None:
    rels = _dataset(tmp_path, n=30)
    pairs = pd.DataFrame({"image_path": rels})
    seen: list[tuple[int, int, str]] = []
    for _ in range(2):
        kept, dropped = files.drop_bad_images(pairs, tmp_path, source="mine", cache=False, workers=3,
                                              progress=lambda d, t, m="": seen.append((d, t, m)))
        assert dropped == 4 and len(kept) == len(rels) - 4
    assert len(calls) == 2 * (len(rels) - 1)  # cache=False decodes every time
    assert seen[-1] == (len(rels), len(rels), "mine: checking images")
    assert [d for d, _, _ in seen] == sorted(d for d, _, _ in seen[: len(seen) // 2]) * 2


def test_worker_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CXR_IMAGE_CHECK_WORKERS", raising=False)
    assert settings.image_check_workers() == min(32, (os.cpu_count() or 1) + 4)
    monkeypatch.setenv("CXR_IMAGE_CHECK_WORKERS", "3")
    assert settings.image_check_workers() == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("CXR_IMAGE_CHECK_WORKERS", bad)
        with pytest.raises(SourceError, match="CXR_IMAGE_CHECK_WORKERS"):
            settings.image_check_workers()
