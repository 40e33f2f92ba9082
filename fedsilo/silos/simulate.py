"""Run a federation config as a simulation: every silo's data prepared as its agent would
prepare it, then the task's protocol with one party per silo.

The data preparation here (reading each silo's file, checking columns, scaling with public
bounds, holding out test rows) is the same code an agent runs on its own host.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedsilo.errors import ConfigError, DataError
from fedsilo.silos.config import JobConfig, check_insecure_settings
from fedsilo.silos.data import (
    LocalTable,
    binary_labels,
    load_builtin,
    load_table,
    partition_frame,
    require_columns,
    require_numeric,
    scale_with_bounds,
)

__all__ = ["HorizontalData", "prepare_horizontal", "run_job", "silo_tables", "budgets_for"]

Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class HorizontalData:
    """Each silo's own training and held-out rows (a silo's held-out rows never leave it)."""

    silos: dict[str, tuple[np.ndarray, np.ndarray]]
    tests: dict[str, tuple[np.ndarray, np.ndarray]]
    features: list[str]
    notes: list[str]


def silo_tables(cfg: JobConfig) -> dict[str, LocalTable]:
    """Each silo's raw table: its own file, or its share of a built-in data set."""
    if cfg.silos and any(s.data for s in cfg.silos):
        missing = [s.name for s in cfg.silos if not s.data and s.role != "arbiter"]
        if missing:
            raise ConfigError(f"silos {missing} have no data file (key 'silos[].data')")
        return {s.name: load_table(cfg.resolve(s.data), name=s.name) for s in cfg.silos if s.data}
    assert cfg.data.source is not None and cfg.data.partition is not None
    label = cfg.data.label or "target"
    full = load_builtin(cfg.data.source, label=label)
    spec = cfg.data.partition
    rng = np.random.default_rng(cfg.federation.seed)
    parts = partition_frame(full.frame, label=label, kind=spec.kind, silos=spec.silos, alpha=spec.alpha, rng=rng)
    names = cfg.silo_names()
    return {
        n: LocalTable(n, part, where=f"{cfg.data.source} (silo {n})", bounds=full.bounds)
        for n, part in zip(names, parts)
    }


def prepare_horizontal(cfg: JobConfig) -> HorizontalData:
    label = cfg.data.label
    assert label is not None
    tables = silo_tables(cfg)
    first = next(iter(tables.values()))
    require_columns(first, [label])
    features = [c for c in first.frame.columns if c != label and c != cfg.data.id_column]
    _check_bound_columns(cfg, features)
    bounds = dict(first.bounds)
    bounds.update({k: tuple(v) for k, v in cfg.data.bounds.items()})
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
    silos: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    tests: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, table in tables.items():
        X = require_numeric(table, features)
        y = binary_labels(table, label)
        lo = np.array([bounds.get(f, (np.nan, np.nan))[0] for f in features])
        hi = np.array([bounds.get(f, (np.nan, np.nan))[1] for f in features])
        own_lo, own_hi = X.min(axis=0), X.max(axis=0)
        lo = np.where(np.isnan(lo), own_lo, lo)
        hi = np.where(np.isnan(hi), own_hi, hi)
        Xs = scale_with_bounds(X, lo, hi)
        held = held_out_rows(X, y, seed=cfg.federation.seed, silo=name, fraction=cfg.data.test_fraction)
        silos[name] = (Xs[~held], y[~held])
        tests[name] = (Xs[held], y[held])
    for name, table in tables.items():
        extra = set(table.frame.columns) ^ set(first.frame.columns)
        if extra:
            raise DataError(
                f"{table.where}: columns differ from {first.where}: {sorted(extra)} "
                "(horizontal silos must share one feature space)"
            )
    test_classes = np.unique(np.concatenate([t[1] for t in tests.values()]))
    if test_classes.size < 2:
        n_test = sum(len(t[1]) for t in tests.values())
        which = f"all have {label!r} = {test_classes[0]:g}" if test_classes.size else "are none"
        raise DataError(
            f"the {n_test} held-out test row(s) {which}, so accuracy "
            f"and AUC would be meaningless; raise [data] test_fraction (now {cfg.data.test_fraction:g}) "
            "or give the silos more rows of each class"
        )
    empty = [n for n, (x, _) in silos.items() if len(x) == 0]
    if empty:
        raise DataError(
            f"silo(s) {empty} kept no training rows after holding out [data] test_fraction = "
            f"{cfg.data.test_fraction:g} of their rows; lower test_fraction or give them more rows"
        )
    return HorizontalData(silos, tests, features, notes)


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


