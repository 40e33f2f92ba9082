"""Checking and preparing one party's table for vertical learning (local, no communication)."""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedsilo.errors import ConfigError, DataError
from fedsilo.protocols.psi import IdTable

__all__ = [
    "PartyTable", "check_bounds", "check_labels", "feature_bounds", "feature_matrix", "holdout_split", "party_ids",
    "prepare_table",
]

def holdout_split(rng: np.random.Generator, n: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` sorted row indices of the aligned rows: ``round(fraction · n)`` held out
    (at least one row each side when ``n >= 2``), drawn from the public ``rng``; the one split of
    every vertical job (logistic regression, SecureBoost, their baselines)."""
    n_test = int(round(fraction * n))
    if fraction > 0 and n >= 2:
        n_test = min(max(n_test, 1), n - 1)
    perm = rng.permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


#: Where a federation config keeps the public feature bounds (named in error messages).
BOUNDS_KEY = "[data] bounds"


@dataclass(frozen=True, slots=True)
class PartyTable:
    """One party's validated data: its IDs, numeric features, labels for the guest.

    ``id_table`` is the one :class:`~fedsilo.protocols.psi_ids.IdTable` of the ID column, built
    (rendered, checked, sorted) once and handed to PSI as it is (``align_guest(ids=data.id_table)``).
    """

    source: str
    id_table: IdTable  #: row ``i``'s ID is ``id_table.values[i]``; named by the real ID column
    columns: tuple[str, ...]
    features: np.ndarray  #: (rows, len(columns)) float64, finite
    labels: np.ndarray | None  #: 0/1 float64 for the guest, None for hosts

    @property
    def ids(self) -> list[str]:
        """The IDs in row order as Python strings: a new list on every call (~65 MB at 10^6
        short IDs), for lookups by ID; PSI takes :attr:`id_table`."""
        return self.id_table.values.tolist()


def party_ids(frame: pd.DataFrame, *, source: str, id_column: str) -> IdTable:
    """The ID column of a party's table as an :class:`IdTable`, by
    :func:`~fedsilo.protocols.psi_ids.ids_from_column`'s rules and errors (rows numbered 1.. of
    the table). One chunk of :meth:`IdTable.from_chunks`: the rendered strings are packed and
    dropped, not kept beside the table."""
    return IdTable.from_chunks([frame[id_column]], source=source, column=id_column, first_line=None)


def feature_matrix(frame: pd.DataFrame, columns: Sequence[str], *, source: str) -> np.ndarray:
    """The ``columns`` of ``frame`` as a finite float64 matrix.

    Raises:
        DataError: a column is missing, holds non-numeric values (the first one is quoted), or
            holds missing/infinite values.
    """
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: missing feature columns {missing} (columns: {list(frame.columns)})")
    out = np.empty((len(frame), len(columns)), dtype=np.float64)
    for j, col in enumerate(columns):
        series = frame[col]
        if pd.api.types.is_bool_dtype(series.dtype):
            out[:, j] = series.to_numpy(dtype=np.float64)
            continue
        numeric = pd.to_numeric(series, errors="coerce")
        bad = numeric.isna() & series.notna()
        if bad.any():
            example = series[bad].iloc[0]
            raise DataError(
                f"{source}: column {col!r} is not numeric (e.g. {example!r} at row {int(np.flatnonzero(bad.to_numpy())[0])}); "
                "encode categories as numbers before vertical training"
            )
        values = numeric.to_numpy(dtype=np.float64)
        if not np.all(np.isfinite(values)):
            n_bad = int((~np.isfinite(values)).sum())
            raise DataError(f"{source}: column {col!r} has {n_bad} missing or infinite values; impute or drop them first")
        out[:, j] = values
    return out


def check_labels(values: np.ndarray | pd.Series, *, source: str, column: str) -> np.ndarray:
    """Binary labels as a 0/1 float vector.

    Accepts 0/1, booleans, or exactly two distinct values (the larger, in sort order, is 1).

    Raises:
        DataError: missing labels, or not exactly two classes (naming the column and what is
            needed: never a label value, nor how many classes there are).
    """
    series = pd.Series(values)
    if series.isna().any():
        raise DataError(f"{source}: label column {column!r} has {int(series.isna().sum())} missing values")
    classes = sorted(series.unique().tolist(), key=lambda v: (str(type(v)), v))
    if len(classes) != 2:
        found = "one class" if len(classes) == 1 else "more than two distinct values"
        raise DataError(
            f"{source}: label column {column!r} holds {found}; logistic regression needs exactly two classes "
            "(0 and 1, booleans, or two distinct values: the larger is class 1)"
        )
    return (series == classes[1]).to_numpy(dtype=np.float64)


def prepare_table(
    frame: pd.DataFrame,
    *,
    source: str,
    id_column: str,
    label: str | None,
    features: Sequence[str] | None = None,
) -> PartyTable:
    """Validate one party's table: ID column, optional label column, numeric features.

    ``features`` defaults to every column except the ID and the label. A guest may hold only
    labels (its model is then just the intercept); a host needs at least one feature.

    Raises:
        DataError: naming ``source`` and the column.
    """
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"{source}: expected a table (pandas DataFrame), got {type(frame).__name__}")
    if id_column not in frame.columns:
        raise DataError(f"{source}: no ID column {id_column!r} (columns: {list(frame.columns)})")
    if label is not None and label not in frame.columns:
        raise DataError(f"{source}: no label column {label!r} (columns: {list(frame.columns)})")
    if len(frame) == 0:
        raise DataError(f"{source}: the table is empty")
    ids = party_ids(frame, source=source, id_column=id_column)
    cols = (
        [c for c in frame.columns if c not in (id_column, label)]
        if features is None
        else list(features)
    )
    if not cols and label is None:
        raise DataError(f"{source}: no feature columns besides the ID column {id_column!r}")
    x = feature_matrix(frame, cols, source=source)
    y = check_labels(frame[label], source=source, column=label) if label is not None else None
    return PartyTable(source=source, id_table=ids, columns=tuple(str(c) for c in cols), features=x, labels=y)


def check_bounds(bounds: Mapping[str, object] | None) -> dict[str, tuple[float, float]]:
    """The public feature bounds as ``column -> (lo, hi)`` floats, checked.

    Raises:
        ConfigError: a bound that is not a pair of finite numbers with ``lo < hi``.
    """
    if bounds is None:
        return {}
    if not isinstance(bounds, Mapping):
        raise ConfigError(f"{BOUNDS_KEY} must map column names to [lo, hi], got {type(bounds).__name__}")
    out: dict[str, tuple[float, float]] = {}
    for col, pair in bounds.items():
        ok = (
            isinstance(pair, Sequence)
            and not isinstance(pair, str)
            and len(pair) == 2
            and all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in pair)
        )
        if not ok or not float(pair[0]) < float(pair[1]):  # type: ignore[index]
            raise ConfigError(f"{BOUNDS_KEY}: {col!r} must be [lo, hi] with finite lo < hi, got {pair!r}")
        out[str(col)] = (float(pair[0]), float(pair[1]))  # type: ignore[index]
    return out


def feature_bounds(
    columns: Sequence[str], bounds: Mapping[str, tuple[float, float]], *, source: str, required: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Per-column public bounds ``(lo, hi)`` of one party's ``columns`` (NaN where none).

    ``required`` (under DP): every column needs bounds, since scaling with the data's own
    statistics would let one record change how every other record is scaled.

    Raises:
        ConfigError: ``required`` and some columns have no bounds (all of them are named).
    """
    missing = [c for c in columns if c not in bounds]
    if required and missing:
        raise ConfigError(
            f"{source}: differential privacy needs public bounds for every feature, and "
            f"{len(missing)} have none: {missing}; add them to {BOUNDS_KEY} = {{column = [lo, hi]}} "
            "(a data dictionary's range, not the data's own min/max)"
        )
    lo = np.array([bounds[c][0] if c in bounds else np.nan for c in columns], dtype=np.float64)
    hi = np.array([bounds[c][1] if c in bounds else np.nan for c in columns], dtype=np.float64)
    return lo, hi
