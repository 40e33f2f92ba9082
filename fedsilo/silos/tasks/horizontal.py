"""The ``horizontal`` task: secure FedAvg (and DP-FedAvg, DP-SGD) across silos sharing columns.

Each silo party loads its own table, checks it against the job's public schema (the feature
columns, the label, the public bounds), scales it with the public bounds, holds out its own
evaluation rows and runs :func:`fedsilo.protocols.horizontal.protocol.silo` with its own ledger
and its own secret randomness. The aggregator party holds no data and no key. Results follow
docs/results.md.
"""
from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedsilo.crypto.registry import get_backend, get_backend_class
from fedsilo.errors import ConfigError, DataError, NotEnoughSilosError, ProtocolError
from fedsilo.privacy.accounting import epsilon as _epsilon
from fedsilo.privacy.events import ComposedEvent, DpEvent
from fedsilo.privacy.relations import ADD_REMOVE_RECORD, ZERO_OUT_SILO
from fedsilo.protocols.channel import Channel
from fedsilo.protocols.horizontal import protocol as hz
from fedsilo.protocols.horizontal.dp import DPFedAvg
# torch-free (planning, the budget pre-flight); .models and .training (torch) are imported where
# a model is built or trained
from fedsilo.protocols.horizontal.local_plan import BUILTIN_MODELS, MAX_MODEL_PARAMETERS, LocalConfig
from fedsilo.protocols.horizontal.secure_aggregation import check_federation, required_contributors
from fedsilo.protocols.horizontal.trainer import check_trainer
from fedsilo.protocols.spec import ModelSection, PrivacySection, TrainingSection, section
from fedsilo.silos.config import JobConfig
from fedsilo.silos.data import DataSource, LocalTable, binary_labels, require_columns, require_numeric, scale_with_bounds
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
    job_id,
    ledger_specs,
    party_noise_seeds,
    refuse_unread,
    register_task,
    run_plan,
    sources_for,
)

__all__ = ["BASELINES_LABEL", "HORIZONTAL", "HorizontalData", "HorizontalPlan", "SiloCharges", "Schema", "SiloRows", "baselines",
           "center_offsets", "check_same_final_model", "epsilon_per_round", "evaluate", "horizontal_baselines", "held_out_rows", "planned_releases", "prepare_horizontal", "silo_charges", "silo_rows",
           "simulate_horizontal"]

AGGREGATOR = hz.AGGREGATOR


@dataclass(frozen=True)
class Schema:
    """The public description of every silo's table: what a silo checks its own file against."""

    features: tuple[str, ...]
    label: str
    id_column: str | None
    #: public bounds per feature (``[data] bounds`` over the data set's published ones)
    bounds: Mapping[str, tuple[float, float]]
    test_fraction: float
    #: the job's public seed: decides which rows each silo holds out
    split_seed: int
    #: public typical value per feature (``[data] center``), inside its bounds: maps to 0
    center: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class SiloRows:
    """A silo's rows already prepared in memory (tests, benchmarks): scaled training rows and
    its own held-out rows, which never leave it."""

    x: np.ndarray
    y: np.ndarray
    test: tuple[np.ndarray, np.ndarray] | None = None


@dataclass(frozen=True)
class HorizontalPlan:
    """What every party of one horizontal job receives."""

    job: hz.HorizontalJob
    silos: tuple[str, ...]
    schema: Schema | None
    notes: tuple[str, ...] = ()
    #: test hook ``{silo: {round: "hello" | "update" | "topup"}}`` (see :func:`~.protocol.silo`)
    faults: Mapping[str, Mapping[int, str]] = field(default_factory=dict)


def held_out_rows(x: np.ndarray, y: np.ndarray, *, seed: int, silo: str, fraction: float) -> np.ndarray:
    """Which of a silo's rows it holds out: a public coin per row, ``sha256(seed, silo, row) <
    fraction``.

    Each row's side depends on that row alone, never on how many rows the silo has, so adding
    or removing one record moves no other record between training and evaluation — what the
    add/remove accounting of DP-SGD plus the evaluation release assumes (a permutation of all
    rows would reshuffle about a fifth of them). Identical rows share a side.
    """
    out = np.empty(len(y), dtype=bool)
    prefix = f"fedsilo-split:{int(seed)}:{silo}:".encode()
    for i in range(len(y)):
        digest = hashlib.sha256(prefix + np.ascontiguousarray(x[i]).tobytes() + np.asarray(y[i]).tobytes()).digest()
        out[i] = int.from_bytes(digest[:8], "big") / 2.0**64 < fraction
    return out


def silo_rows(schema: Schema, table: LocalTable) -> SiloRows:
    """One silo's training and held-out rows from its own table, checked against the schema:
    the same columns, numeric features, a 0/1 label; features clipped to the public bounds and
    mapped to [-1, 1] (a feature without public bounds — allowed only without DP — by the
    silo's own min/max), then shifted so that its public ``center`` (if any) maps to 0: the
    same affine map in every silo, from public values only (:func:`center_offsets`)."""
    require_columns(table, [schema.label])
    own = {str(c) for c in table.frame.columns} - {schema.label} - ({schema.id_column} if schema.id_column else set())
    if own != set(schema.features):
        extra = sorted(own ^ set(schema.features))
        raise DataError(
            f"{table.where}: columns differ from the job's features: {extra} "
            "(horizontal silos must share one feature space)"
        )
    features = list(schema.features)
    x = require_numeric(table, features)
    y = binary_labels(table, schema.label)
    nan = (np.nan, np.nan)
    lo = np.array([schema.bounds.get(f, nan)[0] for f in features])
    hi = np.array([schema.bounds.get(f, nan)[1] for f in features])
    lo = np.where(np.isnan(lo), x.min(axis=0), lo)
    hi = np.where(np.isnan(hi), x.max(axis=0), hi)
    xs = scale_with_bounds(x, lo, hi) - center_offsets(features, schema.bounds, schema.center)
    held = held_out_rows(x, y, seed=schema.split_seed, silo=table.name, fraction=schema.test_fraction)
    if not held.any():
        raise DataError(
            f"{table.where}: holds out none of its {len(y)} rows at [data] test_fraction = {schema.test_fraction:g}, "
            "so its rows never enter the federated metrics; raise test_fraction"
        )
    if held.all():
        raise DataError(
            f"{table.where}: kept no training rows after holding out [data] test_fraction = "
            f"{schema.test_fraction:g} of its rows; lower test_fraction or give the silo more rows"
        )
    return SiloRows(xs[~held], y[~held], (xs[held], y[held]))


