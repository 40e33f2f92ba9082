"""ε for a composition of DP events, and the inverse (the noise a target ε needs).

Pure, keyword-only functions; no state. The ledger and the CLI call these.

Why dp-accounting does the arithmetic
-------------------------------------
RDP of the Poisson-subsampled Gaussian and privacy-loss-distribution (PLD) composition are
numerically delicate (log-space series, discretization, FFT convolution). Google's
``dp-accounting`` library is maintained, tested against high-precision oracles, and implements
the tightest published conversions (RDP → (ε, δ): Canonne, Kamath & Steinke 2020, Prop. 12;
Asoodeh et al. 2020). fedsilo re-derives none of it: its job is to wire every release to an
event. The only arithmetic added here is

* the Rényi divergence of binary randomized response, which bounds every pure ε-DP mechanism
  (Kairouz, Oh & Viswanath, ICML 2015; by the data-processing inequality for Rényi divergence,
  van Erven & Harremoës 2014): ``D_α = ε + [log1p(e^{(1-2α)ε}) − log1p(e^{−ε})] / (α − 1)``.
  dp-accounting's RDP accountant does not support ``DiscreteLaplaceDpEvent``, so this curve is
  added to the RDP vector that dp-accounting's ``RdpAccountant`` computes for the Gaussian
  parts, and the total is converted with dp-accounting's own ``compute_epsilon``;
* for compositions made only of pure-DP events, the result is capped at the basic-composition
  bound ``Σ T·ε`` (Dwork & Roth 2014, Thm 3.16), which is valid for every δ;
* (ε, δ) releases (:class:`~fedsilo.privacy.events.ApproxDpEvent`), which have no RDP curve
  (δ > 0 makes every Rényi divergence infinite): under ``"rdp"`` the rest composes by RDP at
  ``δ − Σ T·δᵢ`` and ``Σ T·εᵢ`` is added (basic composition, Dwork & Roth 2014, Thm 3.16, valid
  for adaptively chosen mechanisms); under ``"pld"`` each is dp-accounting's pessimistic PLD of an
  (ε, δ)-DP mechanism (``from_privacy_parameters``: mass δ at +∞, ±ε otherwise, which dominates
  every (ε, δ)-DP mechanism; Kairouz, Oh & Viswanath 2015), composed with the rest's PLD
  (composition of dominating pairs bounds adaptive composition: Dong, Roth & Su 2022, Thm 3.2).
  A :class:`~fedsilo.privacy.events.CoveredEvent` costs nothing next to its cover and is refused
  without it;
* the distributed discrete Gaussian (:class:`~fedsilo.privacy.events.DistributedDiscreteGaussianEvent`):
  its Proposition 14 RDP curve (Kairouz, Liu & Steinke, ICML 2021;
  :mod:`fedsilo.privacy.distributed`) is added to the same RDP vector. The ``"pld"`` accountant
  refuses it: the bound is a Rényi (zCDP-type) bound, with no privacy loss distribution to
  compose, and fedsilo does not guess one.

Accountants:

* ``"rdp"`` — Rényi DP (Mironov 2017; subsampled Gaussian: Mironov, Talwar & Zhang 2019) with
  dp-accounting's default orders. fedsilo's numbers equal dp-accounting's ``RdpAccountant``.
  Opacus' RDP accountant uses a different order grid and differs by up to ~0.4 % for q < 1;
  fedsilo follows dp-accounting.
* ``"pld"`` — privacy loss distributions (Koskela et al. 2020; Doroshenko et al. 2022) with
  dp-accounting's ``PLDAccountant`` (pessimistic discretization, interval 1e-4). Typically
  6–12 % tighter than RDP, and slower (tens to hundreds of ms per evaluation with subsampling).

Identical events are grouped before composing (composition is order-independent for both
accountants), so a ledger of thousands of equal rounds costs one self-composition.

Fast paths (a ledger composes its whole history on every charge, so a job of R rounds asks for
R compositions; each is cached per event kind and computed by dp-accounting):

* RDP: the curve of one step of each ``(z, q)`` is dp-accounting's, computed once; ``T`` steps
  are ``T ×`` that curve (composition adds RDP curves, Mironov 2017, Prop. 1).
* PLD, unsampled Gaussians (silo-level DP-FedAvg, vertical epochs, statistics, the final
  metrics release): together they are one Gaussian mechanism with ``μ² = Σ T/z²`` (Dong, Roth
  & Su 2022, Cor. 3.3), and alone their ε is that Gaussian's exact profile (dp-accounting's
  closed form, ``GaussianPrivacyLoss``, inverted by bisection): milliseconds, where building the
  PLD of ``σ/√T`` took over a second per round. It is the exact value that dp-accounting's
  pessimistic discretization bounds from above: never larger than the ``PLDAccountant``'s ε (to 1e-9),
  and within one discretization interval (1e-4) of it.
* PLD, subsampled Gaussians: dp-accounting's self-composition of one step's PLD (the step
  built once per ``(z, q)``, each power memoized), equal to the ``PLDAccountant``'s ε.
"""
from __future__ import annotations

