"""Federated statistics: counts, sums, means and histograms of columns across silos.

Each silo encodes its local statistics on a fixed-point grid, adds its share of **discrete
Gaussian** noise on that grid and puts the vector into one secure sum, the session the backend's
key model selects (:mod:`.sums`; no code here names a backend):

* **shared key** (Paillier by default: exact integer sums): the silo encrypts the vector and
  sends only the ciphertext; the aggregator (no key) adds the ciphertexts and the silos, as key
  holders, decrypt only the noised sum. The two-phase round, dropout top-ups and colluder-robust
  share sizing are those of :mod:`.secure_aggregation`.
* **keyless** (SecAgg+ masking, :mod:`.secagg`): the silo masks the vector; the aggregator
  unmasks only the sum of at least the session's quorum of masked vectors and sends it to every
  silo. Each share is drawn once, sized for that quorum (:attr:`StatisticsPlan.quorum`), so no
  top-up round exists; a silo that drops after its masked vector is recovered from the others'
  shares, one that drops before it is left out, and below the quorum (or SecAgg's threshold)
  the round aborts before anything is unmasked.

Either way the noise is in the aggregate *before* anything is decrypted or unmasked, and each
silo's ledger is charged before its ciphertext or masked vector leaves it.

Releases and their sensitivity (neighbouring datasets: add or remove one record of a silo;
values clipped to the public ``range`` ``[lo, hi]`` of the column, ``M = max(|lo|, |hi|)``):

=============  ==================================  ===================
query          released vector                      L2 sensitivity
=============  ==================================  ===================
``count``      number of non-missing values         1
``sum``        sum of clipped values (grid ``g``)   ``M`` rounded up to the grid
``histogram``  ``bins`` counts over ``[lo, hi]``    1 (one bin moves)
``mean``       ``sum / count`` (post-processing of the two releases above)
=============  ==================================  ===================

With ``k`` releases, each gets noise ``σ_i = z · Δ_i`` with ``z`` from
:func:`fedsilo.privacy.accounting.noise_multiplier` for ``k`` steps at the target ε, so the whole
job costs exactly ``GaussianEvent(z, 1.0, k)``. The discrete Gaussian has the same Rényi curve
as the continuous one (Canonne, Kamath & Steinke, NeurIPS 2020), but a *sum* of discrete
Gaussian shares is only close to a discrete Gaussian when every share is wide next to the grid:
Kairouz, Liu & Steinke (ICML 2021, "The Distributed Discrete Gaussian Mechanism") bound the gap
by terms ``~ exp(−2π² (σ_share/g)² · k/(k+1))``, about ``e^-89`` at ``σ_share/g = 3`` but
``e^-6`` at ``0.78`` (counts on the integer grid, ε = 8 over 3 releases, 3 silos). So
:func:`plan_statistics` chooses each release's grid ``g`` (a power of two: at most 1 for counts
and histograms, at most ``granularity`` for sums) so that **every** discrete-Gaussian draw a silo
can make — its share with all ``silos`` present, or the smallest top-up after one dropout; under
a keyless sum its one share sized for the quorum — has ``σ/g >= MIN_SHARE_STEPS`` (3), and
raises :class:`~fedsilo.errors.ConfigError` if that needs a grid finer than
:data:`FINEST_GRANULARITY`. Counts may therefore live on a finer grid than 1
(the decrypted value is ``count + noise`` on that grid); the silos check again at every draw.

Released answers are post-processed (free under DP): counts and histogram counts rounded to
integers and clamped at 0, means computed from the released sum and count (count clamped at
``>= 1``) and clipped to the range. The decrypted values are kept unchanged under ``raw`` for
unbiased aggregation (:func:`raw_statistics`).

Without DP, values are not clipped (ranges are then only needed for histograms) and the result
is exact up to the backend's fixed-point precision.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from fedsilo.crypto.registry import get_backend
from fedsilo.errors import ConfigError
from fedsilo.privacy.ledger import PrivacyLedger
from fedsilo.privacy.relations import ADD_REMOVE_RECORD
from fedsilo.privacy.mechanisms import noise_share_sigma, noise_share_topup_sigma, secure_rng
from fedsilo.protocols.channel import Channel
from fedsilo.protocols.policy import require_confidential
from fedsilo.protocols.horizontal.statistics_plan import (  # the planning maths, re-exported
    FINEST_GRANULARITY,
    MIN_SHARE_STEPS,
    PROTOCOL,
    QUERIES,
    Release,
    StatisticsPlan,
    _noise,
    check_encoding,
    finalize_statistics,
    local_statistics,
    plan_statistics,
    raw_statistics,
    smallest_share_sigma,
)
from fedsilo.protocols.horizontal.secure_aggregation import (
    Contribution,
    ledger_recipient,
    recipients_mechanism,
    share_parties,
    topup_parties,
)
from fedsilo.protocols.horizontal.sums import SumPlan, open_aggregator_sum, open_silo_sum, plan_sums

__all__ = [
    "QUERIES",
    "Release",
    "StatisticsPlan",
    "MIN_SHARE_STEPS",
    "FINEST_GRANULARITY",
    "plan_statistics",
    "smallest_share_sigma",
    "local_statistics",
    "raw_statistics",
    "finalize_statistics",
    "check_encoding",
    "statistics_silo",
    "statistics_aggregator",
    "exposure_colluders",
    "coalition_size",
]


def coalition_size(*, colluders: int, silos: int) -> int:
    """Curious silos no released sum may let pool down to one silo's exact statistics:
    ``colluders`` under DP (``[privacy] colluders``; pass 0 without DP), at least one (a silo
    subtracting its own), never more than the other silos (a one-silo job has none)."""
    return max(0, min(max(1, int(colluders)), int(silos) - 1))


def exposure_colluders(plan: StatisticsPlan) -> int:
    """:func:`coalition_size` of a plan: its ``colluders`` under DP, one without DP."""
    return coalition_size(colluders=plan.colluders, silos=plan.silos)


def _check_quorum(who: str, plan: StatisticsPlan, sums: SumPlan) -> None:
    """Refuse a statistics plan whose noise shares were sized for another session than ``sums``:
    a shared-key plan sizes shares and top-ups for the announced silos, a keyless one a single
    share for the session's quorum (the fewest contributions a released sum holds)."""
    if not sums.keyless:
        if plan.quorum is not None:
            raise ConfigError(
                f"{who}: the statistics plan drew its noise shares once for a keyless sum's quorum of {plan.quorum}, "
                "but this backend runs the two-phase round (shares and top-ups); plan with quorum=None"
            )
        return
    if plan.quorum is None and plan.event() is not None:
        raise ConfigError(
            f"{who}: the statistics plan sized its noise shares for the two-phase round of a shared-key backend, "
            f"but this backend is keyless (one share per silo, no top-up); plan with quorum={sums.quorum} "
            "(plan_sums(...).quorum)"
        )
    if plan.quorum is not None and plan.quorum != sums.quorum:
        raise ConfigError(
            f"{who}: the statistics plan drew its noise shares for a quorum of {plan.quorum} contributions but "
            f"this secure sum releases sums of at least {sums.quorum}; plan with quorum={sums.quorum}"
        )


