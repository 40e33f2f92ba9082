"""The typed job sections the protocols receive: the one definition of each key, default and range.

These are the ``[privacy]``, ``[model]``, ``[training]`` and ``[statistics]`` tables of a
federation file (docs/config.md). :mod:`fedsilo.silos.config` composes them into the whole
:class:`~fedsilo.silos.config.JobConfig` (with the federation, crypto, data and silo tables, which
only the runner reads); the protocols take the validated, frozen section objects themselves and
never re-read a dict with defaults of their own. They live here, one layer below the config,
because the layer rule (``silos -> protocols``) forbids a protocol importing from
:mod:`fedsilo.silos`.

:func:`section` validates a mapping into a section with errors naming each key (the form every
``fedsilo`` error takes), for callers that build a job without a file (tests, benchmarks).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, ValidationInfo, field_validator, model_validator

from fedsilo.errors import ConfigError, did_you_mean

__all__ = [
    "Bool",
    "Float",
    "Int",
    "ModelSection",
    "PrivacySection",
    "Range",
    "SECUREBOOST_KEYS",
    "Section",
    "StatisticsSection",
    "TrainingSection",
    "explicit_keys",
    "format_errors",
    "ordered_ranges",
    "section",
]

# TOML has real types: a count must be an integer (not `true`, `"3"` or `2.5`), a number a number
# (not `"1"` or `true`), a switch a boolean. Lax coercion would let `rounds = true` run 1 round.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]  # strict floats still accept TOML integers (epsilon = 1)
Bool = Annotated[bool, Strict()]
Range = tuple[Float, Float]

S = TypeVar("S", bound=BaseModel)


class Section(BaseModel):
    """A frozen config table: unknown keys are errors, and so are ``inf`` and ``nan``."""

    # allow_inf_nan=False: `epsilon = inf`, `lr = nan`, `round_timeout = inf` are config errors
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def ordered_ranges(ranges: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """Every ``[lo, hi]`` of a bounds/range table has ``lo < hi``."""
    bad = [f"{col!r} = [{lo:g}, {hi:g}]" for col, (lo, hi) in ranges.items() if not lo < hi]
    if bad:
        raise ValueError(f"each entry must be [lo, hi] with lo < hi; got {', '.join(bad)}")
    return ranges


class PrivacySection(Section):
    """``[privacy]``: the DP target of one job, per silo (docs/privacy.md)."""

    epsilon: Float = Field(gt=0)
    delta: Float = Field(1e-5, gt=0, lt=1)
    #: L2 bound of one contribution: a silo's update (silo level), one record's gradient (record
    #: level, horizontal), one scaled feature row (vertical)
    clip: Float = Field(1.0, gt=0)
    #: vertical only: bound B on each party's partial logit during training
    logit_clip: Float = Field(2.0, gt=0)
    accountant: Literal["rdp", "pld"] = "rdp"
    level: Literal["silo", "record"] = "silo"
    # Each contributing silo knows its own noise share and (shared key) sees the decrypted sum,
    # so shares must be sized for at least one party subtracting its own: 0 is never safe here.
    colluders: Int = Field(1, ge=1)
    #: horizontal record level: "local" DP-SGD inside each silo (each update noised for its own
    #: batch), or "distributed" DP-SGD (one joint step per round, noise shares under encryption;
    #: docs/privacy.md, "Distributed DP-SGD")
    mode: Literal["local", "distributed"] = "local"
    #: horizontal silo level: adaptive clipping (Andrew, Thakkar, McMahan & Ramaswamy, NeurIPS
    #: 2021): ``clip`` is the initial clip, moved each round towards the ``target_quantile`` of
    #: the silos' update norms by the geometric step ``clip_lr``; ``count_noise`` is the std of
    #: the noise on the sum of the clipped-count bits (unset: 10 % of the privacy, see
    #: docs/privacy.md, "Adaptive clipping")
    adaptive_clip: Bool = False
    target_quantile: Float = Field(0.5, gt=0, lt=1)
    clip_lr: Float = Field(0.2, gt=0, le=10)
    count_noise: Float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _mode_is_record_level(self) -> "PrivacySection":
        if self.mode == "distributed" and self.level != "record":
            raise ValueError(
                f'privacy.mode = "distributed" is record-level DP-SGD, but privacy.level = {self.level!r}: set '
                'privacy.level = "record" (silo-level DP-FedAvg already adds its noise under encryption)'
            )
        return self

    @model_validator(mode="after")
    def _adaptive_clip_is_silo_level(self) -> "PrivacySection":
        if self.adaptive_clip and self.level != "silo":
            raise ValueError(
                f'privacy.adaptive_clip = true adapts silo-level DP-FedAvg\'s clip, but privacy.level = {self.level!r}: '
                'set privacy.level = "silo" or remove privacy.adaptive_clip'
            )
        unread = [k for k in ("target_quantile", "clip_lr", "count_noise") if k in self.model_fields_set]
        if unread and not self.adaptive_clip:
            raise ValueError(f"privacy.{unread[0]} is read only with privacy.adaptive_clip = true: set that or remove the key")
        return self


class ModelSection(Section):
    """``[model]``: ``logistic``, ``mlp`` (with ``hidden``) or ``package.module:Class`` (with
    ``params``, passed to the class as keyword arguments); in a vertical job also
    ``secureboost``, gradient-boosted trees, with the keys of :data:`SECUREBOOST_KEYS`
    (docs/secureboost.md). A task refuses the keys it does not read when they are set."""

    kind: str = "logistic"
    hidden: list[Annotated[Int, Field(ge=1)]] = Field(default_factory=lambda: [32], min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    #: horizontal: your own local training loop, ``"package.module:function"`` (contract in
    #: fedsilo.protocols.horizontal.trainer and docs/horizontal.md, "Bring your own training loop")
    trainer: str | None = None
    # -- kind = "secureboost" (vertical): read by fedsilo.protocols.vertical.secureboost --------
    #: boosting rounds: one tree each
    trees: Int = Field(10, ge=1, le=1000)
    #: edges from the root to the deepest leaf (at most 2**depth leaves)
    depth: Int = Field(3, ge=1, le=12)
    #: shrinkage of every leaf value
    learning_rate: Float = Field(0.3, gt=0, le=1)
    #: bins per feature (each party bins its own columns)
    bins: Int = Field(32, ge=2, le=255)
    #: least hessian sum in each child of a split
    min_child_weight: Float = Field(1.0, ge=0)
    #: L2 penalty on leaf values (the lambda of XGBoost)
    l2: Float = Field(1.0, ge=0)
    #: share of the training rows each tree is grown on (drawn from the public seed)
    subsample: Float = Field(1.0, gt=0, le=1)
    #: least rows in each child of a split (scikit-learn's min_samples_leaf)
    min_leaf_rows: Int = Field(20, ge=1)
    #: the loss (scikit-learn's ``loss`` names): ``log_loss`` (binary labels, AUC/KS/accuracy) or
    #: ``squared_error`` (regression, RMSE/MAE/R²)
    objective: Literal["log_loss", "squared_error"] = "log_loss"
    #: a feature with NaN: ``refuse`` it (naming it) or give it a missing-value ``bin`` whose
    #: side each split learns (XGBoost's default direction)
    missing: Literal["refuse", "bin"] = "refuse"
    #: the first trees grown on the guest's own features only, without encryption or hosts
    guest_trees: Int = Field(0, ge=0)

    @field_validator("guest_trees")
    @classmethod
    def _guest_trees_fit(cls, guest_trees: int, info: ValidationInfo) -> int:
        # a field validator (not a model one) so the error's key is model.guest_trees; trees is
        # declared first, so it is in info.data unless it failed its own check
        trees = info.data.get("trees")
        if trees is not None and guest_trees > trees:
            raise ValueError(f"must be at most model.trees ({trees})")  # format_errors adds (got ...)
        return guest_trees


#: The ``[model]`` keys of ``kind = "secureboost"`` (besides ``kind``).
SECUREBOOST_KEYS = ("trees", "depth", "learning_rate", "bins", "min_child_weight", "l2", "subsample", "min_leaf_rows",
                    "objective", "missing", "guest_trees")


class TrainingSection(Section):
    """``[training]``: rounds (vertical: epochs), local optimization and the server strategy."""

    # Horizontal defaults that converge (issue 17; docs/horizontal.md, "Defaults"): 20 rounds of
    # 2 local epochs of SGD at lr 0.5, batch 32, reach centralized logistic regression within
    # 0.01 AUC where 10 x 1 epoch at lr 0.1, batch 64 left a gap of up to 0.14.
    rounds: Int = Field(20, ge=1)
    local_epochs: Int = Field(2, ge=1)
    batch_size: Int = Field(32, ge=1)
    #: at most 1e6: no model trains at more, and past float32's range (~3.4e38) torch's own step
    #: fails with a traceback deep inside it (found by a review)
    lr: Float = Field(0.5, gt=0, le=1e6)
    optimizer: Literal["sgd", "adam"] = "sgd"
    strategy: str = "fedavg"  # a registered strategy (fedsilo.protocols.horizontal.strategies.STRATEGIES)
    strategy_params: dict[str, Float] = Field(default_factory=dict)
    l2: Float = Field(0.0, ge=0)
    early_stopping_tol: Float | None = Field(None, gt=0)
    #: vertical LR only: each step's batch is the rows whose residuals fill one ciphertext of a
    #: slot-packed backend (CKKS: slots / the power of two >= the longest gradient), instead of
    #: batch_size (docs/vertical.md)
    fill_slots: Bool = False

    @field_validator("strategy")
    @classmethod
    def _registered_strategy(cls, name: str) -> str:
        from fedsilo.protocols.horizontal.strategies import STRATEGIES

        if name not in STRATEGIES:
            hint = did_you_mean(name, STRATEGIES)
            raise ValueError(f"unknown strategy {name!r}{hint} (registered: {', '.join(STRATEGIES)})")
        return name


class StatisticsSection(Section):
    """``[statistics]``: which columns, which queries, and the public range of each column."""

    columns: list[str] = Field(min_length=1)
    queries: list[Literal["count", "sum", "mean", "histogram"]] = Field(
        default_factory=lambda: ["count", "sum", "mean"], min_length=1
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

    _range_ordered = field_validator("range")(ordered_ranges)


def explicit_keys(obj: BaseModel) -> list[str]:
    """The keys a section was given explicitly (not defaulted), for "does this task read it"
    checks."""
    return sorted(obj.model_fields_set)


# ------------------------------------------------------------------------------ error messages


def _valid_keys(model: type[BaseModel]) -> list[str]:
    return [k for k in model.model_fields if k != "base_dir"]


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The section model that owns the key at ``loc`` (for nearest-key hints)."""
    model: Any = root
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


