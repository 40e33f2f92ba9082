"""A whole vertical job per party — align (PSI), split, train, evaluate — and its simulation.

:func:`vertical_party` is what each silo runs (the silo agents call it over gRPC channels);
:func:`simulate_vertical` runs every party on one machine through an
:class:`~fedsilo.protocols.channel.InProcessHub`, with exactly the same per-party code.

Rounds on the channel: 0 = PSI, 1 = train/test split, 2… = training (see :mod:`.lr`), then
the final joint prediction on the evaluation rows.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contextlib import nullcontext
import numpy as np
import pandas as pd

from fedsilo.crypto.registry import get_backend, get_backend_class
from fedsilo.errors import ConfigError, DataError, ProtocolError
from fedsilo.protocols.ledgers import job_ledgers
from fedsilo.privacy.ledger import PrivacyLedger
from fedsilo.privacy.mechanisms import secure_rng
from fedsilo.protocols.channel import Channel, InProcessHub, run_parties
from fedsilo.protocols.policy import require_confidential
from fedsilo.protocols.psi import align_guest, align_host, psi_executor
from fedsilo.protocols.vertical.data import check_bounds, feature_bounds, prepare_table
from fedsilo.protocols.vertical.lr import (
    DpConfig,
    FitResult,
    Topology,
    TrainingConfig,
    arbiter_train,
    guest_train,
    host_train,
    predict_guest,
    serve_predictions,
    evaluation_metrics,
)

__all__ = ["ROLES", "VerticalSpec", "backend_params_for", "simulate_vertical", "vertical_parties", "vertical_party"]

ROLES = ("guest", "host", "arbiter")
_DP_KEYS = {"epsilon", "delta", "clip", "logit_clip", "accountant", "level", "colluders"}
_SPLIT_ROUND = 1
#: guest -> hosts, once after PSI: ``{"test": int array}`` (the held-out row indices; public)
SPLIT = "vlr/split"
_TRAIN_ROUND = 2


@dataclass(frozen=True, slots=True)
class VerticalSpec:
    """Everything the parties of one vertical job agree on (public configuration).

    ``bounds``: public feature bounds ``column -> (lo, hi)`` (a data dictionary, e.g. the
    config's ``[data] bounds``); each party clips its columns to them and maps them to
    ``[-1, 1]``. Under DP every feature needs bounds; without DP, columns without bounds are
    standardized with the party's own training rows.
    """

    topology: Topology
    id_column: str
    label: str
    backend: str = "ckks"
    backend_params: Mapping[str, Any] = field(default_factory=dict)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    dp: DpConfig | None = None
    test_fraction: float = 0.2
    psi_workers: int | None = 1
    bounds: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    #: ``[crypto] insecure``: allows a backend without confidentiality and training without DP
    insecure: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.test_fraction, (int, float)) and 0.0 <= self.test_fraction < 1.0):
            raise ConfigError(f"test_fraction must be in [0, 1), got {self.test_fraction!r}")
        object.__setattr__(self, "bounds", check_bounds(self.bounds))


def backend_params_for(backend: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The backend parameters vertical LR runs with: the backend's defaults for ciphertext ×
    plaintext matrix (CKKS: the depth-2 ``matmul`` profile with Galois keys) under ``params``."""
    return get_backend_class(backend).params_for("matmul", summands=1, params=params)


def _split(rng: np.random.Generator, n: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    n_test = int(round(fraction * n))
    if fraction > 0 and n >= 2:
        n_test = min(max(n_test, 1), n - 1)
    perm = rng.permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def vertical_party(
    channel: Channel,
    *,
    spec: VerticalSpec,
    table: pd.DataFrame | None,
    rng: np.random.Generator,
    public_rng: np.random.Generator,
    ledger: PrivacyLedger | None = None,
    dataset: str | None = None,
    source: str | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run this party's role (from ``spec.topology``) in a whole vertical job.

    Under DP a data party needs ``ledger`` and ``dataset`` and public bounds for each of its
    features (``spec.bounds``); both are checked before PSI starts.

    ``rng`` is the party's **secret** randomness (PSI shuffles, gradient masks, noise shares,
    noise on released scores): the OS CSPRNG, :func:`~fedsilo.privacy.mechanisms.secure_rng`,
    outside tests. ``public_rng`` decides only public choices (the guest's train/test split and
    batch order) and may come from the job seed.

    Returns this party's report: its history and final metrics (guest), its DP spending, PSI
    sizes, and its local model (never sent to anyone).

    Raises:
        ConfigError: DP without a ledger or without bounds for every feature.
    """
    me = channel.party
    top = spec.topology
    src = source or me
    backend = get_backend(spec.backend, **backend_params_for(spec.backend, spec.backend_params))
    require_confidential(backend, insecure=spec.insecure, who=f"{src}: party {me!r}")
    if spec.dp is None and not spec.insecure:
        raise ConfigError(
            f"{src}: party {me!r}: vertical training without DP gives every party its exact gradient, from which "
            "a party with enough features recovers the labels; add DP, or set [crypto] insecure = true "
            "(tests and baselines only)"
        )
    if me == top.arbiter:
        fit = arbiter_train(channel, topology=top, backend=backend, config=spec.training, rng=rng,
                            start_round=_TRAIN_ROUND)
        return {"role": "arbiter", "epochs": fit.epochs_run}
    if table is None:
        raise DataError(f"{src}: party {me!r} ({'guest' if me == top.guest else 'host'}) has no table")
    if spec.dp is not None and (ledger is None or dataset is None):
        raise ConfigError(f"{src}: differential privacy needs a privacy ledger and the dataset name to charge")
    T = spec.training.timeout
    common = dict(backend=backend, config=spec.training, dp=spec.dp, ledger=ledger, dataset=dataset, rng=rng,
                  start_round=_TRAIN_ROUND, bounds=spec.bounds)
    if me == top.guest:
        data = prepare_table(table, source=src, id_column=spec.id_column, label=spec.label)
        feature_bounds(data.columns, spec.bounds, source=src, required=spec.dp is not None)
        with psi_executor(spec.psi_workers) as ex:
            al = align_guest(channel, hosts=top.hosts, ids=data.ids, rng=rng, round=0, executor=ex, source=src)
        train_rows, test_rows = _split(public_rng, al.size, spec.test_fraction)
        channel.broadcast(top.hosts, SPLIT, {"test": test_rows}, round=_SPLIT_ROUND)
        assert data.labels is not None
        x, y = data.features[al.positions], data.labels[al.positions]
        fit = guest_train(channel, topology=top, x=x, y=y, train_rows=train_rows, eval_rows=test_rows,
                          columns=data.columns, progress=progress, batch_rng=public_rng, **common)
        final: dict[str, float] = {}
        # Without DP (insecure) the hosts' exact held-out scores are released once; under DP no
        # per-customer score can be released usefully, so the guest gets no held-out metrics.
        if test_rows.size and spec.dp is None:
            assert fit.model is not None
            probs = predict_guest(channel, hosts=top.hosts, model=fit.model, x=x, rows=test_rows,
                                  round=fit.next_round, timeout=T)
            final = evaluation_metrics(y[test_rows], probs)
        return _report("guest", fit, al.size, al.local_size, al.pairwise, train_rows.size, test_rows.size,
                       final=final, test_ids=[al.ids[i] for i in test_rows.tolist()])
    data = prepare_table(table, source=src, id_column=spec.id_column, label=None)
    feature_bounds(data.columns, spec.bounds, source=src, required=spec.dp is not None)
    with psi_executor(spec.psi_workers) as ex:
        al = align_host(channel, guest=top.guest, ids=data.ids, rng=rng, round=0, executor=ex, source=src)
    msg = channel.recv(top.guest, SPLIT, round=_SPLIT_ROUND, timeout=T)
    test_rows = msg.get("test") if isinstance(msg, dict) else None
    if not isinstance(test_rows, np.ndarray) or test_rows.dtype.kind != "i" or (
        test_rows.size and (test_rows.min() < 0 or test_rows.max() >= al.size)
    ):
        raise ProtocolError(f"{me}: malformed train/test split from the guest")
    expected = _split(np.random.default_rng(0), al.size, spec.test_fraction)[1].size
    if test_rows.size != expected or np.unique(test_rows).size != test_rows.size:
        # the host scores held-out rows for the guest: never more of them than the job agreed
        raise ProtocolError(f"{me}: the guest held out {test_rows.size} rows, the job's test_fraction means {expected}")
    train_rows = np.setdiff1d(np.arange(al.size), test_rows)
    x = data.features[al.positions]
    fit = host_train(channel, topology=top, x=x, train_rows=train_rows, eval_rows=test_rows, columns=data.columns, **common)
    if test_rows.size and spec.dp is None:
        assert fit.model is not None
        serve_predictions(channel, guest=top.guest, model=fit.model, x=x, allowed=test_rows, round=fit.next_round,
                          timeout=T)
    return _report("host", fit, al.size, al.local_size, al.pairwise, train_rows.size, test_rows.size)


def _simulation_metrics(spec: VerticalSpec, tables: Mapping[str, pd.DataFrame], out: Mapping[str, Any]) -> dict[str, float]:
    """Held-out metrics of the joint model computed by the *simulation*, which holds every
    party's table and local model: simulation only, not private, never seen by any party."""
    top = spec.topology
    guest = out[top.guest]
    test_ids = guest.get("test_ids") or []
    if not test_ids:
        return {}
    logits = np.zeros(len(test_ids))
    labels = None
    for p in top.data_parties:
        data = prepare_table(tables[p], source=p, id_column=spec.id_column, label=spec.label if p == top.guest else None)
        where = {i: k for k, i in enumerate(data.ids)}
        rows = np.array([where[i] for i in test_ids], dtype=np.int64)
        logits = logits + out[p]["model"].partial_logits(data.features[rows])
        if p == top.guest:
            assert data.labels is not None
            labels = data.labels[rows]
    assert labels is not None
    return evaluation_metrics(labels, 1.0 / (1.0 + np.exp(-logits)))


def _report(role: str, fit: FitResult, aligned: int, local: int, pairwise: Mapping[str, int], n_train: int, n_test: int,
            **extra: Any) -> dict[str, Any]:
    return {
        "role": role,
        "history": fit.history,
        "epochs": fit.epochs_run,
        "stopped_early": fit.stopped_early,
        "epsilon": fit.epsilon,
        "dp": fit.dp,
        "model": fit.model,
        "psi": {"intersection": aligned, "local": local, "pairwise": dict(pairwise)},
        "rows": {"train": n_train, "test": n_test},
        **extra,
    }


def _public_rng(seed: int | None, index: int) -> np.random.Generator:
    """Public choices only (split, batch order): reproducible from the job seed."""
    return np.random.Generator(np.random.Philox(np.random.SeedSequence(None if seed is None else [int(seed), index])))


def _secret_rng(noise_seed: int | None, index: int) -> np.random.Generator:
    """Masks, noise, PSI shuffles: the OS CSPRNG; a ``noise_seed`` (tests only) makes the run
    reproducible and **not private** (anyone with the seed can regenerate every noise share)."""
    if noise_seed is None:
        return secure_rng()
    return secure_rng(int(np.random.SeedSequence([int(noise_seed), index]).generate_state(1, dtype=np.uint64)[0]))


def _parse_roles(roles: Mapping[str, str]) -> Topology:
    bad = {p: r for p, r in roles.items() if r not in ROLES}
    if bad:
        raise ConfigError(f"unknown vertical roles {bad}; expected one of {', '.join(ROLES)}")
    guests = [p for p, r in roles.items() if r == "guest"]
    arbiters = [p for p, r in roles.items() if r == "arbiter"]
    if len(guests) != 1:
        raise ConfigError(f"a vertical job needs exactly one guest (the label holder), got {guests}")
    if len(arbiters) > 1:
        raise ConfigError(f"a vertical job has at most one arbiter, got {arbiters}")
    return Topology(guest=guests[0], hosts=tuple(p for p, r in roles.items() if r == "host"),
                    arbiter=arbiters[0] if arbiters else None)


def _parse_dp(dp: Mapping[str, Any] | None) -> tuple[DpConfig | None, list[str]]:
    """DpConfig from the ``[privacy]`` settings; ``level`` is accepted but vertical DP is always
    record level (one customer's row), which the notes say when ``level = "silo"`` was asked."""
    if dp is None:
        return None, []
    unknown = set(dp) - _DP_KEYS
    if unknown:
        raise ConfigError(f"unknown DP settings {sorted(unknown)}; expected some of {sorted(_DP_KEYS)}")
    if "epsilon" not in dp:
        raise ConfigError("DP settings need 'epsilon'")
    settings = dict(dp)
    level = settings.pop("level", "record")
    if level not in ("silo", "record"):
        raise ConfigError(f"privacy level must be 'silo' or 'record', got {level!r}")
    notes = []
    if level == "silo":
        notes.append(
            "vertical training protects records (one customer's row), not whole silos: every silo holds "
            "every customer, so privacy.level = 'silo' is read as 'record'"
        )
    return DpConfig(**settings), notes


def vertical_parties(
    spec: VerticalSpec,
    tables: Mapping[str, pd.DataFrame],
    *,
    seed: int | None = None,
    noise_seed: int | None = None,
    ledgers: Mapping[str, PrivacyLedger] | None = None,
    datasets: Mapping[str, str] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Callable[[Channel], dict[str, Any]]]:
    """One function per party, ready for :func:`~fedsilo.protocols.channel.run_parties`.

    ``seed`` decides public choices (split, batch order); secret randomness is the OS CSPRNG
    unless ``noise_seed`` (tests only: the run is then not private)."""
    top = spec.topology
    names = [*top.data_parties, *([top.arbiter] if top.arbiter else [])]
    ledgers = ledgers or {}
    datasets = datasets or {}

    def make(i: int, name: str) -> Callable[[Channel], dict[str, Any]]:
        def fn(ch: Channel) -> dict[str, Any]:
            return vertical_party(ch, spec=spec, table=tables.get(name), rng=_secret_rng(noise_seed, i),
                                  public_rng=_public_rng(seed, i),
                                  ledger=ledgers.get(name), dataset=datasets.get(name, name), source=name,
                                  progress=progress if name == top.guest else None)
        return fn

    return {name: make(i, name) for i, name in enumerate(names)}


def simulate_vertical(
    *,
    tables: Mapping[str, pd.DataFrame],
    roles: Mapping[str, str],
    id_column: str,
    label: str,
    backend: str = "ckks",
    backend_params: Mapping[str, Any] | None = None,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 0.3,
    l2: float = 0.0,
    tol: float | None = None,
    dp: Mapping[str, Any] | None = None,
    ledger_dir: str | Path | None = None,
    budgets: Mapping[str, tuple[float, float]] | None = None,
    datasets: Mapping[str, str] | None = None,
    job: str = "vertical",
    seed: int | None = 0,
    noise_seed: int | None = None,
    insecure: bool = False,
    test_fraction: float = 0.2,
    psi_workers: int | None = 1,
    timeout: float = 600.0,
    progress: Callable[[dict[str, Any]], None] | None = None,
    bounds: Mapping[str, tuple[float, float]] | None = None,
) -> dict[str, Any]:
    """Run a vertical job (PSI alignment, hetero-LR training, joint evaluation) on one machine.

    Args:
        tables: one table per guest/host party (the arbiter has none).
        roles: party -> ``"guest"`` | ``"host"`` | ``"arbiter"``; without an arbiter, exactly
            one host (two-party topology, see :mod:`.lr`).
        id_column: the column PSI aligns on (IDs compared as strings).
        label: the guest's 0/1 label column.
        backend, backend_params: crypto backend by name (``ckks`` default, ``paillier``,
            ``plain`` for tests) and its parameters (CKKS defaults to ``profile="matmul"``;
            Paillier must be unpacked, the default).
        epochs, batch_size, lr, l2, tol: training (``lr / sqrt(epoch)`` schedule; ``tol``:
            early stopping on the training loss, ignored under DP).
        dp: ``None`` or ``{"epsilon", "delta"=1e-5, "clip"=1.0, "logit_clip"=2.0,
            "accountant"="rdp", "colluders"=1, "level"}`` — record-level, per data party,
            whole run (``level`` is accepted; vertical DP is always record level).
        ledger_dir: under DP, each data party charges ``LEDGER_DIR/<party>.sqlite`` before any
            release (``None``: a temporary folder, removed afterwards; ε is still charged and
            reported); ``budgets`` (party -> (ε, δ)) registers each dataset's budget
            (default: the DP target).
        datasets: party -> dataset name in its ledger (default: the party name).
        job, seed: job id; seed for the public choices (train/test split, batch order).
        noise_seed: **tests only** — seeds masks, noise and PSI shuffles so a run can be
            repeated; the results then say ``"private": False`` and the ledger entries record
            ``"reproducible_noise": true``. ``None`` (always, outside tests): the OS CSPRNG.
        insecure: ``[crypto] insecure``: allows the ``plain`` backend (or any backend without
            confidentiality) and training without DP; the results then say ``"private": False``.
        test_fraction: aligned rows held out for evaluation.
        psi_workers: processes per party for PSI curve work (``None``: all cores).
        timeout: seconds any party waits for one message.
        progress: called by the guest after each epoch with that epoch's record (plus
            ``epsilon``: party -> ε spent so far, under DP).
        bounds: public feature bounds ``column -> (lo, hi)`` (the config's ``[data] bounds``):
            features are clipped to them and mapped to ``[-1, 1]``. Under DP every feature of
            every party needs one (else :class:`ConfigError` naming the features); without
            DP, features without bounds are standardized with the party's training rows.

    Returns:
        The results contract: ``task``, ``backend``, ``topology``, ``rounds`` (per-epoch
        ``round, loss, lr, auc, accuracy, ks, test_loss``), ``final`` (``accuracy, auc, ks,
        test_loss``), ``epsilon`` (data party -> ``{epsilon, delta, accountant, ledger_spent}``; empty
        without DP),
        ``dp`` (``noise_multiplier, clip, logit_clip, rounds, sample_rate, delta, …``) or None,
        ``bytes_sent`` (party -> bytes), ``psi`` (``intersection``, ``pairwise``),
        ``rows``, ``epochs``, ``stopped_early``, ``seconds``, ``notes``.
    """
    top = _parse_roles(roles)
    dp_cfg, notes = _parse_dp(dp)
    training = TrainingConfig(epochs=epochs, batch_size=batch_size, lr=lr, l2=l2, tol=tol, timeout=timeout)
    spec = VerticalSpec(topology=top, id_column=id_column, label=label, backend=backend,
                        backend_params=dict(backend_params or {}), training=training, dp=dp_cfg,
                        test_fraction=test_fraction, psi_workers=psi_workers, bounds=dict(bounds or {}),
                        insecure=bool(insecure))
    for p in top.data_parties:
        if p not in tables:
            raise ConfigError(f"party {p!r} ({roles[p]}) has no table")
    if top.arbiter is not None and tables.get(top.arbiter) is not None:
        raise ConfigError(f"the arbiter {top.arbiter!r} holds no data; remove its table")
    if dp_cfg is not None:  # name every party's unbounded features at once, before any PSI
        unbounded = {}
        for p in top.data_parties:
            cols = prepare_table(tables[p], source=p, id_column=id_column, label=label if p == top.guest else None).columns
            missing = [c for c in cols if c not in spec.bounds]
            if missing:
                unbounded[p] = missing
        if unbounded:
            listed = "; ".join(f"{p}: {m}" for p, m in unbounded.items())
            raise ConfigError(
                f"differential privacy needs public bounds for every feature; none for {listed}. Add them to "
                "[data] bounds = {column = [lo, hi]} (a data dictionary's range, not the data's own min/max)"
            )
    get_backend(backend, **backend_params_for(backend, backend_params or {}))  # fail fast on bad parameters
    datasets = dict(datasets or {})
    opened = (
        job_ledgers(
            ledger_dir,  # DP never runs without a ledger: None charges a throw-away one
            parties=top.data_parties,
            budgets={p: (budgets or {}).get(p, (dp_cfg.epsilon, dp_cfg.delta)) for p in top.data_parties},
            accountant=dp_cfg.accountant,
            datasets=datasets,
            reproducible_noise=noise_seed is not None,
        )
        if dp_cfg is not None
        else nullcontext({})
    )
    with opened as ledgers:
        hub = InProcessHub(job, [*top.data_parties, *([top.arbiter] if top.arbiter else [])])
        start = time.perf_counter()
        out = run_parties(hub, vertical_parties(spec, tables, seed=seed, noise_seed=noise_seed, ledgers=ledgers,
                                                   datasets=datasets, progress=progress))
        seconds = time.perf_counter() - start
        spent = {p: led.spent(datasets.get(p, p)) for p, led in ledgers.items()}
    guest = out[top.guest]
    plan = guest["dp"]
    eps: dict[str, dict[str, Any]] = {}
    for p in top.data_parties if plan is not None else ():
        rep = out[p]
        eps[p] = {"epsilon": rep["epsilon"], "delta": plan.delta, "accountant": plan.accountant,
                  "ledger_spent": spent[p]}
    dp_out = None
    if plan is not None:
        dp_out = {
            "noise_multiplier": plan.noise_multiplier,
            "event_noise_multiplier": plan.event_multiplier,
            "clip": plan.clip,
            "logit_clip": plan.logit_clip,
            "rounds": plan.steps_per_epoch * guest["epochs"],
            "sample_rate": plan.sample_rate,
            "neighbouring": plan.neighbouring,
            "delta": plan.delta,
            "target_epsilon": plan.epsilon,
            "accountant": plan.accountant,
            "colluders": plan.colluders,
            "noise_adders": plan.noise_adders,
            "level": "record",
        }
    if dp_cfg is None:
        notes.append(
            "no DP (insecure): every party received its exact gradient and the guest the hosts' exact "
            "held-out partial scores (docs/vertical.md, 'What each party learns')"
        )
    elif guest["rows"]["test"]:
        notes.append(
            "DP: no held-out scores were released (a per-customer score cannot be noised usefully), so the "
            "guest has no held-out metrics ('final' is empty); 'simulation_metrics' are computed by the "
            "simulation from every party's model: simulation only, not private, seen by no party"
        )
    if noise_seed is not None:
        notes.append("NOT PRIVATE: noise_seed was set (test-only); anyone with the seed can regenerate the noise")
    return {
        "task": "vertical",
        "backend": backend,
        "private": noise_seed is None and not insecure,
        "topology": {"guest": top.guest, "hosts": list(top.hosts), "arbiter": top.arbiter},
        "rounds": guest["history"],
        "final": guest.get("final", {}),
        "simulation_metrics": _simulation_metrics(spec, tables, out),
        "epsilon": eps,
        "dp": dp_out,
        "bytes_sent": hub.bytes_sent(),
        "psi": {"intersection": guest["psi"]["intersection"], "pairwise": guest["psi"]["pairwise"],
                "sizes": {p: out[p]["psi"]["local"] for p in top.data_parties}},
        "rows": guest["rows"],
        "epochs": guest["epochs"],
        "stopped_early": guest["stopped_early"],
        "seconds": seconds,
        "notes": notes,
    }
