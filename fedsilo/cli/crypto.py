"""``fedsilo backends`` and ``fedsilo bench crypto``: thin typer commands over fedsilo.crypto.

Heavy imports (TenSEAL, phe, numpy) happen inside the commands so ``fedsilo --help`` stays fast.
Library errors become one clean line on stderr and an exit code through
:func:`fedsilo.cli.cli_errors` (2 for a configuration error such as an unknown backend, 1 for
any other fedsilo error).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from fedsilo.cli import check_output_path, cli_errors, write_output

__all__ = ["bench_app", "register"]

#: The ``fedsilo bench`` group; other benchmark commands can be added to it.
bench_app = typer.Typer(help="Reproducible measurements (results also go to docs/benchmarks.md via benchmarks/).")


def _backend_rows() -> list[dict[str, Any]]:
    """One row per registered backend with default parameters, and one with packing switched on
    for a backend whose packing is optional (``capabilities().packing``: packed Paillier)."""
    from fedsilo.crypto.registry import available_backends, get_backend, get_backend_class
    from fedsilo.errors import FedsiloError

    rows: list[dict[str, Any]] = []
    variants: list[tuple[str, dict[str, Any]]] = []
    for name in available_backends():
        variants.append((name, {}))
        try:
            packing = get_backend_class(name).capabilities().packing
        except FedsiloError:
            continue  # get_backend below reports the error on the default row
        if packing is not None:
            variants.append((name, dict(packing)))
    for name, params in variants:
        try:
            backend = get_backend(name, **params)
            info = backend.info()
            conf = backend.confidentiality()
        except FedsiloError as exc:
            rows.append({"name": name, "params": params, "error": str(exc)})
            continue
        rows.append(
            {
                "name": name,
                "params": params,
                "exact": info.exact,
                "secure": info.secure,
                "security_bits": conf.security_bits,
                "insecure_reason": conf.reason or None,
                "values_per_ciphertext": info.values_per_ciphertext,
                "bytes_per_value": info.bytes_per_value,
                "error_bound": info.error_bound,
                "supports": list(info.supports),
                "description": info.description,
                # keyless backends (SecAgg+): no party holds a key; threshold None = the default rule
                "key_model": info.key_model,
                "dropout_tolerant": info.dropout_tolerant,
                "threshold": info.threshold,
            }
        )
    return rows


@cli_errors
def backends(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the registered crypto backends (built-in and plugins) and their properties."""
    rows = _backend_rows()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="fedsilo crypto backends (default parameters)")
    for col in ("backend", "keys", "arithmetic", "values/ct", "bytes/value", "error bound", "operations", "description"):
        table.add_column(col, overflow="fold")
    for row in rows:
        label = row["name"] + "".join(f" {k}={v}" for k, v in row["params"].items())
        if "error" in row:
            table.add_row(label, "-", "-", "-", "-", "-", "-", f"[red]{row['error']}[/red]")
            continue
        keys = "none (keyless)" if row["key_model"] == "keyless" else "shared key"
        if row["dropout_tolerant"]:
            keys += ", dropout-tolerant"
        arithmetic = "exact" if row["exact"] else "approx"
        if not row["secure"]:
            arithmetic += " (INSECURE)"
        table.add_row(
            label,
            keys,
            arithmetic,
            str(row["values_per_ciphertext"]) if row["values_per_ciphertext"] else "-",
            f"{row['bytes_per_value']:.1f}",
            f"{row['error_bound']:.1e}",
            ", ".join(row["supports"]),
            row["description"],
        )
    Console().print(table)


