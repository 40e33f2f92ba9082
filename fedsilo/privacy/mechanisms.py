"""Noise mechanisms: calibration, clipping, noise shares and samplers. Pure functions.

Every function is keyword-only and stateless; randomness comes in as a
``numpy.random.Generator`` (:func:`secure_rng` in production, a seed in tests), never from the
global ``np.random``. Invalid parameters raise
:class:`~fedsilo.errors.PrivacyParameterError` before any noise is drawn.

Which sampler for which release
-------------------------------
* :func:`discrete_gaussian` / :func:`discrete_laplace` — noise on a fixed-point grid
  ``granularity · ℤ`` (``granularity`` a power of two, e.g. ``2**-16``, which matches a
  fixed-point or Paillier encoding with one scale per tensor). Textbook floating-point Laplace
  leaks the noiseless value through the low-order bits of the output (Mironov, CCS 2012): the
  set of floats reachable from ``x + noise`` depends on ``x``. On a grid the support of the
  output is ``granularity · ℤ`` whatever the input, so that attack does not apply. Use these
  for anything that is decrypted and released (sums, counts, histograms): add the grid noise to
  the encoded integers (``noise / granularity`` is an exact integer array).
* :func:`gaussian_noise` — float64 Gaussian for model updates whose values are floats anyway.
  Floating-point Gaussian samplers are not immune to precision attacks (Jin et al., "Are We
  There Yet?", IEEE S&P 2022); prefer :func:`discrete_gaussian` when the released value is
  already fixed-point.

Samplers are vectorized: the discrete Laplace is the difference of two i.i.d. geometric
variables (exactly two-sided geometric), the discrete Gaussian is the rejection sampler of
Canonne, Kamath & Steinke (NeurIPS 2020, Alg. 3) driven by that discrete Laplace. The
geometric variates and the acceptance test use numpy's float64 arithmetic, so probabilities
are exact up to float64 rounding (relative error ~1e-16) — outputs are always exactly on the
grid. The bit generator is Philox (a counter-based generator; harder to invert from its
outputs than PCG64, but not a vetted CSPRNG) seeded with 256 bits from the OS.
"""
from __future__ import annotations

import math
import numbers
import secrets
from typing import Final

import numpy as np
from scipy import special

from fedsilo.errors import PrivacyParameterError

__all__ = [
    "secure_rng",
    "laplace_scale",
    "gaussian_sigma_classic",
    "gaussian_sigma_analytic",
    "clip_l2",
    "clip_rows_l2",
    "noise_share_sigma",
    "noise_share_topup_sigma",
    "gaussian_noise",
    "discrete_laplace",
    "discrete_gaussian",
    "round_to_grid",
]

Size = int | tuple[int, ...]

_SEED_BITS: Final = 256


