"""Export of one run as a zip and run provenance: the archive's rows read back equal the store's
rows (read independently, through DuckDB); a missing run id is a named error that says how to find run ids; an
older store without the provenance table stays readable."""

from __future__ import annotations

import io
import json
import re
import time
import zipfile
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from backend import settings
from backend.__main__ import main
from backend.errors import UnknownRunError
from backend.runs import provenance, store
from backend.views import export
from tests.helpers.seed import seed_store


@pytest.fixture(scope="module")
def ids(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    import os

    old = os.environ.get("CXR_CACHE_DIR")
    out = seed_store(Path(tmp_path_factory.mktemp("export")))
    out["cache"] = os.environ["CXR_CACHE_DIR"]
    yield out
    if old is not None:
        os.environ["CXR_CACHE_DIR"] = old


def _raw(sql: str, args: list) -> pd.DataFrame:
    """Rows straight from the database file, not through store.py."""
    con = duckdb.connect(str(settings.db_path()), read_only=True)
    try:
        return con.execute(sql, args).df()
    finally:
        con.close()


def _zip(data: bytes) -> zipfile.ZipFile:
    return zipfile.ZipFile(io.BytesIO(data))


def _same(a: pd.DataFrame, b: pd.DataFrame, keys: list[str]) -> None:
    a, b = a.sort_values(keys).reset_index(drop=True), b.sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(a[list(b.columns)], b, check_dtype=False, rtol=1e-12)


def test_sweep_archive_rows_equal_the_stored_rows(ids: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_CACHE_DIR", ids["cache"])
    sweep = ids["sweep"]
    data = export.archive_bytes(sweep)
    assert data == export.archive_bytes(sweep), "the archive must be deterministic"
    z = _zip(data)
    names = z.namelist()
    assert names[0] == "README.txt" and names[1:3] == ["run.json", "provenance.json"]
    readme = z.read("README.txt").decode()
    assert all(name in readme for name in names), "README.txt names every file"
    assert "Lift: Recall@K(N) divided by chance" in readme
    points = _raw("SELECT * FROM sweep_points WHERE sweep_id = ? ORDER BY position", [sweep])
    assert len(points) == 7
    ids_all = [sweep, *points["run_id"]]
    marks = ", ".join("?" * len(ids_all))
    metrics = _raw(f"SELECT * FROM metrics WHERE run_id IN ({marks})", ids_all)
    keys = ["run_id", "variant", "pool_kind", "level", "k", "n"]
    _same(pd.read_csv(io.BytesIO(z.read("curves.csv"))), metrics, keys)
    _same(pd.DataFrame(json.loads(z.read("curves.json"))), metrics, keys)
    probe = _raw(f"SELECT * FROM probe WHERE run_id IN ({marks})", ids_all)
    _same(pd.read_csv(io.BytesIO(z.read("auroc.csv"))), probe, ["run_id", "variant", "method", "label"])
    _same(pd.read_csv(io.BytesIO(z.read("sweep_points.csv"))), points, ["position"])
    back = pd.DataFrame(json.loads(z.read("sweep_points.json")))
    assert back["epsilon"].tolist() == points["epsilon"].tolist()  # inf survives JSON
    privacy = _raw(f"SELECT * FROM privacy WHERE run_id IN ({marks})", ids_all)
    _same(pd.read_csv(io.BytesIO(z.read("privacy.csv")), keep_default_na=False, na_values=[""]), privacy, ["run_id"])
    run = json.loads(z.read("run.json"))
    stored = _raw("SELECT spec FROM runs WHERE run_id = ?", [sweep])["spec"].iloc[0]
    assert run["spec"] == json.loads(stored) and run["provenance"] == json.loads(z.read("provenance.json"))


def test_audit_archive_holds_the_per_query_table(ids: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_CACHE_DIR", ids["cache"])
    z = _zip(export.archive_bytes(ids["audit:demo"]))
    stored = pd.read_parquet(store.runs_dir(ids["audit:demo"]) / "per_query.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(io.BytesIO(z.read("per_query.parquet"))), stored)
    assert "sweep_points.csv" not in z.namelist() and "members.csv" not in z.namelist()


def test_members_rows_are_exported(ids: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_cache: Path) -> None:
    rows = [{"n": n, "member_recall": 0.5 / n, "nonmember_recall": 0.4 / n, "gap": 0.1 / n, "gap_ci_low": -0.01,
             "gap_ci_high": 0.2 / n} for n in (10, 100)]
    store.upsert_run("dp-x", "dp", "{}", "running")
    store.finish_run("dp-x", summary={"members": rows})
    z = _zip(export.archive_bytes("dp-x"))
    back = pd.read_csv(io.BytesIO(z.read("members.csv")))
    assert list(back.columns[:2]) == ["run_id", "n"] and set(back["run_id"]) == {"dp-x"}
    pd.testing.assert_frame_equal(back[list(rows[0])], pd.DataFrame(rows), check_dtype=False)
    assert pd.DataFrame(json.loads(z.read("members.json")))[list(rows[0])].equals(pd.DataFrame(rows))


def test_missing_run_id_is_a_named_error_that_says_how_to_find_ids(ids: dict[str, str],
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("CXR_CACHE_DIR", ids["cache"])
    with pytest.raises(UnknownRunError, match="export --list") as err:
        export.archive_bytes("audit-000000000000")
    assert "audit-000000000000" in str(err.value) and ids["sweep"] in str(err.value)
    assert main(["export", "audit-000000000000", "--out", "x.zip"]) == 2
    assert "export --list" in capsys.readouterr().err
    assert main(["export", "--list"]) == 0
    assert ids["audit:demo"] in capsys.readouterr().out


def test_cli_writes_the_same_archive(ids: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CXR_CACHE_DIR", ids["cache"])
    out = tmp_path / "deep" / "a.zip"
    assert main(["export", ids["audit:openai-vit-b-16"], "--out", str(out)]) == 0
    assert out.read_bytes() == export.archive_bytes(ids["audit:openai-vit-b-16"])


def test_provenance_is_recorded_per_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_cache: Path) -> None:
    store.upsert_run("audit-a", "audit", "{}", "queued")
    before = time.time()
    store.set_run_status("audit-a", "running")
    time.sleep(0.05)
    store.finish_run("audit-a", summary={"inputs": {"data_hash": "abc123", "n_pairs": 7}})
    after = time.time()
    prov = store.get_provenance("audit-a")
    assert before <= prov["started"] <= prov["finished"] <= after
    assert prov["duration_s"] == pytest.approx(prov["finished"] - prov["started"]) and prov["duration_s"] >= 0.05
    assert prov["code_version"] == provenance.code_version() and prov["package_version"] == provenance.package_version()
    assert prov["data_hash"] == "abc123" and prov["n_pairs"] == 7
    store.set_run_inputs("audit-a", {"data_hash": "def456", "n_pairs": 7})  # recorded after the run finished
    assert store.get_provenance("audit-a")["data_hash"] == "def456"
    store.upsert_run("dp-b", "dp", "{}", "running")
    store.finish_run("dp-b", started=before - 100)  # a sweep point: its start passed in
    assert store.get_provenance("dp-b")["duration_s"] >= 100
    assert store.get_provenance("nope") == {}


def test_code_version_is_read_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    first = provenance.code_version()
    assert first == "unknown" or re.fullmatch(r"[0-9a-f]{40}([0-9a-f]{24})?(-dirty)?", first), first
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("git was asked again"))
    assert provenance.code_version() == first


def test_code_version_outside_a_git_checkout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(settings, "REPO_ROOT", tmp_path)  # no .git here
    provenance.code_version.cache_clear()
    try:
        assert provenance.code_version() == "unknown"
    finally:
        provenance.code_version.cache_clear()
    assert provenance.stamp()["package_version"] == provenance.package_version()


def test_an_older_store_without_provenance_stays_readable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_cache: Path) -> None:
    old_ddl = store._DDL.split("CREATE TABLE IF NOT EXISTS run_provenance")[0] + \
        "INSERT OR REPLACE INTO meta VALUES ('schema_version', '1');"
    con = duckdb.connect(str(settings.db_path()))
    con.execute(old_ddl)
    con.execute("INSERT INTO runs VALUES ('audit-old', 'audit', '{}', 'done', 1.0, 2.0, '{}', '{}', 'cpu', '')")
    con.close()
    assert store.get_run("audit-old")["run_id"] == "audit-old"
    prov = store.get_provenance("audit-old")
    assert prov["code_version"].startswith("not recorded") and prov["started"] is None and prov["finished"] == 2.0
    assert list(store.list_runs()["run_id"]) == ["audit-old"]
    tables = _raw("SELECT table_name FROM information_schema.tables", [])["table_name"].tolist()
    assert "run_provenance" in tables
    assert _raw("SELECT value FROM meta WHERE key = 'schema_version'", [])["value"].iloc[0] == str(store.SCHEMA_VERSION)
    z = _zip(export.archive_bytes("audit-old"))
    assert json.loads(z.read("provenance.json"))["code_version"].startswith("not recorded")


def test_an_imported_snapshot_names_the_snapshots_code_version() -> None:
    run = {"finished": 50.0, "summary": {"snapshot": {"code_version": "abc", "made": "2026-01-01T00:00:00+00:00"},
                                         "inputs": {"data_hash": "0123456789abcdef", "n_pairs": 3}}}
    prov = provenance.describe(run, {"code_version": "importer", "started": 40.0, "finished": 50.0})
    assert prov["code_version"] == "abc (demo snapshot made 2026-01-01T00:00:00+00:00)"
    assert prov["started"] is None and prov["duration_s"] is None and prov["data_hash"] == "0123456789abcdef"
    shown = provenance.display(prov)
    assert shown[provenance.FIELD_NAMES["started"]] == "not recorded" and shown[provenance.FIELD_NAMES["n_pairs"]] == "3"


def test_a_sweeps_points_start_where_the_previous_point_ended(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import math

    from backend.runs import persist
    from backend.specs import AuditSpec, DPSpec, EmbedSpec, SweepSpec
    from tests.helpers.seed import SOURCE, _dp_result

    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path))
    base = DPSpec(source=SOURCE, model="demo", audit=AuditSpec(embed=EmbedSpec(source=SOURCE, model="demo")))
    sweep = SweepSpec(base=base, epsilons=(1.0, math.inf))
    store.upsert_run(sweep.run_id(), "sweep", sweep.to_json(), "running")
    begun = store.get_provenance(sweep.run_id())["started"]
    ends = []
    for point in sweep.points():
        privacy = {"epsilon": point.epsilon, "guarantee": "nominal", "privacy_unit": "pair"}
        persist.persist_sweep_part(sweep.run_id(), sweep, _dp_result(point, "dp", 0.2, 0.0, privacy), "cpu")
        ends.append(store.get_provenance(point.run_id()))
    assert ends[0]["started"] == begun and ends[1]["started"] == ends[0]["finished"]
    persist.finish_sweep(sweep.run_id(), sweep, "cpu")
    whole = store.get_provenance(sweep.run_id())
    assert whole["started"] == begun and whole["finished"] >= ends[1]["finished"]


def test_export_onto_a_full_disk_keeps_the_old_archive(ids: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                                       tmpfs, capsys: pytest.CaptureFixture) -> None:
    """--force onto an existing zip on a full disk: one named error, the old zip as it was, no temporary file."""
    monkeypatch.setenv("CXR_CACHE_DIR", ids["cache"])
    tiny_disk = tmpfs("16k")
    old = tiny_disk / "results.zip"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("old.txt", "x" * 9000)  # stored: 9 KB of the 16
    old.write_bytes(buffer.getvalue())
    before = old.read_bytes()
    assert len(export.archive_bytes(ids["sweep"])) > 16 * 1024 - len(before)  # it cannot fit beside the old one
    assert main(["export", ids["sweep"], "--out", str(old), "--force"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Could not write") and "No space left" in err and "unchanged" in err, err
    assert "Traceback" not in err
    assert old.read_bytes() == before and _zip(old.read_bytes()).namelist() == ["old.txt"]
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["results.zip"]


def test_export_replaces_a_file_only_when_told(ids: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("CXR_CACHE_DIR", ids["cache"])
    out = tmp_path / "new" / "folder" / "r.zip"  # a missing folder is made
    assert main(["export", ids["sweep"], "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}")
    out.write_bytes(b"mine")
    assert main(["export", ids["sweep"], "--out", str(out)]) == 2
    assert "exists; pass --force to replace it" in capsys.readouterr().err and out.read_bytes() == b"mine"
    assert main(["export", ids["sweep"], "--out", str(out), "--force"]) == 0
    assert capsys.readouterr().out.startswith(f"replaced {out}")
    assert out.read_bytes() == export.archive_bytes(ids["sweep"])
    assert main(["export", ids["sweep"], "--out", str(tmp_path)]) == 2  # a folder: named, not a traceback
    assert "is a folder; give a file name" in capsys.readouterr().err


def test_export_and_jobs_read_a_read_only_copy_of_the_cache(tmpfs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    """A privacy officer's read-only copy of the results (a read-only mount): the commands that only read it
    (export, export --list, jobs) work; a command that would write says the folder cannot be written."""
    import subprocess

    cache = tmpfs("64m")
    monkeypatch.setenv("CXR_CACHE_DIR", str(cache))
    ids = seed_store(cache)
    expected = export.archive_bytes(ids["sweep"])
    subprocess.run(["mount", "-o", "remount,ro", str(cache)], check=True)
    out = tmp_path / "from-read-only.zip"
    assert main(["export", "--list"]) == 0 and ids["sweep"] in capsys.readouterr().out
    assert main(["export", ids["sweep"], "--out", str(out)]) == 0
    assert out.read_bytes() == expected
    assert main(["jobs"]) == 0
    assert not settings.is_reading_only()  # only while those commands ran
    assert main(["audit", "--json", str(tmp_path / "a.json")]) == 2
    assert "cannot be created or written" in capsys.readouterr().err
