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

The ``secagg`` column (keyless SecAgg+, issue 14) runs the same round through the production
secure-sum sessions (``plan_sums`` / ``open_silo_sum`` / ``open_aggregator_sum``, which call
``silo_secagg_sum`` / ``aggregator_secagg_sum``): advertise keys, Shamir shares, masked inputs,
unmasking; no ceremony. Exact sums without DP, plus one row with the silo-level distributed
discrete Gaussian. Besides the round, the script measures

* the masking throughput of one core: ``expand_mask`` plus the in-place masked addition, what a
  silo does once per neighbour (and once for its self mask), in values per second;
* a whole horizontal round with local training, ``secagg`` against ``plain``: a 10-silo job on
  the ``threads`` engine through ``run_job`` (what ``fedsilo simulate`` runs), seconds per round.

    .venv/bin/python benchmarks/horizontal_round.py            # writes docs/benchmarks.md
    .venv/bin/python benchmarks/horizontal_round.py --quick    # smaller grid, prints only
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, write_section  # noqa: E402

from fedsilo.crypto import secagg as sa  # noqa: E402
from fedsilo.crypto.registry import get_backend  # noqa: E402
from fedsilo.protocols.channel import InProcessHub, run_parties  # noqa: E402
from fedsilo.protocols.horizontal.secure_aggregation import (  # noqa: E402
    Contribution,
    aggregator_key_ceremony,
    aggregator_secure_sum,
    silo_key_ceremony,
    silo_secure_sum,
)
from fedsilo.protocols.horizontal.sums import (  # noqa: E402
    ddg_granularity,
    open_aggregator_sum,
    open_silo_sum,
    plan_sums,
)

COMMAND = ".venv/bin/python benchmarks/horizontal_round.py"

BACKENDS: dict[str, dict[str, Any]] = {
    "plain": {},
    "ckks": {},
    "paillier": {"packed": True, "max_summands": 20},
}

#: What a job without ``[privacy]`` uses (``PrivacySection.colluders`` defaults to 1, and only
#: silo-level DP or ``insecure`` allow exposed sums), so the SecAgg+ session is the production one.
SECAGG_COLLUDERS = 1
#: The silo-level DDG rows: calibrated for ε per silo and δ over a job of this many rounds.
DDG_EPSILON, DDG_DELTA, DDG_ROUNDS = 8.0, 1e-5, 10
#: The job with local training: an MLP on breast_cancer (30 features, 2 classes) split iid.
JOB_HIDDEN = [1000, 970]


def _updates(names: list[str], size: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.normal(0.0, 0.01, size) for n in names}


def one_round(backend: str, params: dict[str, Any], *, size: int, silos: int, seed: int = 0) -> dict[str, float]:
    """Seconds of one round, ceremony seconds, bytes each silo sent in the round, max abs error."""
    names = [f"s{i:02d}" for i in range(silos)]
    hub = InProcessHub("bench", [*names, "aggregator"])
    barrier = threading.Barrier(silos + 1)
    updates = _updates(names, size, seed)
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
    # free the round's arrays (and the hub's envelope log) before the next round
    results.clear()
    updates.clear()
    hub.log.clear()
    gc.collect()
    return out


