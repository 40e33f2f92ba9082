"""Hetero logistic regression: seconds per epoch vs rows and features, per crypto backend, and
the packed CKKS product against the per-column one it replaced.

One epoch of :mod:`fedsilo.protocols.vertical.lr` (arbiter topology: guest + one host +
arbiter; features split evenly between guest and host; batch 256; encrypted Taylor loss on)
on synthetic standardized data, all parties as threads of one process over the in-process hub.
Key set-up (CKKS Galois keys, Paillier key generation) is excluded and reported separately.

Two tables:

* **before / after** (10^4 rows x 10 and x 100 features, both measured in full in this run, one
  row per variant): ``before`` is CKKS at batch 256 with the residuals as plain vectors and
  ``X_p^T d`` by per-column ``matmul_plain`` (a backend whose ``matmul_repeat`` is 1: exactly the
  protocol's path before ``matmul_repeated``), ``after`` the packed layout and ``matmul_repeated``
  at batch 256; ``fill_slots`` (``[training] fill_slots = true``: the batch whose repeated
  residuals fill one ciphertext's 4,096 slots, 512 rows at 10 features, 64 at 100) and larger
  batches (``--batches``, default 2,048), training settings the user chooses (they change the
  steps per epoch, not the DP accounting: docs/vertical.md). Wall and CPU speed-ups against
  ``before``, and each column's model's AUC on held-out rows (and the plain backend's on the
  same batches).
* **grid** (10^3..10^5 rows): plain, CKKS (packed) and Paillier. The cost of an epoch is linear
  in the number of steps (rows / batch) — every step has the same shape — so where a full epoch
  would take minutes it is measured on fewer rows and scaled linearly; such cells are marked "~".
  Ratios are to ``plain`` measured in the same run.

    .venv/bin/python benchmarks/vertical_lr.py            # writes the "vertical_lr" section
    .venv/bin/python benchmarks/vertical_lr.py --quick    # before/after at 10^4 rows only, prints only
    .venv/bin/python benchmarks/vertical_lr.py --quick --features 10   # the 10-feature row only
    .venv/bin/python benchmarks/vertical_lr.py --features 10 --no-grid # ... and write its section
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
from fedsilo.protocols.metrics import auc  # noqa: E402
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
          batchcrypt: bool = True, held_out: int = 0) -> dict[str, float]:
    """Seconds and wire bytes of one epoch (after key set-up), and key set-up seconds;
    ``batch = "fill"``: ``[training] fill_slots = true``; ``batch = "default"``: neither
    ``batch_size`` nor ``fill_slots`` set (the default a user gets); ``batchcrypt``: the
    protocol's ``TrainingConfig.batchcrypt`` (Paillier's packed gradients); ``held_out``: rows
    drawn from the same model, not trained on, on which the trained model's AUC is measured."""
    rng = np.random.default_rng(seed)
    fg, fh = features - features // 2, features // 2
    n = rows + held_out
    xg, xh = rng.normal(size=(n, fg)), rng.normal(size=(n, fh))
    w = rng.normal(size=features) / math.sqrt(features)
    y = (rng.random(n) < 1 / (1 + np.exp(-(np.hstack([xg, xh]) @ w)))).astype(float)
    test = np.arange(rows, n)
    xg, xh, y, xg_test, xh_test, y_test = xg[:rows], xh[:rows], y[:rows], xg[test], xh[test], y[test]
    top = Topology(guest="g", hosts=("h",), arbiter="a")
    chosen = {"fill": {"fill_slots": True}, "default": {}}.get(batch, {"batch_size": batch})  # type: ignore[call-overload]
    section = TrainingSection(rounds=1, lr=0.3, **chosen)
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
        marks["guest"] = out.model
        return out

    def host(ch: Any) -> Any:
        out = host_train(ch, topology=top, x=xh, train_rows=np.arange(rows), eval_rows=np.arange(0),
                         backend=backend, config=cfg, rng=np.random.default_rng(2))
        marks["host"] = out.model
        return out

    run_parties(hub, {
        "g": timed("g", guest),
        "h": timed("h", host),
        "a": timed("a", lambda ch: arbiter_train(ch, topology=top, backend=backend, config=cfg)),
    })
    auc_held_out = float("nan")
    if held_out:  # the joint model's scores on the held-out rows (a benchmark's view: both shares)
        scores = marks["guest"].partial_logits(xg_test) + marks["host"].partial_logits(xh_test)
        auc_held_out = auc(labels=y_test, scores=scores)
    return {
        "seconds": marks["t1"] - marks["t0"],
        "cpu": sum(cpu.values()),  # the main process's threads (a Paillier pool's workers are not counted)
        "bytes": float(sum(hub.bytes_sent().values()) - marks["b0"]),
        "setup": marks["t0"] - start,
        "loss": marks["loss"],
        "auc": auc_held_out,
        "batch": float(cfg.batch_rows(backend, {"g": fg + 1, "h": fh})),
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


HELD_OUT = 5_000  #: held-out rows (same model, never trained on) for each before/after column's AUC


def before_after(*, rows: int, features: int, batches: list[int], repeats: int) -> dict[str, Any]:
    """Per epoch: per-column at batch 256 (before), packed at batch 256 (after), packed with
    ``[training] fill_slots = true`` (the batch that fills one ciphertext) and at each of ``batches``; each the fastest of ``repeats`` runs, the variants
    alternating (the machine is shared); the model's AUC on held-out rows, and the epoch's
    training loss against ``plain`` on the same batches (the masks cancel exactly)."""
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
            runs[key].append(epoch(backend, rows=rows, features=features, batch=batch, held_out=HELD_OUT))
    best = {k: min(v, key=lambda r: r["seconds"]) for k, v in runs.items()}
    plain_backend = build("plain", {})
    plain = {k: epoch(plain_backend, rows=rows, features=features, batch=int(best[k]["batch"]), held_out=HELD_OUT)
             for k in variants}
    return {
        "runs": best,
        "fill": fill,
        "repeat": {k: backend.matmul_repeat(rows=int(best[k]["batch"]), columns=dims)
                   for k, (backend, batch) in variants.items()},
        "loss_gap": {k: abs(best[k]["loss"] - plain[k]["loss"]) for k in variants},
        "plain_auc": {k: plain[k]["auc"] for k in variants},
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
    ap.add_argument("--no-grid", action="store_true",
                    help="skip the every-backend grid and Paillier tables, still write the section")
    args = ap.parse_args()
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    ba_rows, feat_grid = args.rows, [10, 100]
    ba: dict[int, dict[str, Any]] = {}
    for features in args.features:
        ba[features] = r = before_after(rows=ba_rows, features=features, batches=args.batches, repeats=args.repeats)
        t_before, c_before = r["runs"]["before"]["seconds"], r["runs"]["before"]["cpu"]
        print(f"before/after rows={ba_rows:,} features={features}: "
              + ", ".join(f"{k} (batch {v['batch']:,.0f}) {v['seconds']:.2f} s ({t_before / v['seconds']:.1f}x), "
                          f"CPU {v['cpu']:.2f} s ({c_before / v['cpu']:.1f}x), AUC {v['auc']:.4f}"
                          for k, v in r["runs"].items()), flush=True)

    rows_grid = [1_000, 10_000, 100_000]
    res: dict[tuple[str, int, int], tuple[dict[str, float], bool]] = {}
    setup: dict[str, float] = {}
    pai: dict[int, dict[str, Any]] = {}
    if not (args.quick or args.no_grid):
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

    lines = [
        "## Vertical logistic regression: seconds per epoch",
        "",
        f"One epoch of hetero LR (guest + 1 host + arbiter, features split evenly, encrypted Taylor "
        "loss on, no DP, lr 0.3) on synthetic data, all parties as threads of one process (they share the 2 cores, "
        "as they would not across organizations). `ckks`: profile `matmul` (N = 8192, 4,096 slots, depth 2, "
        "Galois keys). "
        f"Machine: {machine_line()}; whole benchmark {total:.0f} s; 1-minute load average {load0:.1f} at the start "
        f"and {os.getloadavg()[0]:.1f} at the end (other jobs may share the 2 cores: wall times are inflated then, "
        "the CPU columns are the party threads' own CPU seconds).",
        "",
        "### CKKS: before (per-column, batch 256) against the packed product (issue 16, item 3)",
        "",
        f"{ba_rows:,} training rows, measured in full, in this run, one row per variant. **before**: batch {BATCH}, "
        "the residuals encrypted as plain vectors and each party's `X_pᵀd` by per-column `matmul_plain` (one "
        "plaintext product, a rotate-and-sum over the 4,096-slot ring and a mask per gradient coordinate). "
        f"**after**: batch {BATCH}, each residual value repeated over `repeat` slots and `X_pᵀd` by "
        "`matmul_repeated` (one product per ciphertext, log2(batch) rotations, one mask): what a job at batch 256 "
        "runs today. **fill_slots**: `[training] fill_slots = true`, the batch that fills one "
        "ciphertext's 4,096 slots (512 rows × `repeat` 8 at 10 features, 64 × 64 at 100), fewer steps per epoch, "
        "the same DP accounting; opt-in, not the default, since fewer steps per epoch lower the bank example's "
        "AUC at its 5 epochs (docs/vertical.md, \"Filling the slots\"). "
        "`batch N`: the packed path at a larger batch of several ciphertexts (their products summed before one "
        "rotation tree). Speed-ups are against `before`, wall and CPU. AUC: the epoch's joint model on "
        f"{HELD_OUT:,} held-out rows of the same synthetic model (`plain` AUC: the same training on the plain "
        "backend, same batches); `loss vs plain`: |CKKS − plain| of the epoch's encrypted Taylor loss on the same "
        "batches (the masks cancel exactly; each step's CKKS error is at most ~1e-5).",
        "",
        "| features | variant | batch | repeat | steps | wall s (speed-up) | CPU s (speed-up) | MB | AUC held-out "
        "(plain) | loss vs plain |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for features in args.features:
        r = ba[features]
        b = r["runs"]["before"]
        for k, v in r["runs"].items():
            lines.append(
                f"| {features} | {k} | {v['batch']:,.0f} | {r['repeat'][k]} | {math.ceil(ba_rows / v['batch'])} | "
                f"{v['seconds']:.2f} ({b['seconds'] / v['seconds']:.1f}×) | {v['cpu']:.2f} ({b['cpu'] / v['cpu']:.1f}×) | "
                f"{v['bytes'] / 1e6:.1f} | {v['auc']:.4f} ({r['plain_auc'][k]:.4f}) | {r['loss_gap'][k]:.1e} |"
            )
    if args.no_grid:
        lines += ["", f"This run: `--features {' '.join(map(str, args.features))} --no-grid` (the every-backend grid and "
                  "the Paillier table were not re-run; the section's earlier copies of them, if any, are kept by hand)."]
    if not (args.quick or args.no_grid):
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
        "What remains per step is fixed (cProfile and micro-timings on this machine, 10 features, `fill_slots`: "
        "512 rows, 20 steps): per party and step one fold (9 rotations at level 1, ~2.5–3.8 ms each, plus ~3 ms "
        "moving the SEAL ciphertext back into TenSEAL: ~25 ms), one plaintext product (~3.5 ms), the mask and "
        "junk; the guest re-randomizes `[[d]]` and its gradient before they leave (~5.7 ms each, a fresh encryption "
        "of zero), the host encrypts its partial logits (~4.5 ms) and re-randomizes its gradient. The encrypted "
        "Taylor loss no longer costs a fold per step: the guest's cross terms of up to 32 steps are one "
        "`matmul_repeated_sum` (a ~3.5 ms product per step, one fold per group, with the same steps' host "
        "terms, so each decrypted sum is whole steps' loss) — the same loss, ~25 ms less CPU per step. "
        "The parties wait for each other (the step is a chain: host, guest, both products, arbiter), so an epoch "
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
