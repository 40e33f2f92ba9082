"""DP events: immutable descriptions of what one release cost.

Every noising step in fedsilo emits exactly one event, and the ledger stores it (as JSON)
before the noised value is released. An event is the accounting contract between the code that
adds noise and the code that adds up ε: it holds everything an accountant needs and nothing else.

Compatibility contract (after dp-accounting's ``dp_event`` module docstring):

* An event's meaning never changes. A new mechanism or a different privacy-loss profile gets a
  **new** event class with a new ``kind``; a parameter is never removed or reinterpreted, and a
  new parameter may only be added with a default that keeps old JSON valid.
* Deserialization is a fixed table from ``kind`` to class; it never imports a module named in
  the data. Unknown kinds, unknown keys, missing keys and out-of-range values are refused with
  :class:`~fedsilo.errors.PrivacyError` — never guessed.
* Each event converts to a ``dp_accounting`` event with :meth:`DpEvent.to_dp_accounting`; the
  accounting module composes those.

Neighbouring relation: events are relation-agnostic. A noise multiplier ``z`` is always noise
standard deviation divided by the sensitivity *under the relation the protocol protects*
(add/remove one record, zero-out one silo's update, or replace one row, which doubles the
sensitivity of a clipped sum); the protocol charges the ledger with that relation
(``PrivacyLedger.charge(..., relation=...)``, :mod:`fedsilo.privacy.relations`), which converts
or refuses mixed relations, and docs/privacy.md lists which protocol uses which.

Events:

* :class:`GaussianEvent` ``(z, q, T)`` — ``T`` rounds of the Gaussian mechanism with noise
  standard deviation ``z·Δ₂`` applied to a Poisson subsample taken with rate ``q`` (``q = 1``:
  no subsampling, e.g. silo-level DP-FedAvg). Also valid for the discrete Gaussian with
  ``q = 1``: its Rényi divergences are bounded by the continuous Gaussian's
  (Canonne, Kamath & Steinke, NeurIPS 2020).
* :class:`LaplaceEvent` ``(ε, T)`` — ``T`` releases, each pure ε-DP (Laplace-type noise of
  scale ``Δ₁/ε``: continuous, snapped, or fedsilo's discrete Laplace on a fixed-point grid).
  It is accounted with the *worst-case* privacy-loss profile of any ε-DP mechanism, i.e. binary
  randomized response, which equals the discrete Laplace on integers with sensitivity 1
  (``dp_accounting.DiscreteLaplaceDpEvent(ε, 1)``). Every ε-DP mechanism is a post-processing
  of that pair (Kairouz, Oh & Viswanath, ICML 2015), so the accounting is never an
  under-count, whatever ε-DP sampler produced the release.
* :class:`DistributedDiscreteGaussianEvent` ``(σ, n, Δ₂, Δ₁, d, T)`` — ``T`` releases of a
  sum of ``n`` discrete Gaussian noise shares of scale σ on the integer grid (secure aggregation
  with the distributed discrete Gaussian; Kairouz, Liu & Steinke, ICML 2021). Accounted with their
  Proposition 14 RDP curve (:mod:`fedsilo.privacy.distributed`); ``to_dp_accounting`` gives the
  zCDP form of the same bound.
* :class:`ApproxDpEvent` ``(ε, δ, T)`` — ``T`` releases, each ``(ε, δ)``-DP by its own
  calibration: a guarantee that holds whatever parameters an earlier release made it choose
  (distributed DP-SGD's training, calibrated for *every* released row count). Composed with the
  rest by basic composition under RDP (Dwork & Roth 2014, Thm 3.16: the RDP part at ``δ − Σδᵢ``,
  plus ``Σεᵢ``) and with dp-accounting's pessimistic PLD of an ``(ε, δ)``-DP mechanism under PLD
  (``from_privacy_parameters``; composing such worst-case pairs is sound adaptively: Dong, Roth
  & Su 2022, Thm 3.2). An optional ``cover`` label names it for :class:`CoveredEvent`.
* :class:`CoveredEvent` ``(event, cover)`` — a release already paid for by the
  :class:`ApproxDpEvent` labelled ``cover`` in the same composition: it costs nothing there,
  and its ``event`` (what the release would cost on its own, e.g. one DP-SGD step) is kept for
  the record only. A composition holding a covered release without its cover is refused — never
  accounted at the inner event's cost, which may have been chosen adaptively.
* :class:`ComposedEvent` — several events applied to the same dataset (possibly adaptively).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import dp_accounting

from fedsilo.errors import PrivacyError, PrivacyParameterError
from fedsilo.privacy import distributed as _ddg

__all__ = [
    "DpEvent",
    "GaussianEvent",
    "LaplaceEvent",
    "ComposedEvent",
    "DistributedDiscreteGaussianEvent",
    "ApproxDpEvent",
    "CoveredEvent",
    "event_from_json",
    "EVENT_KINDS",
]


def _check_positive_finite(name: str, value: object, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PrivacyParameterError(f"{owner}: {name} must be a number, got {value!r}")
    try:
        v = float(value)
    except OverflowError:  # an int past float's range (e.g. 10**400 from JSON)
        v = math.inf
    if not math.isfinite(v) or v <= 0.0:
        raise PrivacyParameterError(f"{owner}: {name} must be a finite number > 0, got {_short(value)}")
    return v


def _short(value: object) -> str:
    """``repr`` of a refused value, cut: a 400-digit integer need not be printed whole."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _check_steps(value: object, owner: str, *, name: str = "steps") -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise PrivacyParameterError(f"{owner}: {name} must be an integer >= 1, got {value!r}")
    return int(value)


