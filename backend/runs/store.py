"""The results database (DuckDB at settings.db_path()); the only module that speaks SQL.

DuckDB lets one process hold the file at a time (DESIGN.md section 5), so every call opens a
connection, does its work and closes it; a lock held by another process is retried briefly and then
reported as a StoreError that says what to do. Never keep a connection in a global, in a Streamlit
cache or across a job. Large tables (per-query rows) live in parquet files under cache/runs/ that the
runs table indexes.

Tables: runs (one per spec run id), jobs (one per worker launch), metrics (tidy re-linkage rows),
privacy (one record per DP run), probe (per-label AUROC rows), sweep_points (sweep -> DP runs),
run_provenance (per run: code and package version that stored it, start and end; backend/runs/provenance.py).

Migrations: a table added later (run_provenance) needs no schema version: `_ensure_schema` runs the DDL (every
statement IF NOT EXISTS) whenever a table of TABLES is missing, so an older store gains it on first use and keeps
every row; older code reads a newer store as before (it never names the new table).
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from backend import settings
from backend.errors import StoreError
from backend.relink.rows import CURVE_COLUMNS
from backend.runs import provenance

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
TABLES = ("meta", "runs", "jobs", "metrics", "privacy", "probe", "sweep_points", "run_provenance")
LOCK_TIMEOUT_S = 15.0
# Threads of one process (a worker's heartbeat and its progress; Streamlit sessions) take turns: DuckDB
# would otherwise abort one of two concurrent updates of the same row with a conflict.
_PROCESS_LOCK = threading.RLock()
METRIC_COLUMNS = CURVE_COLUMNS
PRIVACY_COLUMNS = ("epsilon", "delta", "noise_multiplier", "sample_rate", "steps", "max_grad_norm", "accountant",
                   "objective", "privacy_unit", "guarantee")
PROBE_COLUMNS = ("method", "label", "auroc", "ci_low", "ci_high", "n_pos")
JOB_FIELDS = ("run_id", "kind", "spec", "pid", "status", "done", "total", "message", "created", "started",
              "heartbeat", "finished", "log_path", "traceback", "cancel_requested", "device")

_DDL = f"""
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS runs (
  run_id VARCHAR PRIMARY KEY, kind VARCHAR, spec VARCHAR, status VARCHAR, created DOUBLE, finished DOUBLE,
  summary VARCHAR, artifacts VARCHAR, device VARCHAR, label VARCHAR);
CREATE TABLE IF NOT EXISTS jobs (
  job_id VARCHAR PRIMARY KEY, run_id VARCHAR, kind VARCHAR, spec VARCHAR, pid INTEGER, status VARCHAR,
  done BIGINT, total BIGINT, message VARCHAR, created DOUBLE, started DOUBLE, heartbeat DOUBLE, finished DOUBLE,
  log_path VARCHAR, traceback VARCHAR, cancel_requested BOOLEAN, device VARCHAR);
CREATE TABLE IF NOT EXISTS metrics (
  run_id VARCHAR, variant VARCHAR, pool_kind VARCHAR, level VARCHAR, k INTEGER, n INTEGER, recall DOUBLE,
  ci_low DOUBLE, ci_high DOUBLE, chance DOUBLE, lift DOUBLE, effective_n DOUBLE);
CREATE TABLE IF NOT EXISTS privacy (
  run_id VARCHAR PRIMARY KEY, epsilon DOUBLE, delta DOUBLE, noise_multiplier DOUBLE, sample_rate DOUBLE,
  steps BIGINT, max_grad_norm DOUBLE, accountant VARCHAR, objective VARCHAR, privacy_unit VARCHAR,
  guarantee VARCHAR, extra VARCHAR);
CREATE TABLE IF NOT EXISTS probe (
  run_id VARCHAR, variant VARCHAR, method VARCHAR, label VARCHAR, auroc DOUBLE, ci_low DOUBLE, ci_high DOUBLE,
  n_pos DOUBLE);
CREATE TABLE IF NOT EXISTS sweep_points (sweep_id VARCHAR, position INTEGER, epsilon DOUBLE, run_id VARCHAR);
CREATE TABLE IF NOT EXISTS run_provenance (
  run_id VARCHAR PRIMARY KEY, code_version VARCHAR, package_version VARCHAR, started DOUBLE, finished DOUBLE);
