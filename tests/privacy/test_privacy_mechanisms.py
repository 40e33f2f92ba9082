"""Mechanisms: calibration known answers, clipping guarantees, noise statistics with fixed seeds."""
from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats

from fedsilo.errors import PrivacyParameterError
from fedsilo.privacy import mechanisms as M


# ----------------------------------------------------------------------------- calibration


def test_classic_sigma_known_answer() -> None:
    # Dwork & Roth Thm A.1: sigma = sqrt(2 ln(1.25/delta)) * Delta / eps
    got = M.gaussian_sigma_classic(sensitivity=2.0, epsilon=0.5, delta=1e-5)
    assert got == pytest.approx(2.0 * math.sqrt(2 * math.log(1.25e5)) / 0.5, rel=1e-12)


def test_classic_sigma_refuses_eps_at_least_one() -> None:
    with pytest.raises(PrivacyParameterError, match="epsilon < 1"):
        M.gaussian_sigma_classic(sensitivity=1.0, epsilon=1.0, delta=1e-5)


@pytest.mark.parametrize("eps,delta", [(0.01, 1e-6), (0.5, 1e-5), (1.0, 1e-5), (8.0, 1e-5), (50.0, 1e-3), (0.9, 0.1)])
def test_analytic_sigma_matches_dp_accounting(eps: float, delta: float) -> None:
    ours = M.gaussian_sigma_analytic(sensitivity=3.0, epsilon=eps, delta=delta)
    assert ours == pytest.approx(3.0 * dp_accounting.get_sigma_gaussian(eps, delta), rel=1e-9)


def _exact_delta(sigma: float, eps: float) -> float:
    # Balle & Wang Thm 8 with Delta = 1, evaluated independently with scipy.stats
    n = stats.norm
    return float(n.cdf(0.5 / sigma - eps * sigma) - math.exp(eps) * n.cdf(-0.5 / sigma - eps * sigma))


@settings(max_examples=200, deadline=None)
@given(
    eps=st.floats(min_value=1e-3, max_value=30.0),
    log_delta=st.floats(min_value=-12.0, max_value=-1.0),
)
def test_analytic_calibration_never_overshoots_delta(eps: float, log_delta: float) -> None:
    delta = 10.0**log_delta
    sigma = M.gaussian_sigma_analytic(sensitivity=1.0, epsilon=eps, delta=delta)
    assert _exact_delta(sigma, eps) <= delta * (1 + 1e-9)
    assert _exact_delta(sigma * (1 - 1e-6), eps) > delta * (1 - 1e-4)  # and it is tight
    if eps < 1.0:
        assert sigma <= M.gaussian_sigma_classic(sensitivity=1.0, epsilon=eps, delta=delta)


def test_analytic_is_below_classic_where_both_apply() -> None:
    for eps in np.linspace(0.01, 0.99, 25):
        for delta in (1e-3, 1e-5, 1e-8):
            a = M.gaussian_sigma_analytic(sensitivity=1.0, epsilon=float(eps), delta=delta)
            c = M.gaussian_sigma_classic(sensitivity=1.0, epsilon=float(eps), delta=delta)
            assert a <= c


def test_laplace_scale() -> None:
    assert M.laplace_scale(sensitivity=2.0, epsilon=0.5) == 4.0
    with pytest.raises(PrivacyParameterError):
        M.laplace_scale(sensitivity=0.0, epsilon=0.5)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(sensitivity=1.0, epsilon=0.0, delta=1e-5),
        dict(sensitivity=-1.0, epsilon=0.5, delta=1e-5),
        dict(sensitivity=1.0, epsilon=0.5, delta=0.0),
        dict(sensitivity=1.0, epsilon=0.5, delta=1.0),
        dict(sensitivity=1.0, epsilon=float("nan"), delta=1e-5),
    ],
)
def test_calibration_bad_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(PrivacyParameterError):
        M.gaussian_sigma_analytic(**kwargs)
    with pytest.raises(PrivacyParameterError):
        M.gaussian_sigma_classic(**kwargs)


# ----------------------------------------------------------------------------- clipping

vec_st = hnp.arrays(
    np.float64,
    hnp.array_shapes(min_dims=1, max_dims=1, min_side=1, max_side=50),
    elements=st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
)


@settings(max_examples=200, deadline=None)
@given(vec=vec_st, c=st.floats(min_value=1e-6, max_value=1e3))
def test_clip_l2_bounds_norm_and_keeps_direction(vec: np.ndarray, c: float) -> None:
    out = M.clip_l2(vec, max_norm=c)
    assert np.linalg.norm(out) <= c
    norm = np.linalg.norm(vec)
    if norm <= c:
        assert np.array_equal(out, vec)
    else:
        assert np.allclose(out * norm / c, vec, rtol=1e-9, atol=1e-9 * norm)
    assert out is not vec


