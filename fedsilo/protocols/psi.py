"""Private set intersection for vertical alignment: ECDH over Curve25519 (X25519).

Protocol (the Diffie–Hellman PSI of Meadows, IEEE S&P 1986, and Huberman, Franklin & Hogg,
EC 1999; the two-way variant of De Cristofaro & Tsudik, FC 2010). Each party P holds a fresh
X25519 scalar ``a`` and its IDs ``x``; ``H`` hashes an ID to a point of Curve25519. With
``[k]Q`` the X25519 function (RFC 7748, a Montgomery-ladder scalar multiplication returning the
u-coordinate), ``[a]([b]H(x)) = [b]([a]H(x))``, so:

1. both parties send ``[a]H(x)`` for their own IDs, in a secret random order;
2. both raise what they received to their own scalar and send it back **in the received order**
   (cardinality-only: in a fresh random order, so the owner cannot map it back to IDs);
3. each party now holds ``[ab]H(x)`` for its own IDs (it knows its order) and ``[ab]H(y)`` for
   the peer's (in an order it cannot map to the peer's IDs); the matches are the intersection;
4. both sort the intersection by ID (Python string order of the IDs, which both now know) —
   the **agreed order**: independent of either file's row order and reproducible, so seeded
   simulations are repeatable; each sends SHA-256 of the sorted ``[ab]H(x)`` values and
   aborts with :class:`ProtocolError` if they differ.

Who learns what (honest-but-curious, DDH on Curve25519 with ``H`` modelled as a random oracle):
each party learns the intersection (or only its size) and the size of the other set, nothing
about the other party's IDs outside the intersection. Multi-host alignment
(:func:`align_guest` / :func:`align_host`) runs this pairwise with the guest; the guest
intersects the pairwise results and tells each host which of *its* pairwise matches survive —
so a host learns which of the IDs it shares with the guest are also held by every other host
(unavoidable: the rows trained on must be the same rows everywhere).

Hashing to the curve is try-and-increment: ``u = SHA-512(domain ‖ len ‖ id ‖ counter) mod p``
until ``u³ + 486662u² + u`` is a non-zero square mod p (the u-coordinate of a curve point, not
the twist); about two tries per ID, a Jacobi symbol each (gmpy2, ~2 µs). The loop leaks the
number of tries of one's *own* IDs through local timing only. X25519 clamps scalars to
multiples of the cofactor 8, so every masked value is in the prime-order subgroup; a peer that
sends a low-order point makes X25519 fail, which is raised as :class:`ProtocolError`.

Why not openmined-psi: measured on this 2-core machine (benchmarks/psi.py, docs/benchmarks.md),
10^5 × 10^5 IDs: openmined-psi 2.0.6 (P-256, RAW set-up, one thread) 25 s, and only its client
learns the intersection; this module 16 s with one process per party and 8.3 s with a process
pool per party (``workers``; the X25519 call holds the GIL, so threads do not help), 89 s at
10^6 × 10^6. It gives both sides the same intersection in the same order and needs only
``cryptography`` (X25519 from OpenSSL, ~30 µs per scalar multiplication; maintained by PyCA),
which fedsilo already depends on. Wire: 32 bytes per masked ID, i.e. 64 bytes per own ID (out
and back; openmined-psi RAW: ~52). pynacl is not a fedsilo dependency and has no ristretto255
bindings.
"""
from __future__ import annotations

import hashlib
import math
import multiprocessing
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import gmpy2
import numpy as np
import pandas as pd
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from fedsilo.errors import ConfigError, DataError, ProtocolError
from fedsilo.privacy.mechanisms import secure_rng
from fedsilo.protocols.channel import Channel, InProcessHub, run_parties

__all__ = [
    "Alignment",
    "DEFAULT_DOMAIN",
    "POINT_BYTES",
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
    "MESSAGE_KINDS",
]

# Message kinds, in the order of one pairwise run (each party plays both sides):
#: A -> B: ``{"points": bytes (n × 32, shuffled, masked by A), "n": int, "card": bool}``
MASKED: Final = "psi/masked"
#: B -> A: ``{"points": bytes}``, A's masked points masked again by B, in A's order
DOUBLE: Final = "psi/double"
#: A <-> B: ``{"digest": bytes}``, a hash of the intersection each computed (they must agree)
CONFIRM: Final = "psi/confirm"
#: guest -> host, once over all hosts: ``{"index": int64 array}``, the host's rows in the final order
FINAL: Final = "psi/final"
MESSAGE_KINDS: Final = (MASKED, DOUBLE, CONFIRM, FINAL)

