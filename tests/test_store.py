"""The results store: round trips, restart survival, and the DuckDB single-process lock (DESIGN.md section 5)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from backend import settings
from backend.errors import StoreError
from backend.runs import store
from tests.helpers.seed import relink_rows

REPO = Path(__file__).resolve().parent.parent



def test_run_round_trip_and_finished_runs_never_change(fresh_cache: Path) -> None:
    rows = relink_rows(seed=1, strength=0.3)
    store.upsert_run("audit-abc", "audit", '{"kind":"AuditSpec"}', "running")
    store.finish_run("audit-abc", summary={"n_queries": 12, "inf": float("inf")}, metrics={"model": rows},
                     artifacts={"per_query": store.save_per_query("audit-abc", pd.DataFrame({"pair_id": ["a"]}))})
    run = store.get_run("audit-abc")
    assert run["status"] == "done" and run["summary"]["n_queries"] == 12 and run["summary"]["inf"] == "inf"
    back = store.load_metrics("audit-abc")
    assert len(back) == len(rows)
    merged = back.merge(rows, on=["pool_kind", "level", "k", "n"], suffixes=("", "_in"))
    assert (merged["recall"] - merged["recall_in"]).abs().max() < 1e-12
    assert store.load_per_query("audit-abc")["pair_id"].tolist() == ["a"]
    store.upsert_run("audit-abc", "audit", "{}", "queued")  # a finished run is never reset
    assert store.get_run("audit-abc")["status"] == "done"
    assert list(store.list_runs(kind="audit")["run_id"]) == ["audit-abc"]


def test_privacy_probe_and_sweep_points(fresh_cache: Path) -> None:
    probe = pd.DataFrame({"method": ["linear"], "label": ["macro"], "auroc": [0.8], "ci_low": [0.7], "ci_high": [0.9]})
    store.upsert_run("dp-1", "dp", "{}", "running")
    store.finish_run("dp-1", privacy={"epsilon": 1.0, "delta": 1e-5, "guarantee": "nominal", "steps": 10,
                                      "custom": "x"}, probe={"dp": probe})
    store.upsert_run("sweep-1", "sweep", "{}", "running")
    store.finish_run("sweep-1", sweep_points=[(float("inf"), "dp-2"), (1.0, "dp-1")])
    priv = store.load_privacy("dp-1").iloc[0]
    assert priv["guarantee"] == "nominal" and priv["steps"] == 10 and '"custom"' in priv["extra"]
    assert store.load_probe(["dp-1"])["auroc"].tolist() == [0.8]
    pts = store.load_sweep_points("sweep-1")
    assert pts["run_id"].tolist() == ["dp-2", "dp-1"] and pts["epsilon"].iloc[0] == float("inf")


def test_missing_metric_column_is_a_clear_error(fresh_cache: Path) -> None:
    store.upsert_run("audit-x", "audit", "{}", "running")
    with pytest.raises(StoreError, match="recall"):
        store.finish_run("audit-x", metrics={"model": relink_rows().drop(columns=["recall"])})
    assert store.get_run("audit-x")["status"] == "running"  # the failed write rolled back


def _hold_db(path: Path, seconds: float) -> subprocess.Popen:
    code = ("import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('held', flush=True); "
            "time.sleep(float(sys.argv[2])); c.close()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_write_waits_for_a_briefly_held_database(fresh_cache: Path) -> None:
    store.list_runs()  # create the file
    holder = _hold_db(settings.db_path(), 1.0)
    t0 = time.monotonic()
    store.upsert_run("audit-late", "audit", "{}", "queued")
    waited = time.monotonic() - t0
    holder.wait(timeout=10)
    assert waited > 0.3, "the write should have waited for the other process"
    assert store.get_run("audit-late")["status"] == "queued"


def test_a_long_held_database_gives_an_actionable_error(fresh_cache: Path) -> None:
    store.list_runs()
    holder = _hold_db(settings.db_path(), 5.0)
    try:
        with pytest.raises(StoreError, match=f"is held by process {holder.pid}: .*python.*close it"):
            with store.connect(timeout_s=0.5):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_the_apps_own_short_reads_are_not_called_a_conflict(fresh_cache: Path) -> None:
    """A lock held by the dashboard (a streamlit process) or a job worker of this app is named as such, with no
    advice to stop it and no DuckDB "Conflicting lock" text; a foreign holder is named with its command line."""
    duck = "IO Error: Could not set lock on file \"x.duckdb\": Conflicting lock is held in {} (PID {}) by user root."
    for argv, expect in (([sys.executable, "-c", "import time; time.sleep(30)  # streamlit run app.py"], "the dashboard"),
                         ([sys.executable, "-c", "import time; time.sleep(30)  # -m backend worker job-1"],
                          "another job or command of this app")):
        proc = subprocess.Popen(argv)
        try:
            text = store.busy_message(settings.db_path(), duck.format(sys.executable, proc.pid), 15)
        finally:
            proc.kill()
            proc.wait()
        assert expect in text and f"process {proc.pid}" in text and "nothing to do" in text
        assert "Conflicting" not in text and "stop" not in text and "close it" not in text
    foreign = store.busy_message(settings.db_path(), duck.format("duckdb", 999_999_999), 15)
    assert "process 999999999" in foreign and "close it" in foreign


def test_concurrent_writer_processes_and_readers(fresh_cache: Path) -> None:
    code = ("import sys; from backend.runs import store\n"
            "for i in range(15):\n"
            "    store.upsert_run(f'{sys.argv[1]}-{i}', 'selftest', '{}', 'queued')\n"
            "    store.list_runs(status=None)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", code, f"w{j}"], env=env, cwd=REPO, stderr=subprocess.PIPE,
                              text=True) for j in range(3)]
    for _ in range(15):  # this process reads while they write
        store.list_runs(status=None)
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    assert len(store.list_runs(status=None)) == 45


def test_newer_schema_is_refused(fresh_cache: Path) -> None:
    store.list_runs()
    con = duckdb.connect(str(settings.db_path()))
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(StoreError, match="newer version"):
        store.list_runs()


def _valid_db_bytes(folder: Path) -> bytes:
    path = folder / "valid.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE t AS SELECT range AS i FROM range(100000)")
    con.close()
    return path.read_bytes()


@pytest.mark.parametrize("damage", ["zero-bytes", "random-bytes", "truncated", "directory"])
def test_a_damaged_database_is_reported_as_damaged_not_held(fresh_cache: Path, damage: str) -> None:
    path = settings.db_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    if damage == "zero-bytes":
        path.write_bytes(b"")
    elif damage == "random-bytes":
        path.write_bytes(os.urandom(64 * 1024))
    elif damage == "truncated":
        data = _valid_db_bytes(fresh_cache)
        path.write_bytes(data[: len(data) // 2])
    else:  # unreadable: a folder where the file should be (chmod 000 does not stop root, who runs the tests)
        path.mkdir()
    t0 = time.monotonic()
    with pytest.raises(StoreError) as info:
        store.list_runs()
    message = str(info.value)
    assert time.monotonic() - t0 < 5, "a damaged file is not a lock: no waiting"
    assert "damaged or unreadable" in message and "held by another process" not in message
    assert str(path) in message and "embeddings" in message and "Move it aside" in message


def test_a_database_truncated_mid_file_is_named_damaged_when_a_query_reaches_the_gap(fresh_cache: Path) -> None:
    """A file cut short (a copy broken off, a full disk during a checkpoint) opens fine and fails only when a query
    reads past its end: that read is reported as a damaged database with what to do, not DuckDB's IOException."""
    for i in range(300):
        store.upsert_run(f"r{i}", "selftest", "{}" + "x" * 5000, "done")
    path = settings.db_path()
    assert path.stat().st_size > 1_200_000
    with open(path, "r+b") as fh:
        fh.truncate(1024 * 1024)
    with pytest.raises(StoreError, match=r"is damaged or unreadable .*Move it aside"):
        store.list_runs(status=None)


def test_a_full_disk_keeps_what_was_stored_and_says_so(tmpfs, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmpfs("2m")))
    stored = 0
    with pytest.raises(StoreError, match=r"is full .*nothing of this write was stored .*Free some space"):
        for i in range(1000):
            store.upsert_run(f"r{i}", "selftest", "{}" + os.urandom(20_000).hex(), "done")
            stored += 1
    assert stored > 0 and len(store.list_runs(status=None)) == stored
