"""The shipped demo snapshot: it must match the code (spec, schema, files), its audit curves must be what the code
computes from its shipped embeddings on this CPU and on emulated older ones (keys, counts and recall exactly, the
derived columns to a few ulps), and make -> import must round-trip every stored row."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from backend.runs import snapshot, store
from backend.specs import AuditSpec, DemoSpec, EmbedSpec, SweepSpec, spec_from_json
from backend.views import catalog, mitigation, verdict
from tests.helpers.seed import SOURCE, seed_store

SHIPPED = snapshot.read_manifest()


@pytest.fixture()
def cache(fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cache with the shipped snapshot switched on."""
    monkeypatch.setenv("CXR_DEMO_SNAPSHOT", "1")
    return fresh_cache


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
    head = verdict.headline(SOURCE.name, "demo")  # the pages find the imported runs
    assert head["audit_run"] == snapshot.snapshot_id(ids["audit:demo"])
    assert head["sweep_run"] == snapshot.snapshot_id(ids["sweep"])
    view = mitigation.sweep_view(head["sweep_run"])
    assert len(view.points) == len(demo.sweep.epsilons)


def test_a_real_run_of_the_same_spec_replaces_the_snapshot_on_the_pages(cache: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    ids = seed_store()
    demo = _seeded_demo(ids)
    out = tmp_path / "snap"
    snapshot.make_snapshot(out, demo)
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / "fresh"))
    snapshot.import_snapshot(out, expected=demo)
    assert verdict.headline(SOURCE.name, "demo")["audit_run"].endswith(snapshot.SUFFIX)
    seed_store()  # the "recomputed" runs, stored later under their real ids
    assert verdict.headline(SOURCE.name, "demo")["audit_run"] == ids["audit:demo"]


@pytest.mark.skipif(SHIPPED is None, reason="no snapshot shipped in backend/demo_snapshot/")
def test_shipped_snapshot_matches_this_code() -> None:
    assert snapshot.check_manifest(SHIPPED) == []
    assert SHIPPED["code_version"] not in ("", "unknown")
    sizes = [p.stat().st_size for p in snapshot.SNAPSHOT_DIR.iterdir()]
    assert max(sizes) <= snapshot.MAX_FILE_BYTES and sum(sizes) <= 10 * 2**20


def shipped_curve_differences() -> list[str]:
    """The shipped audit's curves recomputed from the shipped embeddings by this code, against the shipped rows
    (backend.relink.rows.curve_differences: keys, counts and recall identical, derived columns within a few ulps)."""
    from backend.audit import audit_embeddings
    from backend.embed import load_npz
    from backend.relink.rows import curve_differences

    audit = SHIPPED["runs"][0]
    es = load_npz(snapshot.SNAPSHOT_DIR / snapshot.EMBEDDINGS)
    rows = audit_embeddings(es, spec_from_json(audit["spec"])).rows
    problems = curve_differences(rows, pd.DataFrame(audit["metrics"]["model"]))
    if audit["summary"].get("n_queries", len(es)) != len(es):
        problems.append(f"n_queries {audit['summary']['n_queries']} against {len(es)} embeddings")
    return problems


@pytest.mark.skipif(SHIPPED is None, reason="no snapshot shipped in backend/demo_snapshot/")
def test_shipped_audit_curves_are_what_the_code_computes_from_the_shipped_embeddings() -> None:
    assert shipped_curve_differences() == []


# Other CPU families on this one: OpenBLAS's kernels for an older core and numpy's SIMD dispatch capped at that
# core's instruction sets (numpy's runtime switch). Each needs those instruction sets here, else it is skipped.
CPU_EMULATIONS = {
    "avx2-haswell": ({"OPENBLAS_CORETYPE": "Haswell"}, ("X86_V4", "AVX512_ICL", "AVX512_SPR"), ("AVX2", "FMA3")),
    "avx-sandybridge": ({"OPENBLAS_CORETYPE": "Sandybridge"}, ("X86_V3", "X86_V4", "AVX512_ICL", "AVX512_SPR"),
                        ("AVX",)),
}
_CHILD = """
import json, threadpoolctl
from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
from tests.test_snapshot import shipped_curve_differences
blas = [i.get("architecture") for i in threadpoolctl.threadpool_info() if i.get("internal_api") == "openblas"]
on = [f for f in __cpu_dispatch__ if __cpu_features__.get(f)]
print(json.dumps({"problems": shipped_curve_differences(), "openblas": blas, "numpy_dispatch": on}))
"""