def secagg_round(*, size: int, silos: int, dp: bool = False, seed: int = 0, **params: Any) -> dict[str, Any]:
    """One keyless SecAgg+ sum through the production sessions, timed like :func:`one_round`.

    ``params`` are the backend's ``[crypto] params`` (e.g. ``prg``, ``value_bound``). With
    ``dp`` the session adds the distributed discrete Gaussian, calibrated as a silo-level DP job
    would (:meth:`SumPlan.ddg`, ε = ``DDG_EPSILON`` over ``DDG_ROUNDS`` rounds, clip = the largest
    update norm so that clipping changes nothing and the error is the noise alone).
    """
    names = [f"s{i:02d}" for i in range(silos)]
    backend = get_backend("secagg", **params)
    plan = plan_sums(backend, silos=names, min_silos=2, colluders=SECAGG_COLLUDERS, allow_exposed=dp,
                     backend_params=backend.params())
    updates = _updates(names, size, seed)
    noise = None
    if dp:
        clip = max(float(np.linalg.norm(u)) for u in updates.values())
        noise = plan.ddg(length=size, epsilon=DDG_EPSILON, delta=DDG_DELTA, rounds=DDG_ROUNDS, clip=clip,
                         colluders=SECAGG_COLLUDERS)
    if noise is None:
        spec = plan.spec(size)
    else:
        spec = plan.spec(size, dp=noise, granularity=ddg_granularity(clip=noise.clip, length=size))
    hub = InProcessHub("bench", [*names, "aggregator"])
    barrier = threading.Barrier(silos + 1)
    marks: dict[str, float] = {}
    results: dict[str, Any] = {}
    agg: dict[str, Any] = {}

    def silo(ch: Any) -> None:
        session = open_silo_sum(ch, backend, plan=plan, aggregator="aggregator", timeout=3600,
                                allow_exposed=dp, colluders=SECAGG_COLLUDERS)
        barrier.wait()
        marks["start"] = time.perf_counter()
        u = updates[ch.party]
        out = session.sum(round=1, length=size, contribution=Contribution(
            values=lambda n: u, topup=lambda n, k: np.zeros(size), session_noise=noise))
        marks[f"end:{ch.party}"] = time.perf_counter()
        results[ch.party] = out

    def aggregator(ch: Any) -> None:
        session = open_aggregator_sum(ch, backend, plan=plan, timeout=3600, round_timeout=3600, min_silos=2,
                                      colluders=SECAGG_COLLUDERS, allow_exposed=dp)
        barrier.wait()
        agg["out"] = session.sum(round=1, silos=names, length=size, session_noise=noise)

    run_parties(hub, {"aggregator": aggregator, **{n: silo for n in names}})
    bad = sorted(n for n, r in results.items() if r.status != "ok")
    if bad or agg["out"].status != "ok":
        raise RuntimeError(f"secagg round did not complete: aggregator {agg['out'].status}, silos not ok {bad}")
    end = max(v for k, v in marks.items() if k.startswith("end:"))
    sent = hub.bytes_sent()  # a keyless session sends nothing before the round
    want = np.sum([updates[n] for n in names], axis=0)
    diff = np.stack([results[n].total - want for n in names])
    out: dict[str, Any] = {
        "seconds": end - marks["start"],
        "bytes_per_silo": float(np.mean([sent[n] for n in names])),
        "max_error": float(np.max(np.abs(diff))),
        "rms_error": float(np.sqrt(np.mean(diff[0] ** 2))),
        "bits": spec.bits,
        "degree": spec.degree,
        "threshold": spec.threshold,
        "dimension": spec.dimension,
        "prg": spec.prg,
    }
    if noise is not None:
        # the released sum carries `silos` shares of N_Z(0, σ²) steps, rotated back (orthogonal)
        out["noise_std"] = float(np.sqrt(silos) * noise.noise_sigma * spec.granularity)
        out["clip"] = noise.clip
    # free the round's arrays (and the hub's envelope log) before the next round
    results.clear()
    updates.clear()
    hub.log.clear()
    del diff
    gc.collect()
    return out


def mask_throughput(*, prg: str, bits: int, length: int = 1_000_000, repeats: int = 9) -> dict[str, float]:
    """Values per second of one core: ``expand_mask`` + the masked addition into a silo's vector
    (what ``_masked_input`` does per neighbour); best and median of ``repeats``, and the
    keystream alone (``expand_mask`` without the addition) for comparison."""
    seeds = [os.urandom(sa.SEED_BYTES) for _ in range(repeats)]
    ring = np.zeros(length, dtype=sa.ring_dtype(bits))
    sa.expand_mask(seeds[0], length, bits=bits, prg=prg)  # warm the shared zero buffer
    masked, alone = [], []
    for s in seeds:
        t0 = time.perf_counter()
        ring += sa.expand_mask(s, length, bits=bits, prg=prg)  # type: ignore[arg-type]
        masked.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        sa.expand_mask(s, length, bits=bits, prg=prg)  # type: ignore[arg-type]
        alone.append(time.perf_counter() - t0)
    return {
        "best": length / min(masked),
        "median": length / statistics.median(masked),
        "mask_only": length / min(alone),
    }


