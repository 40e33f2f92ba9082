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

:class:`AdaptiveClipDPFedAvg` (``[privacy] adaptive_clip = true``) adapts the clip each round
towards a quantile of the silos' update norms from their clipped-count bits, noised under
encryption beside the update (Andrew, Thakkar, McMahan & Ramaswamy, NeurIPS 2021); the pair is
accounted as one Gaussian of the effective multiplier, the same ε as a fixed clip.

:class:`DistributedDPSGD` is the record-level counterpart (``[privacy] mode = "distributed"``):
one DP-SGD step (Abadi et al., CCS 2016) over the federation's pooled rows per round, each silo
contributing its per-example clipped gradient sum plus a noise share, so that the *sum* carries
the noise of central DP-SGD; see its docstring and docs/privacy.md, "Distributed DP-SGD".
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
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
    "ADAPTIVE_COUNT_SHARE",
    "AdaptiveClipDPFedAvg",
    "AdaptiveClipRound",
    "CLIP_STATE",
    "DPFedAvg",
    "SessionNoiseDPFedAvg",
    "DistributedDP",
    "DistributedDPSGD",
    "NEIGHBOURS",
    "RECORD_NEIGHBOURS",
    "gaussian_share",
    "gaussian_topup",
    "adaptive_noise_split",
    "composed_noise_multiplier",
    "effective_noise_multiplier",
    "geometric_clip_update",
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
# Silo level, adaptive clipping (Andrew, Thakkar, McMahan & Ramaswamy, NeurIPS 2021)
# ---------------------------------------------------------------------------------------------
#: Share of the effective Gaussian's precision ``1/z²`` given to the clipped count when
#: ``[privacy] count_noise`` is unset: ``(2σ_b)⁻² = 0.1·z⁻²``, so ``σ_b = z / (2·√0.1) ≈ 1.58·z``
#: and the update noise grows by ``1/√0.9 − 1 ≈ 5.4 %`` over a fixed clip at the same ε.
ADAPTIVE_COUNT_SHARE = 0.1
#: Key of the current clip in :attr:`ServerState.extra` (a 1-element array).
CLIP_STATE = "adaptive_clip"


