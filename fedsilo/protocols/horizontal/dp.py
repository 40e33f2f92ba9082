"""DP strategy wrappers whose noise the secure sum carries: silo-level DP-FedAvg and record-level
distributed DP-SGD.

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

:class:`DistributedDPSGD` is the record-level counterpart (``[privacy] mode = "distributed"``):
one DP-SGD step (Abadi et al., CCS 2016) over the federation's pooled rows per round, each silo
contributing its per-example clipped gradient sum plus a noise share, so that the *sum* carries
the noise of central DP-SGD; see its docstring and docs/privacy.md, "Distributed DP-SGD".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from fedsilo.errors import ConfigError, ProtocolError
import warnings
from collections.abc import Callable

from fedsilo.errors import PrivacyParameterError
from fedsilo.privacy.accounting import MAX_NOISE_MULTIPLIER, MIN_NOISE_MULTIPLIER, NOISE_MULTIPLIER_RTOL
from fedsilo.privacy.accounting import epsilon as _epsilon
from fedsilo.privacy.accounting import noise_multiplier as _noise_multiplier
from fedsilo.privacy.events import DpEvent, GaussianEvent
from fedsilo.privacy.relations import ADD_REMOVE_RECORD, ZERO_OUT_SILO
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

__all__ = [
    "DPFedAvg",
    "SessionNoiseDPFedAvg",
    "DistributedDP",
    "DistributedDPSGD",
    "NEIGHBOURS",
    "RECORD_NEIGHBOURS",
    "gaussian_share",
    "gaussian_topup",
    "composed_noise_multiplier",
    "joint_sample_rate",
    "released_rows",
    "silo_noise_multiplier",
]

#: Neighbouring relation of silo-level DP, recorded with every ledger entry.
NEIGHBOURS = "zero-out: one silo's update replaced by zero (participation is public)"
#: Neighbouring relation of record-level DP-SGD (local or distributed), in ledger entries.
RECORD_NEIGHBOURS = "add/remove one record of the silo"


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
    #: the ledger relation of every release this wrapper noises
    relation: ClassVar[str] = ZERO_OUT_SILO

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


# ---------------------------------------------------------------------------------------------
# Record level, distributed: one joint DP-SGD step per round
# ---------------------------------------------------------------------------------------------
def released_rows(noised_total: float) -> int:
    """``N̂ = max(1, round(x))``: the federation's row count from its noised secure sum ``x``
    (post-processing of a DP release, so every silo may use it in public choices).

    Raises:
        ProtocolError: ``x`` is not finite (a malformed decryption).
    """
    if not math.isfinite(noised_total):
        raise ProtocolError("the decrypted row count of the federation is not a finite number")
    return max(1, int(round(noised_total)))


def joint_sample_rate(*, batch_size: int, rows: int) -> float:
    """``q = min(1, batch_size / N̂)``: the public Poisson rate at which every silo samples its
    rows, so that the federation's joint batch holds ``batch_size`` rows in expectation (all
    rows, ``q = 1``, when ``batch_size >= N̂``)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"training.batch_size must be an integer >= 1, got {batch_size!r}")
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise ConfigError(f"the federation's row count must be an integer >= 1, got {rows!r}")
    return min(1.0, batch_size / rows)


