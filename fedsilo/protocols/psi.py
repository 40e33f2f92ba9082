"""Private set intersection for vertical alignment: ECDH over Curve25519 (X25519), streamed.

Protocol (the Diffie–Hellman PSI of Meadows, IEEE S&P 1986, and Huberman, Franklin & Hogg,
EC 1999; the two-way variant of De Cristofaro & Tsudik, FC 2010). Each party P holds a fresh
X25519 scalar ``a`` and its IDs ``x``; ``H`` hashes an ID to a point of Curve25519. With
``[k]Q`` the X25519 function (RFC 7748, a Montgomery-ladder scalar multiplication returning the
u-coordinate), ``[a]([b]H(x)) = [b]([a]H(x))``, so:

1. both parties send ``[a]H(x)`` for their own IDs, in a secret random order;
2. both raise what they received to their own scalar and send it back **in the received order**
   (cardinality-only: in a fresh random order, so the owner cannot map it back to IDs),
   truncated to its first :data:`DOUBLE_BYTES` = 16 bytes: a double-masked value is only ever
   compared, and two distinct ones agree on 128 bits with probability 2^-128 (below 2^-81 over
   all 10^7 × 10^7 pairs);
3. each party now holds ``[ab]H(x)`` for its own IDs (it knows its order) and ``[ab]H(y)`` for
   the peer's (in an order it cannot map to the peer's IDs); the matches are the intersection
   (a sort-and-search over 64-bit prefixes, each candidate checked on all 16 bytes: exact);
4. both sort the intersection by ID (Python string order of the IDs, which both now know) —
   the **agreed order**: independent of either file's row order and reproducible, so seeded
   simulations are repeatable; each sends a SHA-256 digest of the intersection's IDs in the
   agreed order (their UTF-8 bytes, length-delimited) keyed by the last 16 bytes of the
   matched double-masked values, which each side computed itself and which never travel (so a
   reader of the messages cannot test guessed ID lists against it), and aborts with
   :class:`ProtocolError` if the two differ (:func:`_confirmation`).

What the confirmation detects, and what it cannot: both sides end with the same IDs, in the
same order, matched on the same double-masked values — so a peer that hashed other bytes than
it reports (an implementation that trims or case-folds before hashing), sorts differently, maps
matches to the wrong rows, or another hash domain or version, is caught. An ID *format*
mismatch between the files ("00123" against "123", "AB1" against "ab1") is not: such IDs hash
to unrelated points, never match, and are in neither side's intersection, so every digest over
the intersection agrees; they only make it smaller. Each party already knows both set sizes
(step 1 announces them) and the intersection's size, so it warns locally, with no extra
message, when the intersection holds less than :data:`LOW_OVERLAP` of the smaller set
(:class:`LowOverlapWarning`, with hints from its own IDs: leading zeros, upper case, spaces).

Streaming: steps 1 and 2 travel in messages of at most ``chunk`` IDs (:data:`CHUNK` by
default). A party draws its secret order first and hashes and masks its IDs *in that order*,
so each chunk is sent as soon as it is masked, and the peer answers chunk by chunk while the
first party is still masking: with sets of n and m IDs each party does n + m scalar
multiplications and n hashes to the curve, and memory is O(n + m) compact arrays (16 bytes per
ID of each side, another 16 per peer ID until the match, after which only the matched rows'
confirmation tails are kept, plus the IDs themselves, :class:`~fedsilo.protocols.psi_ids.IdTable`),
never a Python object per ID. ``progress`` gets ``{"stage": "psi", "peer", "done", "total"}`` (curve
operations of this party) after every chunk.

Who learns what (honest-but-curious, DDH on Curve25519 with ``H`` modelled as a random oracle):
each party learns the intersection (or only its size) and the size of the other set, nothing
about the other party's IDs outside the intersection. Multi-host alignment
(:func:`align_guest` / :func:`align_host`) runs this pairwise with the guest; the guest masks
its IDs once, with one scalar and one secret order for all hosts (hosts that pool what they
received could link the guest's masked values under its one scalar anyway), intersects the
pairwise results and tells each host which of *its* pairwise matches survive — so a host
learns which of the IDs it shares with the guest are also held by every other host
(unavoidable: the rows trained on must be the same rows everywhere).

Hashing to the curve is try-and-increment: ``u = SHA-512(domain ‖ len ‖ id ‖ counter) mod p``
until ``u³ + 486662u² + u`` is a non-zero square mod p (the u-coordinate of a curve point, not
the twist); about two tries per ID, a Jacobi symbol each (gmpy2, ~1.7 µs). The loop leaks the
number of tries of one's *own* IDs through local timing only. X25519 clamps scalars to
multiples of the cofactor 8, so every masked value is in the prime-order subgroup; a peer that
sends a low-order point makes X25519 fail, which is raised as :class:`ProtocolError` naming that peer.

Why not openmined-psi: measured on this 2-core machine (benchmarks/psi.py, docs/benchmarks.md),
10^5 × 10^5 IDs: openmined-psi 2.0.6 (P-256, RAW set-up, one thread) 25 s, and only its client
learns the intersection. This module runs the curve work on a process pool (``workers``; the
X25519 call holds the GIL, so threads do not help; in-process, :func:`psi_in_process`, both
parties share one, so a worker one party leaves idle computes the other's chunks) within ~1.2× of the bare
X25519 rate of ``cryptography`` (OpenSSL, ~28 µs per scalar multiplication, the same rate as
``openssl speed ecdhx25519``), gives both sides the same intersection in the same order and
needs only ``cryptography`` (maintained by PyCA), which fedsilo already depends on. Wire:
32 + 16 = 48 bytes per own ID (openmined-psi RAW: ~52). pynacl is not a fedsilo dependency and
has no ristretto255 bindings.
"""
from __future__ import annotations

