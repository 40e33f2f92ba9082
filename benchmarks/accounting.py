"""Per-round accounting cost of a DP horizontal job, before and after the cached/analytic fast
paths of ``fedsilo.privacy.accounting`` (issue 17, item 6: at most 50 ms per round at 100 rounds).

Every ledger charge composes the dataset's whole history plus the new release (write-ahead:
``PrivacyLedger.charge``), so round r of a job asks for the ε of r rounds' events, and the
results ask again for each round's ε (``epsilon_per_round``). For four job kinds (silo- or
record-level DP, the RDP or the PLD accountant; events as the hospitals examples charge them,
calibrated to ε = 8 over the rounds) this prints, per round of one silo:

* ``before``: dp-accounting's accountant (``RdpAccountant`` / ``PLDAccountant``) composing the
  normalized history from scratch, which is what fedsilo's PLD path computed before (it equalled
  the ``PLDAccountant`` exactly); fedsilo's RDP path already cached one curve per ``(z, q)``.
  Measured on every ``--every``-th round (the PLD ones take up to seconds each);
* ``after``: ``fedsilo.privacy.accounting.epsilon`` on the same events, every round, caches
  starting cold as in a new silo process;
* ``ledger``: a real ``PrivacyLedger`` charge and commit per round (SQLite, hash chain, anchor
  fsyncs included), plus the results' ε of that round.

CPU time of this process (``time.process_time``), so other jobs on a shared machine disturb the
figures little; wall time is printed beside it. Not a test: nothing is asserted.

    .venv/bin/python benchmarks/accounting.py              # 100 rounds, "before" every 10th round
    .venv/bin/python benchmarks/accounting.py --rounds 20 --every 5
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dp_accounting

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line  # noqa: E402

from fedsilo.privacy import accounting as A  # noqa: E402
from fedsilo.privacy.accounting import epsilon, noise_multiplier, normalize  # noqa: E402
from fedsilo.privacy.events import ApproxDpEvent, ComposedEvent, CoveredEvent, DpEvent, GaussianEvent  # noqa: E402
from fedsilo.protocols.horizontal.dp import composed_noise_multiplier  # noqa: E402
from fedsilo.protocols.horizontal.protocol import COUNT_SHARE, EVALUATION_SHARE  # noqa: E402
from fedsilo.privacy.ledger import PrivacyLedger  # noqa: E402
from fedsilo.privacy.relations import ADD_REMOVE_RECORD, ZERO_OUT_SILO  # noqa: E402

DELTA = 1e-5
TARGET = 8.0
#: record level as examples/hospitals_horizontal/federation.toml runs it: Poisson rate 1/5
#: (about 160 training rows, batch 32), 2 local epochs of 5 steps each per round
RECORD_Q, RECORD_STEPS = 0.2, 10
#: distributed DP-SGD as the hospitals example runs it in ``mode = "distributed"``: expected joint
#: batch 64 of 455 pooled rows, one step per round
DISTRIBUTED_Q = 64 / 455


@dataclass(frozen=True)
class Scenario:
    name: str
    accountant: str
    round_event: GaussianEvent
    relation: str


def scenarios(rounds: int) -> list[Scenario]:
    out = []
    for accountant in ("rdp", "pld"):
        z = noise_multiplier(target_epsilon=TARGET, delta=DELTA, sample_rate=1.0, steps=rounds, accountant=accountant)
        out.append(Scenario(f"silo-level, {accountant}", accountant, GaussianEvent(z, 1.0, 1), ZERO_OUT_SILO))
    # the record-level z of a job of `rounds` rounds at epsilon 8 (RDP calibration; the PLD job
    # composes the same events with its accountant)
    z = noise_multiplier(target_epsilon=TARGET, delta=DELTA, sample_rate=RECORD_Q, steps=rounds * RECORD_STEPS)
    for accountant in ("rdp", "pld"):
        out.append(Scenario(f"record-level, {accountant}", accountant, GaussianEvent(z, RECORD_Q, RECORD_STEPS),
                            ADD_REMOVE_RECORD))
    return out


def plain(events: list[DpEvent], accountant: str) -> float:
    """dp-accounting's accountant composing the normalized events from scratch."""
    acc: dp_accounting.PrivacyAccountant = (
        dp_accounting.rdp.RdpAccountant() if accountant == "rdp"
        else dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4))
    for leaf in normalize(ComposedEvent(events)):
        acc.compose(leaf.to_dp_accounting())
    return float(acc.get_epsilon(DELTA))


