"""The runs of backend.dp: one DP point (run_dp), the epsilon sweep with the original model's reference
(run_sweep, original_result), members against non-members over the grid (run_members) and the probes of a
model's own heads (model_probe). Each prepares its inputs once (backend.dp.eval.prepare), trains heads
(backend.dp.heads) and evaluates them (backend.dp.eval.evaluate, backend.dp.members)."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Collection
from typing import Any

import pandas as pd

from backend.audit import records
from backend.dp.eval import EvalInputs, evaluate, prepare
from backend.dp.heads import train_heads
from backend.dp.members import gap_contains_zero, member_groups, members_gap, members_headline
from backend.dp.result import DPResult
from backend.errors import SpecError
from backend.progress import ProgressLike, null_progress, scaled
from backend.specs import DPSpec, SweepSpec, to_plain

log = logging.getLogger(__name__)


def _point(spec: DPSpec, inputs: EvalInputs, progress: ProgressLike) -> DPResult:
    trained = train_heads(spec, inputs.train, inputs.bank, progress, logit_scale=inputs.logit_scale,
                          device=inputs.device)
    heads = trained.as_dict()
    outcomes: dict[str, pd.DataFrame] = {}
    rows, summary, probes = evaluate(heads, inputs, spec.audit, outcomes=outcomes)
    return DPResult(spec, "dp" if spec.private else "retrained", trained.privacy, rows, summary, probes, heads,
                    inputs=inputs.data_inputs(), per_query=outcomes.get("in-domain"),
                    **_members_fields(heads, inputs, spec))


def _members_fields(heads: dict, inputs: EvalInputs, spec: DPSpec) -> dict[str, Any]:
    """DPResult's members / members_groups when inputs carry member groups (the sweep's), else nothing."""
    if inputs.members is None:
        return {}
    return {"members": members_gap(heads, inputs.members, spec.audit), "members_groups": inputs.members.describe()}


def sweep_members(spec: DPSpec, inputs: EvalInputs) -> Any:
    """The sweep's member groups (backend.dp.members), or None (logged) when the splits are too small for them."""
    try:
        return member_groups(inputs.train, inputs.test, seed=spec.seed,
                             include_same_patient=spec.audit.include_same_patient)
    except SpecError as exc:
        log.warning("sweep: members against non-members skipped: %s", exc)
        return None


def original_result(spec: DPSpec, inputs: EvalInputs) -> DPResult:
    """The reference: the model's own heads, evaluated like every sweep point."""
    privacy = {"target_epsilon": None, "epsilon": math.inf, "guarantee": "none", "objective": "original",
               "privacy_unit": None, "noise_multiplier": 0.0, "accountant": None}
    rows, summary, probes = evaluate(inputs.train.heads, inputs, spec.audit)
    return DPResult(spec, "original", privacy, rows, summary, probes, dict(inputs.train.heads),
                    inputs=inputs.data_inputs(), **_members_fields(inputs.train.heads, inputs, spec))


def model_probe(spec: DPSpec, progress: ProgressLike | None = None, *, device: str | None = None) -> pd.DataFrame:
    """The probe rows of the model's own heads (what `python -m backend probe` reports, without re-linkage):
    linear probe and zero-shot on the projected embeddings, and the linear probe on the frozen features; columns
    target, method ('linear-probe' | 'zero-shot'), features ('projected' | 'frozen') and probe.ROW_COLUMNS."""
    inputs = prepare(spec, progress or null_progress, need_bank=False, device=device)
    return evaluate(inputs.train.heads, inputs, spec.audit, relink=False)[2]


def run_dp(spec: DPSpec, progress: ProgressLike | None = None, *, device: str | None = None) -> DPResult:
    """Embed (cached), train the heads under spec, project the test split(s), audit and probe. device: where the
    model runs and the heads train (None: cuda when present, else cpu)."""
    progress = progress or null_progress
    inputs = prepare(spec, progress, device=device)
    return _point(spec, inputs, progress)