import hashlib
import math
import multiprocessing
import os
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedsilo.errors import ConfigError, DataError, ProtocolError
from fedsilo.privacy.mechanisms import secure_rng
from fedsilo.protocols.channel import Channel, InProcessHub, run_parties
from fedsilo.protocols.psi_curve import (
    DOUBLE_BYTES,
    POINT_BYTES,
    InvalidPointError,
    _hash_and_mask,
    _remask,
    hash_to_curve,
    mask_points,
)
from fedsilo.protocols.psi_ids import IdTable, ids_from_column

__all__ = [
    "Alignment",
    "CHUNK",
    "DEFAULT_DOMAIN",
    "DOUBLE_BYTES",
    "IdTable",
    "POINT_BYTES",
    "PsiProgress",
    "PsiResult",
    "align_guest",
    "align_host",
    "hash_to_curve",
    "ids_from_column",
    "mask_points",
    "psi_executor",
    "psi_in_process",
    "psi_party",
    "LocalPsiRun",
    "LOW_OVERLAP",
    "LowOverlapWarning",
    "MESSAGE_KINDS",
]

# Message kinds, in the order of one pairwise run (each party plays both sides); a masked set
# travels as one or more messages of at most ``chunk`` IDs, in the sender's secret order:
#: A -> B: ``{"points": bytes (k × 32, masked by A), "n": int (A's set size), "card": bool}``
MASKED: Final = "psi/masked"
#: B -> A: ``{"points": bytes (k × 16)}``, A's masked points masked again by B, truncated, in A's order
DOUBLE: Final = "psi/double"
#: A <-> B: ``{"digest": bytes}``, a hash of the intersection's IDs in the agreed order (cardinality-only: of
#: nothing but the matched values), keyed by the matched values' unsent last 16 bytes (must agree)
CONFIRM: Final = "psi/confirm"
#: guest -> host, once over all hosts: ``{"index": int64 array}``, the host's rows in the final order
FINAL: Final = "psi/final"
MESSAGE_KINDS: Final = (MASKED, DOUBLE, CONFIRM, FINAL)

#: Domain-separation tag of the hash to the curve; the job id is appended by the protocols.
DEFAULT_DOMAIN: Final = b"fedsilo-psi-v1"
#: IDs per message and per pool task (1 MB of masked points; ~1 s of curve work).
CHUNK: Final = 1 << 15
#: Below this many IDs per pass a process pool costs more (start-up) than it saves.
POOL_THRESHOLD: Final = 20_000
#: Default seconds to wait for each peer message.
DEFAULT_TIMEOUT: Final = 3600.0

#: ``{"stage": "psi", "peer": str, "done": int, "total": int | None}`` after every chunk.
PsiProgress = Callable[[dict[str, Any]], None]

_MATCH_BLOCK: Final = 1 << 20
#: IDs turned into Python strings at a time for the confirmation digest (bounded memory)
_DIGEST_BLOCK: Final = 1 << 18
#: Warn when the intersection holds less than this share of the smaller set.
LOW_OVERLAP: Final = 0.1


class LowOverlapWarning(UserWarning):
    """The intersection is much smaller than both sets: often the parties render IDs differently."""


