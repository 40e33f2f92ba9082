"""PrivacyLedger: budget refusal, relations, write-ahead crash safety, races, tamper evidence, anchor."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedsilo.errors import BudgetExceededError, ConfigError, LedgerIntegrityError, PrivacyError
from fedsilo.privacy.accounting import epsilon, normalize
from fedsilo.privacy.events import ComposedEvent, GaussianEvent, LaplaceEvent
from fedsilo.privacy.ledger import DatasetReport, LedgerEntry, PrivacyLedger, anchor_path, key_path
from fedsilo.privacy.relations import ADD_REMOVE_RECORD, REPLACE_RECORD, ZERO_OUT_SILO

WORKER = Path(__file__).with_name("_ledger_worker.py")
REPO = Path(__file__).resolve().parents[2]
DELTA = 1e-5
MECH = {"name": "gaussian", "clip": 1.0, "sigma": 1.1}


def charge(ledger: PrivacyLedger, event=GaussianEvent(1.1), dataset: str = "ds", round: int = 0, relation: str = ZERO_OUT_SILO):  # type: ignore[no-untyped-def]
    return ledger.charge(
        dataset, event, job="job1", round=round, protocol="fedavg", mechanism=MECH, recipient="aggregator", relation=relation
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
        recipient="guest", relation=ADD_REMOVE_RECORD,
    ) as res:
        assert res.status == "reserved"
    assert res.status == "committed"
    (e,) = ledger.entries("ds")
    assert isinstance(e, LedgerEntry)
    assert (e.job, e.round, e.protocol, e.recipient, e.level, e.status) == ("j9", 7, "stats", "guest", "record", "committed")
    assert e.relation == ADD_REMOVE_RECORD and res.relation == ADD_REMOVE_RECORD
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
    base = dict(job="j", round=0, protocol="fedavg", mechanism=MECH, recipient="agg", relation=ZERO_OUT_SILO)
    bad = [
        ("nope", GaussianEvent(1.0), base),  # unregistered dataset
        ("ds", {"kind": "gaussian"}, base),  # not an event
        ("ds", GaussianEvent(1.0), {**base, "relation": "user"}),
        ("ds", GaussianEvent(1.0), {**base, "relation": "silo"}),  # a level is not a relation
        ("ds", GaussianEvent(1.0), {**base, "relation": None}),
        ("ds", GaussianEvent(1.0), {**base, "round": -1}),
        ("ds", GaussianEvent(1.0), {**base, "job": ""}),
        ("ds", GaussianEvent(1.0), {**base, "mechanism": {"sigma": float("nan")}}),
        ("ds", GaussianEvent(1.0), {**base, "mechanism": {"rng": object()}}),
    ]
    for dataset, event, kwargs in bad:
        with pytest.raises((ConfigError, PrivacyError)):
            ledger.charge(dataset, event, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(TypeError):  # `level=` is gone: the level is derived from the relation
        ledger.charge("ds", GaussianEvent(1.0), job="j", round=0, protocol="p", mechanism=MECH, recipient="a", level="silo")  # type: ignore[call-arg]
    with pytest.raises(TypeError):  # and the relation is required
        ledger.charge("ds", GaussianEvent(1.0), job="j", round=0, protocol="p", mechanism=MECH, recipient="a")  # type: ignore[call-arg]
    assert row_count(ledger_path) == before


def test_report_and_levels(ledger: PrivacyLedger) -> None:
    ledger.register_dataset("a", epsilon=10.0, delta=DELTA)
    ledger.register_dataset("b", epsilon=5.0, delta=1e-6)
    ledger.register_dataset("c", epsilon=1.0, delta=1e-6)
    with charge(ledger, dataset="a"):
        pass
    with charge(ledger, event=LaplaceEvent(0.5), dataset="b", relation=ZERO_OUT_SILO):
        pass
    with charge(ledger, event=GaussianEvent(5.0), dataset="b", relation=ADD_REMOVE_RECORD):
        pass
    charge(ledger, event=LaplaceEvent(0.1), dataset="b", round=2)  # pending
    reports = {r.dataset: r for r in ledger.report()}
    assert all(isinstance(r, DatasetReport) for r in reports.values())
    a, b, c = reports["a"], reports["b"], reports["c"]
    assert (a.releases, a.committed, a.pending, a.level, a.accountant) == (1, 1, 0, "silo", "rdp")
    assert a.relation == ZERO_OUT_SILO  # a silo-level-only dataset is silo level, never record
    assert (b.releases, b.committed, b.pending, b.level, b.relation) == (3, 2, 1, "record", ADD_REMOVE_RECORD)
    # the silo-level releases are re-counted per record: Laplace eps doubles
    assert b.spent == pytest.approx(
        epsilon(ComposedEvent((LaplaceEvent(1.0), GaussianEvent(5.0), LaplaceEvent(0.2))), delta=1e-6)
    )
    assert b.spent > epsilon(ComposedEvent((LaplaceEvent(0.5), GaussianEvent(5.0), LaplaceEvent(0.1))), delta=1e-6)
    assert b.remaining == pytest.approx(5.0 - b.spent)
    assert ledger.spent("b") == pytest.approx(b.spent) and ledger.remaining("b") == pytest.approx(b.remaining)
    assert (c.releases, c.spent, c.remaining, c.level, c.relation) == (0, 0.0, 1.0, None, None)
    assert set(a.to_json()) >= {"dataset", "epsilon_budget", "delta", "spent", "remaining", "releases", "relation", "level"}
    assert a.to_json()["relation"] == ZERO_OUT_SILO and c.to_json()["relation"] is None
    assert [e.relation for e in ledger.entries("b")] == [ZERO_OUT_SILO, ADD_REMOVE_RECORD, ZERO_OUT_SILO]
    assert [e.level for e in ledger.entries("b")] == ["silo", "record", "silo"]


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
        "UPDATE entries SET relation = 'add-remove-record', level = 'record' WHERE seq = 2",
        "UPDATE entries SET relation = 'replace-record' WHERE seq = 4",
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
        # every process advanced the anchor after each of its commits; none moved it backwards
        assert led.anchored == led.head


# ----------------------------------------------------------------------------- neighbouring relations


def _snapshot(path: Path) -> tuple[int, bytes]:
    """Row count and anchor bytes: what a refused charge must leave untouched."""
    return row_count(path), anchor_path(path).read_bytes()


@pytest.mark.parametrize(
    ("first", "second", "names"),
    [
        # a Poisson-subsampled silo-level event cannot be re-counted per record
        ((GaussianEvent(2.0, 0.5, 3), ZERO_OUT_SILO), (GaussianEvent(2.0), ADD_REMOVE_RECORD), (ZERO_OUT_SILO, ADD_REMOVE_RECORD)),
        # DP-SGD (add/remove, q < 1) has no sound replace-one form
        ((GaussianEvent(1.0, 0.01, 100), ADD_REMOVE_RECORD), (GaussianEvent(2.0), REPLACE_RECORD), (ADD_REMOVE_RECORD, REPLACE_RECORD)),
        ((GaussianEvent(1.0, 0.01, 100), ADD_REMOVE_RECORD), (LaplaceEvent(0.1), REPLACE_RECORD), (ADD_REMOVE_RECORD, REPLACE_RECORD)),
        # ... in either order: the new release is the subsampled one
        ((GaussianEvent(2.0), REPLACE_RECORD), (GaussianEvent(1.0, 0.01, 100), ADD_REMOVE_RECORD), (ADD_REMOVE_RECORD, REPLACE_RECORD)),
        ((LaplaceEvent(0.3), ADD_REMOVE_RECORD), (GaussianEvent(2.0, 0.2), ZERO_OUT_SILO), (ZERO_OUT_SILO, ADD_REMOVE_RECORD)),
        # a composition is converted element-wise: one subsampled element refuses all of it
        (
            (ComposedEvent((GaussianEvent(3.0), GaussianEvent(2.0, 0.5))), ZERO_OUT_SILO),
            (LaplaceEvent(0.1), REPLACE_RECORD),
            (ZERO_OUT_SILO, REPLACE_RECORD),
        ),
    ],
)
def test_mixed_relations_that_cannot_be_converted_are_refused(
    ledger: PrivacyLedger, ledger_path: Path, first: tuple, second: tuple, names: tuple[str, str]  # type: ignore[type-arg]
) -> None:
    ledger.register_dataset("ds", epsilon=1000.0, delta=DELTA)
    with charge(ledger, event=first[0], relation=first[1]):
        pass
    before, spent = _snapshot(ledger_path), ledger.spent("ds")
    released = []
    with pytest.raises(PrivacyError) as info:
        with charge(ledger, event=second[0], relation=second[1], round=1):
            released.append(True)
    assert not released and not isinstance(info.value, BudgetExceededError)
    message = str(info.value)
    for name in names:
        assert repr(name) in message, message
    assert "site0" in message and "'ds'" in message and "nothing was written" in message
    assert _snapshot(ledger_path) == before and ledger.spent("ds") == spent
    assert [e.relation for e in ledger.entries("ds")] == [first[1]]
    ledger.verify()
    # the same release under the dataset's own relation is still accepted, unless a subsampled
    # Gaussian would be charged as replace-one (the accountant's bound is the add/remove one)
    subsampled = any(isinstance(e, GaussianEvent) and e.sample_rate < 1 for e in normalize(second[0]))
    if subsampled and first[1] == REPLACE_RECORD:
        with pytest.raises(PrivacyError, match="cannot be charged under 'replace-record'"):
            with charge(ledger, event=second[0], relation=first[1], round=2):
                pass
    else:
        with charge(ledger, event=second[0], relation=first[1], round=2):
            pass


def test_silo_level_releases_are_recounted_per_record(ledger: PrivacyLedger) -> None:
    # silo_level.toml's shape: 8 rounds at z = 1.7 (q = 1) ...
    ledger.register_dataset("ds", epsilon=100.0, delta=DELTA)
    for r in range(8):
        with charge(ledger, event=GaussianEvent(1.7), round=r, relation=ZERO_OUT_SILO):
            pass
    silo = epsilon(GaussianEvent(1.7, 1.0, 8), delta=DELTA)
    (rep,) = ledger.report()
    assert (rep.relation, rep.level) == (ZERO_OUT_SILO, "silo") and rep.spent == pytest.approx(silo)
    # ... then one DP-SGD release: the silo-level rounds now count at z/2 for every record
    dpsgd = GaussianEvent(1.0, 0.01, 100)
    with charge(ledger, event=dpsgd, round=8, relation=ADD_REMOVE_RECORD) as res:
        pass
    expected = epsilon(ComposedEvent((GaussianEvent(0.85, 1.0, 8), dpsgd)), delta=DELTA)
    (rep,) = ledger.report()
    assert (rep.relation, rep.level) == (ADD_REMOVE_RECORD, "record")
    assert rep.spent == pytest.approx(expected) and res.epsilon_spent == pytest.approx(expected)
    assert rep.spent > 2 * silo  # not the silo-level number
    assert ledger.entries()[-1].epsilon_spent == pytest.approx(expected)


def test_budget_check_uses_the_converted_events(ledger: PrivacyLedger, ledger_path: Path) -> None:
    silo = epsilon(GaussianEvent(2.0, 1.0, 2), delta=DELTA)
    naive = epsilon(GaussianEvent(2.0, 1.0, 3), delta=DELTA)  # as if all three were one relation
    converted = epsilon(GaussianEvent(1.0, 1.0, 3), delta=DELTA)  # the silo rounds per record
    assert naive < converted
    ledger.register_dataset("ds", epsilon=(naive + converted) / 2, delta=DELTA)
    for r in range(2):
        with charge(ledger, event=GaussianEvent(2.0), round=r, relation=ZERO_OUT_SILO):
            pass
    assert ledger.spent("ds") == pytest.approx(silo)
    rows = row_count(ledger_path)
    with pytest.raises(BudgetExceededError) as info:
        charge(ledger, event=GaussianEvent(1.0), round=2, relation=REPLACE_RECORD)
    assert info.value.requested == pytest.approx(converted) and info.value.spent == pytest.approx(silo)
    assert row_count(ledger_path) == rows
    # under the silo relation the same noise still fits
    with charge(ledger, event=GaussianEvent(2.0), round=2, relation=ZERO_OUT_SILO):
        pass


def test_v1_ledger_is_refused(ledger_path: Path) -> None:
    ledger_path.parent.mkdir(parents=True)
    with sqlite3.connect(ledger_path) as c:
        c.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        c.execute(
            "CREATE TABLE entries (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, time TEXT NOT NULL, "
            "dataset TEXT NOT NULL, reservation TEXT, job TEXT, round INTEGER, protocol TEXT, "
            "mechanism TEXT, event TEXT, recipient TEXT, level TEXT, epsilon REAL, delta REAL, "
            "note TEXT, prev_hash TEXT NOT NULL, hash TEXT NOT NULL UNIQUE)"
        )
        genesis = hashlib.sha256(b'{"accountant":"rdp","fedsilo_ledger":1,"silo":"site0"}').hexdigest()
        c.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [("schema_version", "1"), ("silo", "site0"), ("accountant", "rdp"), ("head_seq", "0"), ("head_hash", genesis)],
        )
    for opener in (lambda: PrivacyLedger(ledger_path, silo="site0"), lambda: PrivacyLedger.open(ledger_path)):
        with pytest.raises(ConfigError, match="predates neighbouring relations"):
            opener()
    assert not anchor_path(ledger_path).exists() and not key_path(ledger_path).exists()
    with sqlite3.connect(ledger_path) as c:  # untouched
        assert c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "1"


# ----------------------------------------------------------------------------- anchor: rollback and truncation


def _releases(path: Path, rounds: range) -> None:
    with PrivacyLedger(path, silo="site0") as led:
        led.register_dataset("ds", epsilon=100.0, delta=DELTA)
        for r in rounds:
            with charge(led, round=r):
                pass


def _copy_db(src: Path, dst: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(str(dst) + suffix).unlink(missing_ok=True)
    shutil.copyfile(src, dst)


def test_new_ledger_creates_key_and_anchor(ledger_path: Path) -> None:
    old = os.umask(0o000)  # even a permissive umask gives a private key
    try:
        with PrivacyLedger(ledger_path, silo="site0") as led:
            assert (led.anchor_path, led.key_path) == (anchor_path(ledger_path), key_path(ledger_path))
            assert led.anchored == led.head and led.head[0] == 0
    finally:
        os.umask(old)
    key = key_path(ledger_path)
    assert key.name == "privacy.sqlite.key" and anchor_path(ledger_path).name == "privacy.sqlite.anchor"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32
    anchor = json.loads(anchor_path(ledger_path).read_text())
    assert set(anchor) == {"fedsilo_anchor", "silo", "seq", "hash", "mac"} and anchor["seq"] == 0
    assert not list(ledger_path.parent.glob("*.tmp")) and not list(ledger_path.parent.glob("*.new"))
    # a second ledger gets its own key
    other = ledger_path.with_name("other.sqlite")
    PrivacyLedger(other, silo="site0").close()
    assert key_path(other).read_bytes() != key.read_bytes()


def test_anchor_follows_every_committed_row(ledger: PrivacyLedger) -> None:
    ledger.register_dataset("ds", epsilon=100.0, delta=DELTA)
    assert ledger.anchored == ledger.head == (1, ledger.head[1])
    res = charge(ledger)
    assert ledger.anchored == ledger.head and ledger.head[0] == 2  # the reservation is anchored
    res.commit()
    assert ledger.anchored == ledger.head and ledger.head[0] == 3


def test_restoring_an_earlier_copy_of_the_database_is_detected(ledger_path: Path, tmp_path: Path) -> None:
    _releases(ledger_path, range(3))
    aside = tmp_path / "aside.sqlite"
    _copy_db(ledger_path, aside)
    _releases(ledger_path, range(3, 6))
    _copy_db(aside, ledger_path)  # roll the database back: a valid, shorter chain
    with PrivacyLedger.open(ledger_path) as led:
        with pytest.raises(LedgerIntegrityError, match=r"ends at seq 7 but its anchor .*privacy\.sqlite\.anchor records seq 13: the database was rolled back or truncated"):
            led.verify()
        for read in (lambda: led.spent("ds"), led.report, led.entries, lambda: led.head):
            with pytest.raises(LedgerIntegrityError, match="rolled back"):
                read()
        with pytest.raises(LedgerIntegrityError):
            charge(led, round=9)
    assert row_count(ledger_path) == 7


def test_truncating_rows_and_rewriting_the_head_is_detected(ledger_path: Path) -> None:
    _releases(ledger_path, range(3))
    with sqlite3.connect(ledger_path) as c:
        (h4,) = c.execute("SELECT hash FROM entries WHERE seq = 4").fetchone()
        c.execute("DELETE FROM entries WHERE seq > 4")
        c.execute("UPDATE meta SET value = '4' WHERE key = 'head_seq'")
        c.execute("UPDATE meta SET value = ? WHERE key = 'head_hash'", (h4,))
    with PrivacyLedger.open(ledger_path) as led:
        with pytest.raises(LedgerIntegrityError, match=r"ends at seq 4 but its anchor .* records seq 7: the database was rolled back or truncated"):
            led.verify()
        n = row_count(ledger_path)
        with pytest.raises(LedgerIntegrityError):
            charge(led, round=9)
        assert row_count(ledger_path) == n


def test_deleting_every_row_is_detected(ledger_path: Path) -> None:
    _releases(ledger_path, range(3))
    with sqlite3.connect(ledger_path) as c:
        (first_prev,) = c.execute("SELECT prev_hash FROM entries WHERE seq = 1").fetchone()
        c.execute("DELETE FROM entries")
        c.execute("UPDATE meta SET value = '0' WHERE key = 'head_seq'")
        c.execute("UPDATE meta SET value = ? WHERE key = 'head_hash'", (first_prev,))
    with PrivacyLedger(ledger_path, silo="site0") as led:  # reopening does not "start afresh"
        with pytest.raises(LedgerIntegrityError, match="ends at seq 0 but its anchor .* records seq 7"):
            led.verify()
        with pytest.raises(LedgerIntegrityError):
            led.register_dataset("ds", epsilon=100.0, delta=DELTA)
    assert row_count(ledger_path) == 0


def test_replacing_the_database_by_a_fresh_one_is_detected(ledger_path: Path) -> None:
    _releases(ledger_path, range(2))
    for suffix in ("", "-wal", "-shm"):
        Path(str(ledger_path) + suffix).unlink(missing_ok=True)
    with PrivacyLedger(ledger_path, silo="site0") as led:
        with pytest.raises(LedgerIntegrityError, match="ends at seq 0 but its anchor .* records seq 5"):
            led.verify()


def test_a_different_database_at_the_anchored_seq_is_detected(ledger_path: Path, tmp_path: Path) -> None:
    _releases(ledger_path, range(2))
    other = tmp_path / "other" / "privacy.sqlite"
    _releases(other, range(3))  # same silo, same accountant, more rows, another history
    _copy_db(other, ledger_path)
    with PrivacyLedger.open(ledger_path) as led:
        with pytest.raises(LedgerIntegrityError, match="entry seq=5 is not the one its anchor"):
            led.verify()


def test_database_ahead_of_the_anchor_is_accepted(ledger_path: Path) -> None:
    """A crash between a row's commit and the anchor's advance leaves the database ahead."""
    _releases(ledger_path, range(2))
    lagging = anchor_path(ledger_path).read_bytes()  # an authentic, older anchor
    _releases(ledger_path, range(2, 3))
    anchor_path(ledger_path).write_bytes(lagging)
    with PrivacyLedger.open(ledger_path) as led:
        led.verify()
        assert led.anchored[0] == 5 and led.head[0] == 7
        with charge(led, round=9):  # the next commit moves the anchor to the tail again
            pass
        assert led.anchored == led.head


def test_the_anchor_never_moves_backwards(ledger: PrivacyLedger, ledger_path: Path) -> None:
    ledger.register_dataset("ds", epsilon=100.0, delta=DELTA)
    with charge(ledger):
        pass
    early = ledger.entries()[0]
    with sqlite3.connect(ledger_path) as c:
        (h2,) = c.execute("SELECT hash FROM entries WHERE seq = ?", (early.seq,)).fetchone()
    head = ledger.head
    # a process that lost the race to a later row tries to anchor its own, earlier row
    ledger._advance_anchor(early.seq, h2)
    assert ledger.anchored == head
    with PrivacyLedger(ledger_path, silo="site0") as second:  # two objects, one ledger
        with charge(second, round=1):
            pass
        assert ledger.anchored == second.head
    ledger._advance_anchor(head[0], head[1])
    assert ledger.anchored[0] == head[0] + 2


def test_missing_anchor_is_detected(ledger_path: Path) -> None:
    _releases(ledger_path, range(1))
    anchor_path(ledger_path).unlink()
    with PrivacyLedger(ledger_path, silo="site0") as led:  # reopening does not recreate it
        with pytest.raises(LedgerIntegrityError, match=r"anchor .*privacy\.sqlite\.anchor is missing"):
            led.verify()
        n = row_count(ledger_path)
        with pytest.raises(LedgerIntegrityError, match="missing"):
            charge(led, round=1)
        assert row_count(ledger_path) == n
    assert not anchor_path(ledger_path).exists()


@pytest.mark.parametrize(
    "forge",
    [
        lambda a: {**a, "seq": a["seq"] - 2},  # edited without the key
        lambda a: {**a, "hash": "0" * 64},
        lambda a: {**a, "mac": "0" * 64},
        lambda a: {**a, "silo": "site9"},
        lambda a: {k: v for k, v in a.items() if k != "mac"},
        lambda a: "not an object",
    ],
)
def test_forged_anchor_is_detected(ledger_path: Path, forge) -> None:  # type: ignore[no-untyped-def]
    _releases(ledger_path, range(2))
    path = anchor_path(ledger_path)
    path.write_text(json.dumps(forge(json.loads(path.read_text()))))
    with PrivacyLedger.open(ledger_path) as led:
        with pytest.raises(LedgerIntegrityError, match="anchor"):
            led.verify()
        with pytest.raises(LedgerIntegrityError):
            charge(led, round=5)


def test_anchor_under_another_key_is_detected(ledger_path: Path, tmp_path: Path) -> None:
    _releases(ledger_path, range(1))
    other = tmp_path / "o" / "privacy.sqlite"
    _releases(other, range(1))  # identical history (same silo, same rows but times), another key
    shutil.copyfile(anchor_path(other), anchor_path(ledger_path))
    with PrivacyLedger.open(ledger_path) as led:
        with pytest.raises(LedgerIntegrityError, match="does not authenticate under its key"):
            led.verify()
    (tmp_path / "junk.anchor").write_bytes(b"\xff\xfe" * 10)
    shutil.copyfile(tmp_path / "junk.anchor", anchor_path(ledger_path))
    with PrivacyLedger.open(ledger_path) as led:
        with pytest.raises(LedgerIntegrityError, match="not valid JSON"):
            led.verify()


def test_missing_key_for_a_ledger_with_rows_is_detected(ledger_path: Path) -> None:
    _releases(ledger_path, range(1))
    key_path(ledger_path).unlink()
    with PrivacyLedger(ledger_path, silo="site0") as led:  # reopening does not create a new key
        with pytest.raises(LedgerIntegrityError, match=r"has 3 entries but its key file .*privacy\.sqlite\.key is missing"):
            led.verify()
        with pytest.raises(LedgerIntegrityError):
            charge(led, round=1)
    assert not key_path(ledger_path).exists()


def test_wiping_rows_and_key_does_not_start_afresh_while_the_anchor_remembers(ledger_path: Path) -> None:
    _releases(ledger_path, range(2))
    with sqlite3.connect(ledger_path) as c:
        (first_prev,) = c.execute("SELECT prev_hash FROM entries WHERE seq = 1").fetchone()
        c.execute("DELETE FROM entries")
        c.execute("UPDATE meta SET value = '0' WHERE key = 'head_seq'")
        c.execute("UPDATE meta SET value = ? WHERE key = 'head_hash'", (first_prev,))
    key_path(ledger_path).unlink()
    with PrivacyLedger(ledger_path, silo="site0") as led:
        with pytest.raises(LedgerIntegrityError, match="key file .* is missing"):
            led.verify()
    assert not key_path(ledger_path).exists()


def test_interrupted_creation_is_completed(ledger_path: Path) -> None:
    """A crash after the genesis anchor but before the key was put in place: no rows, no key."""
    PrivacyLedger(ledger_path, silo="site0").close()
    key_path(ledger_path).unlink()
    key_path(ledger_path).with_name(key_path(ledger_path).name + ".new").write_bytes(b"half")
    with PrivacyLedger(ledger_path, silo="site0") as led:
        led.verify()
        led.register_dataset("ds", epsilon=1.0, delta=DELTA)
        assert led.anchored == led.head
    assert len(key_path(ledger_path).read_bytes()) == 32


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o644, 0o666])
def test_key_accessible_by_others_is_refused(ledger_path: Path, mode: int) -> None:
    _releases(ledger_path, range(1))
    key_path(ledger_path).chmod(mode)
    with pytest.raises(ConfigError, match=r"accessible by group or others .*chmod 600"):
        PrivacyLedger(ledger_path, silo="site0")
    with pytest.raises(ConfigError, match="accessible by group or others"):
        PrivacyLedger.open(ledger_path)
    key_path(ledger_path).chmod(0o600)
    with PrivacyLedger(ledger_path, silo="site0") as led:
        led.verify()
        key_path(ledger_path).chmod(mode)  # loosened while open: refused on the next use
        with pytest.raises(ConfigError, match="accessible by group or others"):
            led.verify()
        n = row_count(ledger_path)
        with pytest.raises(ConfigError):
            charge(led, round=1)
        assert row_count(ledger_path) == n


def test_key_symlink_or_wrong_size_is_refused(ledger_path: Path, tmp_path: Path) -> None:
    _releases(ledger_path, range(1))
    key = key_path(ledger_path)
    real = tmp_path / "real.key"
    real.write_bytes(key.read_bytes())
    real.chmod(0o600)
    key.unlink()
    key.symlink_to(real)
    with pytest.raises(LedgerIntegrityError, match="symbolic link"):
        PrivacyLedger(ledger_path, silo="site0")
    key.unlink()
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"short")
    os.close(fd)
    with pytest.raises(LedgerIntegrityError, match="expected 32 bytes, found 5"):
        PrivacyLedger(ledger_path, silo="site0")


@pytest.mark.parametrize("content", [b"", b"not a database\n", None])
def test_open_refuses_a_non_ledger_file_and_leaves_it_byte_for_byte(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "x.sqlite"
    if content is None:  # a SQLite database that is not a ledger (rollback journal, not WAL)
        with sqlite3.connect(path) as c:
            c.execute("CREATE TABLE t (a)")
        c.close()
    else:
        path.write_bytes(content)
    before = path.read_bytes()
    with pytest.raises(ConfigError, match=r"^not a fedsilo privacy ledger: .*x\.sqlite \("):
        PrivacyLedger.open(path)
    assert path.read_bytes() == before  # no WAL switch, no page written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.sqlite"]  # no -wal, -shm, key or anchor


def test_a_covered_charge_without_its_cover_on_a_fresh_dataset_says_only_why(tmp_path: Path) -> None:
    from fedsilo.privacy.events import CoveredEvent

    with PrivacyLedger(tmp_path / "l.sqlite", silo="site0") as led:
        led.register_dataset("ds", epsilon=8.0, delta=1e-5)
        with pytest.raises(PrivacyError) as err:
            led.charge("ds", CoveredEvent(GaussianEvent(1.1), cover="sparse-vector"), job="j", round=0,
                       protocol="p", mechanism={"name": "gaussian"}, recipient="agg", relation=ADD_REMOVE_RECORD)
        text = str(err.value)
        assert text.startswith("silo 'site0', dataset 'ds': ") and text.endswith("; nothing was written")
        assert "earlier releases" not in text and "under :" not in text
        assert led.entries("ds") == []
