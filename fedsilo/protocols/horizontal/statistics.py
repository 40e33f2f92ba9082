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

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contextlib import nullcontext
import numpy as np
import pandas as pd

from fedsilo.crypto.base import CryptoBackend
from fedsilo.crypto.registry import get_backend, get_backend_class
from fedsilo.errors import ConfigError, DataError, NotEnoughSilosError, ProtocolError
from fedsilo.privacy.accounting import epsilon as _epsilon
from fedsilo.privacy.accounting import noise_multiplier as _noise_multiplier
from fedsilo.privacy.events import GaussianEvent
from fedsilo.protocols.ledgers import job_ledgers
from fedsilo.privacy.ledger import PrivacyLedger
from fedsilo.privacy.relations import ADD_REMOVE_RECORD
from fedsilo.privacy.mechanisms import discrete_gaussian, noise_share_sigma, noise_share_topup_sigma, secure_rng
from fedsilo.protocols.channel import Channel, InProcessHub, run_parties
from fedsilo.protocols.policy import require_confidential
from fedsilo.protocols.horizontal.secure_aggregation import (
    Contribution,
    aggregator_key_ceremony,
    aggregator_secure_sum,
    check_federation,
    exposed_sums_allowed,
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
    "simulate_statistics",
]

QUERIES: tuple[str, ...] = ("count", "sum", "mean", "histogram")
PROTOCOL = "federated-statistics"
AGGREGATOR = "aggregator"
#: Coarsest fixed-point grid of sums: 2**-16 (values are rounded to it before noise is added).
#: Counts and histograms start from the integer grid 1. Either may be refined, see below.
DEFAULT_GRANULARITY = 2.0**-16
DEFAULT_COLLUDERS = 1
#: Every discrete-Gaussian draw (share or top-up) must be at least this many grid steps wide
#: (Kairouz, Liu & Steinke, ICML 2021, Prop. 14: the sum then is a discrete Gaussian up to
#: terms of ``exp(-2π²·3²·k/(k+1)) <= e^-88``).
MIN_SHARE_STEPS = 3.0
#: Finest grid :func:`plan_statistics` will choose: packed Paillier's default 24 fractional bits
#: (``PaillierBackend.defaults_for("statistics", ...)``) encode every value on it exactly.
FINEST_GRANULARITY = 2.0**-24
#: Neighbouring relation of every statistics release (recorded in the ledger's mechanism).
NEIGHBOURS = "add/remove one record of a silo"


@dataclass(frozen=True, slots=True)
class Release:
    """One released block of the statistics vector."""

    column: str
    query: str  #: "count" | "sum" | "histogram"
    offset: int
    length: int
    sensitivity: float  #: L2 sensitivity (add/remove one record), a multiple of ``granularity``
    granularity: float  #: grid step of the block (a power of two; <= 1 for counts)
    sigma: float  #: total noise std on the aggregate (0 without DP)
    share_sigma: float = 0.0  #: smallest std of one discrete-Gaussian draw (share or top-up)

    @property
    def share_steps(self) -> float:
        """``share_sigma / granularity``: at least :data:`MIN_SHARE_STEPS` under DP."""
        return self.share_sigma / self.granularity


@dataclass(frozen=True)
class StatisticsPlan:
    """The public layout of the statistics vector and its noise (identical in every silo).

    ``silos`` is the number of silos the noise grids were sized for; a job with more silos
    (or a ``present`` count above it) is refused.
    """

    columns: tuple[str, ...]
    queries: tuple[str, ...]
    bins: int
    ranges: Mapping[str, tuple[float, float]]
    releases: tuple[Release, ...]
    noise_multiplier: float | None
    delta: float | None
    accountant: str
    colluders: int
    silos: int

    @property
    def size(self) -> int:
        return sum(r.length for r in self.releases)

    def event(self) -> GaussianEvent | None:
        """What the whole statistics job costs a contributing silo."""
        if self.noise_multiplier is None:
            return None
        return GaussianEvent(self.noise_multiplier, 1.0, len(self.releases))

    def mechanism(self) -> dict[str, Any]:
        return {
            "name": "discrete-gaussian-shares",
            "neighbours": NEIGHBOURS,
            "noise_multiplier": self.noise_multiplier,
            "colluders": self.colluders,
            "silos": self.silos,
            "releases": [
                {
                    "column": r.column, "query": r.query, "sensitivity": r.sensitivity, "sigma": r.sigma,
                    "granularity": r.granularity, "share_steps": r.share_steps,
                }
                for r in self.releases
            ],
        }


