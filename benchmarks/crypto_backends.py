"""Crypto backends side by side: secure aggregation of K silos' vectors, plus parallel encryption.

Reproduce (writes the "crypto" section of docs/benchmarks.md)::

    .venv/bin/python benchmarks/crypto_backends.py

N = 10^4 and 10^5 for every backend; N = 10^6 for CKKS and packed Paillier (packed Paillier at
10^6 is measured on a subsample and extrapolated per value: the full run would take ~15 minutes
on 2 cores). Unpacked Paillier is always measured on ``--paillier-sample`` values per silo and
extrapolated. The logic lives in :mod:`fedsilo.crypto.bench` (also behind
``fedsilo bench crypto``); this script chooses sizes, prints ratios and writes the report.

CKKS vs raw TenSEAL (:func:`fedsilo.crypto.bench.measure_ckks_vs_tenseal`): 5 silos x 2*10^5
values, public-key and secret-key encryption, fedsilo against TenSEAL with the same parameters
and chunking; ``--only-ckks`` prints just that table (nothing written).
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
from fedsilo.crypto.bench import (
    measure_ckks_vs_tenseal,
    measure_paillier_encryption,
    measure_parallel_encryption,
    run_crypto_benchmark,
)

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
    "paillier_fast_vs_phe": 5.0,
    "ckks_vs_raw_tenseal": 0.9,
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


def _paillier_fast(result: dict[str, Any]) -> float:
    """Fast encryptions per second over phe's, the target's figure."""
    return next(r["vs_phe"] for r in result["rows"] if (r["name"], r["operation"]) == ("after", "encrypt"))


def _print_paillier_fast(console: Console, result: dict[str, Any]) -> None:
    table = Table(title=f"Paillier fast vs phe: {result['key_bits']}-bit, one core, {result['values']} values, best of {result['repeats']}")
    for col in ("operation", "path", "per second", "x phe / before"):
        table.add_column(col, justify="right")
    for r in result["rows"]:
        table.add_row(r["operation"], r["label"], f"{r['per_s']:,.0f}", f"{r['vs_phe']:.1f}x")
    console.print(table)


def _paillier_fast_markdown(result: dict[str, Any]) -> str:
    lines = [
        "### Paillier fast vs phe",
        "",
        f"Paillier encryptions per second on one core (one process, `workers=1`), {result['key_bits']}-bit keys, the "
        f"same modulus for every row, {result['values']} values from U[-1, 1], fastest of {result['repeats']} rounds "
        "in which the rows alternate; every result is decrypted and checked exactly. phe: "
        "`PaillierPublicKey.encrypt` of each float (its encoding and `r^n` obfuscation). fedsilo before: phe's "
        "`raw_encrypt` of the fixed-point integers (what a format-1 key still takes). fedsilo after: "
        f"Damgård–Jurik–Nielsen randomness `h^α`, `α` of {result['short_bits']} bits, from a fixed-base table "
        "(docs/crypto.md, 'Fast encryption'). Re-randomization is what `serialize` does before a computed "
        "ciphertext leaves; its ratio is against fedsilo before (phe has no separate step).",
        "",
        "| operation | path | per second | x phe (encrypt) / x before (re-randomize) |",
        "|---|---|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['operation']} | {r['label']} | {r['per_s']:,.0f} | {r['vs_phe']:.1f}x |")
    lines += [
        "",
        f"Target: fast encryption >= {TARGETS['paillier_fast_vs_phe']:g}x phe per core — **{_paillier_fast(result):.1f}x** "
        "(before issue 16: phe's 88/s, fedsilo the same path).",
    ]
    return "\n".join(lines)


CKKS_LABELS = {
    "fedsilo": "fedsilo (backend API, every check)",
    "tenseal": "raw TenSEAL (public API)",
    "tenseal-binding": "raw TenSEAL (C++ objects, no Python wrapper)",
}


def _ckks_ratio(result: dict[str, Any], encryption: str, baseline: str, key: str = "ratio") -> float:
    return next(r[key] for r in result["ratios"] if r["encryption"] == encryption and r["baseline"] == baseline)


def _print_ckks_vs_tenseal(console: Console, result: dict[str, Any]) -> None:
    lines = [
        f"  {'encryption':<11} {'implementation':<16} {'total s':>8} {'encrypt':>8} {'aggreg.':>8} "
        f"{'decrypt':>8} {'CPU s':>8} {'B/value':>8} {'max err':>8}"
    ]
    for r in result["rows"]:
        lines.append(
            f"  {r['encryption']:<11} {r['variant']:<16} {r['seconds']:>8.3f} {r['encrypt_s']:>8.3f} "
            f"{r['aggregate_s']:>8.3f} {r['decrypt_s']:>8.3f} {r['cpu_s']:>8.3f} {r['bytes_per_value']:>8.1f} "
            f"{r['max_abs_error']:>8.1e}"
        )
    for r in result["ratios"]:
        lines.append(f"  {r['encryption']}: {r['baseline']} / fedsilo = {r['ratio']:.2f}x wall, {r['cpu_ratio']:.2f}x CPU")
    if not result["seeded"]:
        lines.append(f"  secret-key encryption fell back to public-key: {result['fallback_reason']}")
    for line in lines:
        console.print(line, soft_wrap=True, highlight=False)


def _ckks_vs_tenseal_markdown(result: dict[str, Any]) -> str:
    p = result["params"]
    rows = {(r["variant"], r["encryption"]): r for r in result["rows"]}
    fed_pk, fed_sk = rows[("fedsilo", "public-key")], rows[("fedsilo", "secret-key")]
    lines = [
        "### CKKS vs raw TenSEAL",
        "",
        f"The same secure sum, K = {result['parties']} silos x N = {result['size']:,} values from U[-1, 1]: each "
        "silo encrypts and serializes (encrypt), an aggregator holding only the public context deserializes, "
        "adds and serializes (aggregate), a key holder deserializes and decrypts (decrypt). Same parameters "
        f"(N = {p['poly_modulus_degree']}, primes {p['coeff_mod_bit_sizes']}, scale 2^{p['scale_bits']}) and the "
        f"same chunking ({-(-result['size'] // (p['poly_modulus_degree'] // 2))} full-width ciphertexts per silo) "
        "everywhere. fedsilo runs through the backend API the protocol uses, with every check (key "
        "fingerprints, wire header, slot counts, value bound and capacity); raw TenSEAL runs one `CKKSVector` "
        "per chunk through its public Python API, and through its C++ objects without the Python wrapper (the "
        "floor). Public-key: any party encrypts with the public context. Secret-key: the shared-key silos "
        "encrypt with the secret key they hold (fedsilo's `encrypt_with_secret`, seeded; TenSEAL's "
        "`ENCRYPTION_TYPE.SYMMETRIC` context, which serializes the full ciphertext). Fastest of "
        f"{result['repeats']} rounds in which the variants alternate (1-minute load average "
        f"{result.get('load', float('nan')):.1f} after them); seconds are wall time on this machine, CPU s the "
        "least process CPU time of a round (less sensitive to other processes); "
        "bytes/value = a silo's upload per value; max abs error against numpy's float64 sum.",
        "",
        "| encryption | implementation | total s | encrypt s | aggregate s | decrypt s | CPU s | bytes/value |"
        " max abs error | raw / fedsilo (wall) | raw / fedsilo (CPU) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        wall = cpu = ""
        if r["variant"] != "fedsilo":
            wall = f"{_ckks_ratio(result, r['encryption'], r['variant']):.2f}x"
            cpu = f"{_ckks_ratio(result, r['encryption'], r['variant'], 'cpu_ratio'):.2f}x"
        lines.append(
            f"| {r['encryption']} | {CKKS_LABELS[r['variant']]} | {r['seconds']:.3f} | {r['encrypt_s']:.3f} | "
            f"{r['aggregate_s']:.3f} | {r['decrypt_s']:.3f} | {r['cpu_s']:.3f} | {r['bytes_per_value']:.1f} | "
            f"{r['max_abs_error']:.1e} | {wall} | {cpu} |"
        )
    lines += [
        "",
        f"Target: raw TenSEAL (public API) s / fedsilo s >= {TARGETS['ckks_vs_raw_tenseal']} — public-key "
        f"**{_ckks_ratio(result, 'public-key', 'tenseal'):.2f}x**, secret-key "
        f"**{_ckks_ratio(result, 'secret-key', 'tenseal'):.2f}x** (before issue 16: 0.70–0.86x public-key). "
        f"fedsilo's secret-key path against its public-key path: {fed_pk['seconds'] / fed_sk['seconds']:.2f}x "
        f"faster, {fed_pk['bytes_per_value'] / fed_sk['bytes_per_value']:.2f}x fewer bytes per value"
        + ("" if result["seeded"] else f" (seeded encryption unavailable: {result['fallback_reason']})")
        + ". CKKS sums of ciphertexts are sent without re-randomization; results of a plaintext operation "
        "still get a fresh encryption of zero (docs/crypto.md).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated N values")
    parser.add_argument("--parties", type=int, default=10)
    parser.add_argument("--paillier-sample", type=int, default=500, help="unpacked Paillier values measured per silo")
    parser.add_argument("--packed-sample", type=int, default=20_000, help="packed Paillier values measured per silo when N > 10^5")
    parser.add_argument("--parallel-values", type=int, default=110_000, help="packed Paillier values (2,000 ciphertexts: ~0.4 s on one core)")
    parser.add_argument("--paillier-values", type=int, default=200, help="values per row of the Paillier fast vs phe table")
    parser.add_argument("--ckks-size", type=int, default=200_000, help="values per silo in the CKKS vs raw TenSEAL table")
    parser.add_argument("--ckks-parties", type=int, default=5)
    parser.add_argument("--ckks-repeats", type=int, default=5, help="alternating rounds; each variant keeps its fastest")
    parser.add_argument("--only-ckks", action="store_true", help="only the CKKS vs raw TenSEAL table (printed, not written)")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args(argv)
    console = Console()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    if not args.only_ckks:
        # Parallel encryption first: it is the measurement most sensitive to other processes.
        console.print("[bold]parallel encryption[/bold] (packed Paillier, workers 1 vs 2, best of 5 alternating runs)")
        parallel = measure_parallel_encryption(values=args.parallel_values, workers=(1, 2), repeats=5)
        parallel["load"] = os.getloadavg()[0]
    console.print("[bold]Paillier fast vs phe[/bold] (one core, 2048-bit, alternating rows, best of 3)")
    paillier_fast = measure_paillier_encryption(key_bits=2048, values=args.paillier_values, repeats=3)
    _print_paillier_fast(console, paillier_fast)
    # Then the side-by-side CKKS ratios (variants alternate, each keeps its fastest round).
    console.print(f"[bold]CKKS vs raw TenSEAL[/bold] (K = {args.ckks_parties} x N = {args.ckks_size:,}, best of {args.ckks_repeats})")
    ckks_raw = measure_ckks_vs_tenseal(size=args.ckks_size, parties=args.ckks_parties, repeats=args.ckks_repeats)
    ckks_raw["load"] = os.getloadavg()[0]
    _print_ckks_vs_tenseal(console, ckks_raw)
    if args.only_ckks:
        return 0
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
        "paillier_fast_vs_phe": _paillier_fast(paillier_fast),
        "ckks_vs_raw_tenseal": min(_ckks_ratio(ckks_raw, enc, "tenseal") for enc in ("public-key", "secret-key")),
    }
    for name, value in checks.items():
        ok = value >= TARGETS[name]
        console.print(f"  {'[green]met[/green]' if ok else '[red]MISSED[/red]'} {name}: {value:.2f} (target >= {TARGETS[name]})")
    if not args.no_write:
        path = write_section("crypto", _markdown(runs, ratios, parallel, seconds, load) + "\n\n" + _paillier_fast_markdown(paillier_fast) + "\n\n" + _ckks_vs_tenseal_markdown(ckks_raw))
        console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