def center_offsets(features: Sequence[str], bounds: Mapping[str, tuple[float, float]],
                   center: Mapping[str, float]) -> np.ndarray:
    """Per feature, where its public ``center`` lands on the [-1, 1] map of its public bounds
    (0 for a feature without a center): subtracted from every scaled row, so the typical value
    maps to 0 and the feature's range to ``[-1 - c, 1 - c]`` within [-2, 2]. A shift, not a
    re-scaling: a linear model's class is unchanged, only its conditioning (an intercept no
    longer has to cancel an offset of every feature; LeCun et al., "Efficient BackProp", 1998,
    Sec. 4.3: inputs with a non-zero mean slow gradient descent)."""
    out = np.zeros(len(features))
    for j, f in enumerate(features):
        if f in center:
            lo, hi = bounds[f]
            out[j] = float(scale_with_bounds(np.array([[center[f]]]), np.array([lo]), np.array([hi]))[0, 0])
    return out


def _check_center(cfg: JobConfig, features: Sequence[str], bounds: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    """``[data] center``, checked: feature columns only, each with public bounds and inside them."""
    center = {str(k): float(v) for k, v in cfg.data.center.items()}
    stray = [c for c in center if c not in features]
    if stray:
        raise ConfigError(
            f"{cfg._source}: key 'data.center': {stray} are not feature column(s) of the silos' data "
            f"(features: {list(features)[:12]}{' ...' if len(features) > 12 else ''})"
        )
    for col, value in center.items():
        if col not in bounds:
            raise ConfigError(
                f"{cfg._source}: key 'data.center': {col!r} = {value:g} has no public bounds to place it in; "
                f"add [data] bounds for {col!r} (the center is a point of the public [lo, hi] map)"
            )
        lo, hi = bounds[col]
        if not lo <= value <= hi:
            raise ConfigError(
                f"{cfg._source}: key 'data.center': {col!r} = {value:g} is outside its public bounds "
                f"[{lo:g}, {hi:g}]; a typical value lies inside them"
            )
    return center


def _features_and_bounds(
    cfg: JobConfig, columns: Sequence[str], public_bounds: Mapping[str, tuple[float, float]],
) -> tuple[list[str], dict[str, tuple[float, float]]]:
    """The job's feature columns (every column but the label and the ID) and their public bounds
    (the data set's published ones, overridden by ``[data] bounds``)."""
    features = [c for c in columns if c != cfg.data.label and c != cfg.data.id_column]
    bounds = {**public_bounds, **{k: (float(v[0]), float(v[1])) for k, v in cfg.data.bounds.items()}}
    return features, bounds


def _silo(plan: HorizontalPlan, party: Party, channel: Channel, progress: Progress | None) -> hz.SiloReport:
    source = party.source
    if isinstance(source, SiloRows):
        rows = source
    elif isinstance(source, DataSource):
        assert plan.schema is not None
        rows = silo_rows(plan.schema, source.load())
    else:
        raise ConfigError(f"silo {party.name!r} has no data")
    job = plan.job

    def on_round(report: hz.RoundReport) -> None:
        if progress is None:
            return
        row: dict[str, Any] = {"task": "horizontal", "rounds": job.rounds, "round": report.round,
                               "silos": list(report.contributors)}
        if report.metrics is not None:
            row.update({k: report.metrics[k] for k in ("accuracy", "auc", "loss")})
        progress(row)

    with opened(party.ledger) as ledger:
        return hz.silo(
            channel, job=job, silos=plan.silos, aggregator=AGGREGATOR, x=np.asarray(rows.x), y=np.asarray(rows.y),
            test=rows.test, ledger=ledger, dataset=party.ledger.dataset if party.ledger else None,
            noise_seed=party.noise_seed, drop_rounds=plan.faults.get(party.name), on_round=on_round,
        )


class HorizontalTask(Task):
    name = "horizontal"
    roles = ("silo",)

    def check(self, cfg: JobConfig, source: str) -> None:
        kind = cfg.model.kind
        model_keys = ["kind", "trainer"] + (["hidden"] if kind == "mlp" else ["params"] if kind not in BUILTIN_MODELS else [])
        # training.l2 is passed to a user training loop ([model] trainer); the built-in one has none
        l2 = ["l2"] if cfg.model.trainer is not None else []
        refuse_unread(cfg, source, self.name, {
            "statistics": None,
            "privacy": ["epsilon", "delta", "clip", "accountant", "level", "colluders", "mode", "adaptive_clip",
                        "target_quantile", "clip_lr", "count_noise"],
            # local training has no L2 penalty and no early stopping (a round count is the budget's)
            "training": ["rounds", "local_epochs", "batch_size", "lr", "optimizer", "strategy", "strategy_params", *l2],
            "model": model_keys,
            "data": ["source", "label", "id_column", "partition", "test_fraction", "bounds", "center"],
        })
        check_silo_job(cfg, source)
        if not cfg.data.label:
            raise ConfigError(f"{source}: task 'horizontal' needs [data] label (the target column)")

    def insecure_settings(self, cfg: JobConfig) -> list[tuple[str, str]]:
        if cfg.privacy is not None and cfg.privacy.level == "silo":
            return []  # silo-level noise shares protect a whole update against the colluders
        return exposure_settings(cfg, "model update", 'add silos, use silo-level DP ([privacy] level = "silo"), or ')

    def plan(self, cfg: JobConfig, ctx: JobContext) -> tuple[HorizontalPlan, list[Party]]:
        sources = dict(ctx.sources)
        names = list(sources)
        assert cfg.data.label is not None
        first = sources[names[0]]
        columns = first.columns()
        if cfg.data.label not in columns:
            raise DataError(f"{first.where}: missing column(s) {[cfg.data.label]}; the file has {columns[:20]}")
        features, bounds = _features_and_bounds(cfg, columns, first.public_bounds())
        for name in names[1:]:  # one feature space: refused at planning (an agent: before any party starts)
            other = sources[name].columns()
            if set(other) != set(columns):
                raise DataError(
                    f"{sources[name].where}: columns differ from those of silo {names[0]!r}: "
                    f"only at {name!r}: {sorted(set(other) - set(columns))[:12]}, "
                    f"missing at {name!r}: {sorted(set(columns) - set(other))[:12]} (a horizontal job needs the "
                    "same columns at every silo)"
                )
        stray = [str(c) for c in cfg.data.bounds if c not in features]
        if stray:
            raise ConfigError(
                f"{cfg._source}: key 'data.bounds': {stray} are not feature column(s) of the silos' data "
                f"(features: {features[:12]}{' ...' if len(features) > 12 else ''})"
            )
        notes: list[str] = []
        unbounded = [f for f in features if f not in bounds]
        if unbounded and cfg.privacy is not None:
            # Scaling by the silo's own min/max makes every scaled row depend on the extreme
            # records, so one patient could move all rows: the DP sensitivity bound would not hold.
            raise ConfigError(
                f"{len(unbounded)} feature(s) have no public bounds (e.g. {unbounded[:3]}); with [privacy] "
                "every feature needs [data] bounds = {column = [lo, hi]} so one record cannot change how "
                "the others are scaled"
            )
        if unbounded:
            notes.append(
                f"no public bounds for {len(unbounded)} feature(s) (e.g. {unbounded[0]!r}); each silo scales "
                "them with its own min/max, which is weaker when silos differ: add [data] bounds"
            )
        schema = Schema(tuple(features), cfg.data.label, cfg.data.id_column, bounds, cfg.data.test_fraction,
                        cfg.federation.seed, _check_center(cfg, features, bounds))
        if cfg.federation.min_silos > len(names):
            raise ConfigError(
                f"{cfg._source}: key 'federation.min_silos': {cfg.federation.min_silos} but the job has only "
                f"{len(names)} silo(s) with data: no round could ever complete (add silos or lower min_silos)"
            )
        job = make_job(
            job=ctx.job, silos=names, backend=cfg.crypto.backend, backend_params=cfg.crypto.params,
            model=cfg.model, training=cfg.training, privacy=cfg.privacy, n_features=len(features), n_classes=2,
            seed=cfg.federation.seed, min_silos=cfg.federation.min_silos, round_timeout=cfg.federation.round_timeout,
            insecure=cfg.crypto.insecure,
        )
        plan = HorizontalPlan(job, tuple(names), schema, tuple(notes))
        return plan, parties_for(plan, {n: sources[n] for n in names}, ledger_dir=ctx.ledger_dir,
                                 budgets=budgets_for(cfg), noise_seed=ctx.noise_seed)

    def planned_charges(self, cfg: JobConfig, sources: Mapping[str, DataSource]) -> dict[str, list[Release]]:
        """Every release each silo in ``sources`` charges if it contributes to every round
        (:func:`planned_releases`), from the config and that silo's own table only (its
        training-row count, under record-level DP): what the runner checks against each
        ledger before round 1, and what an agent checks against its own when offered the job.
        A distributed DP-SGD job charges its whole guarantee with its row count, which does not
        depend on the count it releases (:meth:`~fedsilo.protocols.horizontal.protocol.
        HorizontalJob.count_charge`), so it is planned exactly too."""
        if cfg.privacy is None or not sources:
            return {}
        first = next(iter(sources.values()))
        features, bounds = _features_and_bounds(cfg, first.columns(), first.public_bounds())
        names = cfg.silo_names()
        job = make_job(
            job="planned", silos=names, backend=cfg.crypto.backend, backend_params=cfg.crypto.params,
            model=cfg.model, training=cfg.training, privacy=cfg.privacy, n_features=len(features), n_classes=2,
            seed=cfg.federation.seed, min_silos=cfg.federation.min_silos, round_timeout=cfg.federation.round_timeout,
            insecure=cfg.crypto.insecure,
        )
        if getattr(job, "distributed", False):
            return {name: planned_releases(job, names, n_examples=None) for name in sources}
        assert cfg.data.label is not None
        schema = Schema(tuple(features), cfg.data.label, cfg.data.id_column, bounds, cfg.data.test_fraction,
                        cfg.federation.seed, _check_center(cfg, features, bounds))
        record = job.level == "record"
        return {name: planned_releases(job, names, n_examples=len(silo_rows(schema, src.load()).y) if record else None)
                for name, src in sources.items()}

    def party(self, plan: HorizontalPlan, party: Party, channel: Channel, progress: Progress | None = None) -> Any:
        if party.role == "aggregator":
            return hz.aggregator(channel, job=plan.job, silos=plan.silos)
        return _silo(plan, party, channel, progress)

    def results(self, plan: HorizontalPlan, parties: Sequence[Party], run: JobRun) -> dict[str, Any]:
        return _results(plan, parties, run)


def make_job(
    *, job: str, silos: Sequence[str], backend: str, backend_params: Mapping[str, Any], model: ModelSection,
    training: TrainingSection, privacy: PrivacySection | None, n_features: int, n_classes: int, seed: int,
    min_silos: int, round_timeout: float, insecure: bool,
) -> hz.HorizontalJob:
    """The typed job every party receives, checked before any party starts: the strategy and DP
    settings, the exposure rule, the backend's precision against the metrics' grid, and
    whether a sum can ever be decrypted with this many silos."""
    if AGGREGATOR in silos:
        raise ConfigError(f"a silo may not be named {AGGREGATOR!r}")
    if len(silos) < 1:
        raise ConfigError("a horizontal job needs at least one silo")
    # each sum holds every silo's update plus its top-up share
    params = get_backend_class(backend).params_for("aggregate", summands=2 * len(silos), params=backend_params)
    spec = hz.HorizontalJob(
        job=job, backend=backend, backend_params=params, model=model, training=training, privacy=privacy,
        n_features=n_features, n_classes=n_classes, seed=seed, min_silos=min_silos, round_timeout=round_timeout,
        insecure=insecure,
    )
    if model.kind in BUILTIN_MODELS and spec.update_length > MAX_MODEL_PARAMETERS:
        raise ConfigError(
            f"key 'model.hidden': the {model.kind} model would have {spec.update_length:,} parameters on "
            f"{n_features} features; fedsilo trains and sends at most {MAX_MODEL_PARAMETERS:,} per update"
        )
    spec.strategy(list(silos))  # validate strategy / DP settings (and calibrate a session's noise) before any party starts
    sums = spec.sum_plan(list(silos))  # the secure sums' public parameters
    if sums.keyless:
        # a keyless backend's threshold and degree vs the silos, its ring bits: refused here, not
        # in a party after local training (found by the bad-input sweep)
        from fedsilo.protocols.horizontal.evaluation import input_size

        try:
            sums.spec(spec.update_length)
            sums.spec(input_size(n_classes))
        except ConfigError as exc:
            raise ConfigError(f"key 'crypto.params': {exc}") from None
    if model.kind not in BUILTIN_MODELS:
        # the model class every silo will build (an import path that does not load, bad params);
        # a built-in one cannot fail to build from a validated [model] section, and building it
        # would import torch into every job's planning, a refused one's too
        from fedsilo.protocols.horizontal.models import build_model

        try:
            build_model(model, n_features=n_features, n_classes=n_classes, seed=seed)
        except ConfigError as exc:
            raise ConfigError(f"key 'model.kind': {exc}") from None
    check_trainer(model, privacy)  # [model] trainer: loads, and a DP mode that can run it
    check_federation(silos=list(silos), allow_exposed=spec.allow_exposed, colluders=spec.colluders)
    hz.evaluation_scale(get_backend(backend, **params))  # precision vs the metrics' grid, before any ledger
    if spec.privacy is not None and len(silos) <= spec.colluders:
        raise ConfigError(
            f"privacy.colluders = {spec.colluders} but the job has only {len(silos)} silos: noise shares cannot "
            "survive that many colluding key holders; lower privacy.colluders or add silos"
        )
    need = required_contributors(min_silos=spec.min_silos, colluders=spec.colluders_in(len(silos)))
    if len(silos) < need:
        raise ConfigError(
            f"a job of {len(silos)} silo(s) can never decrypt a sum: each needs {need} contributions "
            f"(federation.min_silos = {spec.min_silos}, privacy.colluders = {spec.colluders}); add silos or lower them"
        )
    return spec


def parties_for(
    plan: HorizontalPlan, sources: Mapping[str, Any], *, ledger_dir: Path | None,
    budgets: Mapping[str, tuple[float, float]], noise_seed: int | None,
) -> list[Party]:
    """The aggregator and one party per silo, each with its own data, ledger and noise seed."""
    names = list(plan.silos)
    job = plan.job
    ledgers = (
        ledger_specs(ledger_dir, names, budgets=budgets, accountant=job.privacy.accountant,
                     reproducible_noise=noise_seed is not None)
        if job.privacy is not None else {}
    )
    seeds = party_noise_seeds(names, noise_seed)
    silos = [Party(n, "silo", sources[n], ledgers.get(n), seeds[n]) for n in names]
    return [Party(AGGREGATOR, "aggregator"), *silos]


def evaluate(model_spec: ModelSection, params: np.ndarray, x: np.ndarray, y: np.ndarray, *, n_features: int,
             n_classes: int) -> dict[str, float]:
    """Accuracy, AUC and mean loss of the global model ``params`` on ``(x, y)``.

    A simulation and benchmark helper (rows pooled from several silos): no party calls it."""
    import torch
    from sklearn.metrics import roc_auc_score

    from fedsilo.protocols.horizontal.models import build_model, loss_fn, predict_scores, set_flat_params

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


def check_same_final_model(reports: Mapping[str, hz.SiloReport], *, job: str) -> None:
    """Refuse a job whose completed silos hold different final models.

    Every silo starts from ``build_model(seed=job.seed)`` and applies the same released sums
    with the same strategy code, so the silos that completed hold one model, bit for bit (every
    backend, silo- and record-level DP, distributed DP-SGD, FedAdam, a dropped round, the threads
    and processes engines: measured; test_dropout_after_announcing_gets_topup_noise pins one).
    The comparison is exact on purpose: no tolerance to hide a drift. Anything else means a
    silo trained a different model all job long and its updates pulled the aggregate off
    unseen. Reports that carry no model (a silo run by another agent reports no parameters)
    are not compared.

    Raises:
        ProtocolError: two completed silos' parameters differ; names the silos of each model
            and the largest absolute difference.
    """
    held = [(n, np.asarray(r.params)) for n, r in reports.items() if r.status == "completed" and np.size(r.params)]
    groups: list[tuple[np.ndarray, list[str]]] = []  # distinct final models, first holder's order
    for name, params in held:
        for ref, names in groups:
            if params.shape == ref.shape and np.array_equal(params, ref, equal_nan=True):
                names.append(name)
                break
        else:
            groups.append((params, [name]))
    if len(groups) < 2:
        return
    ref = groups[0][0]
    gaps = [float(np.max(np.abs(p - ref))) if p.shape == ref.shape else float("inf") for p, _ in groups[1:]]
    models = "; ".join(f"{', '.join(names)} hold{'s' if len(names) == 1 else ''} {'one' if i == 0 else 'another'}"
                       for i, (_, names) in enumerate(groups))
    raise ProtocolError(
        f"job {job!r}: the silos that completed hold different final models ({models}; largest parameter "
        f"difference {max(gaps):.3g}), although all applied the same released sums: they most likely started "
        "from different initial models (different torch builds or versions at the silos, or a draw from "
        "torch's global RNG racing a silo's model build on the threads engine); the results are not reported"
    )


def _simulation_metrics(plan: HorizontalPlan, parties: Sequence[Party], reports: Mapping[str, hz.SiloReport]) -> dict[str, float]:
    """The final model on every silo's held-out rows pooled: computed by the *simulation*, which
    can read every silo's data; not private, seen by no party."""
    held: list[tuple[np.ndarray, np.ndarray]] = []
    for p in parties:
        if p.role != "silo":
            continue
        if isinstance(p.source, SiloRows):
            test = p.source.test
        else:
            assert plan.schema is not None and isinstance(p.source, DataSource)
            test = silo_rows(plan.schema, p.source.load()).test
        if test is not None and len(test[1]):
            held.append(test)
    if not held:
        return {}
    done = [r for r in reports.values() if r.status == "completed"]
    params = (done[0] if done else reports[plan.silos[0]]).params
    job = plan.job
    return evaluate(job.model, params, np.vstack([t[0] for t in held]), np.concatenate([t[1] for t in held]),
                    n_features=job.n_features, n_classes=job.n_classes)


def _results(plan: HorizontalPlan, parties: Sequence[Party], run: JobRun) -> dict[str, Any]:
    job = plan.job
    names = list(plan.silos)
    agg: hz.AggregatorReport = run.reports[AGGREGATOR]
    reports: dict[str, hz.SiloReport] = {n: run.reports[n] for n in names}
    if agg.status == "stopped":
        raise NotEnoughSilosError(agg.reason)
    check_same_final_model(reports, job=job.job)
    if agg.rounds and all(r["status"] != "ok" for r in agg.rounds):
        # nothing was ever decrypted: reporting a trained model (and epsilon 0) would mislead
        reasons = "; ".join(dict.fromkeys(r["reason"] for r in agg.rounds if r["reason"]))
        raise NotEnoughSilosError(f"job {job.job!r}: no round completed, nothing was decrypted: {reasons}")
    released = next((r.evaluation for r in reports.values() if r.evaluation), ())
    by_round = {e["round"]: e for e in released}
    summed = {r["round"]: r for r in agg.rounds}
    charges = {n: silo_charges(job, reports[n]) for n in names} if job.privacy is not None else {}
    per_round = epsilon_per_round(job, charges) if job.privacy is not None else {}
    rows: list[dict[str, Any]] = []
    for rnd in range(1, job.rounds + 1):
        done = summed.get(rnd)
        row: dict[str, Any] = {"round": rnd, "silos": list(done["contributors"]) if done and done["status"] == "ok" else []}
        if rnd in by_round and (job.evaluation == "every_round" or rnd == job.rounds):
            row.update({k: by_round[rnd][k] for k in ("accuracy", "auc", "loss")})
        if job.privacy is not None:
            row["epsilon"] = {n: per_round[n][rnd - 1] for n in names}
        rows.append(row)
    last = released[-1] if released else None
    final = (
        {k: last[k] for k in ("accuracy", "auc", "loss", "rows")}
        if last is not None
        else {"accuracy": None, "auc": None, "loss": None, "rows": None}
    )
    notes = list(plan.notes)
    notes += [r.reason for r in reports.values() if r.status == "withdrawn"]
    notes += [f"round {r['round']} skipped: {r['reason']}" for r in agg.rounds if r["status"] == "aborted"]
    notes += [
        f"round {r['round']}: {', '.join(r['failures'])} missing; completed with "
        f"{', '.join(r['contributors'])}" + (" and top-up noise" if r["topup"] else "")
        for r in agg.rounds
        if r["status"] == "ok" and r["failures"]
    ]
    if last is not None and not np.isfinite(last.get("auc", np.nan)):
        notes.append("the federated held-out rows hold one class only: AUC is undefined; raise [data] test_fraction")
    if job.evaluation == "none":
        notes.append(
            "silo-level DP: federated metrics are not released (a whole silo's held-out rows would move every "
            "count); each silo knows only its own held-out metrics (silo_metrics)"
        )
    elif job.evaluation == "final":
        notes.append(
            "record-level DP: federated metrics are released once, after training, with Gaussian noise "
            f"(z = {job.evaluation_noise_multiplier:.3g}) charged to every silo's ledger"
        )
    dist = next((r.dp for r in reports.values() if r.dp is not None and r.dp.get("mode") == "distributed"), None)
    if dist is not None:
        notes.append(
            f"distributed DP-SGD: the federation's row count was released once before round 1 (N = {dist['rows']}, "
            f"Gaussian noise z = {dist['count_noise_multiplier']:.3g}); every round is one DP-SGD step at sample rate "
            f"q = {dist['sample_rate']:.4g}, z = {dist['noise_multiplier']:.3g}; each ledger was charged the whole job "
            "with the row count (basic composition of the count and the training's (epsilon, delta), before round 1)"
            + ("; training.batch_size >= N capped q at 1: every step uses every row (no amplification by sampling)"
               if dist["sample_rate_capped"] else "")
        )
    eps: dict[str, dict[str, float | None]] = {}
    for n in names:
        if job.privacy is None:
            eps[n] = {"epsilon": None, "delta": None}
            continue
        ev = charges[n].events  # the report's events, in the order charged
        e = _epsilon(ComposedEvent(ev), delta=job.privacy.delta, accountant=job.privacy.accountant) if ev else 0.0
        eps[n] = {"epsilon": e, "delta": job.privacy.delta}
    dp = _summarize_dp(reports)
    if dp is not None and job.evaluation == "final":
        dp["evaluation_noise_multiplier"] = job.evaluation_noise_multiplier
    return {
        "task": "horizontal",
        "backend": job.backend,
        "private": not job.insecure,
        "rounds": rows,
        "final": final,
        "evaluation": job.evaluation,
        "silo_metrics": {n: dict(r.local_evaluation) if r.local_evaluation else None for n, r in reports.items()},
        "simulation_metrics": _simulation_metrics(plan, parties, reports),
        "epsilon": eps,
        "dp": dp,
        "bytes_sent": dict(run.bytes_sent),
        "seconds": run.seconds,
        "notes": notes,
    }


@dataclass(frozen=True)
class SiloCharges:
    """One silo's DP events by when they were charged: ``rounds[i]`` is the training round of
    ``events[i]`` (round 0: the row-count release of a distributed DP-SGD job, before round 1);
    the events after ``len(rounds)`` were charged after training (the final metrics release of a
    record-level job)."""

    silo: str
    rounds: tuple[int, ...]
    events: tuple[DpEvent, ...]

    @property
    def after_training(self) -> tuple[DpEvent, ...]:
        return self.events[len(self.rounds):]


def silo_charges(job: hz.HorizontalJob, report: hz.SiloReport) -> SiloCharges:
    """The round of each DP event in a silo's report (local or from another agent), under DP.

    A silo is charged for a training round exactly when it sends that round's update: the
    ledger charge is taken as the update leaves it (:func:`~fedsilo.protocols.horizontal.
    secure_aggregation.silo_secure_sum`: charged ⇔ contributed under DP), and events are kept
    in the order charged. So the report's ``events`` are its ``rounds_contributed`` one for one,
    in order, followed by at most one event charged after training (the final metrics release,
    record-level DP only). Distributed DP-SGD charges its row-count release as round 0. A report
    that does not fit that shape is refused, not guessed.

    Raises:
        ProtocolError: the events do not match the rounds the silo contributed to.
    """
    rounds, events = tuple(report.rounds_contributed), tuple(report.events)
    after = len(events) - len(rounds)
    first = hz.COUNT_ROUND if job.distributed else 1
    if (
        after < 0
        or after > (1 if job.evaluation == "final" else 0)
        or any(not first <= r <= job.rounds for r in rounds)
        or any(a >= b for a, b in zip(rounds, rounds[1:]))
    ):
        raise ProtocolError(
            f"malformed report from silo {report.silo!r}: {len(events)} DP event(s) for the rounds it contributed to "
            f"{list(rounds)[:20]} (expected one per round, in order, of rounds {first}..{job.rounds}"
            + (", plus the final metrics release)" if job.evaluation == "final" else ")")
        )
    return SiloCharges(report.silo, rounds, events)


def epsilon_per_round(job: hz.HorizontalJob, charges: Mapping[str, SiloCharges]) -> dict[str, list[float]]:
    """Each silo's cumulative ε after every round ``1..job.rounds``: the job's accountant on the
    events the silo was charged in that round and before (0 before its first charge; a round it
    sat out or came after its withdrawal repeats the previous value).

    Charges after training are not in any round: after the last round the value is the ε of
    every training charge, and the job's ``epsilon`` adds the final metrics release
    (record-level DP) to exactly that composition; without such a release the two are equal.

    Cost: one accountant call per silo per round a silo contributed to (a composition of the
    prefix; dp-accounting's RDP is cheap, PLD is not); silos with the same charges share one
    curve, and equal prefixes hit the accountant's memo.
    """
    assert job.privacy is not None
    delta, accountant = job.privacy.delta, job.privacy.accountant
    curves: dict[tuple[tuple[int, ...], tuple[DpEvent, ...]], list[float]] = {}
    out: dict[str, list[float]] = {}
    for name, c in charges.items():
        key = (c.rounds, c.events[:len(c.rounds)])
        if key not in curves:
            curve: list[float] = []
            k, eps = 0, 0.0
            with warnings.catch_warnings():
                # the job's own epsilon (the whole composition) warns if the RDP optimum sits at
                # the grid's edge; its prefixes would repeat that warning once per round
                warnings.simplefilter("ignore", RuntimeWarning)
                for rnd in range(1, job.rounds + 1):
                    n = k
                    while n < len(c.rounds) and c.rounds[n] <= rnd:
                        n += 1
                    if n != k:
                        k = n
                        eps = _epsilon(ComposedEvent(c.events[:k]), delta=delta, accountant=accountant)
                    curve.append(eps)
            curves[key] = curve
        out[name] = list(curves[key])
    return out


def planned_releases(job: hz.HorizontalJob, silos: Sequence[str], *, n_examples: int | None) -> list[Release]:
    """Every ``(event, relation)`` one silo of ``job`` charges to its ledger if it contributes to
    every round, in the order charged: what :func:`~fedsilo.protocols.horizontal.protocol.silo`
    charges (its ``_round_event`` per round, then the final metrics release of a record-level
    job). ``n_examples``: the silo's training rows (needed under record-level DP, whose DP-SGD
    plan follows them).

    A job that may end early (a dropout, a withdrawal) charges a prefix of these; the pre-check
    asks for all of them. A distributed DP-SGD job charges everything with its row count
    (``count_charge``: the count's Gaussian and the training's (ε, δ)); its later charges are
    covered by it and cost nothing, so that one release is its plan (no ``n_examples`` needed).

    Raises:
        ConfigError: record-level DP (local DP-SGD) without ``n_examples``.
    """
    if job.privacy is None:
        return []
    if getattr(job, "distributed", False):
        return [(job.count_charge("planned"), ADD_REMOVE_RECORD)]
    strategy = job.strategy(list(silos))
    if isinstance(strategy, DPFedAvg):  # silo level: one noised sum per round
        relation = getattr(strategy, "relation", ZERO_OUT_SILO)
        return [(strategy.event(round=r), relation) for r in range(1, job.rounds + 1)]
    if n_examples is None:
        raise ConfigError("record-level DP plans each silo's releases from its training rows: n_examples is needed")
    plan = job.record_plan(int(n_examples))
    assert plan is not None
    step = plan.event(epochs=job.local_config(proximal_mu=0.0).epochs)
    releases: list[Release] = [(step, ADD_REMOVE_RECORD)] * job.rounds
    if job.evaluation == "final":
        releases.append((job.evaluation_event(), ADD_REMOVE_RECORD))
    return releases


def _summarize_dp(reports: Mapping[str, hz.SiloReport]) -> dict[str, Any] | None:
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


HORIZONTAL = register_task(HorizontalTask())


@dataclass(frozen=True)
class HorizontalData:
    """Every silo's prepared rows, read in one place: **baselines and tests only** (a party
    prepares only its own rows, :func:`silo_rows`)."""

    silos: dict[str, tuple[np.ndarray, np.ndarray]]
    tests: dict[str, tuple[np.ndarray, np.ndarray]]
    features: list[str]
    notes: list[str]


def prepare_horizontal(cfg: JobConfig) -> HorizontalData:
    """Each silo's rows exactly as its party prepares them (:func:`silo_rows` on the job's
    plan), gathered for centralized baselines and tests."""
    plan, parties = HORIZONTAL.plan(cfg, JobContext(job_id(cfg), sources_for(cfg), Path(".")))
    assert plan.schema is not None
    silos: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    tests: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for p in parties:
        if isinstance(p.source, DataSource):
            rows = silo_rows(plan.schema, p.source.load())
            silos[p.name] = (rows.x, rows.y)
            assert rows.test is not None
            tests[p.name] = rows.test
    return HorizontalData(silos, tests, list(plan.schema.features), list(plan.notes))


#: How a ``baselines`` block is labelled in the results (docs/results.md).
BASELINES_LABEL = ("simulation only, not private: every silo's rows read in one process, no DP; "
                   "no party computes or sees these")


def baselines(
    model: ModelSection, training: TrainingSection, silos: Mapping[str, tuple[np.ndarray, np.ndarray]],
    tests: Mapping[str, tuple[np.ndarray, np.ndarray]], *, n_classes: int, seed: int,
) -> dict[str, Any]:
    """What federating is measured against (issue 17 item 3), on the same pooled held-out rows
    as the results' ``simulation_metrics``: ``central``, the same model and local trainer
    (``[model] trainer`` if set) on every silo's training rows pooled, and ``alone``, each silo
    trained on its own training rows only; both for ``rounds × local_epochs`` epochs, from the
    job's initial model, without DP. A simulation helper (it reads every silo's rows): agents and
    parties never call it.

    Returns ``{"label", "epochs", "central": {accuracy, auc, loss}, "alone": {silo: {accuracy, auc,
    loss}}}``.
    """
    from fedsilo.protocols.horizontal.models import build_model, get_flat_params
    from fedsilo.protocols.horizontal.training import train_local

    names = list(silos)
    held = [tests[n] for n in names if n in tests and len(tests[n][1])]
    if not names or not held:
        raise DataError("baselines need every silo's training rows and some held-out rows")
    tx = np.vstack([np.asarray(t[0]) for t in held])
    ty = np.concatenate([np.asarray(t[1]) for t in held])
    n_features = int(tx.shape[1])
    epochs = training.rounds * training.local_epochs
    local = LocalConfig.from_sections(training, epochs=epochs, trainer=model.trainer)

    def fit(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        net = build_model(model, n_features=n_features, n_classes=n_classes, seed=seed)
        p0 = get_flat_params(net)
        out = train_local(net, np.asarray(x), np.asarray(y), global_params=p0, config=local, n_classes=n_classes,
                          seed=seed)
        m = evaluate(model, p0 + out.update, tx, ty, n_features=n_features, n_classes=n_classes)
        return {k: m[k] for k in ("accuracy", "auc", "loss")}

    pooled_x = np.vstack([np.asarray(silos[n][0]) for n in names])
    pooled_y = np.concatenate([np.asarray(silos[n][1]) for n in names])
    return {
        "label": BASELINES_LABEL,
        "epochs": epochs,
        "central": fit(pooled_x, pooled_y),
        "alone": {n: fit(*silos[n]) for n in names},
    }


def horizontal_baselines(cfg: JobConfig) -> dict[str, Any]:
    """:func:`baselines` of a horizontal config: each silo's rows exactly as its party prepares
    them (:func:`prepare_horizontal`). For ``fedsilo simulate`` only."""
    data = prepare_horizontal(cfg)
    return baselines(cfg.model, cfg.training, data.silos, data.tests, n_classes=2, seed=cfg.federation.seed)


def simulate_horizontal(
    *,
    silos: Mapping[str, tuple[np.ndarray, np.ndarray]],
    tests: Mapping[str, tuple[np.ndarray, np.ndarray]],
    backend: str,
    backend_params: Mapping[str, Any],
    model: ModelSection | Mapping[str, Any],
    training: TrainingSection | Mapping[str, Any],
    privacy: PrivacySection | Mapping[str, Any] | None,
    ledger_dir: Path | None,
    budgets: Mapping[str, tuple[float, float]],
    job: str,
    seed: int,
    min_silos: int,
    round_timeout: float,
    insecure: bool = False,
    noise_seed: int | None = None,
    progress: Progress | None = None,
    faults: Mapping[str, Mapping[int, str]] | None = None,
    engine: str = "threads",
    with_baselines: bool = False,
) -> dict[str, Any]:
    """Run a horizontal job on silos whose rows are already in memory (tests, benchmarks),
    through the same runner, parties and results as :func:`~fedsilo.silos.runner.run_job`.

    ``silos``: ``{name: (X_train, y_train)}`` (scaled); ``tests``: each silo's own held-out rows;
    ``model``, ``training``, ``privacy``: the sections (or mappings validated as them);
    ``budgets``: ``{silo: (epsilon, delta)}``; ``noise_seed``: **tests only** (not private);
    ``faults``: test hook ``{silo: {round: "hello" | "update" | "topup"}}``; ``with_baselines``:
    add the ``baselines`` block (:func:`baselines`). Returns the results contract of
    docs/results.md ("simulation_metrics" pools every silo's held-out rows).

    Unlike :func:`~fedsilo.silos.runner.run_job`, budgets are not checked before round 1 here
    (check them with :func:`planned_releases` and :func:`fedsilo.silos.ledgers.check_budgets`):
    tests run a silo out of budget mid-job, the withdrawal that protects a job whose budget a
    concurrent job spent.
    """
    names = list(silos)
    if len(names) < 1:
        raise ConfigError("a horizontal job needs at least one silo")
    n_features = int(np.asarray(silos[names[0]][0]).shape[1])
    for name, (x, y) in silos.items():
        if np.asarray(x).ndim != 2 or np.asarray(x).shape[1] != n_features:
            raise DataError(f"silo {name!r}: features have shape {np.shape(x)}, expected (n, {n_features})")
        if len(x) != len(y) or len(x) == 0:
            raise DataError(f"silo {name!r}: {len(x)} rows but {len(y)} labels")
    for name, (x, y) in tests.items():
        if name not in silos:
            raise ConfigError(f"held-out rows for {name!r}, which is not a silo of the job")
        if len(y) and (np.asarray(x).ndim != 2 or np.asarray(x).shape[1] != n_features or len(x) != len(y)):
            raise DataError(f"silo {name!r}: held-out rows have shape {np.shape(x)} for {len(y)} labels")
    labels = np.unique(np.concatenate([np.asarray(y) for _, y in silos.values()] + [np.asarray(t[1]) for t in tests.values()]))
    n_classes = max(2, int(labels.max()) + 1) if labels.size else 2
    spec = make_job(
        job=job, silos=names, backend=backend, backend_params=backend_params,
        model=section(ModelSection, model, key="model"), training=section(TrainingSection, training, key="training"),
        privacy=None if privacy is None else section(PrivacySection, privacy, key="privacy"),
        n_features=n_features, n_classes=n_classes, seed=int(seed), min_silos=int(min_silos),
        round_timeout=float(round_timeout), insecure=bool(insecure),
    )
    plan = HorizontalPlan(spec, tuple(names), None, faults=dict(faults or {}))
    rows = {n: SiloRows(np.asarray(x), np.asarray(y), tests.get(n)) for n, (x, y) in silos.items()}
    with ledger_directory(ledger_dir) as directory:
        parties = parties_for(plan, rows, ledger_dir=directory, budgets=budgets, noise_seed=noise_seed)
        results = run_horizontal(plan, parties, engine=engine, progress=progress)
    if with_baselines:
        results["baselines"] = baselines(spec.model, spec.training, silos, tests, n_classes=n_classes, seed=int(seed))
    return results


def run_horizontal(plan: HorizontalPlan, parties: Sequence[Party], *, engine: str = "threads",
                   progress: Progress | None = None) -> dict[str, Any]:
    """Run planned horizontal parties on an engine (the runner's :func:`run_plan`)."""
    return run_plan(HORIZONTAL, plan, parties, job=plan.job.job, engine=get_engine(engine), progress=progress)
