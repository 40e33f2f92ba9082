"""Federated statistics: counts, sums, means and histograms of columns across silos.

Each silo encodes its local statistics on a fixed-point grid, adds its share of **discrete
Gaussian** noise on that grid, encrypts the vector (Paillier by default: exact integer sums) and
sends only the ciphertext. The aggregator (no key) adds the ciphertexts; the silos, as key
holders, decrypt only the noised sum. Noise is therefore in the aggregate *before* anything is
decrypted, and each silo's ledger is charged before its ciphertext leaves it. The two-phase
round, dropout top-ups and colluder-robust share sizing are those of
:mod:`.secure_aggregation`.

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
can make — its share with all ``silos`` present, or the smallest top-up after one dropout — has
``σ/g >= MIN_SHARE_STEPS`` (3), and raises :class:`~fedsilo.errors.ConfigError` if that needs a
grid finer than :data:`FINEST_GRANULARITY`. Counts may therefore live on a finer grid than 1
(the decrypted value is ``count + noise`` on that grid); the silos check again at every draw.

Released answers are post-processed (free under DP): counts and histogram counts rounded to
integers and clamped at 0, means computed from the released sum and count (count clamped at
``>= 1``) and clipped to the range. The decrypted values are kept unchanged under ``raw`` for
unbiased aggregation (:func:`raw_statistics`).

Without DP, values are not clipped (ranges are then only needed for histograms) and the result
is exact up to the backend's fixed-point precision.
"""
from __future__ import annotations

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
    aggregator_key_ceremony,
    aggregator_secure_sum,
    ledger_recipient,
    recipients_mechanism,
    share_parties,
    silo_key_ceremony,
    silo_secure_sum,
    topup_parties,
)

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
]

def exposure_colluders(plan: StatisticsPlan) -> int:
    """Curious silos no decrypted sum may let pool down to one silo's exact statistics: the
    plan's ``colluders`` under DP, one (a silo subtracting its own) without DP — never more
    than the other silos (a one-silo job has none)."""
    return max(0, min(max(1, plan.colluders), plan.silos - 1))


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
    :func:`~.secure_aggregation.silo_secure_sum`. Returns ``{"status", "reason", "charged",
    "contributors", "statistics", "raw"}`` (``statistics``: post-processed answers of
    :func:`finalize_statistics`; ``raw``: the decrypted values, :func:`raw_statistics`).

    Raises:
        ConfigError: the plan was sized for fewer silos than the job has, or the backend's
            fixed-point precision is coarser than the plan's noise grid.
    """
    if len(silos) > plan.silos:
        raise ConfigError(
            f"silo {channel.party!r}: the statistics plan sized its noise grids for {plan.silos} silos "
            f"but the job has {len(silos)}; plan with silos={len(silos)}"
        )
    event = plan.event()
    if event is not None and (ledger is None or dataset is None):
        raise ConfigError(f"silo {channel.party!r}: a DP statistics job needs the silo's ledger and dataset")
    be = get_backend(backend, **dict(backend_params))
    require_confidential(be, insecure=insecure, who=f"silo {channel.party!r}")
    check_encoding(plan, be)
    secret = silo_key_ceremony(channel, be, silos=silos, aggregator=aggregator, timeout=timeout)
    public = secret.public()
    values = local_statistics(frame, plan)
    rng = secure_rng(noise_seed)

    def contribute(present: int) -> np.ndarray:
        if event is None:
            return values
        parties = share_parties(present=present, colluders=plan.colluders)
        return values + _noise(plan, lambda s: noise_share_sigma(sigma=s, parties=parties), rng)

    def topup(present: int, contributors: int) -> np.ndarray:
        if event is None:
            return np.zeros(plan.size)
        parties, now = topup_parties(present=present, contributors=contributors, colluders=plan.colluders)
        return _noise(plan, lambda s: noise_share_topup_sigma(sigma=s, parties=parties, present=now), rng)

    charge = None
    if event is not None:
        assert ledger is not None and dataset is not None

        def charge() -> Any:
            return ledger.charge(
                dataset, event, job=job, round=1, protocol=PROTOCOL,
                mechanism={**plan.mechanism(), **recipients_mechanism(silos, aggregator=aggregator)},
                recipient=ledger_recipient(silos), relation=ADD_REMOVE_RECORD,
            )

    outcome = silo_secure_sum(
        channel,
        round=1,
        aggregator=aggregator,
        backend=be,
        secret=secret,
        public=public,
        contribution=Contribution(values=contribute, topup=topup, charge=charge),
        timeout=3 * timeout + 60.0,
        drop=drop,
        allow_exposed=allow_exposed,
        colluders=exposure_colluders(plan),
    )
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
) -> dict[str, Any]:
    """The aggregator of a statistics job: adds ciphertexts, holds no key."""
    be = get_backend(backend, **dict(backend_params))
    public = aggregator_key_ceremony(channel, be, silos=silos, timeout=3 * timeout + 60.0)
    out = aggregator_secure_sum(
        channel, round=1, silos=silos, backend=be, public=public, min_silos=min_silos, colluders=colluders,
        timeout=timeout, allow_exposed=allow_exposed,
    )
    return {
        "status": out.status,
        "contributors": list(out.contributors),
        "failures": list(out.failures),
        "withdrawn": list(out.withdrawn),
        "reason": out.reason,
    }
