"""Horizontal FedAvg with secure aggregation: the per-party functions and the round loop.

Parties (see ``docs/horizontal.md``):

* :func:`silo` — one per organization: local torch training, DP (silo-level DP-FedAvg,
  record-level DP-SGD run locally, or one step of distributed DP-SGD per round), ledger charge,
  encryption; also a key holder that decrypts the noised sum and applies the strategy's server
  step, so every silo holds the same global model;
* :func:`aggregator` — holds no key: counts who is present, adds ciphertexts, returns the sum.

Both are plain functions over a :class:`~fedsilo.protocols.channel.Channel`, so every engine of
the runner (:mod:`fedsilo.silos.tasks.horizontal`: threads in one process, one process per party
over gRPC, the silo agents) runs the same code. Sums go through the secure-sum session the
backend's key model selects (:mod:`.sums`): with a shared-key backend round 0 is the key ceremony
and rounds ``1..R`` are training rounds, each one noised secure sum (:mod:`.secure_aggregation`);
with a keyless backend (SecAgg+, :mod:`.secagg`) there is no key and each round is one masked sum,
silo-level DP noise being the session's distributed discrete Gaussian.

Distributed DP-SGD (``[privacy] mode = "distributed"``, :class:`.dp.DistributedDPSGD`): before
round 1 the silos release their total row count, one noised secure sum on channel round 0
(:data:`COUNT_ROUND`: the key ceremony's round, whose message kinds are its own, and no other sum
uses it); every silo then derives the same sample rate and noise multiplier
(:meth:`HorizontalJob.distributed_plan`), and each round ``1..R`` is one DP-SGD step over the
pooled rows whose noise the secure sum carries. The ledger charge of the row count also charges
the whole training's ``((1 − COUNT_SHARE)·ε, (1 − COUNT_SHARE)·δ)`` guarantee, as one
:class:`~fedsilo.privacy.events.ApproxDpEvent` (:meth:`HorizontalJob.count_charge`); each step and
the final metrics release are then recorded as :class:`~fedsilo.privacy.events.CoveredEvent`
releases that it pays for (basic composition: see :data:`COUNT_SHARE`).

Dropout: a silo missing at a deadline is left out of that round; the round completes if at least
``min_silos`` contributed, with top-up noise so the total noise never falls below target;
otherwise the round is **skipped** (nothing decrypted, global model unchanged, recorded with
``silos = []``). If withdrawals (exhausted budgets) leave fewer than ``min_silos`` silos in the
job, the job stops and the task's results raise
:class:`~fedsilo.errors.NotEnoughSilosError`.
"""
from __future__ import annotations

import contextlib
import functools
import secrets
import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fedsilo.crypto.registry import get_backend, get_backend_class
from fedsilo.errors import ConfigError, DataError, PrivacyParameterError
from fedsilo.privacy.accounting import epsilon as _epsilon
from fedsilo.privacy.events import ApproxDpEvent, ComposedEvent, CoveredEvent, DpEvent, GaussianEvent
from fedsilo.privacy.accounting import noise_multiplier as _noise_multiplier
from fedsilo.privacy.relations import ADD_REMOVE_RECORD
from fedsilo.privacy.ledger import PrivacyLedger
from fedsilo.privacy.mechanisms import secure_rng
from fedsilo.protocols.horizontal import evaluation as fed_eval
from fedsilo.protocols.channel import Channel
from fedsilo.protocols.spec import ModelSection, PrivacySection, TrainingSection
from fedsilo.protocols.policy import require_confidential
from fedsilo.protocols.horizontal.dp import (
    RECORD_NEIGHBOURS,
    AdaptiveClipDPFedAvg,
    DistributedDP,
    DistributedDPSGD,
    DPFedAvg,
    SessionNoiseDPFedAvg,
    composed_noise_multiplier,
    gaussian_share,
    gaussian_topup,
    joint_sample_rate,
    released_rows,
    silo_noise_multiplier,
)
from fedsilo.protocols.horizontal.secure_aggregation import (
    Contribution,
    SiloRoundOutcome,
    exposed_sums_allowed,
    ledger_recipient,
    recipients_mechanism,
    required_contributors,
)
from fedsilo.protocols.horizontal.sums import SumPlan, ddg_granularity, open_aggregator_sum, open_silo_sum, plan_sums
from fedsilo.protocols.horizontal.strategies import AggregateResult, Strategy, make_strategy
# Planning (HorizontalJob, the budget pre-flight) imports no torch: the torch-free half of local
# training is .local_plan; .models and .training (torch) are imported where a silo builds or trains.
from fedsilo.protocols.horizontal.local_plan import (
    BUILTIN_MODELS,
    LocalConfig,
    RecordDP,
    builtin_parameter_count,
    record_dp_plan,
)

__all__ = [
    "AGGREGATOR",
    "COUNT_ROUND",
    "COUNT_SHARE",
    "HorizontalJob",
    "RoundReport",
    "SiloReport",
    "AggregatorReport",
    "silo",
    "aggregator",
    "evaluation_scale",
]

#: Party name of the aggregator in simulations.
AGGREGATOR = "aggregator"
PROTOCOL = "horizontal-fedavg"
#: the colluders rule of a job without DP: the [privacy] section's default
_NO_DP_COLLUDERS = PrivacySection(epsilon=1.0)
#: Share of a record-level job's ε set aside for the one release of federated metrics.
EVALUATION_SHARE = 0.25
#: Share of a distributed DP-SGD job's ε *and* δ set aside for the release of the federation's
#: row count (which fixes the public sample rate): small, since ``q`` only needs the count to a
#: few percent. The rest of the job is calibrated to the remaining ``(1 − COUNT_SHARE)·(ε, δ)``
#: for whatever count was released, so the two compose by basic composition (Dwork & Roth 2014,
#: Thm 3.16, adaptive) into an (ε, δ) guarantee that does not depend on the released count. The
#: ledger records exactly that: the count's Gaussian and the rest as one (ε, δ) release
#: (:meth:`HorizontalJob.count_charge`), not the steps' Gaussians, whose parameters follow the
#: released count (composing them by RDP would need the worst case over every count: an
#: under-count, 7.82 instead of 8.0 at ε = 8).
COUNT_SHARE = 0.02
#: Channel round of the row-count release of a distributed DP-SGD job (before round 1).
COUNT_ROUND = 0


