"""``fedsilo psi``: align two ID files with the real PSI protocol, both roles on this machine.

Reads one ID column from each CSV, runs :func:`fedsilo.protocols.psi.psi_in_process` (the two
parties as threads over an in-process channel, exactly the messages two silos would exchange),
and writes the intersection in the agreed order (sorted by ID) as a one-column CSV named like
the input column. ``--json`` writes ``{"left", "right", "intersection", "bytes_sent",
"seconds", ...}``. Bad input (missing file or column, null or duplicate IDs) is one
``error: ...`` line and exit code 2.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from fedsilo.cli import check_output_path, cli_errors, write_output

if TYPE_CHECKING:
    from fedsilo.protocols.psi_ids import IdTable

__all__ = ["read_id_csv", "register"]


def read_id_csv(path: Path, column: str, *, chunk_rows: int = 200_000) -> "IdTable":
    """The IDs of ``column`` in the CSV ``path``, read in chunks of ``chunk_rows`` rows and
    packed into an :class:`~fedsilo.protocols.psi_ids.IdTable` (16 bytes per short ID, never a
    Python string per row of the whole file), checked for null, empty and duplicate IDs.

    The column is read as text (so ``007`` stays ``007``); only empty cells count as missing.

    Raises:
        DataError: missing or unreadable file, missing column, malformed rows, no IDs, null,
            empty or duplicate IDs (naming the file, the column and an example).
    """
    import warnings

    import pandas as pd

    from fedsilo.errors import DataError
    from fedsilo.protocols.psi_ids import IdTable
    from fedsilo.silos.data import csv_header

    if not path.exists():
        raise DataError(f"{path}: no such file")
    header = csv_header(path)  # directory, unreadable, empty, repeated column names
    if column not in header:
        raise DataError(f"{path}: no column {column!r} (columns: {', '.join(header)})")
    try:
        with warnings.catch_warnings():
            # rows longer than the header would shift the columns (see read_csv_checked)
            warnings.simplefilter("error", pd.errors.ParserWarning)
            # every column is parsed (not usecols): pandas would silently cut a row with more
            # fields than the header down to the header's columns
            reader = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""],
                                 index_col=False, chunksize=chunk_rows, encoding="utf-8-sig")
            with reader:
                table = IdTable.from_chunks((c[column] for c in reader), source=str(path), column=column)
    except pd.errors.ParserWarning:
        raise DataError(f"{path}: rows have more fields than the header's {len(header)} columns") from None
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"{path}: cannot read column {column!r}: {' '.join(str(exc).split())}") from None
    if len(table) == 0:
        raise DataError(f"{path}: column {column!r} has no IDs (the file has a header but no rows)")
    return table


def register(app: typer.Typer) -> None:
    """Add the ``psi`` command to ``app``."""

    @app.command("psi")
    @cli_errors
    def psi(
        left: Annotated[Path, typer.Option("--left", help="CSV of the first party (the guest).")],
        right: Annotated[Path, typer.Option("--right", help="CSV of the second party (a host).")],
        column: Annotated[str, typer.Option("--column", help="The ID column, present in both files.")],
        out: Annotated[
            Optional[Path], typer.Option("--out", help="Write the aligned IDs here (one column, agreed order).")
        ] = None,
        json_out: Annotated[Optional[Path], typer.Option("--json", help="Write run statistics as JSON here.")] = None,
        cardinality_only: Annotated[
            bool, typer.Option("--cardinality-only", help="Learn only the size of the intersection.")
        ] = False,
        workers: Annotated[
            Optional[int], typer.Option("--workers", min=1, help="Processes per party for large sets; both parties share one pool of 2 x this (default: half the cores each).")
        ] = None,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar; print only the summary.")] = False,
    ) -> None:
        """Private set intersection (ECDH over X25519) of two ID columns; both sides learn only the overlap."""
        from fedsilo.errors import ConfigError
        from fedsilo.protocols.psi import psi_in_process

        if out is None and not cardinality_only:
            raise ConfigError("--out is required (or pass --cardinality-only to learn only the size)")
        if out is not None and not cardinality_only:
            check_output_path(out, "--out")
        if json_out is not None:
            check_output_path(json_out, "--json")
        left_ids = read_id_csv(left, column)
        right_ids = read_id_csv(right, column)
        with _progress_bar(quiet) as progress:
            run = psi_in_process(left_ids, right_ids, cardinality_only=cardinality_only, workers=workers,
                                 progress=progress)
        if out is not None and not cardinality_only:
            _write_ids(out, column, left_ids.values[run.left.positions])
        stats = {
            "left": len(left_ids),
            "right": len(right_ids),
            "intersection": run.left.size,
            "cardinality_only": cardinality_only,
            "bytes_sent": run.bytes_sent,
            "seconds": round(run.seconds, 3),
            "protocol": "ecdh-psi-x25519",
        }
        if json_out is not None:
            write_output(json_out, json.dumps(stats, indent=2), "--json")
        where = f" -> {out}" if out is not None and not cardinality_only else ""
        typer.echo(
            f"PSI: {stats['left']} x {stats['right']} IDs, intersection {stats['intersection']}{where} "
            f"({run.seconds:.2f} s, {sum(run.bytes_sent.values()) / 1e6:.2f} MB sent)"
        )


@contextmanager
def _progress_bar(quiet: bool) -> Iterator[Callable[[dict[str, Any]], None] | None]:
    """A rich progress bar with ETA over the run's curve operations (both parties), or None."""
    if quiet:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(TextColumn("[bold]PSI"), BarColumn(), MofNCompleteColumn(), TextColumn("curve ops"),
                   TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), transient=False)
    task = bar.add_task("psi", total=None)
    with bar:
        def show(event: dict[str, Any]) -> None:
            bar.update(task, completed=event["done"], total=event["total"])

        yield show


def _write_ids(path: Path, column: str, ids: Any, rows: int = 1_000_000) -> None:
    """The aligned IDs as a one-column CSV, written a million rows at a time."""
    import pandas as pd

    from fedsilo.errors import ConfigError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            for a in range(0, max(len(ids), 1), rows):
                pd.DataFrame({column: ids[a : a + rows].tolist()}).to_csv(fh, index=False, header=a == 0)
    except OSError as exc:
        raise ConfigError(f"--out {path}: cannot write: {exc.strerror or exc}") from None