def _recipients(sums: SumPlan, silos: Sequence[str], aggregator: str) -> tuple[str, dict[str, Any]]:
    """The ledger's ``recipient`` and the mechanism's recipient fields of the released sum.

    Shared key: the silos decrypt it, the aggregator only relays ciphertexts. Keyless: the
    aggregator unmasks the (noised) sum itself before sending it to the silos, so it is a
    recipient too."""
    return (ledger_recipient(silos, keyless=sums.keyless, aggregator=aggregator),
            recipients_mechanism(silos, aggregator=aggregator, keyless=sums.keyless))


def statistics_silo(
    channel: Channel,
    *,
    job: str,
    silos: Sequence[str],
    aggregator: str,
    frame: pd.DataFrame,
    plan: StatisticsPlan,
    backend: str,
    backend_params: Mapping[str, Any],
    ledger: PrivacyLedger | None = None,
    dataset: str | None = None,
    noise_seed: int | None = None,
    timeout: float = 120.0,
    drop: str | None = None,
    allow_exposed: bool = False,
    insecure: bool = False,
) -> dict[str, Any]:
    """One silo of a federated-statistics job; returns the released answers (or why not).

    ``noise_seed=None`` (production) draws noise from the OS's secure randomness (256 bits,
    :func:`~fedsilo.privacy.mechanisms.secure_rng`). ``drop`` is the test hook of
    :meth:`~.sums.SiloSum.sum` (``"hello" | "update" | "topup"``). Returns ``{"status", "reason",
    "charged", "contributors", "statistics", "raw"}`` (``statistics``: post-processed answers of
    :func:`finalize_statistics`; ``raw``: the decrypted or unmasked values, :func:`raw_statistics`).

    Raises:
        ConfigError: the plan was sized for fewer silos than the job has, for another key model
            or quorum than this backend's session (:func:`~.sums.plan_sums`), or the backend's
            fixed-point precision is coarser than the plan's noise grid.
    """
    who = f"silo {channel.party!r}"
    if len(silos) > plan.silos:
        raise ConfigError(
            f"{who}: the statistics plan sized its noise grids for {plan.silos} silos "
            f"but the job has {len(silos)}; plan with silos={len(silos)}"
        )
    event = plan.event()
    if event is not None and (ledger is None or dataset is None):
        raise ConfigError(f"{who}: a DP statistics job needs the silo's ledger and dataset")
    be = get_backend(backend, **dict(backend_params))
    require_confidential(be, insecure=insecure, who=who)
    check_encoding(plan, be)
    # the plan's quorum already is max(min_silos, colluders + 1[, colluders + 2]) capped at the
    # silos (what plan_sums computes), so planning with it as min_silos gives it back: a silo
    # needs no min_silos of its own, and _check_quorum refuses a plan made for another quorum
    sums_plan = plan_sums(be, silos=silos, min_silos=plan.quorum or 1, colluders=exposure_colluders(plan),
                          allow_exposed=allow_exposed)
    _check_quorum(who, plan, sums_plan)
    # the silo's own data is read before anything leaves it (or any key is made)
    values = local_statistics(frame, plan)
    rng = secure_rng(noise_seed)

    bound = be.info().value_bound

    def contribute(present: int) -> np.ndarray:
        # shared key: ``present`` announced silos; keyless: the session's quorum (checked above)
        if event is None:
            return values
        parties = share_parties(present=present, colluders=plan.colluders)
        drawn: list[float] = []

        def share(sigma: float) -> float:
            drawn.append(noise_share_sigma(sigma=sigma, parties=parties))
            return drawn[-1]

        noise = _noise(plan, share, rng)
        # clamp the local block so that block + noise stays within the backend's value bound
        # unless the noise exceeds 12 of its standard deviations: whether a silo fails must not
        # depend on its data (the error would name it). Clamping is 1-Lipschitz, so the
        # sensitivity is unchanged.
        widest = max(drawn, default=0.0)
        if bound is not None and math.isfinite(bound) and bound > 12.0 * widest:
            return np.clip(values, -(bound - 12.0 * widest), bound - 12.0 * widest) + noise
        return values + noise

    def topup(present: int, contributors: int) -> np.ndarray:
        if event is None:
            return np.zeros(plan.size)
        parties, now = topup_parties(present=present, contributors=contributors, colluders=plan.colluders)
        return _noise(plan, lambda s: noise_share_topup_sigma(sigma=s, parties=parties, present=now), rng)

    charge = None
    if event is not None:
        assert ledger is not None and dataset is not None
        recipient, recipients = _recipients(sums_plan, silos, aggregator)

        def charge() -> Any:
            return ledger.charge(
                dataset, event, job=job, round=1, protocol=PROTOCOL,
                mechanism={**plan.mechanism(), **recipients}, recipient=recipient, relation=ADD_REMOVE_RECORD,
            )

    # noise_seed stays with the statistics' own shares: an exact keyless sum draws no session noise
    sums = open_silo_sum(
        channel, be, plan=sums_plan, aggregator=aggregator, timeout=3 * timeout + 60.0,
        allow_exposed=allow_exposed, colluders=exposure_colluders(plan),
    )
    outcome = sums.sum(round=1, contribution=Contribution(values=contribute, topup=topup, charge=charge),
                       length=plan.size, drop=drop)
    return {
        "status": outcome.status,
        "reason": outcome.reason,
        "charged": outcome.charged,
        "contributors": list(outcome.contributors),
        "statistics": finalize_statistics(outcome.total, plan) if outcome.total is not None else None,
        "raw": raw_statistics(outcome.total, plan) if outcome.total is not None else None,
    }