def _grid_ceil(value: float, granularity: float) -> float:
    return math.ceil(value / granularity) * granularity


def smallest_share_sigma(*, sigma: float, silos: int, colluders: int) -> float:
    """Smallest std of any discrete-Gaussian draw one silo can make for a release of std ``sigma``.

    A share is ``σ/sqrt(n − colluders)`` for ``n <= silos`` present silos (smallest at
    ``n = silos``). A top-up after ``n − k`` of ``n`` announced silos dropped is
    ``sqrt(σ²/(k − c) − σ²/(n − c))`` (:func:`~fedsilo.privacy.mechanisms.noise_share_topup_sigma`),
    smallest at ``n = silos``, ``k = silos − 1``: ``σ/sqrt((silos − 1 − c)(silos − c))``; it exists
    only when ``silos − 1 >= c + 1`` contributors can still be decrypted.
    """
    parties = share_parties(present=silos, colluders=colluders)
    smallest = noise_share_sigma(sigma=sigma, parties=parties)
    if silos - 1 - colluders >= 1:
        before, after = topup_parties(present=silos, contributors=silos - 1, colluders=colluders)
        smallest = min(smallest, noise_share_topup_sigma(sigma=sigma, parties=before, present=after))
    return smallest


def _choose_grid(
    *, column: str, query: str, coarsest: float, z: float, bound: float | None, silos: int, colluders: int
) -> tuple[float, float, float]:
    """``(granularity, sensitivity, share_sigma)`` of one DP release: the coarsest power-of-two
    grid ``<= coarsest`` on which every share is at least :data:`MIN_SHARE_STEPS` steps wide.

    ``bound`` is ``M`` for a sum (sensitivity ``M`` rounded up to the grid), ``None`` for counts
    and histograms (sensitivity 1, a multiple of every grid ``<= 1``).
    """
    g = coarsest
    while True:
        sens = 1.0 if bound is None else _grid_ceil(bound, g)
        share = smallest_share_sigma(sigma=z * sens, silos=silos, colluders=colluders)
        if share / g >= MIN_SHARE_STEPS:
            return g, sens, share
        if g / 2 < FINEST_GRANULARITY:
            raise ConfigError(
                f"statistics {column}.{query}: noise shares of std {share:.3g} over {silos} silos "
                f"(colluders {colluders}) are narrower than {MIN_SHARE_STEPS:g} steps of the finest grid "
                f"{FINEST_GRANULARITY:g}, so their sum would not be the discrete Gaussian the accountant "
                "assumes; lower epsilon or widen the column's range"
            )
        g /= 2


