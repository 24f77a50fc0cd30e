"""The cut and the utility cost of each point of an epsilon sweep against its baseline (the heads retrained without
DP), read where Recall@1 is measurable: at N=100, N=1,000 and the largest N of the random pool. With the per-query
outcomes stored beside each point (sweeps computed since they are kept), each number carries a paired-bootstrap
95% CI (backend.relink.paired); without them (the shipped snapshot, older sweeps) the point estimate stands alone and
CI_MISSING says why."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd

from backend.errors import RelinkError
from backend.relink.paired import paired_auroc, paired_cuts
from backend.runs import store

log = logging.getLogger(__name__)

READ_AT: tuple[int, ...] = (100, 1000)  # plus the largest N: where the frontier and the headline cut are read
CI_MISSING = ("CI needs a recompute: this sweep was stored without its per-query outcomes, which the paired "
              "bootstrap resamples (recompute the sweep to get them).")


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


def n_phrase(n: int, pool: str = "random pool", *, card: bool = False) -> str:
    """How a number names where it reads: "Recall@1 at N=100, random pool" (card: "R@1 at N=100, random pool", short
    enough for a card's label, at most 30 characters up to N=1,000,000)."""
    return f"{'R@1' if card else 'Recall@1'} at N={n:,}, {pool}"


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


def interval(value: float, low: float, high: float, fmt: str = "{:+.0%}") -> str:
    """"-52% [95% CI -60% to -44%]", or the value alone with "(CI needs a recompute)" when the CI is missing."""
    if not np.isfinite(value):
        return "n/a"
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{fmt.format(value)} (CI needs a recompute)"
    return f"{fmt.format(value)} [95% CI {fmt.format(low)} to {fmt.format(high)}]"
