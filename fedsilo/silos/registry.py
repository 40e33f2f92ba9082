"""The registries of the job runner, and the types every task and engine shares.

A **task** (:class:`Task`) is what ``[federation] task`` names; an **engine** (:class:`Engine`)
starts a job's parties. Both are found by name: the built-ins here, then the
``fedsilo.tasks`` / ``fedsilo.engines`` entry-point groups, then :func:`register_task` /
:func:`register_engine` (tests, notebooks). A package adds a task without touching fedsilo::

    [project.entry-points."fedsilo.tasks"]
    mytask = "mypkg.task:MY_TASK"      # a Task instance

This module imports neither the config loader nor the tasks (they import it), so the config
can validate ``[federation] task`` against the registry without a cycle.
"""
from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from fedsilo.errors import ConfigError, did_you_mean
from fedsilo.protocols.channel import Channel
from fedsilo.silos.data import DataSource
from fedsilo.silos.ledgers import LedgerSpec

if TYPE_CHECKING:
    import networkx as nx

    from fedsilo.silos.config import JobConfig

__all__ = [
    "Engine",
    "JobContext",
    "JobRun",
    "Party",
    "Progress",
    "TASKS",
    "Task",
    "check_silo_job",
    "check_task",
    "engine_names",
    "exposure_settings",
    "get_engine",
    "get_task",
    "refuse_unread",
    "register_engine",
    "register_task",
    "task_names",
]

TASK_GROUP = "fedsilo.tasks"
ENGINE_GROUP = "fedsilo.engines"
#: Built-ins by import path (loaded on first use; listed so a source checkout works before
#: ``pip install -e``, as :mod:`fedsilo.crypto.registry` does for backends).
_BUILTIN_TASKS = {
    "horizontal": "fedsilo.silos.tasks.horizontal:HORIZONTAL",
    "statistics": "fedsilo.silos.tasks.statistics:STATISTICS",
    "vertical": "fedsilo.silos.tasks.vertical:VERTICAL",
}
_BUILTIN_ENGINES = {
    "threads": "fedsilo.silos.runner:ThreadsEngine",
    "processes": "fedsilo.silos.engines:ProcessesEngine",
    "ray": "fedsilo.silos.ray_engine:RayEngine",
}

Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Party:
    """One party of a job and what it owns.

    ``source``: its table (None for parties without data: an aggregator, an arbiter);
    ``ledger``: where it charges its releases (None without DP); ``noise_seed``: **tests only**,
    makes its secret randomness reproducible (the run is then not private); None draws every
    secret from the OS CSPRNG.
    """

    name: str
    role: str
    source: DataSource | None = None
    ledger: LedgerSpec | None = None
    noise_seed: int | None = None


@dataclass(frozen=True)
class JobContext:
    """What a task plans a job with, besides the config: the job id every party uses, each data
    party's source (``run_job``: the config's files or built-in shares; an agent: the peers'
    declared schemas, never their rows), where ledgers live, and the test-only noise seed."""

    job: str
    sources: Mapping[str, DataSource]
    ledger_dir: Path
    noise_seed: int | None = None


@dataclass(frozen=True)
class JobRun:
    """What an engine hands back: each party's report and the transport's byte counts."""

    reports: Mapping[str, Any]
    bytes_sent: Mapping[str, int]
    engine: str
    transport: str
    seconds: float


class Engine(abc.ABC):
    """Starts a job's parties, connects them, and waits for their reports."""

    name: str
    transport: str

    @abc.abstractmethod
    def run(self, job: str, parties: Mapping[str, Callable[[Channel], Any]]) -> JobRun:
        """Run ``{party: fn(channel) -> report}``; a failing party's own error is raised, and
        the others are stopped."""


