"""``[model] kind = "secureboost"`` of the ``vertical`` task: PSI alignment and gradient-boosted
trees across silos that hold different columns of the same customers.

The ``vertical`` task (:mod:`fedsilo.silos.tasks.vertical`) hands a job whose ``[model] kind`` is
``"secureboost"`` to :data:`SECUREBOOST`, which checks, plans, runs and reports it. Each data
party loads its own table and runs
:func:`fedsilo.protocols.vertical.secureboost.job.secureboost_party`; there is no arbiter (the
guest, which holds the labels, holds the Paillier key). Under DP each host has a ledger (its
features are what the histograms release); the guest is never charged. Results follow
docs/results.md, plus ``importance``; docs/secureboost.md.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import networkx as nx
import numpy as np
import pandas as pd

from fedsilo.errors import ConfigError
from fedsilo.privacy.mechanisms import secure_rng
from fedsilo.privacy.relations import REPLACE_RECORD
from fedsilo.protocols import psi
from fedsilo.protocols.channel import Channel
from fedsilo.protocols.psi import ids_from_column
from fedsilo.protocols.spec import SECUREBOOST_KEYS, ModelSection, PrivacySection, section
from fedsilo.protocols.vertical.secureboost import messages as sb
from fedsilo.protocols.vertical.secureboost.config import BoostConfig, CryptoSettings
from fedsilo.protocols.vertical.secureboost.dp import HistogramDp, calibrate
from fedsilo.protocols.vertical.secureboost.job import SecureBoostSpec, party_table, secureboost_party
from fedsilo.protocols.vertical.secureboost.model import joint_scores, refuse_empty
from fedsilo.silos.config import JobConfig
from fedsilo.silos.data import DataSource, LocalTable, file_first_line, require_columns, require_numeric
from fedsilo.silos.ledgers import opened
from fedsilo.silos.registry import JobContext, JobRun, Party, Progress, refuse_unread
from fedsilo.silos.runner import budgets_for, ledger_specs
from fedsilo.silos.topology import Flow, add_flow, add_party, new_federation

__all__ = ["KIND", "SECUREBOOST", "SecureBoostJob", "SecureBoostPlan", "make_secureboost_spec", "parties_for",
           "secureboost_baselines", "simulate_secureboost"]

#: the ``[model] kind`` this module runs
KIND = "secureboost"


@dataclass(frozen=True)
class SecureBoostPlan:
    """What every party of one SecureBoost job receives (public)."""

    job: str
    spec: SecureBoostSpec
    #: the job's public seed: the guest's held-out split and tree subsamples
    seed: int | None
    notes: tuple[str, ...] = ()
    #: what the ``vertical`` task dispatches on
    kind: ClassVar[str] = KIND


def _roles(roles: Mapping[str, str], *, source: str) -> tuple[str, tuple[str, ...]]:
    guests = [p for p, r in roles.items() if r == "guest"]
    hosts = tuple(p for p, r in roles.items() if r == "host")
    arbiters = [p for p, r in roles.items() if r == "arbiter"]
    if arbiters:
        raise ConfigError(
            f"{source}: key 'silos': SecureBoost has no arbiter (the guest, which holds the labels, holds the "
            f"Paillier key); remove the silo {arbiters[0]!r} with role 'arbiter'"
        )
    if len(guests) != 1 or not hosts:
        raise ConfigError(f"{source}: SecureBoost needs exactly one silo with role 'guest' and at least one 'host'")
    return guests[0], hosts


def _level_note(privacy: PrivacySection | None) -> list[str]:
    if privacy is not None and privacy.level == "silo" and "level" in privacy.model_fields_set:
        return ["SecureBoost protects records (one customer's feature values at a host), not whole silos: "
                "privacy.level = 'silo' is read as 'record'"]
    return []


def make_secureboost_spec(
    *, roles: Mapping[str, str], id_column: str, label: str, backend: str, backend_params: Mapping[str, Any],
    model: ModelSection, privacy: PrivacySection | None, round_timeout: float, test_fraction: float,
    bounds: Mapping[str, tuple[float, float]], insecure: bool, psi_workers: int | None = 1, source: str = "<job>",
) -> SecureBoostSpec:
    """The typed spec every party receives; crypto parameters checked before any party starts."""
    guest, hosts = _roles(roles, source=source)
    if privacy is not None and model.guest_trees >= model.trees:
        raise ConfigError(f"{source}: key 'model.guest_trees': every one of the {model.trees} trees is guest-only, so "
                          "no host releases anything to account for; lower it or drop [privacy]")
    try:
        crypto = CryptoSettings.from_params(backend, backend_params)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return SecureBoostSpec(guest, hosts, id_column, label, crypto, BoostConfig.from_section(model, timeout=round_timeout),
                           privacy, test_fraction, dict(bounds), insecure, psi_workers)


class SecureBoostJob:
    """The ``vertical`` task's hooks for ``kind = "secureboost"`` (same names and signatures as
    :class:`~fedsilo.silos.registry.Task`'s)."""

    name = "vertical"

    def check(self, cfg: JobConfig, source: str) -> None:
        if not cfg.data.label:
            raise ConfigError(f"{source}: SecureBoost needs [data] label (the guest's target column)")
        if not cfg.data.id_column:
            raise ConfigError(f"{source}: SecureBoost needs [data] id_column (the column PSI aligns on)")
        _roles({s.name: s.role for s in cfg.silos}, source=source)
        refuse_unread(cfg, source, "vertical (secureboost)", {
            "model": ["kind", *SECUREBOOST_KEYS],
            # the trees' keys are [model]'s; nothing of [training] is read
            "training": None,
            "statistics": None,
            "privacy": ["epsilon", "delta", "accountant", "level", "clip"],
            "data": ["label", "id_column", "test_fraction", "bounds"],
            "federation": ["name", "task", "seed", "round_timeout"],
        })
        try:
            CryptoSettings.from_params(cfg.crypto.backend, cfg.crypto.params)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def insecure_settings(self, cfg: JobConfig) -> list[tuple[str, str]]:
        if cfg.privacy is not None:
            return []
        return [(
            "privacy",
            "SecureBoost without [privacy] gives the guest every host's exact histograms (per node, feature and "
            "bin, sums of the guest's own gradients), from which it narrows down which bin each customer's "
            "value is in; add a [privacy] section (e.g. epsilon = 8), or ",
        )]

    def topology(self, cfg: JobConfig) -> nx.DiGraph:
        """The guest and its hosts (hosts never talk to each other)."""
        roles = {s.name: s.role for s in cfg.silos}
        guest, hosts = _roles(roles, source=cfg._source)
        budgets = budgets_for(cfg)
        graph = new_federation(cfg, hub=guest)
        dp = cfg.privacy is not None
        for s in cfg.silos:
            add_party(graph, s.name, role=s.role, data=s.data,
                      budget=budgets.get(s.name) if dp and s.role == "host" else None)
        psi_ids = Flow("PSI blinded IDs and intersection digest", (psi.MASKED, psi.DOUBLE, psi.CONFIRM))
        noised = "noised " if dp else ""
        for h in hosts:
            add_flow(graph, guest, h, psi_ids, Flow("aligned rows and held-out rows", (psi.FINAL, sb.HOLDOUT)),
                     Flow("public key", (sb.SETUP,)),
                     Flow("tree samples and encrypted g/h per row", (sb.TREE,)),
                     Flow("node rows to histogram", (sb.LEVEL,)),
                     Flow("splits won and their node rows", (sb.SPLIT,)),
                     Flow("feature importance", (sb.IMPORTANCE,)),
                     Flow("held-out rows at its nodes", (sb.PREDICT,)))
            add_flow(graph, h, guest, psi_ids, Flow("row counts and settings digests", (sb.HELLO,)),
                     Flow(f"packed encrypted {noised}histograms", (sb.HIST,)),
                     Flow("left/right of its splits", (sb.PARTITION, sb.ROUTE)))
        return graph

    def plan(self, cfg: JobConfig, ctx: JobContext) -> tuple[SecureBoostPlan, list[Party]]:
        assert cfg.data.label is not None and cfg.data.id_column is not None
        spec = make_secureboost_spec(
            roles={s.name: s.role for s in cfg.silos}, id_column=cfg.data.id_column, label=cfg.data.label,
            backend=cfg.crypto.backend, backend_params=cfg.crypto.params, model=cfg.model, privacy=cfg.privacy,
            round_timeout=cfg.federation.round_timeout, test_fraction=cfg.data.test_fraction,
            bounds={k: (float(v[0]), float(v[1])) for k, v in cfg.data.bounds.items()}, insecure=cfg.crypto.insecure,
            source=cfg._source,
        )
        plan = SecureBoostPlan(ctx.job, spec, cfg.federation.seed, tuple(_level_note(cfg.privacy)))
        return plan, parties_for(plan, dict(ctx.sources), ledger_dir=ctx.ledger_dir, budgets=budgets_for(cfg),
                                 noise_seed=ctx.noise_seed, source=cfg._source, bounds_from_config=True)

    def planned_charges(self, cfg: JobConfig, sources: Mapping[str, DataSource]) -> dict[str, list[tuple[Any, str]]]:
        """Every release each host in ``sources`` charges if every tree grows to full depth: one
        :meth:`~fedsilo.protocols.vertical.secureboost.dp.HistogramDp.event` per level, ``trees ·
        depth`` in all (guest-only trees charge nothing), under the replace-one relation (from the
        config alone; a tree that stops early charges less). The guest charges nothing."""
        if cfg.privacy is None:
            return {}
        dp = calibrate(epsilon=cfg.privacy.epsilon, delta=cfg.privacy.delta, accountant=cfg.privacy.accountant,
                       trees=cfg.model.trees - cfg.model.guest_trees, depth=cfg.model.depth, clip=cfg.privacy.clip,
                       objective=cfg.model.objective)
        hosts = {s.name for s in cfg.silos if s.role == "host"}
        return {name: [(dp.event(), REPLACE_RECORD)] * dp.releases for name in sources if name in hosts}

    def party(self, plan: SecureBoostPlan, party: Party, channel: Channel, progress: Progress | None = None) -> Any:
        spec = plan.spec
        names = [spec.guest, *spec.hosts]
        source = party.source
        if not isinstance(source, DataSource):
            raise ConfigError(f"party {party.name!r} ({party.role}) has no table")
        table = _checked_table(spec, party, source.load())
        with opened(party.ledger) as ledger:
            report = secureboost_party(
                channel, spec=spec, table=table, rng=secure_rng(party.noise_seed),
                public_rng=_public_rng(plan.seed, names.index(party.name)), ledger=ledger,
                dataset=party.ledger.dataset if party.ledger else None, source=source.where,
                progress=progress if party.name == spec.guest else None,
            )
            if ledger is not None:
                report["ledger_spent"] = ledger.spent(party.ledger.dataset)
        return report

    def results(self, plan: SecureBoostPlan, parties: Sequence[Party], run: JobRun) -> dict[str, Any]:
        return _results(plan, parties, run)


