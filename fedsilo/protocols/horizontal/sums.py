"""Secure-sum sessions: one interface over every way fedsilo sums silo vectors, chosen by capability.

A protocol opens a session once per job (:func:`open_silo_sum` on a silo,
:func:`open_aggregator_sum` on the aggregator) and calls ``sum`` once per release. Which
session it gets depends only on the backend class's
:attr:`~fedsilo.crypto.base.Capabilities.key_model`, never on its name:

* ``"shared-key"`` (CKKS, Paillier, ``plain``): round 0 is the key ceremony; each sum is the
  two-phase encrypted round of :mod:`.secure_aggregation` (noise shares sized for the announced
  silos, top-up shares after a dropout).
* ``"keyless"`` (SecAgg+): no ceremony, no key; each sum is one SecAgg+ round of :mod:`.secagg`
  (pairwise and self masks, Shamir-shared seeds, dropout recovery). Noise shares of a
  :class:`~.secure_aggregation.Contribution` are drawn once, sized for the session's
  :attr:`SumPlan.quorum` (the fewest contributions a released sum holds), so no top-up round is
  needed; silo-level DP noise is the distributed discrete Gaussian the session adds under the
  masks (``Contribution.session_noise``), and its DP event comes from the session
  (:meth:`SumPlan.ddg_event`).

The pure planning half (:func:`plan_sums`, :class:`SumPlan`) is what every party and the job's
planner compute identically from public parameters.
"""
from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsilo.crypto import secagg as sa
from fedsilo.crypto.base import CryptoBackend
from fedsilo.errors import ConfigError, ProtocolError
from fedsilo.privacy.events import DistributedDiscreteGaussianEvent
from fedsilo.protocols.channel import Channel
from fedsilo.protocols.horizontal import secagg as sg
from fedsilo.protocols.horizontal.secure_aggregation import (
    AggregatorRoundOutcome,
    Contribution,
    SiloRoundOutcome,
    aggregator_key_ceremony,
    aggregator_secure_sum,
    required_contributors,
    silo_key_ceremony,
    silo_secure_sum,
    stop_silos,
)

__all__ = [
    "SumPlan",
    "SiloSum",
    "AggregatorSum",
    "plan_sums",
    "ddg_granularity",
    "open_silo_sum",
    "open_aggregator_sum",
]

#: The silo's drop phases of the two-phase round, mapped to the SecAgg+ stage where a keyless
#: silo goes silent (test hook): not announcing = not advertising keys; no update = no masked
#: input (after sharing: its pairwise masks are recovered); no top-up = no unmasking shares
#: (after its masked input: it stays in the sum, recovered from the survivors).
_KEYLESS_DROP = {"hello": "advertise", "update": "masked", "topup": "reveal"}

#: Rounded-norm inflation the DDG grid is chosen for: the clip spans at least this many grid
#: steps per sqrt(dimension), so conditional rounding adds a few percent to the sensitivity.
_DDG_STEPS_PER_ROOT_DIM = 64.0