@settings(max_examples=100, deadline=None)
@given(
    m=hnp.arrays(np.float64, st.tuples(st.integers(1, 20), st.integers(1, 10)), elements=st.floats(-1e4, 1e4)),
    c=st.floats(min_value=1e-3, max_value=1e2),
)
def test_clip_rows_l2(m: np.ndarray, c: float) -> None:
    out = M.clip_rows_l2(m, max_norm=c)
    assert np.all(np.linalg.norm(out, axis=1) <= c)
    for row_in, row_out in zip(m, out):
        if np.linalg.norm(row_in) <= c:
            assert np.array_equal(row_in, row_out)


def test_clip_zero_norm_and_bad_input() -> None:
    assert np.array_equal(M.clip_l2(np.zeros(4), max_norm=1.0), np.zeros(4))
    assert np.array_equal(M.clip_rows_l2(np.zeros((3, 2)), max_norm=1.0), np.zeros((3, 2)))
    with pytest.raises(PrivacyParameterError):
        M.clip_l2(np.array([1.0, np.nan]), max_norm=1.0)
    with pytest.raises(PrivacyParameterError):
        M.clip_l2(np.array([np.inf, 0.0]), max_norm=1.0)
    with pytest.raises(PrivacyParameterError):
        M.clip_l2(np.ones(3), max_norm=0.0)
    with pytest.raises(PrivacyParameterError):
        M.clip_rows_l2(np.ones(3), max_norm=1.0)
    assert M.clip_l2(np.array([3, 4]), max_norm=1.0) == pytest.approx([0.6, 0.8])


# ----------------------------------------------------------------------------- noise shares


def test_noise_shares_sum_to_sigma_squared() -> None:
    sigma, n = 2.5, 7
    share = M.noise_share_sigma(sigma=sigma, parties=n)
    assert n * share**2 == pytest.approx(sigma**2)
    # Dropouts known before noising: each present party raises its share.
    for present in range(1, n + 1):
        s = M.noise_share_sigma(sigma=sigma, parties=n, present=present)
        assert present * s**2 == pytest.approx(sigma**2)
        # Dropouts after noising: a top-up on top of the sigma^2/n share.
        top = M.noise_share_topup_sigma(sigma=sigma, parties=n, present=present)
        assert present * (share**2 + top**2) == pytest.approx(sigma**2)
    assert M.noise_share_topup_sigma(sigma=sigma, parties=n, present=n) == 0.0


def test_noise_shares_empirical_variance() -> None:
    sigma, n, present, draws = 3.0, 5, 3, 200_000
    rng = M.secure_rng(7)
    share = M.noise_share_sigma(sigma=sigma, parties=n)
    top = M.noise_share_topup_sigma(sigma=sigma, parties=n, present=present)
    total = sum(
        M.gaussian_noise(sigma=share, size=draws, rng=rng) + M.gaussian_noise(sigma=top, size=draws, rng=rng)
        for _ in range(present)
    )
    # Var(sample variance) = 2 sigma^4 / (N - 1) for Gaussian data: allow 5 standard errors.
    assert abs(total.var() - sigma**2) < 5 * sigma**2 * math.sqrt(2 / draws)


@pytest.mark.parametrize(
    "kwargs",
    [dict(sigma=1.0, parties=0), dict(sigma=1.0, parties=3, present=4), dict(sigma=1.0, parties=3, present=0), dict(sigma=0.0, parties=3)],
)
def test_noise_share_bad_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(PrivacyParameterError):
        M.noise_share_sigma(**kwargs)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- samplers


def test_secure_rng_seeding() -> None:
    a = M.secure_rng(123).normal(size=5)
    b = M.secure_rng(123).normal(size=5)
    assert np.array_equal(a, b)
    assert not np.array_equal(M.secure_rng().normal(size=5), M.secure_rng().normal(size=5))
    with pytest.raises(PrivacyParameterError):
        M.secure_rng(-1)


def test_samplers_require_a_generator() -> None:
    with pytest.raises(PrivacyParameterError, match="Generator"):
        M.gaussian_noise(sigma=1.0, size=3, rng=np.random)  # type: ignore[arg-type]
    with pytest.raises(PrivacyParameterError):
        M.discrete_laplace(scale=1.0, size=3, rng=np.random.RandomState(0), granularity=1.0)  # type: ignore[arg-type]


