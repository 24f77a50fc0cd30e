"""The one-button demo job: prepare the demo model, audit its test split, then sweep epsilon; each part is
stored as its own run (so the pages show it) by backend/runs/persist.py.

The heavy parts (training, audit, DP) are resolved by name when the job runs, so the dashboard can import
`default_demo_spec` without importing torch.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from backend.errors import JobError
from backend.models.demo_config import DEFAULT_DEMO, TRAIN_TIMES_S, demo_dir, is_trained
from backend.progress import ProgressLike, forward_only, null_progress, scaled, staged
from backend.public_bank import default_sweep_base
from backend.registry import resolve
from backend.runs import store
from backend.runs.persist import finish_sweep, persist_audit, stored_sweep_parts
from backend.runs.sweeps import resume_sweep
from backend.runs.worker import device_label
from backend.specs import DEFAULT_EPSILONS, DEMO_MATCH, AuditSpec, DemoSpec, EmbedSpec, SourceSpec, SweepSpec

log = logging.getLogger(__name__)

TRAINING_STAGE = "training the demo model"  # how the job's message names its first part (backend.models.demo)


def default_demo_spec(n_patients: int | None = None) -> DemoSpec:
    """The dashboard's demo: the synthetic source (sized by `n_patients`, else $CXR_DEMO_N_PATIENTS, else the
    source's default) and the demo model, audited with random, pathology-matched and sex+age band pools (DEMO_MATCH);
    the default sweep (DEFAULT_EPSILONS, DEFAULT_SWEEP_RECIPE: certified, privacy unit patient, the synthetic public
    bank; backend.public_bank.default_sweep_base)."""
    n_patients = n_patients or int(os.environ.get("CXR_DEMO_N_PATIENTS", "0") or 0)
    options = {"n_patients": n_patients} if n_patients else {}
    embed = EmbedSpec(source=SourceSpec(name="synthetic", options=options), model="demo")
    audit = AuditSpec(embed=embed, match=DEMO_MATCH)  # + the side-information pool (sex and age band)
    base = default_sweep_base(embed.source, "demo", audit=AuditSpec(embed=embed))
    return DemoSpec(audit=audit, sweep=SweepSpec(base=base, epsilons=DEFAULT_EPSILONS))


# Seconds of each part of the demo job on a quiet 2-core x86 CPU (a timeline of the Recompute job, 2026-11-30:
# audit 72 s, embedding the train split 140 s, about 10 s for each evaluation; training 1.1 s a step
# alone): the bar gives each part its share of the time, so the time-left estimate holds from the first part on.
DEMO_TIMES_S = {**TRAIN_TIMES_S, "audit": 72.0, "sweep_prep": 140.0, "point": 10.0}


def demo_plan(spec: DemoSpec) -> dict[str, float]:
    """Estimated seconds of what the demo job still has to do (DEMO_TIMES_S): train (0 when the weights are cached
    or the model is not the demo's), audit (0 when stored), sweep_prep and points (0 when the sweep is stored;
    points already stored by an interrupted run are not counted)."""
    t = DEMO_TIMES_S
    train = 0.0
    if spec.audit.embed.model == "demo" and not is_trained(DEFAULT_DEMO):
        train = DEFAULT_DEMO.planned_steps() * t["step"] + DEFAULT_DEMO.max_pairs * t["render_per_pair"]
    cached = trained_weights_hash(demo_dir(DEFAULT_DEMO)) if spec.audit.embed.model == "demo" else None
    audit = t["audit"] if to_compute(spec.audit.run_id(), cached) else 0.0
    prep = points = 0.0
    if spec.sweep is not None and to_compute(spec.sweep.run_id(), cached):
        has_original, stored = stored_sweep_parts(spec.sweep.run_id())
        left = len([p for p in spec.sweep.points() if p.run_id() not in stored]) + (0 if has_original else 1)
        prep, points = (t["sweep_prep"], left * t["point"]) if left else (0.0, 0.0)
    return {"train": train, "audit": audit, "sweep_prep": prep, "points": points}


def bar_marks(plan: dict[str, float], total: int = 1000) -> tuple[int, int]:
    """Where the training and the audit end on a bar of `total` steps given demo_plan's seconds (the sweep fills
    the rest): each part's share of the estimated time."""
    seconds = max(sum(plan.values()), 1e-9)
    train_end = round(total * plan["train"] / seconds)
    return train_end, train_end + round(total * plan["audit"] / seconds)


def to_compute(run_id: str, weights_hash: str | None) -> bool:
    """Whether the demo job computes a run: not finished yet, or finished from other demo weights than those now
    cached (retrained under the same spec, e.g. after the training recipe changed): its recorded weights hash
    differs."""
    run = store.get_run(run_id) or {}
    recorded = ((run.get("summary") or {}).get("inputs") or {}).get("weights_hash")
    return run.get("status") != "done" or bool(weights_hash and recorded and recorded != weights_hash)


def trained_weights_hash(folder: Any) -> str | None:
    """The weights hash the demo training recorded in its folder's config.json (None for an older folder)."""
    try:
        return json.loads((Path(folder) / "config.json").read_text())["training"]["weights_hash"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_demo(spec: DemoSpec, progress: ProgressLike | None = None) -> dict[str, Any]:
    """Prepare the demo model, audit it, then sweep epsilon when backend.dp exists; store each part."""
    progress = forward_only(progress or null_progress)
    total = 1000
    plan = demo_plan(spec)  # the bar's shares: each part's estimated time (nothing for what is cached or stored)
    train_end, audit_end = bar_marks(plan, total)
    device = device_label()
    weights_hash = None
    if spec.audit.embed.model == "demo":  # train (or find) the demo weights with their own progress
        folder = resolve("backend.models.demo:prepare_demo", "The demo", JobError)(
            staged(scaled(progress, 0, max(train_end, 1), total), TRAINING_STAGE))
        weights_hash = trained_weights_hash(folder)
    audit_id = spec.audit.run_id()
    if to_compute(audit_id, weights_hash):
        store.upsert_run(audit_id, "audit", spec.audit.to_json(), "running")
        result = resolve("backend.audit:run_audit", "The demo", JobError)(
            spec.audit, staged(scaled(progress, train_end, max(audit_end - train_end, 1), total), "auditing the demo model"))
        persist_audit(audit_id, spec.audit, result, device)
    out: dict[str, Any] = {"audit_run": audit_id, "sweep_run": None}
    if spec.sweep is not None:
        sweep_id = spec.sweep.run_id()
        if to_compute(sweep_id, weights_hash):
            # each part is stored as soon as it is computed (the pages show it while the sweep runs); a sweep
            # that an earlier, interrupted job left unfinished resumes without recomputing what it stored
            sweep_s = max(plan["sweep_prep"] + plan["points"], 1e-9)
            resume_sweep(spec.sweep, staged(scaled(progress, audit_end, max(total - audit_end, 1), total), "epsilon sweep"),
                         device=device,
                         prep_share=plan["sweep_prep"] / sweep_s)
            finish_sweep(sweep_id, spec.sweep, device)
        out["sweep_run"] = sweep_id
    progress(total, total, "demo finished")
    return out
