"""The ``statistics`` task: federated counts, sums, means and histograms (one noised secure sum).

Each silo party loads its own table, checks the requested columns and runs
:func:`fedsilo.protocols.horizontal.statistics.statistics_silo` with its own ledger and its own
noise; the aggregator adds ciphertexts (a shared-key backend) or unmasks the sum of masked
vectors (a keyless one: the secure-sum session the backend's key model selects). Results follow
docs/results.md.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from fedsilo.crypto.registry import get_backend, get_backend_class
from fedsilo.errors import ConfigError, NotEnoughSilosError
from fedsilo.privacy.accounting import epsilon as _epsilon
from fedsilo.privacy.relations import ADD_REMOVE_RECORD
from fedsilo.protocols.channel import Channel
from fedsilo.protocols.horizontal.secure_aggregation import check_federation, exposed_sums_allowed
from fedsilo.protocols.horizontal.statistics import (
    StatisticsPlan,
    check_encoding,
    coalition_size,
    exposure_colluders,
    plan_statistics,
    statistics_aggregator,
    statistics_silo,
)
from fedsilo.protocols.horizontal.sums import plan_sums
from fedsilo.protocols.horizontal.statistics_plan import AGGREGATOR, unranged_columns
from fedsilo.protocols.spec import PrivacySection, StatisticsSection, section
from fedsilo.silos.config import JobConfig
from fedsilo.silos.data import DataSource, FrameSource, require_numeric
from fedsilo.silos.ledgers import Release, opened
from fedsilo.silos.runner import (
    JobContext,
    JobRun,
    Party,
    Progress,
    Task,
    budgets_for,
    check_silo_job,
    exposure_settings,
    get_engine,
    ledger_directory,
    ledger_specs,
    party_noise_seeds,
    refuse_unread,
    register_task,
    run_plan,
)

__all__ = ["STATISTICS", "StatisticsJob", "simulate_statistics"]

#: privacy keys a statistics job reads: its sensitivities come from the column ranges, not clip
_PRIVACY_KEYS = ["epsilon", "delta", "accountant", "level", "colluders"]


@dataclass(frozen=True)
class StatisticsJob:
    """What every party of one statistics job receives (public)."""

    job: str
    silos: tuple[str, ...]
    plan: StatisticsPlan
    backend: str
    #: the backend's parameters for this job's sums (``params_for("statistics", ...)``)
    backend_params: Mapping[str, Any]
    min_silos: int
    round_timeout: float
    insecure: bool
    notes: tuple[str, ...] = ()
    #: test hook ``{silo: "hello" | "update" | "topup"}``
    faults: Mapping[str, str] = field(default_factory=dict)

    @property
    def allow_exposed(self) -> bool:
        # DP statistics protect records, not whole silos: only `insecure` allows a sum of two
        return exposed_sums_allowed(insecure=self.insecure, silo_level_dp=False)


def make_statistics_job(
    *, job: str, silos: Sequence[str], request: StatisticsSection, privacy: PrivacySection | None, backend: str,
    backend_params: Mapping[str, Any], min_silos: int, round_timeout: float, insecure: bool,
    notes: Sequence[str] = (), faults: Mapping[str, str] | None = None,
) -> StatisticsJob:
    """The plan and the checks every party relies on, before any party starts or any ledger is
    touched: the secure sum the backend's key model selects (a keyless sum's threshold, quorum and
    ring against the silos), the noise grids (sized for that sum's draws), the backend's
    precision, the exposure rule."""
    if AGGREGATOR in silos:
        raise ConfigError(f"a silo may not be named {AGGREGATOR!r}")
    cls = get_backend_class(backend)
    # a shared-key sum holds every silo's contribution plus its top-up share
    params = cls.params_for("statistics", summands=2 * len(silos), params=backend_params)
    allow_exposed = exposed_sums_allowed(insecure=insecure, silo_level_dp=False)
    colluders = coalition_size(colluders=0 if privacy is None else privacy.colluders, silos=len(silos))
    sums = plan_sums(cls, silos=silos, min_silos=min_silos, colluders=colluders, allow_exposed=allow_exposed,
                     backend_params=params)
    # keyless: one noise share per silo, drawn for the quorum every released sum holds (no top-up)
    plan = plan_statistics(request, privacy, silos=len(silos), quorum=sums.quorum if sums.keyless else None)
    if sums.keyless:
        sums.spec(plan.size)  # threshold vs neighbours, ring bits: refused here, not in a party
    check_encoding(plan, get_backend(backend, **params))
    spec = StatisticsJob(job, tuple(silos), plan, backend, params, min_silos, round_timeout, insecure, tuple(notes),
                         dict(faults or {}))
    check_federation(silos=list(silos), allow_exposed=spec.allow_exposed, colluders=exposure_colluders(plan))
    return spec


class StatisticsTask(Task):
    name = "statistics"
    roles = ("silo",)

    def check(self, cfg: JobConfig, source: str) -> None:
        refuse_unread(cfg, source, self.name, {
            "model": None, "training": None, "privacy": _PRIVACY_KEYS,
            # the label only decides a built-in data set's label-skewed partition
            "data": ["source", "label", "partition"],
        })
        check_silo_job(cfg, source)
        if cfg.statistics is None:
            raise ConfigError(f"{source}: task 'statistics' needs a [statistics] section with columns")
        unranged, why = unranged_columns(cfg.statistics, dp=cfg.privacy is not None)
        if unranged:
            raise ConfigError(f"{source}: statistics.range needs [lo, hi] for {unranged}: required for {why}")

    def insecure_settings(self, cfg: JobConfig) -> list[tuple[str, str]]:
        # DP statistics protect single records, never a whole silo's statistics
        return exposure_settings(cfg, "statistics", "add silos, or ")

    def planned_charges(self, cfg: JobConfig, sources: Mapping[str, DataSource]) -> dict[str, list[Release]]:
        """The one release each silo in ``sources`` charges: the job's composed event
        (:meth:`StatisticsPlan.event`, every query of every column in one secure sum) under
        add/remove-one-record. The plan depends on the config and the silo count only, not on
        a table, so it is the one :meth:`plan` builds (found by the bad-input sweep: statistics
        jobs were checked by target ε only, not by their planned charge)."""
        if cfg.privacy is None or cfg.statistics is None or not sources:
            return {}
        job = make_statistics_job(
            job="planned", silos=cfg.silo_names(), request=cfg.statistics, privacy=cfg.privacy,
            backend=cfg.crypto.backend, backend_params=cfg.crypto.params, min_silos=cfg.federation.min_silos,
            round_timeout=cfg.federation.round_timeout, insecure=cfg.crypto.insecure,
        )
        event = job.plan.event()
        if event is None:
            return {}
        return {name: [(event, ADD_REMOVE_RECORD)] for name in sources}

    def plan(self, cfg: JobConfig, ctx: JobContext) -> tuple[StatisticsJob, list[Party]]:
        assert cfg.statistics is not None
        sources = dict(ctx.sources)
        names = list(sources)
        if cfg.federation.min_silos > len(names):
            raise ConfigError(
                f"{cfg._source}: key 'federation.min_silos': {cfg.federation.min_silos} but the job has only "
                f"{len(names)} silo(s) with data: no round could ever complete (add silos or lower min_silos)"
            )
        notes = []
        if cfg.privacy is not None and cfg.privacy.level == "silo" and "level" in cfg.privacy.model_fields_set:
            notes.append(
                "federated statistics protect records (add/remove one record), not whole silos: "
                "privacy.level = 'silo' is read as record level (the ledger records add-remove-record)"
            )
        try:
            job = make_statistics_job(
                job=ctx.job, silos=names, request=cfg.statistics, privacy=cfg.privacy, backend=cfg.crypto.backend,
                backend_params=cfg.crypto.params, min_silos=cfg.federation.min_silos,
                round_timeout=cfg.federation.round_timeout, insecure=cfg.crypto.insecure, notes=notes,
            )
        except ConfigError as exc:
            raise ConfigError(f"{cfg._source}: {exc}") from None
        return job, parties_for(job, sources, ledger_dir=ctx.ledger_dir, budgets=budgets_for(cfg),
                                noise_seed=ctx.noise_seed)

    def party(self, plan: StatisticsJob, party: Party, channel: Channel, progress: Progress | None = None) -> Any:
        if party.role == "aggregator":
            return statistics_aggregator(
                channel, silos=plan.silos, backend=plan.backend, backend_params=plan.backend_params,
                min_silos=plan.min_silos, colluders=exposure_colluders(plan.plan), timeout=plan.round_timeout,
                allow_exposed=plan.allow_exposed, plan=plan.plan,
            )
        if not isinstance(party.source, DataSource):
            raise ConfigError(f"silo {party.name!r} has no data")
        table = party.source.load()
        require_numeric(table, list(plan.plan.columns))  # names the file, column and first bad row
        with opened(party.ledger) as ledger:
            return statistics_silo(
                channel, job=plan.job, silos=plan.silos, aggregator=AGGREGATOR, frame=table.frame, plan=plan.plan,
                backend=plan.backend, backend_params=plan.backend_params, ledger=ledger,
                dataset=party.ledger.dataset if party.ledger else None, noise_seed=party.noise_seed,
                timeout=plan.round_timeout, drop=plan.faults.get(party.name), allow_exposed=plan.allow_exposed,
                insecure=plan.insecure,
            )

    def results(self, plan: StatisticsJob, parties: Sequence[Party], run: JobRun) -> dict[str, Any]:
        names = list(plan.silos)
        agg = run.reports[AGGREGATOR]
        if agg["status"] != "ok":
            raise NotEnoughSilosError(agg["reason"])
        first = next(n for n in names if run.reports[n]["statistics"] is not None)
        answer, raw = run.reports[first]["statistics"], run.reports[first]["raw"]
        st = plan.plan
        ev = st.event()
        eps: dict[str, dict[str, float | None]] = {}
        for n in names:
            if ev is None:
                eps[n] = {"epsilon": None, "delta": None}
            else:
                assert st.delta is not None
                e = _epsilon(ev, delta=st.delta, accountant=st.accountant) if run.reports[n]["charged"] else 0.0
                eps[n] = {"epsilon": e, "delta": st.delta}
        dp = None
        if ev is not None:
            dp = {
                "noise_multiplier": st.noise_multiplier,
                "releases": len(st.releases),
                "delta": st.delta,
                "accountant": st.accountant,
                "colluders": st.colluders,
                "sigma": {f"{r.column}.{r.query}": r.sigma for r in st.releases},
                "granularity": {f"{r.column}.{r.query}": r.granularity for r in st.releases},
            }
        notes = list(plan.notes)
        return {
            "task": "statistics",
            "backend": plan.backend,
            "private": not plan.insecure,
            "statistics": answer,
            "raw": raw,
            "silos": agg["contributors"],
            "epsilon": eps,
            "dp": dp,
            "bytes_sent": dict(run.bytes_sent),
            "seconds": run.seconds,
            "notes": notes,
        }


def parties_for(
    job: StatisticsJob, sources: Mapping[str, DataSource], *, ledger_dir: Path | None,
    budgets: Mapping[str, tuple[float, float]], noise_seed: int | None,
) -> list[Party]:
    names = list(job.silos)
    ledgers = (
        ledger_specs(ledger_dir, names, budgets=budgets, accountant=job.plan.accountant,
                     reproducible_noise=noise_seed is not None)
        if job.plan.event() is not None else {}
    )
    seeds = party_noise_seeds(names, noise_seed)
    return [Party(AGGREGATOR, "aggregator"), *(Party(n, "silo", sources[n], ledgers.get(n), seeds[n]) for n in names)]


STATISTICS = register_task(StatisticsTask())


def simulate_statistics(
    *,
    silos: Mapping[str, pd.DataFrame],
    columns: Sequence[str],
    queries: Sequence[str],
    bins: int,
    ranges: Mapping[str, Sequence[float]],
    privacy: PrivacySection | Mapping[str, Any] | None,
    ledger_dir: Path | None,
    budgets: Mapping[str, tuple[float, float]],
    job: str,
    backend_params: Mapping[str, Any],
    noise_seed: int | None = None,
    backend: str = "paillier",
    min_silos: int = 2,
    round_timeout: float = 120.0,
    faults: Mapping[str, str] | None = None,
    insecure: bool = False,
    engine: str = "threads",
) -> dict[str, Any]:
    """Run a statistics job on in-memory tables (tests, benchmarks) through the same runner,
    parties and results as :func:`~fedsilo.silos.runner.run_job`. ``privacy`` is the section
    (or a mapping validated as one); ``noise_seed``: **tests only** (not private)."""
    names = list(silos)
    request = section(StatisticsSection, {"columns": list(columns), "queries": list(queries), "bins": bins,
                                          "range": {k: tuple(v) for k, v in ranges.items()}}, key="statistics")
    spec = make_statistics_job(
        job=job, silos=names, request=request,
        privacy=None if privacy is None else section(PrivacySection, privacy, key="privacy"),
        backend=backend, backend_params=backend_params, min_silos=min_silos, round_timeout=round_timeout,
        insecure=insecure, faults=faults,
    )
    sources = {n: FrameSource(f, n) for n, f in silos.items()}
    with ledger_directory(ledger_dir) as directory:
        parties = parties_for(spec, sources, ledger_dir=directory, budgets=budgets, noise_seed=noise_seed)
        return run_plan(STATISTICS, spec, parties, job=job, engine=get_engine(engine))
