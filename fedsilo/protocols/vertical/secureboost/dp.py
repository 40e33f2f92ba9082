"""Differential privacy of the histograms: calibration, the noise a host adds, its ledger charge.

**What is protected.** A host's histograms tell the guest, per node, feature and bin, the sums
of the guest's own ``g`` and ``h`` over the rows whose value falls in that bin. The guest knows
every ``g_i`` and ``h_i``, so exact histograms let it narrow down which bin each row's value is
in (for a small node, exactly). Each host adds Gaussian noise to every bin's ``(G, H, count)``
under encryption, before the guest decrypts; the guest never sees that noise and cannot remove
it. The relation is **replace one customer's feature values at this host**, with the released
node memberships (the *instance space*, which SecureBoost sends in the clear, see
docs/secureboost.md) held fixed: given the guest's data and those memberships, every ``g_i``,
``h_i`` is fixed, and the replaced row can only move between bins of each feature.

**Sensitivity.** Moving row ``i`` from bin ``a`` to bin ``b`` of one feature changes the ``G``
histogram by ``-g_i`` at ``a`` and ``+g_i`` at ``b`` (squared L2 ``2 g_i² <= 2 c²`` with ``|g| <= c``,
the ``privacy.clip`` bound: for the logistic loss ``|p - y| <= 1`` already, for the squared
error the guest clips every residual ``raw - y`` to ``[-c, c]``), the ``H`` histogram by at most
``2 h_max²`` (``h <= 1/4`` logistic, ``h = 1`` squared error) and the counts by 2; staying in its
bin changes nothing (a NaN's bin, with missing-value bins, is one bin more). Over the host's ``F`` features the noise
``σ_G = z·sqrt(6F)·c``, ``σ_H = z·sqrt(6F)·h_max``, ``σ_C = z·sqrt(6F)`` (each quantity's share
of the budget equal) gives a whitened sensitivity of ``sqrt(F·(2 + 2 + 2)/(6F))/z = 1/z``: one
release is the Gaussian mechanism with noise multiplier ``z``. The noise is discrete Gaussian on
the fixed-point grid ``2**-P`` (counts: on the integers; Canonne, Kamath & Steinke, NeurIPS 2020),
whose Rényi curve is the continuous one's, so :class:`~fedsilo.privacy.events.GaussianEvent`
accounts it.

**Composition.** At one level of a tree the nodes whose histograms are requested hold disjoint
rows (each host checks it), so a customer is in at most one released histogram per level
(parallel composition, McSherry, SIGMOD 2009): a level is one release. A job of ``T`` trees of
depth ``d`` makes at most ``T·d`` releases (``(T - k)·d`` with ``k`` guest-only trees, which
release nothing of a host), and ``z`` is calibrated for them with
:func:`fedsilo.privacy.noise_multiplier` (``sample_rate = 1``: tree subsamples are announced,
no amplification is claimed). Each host charges its own ledger once per level, **before** it
draws the noise and sends anything derived from its data.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar, ContextManager

import numpy as np

from fedsilo.errors import ConfigError
from fedsilo.privacy.accounting import epsilon as epsilon_of
from fedsilo.privacy.accounting import noise_multiplier
from fedsilo.privacy.events import GaussianEvent
from fedsilo.privacy.ledger import PrivacyLedger
from fedsilo.privacy.mechanisms import discrete_gaussian
from fedsilo.privacy.relations import REPLACE_RECORD
from fedsilo.protocols.vertical.secureboost.boosting import H_BOUND
from fedsilo.protocols.vertical.secureboost.boosting import objective as objective_of

__all__ = ["PROTOCOL", "HistogramDp", "calibrate", "draw_noise", "level_charge"]

#: the protocol's name in ledger entries
PROTOCOL = "secureboost"


@dataclass(frozen=True, slots=True)
class HistogramDp:
    """The DP plan every party derives from the same public inputs (:func:`calibrate`).

    ``noise_multiplier`` ``z``: each level's release of a host's histograms is the Gaussian
    mechanism with multiplier ``z`` (whitened sensitivity 1, see the module docstring);
    ``releases`` = ``trees · depth`` such releases at most (guest-only trees excluded);
    ``clip``: the bound ``c`` on ``|g|``; ``h_bound``: on ``h`` (the objective's).
    """

    epsilon: float
    delta: float
    accountant: str
    noise_multiplier: float
    releases: int
    clip: float
    h_bound: float = H_BOUND

    neighbouring: ClassVar[str] = "replace one customer's feature values at the host (released node memberships fixed)"

    def sigmas(self, *, features: int) -> tuple[float, float, float]:
        """``(σ_G, σ_H, σ_C)`` of every bin of a host with ``features`` features."""
        if features < 1:
            raise ConfigError(f"a host needs at least one feature, got {features}")
        base = self.noise_multiplier * math.sqrt(6.0 * features)
        return base * self.clip, base * self.h_bound, base

    def event(self) -> GaussianEvent:
        """One level's release (what a host charges per level)."""
        return GaussianEvent(self.noise_multiplier, 1.0, 1)

    def spent(self, releases: int) -> float | None:
        """ε after ``releases`` charged releases (None for none)."""
        if releases <= 0:
            return None
        return epsilon_of(GaussianEvent(self.noise_multiplier, 1.0, releases), delta=self.delta, accountant=self.accountant)


def calibrate(*, epsilon: float, delta: float, accountant: str, trees: int, depth: int, clip: float,
              objective: str = "log_loss") -> HistogramDp:
    """The plan for ``trees`` joint trees (guest-only ones not counted) of depth ``depth`` at
    ``(epsilon, delta)`` per host, for the loss ``objective`` (``[model] objective``: its bounds
    on ``g`` and ``h``; ``clip`` above the logistic loss's ``|g| <= 1`` changes nothing there).

    Raises:
        ConfigError: ``clip`` not positive, no joint tree (a ``PrivacyParameterError``, also a
            ConfigError, for an impossible target).
    """
    if not clip > 0:
        raise ConfigError(f"privacy.clip must be > 0 (the bound on |g|), got {clip!r}")
    if trees < 1:
        raise ConfigError("key 'model.guest_trees': under DP at least one tree must be grown with the hosts "
                          "(every tree is guest-only: no release to account for; drop [privacy])")
    loss = objective_of(objective)
    releases = trees * depth
    z = noise_multiplier(target_epsilon=epsilon, delta=delta, sample_rate=1.0, steps=releases, accountant=accountant)
    return HistogramDp(float(epsilon), float(delta), accountant, float(z), releases, float(min(clip, loss.g_cap)),
                       loss.h_bound)


def draw_noise(plan: HistogramDp, *, features: int, bins: int, precision: int, rng: np.random.Generator) -> np.ndarray:
    """One level's noise for one node of a host: ``(features·bins, 3)`` integers, grid steps of
    ``2**-precision`` for ``G`` and ``H``, whole rows for the count (discrete Gaussian)."""
    sg, sh, sc = plan.sigmas(features=features)
    grid = 2.0**-precision
    size = features * bins
    out = np.empty((size, 3), dtype=np.int64)
    out[:, 0] = np.rint(discrete_gaussian(sigma=sg, size=size, rng=rng, granularity=grid) / grid).astype(np.int64)
    out[:, 1] = np.rint(discrete_gaussian(sigma=sh, size=size, rng=rng, granularity=grid) / grid).astype(np.int64)
    out[:, 2] = np.rint(discrete_gaussian(sigma=sc, size=size, rng=rng, granularity=1.0)).astype(np.int64)
    return out


def level_charge(
    ledger: PrivacyLedger | None,
    dataset: str | None,
    plan: HistogramDp | None,
    *,
    job: str,
    round: int,
    guest: str,
    detail: Mapping[str, Any],
) -> ContextManager[Any]:
    """This host's charge for one level's histograms (``plan.event()``), held while it draws the
    noise and sends them: nothing derived from its data leaves before the reservation. No
    charge without DP."""
    if plan is None:
        return nullcontext()
    if ledger is None or dataset is None:  # pragma: no cover - refused before PSI
        raise ConfigError("differential privacy needs a privacy ledger and the dataset name to charge")
    return ledger.charge(
        dataset,
        plan.event(),
        job=job,
        round=round,
        protocol=PROTOCOL,
        mechanism={
            "name": "discrete_gaussian_histograms",
            "released": "per node, feature and bin: the sums of the guest's g and h and the row count",
            "neighbours": plan.neighbouring,
            "noise_multiplier": plan.noise_multiplier,
            "clip": plan.clip,
            "h_bound": plan.h_bound,
            "releases_planned": plan.releases,
            "composition": "parallel over the level's disjoint nodes: one release per customer per level",
            **dict(detail),
        },
        recipient=guest,
        relation=REPLACE_RECORD,
    )