#: Bytes of one masked ID on the wire (an X25519 u-coordinate).
POINT_BYTES: Final = 32
#: Domain-separation tag of the hash to the curve; the job id is appended by the protocols.
DEFAULT_DOMAIN: Final = b"fedsilo-psi-v1"
#: Below this many IDs per pass a process pool costs more (start-up) than it saves.
POOL_THRESHOLD: Final = 20_000
#: Default seconds to wait for the peer's message: masking 10^6 IDs takes ~1 minute per pass.
DEFAULT_TIMEOUT: Final = 3600.0

_P: Final = (1 << 255) - 19
_P_MPZ: Final = gmpy2.mpz(_P)
_A: Final = gmpy2.mpz(486662)
_MAX_TRIES: Final = 128


# ------------------------------------------------------------------------------ pure maths


def hash_to_curve(ids: Sequence[str], *, domain: bytes) -> bytes:
    """u-coordinates of Curve25519 points for ``ids``: ``len(ids) * 32`` bytes, little-endian.

    Try-and-increment (Boneh, Lynn & Shacham, ASIACRYPT 2001, §3.2, with SHA-512 reduced mod
    p; the bias of reducing 512 bits mod 2^255 − 19 is below 2^-250): the first counter whose
    ``u`` has ``u³ + A·u² + u`` a non-zero quadratic residue mod p, i.e. ``u`` is the
    u-coordinate of a point on the curve (RFC 7748 §4.1) rather than on its twist.
    """
    out = bytearray(POINT_BYTES * len(ids))
    dom = len(domain).to_bytes(2, "big") + domain
    for j, ident in enumerate(ids):
        data = ident.encode("utf-8")
        prefix = dom + len(data).to_bytes(4, "big") + data
        for ctr in range(_MAX_TRIES):
            digest = hashlib.sha512(prefix + ctr.to_bytes(1, "big")).digest()
            u = gmpy2.mpz(int.from_bytes(digest, "little")) % _P_MPZ
            rhs = (u * (u * u + _A * u + 1)) % _P_MPZ
            if gmpy2.jacobi(rhs, _P_MPZ) == 1:
                out[POINT_BYTES * j : POINT_BYTES * (j + 1)] = int(u).to_bytes(POINT_BYTES, "little")
                break
        else:  # pragma: no cover - probability 2^-128
            raise ProtocolError(f"could not hash an ID to the curve in {_MAX_TRIES} tries")
    return bytes(out)


def mask_points(points: bytes, *, key: bytes) -> bytes:
    """``[k]Q`` (X25519, RFC 7748) for every 32-byte u-coordinate ``Q`` in ``points``.

    Args:
        points: concatenated 32-byte u-coordinates.
        key: the 32 raw bytes of an X25519 private scalar.

    Raises:
        ProtocolError: ``points`` is not a whole number of points, or holds a low-order point
            (X25519 then yields the all-zero value, which OpenSSL refuses).
    """
    if len(points) % POINT_BYTES:
        raise ProtocolError(f"PSI message of {len(points)} bytes is not a whole number of points")
    sk = X25519PrivateKey.from_private_bytes(key)
    out = bytearray(len(points))
    view = memoryview(points)
    try:
        for off in range(0, len(points), POINT_BYTES):
            pub = X25519PublicKey.from_public_bytes(bytes(view[off : off + POINT_BYTES]))
            out[off : off + POINT_BYTES] = sk.exchange(pub)
    except ValueError as exc:
        raise ProtocolError(f"PSI peer sent an invalid or low-order curve point ({exc})") from None
    return bytes(out)


def _hash_and_mask(ids: Sequence[str], domain: bytes, key: bytes) -> bytes:
    return mask_points(hash_to_curve(ids, domain=domain), key=key)


def _mask_blob(points: bytes, key: bytes) -> bytes:
    return mask_points(points, key=key)


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    step = math.ceil(n / parts) if n else 0
    return [(i, min(n, i + step)) for i in range(0, n, step)] if step else []


def _run(executor: Executor | None, fn: Any, items: Sequence[Any], per_item: int, *args: Any) -> bytes:
    """Apply ``fn(chunk, *args)`` over chunks of ``items`` (on ``executor`` if given), concatenated.

    ``per_item`` is 1 for a sequence of IDs and POINT_BYTES for a byte string of points.
    """
    n = len(items) // per_item
    if executor is None or n < POOL_THRESHOLD:
        return fn(items, *args)
    workers = getattr(executor, "_max_workers", 2) or 2
    spans = _split(n, 4 * workers)
    futures = [executor.submit(fn, items[a * per_item : b * per_item], *args) for a, b in spans]
    return b"".join(f.result() for f in futures)


