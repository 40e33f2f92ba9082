"""Horizontal FedAvg with secure aggregation: the per-party functions and the round loop.

Parties (see ``docs/horizontal.md``):

* :func:`silo` — one per organization: local torch training, DP (silo-level DP-FedAvg or
  record-level DP-SGD), ledger charge, encryption; also a key holder that decrypts the noised
  sum and applies the strategy's server step, so every silo holds the same global model;
* :func:`aggregator` — holds no key: counts who is present, adds ciphertexts, returns the sum.

Both are plain functions over a :class:`~fedsilo.protocols.channel.Channel`, so the in-process
simulation (:func:`simulate_horizontal`, used by ``fedsilo simulate``) and the gRPC silo agents
run the same code. Round 0 is the key ceremony; rounds ``1..R`` are training rounds, each one
noised secure sum (:mod:`.secure_aggregation`).

Dropout: a silo missing at a deadline is left out of that round; the round completes if at least
``min_silos`` contributed, with top-up noise so the total noise never falls below target;
otherwise the round is **skipped** (nothing decrypted, global model unchanged, recorded with
``silos = []``). If withdrawals (exhausted budgets) leave fewer than ``min_silos`` silos in the
job, the job stops and :func:`simulate_horizontal` raises
:class:`~fedsilo.errors.NotEnoughSilosError`.
"""
from __future__ import annotations

import contextlib
import secrets
import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from contextlib import nullcontext
import numpy as np

from fedsilo.crypto.registry import get_backend, get_backend_class
from fedsilo.errors import ConfigError, DataError, NotEnoughSilosError, PrivacyParameterError
from fedsilo.privacy.accounting import epsilon as _epsilon
from fedsilo.privacy.events import ComposedEvent, DpEvent, GaussianEvent
from fedsilo.privacy.accounting import noise_multiplier as _noise_multiplier
from fedsilo.privacy.relations import ADD_REMOVE_RECORD, ZERO_OUT_SILO
from fedsilo.protocols.ledgers import job_ledgers
from fedsilo.privacy.ledger import PrivacyLedger
from fedsilo.privacy.mechanisms import secure_rng
from fedsilo.protocols.horizontal import evaluation as fed_eval
from fedsilo.protocols.channel import Channel, InProcessHub, run_parties
from fedsilo.protocols.policy import require_confidential
from fedsilo.protocols.horizontal.dp import DPFedAvg, gaussian_share, gaussian_topup, silo_noise_multiplier
from fedsilo.protocols.horizontal.models import build_model, get_flat_params, loss_fn, predict_scores, set_flat_params
from fedsilo.protocols.horizontal.secure_aggregation import (
    Contribution,
    SiloRoundOutcome,
    aggregator_key_ceremony,
    aggregator_secure_sum,
    check_federation,
    exposed_sums_allowed,
    ledger_recipient,
    recipients_mechanism,
    required_contributors,
    silo_key_ceremony,
    silo_secure_sum,
    stop_silos,
)
from fedsilo.protocols.horizontal.strategies import AggregateResult, Strategy, make_strategy
from fedsilo.protocols.horizontal.training import LocalConfig, RecordDP, record_dp_plan, train_local

__all__ = [
    "AGGREGATOR",
    "HorizontalJob",
    "RoundReport",
    "SiloReport",
    "AggregatorReport",
    "silo",
    "aggregator",
    "simulate_horizontal",
    "evaluate",
]

#: Party name of the aggregator in simulations.
AGGREGATOR = "aggregator"
PROTOCOL = "horizontal-fedavg"
DEFAULT_COLLUDERS = 1
#: Neighbouring relation of record-level DP-SGD (Poisson sampling, Opacus), in ledger entries.
RECORD_NEIGHBOURS = "add/remove one record of the silo"
#: Share of a record-level job's ε set aside for the one release of federated metrics.
EVALUATION_SHARE = 0.25