@dataclass(frozen=True, slots=True)
class SumPlan:
    """The public parameters of a job's secure sums (every party computes the same one).

    Attributes:
        keyless: the backend's key model is ``"keyless"`` (SecAgg+ session).
        silos: every silo of the job, sorted.
        quorum: the fewest contributions any released sum holds (``min_silos``, colluders + 1,
            and without ``allow_exposed`` colluders + 2, so no sum is left to one silo; keyless:
            also the certified survivor set's ``⌊(n + c)/2⌋ + 1``).
        backend_params: the keyless backend's parameters (threshold, degree, granularity,
            value_bound, prg); empty for shared-key backends.
    """

    keyless: bool
    silos: tuple[str, ...]
    quorum: int
    backend_params: Mapping[str, Any]
    #: silos that may collude with the aggregator (``[privacy] colluders``; 1 without DP): the
    #: SecAgg+ threshold is sized against them
    colluders: int = 1

    def spec(self, length: int, *, dp: sg.SecAggDP | None = None, granularity: float | None = None) -> sg.SecAggSpec:
        """The SecAgg+ spec of one sum of ``length`` values (exact, or with the DDG ``dp``)."""
        if not self.keyless:
            raise ConfigError("a shared-key secure sum has no SecAgg+ spec")
        p = self.backend_params
        threshold = p.get("threshold")
        degree = p.get("degree")
        n = len(self.silos)
        if degree is None:
            k = sa.secagg_plus_degree(n, bad_fraction=sg.DEFAULT_BAD_FRACTION)
        else:
            k = int(degree)
            # refused, not clamped: a degree the job cannot have does not mean what it says
            # (found by the bad-input sweep: degree = 7 for 3 silos silently ran with 2)
            if k > n - 1:
                raise ConfigError(
                    f"crypto.params.degree = {degree} but a job of {n} silos gives each at most {n - 1} neighbours; "
                    f"set crypto.params.degree <= {n - 1} (or leave it unset: the SecAgg+ default for {n} silos)"
                )
            if k < n - 1 and k % 2:
                raise ConfigError(
                    f"crypto.params.degree = {degree}: below {n - 1} (the complete graph of {n} silos) the SecAgg+ "
                    f"neighbourhood graph needs an even degree; set crypto.params.degree to an even number below {n - 1}, "
                    f"or to {n - 1}"
                )
        if threshold is not None and int(threshold) > k:
            raise ConfigError(
                f"crypto.params.threshold = {threshold} but each of the {n} silos has only {k} neighbours "
                f"(threshold must be in [2, {k}])"
            )
        g = float(granularity if granularity is not None else p["granularity"])
        if dp is None:
            _check_ring(value_bound=float(p["value_bound"]), granularity=g, silos=n)
        return sg.secagg_spec(
            silos=self.silos, length=length, granularity=g,
            threshold=None if threshold is None else int(threshold), degree=k,
            value_bound=None if dp is not None else float(p["value_bound"]), dp=dp, prg=str(p["prg"]),
            quorum=self.quorum, colluders=self.colluders,
        )

    def ddg(self, *, length: int, epsilon: float, delta: float, rounds: int, clip: float, colluders: int) -> sg.SecAggDP:
        """The distributed discrete Gaussian meeting ``epsilon`` over ``rounds`` sums of ``length``
        values clipped to ``clip`` (Kairouz, Liu & Steinke 2021, RDP), ``quorum − colluders``
        shares counted."""
        g = ddg_granularity(clip=clip, length=length)
        dp = sg.calibrate_dp(
            epsilon=epsilon, delta=delta, rounds=rounds, clip=clip, granularity=g, length=length,
            threshold=self.spec(length, granularity=g).min_contributors, colluders=colluders,
        )
        if dp.noise_sigma > sa.MAX_DDG_SIGMA:
            # refused here, when the job is planned, not by a silo's sampler in round 1
            raise ConfigError(
                f"privacy.epsilon = {epsilon:g} over {rounds} round(s) needs distributed discrete Gaussian shares of "
                f"{dp.noise_sigma:.3g} grid steps, more than the 2^40 the secagg ring and sampler hold; raise "
                "privacy.epsilon or lower training.rounds"
            )
        return dp

    def ddg_event(self, *, length: int, dp: sg.SecAggDP) -> DistributedDiscreteGaussianEvent:
        """The DP event one round's noised sum costs each contributing silo."""
        return self.spec(length, dp=dp, granularity=ddg_granularity(clip=dp.clip, length=length)).dp_event()