@contextmanager
def psi_executor(workers: int | None = None) -> Iterator[Executor | None]:
    """A process pool for the curve work, or ``None`` for one worker.

    ``workers=None`` uses every core. The pool uses the ``forkserver`` start method: the
    parties of an in-process simulation are threads, and forking a multi-threaded process can
    deadlock.
    """
    n = (os.cpu_count() or 1) if workers is None else int(workers)
    if n < 1:
        raise ConfigError(f"PSI workers must be >= 1, got {workers!r}")
    if n == 1:
        yield None
        return
    ctx = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=n, mp_context=ctx) as pool:
        yield pool


# ------------------------------------------------------------------------------ ID columns


def ids_from_column(values: pd.Series | Sequence[Any], *, source: str, column: str) -> list[str]:
    """IDs of one column as strings, refusing null, empty and duplicate IDs.

    Integers (and floats that are whole numbers, as pandas produces for integer columns read
    with missing values elsewhere) are rendered without a decimal point, so ``1042`` and
    ``1042.0`` align. Strings are compared exactly (no case folding or trimming).

    Raises:
        DataError: naming ``source`` and ``column`` and an example offending value.
    """
    series = values if isinstance(values, pd.Series) else pd.Series(list(values), dtype=object)
    where = f"{source}: column {column!r}"
    null = series.isna()
    if null.any():
        row = int(np.flatnonzero(null.to_numpy())[0])
        raise DataError(f"{where} has {int(null.sum())} missing IDs (first at row {row}); IDs must not be null")
    if pd.api.types.is_bool_dtype(series.dtype):
        raise DataError(f"{where} holds booleans, not IDs")
    if pd.api.types.is_integer_dtype(series.dtype):
        ids = [str(int(v)) for v in series.to_numpy()]
    elif pd.api.types.is_float_dtype(series.dtype):
        arr = series.to_numpy(dtype=np.float64)
        frac = arr != np.round(arr)
        if frac.any():
            raise DataError(f"{where} holds non-integral numbers such as {arr[frac][0]!r}; IDs must be strings or integers")
        ids = [str(int(v)) for v in arr]
    else:
        ids = [v if isinstance(v, str) else str(v) for v in series.tolist()]
    empty = [i for i, v in enumerate(ids) if v == ""]
    if empty:
        raise DataError(f"{where} has {len(empty)} empty IDs (first at row {empty[0]}); IDs must not be empty")
    if len(set(ids)) != len(ids):
        counts = pd.Series(ids).value_counts()
        dup = counts[counts > 1]
        raise DataError(
            f"{where} has {len(dup)} duplicate IDs (e.g. {dup.index[0]!r} appears {int(dup.iloc[0])} times); "
            "IDs must be unique"
        )
    return ids


# ------------------------------------------------------------------------------ results


@dataclass(frozen=True, slots=True)
class PsiResult:
    """One party's outcome of a two-party PSI.

    ``positions[k]`` is the row (index into the party's own ID list) of the k-th ID of the
    intersection in the agreed order; ``ids`` are those IDs. In cardinality-only mode both are
    empty and only ``size`` is known.
    """

    ids: tuple[str, ...]
    positions: np.ndarray
    size: int
    local_size: int
    peer_size: int
    cardinality_only: bool = False


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