class DpEvent:
    """Base of fedsilo's DP events (frozen dataclasses). Use :func:`event_from_json` to load one."""

    __slots__ = ()
    kind: ClassVar[str] = ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with a ``"kind"`` key; :meth:`from_json` inverts it exactly."""
        raise NotImplementedError

    def to_dp_accounting(self) -> dp_accounting.DpEvent:
        """The equivalent ``dp_accounting`` event (see the module docstring for the mapping)."""
        raise NotImplementedError

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DpEvent:
        """Load an event from :meth:`to_json`'s output; refuse unknown kinds and keys.

        Called on a subclass, also checks that the loaded event is of that subclass.

        Raises:
            PrivacyError: unknown ``kind``, unknown or missing keys, wrong types or ranges.
        """
        event = event_from_json(data)
        if not isinstance(event, cls):
            raise PrivacyError(f"expected a {cls.__name__} event, got kind {event.kind!r}")
        return event


@dataclass(frozen=True, slots=True)
class GaussianEvent(DpEvent):
    """``steps`` rounds of a Poisson-subsampled Gaussian mechanism.

    Args:
        noise_multiplier: ``z = σ / Δ₂``, the noise standard deviation over the L2 sensitivity
            (the clip norm). Must be > 0.
        sample_rate: ``q`` in (0, 1], the Poisson sampling probability of each unit; 1.0 means
            every unit takes part (no amplification by subsampling).
        steps: ``T >= 1``, how many times the mechanism ran with these parameters.
    """

    kind: ClassVar[str] = "gaussian"
    noise_multiplier: float
    sample_rate: float = 1.0
    steps: int = 1

    def __post_init__(self) -> None:
        z = _check_positive_finite("noise_multiplier", self.noise_multiplier, "GaussianEvent")
        q = _check_positive_finite("sample_rate", self.sample_rate, "GaussianEvent")
        if q > 1.0:
            raise PrivacyParameterError(
                f"GaussianEvent: sample_rate must be in (0, 1], got {self.sample_rate!r}"
            )
        t = _check_steps(self.steps, "GaussianEvent")
        object.__setattr__(self, "noise_multiplier", z)
        object.__setattr__(self, "sample_rate", q)
        object.__setattr__(self, "steps", t)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
        }

    def to_dp_accounting(self) -> dp_accounting.DpEvent:
        one: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(self.noise_multiplier)
        if self.sample_rate < 1.0:
            one = dp_accounting.PoissonSampledDpEvent(self.sample_rate, one)
        if self.steps == 1:
            return one
        return dp_accounting.SelfComposedDpEvent(one, self.steps)


@dataclass(frozen=True, slots=True)
class LaplaceEvent(DpEvent):
    """``steps`` releases, each pure ``epsilon``-DP (Laplace-type noise of scale ``Δ₁/ε``).

    Accounted as the worst case over all ε-DP mechanisms (binary randomized response; equal to
    ``dp_accounting.DiscreteLaplaceDpEvent(noise_parameter=ε, sensitivity=1)``), which is exact
    for the discrete Laplace (geometric) mechanism on counts and conservative for the
    continuous Laplace mechanism.
    """

    kind: ClassVar[str] = "laplace"
    epsilon: float
    steps: int = 1

    def __post_init__(self) -> None:
        e = _check_positive_finite("epsilon", self.epsilon, "LaplaceEvent")
        t = _check_steps(self.steps, "LaplaceEvent")
        object.__setattr__(self, "epsilon", e)
        object.__setattr__(self, "steps", t)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "epsilon": self.epsilon, "steps": self.steps}

    def to_dp_accounting(self) -> dp_accounting.DpEvent:
        one = dp_accounting.dp_event.DiscreteLaplaceDpEvent(
            noise_parameter=self.epsilon, sensitivity=1
        )
        if self.steps == 1:
            return one
        return dp_accounting.SelfComposedDpEvent(one, self.steps)


def _check_count(name: str, value: object, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise PrivacyParameterError(f"{owner}: {name} must be an integer >= 1, got {value!r}")
    return int(value)


@dataclass(frozen=True, slots=True)
class DistributedDiscreteGaussianEvent(DpEvent):
    """``steps`` releases of the distributed discrete Gaussian: a sum of ``shares`` independent
    discrete Gaussians ``N_Z(0, noise_sigma²)`` added to an integer vector (Kairouz, Liu & Steinke,
    ICML 2021).

    All quantities are in grid units (multiples of the fixed-point granularity), under the
    neighbouring relation the protocol charges with.

    Args:
        noise_sigma: σ of one share, in grid steps, >= 0.5.
        shares: how many shares the adversary cannot subtract (honest contributors guaranteed by
            the protocol's fewest contributions per released sum, ``min_contributors − colluders``).
        l2_sensitivity: ``Δ₂``, the L2 sensitivity after rotation and conditional rounding
            (:func:`fedsilo.privacy.distributed.rounded_l2_bound`).
        l1_sensitivity: ``Δ₁`` (:func:`fedsilo.privacy.distributed.rounded_l1_bound`).
        dimension: ``d``, coordinates of the noised vector (after padding for the rotation).
        steps: ``T >= 1``.
    """

    kind: ClassVar[str] = "distributed_discrete_gaussian"
    noise_sigma: float
    shares: int
    l2_sensitivity: float
    l1_sensitivity: float
    dimension: int
    steps: int = 1

    def __post_init__(self) -> None:
        owner = "DistributedDiscreteGaussianEvent"
        sigma = _check_positive_finite("noise_sigma", self.noise_sigma, owner)
        if sigma < _ddg.MIN_SIGMA:
            raise PrivacyParameterError(f"{owner}: noise_sigma must be >= {_ddg.MIN_SIGMA} grid steps, got {self.noise_sigma!r}")
        object.__setattr__(self, "noise_sigma", sigma)
        object.__setattr__(self, "shares", _check_count("shares", self.shares, owner))
        object.__setattr__(self, "l2_sensitivity", _check_positive_finite("l2_sensitivity", self.l2_sensitivity, owner))
        object.__setattr__(self, "l1_sensitivity", _check_positive_finite("l1_sensitivity", self.l1_sensitivity, owner))
        object.__setattr__(self, "dimension", _check_count("dimension", self.dimension, owner))
        object.__setattr__(self, "steps", _check_steps(self.steps, owner))

    def rdp(self, orders: Any) -> Any:
        """RDP of all ``steps`` releases at ``orders`` (Proposition 14, see the class docstring)."""
        return self.steps * _ddg.ddg_rdp(
            orders=orders, sigma=self.noise_sigma, shares=self.shares, l2_sensitivity=self.l2_sensitivity,
            l1_sensitivity=self.l1_sensitivity, dimension=self.dimension,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "noise_sigma": self.noise_sigma,
            "shares": self.shares,
            "l2_sensitivity": self.l2_sensitivity,
            "l1_sensitivity": self.l1_sensitivity,
            "dimension": self.dimension,
            "steps": self.steps,
        }

    def to_dp_accounting(self) -> dp_accounting.DpEvent:
        """``ZCDpEvent(ρ)`` with the smaller of the two zCDP lines of Proposition 14 (its
        ``(α/2)·x`` forms); fedsilo's own RDP accountant uses the full curve, which is never larger."""
        tau = _ddg.ddg_tau(sigma=self.noise_sigma, shares=self.shares)
        scale = math.sqrt(self.shares) * self.noise_sigma
        z2 = (self.l2_sensitivity / scale) ** 2
        rho = 0.5 * min(
            z2 + 2.0 * (self.l1_sensitivity / scale) * tau + tau * tau * self.dimension,
            (self.l2_sensitivity / scale + tau * math.sqrt(self.dimension)) ** 2,
        )
        one = dp_accounting.ZCDpEvent(rho)
        return one if self.steps == 1 else dp_accounting.SelfComposedDpEvent(one, self.steps)


#: Longest accepted :class:`ApproxDpEvent` / :class:`CoveredEvent` cover label.
MAX_COVER_LABEL = 128


def _check_cover(value: object, owner: str, *, required: bool) -> str:
    if not isinstance(value, str):
        raise PrivacyParameterError(f"{owner}: cover must be a string label, got {value!r}")
    if required and not value:
        raise PrivacyParameterError(f"{owner}: cover must name the ApproxDpEvent that pays for it, got ''")
    if len(value) > MAX_COVER_LABEL or not value.isprintable():
        raise PrivacyParameterError(
            f"{owner}: cover must be at most {MAX_COVER_LABEL} printable characters, got {len(value)} character(s)"
        )
    return value


@dataclass(frozen=True, slots=True)
class ApproxDpEvent(DpEvent):
    """``steps`` releases, each ``(epsilon, delta)``-DP by its own calibration.

    For a release whose guarantee is an (ε, δ) pair rather than a mechanism with a known privacy
    loss profile: e.g. the training part of a distributed DP-SGD job, whose noise is calibrated
    to (ε, δ) for *every* row count an earlier release can produce (so the guarantee holds
    however that count came out, where the per-step Gaussians it chose do not compose soundly
    with it). Accounting (:mod:`fedsilo.privacy.accounting`):

    * RDP: the other events compose by RDP at ``δ − Σ T·δᵢ``, then ``Σ T·εᵢ`` is added (basic
      composition, Dwork & Roth 2014, Thm 3.16, valid adaptively); ``inf`` if ``Σ T·δᵢ >= δ``;
    * PLD: dp-accounting's pessimistic PLD of an (ε, δ)-DP mechanism
      (``privacy_loss_distribution.from_privacy_parameters``), self-composed ``T`` times and
      composed with the other events' PLDs.

    Args:
        epsilon: ε > 0 of one release.
        delta: δ in (0, 1) of one release.
        steps: ``T >= 1``.
        cover: an optional label (at most 128 printable characters) that
            :class:`CoveredEvent` releases paid for by this one name.
        covers: with a ``cover``, how many :class:`CoveredEvent` releases it pays for (``>= 1``:
            the releases its calibration composed, e.g. a job's steps and its final metrics);
            a composition or ledger holding more covered releases than that is refused. Without
            a ``cover``, 0.
    """

    kind: ClassVar[str] = "approx_dp"
    epsilon: float
    delta: float
    steps: int = 1
    cover: str = ""
    covers: int = 0

    def __post_init__(self) -> None:
        owner = "ApproxDpEvent"
        object.__setattr__(self, "epsilon", _check_positive_finite("epsilon", self.epsilon, owner))
        d = _check_positive_finite("delta", self.delta, owner)
        if d >= 1.0:
            raise PrivacyParameterError(f"{owner}: delta must be in (0, 1), got {self.delta!r}")
        object.__setattr__(self, "delta", d)
        object.__setattr__(self, "steps", _check_steps(self.steps, owner))
        object.__setattr__(self, "cover", _check_cover(self.cover, owner, required=False))
        # a cover's calibration composed a known number of releases: an uncapped cover would pay
        # for any number of them
        if self.cover:
            object.__setattr__(self, "covers", _check_steps(self.covers, owner, name="covers"))
        elif isinstance(self.covers, bool) or not isinstance(self.covers, numbers.Integral) or self.covers != 0:
            raise PrivacyParameterError(f"{owner}: covers counts the releases a cover pays for; without a cover it must be 0, "
                                        f"got {self.covers!r}")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "epsilon": self.epsilon, "delta": self.delta, "steps": self.steps}
        if self.cover:
            out["cover"] = self.cover
            out["covers"] = self.covers
        return out

    def to_dp_accounting(self) -> dp_accounting.DpEvent:
        """``UnsupportedDpEvent``: dp-accounting has no event for a bare (ε, δ) guarantee (its
        accountants refuse it); fedsilo's accountants compose it as the class docstring says."""
        return dp_accounting.UnsupportedDpEvent()


