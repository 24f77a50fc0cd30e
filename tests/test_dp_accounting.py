"""Privacy accounting: pinned epsilons, cross-checked against Google's dp-accounting (an independent
implementation), calibration round trips, and the budget refusal as a clear PrivacyBudgetError."""

from __future__ import annotations

import math

import dp_accounting
import pytest
from dp_accounting import pld, rdp
from opacus.accountants.utils import get_noise_multiplier

from backend.dp.accounting import EXTENDED_ORDERS, calibrate_noise, compute_epsilon, rdp_epsilon_floor, resolve_delta
from backend.errors import PrivacyBudgetError, SpecError

# (noise multiplier, sample rate, steps, delta) -> epsilon, pinned from Opacus 1.6 (RDP with EXTENDED_ORDERS; PRV)
PINNED = [
    ((1.0, 0.01, 1000, 1e-5), 2.1013652716430564, 1.8293687315675644),
    ((2.0, 0.04, 125, 6e-6), 1.1060209478117558, 0.9989802428318166),
    ((6.0, 0.04, 125, 6e-6), 0.29395056281324966, 0.2671513744027274),
]


def _event(sigma: float, q: float) -> dp_accounting.DpEvent:
    return dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))


@pytest.mark.parametrize(("args", "eps_rdp", "eps_prv"), PINNED)
def test_epsilon_is_pinned_and_matches_google_dp_accounting(args, eps_rdp: float, eps_prv: float) -> None:
    sigma, q, steps, delta = args
    got_rdp = compute_epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta, accountant="rdp")
    got_prv = compute_epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta, accountant="prv")
    assert got_rdp == pytest.approx(eps_rdp, rel=1e-9)
    assert got_prv == pytest.approx(eps_prv, rel=1e-6)
    google_rdp = rdp.RdpAccountant(list(EXTENDED_ORDERS))
    google_rdp.compose(_event(sigma, q), steps)
    google_pld = pld.PLDAccountant()
    google_pld.compose(_event(sigma, q), steps)
    assert got_rdp == pytest.approx(google_rdp.get_epsilon(delta), rel=0.02)
    assert got_prv == pytest.approx(google_pld.get_epsilon(delta), rel=0.02)
    assert got_prv < got_rdp  # PRV is the tighter accountant


def test_no_noise_means_infinite_epsilon() -> None:
    assert compute_epsilon(noise_multiplier=0.0, sample_rate=0.1, steps=10, delta=1e-5) == math.inf


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_calibration_reaches_the_target_from_below(accountant: str) -> None:
    sigma = calibrate_noise(target_epsilon=1.0, delta=6e-6, sample_rate=0.04, steps=125, accountant=accountant)
    eps = compute_epsilon(noise_multiplier=sigma, sample_rate=0.04, steps=125, delta=6e-6, accountant=accountant)
    assert 0.98 <= eps <= 1.0


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")  # the point of the test
def test_extended_orders_reach_small_epsilon_that_opacus_defaults_refuse() -> None:
    """DESIGN.md 4: at delta 6e-6 Opacus's default RDP orders refuse epsilon 0.1."""
    with pytest.raises(ValueError, match="too low"):
        get_noise_multiplier(target_epsilon=0.1, target_delta=6e-6, sample_rate=0.04, steps=25)
    sigma = calibrate_noise(target_epsilon=0.1, delta=6e-6, sample_rate=0.04, steps=25)
    assert compute_epsilon(noise_multiplier=sigma, sample_rate=0.04, steps=25, delta=6e-6) <= 0.1


def test_unreachable_budget_is_a_clear_privacy_budget_error() -> None:
    floor = rdp_epsilon_floor(6e-6)
    assert 3e-3 < floor < 5e-3  # ~ log(1/delta) / (max order - 1)
    with pytest.raises(PrivacyBudgetError, match=r"(?s)cannot certify epsilon=0.0005.*log\(1/delta\).*PRV accountant"):
        calibrate_noise(target_epsilon=5e-4, delta=6e-6, sample_rate=0.04, steps=125)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"target_epsilon": 0.0, "delta": 1e-5}, "epsilon"),
    ({"target_epsilon": -1.0, "delta": 1e-5}, "epsilon"),
    ({"target_epsilon": math.inf, "delta": 1e-5}, "inf means no DP"),
    ({"target_epsilon": 1.0, "delta": 0.0}, "delta"),
    ({"target_epsilon": 1.0, "delta": 1.0}, "delta"),
])
def test_invalid_accounting_inputs(kwargs: dict, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        calibrate_noise(sample_rate=0.1, steps=10, **kwargs)


def test_delta_is_lowered_when_one_over_n_demands(caplog: pytest.LogCaptureFixture) -> None:
    assert resolve_delta(6e-6, 7_000) == (6e-6, "")
    with caplog.at_level("WARNING", logger="backend.dp.accounting"):
        delta, note = resolve_delta(6e-6, 377_011)
        again = resolve_delta(6e-6, 377_011)  # the next point of a sweep: the same note, not logged again
    assert delta == pytest.approx(2e-7) and "1/n" in note and again == (delta, note)
    assert sum(note in r.getMessage() for r in caplog.records) == 1


def test_refusal_advises_prv_only_when_the_accountant_is_not_prv() -> None:
    from backend.dp.accounting import budget_refusal

    assert "use the PRV accountant" in budget_refusal(5e-4, 6e-6, 0.04, 125, "rdp")
    prv = budget_refusal(5e-4, 6e-6, 0.04, 125, "prv")
    assert "The PRV accountant cannot certify" in prv and "use the PRV accountant" not in prv
    assert "a larger delta" in prv
