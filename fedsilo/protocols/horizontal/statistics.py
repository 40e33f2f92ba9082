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
as the continuous one (Canonne, Kamath & Steinke, NeurIPS 2020); a sum of discrete Gaussian
shares is within a negligible distance of a discrete Gaussian when each share has
``σ_share/g >= 3`` (Kairouz, Liu & Steinke, ICML 2021), which :func:`plan_statistics` checks.

Without DP, values are not clipped (ranges are then only needed for histograms) and the result
is exact up to the backend's fixed-point precision.
"""
from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedsilo.crypto.registry import get_backend
from fedsilo.errors import ConfigError, DataError, NotEnoughSilosError
from fedsilo.privacy.accounting import epsilon as _epsilon
from fedsilo.privacy.accounting import noise_multiplier as _noise_multiplier
from fedsilo.privacy.events import GaussianEvent
from fedsilo.privacy.ledger import PrivacyLedger
from fedsilo.privacy.mechanisms import discrete_gaussian, noise_share_sigma, noise_share_topup_sigma, secure_rng
from fedsilo.protocols.channel import Channel, InProcessHub, run_parties
from fedsilo.protocols.horizontal.secure_aggregation import (
    Contribution,
    aggregator_key_ceremony,
    aggregator_secure_sum,
    share_parties,
    silo_key_ceremony,
    silo_secure_sum,
    topup_parties,
)

__all__ = [
    "QUERIES",
    "Release",
    "StatisticsPlan",
    "plan_statistics",
    "local_statistics",
    "finalize_statistics",
    "statistics_silo",
    "statistics_aggregator",
    "simulate_statistics",
]

QUERIES: tuple[str, ...] = ("count", "sum", "mean", "histogram")
PROTOCOL = "federated-statistics"
AGGREGATOR = "aggregator"
#: Default fixed-point grid of sums: 2**-16 (values are rounded to it before noise is added).
DEFAULT_GRANULARITY = 2.0**-16
DEFAULT_COLLUDERS = 1


@dataclass(frozen=True, slots=True)
class Release:
    """One released block of the statistics vector."""

    column: str
    query: str  #: "count" | "sum" | "histogram"
    offset: int
    length: int
    sensitivity: float  #: L2 sensitivity (add/remove one record)
    granularity: float  #: grid step of the block (1 for counts)
    sigma: float  #: total noise std on the aggregate (0 without DP)


@dataclass(frozen=True)
class StatisticsPlan:
    """The public layout of the statistics vector and its noise (identical in every silo)."""

    columns: tuple[str, ...]
    queries: tuple[str, ...]
    bins: int
    ranges: Mapping[str, tuple[float, float]]
    releases: tuple[Release, ...]
    noise_multiplier: float | None
    delta: float | None
    accountant: str
    colluders: int

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
            "noise_multiplier": self.noise_multiplier,
            "colluders": self.colluders,
            "releases": [
                {"column": r.column, "query": r.query, "sensitivity": r.sensitivity, "sigma": r.sigma, "granularity": r.granularity}
                for r in self.releases
            ],
        }


def _grid_ceil(value: float, granularity: float) -> float:
    return math.ceil(value / granularity) * granularity


def plan_statistics(
    *,
    columns: Sequence[str],
    queries: Sequence[str],
    bins: int,
    ranges: Mapping[str, Sequence[float]],
    privacy: Mapping[str, Any] | None,
    granularity: float = DEFAULT_GRANULARITY,
) -> StatisticsPlan:
    """Validate the request and lay out the releases (pure; every silo computes the same plan).

    Raises:
        ConfigError: unknown query, no columns, a histogram or a DP sum/mean without a range,
            a bad range or bin count.
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
    blocks: list[tuple[str, str, int, float, float]] = []
    for c in cols:
        for q in primitives:
            if q == "count":
                blocks.append((c, q, 1, 1.0, 1.0))
            elif q == "sum":
                m = max(abs(v) for v in rng_out[c]) if c in rng_out else 0.0
                blocks.append((c, q, 1, _grid_ceil(m, granularity) if dp else 0.0, granularity))
            else:
                blocks.append((c, q, bins, 1.0, 1.0))
    z: float | None = None
    delta: float | None = None
    accountant = "rdp"
    colluders = 0
    if dp:
        assert privacy is not None
        delta = float(privacy.get("delta", 1e-5))
        accountant = str(privacy.get("accountant", "rdp"))
        colluders = int(privacy.get("colluders", DEFAULT_COLLUDERS))
        z = _noise_multiplier(
            target_epsilon=float(privacy["epsilon"]), delta=delta, sample_rate=1.0, steps=len(blocks), accountant=accountant
        )
    releases: list[Release] = []
    offset = 0
    for c, q, length, sens, g in blocks:
        releases.append(Release(c, q, offset, length, sens, g, (z or 0.0) * sens))
        offset += length
    return StatisticsPlan(cols, qs, bins, rng_out, tuple(releases), z, delta, accountant, colluders)


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
    out = np.zeros(plan.size)
    for r in plan.releases:
        s = sigma_of(r.sigma)
        if s > 0:
            out[r.offset : r.offset + r.length] = discrete_gaussian(sigma=s, size=r.length, rng=rng, granularity=r.granularity)
    return out