def clear_caches() -> None:
    for cached in (A._epsilon_groups, A._gaussian_rdp_curve, A._subsampled_power, A._unsampled_gaussian_pld,
                   A._subsampled_gaussian_pld):
        cached.cache_clear()


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(cpu ms, wall ms) of one call."""
    c, w = time.process_time(), time.perf_counter()
    fn()
    return 1e3 * (time.process_time() - c), 1e3 * (time.perf_counter() - w)


def run(s: Scenario, rounds: int, every: int) -> dict[str, object]:
    history = lambda r: [s.round_event] * r  # noqa: E731 - one event per round, as the ledger holds them
    sampled = sorted({r for r in range(every, rounds + 1, every)} | {rounds})
    before = {r: timed(lambda r=r: plain(history(r), s.accountant)) for r in sampled}
    clear_caches()
    after = {r: timed(lambda r=r: epsilon(ComposedEvent(history(r)), delta=DELTA, accountant=s.accountant))
             for r in range(1, rounds + 1)}
    # the values agree (PLD: the unsampled path is the exact profile, at most 1e-4 below)
    check = plain(history(rounds), s.accountant), epsilon(ComposedEvent(history(rounds)), delta=DELTA,
                                                          accountant=s.accountant)
    clear_caches()
    ledger_ms: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as tmp, PrivacyLedger(Path(tmp) / "s.sqlite", silo="s",
                                                             accountant=s.accountant) as ledger:
        ledger.register_dataset("s", epsilon=1e6, delta=DELTA)
        for r in range(1, rounds + 1):
            def charge(r: int = r) -> None:
                with ledger.charge("s", s.round_event, job="bench", round=r, protocol="bench",
                                   mechanism={"name": "bench"}, recipient="aggregator", relation=s.relation):
                    pass
                epsilon(ComposedEvent(history(r)), delta=DELTA, accountant=s.accountant)  # the results' ε of round r
            ledger_ms.append(timed(charge))
    return {"before": before, "after": after, "ledger": ledger_ms, "check": check}


def run_distributed(accountant: str, rounds: int) -> dict[str, list[tuple[float, float]]]:
    """Per-round ledger charges of a distributed DP-SGD job, calibrated as
    ``HorizontalJob.distributed_plan`` does: the round-0 charge (the count's Gaussian and the
    training's cover), then one covered step per round and the covered final metrics release,
    each charge checking that the cover pays for the covered releases so far
    (``accounting.check_cover_pays``). ``shortcut``: as fedsilo runs
    it (under PLD, RDP first); ``pld only``: the same charges with the RDP shortcut turned off,
    i.e. a PLD self-composition of the steps so far on every charge."""
    z_metrics = noise_multiplier(target_epsilon=EVALUATION_SHARE * TARGET, delta=DELTA, accountant=accountant)
    metrics = GaussianEvent(z_metrics, 1.0, 1)
    target, delta = (1.0 - COUNT_SHARE) * TARGET, (1.0 - COUNT_SHARE) * DELTA
    z = composed_noise_multiplier(target_epsilon=target, delta=delta, accountant=accountant,
                                  event_for=lambda z: ComposedEvent((GaussianEvent(z, DISTRIBUTED_Q, rounds), metrics)))
    z_count = noise_multiplier(target_epsilon=COUNT_SHARE * TARGET, delta=COUNT_SHARE * DELTA, accountant=accountant)
    cover = ApproxDpEvent(target, delta, 1, "training/bench", covers=rounds + 1)
    step = CoveredEvent(GaussianEvent(z, DISTRIBUTED_Q, 1), "training/bench")
    out: dict[str, list[tuple[float, float]]] = {}
    real_shortcut = A._rdp_shows_cover_pays
    for name, shortcut in (("pld only", lambda *_: False), ("shortcut", real_shortcut)):
        if accountant == "rdp" and name == "pld only":
            continue  # an RDP ledger checks by RDP: there is no shortcut to turn off
        A._rdp_shows_cover_pays = shortcut
        clear_caches()
        try:
            with tempfile.TemporaryDirectory() as tmp, PrivacyLedger(Path(tmp) / "s.sqlite", silo="s",
                                                                     accountant=accountant) as ledger:
                ledger.register_dataset("s", epsilon=TARGET, delta=DELTA)

                def charge(event: DpEvent, r: int) -> None:
                    with ledger.charge("s", event, job="bench", round=r, protocol="bench",
                                       mechanism={"name": "bench"}, recipient="aggregator", relation=ADD_REMOVE_RECORD):
                        pass

                charge(ComposedEvent((GaussianEvent(z_count, 1.0, 1), cover)), 0)
                out[name] = [timed(lambda r=r: charge(step, r)) for r in range(1, rounds + 1)]
                # the final metrics release, the cover's last covered release (the costliest check)
                out[name].append(timed(lambda: charge(CoveredEvent(metrics, "training/bench"), rounds + 1)))
        finally:
            A._rdp_shows_cover_pays = real_shortcut
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--every", type=int, default=10, help="measure 'before' on every N-th round (and the last)")
    args = parser.parse_args()
    warnings.simplefilter("ignore", RuntimeWarning)
    print(f"accounting per round of one silo, {args.rounds} rounds, delta={DELTA:g}; {machine_line()}")
    print("ms of CPU (wall in brackets); mean over the rounds measured, and at the last round\n")
    head = f"{'job':22s} {'before mean':>18s} {'before last':>18s} {'after mean':>16s} {'after last':>16s} " \
           f"{'ledger+results mean':>20s}   epsilon (plain / fedsilo)"
    print(head)
    print("-" * len(head))
    for s in scenarios(args.rounds):
        out = run(s, args.rounds, args.every)
        before, after, ledger = out["before"], out["after"], out["ledger"]  # type: ignore[assignment]
        last = args.rounds

        def mean(values: list[tuple[float, float]]) -> str:
            return f"{statistics.fmean(v[0] for v in values):8.1f} ({statistics.fmean(v[1] for v in values):6.1f})"

        def one(v: tuple[float, float]) -> str:
            return f"{v[0]:8.1f} ({v[1]:6.1f})"

        plain_eps, ours = out["check"]  # type: ignore[misc]
        print(f"{s.name:22s} {mean(list(before.values())):>18s} {one(before[last]):>18s} "  # type: ignore[union-attr]
              f"{mean(list(after.values())):>16s} {one(after[last]):>16s} {mean(ledger):>20s}   "  # type: ignore[union-attr,arg-type]
              f"{plain_eps:.6f} / {ours:.6f}")
    print(f"\ndistributed DP-SGD ({args.rounds} covered steps, q = 64/455, then the covered metrics release): "
          "ledger charge per round, ms of CPU (wall), mean over the charges and at the last (the metrics release)")
    for accountant in ("rdp", "pld"):
        for name, values in run_distributed(accountant, args.rounds).items():
            label = f"distributed, {accountant}, {name}"
            print(f"{label:34s} mean {statistics.fmean(v[0] for v in values):8.1f} "
                  f"({statistics.fmean(v[1] for v in values):6.1f})   last {values[-1][0]:8.1f} ({values[-1][1]:6.1f})")
    print("\nbefore: dp-accounting's accountant on the whole history each round (fedsilo's PLD path before the "
          "fast paths; its RDP path already cached curves). after: fedsilo.privacy.accounting.epsilon. "
          "ledger+results: PrivacyLedger.charge + commit and the results' epsilon of the round.")


if __name__ == "__main__":
    main()