def plan_statistics(
    *,
    columns: Sequence[str],
    queries: Sequence[str],
    bins: int,
    ranges: Mapping[str, Sequence[float]],
    privacy: Mapping[str, Any] | None,
    silos: int,
    granularity: float = DEFAULT_GRANULARITY,
) -> StatisticsPlan:
    """Validate the request and lay out the releases (pure; every silo computes the same plan).

    Args:
        columns, queries, bins, ranges, privacy: the ``[statistics]`` and ``[privacy]`` tables.
        silos: number of silos in the job: the noise grids are sized so that every share and
            top-up any of them can draw is at least :data:`MIN_SHARE_STEPS` grid steps wide.
        granularity: coarsest grid of sums (a power of two; default ``2**-16``).

    Raises:
        ConfigError: unknown query, no columns, a histogram or a DP sum/mean without a range,
            a bad range, bin count, silo count or granularity, fewer silos than
            ``colluders + 1``, or a release whose noise shares cannot be made
            :data:`MIN_SHARE_STEPS` steps wide on a grid no finer than :data:`FINEST_GRANULARITY`.
    """
    cols = tuple(dict.fromkeys(columns))
    if not cols:
        raise ConfigError("statistics.columns must name at least one column")
    qs = tuple(dict.fromkeys(queries))
    unknown = [q for q in qs if q not in QUERIES]
    if unknown or not qs:
        raise ConfigError(f"statistics.queries must be among {', '.join(QUERIES)}, got {list(queries)!r}")
    if not (isinstance(bins, int) and bins >= 1):
        raise ConfigError(f"statistics.bins must be an integer >= 1, got {bins!r}")
    if isinstance(silos, bool) or not isinstance(silos, int) or silos < 1:
        raise ConfigError(f"a statistics job needs an integer number of silos >= 1, got {silos!r}")
    if (
        isinstance(granularity, bool)
        or not isinstance(granularity, (int, float))
        or not FINEST_GRANULARITY <= granularity <= 1.0
        or math.frexp(granularity)[0] != 0.5
    ):
        raise ConfigError(f"statistics granularity must be a power of two in [2**-24, 1], got {granularity!r}")
    rng_out: dict[str, tuple[float, float]] = {}
    for c, r in ranges.items():
        if len(r) != 2 or not all(math.isfinite(float(v)) for v in r) or not float(r[0]) < float(r[1]):
            raise ConfigError(f"statistics.range.{c} must be [lo, hi] with lo < hi, got {list(r)!r}")
        rng_out[c] = (float(r[0]), float(r[1]))
    dp = privacy is not None
    primitives: list[str] = []
    if "count" in qs or "mean" in qs:
        primitives.append("count")
    if "sum" in qs or "mean" in qs:
        primitives.append("sum")
    if "histogram" in qs:
        primitives.append("histogram")
    for c in cols:
        if c not in rng_out and ("histogram" in primitives or (dp and "sum" in primitives)):
            need = "histogram" if "histogram" in primitives else "a DP sum/mean (it bounds each record's contribution)"
            raise ConfigError(f"statistics.range.{c} is required for {need}")
    blocks = [(c, q, bins if q == "histogram" else 1) for c in cols for q in primitives]
    z: float | None = None
    delta: float | None = None
    accountant = "rdp"
    colluders = 0
    if dp:
        assert privacy is not None
        delta = float(privacy.get("delta", 1e-5))
        accountant = str(privacy.get("accountant", "rdp"))
        colluders = privacy.get("colluders", DEFAULT_COLLUDERS)
        if isinstance(colluders, bool) or not isinstance(colluders, int) or colluders < 1:
            raise ConfigError(
                f"privacy.colluders must be an integer >= 1 (each silo knows its own noise share and sees "
                f"the decrypted sum), got {colluders!r}"
            )
        if silos < colluders + 1:
            raise ConfigError(f"{silos} silo(s) cannot tolerate {colluders} colluding key holder(s): need at least {colluders + 1}")
        z = _noise_multiplier(
            target_epsilon=float(privacy["epsilon"]), delta=delta, sample_rate=1.0, steps=len(blocks), accountant=accountant
        )
    releases: list[Release] = []
    offset = 0
    for c, q, length in blocks:
        coarsest = float(granularity) if q == "sum" else 1.0
        if z is None:
            releases.append(Release(c, q, offset, length, 0.0, coarsest, 0.0))
        else:
            bound = max(abs(v) for v in rng_out[c]) if q == "sum" else None
            g, sens, share = _choose_grid(
                column=c, query=q, coarsest=coarsest, z=z, bound=bound, silos=silos, colluders=colluders
            )
            releases.append(Release(c, q, offset, length, sens, g, z * sens, share))
        offset += length
    return StatisticsPlan(cols, qs, bins, rng_out, tuple(releases), z, delta, accountant, colluders, silos)