@dataclass(frozen=True)
class HorizontalJob:
    """Everything every party of one horizontal job agrees on (from the federation file).

    ``seed`` is the job's public seed: it fixes the initial model (every silo builds the same
    one). Noise and sampling randomness is *not* derived from it in production (see
    :func:`silo`'s ``noise_seed``).
    """

    job: str
    backend: str
    #: the backend's parameters for this job's sums (``params_for("aggregate", ...)``)
    backend_params: Mapping[str, Any]
    model: ModelSection
    training: TrainingSection
    privacy: PrivacySection | None
    n_features: int
    n_classes: int
    seed: int
    min_silos: int
    round_timeout: float
    insecure: bool

    def __post_init__(self) -> None:
        typed = (("model", ModelSection), ("training", TrainingSection), ("privacy", PrivacySection))
        for name, cls in typed:
            value = getattr(self, name)
            if not (isinstance(value, cls) or (name == "privacy" and value is None)):
                raise TypeError(f"HorizontalJob.{name} must be a {cls.__name__} (fedsilo.protocols.spec), got {type(value).__name__}")
        if self.n_features < 1:
            raise DataError("horizontal training needs at least one feature")
        if self.distributed:
            # one joint DP-SGD step per round: the local-training keys would be silently ignored
            t = self.training
            for key, value, default in (("local_epochs", t.local_epochs, 1), ("optimizer", t.optimizer, "sgd")):
                # set by the user, not defaulted (the local-training defaults do not apply here)
                if key in t.model_fields_set and value != default:
                    raise ConfigError(
                        f'training.{key} = {value!r} is not used by privacy.mode = "distributed" (no local training: '
                        f"each round is one DP-SGD step over the federation's rows, so training.rounds is the number "
                        f"of steps); remove it"
                    )

    @property
    def rounds(self) -> int:
        return self.training.rounds

    @property
    def keyless(self) -> bool:
        """Whether the backend's secure sums are keyless (SecAgg+): the aggregator then unmasks
        each noised sum itself and is one of its recipients (ledger entries name it)."""
        return get_backend_class(self.backend).capabilities().keyless

    @property
    def level(self) -> str | None:
        return None if self.privacy is None else self.privacy.level

    @property
    def distributed(self) -> bool:
        """Record-level DP-SGD in distributed mode (``[privacy] mode = "distributed"``)."""
        return self.privacy is not None and self.privacy.level == "record" and self.privacy.mode == "distributed"

    @property
    def colluders(self) -> int:
        """Curious key holders that may pool what they know (``[privacy] colluders``; without DP
        the section's default): noise shares survive them, and no decrypted sum may let them
        compute one silo's exact contribution."""
        return (self.privacy or _NO_DP_COLLUDERS).colluders

    @property
    def silo_wait(self) -> float:
        """How long a silo waits for the aggregator: three aggregator deadlines plus slack."""
        return 3 * self.round_timeout + 60.0

    def local_config(self, *, proximal_mu: float) -> LocalConfig:
        return LocalConfig.from_sections(self.training, proximal_mu=proximal_mu, trainer=self.model.trainer)

    def sum_plan(self, silos: Sequence[str]) -> SumPlan:
        """The public parameters of this job's secure sums over ``silos``, chosen by the
        backend's key model (:mod:`.sums`)."""
        return plan_sums(
            get_backend_class(self.backend), silos=silos, min_silos=self.min_silos,
            colluders=self.colluders_in(len(silos)), allow_exposed=self.allow_exposed,
            backend_params=self.backend_params,
        )

    @property
    def adaptive_clip(self) -> bool:
        """Silo-level DP-FedAvg with adaptive clipping (``[privacy] adaptive_clip = true``)."""
        return self.privacy is not None and self.level == "silo" and self.privacy.adaptive_clip

    @property
    def round_length(self) -> int:
        """Values per training round's secure sum: the update, plus the clipped count under
        adaptive clipping."""
        return self.update_length + (1 if self.adaptive_clip else 0)

    @property
    def update_length(self) -> int:
        """Values per model update: the model's parameter count (public)."""
        if self.model.kind in BUILTIN_MODELS:  # counted without torch (planning, the pre-flight)
            return builtin_parameter_count(self.model.kind, self.model.hidden, n_features=self.n_features,
                                           n_classes=self.n_classes)
        from fedsilo.protocols.horizontal.models import build_model, get_flat_params

        template = build_model(self.model, n_features=self.n_features, n_classes=self.n_classes, seed=self.seed)
        return int(get_flat_params(template).shape[0])

    def strategy(self, silos: Sequence[str] | None = None) -> Strategy:
        """The configured strategy, wrapped in :class:`DPFedAvg` for silo-level DP (distributed
        DP-SGD: each silo wraps it in :class:`DistributedDPSGD` once the row count is released).

        With a keyless backend (SecAgg+) the silo-level noise is the session's distributed
        discrete Gaussian (:class:`SessionNoiseDPFedAvg`, which only clips), calibrated so that
        ``rounds`` of its event meet the target ε; that needs the job's ``silos``.

        Raises:
            ConfigError: a keyless backend with ``accountant = "pld"`` (the DDG bound is a Rényi
                bound: account it with ``rdp``), ``silos`` missing for a keyless job, or a
                strategy with a proximal term under distributed DP-SGD (no local training).
        """
        base = make_strategy(self.training.strategy, self.training.strategy_params)
        if self.distributed and base.configure_fit(round=1, state=base.initialize(np.zeros(1))).proximal_mu > 0:
            raise ConfigError(
                f'training.strategy = {self.training.strategy!r} adds a proximal term to local training, which '
                'privacy.mode = "distributed" does not run (one DP-SGD step per round); use fedavg, fedadam or fedyogi'
            )
        if self.privacy is None or self.level != "silo":
            # distributed DP-SGD wraps the strategy once the row count is released (silo())
            return base
        p = self.privacy
        if get_backend_class(self.backend).capabilities().keyless:
            if p.adaptive_clip:
                raise ConfigError(
                    f"privacy.adaptive_clip = true needs a shared-key crypto.backend: with {self.backend!r} the "
                    "secure-sum session adds one distributed discrete Gaussian over the whole update, which cannot "
                    "give the clipped count its own noise; use a shared-key backend or a fixed privacy.clip"
                )
            if p.accountant != "rdp":
                raise ConfigError(
                    f"privacy.accountant = {p.accountant!r} cannot account crypto.backend = {self.backend!r} under "
                    "silo-level DP: its distributed discrete Gaussian has a Renyi-DP bound only (Kairouz, Liu & "
                    'Steinke 2021); set privacy.accountant = "rdp"'
                )
            if silos is None:
                raise ConfigError("a keyless secure-sum job's DP strategy needs the job's silos")
            sums = self.sum_plan(silos)
            length = self.update_length
            colluders = self.colluders_in(len(silos))
            try:
                ddg = sums.ddg(length=length, epsilon=p.epsilon, delta=p.delta, rounds=self.rounds, clip=p.clip,
                               colluders=colluders)
            except PrivacyParameterError as exc:
                raise ConfigError(f"privacy.epsilon = {p.epsilon:g}: {exc}") from None
            event = sums.ddg_event(length=length, dp=ddg)
            spec = sums.spec(length, dp=ddg, granularity=ddg_granularity(clip=ddg.clip, length=length))
            # the continuous Gaussian with the same Renyi curve at large sigma: z = sqrt(n)·sigma/Delta2
            z = float(np.sqrt(event.shares) * event.noise_sigma / event.l2_sensitivity)
            return SessionNoiseDPFedAvg(
                base, clip=p.clip, session_noise=ddg, round_event=event, noise_multiplier=z,
                mechanism={**spec.mechanism(), "name": "distributed discrete gaussian", "shares": event.shares},
                colluders=max(1, colluders),
            )
        z = silo_noise_multiplier(epsilon=p.epsilon, delta=p.delta, rounds=self.rounds, accountant=p.accountant)
        if p.adaptive_clip:
            # one GaussianEvent(z) per round as with a fixed clip: z splits into the update's z_Δ and
            # the clipped count's σ_b (Andrew et al. 2021, §3)
            return AdaptiveClipDPFedAvg(base, clip=p.clip, noise_multiplier=z, count_noise=p.count_noise,
                                        target_quantile=p.target_quantile, clip_lr=p.clip_lr,
                                        colluders=self.colluders)
        return DPFedAvg(base, clip=p.clip, noise_multiplier=z, colluders=self.colluders)

    def colluders_in(self, silos: int) -> int:
        """Colluders a federation of ``silos`` silos can hold besides the silo itself: a
        coalition is never larger than the other silos (a one-silo job has none)."""
        return max(0, min(self.colluders, silos - 1))

    @property
    def allow_exposed(self) -> bool:
        """Whether a decrypted sum may expose one silo's contribution (a sum of two):
        only under ``insecure`` or silo-level DP (see
        :func:`~.secure_aggregation.exposed_sums_allowed`)."""
        return exposed_sums_allowed(insecure=self.insecure, silo_level_dp=self.level == "silo")

    @property
    def evaluation(self) -> Literal["every_round", "final", "none"]:
        """When federated metrics are released (see :mod:`.evaluation`): exactly after every
        round without DP; once, noised and charged, after training under record-level DP; never
        under silo-level DP (each silo then knows only its own held-out metrics)."""
        if self.privacy is None:
            return "every_round"
        return "final" if self.level == "record" else "none"

    def evaluation_round(self, rnd: int) -> int:
        """Channel round of the metrics released after training round ``rnd``."""
        return self.rounds + rnd

    @property
    def evaluation_noise_multiplier(self) -> float:
        """``z`` of the final metrics release: one Gaussian release costing
        :data:`EVALUATION_SHARE` of the job's ε on its own."""
        assert self.privacy is not None
        p = self.privacy
        share = EVALUATION_SHARE * p.epsilon
        try:
            return _noise_multiplier(
                target_epsilon=share, delta=p.delta, sample_rate=1.0, steps=1, accountant=p.accountant,
            )
        except PrivacyParameterError:
            raise ConfigError(
                f"privacy.epsilon = {p.epsilon:g} is too small for a record-level job: its final metrics "
                f"release gets {EVALUATION_SHARE:.0%} of it (epsilon {share:.3g}), which no noise level meets; "
                "raise privacy.epsilon"
            ) from None

    def evaluation_event(self) -> GaussianEvent:
        return GaussianEvent(self.evaluation_noise_multiplier, 1.0, 1)

    def record_plan(self, n_examples: int) -> RecordDP | None:
        """This silo's local DP-SGD plan (``mode = "local"``), calibrated so that all rounds *and*
        the final metrics release compose to at most the job's ε: DP-SGD's own target is the
        largest (to 1 %, by bisection) for which the composition with :meth:`evaluation_event`
        meets it. ``None`` without record-level DP or in distributed mode."""
        if self.privacy is None or self.level != "record" or self.distributed:
            return None
        p, t = self.privacy, self.training
        delta, accountant = p.delta, p.accountant
        extra = self.evaluation_event()
        epochs = t.local_epochs

        def plan_for(train_target: float) -> tuple[RecordDP, float]:
            plan = record_dp_plan(
                n_examples=n_examples,
                batch_size=t.batch_size,
                local_epochs=epochs,
                rounds=self.rounds,
                target_epsilon=train_target,
                delta=delta,
                max_grad_norm=p.clip,
                accountant=accountant,
            )
            rounds = GaussianEvent(plan.noise_multiplier, plan.sample_rate, self.rounds * epochs * plan.steps_per_epoch)
            return plan, _epsilon(ComposedEvent((rounds, extra)), delta=delta, accountant=accountant)

        return _largest_training_target(
            p.epsilon, plan_for, start=p.epsilon * (1.0 - EVALUATION_SHARE),
            what="the training rounds and the final metrics release",
        )

    @property
    def count_noise_multiplier(self) -> float:
        """``z`` of a distributed DP-SGD job's row-count release (sensitivity 1 under add/remove
        one record): one Gaussian release that is ``(COUNT_SHARE·ε, COUNT_SHARE·δ)``-DP on its
        own (:data:`COUNT_SHARE`)."""
        assert self.privacy is not None
        p = self.privacy
        share = COUNT_SHARE * p.epsilon
        try:
            return _noise_multiplier(target_epsilon=share, delta=COUNT_SHARE * p.delta, sample_rate=1.0, steps=1,
                                     accountant=p.accountant)
        except PrivacyParameterError:
            raise ConfigError(
                f"privacy.epsilon = {p.epsilon:g} is too small for distributed DP-SGD: the release of the "
                f"federation's row count gets {COUNT_SHARE:.0%} of it (epsilon {share:.3g}), which no noise level "
                "meets; raise privacy.epsilon"
            ) from None

    def count_event(self) -> GaussianEvent:
        """The DP event of the row-count release itself (a part of :meth:`count_charge`)."""
        return GaussianEvent(self.count_noise_multiplier, 1.0, 1)

    def training_cover(self, cover: str) -> ApproxDpEvent:
        """The guarantee of everything a distributed DP-SGD job releases after its row count
        (every step and the final metrics): ``((1 − COUNT_SHARE)·ε, (1 − COUNT_SHARE)·δ)``, which
        :meth:`distributed_plan` meets for *every* released count, labelled ``cover`` for the
        :class:`~fedsilo.privacy.events.CoveredEvent` releases it pays for: the ``rounds`` steps
        and the final metrics, the releases :meth:`distributed_plan` composes."""
        assert self.privacy is not None
        p = self.privacy
        return ApproxDpEvent((1.0 - COUNT_SHARE) * p.epsilon, (1.0 - COUNT_SHARE) * p.delta, 1, cover,
                             covers=self.rounds + 1)

    def count_charge(self, cover: str) -> ComposedEvent:
        """What each silo's ledger is charged with the row-count release, before round 1: the
        count's Gaussian and :meth:`training_cover`, i.e. the whole job's guarantee by basic
        composition (Dwork & Roth 2014, Thm 3.16), known before the count is. Charged up front,
        it is conservative for a job that stops early: the steps it never ran stay charged."""
        return ComposedEvent((self.count_event(), self.training_cover(cover)))

    def distributed_plan(self, rows: int) -> DistributedDP:
        """The distributed DP-SGD plan every silo derives from the released row count ``N̂``:
        ``q = min(1, batch_size / N̂)`` and the smallest ``z`` (to 0.5 %,
        :func:`~.dp.composed_noise_multiplier`) for which the composition of ``rounds`` steps
        ``GaussianEvent(z, q, 1)`` and the final metrics release is ``((1 − COUNT_SHARE)·ε,
        (1 − COUNT_SHARE)·δ)``-DP under the job's accountant. That holds for *every* ``N̂``, and
        the count release is ``(COUNT_SHARE·ε, COUNT_SHARE·δ)``-DP, so by basic composition (which
        allows the later mechanism to be chosen from the earlier output; Dwork & Roth 2014, Thm
        3.16) the job is (ε, δ)-DP unconditionally, not only for the ``N̂`` it released. The
        ledger records that argument, not the steps' Gaussians: :meth:`count_charge`. Pure:
        every silo computes the same plan from public values.

        Raises:
            ConfigError: not a distributed job, or an ε too small for the releases.
        """
        if not self.distributed:
            raise ConfigError('distributed_plan needs privacy.level = "record" and privacy.mode = "distributed"')
        assert self.privacy is not None
        p = self.privacy
        steps = self.rounds
        q = joint_sample_rate(batch_size=self.training.batch_size, rows=rows)
        try:
            with _PLAN_LOCK:
                z = _distributed_noise((1.0 - COUNT_SHARE) * p.epsilon, (1.0 - COUNT_SHARE) * p.delta, p.accountant,
                                       q, steps, self.evaluation_event())
        except PrivacyParameterError:
            raise ConfigError(
                f"privacy.epsilon = {p.epsilon:g} cannot cover {steps} training steps and the final metrics release "
                f"in the {1 - COUNT_SHARE:.0%} left after the row-count release; raise privacy.epsilon"
            ) from None
        return DistributedDP(
            noise_multiplier=z, clip=p.clip, sample_rate=q, rows=rows, steps=steps,
            count_noise_multiplier=self.count_noise_multiplier, capped=self.training.batch_size >= rows,
        )