def job_round(backend: str, *, silos: int, hidden: list[int], rounds: int, local_epochs: int) -> dict[str, Any]:
    """Seconds per round of a whole horizontal job with local training (``threads`` engine,
    ``run_job``: what ``fedsilo simulate`` runs), no DP; MB each silo sent per round."""
    from fedsilo.silos.config import parse_config
    from fedsilo.silos.runner import run_job

    cfg = parse_config({
        "federation": {"name": "bench", "task": "horizontal", "seed": 1, "round_timeout": 900.0},
        "crypto": {"backend": backend, **({"insecure": True} if backend == "plain" else {})},
        "model": {"kind": "mlp", "hidden": hidden},
        "training": {"rounds": rounds, "batch_size": 32, "local_epochs": local_epochs},
        "data": {"source": "sklearn:breast_cancer", "label": "target",
                 "partition": {"kind": "iid", "silos": silos}},
    }, source="benchmark")
    with tempfile.TemporaryDirectory() as d:
        res = run_job(cfg, ledger_dir=Path(d), engine="threads")
    sent = [b for p, b in res["bytes_sent"].items() if p != "aggregator"]
    last = res["rounds"][-1] if res["rounds"] else {}
    return {"seconds": float(res["seconds"]) / rounds, "mb_per_silo": statistics.mean(sent) / 1e6 / rounds,
            "accuracy": last.get("accuracy")}


def paired(repeats: int, first: Any, second: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``first()`` and ``second()`` run ``repeats`` times, interleaved (so load on the shared
    machine hits both alike); each one's first result with ``seconds`` replaced by the median."""
    a, b = [], []
    for _ in range(repeats):
        a.append(first())
        b.append(second())
    return ({**a[0], "seconds": statistics.median(r["seconds"] for r in a), "runs": [r["seconds"] for r in a]},
            {**b[0], "seconds": statistics.median(r["seconds"] for r in b), "runs": [r["seconds"] for r in b]})


def parameters(n_features: int, hidden: list[int], n_classes: int = 2) -> int:
    sizes = [n_features, *hidden, n_classes]
    return sum(a * b + b for a, b in zip(sizes, sizes[1:]))


def load_line() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:  # pragma: no cover - not on every platform
        return "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small grid, print only (no docs update)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved plain/secagg repeats of each round (median)")
    ap.add_argument("--job-repeats", type=int, default=3, help="interleaved repeats of each training job")
    ap.add_argument("--job-rounds", type=int, default=3)
    args = ap.parse_args()
    sizes = [1_000, 10_000, 100_000, 1_000_000] if not args.quick else [1_000, 10_000]
    silo_counts = [3, 10]
    paillier_measured = [1_000, 10_000] if not args.quick else [1_000]
    ddg_sizes = [100_000, 1_000_000] if not args.quick else [10_000]
    big = max(sizes)
    repeats = max(1, args.repeats if not args.quick else 1)
    load_start = load_line()
    t_all = time.perf_counter()

    # masking throughput first, while this process runs nothing else
    throughput: dict[tuple[str, int], dict[str, float]] = {}
    wide_bits = sa.fixed_point_bits(value_bound=2.0**21, granularity=2.0**-24, summands=10)
    for prg in sa.PRGS:
        for bits in (32, wide_bits):
            throughput[(prg, bits)] = r = mask_throughput(prg=prg, bits=bits, length=big)
            print(f"masking {prg:8s} {bits:2d}-bit ring: {r['best']:.3g} values/s (median {r['median']:.3g}; "
                  f"expand_mask alone {r['mask_only']:.3g})", flush=True)

    rows: list[dict[str, Any]] = []
    for silos in silo_counts:
        for size in sizes:
            base, sec = paired(repeats, lambda: one_round("plain", BACKENDS["plain"], size=size, silos=silos),
                               lambda: secagg_round(size=size, silos=silos))
            row: dict[str, Any] = {"silos": silos, "size": size, "plain": base, "secagg": sec}
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
                f"secagg {row['secagg']['seconds']:.3f}s {row['secagg']['bytes_per_silo']/1e6:.2f}MB  "
                f"ckks {row['ckks']['seconds']:.2f}s {row['ckks']['bytes_per_silo']/1e6:.1f}MB  "
                f"paillier{'~' if row['paillier'].get('extrapolated') else ''} {row['paillier']['seconds']:.1f}s "
                f"{row['paillier']['bytes_per_silo']/1e6:.1f}MB",
                flush=True,
            )

    # variants at the largest size, 10 silos, each next to a fresh plain round
    variants: list[dict[str, Any]] = []
    for label, kwargs in [
        ("chacha20 masks", {"prg": "chacha20"}),
        ("value_bound = 8 (a 32-bit ring)", {"value_bound": 8.0}),
        *[(f"silo-level DDG, ε = {DDG_EPSILON:g} over {DDG_ROUNDS} rounds", {"dp": True, "size": s}) for s in ddg_sizes],
    ]:
        size = kwargs.pop("size", big)
        plain, v = paired(repeats, lambda: one_round("plain", BACKENDS["plain"], size=size, silos=10),
                          lambda: secagg_round(size=size, silos=10, **kwargs))
        variants.append({"label": label, "size": size, "plain": plain, "secagg": v})
        print(f"variant {label} at {size:,}: secagg {v['seconds']:.3f}s ({v['seconds']/plain['seconds']:.2f}x plain "
              f"{plain['seconds']:.3f}s), {v['bytes_per_silo']/size:.2f} B/value, max err {v['max_error']:.2e}", flush=True)

    # whole rounds with local training: plain and secagg interleaved, so drift hits both alike
    hidden = JOB_HIDDEN if not args.quick else [100]
    job_rounds = args.job_rounds if not args.quick else 1
    jobs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for epochs in (1, 10):
        for _ in range(max(1, args.job_repeats if not args.quick else 1)):
            for backend in ("plain", "secagg"):
                r = job_round(backend, silos=10, hidden=hidden, rounds=job_rounds, local_epochs=epochs)
                jobs.setdefault((backend, epochs), []).append(r)
                print(f"job {backend:6s} local_epochs={epochs:2d}: {r['seconds']:.2f} s/round, "
                      f"{r['mb_per_silo']:.1f} MB/silo/round", flush=True)
    job_info = {"hidden": hidden, "params": parameters(30, hidden), "rounds": job_rounds,
                "repeats": max(1, args.job_repeats if not args.quick else 1)}

    total = time.perf_counter() - t_all
    md = render(rows, variants, throughput, jobs, job_info, total=total, load=(load_start, load_line()), repeats=repeats)
    print(md)
    if not args.quick:
        print(f"wrote {write_section('horizontal', md)}")


