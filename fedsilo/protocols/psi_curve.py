"""The curve work of PSI (:mod:`fedsilo.protocols.psi`): hashing IDs to Curve25519 and X25519 masking.

Kept apart from the protocol so that a process-pool worker, which unpickles these functions by
module, imports only ``hashlib``, ``gmpy2`` and ``cryptography`` (~30 ms) rather than the
protocol's dependencies (pandas, the privacy package: ~1.5 s of CPU per worker, which at 10^5
IDs was a third of the run's overhead).

Cost per point beyond the bare X25519 call (profiled 2026-12-02, benchmarks/psi.py): the
hash to the curve is done in ``gmpy2.mpz`` throughout (~5.8 µs per ID, was ~6.7 µs with Python
ints converted for every Jacobi symbol), and each received point becomes an OpenSSL public key
through the Rust constructor itself (~1.3 µs, the public classmethod spends another ~1.7 µs on
an import and a backend check per call).
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Final

import gmpy2
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from fedsilo.errors import ProtocolError


def _fast_public_key() -> Callable[[bytes], X25519PublicKey]:
    """The constructor ``X25519PublicKey.from_public_bytes`` ends in, minus its per-call checks.

    A private API: used only if it imports *and* builds the same key as the public method from
    the base point (u = 9, RFC 7748 §4.1); any failure, of any type, falls back to the public one.
    """
    public = X25519PublicKey.from_public_bytes
    base = bytes([9]) + bytes(31)
    try:
        from cryptography.hazmat.bindings._rust import openssl as _rust_openssl

        fast: Callable[[bytes], X25519PublicKey] = _rust_openssl.x25519.from_public_bytes
        if fast(base).public_bytes_raw() == public(base).public_bytes_raw():
            return fast
    except Exception:  # noqa: BLE001 - a moved or changed private layout: the public method is correct
        pass
    return public


_public_key: Final[Callable[[bytes], X25519PublicKey]] = _fast_public_key()

__all__ = ["DOUBLE_BYTES", "POINT_BYTES", "InvalidPointError", "hash_to_curve", "mask_points"]


class InvalidPointError(ProtocolError):
    """A received value is not a usable curve point (wrong length or low order).

    Raised by :func:`mask_points`, which does not know the sender: the protocol catches it and
    re-raises a :class:`ProtocolError` naming the peer.
    """


#: Bytes of one masked ID on the wire (an X25519 u-coordinate).
POINT_BYTES: Final = 32
#: Bytes of one double-masked ID on the wire: the first 16 bytes of its u-coordinate.
DOUBLE_BYTES: Final = 16

_P: Final = (1 << 255) - 19
_P_MPZ: Final = gmpy2.mpz(_P)
_A: Final = 486662
_A_MPZ: Final = gmpy2.mpz(_A)
_MAX_TRIES: Final = 128


def hash_to_curve(ids: Sequence[str], *, domain: bytes) -> bytes:
    """u-coordinates of Curve25519 points for ``ids``: ``len(ids) * 32`` bytes, little-endian.

    Try-and-increment (Boneh, Lynn & Shacham, ASIACRYPT 2001, §3.2, with SHA-512 reduced mod
    p; the bias of reducing 512 bits mod 2^255 − 19 is below 2^-250): the first counter whose
    ``u`` has ``u³ + A·u² + u`` a non-zero quadratic residue mod p, i.e. ``u`` is the
    u-coordinate of a point on the curve (RFC 7748 §4.1) rather than on its twist.
    """
    dom = len(domain).to_bytes(2, "big") + domain
    # all in mpz: int.from_bytes would give a Python int that gmpy2 converts again per Jacobi symbol
    # (mpz.from_bytes and mpz.to_bytes: gmpy2 >= 2.2)
    sha, from_bytes, jacobi, a, pm, ctrs = hashlib.sha512, gmpy2.mpz.from_bytes, gmpy2.jacobi, _A_MPZ, _P_MPZ, _CTR
    out: list[bytes] = []
    append = out.append
    for ident in ids:
        data = ident.encode("utf-8")
        prefix = dom + len(data).to_bytes(4, "big") + data
        for ctr in ctrs:
            u = from_bytes(sha(prefix + ctr).digest(), "little") % pm
            # jacobi(x mod p, p) = jacobi(x, p): the product needs no reduction
            if jacobi(u * (u * (u + a) + 1), pm) == 1:
                append(u.to_bytes(POINT_BYTES, "little"))
                break
        else:  # pragma: no cover - probability 2^-128
            raise ProtocolError(f"could not hash an ID to the curve in {_MAX_TRIES} tries")
    return b"".join(out)


_CTR: Final = tuple(bytes((i,)) for i in range(_MAX_TRIES))


def mask_points(points: bytes, *, key: bytes, keep: int = POINT_BYTES) -> bytes:
    """``[k]Q`` (X25519, RFC 7748) for every 32-byte u-coordinate ``Q`` in ``points``.

    Args:
        points: concatenated 32-byte u-coordinates.
        key: the 32 raw bytes of an X25519 private scalar.
        keep: bytes kept of each result (its first ``keep``; :data:`DOUBLE_BYTES` for values
            that are only compared).

    Raises:
        InvalidPointError: ``points`` is not a whole number of points, or holds a low-order point
            (X25519 then yields the all-zero value, which OpenSSL refuses).
    """
    if len(points) % POINT_BYTES:
        raise InvalidPointError(f"PSI message of {len(points)} bytes is not a whole number of points")
    exchange = X25519PrivateKey.from_private_bytes(key).exchange
    pieces = [points[off : off + POINT_BYTES] for off in range(0, len(points), POINT_BYTES)]
    try:
        if keep == POINT_BYTES:
            return b"".join(map(exchange, map(_public_key, pieces)))
        return b"".join([exchange(_public_key(q))[:keep] for q in pieces])
    except ValueError as exc:
        raise InvalidPointError(f"PSI peer sent an invalid or low-order curve point ({exc})") from None


def _hash_and_mask(ids: Sequence[str], domain: bytes, key: bytes) -> bytes:
    return mask_points(hash_to_curve(ids, domain=domain), key=key)


def _remask(points: bytes, key: bytes) -> bytes:
    # all 32 bytes: the first DOUBLE_BYTES go back to the peer, the rest key the confirmation
    return mask_points(points, key=key)
