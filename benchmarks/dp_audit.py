"""Empirical DP audit: claimed vs fitted ε and a Clopper–Pearson lower bound, per mechanism and path.

For every noise mechanism of ``fedsilo.privacy.mechanisms`` and four protocol paths (DP-FedAvg
secure sum with CKKS and Paillier, a vertical LR gradient, a statistics histogram, the
record-level federated evaluation release), run it on
neighbouring datasets from a colluding party's view, and report with
:func:`fedsilo.privacy.audit.audit`: the exact ε of the mechanism as specified, the ε of a
Gaussian (or discrete-Laplace) fit to the runs, and a 95 % lower confidence bound — then the
same with the noise halved and with one noise share missing (monkeypatched bugs). The runs,
neighbouring pairs and bugs are exactly those of ``tests/privacy/test_privacy_audit.py`` and
``tests/protocols/test_dp_audit_paths.py`` (imported from there); see their docstrings.

    .venv/bin/python benchmarks/dp_audit.py            # writes docs/benchmarks.md
    .venv/bin/python benchmarks/dp_audit.py --quick    # a quarter of the runs, prints only
"""
from __future__ import annotations

import argparse
import functools
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests" / "privacy"))
sys.path.insert(0, str(ROOT / "tests" / "protocols"))
import test_dp_audit_paths as P  # noqa: E402
import test_privacy_audit as M  # noqa: E402
from _report import machine_line, write_section  # noqa: E402

from fedsilo.privacy.accounting import epsilon  # noqa: E402
from fedsilo.privacy.audit import AuditResult  # noqa: E402
from fedsilo.privacy.events import DpEvent, GaussianEvent, LaplaceEvent  # noqa: E402

ALPHA = 0.05  # the table's lower bounds are 95 % bounds (the tests assert theirs at 1e-6)

Runs = M.Runs | P.PathRuns
Bug = Callable[[pytest.MonkeyPatch], object]


@dataclass(frozen=True)
class Case:
    name: str
    runs: Callable[[float], Runs]  #: scale (1.0, or 0.25 with --quick) -> runs
    halve: Bug
    drop_share: Callable[[float], Runs] | None  #: runs with one share missing, None if no shares
    charged: Callable[[Runs], DpEvent]  #: what the ledger records for the audited release
    unit: str  #: what one run is


def _scaled(n: int, scale: float) -> int:
    return max(1, round(n * scale))


def _gaussian(r: Runs) -> DpEvent:
    assert r.mu is not None
    return GaussianEvent(1.0 / r.mu, 1.0, 1)


def _vertical(r: Runs) -> DpEvent:
    # one epoch's charge covers the step's P = 2 released gradients: z_event = z / sqrt(P)
    assert r.mu is not None
    return GaussianEvent(1.0 / (r.mu * math.sqrt(2.0)), 1.0, 1)


