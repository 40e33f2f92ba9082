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
from pathlib import Path
from typing import Annotated, Optional

import typer

from fedsilo.cli import check_output_path, cli_errors, write_output

__all__ = ["read_id_csv", "register"]


def read_id_csv(path: Path, column: str) -> list[str]:
    """The IDs of ``column`` in the CSV ``path``, as strings, checked for null/duplicates.

    The column is read as text (so ``007`` stays ``007``); only empty cells count as missing.

    Raises:
        DataError: missing or unreadable file, missing column, null or duplicate IDs.
    """
    from fedsilo.errors import DataError
    from fedsilo.protocols.psi import ids_from_column
    from fedsilo.silos.data import csv_header, read_csv_checked

    if not path.exists():
        raise DataError(f"{path}: no such file")
    header = csv_header(path)  # directory, unreadable, empty, repeated column names
    if column not in header:
        raise DataError(f"{path}: no column {column!r} (columns: {', '.join(header)})")
    frame = read_csv_checked(path, dtype=str, keep_default_na=False, na_values=[""])
    if frame.empty:
        raise DataError(f"{path}: column {column!r} has no IDs (the file has a header but no rows)")
    return ids_from_column(frame[column], source=str(path), column=column)


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
            Optional[int], typer.Option("--workers", min=1, help="Processes per party for large sets (default: all cores).")
        ] = None,
    ) -> None:
        """Private set intersection (ECDH over X25519) of two ID columns; both sides learn only the overlap."""
        import pandas as pd

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
        run = psi_in_process(left_ids, right_ids, cardinality_only=cardinality_only, workers=workers)
        if out is not None and not cardinality_only:
            write_output(out, pd.DataFrame({column: list(run.left.ids)}).to_csv(index=False), "--out")
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