class Task(abc.ABC):
    """A kind of job: its config checks, its plan, its party entry point and its results."""

    #: the ``[federation] task`` value
    name: str
    #: the ``[[silos]] role`` values a job of this task may use
    roles: tuple[str, ...]

    def check(self, cfg: JobConfig, source: str) -> None:
        """Refuse (ConfigError naming ``source`` and the key) a config this task cannot run:
        keys it does not read, missing keys it needs, inconsistent ones."""

    def insecure_settings(self, cfg: JobConfig) -> list[tuple[str, str]]:
        """``(key, why + remedy)`` for each setting of this task that only ``[crypto] insecure
        = true`` allows (the config appends how to allow it)."""
        return []

    def topology(self, cfg: JobConfig) -> nx.DiGraph | None:
        """The job's federation: a ``networkx.DiGraph`` of its parties (with their roles) and an
        edge for each sender → receiver of the protocol, with what travels; build it with
        :func:`fedsilo.silos.topology.new_federation`, ``add_party`` and ``add_flow``. Checked
        (:func:`~fedsilo.silos.topology.check_topology`) before a job is planned. None: the
        built-in topology of this task's name, if any; otherwise the job's federation is not
        checked."""
        return None

    def planned_charges(self, cfg: JobConfig, sources: Mapping[str, Any]) -> Mapping[str, Sequence[tuple[Any, str]]]:
        """Every ``(event, relation)`` each data party in ``sources`` charges to its ledger if the
        job runs all its rounds, in the order charged: what the runner checks against every ledger
        before round 1, and what an agent checks against its own when offered the job. ``{}``: not
        planned, each charge is checked as it is made (the default)."""
        return {}

    @abc.abstractmethod
    def plan(self, cfg: JobConfig, ctx: JobContext) -> tuple[Any, Sequence[Party]]:
        """The public job spec every party receives, and the parties. Deterministic in
        ``(cfg, ctx.job, the sources' schemas)``, so every agent of a job computes the same
        spec; it reads only the sources' schemas (:meth:`DataSource.columns`,
        :meth:`DataSource.public_bounds`), never their rows."""

    @abc.abstractmethod
    def party(self, plan: Any, party: Party, channel: Channel, progress: Progress | None = None) -> Any:
        """Run one party of the job (what an agent runs), returning its report."""

    @abc.abstractmethod
    def results(self, plan: Any, parties: Sequence[Party], run: JobRun) -> dict[str, Any]:
        """The results contract (docs/results.md) from the parties' reports."""


_TASKS: dict[str, Task] = {}
#: The tasks loaded or registered so far, by name (read-only view; :func:`get_task` loads).
TASKS: Mapping[str, Task] = MappingProxyType(_TASKS)
_ENGINES: dict[str, Callable[[], Engine]] = {}