#: The hooks the ``vertical`` task calls for ``[model] kind = "secureboost"``.
SECUREBOOST = SecureBoostJob()


def _public_rng(seed: int | None, index: int) -> np.random.Generator:
    """Public choices only (held-out split, tree samples): reproducible from the job seed."""
    return np.random.Generator(np.random.Philox(np.random.SeedSequence(None if seed is None else [int(seed), index])))


def _checked_table(spec: SecureBoostSpec, party: Party, table: LocalTable) -> pd.DataFrame:
    """The party's own table, checked where its file is known (naming the file's row): numeric
    features (NaNs allowed with missing-value bins, to be binned), a numeric label for the
    squared error."""
    guest = party.name == spec.guest
    require_columns(table, [spec.id_column, *([spec.label] if guest else [])])
    ids_from_column(table.frame[spec.id_column], source=table.where, column=spec.id_column,
                    first_line=file_first_line(table))
    features = [c for c in table.frame.columns if c != spec.id_column and not (guest and c == spec.label)]
    # a column of nothing but NaN is "no value", not "N missing values" nor (with bins) "constant"
    refuse_empty(table.frame[features].isna().all().tolist(), [str(c) for c in features], source=table.where,
                 where="the whole table")
    # with missing-value bins a NaN is a value; everything else must still be a finite number
    seen = LocalTable(table.name, table.frame.fillna({c: 0.0 for c in features}), table.where, table.bounds) \
        if spec.config.missing_bins else table
    require_numeric(seen, features)
    if guest and not spec.config.loss.classification:
        require_numeric(table, [spec.label])
    return table.frame


