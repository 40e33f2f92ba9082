"""The channel abstraction every protocol is written against.

A :class:`Channel` is one party's view of a job: typed, addressed messages to and from named
peers. Every message carries job id, round and sender; a receiver only accepts the exact
(sender, kind, round) it waits for, buffers early messages of later rounds, and drops stale
ones, so replays and strays never reach protocol code. Payloads go through
:mod:`fedsilo.protocols.codec` on every transport, so byte counts are honest and nothing is
shared by reference between parties.

:class:`InProcessHub` connects parties inside one process (threads): tests and the runner's
``threads`` engine; :mod:`fedsilo.silos.transport` provides the same interface over gRPC with
mutual TLS.
"""
from __future__ import annotations

import abc
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fedsilo.errors import JobAbortedError, PeerRejectedError, PeerTimeoutError, ProtocolError
from fedsilo.protocols import codec
from fedsilo.protocols.identity import LocalDirectory, PartyIdentity

__all__ = ["Channel", "Envelope", "InProcessHub", "MAX_PENDING", "MAX_PENDING_BYTES", "run_parties"]

#: Early messages (for a later kind or round) one party buffers before it refuses more: a peer
#: cannot grow a receiver's memory without bound.
MAX_PENDING = 10_000
#: ... and the bytes of those early messages (bodies as received): a count alone would let a
#: peer park 10 000 maximal ciphertexts here
MAX_PENDING_BYTES = 2 * 1024**3


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message as it travels: routing fields plus the encoded payload.

    ``seq`` numbers a sender's messages in a job from 1; transports deliver each sender's
    messages in order (in-process: one FIFO; agents: one ordered stream per peer), so a
    receiver accepts only increasing numbers and an exact replay never reaches protocol code.
    """

    job: str
    round: int
    sender: str
    recipient: str
    kind: str
    body: bytes
    seq: int

    @property
    def size(self) -> int:
        return len(self.body) + len(self.job) + len(self.sender) + len(self.recipient) + len(self.kind) + 16


class Channel(abc.ABC):
    """One party's endpoint. Subclasses implement ``_deliver`` and ``_next``."""

    def __init__(self, *, party: str, job: str, peers: Iterable[str], identity: PartyIdentity | None = None) -> None:
        self.party = party
        self._identity = identity
        self.job = job
        self.peers = frozenset(peers) - {party}
        self.bytes_sent = 0
        self.messages_sent = 0
        self._pending: dict[tuple[str, str, int], list[tuple[Any, int]]] = defaultdict(list)
        self._pending_count = 0
        self._pending_bytes = 0
        self._last_seq: dict[str, int] = defaultdict(int)

    @property
    def identity(self) -> PartyIdentity | None:
        """This party's signing identity (:mod:`fedsilo.protocols.identity`), for material another
        party relays; None on a transport without one (plaintext loopback gRPC)."""
        return self._identity

    # -- transport hooks ----------------------------------------------------------------------
    @abc.abstractmethod
    def _deliver(self, envelope: Envelope) -> None:
        """Hand an envelope to the transport (may block for back-pressure)."""

    @abc.abstractmethod
    def _next(self, deadline: float) -> Envelope | None:
        """The next envelope addressed to this party, or None once ``deadline`` passed."""

    # -- protocol API -----------------------------------------------------------------------------
    def send(self, recipient: str, kind: str, payload: Any, *, round: int) -> int:
        """Send ``payload`` to ``recipient``; returns bytes put on the wire."""
        return self._send_body(recipient, kind, codec.encode(payload), round=round)

    def _send_body(self, recipient: str, kind: str, body: bytes, *, round: int) -> int:
        if recipient not in self.peers:
            raise PeerRejectedError(
                f"{self.party}: {recipient!r} is not a peer of job {self.job!r} "
                f"(peers: {', '.join(sorted(self.peers))})"
            )
        env = Envelope(self.job, round, self.party, recipient, kind, body, self.messages_sent + 1)
        # the number is used up even if delivery fails: after a lost acknowledgement the receiver
        # may hold this envelope, so the next message must not reuse its number (it would be
        # taken for a replay and dropped)
        self.messages_sent += 1
        self._deliver(env)
        self.bytes_sent += env.size
        return env.size

    def broadcast(self, recipients: Iterable[str], kind: str, payload: Any, *, round: int) -> int:
        """Send one ``payload`` to every recipient, encoded once (a 10^6-value sum to ten silos
        was ten 8 MB encodings)."""
        body = codec.encode(payload)
        return sum(self._send_body(r, kind, body, round=round) for r in recipients)

    def recv(self, sender: str, kind: str, *, round: int, timeout: float) -> Any:
        """The payload of the (sender, kind, round) message; PeerTimeoutError after ``timeout`` s."""
        got = self.gather([sender], kind, round=round, timeout=timeout)
        if sender not in got:
            raise PeerTimeoutError(
                f"{self.party}: no {kind!r} from {sender!r} for round {round} of job {self.job!r} "
                f"within {timeout:g}s"
            )
        return got[sender]

    def gather(
        self, senders: Iterable[str], kind: str | tuple[str, ...], *, round: int, timeout: float
    ) -> dict[str, Any]:
        """Payloads of ``kind`` for ``round`` from those ``senders`` whose message arrives before
        the deadline (partial participation is the caller's decision, not an error here).

        ``kind`` may be a tuple of kinds: each sender's first message of any of them is taken
        (e.g. a masked input *or* a withdrawal notice), so a sender that answered with the other
        kind is not waited for."""
        kinds = (kind,) if isinstance(kind, str) else tuple(kind)
        wanted = set(senders)
        unknown = wanted - self.peers
        if unknown:
            raise PeerRejectedError(f"{self.party}: unknown peers {sorted(unknown)}")
        out: dict[str, Any] = {}
        for s in list(wanted):
            for k in kinds:
                queue = self._pending.get((s, k, round))
                if queue:
                    out[s], size = queue.pop(0)
                    self._pending_count -= 1
                    self._pending_bytes -= size
                    wanted.discard(s)
                    break
        self._drop_past_rounds(round)
        deadline = time.monotonic() + timeout
        while wanted:
            env = self._next(deadline)
            if env is None:
                break
            if env.job != self.job or env.round < round or env.sender not in self.peers:
                continue  # stray from another job or party, or a stale message of a past round
            if env.seq <= self._last_seq[env.sender]:
                continue  # a replay (or a transport that reordered): never delivered twice
            self._last_seq[env.sender] = env.seq
            payload = codec.decode(env.body)
            if env.sender in wanted and env.kind in kinds and env.round == round:
                out[env.sender] = payload
                wanted.discard(env.sender)
            else:
                size = len(env.body)
                if self._pending_count >= MAX_PENDING or self._pending_bytes + size > MAX_PENDING_BYTES:
                    raise ProtocolError(
                        f"{self.party}: more than {MAX_PENDING} early messages or {MAX_PENDING_BYTES} bytes of them "
                        f"buffered (latest from {env.sender!r}, kind {env.kind!r}, round {env.round}); refusing to buffer more"
                    )
                self._pending[(env.sender, env.kind, env.round)].append((payload, size))
                self._pending_count += 1
                self._pending_bytes += size
        return out

    def _drop_past_rounds(self, round: int) -> None:
        """Messages buffered for rounds before ``round`` can never be asked for again."""
        for key in [k for k in self._pending if k[2] < round]:
            dropped = self._pending.pop(key)
            self._pending_count -= len(dropped)
            self._pending_bytes -= sum(size for _, size in dropped)