# --------------------------------------------------------------------------- validation


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PrivacyParameterError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not (math.isfinite(v) and v > 0.0):
        raise PrivacyParameterError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def unit_interval(name: str, value: object) -> float:
    """``value`` as a float in the open interval (0, 1) (a delta, a sampling rate);
    PrivacyParameterError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PrivacyParameterError(f"{name} must be a number in (0, 1), got {value!r}")
    v = float(value)
    if not (0.0 < v < 1.0):
        raise PrivacyParameterError(f"{name} must be in (0, 1), got {value!r}")
    return v


def _delta(value: object) -> float:
    return unit_interval("delta", value)


def _rng(rng: object) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise PrivacyParameterError(
            "rng must be a numpy.random.Generator (use fedsilo.privacy.secure_rng()), "
            f"got {type(rng).__name__}"
        )
    return rng


def _granularity(value: object) -> float:
    g = _positive("granularity", value)
    mantissa, _ = math.frexp(g)
    if mantissa != 0.5:
        raise PrivacyParameterError(
            f"granularity must be a power of two (e.g. 2**-16) so that grid values are exact "
            f"floats, got {value!r}"
        )
    return g


def _finite_array(name: str, x: object) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise PrivacyParameterError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64) if arr.dtype.kind != "f" else arr
    if not np.all(np.isfinite(arr)):
        # A NaN norm compares False with the bound and would pass unclipped.
        raise PrivacyParameterError(f"{name} contains NaN or infinite values; refusing to clip")
    return arr


# --------------------------------------------------------------------------- randomness


def secure_rng(seed: int | None = None) -> np.random.Generator:
    """A Philox-backed generator: 256 bits of OS entropy if ``seed`` is None, else reproducible.

    Seeds are for tests and simulations only; production code passes ``None``.
    """
    if seed is None:
        seq = np.random.SeedSequence(secrets.randbits(_SEED_BITS))
    else:
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise PrivacyParameterError(f"seed must be a non-negative integer or None, got {seed!r}")
        seq = np.random.SeedSequence(int(seed))
    return np.random.Generator(np.random.Philox(seq))


# --------------------------------------------------------------------------- calibration


def laplace_scale(*, sensitivity: float, epsilon: float) -> float:
    """Laplace scale ``b = Δ₁ / ε`` for pure ε-DP (Dwork, McSherry, Nissim & Smith, TCC 2006).

    For :func:`discrete_laplace` the guarantee holds when ``sensitivity`` is a multiple of the
    grid's granularity (otherwise use ``ceil(Δ₁ / g) · g`` as the sensitivity).
    """
    return _positive("sensitivity", sensitivity) / _positive("epsilon", epsilon)


def gaussian_sigma_classic(*, sensitivity: float, epsilon: float, delta: float) -> float:
    """``σ = Δ₂ · sqrt(2 ln(1.25/δ)) / ε`` (Dwork & Roth 2014, Theorem A.1).

    The theorem only holds for ``0 < ε < 1``; larger ε is refused (use
    :func:`gaussian_sigma_analytic`, which is valid for every ε and never larger).

    Raises:
        PrivacyParameterError: ``ε >= 1``, or non-positive sensitivity/ε, or δ outside (0, 1).
    """
    s = _positive("sensitivity", sensitivity)
    e = _positive("epsilon", epsilon)
    d = _delta(delta)
    if e >= 1.0:
        raise PrivacyParameterError(
            f"the classic Gaussian calibration (Dwork & Roth, Thm A.1) needs epsilon < 1, got "
            f"{epsilon!r}; use gaussian_sigma_analytic"
        )
    return s * math.sqrt(2.0 * math.log(1.25 / d)) / e


def _analytic_log_delta(s: float, eps: float) -> float:
    """log δ(s) of the Gaussian mechanism with σ/Δ = s (Balle & Wang, ICML 2018, Theorem 8).

    ``δ = Φ(1/(2s) − ε s) − e^ε Φ(−1/(2s) − ε s)``, computed in log space.
    """
    log_a = float(special.log_ndtr(0.5 / s - eps * s))
    log_b = eps + float(special.log_ndtr(-0.5 / s - eps * s))
    if log_b >= log_a:
        return -math.inf
    return log_a + math.log1p(-math.exp(log_b - log_a))


def gaussian_sigma_analytic(*, sensitivity: float, epsilon: float, delta: float) -> float:
    """Smallest σ for (ε, δ)-DP Gaussian noise — the analytic Gaussian mechanism.

    Balle & Wang, "Improving the Gaussian Mechanism for Differential Privacy: Analytical
    Calibration and Optimal Denoising", ICML 2018, Theorem 8: adding ``N(0, σ²)`` to a query of
    L2 sensitivity Δ is (ε, δ)-DP iff
    ``Φ(Δ/(2σ) − εσ/Δ) − e^ε Φ(−Δ/(2σ) − εσ/Δ) <= δ``. The left side decreases in σ; this
    solves it by geometric bisection to relative width 1e-12 and returns the upper end of the
    bracket, so the condition holds for the returned σ. Valid for all ε > 0, and never larger
    than :func:`gaussian_sigma_classic` where that applies.
    """
    sens = _positive("sensitivity", sensitivity)
    eps = _positive("epsilon", epsilon)
    target = math.log(_delta(delta))
    hi = 1.0
    while _analytic_log_delta(hi, eps) > target:
        hi *= 2.0
    lo = hi
    while lo > 1e-12 and _analytic_log_delta(lo, eps) <= target:
        lo /= 2.0
    if lo <= 1e-12:
        return hi * sens
    while hi / lo > 1.0 + 1e-12:
        mid = math.sqrt(lo * hi)
        if _analytic_log_delta(mid, eps) <= target:
            hi = mid
        else:
            lo = mid
    return hi * sens


# --------------------------------------------------------------------------- clipping


def clip_l2(vector: np.ndarray, *, max_norm: float) -> np.ndarray:
    """Scale ``vector`` so its L2 norm is at most ``max_norm`` (a new array; input untouched).

    Vectors already inside the ball, including the zero vector, are returned unchanged (no
    division by a zero norm). The result's norm, as numpy computes it, is guaranteed
    ``<= max_norm``: if rounding leaves it 1 ulp above, the factor is nudged down.

    Raises:
        PrivacyParameterError: ``max_norm <= 0`` or NaN/inf entries (which would escape clipping).
    """
    c = _positive("max_norm", max_norm)
    v = _finite_array("vector", vector)
    norm = float(np.linalg.norm(v))
    if norm <= c:
        return v.copy()
    factor = c / norm
    out = v * factor
    while float(np.linalg.norm(out)) > c:
        factor = float(np.nextafter(factor, 0.0))
        out = v * factor
    return out


def clip_rows_l2(matrix: np.ndarray, *, max_norm: float) -> np.ndarray:
    """Clip every row of a 2-D array to L2 norm ``<= max_norm`` (per-example clipping).

    Same guarantees as :func:`clip_l2`, row by row (Abadi et al., CCS 2016, Algorithm 1).
    """
    c = _positive("max_norm", max_norm)
    m = _finite_array("matrix", matrix)
    if m.ndim != 2:
        raise PrivacyParameterError(f"matrix must be 2-D (rows = examples), got shape {m.shape}")
    norms = np.linalg.norm(m, axis=1)
    factors = np.ones_like(norms)
    big = norms > c
    factors[big] = c / norms[big]
    out = m * factors[:, None]
    for _ in range(64):
        over = np.linalg.norm(out, axis=1) > c
        if not over.any():
            return out
        factors[over] = np.nextafter(factors[over], 0.0)
        out[over] = m[over] * factors[over][:, None]
    raise AssertionError("clip_rows_l2 did not converge")  # pragma: no cover


# --------------------------------------------------------------------------- noise shares


def _parties(parties: object, present: object) -> tuple[int, int]:
    if isinstance(parties, bool) or not isinstance(parties, numbers.Integral) or parties < 1:
        raise PrivacyParameterError(f"parties must be an integer >= 1, got {parties!r}")
    n = int(parties)
    if present is None:
        return n, n
    if isinstance(present, bool) or not isinstance(present, numbers.Integral) or not (
        1 <= present <= n
    ):
        raise PrivacyParameterError(f"present must be an integer in [1, {n}], got {present!r}")
    return n, int(present)


def noise_share_sigma(*, sigma: float, parties: int, present: int | None = None) -> float:
    """Standard deviation of one party's noise share: ``σ / sqrt(present or parties)``.

    Distributed noise generation: each of ``parties`` silos adds ``N(0, σ²/parties)`` to its
    contribution, so the aggregate carries ``N(0, σ²)`` while no single party knows the total
    noise (e.g. Truex et al., AISec 2019; Kairouz, Liu & Steinke, ICML 2021 for the discrete
    case). If only ``present < parties`` shares will be in the sum (dropouts known before
    noising), each present party draws ``N(0, σ²/present)`` instead, so the total variance never
    falls below σ². If shares were already drawn with ``parties``, add a top-up of
    :func:`noise_share_topup_sigma` instead.

    Collusion: a coalition of ``k`` parties can subtract its own shares and sees only
    ``σ²(n−k)/n`` of noise; to tolerate ``k`` colluders, call with ``parties = n − k``
    (each share then carries ``σ²/(n − k)``).
    """
    s = _positive("sigma", sigma)
    n, p = _parties(parties, present)
    return s / math.sqrt(p)


def noise_share_topup_sigma(*, sigma: float, parties: int, present: int) -> float:
    """Std of the extra share each of ``present`` parties adds after drawing ``σ²/parties``.

    ``sqrt(σ²/present − σ²/parties)``: with independent draws the present parties' total
    becomes ``present · σ²/present = σ²``. Zero when nobody dropped out.
    """
    s = _positive("sigma", sigma)
    n, p = _parties(parties, present)
    return math.sqrt(max(0.0, s * s / p - s * s / n))


# --------------------------------------------------------------------------- samplers


def gaussian_noise(*, sigma: float, size: Size, rng: np.random.Generator) -> np.ndarray:
    """i.i.d. ``N(0, σ²)`` float64 noise of shape ``size`` (see the module docstring's caveat)."""
    s = _positive("sigma", sigma)
    return _rng(rng).normal(0.0, s, size=size)


def _two_sided_geometric(t: float, size: Size, rng: np.random.Generator) -> np.ndarray:
    """Integers K with ``P(K = k) ∝ exp(−|k|/t)``: the difference of two i.i.d. geometrics."""
    p = -math.expm1(-1.0 / t)  # success probability 1 − e^{−1/t}
    g1 = rng.geometric(p, size=size)
    g2 = rng.geometric(p, size=size)
    return (g1 - g2).astype(np.int64)


def discrete_laplace(
    *, scale: float, size: Size, rng: np.random.Generator, granularity: float
) -> np.ndarray:
    """Discrete Laplace noise on the grid ``granularity · ℤ`` (safe against Mironov 2012).

    Returns ``granularity · K`` with ``P(K = k) = tanh(g/(2b)) · exp(−|k| g / b)`` where
    ``b = scale`` and ``g = granularity`` (Inusah & Kozubowski 2006; the geometric mechanism of
    Ghosh, Roughgarden & Sundararajan, STOC 2009). With sensitivity Δ₁ a multiple of ``g``,
    adding it is pure ``Δ₁ / b``-DP; account it with ``LaplaceEvent(epsilon=Δ₁/b)``.

    Args:
        scale: ``b > 0`` in the same units as the data (e.g. :func:`laplace_scale`).
        size: output shape.
        rng: the generator to draw from.
        granularity: grid step, a power of two (``2**-16``; ``1.0`` for integer counts).
    """
    b = _positive("scale", scale)
    g = _granularity(granularity)
    k = _two_sided_geometric(b / g, size, _rng(rng))
    return k.astype(np.float64) * g


def discrete_gaussian(
    *, sigma: float, size: Size, rng: np.random.Generator, granularity: float
) -> np.ndarray:
    """Discrete Gaussian noise ``N_ℤ(0, (σ/g)²) · g`` on the grid ``g · ℤ``.

    ``P(K = k) ∝ exp(−k² g² / (2σ²))``. Sampled by the rejection method of Canonne, Kamath &
    Steinke, "The Discrete Gaussian for Differential Privacy", NeurIPS 2020, Algorithm 3:
    propose ``Y`` from a discrete Laplace of scale ``t = ⌊σ/g⌋ + 1`` grid steps, accept with
    probability ``exp(−(|Y| − σ²/(g² t))² / (2σ²/g²))``. Its variance is at most σ².

    Privacy (same paper): with L2 sensitivity Δ a multiple of ``g``, it is ``Δ²/(2σ²)``-zCDP,
    exactly the continuous Gaussian's Rényi curve, so ``GaussianEvent(noise_multiplier=σ/Δ)``
    (q = 1) accounts it correctly under the RDP accountant. A sum of n discrete Gaussian noise
    shares is not exactly a discrete Gaussian; the gap is negligible once each share has
    ``σ_share/g >= 3`` (Kairouz, Liu & Steinke, ICML 2021) — with fixed-point grids such as
    ``2**-16`` it is far above that.

    Args:
        sigma: σ > 0 in data units.
        size: output shape.
        rng: the generator to draw from.
        granularity: grid step, a power of two.
    """
    s_data = _positive("sigma", sigma)
    g = _granularity(granularity)
    gen = _rng(rng)
    s = s_data / g  # σ in grid steps
    t = math.floor(s) + 1.0
    shift = s * s / t
    two_var = 2.0 * s * s
    shape = (size,) if isinstance(size, (int, np.integer)) else tuple(size)
    n = int(np.prod(shape, dtype=np.int64))
    out = np.empty(n, dtype=np.int64)
    todo = np.arange(n)
    while todo.size:
        y = _two_sided_geometric(t, todo.size, gen)
        log_accept = -((np.abs(y) - shift) ** 2) / two_var
        ok = np.log(gen.random(todo.size)) < log_accept
        out[todo[ok]] = y[ok]
        todo = todo[~ok]
    return out.reshape(shape).astype(np.float64) * g


def round_to_grid(values: np.ndarray, *, granularity: float) -> np.ndarray:
    """Round values to the nearest multiple of ``granularity`` (a power of two), exactly.

    Do this before adding grid noise; rounding can move a value by ``g/2``, so the sensitivity
    of the rounded query is at most the original plus ``g`` per coordinate.
    """
    g = _granularity(granularity)
    arr = _finite_array("values", values)
    return np.round(arr / g) * g