INSERT OR REPLACE INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}');
"""


class DatabaseBusy(StoreError):
    """Another process held the database for longer than the connection's timeout (worth retrying later)."""


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text or "being used by another process" in text


def lock_holder(text: str) -> tuple[int | None, str]:
    """(pid, command line) of the process DuckDB names in a lock error ("... (PID 123) ..."), from /proc; the
    command line is '' when it cannot be read (another machine's process, or it has ended)."""
    match = re.search(r"PID (\d+)", text)
    if not match:
        return None, ""
    pid = int(match.group(1))
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmd = ""
    return pid, cmd


def busy_message(path: Path, text: str, timeout_s: float) -> str:
    """Why the database could not be opened within timeout_s, in words true to who holds it: this app's own
    processes (the dashboard reading it, a job worker writing) open it for one short read or write at a time, so
    waiting is the answer, not stopping them; anything else (a DuckDB shell, a notebook) holds it until closed."""
    pid, cmd = lock_holder(text)
    who = f"process {pid}" if pid is not None else "another process"
    if "streamlit" in cmd or "app.py" in cmd:
        return (f"The results database {path} was busy for {timeout_s:g} s: the dashboard ({who}) was reading or "
                "writing it. It opens the file for one short read or write at a time; this is retried, nothing to do.")
    if "backend" in cmd and ("worker" in cmd or "cxr-relink" in cmd or "-m backend" in cmd):
        return (f"The results database {path} was busy for {timeout_s:g} s: another job or command of this app "
                f"({who}) was writing it. It holds the file only while it writes; this is retried, nothing to do.")
    return (f"The results database {path} is held by {who}{': ' + cmd[:120] if cmd else ''}, not one of this "
            "app's short reads or writes. If it is a DuckDB shell or a notebook with the file open, close it; this is "
            "retried meanwhile.")


