"""Differentially private projection heads (DESIGN.md section 4): train, audit, probe, sweep.

Both encoders are frozen; only the linear projection heads are (re)trained, on the train split's cached
pre-projection features. epsilon = inf is the non-private retraining with the same schedule (the
baseline that separates the effect of DP from the effect of retraining); the "original" reference
evaluates the model's own heads.

Every run records its privacy dict: epsilon (achieved, from Opacus's accountant for the steps actually
run), target_epsilon, delta, noise_multiplier, sample_rate, steps, max_grad_norm, accountant, objective,
privacy_unit and guarantee: "certified" for public-negatives (per-example gradients depend on one
pair/patient and public data only), "nominal" for in-batch (the in-batch negatives couple examples, so
clipping does not bound one pair's influence; arXiv 2310.03104), "none" without DP.
How: exact manual DP-SGD for linear heads (backend.dp.train: Poisson sampling, rank-one/Gram per-unit
norms, Opacus's clipping and noise; equal to Opacus's DPOptimizer step in tests), Opacus's accountant.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from backend import settings
from backend.audit import records
from backend.dp.accounting import calibrate_noise, compute_epsilon, resolve_delta
from backend.dp.eval import EvalInputs, evaluate, prepare
from backend.dp.members import gap_contains_zero, member_groups, members_gap, members_headline
from backend.dp.objectives import GUARANTEE, LinearHeads
from backend.dp.train import TrainConfig, TrainData, schedule, train_dp, train_nonprivate
from backend.errors import SpecError
from backend.progress import ProgressLike, null_progress, scaled
from backend.specs import POOL_KINDS, DPSpec, SweepSpec, to_plain

log = logging.getLogger(__name__)


@dataclass
class TrainedHeads:
    """Trained heads in the EmbeddingSet layout (image_w (d_img_pre, d), image_b (d,) | None, text_w, text_b)."""

    image_w: np.ndarray
    image_b: np.ndarray | None
    text_w: np.ndarray
    text_b: np.ndarray | None
    logit_scale: float
    privacy: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"kind": "linear", "image_w": self.image_w, "image_b": self.image_b, "text_w": self.text_w,
                "text_b": self.text_b, "logit_scale": self.logit_scale}


def privacy_units(meta: pd.DataFrame, unit: str) -> tuple[np.ndarray, int]:
    """(n,) int64 codes of each pair's privacy unit and the number of units (pairs, or patients)."""
    if unit == "patient":
        codes, uniques = pd.factorize(meta["patient_id"])
        return codes.astype(np.int64), len(uniques)
    return np.arange(len(meta), dtype=np.int64), len(meta)


def train_heads(spec: DPSpec, train: Any, public_bank: np.ndarray | None, progress: ProgressLike | None = None, *,
                logit_scale: float | None = None, device: str | None = None) -> TrainedHeads:
    """Train the heads on `train` (an EmbeddingSet: image_feat (n, d_img_pre), text_feat (n, d_txt_pre), heads,
    meta.patient_id) under `spec` (DP unless spec.epsilon is inf). public_bank (M, d_txt_pre) is required by
    the public-negatives objective. Raises PrivacyBudgetError when the target epsilon is unreachable."""
    settings.check_device(device)
    progress = progress or null_progress
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    heads = LinearHeads.from_arrays(train.heads, init=spec.init, seed=spec.seed, logit_scale=logit_scale).to(dev)
    codes, n_units = privacy_units(train.meta, spec.privacy_unit)
    data = TrainData(torch.from_numpy(np.ascontiguousarray(train.image_feat, np.float32)).to(dev),
                     torch.from_numpy(np.ascontiguousarray(train.text_feat, np.float32)).to(dev),
                     torch.from_numpy(codes).to(dev), n_units,
                     None if public_bank is None else torch.from_numpy(np.asarray(public_bank, np.float32)).to(dev))
    cfg = TrainConfig(objective=spec.objective, epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr,
                      optimizer=spec.optimizer, n_negatives=spec.n_negatives, seed=spec.seed,
                      max_grad_norm=spec.max_grad_norm)
    privacy = {"target_epsilon": spec.epsilon, "objective": spec.objective, "privacy_unit": spec.privacy_unit,
               "max_grad_norm": spec.max_grad_norm, "n_pairs": data.n, "n_units": n_units, "init": spec.init}
    if not spec.private:
        steps = train_nonprivate(heads, data, cfg, progress)
        privacy.update(epsilon=math.inf, delta=0.0, noise_multiplier=0.0, sample_rate=spec.batch_size / data.n,
                       steps=steps, accountant=None, guarantee="none", max_grad_norm=None)
    else:
        delta, note = resolve_delta(spec.delta, n_units)
        q, steps = schedule(data.n, spec.batch_size, spec.epochs)
        sigma = calibrate_noise(target_epsilon=spec.epsilon, delta=delta, sample_rate=q, steps=steps, accountant=spec.accountant)
        info = train_dp(heads, data, dataclasses.replace(cfg, noise_multiplier=sigma), progress)
        eps = compute_epsilon(noise_multiplier=sigma, sample_rate=info["sample_rate"], steps=info["steps"], delta=delta,
                              accountant=spec.accountant)
        privacy.update(epsilon=eps, delta=delta, delta_requested=spec.delta, delta_note=note, noise_multiplier=sigma,
                       sample_rate=info["sample_rate"], steps=info["steps"], accountant=spec.accountant,
                       guarantee=GUARANTEE[spec.objective])
    arrays = heads.to_arrays()
    return TrainedHeads(arrays["image_w"], arrays["image_b"], arrays["text_w"], arrays["text_b"], arrays["logit_scale"], privacy)