#: The silos of one process (the threads engine) derive the same distributed plan at the same
#: moment, just before round 1: one of them computes it, the others wait and reuse it.
_PLAN_LOCK = threading.Lock()


@functools.lru_cache(maxsize=64)
def _distributed_noise(target: float, delta: float, accountant: str, sample_rate: float, steps: int,
                       metrics: GaussianEvent) -> float:
    """``z`` of :meth:`HorizontalJob.distributed_plan`: the training steps composed with the
    final metrics release meet ``(target, delta)`` (pure in its arguments, so cached)."""
    return composed_noise_multiplier(
        target_epsilon=target, delta=delta, accountant=accountant,
        event_for=lambda z: ComposedEvent((GaussianEvent(z, sample_rate, steps), metrics)),
    )


def _largest_training_target(
    target: float, plan_for: Callable[[float], tuple[Any, float]], *, start: float, what: str
) -> Any:
    """The plan of the largest training target (to 1 % of ``target``, by bisection from
    ``start``) whose composition with the job's other releases, as ``plan_for`` returns it, is at
    most ``target``: the side of the bracket that meets it."""
    plan, composed = plan_for(start)
    best: Any = plan if composed <= target else None
    lo, hi = (start, target) if best is not None else (0.0, start)
    while best is None or hi - lo > 0.01 * target:
        mid = 0.5 * (lo + hi)
        if mid < 1e-3 * target:
            raise ConfigError(f"privacy.epsilon = {target:g} cannot cover {what}")
        plan, composed = plan_for(mid)
        if composed <= target:
            lo, best = mid, plan
        else:
            hi = mid
    return best


