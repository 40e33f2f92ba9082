"""One job runner for every task: plan the job, start its parties on an engine, collect results.

A **task** (:class:`Task`, found by name in :mod:`fedsilo.silos.registry`) is what a federation file's
``[federation] task`` names. It says which config keys it reads (:meth:`Task.check`), plans a
job from the validated config (:meth:`Task.plan`: the public job spec every party agrees on and
the list of :class:`Party`), runs one party (:meth:`Task.party`: the function an agent runs,
over whatever channel the engine gives it) and assembles the results contract from the parties'
reports (:meth:`Task.results`).

A party owns its world: a :class:`Party` carries its own data source (it loads and splits its
table itself), its own ledger (a :class:`~fedsilo.silos.ledgers.LedgerSpec` it opens itself) and
its own secret randomness (the OS CSPRNG, or a test-only ``noise_seed``). Nothing of a table is
prepared centrally.

An **engine** (:class:`Engine`, found by ``--engine`` name in the registry) starts the parties and connects them:
``threads`` runs each party as a thread over an :class:`~fedsilo.protocols.channel.InProcessHub`.
``processes`` (:mod:`fedsilo.silos.engines`) runs each party as its own OS process over gRPC
with mutual TLS; the silo agents run the same parties as long-lived services.

Path of one job: ``load_config`` (validated sections) → :func:`run_job` → ``task.check`` →
``task.plan`` → :func:`check_job_budgets` → ``engine.run`` → ``task.party`` per party (protocol
party functions, ledger charges) → ``task.results``.

Budgets are checked before round 1, in every engine: a task that knows its releases in advance
(``planned_charges(cfg, sources) -> {party: [(event, relation), ...]}``, every charge each data
party makes if the job runs all its rounds, from the config and that party's own table) has them
composed on top of each party's ledger exactly as the ledger composes its charges
(:func:`fedsilo.silos.ledgers.check_budgets`), and a job some silo cannot afford is refused
(:class:`~fedsilo.privacy.ledger.JobBudgetError`) before any party starts. A job that may end
early (dropouts, withdrawals) still needs its full planned ε. A task without that method is
checked charge by charge only (its first refused charge stops it).
"""
from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedsilo.errors import BudgetExceededError, ConfigError
from fedsilo.protocols.channel import Channel, InProcessHub, run_parties
from fedsilo.silos.config import JobConfig, check_insecure_settings
from fedsilo.silos.data import BuiltinShare, DataSource, FileSource
from fedsilo.silos.ledgers import LedgerSpec, Release, check_budgets, check_planned
from fedsilo.silos.registry import (  # the runner's types and registries, re-exported
    TASKS,
    Engine,
    JobContext,
    JobRun,
    Party,
    Progress,
    Task,
    check_silo_job,
    check_task,
    engine_names,
    exposure_settings,
    get_engine,
    get_task,
    refuse_unread,
    register_engine,
    register_task,
    task_names,
)
from fedsilo.silos.topology import check_job_topology

__all__ = [
    "TASKS",
    "Engine",
    "JobContext",
    "JobRun",
    "Party",
    "Progress",
    "Task",
    "ThreadsEngine",
    "budgets_for",
    "check_job_budgets",
    "check_silo_job",
    "check_task",
    "engine_names",
    "exposure_settings",
    "get_engine",
    "get_task",
    "job_id",
    "ledger_directory",
    "ledger_specs",
    "party_functions",
    "party_noise_seeds",
    "planned_releases",
    "refuse_unread",
    "register_engine",
    "register_task",
    "run_job",
    "run_plan",
    "sources_for",
    "task_names",
]

class ThreadsEngine(Engine):
    """Every party a thread of this process, over one :class:`InProcessHub` (tests, quick
    simulations). Payloads still go through the wire codec, so byte counts are honest."""

    name = "threads"
    transport = "in-process"

    def run(self, job: str, parties: Mapping[str, Callable[[Channel], Any]]) -> JobRun:
        hub = InProcessHub(job, list(parties))
        start = time.perf_counter()
        reports = run_parties(hub, parties)
        return JobRun(reports, {p: int(b) for p, b in hub.bytes_sent().items()}, self.name, self.transport,
                      time.perf_counter() - start)


def party_functions(task: Task, plan: Any, parties: Sequence[Party], *,
                    progress: Progress | None = None) -> dict[str, Callable[[Channel], Any]]:
    """``{party: fn(channel) -> report}``: what an engine starts, one per party."""
    shown = _OncePerRound(progress) if progress is not None else None
    return {p.name: functools.partial(task.party, plan, p, progress=shown) for p in parties}


