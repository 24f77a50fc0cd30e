"""Where jobs and runs stand (pure pandas over the store and the job table): the jobs still computing a page's
run and their one-line note, when a job ran and the time it has left, and where each stored run comes from (the
provenance table, a run's inputs, an imported demo snapshot's note)."""

from __future__ import annotations

import re
import time
from typing import Any

import pandas as pd

from backend.errors import RelinkError
from backend.runs import jobs, provenance, snapshot, store
from backend.runs.demo import TRAINING_STAGE
from backend.specs import LadderSpec, spec_from_json
from backend.views.catalog import spec_info
from backend.views.definitions import coverage_notes

RUN_NAMES = {"audit": "Audit", "sweep": "Epsilon sweep", "ladder": "Model ladder"}


def running_jobs(kind: str, source: str | None = None, model: str | None = None) -> list[jobs.Job]:
    """Queued or running jobs that will store a run of `kind` ("audit" or "sweep") for this dataset and model
    (None: any), newest first: jobs of that kind, and demo jobs whose audit or sweep part is not stored yet. So a
    browser tab opened while another tab's (or the command line's) job runs shows it as running."""
    out = []
    for job in jobs.list_jobs(limit=50):
        if not job.active or job.kind not in (kind, "demo", "ladder"):
            continue
        if job.kind == "ladder":
            if kind == "audit" and _ladder_pending(job.spec, source, model):
                out.append(job)
            continue
        info = spec_info(job.spec)
        if (source and info.get("source") != source) or (model and info.get("model") != model):
            continue
        if job.kind == "demo":
            try:
                part = getattr(spec_from_json(job.spec), kind, None)
            except RelinkError:
                continue
            if part is None or (store.get_run(part.run_id()) or {}).get("status") == "done":
                continue
        out.append(job)
    return out


def _ladder_pending(spec_json: str, source: str | None, model: str | None) -> bool:
    """Whether a ladder job will still store an audit for this dataset (and model, when given)."""
    try:
        spec = spec_from_json(spec_json)
    except RelinkError:
        return False
    if not isinstance(spec, LadderSpec) or (source and spec.source.name != source):
        return False
    return any((store.get_run(spec.audit(r).run_id()) or {}).get("status") != "done"
               for r in spec.rungs if not model or r == model)


def pending_text(kind: str, job: jobs.Job, source: str | None, model: str | None) -> str:
    """One line for a page whose run is still being computed: "Epsilon sweep running (40%) ..."."""
    what = RUN_NAMES.get(kind, kind)
    target = " for " + " on ".join(x for x in (model, source) if x) if (model or source) else ""
    via = (f" as part of the {'demo' if job.kind == 'demo' else 'model ladder'} job"
           if job.kind in ("demo", "ladder") and kind != job.kind else "")
    step = f": {job.message}" if job.message else ""
    if job.kind == "demo" and kind != "demo" and job.message.startswith(TRAINING_STAGE):  # not "Audit running (74%)"
        return (f"The demo job is {job.message} ({job.fraction:.0%} of the job); the {what.lower()} follows. Its "
                "results appear on this page as soon as they are stored.")
    return (f"{what} {job.status} ({job.fraction:.0%}){target}{via}{step}. Its results appear on this page as soon "
            "as they are stored.")


def _hms(seconds: float) -> str:
    return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"


def job_times(started: float | None, finished: float | None, fraction: float, now: float) -> dict[str, Any]:
    """When a job ran and, while it runs, an estimate of the time left: elapsed x (1 - f) / f, the pace so
    far carried forward (None until 2% is done, when the pace says nothing yet)."""
    if not started:
        return {"elapsed_s": None, "left_s": None, "text": "not started"}
    end = finished or now
    elapsed = max(0.0, end - started)
    left = None if finished or fraction < 0.02 else elapsed * (1 - fraction) / fraction
    text = f"started {time.strftime('%H:%M:%S', time.localtime(started))} · "
    text += (f"ended {time.strftime('%H:%M:%S', time.localtime(finished))} · took {_hms(elapsed)}" if finished else
             f"running {_hms(elapsed)}" + (f" · about {_hms(left)} left" if left is not None else " · estimating"))
    return {"elapsed_s": elapsed, "left_s": left, "text": text}


PROVENANCE_COLUMNS = {"code_version": "code version", "data_hash": "data hash", "started": "started (UTC)",
                      "finished": "finished (UTC)", "duration_s": "duration (s)"}


def provenance_table(limit: int = 200) -> pd.DataFrame:
    """The finished runs (newest first, at most `limit`) with their provenance, for Models and jobs: run, kind,
    model, dataset, code version (the commit's first 12 hex), data hash, started / finished (UTC), duration (s);
    "not recorded" where a run stored before provenance was kept has none (the export has the full text)."""
    out = []
    for rec in store.provenance_records()[:limit]:
        info, text = spec_info(rec["spec"]), provenance.display(rec["provenance"])
        row = {name: text[provenance.FIELD_NAMES[key]] for key, name in PROVENANCE_COLUMNS.items()}
        row = {k: "not recorded" if v.startswith("not recorded") else v for k, v in row.items()}
        row["code version"] = re.sub(r"\b([0-9a-f]{12})[0-9a-f]{28}\b", r"\1", row["code version"])
        row["code version"] = re.sub(r" \(demo snapshot made .*\)", " (snapshot)", row["code version"])
        out.append({"run": rec["run_id"], "kind": rec["kind"], "model": info.get("model", ""),
                    "dataset": info.get("source", ""), **row})
    return pd.DataFrame(out, columns=["run", "kind", "model", "dataset", *PROVENANCE_COLUMNS.values()])


def run_inputs(run_id: str | None) -> str:
    """What a run was computed from, in one line: its data hash (the pair table and image files) and size."""
    run = store.get_run(run_id) if run_id else None
    inputs = ((run or {}).get("summary") or {}).get("inputs") or {}
    if not inputs.get("data_hash"):
        return f"run {run_id}: inputs not recorded (computed before data hashes were kept)" if run else ""
    return (f"run {run_id}: computed from data {str(inputs['data_hash'])[:12]} "
            f"({int(inputs.get('n_pairs') or 0):,} pairs)")


def drops_note(run_id: str | None) -> str | None:
    """What the run left out (the source's drops before the split by reason, pairs a side-information pool
    could not place: audit.coverage_notes) as one paragraph; None when nothing was left out or not recorded."""
    run = store.get_run(run_id) if run_id else None
    notes = coverage_notes(((run or {}).get("summary") or {}).get("counts") or {})
    return " ".join(notes) or None


def snapshot_note(run_id: str | None) -> dict[str, Any] | None:
    """{made, code_version, original_run} when `run_id` is an imported demo snapshot run, else None."""
    run = store.get_run(run_id) if run_id else None
    return run["summary"]["snapshot"] if snapshot.is_snapshot(run) else None