@dataclass(frozen=True)
class RoundReport:
    """What a silo knows after a round (passed to ``on_round``).

    ``metrics``: the federated metrics released after this round (:mod:`.evaluation`), or
    ``None`` when none were (under DP, before the final release); ``local``: this silo's exact
    metrics on its own held-out rows (never sent), or ``None`` without held-out rows.
    """

    round: int
    status: Literal["ok", "skipped"]
    params: np.ndarray
    contributors: tuple[str, ...]
    failures: tuple[str, ...]
    metrics: Mapping[str, float] | None = None
    local: Mapping[str, float] | None = None


@dataclass(frozen=True)
class SiloReport:
    """A silo's account of the job: final model, what it released, and why it stopped.

    ``evaluation``: the federated metrics it received, per release (``{"round", "accuracy",
    "auc", "loss", "rows", "silos"}``); ``local_evaluation``: its own held-out metrics of the
    final model (known only to this silo).
    """

    silo: str
    status: Literal["completed", "withdrawn", "stopped"]
    params: np.ndarray
    events: tuple[DpEvent, ...]
    rounds_contributed: tuple[int, ...]
    reason: str = ""
    dp: Mapping[str, Any] | None = None
    evaluation: tuple[Mapping[str, Any], ...] = ()
    local_evaluation: Mapping[str, float] | None = None


@dataclass(frozen=True)
class AggregatorReport:
    """The aggregator's account: who contributed to each round (it never sees a plaintext)."""

    status: Literal["completed", "stopped"]
    rounds: tuple[dict[str, Any], ...]
    reason: str = ""


#: Bits of OS entropy behind every noise or sampling stream when no seed is given.
ENTROPY_BITS = 256