def _ordered(executor: Executor | None, fn: Callable[..., bytes], jobs: Iterable[tuple[Any, ...]]) -> Iterator[bytes]:
    """``fn(*job)`` for every job, in order; on ``executor`` with a few tasks in flight per worker.

    Jobs are pulled lazily (a job may wait for the peer's next message) and at most
    ``2 × workers + 1`` results are pending, so memory stays bounded whatever the set size.
    """
    if executor is None:
        for job in jobs:
            yield fn(*job)
        return
    depth = 2 * (getattr(executor, "_max_workers", 2) or 2) + 1
    pending: deque[Future[bytes]] = deque()
    try:
        for job in jobs:
            pending.append(executor.submit(fn, *job))
            while pending and (len(pending) >= depth or pending[0].done()):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()


@contextmanager
def psi_executor(workers: int | None = None, *, pool_of_one: bool = False) -> Iterator[Executor | None]:
    """A process pool for the curve work, or ``None`` for one worker (the calling thread).

    ``workers=None`` uses every core; ``pool_of_one`` gives one worker its own process too
    (parties that share a process and so a GIL). The pool uses the ``forkserver`` start method:
    the parties of an in-process simulation are threads, and forking a multi-threaded process
    can deadlock.
    """
    n = (os.cpu_count() or 1) if workers is None else int(workers)
    if n < 1:
        raise ConfigError(f"PSI workers must be >= 1, got {workers!r}")
    if n == 1 and not pool_of_one:
        yield None
        return
    ctx = multiprocessing.get_context("forkserver")
    # loaded once in the forkserver (if this starts it), not imported again by every worker
    ctx.set_forkserver_preload(["fedsilo.protocols.psi"])
    with ProcessPoolExecutor(max_workers=n, mp_context=ctx) as pool:
        yield pool


# ------------------------------------------------------------------------------ results


@dataclass(frozen=True, slots=True)
class PsiResult:
    """One party's outcome of a two-party PSI.

    ``positions[k]`` is the row (index into the party's own IDs) of the k-th ID of the
    intersection in the agreed order; :attr:`ids` are those IDs (built on each access: at
    10^7 IDs, use ``table.values[positions]``). In cardinality-only mode both are empty and
    only ``size`` is known.
    """

    table: IdTable = field(repr=False)
    positions: np.ndarray
    size: int
    local_size: int
    peer_size: int
    cardinality_only: bool = False

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self.table.take(self.positions))


@dataclass(frozen=True, slots=True)
class Alignment:
    """Rows every party of a vertical job shares, in the agreed order.

    ``positions[k]`` is this party's row of the k-th aligned ID. ``pairwise`` maps each peer to
    the size of the pairwise intersection this party learnt (the guest: every host; a host:
    the guest).
    """

    ids: tuple[str, ...]
    positions: np.ndarray
    local_size: int
    pairwise: dict[str, int]

    @property
    def size(self) -> int:
        return len(self.ids)


# ------------------------------------------------------------------------------ protocol


class _Counter:
    """This party's curve operations so far, reported to ``progress`` after every chunk."""

    def __init__(self, progress: PsiProgress | None, peer: str, own: int) -> None:
        self.progress, self.peer, self.own = progress, peer, own
        self.peers: int | None = None
        self.done = 0

    def add(self, k: int) -> None:
        self.done += k
        if self.progress is not None:
            total = None if self.peers is None else self.own + self.peers
            self.progress({"stage": "psi", "peer": self.peer, "done": self.done, "total": total})


def _send_own(
    channel: Channel,
    peers: Sequence[str],
    table: IdTable,
    order: np.ndarray,
    *,
    key: bytes,
    domain: bytes,
    executor: Executor | None,
    chunk: int,
    cardinality_only: bool,
    round: int,
    counter: _Counter,
) -> None:
    """Step 1: hash and mask this party's IDs in its secret ``order``, a chunk per message."""
    n = len(table)
    spans = [(i, min(n, i + chunk)) for i in range(0, n, chunk)] or [(0, 0)]
    jobs = ((table.take(order[a:b]), domain, key) for a, b in spans)
    for (a, b), masked in zip(spans, _ordered(executor, _hash_and_mask, jobs)):
        for p in peers:
            channel.send(p, MASKED, {"points": masked, "n": n, "card": cardinality_only}, round=round)
        counter.add(b - a)


