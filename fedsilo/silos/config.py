"""The federation config (TOML): one file describes a job; ``fedsilo simulate`` runs it.

Every key is documented in docs/config.md. Unknown keys are errors naming the file, the key
and the nearest valid key, so a typo never silently changes a privacy setting. Paths are
relative to the config file. Command-line flags override the matching keys through
:func:`apply_overrides`, which re-validates the result.

``[crypto] insecure = true`` is the one switch for every insecure setting, checked here after
the types (:func:`parse_config`): a backend instance that does not keep ciphertexts confidential
(``plain``; Paillier keys below 2048 bits; whatever a plugin's ``confidentiality()`` says),
vertical training without DP, and a horizontal or statistics job whose every secure sum would let
one silo compute another's exact contribution (exactly two silos, without silo-level DP). The
protocols refuse the same things at run time (:mod:`fedsilo.protocols.horizontal.secure_aggregation`).
"""
from __future__ import annotations

import difflib
import re
import tomllib
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, Strict, ValidationError, field_validator, model_validator

from fedsilo.errors import ConfigError

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

# TOML has real types: a count must be an integer (not `true`, `"3"` or `2.5`), a number a number
# (not `"1"` or `true`), a switch a boolean. Lax coercion would let `rounds = true` run 1 round.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]  # strict floats still accept TOML integers (epsilon = 1)
Bool = Annotated[bool, Strict()]
Range = tuple[Float, Float]

#: numpy and torch seeds are unsigned 32/64-bit; keep to the range every RNG accepts
MAX_SEED = 2**32 - 1
#: one week; larger values overflow the platform's timestamps in the channel's deadlines
MAX_ROUND_TIMEOUT = 7 * 24 * 3600.0