@dataclass(frozen=True)
class HorizontalJob:
    """Everything every party of one horizontal job agrees on (from the federation file).

    ``seed`` is the job's public seed: it fixes the initial model (every silo builds the same
    one). Noise and sampling randomness is *not* derived from it in production (see
    :func:`silo`'s ``noise_seed``).
    """

    job: str
    backend: str
    backend_params: Mapping[str, Any]
    model: Mapping[str, Any]
    training: Mapping[str, Any]
    privacy: Mapping[str, Any] | None
    n_features: int
    n_classes: int = 2
    seed: int = 0
    min_silos: int = 2
    round_timeout: float = 120.0
    insecure: bool = False

    def __post_init__(self) -> None:
        if self.n_features < 1:
            raise DataError("horizontal training needs at least one feature")
        if self.min_silos < 1:
            raise ConfigError(f"min_silos must be >= 1, got {self.min_silos}")
        if not (self.round_timeout > 0):
            raise ConfigError(f"round_timeout must be > 0, got {self.round_timeout}")
        if self.privacy is not None and self.level not in ("silo", "record"):
            raise ConfigError(f"privacy.level must be 'silo' or 'record', got {self.level!r}")
        if isinstance(self.colluders, bool) or not (isinstance(self.colluders, int) and self.colluders >= 1):
            raise ConfigError(
                f"privacy.colluders must be an integer >= 1 (each silo knows its own update and noise), got {self.colluders!r}"
            )

    @property
    def rounds(self) -> int:
        r = self.training.get("rounds", 10)
        if not isinstance(r, int) or r < 1:
            raise ConfigError(f"training.rounds must be an integer >= 1, got {r!r}")
        return r

    @property
    def level(self) -> str | None:
        return None if self.privacy is None else str(self.privacy.get("level", "silo"))

    @property
    def colluders(self) -> int:
        """Curious key holders that may pool what they know (``[privacy] colluders``; without DP
        the default 1): noise shares survive them, and no decrypted sum may let them compute
        one silo's exact contribution."""
        if self.privacy is None:
            return DEFAULT_COLLUDERS
        return self.privacy.get("colluders", DEFAULT_COLLUDERS)

    @property
    def silo_wait(self) -> float:
        """How long a silo waits for the aggregator: three aggregator deadlines plus slack."""
        return 3 * self.round_timeout + 60.0

    def local_config(self, *, proximal_mu: float) -> LocalConfig:
        t = self.training
        return LocalConfig(
            epochs=int(t.get("local_epochs", 1)),
            batch_size=int(t.get("batch_size", 64)),
            lr=float(t.get("lr", 0.1)),
            optimizer=str(t.get("optimizer", "sgd")),
            proximal_mu=proximal_mu,
        )

    def strategy(self) -> Strategy:
        """The configured strategy, wrapped in :class:`DPFedAvg` for silo-level DP."""
        base = make_strategy(str(self.training.get("strategy", "fedavg")), self.training.get("strategy_params"))
        if self.privacy is None or self.level != "silo":
            return base
        p = self.privacy
        z = silo_noise_multiplier(
            epsilon=float(p["epsilon"]),
            delta=float(p.get("delta", 1e-5)),
            rounds=self.rounds,
            accountant=str(p.get("accountant", "rdp")),
        )
        return DPFedAvg(base, clip=float(p.get("clip", 1.0)), noise_multiplier=z, colluders=self.colluders)

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
        share = EVALUATION_SHARE * float(p["epsilon"])
        try:
            return _noise_multiplier(
                target_epsilon=share, delta=float(p.get("delta", 1e-5)),
                sample_rate=1.0, steps=1, accountant=str(p.get("accountant", "rdp")),
            )
        except PrivacyParameterError:
            raise ConfigError(
                f"privacy.epsilon = {float(p['epsilon']):g} is too small for a record-level job: its final metrics "
                f"release gets {EVALUATION_SHARE:.0%} of it (epsilon {share:.3g}), which no noise level meets; "
                "raise privacy.epsilon"
            ) from None

    def evaluation_event(self) -> GaussianEvent:
        return GaussianEvent(self.evaluation_noise_multiplier, 1.0, 1)

    def record_plan(self, n_examples: int) -> RecordDP | None:
        """This silo's DP-SGD plan, calibrated so that all rounds *and* the final metrics
        release compose to at most the job's ε: DP-SGD's own target is the largest (to 1 %,
        by bisection) for which the composition with :meth:`evaluation_event` meets it."""
        if self.privacy is None or self.level != "record":
            return None
        p, t = self.privacy, self.training
        target, delta = float(p["epsilon"]), float(p.get("delta", 1e-5))
        accountant = str(p.get("accountant", "rdp"))
        extra = self.evaluation_event()
        epochs = int(t.get("local_epochs", 1))

        def plan_for(train_target: float) -> tuple[RecordDP, float]:
            plan = record_dp_plan(
                n_examples=n_examples,
                batch_size=int(t.get("batch_size", 64)),
                local_epochs=epochs,
                rounds=self.rounds,
                target_epsilon=train_target,
                delta=delta,
                max_grad_norm=float(p.get("clip", 1.0)),
                accountant=accountant,
            )
            rounds = GaussianEvent(plan.noise_multiplier, plan.sample_rate, self.rounds * epochs * plan.steps_per_epoch)
            return plan, _epsilon(ComposedEvent((rounds, extra)), delta=delta, accountant=accountant)

        start = target * (1.0 - EVALUATION_SHARE)
        plan, composed = plan_for(start)
        best: RecordDP | None = plan if composed <= target else None
        lo, hi = (start, target) if best is not None else (0.0, start)
        while best is None or hi - lo > 0.01 * target:
            mid = 0.5 * (lo + hi)
            if mid < 1e-3 * target:
                raise ConfigError(
                    f"privacy.epsilon = {target:g} cannot cover the training rounds and the final metrics release"
                )
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
            production): 256 bits of OS entropy for every numpy generator; torch's generators
            (DP-SGD sampling and noise) take 63 bits of it, their seed limit (see
            ``docs/horizontal.md``, "Randomness"). Public choices (initial model, batch order
            outside record-level DP) come from ``job.seed``.
        drop_rounds: test hook ``{round: phase}`` (phase in ``"hello" | "update" | "topup"``): the
            silo goes silent at that phase of that round, a real missing message.
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
    drops = dict(drop_rounds or {})
    secret = silo_key_ceremony(channel, backend, silos=silos, aggregator=aggregator, timeout=job.silo_wait)
    public = secret.public()
    strategy = job.strategy()
    plan = job.record_plan(len(x))
    template = build_model(job.model, n_features=job.n_features, n_classes=job.n_classes, seed=job.seed)
    state = strategy.initialize(get_flat_params(template))
    events: list[DpEvent] = []
    contributed: list[int] = []
    evaluation: list[dict[str, Any]] = []
    status: Literal["completed", "withdrawn", "stopped"] = "completed"
    reason = ""
    noise_rng = _noise_rng(noise_seed, 0)
    scale = _evaluation_scale(backend)

    def evaluate_round(rnd: int, *, dp: bool) -> SiloRoundOutcome:
        """One secure sum of every silo's metric inputs on its own held-out rows."""
        inputs = _metric_inputs(job, state.params, test)
        contribution = _evaluation_contribution(
            job, inputs, dp=dp, rng=noise_rng, ledger=ledger, dataset=dataset, round=job.evaluation_round(rnd),
            recipients=silos, aggregator=aggregator, scale=scale,
        )
        outcome = silo_secure_sum(
            channel, round=job.evaluation_round(rnd), aggregator=aggregator, backend=backend, secret=secret,
            public=public, contribution=contribution, timeout=job.silo_wait, allow_exposed=job.allow_exposed,
            colluders=job.colluders_in(len(silos)),
        )
        if outcome.charged:
            events.append(job.evaluation_event())
        if outcome.status == "ok" and outcome.total is not None:
            m = fed_eval.metrics_from_inputs(
                outcome.total * scale, n_classes=job.n_classes, merge=fed_eval.DP_BIN_MERGE if dp else 1
            )
            evaluation.append({"round": rnd, **m, "silos": list(outcome.contributors)})
        return outcome

    for rnd in range(1, job.rounds + 1):
        drop = drops.get(rnd)
        contribution: Contribution | None = None
        if drop != "hello":
            fit = strategy.configure_fit(round=rnd, state=state)
            model = build_model(job.model, n_features=job.n_features, n_classes=job.n_classes, seed=job.seed)
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
            update = strategy.prepare_update(local.update, round=rnd)
            contribution = _contribution(
                strategy, update, rng=noise_rng, plan=plan, job=job,
                ledger=ledger, dataset=dataset, round=rnd, recipients=silos, aggregator=aggregator,
            )
        outcome = silo_secure_sum(
            channel,
            round=rnd,
            aggregator=aggregator,
            backend=backend,
            secret=secret,
            public=public,
            contribution=contribution,
            timeout=job.silo_wait,
            drop=drop,
            allow_exposed=job.allow_exposed,
            colluders=job.colluders_in(len(silos)),
        )
        if outcome.charged:
            events.append(_round_event(strategy, plan, job, rnd))
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
        dp=_dp_info(strategy, plan, job),
        evaluation=tuple(evaluation),
        local_evaluation=_local_metrics(job, state.params, test),
    )