def _answer(
    channel: Channel,
    peer: str,
    *,
    key: bytes,
    executor: Executor | None,
    chunk: int,
    cardinality_only: bool,
    rng: np.random.Generator,
    round: int,
    timeout: float,
    counter: _Counter,
) -> tuple[np.ndarray, np.ndarray]:
    """Step 2: mask the peer's points again and send them back; the peer's double-masked set.

    Returns two (m, 16) uint8 arrays, in received order: the first 16 bytes of ``[ab]H(y)`` for
    the peer's IDs (sent back, compared) and their last 16 bytes (never sent: they key the
    confirmation, :func:`_confirmation`).
    """
    first = channel.recv(peer, MASKED, round=round, timeout=timeout)
    points, m = _masked_of(first, peer, cardinality_only, None)
    counter.peers = (counter.peers or 0) + m
    out = np.empty((m, DOUBLE_BYTES), dtype=np.uint8)
    tails = np.empty((m, POINT_BYTES - DOUBLE_BYTES), dtype=np.uint8)

    def pieces() -> Iterator[tuple[bytes, bytes]]:
        # the peer's messages, cut into tasks of at most ``chunk`` points, received lazily
        blob, got, step = points, 0, chunk * POINT_BYTES
        while True:
            got += len(blob) // POINT_BYTES
            if got > m:
                raise ProtocolError(f"PSI with {peer!r}: got more than the {m} masked IDs announced")
            for off in range(0, len(blob), step):
                yield blob[off : off + step], key
            if got == m:
                return
            blob, _ = _masked_of(channel.recv(peer, MASKED, round=round, timeout=timeout), peer, cardinality_only, m)

    pos = 0
    try:
        for full in _ordered(executor, _remask, pieces()):
            k = len(full) // POINT_BYTES
            rows = np.frombuffer(full, dtype=np.uint8).reshape(k, POINT_BYTES)
            out[pos : pos + k] = rows[:, :DOUBLE_BYTES]
            tails[pos : pos + k] = rows[:, DOUBLE_BYTES:]
            if not cardinality_only:
                channel.send(peer, DOUBLE, {"points": out[pos : pos + k].tobytes()}, round=round)
            pos += k
            counter.add(k)
    except InvalidPointError:  # raised where the sender is unknown: name it here
        raise ProtocolError(f"PSI with {peer!r}: sent an invalid or low-order curve point") from None
    if pos != m:
        raise ProtocolError(f"PSI with {peer!r}: announced {m} masked IDs, sent {pos}")
    if cardinality_only:  # back in a fresh secret order: the owner cannot tell which of its IDs matched
        shuffled = out[rng.permutation(m)]
        for a in range(0, max(m, 1), chunk):
            channel.send(peer, DOUBLE, {"points": shuffled[a : a + chunk].tobytes()}, round=round)
    elif m == 0:
        channel.send(peer, DOUBLE, {"points": b""}, round=round)
    return out, tails


def _collect(channel: Channel, peer: str, n: int, *, round: int, timeout: float) -> np.ndarray:
    """Step 2 for our own IDs: the (n, 16) double-masked values the peer sends back."""
    out = np.empty((n, DOUBLE_BYTES), dtype=np.uint8)
    pos = 0
    while True:
        msg = channel.recv(peer, DOUBLE, round=round, timeout=timeout)
        points = msg.get("points") if isinstance(msg, dict) else None
        if not isinstance(points, bytes) or len(points) % DOUBLE_BYTES:
            raise ProtocolError(f"malformed PSI message from {peer!r}")
        k = len(points) // DOUBLE_BYTES
        if pos + k > n:
            raise ProtocolError(f"PSI with {peer!r}: got more than the {n} double-masked IDs we sent")
        out[pos : pos + k] = np.frombuffer(points, dtype=np.uint8).reshape(k, DOUBLE_BYTES)
        pos += k
        if pos == n:
            return out


#: the largest set a peer may announce (the int32 order ranks, ~2.1e9 IDs)
MAX_SET_SIZE = 2**31 - 1


def _masked_of(msg: Any, peer: str, cardinality_only: bool, n: int | None) -> tuple[bytes, int]:
    if not isinstance(msg, dict) or not isinstance(msg.get("points"), bytes):
        raise ProtocolError(f"malformed PSI message from {peer!r}")
    points, size = msg["points"], msg.get("n")
    if len(points) % POINT_BYTES:
        raise ProtocolError(f"PSI message from {peer!r} is not a whole number of points")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ProtocolError(f"malformed PSI message from {peer!r} (set size of type {type(size).__name__})")
    if n is not None and size != n:
        raise ProtocolError(f"PSI message from {peer!r} announces a set size other than its first message's")
    if size > MAX_SET_SIZE:
        # the size sizes this party's buffers before any point arrives: a peer must not make it
        # allocate (or fail to allocate) whatever it announces
        raise ProtocolError(f"PSI message from {peer!r} announces {size} IDs, more than the {MAX_SET_SIZE} supported")
    if bool(msg.get("card")) != cardinality_only:
        raise ProtocolError(
            f"PSI with {peer!r}: one side asked for cardinality only and the other for the intersection"
        )
    return points, size