def composed_noise_multiplier(
    *, target_epsilon: float, delta: float, accountant: str, event_for: Callable[[float], DpEvent]
) -> float:
    """Smallest ``z`` (to :data:`~fedsilo.privacy.accounting.NOISE_MULTIPLIER_RTOL`) whose whole
    job, ``event_for(z)`` (the releases that depend on ``z`` composed with those that do not),
    meets ``target_epsilon`` under ``accountant``.

    The same geometric bisection as :func:`~fedsilo.privacy.accounting.noise_multiplier`, on
    the composition itself (ε falls as ``z`` grows): a bracket by doubling / halving from 1,
    then halving its ratio; returns the upper end, the side that meets the target. One
    accountant call per step, where searching the training target first (``record_plan``)
    nests a second bisection inside each step.

    Raises:
        PrivacyParameterError: even ``MAX_NOISE_MULTIPLIER`` exceeds the target (the other
            releases alone, or a tiny ε), naming the cap and the ε it gives.
    """
    target = float(target_epsilon)

    def eps_at(z: float) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # RDP optimum at the grid's edge, mid-search
            return _epsilon(event_for(z), delta=delta, accountant=accountant)

    hi = 1.0
    if eps_at(hi) <= target:
        lo = max(hi / 2.0, MIN_NOISE_MULTIPLIER)
        while eps_at(lo) <= target:
            hi = lo
            if hi <= MIN_NOISE_MULTIPLIER:
                return MIN_NOISE_MULTIPLIER
            lo = max(hi / 2.0, MIN_NOISE_MULTIPLIER)
    else:
        lo, hi = hi, 2.0
        while (e_hi := eps_at(hi)) > target:
            if hi >= MAX_NOISE_MULTIPLIER:
                raise PrivacyParameterError(
                    f"target epsilon {target:g} is too small: even the largest noise multiplier "
                    f"MAX_NOISE_MULTIPLIER={MAX_NOISE_MULTIPLIER:g} gives epsilon={e_hi:.4g} for the whole job "
                    f"(delta={delta:g}, accountant={accountant!r})"
                )
            lo, hi = hi, min(hi * 2.0, MAX_NOISE_MULTIPLIER)
    while hi / lo > 1.0 + NOISE_MULTIPLIER_RTOL:
        mid = math.sqrt(lo * hi)
        if eps_at(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi


@dataclass(frozen=True, slots=True)
class DistributedDP:
    """The public parameters of a distributed DP-SGD job, the same at every silo once the row
    count is released (:meth:`~fedsilo.protocols.horizontal.protocol.HorizontalJob.distributed_plan`).

    ``noise_multiplier`` (``z``) sets the noise on the *joint* gradient sum, ``σ = z·clip``;
    ``sample_rate`` is ``q``, ``rows`` the released ``N̂``, ``steps`` the rounds (one step each);
    ``capped``: ``batch_size >= N̂``, so ``q = 1`` (full-batch DP-GD, no amplification).
    """

    noise_multiplier: float
    clip: float
    sample_rate: float
    rows: int
    steps: int
    count_noise_multiplier: float
    capped: bool

    def __post_init__(self) -> None:
        for key, value in (("noise_multiplier", self.noise_multiplier), ("clip", self.clip),
                           ("count_noise_multiplier", self.count_noise_multiplier)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"distributed DP-SGD {key} must be a finite number > 0, got {value!r}")
        if not (isinstance(self.sample_rate, float) and 0.0 < self.sample_rate <= 1.0):
            raise ConfigError(f"distributed DP-SGD sample_rate must be a float in (0, 1], got {self.sample_rate!r}")
        for key, count in (("rows", self.rows), ("steps", self.steps)):
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ConfigError(f"distributed DP-SGD {key} must be an integer >= 1, got {count!r}")

    @property
    def sigma(self) -> float:
        """Standard deviation of the noise on the joint gradient sum: ``z · C``."""
        return self.noise_multiplier * self.clip

    @property
    def expected_batch(self) -> float:
        """``q · N̂``: the joint batch's expected size, the public divisor of every step."""
        return self.sample_rate * self.rows

    def event(self) -> GaussianEvent:
        """The DP event of one round (one step) for each contributing silo."""
        return GaussianEvent(self.noise_multiplier, self.sample_rate, 1)


class DistributedDPSGD(Strategy):
    """Record-level DP-SGD over the federation's pooled rows, the noise added under encryption.

    Round ``t`` at global parameters ``w`` (every silo holds ``w``): silo ``k`` samples each of its
    rows independently with the public rate ``q`` using *secret* randomness, giving its batch
    ``S_k``, and contributes

        ``c_k = (Σ_{i ∈ S_k} clip_C(∇ℓ(w; x_i, y_i)) + ν_k) / (q·N̂)``

    where ``ν_k`` is its Gaussian noise share (:func:`gaussian_share`: any ``present −
    colluders`` of the shares add up to ``N(0, σ²)``, ``σ = z·C``; top-up shares restore that
    after a dropout). Dividing by the public ``q·N̂`` before encryption is post-processing of the
    sum; it keeps every coordinate near ``C`` whatever the batch size (CKKS' default value bound
    is 4096). The decrypted sum ``c = Σ_k c_k`` is the noised mean gradient of one Poisson batch
    of the pooled rows, and the step is

        ``Δ = −lr · c``,

    handed to the inner strategy as an :class:`AggregateResult` whose uniform mean over the
    contributors is ``Δ`` (FedAvg with ``server_lr = 1``: ``w ← w + Δ``, plain DP-SGD; FedAdam /
    FedYogi: ``Δ`` is their pseudo-gradient). Dividing by the *expected* batch, not the sampled
    one, is what Opacus does with Poisson sampling: the true batch size would be a further
    release.

    Privacy: adding or removing one record changes the joint sum by at most ``C`` and only when
    the record is sampled (probability ``q``, secret), so each round is the Poisson-subsampled
    Gaussian mechanism, ``GaussianEvent(z, q, 1)``, relation add/remove one record, exactly as
    central DP-SGD on the pooled rows (Abadi et al., CCS 2016; Mironov, Talwar & Zhang 2019).

    Args:
        strategy: the configured server strategy (not a DP wrapper).
        plan: the job's :class:`DistributedDP` (after the row count is released).
        lr: ``training.lr``, the DP-SGD learning rate.
        colluders: curious key holders the noise shares survive (``>= 1``).
    """

    name: ClassVar[str] = "distributed-dp-sgd"
    relation: ClassVar[str] = ADD_REMOVE_RECORD

    def __init__(self, strategy: Strategy, *, plan: DistributedDP, lr: float, colluders: int = 1) -> None:
        if not isinstance(strategy, Strategy) or isinstance(strategy, (DPFedAvg, DistributedDPSGD)):
            raise ConfigError(f"DistributedDPSGD wraps a server strategy without DP, got {type(strategy).__name__}")
        if not isinstance(plan, DistributedDP):
            raise ConfigError(f"DistributedDPSGD needs a DistributedDP plan, got {type(plan).__name__}")
        if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0):
            raise ConfigError(f"training.lr must be a finite number > 0, got {lr!r}")
        if isinstance(colluders, bool) or not (isinstance(colluders, int) and colluders >= 1):
            raise ConfigError(f"colluders must be an integer >= 1 (each silo knows its own noise share), got {colluders!r}")
        self.inner = strategy
        self.plan = plan
        self.lr = float(lr)
        self.colluders = colluders

    # -- delegated phases ----------------------------------------------------------------------
    def initialize(self, params: np.ndarray) -> ServerState:
        return self.inner.initialize(params)

    def configure_fit(self, *, round: int, state: ServerState) -> FitInstructions:
        # no local training: a FedProx mu would act on w - w_global = 0
        return FitInstructions()

    def aggregate_fit(self, *, round: int, state: ServerState, result: AggregateResult) -> ServerState:
        """The inner strategy's step on ``Δ = −lr · total`` (``total``: the decrypted, noised
        mean gradient), passed as a result whose uniform mean is ``Δ``."""
        delta = -self.lr * np.asarray(result.total, dtype=np.float64)
        k = len(result.contributors)
        return self.inner.aggregate_fit(
            round=round, state=state, result=AggregateResult(delta * float(k), result.contributors, result.failures)
        )

    # -- what DP adds ----------------------------------------------------------------------------
    @property
    def noise_multiplier(self) -> float:
        return self.plan.noise_multiplier

    @property
    def clip(self) -> float:
        return self.plan.clip

    @property
    def sigma(self) -> float:
        """Standard deviation of the total noise on the joint gradient *sum*: ``z · C``."""
        return self.plan.sigma

    def prepare_update(self, update: np.ndarray, *, round: int) -> np.ndarray:
        """This silo's clipped gradient sum divided by the public ``q·N̂``."""
        return np.asarray(update, dtype=np.float64) / self.plan.expected_batch

    def noise_share(self, *, present: int, size: int, rng: np.random.Generator) -> np.ndarray:
        """This silo's share of ``N(0, σ²)`` for ``present`` announced silos, divided by ``q·N̂``."""
        share = gaussian_share(sigma=self.sigma, present=present, colluders=self.colluders, size=size, rng=rng)
        return share / self.plan.expected_batch

    def topup_share(self, *, present: int, contributors: int, size: int, rng: np.random.Generator) -> np.ndarray:
        """Extra noise when only ``contributors`` of ``present`` announced silos sent, divided by ``q·N̂``."""
        extra = gaussian_topup(sigma=self.sigma, present=present, contributors=contributors, colluders=self.colluders,
                               size=size, rng=rng)
        return extra / self.plan.expected_batch

    def event(self, *, round: int) -> GaussianEvent:
        """The DP event one round's release costs each contributing silo: ``GaussianEvent(z, q, 1)``."""
        return self.plan.event()

    def mechanism(self) -> dict[str, Any]:
        """Mechanism parameters recorded with each ledger entry."""
        p = self.plan
        return {
            "name": "distributed dp-sgd",
            "neighbours": RECORD_NEIGHBOURS,
            "noise_multiplier": p.noise_multiplier,
            "max_grad_norm": p.clip,
            "sigma": p.sigma,
            "sample_rate": p.sample_rate,
            "sample_rate_capped": p.capped,
            "rows": p.rows,
            "expected_batch": p.expected_batch,
            "colluders": self.colluders,
            "strategy": self.inner.describe(),
        }

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "lr": self.lr, "clip": self.clip, "noise_multiplier": self.noise_multiplier,
                "sample_rate": self.plan.sample_rate, "inner": self.inner.describe()}
