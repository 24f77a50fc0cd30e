"""How the pages word the cut and the utility cost of a sweep point (computed in backend.runs.cuts): the pool size a
number reads at, and a value with its paired 95% CI (or why the CI is missing)."""

from __future__ import annotations

import numpy as np


def n_phrase(n: int, pool: str = "random pool", *, card: bool = False) -> str:
    """How a number names where it reads: "Recall@1 at N=100, random pool" (card: "R@1 at N=100, random pool", short
    enough for a card's label, at most 30 characters up to N=1,000,000)."""
    return f"{'R@1' if card else 'Recall@1'} at N={n:,}, {pool}"


def interval(value: float, low: float, high: float, fmt: str = "{:+.0%}") -> str:
    """"-52% [95% CI -60% to -44%]", or the value alone with "(CI needs a recompute)" when the CI is missing."""
    if not np.isfinite(value):
        return "n/a"
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{fmt.format(value)} (CI needs a recompute)"
    return f"{fmt.format(value)} [95% CI {fmt.format(low)} to {fmt.format(high)}]"
