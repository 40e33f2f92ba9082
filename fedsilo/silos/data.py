"""Loading and checking each silo's local data.

A silo's table comes from a CSV/Parquet file or, for simulations, from a scikit-learn data set
split into silos. Every check names the file and the column; nothing is silently dropped.

Feature scaling uses *public* bounds (a data dictionary the federation agrees on): each value is
clipped to [lo, hi] and mapped to [-1, 1]. Scaling with each silo's own mean and standard
deviation would make the same feature mean different things in different silos when their
populations differ (label skew costs ~10 accuracy points on breast_cancer), while pooled
statistics would be a release that needs its own privacy budget. For scikit-learn's
breast_cancer the bounds are the minimum and maximum published in the data set's description.
"""
from __future__ import annotations

import abc
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fedsilo.errors import ConfigError, DataError
from fedsilo.protocols.psi_ids import CSV_FIRST_LINE
from fedsilo.protocols.scaling import scale_with_bounds

__all__ = [
    "BUILTIN_SOURCES",
    "DATASET_SUFFIXES",
    "PARQUET_SUFFIXES",
    "file_first_line",
    "BuiltinShare",
    "DataSource",
    "FileSource",
    "FrameSource",
    "LocalTable",
    "check_creatable",
    "check_input_file",
    "csv_header",
    "read_csv_checked",
    "binary_labels",
    "load_builtin",
    "load_table",
    "partition_frame",
    "require_columns",
    "require_numeric",
    "scale_with_bounds",
]

BUILTIN_SOURCES = ("sklearn:breast_cancer", "sklearn:wine", "sklearn:diabetes")


@dataclass(frozen=True)
class LocalTable:
    """One silo's table with where it came from (for error messages) and its public bounds."""

    name: str
    frame: pd.DataFrame
    where: str
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)


def _descr_bounds(descr: str, columns: list[str]) -> dict[str, tuple[float, float]]:
    """Min/max per feature from a scikit-learn DESCR summary table (public metadata)."""
    def norm(name: str) -> str:
        # wine's description writes "Malic Acid" / "Colour Intensity" for malic_acid / color_intensity
        return re.sub(r"[\s_]+", " ", name.strip().lower()).replace("colour", "color")

    rows = {}
    for m in re.finditer(r"^\s*([A-Za-z][A-Za-z0-9 ()/_-]*?):\s+(-?[\d.]+)\s+(-?[\d.]+)", descr, re.M):
        rows[norm(m.group(1))] = (float(m.group(2)), float(m.group(3)))
    out = {}
    for col in columns:
        key = norm(col)
        # breast_cancer names columns "mean radius" / "radius error" / "worst radius" while its
        # description says "radius (mean)" / "radius (standard error)" / "radius (worst)".
        cands = [key]
        if key.startswith("mean "):
            cands.append(f"{key[5:]} (mean)")
        if key.endswith(" error"):
            cands.append(f"{key[:-6]} (standard error)")
        if key.startswith("worst "):
            cands.append(f"{key[6:]} (worst)")
        for c in cands:
            if c in rows:
                out[str(col)] = rows[c]
                break
    return out


def load_builtin(source: str, *, label: str = "target") -> LocalTable:
    """A scikit-learn data set as a table with a ``label`` column and its published bounds."""
    from sklearn import datasets

    loaders = {
        "sklearn:breast_cancer": datasets.load_breast_cancer,
        "sklearn:wine": datasets.load_wine,
        "sklearn:diabetes": datasets.load_diabetes,
    }
    if source not in loaders:
        raise ConfigError(f"unknown built-in data source {source!r} (available: {', '.join(BUILTIN_SOURCES)})")
    bunch = loaders[source]()
    if label in bunch.feature_names:
        raise ConfigError(
            f"[data] label = {label!r} is a feature of {source}; the built-in data's target is added "
            "as the label column, so choose a name that is not a feature (e.g. 'target')"
        )
    frame = pd.DataFrame(bunch.data, columns=list(bunch.feature_names))
    frame[label] = bunch.target
    bounds = _descr_bounds(bunch.DESCR, list(bunch.feature_names))
    return LocalTable(source.split(":", 1)[1], frame, where=source, bounds=bounds)