@dataclass(frozen=True, slots=True)
class CoveredEvent(DpEvent):
    """A release paid for by the :class:`ApproxDpEvent` labelled ``cover``, charged earlier.

    Costs nothing in a composition that holds that cover; a composition without it is refused
    (:class:`~fedsilo.errors.PrivacyError`). ``event`` is what the release would cost on its
    own (e.g. one step's ``GaussianEvent(z, q, 1)``), kept for the record and never accounted:
    its parameters may have been chosen from an earlier release's output, and composing them by
    RDP would need the worst case over every such output.

    Args:
        event: the release's own event (not an ApproxDpEvent or CoveredEvent).
        cover: the paying ApproxDpEvent's non-empty label.
    """

    kind: ClassVar[str] = "covered"
    event: DpEvent
    cover: str

    def __post_init__(self) -> None:
        owner = "CoveredEvent"
        if not isinstance(self.event, DpEvent) or type(self.event) is DpEvent:
            raise PrivacyError(f"{owner}: not a fedsilo DP event: {self.event!r}")
        if isinstance(self.event, (ApproxDpEvent, CoveredEvent)):
            raise PrivacyError(f"{owner}: the covered event must be the release's own mechanism, not a {self.event.kind!r} event")
        # nor a composition holding one (found by a privacy review): the composition skips a
        # CoveredEvent's own event, so a cover nested inside it would pay for its covered parts
        # unchecked, and whatever it hid would cost nothing
        nested = _nested_kind(self.event, (ApproxDpEvent, CoveredEvent))
        if nested is not None:
            raise PrivacyError(f"{owner}: the covered event must be the release's own mechanism, not a composition "
                               f"holding a {nested!r} event")
        object.__setattr__(self, "cover", _check_cover(self.cover, owner, required=True))

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "event": self.event.to_json(), "cover": self.cover}

    def to_dp_accounting(self) -> dp_accounting.DpEvent:
        """``UnsupportedDpEvent``: its cost is its cover's, which dp-accounting cannot state."""
        return dp_accounting.UnsupportedDpEvent()