def _evaluation_scale(backend: Any) -> float:
    """The public scale of the metric inputs for this backend, checked against its precision."""
    value_bound = backend.params().get("value_bound")
    scale = fed_eval.encoding_scale(float(value_bound) if isinstance(value_bound, (int, float)) else None)
    info = backend.info()
    fed_eval.check_encoding(exact=info.exact, error_bound=float(info.error_bound), scale=scale)
    return scale


def _scores(job: HorizontalJob, params: np.ndarray, x: np.ndarray) -> np.ndarray:
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
) -> Contribution:
    """This silo's metric inputs for a secure sum, divided by the public ``scale``
    (:func:`.evaluation.encoding_scale`): exact, or (``dp``) with discrete Gaussian noise shares
    on :data:`.evaluation.GRID` of total ``σ = z_eval · sqrt(K + 3)`` that survive ``colluders``
    key holders, and the ledger charge of :meth:`HorizontalJob.evaluation_event` (add/remove one
    record)."""
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
        **recipients_mechanism(recipients, aggregator=aggregator),
    }

    def charge() -> contextlib.AbstractContextManager[Any]:
        return ledger.charge(
            dataset, job.evaluation_event(), job=job.job, round=round, protocol=PROTOCOL,
            mechanism=mechanism, recipient=ledger_recipient(recipients), relation=ADD_REMOVE_RECORD,
        )

    return Contribution(values=values, topup=topup, charge=charge)