def cases() -> list[Case]:
    def bug(fn: Callable[[pytest.MonkeyPatch, str], object], what: str) -> Bug:
        return lambda mp: fn(mp, what)

    return [
        Case("Gaussian noise shares (3 parties, colluders 1)",
             lambda s: M.share_runs(runs=_scaled(M.RUNS, s), discrete=False),
             lambda mp: M.halve(mp, "noise_share_sigma"),
             lambda s: M.share_runs(runs=_scaled(M.RUNS, s), discrete=False, missing_share=True),
             _gaussian, "draw"),
        Case("discrete Gaussian shares, grid 2^-4 (3 parties, colluders 1)",
             lambda s: M.share_runs(runs=_scaled(M.RUNS, s), discrete=True),
             lambda mp: M.halve(mp, "noise_share_sigma"),
             lambda s: M.share_runs(runs=_scaled(M.RUNS, s), discrete=True, missing_share=True),
             _gaussian, "draw"),
        Case("discrete Laplace, grid 2^-4",
             lambda s: M.laplace_runs(runs=_scaled(M.RUNS, s)),
             lambda mp: M.halve(mp, "laplace_scale"),
             None,
             lambda r: LaplaceEvent(M.LAPLACE_EPSILON), "draw"),
        *[
            Case(f"DP-FedAvg secure sum, {backend} (3 silos, colluders 1)",
                 lambda s, b=backend: P.secure_sum_runs(b, rounds=_scaled(P.HZ_ROUNDS, s)),
                 bug(P.hz_bug, "noise-halved"),
                 lambda s, b=backend: _with(bug(P.hz_bug, "share-missing"),
                                            lambda: P.secure_sum_runs(b, rounds=_scaled(P.HZ_ROUNDS, s))),
                 _gaussian, "round")
            for backend in ("ckks", "paillier")
            if P.backend_available(backend, **P.HZ_BACKENDS[backend])
        ],
        Case("vertical LR gradient, host's view (arbiter, colluders 1)",
             lambda s: P.gradient_runs(runs=_scaled(P.VT_RUNS, s)),
             bug(P.vt_bug, "noise-halved"),
             lambda s: _with(bug(P.vt_bug, "share-missing"), lambda: P.gradient_runs(runs=_scaled(P.VT_RUNS, s))),
             _vertical, "training run"),
        Case("statistics histogram, discrete Gaussian shares (3 silos, colluders 1)",
             lambda s: P.histogram_runs(jobs=_scaled(P.ST_JOBS, s)),
             bug(P.st_bug, "noise-halved"),
             lambda s: _with(bug(P.st_bug, "share-missing"), lambda: P.histogram_runs(jobs=_scaled(P.ST_JOBS, s))),
             _gaussian, "job"),
        Case("federated evaluation, record level, discrete Gaussian shares (3 silos, colluders 1)",
             lambda s: P.evaluation_runs(rounds=_scaled(P.EV_ROUNDS, s)),
             bug(P.ev_bug, "noise-halved"),
             lambda s: _with(bug(P.ev_bug, "share-missing"),
                             lambda: P.evaluation_runs(rounds=_scaled(P.EV_ROUNDS, s))),
             _gaussian, "release"),
    ]


def _with(inject: Bug, fn: Callable[[], Runs]) -> Runs:
    with pytest.MonkeyPatch.context() as mp:
        inject(mp)
        return fn()


def _audit(r: Runs) -> AuditResult:
    return r.audit(alpha=ALPHA)


def _executions(r: Runs) -> str:
    return f"{r.executions}" if isinstance(r, P.PathRuns) else "–"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a quarter of the runs, print only (no docs update)")
    args = ap.parse_args()
    scale = 0.25 if args.quick else 1.0
    start = time.perf_counter()
    rows = []
    for case in cases():
        t0 = time.perf_counter()
        runs = case.runs(scale)
        normal = _audit(runs)
        halved = _audit(_with(case.halve, functools.partial(case.runs, scale)))
        missing = _audit(case.drop_share(scale)) if case.drop_share is not None else None
        charged = epsilon(case.charged(runs), delta=M.DELTA, accountant="rdp")
        secs = time.perf_counter() - t0
        rows.append((case, runs, normal, halved, missing, charged, secs))
        print(
            f"{case.name}: claimed {normal.claimed_epsilon:.3f} fitted {normal.fitted_epsilon:.3f} "
            f"lb {normal.lower_bound:.3f} runs {normal.runs} | halved fitted {halved.fitted_epsilon:.3f} "
            f"lb {halved.lower_bound:.3f} | missing {missing.fitted_epsilon if missing else '-'} ({secs:.0f} s)",
            flush=True,
        )
    total = time.perf_counter() - start
    md = render(rows, total=total)
    print(md)
    if not args.quick:
        print(f"wrote {write_section('dp_audit', md)}")


