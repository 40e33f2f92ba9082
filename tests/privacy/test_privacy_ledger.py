"""PrivacyLedger: budget refusal, write-ahead crash safety, races, tamper evidence."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedsilo.errors import BudgetExceededError, ConfigError, LedgerIntegrityError, PrivacyError
from fedsilo.privacy.accounting import epsilon
from fedsilo.privacy.events import ComposedEvent, GaussianEvent, LaplaceEvent
from fedsilo.privacy.ledger import DatasetReport, LedgerEntry, PrivacyLedger

WORKER = Path(__file__).with_name("_ledger_worker.py")
REPO = Path(__file__).resolve().parents[2]
DELTA = 1e-5
MECH = {"name": "gaussian", "clip": 1.0, "sigma": 1.1}


def charge(ledger: PrivacyLedger, event=GaussianEvent(1.1), dataset: str = "ds", round: int = 0, level: str = "silo"):  # type: ignore[no-untyped-def]
    return ledger.charge(
        dataset, event, job="job1", round=round, protocol="fedavg", mechanism=MECH, recipient="aggregator", level=level
    )


def row_count(path: Path) -> int:
    with sqlite3.connect(path) as c:
        return int(c.execute("SELECT COUNT(*) FROM entries").fetchone()[0])


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


# ----------------------------------------------------------------------------- contract per accountant


class LedgerContract:
    accountant = ""

    @pytest.fixture
    def led(self, ledger_path: Path):  # type: ignore[no-untyped-def]
        with PrivacyLedger(ledger_path, silo="site0", accountant=self.accountant) as led:
            yield led

    def test_spent_is_the_composition_not_a_sum(self, led: PrivacyLedger) -> None:
        led.register_dataset("ds", epsilon=100.0, delta=DELTA)
        assert led.spent("ds") == 0.0
        for r in range(3):
            with charge(led, round=r):
                pass
        expected = epsilon(GaussianEvent(1.1, 1.0, 3), delta=DELTA, accountant=self.accountant)
        assert led.spent("ds") == pytest.approx(expected, rel=1e-9)
        assert led.spent("ds") < 3 * epsilon(GaussianEvent(1.1), delta=DELTA, accountant=self.accountant)
        assert led.remaining("ds") == pytest.approx(100.0 - expected)

    def test_over_budget_is_refused_and_nothing_written(self, led: PrivacyLedger, ledger_path: Path) -> None:
        one = epsilon(GaussianEvent(1.1), delta=DELTA, accountant=self.accountant)
        two = epsilon(GaussianEvent(1.1, 1.0, 2), delta=DELTA, accountant=self.accountant)
        led.register_dataset("ds", epsilon=(one + two) / 2, delta=DELTA)
        with charge(led):
            pass
        rows, head = row_count(ledger_path), led.head
        released = []
        with pytest.raises(BudgetExceededError) as info:
            with charge(led, round=1):
                released.append(True)
        assert not released
        err = info.value
        assert (err.silo, err.dataset, err.delta) == ("site0", "ds", DELTA)
        assert err.spent == pytest.approx(one) and err.requested == pytest.approx(two)
        assert err.budget == pytest.approx((one + two) / 2)
        assert "site0" in str(err) and "'ds'" in str(err)
        assert row_count(ledger_path) == rows and led.head == head
        assert led.spent("ds") == pytest.approx(one)
        led.verify()


class TestLedgerRdp(LedgerContract):
    accountant = "rdp"


class TestLedgerPld(LedgerContract):
    accountant = "pld"


# ----------------------------------------------------------------------------- basics


def test_sqlite_wal_and_tables(ledger: PrivacyLedger, ledger_path: Path) -> None:
    assert ledger_path.exists()
    with sqlite3.connect(ledger_path) as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"meta", "entries"} <= tables


def test_register_is_idempotent_and_budgets_never_change(ledger: PrivacyLedger) -> None:
    ledger.register_dataset("ds", epsilon=8.0, delta=DELTA)
    ledger.register_dataset("ds", epsilon=8.0, delta=DELTA)
    assert ledger.datasets() == ["ds"]
    assert ledger.budget("ds") == (8.0, DELTA)
    with pytest.raises(ConfigError, match="already registered"):
        ledger.register_dataset("ds", epsilon=9.0, delta=DELTA)
    with pytest.raises(ConfigError):
        ledger.register_dataset("ds", epsilon=8.0, delta=1e-6)
    for eps, d in [(0.0, DELTA), (float("inf"), DELTA), (1.0, 0.0), (1.0, 1.0)]:
        with pytest.raises(ConfigError):
            ledger.register_dataset("other", epsilon=eps, delta=d)


def test_entries_record_everything(ledger: PrivacyLedger) -> None:
    ledger.register_dataset("ds", epsilon=50.0, delta=DELTA)
    with ledger.charge(
        "ds", GaussianEvent(1.1, 0.5, 4), job="j9", round=7, protocol="stats", mechanism={"name": "dgauss", "g": 2.0**-16},
        recipient="guest", level="record",
    ) as res:
        assert res.status == "reserved"
    assert res.status == "committed"
    (e,) = ledger.entries("ds")
    assert isinstance(e, LedgerEntry)
    assert (e.job, e.round, e.protocol, e.recipient, e.level, e.status) == ("j9", 7, "stats", "guest", "record", "committed")
    assert dict(e.mechanism) == {"name": "dgauss", "g": 2.0**-16}
    assert e.event == GaussianEvent(1.1, 0.5, 4) and e.delta == DELTA
    assert e.epsilon_spent == pytest.approx(res.epsilon_spent) and e.finalized_at is not None
    assert ledger.entries("other") == []


def test_exception_in_block_keeps_the_cost(ledger: PrivacyLedger) -> None:
    ledger.register_dataset("ds", epsilon=50.0, delta=DELTA)
    with pytest.raises(RuntimeError):
        with charge(ledger):
            raise RuntimeError("decryption failed half way")
    (e,) = ledger.entries()
    assert e.status == "aborted"
    assert ledger.spent("ds") == pytest.approx(epsilon(GaussianEvent(1.1), delta=DELTA))
    # a reservation never entered as a context manager also counts
    res = charge(ledger, round=1)
    assert ledger.entries()[-1].status == "reserved"
    assert ledger.spent("ds") == pytest.approx(epsilon(GaussianEvent(1.1, 1.0, 2), delta=DELTA))
    res.commit()
    res.commit()  # idempotent
    assert ledger.entries()[-1].status == "committed"
    ledger.verify()


def test_invalid_charges_write_nothing(ledger: PrivacyLedger, ledger_path: Path) -> None:
    ledger.register_dataset("ds", epsilon=50.0, delta=DELTA)
    before = row_count(ledger_path)
    base = dict(job="j", round=0, protocol="fedavg", mechanism=MECH, recipient="agg", level="silo")
    bad = [
        ("nope", GaussianEvent(1.0), base),  # unregistered dataset
        ("ds", {"kind": "gaussian"}, base),  # not an event
        ("ds", GaussianEvent(1.0), {**base, "level": "user"}),
        ("ds", GaussianEvent(1.0), {**base, "round": -1}),
        ("ds", GaussianEvent(1.0), {**base, "job": ""}),
        ("ds", GaussianEvent(1.0), {**base, "mechanism": {"sigma": float("nan")}}),
        ("ds", GaussianEvent(1.0), {**base, "mechanism": {"rng": object()}}),
    ]
    for dataset, event, kwargs in bad:
        with pytest.raises((ConfigError, PrivacyError)):
            ledger.charge(dataset, event, **kwargs)  # type: ignore[arg-type]
    assert row_count(ledger_path) == before


def test_report_and_levels(ledger: PrivacyLedger) -> None:
    ledger.register_dataset("a", epsilon=10.0, delta=DELTA)
    ledger.register_dataset("b", epsilon=5.0, delta=1e-6)
    ledger.register_dataset("c", epsilon=1.0, delta=1e-6)
    with charge(ledger, dataset="a"):
        pass
    with charge(ledger, event=LaplaceEvent(0.5), dataset="b", level="silo"):
        pass
    with charge(ledger, event=GaussianEvent(5.0), dataset="b", level="record"):
        pass
    charge(ledger, event=LaplaceEvent(0.1), dataset="b", round=2)  # pending
    reports = {r.dataset: r for r in ledger.report()}
    assert all(isinstance(r, DatasetReport) for r in reports.values())
    a, b, c = reports["a"], reports["b"], reports["c"]
    assert (a.releases, a.committed, a.pending, a.level, a.accountant) == (1, 1, 0, "silo", "rdp")
    assert (b.releases, b.committed, b.pending, b.level) == (3, 2, 1, "record")
    assert b.spent == pytest.approx(
        epsilon(ComposedEvent((LaplaceEvent(0.5), GaussianEvent(5.0), LaplaceEvent(0.1))), delta=1e-6)
    )
    assert b.remaining == pytest.approx(5.0 - b.spent)
    assert (c.releases, c.spent, c.remaining, c.level) == (0, 0.0, 1.0, None)
    assert set(a.to_json()) >= {"dataset", "epsilon_budget", "delta", "spent", "remaining", "releases"}


def test_reopen_checks_silo_and_accountant(ledger_path: Path) -> None:
    with PrivacyLedger(ledger_path, silo="site0") as led:
        led.register_dataset("ds", epsilon=1.0, delta=DELTA)
    with pytest.raises(ConfigError, match="belongs to silo"):
        PrivacyLedger(ledger_path, silo="site1")
    with pytest.raises(ConfigError, match="accountant"):
        PrivacyLedger(ledger_path, silo="site0", accountant="pld")
    with PrivacyLedger.open(ledger_path) as led:
        assert (led.silo, led.accountant, led.datasets()) == ("site0", "rdp", ["ds"])
    with pytest.raises(ConfigError, match="not found"):
        PrivacyLedger.open(ledger_path.with_name("missing.sqlite"))
    junk = ledger_path.with_name("junk.sqlite")
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError):
        PrivacyLedger.open(junk)


# ----------------------------------------------------------------------------- tamper evidence


def _populated(path: Path) -> None:
    with PrivacyLedger(path, silo="site0") as led:
        led.register_dataset("ds", epsilon=100.0, delta=DELTA)
        for r in range(3):
            with charge(led, round=r):
                pass
        led.verify()


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE entries SET epsilon = 0.01 WHERE kind = 'reserve' AND seq = 2",
        "UPDATE entries SET event = replace(event, '1.1', '11.0') WHERE seq = 4",
        "UPDATE entries SET epsilon = 1000.0 WHERE kind = 'register'",
        "UPDATE entries SET recipient = 'attacker' WHERE seq = 6",
        "DELETE FROM entries WHERE seq = 4",
        "DELETE FROM entries WHERE seq = (SELECT MAX(seq) FROM entries)",
        "DELETE FROM entries WHERE kind = 'reserve'",
        "INSERT INTO entries (seq, kind, time, dataset, prev_hash, hash) VALUES (100, 'commit', 't', 'ds', 'x', 'y')",
        "UPDATE meta SET value = 'site9' WHERE key = 'silo'",
    ],
)
def test_verify_detects_tampering(ledger_path: Path, sql: str) -> None:
    _populated(ledger_path)
    with sqlite3.connect(ledger_path) as c:
        c.execute(sql)
    with PrivacyLedger.open(ledger_path) as led:
        with pytest.raises(LedgerIntegrityError):
            led.verify()
        if "meta" not in sql:
            # a broken ledger is never charged
            n = row_count(ledger_path)
            with pytest.raises(LedgerIntegrityError):
                charge(led, round=9)
            assert row_count(ledger_path) == n


def test_verify_passes_on_untouched_ledger(ledger_path: Path) -> None:
    _populated(ledger_path)
    with PrivacyLedger.open(ledger_path) as led:
        led.verify()
        seq, head = led.head
        assert seq == 7 and len(head) == 64


# ----------------------------------------------------------------------------- processes


def test_sigkill_between_reserve_and_commit_keeps_the_cost(ledger_path: Path) -> None:
    with PrivacyLedger(ledger_path, silo="site0") as led:
        led.register_dataset("ds", epsilon=50.0, delta=DELTA)
        with charge(led):
            pass
        before = led.spent("ds")
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), "crash", str(ledger_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=worker_env(),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the reservation is durable
        assert line.startswith("RESERVED"), (line, proc.stderr.read() if proc.poll() is not None else "")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with PrivacyLedger(ledger_path, silo="site0") as led:
        led.verify()
        after = led.spent("ds")
        cost = epsilon(GaussianEvent(2.0), delta=DELTA)
        # The crashed release is counted: spent is the composition including it. Composition
        # is sub-additive, so it sits between before + 0 and before + cost.
        assert after == pytest.approx(epsilon(ComposedEvent((GaussianEvent(1.1), GaussianEvent(2.0))), delta=DELTA))
        assert max(before, cost) < after <= before + cost
        assert [e.status for e in led.entries("ds")] == ["committed", "reserved"]
        assert float(line.split()[1]) == pytest.approx(after)


def test_racing_processes_never_jointly_exceed_the_budget(ledger_path: Path, tmp_path: Path) -> None:
    fits = 3
    budget = epsilon(GaussianEvent(2.0, 1.0, fits), delta=DELTA) * (1 + 1e-9)
    with PrivacyLedger(ledger_path, silo="site0") as led:
        led.register_dataset("ds", epsilon=budget, delta=DELTA)
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), "race", str(ledger_path), str(go), "3"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=worker_env(),
        )
        for _ in range(3)
    ]
    try:
        time.sleep(0.3)
        go.touch()
        results = []
        for p in procs:
            out, err = p.communicate(timeout=45)
            assert p.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert sum(r["ok"] for r in results) == fits
    assert sum(r["refused"] for r in results) == 9 - fits
    with PrivacyLedger(ledger_path, silo="site0") as led:
        led.verify()
        assert len(led.entries("ds")) == fits
        assert led.spent("ds") <= budget