def _check_ring(*, value_bound: float, granularity: float, silos: int) -> None:
    """Refuse exact sums whose ring would need more than 64 bits, naming the ``crypto.params``
    keys to change and values that fit (:func:`fedsilo.crypto.secagg.ring_bits`: a sum of
    ``silos`` values of ``ceil(value_bound/granularity)`` grid steps needs
    ``bitlen(silos·steps) + 1`` bits)."""
    try:
        sa.fixed_point_bits(value_bound=value_bound, granularity=granularity, summands=silos)
        return
    except ConfigError as exc:
        if "more than the" not in str(exc):
            raise
    steps = sa.max_summand_steps(silos)  # the largest |x| in grid steps that still fits
    # powers of two, computed exactly (float log2 rounds 2^61 - 1 up to 2^61)
    fit_bound = float(1 << (steps.bit_length() - 1)) * granularity
    fit_grid = 2.0 ** math.ceil(math.log2(value_bound / steps))
    while math.ceil(value_bound / fit_grid) > steps:
        fit_grid *= 2.0
    while math.ceil(value_bound / (fit_grid / 2.0)) <= steps:
        fit_grid /= 2.0
    fit_silos = sa.max_summand_steps(1) // math.ceil(value_bound / granularity)
    raise ConfigError(
        f"crypto.params: exact sums of {silos} silos' values up to value_bound = {value_bound:g} on a granularity = "
        f"2^{math.log2(granularity):.0f} grid need a ring of more than {sa.MAX_RING_BITS} bits; lower "
        f"crypto.params.value_bound to <= 2^{math.log2(fit_bound):.0f} (= {fit_bound:g}), or raise "
        f"crypto.params.granularity to >= 2^{math.log2(fit_grid):.0f} (a coarser grid)"
        + (f", or run with at most {fit_silos} silos" if fit_silos >= 2 else "")
    )


def ddg_granularity(*, clip: float, length: int) -> float:
    """The DDG grid for vectors of L2 norm ``clip``: the power of two with ``clip/γ >= 64·√D``
    (``D`` the padded dimension), so the conditional rounding's extra norm (up to ``√D`` steps)
    costs a few percent of the sensitivity."""
    d = sa.padded_dimension(length)
    return float(2.0 ** math.floor(math.log2(clip / (_DDG_STEPS_PER_ROOT_DIM * math.sqrt(d)))))


def plan_sums(
    backend: type[CryptoBackend] | CryptoBackend, *, silos: Sequence[str], min_silos: int, colluders: int,
    allow_exposed: bool, backend_params: Mapping[str, Any] | None = None,
) -> SumPlan:
    """The job's :class:`SumPlan`, from the backend's capabilities (never its name)."""
    cls = backend if isinstance(backend, type) else type(backend)
    keyless = cls.capabilities().keyless
    quorum = required_contributors(min_silos=min_silos, colluders=colluders)
    if not allow_exposed:
        # a sum of colluders + 1 lets the colluders subtract their own and read the last one
        quorum = max(quorum, colluders + 2) if len(silos) > 1 else quorum
    params: dict[str, Any] = {}
    if keyless:
        built = backend if isinstance(backend, CryptoBackend) else cls(**dict(backend_params or {}))
        params = dict(built.params())
        if len(silos) < 2:
            raise ConfigError("crypto.backend: a keyless secure sum (SecAgg+) needs at least 2 silos")
        # a released SecAgg+ sum holds a certified survivor set, at least floor((n + c)/2) + 1
        # silos (sg.required_signatures): noise shares sized for that many are never too few
        quorum = max(quorum, sg.required_signatures(len(silos), colluders))
    return SumPlan(keyless, tuple(sorted(silos)), min(quorum, max(1, len(silos))), params, colluders)


# ---------------------------------------------------------------------------------------------
# Sessions
# ---------------------------------------------------------------------------------------------
class SiloSum(abc.ABC):
    """A silo's end of the job's secure sums."""

    @abc.abstractmethod
    def sum(self, *, round: int, contribution: Contribution | None, length: int, drop: str | None = None) -> SiloRoundOutcome:
        """One sum; ``contribution=None``: sit it out but stay in sync (receive the result)."""


class AggregatorSum(abc.ABC):
    """The aggregator's end of the job's secure sums."""

    @abc.abstractmethod
    def sum(self, *, round: int, silos: Sequence[str], length: int, session_noise: Any = None) -> AggregatorRoundOutcome:
        """One sum over the silos still in the job (``silos``)."""

    @abc.abstractmethod
    def stop(self, *, silos: Sequence[str], round: int, reason: str) -> None:
        """Tell every remaining silo the job is over."""


