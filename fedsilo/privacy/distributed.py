"""The privacy analysis of the distributed discrete Gaussian (DDG). Pure, keyword-only functions.

Kairouz, Liu & Steinke, "The Distributed Discrete Gaussian Mechanism for Federated Learning with
Secure Aggregation", ICML 2021 (arXiv:2102.06387; numbers below refer to the arXiv version):
each of ``n`` silos adds ``N_Z(0, σ²)`` (a discrete Gaussian on the integer grid) to its rotated,
scaled and conditionally rounded update *before* masking; secure aggregation reveals only the
sum, which carries the sum of the ``n`` discrete Gaussians. That sum is not itself a discrete
Gaussian, but close to one: their Proposition 14 bounds its Rényi divergence, for every order
``α >= 1``, by the smallest of

* ``α·Δ₂²/(2nσ²) + τ·d``,
* ``(α/2)·(Δ₂²/(nσ²) + 2·Δ₁·τ/(√n·σ) + τ²·d)``,
* ``(α/2)·(Δ₂/(√n·σ) + τ·√d)²``,

with ``τ = 10·Σ_{k=1}^{n−1} exp(−2π²σ²·k/(k+1))`` (Theorem 1 is the zCDP form of the last line),
``Δ₂``/``Δ₁`` the L2/L1 sensitivities and ``d`` the dimension, all in grid units, and ``σ >= 1/2``.
At ``σ`` of a few grid steps ``τ`` is below 1e-30, and the bound is the continuous Gaussian's
``α·Δ₂²/(2nσ²)``: ``GaussianEvent(z = √n·σ/Δ₂)``.

The sensitivities are those after conditional randomized rounding (their Theorem 1 and §4.1):
an update clipped to L2 norm ``c`` (grid units) rounds to a vector of norm at most
:func:`rounded_l2_bound`, and an integer vector's L1 norm is at most ``min(√d·Δ₂, Δ₂²)``
(:func:`rounded_l1_bound`). The randomized rotation is orthogonal and leaves both unchanged
(it is applied before rounding, so it is part of the mechanism's input map, not of its noise);
modular wrap-around of the sum is a post-processing of the noised integer sum and costs no
privacy.

How many shares count: colluding silos know and subtract their own shares, silos that drop before
sending add none. A protocol that refuses to unmask fewer than ``t`` contributions, tolerating
``c`` colluders, guarantees ``n = t − c`` honest shares; more honest shares only add independent
noise (a post-processing), so the event is recorded with ``shares = t − c``.

fedsilo's RDP accountant composes the Proposition 14 curve over dp-accounting's orders and converts
with dp-accounting's ``compute_epsilon`` (:mod:`fedsilo.privacy.accounting`);
:func:`ddg_noise_sigma` calibrates σ for a target ε the same way. This module imports no other
fedsilo module but the errors (events and accounting import it).
"""
from __future__ import annotations

import math
import numbers

import numpy as np
from dp_accounting import rdp as _rdp
from dp_accounting.rdp import rdp_privacy_accountant as _rdp_mod

from fedsilo.errors import PrivacyParameterError

__all__ = [
    "MIN_SIGMA",
    "MAX_SIGMA",
    "ddg_epsilon",
    "ddg_noise_sigma",
    "ddg_rdp",
    "ddg_tau",
    "rounded_l1_bound",
    "rounded_l2_bound",
]

#: Smallest per-share σ (grid steps) Proposition 14 covers.
MIN_SIGMA: float = 0.5
#: Largest per-share σ (grid steps) :func:`ddg_noise_sigma` considers.
MAX_SIGMA: float = 2.0**62

_ORDERS: np.ndarray = np.asarray(_rdp.RdpAccountant().orders, dtype=np.float64)
_ORDERS.setflags(write=False)