def _round_event(strategy: Strategy, plan: RecordDP | None, job: HorizontalJob, rnd: int) -> DpEvent:
    if isinstance(strategy, DPFedAvg):
        return strategy.event(round=rnd)
    assert plan is not None
    return plan.event(epochs=job.local_config(proximal_mu=0.0).epochs)


def _dp_info(strategy: Strategy, plan: RecordDP | None, job: HorizontalJob) -> dict[str, Any] | None:
    if job.privacy is None:
        return None
    delta = float(job.privacy.get("delta", 1e-5))
    # the results contract (docs/results.md) names the accountant the reported epsilon comes from
    accountant = str(job.privacy.get("accountant", "rdp"))
    if isinstance(strategy, DPFedAvg):
        return {
            "level": "silo",
            "noise_multiplier": strategy.noise_multiplier,
            "clip": strategy.clip,
            "rounds": job.rounds,
            "sample_rate": 1.0,
            "steps": job.rounds,
            "delta": delta,
            "accountant": accountant,
        }
    assert plan is not None
    epochs = job.local_config(proximal_mu=0.0).epochs
    return {
        "level": "record",
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
) -> Contribution:
    size = int(update.shape[0])
    if isinstance(strategy, DPFedAvg):
        dp = strategy

        def values(present: int) -> np.ndarray:
            return update + dp.noise_share(present=present, size=size, rng=rng)

        def topup(present: int, contributors: int) -> np.ndarray:
            return dp.topup_share(present=present, contributors=contributors, size=size, rng=rng)

        mechanism: dict[str, Any] | None = dp.mechanism()
        relation = ZERO_OUT_SILO
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
    if ledger is None or mechanism is None:
        return Contribution(values=values, topup=topup)
    event = _round_event(strategy, plan, job, round)
    assert dataset is not None

    mechanism = {**mechanism, **recipients_mechanism(recipients, aggregator=aggregator)}

    def charge() -> contextlib.AbstractContextManager[Any]:
        return ledger.charge(
            dataset, event, job=job.job, round=round, protocol=PROTOCOL,
            mechanism=mechanism, recipient=ledger_recipient(recipients), relation=relation,
        )

    return Contribution(values=values, topup=topup, charge=charge)