def _members(own: np.ndarray, other: np.ndarray) -> np.ndarray:
    """For each 16-byte row of ``own``: is it a row of ``other``? Exact, O((n + m) log m).

    Sorts ``other`` by its first 64 bits and binary-searches each row of ``own``; candidates
    are confirmed on both 64-bit words. A 64-bit prefix shared by several rows of ``other``
    (probability ~m²/2^65) is resolved row by row, so the answer never depends on luck.
    """
    n, m = own.shape[0], other.shape[0]
    hit = np.zeros(n, dtype=bool)
    if n == 0 or m == 0:
        return hit
    words = other.view(np.uint64)
    order = np.argsort(words[:, 0], kind="stable")
    lo_sorted = words[order, 0]
    hi_sorted = words[order, 1]
    shared = np.flatnonzero(lo_sorted[1:] == lo_sorted[:-1])
    mine = own.view(np.uint64)
    for a in range(0, n, _MATCH_BLOCK):
        block = mine[a : a + _MATCH_BLOCK]
        idx = np.minimum(np.searchsorted(lo_sorted, block[:, 0]), m - 1)
        hit[a : a + block.shape[0]] = (lo_sorted[idx] == block[:, 0]) & (hi_sorted[idx] == block[:, 1])
    if shared.size:  # rows of ``own`` whose prefix several rows of ``other`` share: check them all
        dup_lo = np.unique(lo_sorted[shared])
        for i in np.flatnonzero(np.isin(mine[:, 0], dup_lo)).tolist():
            j = np.searchsorted(lo_sorted, mine[i, 0])
            run_hi = hi_sorted[j : np.searchsorted(lo_sorted, mine[i, 0], side="right")]
            hit[i] = bool((run_hi == mine[i, 1]).any())
    return hit


def _digest(values: np.ndarray) -> bytes:
    """SHA-256 of 16-byte values in a canonical order (both sides hash the same set)."""
    words = values.view("<u8")  # little-endian on every machine: both sides sort alike
    order = np.lexsort((words[:, 1], words[:, 0])) if values.shape[0] else np.zeros(0, dtype=np.int64)
    return hashlib.sha256(values[order].tobytes()).digest()


def _id_digest(ids: np.ndarray) -> bytes:
    """SHA-256 of a sequence of IDs (``StringDType``), in the given order, unambiguously delimited.

    Hashes the count, every ID's length in code points and the UTF-8 bytes of their
    concatenation: the lengths split the concatenation back into the IDs, so two different
    sequences never hash the same input ("a", "bc" against "ab", "c").
    """
    lengths, text = hashlib.sha256(), hashlib.sha256()
    for a in range(0, ids.shape[0], _DIGEST_BLOCK):
        block = ids[a : a + _DIGEST_BLOCK]
        lengths.update(np.strings.str_len(block).astype("<u8").tobytes())
        text.update("".join(block.tolist()).encode("utf-8"))
    head = b"fedsilo-psi-ids-v1" + int(ids.shape[0]).to_bytes(8, "little")
    return hashlib.sha256(head + lengths.digest() + text.digest()).digest()


#: Domain tags of the confirmation digest (full intersection, cardinality only).
_CONFIRM_DOMAIN: Final = b"fedsilo-psi-confirm-v2"
_CONFIRM_CARD_DOMAIN: Final = b"fedsilo-psi-confirm-card-v2"


def _confirmation(ids: np.ndarray | None, tails: np.ndarray) -> bytes:
    """What both sides must agree on: the intersection's IDs in the agreed order (``None`` in
    cardinality-only mode), keyed by the last 16 bytes of the matched double-masked values.

    Only the first :data:`DOUBLE_BYTES` of a double-masked value travel; its last 16 bytes never
    do. For a matched ID z each side computed ``[ab]H(z)`` in full itself — A as ``[a]([b]H(z))``
    from B's masked point, B as ``[b]([a]H(z))`` — so both hold the same tails (X25519 is a
    function of the point, RFC 7748 §5), while a reader of the messages, who would otherwise test
    guessed ID lists against the digest offline, must compute them from ``[a]H(z)`` and
    ``[b]H(z)`` (computational Diffie–Hellman on Curve25519).
    """
    if ids is None:
        return hashlib.sha256(_CONFIRM_CARD_DOMAIN + _digest(tails)).digest()
    return hashlib.sha256(_CONFIRM_DOMAIN + _id_digest(ids) + _digest(tails)).digest()


