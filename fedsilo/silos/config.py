"""The federation config (TOML): one file describes a job; ``fedsilo simulate`` runs it.

Every key is documented in docs/config.md. Unknown keys are errors naming the file, the key
and the nearest valid key, so a typo never silently changes a privacy setting. Paths are
relative to the config file. Command-line flags override the matching keys through
:func:`apply_overrides`, which re-validates the result.

The sections the protocols read (``[privacy]``, ``[model]``, ``[training]``, ``[statistics]``)
are defined once, in :mod:`fedsilo.protocols.spec`; this module composes them with the tables
only the runner reads. After the types, the job's task (:mod:`fedsilo.silos.registry`) checks the
keys it reads and its own cross-checks (:meth:`~fedsilo.silos.registry.Task.check`).

``[crypto] insecure = true`` is the one switch for every insecure setting, checked last
(:func:`parse_config`): a backend instance that does not keep ciphertexts confidential
(``plain``; Paillier keys below 2048 bits; whatever a plugin's ``confidentiality()`` says), and
what the task calls insecure (:meth:`~fedsilo.silos.registry.Task.insecure_settings`: vertical
training without DP; a horizontal or statistics job whose every secure sum would let one silo
compute another's exact contribution). The protocols refuse the same things at run time
(:mod:`fedsilo.protocols.horizontal.secure_aggregation`).
"""
from __future__ import annotations

import tomllib
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from fedsilo.errors import ConfigError, did_you_mean
from fedsilo.protocols.spec import (
    Bool,
    Float,
    Int,
    ModelSection,
    PrivacySection,
    Range,
    Section,
    StatisticsSection,
    TrainingSection,
    format_errors,
    ordered_ranges,
)
from fedsilo.silos.registry import check_task, get_task, task_names

if TYPE_CHECKING:
    from fedsilo.crypto.base import Confidentiality

__all__ = [
    "CryptoSection",
    "DataSection",
    "FederationSection",
    "JobConfig",
    "ModelSection",
    "PrivacySection",
    "SiloSection",
    "StatisticsSection",
    "TrainingSection",
    "apply_overrides",
    "check_insecure_settings",
    "load_config",
    "parse_config",
]

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"

#: numpy and torch seeds are unsigned 32/64-bit; keep to the range every RNG accepts
MAX_SEED = 2**32 - 1
#: one week; larger values overflow the platform's timestamps in the channel's deadlines
MAX_ROUND_TIMEOUT = 7 * 24 * 3600.0

_Section = Section
_ordered = ordered_ranges


class FederationSection(_Section):
    name: str = Field("federation", pattern=_NAME)
    task: str  # a task of the registry (fedsilo.silos.registry)
    seed: Int = Field(0, ge=0, le=MAX_SEED)
    min_silos: Int = Field(2, ge=1)
    round_timeout: Float = Field(120.0, gt=0, le=MAX_ROUND_TIMEOUT)

    @field_validator("task")
    @classmethod
    def _registered_task(cls, name: str) -> str:
        names = task_names()
        if name not in names:
            raise ValueError(f"unknown task {name!r}{did_you_mean(name, names)} (registered: {', '.join(names)})")
        return name


class CryptoSection(_Section):
    backend: str = "ckks"
    params: dict[str, Any] = Field(default_factory=dict)
    insecure: Bool = False


class PartitionSpec(_Section):
    kind: Literal["iid", "label_skew"] = "iid"
    silos: Int = Field(3, ge=1, le=100)
    alpha: Float = Field(0.5, gt=0)


class DataSection(_Section):
    source: str | None = None
    label: str | None = None
    id_column: str | None = None
    partition: PartitionSpec | None = None
    test_fraction: Float = Field(0.2, gt=0, lt=1)
    bounds: dict[str, Range] = Field(default_factory=dict)
    #: horizontal: a public typical value per feature (the data dictionary's), inside its bounds;
    #: each silo shifts the scaled feature so that this value maps to 0 (docs/horizontal.md)
    center: dict[str, Float] = Field(default_factory=dict)

    _bounds_ordered = field_validator("bounds")(_ordered)