@bench_app.command("crypto")
@cli_errors
def bench_crypto(
    size: Annotated[int, typer.Option("--size", "-n", min=1, help="Values per party (N).")] = 10_000,
    parties: Annotated[int, typer.Option("--parties", "-k", min=1, help="Silos whose vectors are summed (K).")] = 10,
    backend_list: Annotated[
        str,
        typer.Option(
            "--backends",
            help="Comma-separated: paillier (= paillier-unpacked + paillier-packed: any backend with optional "
            "packing has NAME-unpacked / NAME-packed), ckks, plain, or a plugin's name.",
        ),
    ] = "paillier,ckks",
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the results as JSON to FILE ('-' = stdout).")] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the random vectors.")] = 0,
    paillier_sample: Annotated[
        int, typer.Option(min=1, help="Unpacked Paillier is measured on this many values per party and extrapolated.")
    ] = 500,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Paillier process-pool size (default: all cores).")] = None,
) -> None:
    """Sum of K silos' random vectors of N floats: encrypt, aggregate, decrypt per backend."""
    from fedsilo.crypto.bench import run_crypto_benchmark
    from fedsilo.errors import FedsiloError

    names = _bench_names(backend_list)
    _check_bench_memory(size, parties)
    if json_path is not None and str(json_path) != "-":
        check_output_path(json_path, "--json")
    try:
        result = run_crypto_benchmark(
            size=size,
            parties=parties,
            backends=names,
            seed=seed,
            paillier_sample=paillier_sample,
            workers=workers,
            progress=lambda label: typer.secho(f"  running {label} ...", err=True, dim=True),
        )
    except MemoryError:
        raise FedsiloError(f"out of memory for --size {size} x --parties {parties}; use a smaller --size") from None
    if json_path is not None:
        text = json.dumps(result, indent=2)
        if str(json_path) == "-":
            typer.echo(text)
            return
        write_output(json_path, text + "\n", "--json")
    print_results(result)


def _bench_names(backend_list: str) -> list[str]:
    """The --backends list, checked before anything runs (a typo must not surface after minutes
    of Paillier); repeated names run once."""
    from fedsilo.crypto.bench import split_variant_name
    from fedsilo.crypto.registry import available_backends, get_backend_class
    from fedsilo.errors import BackendNotFoundError, ConfigError

    names = list(dict.fromkeys(b.strip() for b in backend_list.split(",") if b.strip()))
    if not names:
        raise ConfigError(f"--backends {backend_list!r} names no backend (e.g. --backends paillier,ckks)")
    known = set(available_backends()) | {"numpy"}
    for name in names:
        if name not in known:
            try:
                get_backend_class(split_variant_name(name)[0])
            except BackendNotFoundError as exc:
                raise BackendNotFoundError(f"--backends: {exc}") from None
    return names


def _check_bench_memory(size: int, parties: int) -> None:
    """Refuse sizes whose random input vectors alone cannot fit in this machine's memory."""
    import os

    from fedsilo.errors import ConfigError

    need = 2 * parties * size * 8  # the K x N matrix and its copies, float64
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > have // 2:
        raise ConfigError(
            f"--size {size} x --parties {parties} needs at least {need / 1e9:.1f} GB for the input vectors "
            f"alone; this machine has {have / 1e9:.1f} GB"
        )


def print_results(result: dict[str, Any]) -> None:
    """A rich table of one ``run_crypto_benchmark`` result."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"sum of {result['parties']} silos x {result['size']:,} values")
    for col in ("backend", "packed", "encrypt s", "aggregate s", "decrypt s", "values/s", "bytes/value", "max abs error"):
        table.add_column(col, justify="right" if col not in ("backend", "packed") else "left")
    for row in result["results"]:
        extrapolated = "scaled" in (row.get("note") or "")
        table.add_row(
            row["backend"] + (" *" if extrapolated else ""),
            "yes" if row["packed"] else "no",
            f"{row['encrypt_s']:.3g}",
            f"{row['aggregate_s']:.3g}",
            f"{row['decrypt_s']:.3g}",
            f"{row['values_per_s']:,.0f}",
            f"{row['bytes_per_value']:.1f}",
            f"{row['max_abs_error']:.1e}",
        )
    console = Console()
    console.print(table)
    if any("scaled" in (r.get("note") or "") for r in result["results"]):
        console.print("* measured on a subsample and extrapolated per value (see the JSON 'note').")


def register(app: typer.Typer) -> None:
    """Mount ``backends`` and the ``bench`` group (with ``crypto``) on the main app."""
    app.command("backends")(backends)
    app.add_typer(bench_app, name="bench")