def _one_line(exc: BaseException) -> str:
    """A library exception as one short line (pyarrow/pandas messages can span many)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def check_input_file(path: Path, *, who: str) -> None:
    """DataError unless ``path`` is an existing regular file (``who`` prefixes the message)."""
    if path.is_dir():
        raise DataError(f"{who}{path} is a directory, not a data file")
    if not path.is_file():
        raise DataError(f"{who}data file not found: {path}")


def check_creatable(path: Path, option: str) -> None:
    """ConfigError (naming ``option``) unless ``path`` can be created: its nearest existing
    ancestor is a writable directory (missing directories are created later). Nothing is
    created here."""
    import os

    ancestor = path.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{option} {path}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: directory {ancestor} is not writable")


def csv_header(path: Path, *, who: str = "") -> list[str]:
    """The header row of a CSV file, checked: readable, not empty, no repeated column names.

    pandas would silently rename a repeated ``x`` to ``x.1`` and pick one of them.
    """
    import csv

    check_input_file(path, who=who)
    try:
        # utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark, which pandas strips too
        with path.open(newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh), None)
    except UnicodeDecodeError:
        raise DataError(f"{who}{path} is not a UTF-8 text CSV file") from None
    except (OSError, csv.Error) as exc:
        raise DataError(f"{who}cannot read {path}: {_one_line(exc)}") from None
    if not header or not any(h.strip() for h in header):
        raise DataError(f"{who}{path} is empty (no header row)")
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise DataError(f"{who}{path}: column(s) {dup} appear more than once in the header")
    return header


def read_csv_checked(path: Path, *, who: str = "", **kwargs) -> pd.DataFrame:
    """``pd.read_csv`` with fedsilo's checks: header (see :func:`csv_header`), rows with more
    fields than the header (pandas would shift every column by one), unreadable files."""
    import warnings

    header = csv_header(path, who=who)
    try:
        with warnings.catch_warnings():
            # index_col=False: never turn a first column into the index; pandas then warns (here:
            # raises) instead of silently shifting every column when rows are longer than the header
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(path, index_col=False, **kwargs)
    except pd.errors.ParserWarning:
        raise DataError(
            f"{who}{path}: rows have more fields than the header's {len(header)} columns "
            "(a missing header name or a stray delimiter)"
        ) from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{who}{path} is empty (no header row)") from None
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"{who}cannot read {path}: {_one_line(exc)}") from None
    return frame


#: the file kinds a silo's table may be (anything else is read as CSV by :func:`load_table`)
PARQUET_SUFFIXES = (".parquet", ".pq")
DATASET_SUFFIXES = (".csv", *PARQUET_SUFFIXES)


def file_first_line(table: LocalTable) -> int | None:
    """The file line of ``table``'s first row, for ID errors: a CSV's (its header is line 1, as
    :func:`~fedsilo.silos.data.require_numeric` counts), else ``None`` (rows of the table: a
    Parquet file, a built-in data set, a frame in memory)."""
    path = Path(table.where)
    return CSV_FIRST_LINE if path.suffix.lower() not in PARQUET_SUFFIXES and path.is_file() else None


def load_table(path: Path, *, name: str) -> LocalTable:
    """Read a silo's CSV or Parquet file with clear errors."""
    who = f"silo {name!r}: "
    check_input_file(path, who=who)
    if path.suffix.lower() in PARQUET_SUFFIXES:
        try:
            frame = pd.read_parquet(path)
        except ImportError:
            raise DataError(
                f"{who}cannot read Parquet file {path}: no Parquet engine is installed "
                "(pip install pyarrow), or save the table as CSV"
            ) from None
        except Exception as exc:  # pyarrow raises its own exception types for corrupt files
            raise DataError(f"{who}cannot read Parquet file {path}: {_one_line(exc)}") from None
        dup = sorted({str(c) for c in frame.columns if list(frame.columns).count(c) > 1})
        if dup:
            raise DataError(f"{who}{path}: column(s) {dup} appear more than once")
    else:
        frame = read_csv_checked(path, who=who)
    if frame.empty:
        raise DataError(f"{who}{path} has no rows")
    return LocalTable(name, frame, where=str(path))