class _Section(BaseModel):
    # allow_inf_nan=False: `epsilon = inf`, `lr = nan`, `round_timeout = inf` are config errors
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _ordered(ranges: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    bad = [f"{col!r} = [{lo:g}, {hi:g}]" for col, (lo, hi) in ranges.items() if not lo < hi]
    if bad:
        raise ValueError(f"each entry must be [lo, hi] with lo < hi; got {', '.join(bad)}")
    return ranges


class FederationSection(_Section):
    name: str = Field("federation", pattern=_NAME)
    task: Literal["horizontal", "vertical", "statistics"]
    seed: Int = Field(0, ge=0, le=MAX_SEED)
    min_silos: Int = Field(2, ge=1)
    round_timeout: Float = Field(120.0, gt=0, le=MAX_ROUND_TIMEOUT)


class CryptoSection(_Section):
    backend: str = "ckks"
    params: dict[str, Any] = Field(default_factory=dict)
    insecure: Bool = False


class PrivacySection(_Section):
    epsilon: Float = Field(gt=0)
    delta: Float = Field(1e-5, gt=0, lt=1)
    clip: Float = Field(1.0, gt=0)
    accountant: Literal["rdp", "pld"] = "rdp"
    level: Literal["silo", "record"] = "silo"
    # Each contributing silo knows its own noise share and (shared key) sees the decrypted sum,
    # so shares must be sized for at least one party subtracting its own: 0 is never safe here.
    colluders: Int = Field(1, ge=1)


class ModelSection(_Section):
    kind: str = "logistic"
    hidden: list[Annotated[Int, Field(ge=1)]] = Field(default_factory=lambda: [32], min_length=1)


class TrainingSection(_Section):
    rounds: Int = Field(10, ge=1)
    local_epochs: Int = Field(1, ge=1)
    batch_size: Int = Field(64, ge=1)
    lr: Float = Field(0.1, gt=0)
    optimizer: Literal["sgd", "adam"] = "sgd"
    strategy: str = "fedavg"  # a registered strategy (fedsilo.protocols.horizontal.strategies.STRATEGIES)
    strategy_params: dict[str, Float] = Field(default_factory=dict)
    l2: Float = Field(0.0, ge=0)
    early_stopping_tol: Float | None = Field(None, gt=0)

    @field_validator("strategy")
    @classmethod
    def _registered_strategy(cls, name: str) -> str:
        from fedsilo.protocols.horizontal.strategies import STRATEGIES

        if name not in STRATEGIES:
            near = difflib.get_close_matches(name, list(STRATEGIES), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ValueError(f"unknown strategy {name!r}{hint} (registered: {', '.join(STRATEGIES)})")
        return name


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

    _bounds_ordered = field_validator("bounds")(_ordered)


class StatisticsSection(_Section):
    columns: list[str] = Field(min_length=1)
    queries: list[Literal["count", "sum", "mean", "histogram"]] = Field(
        default_factory=lambda: ["count", "sum", "mean"]
    )
    bins: Int = Field(10, ge=1, le=1000)
    range: dict[str, Range] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> "StatisticsSection":
        for key, items in (("columns", self.columns), ("queries", self.queries)):
            dup = sorted({c for c in items if items.count(c) > 1})
            if dup:
                raise ValueError(f"statistics.{key} lists {dup} more than once")
        stray = [c for c in self.range if c not in self.columns]
        if stray:
            raise ValueError(
                f"statistics.range has {stray} which {'is' if len(stray) == 1 else 'are'} not in "
                f"statistics.columns {list(self.columns)}"
            )
        return self

    _range_ordered = field_validator("range")(_ordered)


class Budget(_Section):
    epsilon: Float = Field(gt=0)
    delta: Float = Field(1e-5, gt=0, lt=1)


class SiloSection(_Section):
    name: str = Field(pattern=_NAME)
    data: str | None = None
    role: Literal["silo", "guest", "host", "arbiter"] = "silo"
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

    @model_validator(mode="after")
    def _cross_checks(self) -> "JobConfig":
        names = [s.name for s in self.silos]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"silo names must be unique; repeated: {dup}")
        task = self.federation.task
        if self.privacy is not None and task != "vertical" and len(self.silo_names()) <= self.privacy.colluders:
            raise ValueError(
                f"privacy.colluders = {self.privacy.colluders} but the job has {len(self.silo_names())} silo(s): noise "
                "shares cannot survive that many colluding key holders (each silo knows its own); lower "
                "privacy.colluders or add silos"
            )
        if task != "vertical" and "aggregator" in names:
            raise ValueError("silos[].name: 'aggregator' is the aggregator's party name; name the silo differently")
        if self.data.source is None and not self.silos:
            raise ValueError("no data: set [data] source (e.g. 'sklearn:breast_cancer') or add [[silos]] with data")
        if self.data.source is not None and self.data.partition is None and task != "vertical":
            raise ValueError("[data] source needs a partition = {kind, silos} to split it into silos")
        if self.data.partition is not None and self.silos and len(self.silos) != self.data.partition.silos:
            raise ValueError(
                f"[data] partition splits the data into {self.data.partition.silos} silos "
                f"but {len(self.silos)} [[silos]] are listed"
            )
        if task == "statistics" and self.statistics is None:
            raise ValueError("task 'statistics' needs a [statistics] section with columns")
        if self.statistics is not None:
            st = self.statistics
            dp_sum = self.privacy is not None and ("sum" in st.queries or "mean" in st.queries)
            if "histogram" in st.queries or dp_sum:
                unranged = [c for c in st.columns if c not in st.range]
                if unranged:
                    why = "histogram" if "histogram" in st.queries else "a DP sum/mean (it bounds each record's contribution)"
                    raise ValueError(f"statistics.range needs [lo, hi] for {unranged}: required for {why}")
        if task in ("horizontal", "vertical") and not self.data.label:
            raise ValueError(f"task {task!r} needs [data] label (the target column)")
        if task == "vertical":
            if not self.data.id_column:
                raise ValueError("task 'vertical' needs [data] id_column (the column PSI aligns on)")
            roles = [s.role for s in self.silos]
            if roles.count("guest") != 1 or roles.count("host") < 1:
                raise ValueError("task 'vertical' needs exactly one silo with role 'guest' and at least one 'host'")
        return self

    def silo_names(self) -> list[str]:
        if self.silos:
            return [s.name for s in self.silos]
        assert self.data.partition is not None
        return [f"site{i}" for i in range(self.data.partition.silos)]

    def resolve(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else (self.base_dir / p)


def _valid_keys(model: type[BaseModel]) -> list[str]:
    return [k for k in model.model_fields if k != "base_dir"]


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The section model that owns the key at ``loc`` (for nearest-key hints)."""
    model: Any = JobConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) else None
        if field is None:
            return None
        ann = field.annotation
        for cand in getattr(ann, "__args__", ()) + (ann,):
            inner = getattr(cand, "__args__", None)
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                model = cand
                break
            if inner:
                sub = [c for c in inner if isinstance(c, type) and issubclass(c, BaseModel)]
                if sub:
                    model = sub[0]
                    break
        else:
            return None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before"):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        key = _format_loc(loc)
        if err["type"] == "extra_forbidden":
            model = _model_at(loc)
            hint = ""
            if model is not None:
                near = difflib.get_close_matches(str(loc[-1]), _valid_keys(model), n=1, cutoff=0.5)
                hint = f"; did you mean {near[0]!r}?" if near else f"; valid keys: {', '.join(_valid_keys(model))}"
            lines.append(f"{source}: unknown key {key!r}{hint}")
        elif err["type"] == "missing":
            lines.append(f"{source}: missing required key {key!r}")
        else:
            msg = re.sub(r"^Value error, ", "", err["msg"])
            got = err.get("input")
            shown = f" (got {got!r})" if got is not None and not isinstance(got, dict) and len(repr(got)) < 80 else ""
            where = f"key {key!r}: " if loc else ""
            lines.append(f"{source}: {where}{msg}{shown}")
    return "\n".join(lines)


def _check_backend(name: str, where: str) -> None:
    """A registered crypto backend name, or BackendNotFoundError naming where it came from."""
    from fedsilo.crypto.registry import available_backends, get_backend_class
    from fedsilo.errors import BackendNotFoundError

    if name in available_backends():
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


def _exposed_sums(cfg: JobConfig) -> str | None:
    """Why every secure sum of this job would expose one silo's contribution, or None.

    With exactly two silos, each contributor subtracts its own contribution from the decrypted
    sum and has the other's (and a round with one contributor goes to the other silo). Only
    silo-level DP noise shares protect a whole contribution against that (they are sized for
    ``colluders >= 1``); record-level DP and statistics protect single records only. The same
    rule, per round, is :func:`fedsilo.protocols.horizontal.secure_aggregation.exposed_sums_allowed`.
    """
    task = cfg.federation.task
    colluders = cfg.privacy.colluders if cfg.privacy is not None else 1
    n = len(cfg.silo_names())
    if task == "vertical" or not 2 <= n <= colluders + 1:
        return None
    if task == "horizontal":
        if cfg.privacy is not None and cfg.privacy.level == "silo":
            return None
        return (
            (
                "a horizontal job with exactly 2 silos lets each silo compute the other's model update "
                "(the decrypted sum minus its own)"
                if n == 2
                else f"a horizontal job with {n} silos and privacy.colluders = {colluders} lets the colluders "
                "compute another silo's model update (the decrypted sum minus their own)"
            )
            + '; add silos, use silo-level DP ([privacy] level = "silo"), or '
        )
    return (
        (
            "a statistics job with exactly 2 silos lets each silo compute the other's statistics "
            "(the decrypted sum minus its own)"
            if n == 2
            else f"a statistics job with {n} silos and privacy.colluders = {colluders} lets the colluders "
            "compute another silo's statistics (the decrypted sum minus their own)"
        )
        + "; add silos, or "
    )


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
    if cfg.federation.task == "vertical" and cfg.privacy is None:
        problems.append((
            "privacy",
            (
                "vertical training without [privacy] gives each party its exact decrypted gradient "
                "X_p^T d / n, from which a party with enough features recovers the guest's labels; add a "
                '[privacy] section (e.g. epsilon = 8, level = "record"), or '
            ),
        ))
    exposed = _exposed_sums(cfg)
    if exposed is not None:
        problems.append(("data.partition.silos" if cfg.data.partition is not None else "silos", exposed))
    if not problems:
        return
    key, message = problems[0]
    flag = (flags or {}).get(key) or ((flags or {}).get("crypto.backend") if key.startswith("crypto.") else None)
    if flag:
        where, in_file = flag, f" in {cfg._source}"
    else:
        where, in_file = f"{source}: key {key!r}", ""
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
    origin: str | None = None,
) -> JobConfig:
    try:
        cfg = JobConfig.model_validate({**data, "base_dir": base_dir or Path(".")})
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None
    cfg._source = origin or source
    _check_backend(cfg.crypto.backend, f"{source}: key 'crypto.backend'")
    _check_insecure(cfg, source, flags)
    return cfg


def load_config(path: str | Path, *, insecure: bool = False) -> JobConfig:
    """Read and validate a federation TOML file.

    ``insecure=True`` (the ``--insecure`` flag) sets ``[crypto] insecure = true`` before the file
    is validated, so it also allows the insecure settings written in the file itself."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p}: is a directory, not a config file")
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text file") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the config file: {exc.strerror or exc}") from None
    if insecure:
        crypto = data.get("crypto")
        if crypto is not None and not isinstance(crypto, dict):
            raise ConfigError(f"{p}: [crypto] must be a table")
        data = {**data, "crypto": {**(crypto or {}), "insecure": True}}
    return parse_config(data, source=str(p), base_dir=p.resolve().parent)