def local_statistics(frame: pd.DataFrame, plan: StatisticsPlan) -> np.ndarray:
    """This silo's statistics vector in the plan's layout (stays inside the silo).

    Under DP, values are clipped to their range and sums rounded to the grid (so the noise on
    the grid hides them exactly); without DP, sums are of the raw values.
    """
    out = np.zeros(plan.size)
    dp = plan.noise_multiplier is not None
    for r in plan.releases:
        if r.column not in frame.columns:
            raise DataError(f"column {r.column!r} is missing (columns: {', '.join(map(str, frame.columns))})")
        values = pd.to_numeric(frame[r.column], errors="coerce").to_numpy(dtype=np.float64)
        if np.isinf(values).any():
            raise DataError(f"column {r.column!r} contains infinite values")
        values = values[~np.isnan(values)]
        if r.query == "count":
            out[r.offset] = float(values.size)
        elif r.query == "sum":
            if dp:
                lo, hi = plan.ranges[r.column]
                clipped = np.clip(values, lo, hi)
                out[r.offset] = float(np.sum(np.round(clipped / r.granularity) * r.granularity))
            else:
                out[r.offset] = float(np.sum(values))
        else:
            lo, hi = plan.ranges[r.column]
            counts, _ = np.histogram(np.clip(values, lo, hi), bins=plan.bins, range=(lo, hi))
            out[r.offset : r.offset + r.length] = counts
    return out


def _noise(plan: StatisticsPlan, sigma_of: Callable[[float], float], rng: np.random.Generator) -> np.ndarray:
    """One discrete-Gaussian draw per DP release; refuses a draw narrower than the plan allows."""
    out = np.zeros(plan.size)
    for r in plan.releases:
        s = sigma_of(r.sigma)
        if s > 0:
            if s / r.granularity < MIN_SHARE_STEPS:
                raise ProtocolError(
                    f"statistics {r.column}.{r.query}: a noise draw of std {s:.3g} is narrower than "
                    f"{MIN_SHARE_STEPS:g} steps of its grid {r.granularity:g}; refusing to release"
                )
            out[r.offset : r.offset + r.length] = discrete_gaussian(sigma=s, size=r.length, rng=rng, granularity=r.granularity)
    return out


def raw_statistics(total: np.ndarray, plan: StatisticsPlan) -> dict[str, dict[str, Any]]:
    """The decrypted (noised) aggregate per column and released block, unchanged.

    ``{column: {"count": x, "sum": y, "histogram": [...]}}`` with only the blocks the plan
    released. Under DP these are unbiased (the noise has mean 0) and may be negative or
    fractional (counts live on their grid, see :class:`Release`); use them to aggregate
    further, e.g. to add histograms of several jobs.
    """
    out: dict[str, dict[str, Any]] = {c: {} for c in plan.columns}
    for r in plan.releases:
        block = np.asarray(total[r.offset : r.offset + r.length], dtype=np.float64)
        out[r.column][r.query] = block.tolist() if r.query == "histogram" else float(block[0])
    return out