class Budget(_Section):
    epsilon: Float = Field(gt=0)
    delta: Float = Field(1e-5, gt=0, lt=1)


class SiloSection(_Section):
    name: str = Field(pattern=_NAME)
    data: str | None = None
    role: str = "silo"  # one of the task's roles (Task.roles)
    budget: Budget | None = None


class JobConfig(_Section):
    federation: FederationSection
    crypto: CryptoSection = Field(default_factory=CryptoSection)
    privacy: PrivacySection | None = None
    model: ModelSection = Field(default_factory=ModelSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    data: DataSection = Field(default_factory=DataSection)
    statistics: StatisticsSection | None = None
    silos: list[SiloSection] = Field(default_factory=list)
    #: directory the config file lives in; data paths resolve against it
    base_dir: Path = Field(default=Path("."), exclude=True)
    #: where the config came from (its file), for errors about later command-line overrides
    _source: str = PrivateAttr("<config>")
    #: the command-line flag that set a key (``apply_overrides``), so an error names what was typed
    _flags: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _cross_checks(self) -> "JobConfig":
        # compared ignoring case: a name is a certificate's identity and a file name at every
        # engine and agent, and those are case-insensitive somewhere
        names = [s.name.lower() for s in self.silos]
        dup = sorted({s.name for s in self.silos if names.count(s.name.lower()) > 1})
        if dup:
            raise ValueError(f"silo names must be unique, ignoring case; repeated: {dup}")
        near = [s.name for s in self.silos if s.name.lower() == "aggregator" and s.name != "aggregator"]
        if near:
            raise ValueError(f"silo name {near[0]!r} differs from the aggregator's party name only by case; rename it")
        if self.data.source is None and not any(s.data for s in self.silos):
            raise ValueError("no data: set [data] source (e.g. 'sklearn:breast_cancer') or give [[silos]] a data file")
        if self.data.source is not None and any(s.data for s in self.silos):
            raise ValueError(
                "[data] source and [[silos]] data files are both set; a job reads one: remove [data] source "
                "(and partition) to use the files, or the silos' data keys to use the built-in data set"
            )
        if self.data.partition is not None and self.silos and len(self.silos) != self.data.partition.silos:
            raise ValueError(
                f"[data] partition splits the data into {self.data.partition.silos} silos "
                f"but {len(self.silos)} [[silos]] are listed"
            )
        return self

    def silo_names(self) -> list[str]:
        if self.silos:
            return [s.name for s in self.silos]
        assert self.data.partition is not None
        return [f"site{i}" for i in range(self.data.partition.silos)]

    def resolve(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else (self.base_dir / p)


def _check_backend(name: str, where: str) -> None:
    """A registered crypto backend name, or BackendNotFoundError naming where it came from."""
    from fedsilo.crypto.registry import get_backend_class, has_backend
    from fedsilo.errors import BackendNotFoundError

    if not isinstance(name, str):  # e.g. fedsilo.simulate(..., backend=["ckks"])
        raise ConfigError(f"{where}: a backend name is a string, got {name!r}")
    if has_backend(name):
        return
    try:
        get_backend_class(name)
    except BackendNotFoundError as exc:
        raise BackendNotFoundError(f"{where}: {exc}") from None


#: What ``[crypto] insecure = true`` is for, in every refusal it lifts.
_INSECURE_HINT = "set [crypto] insecure = true{where} (or pass --insecure) to run it (tests and baselines only)"


def _confidentiality(cfg: JobConfig, source: str) -> Confidentiality:
    """The configured backend instance's :class:`~fedsilo.crypto.base.Confidentiality`.

    Builds the backend with ``[crypto] params`` (construction only validates parameters; no
    keys are made), so a bad parameter is reported here with the file and key.
    """
    from fedsilo.crypto.registry import get_backend

    try:
        with warnings.catch_warnings():
            # a probe: the run's own construction warns about weak parameters (if allowed)
            warnings.simplefilter("ignore")
            backend = get_backend(cfg.crypto.backend, **dict(cfg.crypto.params))
    except ConfigError as exc:
        raise ConfigError(f"{source}: key 'crypto.params': {exc}") from None
    return backend.confidentiality()


def _check_insecure(cfg: JobConfig, source: str, flags: Mapping[str, str] | None = None) -> None:
    """Refuse every insecure setting unless ``[crypto] insecure = true`` (one line, the first).

    ``flags`` maps a config key to the command-line flag that set it (``apply_overrides``), so
    the error names the flag the user typed rather than a key they never wrote.
    """
    conf = _confidentiality(cfg, source)  # also validates [crypto] params, insecure or not
    if cfg.crypto.insecure:
        return
    problems: list[tuple[str, str]] = []  # (key, reason + remedy up to the hint)
    if not conf.sufficient:
        key = f"crypto.params.{conf.param}" if conf.param else "crypto.backend"
        problems.append((key, f"{conf.why_not}; "))
    problems += get_task(cfg.federation.task).insecure_settings(cfg)
    if not problems:
        return
    key, message = problems[0]
    flag = (flags or {}).get(key) or ((flags or {}).get("crypto.backend") if key.startswith("crypto.") else None)
    if flag:
        where, in_file = flag, f" in {cfg._source}"
    else:
        # a key no flag set is the file's, also when the flags' re-parse checks it (the first
        # parse skips this check when --backend replaces the file's backend)
        where, in_file = f"{cfg._source}: key {key!r}", ""
    raise ConfigError(f"{where}: {message}{_INSECURE_HINT.format(where=in_file)}")


def check_insecure_settings(cfg: JobConfig) -> None:
    """Refuse the insecure settings of an already built config (e.g. one changed with
    ``model_copy``, which skips validation) unless it says ``[crypto] insecure = true``."""
    _check_insecure(cfg, cfg._source)


def parse_config(data: dict[str, Any], *, source: str = "<config>", base_dir: Path | None = None) -> JobConfig:
    """Validate a config dict; ConfigError lists every problem with its key.

    After the types and cross-checks, every insecure setting is refused unless the config says
    ``[crypto] insecure = true`` (see the module docstring).
    """
    return _parse(data, source=source, base_dir=base_dir)


def _parse(
    data: dict[str, Any], *, source: str, base_dir: Path | None, flags: Mapping[str, str] | None = None,
    origin: str | None = None, check_insecure: bool = True,
) -> JobConfig:
    try:
        cfg = JobConfig.model_validate({**data, "base_dir": base_dir or Path(".")})
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, source, JobConfig)) from None
    cfg._source = origin or source
    cfg._flags = dict(flags or {})
    _check_backend(cfg.crypto.backend, f"{source}: key 'crypto.backend'")
    check_task(cfg, source)
    if check_insecure:
        _check_insecure(cfg, source, flags)
    return cfg


