"""The distributed discrete Gaussian's DP event and accounting (fedsilo.privacy.distributed,
DistributedDiscreteGaussianEvent): Proposition 14 of Kairouz, Liu & Steinke (ICML 2021), composed
by the RDP accountant, equal to the continuous Gaussian at large σ, refused by PLD."""
from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsilo.errors import PrivacyError, PrivacyParameterError
from fedsilo.privacy.accounting import epsilon, normalize
from fedsilo.privacy.distributed import (
    ddg_epsilon,
    ddg_noise_sigma,
    ddg_rdp,
    ddg_tau,
    rounded_l1_bound,
    rounded_l2_bound,
)
from fedsilo.privacy.events import ComposedEvent, DistributedDiscreteGaussianEvent, GaussianEvent, event_from_json
from fedsilo.privacy.relations import ZERO_OUT_SILO

DELTA = 1e-5


def _event(sigma: float, shares: int = 5, l2: float = 4096.0, dim: int = 1024, steps: int = 1) -> DistributedDiscreteGaussianEvent:
    return DistributedDiscreteGaussianEvent(sigma, shares, l2, rounded_l1_bound(l2_bound=l2, dimension=dim), dim, steps)


def test_tau_known_answers() -> None:
    assert ddg_tau(sigma=1.0, shares=1) == 0.0
    assert math.isclose(ddg_tau(sigma=1.0, shares=2), 10 * math.exp(-(math.pi**2)), rel_tol=1e-12)
    three = 10 * (math.exp(-2 * math.pi**2 * 0.25 * 0.5) + math.exp(-2 * math.pi**2 * 0.25 * 2 / 3))
    assert math.isclose(ddg_tau(sigma=0.5, shares=3), three, rel_tol=1e-12)
    assert ddg_tau(sigma=3.0, shares=100) < 1e-30  # a few grid steps: negligible


def test_rdp_is_the_smallest_of_proposition_14s_three_bounds() -> None:
    orders = np.array([1.5, 2.0, 8.0, 64.0])
    sigma, n, l2, l1, d = 0.6, 8, 3.0, 9.0, 50
    tau = ddg_tau(sigma=sigma, shares=n)
    s = math.sqrt(n) * sigma
    by_hand = [min(a * l2**2 / (2 * s * s) + tau * d,
                   a / 2 * (l2**2 / (s * s) + 2 * l1 * tau / s + tau * tau * d),
                   a / 2 * (l2 / s + tau * math.sqrt(d)) ** 2) for a in orders]
    got = ddg_rdp(orders=orders, sigma=sigma, shares=n, l2_sensitivity=l2, l1_sensitivity=l1, dimension=d)
    assert np.allclose(got, by_hand, rtol=1e-13, atol=0)


@pytest.mark.parametrize("sigma", [300.0, 2025.9, 1.0e5])
def test_epsilon_equals_the_continuous_gaussian_at_large_sigma(sigma: float) -> None:
    event = _event(sigma, steps=3)
    z = math.sqrt(event.shares) * sigma / event.l2_sensitivity
    assert math.isclose(epsilon(event, delta=DELTA), epsilon(GaussianEvent(z, 1.0, 3), delta=DELTA), rel_tol=1e-9)


def test_small_sigma_costs_more_than_the_continuous_gaussian() -> None:
    # σ of half a grid step: the sum of shares is far from one discrete Gaussian (τ ≈ 2.3 at n = 10)
    event = DistributedDiscreteGaussianEvent(0.5, 10, 1.0, 1.0, 10)
    z = math.sqrt(10) * 0.5 / 1.0
    assert epsilon(event, delta=DELTA) > 1.05 * epsilon(GaussianEvent(z), delta=DELTA)


def test_dp_accounting_form_is_never_below_fedsilos_curve() -> None:
    for sigma in (0.5, 0.8, 3.0, 500.0):
        event = DistributedDiscreteGaussianEvent(sigma, 6, 20.0, 200.0, 256, 4)
        acc = dp_accounting.rdp.RdpAccountant()
        acc.compose(event.to_dp_accounting())
        ours = epsilon(event, delta=DELTA)
        assert acc.get_epsilon(DELTA) >= ours - 1e-12
        if sigma >= 3.0:
            assert math.isclose(acc.get_epsilon(DELTA), ours, rel_tol=1e-9)