def finalize_statistics(total: np.ndarray, plan: StatisticsPlan) -> dict[str, dict[str, Any]]:
    """Per-column answers from the decrypted (noised) aggregate, post-processed.

    Post-processing costs no privacy (Dwork & Roth 2014, Prop. 2.1). Under DP: counts and
    histogram counts are rounded to integers and clamped at 0; the mean is the released sum
    divided by the released count clamped at ``>= 1``, clipped to the column's range; sums are
    returned as decrypted. Without DP the answers are exact (a column with no values has mean
    NaN). :func:`raw_statistics` returns the unprocessed values.
    """
    raw = raw_statistics(total, plan)
    dp = plan.noise_multiplier is not None

    def count(value: float) -> float:
        return float(max(0.0, np.round(value))) if dp else float(value)

    out: dict[str, dict[str, Any]] = {c: {} for c in plan.columns}
    for c in plan.columns:
        if "count" in plan.queries:
            out[c]["count"] = count(raw[c]["count"])
        if "sum" in plan.queries:
            out[c]["sum"] = float(raw[c]["sum"])
        if "mean" in plan.queries:
            n = count(raw[c]["count"])
            if dp:
                lo, hi = plan.ranges[c]
                out[c]["mean"] = float(np.clip(raw[c]["sum"] / max(1.0, n), lo, hi))
            else:
                out[c]["mean"] = raw[c]["sum"] / n if n >= 1 else float("nan")
        if "histogram" in plan.queries:
            lo, hi = plan.ranges[c]
            out[c]["histogram"] = {
                "edges": np.linspace(lo, hi, plan.bins + 1).tolist(),
                "counts": [count(v) for v in raw[c]["histogram"]],
            }
    return out


def check_encoding(plan: StatisticsPlan, backend: CryptoBackend) -> None:
    """Refuse an exact backend whose fixed-point step is coarser than a DP release's grid.

    An exact backend (Paillier) rounds every value to ``2**-precision``, twice its documented
    ``error_bound``; noise on a finer grid would be rounded off it. Approximate backends (CKKS)
    keep no value on any grid: their decryption error (``info().error_bound``) comes on top of
    the discrete noise, see ``docs/horizontal.md``.

    Raises:
        ConfigError: an exact backend cannot carry the plan's finest grid.
    """
    grids = [r.granularity for r in plan.releases if r.sigma > 0]
    info = backend.info()
    if not grids or not info.exact or info.error_bound == 0.0:
        return
    step = 2.0 * info.error_bound
    finest = min(grids)
    if step > finest:
        bits = 1 - math.frexp(finest)[1]
        raise ConfigError(
            f"the {info.name} backend rounds values to a {step:g} grid but the statistics plan needs a "
            f"{finest:g} grid (2^-{bits}) for its noise; set its precision to at least {bits} fractional bits"
        )


def exposure_colluders(plan: StatisticsPlan) -> int:
    """Curious silos no decrypted sum may let pool down to one silo's exact statistics: the
    plan's ``colluders`` under DP, one (a silo subtracting its own) without DP."""
    return max(1, plan.colluders)


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


