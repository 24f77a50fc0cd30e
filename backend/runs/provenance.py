"""Where a stored run comes from: the code version that computed it, a hash of the data it read,
and when it started and ended.

The code version is read once per process (`code_version` is cached): `git rev-parse HEAD` of this checkout
(+ "-dirty" with uncommitted changes to tracked files), or "unknown" when this is not a git checkout; the
package version is recorded beside it either way. The store keeps code version, package version, start and end
per run (table run_provenance); the data hash is the one the run's summary records (summary["inputs"]), read
here, so a hash that `store.set_run_inputs` records after the run finished is the one shown.
"""

from __future__ import annotations

import functools
import subprocess
import time
from importlib import metadata
from typing import Any

from backend import settings

PACKAGE = "cxr-relink-audit"
FIELDS = ("code_version", "package_version", "data_hash", "n_pairs", "weights_hash", "started", "finished", "duration_s")
FIELD_NAMES = {  # field -> what a reader sees (page, report, export README)
    "code_version": "code version (git commit; -dirty: uncommitted changes; unknown: not a git checkout)",
    "package_version": "package version",
    "data_hash": "data hash (16 hex of SHA-256 over the pair table and each image file's size and time)",
    "n_pairs": "pairs in the data read",
    "weights_hash": "weights hash (16 hex of SHA-256 over the model's tensors: names, dtypes, shapes, bytes)",
    "started": "started (UTC)", "finished": "finished (UTC)", "duration_s": "duration (s)"}


@functools.cache
def code_version() -> str:
    """The git commit of this checkout (+ "-dirty" with uncommitted changes to tracked files), or "unknown";
    read once per process."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=settings.REPO_ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=settings.REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + ("-dirty" if dirty else "")) if head else "unknown"


@functools.cache
def package_version() -> str:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "not installed"


def stamp() -> dict[str, str]:
    """What this process records for every run it finishes: {code_version, package_version}."""
    return {"code_version": code_version(), "package_version": package_version()}


def utc(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) if ts else "not recorded"


def describe(run: dict[str, Any] | None, record: dict[str, Any] | None) -> dict[str, Any]:
    """The provenance of one run (FIELDS) from its store record and its run_provenance row (None: a run stored
    before provenance was kept). An imported demo snapshot names the code version that made it and when."""
    run, record = run or {}, record or {}
    summary = run.get("summary") or {}
    inputs = summary.get("inputs") or {}
    started, finished = record.get("started"), record.get("finished") or run.get("finished")
    out = {"code_version": record.get("code_version") or "not recorded (stored before provenance was kept)",
           "package_version": record.get("package_version") or "not recorded",
           "data_hash": str(inputs.get("data_hash") or "") or "not recorded for this kind of run",
           "n_pairs": inputs.get("n_pairs"),
           "weights_hash": str(inputs.get("weights_hash") or "") or "not recorded (computed before weights hashes "
                                                                    "were kept)",
           "started": started, "finished": finished,
           "duration_s": (finished - started) if started and finished else None}
    snap = summary.get("snapshot")
    if isinstance(snap, dict):  # imported: the snapshot's code version and date, not the importer's or the import's
        out["code_version"] = f"{snap.get('code_version', 'unknown')} (demo snapshot made {snap.get('made', '?')})"
        begun, ended = snap.get("started"), snap.get("finished")  # when the demo job computed it (newer snapshots)
        out.update(started=begun, finished=ended, duration_s=(ended - begun) if begun and ended else None)
    return out


def display(prov: dict[str, Any]) -> dict[str, str]:
    """describe()'s values as text, keyed by FIELD_NAMES (for a page, the report and the export's README)."""
    text = dict(prov)
    text["started"], text["finished"] = utc(prov.get("started")), utc(prov.get("finished"))
    d = prov.get("duration_s")
    text["duration_s"] = "not recorded" if d is None else f"{d:.1f}"
    text["n_pairs"] = "not recorded" if prov.get("n_pairs") is None else f"{int(prov['n_pairs']):,}"
    return {FIELD_NAMES[k]: str(text[k]) for k in FIELDS}
