"""Federated statistics, the maths: which releases a query makes, their noise and grids.

Pure planning functions and the frozen :class:`StatisticsPlan` every party derives from the
same public inputs; the party functions that run a plan are in :mod:`.statistics`, whose module
docstring describes the protocol, the DP calibration and what each party learns.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fedsilo.crypto.base import CryptoBackend
from fedsilo.errors import ConfigError, DataError, ProtocolError
from fedsilo.privacy.accounting import noise_multiplier as _noise_multiplier
from fedsilo.privacy.events import GaussianEvent
from fedsilo.privacy.mechanisms import discrete_gaussian, noise_share_sigma, noise_share_topup_sigma
from fedsilo.protocols.horizontal.secure_aggregation import share_parties, topup_parties
from fedsilo.protocols.spec import PrivacySection, StatisticsSection

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
]

QUERIES: tuple[str, ...] = ("count", "sum", "mean", "histogram")
PROTOCOL = "federated-statistics"
AGGREGATOR = "aggregator"
#: Coarsest fixed-point grid of sums: 2**-16 (values are rounded to it before noise is added).
#: Counts and histograms start from the integer grid 1. Either may be refined, see below.
DEFAULT_GRANULARITY = 2.0**-16
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
    (or a ``present`` count above it) is refused. ``quorum`` is set for a keyless secure sum
    (:mod:`.sums`): each silo draws its share once, for the ``quorum`` contributions every
    released sum holds at least, and there is no top-up; ``None``: the two-phase round's shares
    (sized for the announced silos) and top-ups.
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
    quorum: int | None = None

    @property
    def size(self) -> int:
        return sum(r.length for r in self.releases)

    def event(self) -> GaussianEvent | None:
        """What the whole statistics job costs a contributing silo."""
        if self.noise_multiplier is None:
            return None
        return GaussianEvent(self.noise_multiplier, 1.0, len(self.releases))

    def mechanism(self) -> dict[str, Any]:
        out: dict[str, Any] = {
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
        if self.quorum is not None:
            # shares drawn once for the quorum (keyless sum, no top-up); absent for the two-phase round
            out["quorum"] = self.quorum
        return out


def _grid_ceil(value: float, granularity: float) -> float:
    return math.ceil(value / granularity) * granularity


def smallest_share_sigma(*, sigma: float, silos: int, colluders: int, quorum: int | None = None) -> float:
    """Smallest std of any discrete-Gaussian draw one silo can make for a release of std ``sigma``.

    Two-phase round (``quorum=None``): a share is ``σ/sqrt(n − colluders)`` for ``n <= silos``
    present silos (smallest at ``n = silos``). A top-up after ``n − k`` of ``n`` announced silos
    dropped is ``sqrt(σ²/(k − c) − σ²/(n − c))``
    (:func:`~fedsilo.privacy.mechanisms.noise_share_topup_sigma`), smallest at ``n = silos``,
    ``k = silos − 1``: ``σ/sqrt((silos − 1 − c)(silos − c))``; it exists only when
    ``silos − 1 >= c + 1`` contributors can still be decrypted.

    Keyless sum (``quorum`` set): the only draw is the share sized once for the ``quorum``
    contributions every released sum holds, ``σ/sqrt(quorum − c)``; no top-up exists (a sum
    with more contributors only carries more noise).
    """
    if quorum is not None:
        return noise_share_sigma(sigma=sigma, parties=share_parties(present=quorum, colluders=colluders))
    parties = share_parties(present=silos, colluders=colluders)
    smallest = noise_share_sigma(sigma=sigma, parties=parties)
    if silos - 1 - colluders >= 1:
        before, after = topup_parties(present=silos, contributors=silos - 1, colluders=colluders)
        smallest = min(smallest, noise_share_topup_sigma(sigma=sigma, parties=before, present=after))
    return smallest


def _choose_grid(
    *, column: str, query: str, coarsest: float, z: float, bound: float | None, silos: int, colluders: int,
    quorum: int | None,
) -> tuple[float, float, float]:
    """``(granularity, sensitivity, share_sigma)`` of one DP release: the coarsest power-of-two
    grid ``<= coarsest`` on which every share is at least :data:`MIN_SHARE_STEPS` steps wide.

    ``bound`` is ``M`` for a sum (sensitivity ``M`` rounded up to the grid), ``None`` for counts
    and histograms (sensitivity 1, a multiple of every grid ``<= 1``).
    """
    g = coarsest
    while True:
        sens = 1.0 if bound is None else _grid_ceil(bound, g)
        share = smallest_share_sigma(sigma=z * sens, silos=silos, colluders=colluders, quorum=quorum)
        if share / g >= MIN_SHARE_STEPS:
            return g, sens, share
        if g / 2 < FINEST_GRANULARITY:
            sized = f"{silos} silos" if quorum is None else f"a quorum of {quorum} of {silos} silos"
            raise ConfigError(
                f"statistics {column}.{query}: noise shares of std {share:.3g} over {sized} "
                f"(colluders {colluders}) are narrower than {MIN_SHARE_STEPS:g} steps of the finest grid "
                f"{FINEST_GRANULARITY:g}, so their sum would not be the discrete Gaussian the accountant "
                "assumes; lower epsilon or widen the column's range"
            )
        g /= 2


def primitive_queries(request: StatisticsSection, *, dp: bool) -> tuple[str, ...]:
    """The releases a request needs, in layout order: ``mean`` is the released sum over the
    released count (post-processing), so it needs both and adds nothing of its own."""
    qs = request.queries
    out: list[str] = []
    if "count" in qs or "mean" in qs:
        out.append("count")
    if "sum" in qs or "mean" in qs:
        out.append("sum")
    if "histogram" in qs:
        out.append("histogram")
    return tuple(out)


def unranged_columns(request: StatisticsSection, *, dp: bool) -> tuple[list[str], str]:
    """Columns that need a public ``range`` and have none, and why they need one: every
    histogram (its bins), and under DP every sum (the range bounds one record's contribution)."""
    primitives = primitive_queries(request, dp=dp)
    if "histogram" in primitives:
        why = "histogram"
    elif dp and "sum" in primitives:
        why = "a DP sum/mean (it bounds each record's contribution)"
    else:
        return [], ""
    return [c for c in request.columns if c not in request.range], why


def plan_statistics(
    request: StatisticsSection,
    privacy: PrivacySection | None,
    *,
    silos: int,
    granularity: float = DEFAULT_GRANULARITY,
    quorum: int | None = None,
) -> StatisticsPlan:
    """Lay out the releases of a validated request (pure; every silo computes the same plan).

    Args:
        request, privacy: the ``[statistics]`` and ``[privacy]`` sections (``None``: no DP).
        silos: number of silos in the job: the noise grids are sized so that every share and
            top-up any of them can draw is at least :data:`MIN_SHARE_STEPS` grid steps wide.
        granularity: coarsest grid of sums (a power of two; default ``2**-16``).
        quorum: for a keyless secure sum, the session's quorum
            (:attr:`~fedsilo.protocols.horizontal.sums.SumPlan.quorum`): shares are then drawn
            once for it, with no top-up, and the grids are sized for that draw. ``None``: the
            two-phase round of a shared-key backend.

    Raises:
        ConfigError: a histogram or a DP sum/mean without a range, a silo count, quorum or
            granularity out of range, fewer silos (or a smaller quorum) than ``colluders + 1``,
            or a release whose noise shares cannot be made :data:`MIN_SHARE_STEPS` steps wide
            on a grid no finer than :data:`FINEST_GRANULARITY`.
    """
    if isinstance(silos, bool) or not isinstance(silos, int) or silos < 1:
        raise ConfigError(f"a statistics job needs an integer number of silos >= 1, got {silos!r}")
    if quorum is not None and (isinstance(quorum, bool) or not isinstance(quorum, int) or not 1 <= quorum <= silos):
        raise ConfigError(f"a statistics quorum must be an integer in [1, {silos}] for {silos} silo(s), got {quorum!r}")
    if (
        isinstance(granularity, bool)
        or not isinstance(granularity, (int, float))
        or not FINEST_GRANULARITY <= granularity <= 1.0
        or math.frexp(granularity)[0] != 0.5
    ):
        raise ConfigError(f"statistics granularity must be a power of two in [2**-24, 1], got {granularity!r}")
    dp = privacy is not None
    cols, qs, bins = tuple(request.columns), tuple(request.queries), request.bins
    rng_out = {c: (float(lo), float(hi)) for c, (lo, hi) in request.range.items()}
    unranged, why = unranged_columns(request, dp=dp)
    if unranged:
        raise ConfigError(f"statistics.range.{unranged[0]} is required for {why}")
    primitives = primitive_queries(request, dp=dp)
    blocks = [(c, q, bins if q == "histogram" else 1) for c in cols for q in primitives]
    z: float | None = None
    delta: float | None = None
    accountant = "rdp"
    colluders = 0
    if privacy is not None:
        delta, accountant, colluders = privacy.delta, privacy.accountant, privacy.colluders
        if silos < colluders + 1:
            raise ConfigError(f"{silos} silo(s) cannot tolerate {colluders} colluding key holder(s): need at least {colluders + 1}")
        if quorum is not None and quorum < colluders + 1:
            raise ConfigError(
                f"a quorum of {quorum} contribution(s) cannot tolerate {colluders} colluding silo(s): noise shares "
                f"drawn for it need at least {colluders + 1}"
            )
        z = _noise_multiplier(
            target_epsilon=privacy.epsilon, delta=delta, sample_rate=1.0, steps=len(blocks), accountant=accountant
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
                column=c, query=q, coarsest=coarsest, z=z, bound=bound, silos=silos, colluders=colluders,
                quorum=quorum,
            )
            releases.append(Release(c, q, offset, length, sens, g, z * sens, share))
        offset += length
    return StatisticsPlan(cols, qs, bins, rng_out, tuple(releases), z, delta, accountant, colluders, silos, quorum)


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

    An exact backend rounds every value to a fixed-point step twice its documented
    ``error_bound`` (Paillier: ``2**-precision``; a keyless masking backend: its sums' grid);
    noise on a finer grid would be rounded off it. Approximate backends (CKKS)
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
        params = backend.params()
        # name the key the backend reads (found by the bad-input sweep: the message named none)
        if "granularity" in params:
            fix = f"set crypto.params.granularity = 2**-{bits} or finer (precision to at least {bits} fractional bits)"
        elif "precision" in params:
            fix = f"set crypto.params.precision to at least {bits} fractional bits (a grid of 2^-{bits} or finer)"
        else:
            fix = f"set its precision to at least {bits} fractional bits (a grid of 2^-{bits} or finer)"
        raise ConfigError(
            f"the {info.name} backend rounds values to a {step:g} grid but the statistics plan needs a "
            f"{finest:g} grid (2^-{bits}) for its noise; {fix}"
        )