def simulate_statistics(
    *,
    silos: Mapping[str, pd.DataFrame],
    columns: Sequence[str],
    queries: Sequence[str],
    bins: int,
    ranges: Mapping[str, Sequence[float]],
    privacy: Mapping[str, Any] | None,
    ledger_dir: Path | None,
    budgets: Mapping[str, tuple[float, float]],
    job: str,
    backend_params: Mapping[str, Any],
    noise_seed: int | None = None,
    backend: str = "paillier",
    min_silos: int = 2,
    round_timeout: float = 120.0,
    faults: Mapping[str, str] | None = None,
    insecure: bool = False,
) -> dict[str, Any]:
    """Run a federated-statistics job in-process with the production party functions.

    ``insecure`` (``[crypto] insecure``) alone allows a sum of two silos, from which each would
    compute the other's statistics (DP statistics protect records, not a whole silo).
    ``noise_seed``: **tests only** (reproducible noise; the results say ``"private": False``).

    Returns:
        ``{"task": "statistics", "backend", "statistics": {column: {count, sum, mean,
        histogram: {edges, counts}}} (post-processed, :func:`finalize_statistics`), "raw":
        {column: {count, sum, histogram}} (the decrypted noised values), "silos":
        [contributors], "epsilon": {silo: {epsilon, delta}} (None without DP), "dp":
        {noise_multiplier, releases, delta, accountant, colluders, sigma: {"column.query": σ},
        granularity: {"column.query": g}} | None, "bytes_sent": {party: bytes}}``.

    Raises:
        NotEnoughSilosError: fewer than ``min_silos`` silos contributed; nothing was decrypted.
        ConfigError: invalid request (see :func:`plan_statistics`) or backend parameters.
    """
    names = list(silos)
    if AGGREGATOR in names:
        raise ConfigError(f"a silo may not be named {AGGREGATOR!r}")
    plan = plan_statistics(
        columns=columns, queries=queries, bins=bins, ranges=ranges, privacy=privacy, silos=len(names)
    )
    # each sum holds every silo's contribution plus its top-up share
    params = get_backend_class(backend).params_for("statistics", summands=2 * len(names), params=backend_params)
    check_encoding(plan, get_backend(backend, **params))  # before any ledger is touched
    allow_exposed = exposed_sums_allowed(insecure=insecure, silo_level_dp=False)
    check_federation(silos=names, allow_exposed=allow_exposed, colluders=exposure_colluders(plan))
    # Noise comes from the OS CSPRNG; a noise_seed (tests only) makes it reproducible and the
    # run not private (results and ledger entries say so).
    seeds: list[int | None] = (
        [int(s.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)) for s in np.random.SeedSequence(int(noise_seed)).spawn(len(names))]
        if noise_seed is not None
        else [None] * len(names)
    )
    hub = InProcessHub(job, [*names, AGGREGATOR])
    parties: dict[str, Callable[[Channel], Any]] = {
        AGGREGATOR: lambda ch: statistics_aggregator(
            ch, silos=names, backend=backend, backend_params=params, min_silos=min_silos,
            colluders=exposure_colluders(plan), timeout=round_timeout, allow_exposed=allow_exposed,
        )
    }
    for n, s in zip(names, seeds):
        parties[n] = lambda ch, n=n, s=s: statistics_silo(
            ch, job=job, silos=names, aggregator=AGGREGATOR, frame=silos[n], plan=plan, backend=backend,
            backend_params=params, ledger=ledgers.get(n), dataset=n,
            noise_seed=s,
            timeout=round_timeout, drop=(faults or {}).get(n), allow_exposed=allow_exposed, insecure=insecure,
        )
    opened = (
        job_ledgers(ledger_dir, parties=names, budgets=budgets, accountant=plan.accountant,
                    reproducible_noise=noise_seed is not None)
        if privacy is not None
        else nullcontext({})
    )
    with opened as ledgers:
        results = run_parties(hub, parties)
    agg = results[AGGREGATOR]
    if agg["status"] != "ok":
        raise NotEnoughSilosError(agg["reason"])
    first = next(n for n in names if results[n]["statistics"] is not None)
    answer, raw = results[first]["statistics"], results[first]["raw"]
    eps: dict[str, dict[str, float | None]] = {}
    ev = plan.event()
    for n in names:
        if ev is None:
            eps[n] = {"epsilon": None, "delta": None}
        else:
            assert plan.delta is not None
            e = _epsilon(ev, delta=plan.delta, accountant=plan.accountant) if results[n]["charged"] else 0.0
            eps[n] = {"epsilon": e, "delta": plan.delta}
    dp = None
    if ev is not None:
        dp = {
            "noise_multiplier": plan.noise_multiplier,
            "releases": len(plan.releases),
            "delta": plan.delta,
            "accountant": plan.accountant,
            "colluders": plan.colluders,
            "sigma": {f"{r.column}.{r.query}": r.sigma for r in plan.releases},
            "granularity": {f"{r.column}.{r.query}": r.granularity for r in plan.releases},
        }
    return {
        "task": "statistics",
        "backend": backend,
        "private": noise_seed is None and not insecure,
        "statistics": answer,
        "raw": raw,
        "silos": agg["contributors"],
        "epsilon": eps,
        "dp": dp,
        "bytes_sent": {p: int(b) for p, b in hub.bytes_sent().items()},
        "notes": (
            ["NOT PRIVATE: noise_seed was set (test-only); anyone with the seed can regenerate the noise"]
            if noise_seed is not None
            else []
        ),
    }
