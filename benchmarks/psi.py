"""PSI for vertical alignment: seconds and bytes at 10^4, 10^5 (and 10^6) IDs per side.

Both sides have ``n`` IDs with 50 % overlap. fedsilo's protocol (ECDH over X25519,
:mod:`fedsilo.protocols.psi`) runs both parties as threads of one process over an in-process
hub (:func:`~fedsilo.protocols.psi.psi_in_process`, what ``fedsilo psi`` does): on this machine
the two parties share the cores, as they would not across two organizations. ``workers=1`` is
one process per party (the X25519 call holds the GIL, so the two parties' curve work is
serialized); ``workers=all`` gives each party a process pool of every core.

For reference, openmined-psi 2.0.6 (ECDH over P-256, client/server, ``reveal_intersection``,
RAW set-up; only the client learns the intersection) runs in one thread at 10^4 and 10^5.
10^6 is measured for fedsilo when ``--max`` allows it (about 10× the 10^5 time), otherwise
extrapolated linearly and marked "~"; openmined-psi at 10^6 is always extrapolated.

    .venv/bin/python benchmarks/psi.py                 # writes the "psi" section of docs/benchmarks.md
    .venv/bin/python benchmarks/psi.py --max 100000    # skip the 10^6 run (extrapolate it)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, write_section  # noqa: E402

from fedsilo.protocols.psi import psi_in_process  # noqa: E402


def sets(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    ids = rng.choice(10**12, size=n + n // 2, replace=False).astype(str)
    return list(ids[:n]), list(ids[n // 2 :])


def fedsilo_psi(n: int, workers: int | None) -> dict[str, float]:
    a, b = sets(n)
    run = psi_in_process(a, b, workers=workers)
    assert run.left.ids == run.right.ids and set(run.left.ids) == set(a) & set(b)
    return {"seconds": run.seconds, "bytes": float(sum(run.bytes_sent.values()))}


def openmined_psi(n: int) -> dict[str, float]:
    import private_set_intersection.python as psi

    a, b = sets(n)
    start = time.perf_counter()
    client = psi.client.CreateWithNewKey(True)
    server = psi.server.CreateWithNewKey(True)
    setup = server.CreateSetupMessage(0.0, len(a), b, psi.DataStructure.RAW)
    request = client.CreateRequest(a)
    response = server.ProcessRequest(request)
    got = client.GetIntersection(setup, response)
    seconds = time.perf_counter() - start
    assert len(got) == n // 2
    size = sum(len(m.SerializeToString()) for m in (setup, request, response))
    return {"seconds": seconds, "bytes": float(size)}


def fmt_s(v: float, approx: bool = False) -> str:
    return ("~" if approx else "") + (f"{v:.2f}" if v < 10 else f"{v:.1f}")


def fmt_mb(v: float, approx: bool = False) -> str:
    return ("~" if approx else "") + f"{v / 1e6:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max", type=int, default=1_000_000, help="largest n to measure (others are extrapolated)")
    ap.add_argument("--no-write", action="store_true", help="print only, do not touch docs/benchmarks.md")
    args = ap.parse_args()
    t0 = time.perf_counter()
    sizes = [10_000, 100_000, 1_000_000]
    rows: dict[int, dict[str, tuple[dict[str, float], bool]]] = {}
    for n in sizes:
        rows[n] = {}
        prev = rows.get(n // 10, {})
        for label, fn in (
            ("one", lambda n=n: fedsilo_psi(n, 1)),
            ("pool", lambda n=n: fedsilo_psi(n, None)),
            ("openmined", lambda n=n: openmined_psi(n)),
        ):
            measure = n <= args.max and not (label in ("one", "openmined") and n > 100_000)
            if measure:
                res = fn()
                rows[n][label] = (res, False)
            else:
                base, _ = prev[label]
                rows[n][label] = ({k: v * 10 for k, v in base.items()}, True)
            r, approx = rows[n][label]
            print(f"n={n:>9,} {label:>9}: {'~' if approx else ''}{r['seconds']:.2f} s, {r['bytes'] / 1e6:.1f} MB", flush=True)
    total = time.perf_counter() - t0

    lines = [
        "## PSI (vertical alignment)",
        "",
        "Both sides hold n IDs, 50 % shared. fedsilo: ECDH PSI over X25519 (`fedsilo.protocols.psi`), both "
        "parties as threads of one process over the in-process hub, exactly the messages two silos exchange; "
        "*1 proc* = one process per party (the X25519 call holds the GIL, so the two parties' curve work is "
        "serialized on one core), *pool* = each party has a process pool of every core (2 here; the two "
        "parties share them). openmined-psi 2.0.6 (P-256, RAW set-up, one thread; only its client learns the "
        "intersection) for reference. MB = bytes on the wire, both directions. Every fedsilo run is checked "
        "against a plain set intersection. `~`: extrapolated linearly from the 10× smaller run (the cost is "
        "linear in n).",
        "",
        f"Machine: {machine_line()}; whole benchmark {total:.0f} s.",
        "",
        "| IDs per side | fedsilo 1 proc s | fedsilo pool s | openmined-psi s | fedsilo MB | openmined-psi MB | fedsilo pool µs/ID pair |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in sizes:
        one, a1 = rows[n]["one"]
        pool, a2 = rows[n]["pool"]
        om, a3 = rows[n]["openmined"]
        lines.append(
            f"| {n:,} | {fmt_s(one['seconds'], a1)} | {fmt_s(pool['seconds'], a2)} | {fmt_s(om['seconds'], a3)} | "
            f"{fmt_mb(pool['bytes'], a2)} | {fmt_mb(om['bytes'], a3)} | {('~' if a2 else '')}{pool['seconds'] / n * 1e6:.0f} |"
        )
    lines += [
        "",
        "Per ID and side fedsilo does two X25519 scalar multiplications (~30 µs each through OpenSSL) and one "
        "hash to the curve (~3 µs), and sends 2 × 32 bytes. Across two organizations each party has its own "
        "cores, so the wall time there is about half the *pool* column.",
        "",
        "Re-run: `.venv/bin/python benchmarks/psi.py`",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("psi", text)


if __name__ == "__main__":
    main()