def run_plan(task: Task, plan: Any, parties: Sequence[Party], *, job: str, engine: Engine,
             progress: Progress | None = None) -> dict[str, Any]:
    """Run planned parties on ``engine`` and return ``task.results`` with ``engine`` and
    ``transport`` named."""
    run = engine.run(job, party_functions(task, plan, parties, progress=progress))
    results = task.results(plan, parties, run)
    results.setdefault("seconds", run.seconds)
    if any(p.noise_seed is not None for p in parties):  # a test run: anyone with the seed has the noise
        results["private"] = False
        results["notes"] = [*results.get("notes", []),
                            "NOT PRIVATE: noise_seed was set (test-only); anyone with the seed can regenerate the noise"]
    results["engine"], results["transport"] = run.engine, run.transport
    return results


class _OncePerRound:
    """Progress shown once per round: every silo reports each round it saw (they all receive the
    same released values), the first report of a round is the one shown."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._seen: set[Any] = set()
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any]) -> None:
        with self._lock:
            key = event.get("round")
            if key is not None and key in self._seen:
                return
            self._seen.add(key)
        self._progress(event)


def _check_noise_seed(noise_seed: int | None) -> None:
    if noise_seed is not None and (isinstance(noise_seed, bool) or not isinstance(noise_seed, int) or noise_seed < 0):
        raise ConfigError(f"noise_seed (test-only) must be an integer >= 0 or None, got {noise_seed!r}")


def run_job(
    cfg: JobConfig,
    *,
    ledger_dir: Path | None = None,
    progress: Progress | None = None,
    noise_seed: int | None = None,
    engine: str = "threads",
) -> dict[str, Any]:
    """Run the job the config describes and return the results contract (see docs/results.md).

    ``noise_seed`` is a **test-only** switch (not in the TOML, not on the command line): it
    makes the secret randomness (DP noise, masks, DP-SGD sampling) reproducible, so the run is
    not private; its results say ``"private": false`` and its ledger entries
    ``"reproducible_noise": true``. Without it every secret stream comes from the OS CSPRNG and
    ``federation.seed`` decides only public choices (splits, initial weights, batch order).
    """
    check_insecure_settings(cfg)  # a config built or changed without validation is checked too
    _check_noise_seed(noise_seed)
    task = get_task(cfg.federation.task)
    check_task(cfg, cfg._source)
    check_job_topology(cfg)  # the federation graph: who sends to whom (fedsilo.silos.topology), before any plan
    runner = get_engine(engine)
    notes = []
    if cfg.crypto.insecure:
        notes.append(
            "NOT PRIVATE: [crypto] insecure = true allowed insecure settings (the plain backend, weak keys, "
            "no-DP vertical training or sums of two silos): tests and baselines only"
        )
    if ledger_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        ledger_dir = Path("runs") / f"{cfg.federation.name}-{stamp}" / "ledgers"
        if cfg.privacy is not None:
            notes.append(
                f"ledgers are new for this run ({ledger_dir}); pass --ledger-dir DIR to every run "
                "on the same data so their releases compose against one budget"
            )
    if ledger_dir.exists() and not ledger_dir.is_dir():
        raise ConfigError(f"ledger directory {ledger_dir} is a file, not a directory")
    try:
        ledger_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create ledger directory {ledger_dir}: {exc.strerror or exc}") from None
    ctx = JobContext(job_id(cfg), sources_for(cfg), ledger_dir, noise_seed)
    try:
        plan, parties = task.plan(cfg, ctx)
    except ConfigError as exc:  # every planning error names the config file
        if cfg._source in str(exc):
            raise
        raise ConfigError(f"{cfg._source}: {exc}") from None
    check_job_budgets(task, cfg, parties)  # before any party starts: nothing trained, released or charged
    results = run_plan(task, plan, parties, job=ctx.job, engine=runner, progress=progress)
    results["notes"] = list(results.get("notes") or []) + notes
    results["private"] = bool(results.get("private", True)) and not cfg.crypto.insecure and noise_seed is None
    results["ledger_dir"] = str(ledger_dir)
    return results


def planned_releases(task: Task, cfg: JobConfig, sources: Mapping[str, DataSource]) -> dict[str, list[Release]] | None:
    """``task.planned_charges(cfg, sources)``: the releases each data party in ``sources`` (its
    own table) will charge over the whole job; None for a task that does not plan them, or a
    job without DP."""
    hook = getattr(task, "planned_charges", None)
    if hook is None or cfg.privacy is None:
        return None
    return {name: list(releases) for name, releases in hook(cfg, sources).items()}


def check_job_budgets(task: Task, cfg: JobConfig, parties: Sequence[Party]) -> None:
    """Refuse the job before any party starts if some party's ledger cannot cover the releases
    the task plans for it (see the module docstring). Each party's releases are computed from
    its own source, as the party itself will, one party after the other: the first that cannot
    afford the job refuses it (planning a record-level party calibrates its DP-SGD, the costly
    part, so the parties after it are not planned).

    Raises:
        JobBudgetError: the first silo whose remaining budget cannot cover the job.
    """
    for p in parties:
        if p.ledger is None or not isinstance(p.source, DataSource):
            continue
        planned = planned_releases(task, cfg, {p.name: p.source})
        if planned:
            check_budgets({p.name: (p.ledger, planned.get(p.name, []))})
        elif cfg.privacy is not None:
            # not planned (a task without planned_charges): the job's target against what is
            # left, as an agent checks it (found by the privacy review: such jobs skipped it)
            check = check_planned(p.ledger, [])
            left = check.budget - check.spent
            if cfg.privacy.epsilon > left + 1e-12:
                err = BudgetExceededError(silo=p.name, dataset=check.dataset, spent=check.spent,
                                          requested=check.spent + cfg.privacy.epsilon, budget=check.budget,
                                          delta=check.delta)
                err.args = (f"silo {p.name!r}: the job's target epsilon={cfg.privacy.epsilon:g} does not fit in its "
                            f"ledger's remaining {left:.4g} of {check.budget:g} (spent {check.spent:.4g}); lower "
                            "privacy.epsilon (--epsilon) or raise the budget; nothing was trained or charged",)
                raise err


def job_id(cfg: JobConfig) -> str:
    return f"{cfg.federation.name}-{int(time.time())}"


# ------------------------------------------------------------------------------ helpers for tasks


def budgets_for(cfg: JobConfig) -> dict[str, tuple[float, float]]:
    """Each silo's ledger budget: its own ``budget`` or, by default, the job's target epsilon."""
    default = (cfg.privacy.epsilon, cfg.privacy.delta) if cfg.privacy else (float("inf"), 1e-5)
    out = {}
    for name in cfg.silo_names():
        silo = next((s for s in cfg.silos if s.name == name), None)
        out[name] = (silo.budget.epsilon, silo.budget.delta) if silo and silo.budget else default
    return out


def sources_for(cfg: JobConfig) -> dict[str, DataSource]:
    """Each data party's source: its own file, or its share of a built-in data set."""
    if cfg.silos and any(s.data for s in cfg.silos):
        missing = [s.name for s in cfg.silos if not s.data and s.role != "arbiter"]
        if missing:
            raise ConfigError(f"silos {missing} have no data file (key 'silos[].data')")
        return {s.name: FileSource(cfg.resolve(s.data), s.name) for s in cfg.silos if s.data}
    assert cfg.data.source is not None and cfg.data.partition is not None
    spec = cfg.data.partition
    label = cfg.data.label or "target"
    return {
        name: BuiltinShare(cfg.data.source, label, spec.kind, spec.silos, spec.alpha, cfg.federation.seed, i, name)
        for i, name in enumerate(cfg.silo_names())
    }