def finalize_statistics(total: np.ndarray, plan: StatisticsPlan) -> dict[str, dict[str, Any]]:
    """Per-column answers from the decrypted (noised) aggregate; means are post-processing."""
    out: dict[str, dict[str, Any]] = {c: {} for c in plan.columns}
    raw: dict[tuple[str, str], np.ndarray] = {
        (r.column, r.query): np.asarray(total[r.offset : r.offset + r.length]) for r in plan.releases
    }
    for c in plan.columns:
        if "count" in plan.queries:
            out[c]["count"] = float(raw[(c, "count")][0])
        if "sum" in plan.queries:
            out[c]["sum"] = float(raw[(c, "sum")][0])
        if "mean" in plan.queries:
            n = float(raw[(c, "count")][0])
            out[c]["mean"] = float(raw[(c, "sum")][0]) / n if n >= 1 else float("nan")
            if plan.noise_multiplier is not None and c in plan.ranges:
                lo, hi = plan.ranges[c]
                out[c]["mean"] = float(np.clip(out[c]["mean"], lo, hi)) if n >= 1 else float("nan")
        if "histogram" in plan.queries:
            lo, hi = plan.ranges[c]
            out[c]["histogram"] = {
                "edges": np.linspace(lo, hi, plan.bins + 1).tolist(),
                "counts": raw[(c, "histogram")].tolist(),
            }
    return out


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
) -> dict[str, Any]:
    """One silo of a federated-statistics job; returns the released answers (or why not).

    ``noise_seed=None`` (production) draws noise from the OS's secure randomness. ``drop`` is the
    test hook of :func:`~.secure_aggregation.silo_secure_sum`.
    """
    event = plan.event()
    if event is not None and (ledger is None or dataset is None):
        raise ConfigError(f"silo {channel.party!r}: a DP statistics job needs the silo's ledger and dataset")
    be = get_backend(backend, **dict(backend_params))
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
                mechanism=plan.mechanism(), recipient=aggregator, level="record",
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
    )
    return {
        "status": outcome.status,
        "reason": outcome.reason,
        "charged": outcome.charged,
        "contributors": list(outcome.contributors),
        "statistics": finalize_statistics(outcome.total, plan) if outcome.total is not None else None,
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
) -> dict[str, Any]:
    """The aggregator of a statistics job: adds ciphertexts, holds no key."""
    be = get_backend(backend, **dict(backend_params))
    public = aggregator_key_ceremony(channel, be, silos=silos, timeout=3 * timeout + 60.0)
    out = aggregator_secure_sum(
        channel, round=1, silos=silos, backend=be, public=public, min_silos=min_silos, colluders=colluders, timeout=timeout
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
    seed: int,
    backend_params: Mapping[str, Any],
    backend: str = "paillier",
    min_silos: int = 2,
    round_timeout: float = 120.0,
    faults: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run a federated-statistics job in-process with the production party functions.

    Returns:
        ``{"task": "statistics", "backend", "statistics": {column: {count, sum, mean,
        histogram: {edges, counts}}}, "silos": [contributors], "epsilon": {silo: {epsilon,
        delta}} (None without DP), "dp": {noise_multiplier, releases, delta, accountant,
        sigma: {"column.query": σ}} | None, "bytes_sent": {party: bytes}}``.

    Raises:
        NotEnoughSilosError: fewer than ``min_silos`` silos contributed; nothing was decrypted.
    """
    names = list(silos)
    if AGGREGATOR in names:
        raise ConfigError(f"a silo may not be named {AGGREGATOR!r}")
    plan = plan_statistics(columns=columns, queries=queries, bins=bins, ranges=ranges, privacy=privacy)
    params = dict(backend_params)
    if backend == "paillier":
        params = _paillier_defaults(params, plan, silos)
    tmp: tempfile.TemporaryDirectory[str] | None = None
    ledgers: dict[str, PrivacyLedger | None] = {n: None for n in names}
    if privacy is not None:
        if ledger_dir is None:
            tmp = tempfile.TemporaryDirectory(prefix="fedsilo-ledgers-")
            ledger_dir = Path(tmp.name)
        ledger_dir.mkdir(parents=True, exist_ok=True)
        for n in names:
            eps_b, delta_b = budgets[n]
            led = PrivacyLedger(ledger_dir / f"{n}.sqlite", silo=n, accountant=plan.accountant)
            led.register_dataset(n, epsilon=float(eps_b), delta=float(delta_b))
            ledgers[n] = led
    seeds = np.random.SeedSequence(int(seed)).spawn(len(names))
    hub = InProcessHub(job, [*names, AGGREGATOR])
    parties: dict[str, Callable[[Channel], Any]] = {
        AGGREGATOR: lambda ch: statistics_aggregator(
            ch, silos=names, backend=backend, backend_params=params, min_silos=min_silos,
            colluders=plan.colluders, timeout=round_timeout,
        )
    }
    for n, s in zip(names, seeds):
        parties[n] = lambda ch, n=n, s=s: statistics_silo(
            ch, job=job, silos=names, aggregator=AGGREGATOR, frame=silos[n], plan=plan, backend=backend,
            backend_params=params, ledger=ledgers[n], dataset=n,
            noise_seed=int(s.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)),
            timeout=round_timeout, drop=(faults or {}).get(n),
        )
    try:
        results = run_parties(hub, parties)
    finally:
        if tmp is not None:
            tmp.cleanup()
    agg = results[AGGREGATOR]
    if agg["status"] != "ok":
        raise NotEnoughSilosError(agg["reason"])
    answer = next(results[n]["statistics"] for n in names if results[n]["statistics"] is not None)
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
        }
    return {
        "task": "statistics",
        "backend": backend,
        "statistics": answer,
        "silos": agg["contributors"],
        "epsilon": eps,
        "dp": dp,
        "bytes_sent": {p: int(b) for p, b in hub.bytes_sent().items()},
    }


def _paillier_defaults(params: dict[str, Any], plan: StatisticsPlan, silos: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
    """Packed-Paillier parameters for statistics, unless the caller set them.

    Sums of a silo's values need far more range than model updates: ``value_bound = 2**40``
    with ``precision = 24`` fractional bits (finer than the 2**-16 DP grid, so grid values are
    encoded exactly), ``max_summands`` for every silo plus its top-up share.
    """
    out = {"packed": True, "precision": 24, "value_bound": 2.0**40, "max_summands": max(16, 2 * len(silos))}
    out.update(params)
    return out