@dataclass
class DPResult:
    """One point of the frontier. label: 'dp', 'retrained' (epsilon inf) or 'original' (the model's own heads).

    relink_rows: audit curve rows + `target` ('in-domain' or a transfer source); probe_rows: probe.ROW_COLUMNS +
    target, method ('linear-probe' | 'zero-shot'), features ('projected' | 'frozen'). heads: not serialised.
    members: members against non-members (backend.dp.members.MEMBER_COLUMNS, one row per N) when the sweep
    measured them, with members_groups (the groups' sizes and pool sizes).
    """

    spec: DPSpec
    label: str
    privacy: dict[str, Any]
    relink_rows: pd.DataFrame
    relink_summary: dict[str, Any]
    probe_rows: pd.DataFrame
    heads: dict[str, Any] = field(default_factory=dict, repr=False)
    members: pd.DataFrame | None = None
    members_groups: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)  # the data it was computed from: EvalInputs.data_inputs()

    def headline(self) -> pd.DataFrame:
        """Per target: R@1 at the largest pool (random, hard) and macro AUROCs, with CIs (one row per target)."""
        return headline_rows([self])

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "dp", "run_id": self.spec.run_id(), "label": self.label, "spec": self.spec.to_dict(),
                "privacy": to_plain(self.privacy, canonical=False), "headline": records(self.headline()),
                "relink_summary": to_plain(self.relink_summary, canonical=False), "relink_rows": records(self.relink_rows),
                "probe_rows": records(self.probe_rows), "inputs": to_plain(self.inputs, canonical=False),
                **({"members": records(self.members), "members_groups": to_plain(self.members_groups, canonical=False)}
                   if self.members is not None else {})}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=False)


def _largest_n(rows: pd.DataFrame, pool: str) -> dict[str, float]:
    sel = rows[(rows["pool_kind"] == pool) & (rows["level"] == "study") & (rows["k"] == 1)]
    if sel.empty:
        return {}
    top = sel.sort_values("n").iloc[-1]
    return {f"r1_{pool}": top["recall"], f"r1_{pool}_ci_low": top["ci_low"], f"r1_{pool}_ci_high": top["ci_high"],
            f"n_{pool}": int(top["n"])}


def _macro(rows: pd.DataFrame, method: str, features: str, name: str) -> dict[str, float]:
    sel = rows[(rows["method"] == method) & (rows["features"] == features) & (rows["label"] == "macro")]
    if sel.empty:
        return {}
    r = sel.iloc[0]
    return {name: r["auroc"], f"{name}_ci_low": r["ci_low"], f"{name}_ci_high": r["ci_high"]}


def headline_rows(results: list[DPResult]) -> pd.DataFrame:
    """The frontier table: one row per (result, target) with privacy, R@1 at the largest N and macro AUROCs."""
    out = []
    for res in results:
        p = res.privacy
        for target, rel in res.relink_rows.groupby("target", sort=False):
            probes = res.probe_rows[res.probe_rows["target"] == target]
            row = {"label": res.label, "target": target, "objective": p.get("objective"), "privacy_unit": p.get("privacy_unit"),
                   "target_epsilon": p.get("target_epsilon"), "epsilon": p.get("epsilon"), "delta": p.get("delta"),
                   "guarantee": p.get("guarantee"), "noise_multiplier": p.get("noise_multiplier")}
            for pool in POOL_KINDS:
                row.update(_largest_n(rel, pool))
            row.update(_macro(probes, "linear-probe", "projected", "probe_auroc"))
            row.update(_macro(probes, "zero-shot", "projected", "zero_shot_auroc"))
            row.update(_macro(probes, "linear-probe", "frozen", "frozen_probe_auroc"))
            out.append(row)
    return pd.DataFrame(out)


def _point(spec: DPSpec, inputs: EvalInputs, progress: ProgressLike) -> DPResult:
    trained = train_heads(spec, inputs.train, inputs.bank, progress, logit_scale=inputs.logit_scale,
                          device=inputs.device)
    heads = trained.as_dict()
    rows, summary, probes = evaluate(heads, inputs, spec.audit)
    return DPResult(spec, "dp" if spec.private else "retrained", trained.privacy, rows, summary, probes, heads,
                    inputs=inputs.data_inputs(), **_members_fields(heads, inputs, spec))


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
