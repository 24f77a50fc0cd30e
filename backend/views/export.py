"""Export every result of one stored run as one zip archive: the page's download button and
`python -m backend export RUN_ID --out FILE.zip` write the same bytes.

Files, always in this order (those a run has no rows for are left out; README.txt says which are in):
  README.txt      what each file holds, the metric definitions, how JSON writes inf and NaN
  run.json        run id, kind, status, device, the full spec, the summary and the provenance
  provenance.json code version, package version, data hash, start, end, duration (backend.runs.provenance)
  curves.json/.csv the re-linkage curve rows (store.load_metrics)
  auroc.json/.csv  per-label AUROC rows (store.load_probe)
  privacy.json/.csv the DP record (store.load_privacy)
  sweep_points.json/.csv (sweep) epsilon -> DP run id, in grid order
  members.json/.csv members against non-members, one row per N (DP runs and sweeps that measured them)
  per_query.parquet one row per query image (audits that stored it; the stored file as it is)
A sweep's archive holds its points' rows too (curves, auroc, privacy, members: the `run_id` column says whose).

The archive is deterministic: fixed file order and fixed timestamps, so exporting a finished run twice gives the
same bytes. Text is data: nothing in the archive is interpreted as markup by this code.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pandas as pd

from backend import settings
from backend.errors import OutputError, UnknownRunError
from backend.runs import store
from backend.runs.provenance import FIELD_NAMES, FIELDS
from backend.views.definitions import DEFINITIONS

ZIP_TIME = (1980, 1, 1, 0, 0, 0)
TABLES = ("curves", "auroc", "privacy", "sweep_points", "members")
FILE_NOTES = {
    "README.txt": "this file",
    "run.json": "run id, kind, status, device, the full spec (as the run id was computed from it), the summary and "
                "the provenance",
    "provenance.json": "where the results come from: " + "; ".join(FIELD_NAMES[f] for f in FIELDS),
    "curves": "re-linkage curve rows: run_id, variant ('model': an audited model; 'dp': DP heads; 'original': the "
              "model's own heads evaluated with a sweep; 'transfer:<source>:dp': heads applied to another source), "
              "pool_kind, level (study/patient), k, n (pool size N), recall (Recall@K), ci_low, ci_high (95% "
              "patient-bootstrap CI of the recall), chance (K/N), lift (recall / chance), effective_n",
    "auroc": "per-label AUROC rows: run_id, variant, method (linear probe / zero-shot), label (one of the 14 "
             "findings, or macro), auroc, ci_low, ci_high (95% patient-bootstrap CI), n_pos",
    "privacy": "the DP record per DP run: epsilon (accountant), delta, noise_multiplier, sample_rate, steps, "
               "max_grad_norm, accountant, objective, privacy_unit, guarantee (certified / nominal / none), extra",
    "sweep_points": "the sweep's grid: position, epsilon (inf: retrained heads without DP), run_id of each DP run",
    "members": "members against non-members: run_id (the heads' run; the sweep's own id: the original model), n, "
               "member_/nonmember_ recall, ci_low, ci_high, effective_n, capped_frac, gap (member - non-member "
               "Recall@1) with gap_ci_low, gap_ci_high",
    "per_query.parquet": "one row per query image: ids, score of the true report, beaters and ties per pool and "
                         "level, rank_full (expected rank among all reports), r1_at_N (expected Recall@1 in random "
                         "pools of N)",
}


def _unknown(run_id: str) -> UnknownRunError:
    runs = store.list_runs(status="done")
    runs = pd.concat([runs[runs["kind"] != "dp"], runs[runs["kind"] == "dp"]])  # a sweep's points after the rest
    some = ", ".join(f"{r.run_id} ({r.kind})" for r in runs.head(5).itertuples()) if len(runs) else "none yet"
    return UnknownRunError(
        f"No run {run_id!r} in the results database {settings.db_path()}. List the stored run ids with "
        "`python -m backend export --list` (or open Models and jobs, 'Stored runs'); check that CXR_CACHE_DIR "
        f"points at the cache that computed the run. Finished runs here: {some}.")


def _json(value: Any) -> bytes:
    # allow_nan: inf as the token Infinity (Python's json and pandas read it back); missing values are None
    return (json.dumps(value, indent=1, sort_keys=True, allow_nan=True, default=str) + "\n").encode()


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
            for row in frame.astype(object).where(frame.notna(), None).to_dict(orient="records")]


def _members(run_ids: list[str]) -> pd.DataFrame:
    parts = []
    for run_id in run_ids:
        rows = ((store.get_run(run_id) or {}).get("summary") or {}).get("members")
        if rows:
            parts.append(pd.DataFrame(list(rows)).assign(run_id=run_id))
    if not parts:
        return pd.DataFrame()
    out = pd.concat(parts, ignore_index=True)
    first = [c for c in ("run_id", "n") if c in out.columns]
    return out[[*first, *[c for c in out.columns if c not in first]]]


def tables(run_id: str) -> dict[str, pd.DataFrame]:
    """The run's result tables as the archive holds them (TABLES; empty frames for what it has none of)."""
    run = store.get_run(run_id)
    ids = [run_id]
    points = pd.DataFrame()
    if run and run.get("kind") == "sweep":
        points = store.load_sweep_points(run_id)
        ids += points["run_id"].tolist()
    return {"curves": store.load_metrics(ids).reset_index(drop=True),
            "auroc": store.load_probe(ids).sort_values(["run_id", "variant", "method", "label"]).reset_index(drop=True),
            "privacy": store.load_privacy(ids).sort_values("run_id").reset_index(drop=True),
            "sweep_points": points, "members": _members(ids)}