@contextmanager
def connect(timeout_s: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short-lived connection (schema created on first use); closed on exit, committed unless it raised.

    Retries while another process holds the file, for at most `timeout_s` seconds (default LOCK_TIMEOUT_S),
    then raises DatabaseBusy."""
    with _PROCESS_LOCK:
        yield from _connect(LOCK_TIMEOUT_S if timeout_s is None else timeout_s)


def _damaged(path: Path, exc: Exception) -> StoreError:
    """The error for a database file DuckDB cannot read (empty, truncated, random bytes, not a file)."""
    embeddings = settings.cache_dir() / "embeddings"
    return StoreError(
        f"The results database {path} is damaged or unreadable ({exc}). Move it aside to start fresh "
        f"(e.g. `mv {path} {path}.broken`); the embeddings under {embeddings} are kept, and finished runs are "
        "recomputed from them quickly when submitted again.")


def _connect(timeout_s: float) -> Iterator[duckdb.DuckDBPyConnection]:
    path = settings.db_path()
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        try:
            con = duckdb.connect(str(path), read_only=settings.is_reading_only() and path.is_file())
            break
        except (duckdb.IOException, duckdb.ConnectionException) as exc:
            if not _is_lock_error(exc):
                raise _damaged(path, exc) from exc
            if time.monotonic() > deadline:
                raise DatabaseBusy(busy_message(path, str(exc), timeout_s)) from exc
            time.sleep(delay * (1 + random.random()))  # jitter: two waiters must not retry in lockstep
            delay = min(delay * 2, 0.2)
    try:
        try:
            _ensure_schema(con)
        except (duckdb.IOException, duckdb.InternalException, duckdb.SerializationException) as exc:
            raise _damaged(path, exc) from exc
        con.execute("BEGIN TRANSACTION")
        yield con
        con.execute("COMMIT")
    except BaseException as exc:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:
            pass
        named = _named(path, exc)
        if named is not None:
            raise named from exc
        raise
    finally:
        con.close()


def _named(path: Path, exc: BaseException) -> StoreError | None:
    """A DuckDB failure inside a transaction as the user's error: a full disk (nothing of this write is stored),
    or a file that cannot be read (damaged: a truncated file fails only when a query reaches its missing part).
    None for anything else (the caller's own errors, lock conflicts), which is raised as it is."""
    if not isinstance(exc, duckdb.Error):
        return None
    text = str(exc)
    if "No space left" in text or "ENOSPC" in text or "disk is full" in text.lower():
        return StoreError(f"The disk holding the results database {path} is full ({text.splitlines()[0]}); nothing "
                          "of this write was stored and what was stored before is kept. Free some space (or set "
                          "CXR_CACHE_DIR to a folder on another disk) and try again.")
    if isinstance(exc, duckdb.IOException | duckdb.InternalException | duckdb.SerializationException) \
            and not _is_lock_error(exc):
        return _damaged(path, exc)
    return None


def _ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    found = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if "meta" in found:
        row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row and int(row[0]) == SCHEMA_VERSION and found.issuperset(TABLES):
            return
        if row and int(row[0]) > SCHEMA_VERSION:
            raise StoreError(f"{settings.db_path()} was written by a newer version (schema {row[0]}); "
                             "update the code or point CXR_CACHE_DIR at another folder.")
    con.execute(_DDL)


def _dumps(value: Any) -> str:
    return json.dumps(_jsonable(value), sort_keys=True)


def _jsonable(value: Any) -> Any:
    """JSON-ready: numpy scalars to Python, non-finite floats to strings (the specs' convention)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _loads(text: str | None) -> Any:
    return json.loads(text) if text else {}


# ---------------------------------------------------------------- runs


def upsert_run(run_id: str, kind: str, spec_json: str, status: str, *, label: str = "") -> None:
    """Create a run (or reset a not-finished one to `status`); a finished run is never overwritten."""
    with connect() as con:
        row = con.execute("SELECT status FROM runs WHERE run_id = ?", [run_id]).fetchone()
        if row is None:
            con.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?, NULL, '{}', '{}', '', ?)",
                        [run_id, kind, spec_json, status, time.time(), label])
        elif row[0] != "done":
            con.execute("UPDATE runs SET status = ? WHERE run_id = ?", [status, run_id])
        if status == "running" and (row is None or row[0] not in ("done", "running")):
            _stamp_start(con, run_id)


def set_run_status(run_id: str, status: str) -> None:
    """Set a not-finished run's status; a run that starts running records its start (run_provenance)."""
    with connect() as con:
        row = con.execute("SELECT status FROM runs WHERE run_id = ?", [run_id]).fetchone()
        con.execute("UPDATE runs SET status = ? WHERE run_id = ? AND status <> 'done'", [status, run_id])
        if status == "running" and row is not None and row[0] not in ("done", "running"):
            _stamp_start(con, run_id)


def _stamp_start(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
    """Record when a run started computing (again: a resumed run's start is its last start)."""
    con.execute("INSERT INTO run_provenance (run_id, started) VALUES (?, ?) ON CONFLICT (run_id) DO UPDATE SET "
                "started = excluded.started", [run_id, time.time()])


def finish_run(run_id: str, *, summary: Mapping[str, Any] | None = None, artifacts: Mapping[str, Any] | None = None,
               device: str = "", metrics: Mapping[str, pd.DataFrame] | None = None,
               probe: Mapping[str, pd.DataFrame] | None = None, privacy: Mapping[str, Any] | None = None,
               sweep_points: list[tuple[float, str]] | None = None, keep_parts: bool = False,
               started: float | None = None) -> None:
    """Write every result of a run in one transaction and mark it done (a finished run never changes).

    metrics: variant -> tidy re-linkage rows (METRIC_COLUMNS); probe: variant -> PROBE_COLUMNS rows;
    privacy: the DP record; sweep_points: (epsilon, DP run id) in grid order. keep_parts: keep what
    `add_parts` stored while the run was computing (and add the given results) instead of replacing it.
    Provenance: this process's code and package version, the end (now) and the start: `started` when given, else
    the start recorded when the run began running, else now (a run stored in one go)."""
    with connect() as con:
        if not keep_parts:
            for table in ("metrics", "probe", "privacy"):
                con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
            con.execute("DELETE FROM sweep_points WHERE sweep_id = ?", [run_id])
        for variant, rows in (metrics or {}).items():
            _insert_frame(con, "metrics", run_id, variant, rows, METRIC_COLUMNS)
        for variant, rows in (probe or {}).items():
            _insert_frame(con, "probe", run_id, variant, rows, PROBE_COLUMNS)
        if privacy:
            _insert_privacy(con, run_id, privacy)
        for i, (eps, point) in enumerate(sweep_points or []):
            con.execute("INSERT INTO sweep_points VALUES (?, ?, ?, ?)", [run_id, i, float(eps), point])
        now = time.time()
        con.execute("UPDATE runs SET status = 'done', finished = ?, summary = ?, artifacts = ?, device = ? "
                    "WHERE run_id = ?", [now, _dumps(summary or {}), _dumps(artifacts or {}), device, run_id])
        row = con.execute("SELECT started FROM run_provenance WHERE run_id = ?", [run_id]).fetchone()
        begun = started if started is not None else row[0] if row and row[0] is not None else now
        stamp = provenance.stamp()
        con.execute("INSERT OR REPLACE INTO run_provenance VALUES (?, ?, ?, ?, ?)",
                    [run_id, stamp["code_version"], stamp["package_version"], float(begun), now])


def add_parts(run_id: str, *, metrics: Mapping[str, pd.DataFrame] | None = None,
              probe: Mapping[str, pd.DataFrame] | None = None,
              sweep_points: list[tuple[int, float, str]] | None = None) -> None:
    """Store part of the results of a run that is still computing (a sweep's reference and each of its points as
    soon as it is ready), so that the pages show them before the run finishes; one transaction.

    metrics / probe: variant -> rows, replacing the stored rows of those variants; sweep_points: (position in
    the grid, epsilon, DP run id), replacing those positions. A finished run never changes: StoreError."""
    with connect() as con:
        row = con.execute("SELECT status FROM runs WHERE run_id = ?", [run_id]).fetchone()
        if row is None or row[0] == "done":
            raise StoreError(f"Cannot add results to run {run_id}: it is {'finished' if row else 'not in the store'}.")
        for table, frames, columns in (("metrics", metrics, METRIC_COLUMNS), ("probe", probe, PROBE_COLUMNS)):
            for variant, rows in (frames or {}).items():
                con.execute(f"DELETE FROM {table} WHERE run_id = ? AND variant = ?", [run_id, variant])
                _insert_frame(con, table, run_id, variant, rows, columns)
        for position, eps, point in sweep_points or []:
            con.execute("DELETE FROM sweep_points WHERE sweep_id = ? AND position = ?", [run_id, int(position)])
            con.execute("INSERT INTO sweep_points VALUES (?, ?, ?, ?)", [run_id, int(position), float(eps), point])


def _insert_frame(con: duckdb.DuckDBPyConnection, table: str, run_id: str, variant: str, rows: pd.DataFrame,
                  columns: tuple[str, ...]) -> None:
    if rows is None or len(rows) == 0:
        return
    missing = [c for c in columns if c not in rows.columns and c not in ("effective_n", "n_pos", "ci_low",
                                                                          "ci_high", "method")]
    if missing:
        raise StoreError(f"Cannot store {table} rows of run {run_id}: column(s) {missing} are missing.")
    frame = pd.DataFrame({c: rows[c] if c in rows.columns else None for c in columns})
    frame.insert(0, "variant", variant)
    frame.insert(0, "run_id", run_id)
    con.register("_frame", frame)
    con.execute(f"INSERT INTO {table} SELECT * FROM _frame")
    con.unregister("_frame")


def _insert_privacy(con: duckdb.DuckDBPyConnection, run_id: str, privacy: Mapping[str, Any]) -> None:
    values = [privacy.get(c) for c in PRIVACY_COLUMNS]
    values = [float(v) if isinstance(v, str) and v in ("inf", "nan") else v for v in values]
    extra = {k: v for k, v in privacy.items() if k not in PRIVACY_COLUMNS}
    con.execute(f"INSERT INTO privacy VALUES (?, {', '.join('?' * len(PRIVACY_COLUMNS))}, ?)",
                [run_id, *values, _dumps(extra)])


def _run_record(row: tuple, names: list[str]) -> dict[str, Any]:
    rec = dict(zip(names, row, strict=True))
    for key in ("summary", "artifacts"):
        rec[key] = _loads(rec[key])
    return rec


def get_run(run_id: str) -> dict[str, Any] | None:
    """The run record (spec as JSON text; summary and artifacts as dicts), or None."""
    with connect() as con:
        cur = con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id])
        row = cur.fetchone()
        names = [d[0] for d in cur.description]
    return _run_record(row, names) if row else None


def list_runs(kind: str | None = None, status: str | None = "done") -> pd.DataFrame:
    """Runs, newest first, optionally filtered by kind and status (None: any)."""
    sql, args = "SELECT * FROM runs WHERE 1=1", []
    if kind:
        sql, args = sql + " AND kind = ?", [*args, kind]
    if status:
        sql, args = sql + " AND status = ?", [*args, status]
    with connect() as con:
        return con.execute(sql + " ORDER BY created DESC", args).df()


def provenance_records(run_ids: list[str] | None = None, status: str | None = "done") -> list[dict[str, Any]]:
    """Per run (newest first; `run_ids`, else every run of `status`, None: any): {run_id, kind, status, spec, provenance}
    with provenance as backend.runs.provenance.describe gives it."""
    sql, args = "SELECT r.*, p.code_version, p.package_version, p.started, p.finished AS p_finished " \
                "FROM runs r LEFT JOIN run_provenance p USING (run_id) WHERE 1=1", []
    if run_ids is not None:
        if not run_ids:
            return []
        sql, args = sql + f" AND r.run_id IN ({', '.join('?' * len(run_ids))})", list(run_ids)
    if status:
        sql, args = sql + " AND r.status = ?", [*args, status]
    with connect() as con:
        cur = con.execute(sql + " ORDER BY r.created DESC", args)
        rows, names = cur.fetchall(), [d[0] for d in cur.description]
    out = []
    for row in rows:
        rec = _run_record(row, names)
        prov = {"code_version": rec["code_version"], "package_version": rec["package_version"],
                "started": rec["started"], "finished": rec["p_finished"]}
        out.append({"run_id": rec["run_id"], "kind": rec["kind"], "status": rec["status"], "spec": rec["spec"],
                    "provenance": provenance.describe(rec, prov if rec["p_finished"] or rec["started"] else None)})
    return out


def get_provenance(run_id: str) -> dict[str, Any]:
    """The provenance of one run (backend.runs.provenance.FIELDS: code and package version, data hash, start, end,
    duration); fields of a run stored before provenance was kept say so. {} for a run not in the store."""
    found = provenance_records([run_id], status=None)
    return found[0]["provenance"] if found else {}


def run_times(run_ids: list[str]) -> pd.DataFrame:
    """(run_id, started, finished) of the runs whose provenance is stored."""
    return _frame_for("run_provenance", "run_id", run_ids)[["run_id", "started", "finished"]]


def set_run_inputs(run_id: str, inputs: Mapping[str, Any]) -> None:
    """Record in a run's summary["inputs"] which data and weights it was computed from (data_hash, n_pairs,
    weights); keys the run's own result already recorded stay, except data_hash and weights, which `inputs` sets
    when it has them."""
    with connect() as con:
        row = con.execute("SELECT summary FROM runs WHERE run_id = ?", [run_id]).fetchone()
        if row is None:
            return
        summary = _loads(row[0])
        own = {k: inputs[k] for k in ("data_hash", "weights") if k in inputs}
        summary["inputs"] = {**inputs, **(summary.get("inputs") or {}), **own}
        con.execute("UPDATE runs SET summary = ? WHERE run_id = ?", [_dumps(summary), run_id])


def _frame_for(table: str, key: str, run_ids: str | list[str]) -> pd.DataFrame:
    ids = [run_ids] if isinstance(run_ids, str) else list(run_ids)
    with connect() as con:
        if not ids:
            return con.execute(f"SELECT * FROM {table} WHERE false").df()
        marks = ", ".join("?" * len(ids))
        return con.execute(f"SELECT * FROM {table} WHERE {key} IN ({marks})", ids).df()


def load_metrics(run_ids: str | list[str]) -> pd.DataFrame:
    """Tidy re-linkage rows (run_id, variant + METRIC_COLUMNS) of one or several runs."""
    return _frame_for("metrics", "run_id", run_ids).sort_values(["run_id", "variant", "pool_kind", "level", "k", "n"])


def load_probe(run_ids: str | list[str]) -> pd.DataFrame:
    return _frame_for("probe", "run_id", run_ids)


def load_privacy(run_ids: str | list[str]) -> pd.DataFrame:
    return _frame_for("privacy", "run_id", run_ids)


def load_sweep_points(sweep_id: str) -> pd.DataFrame:
    """(sweep_id, position, epsilon, run_id) in grid order."""
    return _frame_for("sweep_points", "sweep_id", sweep_id).sort_values("position").reset_index(drop=True)


def runs_dir(run_id: str) -> Path:
    return settings.cache_subdir("runs") / run_id


def save_per_query(run_id: str, per_query: pd.DataFrame) -> str:
    """Write the per-query rows of a run to parquet (indexed by the run's artifacts); returns the path."""
    path = runs_dir(run_id)
    path.mkdir(parents=True, exist_ok=True)
    out = path / "per_query.parquet"
    settings.atomic_write(out, lambda p: per_query.to_parquet(p, index=False))
    return str(out)


def load_per_query(run_id: str) -> pd.DataFrame | None:
    run = get_run(run_id)
    path = (run or {}).get("artifacts", {}).get("per_query")
    return pd.read_parquet(path) if path and Path(path).is_file() else None


# ---------------------------------------------------------------- jobs


def insert_job(job_id: str, fields: Mapping[str, Any]) -> None:
    """Create a job row; `fields` holds any of JOB_FIELDS."""
    unknown = set(fields) - set(JOB_FIELDS)
    if unknown:
        raise StoreError(f"Unknown job field(s) {sorted(unknown)}.")
    names = ["job_id", *fields]
    with connect() as con:
        con.execute(f"INSERT INTO jobs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                    [job_id, *fields.values()])


def update_job(job_id: str, *, timeout_s: float | None = None, **fields: Any) -> bool:
    """Set job fields; returns the job's cancel_requested flag (the worker's cancel check rides along).
    timeout_s: how long to wait for a held database (default LOCK_TIMEOUT_S)."""
    unknown = set(fields) - set(JOB_FIELDS)
    if unknown:
        raise StoreError(f"Unknown job field(s) {sorted(unknown)}.")
    with connect(timeout_s) as con:
        if fields:
            sets = ", ".join(f"{k} = ?" for k in fields)
            con.execute(f"UPDATE jobs SET {sets} WHERE job_id = ?", [*fields.values(), job_id])
        row = con.execute("SELECT cancel_requested FROM jobs WHERE job_id = ?", [job_id]).fetchone()
    return bool(row and row[0])


def complete_job(job_id: str, message: str = "done") -> None:
    """Mark a job done: its end time, its message, and its bar full (done = total), so that a finished job never
    shows 149 of 150 when its last progress write was throttled or skipped while the database was held."""
    with connect() as con:
        con.execute("UPDATE jobs SET status = 'done', finished = ?, message = ?, "
                    "done = CASE WHEN total > 0 THEN total ELSE done END WHERE job_id = ?", [time.time(), message, job_id])


def get_job(job_id: str) -> dict[str, Any] | None:
    with connect() as con:
        cur = con.execute("SELECT * FROM jobs WHERE job_id = ?", [job_id])
        row = cur.fetchone()
        names = [d[0] for d in cur.description]
    return dict(zip(names, row, strict=True)) if row else None


def list_jobs(run_id: str | None = None, statuses: tuple[str, ...] = (), limit: int = 200) -> pd.DataFrame:
    """Jobs, newest first, optionally for one run and/or some statuses."""
    sql, args = "SELECT * FROM jobs WHERE 1=1", []
    if run_id:
        sql, args = sql + " AND run_id = ?", [*args, run_id]
    if statuses:
        sql, args = sql + f" AND status IN ({', '.join('?' * len(statuses))})", [*args, *statuses]
    with connect() as con:
        return con.execute(sql + f" ORDER BY created DESC LIMIT {int(limit)}", args).df()