def _confirm(channel: Channel, peer: str, digest: bytes, *, round: int, timeout: float) -> None:
    channel.send(peer, CONFIRM, {"digest": digest}, round=round)
    theirs = channel.recv(peer, CONFIRM, round=round, timeout=timeout)
    if not isinstance(theirs, dict) or theirs.get("digest") != digest:
        raise ProtocolError(
            f"PSI with {peer!r}: the two sides ended with different intersections (other IDs, another "
            "order or other matched values): the peer hashes or sorts IDs differently (another fedsilo "
            "version, hash domain or ID normalization?)"
        )


def _warn_low_overlap(table: IdTable, peer: str, size: int, peer_size: int) -> None:
    """:class:`LowOverlapWarning` if the intersection is under :data:`LOW_OVERLAP` of the smaller set.

    Uses only what this party already knows (its own size, the size the peer announced in step
    1 and the intersection's size): no message, and it names no ID and no count.
    """
    smaller = min(len(table), peer_size)
    if smaller == 0 or size >= LOW_OVERLAP * smaller:
        return
    hints = _format_hints(table.values)
    warnings.warn(
        f"PSI with {peer!r}: {table.source} column {table.column!r} shares less than {LOW_OVERLAP:.0%} of the "
        "smaller set with the peer; IDs are compared exactly, so check that both sides render them the same "
        f"way (leading zeros, case, spaces, number formatting){hints}",
        LowOverlapWarning,
        stacklevel=3,
    )