def statistics_aggregator(
    channel: Channel,
    *,
    silos: Sequence[str],
    backend: str,
    backend_params: Mapping[str, Any],
    min_silos: int,
    colluders: int,
    timeout: float = 120.0,
    allow_exposed: bool = False,
    plan: StatisticsPlan | None = None,
) -> dict[str, Any]:
    """The aggregator of a statistics job: adds ciphertexts (shared key) or unmasks the sum of
    masked vectors (keyless); holds no key either way.

    ``plan``: the job's statistics plan; a keyless session needs it (the vector's length, and the
    quorum the silos' shares were drawn for).

    Raises:
        ConfigError: a keyless backend without ``plan``, or a plan drawn for another quorum than
            this aggregator's sums hold.
    """
    be = get_backend(backend, **dict(backend_params))
    sums_plan = plan_sums(be, silos=silos, min_silos=min_silos, colluders=colluders, allow_exposed=allow_exposed)
    who = f"the aggregator {channel.party!r}"
    if sums_plan.keyless and plan is None:
        raise ConfigError(f"{who} of a keyless secure sum needs the statistics plan (its vector's length)")
    if plan is not None:
        _check_quorum(who, plan, sums_plan)
    sums = open_aggregator_sum(
        channel, be, plan=sums_plan, timeout=3 * timeout + 60.0, round_timeout=timeout, min_silos=min_silos,
        colluders=colluders, allow_exposed=allow_exposed,
    )
    # a shared-key sum adds ciphertexts of whatever length arrives; a keyless one unmasks plan.size words
    out = sums.sum(round=1, silos=silos, length=plan.size if plan is not None else 0)
    return {
        "status": out.status,
        "contributors": list(out.contributors),
        "failures": list(out.failures),
        "withdrawn": list(out.withdrawn),
        "reason": out.reason,
    }