class _SharedKeySilo(SiloSum):
    def __init__(self, channel: Channel, backend: CryptoBackend, *, silos: Sequence[str], aggregator: str,
                 timeout: float, allow_exposed: bool, colluders: int) -> None:
        self.channel, self.backend, self.aggregator = channel, backend, aggregator
        self.timeout, self.allow_exposed, self.colluders = timeout, allow_exposed, colluders
        self.secret = silo_key_ceremony(channel, backend, silos=silos, aggregator=aggregator, timeout=timeout)
        self.public = self.secret.public()

    def sum(self, *, round: int, contribution: Contribution | None, length: int, drop: str | None = None) -> SiloRoundOutcome:
        return silo_secure_sum(
            self.channel, round=round, aggregator=self.aggregator, backend=self.backend, secret=self.secret,
            public=self.public, contribution=contribution, timeout=self.timeout, drop=drop,
            allow_exposed=self.allow_exposed, colluders=self.colluders,
        )


class _SharedKeyAggregator(AggregatorSum):
    def __init__(self, channel: Channel, backend: CryptoBackend, *, silos: Sequence[str], timeout: float,
                 round_timeout: float, min_silos: int, colluders: int, allow_exposed: bool) -> None:
        self.channel, self.backend = channel, backend
        self.timeout, self.min_silos, self.colluders, self.allow_exposed = round_timeout, min_silos, colluders, allow_exposed
        self.public = aggregator_key_ceremony(channel, backend, silos=silos, timeout=timeout)

    def sum(self, *, round: int, silos: Sequence[str], length: int, session_noise: Any = None) -> AggregatorRoundOutcome:
        return aggregator_secure_sum(
            self.channel, round=round, silos=silos, backend=self.backend, public=self.public,
            min_silos=self.min_silos, colluders=self.colluders, timeout=self.timeout, allow_exposed=self.allow_exposed,
        )

    def stop(self, *, silos: Sequence[str], round: int, reason: str) -> None:
        stop_silos(self.channel, silos=silos, round=round, reason=reason)


def _secagg_spec(plan: SumPlan, length: int, noise: Any) -> sg.SecAggSpec:
    if noise is None:
        return plan.spec(length)
    if not isinstance(noise, sg.SecAggDP):
        raise ConfigError(f"a keyless secure sum's session noise must be a SecAggDP, got {type(noise).__name__}")
    return plan.spec(length, dp=noise, granularity=ddg_granularity(clip=noise.clip, length=length))


class _KeylessSilo(SiloSum):
    def __init__(self, channel: Channel, plan: SumPlan, *, aggregator: str, timeout: float,
                 noise_seed: int | None) -> None:
        self.channel, self.plan, self.aggregator, self.timeout = channel, plan, aggregator, timeout
        # tests only: a seeded stream makes a run repeatable (and not private)
        self.stream = sa.secret_stream(noise_seed)

    def _sync(self, round: int) -> dict[str, Any]:
        """Read this round's control messages up to the result (a silo that sat out or dropped
        still learns the sum, so every silo keeps the same model)."""
        while True:
            msg = self.channel.recv(self.aggregator, sg.KIND_CONTROL, round=round, timeout=self.timeout)
            if isinstance(msg, dict) and msg.get("type") in ("result", "abort", "stop"):
                return msg

    def sum(self, *, round: int, contribution: Contribution | None, length: int, drop: str | None = None) -> SiloRoundOutcome:
        me = self.channel.party
        phase = _KEYLESS_DROP.get(drop) if drop is not None else None
        if drop is not None and phase is None:
            raise ConfigError(f"drop phase must be one of {tuple(_KEYLESS_DROP)}, got {drop!r}")
        contributed = charged = False
        if contribution is None or phase == "advertise":
            msg = self._sync(round)
        else:
            spec = _secagg_spec(self.plan, length, contribution.session_noise)
            # noise shares (evaluation, shared-key style DP) sized for the quorum: any released sum
            # holds at least that many, so no top-up is ever needed
            values = contribution.values(self.plan.quorum)
            out = sg.silo_secagg_sum(
                self.channel, round=round, aggregator=self.aggregator, spec=spec, values=values,
                timeout=self.timeout, charge=contribution.charge, drop=phase, stream=self.stream,
            )
            contributed, charged = out.contributed, out.charged
            if out.status == "withdrawn":
                return SiloRoundOutcome("withdrawn", reason=out.reason)
            if out.status != "dropped":
                return self._outcome(out.status, out.total, out.contributors, out.dropped, contributed, charged, out.reason)
            msg = self._sync(round)
        kind = msg["type"]
        if kind != "result":
            return SiloRoundOutcome("aborted" if kind == "abort" else "stopped", contributed=contributed,
                                    charged=charged, reason=str(msg.get("reason", "")))
        total, contributors, dropped = msg.get("total"), msg.get("contributors"), msg.get("dropped")
        known = set(self.plan.silos)
        if not (isinstance(total, np.ndarray) and total.shape == (length,) and np.issubdtype(total.dtype, np.floating)
                and bool(np.all(np.isfinite(total)))
                and isinstance(contributors, list) and contributors and all(isinstance(c, str) for c in contributors)
                and set(contributors) <= known
                and isinstance(dropped, list) and all(isinstance(d, str) for d in dropped) and set(dropped) <= known):
            raise ProtocolError(f"{me}: round {round}: malformed result from {self.aggregator!r}")
        return self._outcome("ok", total, tuple(contributors), tuple(dropped), contributed, charged, "")

    @staticmethod
    def _outcome(status: str, total: Any, contributors: Sequence[str], dropped: Sequence[str], contributed: bool,
                 charged: bool, reason: str) -> SiloRoundOutcome:
        return SiloRoundOutcome(
            status,  # type: ignore[arg-type]
            total=None if total is None else np.asarray(total, dtype=np.float64),
            contributors=tuple(contributors), failures=tuple(dropped), contributed=contributed, charged=charged,
            reason=reason,
        )


