"""One point of the privacy-utility frontier (DPResult) and the frontier table over points (headline_rows)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from backend.audit import records
from backend.specs import POOL_KINDS, DPSpec, to_plain


@dataclass
class DPResult:
    """One point of the frontier. label: 'dp', 'retrained' (epsilon inf) or 'original' (the model's own heads).

    relink_rows: audit curve rows + `target` ('in-domain' or a transfer source); probe_rows: probe.ROW_COLUMNS +
    target, method ('linear-probe' | 'zero-shot'), features ('projected' | 'frozen'). heads: not serialised.
    members: members against non-members (backend.dp.members.MEMBER_COLUMNS, one row per N) when the sweep
    measured them, with members_groups (the groups' sizes and pool sizes). per_query: the in-domain per-query
    outcomes (backend.dp.eval.outcome_frame) that paired CIs against another point resample; stored beside the
    run (backend.runs.persist), not in to_dict.
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
    per_query: pd.DataFrame | None = field(default=None, repr=False)  # in-domain outcomes (dp.eval.outcome_frame)

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
                   "delta_requested": p.get("delta_requested", p.get("delta")),
                   "guarantee": p.get("guarantee"), "noise_multiplier": p.get("noise_multiplier")}
            for pool in POOL_KINDS:
                row.update(_largest_n(rel, pool))
            row.update(_macro(probes, "linear-probe", "projected", "probe_auroc"))
            row.update(_macro(probes, "zero-shot", "projected", "zero_shot_auroc"))
            row.update(_macro(probes, "linear-probe", "frozen", "frozen_probe_auroc"))
            out.append(row)
    return pd.DataFrame(out)
