"""The demo snapshot: the one-button demo's results, made by this code and shipped in the repository, so a
new user sees every page populated within seconds of the first start instead of after an 18-minute job.

    cxr-relink snapshot make --cache DIR   # after the demo job ran in DIR: writes backend/demo_snapshot/
    cxr-relink snapshot import             # what the app does on start when the store lacks it

What ships (backend/demo_snapshot/): `manifest.json` (schema, the demo spec, the code version and package
versions that made it, every run's summary and stored rows: the audit's curves, each sweep point's curves,
probes and privacy record) and `audit_embeddings.npz` (the test split's image and report embeddings, ids,
labels and reports: what the audit and the pair explorer read). Nothing is typed in: `make` copies what the
demo job stored, and tests/test_snapshot.py recomputes the audit curves from the shipped embeddings and
requires them to equal the shipped rows exactly, and the shipped spec to equal the code's demo spec, so the
snapshot can never go stale silently.

Imported runs keep their kind and spec but get the run id `<run id>-snapshot` and a `snapshot` entry in
their summary: the pages label them "precomputed snapshot", and a real run of the same spec (the Overview's
Recompute button) is stored under the real id, is newer, and replaces the snapshot on every page.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from backend import settings
from backend.embed import load_embedding_set, save_npz
from backend.errors import StoreError
from backend.runs import store
from backend.runs.demo import default_demo_spec
from backend.runs.provenance import code_version
from backend.sources import load_source
from backend.specs import DemoSpec

log = logging.getLogger(__name__)

SNAPSHOT_DIR = Path(__file__).resolve().parent.parent / "demo_snapshot"
SNAPSHOT_SCHEMA = 1
SUFFIX = "-snapshot"
MANIFEST = "manifest.json"
EMBEDDINGS = "audit_embeddings.npz"
MAX_FILE_BYTES = 5 * 2**20


def snapshot_id(run_id: str) -> str:
    return f"{run_id}{SUFFIX}"


def is_snapshot(run: dict[str, Any] | None) -> bool:
    return bool(run and (run.get("summary") or {}).get("snapshot"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _records(frame: pd.DataFrame, drop: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows as records of Python scalars: every float exact (repr round-trips), inf and NaN kept (the manifest
    is read back by Python's json, which writes and reads them as Infinity and NaN)."""
    frame = frame.drop(columns=[c for c in drop if c in frame.columns])
    return [{k: v.item() if hasattr(v, "item") else v for k, v in r.items()} for r in frame.to_dict(orient="records")]