def _nested_kind(event: DpEvent, kinds: tuple[type[DpEvent], ...], depth: int = 0) -> str | None:
    """The ``kind`` of the first event of one of ``kinds`` inside ``event``'s compositions, if any."""
    if depth > _MAX_DEPTH:
        raise PrivacyError(f"DP event nested deeper than {_MAX_DEPTH} levels")
    if isinstance(event, kinds):
        return event.kind
    if isinstance(event, ComposedEvent):
        for part in event.events:
            found = _nested_kind(part, kinds, depth + 1)
            if found is not None:
                return found
    return None


@dataclass(frozen=True, slots=True)
class ComposedEvent(DpEvent):
    """Sequential (possibly adaptive) composition of events on one dataset.

    Args:
        events: a non-empty tuple of events (a list is accepted and stored as a tuple).
    """

    kind: ClassVar[str] = "composed"
    events: tuple[DpEvent, ...]

    def __post_init__(self) -> None:
        events = self.events
        if isinstance(events, (str, bytes, Mapping)) or not isinstance(events, Iterable):
            raise PrivacyError(f"ComposedEvent: events must be a sequence of events, got {events!r}")
        events = tuple(events)
        if not events:
            raise PrivacyError("ComposedEvent: events must not be empty")
        for e in events:
            if not isinstance(e, DpEvent) or type(e) is DpEvent:
                raise PrivacyError(f"ComposedEvent: not a fedsilo DP event: {e!r}")
        object.__setattr__(self, "events", events)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "events": [e.to_json() for e in self.events]}

    def to_dp_accounting(self) -> dp_accounting.DpEvent:
        return dp_accounting.ComposedDpEvent([e.to_dp_accounting() for e in self.events])