def _derive_seed(base: int, *parts: int) -> int:
    """A 63-bit seed derived from a simulation seed (tests and ``fedsilo simulate`` only)."""
    return int(np.random.SeedSequence([int(base), *parts]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def _training_seed(job: HorizontalJob, silo: str, noise_seed: int | None, rnd: int) -> int:
    """Seed of one round of local training.

    Record-level DP: the Poisson sampling and the DP-SGD noise are **secret** (amplification by
    sampling needs the sample to be secret): 256 bits of OS entropy (``noise_seed`` only in
    tests). :func:`train_local` expands it with a SeedSequence, but torch's ``Generator`` is an
    MT19937 seeded with 64 bits at most, so the torch streams carry 63 of them — a limit
    documented in ``docs/horizontal.md``. Otherwise (no DP, or silo-level DP whose noise is
    added to the update afterwards) local batch order is public randomness from the job seed.
    """
    if job.level == "record":
        if noise_seed is None:
            return secrets.randbits(ENTROPY_BITS)
        return _derive_seed(noise_seed, rnd, 0)
    return _derive_seed(job.seed, rnd, zlib.crc32(silo.encode()))


def _noise_rng(noise_seed: int | None, rnd: int) -> np.random.Generator:
    """The generator of one round's silo-level noise shares: 256 bits of OS entropy in production."""
    if noise_seed is None:
        return secure_rng(None)
    return secure_rng(_derive_seed(noise_seed, rnd, 1))


def _sampling_rng(noise_seed: int | None) -> np.random.Generator:
    """The generator of a distributed DP-SGD silo's Poisson samples, a stream of its own:
    **secret** (amplification by sampling needs the sample hidden), 256 bits of OS entropy in
    production (``noise_seed`` only in tests)."""
    if noise_seed is None:
        return secure_rng(None)
    return secure_rng(_derive_seed(noise_seed, 0, 2))


def silo(
    channel: Channel,
    *,
    job: HorizontalJob,
    silos: Sequence[str],
    aggregator: str,
    x: np.ndarray,
    y: np.ndarray,
    test: tuple[np.ndarray, np.ndarray] | None = None,
    ledger: PrivacyLedger | None = None,
    dataset: str | None = None,
    noise_seed: int | None = None,
    drop_rounds: Mapping[int, str] | None = None,
    on_round: Callable[[RoundReport], None] | None = None,
) -> SiloReport:
    """One silo of a horizontal job.

    Args:
        channel: this silo's endpoint (``channel.party`` is the silo's name).
        job: the shared job description.
        silos: all silo names of the job (the key ceremony leader is the first in sorted order).
        aggregator: the aggregator's party name.
        x, y: this silo's training rows (already scaled) and labels.
        test: this silo's own held-out rows; they never leave it. Only their metric inputs
            enter a secure sum (:mod:`.evaluation`), exact without DP, noised and charged once
            at the end under record-level DP, not at all under silo-level DP.
        ledger, dataset: the silo's privacy ledger and the dataset name registered in it; both
            required when ``job.privacy`` is set. Every release is charged *before* the
            ciphertext leaves the silo; a refused charge makes the silo withdraw.
        noise_seed: **tests only**: seeds the secret randomness (DP noise, DP-SGD sampling) so
            a run can be repeated; such a run is *not private*. ``None`` (always in
            production): 256 bits of OS entropy for every numpy generator (distributed DP-SGD
            samples and noises with numpy only); local DP-SGD's torch generators (sampling and
            noise) take 63 bits of it, their seed limit (see ``docs/horizontal.md``,
            "Randomness"). Public choices (initial model, batch order outside record-level DP)
            come from ``job.seed``.
        drop_rounds: test hook ``{round: phase}`` (phase in ``"hello" | "update" | "topup"``): the
            silo goes silent at that phase of that round, a real missing message (a keyless
            session maps them to SecAgg+'s stages: before its keys, before its masked input,
            before its unmasking shares). Round :data:`COUNT_ROUND` (0) is a distributed DP-SGD
            job's row-count release.
        on_round: called with a :class:`RoundReport` after every round (progress).
    """
    me = channel.party
    if job.privacy is not None and (ledger is None or dataset is None):
        raise ConfigError(f"silo {me!r}: a DP job needs the silo's privacy ledger and dataset name")
    backend = get_backend(job.backend, **dict(job.backend_params))
    require_confidential(backend, insecure=job.insecure, who=f"silo {me!r}")
    if job.privacy is not None and len(silos) <= job.colluders:
        raise ConfigError(
            f"silo {me!r}: privacy.colluders = {job.colluders} but the job has {len(silos)} silo(s): noise shares "
            "cannot survive that many colluding key holders"
        )
    from fedsilo.protocols.horizontal.models import build_model, get_flat_params
    from fedsilo.protocols.horizontal.training import check_per_example_gradients, warm_up_torch

    drops = dict(drop_rounds or {})
    warm_up_torch()
    if job.distributed:
        # refused before the key ceremony and any release: a model torch.func cannot
        # differentiate row by row, or more rows than the count's encoding carries
        assert job.privacy is not None
        check_per_example_gradients(
            build_model(job.model, n_features=job.n_features, n_classes=job.n_classes, seed=job.seed),
            n_features=job.n_features, n_classes=job.n_classes, clip=job.privacy.clip,
        )
        if len(x) > fed_eval.MAX_ROWS:
            raise DataError(f"silo {me!r}: more training rows than distributed DP-SGD counts (at most {fed_eval.MAX_ROWS} per silo)")
    sums = open_silo_sum(
        channel, backend, plan=job.sum_plan(silos), aggregator=aggregator, timeout=job.silo_wait,
        allow_exposed=job.allow_exposed, colluders=job.colluders_in(len(silos)), noise_seed=noise_seed,
    )
    strategy = job.strategy(silos)
    plan = job.record_plan(len(x))
    template = build_model(job.model, n_features=job.n_features, n_classes=job.n_classes, seed=job.seed)
    state = strategy.initialize(get_flat_params(template))
    events: list[DpEvent] = []
    cover: str | None = None  # the label of the charged distributed DP-SGD training cover
    contributed: list[int] = []
    evaluation: list[dict[str, Any]] = []
    status: Literal["completed", "withdrawn", "stopped"] = "completed"
    reason = ""
    noise_rng = _noise_rng(noise_seed, 0)
    sampling_rng = _sampling_rng(noise_seed) if job.distributed else None
    scale = evaluation_scale(backend)

    def evaluate_round(rnd: int, *, dp: bool) -> SiloRoundOutcome:
        """One secure sum of every silo's metric inputs on its own held-out rows."""
        inputs = _metric_inputs(job, state.params, test)
        contribution = _evaluation_contribution(
            job, inputs, dp=dp, rng=noise_rng, ledger=ledger, dataset=dataset, round=job.evaluation_round(rnd),
            recipients=silos, aggregator=aggregator, scale=scale, cover=cover,
        )
        outcome = sums.sum(round=job.evaluation_round(rnd), contribution=contribution, length=int(inputs.size))
        if outcome.charged:
            events.append(_covered(job.evaluation_event(), cover))
        if outcome.status == "ok" and outcome.total is not None:
            m = fed_eval.metrics_from_inputs(
                outcome.total * scale, n_classes=job.n_classes, merge=fed_eval.DP_BIN_MERGE if dp else 1
            )
            evaluation.append({"round": rnd, **m, "silos": list(outcome.contributors)})
        return outcome

    if job.distributed:
        # round 0: the federation's row count, which fixes every silo's sample rate and noise;
        # its charge pays for the training too (count_charge), labelled so the later releases
        # can name it (a public label, unique per silo and job)
        drop = drops.get(COUNT_ROUND)
        label = f"{PROTOCOL}/training/{secrets.token_hex(8)}"
        counted = None if drop == "hello" else _count_contribution(
            job, len(x), rng=noise_rng, ledger=ledger, dataset=dataset, recipients=silos, aggregator=aggregator,
            scale=scale, cover=label,
        )
        outcome = sums.sum(round=COUNT_ROUND, contribution=counted, length=1, drop=drop)
        if outcome.charged:
            events.append(job.count_charge(label))
            # A silo that did not contribute its count is not charged it: the released count,
            # and so every step's parameters, do not depend on its rows, and its own releases
            # compose as plain Gaussians (cover None).
            cover = label
        if outcome.contributed:
            contributed.append(COUNT_ROUND)
        if outcome.status == "ok":
            assert outcome.total is not None
            plan_dp = job.distributed_plan(released_rows(float(outcome.total[0]) * scale))
            strategy = DistributedDPSGD(strategy, plan=plan_dp, lr=job.training.lr, colluders=job.colluders_in(len(silos)))
        elif outcome.status == "withdrawn":
            status, reason = "withdrawn", f"silo {me!r} stopped participating before round 1 (row count): {outcome.reason}"
        else:
            status = "stopped"
            reason = f"job {job.job!r} stopped before round 1: the federation's row count was not released: {outcome.reason}"

    rounds_seen: list[dict[str, Any]] = []  # each round's public outcome, as the aggregator sent it
    for rnd in range(1, job.rounds + 1) if status == "completed" else ():
        drop = drops.get(rnd)
        contribution: Contribution | None = None
        # adaptive clipping: this round's view at the public clip the last decrypted sum set
        sender = strategy.at(state) if isinstance(strategy, AdaptiveClipDPFedAvg) else strategy
        if drop != "hello":
            update = sender.prepare_update(
                _local_update(job, strategy, state, x, y, plan=plan, rnd=rnd, me=me, noise_seed=noise_seed,
                              sampling_rng=sampling_rng),
                round=rnd,
            )
            contribution = _contribution(
                sender, update, rng=noise_rng, plan=plan, job=job,
                ledger=ledger, dataset=dataset, round=rnd, recipients=silos, aggregator=aggregator, cover=cover,
            )
        outcome = sums.sum(round=rnd, contribution=contribution, length=int(state.params.shape[0]) + job.adaptive_clip,
                           drop=drop)
        rounds_seen.append({"status": outcome.status, "reason": outcome.reason})
        if outcome.charged:
            events.append(_round_event(strategy, plan, job, rnd, cover))
        if outcome.contributed:
            contributed.append(rnd)
        if outcome.status == "ok":
            assert outcome.total is not None
            state = strategy.aggregate_fit(
                round=rnd,
                state=state,
                result=AggregateResult(outcome.total, outcome.contributors, outcome.failures),
            )
        elif outcome.status == "withdrawn":
            status, reason = "withdrawn", f"silo {me!r} stopped participating after round {rnd - 1}: {outcome.reason}"
            break
        elif outcome.status == "stopped":
            status, reason = "stopped", outcome.reason
            break
        metrics = None
        # only after a round that changed the model (see aggregator(): no two evaluations of one model)
        if job.evaluation == "every_round" and outcome.status == "ok":
            ev = evaluate_round(rnd, dp=False)
            if ev.status == "stopped":
                status, reason = "stopped", ev.reason
                break
            metrics = evaluation[-1] if evaluation and evaluation[-1]["round"] == rnd else None
        if on_round is not None:
            on_round(RoundReport(
                rnd, "ok" if outcome.status == "ok" else "skipped", state.params.copy(), outcome.contributors,
                outcome.failures, metrics=metrics, local=_local_metrics(job, state.params, test),
            ))
    if status == "completed" and not any(r["status"] == "ok" for r in rounds_seen):
        # every round aborted: the model is the initial one, and the job did not do what it says
        # (the aggregator derives the same from the same round results and stops too)
        status, reason = "stopped", no_round_trained(job, rounds_seen[-1]["reason"] if rounds_seen else None)
    if status == "completed" and job.evaluation == "final":
        ev = evaluate_round(job.rounds, dp=True)
        if ev.status == "withdrawn":
            status, reason = "withdrawn", f"silo {me!r} stopped participating before the final metrics release: {ev.reason}"
        elif ev.status == "stopped":
            status, reason = "stopped", ev.reason
    return SiloReport(
        silo=me,
        status=status,
        params=state.params.copy(),
        events=tuple(events),
        rounds_contributed=tuple(contributed),
        reason=reason,
        dp=_dp_info(strategy, plan, job, state),
        evaluation=tuple(evaluation),
        local_evaluation=_local_metrics(job, state.params, test),
    )


def evaluation_scale(backend: Any) -> float:
    """The public scale of the metric inputs for this backend, checked against its precision."""
    info = backend.info()
    scale = fed_eval.encoding_scale(info.value_bound)
    fed_eval.check_encoding(exact=info.exact, error_bound=float(info.error_bound), scale=scale)
    return scale


def _scores(job: HorizontalJob, params: np.ndarray, x: np.ndarray) -> np.ndarray:
    from fedsilo.protocols.horizontal.models import build_model, predict_scores, set_flat_params

    model = build_model(job.model, n_features=job.n_features, n_classes=job.n_classes, seed=job.seed)
    set_flat_params(model, params)
    return predict_scores(model, np.asarray(x))


def _metric_inputs(job: HorizontalJob, params: np.ndarray, test: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    if test is None or len(test[1]) == 0:
        return np.zeros(fed_eval.input_size(job.n_classes))
    return fed_eval.metric_inputs(_scores(job, params, test[0]), test[1], n_classes=job.n_classes)


def _local_metrics(
    job: HorizontalJob, params: np.ndarray, test: tuple[np.ndarray, np.ndarray] | None
) -> Mapping[str, float] | None:
    if test is None or len(test[1]) == 0:
        return None
    return fed_eval.local_metrics(_scores(job, params, test[0]), test[1], n_classes=job.n_classes)


def no_round_trained(job: HorizontalJob, last_reason: str | None) -> str:
    """The stop reason of a job whose every round aborted (no sum was released, the model is the
    initial one): silos and aggregator derive it from the same public round outcomes."""
    why = f" (the last: {last_reason})" if last_reason else ""
    return f"job {job.job!r} trained no round: all {job.rounds} round(s) were aborted{why}"


def _evaluation_contribution(
    job: HorizontalJob,
    inputs: np.ndarray,
    *,
    dp: bool,
    rng: np.random.Generator,
    ledger: PrivacyLedger | None,
    dataset: str | None,
    round: int,
    recipients: Sequence[str],
    aggregator: str,
    scale: float,
    cover: str | None = None,
) -> Contribution:
    """This silo's metric inputs for a secure sum, divided by the public ``scale``
    (:func:`.evaluation.encoding_scale`): exact, or (``dp``) with discrete Gaussian noise shares
    on :data:`.evaluation.GRID` of total ``σ = z_eval · sqrt(K + 3)`` that survive ``colluders``
    key holders, and the ledger charge of :meth:`HorizontalJob.evaluation_event` (add/remove one
    record), covered by ``cover`` (distributed DP-SGD: :meth:`HorizontalJob.training_cover`)."""
    size = int(inputs.size)
    if not dp:
        return Contribution(values=lambda present: inputs / scale, topup=lambda present, contributors: np.zeros(size))
    assert ledger is not None and dataset is not None
    z = job.evaluation_noise_multiplier
    sigma = z * fed_eval.sensitivity(job.n_classes)
    colluders = job.colluders_in(len(recipients))

    grid = fed_eval.GRID

    def values(present: int) -> np.ndarray:
        noise = gaussian_share(sigma=sigma, present=present, colluders=colluders, size=size, rng=rng, granularity=grid)
        return (inputs + noise) / scale

    def topup(present: int, contributors: int) -> np.ndarray:
        return gaussian_topup(sigma=sigma, present=present, contributors=contributors, colluders=colluders,
                              size=size, rng=rng, granularity=grid) / scale

    mechanism = {
        "name": "discrete_gaussian",
        "granularity": fed_eval.GRID,
        "released": "federated metric inputs of the held-out rows (score histograms, row count, correct count, capped loss)",
        "neighbours": RECORD_NEIGHBOURS,
        "noise_multiplier": z,
        "sensitivity": fed_eval.sensitivity(job.n_classes),
        "sigma": sigma,
        "colluders": colluders,
        **recipients_mechanism(recipients, aggregator=aggregator, keyless=job.keyless),
    }

    def charge() -> contextlib.AbstractContextManager[Any]:
        return ledger.charge(
            dataset, _covered(job.evaluation_event(), cover), job=job.job, round=round, protocol=PROTOCOL,
            mechanism=mechanism, recipient=ledger_recipient(recipients, keyless=job.keyless, aggregator=aggregator),
            relation=ADD_REMOVE_RECORD,
        )

    return Contribution(values=values, topup=topup, charge=charge)


def _local_update(
    job: HorizontalJob, strategy: Strategy, state: Any, x: np.ndarray, y: np.ndarray, *, plan: RecordDP | None,
    rnd: int, me: str, noise_seed: int | None, sampling_rng: np.random.Generator | None,
) -> np.ndarray:
    """What this silo computes from its rows in round ``rnd``, before the strategy's
    ``prepare_update``: the clipped per-example gradient sum of one secret Poisson sample
    (distributed DP-SGD), or the update of local training (every other mode)."""
    from fedsilo.protocols.horizontal.models import build_model
    from fedsilo.protocols.horizontal.training import clipped_gradient_sum, poisson_sample, train_local

    model = build_model(job.model, n_features=job.n_features, n_classes=job.n_classes, seed=job.seed)
    if isinstance(strategy, DistributedDPSGD):
        assert sampling_rng is not None
        batch = poisson_sample(rows=len(x), sample_rate=strategy.plan.sample_rate, rng=sampling_rng)
        return clipped_gradient_sum(model, np.asarray(x)[batch], np.asarray(y)[batch], global_params=state.params,
                                    clip=strategy.clip, n_classes=job.n_classes)
    fit = strategy.configure_fit(round=rnd, state=state)
    local = train_local(
        model,
        x,
        y,
        global_params=state.params,
        config=job.local_config(proximal_mu=fit.proximal_mu),
        n_classes=job.n_classes,
        seed=_training_seed(job, me, noise_seed, rnd),
        record_dp=plan,
    )
    return local.update


def _count_contribution(
    job: HorizontalJob,
    rows: int,
    *,
    rng: np.random.Generator,
    ledger: PrivacyLedger | None,
    dataset: str | None,
    recipients: Sequence[str],
    aggregator: str,
    scale: float,
    cover: str,
) -> Contribution:
    """This silo's training row count for the secure sum of round :data:`COUNT_ROUND`, with
    discrete Gaussian noise shares on :data:`.evaluation.GRID` of total ``σ = z_count`` (one
    record moves the count by 1) that survive ``colluders`` key holders, divided by the public
    ``scale`` like the metric inputs, and the ledger charge of :meth:`HorizontalJob.count_charge`
    (add/remove one record): the count and, labelled ``cover``, the training it fixes."""
    assert ledger is not None and dataset is not None
    z = job.count_noise_multiplier
    sigma = z * 1.0  # sensitivity 1: one record added or removed
    colluders = job.colluders_in(len(recipients))
    grid = fed_eval.GRID
    count = np.array([float(rows)])

    def values(present: int) -> np.ndarray:
        noise = gaussian_share(sigma=sigma, present=present, colluders=colluders, size=1, rng=rng, granularity=grid)
        return (count + noise) / scale

    def topup(present: int, contributors: int) -> np.ndarray:
        return gaussian_topup(sigma=sigma, present=present, contributors=contributors, colluders=colluders,
                              size=1, rng=rng, granularity=grid) / scale

    mechanism = {
        "name": "discrete_gaussian",
        "granularity": grid,
        "released": "the federation's training row count (fixes distributed DP-SGD's public sample rate)",
        # the charge also holds the training's (epsilon, delta): basic composition, see COUNT_SHARE
        "training_cover": {"epsilon": job.training_cover(cover).epsilon, "delta": job.training_cover(cover).delta,
                           "cover": cover},
        "neighbours": RECORD_NEIGHBOURS,
        "noise_multiplier": z,
        "sensitivity": 1.0,
        "sigma": sigma,
        "colluders": colluders,
        **recipients_mechanism(recipients, aggregator=aggregator, keyless=job.keyless),
    }

    def charge() -> contextlib.AbstractContextManager[Any]:
        return ledger.charge(
            dataset, job.count_charge(cover), job=job.job, round=COUNT_ROUND, protocol=PROTOCOL,
            mechanism=mechanism, recipient=ledger_recipient(recipients, keyless=job.keyless, aggregator=aggregator),
            relation=ADD_REMOVE_RECORD,
        )

    return Contribution(values=values, topup=topup, charge=charge)


def _covered(event: DpEvent, cover: str | None) -> DpEvent:
    """``event`` as a release paid for by the charged training cover ``cover`` (distributed
    DP-SGD after its row count), or ``event`` itself without one."""
    return event if cover is None else CoveredEvent(event, cover)


def _round_event(strategy: Strategy, plan: RecordDP | None, job: HorizontalJob, rnd: int,
                 cover: str | None = None) -> DpEvent:
    if isinstance(strategy, DistributedDPSGD):
        return _covered(strategy.event(round=rnd), cover)
    if isinstance(strategy, DPFedAvg):
        return strategy.event(round=rnd)
    assert plan is not None
    return plan.event(epochs=job.local_config(proximal_mu=0.0).epochs)


def _dp_info(strategy: Strategy, plan: RecordDP | None, job: HorizontalJob, state: Any) -> dict[str, Any] | None:
    if job.privacy is None:
        return None
    delta = job.privacy.delta
    # the results contract (docs/results.md) names the accountant the reported epsilon comes from
    accountant = job.privacy.accountant
    if isinstance(strategy, DPFedAvg):
        info: dict[str, Any] = {
            "level": "silo",
            "noise_multiplier": strategy.noise_multiplier,
            "clip": strategy.clip,
            "rounds": job.rounds,
            "sample_rate": 1.0,
            "steps": job.rounds,
            "delta": delta,
            "accountant": accountant,
        }
        if isinstance(strategy, SessionNoiseDPFedAvg):
            # the session's distributed discrete Gaussian; noise_multiplier is its continuous
            # equivalent sqrt(shares)·sigma/Delta2 (the same Renyi curve at large sigma)
            ev = strategy.round_event
            info["mechanism"] = {"name": "distributed discrete gaussian", "noise_sigma_steps": ev.noise_sigma,
                                 "shares": ev.shares, "l2_sensitivity_steps": ev.l2_sensitivity,
                                 "dimension": ev.dimension}
        if isinstance(strategy, AdaptiveClipDPFedAvg):
            # noise_multiplier is the effective (accounted) z; clip the last round's public clip
            info.update({"clip": strategy.clip_at(state), "adaptive_clip": {
                "initial_clip": strategy.clip, "final_clip": strategy.clip_at(state),
                "target_quantile": strategy.target_quantile, "clip_lr": strategy.clip_lr,
                "update_noise_multiplier": strategy.update_noise_multiplier, "count_noise": strategy.count_noise}})
        return info
    if isinstance(strategy, DistributedDPSGD):
        d = strategy.plan
        return {
            "level": "record",
            "mode": "distributed",
            "noise_multiplier": d.noise_multiplier,
            "clip": d.clip,
            "rounds": job.rounds,
            "sample_rate": d.sample_rate,
            "steps": d.steps,
            "delta": delta,
            "accountant": accountant,
            # the released (noised) row count the sample rate comes from, and whether
            # batch_size >= N̂ capped q at 1 (full-batch steps, no amplification by sampling)
            "rows": d.rows,
            "sample_rate_capped": d.capped,
            "count_noise_multiplier": d.count_noise_multiplier,
        }
    if plan is None:
        return None  # distributed DP-SGD, withdrawn or stopped before its row count was released
    epochs = job.local_config(proximal_mu=0.0).epochs
    return {
        "level": "record",
        "mode": "local",
        "noise_multiplier": plan.noise_multiplier,
        "clip": plan.max_grad_norm,
        "rounds": job.rounds,
        "sample_rate": plan.sample_rate,
        "steps": job.rounds * epochs * plan.steps_per_epoch,
        "delta": delta,
        "accountant": accountant,
    }


def _contribution(
    strategy: Strategy,
    update: np.ndarray,
    *,
    rng: np.random.Generator,
    plan: RecordDP | None,
    job: HorizontalJob,
    ledger: PrivacyLedger | None,
    dataset: str | None,
    round: int,
    recipients: Sequence[str],
    aggregator: str,
    cover: str | None = None,
) -> Contribution:
    size = int(update.shape[0])
    if isinstance(strategy, (DPFedAvg, DistributedDPSGD)):
        dp: DPFedAvg | DistributedDPSGD = strategy

        def values(present: int) -> np.ndarray:
            return update + dp.noise_share(present=present, size=size, rng=rng)

        def topup(present: int, contributors: int) -> np.ndarray:
            return dp.topup_share(present=present, contributors=contributors, size=size, rng=rng)

        mechanism: dict[str, Any] | None = dp.mechanism()
        relation = dp.relation
    else:

        def values(present: int) -> np.ndarray:
            return update

        def topup(present: int, contributors: int) -> np.ndarray:
            # Record-level DP noise is already inside each update (DP-SGD); no-DP has none.
            return np.zeros(size)

        mechanism = None
        if plan is not None:
            mechanism = {
                "name": "dp-sgd",
                "noise_multiplier": plan.noise_multiplier,
                "max_grad_norm": plan.max_grad_norm,
                "sample_rate": plan.sample_rate,
                "steps": plan.steps_per_epoch * job.local_config(proximal_mu=0.0).epochs,
                "neighbours": RECORD_NEIGHBOURS,
            }
        relation = ADD_REMOVE_RECORD
    session_noise = strategy.session_noise if isinstance(strategy, SessionNoiseDPFedAvg) else None
    if ledger is None or mechanism is None:
        return Contribution(values=values, topup=topup, session_noise=session_noise)
    event = _round_event(strategy, plan, job, round, cover)
    assert dataset is not None

    mechanism = {**mechanism, **recipients_mechanism(recipients, aggregator=aggregator, keyless=job.keyless)}

    def charge() -> contextlib.AbstractContextManager[Any]:
        return ledger.charge(
            dataset, event, job=job.job, round=round, protocol=PROTOCOL,
            mechanism=mechanism, recipient=ledger_recipient(recipients, keyless=job.keyless, aggregator=aggregator),
            relation=relation,
        )

    return Contribution(values=values, topup=topup, charge=charge, session_noise=session_noise)


def aggregator(channel: Channel, *, job: HorizontalJob, silos: Sequence[str]) -> AggregatorReport:
    """The aggregator of a horizontal job: holds no key, only adds ciphertexts.

    It stops the job (telling every remaining silo) when withdrawals leave fewer silos than a
    round needs; a round with too few *present* silos is skipped instead.
    """
    backend = get_backend(job.backend, **dict(job.backend_params))
    colluders = job.colluders_in(len(silos))
    sums = open_aggregator_sum(
        channel, backend, plan=job.sum_plan(silos), timeout=job.silo_wait, round_timeout=job.round_timeout,
        min_silos=job.min_silos, colluders=colluders, allow_exposed=job.allow_exposed,
    )
    strategy = job.strategy(silos)
    training_noise = strategy.session_noise if isinstance(strategy, SessionNoiseDPFedAvg) else None
    round_length = job.round_length
    active = sorted(silos)
    rounds: list[dict[str, Any]] = []
    left: dict[str, int] = {}

    def secure_sum(rnd: int, channel_round: int, what: str) -> tuple[str, str | None]:
        """One secure sum: its status (``"ok"`` or ``"aborted"``) and the reason the job
        stops, or None (an aborted row count stops it: no silo can derive its sample rate)."""
        nonlocal active
        need = required_contributors(min_silos=job.min_silos, colluders=colluders)
        exposed = not job.allow_exposed and 2 <= len(active) <= colluders + 1
        if len(active) < need or exposed:
            why = (
                f"a sum of the {len(active)} left would let {colluders} colluding silo(s) compute another's exact update"
                if exposed and len(active) >= need
                else f"{need} needed"
            )
            reason = (
                f"job {job.job!r} stopped before {what} {rnd}: only {len(active)} silo(s) remain "
                f"({', '.join(active) or 'none'}), {why}; "
                + "; ".join(f"{s} withdrew in round {r} (privacy budget exhausted)" for s, r in sorted(left.items()))
            )
            sums.stop(silos=active, round=channel_round, reason=reason)
            return "aborted", reason
        if what == "round":
            out = sums.sum(round=channel_round, silos=active, length=round_length, session_noise=training_noise)
        elif channel_round == COUNT_ROUND:
            out = sums.sum(round=channel_round, silos=active, length=1)
        else:
            out = sums.sum(round=channel_round, silos=active, length=fed_eval.input_size(job.n_classes))
        for s in out.withdrawn:
            left[s] = COUNT_ROUND if channel_round == COUNT_ROUND else rnd
        active = [s for s in active if s not in out.withdrawn]
        if what == "round":
            rounds.append(
                {
                    "round": rnd,
                    "status": out.status,
                    "contributors": list(out.contributors),
                    "failures": list(out.failures),
                    "withdrawn": list(out.withdrawn),
                    "topup": out.topup,
                    "reason": out.reason,
                }
            )
        if channel_round == COUNT_ROUND and out.status != "ok":
            # the silos cannot derive the sample rate: each stops on this round's abort
            return out.status, f"job {job.job!r} stopped before round 1: the federation's row count was not released: {out.reason}"
        return out.status, None

    if job.distributed:
        _, stopped = secure_sum(1, COUNT_ROUND, "the row-count release before round")
        if stopped is not None:
            return AggregatorReport("stopped", (), stopped)
    for rnd in range(1, job.rounds + 1):
        status, stopped = secure_sum(rnd, rnd, "round")
        # Metrics of a model only after a round that changed it: two evaluations of the same
        # model by contributor sets that differ in one silo would give away that silo's inputs.
        if stopped is None and status == "ok" and job.evaluation == "every_round":
            _, stopped = secure_sum(rnd, job.evaluation_round(rnd), "evaluation of round")
        if stopped is not None:
            return AggregatorReport("stopped", tuple(rounds), stopped)
    if rounds and not any(r["status"] == "ok" for r in rounds):
        return AggregatorReport("stopped", tuple(rounds), no_round_trained(job, rounds[-1]["reason"]))
    if job.evaluation == "final":
        _, stopped = secure_sum(job.rounds, job.evaluation_round(job.rounds), "the final evaluation after round")
        if stopped is not None:
            return AggregatorReport("stopped", tuple(rounds), stopped)
    return AggregatorReport("completed", tuple(rounds))