def apply_overrides(cfg: JobConfig, *, source: str = "<command line>", **overrides: Any) -> JobConfig:
    """Command-line flags (--backend, --silos, --rounds, --epsilon, --seed) over the file's keys.

    ``insecure=True`` sets ``[crypto] insecure`` (what a ``--insecure`` flag would pass; tests use
    it to run a shipped example as a ``plain`` baseline). An insecure setting a flag introduces is
    refused naming the flag (e.g. ``--backend plain: 'plain' does not encrypt; ...``).
    """
    data = cfg.model_dump(exclude={"base_dir"}, exclude_none=True)
    flags: dict[str, str] = {}
    if overrides.get("insecure") is not None:
        if not isinstance(overrides["insecure"], bool):
            raise ConfigError(f"{source}: insecure must be true or false, got {overrides['insecure']!r}")
        data["crypto"]["insecure"] = overrides["insecure"]
    if overrides.get("backend") is not None:
        _check_backend(overrides["backend"], "--backend")
        flags["crypto.backend"] = f"--backend {overrides['backend']}"
        data["crypto"]["backend"] = overrides["backend"]
        data["crypto"]["params"] = {} if overrides["backend"] != cfg.crypto.backend else data["crypto"]["params"]
    if overrides.get("rounds") is not None:
        data["training"]["rounds"] = overrides["rounds"]
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