#: The fixed table JSON ``kind`` -> event class. Never derived from the data.
EVENT_KINDS: Mapping[str, type[DpEvent]] = {
    GaussianEvent.kind: GaussianEvent,
    LaplaceEvent.kind: LaplaceEvent,
    DistributedDiscreteGaussianEvent.kind: DistributedDiscreteGaussianEvent,
    ApproxDpEvent.kind: ApproxDpEvent,
    CoveredEvent.kind: CoveredEvent,
    ComposedEvent.kind: ComposedEvent,
}

_FIELDS: Mapping[str, tuple[frozenset[str], frozenset[str]]] = {
    # kind: (required keys, optional keys) besides "kind"
    "gaussian": (frozenset({"noise_multiplier"}), frozenset({"sample_rate", "steps"})),
    "laplace": (frozenset({"epsilon"}), frozenset({"steps"})),
    "composed": (frozenset({"events"}), frozenset()),
    "approx_dp": (frozenset({"epsilon", "delta"}), frozenset({"steps", "cover", "covers"})),
    "covered": (frozenset({"event", "cover"}), frozenset()),
    "distributed_discrete_gaussian": (
        frozenset({"noise_sigma", "shares", "l2_sensitivity", "l1_sensitivity", "dimension"}),
        frozenset({"steps"}),
    ),
}