def _positive(name: str, value: object, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PrivacyParameterError(f"{owner}: {name} must be a number, got {value!r}")
    v = float(value)
    if not (math.isfinite(v) and v > 0.0):
        raise PrivacyParameterError(f"{owner}: {name} must be a finite number > 0, got {value!r}")
    return v


def _count(name: str, value: object, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise PrivacyParameterError(f"{owner}: {name} must be an integer >= 1, got {value!r}")
    return int(value)


def _sigma(value: object, owner: str) -> float:
    s = _positive("sigma", value, owner)
    if s < MIN_SIGMA:
        raise PrivacyParameterError(
            f"{owner}: sigma must be >= {MIN_SIGMA} grid steps (Kairouz, Liu & Steinke 2021, Prop. 14), got {value!r}"
        )
    return s


def ddg_tau(*, sigma: float, shares: int) -> float:
    """``τ = 10·Σ_{k=1}^{n−1} exp(−2π²σ²·k/(k+1))`` (Kairouz, Liu & Steinke 2021, Theorem 1): how
    far the sum of ``n`` discrete Gaussians of scale σ (grid steps) is from one discrete Gaussian.
    0 for one share."""
    s = _sigma(sigma, "ddg_tau")
    n = _count("shares", shares, "ddg_tau")
    k = np.arange(1, n, dtype=np.float64)
    return float(10.0 * np.sum(np.exp(-2.0 * math.pi**2 * s * s * k / (k + 1.0))))


def rounded_l2_bound(*, norm: float, dimension: int, beta: float) -> float:
    """L2 norm bound after conditional randomized rounding of a vector of norm ``<= norm`` (grid
    units) in ``dimension`` coordinates, accepted with probability at least ``1 − β`` per try.

    Kairouz, Liu & Steinke 2021, Theorem 1 / §4.1:
    ``min(c + √d, sqrt(c² + d/4 + √(2·ln(1/β))·(c + √d/2)))``; ``β = 0`` gives the deterministic
    ``c + √d`` (every rounding is accepted).
    """
    c = _positive("norm", norm, "rounded_l2_bound")
    d = _count("dimension", dimension, "rounded_l2_bound")
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0.0 <= beta < 1.0:
        raise PrivacyParameterError(f"rounded_l2_bound: beta must be in [0, 1), got {beta!r}")
    plain = c + math.sqrt(d)
    if beta == 0.0:
        return plain
    squared = c * c + 0.25 * d + math.sqrt(2.0 * math.log(1.0 / beta)) * (c + 0.5 * math.sqrt(d))
    return min(plain, math.sqrt(squared))


def rounded_l1_bound(*, l2_bound: float, dimension: int) -> float:
    """L1 norm bound of an integer vector of L2 norm ``<= l2_bound`` in ``dimension`` coordinates:
    ``min(√d·Δ₂, Δ₂²)`` (Cauchy–Schwarz; and ``|v| <= v²`` for integers)."""
    l2 = _positive("l2_bound", l2_bound, "rounded_l1_bound")
    d = _count("dimension", dimension, "rounded_l1_bound")
    return l2 * min(math.sqrt(d), l2)


def ddg_rdp(
    *, orders: np.ndarray, sigma: float, shares: int, l2_sensitivity: float, l1_sensitivity: float, dimension: int
) -> np.ndarray:
    """Rényi DP of one release of the distributed discrete Gaussian, per order ``α > 1``.

    Kairouz, Liu & Steinke 2021, Proposition 14 (see the module docstring): the smallest of its
    three bounds at each order. All quantities in grid units; ``sigma`` is the per-share σ.
    """
    a = np.asarray(orders, dtype=np.float64)
    if a.ndim != 1 or np.any(a <= 1.0):
        raise PrivacyParameterError("RDP orders must be a vector of numbers > 1")
    s = _sigma(sigma, "ddg_rdp")
    n = _count("shares", shares, "ddg_rdp")
    l2 = _positive("l2_sensitivity", l2_sensitivity, "ddg_rdp")
    l1 = _positive("l1_sensitivity", l1_sensitivity, "ddg_rdp")
    d = _count("dimension", dimension, "ddg_rdp")
    tau = ddg_tau(sigma=s, shares=n)
    scale = math.sqrt(n) * s  # std of the summed noise, grid steps
    z2 = (l2 / scale) ** 2
    term1 = a * z2 / 2.0 + tau * d
    term2 = a / 2.0 * (z2 + 2.0 * (l1 / scale) * tau + tau * tau * d)
    term3 = a / 2.0 * (l2 / scale + tau * math.sqrt(d)) ** 2
    return np.minimum(np.minimum(term1, term2), term3)


def ddg_epsilon(
    *,
    sigma: float,
    shares: int,
    l2_sensitivity: float,
    l1_sensitivity: float,
    dimension: int,
    steps: int,
    delta: float,
) -> float:
    """ε at ``delta`` of ``steps`` releases (RDP composition over dp-accounting's default orders,
    converted with dp-accounting's ``compute_epsilon``: what the ``"rdp"`` accountant gives for
    one :class:`~fedsilo.privacy.events.DistributedDiscreteGaussianEvent`)."""
    if isinstance(delta, bool) or not isinstance(delta, numbers.Real) or not 0.0 < delta < 1.0:
        raise PrivacyParameterError(f"delta must be in (0, 1), got {delta!r}")
    t = _count("steps", steps, "ddg_epsilon")
    curve = t * ddg_rdp(orders=_ORDERS, sigma=sigma, shares=shares, l2_sensitivity=l2_sensitivity,
                        l1_sensitivity=l1_sensitivity, dimension=dimension)
    eps, _ = _rdp_mod.compute_epsilon(_ORDERS, curve, float(delta))
    return max(0.0, float(eps))


def ddg_noise_sigma(
    *,
    target_epsilon: float,
    delta: float,
    steps: int,
    shares: int,
    l2_sensitivity: float,
    l1_sensitivity: float,
    dimension: int,
    rtol: float = 5.0e-3,
) -> float:
    """Smallest per-share σ (grid steps, within ``rtol``) whose ``steps`` releases meet ``target_epsilon``.

    Geometric bisection on σ through :func:`ddg_epsilon`, returning the upper end of the final
    bracket: the result never exceeds the target (as
    :func:`fedsilo.privacy.accounting.noise_multiplier` does).

    Raises:
        PrivacyParameterError: bad arguments, or a target that even :data:`MAX_SIGMA` cannot meet
            (the message names the cap and the ε it gives).
    """
    target = _positive("target_epsilon", target_epsilon, "ddg_noise_sigma")

    def eps_at(s: float) -> float:
        return ddg_epsilon(sigma=s, shares=shares, l2_sensitivity=l2_sensitivity, l1_sensitivity=l1_sensitivity,
                           dimension=dimension, steps=steps, delta=delta)

    if eps_at(MIN_SIGMA) <= target:
        return MIN_SIGMA
    lo, hi = MIN_SIGMA, 2.0 * MIN_SIGMA
    while eps_at(hi) > target:
        if hi >= MAX_SIGMA:
            raise PrivacyParameterError(
                f"target epsilon {target:g} is too small: even sigma = MAX_SIGMA = {MAX_SIGMA:g} grid steps "
                f"gives epsilon {eps_at(hi):.4g}"
            )
        lo, hi = hi, min(2.0 * hi, MAX_SIGMA)
    while hi / lo > 1.0 + rtol:
        mid = math.sqrt(lo * hi)
        if eps_at(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi
