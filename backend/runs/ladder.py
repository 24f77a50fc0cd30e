"""The model ladder job: train each rung (cached), audit it on the same test split and probe it;
each rung's audit and probe are stored as their own runs as soon as they are done, so the pages show them
while the later rungs still train. Also the probe job (ProbeSpec) and an honest time estimate of the ladder.

Torch-free at import (the dashboard imports the estimate): training, the audit and the probe are resolved by
name when the job runs. The rungs' configs live in backend/models/demo_config.py; a rung that is not one of
the project's own models (e.g. a hub model) is audited and probed without a training step.
"""

from __future__ import annotations

import logging
from typing import Any

from backend.errors import JobError
from backend.models.demo_config import RUNGS, is_trained
from backend.progress import ProgressLike, forward_only, null_progress, scaled
from backend.registry import resolve
from backend.runs import store
from backend.runs.persist import persist_audit, persist_probe
from backend.runs.worker import device_label
from backend.specs import AuditSpec, DPSpec, LadderSpec, ProbeSpec

log = logging.getLogger(__name__)

# Measured on a 2-core x86 CPU, 24 GiB (docs/RESULTS.md and docs/BENCHMARKS.md),
# for data the size of the default synthetic source (25,660 pairs): the demo architecture trains at about 1.1 s a
# step alone (batch 128; 23 min for 744 steps beside other jobs, i.e. up to 1.9 s a step); the demo audit took
# 1 min 48 s (embedding the test split, 200 bootstrap resamples); the sweep embedded the train split in 3 min 15 s,
# and one evaluation (audit and both probes with their bootstraps) took about 80 s, of which the probes are the
# larger part. A rung's probe: the train-split embedding plus about one evaluation.
LADDER_TIMES_S = {"step": 1.1, "step_busy": 1.9, "render_per_pair": 0.004, "audit": 108.0, "train_embed": 195.0,
                  "probe": 80.0}


def _done(run_id: str) -> bool:
    return (store.get_run(run_id) or {}).get("status") == "done"


def rung_plan(spec: LadderSpec) -> list[dict[str, Any]]:
    """Per rung, what the job still has to do and its estimated seconds on a 2-core CPU (from LADDER_TIMES_S):
    {model, steps (None: not one of the project's rungs), trained, audit_run, audited, probe_run, probed,
    train_s, audit_s, probe_s}."""
    t = LADDER_TIMES_S
    out = []
    for name in spec.rungs:
        rung = RUNGS.get(name)
        trained = True if rung is None else is_trained(rung.config)
        steps = None if rung is None else rung.config.planned_steps()
        train_s = 0.0 if trained or rung is None else steps * t["step"] + rung.config.max_pairs * t["render_per_pair"]
        audit_id, probe_id = spec.audit(name).run_id(), spec.probe_spec(name).run_id()
        audited, probed = _done(audit_id), (not spec.probe) or _done(probe_id)
        out.append({"model": name, "steps": steps, "trained": trained, "audit_run": audit_id, "audited": audited,
                    "probe_run": probe_id if spec.probe else None, "probed": probed, "train_s": train_s,
                    "audit_s": 0.0 if audited else t["audit"],
                    "probe_s": 0.0 if probed else t["train_embed"] + t["probe"]})
    return out


def ladder_estimate(spec: LadderSpec) -> dict[str, Any]:
    """{seconds, seconds_busy, text, plan}: the time the ladder job needs on a 2-core CPU from what is cached now
    (trained rungs, stored audits and probes are skipped), from measured per-step and per-part times; seconds_busy
    with the per-step time measured beside other jobs."""
    plan = rung_plan(spec)
    t = LADDER_TIMES_S
    seconds = sum(p["train_s"] + p["audit_s"] + p["probe_s"] for p in plan)
    busy = seconds + sum((p["steps"] or 0) * (t["step_busy"] - t["step"]) for p in plan if p["train_s"])
    parts = []
    for p in plan:
        what = []
        if p["train_s"]:
            what.append(f"train {p['steps']:,} steps x {t['step']:g} s = {p['train_s'] / 60:.0f} min")
        if p["audit_s"]:
            what.append(f"audit {p['audit_s'] / 60:.0f} min")
        if p["probe_s"]:
            what.append(f"probe {p['probe_s'] / 60:.0f} min")
        parts.append(f"{p['model']}: " + (", ".join(what) if what else "all stored"))
    text = (f"About {seconds / 60:.0f} min on a 2-core CPU (up to {busy / 60:.0f} min beside other jobs): "
            + "; ".join(parts) + ". Per-step time measured for the demo architecture on a 2-core x86 CPU "
            "(1.1 s a step alone, 1.9 s beside other jobs); a GPU trains in seconds.")
    return {"seconds": seconds, "seconds_busy": busy, "text": text, "plan": plan}


def run_probe(spec: ProbeSpec, progress: ProgressLike | None = None) -> Any:
    """The probe rows of spec.model's own embeddings on spec.source (backend.dp.model_probe)."""
    dp_spec = DPSpec(source=spec.source, model=spec.model, audit=AuditSpec(n_bootstrap=spec.n_bootstrap, seed=spec.seed),
                     seed=spec.seed)
    return resolve("backend.dp:model_probe", "The probe", JobError)(dp_spec, progress or null_progress)


def run_ladder(spec: LadderSpec, progress: ProgressLike | None = None) -> dict[str, Any]:
    """Train (when not cached), audit and probe every rung in order; each audit and probe is stored when done.
    Returns {"rungs": [{model, audit_run, probe_run}]} (the ladder run's summary)."""
    progress = forward_only(progress or null_progress)
    plan = rung_plan(spec)
    total = 1000
    weights = [max(p["train_s"] + p["audit_s"] + p["probe_s"], 1.0) for p in plan]
    scale = total / sum(weights)
    device = device_label()
    start, out = 0.0, []
    for p, w in zip(plan, weights, strict=True):
        name, span = p["model"], w * scale
        share = {k: p[k] / w * span for k in ("train_s", "audit_s", "probe_s")}
        at = start
        if not p["trained"]:
            prepare = resolve("backend.models.demo:prepare_demo", "The ladder", JobError)
            prepare(scaled(progress, int(at), int(share["train_s"]), total), RUNGS[name].config)
            at += share["train_s"]
        audit = spec.audit(name)
        if not _done(audit.run_id()):
            store.upsert_run(audit.run_id(), "audit", audit.to_json(), "running")
            result = resolve("backend.audit:run_audit", "The ladder", JobError)(
                audit, scaled(progress, int(at), int(share["audit_s"]), total))
            persist_audit(audit.run_id(), audit, result, device)
            log.info("ladder: %s audited (%s)", name, audit.run_id())
        at += share["audit_s"]
        probe_id = None
        if spec.probe:
            probe = spec.probe_spec(name)
            probe_id = probe.run_id()
            if not _done(probe_id):
                store.upsert_run(probe_id, "probe", probe.to_json(), "running")
                rows = run_probe(probe, scaled(progress, int(at), int(share["probe_s"]), total))
                persist_probe(probe_id, probe, rows, device)
                log.info("ladder: %s probed (%s)", name, probe_id)
        start += span
        progress(int(start), total, f"{name} stored")
        out.append({"model": name, "audit_run": audit.run_id(), "probe_run": probe_id})
    progress(total, total, "ladder finished")
    return {"rungs": out}
