"""The cut and the utility cost of each point of an epsilon sweep against its baseline (the heads retrained without
DP), read where Recall@1 is measurable: at N=100, N=1,000 and the largest N of the random pool, each with its
paired-bootstrap 95% CI (backend.relink.paired) from the per-query outcomes stored beside each point.

Computed once when a sweep finishes (`paired_summary`, kept in the sweep run's summary, so a page or an imported
snapshot only reads numbers); `point_cuts` computes them from the store for a sweep stored without them. Points
without per-query outcomes (older sweeps) keep the point estimate alone."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import pandas as pd

from backend.errors import RelinkError
from backend.relink.paired import paired_auroc, paired_cuts
from backend.runs import store

log = logging.getLogger(__name__)

READ_AT: tuple[int, ...] = (100, 1000)  # plus the largest N: where the frontier and the headline cut are read


def read_points(metrics: pd.DataFrame) -> dict[str, int]:
    """{"100": N, "1000": N, "max": N}: the random pool's grid N at 100 and 1,000 (or the largest N below each) and
    its largest N, study level, Recall@1; a read point at or beyond the largest N is left out (it is "max")."""
    sel = metrics[(metrics["pool_kind"] == "random") & (metrics["level"] == "study") & (metrics["k"] == 1)]
    ns = sorted({int(n) for n in sel["n"]})
    if not ns:
        return {}
    out: dict[str, int] = {}
    for target in READ_AT:
        below = [n for n in ns if n <= target]
        if below and below[-1] < ns[-1] and below[-1] not in out.values():
            out[str(target)] = below[-1]
    return {**out, "max": ns[-1]}


def _row(rows: pd.DataFrame, n: int) -> pd.Series | None:
    sel = rows[(rows["pool_kind"] == "random") & (rows["level"] == "study") & (rows["k"] == 1) & (rows["n"] == n)]
    return sel.iloc[0] if len(sel) else None


def _outcomes(run_id: str) -> pd.DataFrame | None:
    try:
        return store.load_per_query(run_id)
    except (OSError, ValueError) as exc:  # an unreadable parquet file: the CI is missing, the numbers stay
        log.warning("per-query outcomes of %s unreadable: %s", run_id, exc)
        return None


def point_cuts(points: pd.DataFrame, metrics: pd.DataFrame, ref_run: str | None, *, n_boot: int = 200,
               seed: int = 0) -> pd.DataFrame:
    """One row per point (run_id): for each tag of read_points, n_<tag>, the point's Recall@1 with its CI
    (r1_<tag>, r1_<tag>_low/_high, from the stored rows), the cut against ref_run (cut_<tag> = 1 - R@1 / baseline
    R@1) with its paired CI (cut_<tag>_low/_high: NaN without stored outcomes); the paired CI of the linear-probe
    and zero-shot macro AUROC changes (auroc_change_low/_high, zero_shot_change_low/_high); and `paired`, whether
    the CIs were computed."""
    own = metrics[metrics["variant"] == "dp"] if "variant" in metrics.columns else metrics
    tags = read_points(own)
    ref_rows = own[own["run_id"] == ref_run] if ref_run else own.iloc[0:0]
    base = _outcomes(ref_run) if ref_run else None
    out, memo = [], {}  # memo: the baseline's AUROC replicates, computed once for every point
    for run_id in points["run_id"]:
        rows = own[own["run_id"] == run_id]
        rec: dict[str, Any] = {"run_id": run_id}
        for tag, n in tags.items():
            p, a = _row(rows, n), _row(ref_rows, n)
            rec[f"n_{tag}"] = n
            for key, col in (("", "recall"), ("_low", "ci_low"), ("_high", "ci_high")):
                rec[f"r1_{tag}{key}"] = float(p[col]) if p is not None else math.nan
            rec[f"cut_{tag}"] = (1 - float(p["recall"]) / float(a["recall"]) if p is not None and a is not None
                                 and float(a["recall"]) > 0 else math.nan)
            rec[f"cut_{tag}_low"] = rec[f"cut_{tag}_high"] = math.nan
        for key in ("auroc_change", "zero_shot_change"):
            rec[f"{key}_low"] = rec[f"{key}_high"] = math.nan
        rec["paired"] = False
        mine = _outcomes(run_id) if base is not None else None
        if run_id == ref_run:
            rec.update({f"cut_{t}_{side}": 0.0 for t in tags for side in ("low", "high")})
            rec.update({f"{k}_{side}": 0.0 for k in ("auroc_change", "zero_shot_change") for side in ("low", "high")})
            rec["paired"] = base is not None
        elif mine is not None:
            try:
                cuts = paired_cuts(base, mine, list(tags.values()), n_boot=n_boot, seed=seed)
                for tag, c in zip(tags, cuts.itertuples(), strict=True):
                    rec[f"cut_{tag}_low"], rec[f"cut_{tag}_high"] = c.cut_low, c.cut_high
                for key, method in (("auroc_change", "linear"), ("zero_shot_change", "zero-shot")):
                    got = paired_auroc(base, mine, method, n_boot=n_boot, seed=seed, memo=memo)
                    rec[f"{key}_low"], rec[f"{key}_high"] = got["change_low"], got["change_high"]
                rec["paired"] = True
            except (RelinkError, KeyError) as exc:  # other queries, or a frame without some column
                log.warning("paired CIs of %s against %s skipped: %s", run_id, ref_run, exc)
        out.append(rec)
    return pd.DataFrame(out)


def bootstrap_of(spec_json: str | None) -> tuple[int, int]:
    """(n_bootstrap, seed) of the audit settings a sweep's points were evaluated with (200, 0 when unreadable)."""
    try:
        audit = json.loads(spec_json or "{}").get("base", {}).get("audit", {})
        return int(audit.get("n_bootstrap", 200)), int(audit.get("seed", 0))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return 200, 0


def paired_summary(points: list[tuple[float, str]], spec_json: str | None) -> dict[str, Any]:
    """{"paired_cuts": [point_cuts's record + epsilon, per point]} of a sweep whose DP points (epsilon, run id) are
    stored, against its point at epsilon = inf; {} without that point. Kept in the sweep run's summary and matched
    to the points by epsilon (an imported snapshot renames the runs)."""
    ref = [rid for eps, rid in points if not math.isfinite(float(eps))]
    if not ref:
        return {}
    ids = [rid for _, rid in points]
    n_boot, seed = bootstrap_of(spec_json)
    frame = point_cuts(pd.DataFrame({"run_id": ids}), store.load_metrics(ids), ref[0], n_boot=n_boot, seed=seed)
    eps = {rid: float(e) for e, rid in points}
    records = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
               | {"epsilon": None if not math.isfinite(eps[r["run_id"]]) else eps[r["run_id"]]}
               for r in frame.to_dict(orient="records")]
    return {"paired_cuts": records}


def stored_cuts(summary: dict[str, Any] | None, points: pd.DataFrame) -> pd.DataFrame | None:
    """The paired_summary kept in a sweep's summary as point_cuts's frame for `points` (run_id, epsilon), matched by
    epsilon; None when it is not there or does not cover every point."""
    records = (summary or {}).get("paired_cuts")
    if not records:
        return None
    by_eps = {(math.inf if r.get("epsilon") is None else float(r["epsilon"])): r for r in records}
    rows = []
    for run_id, e in zip(points["run_id"], points["epsilon"], strict=True):
        rec = by_eps.get(float(e))
        if rec is None:
            return None
        rows.append({**{k: (math.nan if v is None else v) for k, v in rec.items() if k != "epsilon"}, "run_id": run_id})
    return pd.DataFrame(rows)
