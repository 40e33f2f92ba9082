"""The per-silo privacy ledger: a durable, append-only, hash-chained record of every release.

One SQLite file per silo (WAL, ``synchronous=FULL``). Each dataset is registered once with a
budget (ε, δ). Every release goes through :meth:`PrivacyLedger.charge`, which is written
**before** the release happens (write-ahead):

1. *reserve* — in one ``BEGIN IMMEDIATE`` transaction: verify the hash chain, compose the
   events of every earlier reservation of the dataset with the new one
   (:func:`fedsilo.privacy.accounting.epsilon`, at the dataset's δ, with the ledger's
   accountant — never a naive sum of ε), and either raise
   :class:`~fedsilo.errors.BudgetExceededError` (nothing written) or append a ``reserve`` row;
2. *release* — the caller's ``with`` block (decrypt, publish, send);
3. *commit* — on leaving the block normally, a ``commit`` row is appended; if the block
   raised, an ``abort`` row is appended instead.

Reserved rows **always** count, committed or not: a crash (even SIGKILL) between reserve and
commit, or an exception after a partial release, can over-count ε but never under-count it.
There is no refund.

``BEGIN IMMEDIATE`` takes SQLite's write lock before the budget is read, so two processes (or
threads) charging one ledger are serialized and can never jointly exceed a budget; the busy
timeout makes the second one wait instead of failing.

Rows are never updated or deleted. Each row stores ``hash = sha256(prev_hash + canonical
JSON of the row)``; the first row chains to a genesis hash derived from the silo name and the
accountant, and the ``meta`` table keeps the head (last seq and hash). :meth:`verify` detects
an edited, deleted, inserted or truncated row. The chain is tamper-*evident* against naive
edits; someone who can rewrite the whole file can recompute it, so export :attr:`head` to an
external audit log if that matters.

Who is protected (``level``) is stored with every release: ``"silo"`` (a silo's whole dataset,
e.g. DP-FedAvg on clipped silo updates) or ``"record"`` (one patient/customer, e.g. DP-SGD).
A silo-level guarantee implies the same record-level guarantee, so mixing levels on one dataset
is allowed; the dataset report then states ``level="record"``: the spent ε protects records,
not the whole silo.
"""
from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import sqlite3
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Final

from fedsilo.errors import (
    BudgetExceededError,
    ConfigError,
    LedgerIntegrityError,
    PrivacyError,
    PrivacyParameterError,
)
from fedsilo.privacy.accounting import ACCOUNTANTS, epsilon, normalize
from fedsilo.privacy.events import ComposedEvent, DpEvent, event_from_json

__all__ = [
    "LEVELS",
    "PrivacyLedger",
    "Reservation",
    "LedgerEntry",
    "DatasetReport",
]

#: Protection levels recorded with each release.
LEVELS: tuple[str, ...] = ("silo", "record")

