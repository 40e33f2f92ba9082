"""Time and bytes of one secure-aggregation round vs model size and silo count, per backend.

One round = every silo encrypts its update (plus its noise share), the aggregator adds the
ciphertexts, every silo decrypts the sum: the production functions
``silo_secure_sum`` / ``aggregator_secure_sum`` on an in-process hub, one thread per party (so
on a 2-core machine the silos' encryptions share the cores, as they would not across real
organizations: read absolute times as "all silos on one machine"). Local training is the same
for every backend and is left out. The key ceremony is timed separately.

Paillier at 10^5 and 10^6 parameters would take tens of minutes to hours on 2 cores, so it is
measured at 10^3 and 10^4 and extrapolated linearly in the parameter count (its cost is
per packed plaintext, i.e. linear); extrapolated cells are marked with "~".

    .venv/bin/python benchmarks/horizontal_round.py            # writes docs/benchmarks.md
    .venv/bin/python benchmarks/horizontal_round.py --quick    # smaller grid, prints only
"""
from __future__ import annotations

import argparse
import gc
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, write_section  # noqa: E402

from fedsilo.crypto.registry import get_backend  # noqa: E402
from fedsilo.protocols.channel import InProcessHub, run_parties  # noqa: E402
from fedsilo.protocols.horizontal.secure_aggregation import (  # noqa: E402
    Contribution,
    aggregator_key_ceremony,
    aggregator_secure_sum,
    silo_key_ceremony,
    silo_secure_sum,
)

BACKENDS: dict[str, dict[str, Any]] = {
    "plain": {},
    "ckks": {},
    "paillier": {"packed": True, "max_summands": 20},
}


def one_round(backend: str, params: dict[str, Any], *, size: int, silos: int, seed: int = 0) -> dict[str, float]:
    """Seconds of one round, ceremony seconds, bytes each silo sent in the round, max abs error."""
    names = [f"s{i:02d}" for i in range(silos)]
    hub = InProcessHub("bench", [*names, "aggregator"])
    barrier = threading.Barrier(silos + 1)
    rng = np.random.default_rng(seed)
    updates = {n: rng.normal(0.0, 0.01, size) for n in names}
    marks: dict[str, float] = {}
    sent_after_ceremony: dict[str, int] = {}
    results: dict[str, np.ndarray] = {}

    def silo(ch: Any) -> None:
        be = get_backend(backend, **params)
        t0 = time.perf_counter()
        sk = silo_key_ceremony(ch, be, silos=names, aggregator="aggregator", timeout=600)
        marks[f"ceremony:{ch.party}"] = time.perf_counter() - t0
        pk = sk.public()
        sent_after_ceremony[ch.party] = ch.bytes_sent
        barrier.wait()
        marks["start"] = time.perf_counter()
        u = updates[ch.party]
        out = silo_secure_sum(
            ch, round=1, aggregator="aggregator", backend=be, secret=sk, public=pk,
            contribution=Contribution(values=lambda n: u, topup=lambda n, k: np.zeros(size)), timeout=3600,
        )
        marks[f"end:{ch.party}"] = time.perf_counter()
        results[ch.party] = out.total  # type: ignore[assignment]

    def aggregator(ch: Any) -> None:
        be = get_backend(backend, **params)
        pk = aggregator_key_ceremony(ch, be, silos=names, timeout=600)
        barrier.wait()
        aggregator_secure_sum(ch, round=1, silos=names, backend=be, public=pk, min_silos=2, colluders=0, timeout=3600)

    run_parties(hub, {"aggregator": aggregator, **{n: silo for n in names}})
    end = max(v for k, v in marks.items() if k.startswith("end:"))
    sent = hub.bytes_sent()
    want = np.sum([updates[n] for n in names], axis=0)
    err = max(float(np.max(np.abs(results[n] - want))) for n in names)
    out = {
        "seconds": end - marks["start"],
        "ceremony": max(v for k, v in marks.items() if k.startswith("ceremony:")),
        "bytes_per_silo": float(np.mean([sent[n] - sent_after_ceremony[n] for n in names])),
        "max_error": err,
    }
    del results, updates, hub
    gc.collect()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small grid, print only (no docs update)")
    args = ap.parse_args()
    sizes = [1_000, 10_000, 100_000, 1_000_000] if not args.quick else [1_000, 10_000]
    silo_counts = [3, 10]
    paillier_measured = [1_000, 10_000] if not args.quick else [1_000]
    rows: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    for silos in silo_counts:
        for size in sizes:
            base = one_round("plain", BACKENDS["plain"], size=size, silos=silos)
            row: dict[str, Any] = {"silos": silos, "size": size, "plain": base}
            row["ckks"] = one_round("ckks", BACKENDS["ckks"], size=size, silos=silos)
            if size in paillier_measured:
                row["paillier"] = one_round("paillier", BACKENDS["paillier"], size=size, silos=silos)
            else:
                ref_size = max(paillier_measured)
                ref = next(r["paillier"] for r in rows if r["silos"] == silos and r["size"] == ref_size)
                k = size / ref_size
                row["paillier"] = {
                    "seconds": ref["seconds"] * k,
                    "bytes_per_silo": ref["bytes_per_silo"] * k,
                    "max_error": ref["max_error"],
                    "ceremony": ref["ceremony"],
                    "extrapolated": True,
                }
            rows.append(row)
            print(
                f"silos={silos:>2} params={size:>9,}  plain {base['seconds']:.3f}s {base['bytes_per_silo']/1e6:.2f}MB  "
                f"ckks {row['ckks']['seconds']:.2f}s {row['ckks']['bytes_per_silo']/1e6:.1f}MB  "
                f"paillier{'~' if row['paillier'].get('extrapolated') else ''} {row['paillier']['seconds']:.1f}s "
                f"{row['paillier']['bytes_per_silo']/1e6:.1f}MB",
                flush=True,
            )
    total = time.perf_counter() - t_all
    md = render(rows, total)
    print(md)
    if not args.quick:
        print(f"wrote {write_section('horizontal', md)}")