import functools
import logging
import math
import numbers
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from dp_accounting import pld as _pld
from dp_accounting.pld import common as _pld_common
from dp_accounting.pld import privacy_loss_distribution as _pld_lib
from dp_accounting.pld import privacy_loss_mechanism as _pld_mech
from dp_accounting.privacy_accountant import NeighboringRelation as _NeighboringRelation
from dp_accounting import rdp as _rdp
from dp_accounting.rdp import rdp_privacy_accountant as _rdp_mod

from fedsilo.errors import PrivacyError, PrivacyParameterError
from fedsilo.privacy.events import (
    ApproxDpEvent,
    ComposedEvent,
    CoveredEvent,
    DistributedDiscreteGaussianEvent,
    DpEvent,
    GaussianEvent,
    LaplaceEvent,
)
from fedsilo.privacy.mechanisms import unit_interval

__all__ = [
    "ACCOUNTANTS",
    "MAX_NOISE_MULTIPLIER",
    "MIN_NOISE_MULTIPLIER",
    "NOISE_MULTIPLIER_RTOL",
    "check_supported",
    "epsilon",
    "noise_multiplier",
    "normalize",
    "pure_dp_rdp",
]

#: Accountant names accepted everywhere (config, ledger, CLI).
ACCOUNTANTS: tuple[str, ...] = ("rdp", "pld")

#: Largest noise multiplier :func:`noise_multiplier` will consider. A target ε that needs more
#: noise than this is refused as "budget too small" (Opacus' ``get_noise_multiplier`` has a
#: similar cap).
MAX_NOISE_MULTIPLIER: float = 1.0e4

#: Smallest noise multiplier :func:`noise_multiplier` returns; a very large target ε is met by it.
MIN_NOISE_MULTIPLIER: float = 1.0e-2

#: Relative width of the final bracket in :func:`noise_multiplier` (0.5 %, inside the 1 % promise).
NOISE_MULTIPLIER_RTOL: float = 5.0e-3



class _DropExcludedOrderWarnings(logging.Filter):
    """dp-accounting logs one warning per RDP order whose series does not converge (small σ,
    orders near 1) and then leaves that order out. Leaving an order out can only raise the
    reported ε (it is a minimum over orders), so the result stays an upper bound; the warnings
    would otherwise flood every calibration's output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Excluding this order" not in record.getMessage()


logging.getLogger("absl").addFilter(_DropExcludedOrderWarnings())

# PLD discretization interval (dp-accounting's default).
_PLD_INTERVAL = 1.0e-4


def _check_delta(delta: float) -> float:
    return unit_interval("delta", delta)


def _check_accountant(accountant: str) -> str:
    if accountant not in ACCOUNTANTS:
        raise PrivacyParameterError(
            f"unknown accountant {accountant!r}; expected one of {', '.join(ACCOUNTANTS)}"
        )
    return accountant


Leaf = GaussianEvent | LaplaceEvent | DistributedDiscreteGaussianEvent | ApproxDpEvent


def _walk(event: DpEvent, depth: int = 0) -> Iterator[Leaf | CoveredEvent]:
    if depth > 64:
        raise PrivacyError("DP event nested too deeply")
    if isinstance(event, ComposedEvent):
        for e in event.events:
            yield from _walk(e, depth + 1)
    elif isinstance(event, (GaussianEvent, LaplaceEvent, DistributedDiscreteGaussianEvent, ApproxDpEvent,
                            CoveredEvent)):
        yield event
    else:
        # Refuse, never guess: an unknown event has no known privacy cost.
        raise PrivacyError(f"unsupported DP event {event!r}")


def check_supported(event: DpEvent) -> None:
    """Refuse an event with a part no accountant supports, without asking that its covered
    releases' covers be in it (a ledger charge checks one release; the composition with the
    dataset's earlier releases then needs each cover)."""
    if not isinstance(event, DpEvent):
        raise PrivacyError(f"not a fedsilo DP event: {event!r}")
    for _ in _walk(event):
        pass