def parties_for(
    plan: SecureBoostPlan, sources: Mapping[str, DataSource], *, ledger_dir: Path | None,
    budgets: Mapping[str, tuple[float, float]], noise_seed: int | None, source: str = "<job>",
    datasets: Mapping[str, str] | None = None, bounds_from_config: bool = False,
) -> list[Party]:
    """One party per role with its own table, and under DP a ledger for each host; the public
    schemas are checked first (every bound names a feature; under DP every feature has one)."""
    spec = plan.spec
    names = [spec.guest, *spec.hosts]
    for p in names:
        if p not in sources:
            raise ConfigError(f"party {p!r} ({'guest' if p == spec.guest else 'host'}) has no table")
    features = {p: [c for c in sources[p].columns() if c != spec.id_column and not (p == spec.guest and c == spec.label)]
                for p in names}
    if spec.config.guest_trees and not features[spec.guest]:
        raise ConfigError(f"{source}: key 'model.guest_trees': the guest {spec.guest!r} holds the labels only, no feature "
                          "to grow a guest-only tree on; set it to 0")
    every = [c for cols in features.values() for c in cols]
    stray = [c for c in spec.bounds if c not in every]
    if bounds_from_config and stray:
        raise ConfigError(f"{source}: key 'data.bounds': {stray} are not feature column(s) of the silos' data")
    if spec.dp is not None:
        unbounded = {p: [c for c in cols if c not in spec.bounds] for p, cols in features.items()}
        listed = "; ".join(f"{p}: {m}" for p, m in unbounded.items() if m)
        if listed:
            raise ConfigError(
                f"{source}: SecureBoost under DP bins every feature over public bounds (a data quantile moves when "
                f"one row is replaced, and with it other rows' bins); none for {listed}. Add them to [data] bounds"
            )
    ledgers = (
        ledger_specs(ledger_dir, spec.hosts,
                     budgets={h: budgets.get(h, (spec.dp.epsilon, spec.dp.delta)) for h in spec.hosts},
                     accountant=spec.dp.accountant, datasets=datasets, reproducible_noise=noise_seed is not None)
        if spec.dp is not None else {}
    )
    seeds = {n: None if noise_seed is None else
             int(np.random.SeedSequence([int(noise_seed), i]).generate_state(1, dtype=np.uint64)[0])
             for i, n in enumerate(names)}
    return [Party(n, "guest" if n == spec.guest else "host", sources[n], ledgers.get(n), seeds[n]) for n in names]