def require_columns(table: LocalTable, columns: list[str]) -> None:
    missing = [c for c in columns if c not in table.frame.columns]
    if missing:
        raise DataError(
            f"{table.where}: missing column(s) {missing}; the file has {list(table.frame.columns)[:20]}"
        )


def require_numeric(table: LocalTable, columns: list[str]) -> np.ndarray:
    """The columns as a float matrix; DataError naming file, column and first bad row."""
    require_columns(table, columns)
    out = np.empty((len(table.frame), len(columns)))
    for j, col in enumerate(columns):
        series = table.frame[col]
        values = pd.to_numeric(series, errors="coerce")
        bad = values.isna() & series.notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"{table.where}: column {col!r} is not numeric (row {row + 2} of the file has {series.iloc[row]!r})"
            )
        arr = values.to_numpy(dtype=np.float64)
        nan = ~np.isfinite(arr)
        if nan.any():
            rows = np.flatnonzero(nan)
            raise DataError(
                f"{table.where}: column {col!r} has {len(rows)} missing/NaN/infinite value(s) "
                f"(first at row {int(rows[0]) + 2} of the file); clean or impute them before federating"
            )
        out[:, j] = arr
    return out


def binary_labels(table: LocalTable, label: str) -> np.ndarray:
    y = require_numeric(table, [label])[:, 0]
    values = set(np.unique(y).tolist())
    if not values <= {0.0, 1.0}:
        raise DataError(
            # no values in the message: errors can reach the federation's other parties (as
            # vertical LR's label error)
            f"{table.where}: label column {label!r} must be binary 0/1 for this model, and it holds other values"
        )
    return y


def partition_frame(
    frame: pd.DataFrame, *, label: str, kind: str, silos: int, alpha: float, rng: np.random.Generator
) -> list[pd.DataFrame]:
    """Split a table into ``silos`` parts: IID, or label skew with per-class Dirichlet(alpha)
    proportions (Hsu et al., 2019, arXiv:1909.06335). Every part gets at least 10 rows."""
    n = len(frame)
    if n < 10 * silos:
        raise ConfigError(
            f"{n} rows cannot be split into {silos} silos of at least 10 rows "
            "([data] partition.silos or --silos is too large)"
        )
    for _ in range(100):
        if kind == "iid":
            parts = np.array_split(rng.permutation(n), silos)
        else:
            buckets: list[list[int]] = [[] for _ in range(silos)]
            y = frame[label].to_numpy()
            for c in np.unique(y):
                idx = rng.permutation(np.flatnonzero(y == c))
                cuts = (np.cumsum(rng.dirichlet([alpha] * silos)) * len(idx)).astype(int)[:-1]
                for b, chunk in zip(buckets, np.split(idx, cuts)):
                    b.extend(chunk.tolist())
            parts = [np.array(sorted(b), dtype=int) for b in buckets]
        if min(len(p) for p in parts) >= 10:
            return [frame.iloc[p].reset_index(drop=True) for p in parts]
    raise ConfigError(f"could not draw a label_skew partition with >= 10 rows per silo (alpha={alpha}); raise alpha")


# ------------------------------------------------------------------------------ data sources