def _load(target: str, what: str) -> Any:
    module, _, attr = target.partition(":")
    try:
        return getattr(import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{what} {target!r} could not be loaded: {exc}") from exc


def _discovered(group: str, builtin: Mapping[str, str]) -> dict[str, str]:
    """Name -> import path of the built-ins and the entry points of ``group``."""
    found = dict(builtin)
    for ep in entry_points(group=group):
        found.setdefault(ep.name, ep.value)
    return found


def register_task(task: Task) -> Task:
    """Make ``task`` available as ``[federation] task = task.name`` (in-process)."""
    if not isinstance(task, Task) or not getattr(task, "name", None) or not getattr(task, "roles", None):
        raise ConfigError(f"{task!r} is not a Task with a name and its roles")
    _TASKS[task.name] = task
    return task


def register_engine(name: str, factory: Callable[[], Engine]) -> None:
    """Make an engine available to ``run_job(engine=name)`` (in-process)."""
    _ENGINES[name] = factory


def task_names() -> list[str]:
    """Every task a config may name."""
    return list(dict.fromkeys([*_discovered(TASK_GROUP, _BUILTIN_TASKS), *_TASKS]))


def engine_names() -> list[str]:
    """Every engine ``run_job`` may be asked for."""
    return list(dict.fromkeys([*_discovered(ENGINE_GROUP, _BUILTIN_ENGINES), *_ENGINES]))


def _unknown(what: str, name: str, names: Sequence[str]) -> ConfigError:
    return ConfigError(f"unknown {what} {name!r}{did_you_mean(name, names)} (available: {', '.join(names)})")


def get_task(name: str) -> Task:
    """The task ``name``; ConfigError with the nearest name otherwise."""
    if name not in _TASKS:
        targets = _discovered(TASK_GROUP, _BUILTIN_TASKS)
        if name not in targets:
            raise _unknown("task", name, task_names())
        task = _load(targets[name], "task")
        if not isinstance(task, Task) or task.name != name:
            raise ConfigError(f"task {targets[name]!r} is not a Task named {name!r}")
        _TASKS[name] = task
    return _TASKS[name]


def get_engine(name: str) -> Engine:
    """A new engine ``name``; ConfigError with the nearest name otherwise."""
    if name not in _ENGINES:
        targets = _discovered(ENGINE_GROUP, _BUILTIN_ENGINES)
        if name not in targets:
            raise _unknown("engine", name, engine_names())
        _ENGINES[name] = _load(targets[name], "engine")
    engine = _ENGINES[name]()
    if not isinstance(engine, Engine):
        raise ConfigError(f"engine {name!r} does not build an Engine")
    return engine


def check_task(cfg: JobConfig, source: str) -> None:
    """The task's own checks of a validated config (called by the config loader): the silos'
    roles are the task's, then :meth:`Task.check`."""
    task = get_task(cfg.federation.task)
    for i, silo in enumerate(cfg.silos):
        if silo.role not in task.roles:
            raise ConfigError(
                f"{source}: key 'silos[{i}].role': {silo.role!r} is not a role of a {task.name!r} job "
                f"(roles: {', '.join(task.roles)})"
            )
    task.check(cfg, source)


def check_silo_job(cfg: JobConfig, source: str) -> None:
    """Checks shared by the jobs of silos and one aggregator (horizontal, statistics): a
    built-in data set has a partition, no silo takes the aggregator's name, and the noise
    shares can survive ``privacy.colluders`` key holders."""
    if cfg.data.source is not None and cfg.data.partition is None:
        raise ConfigError(f"{source}: [data] source needs a partition = {{kind, silos}} to split it into silos")
    if "aggregator" in [s.name for s in cfg.silos]:
        raise ConfigError(
            f"{source}: key 'silos[].name': 'aggregator' is the aggregator's party name; name the silo differently"
        )
    n = len(cfg.silo_names())
    if cfg.privacy is not None and n <= cfg.privacy.colluders:
        raise ConfigError(
            f"{source}: privacy.colluders = {cfg.privacy.colluders} but the job has {n} silo(s): noise "
            "shares cannot survive that many colluding key holders (each silo knows its own); lower "
            "privacy.colluders or add silos"
        )


def exposure_settings(cfg: JobConfig, what: str, remedy: str) -> list[tuple[str, str]]:
    """The insecure setting of a job of secure sums whose every sum would let the colluders
    compute one silo's exact ``what`` (the decrypted sum minus their own): 2 to ``colluders + 1``
    silos. The same rule, per round, is
    :func:`fedsilo.protocols.horizontal.secure_aggregation.exposed_sums_allowed`."""
    colluders = cfg.privacy.colluders if cfg.privacy is not None else 1
    n = len(cfg.silo_names())
    if not 2 <= n <= colluders + 1:
        return []
    why = (
        f"a {cfg.federation.task} job with exactly 2 silos lets each silo compute the other's {what} "
        "(the decrypted sum minus its own)"
        if n == 2
        else f"a {cfg.federation.task} job with {n} silos and privacy.colluders = {colluders} lets the colluders "
        f"compute another silo's {what} (the decrypted sum minus their own)"
    )
    key = "data.partition.silos" if cfg.data.partition is not None else "silos"
    return [(key, f"{why}; {remedy}")]


def refuse_unread(cfg: JobConfig, source: str, task: str, reads: Mapping[str, Sequence[str] | None]) -> None:
    """ConfigError for the first key the config sets explicitly that ``task`` does not read.

    ``reads`` maps a section name to the keys the task reads (None: the whole section is not
    read). Sections not listed are read whole."""
    flags: Mapping[str, str] = getattr(cfg, "_flags", {}) or {}

    def where(keys: Sequence[str]) -> str:
        # a key set by a command-line flag is named by the flag the user typed
        flag = next((flags[k] for k in keys if k in flags), None)
        return f"{flag}" if flag else source

    for name, keys in reads.items():
        value = getattr(cfg, name)
        if value is None:
            continue
        given = sorted(value.model_fields_set) if hasattr(value, "model_fields_set") else []
        if keys is None:
            if name in cfg.model_fields_set and (given or not hasattr(value, "model_fields_set")):
                flagged = where([k for k in flags if k.startswith(f"{name}.")])
                raise ConfigError(f"{flagged}: [{name}] is not read by a {task!r} job; remove it")
            continue
        extra = [k for k in given if k not in keys]
        if extra:
            raise ConfigError(
                f"{where([f'{name}.{extra[0]}'])}: key '{name}.{extra[0]}' is not read by a {task!r} job "
                f"(it reads {', '.join(f'{name}.{k}' for k in keys) or f'no {name} keys'}); remove it"
            )