def _simulation_metrics(plan: SecureBoostPlan, parties: Sequence[Party], out: Mapping[str, Any]) -> dict[str, float]:
    """Held-out metrics from every party's model and table, computed by the *simulation*:
    simulation only, not private, never seen by any party."""
    spec = plan.spec
    test_ids = out[spec.guest].get("test_ids") or []
    if not test_ids or any(out[p].get("model") is None for p in (spec.guest, *spec.hosts)):
        return {}
    sources = {p.name: p.source for p in parties if isinstance(p.source, DataSource)}
    rows_of: dict[str, np.ndarray] = {}
    labels = None
    for p in (spec.guest, *spec.hosts):
        data = party_table(sources[p].load().frame, source=p, id_column=spec.id_column,
                           label=spec.label if p == spec.guest else None, config=spec.config)
        where = {i: k for k, i in enumerate(data.ids)}
        rows_of[p] = data.features[np.array([where[i] for i in test_ids], dtype=np.int64)]
        if p == spec.guest:
            assert data.labels is not None
            labels = data.labels[np.array([where[i] for i in test_ids], dtype=np.int64)]
    assert labels is not None
    raw = joint_scores(out[spec.guest]["model"], rows_of[spec.guest],
                       {h: (out[h]["model"], rows_of[h]) for h in spec.hosts})
    return spec.config.loss.metrics(labels, raw)