SCHEMA_VERSION: Final = 1
_BUSY_TIMEOUT_S: Final = 60.0
_COLUMNS: Final = (
    "seq",
    "kind",
    "time",
    "dataset",
    "reservation",
    "job",
    "round",
    "protocol",
    "mechanism",
    "event",
    "recipient",
    "level",
    "epsilon",
    "delta",
    "note",
    "prev_hash",
)

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS entries (
        seq         INTEGER PRIMARY KEY,   -- 1, 2, 3, ... without gaps
        kind        TEXT NOT NULL CHECK (kind IN ('register', 'reserve', 'commit', 'abort')),
        time        TEXT NOT NULL,         -- ISO 8601, UTC
        dataset     TEXT NOT NULL,
        reservation TEXT,                  -- reservation id (reserve, commit and abort rows)
        job         TEXT,
        round       INTEGER,
        protocol    TEXT,
        mechanism   TEXT,                  -- canonical JSON: mechanism name and parameters
        event       TEXT,                  -- canonical JSON of the DP event (reserve rows)
        recipient   TEXT,
        level       TEXT,
        epsilon     REAL,                  -- register: budget, reserve: spent after release
        delta       REAL,                  -- register: budget delta, reserve: delta of epsilon
        note        TEXT,                  -- abort: the exception type
        prev_hash   TEXT NOT NULL,
        hash        TEXT NOT NULL UNIQUE
    )""",
    "CREATE INDEX IF NOT EXISTS entries_dataset ON entries (dataset, kind)",
)


def _canonical(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _genesis(silo: str, accountant: str) -> str:
    return hashlib.sha256(
        _canonical({"fedsilo_ledger": SCHEMA_VERSION, "silo": silo, "accountant": accountant}).encode()
    ).hexdigest()


def _row_hash(row: Mapping[str, Any]) -> str:
    body = {k: row[k] for k in _COLUMNS}
    return hashlib.sha256((row["prev_hash"] + _canonical(body)).encode()).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _name(what: str, value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > 256:
        raise ConfigError(f"{what} must be a non-empty string of at most 256 characters, got {value!r}")
    if any(ord(c) < 32 for c in value):
        raise ConfigError(f"{what} must not contain control characters, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One release as recorded in the ledger (the ``reserve`` row plus its outcome).

    ``status`` is ``"reserved"`` (no commit: crash or still running — counted),
    ``"committed"`` (released) or ``"aborted"`` (the block raised — still counted).
    ``epsilon_spent`` is the dataset's total ε right after this release, at ``delta``.
    """

    seq: int
    reservation_id: str
    time: str
    dataset: str
    job: str
    round: int
    protocol: str
    mechanism: Mapping[str, Any]
    event: DpEvent
    recipient: str
    level: str
    epsilon_spent: float
    delta: float
    status: str
    finalized_at: str | None


