"""Silo-level DP-FedAvg as a wrapper around any strategy.

McMahan, Ramage, Talwar & Zhang, "Learning Differentially Private Recurrent Language Models",
ICLR 2018 (DP-FedAvg), with the *silo* as the privacy unit and every silo taking part in every
round (``q = 1``):

* each silo clips its update to L2 norm ``C`` (:func:`fedsilo.privacy.mechanisms.clip_l2`), so
  replacing one silo's update by zero moves the **sum** of updates by at most ``C``;
* each silo adds a noise share ``N(0, z²C²/(n − colluders))`` before encrypting
  (:func:`fedsilo.privacy.mechanisms.noise_share_sigma`), so the decrypted sum carries at least
  ``N(0, z²C²)`` — the Gaussian mechanism with noise multiplier ``z`` — and never less, even
  when silos drop (top-up shares, see :mod:`.secure_aggregation`);
* one round costs ``GaussianEvent(z, 1.0, 1)``; ``z`` comes from
  :func:`fedsilo.privacy.accounting.noise_multiplier` for the job's target ε over all
  ``rounds`` (:func:`silo_noise_multiplier`), so the job's ε is exactly the accountant's value
  for ``GaussianEvent(z, 1.0, rounds)``.

Neighbouring relation: **zero-out**, not add/remove. Participation is public in this protocol:
every present silo learns ``present n``, the result message names the contributors, FedAvg
divides by their number, and a silo with no rows cannot train at all. So the guarantee is the
one of Kairouz, McMahan, Song, Thakkar, Thakurta & Xu, "Practical and Private (Deep) Learning
without Sampling or Shuffling", ICML 2021: neighbouring federations differ in one silo's data
being replaced by a *zero* silo whose (clipped) update is the zero vector, with sensitivity
``C`` on the sum. Whether a silo took part is **not** protected; what it contributed is.

The wrapper follows Flower's ``DifferentialPrivacyClientSideFixedClipping`` in shape (a strategy
wrapping a strategy, arguments validated at construction) but keeps no state between phases,
draws noise only from a generator passed in, and names the DP event each release costs.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from fedsilo.errors import ConfigError
from fedsilo.privacy.accounting import noise_multiplier as _noise_multiplier
from fedsilo.privacy.events import GaussianEvent
from fedsilo.privacy.mechanisms import (
    clip_l2,
    discrete_gaussian,
    gaussian_noise,
    noise_share_sigma,
    noise_share_topup_sigma,
)
from fedsilo.protocols.horizontal.secure_aggregation import share_parties, topup_parties
from fedsilo.protocols.horizontal.strategies import (
    AggregateResult,
    FitInstructions,
    ServerState,
    Strategy,
)

__all__ = ["DPFedAvg", "SessionNoiseDPFedAvg", "NEIGHBOURS", "gaussian_share", "gaussian_topup", "silo_noise_multiplier"]

#: Neighbouring relation of silo-level DP, recorded with every ledger entry.
NEIGHBOURS = "zero-out: one silo's update replaced by zero (participation is public)"


def _draw(sigma: float, size: int, rng: np.random.Generator, granularity: float | None) -> np.ndarray:
    if granularity is None:
        return gaussian_noise(sigma=sigma, size=size, rng=rng)
    return discrete_gaussian(sigma=sigma, size=size, rng=rng, granularity=granularity)


def gaussian_share(
    *, sigma: float, present: int, colluders: int, size: int, rng: np.random.Generator, granularity: float | None = None
) -> np.ndarray:
    """One silo's Gaussian noise share for a secure sum of ``present`` announced silos whose
    total must carry ``N(0, σ²)`` even after ``colluders`` key holders remove their own shares.
    ``granularity``: draw a discrete Gaussian on that grid instead (values on the grid stay on
    it, so nothing of the data shows through floating-point noise)."""
    share = noise_share_sigma(sigma=sigma, parties=share_parties(present=present, colluders=colluders))
    return _draw(share, size, rng, granularity)


def gaussian_topup(
    *, sigma: float, present: int, contributors: int, colluders: int, size: int, rng: np.random.Generator,
    granularity: float | None = None,
) -> np.ndarray:
    """Extra noise when only ``contributors`` of ``present`` announced silos sent, so that the sum
    again carries at least ``N(0, σ²)`` against ``colluders`` (zeros when none is needed)."""
    parties, now = topup_parties(present=present, contributors=contributors, colluders=colluders)
    extra = noise_share_topup_sigma(sigma=sigma, parties=parties, present=now)
    return np.zeros(size) if extra == 0.0 else _draw(extra, size, rng, granularity)


def silo_noise_multiplier(*, epsilon: float, delta: float, rounds: int, accountant: str = "rdp") -> float:
    """``z`` such that ``rounds`` releases of the Gaussian mechanism (q = 1) meet ``epsilon``."""
    return _noise_multiplier(target_epsilon=epsilon, delta=delta, sample_rate=1.0, steps=rounds, accountant=accountant)


class DPFedAvg(Strategy):
    """Silo-level DP around ``strategy``: clip to ``clip``, Gaussian noise shares of ``z·clip``.

    Protects each silo's update under the zero-out relation (sensitivity ``clip``); the set of
    participating silos is public (see the module docstring).

    Args:
        strategy: any :class:`~fedsilo.protocols.horizontal.strategies.Strategy` (FedAvg,
            FedProx, FedAdam, ...); its server step runs on the noised mean, which is
            post-processing and costs no extra privacy.
        clip: ``C > 0``, the L2 bound of each silo's update.
        noise_multiplier: ``z > 0``.
        colluders: curious key holders tolerated (see :func:`share_parties`).
    """

    name: ClassVar[str] = "dp-fedavg"

    def __init__(self, strategy: Strategy, *, clip: float, noise_multiplier: float, colluders: int = 1) -> None:
        if not isinstance(strategy, Strategy):
            raise ConfigError(f"DPFedAvg wraps a Strategy, got {type(strategy).__name__}")
        if isinstance(strategy, DPFedAvg):
            raise ConfigError("DPFedAvg must not wrap another DPFedAvg (noise would be counted twice)")
        for key, value in (("clip", clip), ("noise_multiplier", noise_multiplier)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"DPFedAvg {key} must be a finite number > 0, got {value!r}")
        if isinstance(colluders, bool) or not (isinstance(colluders, int) and colluders >= 1):
            # every contributing silo knows its own share and (shared key) sees the decrypted sum
            raise ConfigError(f"colluders must be an integer >= 1 (each silo knows its own noise share), got {colluders!r}")
        self.inner = strategy
        self.clip = float(clip)
        self.noise_multiplier = float(noise_multiplier)
        self.colluders = colluders

    # -- delegated phases ----------------------------------------------------------------------
    def initialize(self, params: np.ndarray) -> ServerState:
        return self.inner.initialize(params)

    def configure_fit(self, *, round: int, state: ServerState) -> FitInstructions:
        return self.inner.configure_fit(round=round, state=state)

    def aggregate_fit(self, *, round: int, state: ServerState, result: AggregateResult) -> ServerState:
        return self.inner.aggregate_fit(round=round, state=state, result=result)

    # -- what DP adds ----------------------------------------------------------------------------
    @property
    def sigma(self) -> float:
        """Standard deviation of the total noise on the sum: ``z · C``."""
        return self.noise_multiplier * self.clip

    def prepare_update(self, update: np.ndarray, *, round: int) -> np.ndarray:
        """The inner strategy's transform, then L2 clipping to ``C``."""
        return clip_l2(self.inner.prepare_update(update, round=round), max_norm=self.clip)

    def noise_share(self, *, present: int, size: int, rng: np.random.Generator) -> np.ndarray:
        """This silo's share for a round with ``present`` announced silos."""
        return gaussian_share(sigma=self.sigma, present=present, colluders=self.colluders, size=size, rng=rng)

    def topup_share(self, *, present: int, contributors: int, size: int, rng: np.random.Generator) -> np.ndarray:
        """Extra noise when only ``contributors`` of ``present`` announced silos sent updates."""
        return gaussian_topup(
            sigma=self.sigma, present=present, contributors=contributors, colluders=self.colluders, size=size, rng=rng
        )

    def event(self, *, round: int) -> GaussianEvent:
        """The DP event one round's release costs each contributing silo."""
        return GaussianEvent(self.noise_multiplier, 1.0, 1)

    def mechanism(self) -> dict[str, Any]:
        """Mechanism parameters recorded with each ledger entry."""
        return {
            "name": "gaussian",
            "neighbours": NEIGHBOURS,
            "noise_multiplier": self.noise_multiplier,
            "clip": self.clip,
            "sigma": self.sigma,
            "colluders": self.colluders,
            "strategy": self.inner.describe(),
        }

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "clip": self.clip, "noise_multiplier": self.noise_multiplier, "inner": self.inner.describe()}


