"""A persistent cache of image checks: (absolute path, size, mtime_ns) -> readable or not.

Checking every image of a large dataset (MIMIC-CXR-JPG: 377k JPEGs, each fully decoded) takes long; the
verdicts are kept so that a second load of the same, unchanged dataset does not decode every file again.
One SQLite file per dataset root, under the cache folder: `image_checks/<sha256 of the root>-v<VERSION>.sqlite`.
SQLite makes every write an atomic transaction and serialises writers across processes, so two processes
loading the same dataset at once never leave a corrupt or half-written cache (the slower one waits, or, after
`TIMEOUT_S`, keeps its verdicts in memory only). A cache that cannot be opened or read (unwritable folder,
damaged file) is never an error: it is logged, replaced when possible, and the images are checked again.

A file whose size or mtime changed is checked again. Accepted limitation: a file damaged in place while
keeping its size and its mtime (to the nanosecond) keeps its cached verdict; delete the cache folder
`image_checks/` (or the dataset's file in it) to check every image again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from backend import settings
from backend.errors import CacheError

log = logging.getLogger(__name__)

VERSION = 1  # bump when check_image's verdicts change, so that older verdicts are not trusted
TIMEOUT_S = 60.0  # how long a write waits for another process's write to finish

Signature = tuple[int, int]  # (size in bytes, mtime_ns)


class ImageCheckCache:
    """The cached verdicts of one dataset root. `load()` returns them; `store(rows)` adds or replaces some."""

    def __init__(self, root: Path) -> None:
        self.root = os.path.abspath(root)
        key = hashlib.sha256(self.root.encode()).hexdigest()[:16]
        self.path: Path | None = None
        try:
            self.path = settings.cache_subdir("image_checks") / f"{key}-v{VERSION}.sqlite"
        except CacheError as exc:
            log.warning("image checks are not cached (%s)", exc)

    def _connect(self) -> sqlite3.Connection:
        assert self.path is not None
        con = sqlite3.connect(self.path, timeout=TIMEOUT_S)
        with con:
            con.execute("CREATE TABLE IF NOT EXISTS checks (path TEXT PRIMARY KEY, size INTEGER NOT NULL, "
                        "mtime_ns INTEGER NOT NULL, ok INTEGER NOT NULL) WITHOUT ROWID")
            con.execute("CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            con.execute("INSERT OR IGNORE INTO info VALUES ('root', ?)", (self.root,))
        return con

    def load(self) -> dict[str, tuple[int, int, bool]]:
        """{absolute path: (size, mtime_ns, ok)}; empty when there is no cache or it cannot be read (a damaged
        file is removed, so that the next store starts a fresh one)."""
        if self.path is None:
            return {}
        try:
            con = self._connect()
            try:
                rows = con.execute("SELECT path, size, mtime_ns, ok FROM checks").fetchall()
            finally:
                con.close()
        except (sqlite3.OperationalError, OSError) as exc:  # locked past the timeout, cannot be opened ...
            log.warning("image check cache %s not read (%s); checking every image", self.path, exc)
            return {}
        except sqlite3.DatabaseError as exc:  # not a database, malformed
            self._discard(exc)
            return {}
        return {path: (size, mtime_ns, bool(ok)) for path, size, mtime_ns, ok in rows}

    def store(self, rows: Iterable[tuple[str, Signature, bool]]) -> None:
        """Add or replace verdicts (absolute path, (size, mtime_ns), ok) in one transaction."""
        batch = [(path, sig[0], sig[1], int(ok)) for path, sig, ok in rows]
        if self.path is None or not batch:
            return
        try:
            con = self._connect()
            try:
                with con:
                    con.executemany("INSERT OR REPLACE INTO checks VALUES (?, ?, ?, ?)", batch)
            finally:
                con.close()
        except (sqlite3.Error, OSError) as exc:
            log.warning("image check cache %s not updated (%s); %d verdict(s) kept for this load only",
                        self.path, exc, len(batch))

    def _discard(self, exc: Exception) -> None:
        """A file that is not a readable database: log and remove it."""
        assert self.path is not None
        log.warning("image check cache %s is damaged (%s); removing it and checking every image", self.path, exc)
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
