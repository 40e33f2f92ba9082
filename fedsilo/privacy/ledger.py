"""The per-silo privacy ledger: a durable, append-only, hash-chained record of every release.

One SQLite file per silo (WAL, ``synchronous=FULL``). Each dataset is registered once with a
budget (ε, δ). Every release goes through :meth:`PrivacyLedger.charge`, which is written
**before** the release happens (write-ahead):

1. *reserve* — in one ``BEGIN IMMEDIATE`` transaction: verify the hash chain and its anchor,
   convert the events of every earlier reservation of the dataset and the new one to the
   dataset's composition target (:mod:`fedsilo.privacy.relations`), compose them
   (:func:`fedsilo.privacy.accounting.epsilon`, at the dataset's δ, with the ledger's
   accountant — never a naive sum of ε), and either raise
   :class:`~fedsilo.errors.BudgetExceededError` or :class:`~fedsilo.errors.PrivacyError`
   (nothing written) or append a ``reserve`` row;
2. *release* — the caller's ``with`` block (decrypt, publish, send);
3. *commit* — on leaving the block normally, a ``commit`` row is appended; if the block
   raised, an ``abort`` row is appended instead.

A release paid for by an earlier (ε, δ) charge of the same dataset
(:class:`~fedsilo.privacy.events.CoveredEvent`, e.g. a distributed DP-SGD step after the charge
of its row count and training) is recorded like any other and costs nothing beside that cover;
one whose cover the dataset's history lacks is refused (nothing written).

Reserved rows **always** count, committed or not: a crash (even SIGKILL) between reserve and
commit, or an exception after a partial release, can over-count ε but never under-count it.
There is no refund.

``BEGIN IMMEDIATE`` takes SQLite's write lock before the budget is read, so two processes (or
threads) charging one ledger are serialized and can never jointly exceed a budget; the busy
timeout makes the second one wait instead of failing.

Neighbouring relations
----------------------
Every release records its neighbouring relation (``relation``: ``"zero-out-silo"``,
``"add-remove-record"`` or ``"replace-record"``, :data:`fedsilo.privacy.relations.RELATIONS`)
and the level derived from it (``level``: ``"silo"`` or ``"record"``). Events recorded under
different relations are never composed as if they were one: the dataset's releases are composed
under one *composition target* (:func:`~fedsilo.privacy.relations.composition_target`), each
converted conservatively by :func:`~fedsilo.privacy.relations.convert`, or the new release is
refused with a :class:`~fedsilo.errors.PrivacyError` naming both relations.

A silo-level guarantee does **not** imply the same record-level guarantee. One record can move
its silo's clipped update anywhere in the ball of radius ``C``, so per record the sensitivity of
the sum is ``2C``, not ``C``: a silo-level ``GaussianEvent(z, 1, T)`` protects each record only
as ``GaussianEvent(z/2, 1, T)`` (a ``LaplaceEvent(ε)`` as ``2ε``). For example, a silo-level job
at ``z = 1.70`` over 8 rounds (examples/hospitals_horizontal/silo_level.toml: ε ≈ 7.98 per silo
with the PLD accountant at δ = 1e-5) is, per patient, the same 8 events at ``z = 0.85``:
ε ≈ 19.1. A dataset with only silo-level releases reports ``level="silo"``; once a record-level
release is charged to it, every silo-level release is re-counted at its record-level cost.

Tamper evidence: hash chain and anchor
--------------------------------------
Rows are never updated or deleted. Each row stores ``hash = sha256(prev_hash + canonical
JSON of the row)`` (the relation included); the first row chains to a genesis hash derived from
the schema version, the silo name and the accountant, and the ``meta`` table keeps the head
(last seq and hash). :meth:`PrivacyLedger.verify` detects an edited, deleted or inserted row.

The chain alone cannot detect a *rollback*: deleting the last rows and rewriting the head, or
replacing the file by an earlier copy of itself, leaves a valid shorter chain (and hides spent
ε). So the chain is anchored **outside** the SQLite file, in two files beside it:

* ``<ledger>.key`` — 32 random bytes (OS CSPRNG), created once with mode 0600 and ``O_EXCL``;
  a key file that group or others can access is refused (:class:`~fedsilo.errors.ConfigError`);
* ``<ledger>.anchor`` — JSON ``{"fedsilo_anchor": 1, "silo", "seq", "hash", "mac"}``, with
  ``mac = HMAC-SHA256(key, canonical JSON of the rest)``.

After every appended row is committed, the anchor is advanced to it: written to a temporary
file, fsynced and moved into place with ``os.replace`` (atomic), under an exclusive ``flock`` of
the anchor, and never backwards (a process that lost a race to a later row leaves it alone).
Every read, charge and :meth:`PrivacyLedger.verify` checks that the database's chain
**contains** the anchored ``(seq, hash)``: the database may be ahead of the anchor (rows
committed just before a crash, which only over-counts), never behind it or different from it.
A rolled-back or truncated database, a missing or forged anchor, and a missing key for an
existing ledger each raise :class:`~fedsilo.errors.LedgerIntegrityError` with a one-line
message. A brand-new ledger creates its key and anchor (the key is put in place only after the
anchor is durable, so a key without an anchor always means the anchor was deleted).

What this does **not** protect against: someone who can also restore the anchor and key files
(e.g. restores all three from one old backup), or deletes all three and starts over. Against
that, export :attr:`PrivacyLedger.head` to an external audit log, or keep the counterparties'
receipts of each release.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import hmac
import json
import math
import numbers
import os
import secrets
import sqlite3
import stat
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Final

from fedsilo.errors import (
    BudgetExceededError,
    ConfigError,
    FedsiloError,
    LedgerIntegrityError,
    PrivacyError,
    PrivacyParameterError,
)
from fedsilo.privacy.accounting import (
    ACCOUNTANTS,
    check_cover_pays,
    check_supported,
    cover_events,
    cover_labels,
    covered_events,
    epsilon,
)
from fedsilo.privacy.events import ApproxDpEvent, ComposedEvent, DpEvent, event_from_json
from fedsilo.privacy.relations import LEVELS, RELATIONS, check_accountable, level_of, to_composition_target

__all__ = [
    "LEVELS",
    "RELATIONS",
    "ANCHOR_SUFFIX",
    "KEY_SUFFIX",
    "PrivacyLedger",
    "Reservation",
    "LedgerEntry",
    "DatasetReport",
    "BudgetCheck",
    "JobBudgetError",
    "budget_check",
    "composed_epsilon",
    "anchor_path",
    "key_path",
]

SCHEMA_VERSION: Final = 2
#: Appended to the ledger's file name for its anchor file.
ANCHOR_SUFFIX: Final = ".anchor"
#: Appended to the ledger's file name for the anchor's HMAC key file.
KEY_SUFFIX: Final = ".key"
_KEY_BYTES: Final = 32
_ANCHOR_VERSION: Final = 1
_ANCHOR_MAX_BYTES: Final = 4096
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
    "relation",
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
        level       TEXT,                  -- 'silo' | 'record', derived from relation
        relation    TEXT,                  -- neighbouring relation (reserve rows)
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


# ---------------------------------------------------------------------------- anchor files


def anchor_path(ledger: str | os.PathLike[str]) -> Path:
    """The anchor file of the ledger at ``ledger``: the same name with ``.anchor`` appended."""
    p = Path(ledger)
    return p.with_name(p.name + ANCHOR_SUFFIX)


def key_path(ledger: str | os.PathLike[str]) -> Path:
    """The anchor's HMAC key file of the ledger at ``ledger``: the name with ``.key`` appended."""
    p = Path(ledger)
    return p.with_name(p.name + KEY_SUFFIX)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_all(fd: int, limit: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = os.read(fd, limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _read_key(path: Path) -> bytes | None:
    """The key's 32 bytes, or ``None`` if the file does not exist.

    Raises:
        ConfigError: the key file is accessible by group or others (it could be read or
            replaced, and the anchor forged).
        LedgerIntegrityError: not a regular file (e.g. a symlink), or not 32 bytes.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LedgerIntegrityError(f"key file {path} is a symbolic link; refusing to use it") from None
        raise LedgerIntegrityError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise LedgerIntegrityError(f"key file {path} is not a regular file; refusing to use it")
        if st.st_mode & 0o077:
            raise ConfigError(
                f"key file {path} is accessible by group or others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}): anyone who can read it can forge the ledger's "
                f"anchor; run `chmod 600 {path}`"
            )
        data = _read_all(fd, _KEY_BYTES)
    finally:
        os.close(fd)
    if len(data) != _KEY_BYTES:
        raise LedgerIntegrityError(
            f"key file {path} is corrupt: expected {_KEY_BYTES} bytes, found {len(data)}"
        )
    return data


def _read_anchor_file(path: Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LedgerIntegrityError(f"cannot read anchor {path}: {exc.strerror or exc}") from None
    try:
        return _read_all(fd, _ANCHOR_MAX_BYTES)
    except OSError as exc:  # e.g. the anchor path is a directory
        raise LedgerIntegrityError(f"cannot read anchor {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _anchor_body(silo: str, seq: int, head: str) -> dict[str, Any]:
    return {"fedsilo_anchor": _ANCHOR_VERSION, "silo": silo, "seq": seq, "hash": head}


def _anchor_mac(key: bytes, body: Mapping[str, Any]) -> str:
    return hmac.new(key, _canonical(dict(body)).encode(), hashlib.sha256).hexdigest()


def _write_anchor(path: Path, *, key: bytes, silo: str, seq: int, head: str) -> None:
    """Atomically replace the anchor: temporary file, fsync, ``os.replace``, fsync directory."""
    body = _anchor_body(silo, seq, head)
    data = (_canonical({**body, "mac": _anchor_mac(key, body)}) + "\n").encode()
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def _lock_anchor(path: Path) -> int:
    """Open the anchor and take an exclusive ``flock`` on it; return the descriptor.

    The anchor is replaced (new inode) on every advance, so after the lock is granted the
    descriptor is checked to still be the file at ``path``; if not, it is reopened.
    """
    while True:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held = os.fstat(fd)
            now = os.stat(path, follow_symlinks=False)
        except BaseException:
            os.close(fd)
            raise
        if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
            return fd
        os.close(fd)  # replaced while we waited: lock the new file


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One release as recorded in the ledger (the ``reserve`` row plus its outcome).

    ``status`` is ``"reserved"`` (no commit: crash or still running — counted),
    ``"committed"`` (released) or ``"aborted"`` (the block raised — still counted).
    ``relation`` is the neighbouring relation the event is valid under and ``level`` the
    protection level derived from it. ``epsilon_spent`` is the dataset's total ε right after
    this release, at ``delta``, under the dataset's composition target at that time.
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
    relation: str
    level: str
    epsilon_spent: float
    delta: float
    status: str
    finalized_at: str | None


@dataclass(frozen=True, slots=True)
class DatasetReport:
    """Budget and spending of one dataset, as of the report.

    ``relation`` is the composition target: the neighbouring relation every release of the
    dataset was converted to before composing (``None`` if nothing was released yet); ``spent``
    is ε under that relation. ``level`` follows it: ``"silo"`` if all releases were silo-level,
    ``"record"`` once any release is record-level, ``None`` before any release.
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
    relation: str | None
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
            "relation": self.relation,
            "level": self.level,
            "accountant": self.accountant,
        }


def composed_epsilon(
    releases: Sequence[tuple[DpEvent, str]], *, delta: float, accountant: str
) -> tuple[str | None, tuple[DpEvent, ...], float]:
    """The composition target of ``releases`` (``(event, relation)`` pairs of one dataset), the
    events converted to it (in order) and their composed ε: what every charge, report and
    pre-check of a ledger computes (:func:`fedsilo.privacy.relations.to_composition_target`,
    then :func:`fedsilo.privacy.accounting.epsilon` at the dataset's δ, never a sum).

    Raises:
        PrivacyError: the relations cannot be composed under one target, or an unsupported event.
    """
    target, events = to_composition_target(releases)
    if not events:
        return None, (), 0.0
    return target, events, epsilon(ComposedEvent(events), delta=delta, accountant=accountant)


#: What a refused job's submitter can do.
REMEDY: Final = "lower privacy.epsilon (--epsilon) or raise the budget"


@dataclass(frozen=True, slots=True)
class BudgetCheck:
    """A dry run of a set of planned releases against one dataset's budget (nothing written).

    ``spent`` is ε of the releases already reserved (as :meth:`PrivacyLedger.spent` reports
    it), ``need`` ε of the planned releases alone and ``after`` ε of all of them composed: what
    the ledger would record at the last of the planned charges, the value its budget check
    compares with ``budget``. ``need`` and ``after`` are under the composition target of every
    release together; all at ``delta``, with ``accountant``.
    """

    silo: str
    dataset: str
    budget: float
    delta: float
    accountant: str
    spent: float
    need: float
    after: float

    @property
    def remaining(self) -> float:
        """``max(0, budget − spent)``."""
        return max(0.0, self.budget - self.spent)

    @property
    def fits(self) -> bool:
        """Whether every planned release would be accepted (``after <= budget``; NaN never fits)."""
        return self.after <= self.budget

    def summary(self, what: str = "the job") -> str:
        """What ``what`` needs and what the silo's ledger has left, e.g. ``silo 'h1': the job
        needs epsilon=992.6 but its ledger has 9.2 of 10 left (spent 0.8; ...)``."""
        line = (
            f"silo {self.silo!r}: {what} needs epsilon={self.need:.4g} but its ledger has "
            f"{self.remaining:.4g} of {self.budget:.4g} left (spent {self.spent:.4g}"
        )
        if self.spent > 0.0:
            # composition is not a sum: say what the ledger would compare with the budget
            line += f", composed with it epsilon={self.after:.4g}"
        line += f"; dataset {self.dataset!r}, delta={self.delta:g}, accountant {self.accountant!r})"
        if math.isinf(self.after) and not math.isinf(self.need):
            # (epsilon, delta) releases (distributed DP-SGD's calibrated training) compose by
            # adding their deltas: once they reach the dataset's delta no epsilon is finite
            line += (" - earlier (epsilon, delta) releases on this dataset (a distributed DP-SGD job) "
                     f"have used its delta={self.delta:g}: their deltas add up")
        return line

    def refusal(self, what: str = "the job") -> str:
        """:meth:`summary` and the remedy: the one-line reason a job is refused with."""
        return f"{self.summary(what)}; {REMEDY}"


class JobBudgetError(BudgetExceededError):
    """A job refused before its first release: some silo's ledger cannot cover the job's
    planned releases (:class:`BudgetCheck`); nothing was trained, released or written.

    ``checks`` holds every silo checked that cannot; the inherited fields are the first one's
    (``requested`` is the total ε its ledger would reach).
    """

    def __init__(self, checks: Sequence[BudgetCheck], what: str = "the job") -> None:
        if not checks:
            raise ValueError("JobBudgetError needs at least one failed check")
        self.checks = tuple(checks)
        self.what = what
        first = self.checks[0]
        super().__init__(silo=first.silo, dataset=first.dataset, spent=first.spent, requested=first.after,
                         budget=first.budget, delta=first.delta)
        self.args = ("; ".join(c.summary(what) for c in self.checks) + f"; {REMEDY}; nothing was trained or charged",)

    def __reduce__(self) -> tuple[Any, ...]:
        return (JobBudgetError, (self.checks, self.what))


def budget_check(
    *, silo: str, dataset: str, budget: float, delta: float, accountant: str,
    before: Sequence[tuple[DpEvent, str]] = (), planned: Sequence[tuple[DpEvent, str]],
) -> BudgetCheck:
    """:class:`BudgetCheck` of ``planned`` releases on top of ``before`` (both ``(event,
    relation)`` pairs), composed exactly as :meth:`PrivacyLedger.charge` composes them. Pure:
    for a ledger that does not exist yet (``before`` empty) as for one that does
    (:meth:`PrivacyLedger.preview`).

    Raises:
        PrivacyError: the releases cannot be composed under one relation, or an unsupported
            event (the charge would refuse them too).
    """
    for event, relation in planned:
        if not isinstance(event, DpEvent) or type(event) is DpEvent:
            raise PrivacyError(f"not a fedsilo DP event: {event!r}")
        check_accountable(event, relation)
    items = [*before, *planned]
    try:
        _, events, after = composed_epsilon(items, delta=delta, accountant=accountant)
    except PrivacyError as exc:
        if not before:  # no earlier release: the job's own releases are refused, say only why
            raise PrivacyError(f"silo {silo!r}, dataset {dataset!r}: {exc}") from None
        earlier = ", ".join(repr(r) for r in sorted({r for _, r in before}))
        raise PrivacyError(
            f"silo {silo!r}, dataset {dataset!r}: the job's releases cannot be composed with the dataset's "
            f"earlier releases (under {earlier}): {exc}"
        ) from None
    spent = composed_epsilon(list(before), delta=delta, accountant=accountant)[2]
    mine = events[len(before):]
    need = epsilon(ComposedEvent(mine), delta=delta, accountant=accountant) if mine else 0.0
    return BudgetCheck(silo, dataset, float(budget), float(delta), accountant, spent, need, after)


class Reservation:
    """A reserved (already counted) release; a context manager that commits on success.

    Returned by :meth:`PrivacyLedger.charge`. Leaving the ``with`` block normally appends a
    ``commit`` row; leaving it with an exception appends an ``abort`` row. Either way the cost
    stays counted.
    """

    __slots__ = ("_ledger", "reservation_id", "dataset", "event", "relation", "epsilon_spent", "_status")

    def __init__(
        self,
        ledger: PrivacyLedger,
        reservation_id: str,
        dataset: str,
        event: DpEvent,
        spent: float,
        relation: str,
    ) -> None:
        self._ledger = ledger
        self.reservation_id = reservation_id
        self.dataset = dataset
        self.event = event
        #: the neighbouring relation the event was charged under
        self.relation = relation
        #: the dataset's ε including this release (under its composition target)
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
        seq, head = self._ledger._finalize(self, "commit", None)
        self._status = "committed"
        self._ledger._advance_anchor(seq, head)

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
                seq, head = self._ledger._finalize(self, "abort", exc_type.__name__)
                self._status = "aborted"
                self._ledger._advance_anchor(seq, head)
            except (sqlite3.Error, OSError, FedsiloError):
                # Never mask the caller's exception; the reserve row already counts.
                pass

    def __repr__(self) -> str:
        return (
            f"Reservation(id={self.reservation_id!r}, dataset={self.dataset!r}, "
            f"relation={self.relation!r}, epsilon_spent={self.epsilon_spent:.4g}, "
            f"status={self._status!r})"
        )


_AnchorState = tuple[bytes | None, bytes | None]  # (key, raw anchor), None when missing


class PrivacyLedger:
    """Per-silo ε ledger in SQLite (see the module docstring for the guarantees).

    Besides the SQLite file, the ledger owns ``<path>.anchor`` and ``<path>.key``
    (:func:`anchor_path`, :func:`key_path`); a new ledger creates both.

    Args:
        path: the SQLite file; created (with parent directories) if missing.
        silo: this silo's name; must match the name the ledger was created with.
        accountant: ``"rdp"`` or ``"pld"``; fixed when the ledger is created.

    Raises:
        ConfigError: silo or accountant differs from the stored one, the file is not a
            fedsilo ledger or predates neighbouring relations (schema version 1), or the key
            file is accessible by group or others.
    """

    def __init__(self, path: str | os.PathLike[str], *, silo: str, accountant: str = "rdp") -> None:
        self._silo = _name("silo", silo)
        if accountant not in ACCOUNTANTS:
            raise PrivacyParameterError(
                f"unknown accountant {accountant!r}; expected one of {', '.join(ACCOUNTANTS)}"
            )
        self._accountant = accountant
        self._path = Path(path)
        self._anchor_path = anchor_path(self._path)
        self._key_path = key_path(self._path)
        self._genesis = _genesis(self._silo, self._accountant)
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

        The stored names are read on a read-only connection (SQLite URI ``mode=ro``, no WAL
        switch), so a file that is not a ledger (an empty file, another database) is refused
        and left byte for byte as it was.

        Raises:
            ConfigError: the file does not exist or is not a fedsilo ledger.
        """
        p = Path(path)
        if p.is_dir():
            raise ConfigError(f"{p} is a directory; pass the ledger's .sqlite file (e.g. {p / '<silo>.sqlite'})")
        if not p.is_file():
            raise ConfigError(f"ledger not found: {p}")
        try:
            conn = sqlite3.connect(p.absolute().as_uri() + "?mode=ro", uri=True, timeout=_BUSY_TIMEOUT_S)
            try:
                meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"not a fedsilo privacy ledger: {p} ({exc})") from None
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
            tables = {
                r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            if "meta" in tables:
                self._check_meta(dict(self._conn.execute("SELECT key, value FROM meta").fetchall()))
            for statement in _SCHEMA:
                self._conn.execute(statement)
            if not self._conn.execute("SELECT 1 FROM meta LIMIT 1").fetchone():
                self._conn.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [
                        ("schema_version", str(SCHEMA_VERSION)),
                        ("silo", self._silo),
                        ("accountant", self._accountant),
                        ("head_seq", "0"),
                        ("head_hash", self._genesis),
                    ],
                )
            self._init_anchor()

    def _check_meta(self, meta: Mapping[str, str]) -> None:
        if not meta:
            return
        version = meta.get("schema_version")
        if version == "1":
            raise ConfigError(
                f"ledger {self._path} has schema version 1, which predates neighbouring relations "
                f"(version {SCHEMA_VERSION} records the relation of every release and anchors the "
                "chain outside the file); its releases cannot be composed soundly: keep it for "
                "audit and start a new ledger file"
            )
        if version != str(SCHEMA_VERSION):
            raise ConfigError(
                f"ledger {self._path} has schema version {version!r}; "
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

    def _init_anchor(self) -> None:
        """Inside the schema transaction (the SQLite write lock serializes this across
        processes): create the key and the genesis anchor of a ledger without rows and without
        a key; check the key's permissions otherwise. Integrity problems (a missing anchor, a
        missing key for a ledger with rows) are left for the reads and :meth:`verify` to report."""
        rows = int(self._conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0])
        if os.path.lexists(self._key_path):
            _read_key(self._key_path)  # refuses a group/other-accessible key now
            return
        if rows or self._stale_anchor_beyond_genesis():
            return  # the reads report the missing key
        # A new ledger (or one whose creation was interrupted before its key was in place).
        new_key = self._key_path.with_name(self._key_path.name + ".new")
        try:
            try:
                new_key.unlink()
            except FileNotFoundError:
                pass
            key = secrets.token_bytes(_KEY_BYTES)
            fd = os.open(
                new_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
            try:
                _write_all(fd, key)
                os.fsync(fd)
            finally:
                os.close(fd)
            # The anchor first, then the key: a key file always has a durable anchor beside it.
            _write_anchor(self._anchor_path, key=key, silo=self._silo, seq=0, head=self._genesis)
            try:
                os.link(new_key, self._key_path)  # never overwrites an existing key
                new_key.unlink()
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                os.rename(new_key, self._key_path)  # no hard links here; we hold the write lock
            _fsync_dir(self._key_path.parent)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the anchor {self._anchor_path} and key {self._key_path} of "
                f"ledger {self._path}: {exc.strerror or exc}"
            ) from None

    def _stale_anchor_beyond_genesis(self) -> bool:
        """Whether an (unauthenticated) anchor left without a key records entries: an interrupted
        creation only ever leaves a genesis anchor (seq 0), so this one is evidence of deleted
        rows and a deleted key, and must not be silently replaced by a fresh one."""
        raw = _read_anchor_file(self._anchor_path)
        if raw is None:
            return False
        try:
            seq = json.loads(raw.decode("utf-8")).get("seq")
        except (UnicodeDecodeError, ValueError, AttributeError):
            return True  # anchors are replaced atomically: garbage is not left by a crash
        return not (isinstance(seq, int) and not isinstance(seq, bool) and seq == 0)

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
        prev = self._genesis
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
                relation = row["relation"]
                if relation not in RELATIONS or row["level"] != level_of(relation):
                    raise self._broken(
                        row, f"unknown neighbouring relation {relation!r} or level {row['level']!r}"
                    )
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

    # ------------------------------------------------------------------ anchor

    def _anchor_state(self) -> _AnchorState:
        """The key and the raw anchor as on disk now (``None`` for a missing file)."""
        return _read_key(self._key_path), _read_anchor_file(self._anchor_path)

    def _forged(self, why: str) -> LedgerIntegrityError:
        return LedgerIntegrityError(
            f"ledger {self._path}: its anchor {self._anchor_path} {why}: the anchor was forged, "
            "corrupted or belongs to another ledger"
        )

    def _parse_anchor(self, raw: bytes, key: bytes) -> tuple[int, str]:
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise self._forged("is not valid JSON") from None
        if not isinstance(data, dict) or set(data) != {"fedsilo_anchor", "silo", "seq", "hash", "mac"}:
            raise self._forged("is not a fedsilo anchor")
        mac = data.pop("mac")
        seq, head = data["seq"], data["hash"]
        if (
            not isinstance(mac, str)
            or data["fedsilo_anchor"] != _ANCHOR_VERSION
            or isinstance(seq, bool)
            or not isinstance(seq, int)
            or seq < 0
            or not isinstance(head, str)
            or not isinstance(data["silo"], str)
        ):
            raise self._forged("is malformed")
        if not hmac.compare_digest(mac.encode(), _anchor_mac(key, data).encode()):
            raise self._forged(f"does not authenticate under its key {self._key_path}")
        if data["silo"] != self._silo:
            raise self._forged(f"names silo {data['silo']!r}, not {self._silo!r}")
        return seq, head

    def _check_anchor(self, state: _AnchorState, seq: int, hash_at: Callable[[int], str | None]) -> None:
        """Check that the chain ending at ``seq`` contains the anchored ``(seq, hash)``."""
        key, raw = state
        if key is None:
            raise LedgerIntegrityError(
                f"ledger {self._path} has {seq} entries but its key file {self._key_path} is "
                f"missing, so its anchor {self._anchor_path} cannot be authenticated"
            )
        if raw is None:
            raise LedgerIntegrityError(
                f"ledger {self._path} ({seq} entries) has its key {self._key_path} but its anchor "
                f"{self._anchor_path} is missing: the anchor was deleted"
            )
        a_seq, a_hash = self._parse_anchor(raw, key)
        if a_seq > seq:
            raise LedgerIntegrityError(
                f"ledger {self._path} ends at seq {seq} but its anchor {self._anchor_path} "
                f"records seq {a_seq}: the database was rolled back or truncated"
            )
        if hash_at(a_seq) != a_hash:
            raise LedgerIntegrityError(
                f"ledger {self._path}: entry seq={a_seq} is not the one its anchor "
                f"{self._anchor_path} records: the database was replaced or rewritten"
            )

    def _hash_in(self, rows: list[dict[str, Any]]) -> Callable[[int], str | None]:
        def hash_at(seq: int) -> str | None:
            if seq == 0:
                return self._genesis
            return str(rows[seq - 1]["hash"]) if seq <= len(rows) else None

        return hash_at

    def _hash_in_db(self, seq: int) -> str | None:
        if seq == 0:
            return self._genesis
        row = self._conn.execute("SELECT hash FROM entries WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else str(row[0])

    def _advance_anchor(self, seq: int, head: str) -> None:
        """After the row ``(seq, head)`` is committed: move the anchor forward to it (never back)."""
        try:
            key = _read_key(self._key_path)
            if key is None:
                raise LedgerIntegrityError(
                    f"ledger {self._path}: entry seq={seq} was committed but the key file "
                    f"{self._key_path} is missing, so its anchor cannot be advanced"
                )
            fd = _lock_anchor(self._anchor_path)
            try:
                a_seq, a_hash = self._parse_anchor(_read_all(fd, _ANCHOR_MAX_BYTES), key)
                if a_seq == seq and a_hash != head:
                    raise LedgerIntegrityError(
                        f"ledger {self._path}: its anchor {self._anchor_path} records another "
                        f"entry seq={seq} than the one just committed: two databases share the anchor"
                    )
                if a_seq < seq:
                    _write_anchor(self._anchor_path, key=key, silo=self._silo, seq=seq, head=head)
            finally:
                os.close(fd)  # releases the flock
        except FileNotFoundError:
            raise LedgerIntegrityError(
                f"ledger {self._path}: entry seq={seq} was committed but its anchor "
                f"{self._anchor_path} is missing: the anchor was deleted"
            ) from None
        except OSError as exc:
            raise PrivacyError(
                f"ledger {self._path}: entry seq={seq} was committed (and counts) but its anchor "
                f"{self._anchor_path} could not be advanced: {exc.strerror or exc}"
            ) from None

    # ------------------------------------------------------------------ rows

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
            seq, head = 0, self._genesis
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
        """Append one row inside an open write transaction after the verified ``rows``/tail.

        The caller advances the anchor (:meth:`_advance_anchor`) once the transaction committed.
        """
        if isinstance(rows, tuple):
            last_seq, last_hash = rows
        elif rows:
            last_seq, last_hash = len(rows), rows[-1]["hash"]
        else:
            last_seq, last_hash = 0, self._genesis
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

    def _read(self, *, use_cache: bool = True) -> list[dict[str, Any]]:
        """All rows from one read snapshot, after checking the chain and its anchor (reads never
        trust a broken ledger: an edited, deleted or rolled-back row could hide spent ε)."""
        with self._lock:
            # The anchor is read *before* the snapshot: it only ever names committed rows, so a
            # snapshot taken afterwards contains it unless the database went backwards.
            state = self._anchor_state()
            self._conn.execute("BEGIN")  # deferred: a consistent WAL snapshot of rows + meta
            try:
                rows = self._rows()
                self._check_chain(rows, use_cache=use_cache)
            finally:
                self._conn.execute("COMMIT")
            self._check_anchor(state, len(rows), self._hash_in(rows))
        return rows

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _budget(rows: list[dict[str, Any]], dataset: str) -> tuple[float, float]:
        for r in rows:
            if r["kind"] == "register" and r["dataset"] == dataset:
                return float(r["epsilon"]), float(r["delta"])
        raise ConfigError(f"dataset {dataset!r} is not registered in this ledger; call register_dataset first")

    def _releases(self, rows: list[dict[str, Any]], dataset: str) -> list[tuple[DpEvent, str]]:
        return [
            (self._event(r), str(r["relation"]))
            for r in rows
            if r["kind"] == "reserve" and r["dataset"] == dataset
        ]

    def _check_covers(self, rows: list[dict[str, Any]], dataset: str, event: DpEvent, *, job: str,
                      protocol: str, relation: str) -> None:
        """A cover pays only for its own job's releases, and only for those its calibration
        planned: refuse a release that names a cover another job or protocol defined (found by
        the privacy review: any later release could otherwise claim a cover for free), or that
        is charged under another relation than its cover (found by a later review: the check
        below compares the release's own mechanism with the cover's ε as the two were stated, so
        a release stated under a weaker relation, e.g. ``zero-out-silo`` beside a record-level
        cover, would be under-counted up to twofold), one that defines a label the dataset
        already has or defines it twice, and a covered release past the cover's count or whose
        mechanism, composed with the cover's earlier covered releases, exceeds the cover's
        (ε, δ) (:func:`~fedsilo.privacy.accounting.check_cover_pays`)."""
        defined, named = cover_labels(event)
        if not defined and not named:
            return
        where = f"silo {self._silo!r}, dataset {dataset!r}"
        if len(set(defined)) != len(defined):
            raise PrivacyError(f"{where}: a release defines a cover label twice; nothing was written")
        # label -> (job, protocol, relation, cover)
        owners: dict[str, tuple[str, str, str, ApproxDpEvent]] = {}
        paid: dict[str, list[DpEvent]] = {}  # label -> the covered releases' own events, in order
        for r in rows:
            if r["kind"] == "reserve" and r["dataset"] == dataset:
                earlier = self._event(r)
                for cover in cover_events(earlier):
                    owners[cover.cover] = (str(r["job"]), str(r["protocol"]), str(r["relation"]), cover)
                for c in covered_events(earlier):
                    paid.setdefault(c.cover, []).append(c.event)
        for label in defined:
            if label in owners:
                raise PrivacyError(f"{where}: cover {label!r} is already defined by job {owners[label][0]!r}; "
                                   "nothing was written")
        owners.update({c.cover: (job, protocol, relation, c) for c in cover_events(event)})
        for c in covered_events(event):
            paid.setdefault(c.cover, []).append(c.event)
        for label in dict.fromkeys(named):
            if label not in owners:
                continue  # the composition refuses a release whose cover is not charged
            owner_job, owner_protocol, owner_relation, cover = owners[label]
            if (owner_job, owner_protocol) != (job, protocol):
                raise PrivacyError(
                    f"{where}: a release of job {job!r} ({protocol}) names cover {label!r} of job "
                    f"{owner_job!r} ({owner_protocol}); a cover pays only for its own job; nothing was written"
                )
            if owner_relation != relation:
                raise PrivacyError(
                    f"{where}: a release under relation {relation!r} names cover {label!r}, charged under "
                    f"{owner_relation!r}; a covered release must be stated under its cover's relation; nothing was written"
                )
            try:
                check_cover_pays(cover, paid[label], accountant=self._accountant)
            except PrivacyError as exc:
                raise PrivacyError(f"{where}: job {job!r} ({protocol}): {exc}; nothing was written") from None

    def _composed(self, releases: list[tuple[DpEvent, str]], delta: float) -> tuple[str | None, float]:
        """The composition target and ε of ``releases`` (each converted to the target)."""
        target, _, eps = composed_epsilon(releases, delta=delta, accountant=self._accountant)
        return target, eps

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
    def anchor_path(self) -> Path:
        """The anchor file (``<path>.anchor``): the last anchored ``(seq, hash)``, HMAC'd."""
        return self._anchor_path

    @property
    def key_path(self) -> Path:
        """The anchor's HMAC key file (``<path>.key``, mode 0600)."""
        return self._key_path

    @property
    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the last entry: anchor it in an external log for tamper evidence.

        Raises:
            LedgerIntegrityError: the head does not match the last row, or the database does not
                contain its anchored entry.
        """
        with self._lock:
            state = self._anchor_state()
            self._conn.execute("BEGIN")
            try:
                seq, head = self._tail()
                self._check_anchor(state, seq, self._hash_in_db)
            finally:
                self._conn.execute("COMMIT")
        return seq, head

    @property
    def anchored(self) -> tuple[int, str]:
        """``(seq, hash)`` recorded in the anchor file, after authenticating it and checking that
        the database contains that entry (it may be behind :attr:`head` after a crash)."""
        with self._lock:
            state = self._anchor_state()
            self._conn.execute("BEGIN")
            try:
                seq, _ = self._tail()
                self._check_anchor(state, seq, self._hash_in_db)
            finally:
                self._conn.execute("COMMIT")
        key, raw = state
        assert key is not None and raw is not None  # checked above
        return self._parse_anchor(raw, key)

    def register_dataset(self, dataset: str, *, epsilon: float, delta: float) -> None:
        """Register ``dataset`` with budget (ε, δ); a no-op if already registered with the same.

        Raises:
            ConfigError: registered before with a different budget (budgets never change).
            PrivacyParameterError: ε not finite and > 0, or δ outside (0, 1).
            LedgerIntegrityError: the hash chain or its anchor is broken.
        """
        _name("dataset", dataset)
        if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not (
            math.isfinite(epsilon) and epsilon > 0
        ):
            raise PrivacyParameterError(f"budget epsilon must be a finite number > 0, got {epsilon!r}")
        if isinstance(delta, bool) or not isinstance(delta, numbers.Real) or not (0 < delta < 1):
            raise PrivacyParameterError(f"budget delta must be in (0, 1), got {delta!r}")
        eps_f, delta_f = float(epsilon), float(delta)
        with self._lock:
            with self._write():
                rows = self._rows()
                self._check_chain(rows)
                self._check_anchor(self._anchor_state(), len(rows), self._hash_in(rows))
                for r in rows:
                    if r["kind"] == "register" and r["dataset"] == dataset:
                        if (r["epsilon"], r["delta"]) == (eps_f, delta_f):
                            return
                        raise ConfigError(
                            f"dataset {dataset!r} of silo {self._silo!r} is already registered with "
                            f"budget epsilon={r['epsilon']:g}, delta={r['delta']:g}; refusing to "
                            f"change it to epsilon={eps_f:g}, delta={delta_f:g}"
                        )
                row = self._append(rows, kind="register", dataset=dataset, epsilon=eps_f, delta=delta_f)
            self._advance_anchor(row["seq"], row["hash"])

    def budget(self, dataset: str) -> tuple[float, float]:
        """The registered ``(epsilon, delta)`` budget of ``dataset``."""
        return self._budget(self._read(), dataset)

    def spent(self, dataset: str) -> float:
        """ε of the composition of every reserved release of ``dataset`` (committed or not).

        Each release is first converted to the dataset's composition target
        (:func:`fedsilo.privacy.relations.to_composition_target`). Computed with the ledger's
        accountant at the dataset's δ; 0.0 before any release.

        Raises:
            ConfigError: unregistered dataset.
            LedgerIntegrityError: the hash chain or its anchor is broken.
        """
        rows = self._read()
        _, delta = self._budget(rows, dataset)
        return self._composed(self._releases(rows, dataset), delta)[1]

    def remaining(self, dataset: str) -> float:
        """``max(0, budget ε − spent)``, with ``spent`` as in :meth:`spent`."""
        rows = self._read()
        eps_budget, delta = self._budget(rows, dataset)
        return max(0.0, eps_budget - self._composed(self._releases(rows, dataset), delta)[1])

    def preview(self, dataset: str, planned: Sequence[tuple[DpEvent, str]]) -> BudgetCheck:
        """A dry run of ``planned`` releases (``(event, relation)`` pairs, e.g. every charge a job
        will make) on top of what ``dataset`` already spent: :func:`budget_check` on one read
        snapshot, composed as :meth:`charge` composes. Writes nothing.

        Whether the last planned charge would be accepted is ``preview(...).fits``, if no other
        release comes in between (a concurrent job's charge can still make it refuse).

        Raises:
            ConfigError: unregistered dataset.
            PrivacyError: the planned releases cannot be composed with the dataset's earlier
                ones, or an unsupported event.
            LedgerIntegrityError: the hash chain or its anchor is broken.
        """
        rows = self._read()
        eps_budget, delta = self._budget(rows, dataset)
        return budget_check(silo=self._silo, dataset=dataset, budget=eps_budget, delta=delta,
                            accountant=self._accountant, before=self._releases(rows, dataset), planned=list(planned))

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
        relation: str,
    ) -> Reservation:
        """Reserve the cost of one release (write-ahead); use the result as a context manager.

        ::

            with ledger.charge("breast_cancer", GaussianEvent(1.1), job="j1", round=3,
                               protocol="fedavg", mechanism={"name": "gaussian", "clip": 1.0},
                               recipient="aggregator", relation=ZERO_OUT_SILO):
                decrypt_and_release()

        Args:
            dataset: a registered dataset.
            event: the DP event of this release, valid under ``relation`` (its noise multiplier
                is the noise over the sensitivity *under that relation*).
            job, round, protocol: where the release belongs.
            mechanism: JSON-serializable mechanism name and parameters (stored verbatim).
            recipient: who receives the output.
            relation: the neighbouring relation the event protects, one of
                :data:`fedsilo.privacy.relations.RELATIONS`; the stored ``level`` is derived
                from it.

        The budget check composes every earlier release of the dataset together with this one,
        all converted to the dataset's composition target.

        Raises:
            BudgetExceededError: the release would exceed the budget; nothing was written.
            PrivacyError: this release cannot be composed with the dataset's earlier releases
                under one relation (the message names both), or an unsupported event; nothing
                was written.
            ConfigError: unregistered dataset or malformed arguments (nothing written).
            LedgerIntegrityError: the hash chain or its anchor is broken; nothing is charged on
                such a ledger.
        """
        # Check everything before touching the database.
        _name("dataset", dataset)
        if not isinstance(event, DpEvent) or type(event) is DpEvent:
            raise PrivacyError(f"not a fedsilo DP event: {event!r}")
        # refuses unsupported events; a covered release's cover is checked against the dataset's
        # earlier releases by the composition below
        check_supported(event)
        _name("job", job)
        _name("protocol", protocol)
        _name("recipient", recipient)
        if isinstance(round, bool) or not isinstance(round, numbers.Integral) or round < 0:
            raise ConfigError(f"round must be an integer >= 0, got {round!r}")
        level = level_of(relation)  # PrivacyParameterError (a ConfigError) if unknown
        check_accountable(event, relation)
        if not isinstance(mechanism, Mapping):
            raise ConfigError(f"mechanism must be a mapping of name and parameters, got {mechanism!r}")
        try:
            mech_json = _canonical(dict(mechanism))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"mechanism must be JSON-serializable without NaN: {exc}") from None
        event_json = _canonical(event.to_json())
        try:  # every read re-parses it: an event the ledger cannot read back would break it for good
            event_from_json(json.loads(event_json))
        except PrivacyError as exc:
            raise PrivacyError(f"silo {self._silo!r}, dataset {dataset!r}: the release's event cannot be stored "
                               f"({exc}); nothing was written") from None

        with self._lock:
            with self._write():
                rows = self._rows()
                self._check_chain(rows)
                self._check_anchor(self._anchor_state(), len(rows), self._hash_in(rows))
                eps_budget, delta = self._budget(rows, dataset)
                self._check_covers(rows, dataset, event, job=job, protocol=protocol, relation=relation)
                before = self._releases(rows, dataset)
                try:
                    # the same composition as budget_check (the pre-check of a job) and reports
                    after = composed_epsilon(before + [(event, relation)], delta=delta, accountant=self._accountant)[2]
                except PrivacyError as exc:
                    where = f"silo {self._silo!r}, dataset {dataset!r}"
                    if not before:  # nothing earlier to clash with: the release alone is refused
                        raise PrivacyError(f"{where}: {exc}; nothing was written") from None
                    earlier = ", ".join(repr(r) for r in sorted({r for _, r in before}))
                    raise PrivacyError(
                        f"{where}: a release under relation {relation!r} cannot be composed with the "
                        f"dataset's earlier releases under {earlier}: {exc}; nothing was written"
                    ) from None
                if not after <= eps_budget:  # also refuses NaN
                    raise BudgetExceededError(
                        silo=self._silo,
                        dataset=dataset,
                        spent=self._composed(before, delta)[1],
                        requested=after,
                        budget=eps_budget,
                        delta=delta,
                    )
                rid = uuid.uuid4().hex
                row = self._append(
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
                    relation=relation,
                    epsilon=after,
                    delta=delta,
                )
            # Committed: the reservation counts from here on, even if the anchor cannot move.
            self._advance_anchor(row["seq"], row["hash"])
        return Reservation(self, rid, dataset, event, after, relation)

    def _finalize(self, reservation: Reservation, kind: str, note: str | None) -> tuple[int, str]:
        """Append and commit the ``commit``/``abort`` row; return its ``(seq, hash)`` for the
        caller to advance the anchor to (after recording the new status)."""
        with self._lock, self._write():
            tail = self._tail()
            self._check_anchor(self._anchor_state(), tail[0], self._hash_in_db)
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
            row = self._append(
                tail,
                kind=kind,
                dataset=reservation.dataset,
                reservation=reservation.reservation_id,
                note=note,
            )
        return int(row["seq"]), str(row["hash"])

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
                    relation=r["relation"],
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
        """Check the whole hash chain, the head and the anchor.

        Raises:
            LedgerIntegrityError: a row was edited, deleted or inserted, the tail truncated, the
                database rolled back to an earlier copy, or the anchor or key is missing or
                forged.
            ConfigError: the key file is accessible by group or others.
        """
        self._read(use_cache=False)  # re-hash every row

    def report(self) -> list[DatasetReport]:
        """Budget, spent ε (re-composed now under each dataset's composition target), remaining
        ε, release counts and the relation per dataset."""
        rows = self._read()
        entries = self._entries(rows, None)
        out: list[DatasetReport] = []
        for r in rows:
            if r["kind"] != "register":
                continue
            name = r["dataset"]
            mine = [e for e in entries if e.dataset == name]
            target, spent = self._composed([(e.event, e.relation) for e in mine], float(r["delta"]))
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
                    relation=target,
                    level=None if target is None else level_of(target),
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