def aggregator(channel: Channel, *, job: HorizontalJob, silos: Sequence[str]) -> AggregatorReport:
    """The aggregator of a horizontal job: holds no key, only adds ciphertexts.

    It stops the job (telling every remaining silo) when withdrawals leave fewer silos than a
    round needs; a round with too few *present* silos is skipped instead.
    """
    backend = get_backend(job.backend, **dict(job.backend_params))
    public = aggregator_key_ceremony(channel, backend, silos=silos, timeout=job.silo_wait)
    active = sorted(silos)
    rounds: list[dict[str, Any]] = []
    left: dict[str, int] = {}

    def secure_sum(rnd: int, channel_round: int, what: str) -> tuple[str, str | None]:
        """One secure sum: its status (``"ok"`` or ``"aborted"``) and the reason the job
        stops, or None."""
        nonlocal active
        colluders = job.colluders_in(len(silos))
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
            stop_silos(channel, silos=active, round=channel_round, reason=reason)
            return "aborted", reason
        out = aggregator_secure_sum(
            channel,
            round=channel_round,
            silos=active,
            backend=backend,
            public=public,
            min_silos=job.min_silos,
            colluders=colluders,
            timeout=job.round_timeout,
            allow_exposed=job.allow_exposed,
        )
        for s in out.withdrawn:
            left[s] = rnd
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
        return out.status, None

    for rnd in range(1, job.rounds + 1):
        status, stopped = secure_sum(rnd, rnd, "round")
        # Metrics of a model only after a round that changed it: two evaluations of the same
        # model by contributor sets that differ in one silo would give away that silo's inputs.
        if stopped is None and status == "ok" and job.evaluation == "every_round":
            _, stopped = secure_sum(rnd, job.evaluation_round(rnd), "evaluation of round")
        if stopped is not None:
            return AggregatorReport("stopped", tuple(rounds), stopped)
    if job.evaluation == "final":
        _, stopped = secure_sum(job.rounds, job.evaluation_round(job.rounds), "the final evaluation after round")
        if stopped is not None:
            return AggregatorReport("stopped", tuple(rounds), stopped)
    return AggregatorReport("completed", tuple(rounds))


# ---------------------------------------------------------------------------------------------
# Simulation entry point
# ---------------------------------------------------------------------------------------------
def evaluate(model_spec: Mapping[str, Any], params: np.ndarray, x: np.ndarray, y: np.ndarray, *, n_features: int, n_classes: int) -> dict[str, float]:
    """Accuracy, AUC and mean loss of the global model ``params`` on ``(x, y)``.

    A simulation and benchmark helper (rows pooled from several silos): no party calls it."""
    import torch
    from sklearn.metrics import roc_auc_score

    model = build_model(model_spec, n_features=n_features, n_classes=n_classes, seed=0)
    set_flat_params(model, params)
    scores = predict_scores(model, x)
    y = np.asarray(y)
    if n_classes == 2:
        pred = (scores >= 0.5).astype(y.dtype)
        target = torch.as_tensor(y, dtype=torch.float32).reshape(-1, 1)
    else:
        pred = scores.argmax(axis=1)
        target = torch.as_tensor(y, dtype=torch.int64)
    with torch.no_grad():
        logits = model(torch.as_tensor(np.asarray(x), dtype=torch.float32))
        loss = float(loss_fn(n_classes)(logits, target))
    try:
        auc = float(roc_auc_score(y, scores, multi_class="ovr") if n_classes > 2 else roc_auc_score(y, scores))
    except ValueError:
        auc = float("nan")  # one class only in the test set
    return {"accuracy": float(np.mean(pred == y)), "auc": auc, "loss": loss}