def format_errors(exc: ValidationError, source: str, root: type[BaseModel], prefix: tuple[str, ...] = ()) -> str:
    """One line per problem: ``source: key 'a.b': what is wrong (got ...)``, with the nearest
    valid key for an unknown one. ``prefix`` is the section's own key (e.g. ``("privacy",)``)."""
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        key = _format_loc(prefix + loc)
        if err["type"] == "extra_forbidden":
            model = _model_at(root, loc)
            hint = ""
            if model is not None:
                hint = did_you_mean(loc[-1], _valid_keys(model), cutoff=0.5) or f"; valid keys: {', '.join(_valid_keys(model))}"
            lines.append(f"{source}: unknown key {key!r}{hint}")
        elif err["type"] == "missing":
            lines.append(f"{source}: missing required key {key!r}")
        else:
            msg = re.sub(r"^Value error, ", "", err["msg"])
            got = err.get("input")
            shown = f" (got {got!r})" if got is not None and not isinstance(got, dict) and len(repr(got)) < 80 else ""
            where = f"key {key!r}: " if loc or prefix else ""
            lines.append(f"{source}: {where}{msg}{shown}")
    return "\n".join(lines)


def section(cls: type[S], data: S | Mapping[str, Any], *, key: str, source: str = "<job>") -> S:
    """``data`` validated as the section ``cls`` (an instance passes through unchanged);
    ConfigError naming ``key`` and every problem otherwise."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: [{key}] must be a table, got {type(data).__name__}")
    try:
        return cls.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, source, cls, (key,))) from None