class _Session:
    """One side of one pairwise PSI; the steps are split so the guest can interleave hosts."""

    def __init__(self, channel: Channel, peer: str, *, round: int, timeout: float, cardinality_only: bool) -> None:
        self.ch = channel
        self.peer = peer
        self.round = round
        self.timeout = timeout
        self.cardinality_only = cardinality_only
        self.order: np.ndarray | None = None
        self.peer_double: set[bytes] = set()
        self.peer_size = 0

    def send_masked(self, masked: bytes, rng: np.random.Generator) -> None:
        n = len(masked) // POINT_BYTES
        self.order = rng.permutation(n)
        shuffled = _permute(masked, self.order)
        self.ch.send(self.peer, MASKED, {"points": shuffled, "n": n, "card": self.cardinality_only}, round=self.round)

    def respond(self, key: bytes, executor: Executor | None, rng: np.random.Generator) -> None:
        msg = self.ch.recv(self.peer, MASKED, round=self.round, timeout=self.timeout)
        points = _points_of(msg, self.peer)
        if bool(msg.get("card")) != self.cardinality_only:
            raise ProtocolError(
                f"PSI with {self.peer!r}: one side asked for cardinality only and the other for the intersection"
            )
        self.peer_size = len(points) // POINT_BYTES
        double = _run(executor, _mask_blob, points, POINT_BYTES, key)
        if self.cardinality_only:
            double = _permute(double, rng.permutation(self.peer_size))
        self.peer_double = _chunks_set(double)
        self.ch.send(self.peer, DOUBLE, {"points": double}, round=self.round)

    def finish(self, n_own: int, ids: Sequence[str]) -> tuple[list[int], int]:
        """Own rows in the intersection, in the agreed order (sorted by ID), and its size."""
        msg = self.ch.recv(self.peer, DOUBLE, round=self.round, timeout=self.timeout)
        points = _points_of(msg, self.peer)
        if len(points) != n_own * POINT_BYTES:
            raise ProtocolError(
                f"PSI with {self.peer!r}: got {len(points) // POINT_BYTES} double-masked IDs back, sent {n_own}"
            )
        chunks = [points[i : i + POINT_BYTES] for i in range(0, len(points), POINT_BYTES)]
        if self.cardinality_only:
            size = sum(c in self.peer_double for c in chunks)
            self._confirm(str(size).encode())
            return [], size
        assert self.order is not None
        hits = [(c, int(self.order[j])) for j, c in enumerate(chunks) if c in self.peer_double]
        self._confirm(hashlib.sha256(b"".join(sorted(c for c, _ in hits))).digest())
        rows = sorted((row for _, row in hits), key=lambda row: ids[row])
        return rows, len(rows)

    def _confirm(self, digest: bytes) -> None:
        self.ch.send(self.peer, CONFIRM, {"digest": digest}, round=self.round)
        theirs = self.ch.recv(self.peer, CONFIRM, round=self.round, timeout=self.timeout)
        if not isinstance(theirs, dict) or theirs.get("digest") != digest:
            raise ProtocolError(
                f"PSI with {self.peer!r}: the two sides computed different intersections "
                "(different ID rendering or hash domain?)"
            )


def _permute(blob: bytes, order: np.ndarray) -> bytes:
    arr = np.frombuffer(blob, dtype=np.uint8).reshape(-1, POINT_BYTES)
    return arr[order].tobytes()


def _chunks_set(blob: bytes) -> set[bytes]:
    return {blob[i : i + POINT_BYTES] for i in range(0, len(blob), POINT_BYTES)}


def _points_of(msg: Any, peer: str) -> bytes:
    if not isinstance(msg, dict) or not isinstance(msg.get("points"), bytes):
        raise ProtocolError(f"malformed PSI message from {peer!r}")
    points = msg["points"]
    if len(points) % POINT_BYTES:
        raise ProtocolError(f"PSI message from {peer!r} is not a whole number of points")
    return points


def _domain(domain: bytes, job: str) -> bytes:
    return domain + b"|" + job.encode("utf-8")


def psi_party(
    channel: Channel,
    *,
    peer: str,
    ids: Sequence[str],
    rng: np.random.Generator,
    cardinality_only: bool = False,
    round: int = 0,
    timeout: float = DEFAULT_TIMEOUT,
    executor: Executor | None = None,
    domain: bytes = DEFAULT_DOMAIN,
) -> PsiResult:
    """Run one side of a two-party PSI with ``peer``; both sides call this same function.

    Args:
        channel: this party's channel.
        peer: the other party.
        ids: this party's IDs (unique strings; see :func:`ids_from_column`).
        rng: draws the secret orders in which masked IDs are sent (the X25519 scalar comes
            from the OS's secure randomness).
        cardinality_only: learn only ``|intersection|`` (both sides must agree).
        round, timeout: channel round and seconds to wait for each peer message.
        executor: a process pool from :func:`psi_executor` for large sets.
        domain: hash domain; the job id is appended so two jobs' masked values never match.

    Returns:
        :class:`PsiResult`, the same intersection in the same order on both sides.
    """
    ids = _check_ids(ids)
    key = X25519PrivateKey.generate().private_bytes_raw()
    dom = _domain(domain, channel.job)
    session = _Session(channel, peer, round=round, timeout=timeout, cardinality_only=cardinality_only)
    masked = _run(executor, _hash_and_mask, ids, 1, dom, key)
    session.send_masked(masked, rng)
    session.respond(key, executor, rng)
    rows, size = session.finish(len(ids), ids)
    return PsiResult(
        ids=tuple(ids[r] for r in rows),
        positions=np.asarray(rows, dtype=np.int64),
        size=size,
        local_size=len(ids),
        peer_size=session.peer_size,
        cardinality_only=cardinality_only,
    )