def render(rows: list[dict[str, Any]], total: float) -> str:
    lines = [
        "## Horizontal secure aggregation: one round",
        "",
        "One round = every silo encrypts its update, the aggregator (no key) adds the ciphertexts, "
        "every silo decrypts the sum (`silo_secure_sum` / `aggregator_secure_sum` on an in-process "
        "hub, all parties as threads of one process). Local training is excluded (identical for all "
        "backends). Ratios are to `plain` measured in the same run. Backends: `ckks` default "
        "(`aggregate` profile, N = 4096), `paillier` packed (2048-bit, 32-bit precision, "
        "max_summands = 20). `~`: extrapolated linearly from the 10^4-parameter measurement "
        "(Paillier at 10^5–10^6 parameters would take too long here).",
        "",
        f"Machine: {machine_line()}; whole benchmark {total:.0f} s.",
        "",
        "| silos | params | plain s | ckks s (× plain) | paillier s (× plain) | plain MB/silo | ckks MB/silo (×) | paillier MB/silo (×) | ckks max err |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p, c, q = r["plain"], r["ckks"], r["paillier"]
        mark = "~" if q.get("extrapolated") else ""
        lines.append(
            f"| {r['silos']} | {r['size']:,} | {p['seconds']:.3f} | {c['seconds']:.2f} ({c['seconds']/p['seconds']:.0f}×) | "
            f"{mark}{q['seconds']:.1f} ({mark}{q['seconds']/p['seconds']:.0f}×) | {p['bytes_per_silo']/1e6:.3f} | "
            f"{c['bytes_per_silo']/1e6:.2f} ({c['bytes_per_silo']/p['bytes_per_silo']:.1f}×) | "
            f"{mark}{q['bytes_per_silo']/1e6:.2f} ({mark}{q['bytes_per_silo']/p['bytes_per_silo']:.1f}×) | {c['max_error']:.1e} |"
        )
    lines += ["", "Re-run: `.venv/bin/python benchmarks/horizontal_round.py`"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
