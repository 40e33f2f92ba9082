"""The ``vertical`` task: PSI alignment and heterogeneous logistic regression across silos that
hold different columns of the same customers.

Each data party (guest, hosts) loads its own table and runs
:func:`fedsilo.protocols.vertical.job.vertical_party` with its own ledger and secret randomness;
the arbiter, if any, holds no data. The plan is public: roles, the typed training and privacy
sections, public feature bounds. Results follow docs/results.md.
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedsilo.crypto.registry import get_backend, get_backend_class
from fedsilo.errors import ConfigError
from fedsilo.privacy.mechanisms import secure_rng
from fedsilo.privacy.relations import REPLACE_RECORD
from fedsilo.protocols.channel import Channel
from fedsilo.protocols.spec import PrivacySection, TrainingSection, section
from fedsilo.protocols.vertical.config import dp_plan, spent_epsilon
from fedsilo.protocols.vertical.data import prepare_table
from fedsilo.protocols.vertical.job import ROLES, VerticalSpec, backend_params_for, vertical_party
from fedsilo.protocols.vertical.lr import Topology, TrainingConfig, evaluation_metrics
from fedsilo.protocols.vertical.model import fit_model
from fedsilo.protocols.vertical.data import holdout_split
from fedsilo.protocols.vertical.taylor import (
    DpPlan,
    epoch_partition,
    guest_residual_part,
    learning_rate,
    sigmoid,
    taylor_loss,
)
from fedsilo.silos.config import JobConfig
from fedsilo.protocols.psi_ids import ids_from_column
from fedsilo.silos.data import (
    DataSource,
    FrameSource,
    LocalTable,
    file_first_line,
    require_columns,
    require_numeric,
)
from fedsilo.silos.ledgers import Release, opened
from fedsilo.silos.tasks.horizontal import BASELINES_LABEL
from fedsilo.silos.tasks.secureboost import KIND as SECUREBOOST_KIND, SECUREBOOST, secureboost_baselines
from fedsilo.silos.runner import (
    JobContext,
    JobRun,
    Party,
    Progress,
    Task,
    budgets_for,
    get_engine,
    ledger_directory,
    ledger_specs,
    refuse_unread,
    register_task,
    run_plan,
    sources_for,
)

__all__ = ["HOSTS_ALONE", "VERTICAL", "label_only_guest", "AlignedTables", "VerticalPlan", "aligned_tables", "epsilon_per_epoch",
           "lr_baselines", "planned_releases", "simulate_vertical", "topology_of", "vertical_baselines"]

#: the [model] a vertical job trains: hetero logistic regression only
_MODEL_KINDS = ("logistic",)


@dataclass(frozen=True)
class VerticalPlan:
    """What every party of one vertical job receives (public)."""

    job: str
    spec: VerticalSpec
    #: the job's public seed: the guest's train/test split and batch order
    seed: int | None
    notes: tuple[str, ...] = ()


def topology_of(roles: Mapping[str, str]) -> Topology:
    """The topology from ``{party: role}``: one guest, hosts, at most one arbiter."""
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


def _level_note(privacy: PrivacySection | None) -> list[str]:
    if privacy is not None and privacy.level == "silo" and "level" in privacy.model_fields_set:
        return [
            "vertical training protects records (one customer's row), not whole silos: every silo holds "
            "every customer, so privacy.level = 'silo' is read as 'record'"
        ]
    return []


def _public_rng(seed: int | None, index: int) -> np.random.Generator:
    """Public choices only (split, batch order): reproducible from the job seed."""
    return np.random.Generator(np.random.Philox(np.random.SeedSequence(None if seed is None else [int(seed), index])))


def _secret_rng(noise_seed: int | None) -> np.random.Generator:
    """Masks, noise, PSI shuffles: the OS CSPRNG; a ``noise_seed`` (tests only) makes the run
    reproducible and **not private** (anyone with the seed can regenerate every noise share)."""
    return secure_rng(noise_seed)


def _features(spec: VerticalSpec, columns: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    top = spec.topology
    return {p: [c for c in cols if c != spec.id_column and not (p == top.guest and c == spec.label)]
            for p, cols in columns.items()}


def check_bound_keys(spec: VerticalSpec, columns: Mapping[str, Sequence[str]], *, source: str) -> None:
    """Every ``[data] bounds`` key of a config names a feature of some party: a typo must not
    leave a feature unbounded."""
    every = [c for cols in _features(spec, columns).values() for c in cols]
    stray = [str(c) for c in spec.bounds if c not in every]
    if stray:
        raise ConfigError(
            f"{source}: key 'data.bounds': {stray} are not feature column(s) of the silos' data "
            f"(features: {every[:12]}{' ...' if len(every) > 12 else ''})"
        )


def check_schemas(spec: VerticalSpec, columns: Mapping[str, Sequence[str]], *, source: str) -> None:
    """Public-schema check before any party starts: under DP every feature of every party has
    public bounds (all named at once)."""
    features = _features(spec, columns)
    if spec.dp is None:
        return
    unbounded = {p: [c for c in cols if c not in spec.bounds] for p, cols in features.items()}
    unbounded = {p: m for p, m in unbounded.items() if m}
    if unbounded:
        listed = "; ".join(f"{p}: {m}" for p, m in unbounded.items())
        raise ConfigError(
            f"differential privacy needs public bounds for every feature; none for {listed}. Add them to "
            "[data] bounds = {column = [lo, hi]} (a data dictionary's range, not the data's own min/max)"
        )


def make_vertical_spec(
    *, roles: Mapping[str, str], id_column: str, label: str, backend: str, backend_params: Mapping[str, Any],
    training: TrainingSection, privacy: PrivacySection | None, round_timeout: float, test_fraction: float,
    bounds: Mapping[str, tuple[float, float]], insecure: bool, psi_workers: int | None = 1,
) -> VerticalSpec:
    """The typed spec every party receives, with the backend's parameters checked before any
    party starts."""
    spec = VerticalSpec(
        topology=topology_of(roles), id_column=id_column, label=label, backend=backend,
        backend_params=dict(backend_params), training=TrainingConfig.from_sections(training, timeout=round_timeout),
        dp=privacy, test_fraction=test_fraction, psi_workers=psi_workers, bounds=dict(bounds), insecure=insecure,
    )
    built = get_backend(backend, **backend_params_for(backend, backend_params))  # fail fast on bad parameters
    # training.fill_slots on a backend without slots: refused before any party starts, not after PSI
    spec.training.batch_rows(built, {"any gradient": 1})
    return spec


class VerticalTask(Task):
    name = "vertical"
    roles = ("guest", "host", "arbiter")

    def check(self, cfg: JobConfig, source: str) -> None:
        if cfg.model.kind == SECUREBOOST_KIND:  # gradient-boosted trees: fedsilo.silos.tasks.secureboost
            return SECUREBOOST.check(cfg, source)
        caps = get_backend_class(cfg.crypto.backend).capabilities()
        if caps.keyless or not caps.plaintext_matmul:
            # refused here, not in a party at key generation (found by the bad-input sweep)
            raise ConfigError(
                f"{source}: key 'crypto.backend': {cfg.crypto.backend!r} has no matmul_plain"
                f"{' (a keyless secure-sum backend)' if caps.keyless else ''}; vertical logistic regression needs "
                "one: paillier or ckks"
            )
        if cfg.model.kind not in _MODEL_KINDS:
            raise ConfigError(
                f"{source}: key 'model.kind': a vertical job trains hetero logistic regression "
                f"({', '.join(repr(k) for k in _MODEL_KINDS)}); {cfg.model.kind!r} is not supported"
            )
        if not cfg.data.label:
            raise ConfigError(f"{source}: task 'vertical' needs [data] label (the target column)")
        if not cfg.data.id_column:
            raise ConfigError(f"{source}: task 'vertical' needs [data] id_column (the column PSI aligns on)")
        roles = [s.role for s in cfg.silos]
        if roles.count("guest") != 1 or roles.count("host") < 1:
            raise ConfigError(f"{source}: task 'vertical' needs exactly one silo with role 'guest' and at least one 'host'")
        refuse_unread(cfg, source, self.name, {
            "model": ["kind"],
            "training": ["rounds", "batch_size", "lr", "l2", "early_stopping_tol", "fill_slots"],
            "statistics": None,
            # privacy.mode (distributed DP-SGD) is horizontal only
            "privacy": ["epsilon", "delta", "clip", "logit_clip", "accountant", "level", "colluders"],
            "data": ["label", "id_column", "test_fraction", "bounds"],
            # every party is needed in every step: there is no quorum
            "federation": ["name", "task", "seed", "round_timeout"],
        })
        if cfg.privacy is not None and cfg.training.early_stopping_tol is not None:
            raise ConfigError(
                f"{source}: key 'training.early_stopping_tol': under DP the training loss is not decrypted (it "
                "would be a further release), so the planned epochs always run; remove it"
            )

    def insecure_settings(self, cfg: JobConfig) -> list[tuple[str, str]]:
        if cfg.model.kind == SECUREBOOST_KIND:
            return SECUREBOOST.insecure_settings(cfg)
        if cfg.privacy is not None:
            return []
        return [(
            "privacy",
            "vertical training without [privacy] gives each party its exact decrypted gradient "
            "X_p^T d / n, from which a party with enough features recovers the guest's labels; add a "
            '[privacy] section (e.g. epsilon = 8, level = "record"), or ',
        )]

    def topology(self, cfg: JobConfig) -> Any:
        # None: the built-in vertical topology (fedsilo.silos.topology)
        return SECUREBOOST.topology(cfg) if cfg.model.kind == SECUREBOOST_KIND else None

    def plan(self, cfg: JobConfig, ctx: JobContext) -> tuple[VerticalPlan, list[Party]]:
        if cfg.model.kind == SECUREBOOST_KIND:
            return SECUREBOOST.plan(cfg, ctx)  # type: ignore[return-value]
        assert cfg.data.label is not None and cfg.data.id_column is not None
        sources = dict(ctx.sources)
        roles = {s.name: s.role for s in cfg.silos}
        spec = make_vertical_spec(
            roles=roles, id_column=cfg.data.id_column, label=cfg.data.label, backend=cfg.crypto.backend,
            backend_params=cfg.crypto.params, training=cfg.training, privacy=cfg.privacy,
            round_timeout=cfg.federation.round_timeout, test_fraction=cfg.data.test_fraction,
            bounds={k: (float(v[0]), float(v[1])) for k, v in cfg.data.bounds.items()}, insecure=cfg.crypto.insecure,
        )
        plan = VerticalPlan(ctx.job, spec, cfg.federation.seed, tuple(_level_note(cfg.privacy)))
        return plan, parties_for(plan, sources, ledger_dir=ctx.ledger_dir, budgets=budgets_for(cfg),
                                 noise_seed=ctx.noise_seed, source=cfg._source, bounds_from_config=True)

    def planned_charges(self, cfg: JobConfig, sources: Mapping[str, DataSource]) -> dict[str, list[Release]]:
        """Every release each data party in ``sources`` charges over the job
        (:func:`planned_releases`): from the config alone (the per-epoch event does not depend
        on the aligned row count), checked against each ledger before PSI and the first epoch."""
        if cfg.model.kind == SECUREBOOST_KIND:
            hook = getattr(SECUREBOOST, "planned_charges", None)
            return {} if hook is None else hook(cfg, sources)
        if cfg.privacy is None:
            return {}
        assert cfg.data.label is not None and cfg.data.id_column is not None
        spec = make_vertical_spec(
            roles={s.name: s.role for s in cfg.silos}, id_column=cfg.data.id_column, label=cfg.data.label,
            backend=cfg.crypto.backend, backend_params=cfg.crypto.params, training=cfg.training,
            privacy=cfg.privacy, round_timeout=cfg.federation.round_timeout, test_fraction=cfg.data.test_fraction,
            bounds={k: (float(v[0]), float(v[1])) for k, v in cfg.data.bounds.items()}, insecure=cfg.crypto.insecure,
        )
        releases = planned_releases(spec)
        return {name: list(releases) for name in sources if name in spec.topology.data_parties}

    def party(self, plan: VerticalPlan, party: Party, channel: Channel, progress: Progress | None = None) -> Any:
        if getattr(plan, "kind", None) == SECUREBOOST_KIND:
            return SECUREBOOST.party(plan, party, channel, progress)  # type: ignore[arg-type]
        top = plan.spec.topology
        names = [*top.data_parties, *([top.arbiter] if top.arbiter else [])]
        index = names.index(party.name)
        source = party.source
        if party.name != top.arbiter and not isinstance(source, DataSource):
            raise ConfigError(f"party {party.name!r} ({party.role}) has no table")
        table = _checked_table(plan.spec, party, source.load()) if isinstance(source, DataSource) else None
        with opened(party.ledger) as ledger:
            report = vertical_party(
                channel, spec=plan.spec, table=table, rng=_secret_rng(party.noise_seed),
                public_rng=_public_rng(plan.seed, index), ledger=ledger,
                dataset=party.ledger.dataset if party.ledger else None,
                source=source.where if isinstance(source, DataSource) else party.name,
                progress=progress if party.name == top.guest else None,
            )
            if ledger is not None:
                report["ledger_spent"] = ledger.spent(party.ledger.dataset)
        return report

    def results(self, plan: VerticalPlan, parties: Sequence[Party], run: JobRun) -> dict[str, Any]:
        if getattr(plan, "kind", None) == SECUREBOOST_KIND:
            return SECUREBOOST.results(plan, parties, run)  # type: ignore[arg-type]
        return _results(plan, parties, run)


def _checked_table(spec: VerticalSpec, party: Party, table: LocalTable) -> pd.DataFrame:
    """The party's own table, checked where its file is known: the ID column (no missing or
    repeated IDs), the guest's label, numeric features (naming the file's row)."""
    guest = party.name == spec.topology.guest
    require_columns(table, [spec.id_column, *([spec.label] if guest else [])])
    ids_from_column(table.frame[spec.id_column], source=table.where, column=spec.id_column,
                    first_line=file_first_line(table))
    require_numeric(table, [c for c in table.frame.columns if c != spec.id_column and not (guest and c == spec.label)])
    return table.frame


def parties_for(
    plan: VerticalPlan, sources: Mapping[str, DataSource], *, ledger_dir: Path | None,
    budgets: Mapping[str, tuple[float, float]], noise_seed: int | None, source: str = "<job>",
    datasets: Mapping[str, str] | None = None, bounds_from_config: bool = False,
) -> list[Party]:
    """One party per role, each with its own table, ledger and noise seed; the public schemas
    (column names, read once) are checked first: :func:`check_schemas`, and with
    ``bounds_from_config`` (a config file's ``[data] bounds``, where a stray key is a typo)
    :func:`check_bound_keys`."""
    spec = plan.spec
    top = spec.topology
    for p in top.data_parties:
        if p not in sources:
            raise ConfigError(f"party {p!r} ({'guest' if p == top.guest else 'host'}) has no table")
    if top.arbiter is not None and top.arbiter in sources:
        raise ConfigError(f"the arbiter {top.arbiter!r} holds no data; remove its table")
    columns = {p: sources[p].columns() for p in top.data_parties}
    if bounds_from_config:
        check_bound_keys(spec, columns, source=source)
    check_schemas(spec, columns, source=source)
    names = [*top.data_parties, *([top.arbiter] if top.arbiter else [])]
    ledgers = (
        ledger_specs(ledger_dir, top.data_parties,
                     budgets={p: budgets.get(p, (spec.dp.epsilon, spec.dp.delta)) for p in top.data_parties},
                     accountant=spec.dp.accountant, datasets=datasets, reproducible_noise=noise_seed is not None)
        if spec.dp is not None else {}
    )
    # test-only seeds of the secret streams, one per party in role order (guest, hosts, arbiter)
    seeds = {n: None if noise_seed is None else
             int(np.random.SeedSequence([int(noise_seed), i]).generate_state(1, dtype=np.uint64)[0])
             for i, n in enumerate(names)}
    role = {top.guest: "guest", **{h: "host" for h in top.hosts}, **({top.arbiter: "arbiter"} if top.arbiter else {})}
    return [Party(n, role[n], sources.get(n), ledgers.get(n), seeds[n]) for n in names]


def _simulation_metrics(plan: VerticalPlan, parties: Sequence[Party], out: Mapping[str, Any]) -> dict[str, float]:
    """Held-out metrics of the joint model computed by the *simulation*, which holds every
    party's table and local model: simulation only, not private, never seen by any party."""
    spec = plan.spec
    top = spec.topology
    test_ids = out[top.guest].get("test_ids") or []
    if not test_ids:
        return {}
    sources = {p.name: p.source for p in parties if isinstance(p.source, DataSource)}
    logits = np.zeros(len(test_ids))
    labels = None
    for p in top.data_parties:
        data = prepare_table(sources[p].load().frame, source=p, id_column=spec.id_column,
                             label=spec.label if p == top.guest else None)
        where = {i: k for k, i in enumerate(data.ids)}
        rows = np.array([where[i] for i in test_ids], dtype=np.int64)
        logits = logits + out[p]["model"].partial_logits(data.features[rows])
        if p == top.guest:
            assert data.labels is not None
            labels = data.labels[rows]
    assert labels is not None
    return evaluation_metrics(labels, 1.0 / (1.0 + np.exp(-logits)))


def planned_releases(spec: VerticalSpec) -> list[Release]:
    """Every ``(event, relation)`` each data party of a vertical job charges: one
    :meth:`~fedsilo.protocols.vertical.taylor.DpPlan.epoch_event` per epoch under the
    replace-one relation (:func:`fedsilo.protocols.vertical.keys.epoch_charge`); under DP every
    planned epoch runs (no early stopping). The event depends on ε, δ, the epochs, the number of
    data parties and the accountant, not on the aligned row count, so it is known before PSI
    (the plan is built here for one row; only its batches per epoch would differ)."""
    if spec.dp is None:
        return []
    top = spec.topology
    plan = dp_plan(spec.dp, rows=1, config=spec.training, parties=len(top.data_parties), arbiter=top.arbiter is not None)
    assert plan is not None
    return [(plan.epoch_event(), REPLACE_RECORD)] * plan.epochs


def epsilon_per_epoch(dp_plan: DpPlan, epochs: int) -> list[float]:
    """A data party's cumulative ε after each epoch ``1..epochs``: what its report's ``epsilon``
    is after that many (:func:`~fedsilo.protocols.vertical.config.spent_epsilon`, the plan's
    accountant on ``plan.job_event(e)``). Every data party charges the same event once per
    epoch, so one curve serves them all; vertical charges nothing after training, so the last
    value is each party's reported ε."""
    with warnings.catch_warnings():
        # the parties' own epsilon (the whole run) already warns if the RDP optimum is at the grid's edge
        warnings.simplefilter("ignore", RuntimeWarning)
        return [float(spent_epsilon(dp_plan, e) or 0.0) for e in range(1, epochs + 1)]


def _results(plan: VerticalPlan, parties: Sequence[Party], run: JobRun) -> dict[str, Any]:
    spec = plan.spec
    top = spec.topology
    out = run.reports
    guest = out[top.guest]
    dp_plan = guest["dp"]
    notes = list(plan.notes)
    history = [dict(h) for h in guest["history"]]  # the guest's own records stay as they were
    if dp_plan is not None:
        curve = epsilon_per_epoch(dp_plan, max((int(h["round"]) for h in history), default=0))
        for h in history:
            h["epsilon"] = {p: curve[int(h["round"]) - 1] for p in top.data_parties}
    eps: dict[str, dict[str, Any]] = {}
    for p in top.data_parties if dp_plan is not None else ():
        eps[p] = {"epsilon": out[p]["epsilon"], "delta": dp_plan.delta, "accountant": dp_plan.accountant,
                  "ledger_spent": out[p].get("ledger_spent")}
    dp_out = None
    if dp_plan is not None:
        dp_out = {
            "noise_multiplier": dp_plan.noise_multiplier,
            "event_noise_multiplier": dp_plan.event_multiplier,
            "clip": dp_plan.clip,
            "logit_clip": dp_plan.logit_clip,
            "rounds": dp_plan.steps_per_epoch * guest["epochs"],
            "sample_rate": dp_plan.sample_rate,
            "neighbouring": dp_plan.neighbouring,
            "delta": dp_plan.delta,
            "target_epsilon": dp_plan.epsilon,
            "accountant": dp_plan.accountant,
            "colluders": dp_plan.colluders,
            "noise_adders": dp_plan.noise_adders,
            "level": "record",
        }
    if spec.dp is None:
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
    return {
        "task": "vertical",
        "backend": spec.backend,
        "private": not spec.insecure,
        "topology": {"guest": top.guest, "hosts": list(top.hosts), "arbiter": top.arbiter},
        "rounds": history,
        "final": guest.get("final", {}),
        "simulation_metrics": _simulation_metrics(plan, parties, out),
        "epsilon": eps,
        "dp": dp_out,
        "bytes_sent": dict(run.bytes_sent),
        "psi": {"intersection": guest["psi"]["intersection"], "pairwise": guest["psi"]["pairwise"],
                "sizes": {p: out[p]["psi"]["local"] for p in top.data_parties}},
        "rows": guest["rows"],
        "epochs": guest["epochs"],
        "stopped_early": guest["stopped_early"],
        "seconds": run.seconds,
        "notes": notes,
    }


VERTICAL = register_task(VerticalTask())


def simulate_vertical(
    *,
    tables: Mapping[str, pd.DataFrame],
    roles: Mapping[str, str],
    id_column: str,
    label: str,
    backend: str,
    backend_params: Mapping[str, Any] | None = None,
    training: TrainingSection | Mapping[str, Any],
    dp: PrivacySection | Mapping[str, Any] | None,
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
    progress: Progress | None = None,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    engine: str = "threads",
) -> dict[str, Any]:
    """Run a vertical job on in-memory tables (tests, benchmarks) through the same runner,
    parties and results as :func:`~fedsilo.silos.runner.run_job`.

    ``tables``: one per guest/host party; ``roles``: party -> ``"guest" | "host" | "arbiter"``;
    ``training``, ``dp``: the ``[training]`` and ``[privacy]`` sections (or mappings validated as
    them; ``dp=None``: no DP, which needs ``insecure``); ``budgets`` (party -> (ε, δ), default the
    DP target) and ``datasets`` (party -> dataset name) for each data party's ledger in
    ``ledger_dir`` (None: a temporary directory); ``seed`` decides the public choices;
    ``noise_seed``: **tests only** (not private); ``timeout``: seconds any party waits for one
    message. Budgets are not checked before PSI here, as ``run_job`` does (a test may run a
    party out of budget mid-job): check them with :func:`planned_releases` and
    :func:`fedsilo.silos.ledgers.check_budgets`."""
    spec = make_vertical_spec(
        roles=roles, id_column=id_column, label=label, backend=backend, backend_params=dict(backend_params or {}),
        training=section(TrainingSection, training, key="training"),
        privacy=None if dp is None else section(PrivacySection, dp, key="privacy"), round_timeout=timeout,
        test_fraction=test_fraction, bounds=dict(bounds or {}), insecure=insecure, psi_workers=psi_workers,
    )
    plan = VerticalPlan(job, spec, seed, tuple(_level_note(spec.dp)))
    return run_tables(plan, tables, parties_for, ledger_dir=ledger_dir, budgets=budgets, noise_seed=noise_seed,
                      datasets=datasets, job=job, engine=engine, progress=progress)


def run_tables(
    plan: Any,
    tables: Mapping[str, pd.DataFrame],
    make_parties: Any,
    *,
    ledger_dir: str | Path | None,
    budgets: Mapping[str, tuple[float, float]] | None,
    noise_seed: int | None,
    datasets: Mapping[str, str] | None,
    job: str,
    engine: str,
    progress: Progress | None,
) -> dict[str, Any]:
    """Run a planned vertical job (logistic regression or SecureBoost: ``make_parties`` is that
    model's ``parties_for``) on in-memory tables through the runner of
    :func:`~fedsilo.silos.runner.run_job`: one table source per party, each party's ledger in
    ``ledger_dir`` (None: a temporary directory). What :func:`simulate_vertical` and
    :func:`fedsilo.silos.tasks.secureboost.simulate_secureboost` share."""
    sources = {n: FrameSource(t, n, origin=n) for n, t in tables.items()}
    with ledger_directory(ledger_dir) as directory:
        parties = make_parties(plan, sources, ledger_dir=directory, budgets=budgets or {}, noise_seed=noise_seed,
                               datasets=datasets)
        return run_plan(VERTICAL, plan, parties, job=job, engine=get_engine(engine), progress=progress)


# ------------------------------------------------------------------------------ baselines (simulation only)

#: What a vertical ``baselines`` block says of the hosts (docs/results.md).
HOSTS_ALONE = "hosts hold no label, so they have no model of their own and no 'alone' score"


def label_only_guest(guest: str) -> str:
    """The baselines block's ``guest`` sentence when the guest holds no feature (no alone score)."""
    return f"the guest {guest!r} holds the labels only (no feature): no model of its own"


@dataclass(frozen=True, eq=False)
class AlignedTables:
    """Every data party's table restricted to the aligned customers, read in one process:
    **baselines only**. ``ids`` are in the order PSI aligns them (sorted by ID, Python ``str``
    order; :func:`fedsilo.protocols.psi.align_guest`), and row ``i`` of every frame is customer
    ``ids[i]``; ``train``/``test`` index them as the guest's public split of the job does."""

    ids: list[str]
    frames: dict[str, pd.DataFrame]
    train: np.ndarray
    test: np.ndarray
    #: the job's public stream after the split (LR: its epochs' batch order)
    public_rng: np.random.Generator


def aligned_tables(cfg: JobConfig) -> AlignedTables:
    """The aligned rows of a vertical config and the guest's held-out split, recomputed in the
    clear from every party's file: the intersection of the ID columns in PSI's order, then the
    split the guest draws from the job seed (its public stream: the guest is data party 0,
    :func:`_public_rng`). A simulation helper: no party can call it (it reads every table)."""
    assert cfg.data.id_column is not None
    # roles, not topology_of: SecureBoost runs several hosts without an arbiter
    guest = next(s.name for s in cfg.silos if s.role == "guest")
    hosts = [s.name for s in cfg.silos if s.role == "host"]
    sources = sources_for(cfg)
    tables = {p: sources[p].load() for p in (guest, *hosts)}
    positions: dict[str, dict[str, int]] = {}
    for p, t in tables.items():
        ids = ids_from_column(t.frame[cfg.data.id_column], source=t.where, column=cfg.data.id_column,
                              first_line=file_first_line(t))
        positions[p] = {i: k for k, i in enumerate(ids)}
    common = set(positions[guest])
    for p in hosts:
        common &= positions[p].keys()
    ids = sorted(common)
    if not ids:
        raise ConfigError(f"{cfg._source}: baselines: the parties' tables share no ID")
    frames = {p: t.frame.iloc[[positions[p][i] for i in ids]].reset_index(drop=True) for p, t in tables.items()}
    rng = _public_rng(cfg.federation.seed, 0)
    # the guest's split (fedsilo.protocols.vertical.job draws the same: round(f·n) held out)
    train, test = holdout_split(rng, len(ids), cfg.data.test_fraction)
    return AlignedTables(ids, frames, train, test, rng)


def vertical_baselines(cfg: JobConfig) -> dict[str, Any] | None:
    """The ``baselines`` block of a vertical config (logistic regression or SecureBoost) on the
    job's held-out aligned rows: ``central``, the same model on every party's columns joined,
    trained in one place with the job's settings and no DP; ``alone``, the guest (the label
    holder) on its own columns. None when the job holds out no row (``[data] test_fraction =
    0``: nothing to score on). For ``fedsilo simulate`` only: it reads every party's table."""
    aligned = aligned_tables(cfg)
    if not aligned.test.size:
        return None
    if cfg.model.kind == SECUREBOOST_KIND:
        return secureboost_baselines(cfg, aligned.frames)
    assert cfg.data.label is not None and cfg.data.id_column is not None
    top = topology_of({s.name: s.role for s in cfg.silos})
    config = TrainingConfig.from_sections(cfg.training, timeout=cfg.federation.round_timeout)
    bounds = {k: (float(v[0]), float(v[1])) for k, v in cfg.data.bounds.items()}
    blocks: list[tuple[str, np.ndarray]] = []
    labels = None
    own = True  # the guest holds a feature (else its "model alone" is an intercept: no model at all)
    for p in top.data_parties:
        guest = p == top.guest
        data = prepare_table(aligned.frames[p], source=p, id_column=cfg.data.id_column,
                             label=cfg.data.label if guest else None)
        # the party's own preprocessing without DP: its public bounds, else its training rows' statistics
        local = fit_model(data.features, aligned.train, data.columns, dp=None, intercept=guest, bounds=bounds, who=p)
        blocks.append((p, local.transform(data.features)))
        if guest:
            labels = data.labels
            own = bool(data.columns)
    assert labels is not None
    batch = config.batch_size
    if config.fill_slots:  # the batch the job ran: the rows that fill one ciphertext of its backend
        backend = get_backend(cfg.crypto.backend, **backend_params_for(cfg.crypto.backend, cfg.crypto.params))
        batch = config.batch_rows(backend, {p: x.shape[1] for p, x in blocks})
    x_all = np.hstack([x for _, x in blocks])
    guest_x = blocks[0][1]
    free = np.ones(x_all.shape[1], dtype=bool)
    free[guest_x.shape[1] - 1] = False  # the guest's intercept (its last column) is not penalized
    # central and alone draw the same batches as the job: each from a copy of its public stream
    out = {}
    fits = [("central", x_all, free), *([("alone", guest_x, free[: guest_x.shape[1]])] if own else [])]
    for name, x, pen in fits:
        w = lr_baselines(x[aligned.train], labels[aligned.train], config=config, batch=batch,
                         rng=copy.deepcopy(aligned.public_rng), penalized=pen)
        out[name] = evaluation_metrics(labels[aligned.test], sigmoid(x[aligned.test] @ w))
    block: dict[str, Any] = {"label": BASELINES_LABEL, "epochs": config.epochs, "central": out["central"],
                             "alone": {top.guest: out["alone"]} if own else {}, "hosts": HOSTS_ALONE}
    if not own:  # as SecureBoost's baselines say it (fedsilo.silos.tasks.secureboost.secureboost_baselines)
        block["guest"] = label_only_guest(top.guest)
    return block


def lr_baselines(x: np.ndarray, y: np.ndarray, *, config: TrainingConfig, batch: int, rng: np.random.Generator,
                 penalized: np.ndarray) -> np.ndarray:
    """Hetero LR's training in one place, in the clear: per epoch a fresh partition into
    near-equal batches (:func:`~fedsilo.protocols.vertical.taylor.epoch_partition` from ``rng``),
    per batch the Taylor residual ``d = x·w/4 − y'/2`` (Hardy et al., arXiv:1711.10677, Sec. 3.2;
    the guest's and the hosts' parts of :mod:`~fedsilo.protocols.vertical.taylor` in one sum), the
    gradient ``xᵀd / |batch|`` and ``w ← w − lr_e (g + λ w)`` on the ``penalized`` columns, with
    the job's learning-rate schedule and early stopping on the Taylor loss. Without DP and masks
    this is the arithmetic the parties run jointly, so a no-DP federation lands on the same
    weights (up to the backend's encoding error). Returns the weights."""
    w = np.zeros(x.shape[1])
    prev: float | None = None
    for epoch in range(1, config.epochs + 1):
        batches = epoch_partition(rows=len(y), batch_size=batch, rng=rng)
        lr = learning_rate(base=config.lr, epoch=epoch, schedule=config.lr_schedule)
        squares = 0.0
        for idx in batches:
            if idx.size == 0:
                continue
            # every party's logits in one place: the hosts' parts u_h/4 are the same linear term
            d = guest_residual_part(logits=x[idx] @ w, labels=y[idx])
            squares += float(d @ d)
            w = w - lr * (x[idx].T @ d / idx.size + config.l2 * w * penalized)
        loss = taylor_loss(sum_squared_residuals=squares, rows=max(1, len(y)))
        if config.tol is not None and prev is not None and abs(prev - loss) < config.tol:
            break
        prev = loss
    return w