def simulate_horizontal(
    *,
    silos: Mapping[str, tuple[np.ndarray, np.ndarray]],
    tests: Mapping[str, tuple[np.ndarray, np.ndarray]],
    backend: str,
    backend_params: Mapping[str, Any],
    model: Mapping[str, Any],
    training: Mapping[str, Any],
    privacy: Mapping[str, Any] | None,
    ledger_dir: Path | None,
    budgets: Mapping[str, tuple[float, float]],
    job: str,
    seed: int,
    min_silos: int,
    round_timeout: float,
    insecure: bool = False,
    noise_seed: int | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    faults: Mapping[str, Mapping[int, str]] | None = None,
) -> dict[str, Any]:
    """Run a horizontal job in-process (one thread per party, the production party functions).

    Args:
        silos: ``{name: (X_train, y_train)}``, features already scaled by the silo's loader.
        tests: ``{name: (X_test, y_test)}``, each silo's own held-out rows: they stay with that
            silo's party function; only the secure sum of their metric inputs is released
            (:mod:`.evaluation`).
        backend, backend_params: crypto backend name and parameters.
        model, training, privacy: the federation file's ``[model]``, ``[training]`` and
            ``[privacy]`` tables (``privacy=None``: no DP).
        ledger_dir: folder of the silos' ledgers (``<silo>.sqlite``, dataset = silo name);
            ``None`` uses a temporary folder.
        budgets: ``{silo: (epsilon, delta)}`` ledger budgets.
        job, seed, min_silos, round_timeout: from ``[federation]``; ``seed`` decides only public
            choices (initial model, local batch order outside record-level DP).
        insecure: ``[crypto] insecure``.
        noise_seed: **tests only**: makes the secret randomness reproducible; the results then
            say ``"private": False`` and the ledger entries ``"reproducible_noise": true``.
        progress: called after each round with ``{"task", "round", "rounds", "silos"}`` plus
            ``accuracy``, ``auc``, ``loss`` when federated metrics were released that round.
        faults: test hook ``{silo: {round: "hello" | "update" | "topup"}}`` (see :func:`silo`).

    Returns:
        ``{"task": "horizontal", "backend", "private", "rounds": [{round, silos[, accuracy, auc,
        loss]}], "final": {accuracy, auc, loss, rows} (the last released federated metrics;
        values None under silo-level DP, where none are released), "evaluation":
        "every_round" | "final" | "none", "silo_metrics": {silo: {accuracy, auc, loss, rows}}
        (each silo's own held-out metrics of the final model, known only to that silo),
        "simulation_metrics": {accuracy, auc, loss} (the final model on every silo's held-out
        rows pooled by the simulation: simulation only, not private, seen by no party),
        "epsilon": {silo: {epsilon, delta}} (values None without DP), "dp": {noise_multiplier,
        clip, rounds, sample_rate, delta, level, steps, accountant[, evaluation_noise_multiplier]}
        | None, "bytes_sent": {party: bytes}, "notes": [str]}`` (notes: withdrawals, skipped
        rounds, dropouts). For record-level DP, ``noise_multiplier``, ``sample_rate`` and
        ``steps`` differ per silo (each silo's own row count); ``dp`` then holds the largest
        ``sample_rate`` and smallest ``noise_multiplier`` and ``dp["silos"]`` each silo's values.

    Raises:
        NotEnoughSilosError: withdrawals left fewer than ``min_silos`` silos; nothing more was
            decrypted.
        ConfigError, DataError: invalid settings or data.
    """
    names = list(silos)
    if AGGREGATOR in names:
        raise ConfigError(f"a silo may not be named {AGGREGATOR!r}")
    if len(names) < 1:
        raise ConfigError("a horizontal job needs at least one silo")
    first_x = np.asarray(silos[names[0]][0])
    n_features = int(first_x.shape[1])
    for name, (x, y) in silos.items():
        if np.asarray(x).ndim != 2 or np.asarray(x).shape[1] != n_features:
            raise DataError(f"silo {name!r}: features have shape {np.shape(x)}, expected (n, {n_features})")
        if len(x) != len(y) or len(x) == 0:
            raise DataError(f"silo {name!r}: {len(x)} rows but {len(y)} labels")
    for name, (x, y) in tests.items():
        if name not in silos:
            raise ConfigError(f"held-out rows for {name!r}, which is not a silo of the job")
        if len(y) and (np.asarray(x).ndim != 2 or np.asarray(x).shape[1] != n_features or len(x) != len(y)):
            raise DataError(f"silo {name!r}: held-out rows have shape {np.shape(x)} for {len(y)} labels")
    labels = np.unique(np.concatenate([np.asarray(y) for _, y in silos.values()] + [np.asarray(t[1]) for t in tests.values()]))
    n_classes = max(2, int(labels.max()) + 1) if labels.size else 2
    # each sum holds every silo's update plus its top-up share
    params = get_backend_class(backend).params_for("aggregate", summands=2 * len(names), params=backend_params)
    spec = HorizontalJob(
        job=job,
        backend=backend,
        backend_params=params,
        model=dict(model),
        training=dict(training),
        privacy=dict(privacy) if privacy is not None else None,
        n_features=n_features,
        n_classes=n_classes,
        seed=int(seed),
        min_silos=int(min_silos),
        round_timeout=float(round_timeout),
        insecure=bool(insecure),
    )
    rounds_total = spec.rounds
    spec.strategy()  # validate strategy / DP settings before any thread starts
    check_federation(silos=names, allow_exposed=spec.allow_exposed, colluders=spec.colluders)
    _evaluation_scale(get_backend(backend, **params))  # precision vs the metrics' grid, before any ledger
    if spec.privacy is not None and len(names) <= spec.colluders:
        raise ConfigError(
            f"privacy.colluders = {spec.colluders} but the job has only {len(names)} silos: noise shares cannot "
            "survive that many colluding key holders; lower privacy.colluders or add silos"
        )
    need = required_contributors(min_silos=spec.min_silos, colluders=spec.colluders_in(len(names)))
    if len(names) < need:
        raise ConfigError(
            f"a job of {len(names)} silo(s) can never decrypt a sum: each needs {need} contributions "
            f"(federation.min_silos = {spec.min_silos}, privacy.colluders = {spec.colluders}); add silos or lower them"
        )
    lock = threading.Lock()
    reported: dict[int, dict[str, Any]] = {}

    def on_round(report: RoundReport) -> None:
        # every silo reports; the first report of a round is the one shown (all silos receive
        # the same released metrics)
        row: dict[str, Any] = {"round": report.round, "silos": list(report.contributors)}
        if report.metrics is not None:
            row.update({k: report.metrics[k] for k in ("accuracy", "auc", "loss")})
        with lock:
            if report.round in reported:
                return
            reported[report.round] = row
        if progress is not None:
            progress({"task": "horizontal", "rounds": rounds_total, **row})

    hub = InProcessHub(job, [*names, AGGREGATOR])
    silo_noise = (
        {n: int(s.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
         for n, s in zip(names, np.random.SeedSequence(int(noise_seed)).spawn(len(names)))}
        if noise_seed is not None
        else {n: None for n in names}
    )
    parties: dict[str, Callable[[Channel], Any]] = {
        AGGREGATOR: lambda ch: aggregator(ch, job=spec, silos=names),
    }
    for n in names:
        x, y = silos[n]
        parties[n] = (
            lambda ch, n=n, x=x, y=y: silo(
                ch,
                job=spec,
                silos=names,
                aggregator=AGGREGATOR,
                x=np.asarray(x),
                y=np.asarray(y),
                test=tests.get(n),
                ledger=ledgers.get(n),
                dataset=n,
                noise_seed=silo_noise[n],
                drop_rounds=(faults or {}).get(n),
                on_round=on_round,
            )
        )
    opened = (
        job_ledgers(ledger_dir, parties=names, budgets=budgets, accountant=str(privacy.get("accountant", "rdp")),
                    reproducible_noise=noise_seed is not None)
        if privacy is not None
        else nullcontext({})
    )
    with opened as ledgers:
        results = run_parties(hub, parties)
    agg: AggregatorReport = results[AGGREGATOR]
    reports: dict[str, SiloReport] = {n: results[n] for n in names}
    if agg.status == "stopped":
        raise NotEnoughSilosError(agg.reason)
    if agg.rounds and all(r["status"] != "ok" for r in agg.rounds):
        # nothing was ever decrypted: reporting a trained model (and epsilon 0) would mislead
        reasons = "; ".join(dict.fromkeys(r["reason"] for r in agg.rounds if r["reason"]))
        raise NotEnoughSilosError(f"job {job!r}: no round completed, nothing was decrypted: {reasons}")
    released = next((r.evaluation for r in reports.values() if r.evaluation), ())
    by_round = {e["round"]: e for e in released}
    rows: list[dict[str, Any]] = []
    for rnd in range(1, rounds_total + 1):
        row = dict(reported.get(rnd, {"round": rnd, "silos": []}))
        if spec.evaluation == "final" and rnd == rounds_total and rnd in by_round:
            row.update({k: by_round[rnd][k] for k in ("accuracy", "auc", "loss")})
        rows.append(row)
    last = released[-1] if released else None
    final = (
        {k: last[k] for k in ("accuracy", "auc", "loss", "rows")}
        if last is not None
        else {"accuracy": None, "auc": None, "loss": None, "rows": None}
    )
    notes = [r.reason for r in reports.values() if r.status == "withdrawn"]
    notes += [
        f"round {r['round']} skipped: {r['reason']}" for r in agg.rounds if r["status"] == "aborted"
    ]
    notes += [
        f"round {r['round']}: {', '.join(r['failures'])} missing; completed with "
        f"{', '.join(r['contributors'])}" + (" and top-up noise" if r["topup"] else "")
        for r in agg.rounds
        if r["status"] == "ok" and r["failures"]
    ]
    if spec.evaluation == "none":
        notes.append(
            "silo-level DP: federated metrics are not released (a whole silo's held-out rows would move every "
            "count); each silo knows only its own held-out metrics (silo_metrics)"
        )
    elif spec.evaluation == "final":
        notes.append(
            "record-level DP: federated metrics are released once, after training, with Gaussian noise "
            f"(z = {spec.evaluation_noise_multiplier:.3g}) charged to every silo's ledger"
        )
    if noise_seed is not None:
        notes.append("NOT PRIVATE: noise_seed was set (test-only); anyone with the seed can regenerate the noise")
    eps: dict[str, dict[str, float | None]] = {}
    for n in names:
        if privacy is None:
            eps[n] = {"epsilon": None, "delta": None}
            continue
        delta = float(privacy.get("delta", 1e-5))
        ev = reports[n].events
        e = _epsilon(ComposedEvent(ev), delta=delta, accountant=str(privacy.get("accountant", "rdp"))) if ev else 0.0
        eps[n] = {"epsilon": e, "delta": delta}
    held_out = [t for t in tests.values() if len(t[1])]
    simulation_metrics: dict[str, float] = {}
    if held_out:  # the simulation, not a party, pools every silo's held-out rows
        final_params = next(r.params for r in reports.values() if r.status == "completed") if any(
            r.status == "completed" for r in reports.values()) else reports[names[0]].params
        simulation_metrics = evaluate(
            model, final_params, np.vstack([t[0] for t in held_out]), np.concatenate([t[1] for t in held_out]),
            n_features=n_features, n_classes=n_classes,
        )
    dp = _summarize_dp(reports)
    if dp is not None and spec.evaluation == "final":
        dp["evaluation_noise_multiplier"] = spec.evaluation_noise_multiplier
    return {
        "task": "horizontal",
        "backend": backend,
        "private": noise_seed is None and not insecure,
        "rounds": rows,
        "final": final,
        "evaluation": spec.evaluation,
        "silo_metrics": {n: dict(r.local_evaluation) if r.local_evaluation else None for n, r in reports.items()},
        "simulation_metrics": simulation_metrics,
        "epsilon": eps,
        "dp": dp,
        "bytes_sent": {p: int(b) for p, b in hub.bytes_sent().items()},
        "notes": notes,
    }


def _summarize_dp(reports: Mapping[str, SiloReport]) -> dict[str, Any] | None:
    infos = {n: r.dp for n, r in reports.items() if r.dp is not None}
    if not infos:
        return None
    first = next(iter(infos.values()))
    out = dict(first)
    if first["level"] == "record":
        out["noise_multiplier"] = min(i["noise_multiplier"] for i in infos.values())
        out["sample_rate"] = max(i["sample_rate"] for i in infos.values())
        out["steps"] = max(i["steps"] for i in infos.values())
        out["silos"] = {n: {k: i[k] for k in ("noise_multiplier", "sample_rate", "steps")} for n, i in infos.items()}
    return out
