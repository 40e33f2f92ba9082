"""Hetero logistic regression: seconds per epoch vs rows and features, per crypto backend, and
the packed CKKS product against the per-column one it replaced.

One epoch of :mod:`fedsilo.protocols.vertical.lr` (arbiter topology: guest + one host +
arbiter; features split evenly between guest and host; batch 256; encrypted Taylor loss on)
on synthetic standardized data, all parties as threads of one process over the in-process hub.
Key set-up (CKKS Galois keys, Paillier key generation) is excluded and reported separately.

Two tables:

* **before / after** (10^4 rows x 10 and x 100 features, both measured in full in this run):
  ``before`` is CKKS with the residuals as plain vectors and ``X_p^T d`` by per-column
  ``matmul_plain`` (a backend whose ``matmul_repeat`` is 1: exactly the protocol's path before
  ``matmul_repeated``), ``after`` the packed layout and ``matmul_repeated``; plus ``after`` with
  ``[training] fill_slots = true`` (the batch whose repeated residuals fill one ciphertext's 4,096
  slots: 512 rows at 10 features, 64 at 100) and at larger batches (``--batches``, default
  2,048), training settings the user chooses (they change the steps per epoch, not the DP
  accounting: docs/vertical.md).
* **grid** (10^3..10^5 rows): plain, CKKS (packed) and Paillier. The cost of an epoch is linear
  in the number of steps (rows / batch) — every step has the same shape — so where a full epoch
  would take minutes it is measured on fewer rows and scaled linearly; such cells are marked "~".
  Ratios are to ``plain`` measured in the same run.

    .venv/bin/python benchmarks/vertical_lr.py            # writes the "vertical_lr" section
    .venv/bin/python benchmarks/vertical_lr.py --quick    # before/after at 10^4 rows only, prints only
    .venv/bin/python benchmarks/vertical_lr.py --quick --features 10   # the 10-feature row only
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, write_section  # noqa: E402

from fedsilo.crypto.base import CryptoBackend  # noqa: E402
from fedsilo.crypto.ckks import CKKSBackend  # noqa: E402
from fedsilo.crypto.registry import get_backend  # noqa: E402
from fedsilo.protocols.channel import InProcessHub, run_parties  # noqa: E402
from fedsilo.protocols.spec import TrainingSection  # noqa: E402
from fedsilo.protocols.vertical import Topology, TrainingConfig, arbiter_train, guest_train, host_train  # noqa: E402
from fedsilo.protocols.vertical.job import backend_params_for  # noqa: E402
from fedsilo.protocols.vertical.keys import GradSlots  # noqa: E402

BATCH = 256
BACKENDS: dict[str, dict[str, Any]] = {
    "plain": {},
    "ckks": {},  # profile "matmul": N = 8192, depth 2, Galois keys
    "paillier": {"key_bits": 2048, "workers": os.cpu_count() or 1},  # gradients BatchCrypt-packed
}
#: Most rows measured per (backend, features) in the grid; larger cells are scaled linearly in the steps.
CAP = {
    ("plain", 10): 10**6, ("plain", 100): 10**6,
    ("ckks", 10): 10_000, ("ckks", 100): 10_000,
    ("paillier", 10): 1_024, ("paillier", 100): 1_024,
}


class PerColumnCKKS(CKKSBackend):
    """"Before": CKKS with the residuals as plain vectors, so the protocol's ``X_p^T d`` is one
    per-column ``matmul_plain`` (``matmul_repeated`` with ``repeat = 1`` is exactly that)."""

    def matmul_repeat(self, *, rows: int, columns: int) -> int:
        return 1


def build(name: str, params: dict[str, Any]) -> CryptoBackend:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_backend(name, **backend_params_for(name, params))


def epoch(backend: CryptoBackend, *, rows: int, features: int, batch: int | str = BATCH, seed: int = 0,
          batchcrypt: bool = True) -> dict[str, float]:
    """Seconds and wire bytes of one epoch (after key set-up), and key set-up seconds;
    ``batch = "fill"``: ``[training] fill_slots = true``; ``batchcrypt``: the protocol's
    ``TrainingConfig.batchcrypt`` (Paillier's packed gradients)."""
    rng = np.random.default_rng(seed)
    fg, fh = features - features // 2, features // 2
    xg, xh = rng.normal(size=(rows, fg)), rng.normal(size=(rows, fh))
    w = rng.normal(size=features) / math.sqrt(features)
    y = (rng.random(rows) < 1 / (1 + np.exp(-(np.hstack([xg, xh]) @ w)))).astype(float)
    top = Topology(guest="g", hosts=("h",), arbiter="a")
    section = TrainingSection(rounds=1, lr=0.3, **({"fill_slots": True} if batch == "fill" else {"batch_size": batch}))
    cfg = dataclasses.replace(TrainingConfig.from_sections(section, timeout=3600), batchcrypt=batchcrypt)
    hub = InProcessHub("bench", ["g", "h", "a"])
    marks: dict[str, Any] = {}
    cpu: dict[str, float] = {}  # per party: thread CPU seconds from its first EPOCH message to its end
    start = time.perf_counter()

    def timed(name: str, fn: Any) -> Any:
        """``fn`` with its party's CPU clock started at its first EPOCH message (sent or received)."""
        def run(ch: Any) -> Any:
            send, recv = ch.send, ch.recv

            def mark() -> None:
                cpu.setdefault(name, -time.thread_time())
                if name == "g" and "t0" not in marks:
                    marks["t0"] = time.perf_counter()
                    marks["b0"] = sum(hub.bytes_sent().values())

            def timed_send(recipient: str, kind: str, payload: Any, *, round: int) -> int:
                if kind == "vlr/epoch":
                    mark()
                return send(recipient, kind, payload, round=round)

            def timed_recv(sender: str, kind: str, *, round: int, timeout: float) -> Any:
                out = recv(sender, kind, round=round, timeout=timeout)
                if kind == "vlr/epoch":
                    mark()
                return out

            ch.send, ch.recv = timed_send, timed_recv
            out = fn(ch)
            cpu[name] += time.thread_time()
            return out
        return run

    def guest(ch: Any) -> Any:
        out = guest_train(ch, topology=top, x=xg, y=y, train_rows=np.arange(rows), eval_rows=np.arange(0),
                          backend=backend, config=cfg, rng=np.random.default_rng(1),
                          batch_rng=np.random.default_rng(seed))
        marks["t1"] = time.perf_counter()
        marks["loss"] = out.history[-1]["loss"]
        return out

    run_parties(hub, {
        "g": timed("g", guest),
        "h": timed("h", lambda ch: host_train(ch, topology=top, x=xh, train_rows=np.arange(rows), eval_rows=np.arange(0),
                                              backend=backend, config=cfg, rng=np.random.default_rng(2))),
        "a": timed("a", lambda ch: arbiter_train(ch, topology=top, backend=backend, config=cfg)),
    })
    return {
        "seconds": marks["t1"] - marks["t0"],
        "cpu": sum(cpu.values()),  # the main process's threads (a Paillier pool's workers are not counted)
        "bytes": float(sum(hub.bytes_sent().values()) - marks["b0"]),
        "setup": marks["t0"] - start,
        "loss": marks["loss"],
    }


def grad_ciphertexts(backend: CryptoBackend, features: int) -> tuple[int, int]:
    """Gradient ciphertexts per step (guest + host) at batch ``BATCH``: one per coordinate, and
    BatchCrypt-packed (:class:`fedsilo.protocols.vertical.keys.GradSlots`)."""
    top = Topology(guest="g", hosts=("h",), arbiter="a")
    dims = {"g": features - features // 2 + 1, "h": features // 2}
    packed = 0
    for p in dims:
        slots = GradSlots.for_step(backend, enabled=True, rows=BATCH, owner=p, topology=top, dims=dims, dp=False)
        packed += slots.count if slots is not None else dims[p]
    return sum(dims.values()), packed


def before_after(*, rows: int, features: int, batches: list[int], repeats: int) -> dict[str, Any]:
    """Seconds per epoch: per-column (before), packed (after), packed with ``fill_slots`` and at
    each of ``batches``;
    each the fastest of ``repeats`` runs, the variants alternating (the machine is shared); and
    the epoch's training loss against ``plain`` on the same batches (the masks cancel exactly)."""
    ckks = build("ckks", {})
    before = PerColumnCKKS(**ckks.params())
    dims = features - features // 2 + 1  # the guest's gradient: its features and the intercept
    fill = ckks.matmul_fill_rows(columns=dims)
    variants: dict[str, tuple[CryptoBackend, int | str]] = {
        "before": (before, BATCH), "after": (ckks, BATCH), "fill_slots": (ckks, "fill"),
        **{f"batch {b:,}": (ckks, b) for b in batches},
    }
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in variants}
    for _ in range(repeats):
        for key, (backend, batch) in variants.items():
            runs[key].append(epoch(backend, rows=rows, features=features, batch=batch))
    best = {k: min(v, key=lambda r: r["seconds"]) for k, v in runs.items()}
    plain = epoch(build("plain", {}), rows=rows, features=features)["loss"]
    return {
        "runs": best,
        "fill": fill,
        "repeat": {k: backend.matmul_repeat(rows=fill if batch == "fill" else batch, columns=dims)
                   for k, (backend, batch) in variants.items()},
        "loss_gap": {k: abs(best[k]["loss"] - plain) for k in ("before", "after")},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the before/after table only, one run each, print only")
    ap.add_argument("--batches", type=int, nargs="*", default=[2048],
                    help="larger batches measured on the packed path, besides fill_slots (default 2048)")
    ap.add_argument("--features", type=int, nargs="*", default=[10, 100],
                    help="features of the before/after table (default 10 100)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per before/after cell, the fastest kept (default 1)")
    ap.add_argument("--rows", type=int, default=10_000, help="rows of the before/after table (default 10^4)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    ba_rows, feat_grid = args.rows, [10, 100]
    ba: dict[int, dict[str, Any]] = {}
    for features in args.features:
        ba[features] = r = before_after(rows=ba_rows, features=features, batches=args.batches, repeats=args.repeats)
        t_before = r["runs"]["before"]["seconds"]
        print(f"before/after rows={ba_rows:,} features={features}: "
              + ", ".join(f"{k} {v['seconds']:.2f} s ({t_before / v['seconds']:.1f}x)" for k, v in r["runs"].items())
              + f"; loss vs plain: before {r['loss_gap']['before']:.1e}, after {r['loss_gap']['after']:.1e}", flush=True)

    rows_grid = [1_000, 10_000, 100_000]
    res: dict[tuple[str, int, int], tuple[dict[str, float], bool]] = {}
    setup: dict[str, float] = {}
    pai: dict[int, dict[str, Any]] = {}
    if not args.quick:
        for features in feat_grid:
            for name, params in BACKENDS.items():
                backend = build(name, params)
                cache: dict[int, dict[str, float]] = {}
                for rows in rows_grid:
                    measured_rows = min(rows, CAP[(name, features)])
                    if measured_rows not in cache:
                        cache[measured_rows] = epoch(backend, rows=measured_rows, features=features)
                        setup[name] = cache[measured_rows]["setup"]
                        if name == "paillier":  # the same epoch with one gradient ciphertext per coordinate
                            pai[features] = {"rows": measured_rows, "packed": cache[measured_rows],
                                             "unpacked": epoch(backend, rows=measured_rows, features=features,
                                                               batchcrypt=False),
                                             "grad_cts": grad_ciphertexts(backend, features)}
                    base = cache[measured_rows]
                    scale = math.ceil(rows / BATCH) / math.ceil(measured_rows / BATCH)
                    approx = measured_rows != rows
                    res[(name, rows, features)] = ({"seconds": base["seconds"] * scale, "bytes": base["bytes"] * scale}, approx)
                    r = res[(name, rows, features)][0]
                    print(f"{name:>8} rows={rows:>7,} features={features:>3}: {'~' if approx else ''}{r['seconds']:.2f} s/epoch, "
                          f"{r['bytes'] / 1e6:.1f} MB", flush=True)
    total = time.perf_counter() - t0

    def cell(name: str, rows: int, features: int, key: str) -> str:
        r, approx = res[(name, rows, features)]
        v = r[key] / (1e6 if key == "bytes" else 1.0)
        s = ("~" if approx else "") + (f"{v:.2f}" if v < 10 else f"{v:,.0f}")
        if name == "plain":
            return s
        p = res[("plain", rows, features)][0][key]
        return f"{s} ({r[key] / p:,.0f}×)" if p > 0 else s

    extra = [k for k in next(iter(ba.values()))["runs"] if k not in ("before", "after")]
    lines = [
        "## Vertical logistic regression: seconds per epoch",
        "",
        f"One epoch of hetero LR (guest + 1 host + arbiter, features split evenly, batch {BATCH}, encrypted Taylor "
        "loss on, no DP) on synthetic data, all parties as threads of one process (they share the 2 cores, as "
        "they would not across organizations). `ckks`: profile `matmul` (N = 8192, 4,096 slots, depth 2, Galois "
        "keys). "
        f"Machine: {machine_line()}; whole benchmark {total:.0f} s; 1-minute load average {load0:.1f} at the start "
        f"and {os.getloadavg()[0]:.1f} at the end (other jobs shared the 2 cores: wall times are inflated, the CPU "
        "columns are the party threads' own CPU seconds).",
        "",
        "### CKKS: the packed product against the per-column one (issue 16, item 3)",
        "",
        f"{ba_rows:,} rows, measured in full, in this run. **Before**: the residuals encrypted as plain vectors and "
        "each party's `X_pᵀd` by per-column `matmul_plain` (one plaintext product, a rotate-and-sum over the "
        "4,096-slot ring and a mask per gradient coordinate). **After**: each residual value repeated over "
        "`repeat` slots (`matmul_repeat`) and `X_pᵀd` by `matmul_repeated` (one product per ciphertext, "
        "log2(batch) rotations, one mask). The last columns are the packed path at larger batches, with "
        "fewer steps per epoch: `[training] fill_slots = true` (the batch that fills one ciphertext's 4,096 slots: "
        "512 rows × `repeat` 8 at 10 features, 64 × 64 at 100) and a fixed larger batch, training settings rather "
        "than a change of the protocol (the DP accounting does not depend on them, docs/vertical.md). Their "
        f"speed-up is against `before` at batch {BATCH}. Same seeds and, per batch size, the same "
        "batches in every column; `loss vs plain`: |CKKS − plain| of the epoch's training loss at batch "
        f"{BATCH} (the masks cancel exactly; each step's CKKS error is at most ~1e-5).",
        "",
        "| rows | features | repeat | before s | after s (speed-up) | "
        + "".join(f"after, {k} s (speed-up) | " for k in extra)
        + "CPU s: before / after / fill_slots (fill speed-up) | before MB | after MB | loss vs plain: before / after |",
        "|---|---|---|---|---|" + "---|" * len(extra) + "---|---|---|---|",
    ]
    for features in args.features:
        r = ba[features]
        b, a = r["runs"]["before"], r["runs"]["after"]
        lines.append(
            f"| {ba_rows:,} | {features} | {r['repeat']['after']} | {b['seconds']:.2f} | {a['seconds']:.2f} "
            f"({b['seconds'] / a['seconds']:.1f}×) | "
            + "".join(f"{r['runs'][k]['seconds']:.2f} ({b['seconds'] / r['runs'][k]['seconds']:.1f}×"
                      + (f", batch {r['fill']}" if k == "fill_slots" else "") + ") | " for k in extra)
            + f"{b['cpu']:.2f} / {a['cpu']:.2f} / {r['runs']['fill_slots']['cpu']:.2f} "
            f"({b['cpu'] / r['runs']['fill_slots']['cpu']:.1f}×) | "
            + f"{b['bytes'] / 1e6:.1f} | {a['bytes'] / 1e6:.1f} | "
            f"{r['loss_gap']['before']:.1e} / {r['loss_gap']['after']:.1e} |"
        )
    if not args.quick:
        lines += [
            "",
            "### Every backend",
            "",
            "`ckks`: the packed path; `paillier`: 2048-bit, BatchCrypt-packed gradients, a process pool of every "
            "core. Ratios to "
            "`plain` in the same run. `~`: measured on fewer rows and scaled linearly in the number of steps "
            "(every step has the same shape). Key set-up, excluded: "
            + ", ".join(f"{k} {v:.1f} s" for k, v in setup.items()) + ".",
            "",
            "| rows | features | plain s | ckks s (× plain) | paillier s (× plain) | plain MB | ckks MB (×) | paillier MB (×) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for features in feat_grid:
            for rows in rows_grid:
                lines.append(
                    f"| {rows:,} | {features} | {cell('plain', rows, features, 'seconds')} | {cell('ckks', rows, features, 'seconds')} | "
                    f"{cell('paillier', rows, features, 'seconds')} | {cell('plain', rows, features, 'bytes')} | "
                    f"{cell('ckks', rows, features, 'bytes')} | {cell('paillier', rows, features, 'bytes')} |"
                )
    if pai:
        lines += [
            "",
            "### Paillier: BatchCrypt-packed gradients (issue 16, item 3)",
            "",
            "The same epoch (2048-bit keys, batch 256, a process pool of every core) with each party's masked "
            "gradient sent to the arbiter as one ciphertext per coordinate (`unpacked`, "
            "`TrainingConfig.batchcrypt = false`, the path before) and BatchCrypt-packed (`packed`: ~115-bit "
            "slots, 17 coordinates per ciphertext, docs/vertical.md), measured side by side in this run. Seconds "
            "are wall time (the pool's workers are other processes); per step = per epoch / steps. Same loss on "
            "both paths (the masks cancel exactly).",
            "",
            "| rows | features | gradient ciphertexts per step: unpacked → packed | unpacked s/epoch (s/step) | "
            "packed s/epoch (s/step, speed-up) | unpacked MB | packed MB | loss unpacked / packed |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for features, q in pai.items():
            u, pk = q["unpacked"], q["packed"]
            steps = math.ceil(q["rows"] / BATCH)
            lines.append(
                f"| {q['rows']:,} | {features} | {q['grad_cts'][0]} → {q['grad_cts'][1]} | {u['seconds']:.1f} "
                f"({u['seconds'] / steps:.2f}) | {pk['seconds']:.1f} ({pk['seconds'] / steps:.2f}, "
                f"{u['seconds'] / pk['seconds']:.2f}×) | {u['bytes'] / 1e6:.3f} | {pk['bytes'] / 1e6:.3f} | "
                f"{u['loss']:.6f} / {pk['loss']:.6f} |"
            )
    lines += [
        "",
        "Where the time goes. CKKS before: `matmul_plain` costs one rotate-and-sum over the slot ring (12 "
        "rotations, ~24 ms on one core) per output column whatever the batch, so a step costs about (features + "
        "2) of them. After: per step and party one plaintext product per residual ciphertext, log2(batch) "
        "rotations (at most 12, through SEAL's evaluator) and one mask, ~16 ms at batch 256 whatever the features. "
        "What remains per step is fixed; profiled (thread CPU per step, 10 features, `fill_slots`: 512 rows, 20 "
        "steps): the guest ~74 ms — its gradient product (one product, 9 rotations of ~1.7 ms, one mask: ~18 ms), "
        "the encrypted Taylor loss's one-column product (no DP only; now a `matmul_repeated` in the step's layout, "
        "9 rotations, ~18 ms, where the rotate-and-sum over the whole ring plus a mask cost ~30 ms, and computed "
        "at the start of the next step, while the host encrypts), ~9 ms re-randomizing the two ciphertexts it "
        "sends, the rest serialization and plaintext encodings; the host ~52 ms — ~9 ms encrypting its partial "
        "logits and their square, ~18 ms on its gradient, ~4.5 ms re-randomizing it, ~4 ms serializing. The "
        "parties wait for each other (the step is a chain: host, guest, both products, arbiter), so an epoch "
        "takes about the sum of the chain, not the CPU over 2 cores. The public context "
        "with Galois keys is ~34 MB, sent once per job to each party. Paillier: per row and step, one encryption "
        "by each host (its partial logits) and one re-randomization of the guest's residual before it leaves, "
        "plus one modular exponentiation per row and feature for the gradient; it scales with rows × features. "
        "BatchCrypt packing saves, per step, a full-length re-randomization and a decryption per gradient "
        "coordinate beyond one per 17 (and their bytes), for ~1,900 squarings per packed ciphertext.",
        "",
        "Re-run: `.venv/bin/python benchmarks/vertical_lr.py`",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.quick:
        write_section("vertical_lr", text)


if __name__ == "__main__":
    main()