def _results(plan: SecureBoostPlan, parties: Sequence[Party], run: JobRun) -> dict[str, Any]:
    spec = plan.spec
    out = run.reports
    guest = out[spec.guest]
    dp: HistogramDp | None = guest["dp"]
    notes = list(plan.notes)
    history = [{k: v for k, v in h.items() if k != "releases"} for h in guest["history"]]
    eps: dict[str, dict[str, Any]] = {}
    dp_out = None
    if dp is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # each host's own epsilon already warned
            for h, rec in zip(history, guest["history"]):
                h["epsilon"] = {p: dp.spent(int(rec["releases"][p])) or 0.0 for p in spec.hosts}
        for p in spec.hosts:
            eps[p] = {"epsilon": out[p]["epsilon"], "delta": dp.delta, "accountant": dp.accountant,
                      "ledger_spent": out[p].get("ledger_spent")}
        dp_out = {
            "noise_multiplier": dp.noise_multiplier,
            "releases": dp.releases,
            "released": {p: int((out[p].get("releases") or {}).get(p, guest["releases"].get(p, 0))) for p in spec.hosts},
            "clip": dp.clip,
            "sample_rate": 1.0,
            "neighbouring": dp.neighbouring,
            "delta": dp.delta,
            "target_epsilon": dp.epsilon,
            "accountant": dp.accountant,
            "level": "record",
            "charged": "each host, once per level of a joint tree (guest-only trees: nothing); the guest is not charged",
        }
        notes.append(
            "DP covers the values of the hosts' histograms only: the node memberships (instance space) and the "
            "joint prediction's left/right answers are exact, as in SecureBoost (docs/secureboost.md)"
        )
    else:
        notes.append(
            "no DP (insecure): the guest received every host's exact histograms (docs/secureboost.md, 'Who learns what')"
        )
    importance: dict[str, Any] = {spec.guest: guest["importance"][spec.guest]}
    for h in spec.hosts:  # each host names its own features; the guest knows them by index only
        importance[h] = (out[h].get("importance") or {}).get(h) or guest["importance"].get(h, {})
    return {
        "task": "vertical",
        "model": KIND,
        "objective": spec.config.objective,
        "backend": spec.crypto.backend,
        "private": not spec.insecure,
        "topology": {"guest": spec.guest, "hosts": list(spec.hosts), "arbiter": None},
        "rounds": history,
        "final": guest.get("final", {}),
        "simulation_metrics": _simulation_metrics(plan, parties, out),
        "epsilon": eps,
        "dp": dp_out,
        "importance": importance,
        "bytes_sent": dict(run.bytes_sent),
        "psi": {"intersection": guest["psi"]["intersection"], "pairwise": guest["psi"]["pairwise"],
                "sizes": {p: out[p]["psi"]["local"] for p in (spec.guest, *spec.hosts)}},
        "rows": guest["rows"],
        "epochs": guest["epochs"],
        "trees": guest["epochs"],
        "stopped_early": False,
        "seconds": run.seconds,
        "notes": notes,
    }