def test_gaussian_noise_moments() -> None:
    n, sigma = 400_000, 1.7
    x = M.gaussian_noise(sigma=sigma, size=n, rng=M.secure_rng(1))
    assert abs(x.mean()) < 5 * sigma / math.sqrt(n)
    assert abs(x.var() - sigma**2) < 5 * sigma**2 * math.sqrt(2 / n)


def test_granularity_must_be_power_of_two() -> None:
    for g in (0.1, 3.0, 1e-6, 0.0, -0.5):
        with pytest.raises(PrivacyParameterError):
            M.discrete_laplace(scale=1.0, size=2, rng=M.secure_rng(0), granularity=g)
        with pytest.raises(PrivacyParameterError):
            M.discrete_gaussian(sigma=1.0, size=2, rng=M.secure_rng(0), granularity=g)


@pytest.mark.parametrize("g", [1.0, 2.0**-16, 2.0**-30])
def test_discrete_noise_lies_on_the_grid(g: float) -> None:
    rng = M.secure_rng(5)
    for x in (
        M.discrete_laplace(scale=0.7, size=(50, 40), rng=rng, granularity=g),
        M.discrete_gaussian(sigma=0.7, size=(50, 40), rng=rng, granularity=g),
    ):
        assert x.shape == (50, 40) and x.dtype == np.float64
        k = x / g
        assert np.array_equal(k, np.round(k))
        # adding grid noise to a grid value stays exactly on the grid (no porous low bits)
        value = M.round_to_grid(np.full(x.shape, 12.345), granularity=g)
        assert np.array_equal((value + x) / g, np.round((value + x) / g))


def _dlap_pmf(k: np.ndarray, t: float) -> np.ndarray:
    return math.tanh(1 / (2 * t)) * np.exp(-np.abs(k) / t)


def _dgauss_pmf(k: np.ndarray, s: float) -> np.ndarray:
    w = np.exp(-(k.astype(float) ** 2) / (2 * s * s))
    return w / w.sum()


def _chi2_pvalue(samples: np.ndarray, pmf: np.ndarray, support: np.ndarray) -> float:
    counts = np.array([(samples == k).sum() for k in support], dtype=float)
    expected = pmf * samples.size
    keep = expected >= 20
    observed = np.append(counts[keep], samples.size - counts[keep].sum())
    exp = np.append(expected[keep], samples.size - expected[keep].sum())
    return float(stats.chisquare(observed, exp).pvalue)


def test_discrete_laplace_distribution() -> None:
    t, n = 2.0, 200_000  # scale in grid units
    k = M.discrete_laplace(scale=t, size=n, rng=M.secure_rng(11), granularity=1.0)
    support = np.arange(-60, 61)
    assert _chi2_pvalue(k, _dlap_pmf(support, t), support) > 1e-4
    r = math.exp(-1 / t)
    var = 2 * r / (1 - r) ** 2
    fourth = float((_dlap_pmf(support, t) * support.astype(float) ** 4).sum())
    assert abs(k.mean()) < 5 * math.sqrt(var / n)
    assert abs(k.var() - var) < 5 * math.sqrt((fourth - var**2) / n)


def test_discrete_laplace_scale_in_data_units() -> None:
    g, b, n = 2.0**-10, 0.5, 200_000
    x = M.discrete_laplace(scale=b, size=n, rng=M.secure_rng(3), granularity=g)
    # fine grid: close to the continuous Laplace variance 2 b^2 (kurtosis 6 -> Var(s^2) = 5 sigma^4 / n)
    assert abs(x.var() - 2 * b * b) < 5 * 2 * b * b * math.sqrt(5 / n) + 1e-3


@pytest.mark.parametrize("s", [0.6, 1.5, 4.0])
def test_discrete_gaussian_distribution(s: float) -> None:
    n = 200_000
    k = M.discrete_gaussian(sigma=s, size=n, rng=M.secure_rng(int(s * 10)), granularity=1.0)
    support = np.arange(-80, 81)
    pmf = _dgauss_pmf(support, s)
    assert _chi2_pvalue(k, pmf, support) > 1e-4
    var = float((pmf * support.astype(float) ** 2).sum())
    fourth = float((pmf * support.astype(float) ** 4).sum())
    assert var <= s * s + 1e-12  # CKS 2020: never more than sigma^2
    assert abs(k.mean()) < 5 * math.sqrt(var / n)
    assert abs(k.var() - var) < 5 * math.sqrt((fourth - var**2) / n)


def test_discrete_gaussian_fine_grid_matches_sigma() -> None:
    n, sigma = 300_000, 1.3
    x = M.discrete_gaussian(sigma=sigma, size=n, rng=M.secure_rng(21), granularity=2.0**-16)
    assert abs(x.var() - sigma**2) < 5 * sigma**2 * math.sqrt(2 / n)