def cover_labels(event: DpEvent) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(defined, named)``: the cover labels ``event``'s :class:`ApproxDpEvent` parts define and
    those its :class:`CoveredEvent` parts name (a ledger ties each named cover to the job that
    defined it)."""
    return tuple(e.cover for e in cover_events(event)), tuple(e.cover for e in covered_events(event))


def cover_events(event: DpEvent) -> list[ApproxDpEvent]:
    """The labelled :class:`ApproxDpEvent` covers ``event`` defines, in order."""
    return [e for e in _walk(event) if isinstance(e, ApproxDpEvent) and e.cover]


def covered_events(event: DpEvent) -> list[CoveredEvent]:
    """The :class:`CoveredEvent` releases in ``event``, in order."""
    return [e for e in _walk(event) if isinstance(e, CoveredEvent)]


def check_cover_pays(cover: ApproxDpEvent, covered: Sequence[DpEvent], *, accountant: str) -> None:
    """Refuse covered releases their cover does not pay for: more than ``cover.covers`` of them,
    or releases whose own mechanisms compose (under ``accountant``, at the cover's δ) to more
    than the cover's ε. The second is the invariant a cover's calibration promises (e.g.
    ``HorizontalJob.distributed_plan``: the steps and the final metrics at z are
    ``(ε, δ)``-DP), so a release the calibration did not plan (another kind, a second copy, a
    costlier one) cannot ride on the cover for free. Under ``"pld"`` an RDP bound that already
    fits the cover is proof enough (:func:`_rdp_shows_cover_pays`); the PLD decides otherwise.

    Raises:
        PrivacyError: naming the cover and what it pays for.
    """
    acc = _check_accountant(accountant)
    _check_cover_count(cover, len(covered))
    if not covered:
        return
    releases = ComposedEvent(tuple(covered))
    if acc == "pld" and _rdp_shows_cover_pays(cover, releases):
        return
    own = epsilon(releases, delta=cover.delta, accountant=acc)
    if not own <= cover.epsilon * (1.0 + COVER_RTOL):
        raise PrivacyError(
            f"cover {cover.cover!r} pays for epsilon={cover.epsilon:.6g} at delta={cover.delta:.3g}, and the "
            f"releases it covers compose to epsilon={own:.6g} ({accountant}): its calibration did not plan them"
        )


#: What dp-accounting raises on parameters it cannot represent (an overflowing exponent, a PLD too
#: large to allocate); :func:`epsilon` turns them into a :class:`PrivacyError`.
_UNREPRESENTABLE: tuple[type[Exception], ...] = (OverflowError, MemoryError, ValueError, FloatingPointError)


def _rdp_shows_cover_pays(cover: ApproxDpEvent, releases: ComposedEvent) -> bool:
    """Whether RDP alone already shows ``releases`` to be ``(cover.epsilon, cover.delta)``-DP.

    Any valid bound that fits the cover proves what :func:`check_cover_pays` asks, and RDP's
    conversion (dp-accounting's ``compute_epsilon``) is one: its ε bounds the releases' true ε as
    the PLD's does, only less tightly. So a ``"pld"`` ledger asks RDP first (about a millisecond)
    and builds the PLD (up to ~0.2 s per charge of a 100-round job: a self-composition of every
    covered step so far) only when RDP cannot show it, i.e. in the last rounds of a job calibrated
    under PLD (``benchmarks/accounting.py``'s distributed job: the last 10 of its 100 steps and
    the final metrics release). No slack here: RDP is not the code that calibrated the cover, so
    :data:`COVER_RTOL` does not apply. Only for releases the PLD accountant can compose too, so
    the fast path never accepts what the slow one refuses. The ε comes from the memoized
    composition itself, not :func:`epsilon`: its warning about an optimum at the edge of the
    order grid (a looser bound, still valid) would need a ``catch_warnings`` around every charge,
    which swaps the process's warning filters under other silo threads."""
    leaves = normalize(releases)
    if not all(isinstance(g, (GaussianEvent, LaplaceEvent, ApproxDpEvent)) for g in leaves):
        return False
    try:
        rdp_eps, _ = _epsilon_groups(leaves, _check_delta(cover.delta), "rdp")
    except _UNREPRESENTABLE:
        return False  # the PLD path decides, and refuses what it cannot represent
    return bool(rdp_eps <= cover.epsilon)  # NaN: not shown, the PLD decides


def _check_cover_count(cover: ApproxDpEvent, releases: int) -> None:
    """Refuse more covered releases than ``cover.covers`` (the accountant's composition and the
    ledger's charge both ask)."""
    if releases > cover.covers:
        raise PrivacyError(
            f"cover {cover.cover!r} pays for {cover.covers} release(s), and the composition holds more: "
            "its calibration did not compose the extra ones"
        )


#: Slack of :func:`check_cover_pays`' ε comparison: the covered releases are composed by the same
#: code that calibrated them, so only the order of float sums may differ.
COVER_RTOL: float = 1e-9


def _leaves(event: DpEvent) -> Iterator[Leaf]:
    """The leaves that cost something: every :class:`CoveredEvent` is dropped, after checking
    that the :class:`ApproxDpEvent` it names is in ``event``."""
    covers = {c.cover: c for c in cover_events(event)}
    paid: Counter[str] = Counter()
    for e in _walk(event):
        if isinstance(e, CoveredEvent):
            if e.cover not in covers:
                raise PrivacyError(
                    f"a covered release names cover {e.cover!r}, which is not in the composition: the (epsilon, "
                    "delta) release that pays for it must be charged first (to the same dataset)"
                )
            paid[e.cover] += 1
            _check_cover_count(covers[e.cover], paid[e.cover])
        else:
            yield e


def normalize(event: DpEvent) -> tuple[Leaf, ...]:
    """Flatten ``event`` and merge leaves with equal parameters, summing their steps.

    The result has the same privacy cost under RDP and PLD (composition does not depend on
    order), sorted deterministically. Covered releases are dropped (their cover pays for them;
    cover labels are dropped too). Raises :class:`PrivacyError` on unsupported events and on a
    covered release whose cover is not in ``event``.
    """
    if not isinstance(event, DpEvent):
        raise PrivacyError(f"not a fedsilo DP event: {event!r}")
    gauss: Counter[tuple[float, float]] = Counter()
    lap: Counter[float] = Counter()
    ddg: Counter[tuple[float, int, float, float, int]] = Counter()
    approx: Counter[tuple[float, float]] = Counter()
    for leaf in _leaves(event):
        if isinstance(leaf, GaussianEvent):
            gauss[(leaf.noise_multiplier, leaf.sample_rate)] += leaf.steps
        elif isinstance(leaf, LaplaceEvent):
            lap[leaf.epsilon] += leaf.steps
        elif isinstance(leaf, ApproxDpEvent):
            approx[(leaf.epsilon, leaf.delta)] += leaf.steps
        else:
            ddg[(leaf.noise_sigma, leaf.shares, leaf.l2_sensitivity, leaf.l1_sensitivity, leaf.dimension)] += leaf.steps
    out: list[Leaf] = [
        GaussianEvent(z, q, t) for (z, q), t in sorted(gauss.items())
    ]
    out.extend(LaplaceEvent(e, t) for e, t in sorted(lap.items()))
    out.extend(DistributedDiscreteGaussianEvent(*key, steps=t) for key, t in sorted(ddg.items()))
    out.extend(ApproxDpEvent(e, d, t) for (e, d), t in sorted(approx.items()))
    return tuple(out)


def pure_dp_rdp(*, epsilon: float, orders: np.ndarray) -> np.ndarray:
    """Rényi divergence of binary randomized response with privacy loss ±ε, per order α > 1.

    ``D_α = ε + [log1p(exp((1-2α)ε)) − log1p(exp(−ε))] / (α − 1)``: the largest Rényi
    divergence any pure ε-DP mechanism can have (every ε-DP pair is a post-processing of this
    one: Kairouz, Oh & Viswanath, ICML 2015). Bounded by ε; → ε as α → ∞.
    """
    a = np.asarray(orders, dtype=np.float64)
    if np.any(a <= 1.0):
        raise PrivacyError("RDP orders must be > 1")
    e = float(epsilon)
    return e + (np.log1p(np.exp((1.0 - 2.0 * a) * e)) - math.log1p(math.exp(-e))) / (a - 1.0)


@functools.lru_cache(maxsize=512)
def _gaussian_rdp_curve(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """dp-accounting's RDP vector (default orders) of one subsampled-Gaussian step; memoized."""
    acc = _rdp.RdpAccountant()
    acc.compose(GaussianEvent(noise_multiplier, sample_rate, 1).to_dp_accounting())
    curve = acc.rdp
    curve.setflags(write=False)
    return curve


_RDP_ORDERS: np.ndarray = np.asarray(_rdp.RdpAccountant().orders, dtype=np.float64)
_RDP_ORDERS.setflags(write=False)


def _epsilon_rdp(
    groups: tuple[Leaf, ...], delta: float
) -> tuple[float, bool]:
    """RDP ε and whether the optimum sat at the largest order of the grid.

    The RDP vector is what dp-accounting's ``RdpAccountant`` accumulates (``count × curve``
    per event), plus :func:`pure_dp_rdp` for pure-DP events; the conversion to (ε, δ) is
    dp-accounting's ``compute_epsilon``. (ε, δ) groups (:class:`ApproxDpEvent`) have no RDP curve:
    the rest is converted at ``δ − Σ T·δᵢ`` and ``Σ T·εᵢ`` added (basic composition, Dwork & Roth
    2014, Thm 3.16); ``inf`` when ``Σ T·δᵢ`` leaves no δ for a non-empty rest.
    """
    approx = [g for g in groups if isinstance(g, ApproxDpEvent)]
    if approx:
        spent_delta = math.fsum(g.steps * g.delta for g in approx)
        basic = math.fsum(g.steps * g.epsilon for g in approx)
        rest = tuple(g for g in groups if not isinstance(g, ApproxDpEvent))
        if not rest:
            return (basic, False) if spent_delta <= delta else (math.inf, False)
        if spent_delta >= delta:
            return math.inf, False
        eps, at_edge = _epsilon_rdp(rest, delta - spent_delta)
        return eps + basic, at_edge
    total = np.zeros_like(_RDP_ORDERS)
    for g in groups:
        if isinstance(g, GaussianEvent):
            total += g.steps * _gaussian_rdp_curve(g.noise_multiplier, g.sample_rate)
        elif isinstance(g, LaplaceEvent):
            total += g.steps * pure_dp_rdp(epsilon=g.epsilon, orders=_RDP_ORDERS)
        else:
            total += g.rdp(_RDP_ORDERS)
    eps, order = _rdp_mod.compute_epsilon(_RDP_ORDERS, total, delta)
    eps = float(eps)
    return eps, bool(math.isfinite(eps) and eps > 0 and order == _RDP_ORDERS[-1])


def _epsilon_pld(groups: tuple[Leaf, ...], delta: float) -> float:
    ddg = [g for g in groups if isinstance(g, DistributedDiscreteGaussianEvent)]
    if ddg:
        raise PrivacyError(
            "the 'pld' accountant cannot compose a distributed discrete Gaussian release: its bound "
            "(Kairouz, Liu & Steinke 2021, Prop. 14) is a Renyi-DP bound with no privacy loss distribution; "
            "account secure-aggregation DP with accountant 'rdp'"
        )
    if any(isinstance(g, ApproxDpEvent) for g in groups):
        return _epsilon_pld_approx(groups, delta)
    if all(isinstance(g, GaussianEvent) for g in groups):
        return _epsilon_pld_gaussians(groups, delta)
    acc = _pld.PLDAccountant(value_discretization_interval=_PLD_INTERVAL)
    for g in groups:
        acc.compose(g.to_dp_accounting())
    return float(acc.get_epsilon(delta))


def _epsilon_pld_gaussians(groups: tuple[Leaf, ...], delta: float) -> float:
    """PLD ε of Gaussian groups, cheap enough for every ledger charge of a long job.

    * The unsampled groups (``q = 1``) together are one Gaussian mechanism with
      ``μ² = Σ T/z²``: the privacy loss of a Gaussian mechanism is Gaussian, and composition adds
      its means and variances (Dong, Roth & Su 2022, Cor. 3.3; dp-accounting's PLDAccountant
      uses the same identity for one self-composed Gaussian, ``σ/√T``). Alone, its ε is the
      exact profile of that Gaussian (:func:`_gaussian_epsilon`): no PLD is built, so a
      silo-level job's charge costs milliseconds instead of building a PLD of ``σ/√T`` (up to
      ~100 MB, over a second) every round. Beside subsampled groups, its PLD is built once.
    * Each subsampled group is dp-accounting's self-composition of one step's PLD
      (:func:`_subsampled_power`), exactly what its PLDAccountant composes.

    Deterministic in ``groups`` (no state decides the order of operations), so the ledger's
    pre-check, a charge in another process and a later report compute the same number.
    """
    mu2 = math.fsum(g.steps / g.noise_multiplier**2 for g in groups if g.sample_rate >= 1.0)
    sampled = [g for g in groups if g.sample_rate < 1.0]
    if not sampled:
        return _gaussian_epsilon(mu=math.sqrt(mu2), delta=delta)
    total = _pld_lib.identity(value_discretization_interval=_PLD_INTERVAL)
    for g in sampled:
        total = total.compose(_subsampled_power(g.noise_multiplier, g.sample_rate, g.steps))
    if mu2 > 0.0:
        total = total.compose(_unsampled_gaussian_pld(1.0 / math.sqrt(mu2)))
    return float(total.get_epsilon_for_delta(delta))


def _epsilon_pld_approx(groups: tuple[Leaf, ...], delta: float) -> float:
    """PLD ε of groups holding (ε, δ) releases: each :class:`ApproxDpEvent` group is
    dp-accounting's pessimistic PLD of an (ε, δ)-DP mechanism (``from_privacy_parameters``),
    self-composed ``T`` times, composed with the other groups' PLDs exactly as the
    ``PLDAccountant`` builds them (Gaussians: :func:`_gaussian_pld`; pure-DP: the discrete
    Laplace PLD), all at fedsilo's discretization interval. Deterministic in ``groups``."""
    total = _pld_lib.identity(value_discretization_interval=_PLD_INTERVAL)
    mu2 = 0.0
    for g in groups:
        if isinstance(g, ApproxDpEvent):
            part = _approx_dp_pld(g.epsilon, g.delta).self_compose(g.steps)
        elif isinstance(g, GaussianEvent):
            if g.sample_rate >= 1.0:
                mu2 += g.steps / g.noise_multiplier**2  # one Gaussian of mu^2 = sum T/z^2 (see above)
                continue
            part = _subsampled_power(g.noise_multiplier, g.sample_rate, g.steps)
        elif isinstance(g, LaplaceEvent):
            part = _pld_lib.from_discrete_laplace_mechanism(
                parameter=g.epsilon, sensitivity=1, value_discretization_interval=_PLD_INTERVAL).self_compose(g.steps)
        else:  # pragma: no cover - _epsilon_pld refuses the distributed discrete Gaussian first
            raise PrivacyError(f"the 'pld' accountant cannot compose {g!r}")
        total = total.compose(part)
    if mu2 > 0.0:
        total = total.compose(_unsampled_gaussian_pld(1.0 / math.sqrt(mu2)))
    return float(total.get_epsilon_for_delta(delta))


@functools.lru_cache(maxsize=16)
def _approx_dp_pld(epsilon: float, delta: float) -> Any:
    """dp-accounting's pessimistic PLD of one (ε, δ)-DP mechanism, memoized."""
    return _pld_lib.from_privacy_parameters(
        _pld_common.DifferentialPrivacyParameters(epsilon=epsilon, delta=delta),
        value_discretization_interval=_PLD_INTERVAL)


#: Relative width to which :func:`_gaussian_epsilon` brackets ε (its upper end is returned).
_GAUSSIAN_EPSILON_RTOL: float = 1.0e-12


def _gaussian_epsilon(*, mu: float, delta: float) -> float:
    """Smallest ε (the upper end of a bracket of relative width 1e-12) with δ(ε) <= ``delta``
    for the Gaussian mechanism of ``μ = Δ/σ``; δ(ε) is dp-accounting's closed form
    (``GaussianPrivacyLoss.get_delta_for_epsilon``, Balle & Wang 2018, Thm. 8)."""
    loss = _pld_mech.GaussianPrivacyLoss(standard_deviation=1.0 / mu, sensitivity=1.0)

    def over(eps: float) -> bool:
        return float(loss.get_delta_for_epsilon(eps)) > delta

    if not over(0.0):
        return 0.0
    lo, hi = 0.0, max(1.0, mu)
    while over(hi):
        lo, hi = hi, 2.0 * hi
    while hi - lo > _GAUSSIAN_EPSILON_RTOL * hi:
        mid = 0.5 * (lo + hi)
        if over(mid):
            lo = mid
        else:
            hi = mid
    return hi


@functools.lru_cache(maxsize=4)
def _unsampled_gaussian_pld(standard_deviation: float) -> Any:
    """:func:`_gaussian_pld` of one unsampled Gaussian, memoized (a record-level job composes
    its one final metrics release with every prefix). Few entries: a small σ makes a PLD of
    ~100 MB."""
    return _gaussian_pld(standard_deviation, 1.0)


@functools.lru_cache(maxsize=8)
def _subsampled_power(noise_multiplier: float, sample_rate: float, steps: int) -> Any:
    """dp-accounting's PLD of ``steps`` compositions of one Poisson-subsampled Gaussian step
    (one FFT power, ``self_compose``), memoized: a charge, the results' ε of the same round and
    the pre-check of a job ask for the same ``steps``."""
    # self_compose(1) too: it truncates the tails as the PLDAccountant's composition does
    return _subsampled_gaussian_pld(noise_multiplier, sample_rate).self_compose(steps)


@functools.lru_cache(maxsize=32)
def _subsampled_gaussian_pld(noise_multiplier: float, sample_rate: float) -> Any:
    """:func:`_gaussian_pld` of one Poisson-subsampled step, memoized (a job's per-round epsilon
    composes the same step for every prefix; 32 entries of a few MB each)."""
    return _gaussian_pld(noise_multiplier, sample_rate)


def _gaussian_pld(standard_deviation: float, sample_rate: float) -> Any:
    """dp-accounting's PLD of one (Poisson-subsampled) Gaussian step, exactly as its
    ``PLDAccountant`` builds it (add/remove neighbours, fedsilo's discretization)."""
    kwargs = {"sampling_prob": sample_rate} if sample_rate < 1 else {}
    return _pld_lib.from_gaussian_mechanism(
        standard_deviation=standard_deviation, value_discretization_interval=_PLD_INTERVAL,
        neighboring_relation=_NeighboringRelation.ADD_OR_REMOVE_ONE, **kwargs)


@functools.lru_cache(maxsize=1024)
def _epsilon_groups(
    groups: tuple[Leaf, ...], delta: float, accountant: str
) -> tuple[float, bool]:
    """ε of normalized groups (memoized: events are immutable and hashable)."""
    at_edge = False
    if accountant == "rdp":
        eps, at_edge = _epsilon_rdp(groups, delta)
    else:
        eps = _epsilon_pld(groups, delta)
    if all(isinstance(g, (LaplaceEvent, ApproxDpEvent)) for g in groups):
        # Basic composition of pure-DP and (ε, δ) releases (Dwork & Roth 2014, Thm 3.16), valid
        # for any δ at least the (ε, δ) releases' Σ T·δᵢ.
        basic = math.fsum(g.epsilon * g.steps for g in groups)
        spent_delta = math.fsum(g.delta * g.steps for g in groups if isinstance(g, ApproxDpEvent))
        if spent_delta <= delta and basic <= eps:
            eps, at_edge = basic, False
    return eps, at_edge


def epsilon(event: DpEvent, *, delta: float, accountant: str = "rdp") -> float:
    """ε of ``event`` (a single release or a whole composition) at ``delta``.

    Args:
        event: a :class:`~fedsilo.privacy.events.DpEvent`.
        delta: target δ in (0, 1).
        accountant: ``"rdp"`` or ``"pld"`` (see the module docstring).

    Returns:
        ε ≥ 0 such that the composition is (ε, δ)-DP; ``inf`` if no finite bound exists.

    Raises:
        PrivacyParameterError: delta outside (0, 1) or unknown accountant.
        PrivacyError: unsupported event.
    """
    d = _check_delta(delta)
    acc = _check_accountant(accountant)
    groups = normalize(event)
    try:
        eps, at_edge = _epsilon_groups(groups, d, acc)
    except _UNREPRESENTABLE as exc:
        # parameters dp-accounting cannot represent (found by a review: z >= ~1e155 overflows;
        # under "pld" a tiny z asks for a PLD of terabytes): refused, never a library traceback
        raise PrivacyError(
            f"the {acc!r} accountant cannot compose these releases ({len(groups)} kind(s)): their parameters are "
            f"outside what it can represent ({type(exc).__name__}: {str(exc)[:120]})"
        ) from None
    if at_edge:
        warnings.warn(
            f"RDP optimum at the largest order of the grid; epsilon={eps:.4g} may be loose "
            "(accountant='pld' is tighter here)",
            RuntimeWarning,
            stacklevel=2,
        )
    if math.isnan(eps):  # max(0.0, nan) is 0.0: never let a failed computation read as free
        raise PrivacyError(f"the {acc!r} accountant gave no epsilon (NaN) for these releases ({len(groups)} kind(s))")
    return max(0.0, eps)


def noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float = 1.0,
    steps: int = 1,
    accountant: str = "rdp",
) -> float:
    """Smallest noise multiplier z (to within 1 %) with ``epsilon(GaussianEvent(z, q, T)) <= target``.

    Geometric bisection on z through :func:`epsilon`: first a bracket ``[lo, hi]`` with
    ``ε(lo) > target >= ε(hi)`` by doubling/halving, then halving its ratio until
    ``hi / lo <= 1 + NOISE_MULTIPLIER_RTOL``. Returns ``hi``, the side that meets the target,
    so the result is never above the target ε, and ``z · 0.99`` overshoots it.

    Args:
        target_epsilon: ε to meet, > 0.
        delta: δ in (0, 1).
        sample_rate: Poisson sampling rate q in (0, 1].
        steps: number of rounds T >= 1.
        accountant: ``"rdp"`` or ``"pld"``.

    Returns:
        z in ``[MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER]``. If even ``MIN_NOISE_MULTIPLIER``
        meets the target (a huge ε), that floor is returned.

    Raises:
        PrivacyParameterError: bad arguments, or a target so small that even
            ``MAX_NOISE_MULTIPLIER`` exceeds it (the message names the cap and the ε it gives).
    """
    if isinstance(target_epsilon, bool) or not isinstance(target_epsilon, numbers.Real):
        raise PrivacyParameterError(f"target epsilon must be a number > 0, got {target_epsilon!r}")
    target = float(target_epsilon)
    if not (math.isfinite(target) and target > 0.0):
        raise PrivacyParameterError(f"target epsilon must be a finite number > 0, got {target_epsilon!r}")
    d = _check_delta(delta)
    acc = _check_accountant(accountant)
    # Validates q and T once, before any search.
    GaussianEvent(1.0, sample_rate, steps)

    def eps_at(z: float) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return epsilon(GaussianEvent(z, sample_rate, steps), delta=d, accountant=acc)

    # Start at 1 with factor-2 steps; PLD (slow, always tighter than RDP here) starts from the
    # RDP answer with finer steps, which saves about half of the PLD evaluations.
    hi, factor = 1.0, 2.0
    if acc == "pld":
        try:
            hi = noise_multiplier(
                target_epsilon=target, delta=d, sample_rate=sample_rate, steps=steps, accountant="rdp"
            )
            factor = 1.25
        except PrivacyParameterError:  # beyond RDP's reach; PLD may still meet it
            hi = 1.0
    if eps_at(hi) <= target:
        lo = max(hi / factor, MIN_NOISE_MULTIPLIER)
        while eps_at(lo) <= target:
            hi = lo
            if hi <= MIN_NOISE_MULTIPLIER:
                return MIN_NOISE_MULTIPLIER
            lo = max(hi / factor, MIN_NOISE_MULTIPLIER)
    else:
        lo = hi
        hi = min(hi * factor, MAX_NOISE_MULTIPLIER)
        while True:
            e_hi = eps_at(hi)
            if e_hi <= target:
                break
            if hi >= MAX_NOISE_MULTIPLIER:
                raise PrivacyParameterError(
                    f"target epsilon {target:g} is too small: even the largest noise multiplier "
                    f"MAX_NOISE_MULTIPLIER={MAX_NOISE_MULTIPLIER:g} gives epsilon={e_hi:.4g} "
                    f"(delta={d:g}, sample_rate={sample_rate:g}, steps={steps}, "
                    f"accountant={acc!r})"
                )
            lo = hi
            hi = min(hi * factor, MAX_NOISE_MULTIPLIER)
    while hi / lo > 1.0 + NOISE_MULTIPLIER_RTOL:
        mid = math.sqrt(lo * hi)
        if eps_at(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi
