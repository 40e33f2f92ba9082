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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from contextlib import nullcontext
import numpy as np

from fedsilo.crypto.registry import get_backend
from fedsilo.errors import ConfigError, DataError, NotEnoughSilosError
from fedsilo.privacy.accounting import epsilon as _epsilon
from fedsilo.privacy.events import ComposedEvent, DpEvent
from fedsilo.protocols.ledgers import job_ledgers
from fedsilo.privacy.ledger import PrivacyLedger
from fedsilo.privacy.mechanisms import secure_rng
from fedsilo.protocols.channel import Channel, InProcessHub, run_parties
from fedsilo.protocols.horizontal.dp import DPFedAvg, silo_noise_multiplier
from fedsilo.protocols.horizontal.models import build_model, get_flat_params, loss_fn, predict_scores, set_flat_params
from fedsilo.protocols.horizontal.secure_aggregation import (
    Contribution,
    aggregator_key_ceremony,
    aggregator_secure_sum,
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

    def __post_init__(self) -> None:
        if self.n_features < 1:
            raise DataError("horizontal training needs at least one feature")
        if self.min_silos < 1:
            raise ConfigError(f"min_silos must be >= 1, got {self.min_silos}")
        if not (self.round_timeout > 0):
            raise ConfigError(f"round_timeout must be > 0, got {self.round_timeout}")
        if self.privacy is not None and self.level not in ("silo", "record"):
            raise ConfigError(f"privacy.level must be 'silo' or 'record', got {self.level!r}")
        if self.privacy is not None and not (isinstance(self.colluders, int) and self.colluders >= 0):
            raise ConfigError(f"privacy.colluders must be an integer >= 0, got {self.colluders!r}")

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
        if self.privacy is None or self.level != "silo":
            return 0
        return int(self.privacy.get("colluders", DEFAULT_COLLUDERS))

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

    def record_plan(self, n_examples: int) -> RecordDP | None:
        if self.privacy is None or self.level != "record":
            return None
        p, t = self.privacy, self.training
        return record_dp_plan(
            n_examples=n_examples,
            batch_size=int(t.get("batch_size", 64)),
            local_epochs=int(t.get("local_epochs", 1)),
            rounds=self.rounds,
            target_epsilon=float(p["epsilon"]),
            delta=float(p.get("delta", 1e-5)),
            max_grad_norm=float(p.get("clip", 1.0)),
            accountant=str(p.get("accountant", "rdp")),
        )


@dataclass(frozen=True)
class RoundReport:
    """What a silo knows after a round (passed to ``on_round``)."""

    round: int
    status: Literal["ok", "skipped"]
    params: np.ndarray
    contributors: tuple[str, ...]
    failures: tuple[str, ...]


@dataclass(frozen=True)
class SiloReport:
    """A silo's account of the job: final model, what it released, and why it stopped."""

    silo: str
    status: Literal["completed", "withdrawn", "stopped"]
    params: np.ndarray
    events: tuple[DpEvent, ...]
    rounds_contributed: tuple[int, ...]
    reason: str = ""
    dp: Mapping[str, Any] | None = None


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


def _training_seed(noise_seed: int | None, rnd: int) -> int:
    """Seed of one round of local training (batch sampling; DP-SGD noise at record level).

    Production (``noise_seed=None``): 256 bits of OS entropy. :func:`train_local` expands it
    with a SeedSequence, but torch's ``Generator`` is an MT19937 seeded with 64 bits at most, so
    the torch streams carry 63 of them — a limit documented in ``docs/horizontal.md``.
    """
    if noise_seed is None:
        return secrets.randbits(ENTROPY_BITS)
    return _derive_seed(noise_seed, rnd, 0)


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
        ledger, dataset: the silo's privacy ledger and the dataset name registered in it; both
            required when ``job.privacy`` is set. Every round's release is charged *before*
            the ciphertext leaves the silo; a refused charge makes the silo withdraw.
        noise_seed: seeds local sampling and DP noise (simulations/tests); ``None`` (production)
            draws them from the OS's secure randomness: 256 bits for every numpy generator
            (silo-level noise shares); torch's generators (batch sampling, DP-SGD noise) take
            63 bits of it, their seed limit (see ``docs/horizontal.md``, "Randomness").
        drop_rounds: test hook ``{round: phase}`` (phase in ``"hello" | "update" | "topup"``): the
            silo goes silent at that phase of that round, a real missing message.
        on_round: called with a :class:`RoundReport` after every round (progress, evaluation).
    """
    me = channel.party
    if job.privacy is not None and (ledger is None or dataset is None):
        raise ConfigError(f"silo {me!r}: a DP job needs the silo's privacy ledger and dataset name")
    backend = get_backend(job.backend, **dict(job.backend_params))
    drops = dict(drop_rounds or {})
    secret = silo_key_ceremony(channel, backend, silos=silos, aggregator=aggregator, timeout=job.silo_wait)
    public = secret.public()
    strategy = job.strategy()
    plan = job.record_plan(len(x))
    template = build_model(job.model, n_features=job.n_features, n_classes=job.n_classes, seed=job.seed)
    state = strategy.initialize(get_flat_params(template))
    events: list[DpEvent] = []
    contributed: list[int] = []
    status: Literal["completed", "withdrawn", "stopped"] = "completed"
    reason = ""
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
                seed=_training_seed(noise_seed, rnd),
                record_dp=plan,
            )
            update = strategy.prepare_update(local.update, round=rnd)
            contribution = _contribution(
                strategy, update, rng=_noise_rng(noise_seed, rnd), plan=plan, job=job,
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
            if on_round is not None:
                on_round(RoundReport(rnd, "ok", state.params.copy(), outcome.contributors, outcome.failures))
        elif outcome.status == "aborted":
            if on_round is not None:
                on_round(RoundReport(rnd, "skipped", state.params.copy(), (), ()))
        elif outcome.status == "withdrawn":
            status, reason = "withdrawn", f"silo {me!r} stopped participating after round {rnd - 1}: {outcome.reason}"
            break
        else:
            status, reason = "stopped", outcome.reason
            break
    return SiloReport(
        silo=me,
        status=status,
        params=state.params.copy(),
        events=tuple(events),
        rounds_contributed=tuple(contributed),
        reason=reason,
        dp=_dp_info(strategy, plan, job),
    )


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
        level = "silo"
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
        level = "record"
    if ledger is None or mechanism is None:
        return Contribution(values=values, topup=topup)
    event = _round_event(strategy, plan, job, round)
    assert dataset is not None

    mechanism = {**mechanism, **recipients_mechanism(recipients, aggregator=aggregator)}

    def charge() -> contextlib.AbstractContextManager[Any]:
        return ledger.charge(
            dataset, event, job=job.job, round=round, protocol=PROTOCOL,
            mechanism=mechanism, recipient=ledger_recipient(recipients), level=level,
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
    need = required_contributors(min_silos=job.min_silos, colluders=job.colluders)
    rounds: list[dict[str, Any]] = []
    left: dict[str, int] = {}
    for rnd in range(1, job.rounds + 1):
        if len(active) < need:
            reason = (
                f"job {job.job!r} stopped before round {rnd}: only {len(active)} silo(s) remain "
                f"({', '.join(active) or 'none'}), {need} needed; "
                + "; ".join(f"{s} withdrew in round {r} (privacy budget exhausted)" for s, r in sorted(left.items()))
            )
            stop_silos(channel, silos=active, round=rnd, reason=reason)
            return AggregatorReport("stopped", tuple(rounds), reason)
        out = aggregator_secure_sum(
            channel,
            round=rnd,
            silos=active,
            backend=backend,
            public=public,
            min_silos=job.min_silos,
            colluders=job.colluders,
            timeout=job.round_timeout,
        )
        for s in out.withdrawn:
            left[s] = rnd
        active = [s for s in active if s not in out.withdrawn]
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
    return AggregatorReport("completed", tuple(rounds))


# ---------------------------------------------------------------------------------------------
# Simulation entry point
# ---------------------------------------------------------------------------------------------
def evaluate(model_spec: Mapping[str, Any], params: np.ndarray, x: np.ndarray, y: np.ndarray, *, n_features: int, n_classes: int) -> dict[str, float]:
    """Accuracy, AUC and mean loss of the global model ``params`` on ``(x, y)``."""
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
    test: tuple[np.ndarray, np.ndarray],
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
    progress: Callable[[dict[str, Any]], None] | None = None,
    faults: Mapping[str, Mapping[int, str]] | None = None,
) -> dict[str, Any]:
    """Run a horizontal job in-process (one thread per party, the production party functions).

    Args:
        silos: ``{name: (X_train, y_train)}``, features already scaled by the data loader.
        test: pooled held-out rows used only to report metrics.
        backend, backend_params: crypto backend name and parameters.
        model, training, privacy: the federation file's ``[model]``, ``[training]`` and
            ``[privacy]`` tables (``privacy=None``: no DP).
        ledger_dir: folder of the silos' ledgers (``<silo>.sqlite``, dataset = silo name);
            ``None`` uses a temporary folder.
        budgets: ``{silo: (epsilon, delta)}`` ledger budgets.
        job, seed, min_silos, round_timeout: from ``[federation]``.
        progress: called after each round with ``{"task", "round", "rounds", "accuracy", "auc",
            "loss", "silos"}``.
        faults: test hook ``{silo: {round: "hello" | "update" | "topup"}}`` (see :func:`silo`).

    Returns:
        ``{"task": "horizontal", "backend", "rounds": [{round, accuracy, auc, loss, silos}],
        "final": {accuracy, auc}, "epsilon": {silo: {epsilon, delta}} (values None without DP),
        "dp": {noise_multiplier, clip, rounds, sample_rate, delta, level, steps, accountant} | None,
        "bytes_sent": {party: bytes}, "notes": [str]}`` (notes: withdrawals, skipped rounds,
        dropouts). For record-level DP, ``noise_multiplier``,
        ``sample_rate`` and ``steps`` differ per silo (each silo's own row count); ``dp`` then
        holds the largest ``sample_rate`` and smallest ``noise_multiplier`` and ``dp["silos"]``
        each silo's values.

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
    labels = np.unique(np.concatenate([np.asarray(y) for _, y in silos.values()] + [np.asarray(test[1])]))
    n_classes = max(2, int(labels.max()) + 1) if labels.size else 2
    params = dict(backend_params)
    if backend == "paillier":
        # headroom for every silo's update plus its top-up share
        params.setdefault("max_summands", max(16, 2 * len(names)))
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
    )
    rounds_total = spec.rounds
    spec.strategy()  # validate strategy / DP settings before any thread starts
    x_test, y_test = np.asarray(test[0]), np.asarray(test[1])
    lock = threading.Lock()
    metrics: dict[int, dict[str, Any]] = {}

    def on_round(report: RoundReport) -> None:
        with lock:
            if report.round in metrics:
                return
            metrics[report.round] = {}  # claim the round before the slow part
        m = evaluate(model, report.params, x_test, y_test, n_features=n_features, n_classes=n_classes)
        row = {"round": report.round, **m, "silos": list(report.contributors)}
        with lock:
            metrics[report.round] = row
        if progress is not None:
            progress({"task": "horizontal", "rounds": rounds_total, **row})

    hub = InProcessHub(job, [*names, AGGREGATOR])
    base = np.random.SeedSequence(int(seed))
    silo_seeds = {n: int(s.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)) for n, s in zip(names, base.spawn(len(names)))}
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
                ledger=ledgers.get(n),
                dataset=n,
                noise_seed=silo_seeds[n],
                drop_rounds=(faults or {}).get(n),
                on_round=on_round,
            )
        )
    opened = (
        job_ledgers(ledger_dir, parties=names, budgets=budgets, accountant=str(privacy.get("accountant", "rdp")))
        if privacy is not None
        else nullcontext({})
    )
    with opened as ledgers:
        results = run_parties(hub, parties)
    agg: AggregatorReport = results[AGGREGATOR]
    reports: dict[str, SiloReport] = {n: results[n] for n in names}
    if agg.status == "stopped":
        raise NotEnoughSilosError(agg.reason)
    initial = build_model(model, n_features=n_features, n_classes=n_classes, seed=int(seed))
    base_metrics = evaluate(model, get_flat_params(initial), x_test, y_test, n_features=n_features, n_classes=n_classes)
    rows: list[dict[str, Any]] = []
    last = {"accuracy": base_metrics["accuracy"], "auc": base_metrics["auc"]}
    for rnd in range(1, rounds_total + 1):
        row = metrics.get(rnd)
        if row:
            rows.append(row)
            last = {"accuracy": row["accuracy"], "auc": row["auc"]}
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
    eps: dict[str, dict[str, float | None]] = {}
    for n in names:
        if privacy is None:
            eps[n] = {"epsilon": None, "delta": None}
            continue
        delta = float(privacy.get("delta", 1e-5))
        ev = reports[n].events
        e = _epsilon(ComposedEvent(ev), delta=delta, accountant=str(privacy.get("accountant", "rdp"))) if ev else 0.0
        eps[n] = {"epsilon": e, "delta": delta}
    return {
        "task": "horizontal",
        "backend": backend,
        "rounds": rows,
        "final": last,
        "epsilon": eps,
        "dp": _summarize_dp(reports),
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
