"""Neighbouring relations: who a release protects, and how to compose releases made under different ones.

A DP guarantee is always relative to a *neighbouring relation*: which pairs of datasets the
mechanism must make indistinguishable. A noise multiplier ``z`` (or a pure ε) in a
:class:`~fedsilo.privacy.events.DpEvent` means nothing until that relation is fixed, because the
sensitivity ``Δ`` it is measured against depends on it. fedsilo knows three:

* :data:`ZERO_OUT_SILO` (``"zero-out-silo"``, silo level) — one silo's whole clipped update (or
  contribution) is replaced by zero; participation is public (Kairouz et al., ICML 2021). For a
  sum of updates clipped to L2 norm ``C`` the sensitivity is ``C``. DP-FedAvg with noise shares.
* :data:`ADD_REMOVE_RECORD` (``"add-remove-record"``, record level) — one record is added to or
  removed from a silo's data. DP-SGD (Poisson-subsampled, Opacus), federated statistics.
* :data:`REPLACE_RECORD` (``"replace-record"``, record level) — one record is replaced by another;
  the number of records is public (e.g. vertical training after PSI, where the aligned set is
  known to every party).

The ledger stores the relation with every release and never composes events recorded under
different relations as if they were one. :func:`convert` rewrites an event so that it is a
*valid* (never optimistic) description of the same release under another relation, or refuses
with :class:`~fedsilo.errors.PrivacyError`. The rules, with their reasons:

* **same relation** — unchanged.
* **zero-out-silo → a record relation** (add/remove or replace). Changing one record of a silo
  changes that silo's clipped update from ``u`` to ``u'``, both in the L2 ball of radius ``C``, so
  ``‖u − u'‖ ≤ ‖u − 0‖ + ‖0 − u'‖ ≤ 2C``: the record-level sensitivity of the sum is ``2C``, twice
  the silo-level one. Equivalently, the two datasets are at distance 2 under zero-out-silo
  (``D → silo zeroed → D'``), and group privacy of size 2 applies (Dwork & Roth 2014, §2.3).
  Hence ``GaussianEvent(z, 1, T) → GaussianEvent(z/2, 1, T)`` (the Gaussian mechanism's privacy
  profile depends only on ``Δ/σ``, so group privacy of size 2 is exactly a halved multiplier)
  and ``LaplaceEvent(ε, T) → LaplaceEvent(2ε, T)`` (group privacy of a pure ε-DP mechanism, valid
  for any ε-DP sampler). The distributed discrete Gaussian (SecAgg+) doubles both its
  sensitivities (``l2_sensitivity``, ``l1_sensitivity``): its RDP bound depends on the data only
  through them. An (ε, δ) release (``ApproxDpEvent``) becomes ``(2ε, (1 + e^ε)·δ)`` (group
  privacy of size 2 for approximate DP, by the two-step argument of Vadhan 2017, Lemma 2.2,
  which states the looser ``2e^ε·δ``); a ``CoveredEvent`` is unchanged
  (its cost is its cover's, converted with it). A silo-level guarantee does **not** imply the
  same record-level one.
* **add-remove-record → replace-record.** Replacing ``x`` by ``x'`` is removing ``x`` then adding
  ``x'``: a sum's sensitivity doubles (``‖−x + x'‖ ≤ 2C``), group privacy of size 2 again:
  Gaussian ``q = 1`` → ``z/2``, Laplace → ``2ε``.
* **Poisson-subsampled Gaussian (q < 1)** under any conversion that changes the relation: refused.
  Amplification by subsampling is proved for a specific relation (add/remove for Poisson
  sampling: Mironov, Talwar & Zhang 2019; dp-accounting's ``PoissonSampledDpEvent``), and the
  subsampled mechanism's group-privacy profile is not the same event at ``z/2``; there is no
  sound simple conversion, so fedsilo does not guess one.
* **any record relation → zero-out-silo**, and **replace-record → add-remove-record**: refused.
  A bound for one record says nothing useful about a whole silo, and replace-one neighbours are
  not add/remove neighbours (a mechanism that publishes the exact record count is replace-DP
  with ε = 0 but not add/remove-DP at all).

:func:`composition_target` picks the relation a dataset's releases are composed under (the
strongest requirement present), and :func:`to_composition_target` converts every release to it.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable
from typing import Final

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

__all__ = [
    "ZERO_OUT_SILO",
    "ADD_REMOVE_RECORD",
    "REPLACE_RECORD",
    "RELATIONS",
    "LEVELS",
    "level_of",
    "check_accountable",
    "convert",
    "composition_target",
    "to_composition_target",
]

#: Silo level: one silo's whole clipped update replaced by zero (sensitivity ``C`` of the sum).
ZERO_OUT_SILO: Final = "zero-out-silo"
#: Record level: one record added to or removed from a silo's data.
ADD_REMOVE_RECORD: Final = "add-remove-record"
#: Record level: one record replaced by another (the number of records is public).
REPLACE_RECORD: Final = "replace-record"

#: Every neighbouring relation a ledger entry may record.
RELATIONS: Final[tuple[str, ...]] = (ZERO_OUT_SILO, ADD_REMOVE_RECORD, REPLACE_RECORD)

#: Protection levels (derived from the relation with :func:`level_of`).
LEVELS: Final[tuple[str, ...]] = ("silo", "record")

_LEVEL: Final[dict[str, str]] = {
    ZERO_OUT_SILO: "silo",
    ADD_REMOVE_RECORD: "record",
    REPLACE_RECORD: "record",
}

# (source, target) pairs that double the sensitivity: Gaussian q=1 -> z/2, Laplace -> 2 eps.
_DOUBLING: Final[frozenset[tuple[str, str]]] = frozenset(
    {
        (ZERO_OUT_SILO, ADD_REMOVE_RECORD),
        (ZERO_OUT_SILO, REPLACE_RECORD),
        (ADD_REMOVE_RECORD, REPLACE_RECORD),
    }
)


def _check(relation: object) -> str:
    if not isinstance(relation, str) or relation not in _LEVEL:
        raise PrivacyParameterError(
            f"unknown neighbouring relation {relation!r}; expected one of {', '.join(RELATIONS)}"
        )
    return relation


def _gaussian_leaves(event: DpEvent) -> Iterable[GaussianEvent]:
    if isinstance(event, GaussianEvent):
        yield event
    elif isinstance(event, ComposedEvent):
        for e in event.events:
            yield from _gaussian_leaves(e)


def check_accountable(event: DpEvent, relation: str) -> None:
    """Refuse an event the accountant cannot state under ``relation``.

    fedsilo's accountants compose Poisson-subsampled Gaussians with the add/remove analysis
    (Mironov, Talwar & Zhang 2019); amplification by subsampling is not the same bound under
    replace-one (Balle, Barthe & Gaboardi 2018: replace-one needs its own analysis, and
    dp-accounting's REPLACE_ONE PLD gives a larger ε). So a subsampled Gaussian (``q < 1``) may
    be charged under ``add-remove-record`` or ``zero-out-silo`` only.

    Raises:
        PrivacyError: naming the relation and the sampling rate.
    """
    _check(relation)
    if relation == REPLACE_RECORD:
        sampled = [e for e in _gaussian_leaves(event) if e.sample_rate < 1.0]
        if sampled:
            raise PrivacyError(
                f"a Poisson-subsampled Gaussian (sample_rate {sampled[0].sample_rate:g}) cannot be charged under "
                f"{REPLACE_RECORD!r}: its accounting holds for {ADD_REMOVE_RECORD!r} (or {ZERO_OUT_SILO!r}) only"
            )


def level_of(relation: str) -> str:
    """``"silo"`` for :data:`ZERO_OUT_SILO`, ``"record"`` for the two record relations.

    Raises:
        PrivacyParameterError: not one of :data:`RELATIONS`.
    """
    return _LEVEL[_check(relation)]


def _refuse(source: str, target: str, why: str) -> PrivacyError:
    return PrivacyError(
        f"cannot convert a DP event from neighbouring relation {source!r} to {target!r}: {why}"
    )


def _double(event: DpEvent, source: str, target: str, depth: int) -> DpEvent:
    """Sensitivity doubling (group privacy of size 2), element-wise through compositions."""
    if depth > 64:
        raise PrivacyError("DP event nested too deeply")
    if isinstance(event, ComposedEvent):
        return ComposedEvent(tuple(_double(e, source, target, depth + 1) for e in event.events))
    if isinstance(event, GaussianEvent):
        if event.sample_rate < 1.0:
            raise _refuse(
                source,
                target,
                f"the Gaussian event is Poisson-subsampled (q={event.sample_rate:g}), and "
                "amplification by subsampling holds for one relation only; there is no sound "
                "simple conversion of a subsampled event (refusing rather than under-count)",
            )
        try:
            return GaussianEvent(event.noise_multiplier / 2.0, 1.0, event.steps)
        except PrivacyParameterError as exc:
            raise _refuse(source, target, f"the converted event is invalid ({exc})") from None
    if isinstance(event, LaplaceEvent):
        try:
            return LaplaceEvent(event.epsilon * 2.0, event.steps)
        except PrivacyParameterError as exc:
            raise _refuse(source, target, f"the converted event is invalid ({exc})") from None
    if isinstance(event, ApproxDpEvent):
        # group privacy of size 2: Pr[M(x)∈S] <= e^ε(e^ε Pr[M(z)∈S] + δ) + δ, so (2ε, (1 + e^ε)δ)
        # (the two-step argument of Vadhan 2017, Lemma 2.2, which states the looser 2e^ε·δ)
        try:
            return ApproxDpEvent(2.0 * event.epsilon, (1.0 + math.exp(event.epsilon)) * event.delta, event.steps,
                                 event.cover, event.covers)
        except (PrivacyParameterError, OverflowError) as exc:
            raise _refuse(source, target, f"the converted (epsilon, delta) is invalid ({exc})") from None
    if isinstance(event, CoveredEvent):
        # costs what its cover costs, and the cover is converted with it; the inner event is
        # kept as recorded (informational, never accounted)
        return event
    if isinstance(event, DistributedDiscreteGaussianEvent):
        # Proposition 14's bound is a function of the sensitivities alone: a neighbour at distance
        # two moves the rounded vector by at most twice each bound (triangle inequality)
        return dataclasses.replace(event, l2_sensitivity=2.0 * event.l2_sensitivity,
                                   l1_sensitivity=2.0 * event.l1_sensitivity)
    raise _refuse(source, target, f"unsupported DP event {event!r}")


@functools.lru_cache(maxsize=4096)
def _convert(event: DpEvent, source: str, target: str) -> DpEvent:
    if source == target:
        return event
    if (source, target) in _DOUBLING:
        return _double(event, source, target, 0)
    if target == ZERO_OUT_SILO:
        raise _refuse(
            source,
            target,
            "a record-level guarantee implies nothing useful about a whole silo's data "
            "(no implication)",
        )
    # replace-record -> add-remove-record
    raise _refuse(
        source,
        target,
        "replace-one neighbours are not add/remove neighbours, so a replace-record guarantee "
        "implies no add/remove guarantee (no implication)",
    )


def convert(event: DpEvent, *, source: str, target: str) -> DpEvent:
    """``event`` (valid under ``source``) rewritten as a valid event under ``target``.

    The result is never optimistic: its ε is at least the original's at every δ (see the module
    docstring for the reasoning: sensitivity doubling / group privacy of size 2).

    * same relation: ``event`` itself;
    * zero-out-silo → add-remove-record or replace-record, and add-remove-record →
      replace-record: ``GaussianEvent(z, 1, T) → GaussianEvent(z/2, 1, T)``,
      ``LaplaceEvent(ε, T) → LaplaceEvent(2ε, T)``, compositions element-wise;
    * everything else is refused.

    Raises:
        PrivacyError: the conversion has no sound form (a Poisson-subsampled Gaussian whose
            relation would change, a record relation to zero-out-silo, replace-record to
            add-remove-record); the message names both relations.
        PrivacyParameterError: an unknown relation.
    """
    src, dst = _check(source), _check(target)
    if not isinstance(event, DpEvent) or type(event) is DpEvent:
        raise PrivacyError(f"not a fedsilo DP event: {event!r}")
    return _convert(event, src, dst)


def composition_target(relations: Iterable[str]) -> str:
    """The relation a dataset's releases are composed under, given the relations present.

    * all the same → that relation;
    * zero-out-silo and one record relation → that record relation (a silo-level event is
      converted to it; the report then states record level);
    * replace-record together with add-remove-record (with or without zero-out-silo) →
      replace-record.

    The target is chosen so that every conversion to it is one :func:`convert` can make when the
    events allow it; converting may still refuse (e.g. a subsampled Gaussian).

    Raises:
        PrivacyParameterError: an unknown relation, or no relation at all.
    """
    present = {_check(r) for r in relations}
    if not present:
        raise PrivacyParameterError("no relation given: a composition target needs at least one release")
    if REPLACE_RECORD in present:
        return REPLACE_RECORD
    if ADD_REMOVE_RECORD in present:
        return ADD_REMOVE_RECORD
    return ZERO_OUT_SILO


def to_composition_target(
    releases: Iterable[tuple[DpEvent, str]],
) -> tuple[str | None, tuple[DpEvent, ...]]:
    """Convert every ``(event, relation)`` of one dataset to the dataset's composition target.

    Returns:
        ``(target, events)``: the target (``None`` for no release) and each event converted to
        it, in order; compose ``events`` to get the dataset's ε under ``target``.

    Raises:
        PrivacyError: some event cannot be converted to the target (the message names both
            relations); nothing may then be composed as if the relations were one.
        PrivacyParameterError: an unknown relation.
    """
    items = list(releases)
    if not items:
        return None, ()
    target = composition_target(r for _, r in items)
    return target, tuple(convert(e, source=r, target=target) for e, r in items)