def _readme(run: dict[str, Any], names: list[str]) -> str:
    lines = [f"CXR Re-Link Audit: all results of run {run['run_id']} ({run['kind']}).", "",
             "Files in this archive:"]
    for name in names:
        stem = name.rsplit(".", 1)[0] if name.endswith((".json", ".csv")) and name.rsplit(".", 1)[0] in TABLES else name
        lines.append(f"  {name}: {FILE_NOTES.get(stem, '')}")
    lines += ["", "Each table comes twice: .json (a list of records) and .csv (the same rows). JSON writes an infinite "
              "number as the token Infinity (Python's json and pandas read it) and a missing value as null; CSV "
              "writes inf and an empty field.", "", "Metric definitions:"]
    lines += [f"  {key}: {text}" for key, text in DEFINITIONS.items()]
    return "\n".join(lines) + "\n"


def archive_files(run_id: str) -> list[tuple[str, bytes]]:
    """(name, bytes) of every file of the run's archive, in archive order. UnknownRunError when not stored."""
    run = store.get_run(run_id)
    if run is None:
        raise _unknown(run_id)
    prov = store.get_provenance(run_id)
    record = {"run_id": run_id, "kind": run["kind"], "status": run["status"], "device": run.get("device") or "",
              "spec": json.loads(run["spec"] or "{}"), "summary": run.get("summary") or {}, "provenance": prov}
    files: list[tuple[str, bytes]] = [("run.json", _json(record)), ("provenance.json", _json(prov))]
    for name, frame in tables(run_id).items():
        if len(frame):
            files.append((f"{name}.json", _json(_records(frame))))
            files.append((f"{name}.csv", frame.to_csv(index=False).encode()))
    path = (run.get("artifacts") or {}).get("per_query")
    if path and Path(path).is_file():
        files.append(("per_query.parquet", Path(path).read_bytes()))
    names = ["README.txt", *(n for n, _ in files)]
    return [("README.txt", _readme(run, names).encode()), *files]


def archive_bytes(run_id: str) -> bytes:
    """The run's zip archive (deterministic: fixed order and timestamps)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in archive_files(run_id):
            info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def write_archive(run_id: str, out: Path, *, replace: bool = False) -> Path:
    """Write the run's archive to `out` (its folder must exist) whole or not at all; returns the path. An existing
    file is replaced only with `replace` (OutputError otherwise, before any work); a failed write (a full disk)
    leaves what was there untouched (settings.atomic_write)."""
    out = Path(out).expanduser()
    if out.exists() and not replace:
        raise OutputError(f"{str(out)!r} exists; pass --force to replace it, or choose another --out.")
    data = archive_bytes(run_id)
    return settings.atomic_write(out, lambda p: p.write_bytes(data))


def file_name(run_id: str) -> str:
    return f"relink-results-{run_id}.zip"