def _by_variant(frame: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    return {str(v): _records(g, ("run_id", "variant")) for v, g in frame.groupby("variant", sort=False)}


def _export_run(run_id: str) -> dict[str, Any]:
    run = store.get_run(run_id)
    if not run or run.get("status") != "done":
        raise StoreError(f"Run {run_id} is not finished in this store: run the demo job first (Overview, or "
                         "`cxr-relink jobs` to see where it is).")
    privacy = store.load_privacy(run_id)
    points = store.load_sweep_points(run_id) if run["kind"] == "sweep" else pd.DataFrame()
    times = store.run_times([run_id])
    started, finished = (None, None) if not len(times) else (times["started"].iloc[0], times["finished"].iloc[0])
    return {"run_id": run_id, "kind": run["kind"], "spec": run["spec"], "summary": run["summary"],
            "started": None if pd.isna(started) else float(started),
            "finished": None if pd.isna(finished) else float(finished),
            "device": run.get("device") or "", "label": run.get("label") or "",
            "metrics": _by_variant(store.load_metrics(run_id)), "probe": _by_variant(store.load_probe(run_id)),
            "privacy": _records(privacy, ("run_id",))[0] if len(privacy) else None,
            "sweep_points": [[float(e), str(r)] for e, r in zip(points.get("epsilon", []), points.get("run_id", []),
                                                                    strict=True)]}


def _current_meta(demo: DemoSpec, cached: pd.DataFrame) -> pd.DataFrame:
    """The demo audit's split as the current code's source gives it (what the audit itself read: embed_split
    takes meta from the table, not from cached files that may predate a column), in the cached rows' order; the
    cached meta as it is when its pairs are not that split's (logged; test_snapshot then checks the result)."""
    from backend.embed.compute import select_split, split_meta  # late: torch

    src = demo.audit.embed.source
    pairs = load_source(src.name, root=src.root, section_policy=src.section_policy, **src.options).pairs
    meta = split_meta(select_split(pairs, demo.audit.embed.split)).set_index("pair_id", drop=False)
    if len(meta) != len(cached) or not meta.index.isin(cached["pair_id"]).all():
        log.warning("snapshot: the audit's embeddings hold other pairs than the current %s split; their own "
                    "table is shipped", demo.audit.embed.split)
        return cached
    return meta.loc[cached["pair_id"].to_numpy()].reset_index(drop=True)


def make_snapshot(out: Path = SNAPSHOT_DIR, demo: DemoSpec | None = None) -> dict[str, Any]:
    """Write the snapshot of the finished demo runs of the current store (settings.cache_dir()) into `out`."""
    from backend.audit import versions  # late: backend.audit imports torch (this module is on the app's path)

    demo = demo or default_demo_spec()
    made_by = code_version()  # before this writes into the checkout (a changed npz would read as "-dirty")
    audit_id = demo.audit.run_id()
    runs = [_export_run(audit_id)]
    if demo.sweep is not None:
        sweep = _export_run(demo.sweep.run_id())
        runs += [sweep] + [_export_run(point) for _, point in sweep["sweep_points"]]
    embeddings = (store.get_run(audit_id) or {}).get("artifacts", {}).get("embeddings")
    if not embeddings or not Path(embeddings).exists():
        raise StoreError(f"The demo audit {audit_id} has no embeddings on disk ({embeddings}); run it again.")
    out.mkdir(parents=True, exist_ok=True)
    es = load_embedding_set(embeddings)
    es.meta = _current_meta(demo, es.meta)
    npz = save_npz(es, out / EMBEDDINGS)
    if npz.stat().st_size > MAX_FILE_BYTES:
        raise StoreError(f"{npz} is {npz.stat().st_size / 2**20:.1f} MB, over the 5 MB a shipped file may have.")
    manifest = {"schema": SNAPSHOT_SCHEMA, "store_schema": store.SCHEMA_VERSION,
                "made": datetime.now(UTC).isoformat(timespec="seconds"), "code_version": made_by,
                "computed": computed(runs),
                "versions": versions(), "command": "cxr-relink snapshot make", "demo_spec": demo.to_dict(),
                "runs": runs, "files": {EMBEDDINGS: {"sha256": _sha256(npz), "bytes": npz.stat().st_size}}}
    settings.atomic_write(out / MANIFEST, lambda p: p.write_text(json.dumps(manifest, indent=1, sort_keys=True)))
    return manifest


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def computed(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """When the snapshot's runs were computed: the first start and the last end over its runs (UTC) and the
    duration in seconds between them; "not recorded" for each that no run recorded."""
    starts = [r["started"] for r in runs if r.get("started")]
    ends = [r["finished"] for r in runs if r.get("finished")]
    if not starts or not ends:
        return {"started": "not recorded", "finished": "not recorded", "duration_s": "not recorded"}
    return {"started": _iso(min(starts)), "finished": _iso(max(ends)), "duration_s": round(max(ends) - min(starts), 1)}


def describe_manifest(manifest: dict[str, Any], expected: DemoSpec | None = None) -> dict[str, Any]:
    """What a reader needs of a snapshot beyond its rows, "not recorded" where a snapshot made by older code lacks
    it: when it was made and computed (start, end, duration), the weights hash of the demo model it used, and what
    in it is older than this code's default demo (`outdated`)."""
    runs = manifest.get("runs") or []
    weights = ((runs[0].get("summary") or {}).get("inputs") or {}).get("weights_hash") if runs else None
    return {"made": manifest.get("made") or "not recorded", **(manifest.get("computed") or computed(runs)),
            "weights_hash": weights or "not recorded", "outdated": outdated(manifest, expected)}


def outdated(manifest: dict[str, Any], expected: DemoSpec | None = None) -> list[str]:
    """The parts of a snapshot that an older code's default demo made and this code's default no longer names: its
    audit must match (check_manifest), while a sweep made under an earlier default is still shown, said to be older
    (the Recompute button computes the current one)."""
    spec = (manifest.get("demo_spec") or {}).get("sweep")
    want = (expected or default_demo_spec()).to_dict().get("sweep")
    if spec == want:
        return []
    base = (spec or {}).get("base") or {}
    return [f"its epsilon sweep is an earlier default's ({base.get('objective', '?')} objective, privacy unit "
            f"{base.get('privacy_unit', '?')}, epsilons {', '.join(str(e) for e in (spec or {}).get('epsilons', []))}); "
            "Recompute computes the current default (certified, privacy unit patient)"]


def read_manifest(folder: Path = SNAPSHOT_DIR) -> dict[str, Any] | None:
    path = folder / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def check_manifest(manifest: dict[str, Any], folder: Path = SNAPSHOT_DIR, expected: DemoSpec | None = None) -> list[str]:
    """What makes the snapshot unusable with this code (empty when it matches): schema, spec, files.
    `expected`: the demo spec it must hold (default: the code's default demo)."""
    problems = []
    if manifest.get("schema") != SNAPSHOT_SCHEMA:
        problems.append(f"snapshot schema {manifest.get('schema')} is not {SNAPSHOT_SCHEMA}")
    if manifest.get("store_schema") != store.SCHEMA_VERSION:
        problems.append(f"store schema {manifest.get('store_schema')} is not {store.SCHEMA_VERSION}")
    shipped, want = manifest.get("demo_spec") or {}, (expected or default_demo_spec()).to_dict()
    if shipped.get("audit") != want.get("audit") or shipped.get("kind") != want.get("kind"):
        problems.append("its demo audit differs from the code's default demo (regenerate: cxr-relink snapshot make)")
    for name, info in (manifest.get("files") or {}).items():
        path = folder / name
        if not path.is_file() or _sha256(path) != info.get("sha256"):
            problems.append(f"{name} is missing or differs from the manifest")
    return problems


def import_snapshot(folder: Path = SNAPSHOT_DIR, expected: DemoSpec | None = None) -> list[str]:
    """Put the shipped demo runs into the store (once; again when their files moved). Returns the run ids
    imported now; nothing when the store has them already, the snapshot is absent or switched off
    (CXR_DEMO_SNAPSHOT=0), or it does not match this code (logged)."""
    manifest = read_manifest(folder) if settings.demo_snapshot_enabled() else None
    if manifest is None:
        return []
    npz = (folder / EMBEDDINGS).resolve()
    audit = store.get_run(snapshot_id(manifest["runs"][0]["run_id"]))
    if audit and audit.get("status") == "done" and audit.get("artifacts", {}).get("embeddings") == str(npz):
        return []
    problems = check_manifest(manifest, folder, expected)
    if problems:
        log.warning("demo snapshot in %s not imported: %s", folder, "; ".join(problems))
        return []
    described = describe_manifest(manifest, expected)
    note = {"made": manifest["made"], "code_version": manifest["code_version"], "original_run": "",
            "computed": {k: described[k] for k in ("started", "finished", "duration_s")},
            "weights_hash": described["weights_hash"], "outdated": described["outdated"]}
    done = []
    for run in manifest["runs"]:
        rid = snapshot_id(run["run_id"])
        store.upsert_run(rid, run["kind"], run["spec"], "running", label=run.get("label") or "")
        privacy = dict(run["privacy"]) if run.get("privacy") else None
        if privacy is not None:  # the store keeps fields beyond its columns as JSON text in `extra`
            privacy.update(json.loads(privacy.pop("extra") or "{}"))
        store.finish_run(
            rid, summary={**run["summary"], "snapshot": {**note, "original_run": run["run_id"],
                                                         "started": run.get("started"), "finished": run.get("finished")}},
            artifacts={"embeddings": str(npz)} if run is manifest["runs"][0] else {}, device=run.get("device", ""),
            metrics={v: pd.DataFrame(rows) for v, rows in run["metrics"].items()},
            probe={v: pd.DataFrame(rows) for v, rows in run["probe"].items()}, privacy=privacy,
            sweep_points=[(eps, snapshot_id(point)) for eps, point in run["sweep_points"]])
        done.append(rid)
    log.info("imported the demo snapshot (%d runs, made %s)", len(done), manifest["made"])
    return done