def party_noise_seeds(names: Sequence[str], noise_seed: int | None) -> dict[str, int | None]:
    """Each party's test-only noise seed, spawned from ``noise_seed`` (None: the OS CSPRNG)."""
    if noise_seed is None:
        return {n: None for n in names}
    import numpy as np

    spawned = np.random.SeedSequence(int(noise_seed)).spawn(len(names))
    return {n: int(s.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)) for n, s in zip(names, spawned)}


@contextlib.contextmanager
def ledger_directory(ledger_dir: str | Path | None) -> Iterator[Path]:
    """``ledger_dir``, or a temporary directory removed afterwards: a DP job never runs without
    ledgers, so a run without a directory still charges and checks every release."""
    if ledger_dir is not None:
        yield Path(ledger_dir)
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="fedsilo-ledgers-") as tmp:
        yield Path(tmp)


def ledger_specs(
    ledger_dir: Path | None, names: Sequence[str], *, budgets: Mapping[str, tuple[float, float]], accountant: str,
    datasets: Mapping[str, str] | None = None, reproducible_noise: bool = False,
) -> dict[str, LedgerSpec]:
    """``LEDGER_DIR/<party>.sqlite`` for each party, its dataset (default: its name) at its
    budget (``ledger_dir=None``: see :func:`ledger_directory`)."""
    if ledger_dir is None:
        raise ConfigError("a DP job needs a ledger directory (a DP job never runs without ledgers)")
    missing = [n for n in names if n not in budgets]
    if missing:
        raise ConfigError(f"no privacy budget for silo(s) {missing}")
    return {
        n: LedgerSpec(Path(ledger_dir) / f"{n}.sqlite", silo=n, dataset=(datasets or {}).get(n, n),
                      budget=(float(budgets[n][0]), float(budgets[n][1])), accountant=accountant,
                      reproducible_noise=reproducible_noise)
        for n in names
    }
