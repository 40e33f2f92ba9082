"""Crypto backends side by side: secure aggregation of K silos' vectors, plus parallel encryption.

Reproduce (writes the "crypto" section of docs/benchmarks.md)::

    .venv/bin/python benchmarks/crypto_backends.py

N = 10^4 and 10^5 for every backend; N = 10^6 for CKKS and packed Paillier (packed Paillier at
10^6 is measured on a subsample and extrapolated per value: the full run would take ~15 minutes
on 2 cores). Unpacked Paillier is always measured on ``--paillier-sample`` values per silo and
extrapolated. The logic lives in :mod:`fedsilo.crypto.bench` (also behind
``fedsilo bench crypto``); this script chooses sizes, prints ratios and writes the report.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from fedsilo.cli.crypto import print_results
from fedsilo.crypto.bench import measure_parallel_encryption, run_crypto_benchmark

try:
    from _report import machine_line, write_section
except ImportError:  # run as a module from the repo root
    from benchmarks._report import machine_line, write_section

COMMAND = ".venv/bin/python benchmarks/crypto_backends.py"
TARGETS = {
    "packed_vs_unpacked_speed": 20.0,
    "packed_vs_unpacked_bytes": 20.0,
    "ckks_vs_unpacked_speed": 1000.0,
    "two_workers_speedup": 1.6,
}


def _row(result: dict[str, Any], backend: str, packed: bool = False) -> dict[str, Any] | None:
    for row in result["results"]:
        if row["backend"] == backend and row["packed"] == packed:
            return row
    return None


def _label(row: dict[str, Any]) -> str:
    name = row["backend"] + (" packed" if row["packed"] else "")
    if row["backend"] == "paillier" and not row["packed"]:
        name += " (unpacked)"
    return name + (" *" if "scaled" in row["note"] else "")


def _markdown(
    runs: list[dict[str, Any]], ratios: list[dict[str, Any]], parallel: dict[str, Any], seconds: float, load: tuple[float, float]
) -> str:
    lines = [
        "## Crypto backends: secure aggregation",
        "",
        f"Sum of K = {runs[0]['parties']} silos' vectors of N floats from U[-1, 1]: each silo encrypts and "
        "serializes (encrypt), an aggregator deserializes, sums and re-serializes with re-randomization "
        "(aggregate), the key holder deserializes and decrypts (decrypt). Seconds are total compute on this "
        "machine; values/s = N x K / (encrypt + aggregate + decrypt); bytes/value = a silo's upload per value; "
        "max abs error against numpy's float64 sum. Paillier: 2048-bit keys (~112-bit security), 32 fractional "
        "bits, value_bound = 1, max_summands = K, process pool of all cores; CKKS: profile `aggregate` "
        "(N = 4096, primes [60, 49], scale 2^40, 128-bit security).",
        "",
        f"Machine: {machine_line()}. Total run time {seconds:.0f} s; 1-minute load average "
        f"{load[0]:.1f} at the start, {load[1]:.1f} at the end (other processes share the cores).",
        "",
        "| N | backend | encrypt s | aggregate s | decrypt s | values/s | bytes/value | max abs error |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        for row in run["results"]:
            lines.append(
                f"| {run['size']:,} | {_label(row)} | {row['encrypt_s']:.3g} | {row['aggregate_s']:.3g} | "
                f"{row['decrypt_s']:.3g} | {row['values_per_s']:,.0f} | {row['bytes_per_value']:.1f} | "
                f"{row['max_abs_error']:.1e} |"
            )
    notes = [
        f"{_label(row)[:-2]} at N = {run['size']:,}: "
        + row["note"].split("; ", 1)[1].replace(" (linear in ciphertexts)", "")
        for run in runs
        for row in run["results"]
        if "scaled" in row["note"]
    ]
    lines += ["", "\\* measured on a subsample of each silo's vector and scaled to N (cost is linear in the "
              "number of ciphertexts) — " + "; ".join(notes) + "."]
    lines += [
        "",
        "Ratios, measured side by side in the same run (target in brackets):",
        "",
        "| N | packed / unpacked Paillier values/s [>= 20] | unpacked / packed bytes/value [>= 20] | "
        "CKKS / unpacked Paillier values/s [>= 1000] | unpacked Paillier / CKKS bytes/value | numpy / CKKS values/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in ratios:
        lines.append(
            f"| {r['size']:,} | {r['packed_speed']:.1f}x | {r['packed_bytes']:.1f}x | {r['ckks_speed']:,.0f}x | "
            f"{r['ckks_bytes']:.1f}x | {r['numpy_vs_ckks']:,.0f}x |"
        )
    s = parallel["seconds"]
    lines += [
        "",
        f"Parallel encryption (packed Paillier, one vector of {parallel['values']:,} values = "
        f"{parallel['ciphertexts']} ciphertexts, best of 5 alternating runs, load average "
        f"{parallel['load']:.1f}): 1 worker {s[1]:.2f} s, 2 workers {s[2]:.2f} s: "
        f"**{parallel['speedup'][2]:.2f}x** [target >= 1.6x].",
        "",
        f"Reproduce: `{COMMAND}` (about {max(1, round(seconds / 60))} min on 2 cores), or one size: "
        "`fedsilo bench crypto --size 100000 --parties 10 --json out.json`.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated N values")
    parser.add_argument("--parties", type=int, default=10)
    parser.add_argument("--paillier-sample", type=int, default=500, help="unpacked Paillier values measured per silo")
    parser.add_argument("--packed-sample", type=int, default=20_000, help="packed Paillier values measured per silo when N > 10^5")
    parser.add_argument("--parallel-values", type=int, default=11_000)
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args(argv)
    console = Console()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    # Parallel encryption first: it is the measurement most sensitive to other processes.
    console.print("[bold]parallel encryption[/bold] (packed Paillier, workers 1 vs 2, best of 5 alternating runs)")
    parallel = measure_parallel_encryption(values=args.parallel_values, workers=(1, 2), repeats=5)
    parallel["load"] = os.getloadavg()[0]
    runs = []
    for size in sizes:
        large = size > 100_000
        backends = ["paillier-packed", "ckks"] if large else ["paillier", "ckks"]
        console.print(f"[bold]N = {size:,}[/bold] x K = {args.parties} ({', '.join(backends)})")
        run = run_crypto_benchmark(
            size=size,
            parties=args.parties,
            backends=backends,
            seed=0,
            paillier_sample=args.paillier_sample,
            packed_sample=args.packed_sample if large else None,
            progress=lambda label: console.print(f"  running {label} ...", style="dim"),
        )
        print_results(run)
        runs.append(run)

    seconds = time.perf_counter() - started
    load = (load_before, os.getloadavg()[0])

    ratios = []
    for run in runs:
        unpacked, packed, ckks, numpy = (_row(run, "paillier"), _row(run, "paillier", True), _row(run, "ckks"), _row(run, "numpy"))
        if not (unpacked and packed and ckks and numpy):
            continue
        ratios.append(
            {
                "size": run["size"],
                "packed_speed": packed["values_per_s"] / unpacked["values_per_s"],
                "packed_bytes": unpacked["bytes_per_value"] / packed["bytes_per_value"],
                "ckks_speed": ckks["values_per_s"] / unpacked["values_per_s"],
                "ckks_bytes": unpacked["bytes_per_value"] / ckks["bytes_per_value"],
                "numpy_vs_ckks": numpy["values_per_s"] / ckks["values_per_s"],
            }
        )
    table = Table(title="ratios (side by side, same run)")
    for col in ("N", "packed/unpacked values/s", "unpacked/packed bytes", "ckks/unpacked values/s", "unpacked/ckks bytes", "numpy/ckks values/s"):
        table.add_column(col, justify="right")
    for r in ratios:
        table.add_row(f"{r['size']:,}", f"{r['packed_speed']:.1f}x", f"{r['packed_bytes']:.1f}x", f"{r['ckks_speed']:,.0f}x",
                      f"{r['ckks_bytes']:.1f}x", f"{r['numpy_vs_ckks']:,.0f}x")
    console.print(table)
    s = parallel["seconds"]
    console.print(
        f"parallel encryption of {parallel['values']:,} values ({parallel['ciphertexts']} ciphertexts): "
        f"1 worker {s[1]:.2f} s, 2 workers {s[2]:.2f} s -> {parallel['speedup'][2]:.2f}x"
    )
    checks = {
        "packed_vs_unpacked_speed": min((r["packed_speed"] for r in ratios), default=0.0),
        "packed_vs_unpacked_bytes": min((r["packed_bytes"] for r in ratios), default=0.0),
        "ckks_vs_unpacked_speed": min((r["ckks_speed"] for r in ratios), default=0.0),
        "two_workers_speedup": parallel["speedup"][2],
    }
    for name, value in checks.items():
        ok = value >= TARGETS[name]
        console.print(f"  {'[green]met[/green]' if ok else '[red]MISSED[/red]'} {name}: {value:.2f} (target >= {TARGETS[name]})")
    if not args.no_write:
        path = write_section("crypto", _markdown(runs, ratios, parallel, seconds, load))
        console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