def effective_noise_multiplier(*, update_noise_multiplier: float, count_noise: float) -> float:
    """``z = (z_Δ⁻² + (2σ_b)⁻²)^(−1/2)``: the one Gaussian mechanism that releasing the sum of
    clipped updates with noise ``z_Δ·C`` and the sum of centred clipped-count bits ``b − ½``
    (sensitivity ½) with noise ``σ_b`` together equal (Andrew et al., NeurIPS 2021, §3 / Thm 1:
    scale the count by ``z_Δ·C/σ_b`` and the pair is one isotropic Gaussian of std ``z_Δ·C`` on
    a vector of sensitivity ``C·√(1 + (z_Δ/2σ_b)²)``)."""
    for key, value in (("update_noise_multiplier", update_noise_multiplier), ("count_noise", count_noise)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ConfigError(f"adaptive clipping {key} must be a finite number > 0, got {value!r}")
    return float((update_noise_multiplier ** -2 + (2.0 * count_noise) ** -2) ** -0.5)


def adaptive_noise_split(*, noise_multiplier: float, count_noise: float | None) -> tuple[float, float]:
    """``(z_Δ, σ_b)`` whose combined mechanism is the Gaussian with multiplier ``z``
    (:func:`effective_noise_multiplier` inverted: ``z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2)``, Andrew et
    al. 2021, §3). ``count_noise`` unset: ``σ_b = z / (2·√ADAPTIVE_COUNT_SHARE)``.

    Raises:
        ConfigError: ``count_noise <= z/2`` (the count alone would cost more than the budget),
            naming ``privacy.count_noise``.
    """
    z = float(noise_multiplier)
    sigma_b = z / (2.0 * math.sqrt(ADAPTIVE_COUNT_SHARE)) if count_noise is None else float(count_noise)
    if not 2.0 * sigma_b > z * (1.0 + 1e-9):
        raise ConfigError(
            f"privacy.count_noise = {sigma_b:g} is too small: the job's noise multiplier is z = {z:.4g} "
            f"(privacy.epsilon over training.rounds), and the clipped count alone costs more than that unless "
            f"count_noise > z/2 = {z / 2:.4g}; raise privacy.count_noise or leave it unset"
        )
    return float((z ** -2 - (2.0 * sigma_b) ** -2) ** -0.5), sigma_b


def geometric_clip_update(clip: float, *, unclipped_fraction: float, target_quantile: float, lr: float) -> float:
    """``C_{t+1} = C_t · exp(−η_C · (b̄ − γ))`` (Andrew et al. 2021, Alg. 1, geometric update):
    ``b̄`` the (noised) fraction of silos whose update norm was at most ``C_t``, ``γ`` the
    target quantile, ``η_C`` the clip learning rate. Post-processing of the released count."""
    if not math.isfinite(unclipped_fraction):
        raise ProtocolError("the decrypted clipped count of the round is not a finite number")
    return float(clip * math.exp(-lr * (unclipped_fraction - target_quantile)))


class AdaptiveClipDPFedAvg(DPFedAvg):
    """Silo-level DP-FedAvg with adaptive clipping (Andrew, Thakkar, McMahan & Ramaswamy,
    "Differentially Private Learning with Adaptive Clipping", NeurIPS 2021, Alg. 1).

    Round ``t`` with the public clip ``C_t`` (kept in the server state, the same at every silo):
    each silo sends, under the secure sum, its update clipped to ``C_t`` with a noise share of
    ``N(0, (z_Δ·C_t)²)`` and, as one extra coordinate, its centred clipped-count bit
    ``b − ½`` (``b = [‖update‖ ≤ C_t]``) with a noise share of ``N(0, σ_b²)`` (both sized for
    ``colluders`` and topped up after dropouts like every share, :func:`gaussian_share`). Every
    silo decrypts the same sum, steps the inner strategy on the update part and sets
    ``C_{t+1} = C_t·exp(−η_C(b̄ − γ))`` with ``b̄ = (noised Σ(b − ½))/n + ½`` over the ``n``
    (public) contributors: :func:`geometric_clip_update`.

    Privacy (zero-out relation, as :class:`DPFedAvg`): the pair is one Gaussian mechanism with
    multiplier ``z = (z_Δ⁻² + (2σ_b)⁻²)^(−1/2)`` (:func:`effective_noise_multiplier`), so one
    round costs ``GaussianEvent(z, 1, 1)`` — one event with the effective multiplier, the same as
    a fixed clip at ``z`` — and ``z_Δ``, ``σ_b`` are split from the ``z`` a fixed clip would use
    (:func:`adaptive_noise_split`): the job's ε is exactly the fixed-clip job's. The clip is
    post-processing of released sums, so choosing it costs nothing further.

    Args:
        strategy: the inner strategy, as :class:`DPFedAvg`.
        clip: the initial clip ``C_0 > 0``.
        noise_multiplier: the effective ``z`` (the accounted one).
        count_noise: ``σ_b`` (None: :data:`ADAPTIVE_COUNT_SHARE` of the precision).
        target_quantile: ``γ`` in (0, 1).
        clip_lr: ``η_C > 0``.
        colluders: as :class:`DPFedAvg`.
    """

    name: ClassVar[str] = "dp-fedavg-adaptive-clip"

    def __init__(self, strategy: Strategy, *, clip: float, noise_multiplier: float, count_noise: float | None,
                 target_quantile: float, clip_lr: float, colluders: int = 1) -> None:
        super().__init__(strategy, clip=clip, noise_multiplier=noise_multiplier, colluders=colluders)
        if not (isinstance(target_quantile, (int, float)) and 0.0 < target_quantile < 1.0):
            raise ConfigError(f"privacy.target_quantile must be in (0, 1), got {target_quantile!r}")
        if not (isinstance(clip_lr, (int, float)) and math.isfinite(clip_lr) and clip_lr > 0):
            raise ConfigError(f"privacy.clip_lr must be a finite number > 0, got {clip_lr!r}")
        self.update_noise_multiplier, self.count_noise = adaptive_noise_split(
            noise_multiplier=self.noise_multiplier, count_noise=count_noise)
        self.target_quantile = float(target_quantile)
        self.clip_lr = float(clip_lr)

    def initialize(self, params: np.ndarray) -> ServerState:
        state = self.inner.initialize(params)
        return replace(state, extra={**state.extra, CLIP_STATE: np.array([self.clip])})

    def clip_at(self, state: ServerState) -> float:
        """The public clip ``C_t`` of the round after ``state``."""
        return float(np.asarray(state.extra[CLIP_STATE])[0])

    def at(self, state: ServerState) -> "AdaptiveClipRound":
        """This round's silo-side view (clipping, bit, noise shares) at the clip of ``state``."""
        return AdaptiveClipRound(self, self.clip_at(state))

    def aggregate_fit(self, *, round: int, state: ServerState, result: AggregateResult) -> ServerState:
        """The inner step on the update part of the sum, and the next clip from its last value
        (the noised sum of the centred bits)."""
        total = np.asarray(result.total, dtype=np.float64)
        n = len(result.contributors)
        if total.shape[0] != state.params.shape[0] + 1 or n < 1:
            raise ProtocolError(f"adaptive clipping: a sum of {total.shape[0]} values from {n} silos for "
                                f"{state.params.shape[0]} parameters and one clipped count")
        inner = self.inner.aggregate_fit(
            round=round, state=state, result=AggregateResult(total[:-1], result.contributors, result.failures))
        clip = geometric_clip_update(self.clip_at(state), unclipped_fraction=float(total[-1]) / n + 0.5,
                                     target_quantile=self.target_quantile, lr=self.clip_lr)
        return replace(inner, extra={**inner.extra, CLIP_STATE: np.array([clip])})

    def prepare_update(self, update: np.ndarray, *, round: int) -> np.ndarray:
        raise ProtocolError("adaptive clipping prepares an update at the round's clip: use .at(state).prepare_update")

    def mechanism(self) -> dict[str, Any]:
        return {**super().mechanism(), **self._adaptive()}

    def _adaptive(self) -> dict[str, Any]:
        return {"adaptive_clip": True, "update_noise_multiplier": self.update_noise_multiplier,
                "count_noise": self.count_noise, "count_sensitivity": 0.5,
                "target_quantile": self.target_quantile, "clip_lr": self.clip_lr}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "initial_clip": self.clip, "target_quantile": self.target_quantile,
                "clip_lr": self.clip_lr, "count_noise": self.count_noise}