def read_toml(p: Path, *, what: str) -> dict[str, Any]:
    """A TOML file's table; ConfigError naming the file for a directory, a missing or unreadable
    file, a binary file or invalid TOML."""
    if p.is_dir():
        raise ConfigError(f"{p}: is a directory, not a {what}")
    if not p.is_file():
        raise ConfigError(f"{what} not found: {p}")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text file") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the {what}: {exc.strerror or exc}") from None


def load_config(path: str | Path, *, insecure: bool = False, overrides: Mapping[str, Any] | None = None) -> JobConfig:
    """Read and validate a federation TOML file, then apply command-line ``overrides``.

    ``insecure=True`` (the ``--insecure`` flag) sets ``[crypto] insecure = true`` before the file
    is validated, so it also allows the insecure settings written in the file itself.
    ``overrides`` are :func:`apply_overrides`' keywords (``None`` values are flags not given).
    When ``overrides["backend"]`` replaces the file's backend, the file's backend is not built:
    the flag replaces it and its ``[crypto] params``, and the insecure settings are checked once,
    on the result, naming the flags that set them (building the file's CKKS backend only to drop
    it imported TenSEAL into every ``--backend plain`` run, the budget pre-flight's included)."""
    p = Path(path)
    data = read_toml(p, what="config file")
    if insecure:
        crypto = data.get("crypto")
        if crypto is not None and not isinstance(crypto, dict):
            raise ConfigError(f"{p}: [crypto] must be a table")
        data = {**data, "crypto": {**(crypto or {}), "insecure": True}}
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    cfg = _parse(data, source=str(p), base_dir=p.resolve().parent, check_insecure=False)
    if given.get("backend", cfg.crypto.backend) == cfg.crypto.backend:  # the file's backend runs: check it
        _check_insecure(cfg, str(p))
    return apply_overrides(cfg, **given) if given else cfg