@dataclass(frozen=True, slots=True)
class DatasetReport:
    """Budget and spending of one dataset, as of the report.

    ``level`` is ``"record"`` if any release protected only records, ``"silo"`` if all
    releases were silo-level, ``None`` if nothing was released yet.
    """

    dataset: str
    epsilon_budget: float
    delta: float
    spent: float
    remaining: float
    releases: int
    committed: int
    aborted: int
    pending: int
    level: str | None
    accountant: str

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the ``fedsilo privacy report --json`` dataset shape)."""
        return {
            "dataset": self.dataset,
            "epsilon_budget": self.epsilon_budget,
            "delta": self.delta,
            "spent": self.spent,
            "remaining": self.remaining,
            "releases": self.releases,
            "committed": self.committed,
            "aborted": self.aborted,
            "pending": self.pending,
            "level": self.level,
            "accountant": self.accountant,
        }


class Reservation:
    """A reserved (already counted) release; a context manager that commits on success.

    Returned by :meth:`PrivacyLedger.charge`. Leaving the ``with`` block normally appends a
    ``commit`` row; leaving it with an exception appends an ``abort`` row. Either way the cost
    stays counted.
    """

    __slots__ = ("_ledger", "reservation_id", "dataset", "event", "epsilon_spent", "_status")

    def __init__(
        self, ledger: PrivacyLedger, reservation_id: str, dataset: str, event: DpEvent, spent: float
    ) -> None:
        self._ledger = ledger
        self.reservation_id = reservation_id
        self.dataset = dataset
        self.event = event
        #: the dataset's ε including this release
        self.epsilon_spent = spent
        self._status = "reserved"

    @property
    def status(self) -> str:
        """``"reserved"``, ``"committed"`` or ``"aborted"`` (as known to this object)."""
        return self._status

    def commit(self) -> None:
        """Record that the release happened. Idempotent; refused after an abort."""
        if self._status == "committed":
            return
        if self._status != "reserved":
            raise PrivacyError(f"reservation {self.reservation_id} was {self._status}; cannot commit")
        self._ledger._finalize(self, "commit", None)
        self._status = "committed"

    def __enter__(self) -> Reservation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
            return
        if self._status == "reserved":
            try:
                self._ledger._finalize(self, "abort", exc_type.__name__)
                self._status = "aborted"
            except (sqlite3.Error, PrivacyError):
                # Never mask the caller's exception; the reserve row already counts.
                pass

    def __repr__(self) -> str:
        return (
            f"Reservation(id={self.reservation_id!r}, dataset={self.dataset!r}, "
            f"epsilon_spent={self.epsilon_spent:.4g}, status={self._status!r})"
        )


class PrivacyLedger:
    """Per-silo ε ledger in SQLite (see the module docstring for the guarantees).

    Args:
        path: the SQLite file; created (with parent directories) if missing.
        silo: this silo's name; must match the name the ledger was created with.
        accountant: ``"rdp"`` or ``"pld"``; fixed when the ledger is created.

    Raises:
        ConfigError: silo or accountant differs from the stored one, or the file is not a
            fedsilo ledger.
    """

    def __init__(self, path: str | os.PathLike[str], *, silo: str, accountant: str = "rdp") -> None:
        self._silo = _name("silo", silo)
        if accountant not in ACCOUNTANTS:
            raise PrivacyParameterError(
                f"unknown accountant {accountant!r}; expected one of {', '.join(ACCOUNTANTS)}"
            )
        self._accountant = accountant
        self._path = Path(path)
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the directory of ledger {self._path}: {exc}") from None
        self._lock = threading.RLock()
        self._verified: dict[int, tuple[Any, ...]] = {}
        self._event_cache: dict[str, DpEvent] = {}
        self._conn = self._connect(self._path, create=True)
        try:
            self._init_schema()
        except BaseException:
            self._conn.close()
            raise

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> PrivacyLedger:
        """Open an existing ledger with its stored silo name and accountant (never creates).

        Raises:
            ConfigError: the file does not exist or is not a fedsilo ledger.
        """
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"ledger not found: {p}")
        conn = cls._connect(p, create=False)
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"not a fedsilo privacy ledger: {p} ({exc})") from None
        finally:
            conn.close()
        if "silo" not in meta or "accountant" not in meta:
            raise ConfigError(f"not a fedsilo privacy ledger: {p} (no silo/accountant in meta)")
        return cls(p, silo=meta["silo"], accountant=meta["accountant"])

    @staticmethod
    def _connect(path: Path, *, create: bool) -> sqlite3.Connection:
        uri = path.absolute().as_uri() + ("?mode=rwc" if create else "?mode=rw")
        try:
            conn = sqlite3.connect(
                uri,
                uri=True,
                timeout=_BUSY_TIMEOUT_S,  # busy handler: wait for the other writer
                isolation_level=None,  # explicit BEGIN IMMEDIATE / COMMIT only
                check_same_thread=False,  # guarded by self._lock
            )
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ConfigError(f"cannot switch ledger {path} to WAL mode (got {mode!r})")
            # FULL: a committed reservation survives power loss (NORMAL could lose it).
            conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"cannot open privacy ledger {path}: {exc}") from None
        return conn

    def _init_schema(self) -> None:
        with self._lock, self._write():
            for statement in _SCHEMA:
                self._conn.execute(statement)
            meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
            if not meta:
                genesis = _genesis(self._silo, self._accountant)
                self._conn.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [
                        ("schema_version", str(SCHEMA_VERSION)),
                        ("silo", self._silo),
                        ("accountant", self._accountant),
                        ("head_seq", "0"),
                        ("head_hash", genesis),
                    ],
                )
                return
            if meta.get("schema_version") != str(SCHEMA_VERSION):
                raise ConfigError(
                    f"ledger {self._path} has schema version {meta.get('schema_version')!r}; "
                    f"this fedsilo reads version {SCHEMA_VERSION}"
                )
            if meta.get("silo") != self._silo:
                raise ConfigError(
                    f"ledger {self._path} belongs to silo {meta.get('silo')!r}, not {self._silo!r}"
                )
            if meta.get("accountant") != self._accountant:
                raise ConfigError(
                    f"ledger {self._path} uses accountant {meta.get('accountant')!r}; "
                    f"it cannot be opened with {self._accountant!r}"
                )

    # ------------------------------------------------------------------ transactions

    class _Tx:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self._conn = conn

        def __enter__(self) -> sqlite3.Connection:
            self._conn.execute("BEGIN IMMEDIATE")
            return self._conn

        def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
            if exc_type is None:
                self._conn.execute("COMMIT")
            else:
                self._conn.execute("ROLLBACK")

    def _write(self) -> PrivacyLedger._Tx:
        return PrivacyLedger._Tx(self._conn)

    def _rows(self) -> list[dict[str, Any]]:
        cur = self._conn.execute(
            f"SELECT {', '.join(_COLUMNS)}, hash FROM entries ORDER BY seq"
        )
        return [dict(r) for r in cur.fetchall()]

    def _meta(self) -> dict[str, str]:
        return dict(self._conn.execute("SELECT key, value FROM meta").fetchall())

    def _broken(self, row: Mapping[str, Any], what: str) -> LedgerIntegrityError:
        return LedgerIntegrityError(f"ledger {self._path}, entry seq={row['seq']}: {what}")

    def _check_chain(self, rows: list[dict[str, Any]], *, use_cache: bool = True) -> None:
        meta = self._meta()
        prev = _genesis(self._silo, self._accountant)
        registered: set[str] = set()
        reserved: set[str] = set()
        finalized: set[str] = set()
        verified: dict[int, tuple[Any, ...]] = {}
        for i, row in enumerate(rows, start=1):
            if row["seq"] != i:
                raise self._broken(row, f"expected seq {i} (a row was deleted or inserted)")
            if row["prev_hash"] != prev:
                raise self._broken(row, "previous-hash link broken")
            values = tuple(row[c] for c in _COLUMNS) + (row["hash"],)
            # A row identical (every column) to one already verified has the same hash.
            cached = use_cache and self._verified.get(i) == values
            if not cached and _row_hash(row) != row["hash"]:
                raise self._broken(row, "content does not match its hash (row edited)")
            verified[i] = values
            kind = row["kind"]
            if kind == "register":
                if row["dataset"] in registered:
                    raise self._broken(row, f"dataset {row['dataset']!r} registered twice")
                registered.add(row["dataset"])
            elif kind == "reserve":
                if row["dataset"] not in registered:
                    raise self._broken(row, "release on an unregistered dataset")
                try:
                    self._event(row)
                except (PrivacyError, ValueError, TypeError) as exc:
                    raise self._broken(row, f"unreadable DP event ({exc})") from None
                reserved.add(row["reservation"])
            elif kind in ("commit", "abort"):
                rid = row["reservation"]
                if rid not in reserved or rid in finalized:
                    raise self._broken(row, f"{kind} of an unknown or finished reservation")
                finalized.add(rid)
            else:
                raise self._broken(row, f"unknown entry kind {kind!r}")
            prev = row["hash"]
        head_seq, head_hash = meta.get("head_seq"), meta.get("head_hash")
        if head_seq != str(len(rows)) or head_hash != prev:
            raise LedgerIntegrityError(
                f"ledger {self._path}: head is seq={head_seq}, but the chain ends at "
                f"seq={len(rows)} (rows were deleted at the end, or the head was edited)"
            )
        self._verified = verified

    def _event(self, row: Mapping[str, Any]) -> DpEvent:
        """The DP event of a reserve row, parsed once per (event JSON) and memoized."""
        text = row["event"]
        ev = self._event_cache.get(text)
        if ev is None:
            ev = event_from_json(json.loads(text))
            if len(self._event_cache) > 4096:
                self._event_cache.clear()
            self._event_cache[text] = ev
        return ev

    def _tail(self) -> tuple[int, str]:
        """Check the head against the last row (cheap) and return its ``(seq, hash)``."""
        meta = self._meta()
        cur = self._conn.execute(
            f"SELECT {', '.join(_COLUMNS)}, hash FROM entries ORDER BY seq DESC LIMIT 1"
        )
        last = cur.fetchone()
        if last is None:
            seq, head = 0, _genesis(self._silo, self._accountant)
        else:
            row = dict(last)
            if _row_hash(row) != row["hash"]:
                raise LedgerIntegrityError(
                    f"ledger {self._path}, entry seq={row['seq']}: content does not match its hash"
                )
            seq, head = int(row["seq"]), str(row["hash"])
        if meta.get("head_seq") != str(seq) or meta.get("head_hash") != head:
            raise LedgerIntegrityError(
                f"ledger {self._path}: head is seq={meta.get('head_seq')}, but the chain ends at "
                f"seq={seq} (rows were deleted at the end, or the head was edited)"
            )
        return seq, head

    def _append(self, rows: list[dict[str, Any]] | tuple[int, str], **fields: Any) -> dict[str, Any]:
        """Append one row inside an open write transaction after the verified ``rows``/tail."""
        if isinstance(rows, tuple):
            last_seq, last_hash = rows
        elif rows:
            last_seq, last_hash = len(rows), rows[-1]["hash"]
        else:
            last_seq, last_hash = 0, _genesis(self._silo, self._accountant)
        row: dict[str, Any] = {c: None for c in _COLUMNS}
        row.update(fields)
        row["seq"] = last_seq + 1
        row["prev_hash"] = last_hash
        row["time"] = _now()
        row["hash"] = _row_hash(row)
        cols = list(_COLUMNS) + ["hash"]
        self._conn.execute(
            f"INSERT INTO entries ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
            [row[c] for c in cols],
        )
        self._conn.executemany(
            "UPDATE meta SET value = ? WHERE key = ?",
            [(str(row["seq"]), "head_seq"), (row["hash"], "head_hash")],
        )
        if isinstance(rows, list):
            rows.append(row)
        self._verified[row["seq"]] = tuple(row[c] for c in _COLUMNS) + (row["hash"],)
        return row

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _budget(rows: list[dict[str, Any]], dataset: str) -> tuple[float, float]:
        for r in rows:
            if r["kind"] == "register" and r["dataset"] == dataset:
                return float(r["epsilon"]), float(r["delta"])
        raise ConfigError(f"dataset {dataset!r} is not registered in this ledger; call register_dataset first")

    def _events(self, rows: list[dict[str, Any]], dataset: str) -> list[DpEvent]:
        return [self._event(r) for r in rows if r["kind"] == "reserve" and r["dataset"] == dataset]

    def _spent(self, events: list[DpEvent], delta: float) -> float:
        if not events:
            return 0.0
        return epsilon(ComposedEvent(tuple(events)), delta=delta, accountant=self._accountant)

    # ------------------------------------------------------------------ public API

    @property
    def silo(self) -> str:
        """The silo this ledger belongs to."""
        return self._silo

    @property
    def accountant(self) -> str:
        """The accountant (``"rdp"`` or ``"pld"``) every ε in this ledger is computed with."""
        return self._accountant

    @property
    def path(self) -> Path:
        """The SQLite file."""
        return self._path

    @property
    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the last entry: anchor it in an external log for tamper evidence."""
        with self._lock:
            meta = self._meta()
        return int(meta["head_seq"]), meta["head_hash"]

    def register_dataset(self, dataset: str, *, epsilon: float, delta: float) -> None:
        """Register ``dataset`` with budget (ε, δ); a no-op if already registered with the same.

        Raises:
            ConfigError: registered before with a different budget (budgets never change).
            PrivacyParameterError: ε not finite and > 0, or δ outside (0, 1).
        """
        _name("dataset", dataset)
        if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not (
            math.isfinite(epsilon) and epsilon > 0
        ):
            raise PrivacyParameterError(f"budget epsilon must be a finite number > 0, got {epsilon!r}")
        if isinstance(delta, bool) or not isinstance(delta, numbers.Real) or not (0 < delta < 1):
            raise PrivacyParameterError(f"budget delta must be in (0, 1), got {delta!r}")
        eps_f, delta_f = float(epsilon), float(delta)
        with self._lock, self._write():
            rows = self._rows()
            self._check_chain(rows)
            for r in rows:
                if r["kind"] == "register" and r["dataset"] == dataset:
                    if (r["epsilon"], r["delta"]) == (eps_f, delta_f):
                        return
                    raise ConfigError(
                        f"dataset {dataset!r} of silo {self._silo!r} is already registered with "
                        f"budget epsilon={r['epsilon']:g}, delta={r['delta']:g}; refusing to "
                        f"change it to epsilon={eps_f:g}, delta={delta_f:g}"
                    )
            self._append(rows, kind="register", dataset=dataset, epsilon=eps_f, delta=delta_f)

    def _read(self, *, use_cache: bool = True) -> list[dict[str, Any]]:
        """All rows from one read snapshot, after checking the chain (reads never trust a
        broken ledger: an edited or deleted row could hide spent ε)."""
        with self._lock:
            self._conn.execute("BEGIN")  # deferred: a consistent WAL snapshot of rows + meta
            try:
                rows = self._rows()
                self._check_chain(rows, use_cache=use_cache)
            finally:
                self._conn.execute("COMMIT")
        return rows

    def budget(self, dataset: str) -> tuple[float, float]:
        """The registered ``(epsilon, delta)`` budget of ``dataset``."""
        return self._budget(self._read(), dataset)

    def spent(self, dataset: str) -> float:
        """ε of the composition of every reserved release of ``dataset`` (committed or not).

        Computed with the ledger's accountant at the dataset's δ; 0.0 before any release.

        Raises:
            ConfigError: unregistered dataset.
            LedgerIntegrityError: the hash chain is broken.
        """
        rows = self._read()
        _, delta = self._budget(rows, dataset)
        return self._spent(self._events(rows, dataset), delta)

    def remaining(self, dataset: str) -> float:
        """``max(0, budget ε − spent)``."""
        rows = self._read()
        eps_budget, delta = self._budget(rows, dataset)
        return max(0.0, eps_budget - self._spent(self._events(rows, dataset), delta))

    def charge(
        self,
        dataset: str,
        event: DpEvent,
        *,
        job: str,
        round: int,
        protocol: str,
        mechanism: Mapping[str, Any],
        recipient: str,
        level: str = "silo",
    ) -> Reservation:
        """Reserve the cost of one release (write-ahead); use the result as a context manager.

        ::

            with ledger.charge("breast_cancer", GaussianEvent(1.1), job="j1", round=3,
                               protocol="fedavg", mechanism={"name": "gaussian", "clip": 1.0},
                               recipient="aggregator", level="silo"):
                decrypt_and_release()

        Args:
            dataset: a registered dataset.
            event: the DP event of this release.
            job, round, protocol: where the release belongs.
            mechanism: JSON-serializable mechanism name and parameters (stored verbatim).
            recipient: who receives the output.
            level: ``"silo"`` or ``"record"`` — who the noise protects.

        Raises:
            BudgetExceededError: the release would exceed the budget; nothing was written.
            ConfigError: unregistered dataset or malformed arguments (nothing written).
            PrivacyError: unsupported event (nothing written).
            LedgerIntegrityError: the hash chain is broken; nothing is charged on such a ledger.
        """
        # Check everything before touching the database.
        _name("dataset", dataset)
        if not isinstance(event, DpEvent) or type(event) is DpEvent:
            raise PrivacyError(f"not a fedsilo DP event: {event!r}")
        normalize(event)  # refuses unsupported events
        _name("job", job)
        _name("protocol", protocol)
        _name("recipient", recipient)
        if isinstance(round, bool) or not isinstance(round, numbers.Integral) or round < 0:
            raise ConfigError(f"round must be an integer >= 0, got {round!r}")
        if level not in LEVELS:
            raise ConfigError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
        if not isinstance(mechanism, Mapping):
            raise ConfigError(f"mechanism must be a mapping of name and parameters, got {mechanism!r}")
        try:
            mech_json = _canonical(dict(mechanism))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"mechanism must be JSON-serializable without NaN: {exc}") from None
        event_json = _canonical(event.to_json())

        with self._lock, self._write():
            rows = self._rows()
            self._check_chain(rows)
            eps_budget, delta = self._budget(rows, dataset)
            before = self._events(rows, dataset)
            after = self._spent(before + [event], delta)
            if not after <= eps_budget:  # also refuses NaN
                raise BudgetExceededError(
                    silo=self._silo,
                    dataset=dataset,
                    spent=self._spent(before, delta),
                    requested=after,
                    budget=eps_budget,
                    delta=delta,
                )
            rid = uuid.uuid4().hex
            self._append(
                rows,
                kind="reserve",
                dataset=dataset,
                reservation=rid,
                job=job,
                round=int(round),
                protocol=protocol,
                mechanism=mech_json,
                event=event_json,
                recipient=recipient,
                level=level,
                epsilon=after,
                delta=delta,
            )
        return Reservation(self, rid, dataset, event, after)

    def _finalize(self, reservation: Reservation, kind: str, note: str | None) -> None:
        with self._lock, self._write():
            tail = self._tail()
            kinds = {
                r[0]
                for r in self._conn.execute(
                    "SELECT kind FROM entries WHERE reservation = ?", (reservation.reservation_id,)
                )
            }
            if kinds != {"reserve"}:
                raise PrivacyError(
                    f"reservation {reservation.reservation_id} is missing or already finalized"
                )
            self._append(
                tail,
                kind=kind,
                dataset=reservation.dataset,
                reservation=reservation.reservation_id,
                note=note,
            )

    def entries(self, dataset: str | None = None) -> list[LedgerEntry]:
        """Every release (optionally of one dataset) in ledger order, with its outcome."""
        return self._entries(self._read(), dataset)

    def _entries(self, rows: list[dict[str, Any]], dataset: str | None) -> list[LedgerEntry]:
        outcome = {
            r["reservation"]: (r["kind"], r["time"]) for r in rows if r["kind"] in ("commit", "abort")
        }
        out: list[LedgerEntry] = []
        for r in rows:
            if r["kind"] != "reserve" or (dataset is not None and r["dataset"] != dataset):
                continue
            kind, when = outcome.get(r["reservation"], (None, None))
            status = {"commit": "committed", "abort": "aborted"}.get(kind or "", "reserved")
            out.append(
                LedgerEntry(
                    seq=r["seq"],
                    reservation_id=r["reservation"],
                    time=r["time"],
                    dataset=r["dataset"],
                    job=r["job"],
                    round=r["round"],
                    protocol=r["protocol"],
                    mechanism=MappingProxyType(json.loads(r["mechanism"])),
                    event=self._event(r),
                    recipient=r["recipient"],
                    level=r["level"],
                    epsilon_spent=r["epsilon"],
                    delta=r["delta"],
                    status=status,
                    finalized_at=when,
                )
            )
        return out

    def datasets(self) -> list[str]:
        """Registered dataset names, in registration order."""
        return [r["dataset"] for r in self._read() if r["kind"] == "register"]

    def verify(self) -> None:
        """Check the whole hash chain and the head.

        Raises:
            LedgerIntegrityError: a row was edited, deleted, inserted or the tail truncated.
        """
        self._read(use_cache=False)  # re-hash every row

    def report(self) -> list[DatasetReport]:
        """Budget, spent ε (re-composed now), remaining ε and release counts per dataset."""
        rows = self._read()
        entries = self._entries(rows, None)
        out: list[DatasetReport] = []
        for r in rows:
            if r["kind"] != "register":
                continue
            name = r["dataset"]
            mine = [e for e in entries if e.dataset == name]
            spent = self._spent([e.event for e in mine], float(r["delta"]))
            levels = {e.level for e in mine}
            out.append(
                DatasetReport(
                    dataset=name,
                    epsilon_budget=float(r["epsilon"]),
                    delta=float(r["delta"]),
                    spent=spent,
                    remaining=max(0.0, float(r["epsilon"]) - spent),
                    releases=len(mine),
                    committed=sum(e.status == "committed" for e in mine),
                    aborted=sum(e.status == "aborted" for e in mine),
                    pending=sum(e.status == "reserved" for e in mine),
                    level=("record" if "record" in levels else "silo") if levels else None,
                    accountant=self._accountant,
                )
            )
        return out

    def close(self) -> None:
        """Close the database connection (idempotent)."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> PrivacyLedger:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PrivacyLedger(path={str(self._path)!r}, silo={self._silo!r}, accountant={self._accountant!r})"
