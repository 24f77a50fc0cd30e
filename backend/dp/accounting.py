"""Privacy accounting for DP-SGD on the projection heads, through Opacus's accountants.

Target epsilon -> noise multiplier (binary search in `opacus.accountants.utils.get_noise_multiplier`),
and (noise multiplier, sample rate, steps, delta) -> epsilon, for a Poisson-subsampled Gaussian mechanism.

Why extended RDP orders: converting Renyi DP of order alpha to (epsilon, delta)-DP costs about
log(1/delta) / (alpha - 1) however much noise is added, so Opacus's default orders (up to 63) cannot
certify epsilon below ~0.2 at delta 6e-6 and its search ends in "The privacy budget is too low.".
We pass orders up to 1024 (floor ~0.005 at delta 6e-6) and turn any remaining refusal into a PrivacyBudgetError
that says why and what to do. epsilon = inf is never sent to an accountant (non-private training).
"""

from __future__ import annotations

import logging
import math
import warnings

from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import MAX_SIGMA, get_noise_multiplier

from backend.errors import PrivacyBudgetError, SpecError

log = logging.getLogger(__name__)

# Opacus's defaults (1.1 .. 63) plus larger orders, so that small epsilon at small delta is reachable.
EXTENDED_ORDERS: tuple[float, ...] = tuple(
    list(RDPAccountant.DEFAULT_ALPHAS) + list(range(64, 128, 8)) + list(range(128, 257, 32)) + [384, 512, 768, 1024]
)  # large integer orders cost O(alpha) each in Opacus, so they are sparse
PRV_EPS_ERROR = 1e-3  # PRV's numerical error bound on epsilon (Opacus's default 0.01 is 3% at epsilon 0.34)


def _check(delta: float, sample_rate: float, steps: int) -> None:
    if not (0 < delta < 1):
        raise SpecError(f"delta must lie in (0, 1), got {delta}.")
    if not (0 < sample_rate <= 1):
        raise SpecError(f"sample_rate must lie in (0, 1], got {sample_rate}.")
    if steps < 1:
        raise SpecError(f"steps must be >= 1, got {steps}.")


def compute_epsilon(
    *, noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp"
) -> float:
    """Epsilon spent by `steps` Poisson-subsampled Gaussian steps (Opacus accountant 'rdp' or 'prv').

    noise_multiplier 0 means no noise: epsilon is inf.
    """
    _check(delta, sample_rate, steps)
    if noise_multiplier <= 0:
        return math.inf
    if accountant == "rdp":
        acc = RDPAccountant()
        acc.history = [(noise_multiplier, sample_rate, steps)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the best order at the edge of the list is still a valid bound
            return float(acc.get_epsilon(delta=delta, alphas=list(EXTENDED_ORDERS)))
    if accountant == "prv":
        acc = PRVAccountant()
        acc.history = [(noise_multiplier, sample_rate, steps)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PRV sizes its domain with default RDP orders; harmless warning
            return float(acc.get_epsilon(delta=delta, eps_error=PRV_EPS_ERROR))
    raise SpecError(f"Unknown accountant {accountant!r}; use rdp or prv.")


def rdp_epsilon_floor(delta: float, orders: tuple[float, ...] = EXTENDED_ORDERS) -> float:
    """The smallest epsilon RDP can certify at this delta with infinite noise (RDP -> 0).

    Opacus converts with eps = rdp - (log(delta) + log(alpha)) / (alpha - 1) + log((alpha - 1) / alpha);
    with rdp = 0 the best order gives this floor (about log(1/delta) / (max order - 1)).
    """
    return min(
        -(math.log(delta) + math.log(a)) / (a - 1) + math.log((a - 1) / a) for a in orders if a > 1
    )


def calibrate_noise(
    *, target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp"
) -> float:
    """Noise multiplier that reaches `target_epsilon` at `delta` after `steps` steps at `sample_rate`.

    Raises PrivacyBudgetError when the accountant cannot reach the target (explains why, what to do).
    """
    _check(delta, sample_rate, steps)
    if not (target_epsilon > 0) or math.isinf(target_epsilon):
        raise SpecError(f"target epsilon must be finite and > 0 (inf means no DP), got {target_epsilon}.")
    if accountant == "rdp" and (target_epsilon <= rdp_epsilon_floor(delta) or compute_epsilon(
            noise_multiplier=MAX_SIGMA, sample_rate=sample_rate, steps=steps, delta=delta) > target_epsilon):
        raise PrivacyBudgetError(budget_refusal(target_epsilon, delta, sample_rate, steps, accountant))  # fail fast
    kwargs = {"alphas": list(EXTENDED_ORDERS)} if accountant == "rdp" else {"eps_error": PRV_EPS_ERROR}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Optimal order is the largest alpha" while the search probes huge noise
            sigma = get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
                epsilon_tolerance=max(1e-3, 0.005 * target_epsilon),  # 0.5% relative, not Opacus's 0.01 absolute
                **kwargs,
            )
    except (ValueError, RuntimeError) as exc:  # "The privacy budget is too low." or a PRV domain error
        raise PrivacyBudgetError(budget_refusal(target_epsilon, delta, sample_rate, steps, accountant) + f" ({exc})") from exc
    log.info("noise multiplier %.4f for epsilon %.3g at delta %.2g (%s, q=%.4g, %d steps)",
             sigma, target_epsilon, delta, accountant, sample_rate, steps)
    return float(sigma)


def budget_refusal(eps: float, delta: float, q: float, steps: int, accountant: str) -> str:
    """Why (epsilon, delta) is unreachable under `accountant` and what to change (PRV suggested only to RDP users)."""
    floor = rdp_epsilon_floor(delta)
    why = (
        f"The {accountant.upper()} accountant cannot certify epsilon={eps:g} at delta={delta:g} "
        f"with sample rate {q:.4g} over {steps} steps, even with a noise multiplier of 1e6."
    )
    if accountant == "rdp":
        why += (
            f" RDP's conversion to (epsilon, delta) costs about log(1/delta)/(alpha-1) even with infinite noise "
            f"(floor {floor:.3g} with orders up to {max(EXTENDED_ORDERS):g})."
        )
    switch = "use the PRV accountant (--accountant prv, a tight numerical accountant), " if accountant == "rdp" else ""
    return why + (
        f" To fix: {switch}use a larger delta if 1/n allows, fewer epochs or a smaller batch (fewer, smaller-sample "
        "steps), or a larger epsilon."
    )


_DELTA_NOTES_LOGGED: set[str] = set()


def resolve_delta(delta: float, n_units: int) -> tuple[float, str]:
    """The delta actually used: the requested one, lowered to 1/(10 n) when it is not well below 1/n.

    A delta near 1/n allows a mechanism that publishes one unit's record outright; the usual rule is
    delta << 1/n. Returns (delta, note) where note says what happened ('' when unchanged).
    """
    if n_units < 1:
        raise SpecError("No training units (pairs or patients): nothing to train on.")
    ceiling = 0.1 / n_units
    if delta <= ceiling:
        return delta, ""
    exponent = math.floor(math.log10(ceiling))
    lowered = math.floor(ceiling / 10**exponent) * 10**exponent  # one significant digit, rounded down
    note = (f"delta lowered from {delta:g} to {lowered:g}: with {n_units} privacy units delta must be well "
            f"below 1/n = {1 / n_units:.3g}")
    if note not in _DELTA_NOTES_LOGGED:  # a sweep resolves the same delta at every point: one log line, not eight
        _DELTA_NOTES_LOGGED.add(note)
        log.warning("%s (logged once per process; every run records it in its privacy details)", note)
    return lowered, note
