"""One party's IDs for PSI, held compactly: a numpy ``StringDType`` column and its sort ranks.

A Python list of 10^7 short strings costs ~700 MB; the same IDs as a ``StringDType`` array cost
16 bytes each (IDs of up to 15 UTF-8 bytes are stored inline, longer ones on an arena), so a
party can hold 10^7 IDs read from disk in chunks (:meth:`IdTable.from_chunks`) well inside a
1.5 GB budget. One stable sort of the column (code point order, which is Python's ``str``
order: UTF-8 byte order equals code point order) serves twice: adjacent equal IDs are the
duplicates, refused with an example; and ``rank`` gives the agreed order of an intersection
(sorted by ID) as an integer sort of ranks.

The rules for turning a column into IDs (:func:`ids_from_column`) are the same for a whole
column (a vertical job's table) and for each chunk of a streamed file.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.dtypes import StringDType

from fedsilo.errors import DataError

__all__ = ["CSV_FIRST_LINE", "IdTable", "ids_from_column", "row_label"]

_STR = StringDType()

#: The file line of a CSV's first data row (its header is line 1): how every data error names a
#: CSV row (:func:`fedsilo.silos.data.require_numeric` counts the same way).
CSV_FIRST_LINE = 2


def row_label(index: int, first_line: int | None) -> str:
    """How an error names data row ``index`` (0-based): the file's line number when the IDs were
    read from a text file whose first data row is line ``first_line``, else the row's 1-based
    position in the table (a frame held in memory, a Parquet file)."""
    return f"row {_number(index, first_line)} {_of(first_line)}"


def _number(index: int, first_line: int | None) -> int:
    return first_line + index if first_line is not None else index + 1


def _of(first_line: int | None) -> str:
    return "of the file" if first_line is not None else "of the table"


def _render(series: pd.Series, where: str, offset: int, first_line: int | None) -> list[str]:
    """The IDs of ``series`` as strings (integers without a decimal point), or DataError."""
    null = series.isna()
    if null.any():
        row = row_label(offset + int(np.flatnonzero(null.to_numpy())[0]), first_line)
        raise DataError(f"{where} has {int(null.sum())} missing IDs (first at {row}); IDs must not be null")
    if pd.api.types.is_bool_dtype(series.dtype):
        raise DataError(f"{where} holds booleans, not IDs")
    if pd.api.types.is_integer_dtype(series.dtype):
        return [str(int(v)) for v in series.to_numpy()]
    if pd.api.types.is_float_dtype(series.dtype):
        arr = series.to_numpy(dtype=np.float64)
        frac = arr != np.round(arr)
        if frac.any():
            row = row_label(offset + int(np.flatnonzero(frac)[0]), first_line)
            raise DataError(f"{where} holds non-integral numbers (first at {row}); IDs must be strings or integers")
        return [str(int(v)) for v in arr]
    return [v if isinstance(v, str) else str(v) for v in series.tolist()]


def _check_empty(values: np.ndarray, where: str, offset: int, first_line: int | None) -> None:
    """The one empty-ID check (whole columns, chunks, IDs given as strings): rows, never values."""
    empty = np.flatnonzero(values == "")
    if empty.size:
        raise DataError(
            f"{where} has {empty.size} empty IDs (first at {row_label(offset + int(empty[0]), first_line)}); "
            "IDs must not be empty"
        )


def ids_from_column(
    values: pd.Series | Sequence[Any], *, source: str, column: str, first_line: int | None = None
) -> list[str]:
    """IDs of one column as strings, refusing null, empty and duplicate IDs.

    Integers (and floats that are whole numbers, as pandas produces for integer columns read
    with missing values elsewhere) are rendered without a decimal point, so ``1042`` and
    ``1042.0`` align. Strings are compared exactly (no case folding or trimming). The empty and
    duplicate checks are :meth:`IdTable.from_ids`'s, so a column and a PSI input fail alike.
    ``first_line``: the file line of the first row when ``source`` is a text file
    (:data:`CSV_FIRST_LINE` for a CSV), so errors name the file's line (:func:`row_label`).

    Raises:
        DataError: naming ``source``, ``column`` and the offending rows (never an ID).
    """
    series = values if isinstance(values, pd.Series) else pd.Series(list(values), dtype=object)
    ids = _render(series, f"{source}: column {column!r}", 0, first_line)
    IdTable.from_ids(ids, source=source, column=column, first_line=first_line)
    return ids


@dataclass(frozen=True, slots=True, eq=False)
class IdTable:
    """A party's unique IDs in row order (``values``, ``StringDType``) and their sort ranks.

    ``rank[row]`` is the position of ``values[row]`` in ID order (Python ``str`` order), so
    sorting rows by ID is ``rows[np.argsort(rank[rows])]``. Build one with :meth:`from_ids`
    (IDs in memory) or :meth:`from_chunks` (a column read from disk in chunks).
    """

    values: np.ndarray
    rank: np.ndarray
    source: str = "<ids>"
    column: str = "id"

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @classmethod
    def from_ids(
        cls, ids: Sequence[str] | np.ndarray, *, source: str = "<ids>", column: str = "id",
        first_line: int | None = None,
    ) -> IdTable:
        """From strings already rendered (:func:`ids_from_column`): non-empty, unique.

        ``column`` names the IDs' column in errors and warnings; ``first_line`` as in
        :func:`ids_from_column`.

        Raises:
            DataError: an ID is not a string, is empty, or appears twice.
        """
        if isinstance(ids, np.ndarray) and isinstance(ids.dtype, StringDType):
            values = ids
        else:
            items = list(ids)
            if not all(isinstance(i, str) for i in items):
                raise DataError(f"{source}: PSI IDs must be strings (use ids_from_column to convert a column)")
            values = _to_array(items, f"{source}: column {column!r}", 0, first_line)
        _check_empty(values, f"{source}: column {column!r}", 0, first_line)
        return cls._build([values], source=source, column=column, first_line=first_line)

    @classmethod
    def from_chunks(
        cls, chunks: Iterable[pd.Series], *, source: str, column: str, first_line: int | None = CSV_FIRST_LINE
    ) -> IdTable:
        """From a column delivered in chunks (e.g. ``pd.read_csv(..., chunksize=...)``).

        Each chunk is rendered and checked like :func:`ids_from_column` (null, empty, booleans,
        fractional numbers; rows are numbered across chunks), then packed, so at no time are
        more than one chunk's IDs Python strings; duplicates are found over the whole column.
        ``first_line``: the file line of the first row (default: a CSV with a header line, the
        chunked reader's source; ``None`` numbers rows of the table).

        Raises:
            DataError: naming ``source``, ``column`` and the first offending row or value.
        """
        where = f"{source}: column {column!r}"
        parts: list[np.ndarray] = []
        offset = 0
        for chunk in chunks:
            values = _to_array(_render(chunk, where, offset, first_line), where, offset, first_line)
            _check_empty(values, where, offset, first_line)
            parts.append(values)
            offset += values.shape[0]
        return cls._build(parts, source=source, column=column, first_line=first_line)

    @classmethod
    def _build(cls, parts: list[np.ndarray], *, source: str, column: str, first_line: int | None) -> IdTable:
        values = np.concatenate(parts) if len(parts) != 1 else parts[0]
        order = np.argsort(values, kind="stable")
        n = values.shape[0]
        if n > 1:
            ordered = values[order]
            same = ordered[1:] == ordered[:-1]
            if same.any():
                # groups of equal IDs start where ``same`` does; the stable sort lists each group's
                # rows in row order, so the group first met in row order has the least first row
                starts = np.flatnonzero(same & ~np.concatenate(([False], same[:-1])))
                first = int(starts[np.argmin(order[starts])])
                a, b = (_number(int(order[i]), first_line) for i in (first, first + 1))
                # how many IDs repeat is not told: a count about the data, and one example suffices
                raise DataError(
                    f"{source}: column {column!r} has duplicate IDs (the first at rows {a} and {b} {_of(first_line)}); "
                    "IDs must be unique"
                )
            del ordered
        dtype = np.int32 if n < 2**31 else np.int64
        rank = np.empty(n, dtype=dtype)
        rank[order] = np.arange(n, dtype=dtype)
        return cls(values=values, rank=rank, source=source, column=column)

    def take(self, rows: np.ndarray) -> list[str]:
        """The IDs of ``rows`` as Python strings."""
        return self.values[rows].tolist()

    def sort_rows(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` in the agreed order: by ID."""
        rows = np.asarray(rows, dtype=np.int64)
        return rows[np.argsort(self.rank[rows], kind="stable")]


def _to_array(ids: list[str], where: str, offset: int, first_line: int | None) -> np.ndarray:
    try:
        return np.array(ids, dtype=_STR)
    except UnicodeEncodeError:
        # name the row, never the ID (an agent's failure reason reaches the other silos)
        bad = next(k for k, i in enumerate(ids) if not _utf8(i))
        raise DataError(f"{where}: the ID at {row_label(offset + bad, first_line)} is not valid Unicode text "
                        "(it cannot be UTF-8 encoded)") from None


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