def test_composition_and_normalize() -> None:
    one = _event(800.0)
    three = _event(800.0, steps=3)
    assert normalize(ComposedEvent((one, one, one))) == (three,)
    assert math.isclose(epsilon(ComposedEvent((one, one, one)), delta=DELTA), epsilon(three, delta=DELTA), rel_tol=1e-12)
    mixed = ComposedEvent((one, GaussianEvent(1.2, 0.1, 10)))
    assert epsilon(mixed, delta=DELTA) > epsilon(one, delta=DELTA)
    assert math.isclose(ddg_epsilon(sigma=800.0, shares=5, l2_sensitivity=4096.0, l1_sensitivity=one.l1_sensitivity,
                                    dimension=1024, steps=3, delta=DELTA), epsilon(three, delta=DELTA), rel_tol=1e-12)


def test_pld_refuses_and_says_to_use_rdp() -> None:
    with pytest.raises(PrivacyError, match="accountant 'rdp'"):
        epsilon(_event(100.0), delta=DELTA, accountant="pld")
    with pytest.raises(PrivacyError, match="'pld'"):
        epsilon(ComposedEvent((GaussianEvent(1.0), _event(100.0))), delta=DELTA, accountant="pld")


def test_event_json_round_trip_and_refusals() -> None:
    event = _event(123.5, steps=7)
    assert event_from_json(event.to_json()) == event
    assert DistributedDiscreteGaussianEvent.from_json(event.to_json()) == event
    bad = dict(event.to_json(), extra=1)
    with pytest.raises(PrivacyError, match="unknown keys extra"):
        event_from_json(bad)
    missing = {k: v for k, v in event.to_json().items() if k != "shares"}
    with pytest.raises(PrivacyError, match="lacks shares"):
        event_from_json(missing)
    with pytest.raises(PrivacyParameterError, match="noise_sigma must be >= 0.5"):
        DistributedDiscreteGaussianEvent(0.4, 3, 1.0, 1.0, 1)
    with pytest.raises(PrivacyParameterError, match="shares"):
        DistributedDiscreteGaussianEvent(1.0, 0, 1.0, 1.0, 1)
    with pytest.raises(PrivacyParameterError, match="dimension"):
        DistributedDiscreteGaussianEvent(1.0, 2, 1.0, 1.0, True)  # type: ignore[arg-type]


def test_rounded_norm_bounds() -> None:
    assert rounded_l2_bound(norm=10.0, dimension=100, beta=0.0) == 20.0  # c + √d
    b = rounded_l2_bound(norm=4096.0, dimension=1024, beta=math.exp(-0.5))
    assert 4096.0 < b < 4096.0 + 1.0  # far tighter than c + √d = 4128 for a large norm
    by_hand = math.sqrt(4096.0**2 + 1024 / 4 + math.sqrt(2 * 0.5) * (4096.0 + 16.0))
    assert math.isclose(b, by_hand, rel_tol=1e-15)
    assert rounded_l1_bound(l2_bound=3.0, dimension=100) == 9.0  # integers: L1 <= L2²
    assert rounded_l1_bound(l2_bound=100.0, dimension=16) == 400.0  # Cauchy–Schwarz: √d·L2
    with pytest.raises(PrivacyParameterError, match="beta"):
        rounded_l2_bound(norm=1.0, dimension=1, beta=1.0)


@settings(max_examples=15)
@given(target=st.floats(min_value=0.3, max_value=20.0), steps=st.integers(min_value=1, max_value=50),
       shares=st.integers(min_value=1, max_value=20))
def test_calibrated_sigma_never_overshoots_and_is_tight(target: float, steps: int, shares: int) -> None:
    kw = dict(steps=steps, shares=shares, l2_sensitivity=1000.0, l1_sensitivity=30_000.0, dimension=1000, delta=DELTA)
    sigma = ddg_noise_sigma(target_epsilon=target, **kw)
    assert ddg_epsilon(sigma=sigma, **kw) <= target
    if sigma > 0.5:
        assert ddg_epsilon(sigma=sigma * 0.99, **kw) > target


def test_a_ledger_charges_the_event_under_rdp(ledger) -> None:  # type: ignore[no-untyped-def]
    ledger.register_dataset("d", epsilon=8.0, delta=DELTA)
    event = _event(2000.0)
    with ledger.charge("d", event, job="j", round=1, protocol="secagg+", mechanism={"name": "secagg+"},
                       recipient="aggregator", relation=ZERO_OUT_SILO):
        pass
    assert math.isclose(ledger.spent("d"), epsilon(event, delta=DELTA), rel_tol=1e-12)
    (entry,) = ledger.entries()
    assert entry.event == event  # stored and loaded back through the fixed kind table