def _format_hints(values: np.ndarray) -> str:
    """Which risky renderings this party's own IDs use (no ID, no count)."""
    if values.shape[0] == 0:
        return ""
    sample = values[:: max(1, values.shape[0] // 100_000)]  # a bounded sample: hints, not a census
    found = []
    digits = np.strings.isdigit(sample)
    if (digits & np.strings.startswith(sample, "0") & (np.strings.str_len(sample) > 1)).any():
        found.append("leading zeros")
    if (np.strings.lower(sample) != sample).any():
        found.append("upper-case letters")
    if (np.strings.strip(sample) != sample).any():
        found.append("leading or trailing spaces")
    return f"; this side's IDs have {', '.join(found)}" if found else ""


def _finish(
    channel: Channel,
    peer: str,
    table: IdTable,
    order: np.ndarray,
    peer_double: np.ndarray,
    peer_tails: np.ndarray,
    *,
    cardinality_only: bool,
    round: int,
    timeout: float,
) -> tuple[np.ndarray, int]:
    """Steps 3-4: own rows in the intersection in the agreed order (sorted by ID), and its size.

    ``peer_double`` / ``peer_tails``: from :func:`_answer`; only the matched rows' tails are kept
    past the match.
    """
    own_double = _collect(channel, peer, len(table), round=round, timeout=timeout)
    hit = _members(own_double, peer_double)
    size = int(np.count_nonzero(hit))
    # our own IDs' tails were computed by the peer and never sent: the same matched values' tails
    # are those of the peer's rows that match (computed here)
    tails = peer_tails[_members(peer_double, own_double[hit])]
    del own_double
    if cardinality_only:  # neither side knows which IDs matched: only the matched values compare
        _confirm(channel, peer, _confirmation(None, tails), round=round, timeout=timeout)
        rows = np.zeros(0, dtype=np.int64)
    else:
        rows = table.sort_rows(order[np.flatnonzero(hit)])
        _confirm(channel, peer, _confirmation(table.values[rows], tails), round=round, timeout=timeout)
    _warn_low_overlap(table, peer, size, peer_double.shape[0])
    return rows, size


def _domain(domain: bytes, job: str) -> bytes:
    return domain + b"|" + job.encode("utf-8")


def _table(ids: Sequence[str] | IdTable, source: str) -> IdTable:
    return ids if isinstance(ids, IdTable) else IdTable.from_ids(ids, source=source)


def _secret_order(rng: np.random.Generator, n: int) -> np.ndarray:
    order = rng.permutation(n)
    return order.astype(np.int32) if n < 2**31 else order


def _check_chunk(chunk: int) -> int:
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ConfigError(f"PSI chunk must be an integer >= 1 (IDs per message), got {chunk!r}")
    return chunk


def psi_party(
    channel: Channel,
    *,
    peer: str,
    ids: Sequence[str] | IdTable,
    rng: np.random.Generator,
    cardinality_only: bool = False,
    round: int = 0,
    timeout: float = DEFAULT_TIMEOUT,
    executor: Executor | None = None,
    domain: bytes = DEFAULT_DOMAIN,
    chunk: int = CHUNK,
    progress: PsiProgress | None = None,
) -> PsiResult:
    """Run one side of a two-party PSI with ``peer``; both sides call this same function.

    Args:
        channel: this party's channel.
        peer: the other party.
        ids: this party's IDs: unique strings (see :func:`ids_from_column`) or an
            :class:`IdTable` (e.g. read from disk in chunks).
        rng: draws the secret orders in which masked IDs are sent (the X25519 scalar comes
            from the OS's secure randomness).
        cardinality_only: learn only ``|intersection|`` (both sides must agree).
        round, timeout: channel round and seconds to wait for each peer message.
        executor: a process pool from :func:`psi_executor` for large sets.
        domain: hash domain; the job id is appended so two jobs' masked values never match.
        chunk: IDs per message and per pool task (the two sides may differ).
        progress: called after every chunk with this party's curve operations so far.

    Returns:
        :class:`PsiResult`, the same intersection in the same order on both sides.
    """
    table = _table(ids, "PSI")
    chunk = _check_chunk(chunk)
    key = X25519PrivateKey.generate().private_bytes_raw()
    order = _secret_order(rng, len(table))
    counter = _Counter(progress, peer, len(table))
    _send_own(channel, [peer], table, order, key=key, domain=_domain(domain, channel.job), executor=executor,
              chunk=chunk, cardinality_only=cardinality_only, round=round, counter=counter)
    peer_double, peer_tails = _answer(channel, peer, key=key, executor=executor, chunk=chunk,
                                      cardinality_only=cardinality_only, rng=rng, round=round, timeout=timeout,
                                      counter=counter)
    rows, size = _finish(channel, peer, table, order, peer_double, peer_tails, cardinality_only=cardinality_only,
                         round=round, timeout=timeout)
    return PsiResult(
        table=table,
        positions=rows,
        size=size,
        local_size=len(table),
        peer_size=peer_double.shape[0],
        cardinality_only=cardinality_only,
    )


def align_guest(
    channel: Channel,
    *,
    hosts: Sequence[str],
    ids: Sequence[str] | IdTable,
    rng: np.random.Generator,
    round: int = 0,
    timeout: float = DEFAULT_TIMEOUT,
    executor: Executor | None = None,
    domain: bytes = DEFAULT_DOMAIN,
    source: str = "guest",
    chunk: int = CHUNK,
    progress: PsiProgress | None = None,
) -> Alignment:
    """The guest's side of multi-host alignment: pairwise PSI with every host, then intersect.

    The guest masks its IDs once and sends each chunk to every host; it then answers and
    matches the hosts one after the other. The aligned order is the agreed order (sorted by
    ID) restricted to IDs every host holds; each host is sent the indices (into its own
    pairwise result) of the surviving rows.

    Raises:
        DataError: the intersection over all parties is empty (every host is told first, so
            they raise the same error rather than time out).
    """
    if not hosts:
        raise ConfigError("vertical alignment needs at least one host")
    table = _table(ids, source)
    chunk = _check_chunk(chunk)
    key = X25519PrivateKey.generate().private_bytes_raw()
    order = _secret_order(rng, len(table))
    counter = _Counter(progress, ",".join(hosts), len(table))
    _send_own(channel, list(hosts), table, order, key=key, domain=_domain(domain, channel.job), executor=executor,
              chunk=chunk, cardinality_only=False, round=round, counter=counter)
    pairwise: dict[str, np.ndarray] = {}
    for h in hosts:
        peer_double, peer_tails = _answer(channel, h, key=key, executor=executor, chunk=chunk, cardinality_only=False,
                                          rng=rng, round=round, timeout=timeout, counter=counter)
        pairwise[h], _ = _finish(channel, h, table, order, peer_double, peer_tails, cardinality_only=False,
                                 round=round, timeout=timeout)
        del peer_double, peer_tails
    final = pairwise[hosts[0]]
    for h in hosts[1:]:
        final = final[np.isin(final, pairwise[h])]
    for h in hosts:
        index = np.searchsorted(table.rank[pairwise[h]], table.rank[final]) if final.size else final
        channel.send(h, FINAL, {"index": np.asarray(index, dtype=np.int64)}, round=round)
    if not final.size:
        raise DataError(_no_overlap(source, {h: int(pairwise[h].size) for h in hosts}))
    return Alignment(
        ids=tuple(table.take(final)),
        positions=np.asarray(final, dtype=np.int64),
        local_size=len(table),
        pairwise={h: int(pairwise[h].size) for h in hosts},
    )


def align_host(
    channel: Channel,
    *,
    guest: str,
    ids: Sequence[str] | IdTable,
    rng: np.random.Generator,
    round: int = 0,
    timeout: float = DEFAULT_TIMEOUT,
    executor: Executor | None = None,
    domain: bytes = DEFAULT_DOMAIN,
    source: str = "host",
    chunk: int = CHUNK,
    progress: PsiProgress | None = None,
) -> Alignment:
    """A host's side of multi-host alignment (see :func:`align_guest`)."""
    pair = psi_party(
        channel, peer=guest, ids=_table(ids, source), rng=rng, round=round, timeout=timeout, executor=executor,
        domain=domain, chunk=chunk, progress=progress,
    )
    msg = channel.recv(guest, FINAL, round=round, timeout=timeout)
    index = msg.get("index") if isinstance(msg, dict) else None
    if not isinstance(index, np.ndarray) or index.ndim != 1 or index.dtype.kind != "i":
        raise ProtocolError(f"malformed alignment message from {guest!r}")
    if index.size and (index.min() < 0 or index.max() >= pair.size or np.unique(index).size != index.size):
        raise ProtocolError(f"alignment message from {guest!r} names rows outside our pairwise intersection")
    if index.size == 0:
        raise DataError(_no_overlap(source, {guest: pair.size}))
    positions = pair.positions[index]
    return Alignment(
        ids=tuple(pair.table.take(positions)),
        positions=positions,
        local_size=pair.local_size,
        pairwise={guest: pair.size},
    )


def _no_overlap(source: str, pairwise: dict[str, int]) -> str:
    sizes = ", ".join(f"{p}: {n}" for p, n in pairwise.items())
    return (
        f"{source}: the parties share no IDs, nothing to align (pairwise overlaps with the guest: {sizes}); "
        "check that every party uses the same ID column and the same ID format"
    )


@dataclass(frozen=True, slots=True)
class LocalPsiRun:
    """Both sides of a PSI run on one machine (``fedsilo psi``, benchmarks)."""

    left: PsiResult
    right: PsiResult
    bytes_sent: dict[str, int]
    seconds: float


def psi_in_process(
    left_ids: Sequence[str] | IdTable,
    right_ids: Sequence[str] | IdTable,
    *,
    cardinality_only: bool = False,
    workers: int | None = 1,
    job: str = "psi",
    chunk: int = CHUNK,
    progress: PsiProgress | None = None,
) -> LocalPsiRun:
    """Run both roles of :func:`psi_party` as threads over an in-process hub (the real protocol).

    When the sets are large enough to profit, the two parties share one process pool of
    ``2 × workers`` processes (``None``: half the cores each, at least one; more processes than
    cores only adds switching): a worker that one party leaves idle while it waits for the
    other's next message computes the other's chunks (with a pool per party, that core idled).
    The secret send orders come from the OS CSPRNG
    (:func:`~fedsilo.privacy.mechanisms.secure_rng`): never from a seed, which would let the
    peer undo the shuffle. ``progress`` gets ``{"stage": "psi", "done", "total"}`` summed over
    both parties (``total`` = 2(n + m) curve operations).
    """
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"PSI workers must be an integer >= 1, got {workers!r}")
    per_party = max(1, (os.cpu_count() or 1) // 2) if workers is None else workers
    tables = {"left": _table(left_ids, "left"), "right": _table(right_ids, "right")}
    total = 2 * (len(tables["left"]) + len(tables["right"]))
    rngs = {"left": secure_rng(), "right": secure_rng()}
    hub = InProcessHub(job, ["left", "right"])
    done = {"left": 0, "right": 0}
    lock = threading.Lock()

    def side(name: str, peer: str) -> Callable[[Channel], PsiResult]:
        def report(event: dict[str, Any]) -> None:
            with lock:  # one party's report at a time: ``done`` never goes backwards
                done[name] = int(event["done"])
                if progress is not None:
                    progress({"stage": "psi", "done": done["left"] + done["right"], "total": total})

        def run(ch: Channel) -> PsiResult:
            return psi_party(ch, peer=peer, ids=tables[name], rng=rngs[name], cardinality_only=cardinality_only,
                             executor=pool, chunk=_task_chunk(chunk, len(tables[name]), pool),
                             progress=report if progress is not None else None)

        return run

    big = max(len(tables["left"]), len(tables["right"])) >= POOL_THRESHOLD
    start = time.perf_counter()
    with psi_executor(2 * per_party if big else 1) as pool:
        out = run_parties(hub, {"left": side("left", "right"), "right": side("right", "left")})
    return LocalPsiRun(out["left"], out["right"], hub.bytes_sent(), time.perf_counter() - start)


def _task_chunk(chunk: int, n: int, executor: Executor | None) -> int:
    """``chunk``, made smaller for a set that would otherwise not keep the pool busy."""
    if executor is None:
        return chunk
    workers = getattr(executor, "_max_workers", 2) or 2
    return max(1, min(chunk, math.ceil(n / (4 * workers)) if n else chunk))