class DataSource(abc.ABC):
    """Where one party's table comes from. The party loads it itself (:meth:`load`), on its own
    host: nothing of a table travels. :meth:`columns` and :meth:`public_bounds` are its
    schema, public metadata the federation agrees on before a job (never row values)."""

    #: where the table comes from, for error messages (a file path, or a built-in's share)
    where: str

    @abc.abstractmethod
    def load(self) -> LocalTable:
        """The party's whole table, checked (readable, no repeated columns, not empty)."""

    def columns(self) -> list[str]:
        """The table's column names (its schema)."""
        return [str(c) for c in self.load().frame.columns]

    def public_bounds(self) -> dict[str, tuple[float, float]]:
        """Published feature bounds that come with the data (a built-in data set's
        description); ``{}`` for a silo's own file."""
        return {}


@dataclass(frozen=True)
class FileSource(DataSource):
    """A silo's own CSV or Parquet file."""

    path: Path
    silo: str

    @property
    def where(self) -> str:  # type: ignore[override]
        return str(self.path)

    def load(self) -> LocalTable:
        return load_table(self.path, name=self.silo)

    def columns(self) -> list[str]:
        if self.path.suffix.lower() in PARQUET_SUFFIXES:
            try:
                import pyarrow.parquet as pq
            except ImportError:
                return super().columns()  # load_table names the missing engine
            check_input_file(self.path, who=f"silo {self.silo!r}: ")
            try:
                return [str(n) for n in pq.read_schema(self.path).names]  # the schema, not the rows
            except Exception:  # pyarrow's own exception types for a corrupt file: load_table names them
                return super().columns()
        return csv_header(self.path, who=f"silo {self.silo!r}: ")


@dataclass(frozen=True)
class BuiltinShare(DataSource):
    """Silo ``index``'s share of a built-in data set split into ``silos`` parts (simulation):
    every party draws the same public partition from ``seed`` and keeps only its own part."""

    source: str
    label: str
    kind: str
    silos: int
    alpha: float
    seed: int
    index: int
    silo: str

    @property
    def where(self) -> str:  # type: ignore[override]
        return f"{self.source} (silo {self.silo})"

    def load(self) -> LocalTable:
        full = load_builtin(self.source, label=self.label)
        parts = partition_frame(full.frame, label=self.label, kind=self.kind, silos=self.silos, alpha=self.alpha,
                                rng=np.random.default_rng(self.seed))
        return LocalTable(self.silo, parts[self.index], where=self.where, bounds=full.bounds)

    def columns(self) -> list[str]:
        return list(_builtin_schema(self.source, self.label)[0])

    def public_bounds(self) -> dict[str, tuple[float, float]]:
        return dict(_builtin_schema(self.source, self.label)[1])


@functools.lru_cache(maxsize=16)
def _builtin_schema(source: str, label: str) -> tuple[tuple[str, ...], tuple[tuple[str, tuple[float, float]], ...]]:
    """A built-in data set's columns and published bounds, read once per process.

    Public metadata, the same in every call; a job asks every share for them before any party
    loads its rows (planning the hospitals example asks 6 times, and each :func:`load_builtin`
    parses the data set's CSV again, ~10 ms). Errors (an unknown source, a label that is a
    feature) are raised by every call: ``lru_cache`` keeps only results.
    """
    table = load_builtin(source, label=label)
    return tuple(str(c) for c in table.frame.columns), tuple(table.bounds.items())


@dataclass(frozen=True, eq=False)
class FrameSource(DataSource):
    """A table already in memory (tests, notebooks): the party's own, like a file."""

    frame: pd.DataFrame
    silo: str
    origin: str = ""
    bounds: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def where(self) -> str:  # type: ignore[override]
        return self.origin or f"silo {self.silo!r}'s table"

    def load(self) -> LocalTable:
        if self.frame.empty:
            raise DataError(f"{self.where} has no rows")
        return LocalTable(self.silo, self.frame, where=self.where, bounds=dict(self.bounds))

    def columns(self) -> list[str]:
        return [str(c) for c in self.frame.columns]

    def public_bounds(self) -> dict[str, tuple[float, float]]:
        return dict(self.bounds)