def run_sweep(spec: SweepSpec, progress: ProgressLike | None = None, *, include_original: bool = True,
              on_result: Callable[[DPResult], None] | None = None, skip: Collection[str] = (),
              prep_share: float = 0.4, device: str | None = None) -> list[DPResult]:
    """The epsilon grid (one DPResult per epsilon, same inputs), preceded by the 'original model' reference.

    on_result(result) is called as soon as each result is computed, so that a caller can store it at once: the
    two references first (the original model, then the heads retrained without DP, which every DP point is
    compared with), then the DP points in grid order. Returned: the original model, then the grid's points in
    grid order; points whose run id is in `skip` (already stored) are not computed and not returned. prep_share:
    the bar's share for embedding the splits and the frozen-feature reference (the rest: one step per result)."""
    progress = progress or null_progress
    total = 1000  # one bar that only moves forward: embedding (cached after the first run), then points
    prep = int(round(total * min(max(prep_share, 0.0), 0.95)))
    points = sorted((p for p in spec.points() if p.run_id() not in set(skip)), key=lambda p: p.private)  # stable
    if not points and not include_original:
        progress(total, total, "sweep done (every point was stored already)")
        return []
    inputs = prepare(spec.base, scaled(progress, 0, prep, total), device=device)
    inputs.members = sweep_members(spec.base, inputs)  # members against non-members at every point
    step = (total - prep) / (len(points) + 1)
    results = []
    if include_original:
        progress(prep, total, "original model's heads")
        results.append(original_result(spec.base, inputs))
        if on_result is not None:
            on_result(results[-1])
    for i, point in enumerate(points):
        progress(prep + int(step * (i + 1)), total, f"epsilon {point.epsilon:g} ({i + 1} of {len(points)})")
        results.append(_point(point, inputs, null_progress))
        if on_result is not None:
            on_result(results[-1])
        log.info("sweep %d/%d: epsilon %g done", i + 1, len(points), point.epsilon)
    progress(total, total, "sweep done")
    order = {e: i for i, e in enumerate(spec.epsilons)}
    return sorted(results, key=lambda r: -1 if r.label == "original" else order[r.spec.epsilon])


def _members_point(label: str, privacy: dict[str, Any], rows: pd.DataFrame) -> dict[str, Any]:
    head = members_headline(rows)
    return {"label": label, "target_epsilon": privacy.get("target_epsilon"), "epsilon": privacy.get("epsilon"),
            "guarantee": privacy.get("guarantee"), "objective": privacy.get("objective"),
            "privacy_unit": privacy.get("privacy_unit"), "noise_multiplier": privacy.get("noise_multiplier"),
            "gap_contains_zero": gap_contains_zero(head), "headline": records(head), "curves": records(rows)}


def run_members(spec: SweepSpec, progress: ProgressLike | None = None, *, max_patients: int | None = None,
                device: str | None = None) -> dict[str, Any]:
    """Members against non-members (backend.dp.members) for the original model's heads, the heads retrained
    without DP (always) and each finite epsilon of spec: a JSON-ready dict (groups, and per point its headline
    rows at N = 100 and the largest common N, its curves over the common grid, and whether the gap's CI holds 0)."""
    progress = progress or null_progress
    base = spec.base
    inputs = prepare(base, scaled(progress, 0, 400, 1000), device=device)
    groups = member_groups(inputs.train, inputs.test, max_patients=max_patients, seed=base.seed,
                           include_same_patient=base.audit.include_same_patient)
    epsilons = [math.inf, *dict.fromkeys(e for e in spec.epsilons if math.isfinite(e))]
    step = 600 / (len(epsilons) + 1)
    progress(400, 1000, "members: original model's heads")
    original = {"target_epsilon": None, "epsilon": math.inf, "guarantee": "none", "objective": "original",
                "privacy_unit": None, "noise_multiplier": 0.0}
    points = [_members_point("original", original, members_gap(inputs.train.heads, groups, base.audit))]
    for i, eps in enumerate(epsilons):
        progress(400 + int(step * (i + 1)), 1000, f"members: epsilon {eps:g} ({i + 1} of {len(epsilons)})")
        trained = train_heads(dataclasses.replace(base, epsilon=eps), inputs.train, inputs.bank,
                              logit_scale=inputs.logit_scale, device=inputs.device)
        points.append(_members_point("dp" if math.isfinite(eps) else "retrained", trained.privacy,
                                     members_gap(trained.as_dict(), groups, base.audit)))
    progress(1000, 1000, "members done")
    return {"kind": "members", "spec": spec.to_dict(), "groups": to_plain(groups.describe(), canonical=False),
            "points": to_plain(points, canonical=False)}