def _check_ids(ids: Sequence[str]) -> list[str]:
    out = list(ids)
    if not all(isinstance(i, str) for i in out):
        raise DataError("PSI IDs must be strings (use ids_from_column to convert a column)")
    if len(set(out)) != len(out):
        raise DataError("PSI IDs must be unique (use ids_from_column to check a column)")
    return out


def align_guest(
    channel: Channel,
    *,
    hosts: Sequence[str],
    ids: Sequence[str],
    rng: np.random.Generator,
    round: int = 0,
    timeout: float = DEFAULT_TIMEOUT,
    executor: Executor | None = None,
    domain: bytes = DEFAULT_DOMAIN,
    source: str = "guest",
) -> Alignment:
    """The guest's side of multi-host alignment: pairwise PSI with every host, then intersect.

    The guest masks its IDs once and runs the pairwise protocol with all hosts interleaved.
    The aligned order is the agreed order (sorted by ID) restricted to IDs every host holds;
    each host is sent the indices (into its own pairwise result) of the surviving rows.

    Raises:
        DataError: the intersection over all parties is empty (every host is told first, so
            they raise the same error rather than time out).
    """
    if not hosts:
        raise ConfigError("vertical alignment needs at least one host")
    ids = _check_ids(ids)
    key = X25519PrivateKey.generate().private_bytes_raw()
    dom = _domain(domain, channel.job)
    masked = _run(executor, _hash_and_mask, ids, 1, dom, key)
    sessions = {h: _Session(channel, h, round=round, timeout=timeout, cardinality_only=False) for h in hosts}
    for s in sessions.values():
        s.send_masked(masked, rng)
    for s in sessions.values():
        s.respond(key, executor, rng)
    pairwise: dict[str, list[int]] = {}
    for h, s in sessions.items():
        pairwise[h], _ = s.finish(len(ids), ids)
    common = set(pairwise[hosts[0]])
    for h in hosts[1:]:
        common &= set(pairwise[h])
    final = [row for row in pairwise[hosts[0]] if row in common]
    for h in hosts:
        where = {row: k for k, row in enumerate(pairwise[h])}
        channel.send(h, FINAL, {"index": np.asarray([where[r] for r in final], dtype=np.int64)}, round=round)
    if not final:
        raise DataError(_no_overlap(source, {h: len(pairwise[h]) for h in hosts}))
    return Alignment(
        ids=tuple(ids[r] for r in final),
        positions=np.asarray(final, dtype=np.int64),
        local_size=len(ids),
        pairwise={h: len(pairwise[h]) for h in hosts},
    )


def align_host(
    channel: Channel,
    *,
    guest: str,
    ids: Sequence[str],
    rng: np.random.Generator,
    round: int = 0,
    timeout: float = DEFAULT_TIMEOUT,
    executor: Executor | None = None,
    domain: bytes = DEFAULT_DOMAIN,
    source: str = "host",
) -> Alignment:
    """A host's side of multi-host alignment (see :func:`align_guest`)."""
    pair = psi_party(
        channel, peer=guest, ids=ids, rng=rng, round=round, timeout=timeout, executor=executor, domain=domain
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
        ids=tuple(pair.ids[k] for k in index.tolist()),
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
    left_ids: Sequence[str],
    right_ids: Sequence[str],
    *,
    cardinality_only: bool = False,
    workers: int | None = 1,
    job: str = "psi",
) -> LocalPsiRun:
    """Run both roles of :func:`psi_party` as threads over an in-process hub (the real protocol).

    Each party gets its own process pool of ``workers`` processes (``None``: every core) when
    its set is large enough to profit. The secret send orders come from the OS CSPRNG
    (:func:`~fedsilo.privacy.mechanisms.secure_rng`): never from a seed, which would let the
    peer undo the shuffle.
    """
    rngs = [secure_rng(), secure_rng()]
    hub = InProcessHub(job, ["left", "right"])

    def side(name: str, peer: str, ids: Sequence[str], rng: np.random.Generator) -> Any:
        def run(ch: Channel) -> PsiResult:
            big = len(ids) >= POOL_THRESHOLD
            with psi_executor(workers if big else 1) as ex:
                return psi_party(ch, peer=peer, ids=ids, rng=rng, cardinality_only=cardinality_only, executor=ex)

        return run

    start = time.perf_counter()
    out = run_parties(
        hub,
        {"left": side("left", "right", left_ids, rngs[0]), "right": side("right", "left", right_ids, rngs[1])},
    )
    return LocalPsiRun(out["left"], out["right"], hub.bytes_sent(), time.perf_counter() - start)
