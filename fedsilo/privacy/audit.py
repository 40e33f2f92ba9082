"""Empirical privacy auditing: lower bounds on ε from samples of a mechanism. Pure functions.

A DP claim can be *refuted* by running the mechanism many times on two neighbouring inputs
``D`` and ``D'`` and looking at the outputs; it can never be proven that way. This module holds
the two measurements fedsilo's audit tests and ``benchmarks/dp_audit.py`` make:

* :func:`threshold_audit` — a black-box, statistically valid **lower bound** on ε. Any
  (ε, δ)-DP mechanism and any test "guess D' when the statistic exceeds t" satisfy
  ``FPR + e^ε FNR >= 1 − δ`` and ``FNR + e^ε FPR >= 1 − δ`` (Kairouz, Oh & Viswanath, ICML
  2015, Thm. 2.1), so Clopper–Pearson upper confidence bounds on the two error rates give

      ε_lb = max( log((1 − δ − FPR_hi) / FNR_hi), log((1 − δ − FNR_hi) / FPR_hi) ),

  the bound of Jagielski, Ullman & Oprea, "Auditing Differentially Private Machine Learning:
  How Private is Private SGD?", NeurIPS 2020, and Nasr, Song, Thakurta, Papernot & Carlini,
  "Adversary Instantiation: Lower Bounds for Differentially Private Machine Learning", IEEE S&P
  2021. The threshold is chosen on one half of the runs and the
  bound is computed on the other half only, so the search over thresholds costs nothing in
  confidence; the two Clopper–Pearson bounds are each taken at ``1 − α/2`` (union bound), so
  ``P(ε_lb > ε_true) <= α`` for every mechanism that truly is (ε_true, δ)-DP.
* :func:`fit_gaussian` — a *point estimate* of ε assuming the mechanism is Gaussian: estimate
  the shift ``Δ`` between the two output distributions along the difference direction and the
  noise σ along it, and return the exact ε(δ) of the Gaussian mechanism with ``μ = Δ/σ``
  (:func:`gaussian_epsilon`, Balle & Wang, ICML 2018, Thm. 8). It is not a bound, but it
  needs far fewer runs than a tight lower bound at δ = 1e-5, and it catches the usual bugs
  (noise shares too small, a share missing, clipping skipped) long before a threshold test
  can. :func:`fit_discrete_laplace` is the same for the discrete Laplace (geometric) mechanism.
* :func:`audit` — both on the same samples, in one :class:`AuditResult` next to the claimed ε.

Both estimators see only what they are given: which outputs, which statistic, and which
neighbouring pair are the caller's choice, and a lower bound is only as strong as the pair
(a pair that does not attain the claimed sensitivity audits a weaker claim). Samples are
``(runs,)`` scalars or ``(runs, dim)`` vectors; vectors are projected on the unit vector of the
direction ``D → D'`` the caller names. Runs must be independent (fresh noise each run).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Final

import numpy as np
from scipy import special, stats

from fedsilo.errors import PrivacyParameterError
from fedsilo.privacy.mechanisms import _positive, unit_interval

__all__ = [
    "MAX_THRESHOLDS",
    "MIN_RUNS",
    "AuditResult",
    "GaussianFit",
    "LaplaceFit",
    "ThresholdAudit",
    "audit",
    "clopper_pearson_upper",
    "epsilon_from_error_rates",
    "fit_discrete_laplace",
    "fit_gaussian",
    "gaussian_delta",
    "gaussian_epsilon",
    "project",
    "threshold_audit",
]

#: Fewest runs on each side :func:`threshold_audit` accepts (two halves of at least 2).
MIN_RUNS: Final = 4

#: Most thresholds scanned on the selection half (evenly spaced in rank among the distinct
#: values; the choice costs no confidence whichever thresholds are scanned).
MAX_THRESHOLDS: Final = 4096

_FITS: Final = ("gaussian", "discrete-laplace", None)


# --------------------------------------------------------------------------- validation




def _scalars(name: str, x: object) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise PrivacyParameterError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.ndim != 1:
        raise PrivacyParameterError(f"{name} must be one scalar per run (shape (runs,)), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise PrivacyParameterError(f"{name} contains NaN or infinite values")
    return arr


# --------------------------------------------------------------------------- projection


def project(samples: np.ndarray, *, direction: np.ndarray | None = None) -> np.ndarray:
    """One scalar per run: ``samples`` (``(runs,)`` or ``(runs, dim)``) on the unit ``direction``.

    ``direction`` is the expected change of the output from ``D`` to ``D'`` (any non-zero
    length; only its orientation is used). It is required for vectors and optional for
    scalars (where it may only flip the sign).

    Raises:
        PrivacyParameterError: non-finite samples, a zero direction, or shapes that disagree.
    """
    arr = np.asarray(samples)
    if arr.dtype.kind not in "biuf":
        raise PrivacyParameterError(f"samples must be a real numeric array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.ndim not in (1, 2) or arr.shape[0] == 0:
        raise PrivacyParameterError(f"samples must have shape (runs,) or (runs, dim), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise PrivacyParameterError("samples contain NaN or infinite values")
    if direction is None:
        if arr.ndim == 2 and arr.shape[1] != 1:
            raise PrivacyParameterError(
                "vector samples need the direction D -> D' to project on (the expected change of the output)"
            )
        return arr.reshape(-1)
    v = np.asarray(direction, dtype=np.float64).reshape(-1)
    dim = 1 if arr.ndim == 1 else arr.shape[1]
    if v.size != dim:
        raise PrivacyParameterError(f"direction has {v.size} coordinates, samples have {dim}")
    norm = float(np.linalg.norm(v))
    if not (math.isfinite(norm) and norm > 0.0):
        raise PrivacyParameterError("direction must be a finite non-zero vector")
    return (arr.reshape(arr.shape[0], dim) @ (v / norm)).reshape(-1)


# --------------------------------------------------------------------------- threshold audit


def clopper_pearson_upper(*, errors: np.ndarray | int, trials: int, alpha: float) -> np.ndarray:
    """One-sided ``1 − α`` Clopper–Pearson upper bound on a rate from ``errors`` of ``trials``.

    ``Beta⁻¹(1 − α; k + 1, n − k)``, and 1 when ``k = n`` (Clopper & Pearson, Biometrika 1934).
    Vectorized over ``errors``.
    """
    a = unit_interval("alpha", alpha)
    if isinstance(trials, bool) or not isinstance(trials, numbers.Integral) or trials < 1:
        raise PrivacyParameterError(f"trials must be an integer >= 1, got {trials!r}")
    k = np.asarray(errors, dtype=np.float64)
    if np.any((k < 0) | (k > trials) | (k != np.floor(k))):
        raise PrivacyParameterError(f"errors must be integers in [0, {trials}]")
    n = float(trials)
    full = k >= n
    out = np.ones_like(k)
    out[~full] = stats.beta.ppf(1.0 - a, k[~full] + 1.0, n - k[~full])
    return out


def epsilon_from_error_rates(*, fpr: np.ndarray | float, fnr: np.ndarray | float, delta: float) -> np.ndarray:
    """``max(log((1−δ−FPR)/FNR), log((1−δ−FNR)/FPR), 0)``: the ε any (ε, δ)-DP mechanism needs
    for a test with these error rates (Kairouz, Oh & Viswanath 2015, Thm. 2.1). With upper
    confidence bounds for the rates this is a lower confidence bound on ε (Jagielski et al. 2020)."""
    d = unit_interval("delta", delta)
    p = np.asarray(fpr, dtype=np.float64)
    q = np.asarray(fnr, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where((1.0 - d - p > 0) & (q > 0), np.log(np.maximum(1.0 - d - p, 1e-300)) - np.log(q), -np.inf)
        b = np.where((1.0 - d - q > 0) & (p > 0), np.log(np.maximum(1.0 - d - q, 1e-300)) - np.log(p), -np.inf)
    return np.maximum(np.maximum(a, b), 0.0)


@dataclass(frozen=True, slots=True)
class ThresholdAudit:
    """The threshold test chosen on the selection half, evaluated on the other half.

    The test guesses ``D'`` when ``sign · statistic > threshold``. ``false_positives`` of
    ``trials_d`` evaluation runs on ``D`` and ``false_negatives`` of ``trials_d_prime`` on
    ``D'`` give ``epsilon_lower``, valid with confidence ``1 − alpha``.
    """

    epsilon_lower: float
    threshold: float
    sign: int
    false_positives: int
    trials_d: int
    false_negatives: int
    trials_d_prime: int
    delta: float
    alpha: float


def _scan(a: np.ndarray, b: np.ndarray, *, delta: float, alpha: float) -> tuple[float, int]:
    """The ``(threshold, sign)`` with the largest bound on the selection samples ``a`` (D), ``b`` (D')."""
    best = (-1.0, 0.0, 1)
    for sign in (1, -1):
        xa, xb = np.sort(sign * a), np.sort(sign * b)
        cands = np.unique(np.concatenate([xa, xb]))
        if cands.size > MAX_THRESHOLDS:
            cands = cands[np.linspace(0, cands.size - 1, MAX_THRESHOLDS).round().astype(np.int64)]
        cands = np.concatenate([[cands[0] - 1.0], cands])  # "always guess D'" is a candidate too
        fp = xa.size - np.searchsorted(xa, cands, side="right")  # runs on D with statistic > t
        fn = np.searchsorted(xb, cands, side="right")  # runs on D' with statistic <= t
        eps = epsilon_from_error_rates(
            fpr=clopper_pearson_upper(errors=fp, trials=xa.size, alpha=alpha / 2.0),
            fnr=clopper_pearson_upper(errors=fn, trials=xb.size, alpha=alpha / 2.0),
            delta=delta,
        )
        i = int(np.argmax(eps))
        if eps[i] > best[0]:
            best = (float(eps[i]), float(cands[i]), sign)
    return best[1], best[2]


def threshold_audit(
    *, statistic: np.ndarray, statistic_prime: np.ndarray, delta: float, alpha: float = 0.05
) -> ThresholdAudit:
    """A ``1 − α`` lower confidence bound on ε from a scalar statistic of runs on ``D`` and ``D'``.

    Jagielski, Ullman & Oprea (NeurIPS 2020) and Nasr et al. (IEEE S&P 2021): the first
    half of each sample array chooses the threshold test (scanning every threshold and both
    orientations for the largest bound at the same α); the second half, which played no part in
    the choice, counts its false positives and negatives, and :func:`clopper_pearson_upper` at
    ``1 − α/2`` each bounds the two rates. So ``P(ε_lb > ε) <= α`` for any mechanism that is
    (ε, δ)-DP, however the runs came out. Runs must be i.i.d. within each array.

    With ``n`` evaluation runs per side the bound cannot exceed about ``log(n / log(2/α))``;
    at δ = 1e-5 it stays well below the ε of a Gaussian mechanism (whose ε is set by its far
    tails), so it is a sanity check ("no refutation") rather than a tight estimate.

    Raises:
        PrivacyParameterError: fewer than :data:`MIN_RUNS` runs on a side, non-finite values,
            δ or α outside (0, 1).
    """
    d = unit_interval("delta", delta)
    a_ = unit_interval("alpha", alpha)
    a = _scalars("statistic", statistic)
    b = _scalars("statistic_prime", statistic_prime)
    if a.size < MIN_RUNS or b.size < MIN_RUNS:
        raise PrivacyParameterError(
            f"threshold_audit needs at least {MIN_RUNS} runs on each side, got {a.size} and {b.size}"
        )
    sel_a, ev_a = a[: a.size // 2], a[a.size // 2 :]
    sel_b, ev_b = b[: b.size // 2], b[b.size // 2 :]
    threshold, sign = _scan(sel_a, sel_b, delta=d, alpha=a_)
    fp = int(np.count_nonzero(sign * ev_a > threshold))
    fn = int(np.count_nonzero(sign * ev_b <= threshold))
    eps = epsilon_from_error_rates(
        fpr=clopper_pearson_upper(errors=fp, trials=ev_a.size, alpha=a_ / 2.0),
        fnr=clopper_pearson_upper(errors=fn, trials=ev_b.size, alpha=a_ / 2.0),
        delta=d,
    )
    return ThresholdAudit(float(eps), threshold, sign, fp, int(ev_a.size), fn, int(ev_b.size), d, a_)


# --------------------------------------------------------------------------- Gaussian privacy profile


def gaussian_delta(*, mu: float, epsilon: float) -> float:
    """δ(ε) of the Gaussian mechanism with ``μ = Δ/σ`` (Balle & Wang, ICML 2018, Theorem 8).

    ``δ(ε) = Φ(μ/2 − ε/μ) − e^ε Φ(−μ/2 − ε/μ)``, computed in log space (exact: it is the
    privacy profile of ``N(0, σ²)`` against ``N(Δ, σ²)``, and no (ε, δ') with δ' < δ(ε) holds).
    """
    m = _positive("mu", mu)
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not (
        math.isfinite(float(epsilon)) and float(epsilon) >= 0.0
    ):
        raise PrivacyParameterError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
    return math.exp(_log_delta(m, float(epsilon)))


def _log_delta(mu: float, eps: float) -> float:
    log_a = float(special.log_ndtr(mu / 2.0 - eps / mu))
    log_b = eps + float(special.log_ndtr(-mu / 2.0 - eps / mu))
    if log_b >= log_a:
        return -math.inf
    return log_a + math.log1p(-math.exp(log_b - log_a))


def gaussian_epsilon(*, mu: float, delta: float) -> float:
    """The exact ε at ``delta`` of the Gaussian mechanism with ``μ = Δ/σ`` (Balle & Wang 2018,
    Thm. 8): the root of :func:`gaussian_delta` ``= δ``. δ(ε) decreases in ε; the root is
    bracketed by doubling and bisected to absolute width 1e-12, and the upper end is returned,
    so ``gaussian_delta(μ, ε) <= δ`` holds for the result. 0.0 when even ε = 0 meets δ
    (``2Φ(μ/2) − 1 <= δ``).

    Use the same function for the claimed parameters (``μ = 1/z`` for noise multiplier ``z``)
    and for fitted ones, so a comparison measures the mechanism, not two formulas.
    """
    m = _positive("mu", mu)
    target = math.log(unit_interval("delta", delta))
    if _log_delta(m, 0.0) <= target:
        return 0.0
    lo, hi = 0.0, max(1.0, m)
    while _log_delta(m, hi) > target:
        lo, hi = hi, 2.0 * hi
        if hi > 1e8:  # pragma: no cover - μ beyond any float64 privacy profile
            raise PrivacyParameterError(f"mu={mu!r} is too large for an exact epsilon at delta={delta!r}")
    while hi - lo > 1e-12 * max(1.0, hi):
        mid = 0.5 * (lo + hi)
        if _log_delta(m, mid) > target:  # -inf (underflow far in the tail) counts as "met"
            lo = mid
        else:
            hi = mid
    return hi


# --------------------------------------------------------------------------- fits


@dataclass(frozen=True, slots=True)
class GaussianFit:
    """Shift and noise estimated along the direction ``D → D'``, and the ε they imply.

    ``shift`` is ``|mean(D') − mean(D)|`` of the projected runs, ``sigma`` their pooled standard
    deviation, ``mu = shift / sigma`` and ``epsilon = gaussian_epsilon(mu, delta)``.
    """

    shift: float
    sigma: float
    mu: float
    epsilon: float
    delta: float


def fit_gaussian(
    *, samples: np.ndarray, samples_prime: np.ndarray, delta: float, direction: np.ndarray | None = None
) -> GaussianFit:
    """Fit a Gaussian mechanism to runs on ``D`` and ``D'`` and return its exact ε at ``delta``.

    The runs are projected on ``direction`` (:func:`project`); the shift is the difference of
    the projected means and σ the pooled sample standard deviation (``ddof = 1`` per side).
    Relative standard error of ``mu`` with ``n`` runs per side: about
    ``sqrt(2/(n μ²) + 1/(4n))``; ε moves about 1.1–1.3 times as much (for μ in 0.3–3, δ = 1e-5).

    A point estimate, not a bound: use it to catch noise that is too small (σ), sensitivity that
    is too large (shift), and compare with the claim through :func:`gaussian_epsilon`. Noise that
    is not isotropic is only measured along ``direction``.

    Raises:
        PrivacyParameterError: fewer than 2 runs on a side, zero spread, bad δ or direction.
    """
    d = unit_interval("delta", delta)
    a = project(samples, direction=direction)
    b = project(samples_prime, direction=direction)
    if a.size < 2 or b.size < 2:
        raise PrivacyParameterError(f"fit_gaussian needs at least 2 runs on each side, got {a.size} and {b.size}")
    shift = abs(float(b.mean() - a.mean()))
    pooled = ((a.size - 1) * float(a.var(ddof=1)) + (b.size - 1) * float(b.var(ddof=1))) / (a.size + b.size - 2)
    sigma = math.sqrt(pooled)
    if not sigma > 0.0:
        raise PrivacyParameterError("the runs show no noise at all (zero spread): the mechanism is not private")
    mu = shift / sigma
    eps = gaussian_epsilon(mu=mu, delta=d) if mu > 0.0 else 0.0
    return GaussianFit(shift, sigma, mu, eps, d)


@dataclass(frozen=True, slots=True)
class LaplaceFit:
    """Shift and discrete-Laplace scale along the direction ``D → D'``, and ``ε = shift / scale``."""

    shift: float
    scale: float
    epsilon: float


def fit_discrete_laplace(
    *, samples: np.ndarray, samples_prime: np.ndarray, granularity: float, direction: np.ndarray | None = None
) -> LaplaceFit:
    """Fit the discrete Laplace mechanism on the grid ``granularity · ℤ``; ``ε = shift / b``.

    With ``P(K = k) ∝ q^|k|`` (``q = e^{−g/b}``), ``E|K| = 2q / (1 − q²)``, so the moment
    estimate from the mean absolute deviation ``m`` (in grid steps, around each side's median,
    which is the centre) is ``q = (sqrt(1 + m²) − 1) / m`` and ``b = −g / log q``. ε of the pure
    mechanism is ``Δ / b`` (Ghosh, Roughgarden & Sundararajan, STOC 2009), the same formula as
    :func:`fedsilo.privacy.mechanisms.laplace_scale` for the claimed parameters.

    Raises:
        PrivacyParameterError: fewer than 2 runs on a side, zero spread, bad granularity.
    """
    g = _positive("granularity", granularity)
    a = project(samples, direction=direction)
    b = project(samples_prime, direction=direction)
    if a.size < 2 or b.size < 2:
        raise PrivacyParameterError(
            f"fit_discrete_laplace needs at least 2 runs on each side, got {a.size} and {b.size}"
        )
    ca, cb = float(np.median(a)), float(np.median(b))
    m = (float(np.abs(a - ca).sum()) + float(np.abs(b - cb).sum())) / (a.size + b.size) / g
    if not m > 0.0:
        raise PrivacyParameterError("the runs show no noise at all (zero spread): the mechanism is not private")
    q = (math.sqrt(1.0 + m * m) - 1.0) / m
    scale = -g / math.log(q)
    shift = abs(float(b.mean() - a.mean()))
    return LaplaceFit(shift, scale, shift / scale)


# --------------------------------------------------------------------------- one audit


@dataclass(frozen=True, slots=True)
class AuditResult:
    """One audit of one mechanism: the claim, the fitted ε, the lower bound, and the runs.

    ``runs`` counts the runs on ``D`` and ``D'`` together; ``fitted_epsilon`` is ``None`` when
    no fit was asked for. ``lower_bound`` holds with confidence ``1 − alpha``.
    """

    claimed_epsilon: float
    fitted_epsilon: float | None
    lower_bound: float
    runs: int
    delta: float
    alpha: float

    @property
    def refuted(self) -> bool:
        """The lower bound exceeds the claim: the mechanism is not ``(claimed_epsilon, delta)``-DP
        (with confidence ``1 − alpha``)."""
        return self.lower_bound > self.claimed_epsilon


def audit(
    *,
    samples: np.ndarray,
    samples_prime: np.ndarray,
    claimed_epsilon: float,
    delta: float,
    alpha: float = 0.05,
    direction: np.ndarray | None = None,
    fit: str | None = "gaussian",
    granularity: float | None = None,
) -> AuditResult:
    """Project the runs on ``direction``, bound ε (:func:`threshold_audit`) and fit it.

    Args:
        samples, samples_prime: outputs on ``D`` and ``D'``, ``(runs,)`` or ``(runs, dim)``.
        claimed_epsilon: the ε the mechanism claims at ``delta`` (recorded, not used).
        delta, alpha: the δ of the claim and the confidence ``1 − alpha`` of the bound.
        direction: the expected change ``D → D'`` (required for vectors).
        fit: ``"gaussian"`` (:func:`fit_gaussian`), ``"discrete-laplace"``
            (:func:`fit_discrete_laplace`, needs ``granularity``) or ``None``.

    Raises:
        PrivacyParameterError: invalid arguments (see the functions above).
    """
    claimed = _positive("claimed_epsilon", claimed_epsilon)
    if fit not in _FITS:
        raise PrivacyParameterError(f"fit must be one of {_FITS}, got {fit!r}")
    if fit == "discrete-laplace" and granularity is None:
        raise PrivacyParameterError("a discrete-Laplace fit needs the grid's granularity")
    a = project(samples, direction=direction)
    b = project(samples_prime, direction=direction)
    bound = threshold_audit(statistic=a, statistic_prime=b, delta=delta, alpha=alpha)
    fitted: float | None = None
    if fit == "gaussian":
        fitted = fit_gaussian(samples=a, samples_prime=b, delta=delta).epsilon
    elif fit == "discrete-laplace":
        assert granularity is not None
        fitted = fit_discrete_laplace(samples=a, samples_prime=b, granularity=granularity).epsilon
    return AuditResult(claimed, fitted, bound.epsilon_lower, int(a.size + b.size), bound.delta, bound.alpha)