def _f(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def render(rows: list, *, total: float) -> str:
    lines = [
        "## DP audit: claimed vs fitted ε, and an empirical lower bound",
        "",
        ("Each mechanism runs on neighbouring inputs D and D' with fresh OS-seeded noise (no seeds), "
        "seen by a colluding party: it subtracts its own input and noise share and every non-target "
        "input, so what is left is the target's contribution plus the shares it does not know. "
        "`fedsilo.privacy.audit` projects the runs on the direction D → D' and reports: **claimed** — "
        "the exact ε at δ = 1e-5 of the mechanism as specified (Balle & Wang 2018, Thm. 8, for "
        "Gaussian noise of the configured σ; Δ/b for the discrete Laplace); **fitted** — the same "
        "formula with the shift and σ measured from the runs (a discrete-Laplace fit for the Laplace "
        "row); **lower bound** — a 95 % Clopper–Pearson lower confidence bound (Jagielski, Ullman & "
        "Oprea 2020; Nasr et al. 2021) from a threshold test chosen on half of the runs and evaluated "
        "on the other half; **ledger ε** — what the RDP accountant charges for the release. Then the "
        "same with the noise halved and with one noise share missing (injected by monkeypatching; "
        "`tests/privacy/test_privacy_audit.py`, `tests/protocols/test_dp_audit_paths.py` assert every "
        "cell's relation: bound below the claim, fit within 10 %, bugs caught)."),
        "",
        ("Runs: D and D' together; one protocol execution (round, training run, job) carries many "
        "independent instances of the mechanism side by side (blocks of a secure-summed vector, "
        "block-diagonal features of a gradient, bins of a histogram), each half D, half D'. "
        "Protocol paths: DP-FedAvg one secure-sum round per execution, z = 1.25, clip norm 1, zero-out "
        "(the target's update u of raw norm 3 clipped to 1, vs zero); vertical LR one step of "
        "guest + host + arbiter (plain backend), replace one row (x_h = ±e_i, label 1), logit clip "
        "1e-9 so the plan's sensitivity is attained, the host's own gradient (the ledger ε covers "
        "both gradients of the step); statistics a histogram job (plain backend), add/remove one "
        "record, target ε 4 (RDP); federated evaluation one record-level metrics release (plain backend, the "
        "real `_evaluation_contribution` and secure sum), job ε 14 of which a quarter for the release "
        "(z_eval ≈ 1.30), add/remove one held-out record with a NaN score and label 0 (one histogram "
        "count, the row count, the correct count and the capped loss each move by 1: the sensitivity "
        "sqrt(K + 3) = 2 is attained), 4,096 blocks of 43 metric inputs per release. Paillier: 1024-bit "
        "test keys, packed."),
        "",
        f"Machine: {machine_line()}; whole benchmark {total:.0f} s.",
        "",
        ("| mechanism / path | runs (executions) | claimed ε | fitted ε | lower bound | ledger ε "
        "| halved: fitted ε | halved: lower bound | share missing: fitted ε | s |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case, runs, normal, halved, missing, charged, secs in rows:
        ex = _executions(runs)
        lines.append(
            f"| {case.name} | {normal.runs:,}" + (f" ({ex} {case.unit}s)" if ex != "–" else "")
            + f" | {normal.claimed_epsilon:.2f} | {_f(normal.fitted_epsilon)} | {normal.lower_bound:.2f} "
            f"| {charged:.2f} | {_f(halved.fitted_epsilon)} | {halved.lower_bound:.2f}"
            + (" (refutes)" if halved.refuted else "") + " "
            f"| {_f(missing.fitted_epsilon) if missing else '–'} | {secs:.0f} |"
        )
    lines += [
        "",
        ("Reading the table. The fitted ε of every correct mechanism and path is within a few per cent "
        "of the claim (the fit's standard error at these run counts is 0.7–1.6 %): no release carries "
        "less noise than its accounting assumes, from a colluder's view, and the claimed (exact) ε is at or "
        "below the ledger's RDP ε, as it must be. Halving the noise doubles μ = Δ/σ (ε about ×2.2 at "
        "these μ) and a missing share multiplies μ by √2; the fit measures both. The lower bound is a "
        "statistically valid refutation test, not an estimate: with ~10^4 held-out runs a Gaussian "
        "mechanism's 95 % bound sits at a third to a half of its ε at δ = 1e-5 (that ε is set by far tails "
        "a few thousand runs do not reach). Halved noise puts the bound close to the claim, so whether "
        "it refutes a halved Gaussian row is a matter of luck at these run counts (\"refutes\": the "
        "bound exceeded the claim in this run) — the fit is what reliably catches it, and what the "
        "tests assert. For the pure-DP discrete Laplace the bound is nearly tight, and halved noise is "
        "refuted with a wide margin."),
        "",
        "Re-run: `.venv/bin/python benchmarks/dp_audit.py`",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