class SessionNoiseDPFedAvg(DPFedAvg):
    """Silo-level DP whose noise the secure-sum session adds (a keyless session's distributed
    discrete Gaussian, :mod:`.sums`): this strategy only clips; its silos send the clipped update
    and the session noises it under the masks. The DP event of a round is the session's
    (``round_event``), calibrated at planning so the job's ε is the accountant's value for
    ``rounds`` of them.

    Args:
        strategy, clip, colluders: as :class:`DPFedAvg`.
        session_noise: the session's noise parameters (passed with every contribution).
        round_event: the DP event one round's release costs each contributing silo.
        noise_multiplier: the equivalent continuous-Gaussian multiplier, for reports only.
        mechanism: the ledger's mechanism record of the session's noise.
    """

    name: ClassVar[str] = "dp-fedavg"

    def __init__(self, strategy: Strategy, *, clip: float, session_noise: Any, round_event: Any,
                 noise_multiplier: float, mechanism: dict[str, Any], colluders: int = 1) -> None:
        super().__init__(strategy, clip=clip, noise_multiplier=noise_multiplier, colluders=colluders)
        self.session_noise = session_noise
        self.round_event = round_event
        self._mechanism = dict(mechanism)

    def noise_share(self, *, present: int, size: int, rng: np.random.Generator) -> np.ndarray:
        return np.zeros(size)  # the session adds the noise

    def topup_share(self, *, present: int, contributors: int, size: int, rng: np.random.Generator) -> np.ndarray:
        return np.zeros(size)

    def event(self, *, round: int) -> Any:
        return self.round_event

    def mechanism(self) -> dict[str, Any]:
        return {**self._mechanism, "neighbours": NEIGHBOURS, "clip": self.clip, "colluders": self.colluders,
                "strategy": self.inner.describe()}