def _check_bound_columns(cfg: JobConfig, features: list[str]) -> None:
    """Every key of [data] bounds names a feature: a typo must not leave a feature unbounded."""
    stray = [str(c) for c in cfg.data.bounds if c not in features]
    features = [str(f) for f in features]
    if stray:
        raise ConfigError(
            f"{cfg._source}: key 'data.bounds': {stray} are not feature column(s) of the silos' data "
            f"(features: {features[:12]}{' ...' if len(features) > 12 else ''})"
        )


def _check_min_silos(cfg: JobConfig, silos: int) -> int:
    """``federation.min_silos`` as given; a job with fewer silos could never complete a round."""
    if cfg.federation.min_silos > silos:
        raise ConfigError(
            f"{cfg._source}: key 'federation.min_silos': {cfg.federation.min_silos} but the job has only {silos} silo(s) "
            "with data: no round could ever complete (add silos or lower min_silos)"
        )
    return cfg.federation.min_silos


def budgets_for(cfg: JobConfig) -> dict[str, tuple[float, float]]:
    """Each silo's ledger budget: its own ``budget`` or, by default, the job's target epsilon."""
    default = (cfg.privacy.epsilon, cfg.privacy.delta) if cfg.privacy else (float("inf"), 1e-5)
    out = {}
    for name in cfg.silo_names():
        silo = next((s for s in cfg.silos if s.name == name), None)
        out[name] = (silo.budget.epsilon, silo.budget.delta) if silo and silo.budget else default
    return out


def run_job(
    cfg: JobConfig,
    *,
    ledger_dir: Path | None = None,
    progress: Progress | None = None,
    noise_seed: int | None = None,
) -> dict[str, Any]:
    """Run the job the config describes and return the results contract (see docs/results.md).

    ``noise_seed`` is a **test-only** switch (not in the TOML, not on the command line): it
    makes the secret randomness (DP noise, masks, DP-SGD sampling) reproducible, so the run is
    not private; its results say ``"private": false`` and its ledger entries
    ``"reproducible_noise": true``. Without it every secret stream comes from the OS CSPRNG and
    ``federation.seed`` decides only public choices (splits, initial weights, batch order).
    """
    check_insecure_settings(cfg)  # a config built or changed without validation is checked too
    if noise_seed is not None and (isinstance(noise_seed, bool) or not isinstance(noise_seed, int) or noise_seed < 0):
        raise ConfigError(f"noise_seed (test-only) must be an integer >= 0 or None, got {noise_seed!r}")
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
    runner = {"horizontal": _run_horizontal, "statistics": _run_statistics, "vertical": _run_vertical}
    results = runner[cfg.federation.task](cfg, ledger_dir, progress, noise_seed)
    results["notes"] = list(results.get("notes") or []) + notes
    results["private"] = bool(results.get("private", True)) and not cfg.crypto.insecure
    results["ledger_dir"] = str(ledger_dir)
    return results


def _job_id(cfg: JobConfig) -> str:
    return f"{cfg.federation.name}-{int(time.time())}"


def _privacy_dict(cfg: JobConfig) -> dict[str, Any] | None:
    return cfg.privacy.model_dump() if cfg.privacy else None


