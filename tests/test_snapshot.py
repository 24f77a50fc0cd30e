"""The shipped demo snapshot: it must match the code (spec, schema, files), its audit curves must be exactly
what the code computes from its shipped embeddings, and make -> import must round-trip every stored row."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from backend.runs import snapshot, store
from backend.specs import AuditSpec, DemoSpec, EmbedSpec, SweepSpec, spec_from_json
from backend.views import dashboard
from tests.helpers.seed import SOURCE, seed_store

SHIPPED = snapshot.read_manifest()


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CXR_DEMO_SNAPSHOT", "1")
    return tmp_path / "cache"


def _seeded_demo(ids: dict[str, str]) -> DemoSpec:
    audit = AuditSpec(embed=EmbedSpec(source=SOURCE, model="demo"))
    sweep = spec_from_json(store.get_run(ids["sweep"])["spec"])
    assert isinstance(sweep, SweepSpec) and audit.run_id() == ids["audit:demo"]
    return DemoSpec(audit=audit, sweep=sweep)


def test_make_then_import_round_trips_every_stored_row(cache: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    ids = seed_store()
    demo = _seeded_demo(ids)
    out = tmp_path / "snap"
    manifest = snapshot.make_snapshot(out, demo)
    assert snapshot.check_manifest(manifest, out, expected=demo) == []
    assert snapshot.check_manifest(manifest, out) != []  # not the code's default demo: refused
    originals = [r["run_id"] for r in manifest["runs"]]
    before = {rid: (store.load_metrics(rid), store.load_probe(rid), store.load_privacy(rid)) for rid in originals}

    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / "fresh"))
    imported = snapshot.import_snapshot(out, expected=demo)
    assert imported == [snapshot.snapshot_id(r) for r in originals]
    assert snapshot.import_snapshot(out, expected=demo) == []  # once
    for rid in originals:
        for old, new in zip(before[rid], (store.load_metrics(snapshot.snapshot_id(rid)),
                                          store.load_probe(snapshot.snapshot_id(rid)),
                                          store.load_privacy(snapshot.snapshot_id(rid))), strict=True):
            cols = [c for c in old.columns if c != "run_id"]
            keys = [c for c in ("variant", "pool_kind", "level", "k", "n", "method", "label") if c in cols]

            def rows(frame: pd.DataFrame, cols: list[str] = cols, keys: list[str] = keys) -> pd.DataFrame:
                return frame[cols].sort_values(keys).reset_index(drop=True) if keys else frame[cols]

            assert len(old) == len(new)
            pd.testing.assert_frame_equal(rows(old), rows(new))
    run = store.get_run(snapshot.snapshot_id(ids["audit:demo"]))
    assert snapshot.is_snapshot(run) and run["summary"]["snapshot"]["original_run"] == ids["audit:demo"]
    head = dashboard.headline(SOURCE.name, "demo")  # the pages find the imported runs
    assert head["audit_run"] == snapshot.snapshot_id(ids["audit:demo"])
    assert head["sweep_run"] == snapshot.snapshot_id(ids["sweep"])
    view = dashboard.sweep_view(head["sweep_run"])
    assert len(view.points) == len(demo.sweep.epsilons)


def test_a_real_run_of_the_same_spec_replaces_the_snapshot_on_the_pages(cache: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    ids = seed_store()
    demo = _seeded_demo(ids)
    out = tmp_path / "snap"
    snapshot.make_snapshot(out, demo)
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / "fresh"))
    snapshot.import_snapshot(out, expected=demo)
    assert dashboard.headline(SOURCE.name, "demo")["audit_run"].endswith(snapshot.SUFFIX)
    seed_store()  # the "recomputed" runs, stored later under their real ids
    assert dashboard.headline(SOURCE.name, "demo")["audit_run"] == ids["audit:demo"]


@pytest.mark.skipif(SHIPPED is None, reason="no snapshot shipped in backend/demo_snapshot/")
def test_shipped_snapshot_matches_this_code() -> None:
    assert snapshot.check_manifest(SHIPPED) == []
    assert SHIPPED["code_version"] not in ("", "unknown")
    sizes = [p.stat().st_size for p in snapshot.SNAPSHOT_DIR.iterdir()]
    assert max(sizes) <= snapshot.MAX_FILE_BYTES and sum(sizes) <= 10 * 2**20


@pytest.mark.skipif(SHIPPED is None, reason="no snapshot shipped in backend/demo_snapshot/")
def test_shipped_audit_curves_are_what_the_code_computes_from_the_shipped_embeddings() -> None:
    from backend.audit import audit_embeddings
    from backend.embed import load_npz
    from backend.relink.rows import CURVE_COLUMNS

    audit = SHIPPED["runs"][0]
    spec = spec_from_json(audit["spec"])
    es = load_npz(snapshot.SNAPSHOT_DIR / snapshot.EMBEDDINGS)
    rows = audit_embeddings(es, spec).rows
    keys = ["pool_kind", "level", "k", "n"]
    got = rows[list(CURVE_COLUMNS)].sort_values(keys).reset_index(drop=True)
    shipped = pd.DataFrame(audit["metrics"]["model"])[list(CURVE_COLUMNS)].sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, shipped, check_dtype=False, check_exact=True)
    assert audit["summary"]["n_queries"] == len(es) if "n_queries" in audit["summary"] else True


@pytest.mark.skipif(SHIPPED is None, reason="no snapshot shipped in backend/demo_snapshot/")
def test_shipped_runs_name_the_data_this_code_generates() -> None:
    """The data hash each shipped run records is the digest of the data the current code generates for its spec
    (the synthetic source gains a column, changes a report ...: the snapshot must be made again)."""
    from backend.sources import load_source

    audit = spec_from_json(SHIPPED["runs"][0]["spec"])
    src = audit.embed.source
    digest = load_source(src.name, root=src.root, section_policy=src.section_policy, **src.options).digest()
    recorded = {run["run_id"]: (run["summary"].get("inputs") or {}).get("data_hash") for run in SHIPPED["runs"]}
    assert recorded == dict.fromkeys(recorded, digest)


def test_import_is_skipped_when_nothing_ships_or_switched_off(cache: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    assert snapshot.import_snapshot(tmp_path / "nothing") == []
    monkeypatch.setenv("CXR_DEMO_SNAPSHOT", "0")
    assert snapshot.import_snapshot() == []
    assert dashboard.latest("audit") is None
