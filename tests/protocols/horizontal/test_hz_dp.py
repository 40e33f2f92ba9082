"""Silo-level DP-FedAvg wrapper and noise-share sizing."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsilo.errors import ConfigError
from fedsilo.privacy.accounting import epsilon
from fedsilo.privacy.events import GaussianEvent
from fedsilo.privacy.mechanisms import secure_rng
from fedsilo.protocols.horizontal.dp import DPFedAvg, silo_noise_multiplier
from fedsilo.protocols.horizontal.secure_aggregation import required_contributors, share_parties, topup_parties
from fedsilo.protocols.horizontal.strategies import FedAvg


def test_clips_then_delegates() -> None:
    dp = DPFedAvg(FedAvg(), clip=0.5, noise_multiplier=1.0, colluders=1)
    u = dp.prepare_update(np.array([3.0, 4.0]), round=1)
    assert np.linalg.norm(u) <= 0.5
    np.testing.assert_allclose(u, [0.3, 0.4])
    small = np.array([0.1, 0.1])
    np.testing.assert_array_equal(dp.prepare_update(small, round=1), small)
    np.testing.assert_array_equal(dp.prepare_update(np.zeros(2), round=1), np.zeros(2))  # no 0/0


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError):
        DPFedAvg(FedAvg(), clip=0.0, noise_multiplier=1.0)
    with pytest.raises(ConfigError):
        DPFedAvg(DPFedAvg(FedAvg(), clip=1.0, noise_multiplier=1.0), clip=1.0, noise_multiplier=1.0)
    with pytest.raises(ConfigError):
        DPFedAvg("fedavg", clip=1.0, noise_multiplier=1.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="knows its own noise share"):
        DPFedAvg(FedAvg(), clip=1.0, noise_multiplier=1.0, colluders=0)  # a silo subtracting its own share


def test_event_and_epsilon_match_accountant() -> None:
    z = silo_noise_multiplier(epsilon=8.0, delta=1e-5, rounds=5)
    dp = DPFedAvg(FedAvg(), clip=1.0, noise_multiplier=z)
    assert dp.event(round=1) == GaussianEvent(z, 1.0, 1)
    eps = epsilon(GaussianEvent(z, 1.0, 5), delta=1e-5)
    assert eps <= 8.0 and eps > 7.9


@pytest.mark.parametrize("present,colluders", [(3, 1), (5, 1), (5, 2), (10, 2)])
def test_shares_sum_to_at_least_target_variance(present: int, colluders: int) -> None:
    dp = DPFedAvg(FedAvg(), clip=1.0, noise_multiplier=2.0, colluders=colluders)
    rng = secure_rng(3)
    n = 40_000
    shares = [dp.noise_share(present=present, size=n, rng=rng) for _ in range(present)]
    # Any (present - colluders) shares already carry sigma^2 = (z C)^2 = 4.
    honest = np.sum(shares[colluders:], axis=0)
    assert abs(honest.var() / 4.0 - 1.0) < 0.03


@given(n=st.integers(2, 12), t=st.integers(0, 3), data=st.data())
@settings(max_examples=60, deadline=None)
def test_topup_restores_target_variance(n: int, t: int, data: st.DataObject) -> None:
    """After k of n announced silos contribute, share + top-up variance of any k - t shares >= sigma^2."""
    if n - t < 1:
        return
    k = data.draw(st.integers(t + 1, n))
    sigma = 1.7
    from fedsilo.privacy.mechanisms import noise_share_sigma, noise_share_topup_sigma

    s1 = noise_share_sigma(sigma=sigma, parties=share_parties(present=n, colluders=t))
    parties, now = topup_parties(present=n, contributors=k, colluders=t)
    s2 = noise_share_topup_sigma(sigma=sigma, parties=parties, present=now)
    per_silo = s1**2 + s2**2
    assert (k - t) * per_silo >= sigma**2 * (1 - 1e-12)
    assert math.isclose((k - t) * per_silo, sigma**2, rel_tol=1e-9)


def test_required_contributors() -> None:
    assert required_contributors(min_silos=2, colluders=1) == 2
    assert required_contributors(min_silos=1, colluders=1) == 2
    with pytest.raises(ConfigError):
        share_parties(present=1, colluders=1)