class InProcessHub:
    """Mailboxes for parties running as threads in one process (tests and the ``threads`` engine).

    ``log`` keeps every delivered envelope so tests can inspect exactly what a party received.
    ``abort`` wakes every waiting party with the failing party's error.
    """

    def __init__(self, job: str, parties: Iterable[str]) -> None:
        self.job = job
        self.parties = tuple(parties)
        self.log: list[Envelope] = []
        self._boxes: dict[str, list[Envelope]] = {p: [] for p in self.parties}
        self._cond = threading.Condition()
        self._aborted: str | None = None
        self._channels: dict[str, _InProcessChannel] = {}
        self._directory: LocalDirectory | None = None

    @property
    def directory(self) -> LocalDirectory:
        """The parties' Ed25519 identities (made on first use: most jobs never sign anything)."""
        with self._cond:
            if self._directory is None:
                self._directory = LocalDirectory(self.parties)
            return self._directory

    def channel(self, party: str) -> "_InProcessChannel":
        if party not in self._boxes:
            raise PeerRejectedError(f"{party!r} is not a party of job {self.job!r}")
        if party not in self._channels:
            self._channels[party] = _InProcessChannel(self, party)
        return self._channels[party]

    def received_by(self, party: str) -> list[Envelope]:
        return [e for e in self.log if e.recipient == party]

    def bytes_sent(self) -> dict[str, int]:
        return {p: c.bytes_sent for p, c in self._channels.items()}

    def abort(self, reason: str) -> None:
        with self._cond:
            if self._aborted is None:
                self._aborted = reason
            self._cond.notify_all()

    def _put(self, env: Envelope) -> None:
        with self._cond:
            self._check_aborted()
            self._boxes[env.recipient].append(env)
            self.log.append(env)
            self._cond.notify_all()

    def _get(self, party: str, deadline: float) -> Envelope | None:
        with self._cond:
            while True:
                self._check_aborted()
                box = self._boxes[party]
                if box:
                    return box.pop(0)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def _check_aborted(self) -> None:
        if self._aborted is not None:
            raise JobAbortedError(f"job {self.job!r} aborted: {self._aborted}")


class _InProcessChannel(Channel):
    def __init__(self, hub: InProcessHub, party: str) -> None:
        super().__init__(party=party, job=hub.job, peers=hub.parties)
        self._hub = hub

    @property
    def identity(self) -> PartyIdentity:
        if self._identity is None:
            self._identity = self._hub.directory.identity(self.party)
        return self._identity

    def _deliver(self, envelope: Envelope) -> None:
        self._hub._put(envelope)

    def _next(self, deadline: float) -> Envelope | None:
        return self._hub._get(self.party, deadline)


@dataclass
class PartyOutcome:
    results: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, BaseException] = field(default_factory=dict)


def run_parties(hub: InProcessHub, parties: Mapping[str, Callable[[Channel], Any]]) -> dict[str, Any]:
    """Run each party's function on its own thread; return their results by name.

    If a party fails, the others are woken (they see :class:`JobAbortedError` naming the
    failing party) and the *original* error is re-raised, never a secondary timeout.
    """
    outcome = PartyOutcome()

    def run(name: str, fn: Callable[[Channel], Any]) -> None:
        try:
            outcome.results[name] = fn(hub.channel(name))
        except BaseException as exc:  # noqa: BLE001 - reported to the caller below
            outcome.errors[name] = exc
            if not isinstance(exc, JobAbortedError):
                hub.abort(f"party {name!r} failed: {type(exc).__name__}: {exc}")

    with ThreadPoolExecutor(max_workers=len(parties)) as pool:
        for name, fn in parties.items():
            pool.submit(run, name, fn)
    primary = [e for e in outcome.errors.values() if not isinstance(e, JobAbortedError)]
    if primary:
        raise primary[0]
    if outcome.errors:
        raise next(iter(outcome.errors.values()))
    return outcome.results