def _ratio(a: float, b: float) -> str:
    r = a / b
    return f"{r:.2f}×" if r < 10 else f"{r:.0f}×"


def render(rows: list[dict[str, Any]], variants: list[dict[str, Any]], throughput: dict[tuple[str, int], dict[str, float]],
           jobs: dict[tuple[str, int], list[dict[str, Any]]], job_info: dict[str, Any], *, total: float,
           load: tuple[str, str], repeats: int) -> str:
    lines = [
        "## Horizontal secure aggregation: one round",
        "",
        "One round = every silo encrypts its update, the aggregator (no key) adds the ciphertexts, "
        "every silo decrypts the sum (`silo_secure_sum` / `aggregator_secure_sum` on an in-process "
        "hub, all parties as threads of one process). Local training is excluded (identical for all "
        f"backends). Ratios are to `plain` measured in the same run (`plain` and `secagg`: median of {repeats} "
        "interleaved runs; `ckks`, `paillier`: one run). Backends: `ckks` default "
        "(`aggregate` profile, N = 4096), `paillier` packed (2048-bit, 32-bit precision, "
        "max_summands = 20). `~`: extrapolated linearly from the 10^4-parameter measurement "
        "(Paillier at 10^5–10^6 parameters would take too long here).",
        "",
        f"Machine: {machine_line()}; whole benchmark {total:.0f} s; 1-minute load average {load[0]} at the "
        f"start, {load[1]} at the end. The 2 cores are shared with other engineers' test runs, so single "
        "timings are noisy (a factor of 2 between neighbouring cells is within the noise at small sizes); "
        "the ratios are measured side by side in one run.",
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

    s0 = rows[0]["secagg"]
    lines += [
        "",
        "### `secagg` (keyless SecAgg+, issue 14)",
        "",
        "The same round through the production secure-sum sessions (`plan_sums`, `open_silo_sum` / "
        "`open_aggregator_sum` → `silo_secagg_sum` / `aggregator_secagg_sum`), in the same run as the "
        "table above: advertise two X25519 keys, Shamir-share the self-mask seed and the masking key with "
        "every neighbour (sealed, relayed by the aggregator), send the masked input, reveal one share per "
        "neighbour, receive the sum. No key ceremony exists. Default `[crypto] params` (granularity 2^-24, "
        f"value_bound 2^21, {s0['prg']}), no DP, colluders = 1 as in a job without `[privacy]`; "
        "3 silos: degree 2, t = 2; 10 silos: SecAgg's complete graph, degree 9. "
        "B/value: every byte a silo sent in the round (the hub's envelope bytes: keys, sealed shares, the "
        "masked input, its reveals) over the parameter count; `plain` sends float64 updates. Max error: "
        "against the float64 sum of the updates (the grid rounds each value by at most 2^-25 per silo). "
        "Issue 14's target for the aggregation alone: ≤ 3× plain.",
        "",
        "| silos | params | ring bits | plain s | secagg s | × plain | × ckks | plain B/value | secagg B/value | secagg max err |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p, s, c = r["plain"], r["secagg"], r["ckks"]
        lines.append(
            f"| {r['silos']} | {r['size']:,} | {s['bits']} | {p['seconds']:.3f} | {s['seconds']:.3f} | "
            f"{_ratio(s['seconds'], p['seconds'])} | {_ratio(s['seconds'], c['seconds'])} | "
            f"{p['bytes_per_silo']/r['size']:.2f} | {s['bytes_per_silo']/r['size']:.2f} | {s['max_error']:.1e} |"
        )
    lines += [
        "",
        f"Variants, 10 silos, each interleaved with a fresh `plain` round of the same size (median of {repeats}). "
        "The DDG rows are the "
        "silo-level distributed discrete Gaussian under the masks (rotation padded to a power of two, "
        f"conditional rounding, one discrete Gaussian share per silo; calibrated by `SumPlan.ddg` for "
        f"ε = {DDG_EPSILON:g}, δ = {DDG_DELTA:g} over {DDG_ROUNDS} rounds, clip = the largest update norm); "
        "their error is the noise: RMS measured against the predicted √n·σ·γ.",
        "",
        "| variant | params | ring bits | plain s | secagg s | × plain | secagg B/value | error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in variants:
        p, s = v["plain"], v["secagg"]
        err = (f"RMS {s['rms_error']:.3g} (predicted {s['noise_std']:.3g}), max {s['max_error']:.3g}; clip {s['clip']:.3g}"
               if "noise_std" in s else f"max {s['max_error']:.1e}")
        lines.append(
            f"| {v['label']} | {v['size']:,} | {s['bits']} | {p['seconds']:.3f} | {s['seconds']:.3f} | "
            f"{_ratio(s['seconds'], p['seconds'])} | {s['bytes_per_silo']/v['size']:.2f} | {err} |"
        )

    lines += [
        "",
        "Masking throughput of one core (issue 14's target: ≥ 10^8 values/s): `expand_mask` of a fresh "
        f"seed plus the in-place masked addition into a silo's {max(r['size'] for r in rows):,}-value "
        "vector, what a silo does for each neighbour and for its self mask; single-threaded, best "
        "and median of 9; 'mask alone': `expand_mask` without the addition. The "
        f"{max(b for _, b in throughput)}-bit ring is the default one for 10 silos (uint64 words).",
        "",
        "| PRG | ring bits | values/s (best) | values/s (median) | mask alone, values/s |",
        "|---|---|---|---|---|",
    ]
    for (prg, bits), t in throughput.items():
        lines.append(f"| {prg} | {bits} | {t['best']:.2e} | {t['median']:.2e} | {t['mask_only']:.2e} |")

    lines += [
        "",
        f"With local training included (issue 14's target: ≤ 1.1× plain): a whole horizontal job of 10 silos on "
        f"the `threads` engine through `run_job` (what `fedsilo simulate` runs), an MLP {job_info['hidden']} "
        f"({job_info['params']:,} parameters) on breast_cancer split iid (about 45 training rows per silo, "
        f"batch 32), no DP, {job_info['rounds']} rounds; a round is local training, the update's secure sum and "
        "the federated metrics' secure sum. Seconds per round from the job's `seconds`; median of "
        f"{job_info['repeats']} runs, plain and secagg interleaved.",
        "",
        "| local epochs | plain s/round | secagg s/round | × plain | plain MB/silo/round | secagg MB/silo/round |",
        "|---|---|---|---|---|---|",
    ]
    for epochs in sorted({e for _, e in jobs}):
        p = statistics.median(r["seconds"] for r in jobs[("plain", epochs)])
        s = statistics.median(r["seconds"] for r in jobs[("secagg", epochs)])
        pm = statistics.median(r["mb_per_silo"] for r in jobs[("plain", epochs)])
        sm = statistics.median(r["mb_per_silo"] for r in jobs[("secagg", epochs)])
        lines.append(f"| {epochs} | {p:.2f} | {s:.2f} | {_ratio(s, p)} | {pm:.1f} | {sm:.1f} |")
    lines += ["", f"Re-run: `{COMMAND}`"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