class _KeylessAggregator(AggregatorSum):
    def __init__(self, channel: Channel, plan: SumPlan, *, round_timeout: float) -> None:
        self.channel, self.plan, self.timeout = channel, plan, round_timeout

    def sum(self, *, round: int, silos: Sequence[str], length: int, session_noise: Any = None) -> AggregatorRoundOutcome:
        spec = _secagg_spec(self.plan, length, session_noise)
        absent = sorted(set(self.plan.silos) - set(silos))
        out = sg.aggregator_secagg_sum(self.channel, round=round, spec=spec, timeout=self.timeout, absent=absent)
        if out.status != "ok":
            return AggregatorRoundOutcome("aborted", failures=out.dropped, withdrawn=out.withdrawn, reason=out.reason)
        return AggregatorRoundOutcome("ok", contributors=out.contributors, failures=out.dropped, withdrawn=out.withdrawn)

    def stop(self, *, silos: Sequence[str], round: int, reason: str) -> None:
        sg.stop_secagg_silos(self.channel, silos=silos, round=round, reason=reason)


def open_silo_sum(
    channel: Channel, backend: CryptoBackend, *, plan: SumPlan, aggregator: str, timeout: float,
    allow_exposed: bool, colluders: int, noise_seed: int | None = None,
) -> SiloSum:
    """A silo's session: the key ceremony now (shared-key) or nothing to set up (keyless).

    ``noise_seed`` (tests only) seeds a keyless session's secret stream (DDG noise, rounding)."""
    if plan.keyless:
        if aggregator in plan.silos:
            raise ConfigError(f"{channel.party}: the aggregator {aggregator!r} must not be a silo of the secure sum")
        return _KeylessSilo(channel, plan, aggregator=aggregator, timeout=timeout, noise_seed=noise_seed)
    return _SharedKeySilo(channel, backend, silos=plan.silos, aggregator=aggregator, timeout=timeout,
                          allow_exposed=allow_exposed, colluders=colluders)


def open_aggregator_sum(
    channel: Channel, backend: CryptoBackend, *, plan: SumPlan, timeout: float, round_timeout: float,
    min_silos: int, colluders: int, allow_exposed: bool,
) -> AggregatorSum:
    """The aggregator's session (``timeout``: how long the key ceremony may take)."""
    if plan.keyless:
        if channel.party in plan.silos:
            raise ConfigError(f"the aggregator {channel.party!r} must not be a silo of the secure sum")
        return _KeylessAggregator(channel, plan, round_timeout=round_timeout)
    return _SharedKeyAggregator(channel, backend, silos=plan.silos, timeout=timeout, round_timeout=round_timeout,
                                min_silos=min_silos, colluders=colluders, allow_exposed=allow_exposed)