@pytest.mark.skipif(SHIPPED is None, reason="no snapshot shipped in backend/demo_snapshot/")
@pytest.mark.parametrize("family", sorted(CPU_EMULATIONS))
def test_shipped_audit_curves_hold_on_other_cpu_families(family: str) -> None:
    import json
    import os
    import subprocess
    import sys

    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    env_vars, disable, needs = CPU_EMULATIONS[family]
    missing = [f for f in needs if not __cpu_features__.get(f)]
    if missing:
        pytest.skip(f"this CPU lacks {', '.join(missing)}: it cannot run {family}'s kernels")
    disabled = [f for f in disable if f in __cpu_dispatch__]
    env = {**os.environ, **env_vars, "NPY_DISABLE_CPU_FEATURES": " ".join(disabled)}
    env.pop("OPENBLAS_L2_SIZE", None)
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, cwd=Path(__file__).resolve().parent.parent,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    child = json.loads(out.stdout.strip().splitlines()[-1])
    assert child["openblas"] and all(a.lower() == env_vars["OPENBLAS_CORETYPE"].lower() for a in child["openblas"])
    assert not set(child["numpy_dispatch"]) & set(disabled)
    assert child["problems"] == []


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
    assert catalog.latest("audit") is None


def test_the_snapshot_records_when_it_was_computed_and_older_ones_read_not_recorded(
        cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.runs import provenance

    ids = seed_store()
    demo = _seeded_demo(ids)
    times = store.run_times([ids["audit:demo"], ids["sweep"]])
    manifest = snapshot.make_snapshot(tmp_path / "snap", demo)
    first, last = times["started"].min(), times["finished"].max()
    points = store.run_times([p for _, p in manifest["runs"][1]["sweep_points"]])
    first, last = min(first, points["started"].min()), max(last, points["finished"].max())
    assert manifest["computed"]["duration_s"] == round(last - first, 1) and manifest["computed"]["started"] != "not recorded"
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / "fresh"))
    snapshot.import_snapshot(tmp_path / "snap", expected=demo)
    rid = snapshot.snapshot_id(ids["audit:demo"])
    prov = provenance.describe(store.get_run(rid), store.run_times([rid]).iloc[0].to_dict())
    original = times.set_index("run_id").loc[ids["audit:demo"]]
    assert prov["started"] == original["started"] and prov["finished"] == original["finished"]
    old = {k: v for k, v in manifest.items() if k != "computed"}
    old["runs"] = [{k: v for k, v in r.items() if k not in ("started", "finished")} for r in manifest["runs"]]
    described = snapshot.describe_manifest(old, expected=demo)
    assert described["started"] == described["duration_s"] == described["weights_hash"] == "not recorded"
    assert described["outdated"] == []


def test_a_snapshot_of_an_older_default_sweep_is_imported_and_said_to_be_older(
        cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    ids = seed_store()
    demo = _seeded_demo(ids)
    manifest = snapshot.make_snapshot(tmp_path / "snap", demo)
    newer = dataclasses.replace(demo, sweep=dataclasses.replace(demo.sweep, epsilons=(0.34, *demo.sweep.epsilons)))
    assert snapshot.check_manifest(manifest, tmp_path / "snap", expected=newer) == []
    assert "earlier default" in snapshot.outdated(manifest, newer)[0]
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / "fresh"))
    assert snapshot.import_snapshot(tmp_path / "snap", expected=newer)
    note = store.get_run(snapshot.snapshot_id(ids["sweep"]))["summary"]["snapshot"]
    assert note["outdated"] and note["weights_hash"] == "not recorded"
    audit_changed = dataclasses.replace(demo, audit=dataclasses.replace(demo.audit, n_bootstrap=9))
    assert snapshot.check_manifest(manifest, tmp_path / "snap", expected=audit_changed) != []  # the audit must match