def _run_horizontal(cfg: JobConfig, ledger_dir: Path, progress: Progress | None, noise_seed: int | None) -> dict[str, Any]:
    from fedsilo.protocols.horizontal import simulate_horizontal

    data = prepare_horizontal(cfg)
    results = simulate_horizontal(
        silos=data.silos,
        tests=data.tests,
        backend=cfg.crypto.backend,
        backend_params=dict(cfg.crypto.params),
        model=cfg.model.model_dump(),
        training=cfg.training.model_dump(),
        privacy=_privacy_dict(cfg),
        ledger_dir=ledger_dir,
        budgets=budgets_for(cfg),
        job=_job_id(cfg),
        seed=cfg.federation.seed,
        min_silos=_check_min_silos(cfg, len(data.silos)),
        round_timeout=cfg.federation.round_timeout,
        insecure=cfg.crypto.insecure,
        noise_seed=noise_seed,
        progress=progress,
    )
    results.setdefault("notes", []).extend(data.notes)
    return results


def _run_statistics(cfg: JobConfig, ledger_dir: Path, progress: Progress | None, noise_seed: int | None) -> dict[str, Any]:
    from fedsilo.protocols.horizontal import simulate_statistics

    assert cfg.statistics is not None
    tables = silo_tables(cfg)
    for table in tables.values():
        require_numeric(table, cfg.statistics.columns)
    results = simulate_statistics(
        silos={n: t.frame for n, t in tables.items()},
        columns=list(cfg.statistics.columns),
        queries=list(cfg.statistics.queries),
        bins=cfg.statistics.bins,
        ranges={k: tuple(v) for k, v in cfg.statistics.range.items()},
        privacy=_privacy_dict(cfg),
        ledger_dir=ledger_dir,
        budgets=budgets_for(cfg),
        job=_job_id(cfg),
        noise_seed=noise_seed,
        insecure=cfg.crypto.insecure,
        backend=cfg.crypto.backend,
        backend_params=dict(cfg.crypto.params),
        min_silos=_check_min_silos(cfg, len(tables)),
        round_timeout=cfg.federation.round_timeout,
    )
    if cfg.privacy is not None and cfg.privacy.level == "silo":
        results["notes"] = list(results.get("notes") or []) + [
            "federated statistics protect records (add/remove one record), not whole silos: "
            "privacy.level = 'silo' is read as record level (the ledger records add-remove-record)"
        ]
    return results


def _run_vertical(cfg: JobConfig, ledger_dir: Path, progress: Progress | None, noise_seed: int | None) -> dict[str, Any]:
    from fedsilo.protocols.vertical import simulate_vertical

    tables = silo_tables(cfg)
    roles = {s.name: s.role for s in cfg.silos}
    assert cfg.data.label is not None and cfg.data.id_column is not None
    from fedsilo.protocols.psi import ids_from_column

    id_col, label = cfg.data.id_column, cfg.data.label
    guest = next(n for n, r in roles.items() if r == "guest")
    features: list[str] = []
    for name, table in tables.items():
        require_columns(table, [id_col])
        if name == guest:
            require_columns(table, [label])
        # checked here, where the file name is known: null/duplicate IDs, non-numeric features
        ids_from_column(table.frame[id_col], source=table.where, column=id_col)
        cols = [c for c in table.frame.columns if c != id_col and not (name == guest and c == label)]
        require_numeric(table, cols)
        features.extend(cols)
    _check_bound_columns(cfg, features)
    t = cfg.training
    return simulate_vertical(
        tables={n: tb.frame for n, tb in tables.items()},
        roles=roles,
        id_column=cfg.data.id_column,
        label=cfg.data.label,
        backend=cfg.crypto.backend,
        backend_params=dict(cfg.crypto.params),
        epochs=t.rounds,
        batch_size=t.batch_size,
        lr=t.lr,
        l2=t.l2,
        tol=t.early_stopping_tol,
        bounds={k: tuple(v) for k, v in cfg.data.bounds.items()},
        dp=_privacy_dict(cfg),
        ledger_dir=ledger_dir,
        budgets=budgets_for(cfg),
        job=_job_id(cfg),
        seed=cfg.federation.seed,
        noise_seed=noise_seed,
        insecure=cfg.crypto.insecure,
        test_fraction=cfg.data.test_fraction,
        progress=progress,
    )
