"""SecureBoost: seconds and bytes per tree, packed vs unpacked Paillier vs plain, in one run.

One guest (labels only) and one host with 10 features, synthetic aligned rows (no PSI), trees
of depth 3 on 32 bins, run by :func:`~fedsilo.protocols.vertical.secureboost.guest_boost` and
:func:`~fedsilo.protocols.vertical.secureboost.host_boost` as threads over the in-process hub.
Every split is the host's, so every node's histogram is encrypted, summed, packed and decrypted:
the worst case for the crypto. Paillier: 2048-bit keys, ``workers`` = the machine's cores (the
guest's encryption and decryption, the host's sums, packing and re-randomization on the crypto
pool). Key generation and the first tree (pool and fixed-base tables warming up) are excluded:
"s/tree" is the mean of the later trees. The machine these run on is shared, so wall seconds
carry other processes' load; the table also gives **CPU seconds per tree on one core**
(``--workers 1``, the default: every party and the crypto in this process, ``time.process_time``),
which load does not inflate, and the ratios use them. The CPU time is split by where it goes:
the guest's encryption of one ciphertext per row (the unavoidable cost), the host's homomorphic
sums, its packing and re-randomization, the guest's decryption, and the rest (encoding, split
finding, messages). Bytes: every message of one tree.

    .venv/bin/python benchmarks/secureboost.py              # 10^4 and 10^5 rows; writes the "secureboost" section
    .venv/bin/python benchmarks/secureboost.py --quick      # 2 000 rows, prints only
    .venv/bin/python benchmarks/secureboost.py --rows 100000 --workers 2 --settings "paillier packed"   # the pool, prints only
    .venv/bin/python benchmarks/secureboost.py --quick --objective squared_error   # regression (y = x·w + noise), prints only
"""
from __future__ import annotations

import argparse
import collections
import functools
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, write_section  # noqa: E402

from fedsilo.protocols.channel import InProcessHub, run_parties  # noqa: E402
from fedsilo.protocols.spec import ModelSection  # noqa: E402
from fedsilo.protocols.vertical.secureboost import BoostConfig, CryptoSettings, guest_boost, host_boost  # noqa: E402
from fedsilo.protocols.vertical.secureboost import cipher as cipher_module  # noqa: E402
from fedsilo.protocols.vertical.secureboost.model import fit_binning  # noqa: E402

FEATURES = 10
DEPTH = 3
BINS = 32
SETTINGS = {
    "plain": ("plain", {}),
    "paillier packed": ("paillier", {"key_bits": 2048, "packed": True}),
    "paillier unpacked": ("paillier", {"key_bits": 2048, "packed": False}),
}
#: where the time goes: the cipher recipe each step calls
STEPS = {"encrypt_rows": "guest encrypts", "bin_sums": "host sums", "seal": "host packs + re-randomizes",
         "open": "guest decrypts"}


class _Clock:
    """CPU seconds (of the calling thread) per cipher recipe and per tree, and wall and process
    CPU time at the end of each tree (the recipes run one at a time: the protocol is sequential
    between guest and host)."""

    def __init__(self) -> None:
        self.steps: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
        self.tree = 0
        self.marks: list[tuple[float, float]] = []

    def wrap(self, cls: type) -> list[tuple[type, str, Any]]:
        saved = []
        for name in STEPS:
            f = getattr(cls, name)
            saved.append((cls, name, f))

            @functools.wraps(f)
            def timed(*a, _f=f, _name=name, **k):
                t = time.thread_time()
                try:
                    return _f(*a, **k)
                finally:
                    self.steps[self.tree][_name] += time.thread_time() - t

            setattr(cls, name, timed)
        return saved


