"""Transport: loopback gRPC throughput with mutual TLS against plaintext gRPC, and one horizontal
job on the ``processes`` engine (one OS process per party, gRPC + mTLS) against ``threads``.

Throughput: two parties on 127.0.0.1, each a :class:`~fedsilo.silos.transport.PartyServer`
with a :class:`~fedsilo.silos.transport.GrpcChannel`; one sends ``--messages`` envelopes of
``--mib`` MiB (chunked, acknowledged one by one, as every protocol message travels) and the other
receives them; MB/s over the whole transfer, mTLS (throw-away CA, ECDSA P-256) and plaintext
(insecure loopback mode) measured side by side in one run.

Job: the hospitals example (3 silos + aggregator, plain backend, ``--rounds`` rounds, no DP)
through ``run_job`` on both engines; the job's own ``seconds`` (parties listening → last report)
and the wall time including process start-up.

    .venv/bin/python benchmarks/transport.py              # writes the "transport" section of docs/benchmarks.md
    .venv/bin/python benchmarks/transport.py --no-write
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, write_section  # noqa: E402

from fedsilo.silos.certs import init_federation, load_tls  # noqa: E402
from fedsilo.silos.transport import GrpcChannel, PartyServer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
COMMAND = ".venv/bin/python benchmarks/transport.py"


def throughput(*, tls: bool, messages: int, mib: int) -> float:
    """MB/s of ``messages`` payloads of ``mib`` MiB from one party to the other."""
    payload = b"\x5a" * (mib * 1024 * 1024)
    with tempfile.TemporaryDirectory() as d:
        files = {}
        if tls:
            fed = init_federation(Path(d) / "pki", federation="bench", silos=["a", "b"])
            files = {s.name: load_tls(fed.ca_cert, s.cert, s.key) for s in fed.silos}
        servers = {
            n: PartyServer(allow=["a", "b"], tls=files.get(n), party=None if tls else n, insecure=not tls)
            for n in ("a", "b")
        }
        try:
            peers = {n: s.address for n, s in servers.items()}
            a = GrpcChannel(servers["a"], job="bench", peers=peers)
            b = GrpcChannel(servers["b"], job="bench", peers=peers)
            a.connect()
            got: list[int] = []
            receiver = threading.Thread(
                target=lambda: got.extend(len(b.recv("a", "m", round=i, timeout=300)) for i in range(messages))
            )
            start = time.perf_counter()
            receiver.start()
            for i in range(messages):
                a.send("b", "m", payload, round=i)
            receiver.join()
            seconds = time.perf_counter() - start
            a.close()
            b.close()
        finally:
            for s in servers.values():
                s.stop()
    assert got == [len(payload)] * messages
    return messages * len(payload) / 1e6 / seconds


def job(engine: str, rounds: int) -> tuple[float, float]:
    """(job seconds, wall seconds) of the hospitals example on ``engine``."""
    from fedsilo.silos.config import apply_overrides, load_config
    from fedsilo.silos.runner import run_job

    cfg = load_config(ROOT / "examples" / "hospitals_horizontal" / "federation.toml")
    cfg = apply_overrides(cfg, backend="plain", insecure=True, rounds=rounds, epsilon=0)
    with tempfile.TemporaryDirectory() as d:
        start = time.perf_counter()
        res = run_job(cfg, ledger_dir=Path(d), engine=engine)
        wall = time.perf_counter() - start
    return float(res["seconds"]), wall


def big_job(backend: str, *, silos: int, hidden: list[int], rounds: int) -> dict[str, float]:
    """One horizontal job of ``silos`` silos + aggregator on the processes engine (each party its
    own process, gRPC + mTLS), an MLP of about 10^6 parameters, local training included, no DP."""
    from fedsilo.silos.config import parse_config
    from fedsilo.silos.runner import run_job

    cfg = parse_config({
        "federation": {"name": "big", "task": "horizontal", "seed": 1, "round_timeout": 900.0},
        "crypto": {"backend": backend, **({"insecure": True} if backend == "plain" else {})},
        "model": {"kind": "mlp", "hidden": hidden},
        "training": {"rounds": rounds, "batch_size": 32, "local_epochs": 1},
        "data": {"source": "sklearn:breast_cancer", "label": "target",
                 "partition": {"kind": "iid", "silos": silos}},
    }, source="benchmark")
    with tempfile.TemporaryDirectory() as d:
        res = run_job(cfg, ledger_dir=Path(d), engine="processes")
    sent = [b for p, b in res["bytes_sent"].items() if p != "aggregator"]
    return {"seconds": float(res["seconds"]) / rounds, "mb_per_silo": statistics.mean(sent) / 1e6 / rounds}


def parameters(n_features: int, hidden: list[int], n_classes: int = 2) -> int:
    sizes = [n_features, *hidden, n_classes]
    return sum(a * b + b for a, b in zip(sizes, sizes[1:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=20)
    ap.add_argument("--mib", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--big-silos", type=int, default=10)
    ap.add_argument("--big-rounds", type=int, default=2)
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args()

    rows = {"mTLS": [], "plaintext": []}
    for _ in range(args.repeats):  # interleaved, so drift on the machine hits both alike
        rows["mTLS"].append(throughput(tls=True, messages=args.messages, mib=args.mib))
        rows["plaintext"].append(throughput(tls=False, messages=args.messages, mib=args.mib))
    tls_mbs, plain_mbs = statistics.median(rows["mTLS"]), statistics.median(rows["plaintext"])
    jobs = {e: [job(e, args.rounds) for _ in range(args.repeats)] for e in ("threads", "processes")}
    med = {e: (statistics.median(s for s, _ in v), statistics.median(w for _, w in v)) for e, v in jobs.items()}
    hidden = [1000, 970]
    n_params = parameters(30, hidden)  # breast_cancer: 30 features
    big = {b: big_job(b, silos=args.big_silos, hidden=hidden, rounds=args.big_rounds) for b in ("plain", "ckks")}

    md = [
        "## Transport (loopback gRPC, `benchmarks/transport.py`)",
        "",
        machine_line(),
        "",
        f"Throughput: {args.messages} envelopes of {args.mib} MiB from one party to another on 127.0.0.1, "
        f"each chunked and acknowledged before the next (median of {args.repeats}, interleaved).",
        "",
        "| transport | MB/s | runs |",
        "|---|---|---|",
        f"| gRPC + mutual TLS | {tls_mbs:.0f} | {', '.join(f'{v:.0f}' for v in rows['mTLS'])} |",
        f"| gRPC plaintext (insecure loopback) | {plain_mbs:.0f} | {', '.join(f'{v:.0f}' for v in rows['plaintext'])} |",
        f"| ratio mTLS / plaintext | {tls_mbs / plain_mbs:.2f} | |",
        "",
        f"One horizontal job: the hospitals example, 3 silos + aggregator, plain backend, {args.rounds} rounds, "
        f"no DP (median of {args.repeats}). `seconds`: from every party listening to the last report; wall: "
        "including process start-up (each party process imports torch).",
        "",
        "| engine | job seconds | wall seconds |",
        "|---|---|---|",
        f"| threads (in-process) | {med['threads'][0]:.2f} | {med['threads'][1]:.2f} |",
        f"| processes (gRPC + mTLS) | {med['processes'][0]:.2f} | {med['processes'][1]:.2f} |",
        f"| ratio processes / threads | {med['processes'][0] / med['threads'][0]:.2f} | "
        f"{med['processes'][1] / med['threads'][1]:.2f} |",
        "",
        f"A {n_params:,}-parameter horizontal job (an MLP {hidden} on breast_cancer split iid over "
        f"{args.big_silos} silos, batch 32, 1 local epoch, no DP) with {args.big_silos} silo agents and the "
        f"aggregator, each its own process over gRPC + mTLS, local training included; seconds per round over "
        f"{args.big_rounds} rounds (the first round includes each process's first torch use).",
        "",
        "| backend | s / round | MB sent / silo / round |",
        "|---|---|---|",
        *(f"| {b} | {v['seconds']:.2f} | {v['mb_per_silo']:.1f} |" for b, v in big.items()),
        f"| ratio ckks / plain | {big['ckks']['seconds'] / big['plain']['seconds']:.2f} | "
        f"{big['ckks']['mb_per_silo'] / big['plain']['mb_per_silo']:.1f} |",
        "",
        f"Reproduce: `{COMMAND}`.",
    ]
    text = "\n".join(md)
    print(text)
    if not args.no_write:
        write_section("transport", text)


if __name__ == "__main__":
    main()