def simulate_secureboost(
    *,
    tables: Mapping[str, pd.DataFrame],
    roles: Mapping[str, str],
    id_column: str,
    label: str,
    model: ModelSection | Mapping[str, Any],
    backend: str = "paillier",
    backend_params: Mapping[str, Any] | None = None,
    dp: PrivacySection | Mapping[str, Any] | None = None,
    ledger_dir: str | Path | None = None,
    budgets: Mapping[str, tuple[float, float]] | None = None,
    datasets: Mapping[str, str] | None = None,
    job: str = "secureboost",
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
    """Run a SecureBoost job on in-memory tables (tests, benchmarks) through the same runner,
    parties and results as :func:`~fedsilo.silos.runner.run_job`.

    ``model``: the ``[model]`` section (``kind = "secureboost"`` is implied); ``dp``: the
    ``[privacy]`` section or None (no DP, which needs ``insecure``); ``budgets``/``datasets``:
    each host's ledger in ``ledger_dir`` (None: a temporary directory); ``seed``: the public
    choices; ``noise_seed``: **tests only** (not private)."""
    model_section = section(ModelSection, {"kind": KIND, **(dict(model) if isinstance(model, Mapping) else
                                                            model.model_dump(exclude_unset=True))}, key="model")
    spec = make_secureboost_spec(
        roles=roles, id_column=id_column, label=label, backend=backend, backend_params=dict(backend_params or {}),
        model=model_section, privacy=None if dp is None else section(PrivacySection, dp, key="privacy"),
        round_timeout=timeout, test_fraction=test_fraction, bounds=dict(bounds or {}), insecure=insecure,
        psi_workers=psi_workers,
    )
    plan = SecureBoostPlan(job, spec, seed, tuple(_level_note(spec.dp)))
    from fedsilo.silos.tasks.vertical import run_tables  # the vertical task dispatches to SECUREBOOST

    return run_tables(plan, tables, parties_for, ledger_dir=ledger_dir, budgets=budgets, noise_seed=noise_seed,
                      datasets=datasets, job=job, engine=engine, progress=progress)


def secureboost_baselines(cfg: JobConfig, frames: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
    """The ``baselines`` block of a SecureBoost config (simulation only, not private): the
    job's trees, grown in one place without DP on the same held-out aligned rows. ``frames``:
    each data party's table restricted to the aligned customers, guest first, row ``i`` the
    same customer in every frame (:func:`fedsilo.silos.tasks.vertical.aligned_tables`).

    ``central`` grows every tree on the guest's columns joined with every host's; ``alone`` on
    the guest's own columns. Both run the job's own boosting (:func:`simulate_secureboost`, the
    ``plain`` backend) with every tree guest-only (``guest_trees = trees``: no histogram
    leaves the guest, no encryption), so the trees, bins, held-out split and subsamples are the
    job's (the same seed draws them); a placeholder host holding only the aligned IDs and a row
    number stands in for the hosts, as the protocol needs one (it never grows a split).
    Returns ``{"label", "trees", "central", "alone": {guest: metrics}, "hosts"}`` with the
    metrics of the results' ``simulation_metrics``."""
    from fedsilo.silos.tasks.horizontal import BASELINES_LABEL
    from fedsilo.silos.tasks.vertical import HOSTS_ALONE, label_only_guest

    assert cfg.data.label is not None and cfg.data.id_column is not None
    guest, hosts = _roles({s.name: s.role for s in cfg.silos}, source=cfg._source)
    id_col, label = cfg.data.id_column, cfg.data.label
    bounds = {k: (float(v[0]), float(v[1])) for k, v in cfg.data.bounds.items()}
    joined = frames[guest].copy()
    for h in hosts:
        for col in (c for c in frames[h].columns if c != id_col):
            name = col if col not in joined.columns else f"{h}.{col}"  # two parties may share a column name
            joined[name] = frames[h][col].to_numpy()
            if name != col and col in bounds:
                bounds[name] = bounds[col]
    placeholder = next(n for n in ("host", "host_0", "host_1") if n != guest)
    stand_in = pd.DataFrame({id_col: frames[guest][id_col].to_numpy(),
                             "row" if id_col != "row" else "row_number": np.arange(len(joined), dtype=float)})
    model = {**cfg.model.model_dump(exclude_unset=True), "guest_trees": cfg.model.trees}

    def grow(table: pd.DataFrame) -> dict[str, float]:
        out = simulate_secureboost(
            tables={guest: table, placeholder: stand_in}, roles={guest: "guest", placeholder: "host"}, id_column=id_col,
            label=label, model=model, backend="plain", dp=None, insecure=True, seed=cfg.federation.seed,
            test_fraction=cfg.data.test_fraction, timeout=cfg.federation.round_timeout,
            bounds={k: v for k, v in bounds.items() if k in table.columns},
        )
        return dict(out["simulation_metrics"])

    own = [c for c in frames[guest].columns if c not in (id_col, label)]
    alone = {guest: grow(frames[guest])} if own else {}
    block: dict[str, Any] = {"label": BASELINES_LABEL, "trees": cfg.model.trees, "central": grow(joined), "alone": alone,
                             "hosts": HOSTS_ALONE}
    if not own:
        block["guest"] = label_only_guest(guest)
    return block