class AdaptiveClipRound(DPFedAvg):
    """One round of :class:`AdaptiveClipDPFedAvg` at the public clip ``C_t``: what a silo
    computes and sends (the update clipped to ``C_t``, then its centred bit ``b − ½``) and the
    noise shares of each part (``z_Δ·C_t`` on the update, ``σ_b`` on the bit). Its event is the
    effective Gaussian ``GaussianEvent(z, 1, 1)``."""

    def __init__(self, parent: AdaptiveClipDPFedAvg, clip: float) -> None:
        super().__init__(parent.inner, clip=clip, noise_multiplier=parent.noise_multiplier, colluders=parent.colluders)
        self.parent = parent

    @property
    def sigma(self) -> float:
        """Standard deviation of the noise on the sum of updates: ``z_Δ · C_t``."""
        return self.parent.update_noise_multiplier * self.clip

    def prepare_update(self, update: np.ndarray, *, round: int) -> np.ndarray:
        """``[clip_{C_t}(u), b − ½]`` with ``u`` the inner strategy's transform and
        ``b = [‖u‖ ≤ C_t]``."""
        u = np.asarray(self.inner.prepare_update(update, round=round), dtype=np.float64)
        bit = 1.0 if float(np.linalg.norm(u)) <= self.clip else 0.0
        return np.concatenate([clip_l2(u, max_norm=self.clip), [bit - 0.5]])

    def noise_share(self, *, present: int, size: int, rng: np.random.Generator) -> np.ndarray:
        return np.concatenate([
            gaussian_share(sigma=self.sigma, present=present, colluders=self.colluders, size=size - 1, rng=rng),
            gaussian_share(sigma=self.parent.count_noise, present=present, colluders=self.colluders, size=1, rng=rng),
        ])

    def topup_share(self, *, present: int, contributors: int, size: int, rng: np.random.Generator) -> np.ndarray:
        return np.concatenate([
            gaussian_topup(sigma=self.sigma, present=present, contributors=contributors, colluders=self.colluders,
                           size=size - 1, rng=rng),
            gaussian_topup(sigma=self.parent.count_noise, present=present, contributors=contributors,
                           colluders=self.colluders, size=1, rng=rng),
        ])

    def mechanism(self) -> dict[str, Any]:
        return {**super().mechanism(), "sigma": self.sigma, "initial_clip": self.parent.clip,
                **self.parent._adaptive()}


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
