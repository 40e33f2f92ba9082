"""PSI for vertical alignment: seconds, bytes, memory and the X25519 limit ratio, 10^4 to 10^7 IDs.

Both sides have ``n`` IDs with 50 % overlap. fedsilo's protocol (ECDH over X25519,
:mod:`fedsilo.protocols.psi`) runs in two set-ups:

- *in-process* (:func:`~fedsilo.protocols.psi.psi_in_process`, what ``fedsilo psi`` does): both
  parties as threads of one process over the in-process hub, sharing one process pool of all
  the cores (the X25519 call holds the GIL; below 20,000 IDs no pool is started);
- *processes* (10^6 and up): each party in its own OS process over gRPC with mutual TLS
  (:class:`~fedsilo.silos.engines.ProcessesEngine`), reading its IDs from a CSV file in chunks
  (:func:`fedsilo.cli.psi.read_id_csv`) and computing in its own process (one core each of the
  two). The peak resident memory of each party (its process tree, PSS summed, sampled every
  0.2 s) is measured there.

The **X25519 limit**: the bare scalar multiplications per second of ``cryptography``'s X25519
(``exchange`` on public keys built beforehand, i.e. nothing but the library call) measured on
every core at once, before and after the PSI runs; the faster of the two is used. A PSI of n × m
IDs needs 2(n + m) scalar multiplications, so its limit is 2(n + m) / rate and the *ratio* is
the PSI's wall time over that (hashing to the curve, messages, sorting and matching are the
overhead). Every run is checked against a plain intersection (the same IDs on both sides, in
ID order). openmined-psi 2.0.6 (P-256, RAW set-up, one thread; only its client learns the
intersection) runs at 10^4 and 10^5 for reference. Sizes above ``--max`` are not run.

    .venv/bin/python benchmarks/psi.py                   # up to 10^7 (~20 min on 2 cores)
    .venv/bin/python benchmarks/psi.py --max 1000000     # up to 10^6
    .venv/bin/python benchmarks/psi.py --max 100000 --no-write

``--compare-with DIR`` runs another fedsilo tree (``DIR/fedsilo``, e.g. from
``git archive REV fedsilo | tar -x -C DIR``) and this one side by side, alternating run by run
under the same load, and prints both trees' wall and CPU ratios (``--sizes`` picks the sizes;
nothing is written):

    .venv/bin/python benchmarks/psi.py --compare-with /tmp/before --sizes 200000,1000000
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, write_section  # noqa: E402

from fedsilo.protocols.psi import IdTable, psi_executor, psi_in_process, psi_party  # noqa: E402

SIZES = [10_000, 100_000, 1_000_000, 10_000_000]
COLUMN = "id"


# ------------------------------------------------------------------------------ the limit


def _bare_exchanges(count: int) -> tuple[float, float]:
    """Seconds of ``count`` bare X25519 exchanges in this process, and the wall-clock end."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    sk = X25519PrivateKey.generate()
    pubs = [X25519PrivateKey.generate().public_key() for _ in range(1000)] * (count // 1000)
    exchange = sk.exchange
    start, cpu = time.perf_counter(), time.process_time()
    for pub in pubs:
        exchange(pub)
    return time.perf_counter() - start, time.process_time() - cpu


def x25519_rate(count: int = 40_000) -> tuple[float, float]:
    """Bare scalar multiplications per second on every core at once (one process per core,
    summed over them), and CPU seconds per multiplication."""
    cores = os.cpu_count() or 1
    with psi_executor(cores) as pool:  # the forkserver PSI's pools use too (and its preload)
        assert pool is not None
        list(pool.map(_bare_exchanges, [1000] * cores))  # warm up: imports, key set-up
        results = list(pool.map(_bare_exchanges, [count] * cores))
    return sum(count / s for s, _ in results), sum(c for _, c in results) / (count * cores)


def tree_cpu(root: int | None = None) -> float:
    """CPU seconds (user + system, with reaped children) of a process and its live descendants."""
    root = os.getpid() if root is None else root
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in [root, *_descendants(root)]:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return total / tick


# ------------------------------------------------------------------------------ data


def id_arrays(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two sets of n distinct integer IDs below 10^12, n/2 of them shared."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(10**12, size=n + n // 2, replace=False)
    return ids[:n], ids[n // 2 :]


def expected_intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The plain intersection as strings in the agreed order (sorted as strings)."""
    return np.sort(np.intersect1d(a, b).astype(str))


def write_ids(path: Path, ids: np.ndarray, rows: int = 1_000_000) -> None:
    with path.open("w") as fh:
        fh.write(COLUMN + "\n")
        for a in range(0, ids.size, rows):
            fh.write("\n".join(ids[a : a + rows].astype(str).tolist()) + "\n")


# ------------------------------------------------------------------------------ runs


def fedsilo_in_process(n: int, workers: int | None) -> dict[str, Any]:
    a, b = id_arrays(n)
    left, right = IdTable.from_ids(a.astype(str).tolist()), IdTable.from_ids(b.astype(str).tolist())
    cpu = tree_cpu()
    run = psi_in_process(left, right, workers=workers)
    cpu = tree_cpu() - cpu  # the pools' workers were reaped by the forkserver: in its cutime
    want = expected_intersection(a, b)
    got_l, got_r = left.values[run.left.positions], right.values[run.right.positions]
    assert run.left.size == run.right.size == want.size == n // 2
    assert (got_l == want.astype(got_l.dtype)).all() and (got_r == want.astype(got_r.dtype)).all()
    return {"seconds": run.seconds, "bytes": float(sum(run.bytes_sent.values())), "cpu": cpu}


class _TreeMemory:
    """Peak PSS (bytes) of this process and all its descendants, sampled on a thread."""

    def __init__(self, every: float = 0.2) -> None:
        self.every, self.peak, self.peak_main = every, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            pids = _descendants(me)
            sizes = {p: _pss(p) for p in [me, *pids]}
            self.peak = max(self.peak, sum(sizes.values()))
            self.peak_main = max(self.peak_main, sizes[me])
            self._stop.wait(self.every)


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _file_party(channel: Any, *, peer: str, path: str, workers: int | None) -> dict[str, Any]:
    """One party of the processes set-up: read its CSV in chunks, run PSI, report memory."""
    from fedsilo.cli.psi import read_id_csv
    from fedsilo.privacy.mechanisms import secure_rng

    with _TreeMemory() as mem:
        start, cpu = time.perf_counter(), tree_cpu()
        table = read_id_csv(Path(path), COLUMN)
        read = time.perf_counter() - start
        with psi_executor(workers) as ex:
            res = psi_party(channel, peer=peer, ids=table, rng=secure_rng(), executor=ex)
            cpu = tree_cpu() - cpu  # with the pool still alive
        seconds = time.perf_counter() - start
    return {"positions": res.positions, "size": res.size, "seconds": seconds, "read": read, "cpu": cpu,
            "pss_peak": mem.peak, "pss_main_peak": mem.peak_main}


def fedsilo_processes(n: int, workers: int | None, tmp: Path) -> dict[str, Any]:
    from fedsilo.silos.engines import ProcessesEngine

    a, b = id_arrays(n)
    paths = {"left": tmp / f"left-{n}.csv", "right": tmp / f"right-{n}.csv"}
    write_ids(paths["left"], a)
    write_ids(paths["right"], b)
    parties = {
        "left": functools.partial(_file_party, peer="right", path=str(paths["left"]), workers=workers),
        "right": functools.partial(_file_party, peer="left", path=str(paths["right"]), workers=workers),
    }
    run = ProcessesEngine(startup_timeout=300.0).run("psi-bench", parties)
    want = expected_intersection(a, b)
    left, right = run.reports["left"], run.reports["right"]
    assert left["size"] == right["size"] == want.size == n // 2
    got_l = a[left["positions"]].astype(str)
    got_r = b[right["positions"]].astype(str)
    assert (got_l == want).all() and (got_r == want).all()
    for p in paths.values():
        p.unlink()
    return {
        "seconds": run.seconds,
        "bytes": float(sum(run.bytes_sent.values())),
        "pss": max(left["pss_peak"], right["pss_peak"]),
        "pss_main": max(left["pss_main_peak"], right["pss_main_peak"]),
        "read": max(left["read"], right["read"]),
        "cpu": left["cpu"] + right["cpu"],
    }


def openmined_psi(n: int) -> dict[str, float]:
    import private_set_intersection.python as psi

    a, b = (list(x.astype(str)) for x in id_arrays(n))
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


# ------------------------------------------------------------------------------ report


def fmt_s(v: float | None) -> str:
    return "–" if v is None else (f"{v:.2f}" if v < 10 else f"{v:.1f}")


def _compare(other: Path, sizes: list[int]) -> None:
    """Another fedsilo tree and this one, side by side: each run a subprocess, alternating."""
    if not (other / "fedsilo" / "__init__.py").is_file():
        raise SystemExit(f"--compare-with {other}: no fedsilo package in that directory")
    trees = {"other": str(other.resolve()), "this": str(Path(__file__).resolve().parent.parent)}
    rates = [x25519_rate()]
    results = []
    for n in sizes:
        for setup in ("pool", "procs"):
            for label, tree in trees.items():
                load = os.getloadavg()[0]
                out = subprocess.run(
                    [sys.executable, __file__, "--child", str(n), setup], env=dict(os.environ, PYTHONPATH=tree),
                    cwd=tempfile.gettempdir(), capture_output=True, text=True, check=False,
                )
                line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
                if line is None:
                    raise SystemExit(f"{label} tree, n={n} {setup} failed:\n{out.stderr[-3000:]}")
                r = {**json.loads(line[7:]), "n": n, "setup": setup, "tree": label, "load": load}
                results.append(r)
                print(f"n={n:>9,} {setup:>5} {label:>5}: {r['seconds']:.1f} s wall, {r['cpu']:.1f} s CPU, "
                      f"load {load:.1f} ({r['module']})", flush=True)
    rates.append(x25519_rate())
    rate, cpu_op = max(r for r, _ in rates), min(c for _, c in rates)
    print(f"X25519 bare rate {rates[0][0]:,.0f} and {rates[1][0]:,.0f}/s (using {rate:,.0f}); {cpu_op * 1e6:.1f} µs CPU")
    print("| IDs per side | set-up | tree | s | wall ratio | CPU ratio | load at start |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['n']:,} | {r['setup']} | {r['tree']} | {r['seconds']:.1f} | {r['seconds'] / (4 * r['n'] / rate):.2f} | "
              f"{r['cpu'] / (4 * r['n'] * cpu_op):.2f} | {r['load']:.1f} |")


def _child(n: int, setup: str) -> None:
    import fedsilo

    if setup == "pool":
        r = fedsilo_in_process(n, None)
    else:
        with tempfile.TemporaryDirectory(prefix="fedsilo-psi-bench-") as tmp:
            r = fedsilo_processes(n, 1, Path(tmp))
    print("RESULT " + json.dumps({**r, "module": str(Path(fedsilo.__file__).parent)}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max", type=int, default=10_000_000, help="largest n to run")
    ap.add_argument("--sizes", help="comma-separated n per side (default: 10^4, 10^5, 10^6, 10^7 up to --max)")
    ap.add_argument("--no-write", action="store_true", help="print only, do not touch docs/benchmarks.md")
    ap.add_argument("--compare-with", type=Path, metavar="DIR", help="run DIR/fedsilo and this tree side by side")
    ap.add_argument("--child", nargs=2, metavar=("N", "SETUP"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else [s for s in SIZES if s <= args.max]
    if args.child:
        return _child(int(args.child[0]), args.child[1])
    if args.compare_with:
        return _compare(args.compare_with, sizes)
    t0 = time.perf_counter()
    load_before = os.getloadavg()
    rates = [x25519_rate()]
    print(f"X25519 bare rate on {os.cpu_count()} cores: {rates[0][0]:,.0f}/s, {rates[0][1] * 1e6:.1f} µs CPU each", flush=True)
    rows: dict[int, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="fedsilo-psi-bench-") as tmp:
        for n in sizes:
            rows[n] = {}
            plan: list[tuple[str, Any]] = []
            if n < 10_000_000:  # the in-process hub keeps a log of every message
                plan.append(("pool", lambda n=n: fedsilo_in_process(n, None)))
            if n <= 100_000:
                plan.append(("openmined", lambda n=n: openmined_psi(n)))
            if n >= 1_000_000:
                plan.append(("procs", lambda n=n: fedsilo_processes(n, 1, Path(tmp))))
            for label, fn in plan:
                rows[n][label] = fn()
                r = rows[n][label]
                extra = f", PSS/party {r['pss'] / 1e6:.0f} MB (main {r['pss_main'] / 1e6:.0f})" if "pss" in r else ""
                print(f"n={n:>10,} {label:>9}: {r['seconds']:.2f} s, {r['bytes'] / 1e6:.1f} MB{extra}", flush=True)
    rates.append(x25519_rate())
    rate, cpu_op = max(r for r, _ in rates), min(c for _, c in rates)
    print(f"X25519 bare rate after: {rates[1][0]:,.0f}/s; using {rate:,.0f}/s and {cpu_op * 1e6:.1f} µs CPU", flush=True)
    print(json.dumps({"rates": rates, "rows": {n: {k: {a: b for a, b in v.items()} for k, v in r.items()} for n, r in rows.items()}}))
    total = time.perf_counter() - t0
    load_after = os.getloadavg()

    def ratio(n: int, label: str) -> str:
        r = rows[n].get(label)
        return "–" if r is None else f"{r['seconds'] / (4 * n / rate):.2f}"

    def cpu_ratio(n: int, label: str) -> str:
        r = rows[n].get(label)
        return "–" if r is None or "cpu" not in r else f"{r['cpu'] / (4 * n * cpu_op):.2f}"

    lines = [
        "## PSI (vertical alignment)",
        "",
        "Both sides hold n IDs, 50 % shared. fedsilo: streamed ECDH PSI over X25519 (`fedsilo.protocols.psi`). "
        "*in-process*: both parties as threads of one process over the in-process hub, exactly the messages two "
        "silos exchange, both parties sharing one process pool of all the cores (two here; below 20,000 IDs none, "
        "and the two parties' curve work shares one GIL). *processes*: each party its own OS process over gRPC with "
        "mutual TLS, reading its IDs from a CSV file in chunks and computing in that process (one core each); "
        "*PSS/party* = the larger party's peak resident memory (proportional set size summed over its process "
        "tree, sampled every 0.2 s). "
        "*limit* = 2(n + m) X25519 scalar multiplications at the bare rate of `cryptography`'s X25519 on every "
        f"core at once, measured in this run before and after ({rates[0][0]:,.0f} and {rates[1][0]:,.0f}/s; the faster "
        "is used); *ratio* = seconds / limit; *CPU ratio* = CPU seconds of the run (every process of both parties) "
        "over 2(n + m) times the CPU seconds of one bare multiplication (the lesser of the two measurements): the "
        "overhead independent of how busy the shared machine is. openmined-psi 2.0.6 (P-256, RAW set-up, one thread; only its "
        "client learns the intersection) for reference. MB = bytes on the wire, both directions. Every fedsilo "
        "run is checked against a plain intersection (same IDs, agreed order, on both sides).",
        "",
        f"Machine: {machine_line()}; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
        f"(the machine is shared); whole benchmark {total:.0f} s.",
        "",
        "| IDs per side | limit s | in-process s | ratio | CPU ratio | processes s | ratio | CPU ratio | PSS/party MB | "
        "fedsilo MB | openmined-psi s | openmined-psi MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, r in rows.items():
        pool, procs, om = (r.get(k) for k in ("pool", "procs", "openmined"))
        wire = (procs or pool or {}).get("bytes")
        pss = "–" if procs is None else f"{procs['pss'] / 1e6:.0f}"
        wire_s = "–" if wire is None else f"{wire / 1e6:.1f}"
        om_mb = "–" if om is None else f"{om['bytes'] / 1e6:.1f}"
        lines.append(
            f"| {n:,} | {fmt_s(4 * n / rate)} | {fmt_s(pool and pool['seconds'])} | {ratio(n, 'pool')} | "
            f"{cpu_ratio(n, 'pool')} | {fmt_s(procs and procs['seconds'])} | {ratio(n, 'procs')} | "
            f"{cpu_ratio(n, 'procs')} | {pss} | {wire_s} | {fmt_s(om and om['seconds'])} | {om_mb} |"
        )
    lines += [
        "",
        "Per ID and side fedsilo does two X25519 scalar multiplications and one hash to the curve "
        "(try-and-increment, ~2 SHA-512 and Jacobi symbols), and sends 32 + 16 bytes. Before the streamed "
        "version (2026-11-25, same machine): 10^5 pool 8.26 s, 10^6 pool 89.3 s (1.6× the limit at 2·10^5), "
        "64 bytes per ID, 10^7 never run. Across two organizations each party has its own cores, so the wall "
        "time there is about half the *pool* column.",
        "",
        "Overhead removed on 2026-12-02 (hash to the curve in `gmpy2.mpz` throughout, received points made "
        "OpenSSL keys through `cryptography`'s Rust constructor without the per-call import and backend check, "
        "one process pool shared by both in-process parties). Profile: the main process (messages, codec, "
        "matching, digests) ~1.5 % of the CPU, the pool's pickling ~0.6 %, the rest in the workers. Side by "
        "side in one run (`--compare-with` the previous commit, `--sizes 200000`), 2·10^5 IDs per side, on a "
        "machine at load average 16–19 (bare X25519 rate 10,996/s, 37.0 µs CPU): in-process 146.8 → 130.4 s, "
        "ratio 2.02 → 1.79, CPU ratio 1.34 → 1.23; processes 122.7 → 101.0 s, ratio 1.69 → 1.39, CPU ratio "
        "1.53 → 1.26. The worker functions alone (hash + mask + remask per ID over two bare "
        "multiplications, best of 5 and of 9 repetitions): 1.16–1.22 → 1.11–1.15. At 10^6 in-process the pair "
        "(`--sizes 1000000`) ran under unequal load and says nothing: before 241.3 s, 159.8 s CPU at load 2.2; "
        "after 495.9 s, 180.7 s CPU at load 8–14 (CPU seconds grow with contention on this machine).",
        "",
        "Re-run: `.venv/bin/python benchmarks/psi.py` (`--max 1000000` skips 10^7)",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("psi", text)


if __name__ == "__main__":
    main()