def one_run(setting: str, *, rows: int, trees: int, workers: int, seed: int = 0,
            objective: str = "log_loss") -> dict[str, Any]:
    backend, params = SETTINGS[setting]
    if backend == "paillier":
        params = {**params, "workers": workers}
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, FEATURES))
    w = rng.normal(size=FEATURES)
    if objective == "log_loss":
        y = (rng.random(rows) < 1 / (1 + np.exp(-(x @ w) / 2))).astype(np.float64)
    else:
        y = x @ w + rng.normal(size=rows)
    train, test = np.arange(rows), np.zeros(0, dtype=np.int64)
    cfg = BoostConfig.from_section(ModelSection(kind="secureboost", trees=trees, depth=DEPTH, bins=BINS, objective=objective),
                                   timeout=3600.0)
    crypto = CryptoSettings.from_params(backend, params)
    host_bins = fit_binning(x, train, [f"x{j}" for j in range(FEATURES)], bins=BINS, bounds={}, required=False, source="h")
    guest_bins = fit_binning(np.zeros((rows, 0)), train, [], bins=BINS, bounds={}, required=False, source="g")
    clock = _Clock()
    saved = clock.wrap(cipher_module.PaillierHistograms) + clock.wrap(cipher_module.PlainHistograms)

    def progress(event: dict[str, Any]) -> None:
        clock.marks.append((time.perf_counter(), time.process_time()))
        clock.tree += 1

    hub = InProcessHub("bench", ["g", "h"])
    parties = {
        "g": lambda ch: guest_boost(ch, hosts=["h"], x=np.zeros((rows, 0)), y=y, train_rows=train, test_rows=test,
                                    binning=guest_bins, config=cfg, crypto=crypto, dp=None,
                                    public_rng=np.random.default_rng(1), start_round=2, progress=progress),
        "h": lambda ch: host_boost(ch, guest="g", x=x, train_rows=train, test_rows=test, binning=host_bins, config=cfg,
                                   crypto=crypto, dp=None, ledger=None, dataset=None, rng=np.random.default_rng(2),
                                   start_round=2),
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run_parties(hub, parties)
    finally:
        for cls, name, f in saved:
            setattr(cls, name, f)
    marks = np.array(clock.marks)
    wall, cpu = (np.mean(np.diff(marks, axis=0), axis=0) if trees > 1 else (float("nan"), float("nan")))
    later = [clock.steps[t] for t in range(1, trees)]
    steps = {k: float(np.mean([s[k] for s in later])) for k in STEPS} if later else {}
    # bytes of one tree: the messages of tree 2's rounds (set-up is round 2, tree t starts at 3 + t·(1+depth))
    first, last = 3 + (1 + DEPTH), 3 + 2 * (1 + DEPTH)
    tree_bytes = sum(e.size for e in hub.log if first <= e.round < last)
    return {"wall": float(wall), "cpu": float(cpu), "steps": steps, "bytes": tree_bytes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 000 rows only; print, do not write docs/benchmarks.md")
    ap.add_argument("--rows", type=int, nargs="*", default=None, help="row counts (default 10000 100000)")
    ap.add_argument("--trees", type=int, default=3, help="trees per run (the first is excluded)")
    ap.add_argument("--workers", type=int, default=1, help="crypto pool processes (1: CPU times are exact)")
    ap.add_argument("--settings", nargs="*", choices=list(SETTINGS), default=None,
                    help="only these settings (prints only; plain is always run for the ratios)")
    ap.add_argument("--objective", choices=["log_loss", "squared_error"], default="log_loss",
                    help="the loss (squared_error: a regression target; prints only)")
    args = ap.parse_args()
    chosen = ["plain", *[s for s in (args.settings or SETTINGS) if s != "plain"]]
    grid = [2000] if args.quick else (args.rows or [10_000, 100_000])
    lines = [
        "## SecureBoost: seconds per tree",
        "",
        f"One guest (labels only) and one host with {FEATURES} features, depth {DEPTH}, {BINS} bins, every split the "
        f"host's; Paillier 2048-bit keys, {args.workers} crypto worker(s); mean of trees 2..{args.trees} (the first "
        "warms the tables up). CPU seconds of one core (load-independent; the split by step is of those), and wall "
        "seconds on this shared machine. \"rest\" is encoding, split finding and messages. Bytes: every message "
        "of one tree.",
        "",
        "| rows | setting | CPU s/tree | × plain | × packed | guest encrypts | host sums | host packs + re-randomizes "
        "| guest decrypts | rest | wall s/tree | MB/tree |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rows in grid:
        base: dict[str, float] = {}
        for setting in chosen:
            print(f"{rows} rows, {setting} ...", flush=True)
            r = one_run(setting, rows=rows, trees=args.trees, workers=args.workers, objective=args.objective)
            base.setdefault(setting.split()[-1] if setting != "plain" else "plain", r["cpu"])
            st = r["steps"]
            rest = r["cpu"] - sum(st.values())
            packed = f"{r['cpu'] / base['packed']:.1f}" if "packed" in base else "—"
            row = (f"| {rows:,} | {setting} | {r['cpu']:.2f} | {r['cpu'] / base['plain']:.0f} | {packed} | "
                   + " | ".join(f"{st[k]:.2f}" for k in STEPS) + f" | {rest:.2f} | {r['wall']:.2f} | "
                   f"{r['bytes'] / 1e6:.2f} |")
            print(row, flush=True)
            lines.append(row)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines += [
        "",
        f"Measured on {machine_line()}, load average {load:.1f} at the end (the machine is shared: wall "
        "times include other processes' load). Re-run: `.venv/bin/python benchmarks/secureboost.py`.",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.quick and args.settings is None and args.workers == 1 and args.objective == "log_loss":
        write_section("secureboost", text)


if __name__ == "__main__":
    main()