_MAX_DEPTH = 32


def event_from_json(data: Mapping[str, Any], *, _depth: int = 0) -> DpEvent:
    """Rebuild an event from ``to_json()`` output.

    Raises:
        PrivacyError: not a mapping, unknown ``kind``, unknown or missing keys, nesting deeper
            than 32, or parameters out of range.
    """
    if _depth > _MAX_DEPTH:
        raise PrivacyError(f"DP event nested deeper than {_MAX_DEPTH} levels")
    if not isinstance(data, Mapping):
        raise PrivacyError(f"a DP event must be a JSON object, got {type(data).__name__}")
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in EVENT_KINDS:
        raise PrivacyError(
            f"unknown DP event kind {kind!r}; known kinds: {', '.join(sorted(EVENT_KINDS))}"
        )
    required, optional = _FIELDS[kind]
    keys = set(data) - {"kind"}
    missing = required - keys
    if missing:
        raise PrivacyError(f"DP event of kind {kind!r} lacks {', '.join(sorted(missing))}")
    unknown = keys - required - optional
    if unknown:
        raise PrivacyError(f"DP event of kind {kind!r} has unknown keys {', '.join(sorted(unknown))}")
    if kind == "composed":
        items = data["events"]
        if not isinstance(items, list):
            raise PrivacyError("DP event of kind 'composed': 'events' must be a list")
        return ComposedEvent(tuple(event_from_json(e, _depth=_depth + 1) for e in items))
    if kind == "covered":
        return CoveredEvent(event_from_json(data["event"], _depth=_depth + 1), data["cover"])
    if kind == "approx_dp" and "covers" not in keys and _check_cover(data.get("cover", ""), "ApproxDpEvent", required=False):
        raise PrivacyParameterError(
            "DP event of kind 'approx_dp' has a cover but lacks covers (the number of releases the cover pays for)"
        )
    kwargs = {k: data[k] for k in keys}
    return EVENT_KINDS[kind](**kwargs)