def apply_overrides(cfg: JobConfig, *, source: str = "<command line>", **overrides: Any) -> JobConfig:
    """Command-line flags (--backend, --silos, --rounds, --epsilon, --seed) over the file's keys.

    ``insecure=True`` sets ``[crypto] insecure`` (what a ``--insecure`` flag would pass; tests use
    it to run a shipped example as a ``plain`` baseline). An insecure setting a flag introduces is
    refused naming the flag (e.g. ``--backend plain: 'plain' does not encrypt; ...``).
    """
    # only the keys the file set: a task refuses keys it does not read, and defaults are not keys
    data = cfg.model_dump(exclude={"base_dir"}, exclude_none=True, exclude_unset=True)
    data.setdefault("crypto", {})
    flags: dict[str, str] = {}
    if overrides.get("insecure") is not None:
        if not isinstance(overrides["insecure"], bool):
            raise ConfigError(f"{source}: insecure must be true or false, got {overrides['insecure']!r}")
        data["crypto"]["insecure"] = overrides["insecure"]
    if overrides.get("backend") is not None:
        _check_backend(overrides["backend"], "--backend")
        flags["crypto.backend"] = f"--backend {overrides['backend']}"
        data["crypto"]["backend"] = overrides["backend"]
        data["crypto"]["params"] = {} if overrides["backend"] != cfg.crypto.backend else data["crypto"].get("params", {})
    if overrides.get("rounds") is not None:
        flags["training.rounds"] = f"--rounds {overrides['rounds']}"
        data.setdefault("training", {})["rounds"] = overrides["rounds"]
    if overrides.get("seed") is not None:
        data["federation"]["seed"] = overrides["seed"]
    if overrides.get("silos") is not None:
        if cfg.data.partition is None:
            raise ConfigError(f"{source}: --silos applies only to built-in data split by [data] partition")
        n = overrides["silos"]
        flags["data.partition.silos"] = f"--silos {n}"
        data["data"]["partition"]["silos"] = n
        named = data.get("silos") or []
        if named:
            # keep the first n named silos; extra ones are named siteK with the last one's budget
            extra = [{**named[-1], "name": f"site{k}"} for k in range(len(named), n)]
            data["silos"] = named[:n] + extra
    if overrides.get("epsilon") is not None:
        if overrides["epsilon"] == 0:
            if "privacy" in data:
                flags["privacy"] = "--epsilon 0"
                flags["data.partition.silos"] = flags["silos"] = "--epsilon 0"
            data.pop("privacy", None)
        elif "privacy" in data:
            data["privacy"]["epsilon"] = overrides["epsilon"]
        else:
            data["privacy"] = {"epsilon": overrides["epsilon"]}
    return _parse(data, source=source, base_dir=cfg.base_dir, flags=flags, origin=cfg._source)
