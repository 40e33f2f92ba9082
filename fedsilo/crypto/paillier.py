"""The ``paillier`` backend: exact additive HE on gmpy2, decryption by python-paillier (phe).

Scheme: Paillier, "Public-Key Cryptosystems Based on Composite Degree Residuosity Classes",
EUROCRYPT 1999, with ``g = n + 1`` (so ``g**m = 1 + m*n mod n**2``) and CRT decryption
(phe's ``raw_decrypt``). fedsilo uses phe's *raw* layer only (``raw_decrypt``, and
``raw_encrypt`` for format-1 keys) on integers; floats are turned into integers by :mod:`fedsilo.crypto.encoding` with one fixed
scale per vector, never phe's per-value exponents (they leak each value's magnitude and cost a
powmod per mismatched addition).

Two modes, chosen by the ``packed`` parameter (part of the public context, so both sides agree):

* ``packed=False``: one value per ciphertext. Every operation of the interface: add, add_plain,
  multiply by a plaintext scalar / vector, ``matmul_plain`` and sum. A plaintext factor is
  encoded at the fixed scale ``2**precision``; a product's scale is the sum of the scales, which
  the ciphertext tracks; adding ciphertexts of different scales lifts the smaller one by
  ``c**(2**d)`` (integer multiplication, no rounding). The ciphertext also tracks a public upper
  bound on ``|plaintext integer|`` derived only from public parameters (``value_bound``, scales,
  operation counts) and refuses any operation whose bound would reach ``n/3`` (phe's ``max_int``).
* ``packed=True``: BatchCrypt packing (Zhang et al., USENIX ATC 2020): ``slots`` fixed-point
  values per plaintext with headroom for ``max_summands`` summands. Supports add, add_plain, sum
  and multiplication by a non-negative integer scalar; anything else raises
  :class:`~fedsilo.errors.UnsupportedOperationError` telling you to use ``packed=False``. The
  summand count travels with the ciphertext; exceeding ``max_summands`` raises
  :class:`~fedsilo.errors.EncodingOverflowError` before anything is computed.

Encryption and re-randomization draw their randomness as ``h**α mod n**2`` (Damgård, Jurik &
Nielsen, "A generalization of Paillier's public-key system with applications to electronic
voting", Int. J. Inf. Secur. 9(6), 2010): ``h = (-x**2)**n mod n**2`` for a random ``x`` is part
of the public key (generated at keygen, public-context format 2), ``α`` is a short exponent of
:data:`RANDOMNESS_BITS` bits from the OS CSPRNG, and ``h**α`` comes from a fixed-base table
(:class:`FixedBaseTable`: no squarings). A ciphertext that was raised to a plaintext factor
(``mul_plain`` / ``matmul_plain``) is re-randomized with a full-length exponent instead, so its
randomness is statistically independent of the factors even for the key holder. Keys of format
1 (written before format 2; no ``h``) keep phe's ``r**n``. The security argument and its
assumptions are in docs/crypto.md ("Fast encryption").

Encryption, decryption, re-randomization and the exponentiations of ``mul_plain`` /
``matmul_plain`` run on a process pool of ``workers`` processes (``workers=1``: in-process; the
pool lives in :mod:`fedsilo.crypto.pool`). Outbound ciphertexts are re-randomized on ``serialize``
unless they come straight from ``encrypt`` (a result of ``add_plain`` would otherwise let anyone
who knows the input ciphertext recover the added plaintext). On the wire a ciphertext is a
fixed-width big-endian integer (``2 * key_bits / 8`` bytes), never a decimal string.
"""
from __future__ import annotations

import functools
import math
import os
import secrets
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

try:
    import gmpy2
    from phe import util as _phe_util
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(f"fedsilo's paillier backend needs phe and gmpy2: {exc}") from exc

if not _phe_util.HAVE_GMP:  # pragma: no cover - depends on the environment
    # Without gmpy2, phe silently falls back to pure-Python powmod: far slower encryption.
    raise ImportError(
        "fedsilo's paillier backend needs gmpy2 (phe.util.HAVE_GMP is False); "
        "install it with `pip install gmpy2`"
    )

from fedsilo.crypto.base import (
    MIN_SECURITY_BITS,
    BackendInfo,
    Capabilities,
    Ciphertext,
    Confidentiality,
    CryptoBackend,
    FingerprintOnly,
    PublicContext,
    SecretKey,
    Use,
    as_matrix,
    as_vector,
    broadcast_vector,
    fingerprint_of,
)
from fedsilo.crypto.encoding import (
    SlotLayout,
    decode_fixed,
    encode_fixed,
    fixed_point_bound,
    pack,
    slot_layout,
    unpack,
)
from fedsilo.crypto.pool import (
    PARALLEL_MIN_ITEMS,
    decrypt_batch,
    encrypt_batch,
    matmul_batch,
    obfuscate_batch,
    parallel_map,
    parallel_map_columns,
    pow_batch,
)
from fedsilo.errors import (
    CiphertextFormatError,
    ConfigError,
    EncodingOverflowError,
    KeyMismatchError,
    UnsupportedOperationError,
)

__all__ = [
    "FULL_RANDOMNESS_MARGIN",
    "RANDOMNESS_BITS",
    "FixedBaseTable",
    "InsecureParametersWarning",
    "PaillierBackend",
    "PaillierCiphertext",
    "PaillierEncoding",
    "PaillierPublic",
    "PaillierSecret",
    "djn_encrypt_batch",
    "djn_rerandomize_batch",
    "full_randomness_bits",
    "generate_primes",
    "is_nth_residue",
    "random_exponents",
    "randomness_base",
    "unpack_slots",
]

#: Key sizes accepted, with their approximate security level (NIST SP 800-57 part 1, table 2).
KEY_BITS_SECURITY = {1024: 80, 2048: 112, 3072: 128, 4096: 152}
_WIRE_VERSION = 1  # ciphertexts (unchanged by the randomness base: they are ordinary Paillier ciphertexts)
#: Public-context / secret-key formats: 1 = ``n`` only (phe-style ``r**n`` randomness), 2 = ``n`` and ``h``.
_KEY_VERSION = 2
_KEY_VERSIONS = (1, 2)
_PUB_STRUCT = struct.Struct(">BHHBId")  # version, key_bits, precision, packed, max_summands, value_bound
_CT_STRUCT = struct.Struct(">BBHQQI")  # version, packed, scale_bits, length, summands, count
_MAX_PRECISION = 64
#: Packed slots' default headroom; the protocol uses never ask for less.
DEFAULT_MAX_SUMMANDS = 16
# (SLOT_MASK_BITS, the 40 extra bits of a statistically hiding mask, is gone: the mask of
# PaillierBackend.pack_slots is uniform mod n, which hides exactly and needs no room.)


class InsecureParametersWarning(UserWarning):
    """Parameters that are fine for tests but too weak for real data (e.g. 1024-bit keys)."""


# --------------------------------------------------------------------------------------------
# Fast randomness (Damgård-Jurik-Nielsen): pure functions on ints, run in-process or on the pool
# --------------------------------------------------------------------------------------------
#: Length of the short exponent ``α`` of a fresh encryption's randomness ``h**α``: ``2·max(128, λ)``
#: bits for a key of ``λ``-bit security, so the generic attack on a short exponent (Pollard's
#: kangaroo, ``2**(bits/2)`` group operations) costs at least as much as factoring ``n``
#: (docs/crypto.md, "Fast encryption").
RANDOMNESS_BITS = {bits: 2 * max(128, security) for bits, security in KEY_BITS_SECURITY.items()}
#: A full-length exponent has ``key_bits + FULL_RANDOMNESS_MARGIN`` bits: ``β mod ord(h)`` is then
#: within statistical distance ``2**-128`` of uniform, whatever the group order (``ord(h) < n``).
FULL_RANDOMNESS_MARGIN = 128
#: Window widths of the fixed-base tables: 8 bits (32 multiplications, ~4 MB at 2048 bits) for
#: the short exponents; 6 bits for the full-length ones (~12 MB, built only where used).
_SHORT_WINDOW = 8
_FULL_WINDOW = 6
_SHORT_WINDOW_MAX_BITS = 512
#: Fewest items worth a trip to the process pool (a fresh encryption costs ~0.2 ms at 2048 bits).
_POOL_MIN_ITEMS = 32


def full_randomness_bits(key_bits: int) -> int:
    """Bits of the exponent that re-randomizes a ciphertext raised to a plaintext factor."""
    return key_bits + FULL_RANDOMNESS_MARGIN


class FixedBaseTable:
    """``base**e mod modulus`` for ``0 <= e < 2**bits`` with a precomputed table and no squarings.

    ``rows[i][d] = base**(d * 2**(window*i))``, so with ``e = Σ_i d_i 2**(window*i)`` (digits
    ``d_i < 2**window``) the power is ``Π_i rows[i][d_i]``: ``ceil(bits / window)`` modular
    multiplications instead of ``bits`` squarings. Fixed-base windowing with every digit's power
    stored (Menezes, van Oorschot & Vanstone, *Handbook of Applied Cryptography*, §14.6.3; Brickell,
    Gordon, McCurley & Wilson, EUROCRYPT 1992). Building costs ``rows * (2**window - 1)``
    multiplications, once per process and key (:func:`_table` caches a few).
    """

    __slots__ = ("bits", "modulus", "window", "_rows")

    def __init__(self, base: int, modulus: int, *, bits: int, window: int) -> None:
        if bits < 1 or not 1 <= window <= 16:
            raise ValueError(f"FixedBaseTable: bits >= 1 and window in [1, 16] needed, got {bits}, {window}")
        mod = gmpy2.mpz(modulus)
        step = gmpy2.mpz(base) % mod
        rows = []
        for _ in range(-(-bits // window)):
            row = [gmpy2.mpz(1)]
            acc = gmpy2.mpz(1)
            for _ in range((1 << window) - 1):
                acc = acc * step % mod
                row.append(acc)
            rows.append(row)
            step = acc * step % mod  # base**(2**(window*(i+1)))
        self.bits = bits
        self.modulus = mod
        self.window = window
        self._rows = rows

    def pow(self, exponent: int) -> Any:
        """``base**exponent mod modulus`` (an mpz); ``0 <= exponent < 2**bits``."""
        if not 0 <= exponent < (1 << self.bits):
            raise ValueError(f"FixedBaseTable: exponent outside [0, 2**{self.bits})")
        mod, window, mask = self.modulus, self.window, (1 << self.window) - 1
        out = None
        e = int(exponent)
        for row in self._rows:
            if not e:
                break
            digit = e & mask
            e >>= window
            if digit:
                out = row[digit] if out is None else out * row[digit] % mod
        return gmpy2.mpz(1) if out is None else out


@functools.lru_cache(maxsize=4)
def _table(base: int, modulus: int, bits: int, window: int) -> FixedBaseTable:
    # A few keys per process (a silo rarely uses more than one); each table is a few MB.
    return FixedBaseTable(base, modulus, bits=bits, window=window)


def random_exponents(count: int, bits: int) -> list[int]:
    """``count`` integers uniform in ``[0, 2**bits)`` from the OS CSPRNG (never seeded)."""
    size = (bits + 7) // 8
    drop = 8 * size - bits
    raw = os.urandom(size * count)
    return [int.from_bytes(raw[i * size : (i + 1) * size], "big") >> drop for i in range(count)]


def generate_primes(key_bits: int) -> tuple[int, int]:
    """Two random primes ``p, q ≡ 3 (mod 4)`` of ``key_bits/2`` bits with ``gcd(p-1, q-1) = 2``.

    ``n = p·q`` has exactly ``key_bits`` bits (the top two bits of each prime are set) and
    ``|p - q| > 2**(key_bits/2 - 16)`` (Fermat's method needs ``|p - q|`` near ``n**(1/4)``). With
    these conditions the Jacobi-symbol-1 subgroup of ``Z*_n`` is cyclic and ``-1`` lies in it
    but is not a square: the structure the DJN randomness base relies on. Candidates come from
    :mod:`secrets`; primality is BPSW plus Miller-Rabin rounds (GMP's ``mpz_probab_prime_p``).
    """
    half = key_bits // 2

    def prime() -> Any:
        while True:
            candidate = gmpy2.mpz(secrets.randbits(half) | (3 << (half - 2)) | 3)
            if gmpy2.is_prime(candidate, 40):
                return candidate

    while True:
        p, q = prime(), prime()
        if gmpy2.gcd(p - 1, q - 1) == 2 and abs(p - q).bit_length() > half - 16:
            return int(p), int(q)


def randomness_base(n: int) -> int:
    """``h = (-x**2)**n mod n**2`` for ``x`` uniform in ``Z*_n`` (OS CSPRNG): the public base of
    the DJN randomness ``h**α``. ``-x**2`` lies in the Jacobi-symbol-1 subgroup of ``Z*_n``, and
    ``h`` is an ``n``-th residue mod ``n**2`` by construction, so ``h**α`` encrypts zero."""
    n = gmpy2.mpz(n)
    while True:
        x = gmpy2.mpz(secrets.randbelow(int(n) - 2) + 2)
        if gmpy2.gcd(x, n) == 1:
            return int(gmpy2.powmod(-x * x % n, n, n * n))


def is_nth_residue(h: int, p: int, q: int) -> bool:
    """Whether ``h`` is an ``n``-th residue mod ``n**2`` (``n = p·q``): ``h**lcm(p-1, q-1) == 1``.

    The ``n``-th residues are exactly the elements whose order divides ``φ(n)`` (``gcd(n, φ(n)) =
    1``); only the key holder can check this, with the factors."""
    n = gmpy2.mpz(p) * gmpy2.mpz(q)
    lam = gmpy2.lcm(gmpy2.mpz(p) - 1, gmpy2.mpz(q) - 1)
    return bool(gmpy2.powmod(gmpy2.mpz(h), lam, n * n) == 1)


def djn_encrypt_batch(n: int, h: int, bits: int, plaintexts: list[int]) -> list[Any]:
    """``(1 + m·n) · h**α mod n**2`` per plaintext ``0 <= m < n``, ``α`` uniform of ``bits`` bits."""
    if not plaintexts:
        return []
    n = gmpy2.mpz(n)
    nsq = n * n
    table = _table(int(h), int(nsq), bits, _SHORT_WINDOW)
    alphas = random_exponents(len(plaintexts), bits)
    return [(1 + gmpy2.mpz(m) * n) * table.pow(a) % nsq for m, a in zip(plaintexts, alphas)]


def djn_rerandomize_batch(n: int, h: int, bits: int, ciphertexts: list[int]) -> list[Any]:
    """``c · h**β mod n**2`` per ciphertext: a fresh encryption of zero, ``β`` of ``bits`` bits."""
    if not ciphertexts:
        return []
    n = gmpy2.mpz(n)
    nsq = n * n
    window = _SHORT_WINDOW if bits <= _SHORT_WINDOW_MAX_BITS else _FULL_WINDOW
    table = _table(int(h), int(nsq), bits, window)
    betas = random_exponents(len(ciphertexts), bits)
    return [gmpy2.mpz(c) * table.pow(b) % nsq for c, b in zip(ciphertexts, betas)]


# --------------------------------------------------------------------------------------------
# Keys and public parameters
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PaillierEncoding:
    """Encoding parameters: part of the public context so every party encodes alike."""

    precision: int
    value_bound: float
    packed: bool
    max_summands: int

    def describe(self) -> str:
        return (
            f"precision={self.precision};value_bound={self.value_bound!r};"
            f"packed={int(self.packed)};max_summands={self.max_summands}"
        )


@dataclass(frozen=True, repr=False)
class PaillierPublic(PublicContext):
    """Public key ``n``, the DJN randomness base ``h`` and the encoding parameters.

    The fingerprint covers all three. ``h is None`` only for a key loaded from format 1 (written
    before ``h`` existed): it encrypts with phe's ``r**n`` and keeps its old fingerprint.
    """

    n: int
    encoding: PaillierEncoding
    h: int | None = None
    backend: ClassVar[str] = "paillier"
    _fp: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        parts: list[bytes | str] = [_int_bytes(self.n), self.encoding.describe()]
        if self.h is not None:
            parts += ["djn-h", _int_bytes(self.h)]
        object.__setattr__(self, "_fp", fingerprint_of("paillier", *parts))

    @property
    def fingerprint(self) -> str:
        return self._fp

    @property
    def key_bits(self) -> int:
        return self.n.bit_length()

    @property
    def nsquare(self) -> int:
        return self.n * self.n

    @property
    def max_int(self) -> int:
        """Largest encodable magnitude: phe's ``n // 3`` (the middle third detects overflow)."""
        return self.n // 3

    @property
    def ciphertext_bytes(self) -> int:
        return (self.nsquare.bit_length() + 7) // 8

    @property
    def fast_randomness(self) -> bool:
        """Encryption uses the DJN base ``h`` (format 2), not phe's ``r**n`` (format 1)."""
        return self.h is not None

    def _payload(self) -> bytes:
        e = self.encoding
        version = 1 if self.h is None else _KEY_VERSION
        head = _PUB_STRUCT.pack(version, self.key_bits, e.precision, int(e.packed), e.max_summands, e.value_bound)
        body = head + _int_bytes(self.n)
        if self.h is not None:
            body += int(self.h).to_bytes(self.ciphertext_bytes, "big")
        return body

    def serialize(self) -> bytes:
        return CryptoBackend._header(b"PUBK", self.fingerprint) + self._payload()


@dataclass(frozen=True, repr=False, eq=False)
class PaillierSecret(SecretKey):
    """The primes ``p, q`` (and the public context, ``h`` included, they belong to).

    ``repr`` shows only the fingerprint (see :class:`SecretKey`)."""

    public_context: PaillierPublic
    p: int
    q: int
    backend: ClassVar[str] = "paillier"

    def public(self) -> PaillierPublic:
        pub = self.public_context
        return PaillierPublic(pub.n, pub.encoding, pub.h)

    @property
    def fingerprint(self) -> str:
        return self.public_context.fingerprint

    def export_secret(self) -> bytes:
        body = self.public_context._payload()
        for prime in (self.p, self.q):
            raw = _int_bytes(prime)
            body += len(raw).to_bytes(2, "big") + raw
        return CryptoBackend._header(b"SECK", self.fingerprint) + body

    def __reduce__(self) -> Any:
        # Pickling a secret key (e.g. by accident into a log or cache) is refused; use
        # export_secret() and a 0600 file (fedsilo.crypto.keys.save_secret_key).
        raise TypeError("PaillierSecret cannot be pickled; use export_secret() explicitly")


def _int_bytes(value: int) -> bytes:
    return int(value).to_bytes((int(value).bit_length() + 7) // 8 or 1, "big")


# --------------------------------------------------------------------------------------------
# Ciphertexts
# --------------------------------------------------------------------------------------------
class PaillierCiphertext(Ciphertext):
    """An encrypted vector: a list of Paillier ciphertexts (one value each, or ``slots`` packed).

    ``scale_bits``: values are integers over ``2**scale_bits``. ``summands``: how many fresh
    vectors were added (packed mode: the offset multiplier and the headroom check). ``bound``:
    public upper bound on ``|plaintext integer|`` (unpacked mode). ``obfuscated``: straight
    from ``encrypt`` (no need to re-randomize before sending). ``multiplied``: raised to a
    plaintext factor since its randomness was last refreshed, so its randomness depends on the
    factors; ``serialize`` then re-randomizes with a full-length exponent
    (:func:`full_randomness_bits`) rather than a short one.
    """

    backend: ClassVar[str] = "paillier"

    def __init__(
        self,
        *,
        values: list[Any],
        length: int,
        public: PaillierPublic,
        scale_bits: int,
        summands: int,
        bound: int,
        obfuscated: bool,
        ops: "PaillierBackend",
        multiplied: bool = False,
    ) -> None:
        self.values = values
        self.length = length
        self.public = public
        self.fingerprint = public.fingerprint
        self.packed = public.encoding.packed
        self.scale_bits = scale_bits
        self.summands = summands
        self.bound = bound
        self.obfuscated = obfuscated
        self.multiplied = multiplied
        self._ops = ops


# --------------------------------------------------------------------------------------------
# The backend
# --------------------------------------------------------------------------------------------
class PaillierBackend(CryptoBackend):
    """Paillier with fixed-point encoding, optional BatchCrypt packing and a process pool.

    Parameters (keyword-only, validated; a bad one raises ConfigError naming it):

    key_bits
        Modulus size: 2048 (default, ~112-bit security), 3072 (128-bit), 4096; 1024 only for
        tests (~80-bit, warns with :class:`InsecureParametersWarning`, and
        :meth:`confidentiality` says it is not secure, so a federation config needs
        ``[crypto] insecure = true`` to use it).
    precision
        Fractional bits of the fixed-point encoding (scale ``2**precision``, default 32).
        Rounding error per value <= ``2**-(precision+1)``; ``precision=0`` encodes integers.
    value_bound
        Inputs (and plaintext operands of add_plain / mul_plain / matmul_plain) must satisfy
        ``|x| <= value_bound`` (default ``2**20``); larger values raise EncodingOverflowError.
    packed
        BatchCrypt packing (default False).
    max_summands
        K: packed slots have headroom for K summands (default 16); the K+1-th raises.
    workers
        Process-pool size for encryption/decryption (default ``os.cpu_count()``; 1 = in-process).
    """

    name: ClassVar[str] = "paillier"
    exact: ClassVar[bool] = True

    def __init__(
        self,
        *,
        key_bits: int = 2048,
        precision: int = 32,
        value_bound: float = 2.0**20,
        packed: bool = False,
        max_summands: int = DEFAULT_MAX_SUMMANDS,
        workers: int | None = None,
    ) -> None:
        if not _is_int(key_bits) or key_bits not in KEY_BITS_SECURITY:
            raise ConfigError(f"paillier: key_bits must be one of {sorted(KEY_BITS_SECURITY)}, got {key_bits!r}")
        if not _is_int(precision) or not 0 <= precision <= _MAX_PRECISION:
            raise ConfigError(f"paillier: precision must be an integer in [0, {_MAX_PRECISION}] bits, got {precision!r}")
        if isinstance(value_bound, bool) or not isinstance(value_bound, (int, float)) or not (
            math.isfinite(value_bound) and value_bound > 0
        ):
            raise ConfigError(f"paillier: value_bound must be a positive finite number, got {value_bound!r}")
        if not isinstance(packed, bool):
            raise ConfigError(f"paillier: packed must be true or false, got {packed!r}")
        if not _is_int(max_summands) or not 1 <= max_summands <= 2**32 - 1:
            raise ConfigError(f"paillier: max_summands must be an integer >= 1, got {max_summands!r}")
        if workers is None:
            workers = os.cpu_count() or 1
        if not _is_int(workers) or workers < 1:
            raise ConfigError(f"paillier: workers must be an integer >= 1, got {workers!r}")
        self.key_bits = int(key_bits)
        self.encoding = PaillierEncoding(int(precision), float(value_bound), packed, int(max_summands))
        self.workers = int(workers)
        offset = fixed_point_bound(value_bound=float(value_bound), precision=int(precision))
        self.layout: SlotLayout | None = None
        if packed:
            try:
                self.layout = slot_layout(
                    plaintext_bits=self.key_bits - 1,
                    precision=int(precision),
                    value_bound=float(value_bound),
                    max_summands=int(max_summands),
                )
            except ConfigError as exc:
                raise ConfigError(f"paillier: {exc}") from exc
        elif offset.bit_length() > self.key_bits - 8:
            raise ConfigError(
                f"paillier: value_bound * 2**precision needs {offset.bit_length()} bits; "
                f"a {self.key_bits}-bit key holds about {self.key_bits - 2}"
            )
        if self.key_bits < 2048:
            warnings.warn(
                f"paillier: {self.key_bits}-bit keys give ~{KEY_BITS_SECURITY[self.key_bits]}-bit security; "
                "use them for tests only",
                InsecureParametersWarning,
                stacklevel=2,
            )

    # --- description ------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        e = self.encoding
        return {
            "key_bits": self.key_bits,
            "precision": e.precision,
            "value_bound": e.value_bound,
            "packed": e.packed,
            "max_summands": e.max_summands,
            "workers": self.workers,
        }

    @classmethod
    def capabilities(cls) -> Capabilities:
        """Exact sums; matmul unpacked (the default); packing is optional (``packed=True``)."""
        return Capabilities(exact_sums=True, plaintext_matmul=True, packing={"packed": True})

    @classmethod
    def defaults_for(cls, use: Use, *, summands: int) -> dict[str, Any]:
        """Parameters per use (explicit ones win, see :meth:`CryptoBackend.params_for`).

        * ``aggregate``: ``max_summands = max(16, summands)``, headroom for every contribution
          (a silo's update plus its top-up share); the rest stays at the defaults.
        * ``statistics``: packed, because sums of a silo's values need far more range than model
          updates: ``value_bound = 2**40`` with ``precision = 24`` fractional bits — every grid a
          statistics plan may choose (its finest granularity, ``2**-24``, and coarser) is
          encoded exactly — and ``max_summands = max(16, summands)``. A slot then holds
          ``bitlen(max_summands · 2 · 2^64)`` bits (70 with 16 summands), far below a 2047-bit
          plaintext; values above ``value_bound`` and more summands than ``max_summands`` still
          raise :class:`~fedsilo.errors.EncodingOverflowError`. (The statistics protocol refuses
          a caller-set precision coarser than its plan's grid.)
        * ``matmul``: none (unpacked, the default, supports ``matmul_plain``).
        * ``benchmark``: values in [-1, 1], so ``value_bound = 1`` and ``max_summands =
          summands`` (BatchCrypt sizes slots to the known range).
        """
        if use in ("aggregate", "statistics"):
            headroom = {"max_summands": max(DEFAULT_MAX_SUMMANDS, summands)}
            if use == "aggregate":
                return headroom
            return {"packed": True, "precision": 24, "value_bound": 2.0**40, **headroom}
        if use == "benchmark":
            return {"value_bound": 1.0, "max_summands": summands}
        return {}

    def confidentiality(self) -> Confidentiality:
        """Secure from 2048-bit keys (~112-bit security, :data:`MIN_SECURITY_BITS`) up."""
        bits = KEY_BITS_SECURITY[self.key_bits]
        if bits < MIN_SECURITY_BITS:
            return Confidentiality(
                False,
                bits,
                reason=(
                    f"{self.key_bits}-bit Paillier keys give ~{bits}-bit security, below the "
                    f"{MIN_SECURITY_BITS} bits of key_bits = 2048"
                ),
                param="key_bits",
            )
        return Confidentiality(True, bits)

    def info(self) -> BackendInfo:
        e = self.encoding
        ct_bytes = 2 * self.key_bits // 8
        per_ct = self.layout.slots if self.layout else 1
        if e.packed:
            supports: tuple[str, ...] = ("add", "add_plain", "sum", "mul_int")
            mode = f"packed {per_ct} x {self.layout.slot_bits}-bit slots, <= {e.max_summands} summands"  # type: ignore[union-attr]
        else:
            supports = ("add", "add_plain", "sum", "mul_scalar", "mul_vector", "matmul")
            mode = "one value per ciphertext"
        return BackendInfo(
            name=self.name,
            exact=True,
            secure=self.confidentiality().secure,
            values_per_ciphertext=per_ct,
            bytes_per_value=ct_bytes / per_ct,
            # One rounding to the fixed-point grid per encoded operand (see docs/crypto.md).
            error_bound=math.ldexp(1.0, -(e.precision + 1)),
            supports=supports,
            value_bound=e.value_bound,
            description=(
                f"Paillier {self.key_bits}-bit (~{KEY_BITS_SECURITY[self.key_bits]}-bit security), "
                f"fixed point 2^-{e.precision}, |x| <= {e.value_bound:g}, {mode}"
            ),
        )

    # --- keys -------------------------------------------------------------------------------
    def keygen(self) -> PaillierSecret:
        """Primes from :func:`generate_primes`, ``h`` from :func:`randomness_base` (OS CSPRNG)."""
        p, q = generate_primes(self.key_bits)
        n = p * q
        public = PaillierPublic(n, self.encoding, randomness_base(n))
        return PaillierSecret(public, p, q)

    def _parse_public_payload(self, body: bytes, *, what: str) -> tuple[PaillierPublic, bytes]:
        try:
            version, key_bits, precision, packed, max_summands, value_bound = _PUB_STRUCT.unpack_from(body)
        except struct.error as exc:
            raise CiphertextFormatError(f"paillier: truncated {what}") from exc
        if version not in _KEY_VERSIONS:
            raise CiphertextFormatError(
                f"paillier: {what} has format version {version}; this fedsilo reads versions "
                f"{', '.join(map(str, _KEY_VERSIONS))} (a newer fedsilo wrote it?)"
            )
        n_len = (key_bits + 7) // 8
        h_len = 2 * n_len if version >= 2 else 0
        start = _PUB_STRUCT.size
        raw_n = body[start : start + n_len]
        raw_h = body[start + n_len : start + n_len + h_len]
        if len(raw_n) != n_len or len(raw_h) != h_len or packed not in (0, 1):
            raise CiphertextFormatError(f"paillier: truncated or corrupt {what}")
        n = int.from_bytes(raw_n, "big")
        if n.bit_length() != key_bits or n % 2 == 0:
            raise CiphertextFormatError(f"paillier: {what} holds an invalid modulus")
        h = None
        if version >= 2:
            h = int.from_bytes(raw_h, "big")
            # What a peer can check without the factors (n-th residuosity itself is the DCR
            # problem; the key holder checks it in load_secret): keygen's n is 1 mod 4 and h,
            # an n-th power of -x**2, has Jacobi symbol 1 mod n.
            # (These refuse malformed bases, not malicious ones: a key holder can always choose a
            # weak h for its own key; products never rely on h, see _rerandomize.)
            nsq = n * n
            if not (1 < h < nsq and n % 4 == 1 and gmpy2.gcd(h, n) == 1 and gmpy2.jacobi(h % n, n) == 1
                    and h * h % nsq != 1):
                raise CiphertextFormatError(f"paillier: {what} holds an invalid randomness base h")
        encoding = PaillierEncoding(precision, value_bound, bool(packed), max_summands)
        if encoding != self.encoding or key_bits != self.key_bits:
            raise ConfigError(
                f"paillier: the {what} was made with key_bits={key_bits}, {encoding.describe()} but this "
                f"backend has key_bits={self.key_bits}, {self.encoding.describe()}; use the federation's parameters"
            )
        return PaillierPublic(n, encoding, h), body[start + n_len + h_len :]

    def load_public(self, data: bytes) -> PaillierPublic:
        """Formats 1 (``n`` only: phe-style randomness, fingerprint unchanged) and 2 (``n`` and ``h``)."""
        fp, body = self._split_header(data, kind=b"PUBK", backend=self.name)
        public, rest = self._parse_public_payload(body, what="public context")
        if rest or public.fingerprint != fp:
            raise CiphertextFormatError("paillier: public context is corrupt (fingerprint does not match its body)")
        return public

    def load_secret(self, data: bytes) -> PaillierSecret:
        """Formats 1 and 2; a format-2 key whose ``h`` is not an ``n``-th residue is refused."""
        fp, body = self._split_header(data, kind=b"SECK", backend=self.name)
        public, rest = self._parse_public_payload(body, what="secret key")
        primes = []
        for _ in range(2):
            if len(rest) < 2:
                raise CiphertextFormatError("paillier: truncated secret key")
            size = int.from_bytes(rest[:2], "big")
            raw, rest = rest[2 : 2 + size], rest[2 + size :]
            if len(raw) != size:
                raise CiphertextFormatError("paillier: truncated secret key")
            primes.append(int.from_bytes(raw, "big"))
        p, q = primes
        if rest or p * q != public.n or public.fingerprint != fp:
            raise CiphertextFormatError("paillier: secret key is corrupt (primes do not match the modulus)")
        if public.h is not None and not is_nth_residue(public.h, p, q):
            # Encryptions with such an h would decrypt to garbage (h**α would not encrypt zero).
            raise CiphertextFormatError("paillier: secret key is corrupt (its randomness base h is not an n-th residue)")
        return PaillierSecret(public, p, q)

    # --- helpers ----------------------------------------------------------------------------
    def _check_public(self, public: Any) -> PaillierPublic:
        self._check_kind(public, PaillierPublic, "the public context")
        if public.encoding != self.encoding or public.key_bits != self.key_bits:
            raise ConfigError(
                f"paillier: public context has key_bits={public.key_bits}, {public.encoding.describe()} but "
                f"this backend has key_bits={self.key_bits}, {self.encoding.describe()}"
            )
        return public

    def _check_ct(self, ct: Any, what: str = "the ciphertext") -> PaillierCiphertext:
        self._check_kind(ct, PaillierCiphertext, what)
        if ct.public.encoding != self.encoding or ct.public.key_bits != self.key_bits:
            raise KeyMismatchError(
                f"paillier: {what} was made with key_bits={ct.public.key_bits}, {ct.public.encoding.describe()}, "
                f"this backend has key_bits={self.key_bits}, {self.encoding.describe()}"
            )
        return ct

    def _unsupported_packed(self, op: str) -> UnsupportedOperationError:
        return UnsupportedOperationError(
            f"paillier: {op} is not supported on packed ciphertexts (BatchCrypt slots only add); "
            "use get_backend('paillier', packed=False) for multiplications by plaintext floats"
        )

    def _wrap(self, ct: PaillierCiphertext, values: list[Any], **changes: Any) -> PaillierCiphertext:
        fields = dict(
            values=values,
            length=ct.length,
            public=ct.public,
            scale_bits=ct.scale_bits,
            summands=ct.summands,
            bound=ct.bound,
            obfuscated=False,  # any homomorphic result is re-randomized before it leaves
            ops=self,
            multiplied=ct.multiplied,
        )
        fields.update(changes)
        return PaillierCiphertext(**fields)

    def _pool_for(self, items: int) -> int:
        """Pool size for ``items`` fast encryptions: below a few dozen the IPC costs more."""
        return self.workers if items >= _POOL_MIN_ITEMS else 1

    def _rerandomize(self, pub: PaillierPublic, values: list[int], *, full: bool) -> list[int]:
        """Multiply every ciphertext by a fresh encryption of zero.

        ``full``: after a multiplication by plaintext factors the randomness is ``h**(Σ α_i k_i)``,
        which a key holder able to take discrete logarithms mod p and q could relate to the
        factors ``k_i``. Re-randomizing within ``⟨h⟩`` (even with a full-length exponent) is not
        enough against a key holder that chose ``h`` (or the inputs' randomness) itself: with
        ``h = −1`` or a smooth-order ``h`` it reads the factors by Pohlig–Hellman (found by the
        crypto review). So products leave with phe's ``r**n`` for a uniform ``r`` in ``Z*_n``
        drawn here, uniform in the n-th residues whatever ``h`` and the inputs are. Otherwise
        (sums, ``add_plain``, forwarding) the randomness depends on no plaintext and a short
        ``β`` hides the result from whoever knows the inputs, as a fresh encryption does.
        """
        if pub.h is None or full:  # phe's r**n: uniform, whatever h and the inputs' randomness
            return parallel_map(obfuscate_batch, (pub.n,), values, self.workers)
        bits = RANDOMNESS_BITS[self.key_bits]
        out = parallel_map(djn_rerandomize_batch, (pub.n, pub.h, bits), values, self._pool_for(len(values)))
        return [int(v) for v in out]

    def _check_summands(self, total: int) -> None:
        if total > self.encoding.max_summands:
            raise EncodingOverflowError(
                f"paillier: the result would hold {total} summands but packed slots have headroom for "
                f"max_summands={self.encoding.max_summands}; raise max_summands (fewer values per ciphertext)"
            )

    def _check_bound(self, public: PaillierPublic, bound: int, op: str) -> None:
        if bound > public.max_int:
            raise EncodingOverflowError(
                f"paillier: {op} could exceed the plaintext space (|value| * 2**scale up to "
                f"{bound.bit_length()} bits, limit {public.max_int.bit_length()} bits); lower precision or value_bound"
            )

    def _max_scale_bits(self, public: PaillierPublic) -> int:
        """Largest scale any ciphertext can legitimately have: ``precision * (max depth + 1)``.

        Each ``mul_plain`` / ``matmul_plain`` adds ``precision`` to the scale and multiplies the
        bound by ``F = ceil(value_bound * 2**precision)``; fresh values have bound ``F``, and
        every bound stays <= ``max_int``. So ``F**(depth + 1) <= max_int``, i.e. ``depth + 1 <=
        bits(max_int) / floor(log2 F)`` (if F == 1, products cannot grow: capped at bits(max_int)).
        """
        e = self.encoding
        f = fixed_point_bound(value_bound=e.value_bound, precision=e.precision)
        levels = public.max_int.bit_length() // max(1, f.bit_length() - 1)
        return e.precision * levels

    def _scale_possible(self, public: PaillierPublic, scale_bits: int) -> bool:
        p = self.encoding.precision
        if p == 0:
            return scale_bits == 0
        return scale_bits % p == 0 and p <= scale_bits <= self._max_scale_bits(public)

    def _lift(self, ct: PaillierCiphertext, scale_bits: int) -> tuple[list[Any], int]:
        """Ciphertext values and bound re-expressed at a larger scale: ``c**(2**d)``."""
        d = scale_bits - ct.scale_bits
        if d == 0:
            return ct.values, ct.bound
        nsq = gmpy2.mpz(ct.public.nsquare)
        factor = gmpy2.mpz(1) << d
        return [gmpy2.powmod(c, factor, nsq) for c in ct.values], ct.bound << d

    # --- encryption -------------------------------------------------------------------------
    def encrypt(self, public: PublicContext, values: Any) -> PaillierCiphertext:
        pub = self._check_public(public)
        vec = as_vector(values)
        e = self.encoding
        ints = encode_fixed(vec, precision=e.precision, value_bound=e.value_bound)
        if self.layout is not None:
            plaintexts = pack(ints, layout=self.layout)
        else:
            # Negative values become n - |m| (g**(n - |m|) = g**(-|m|) mod n**2).
            plaintexts = [m % pub.n for m in ints]
        if pub.h is None:  # a format-1 key: phe's raw_encrypt, r**n
            cts = parallel_map(encrypt_batch, (pub.n,), plaintexts, self.workers)
        else:
            common = (pub.n, pub.h, RANDOMNESS_BITS[self.key_bits])
            cts = parallel_map(djn_encrypt_batch, common, plaintexts, self._pool_for(len(plaintexts)))
        return PaillierCiphertext(
            values=[gmpy2.mpz(c) for c in cts],
            length=int(vec.shape[0]),
            public=pub,
            scale_bits=e.precision,
            summands=1,
            bound=fixed_point_bound(value_bound=e.value_bound, precision=e.precision),
            obfuscated=True,
            ops=self,
        )

    def decrypt(self, secret: SecretKey, ct: Ciphertext) -> np.ndarray:
        self._check_kind(secret, PaillierSecret, "the secret key")
        c = self._check_ct(ct)
        self._check_same_key(secret, c)
        pub = c.public
        plain = parallel_map(decrypt_batch, (pub.n, secret.p, secret.q), [int(v) for v in c.values], self.workers)
        if c.packed:
            assert self.layout is not None
            ints = unpack(plain, layout=self.layout, length=c.length, summands=c.summands)
        else:
            ints = []
            for m in plain:
                if m <= pub.max_int:
                    ints.append(m)
                elif m >= pub.n - pub.max_int:
                    ints.append(m - pub.n)
                else:
                    raise EncodingOverflowError(
                        "paillier: a decrypted value lies outside the encodable range (overflow, or a "
                        "ciphertext under another key)"
                    )
            # Paillier is exact and every operation tracks a true upper bound, so a larger value
            # means a forged header (bound or scale) or a ciphertext from elsewhere.
            if any(abs(m) > c.bound for m in ints):
                raise EncodingOverflowError(
                    "paillier: a decrypted value exceeds the ciphertext's declared bound (corrupt or forged "
                    "ciphertext header)"
                )
        return decode_fixed(ints, scale_bits=c.scale_bits)

    # --- homomorphic operations -------------------------------------------------------------
    def add(self, a: Ciphertext, b: Ciphertext) -> PaillierCiphertext:
        return self.sum([a, b])

    def sum(self, cts: Sequence[Ciphertext]) -> PaillierCiphertext:
        """Product of ciphertexts position by position: Enc(a) * Enc(b) = Enc(a + b)."""
        checked = self._sum_operands(cts, self._check_ct)
        first = checked[0]
        if len(checked) == 1:
            return first
        total = sum(c.summands for c in checked)
        nsq = gmpy2.mpz(first.public.nsquare)
        if first.packed:
            self._check_summands(total)
            columns = [c.values for c in checked]
            scale, bound = first.scale_bits, first.bound
        else:
            scale = max(c.scale_bits for c in checked)
            # Bounds first: a refused addition must not pay for the (2**d)-th powers of _lift.
            bound = sum(c.bound << (scale - c.scale_bits) for c in checked)
            self._check_bound(first.public, bound, "this addition")
            columns = [self._lift(c, scale)[0] for c in checked]
        out = list(columns[0])
        for vals in columns[1:]:
            out = [x * y % nsq for x, y in zip(out, vals)]
        multiplied = any(c.multiplied for c in checked)
        return self._wrap(first, out, scale_bits=scale, summands=total, bound=bound, multiplied=multiplied)

    def add_plain(self, a: Ciphertext, values: Any) -> PaillierCiphertext:
        """Enc(x) * (1 + m n) = Enc(x + m): no randomness, hence re-randomized on serialize."""
        c = self._check_ct(a)
        vec = broadcast_vector(values, c.length)
        e = self.encoding
        pub = c.public
        if c.packed:
            assert self.layout is not None
            self._check_summands(c.summands + 1)
            ints = encode_fixed(vec, precision=e.precision, value_bound=e.value_bound, what="plaintext operand")
            plaintexts = pack(ints, layout=self.layout)
            bound = c.bound
        else:
            ints = encode_fixed(vec, precision=c.scale_bits, value_bound=e.value_bound, what="plaintext operand")
            plaintexts = ints
            bound = c.bound + fixed_point_bound(value_bound=e.value_bound, precision=c.scale_bits)
            self._check_bound(pub, bound, "add_plain")
        n, nsq = gmpy2.mpz(pub.n), gmpy2.mpz(pub.nsquare)
        out = [x * ((1 + (m % n) * n) % nsq) % nsq for x, m in zip(c.values, plaintexts)]
        return self._wrap(c, out, summands=c.summands + 1, bound=bound)

    def mul_plain(self, a: Ciphertext, factor: Any) -> PaillierCiphertext:
        """Enc(x)**k = Enc(k x). Unpacked: k = round(f * 2**precision), scale adds up.

        Packed: only a non-negative integer scalar (it multiplies the summand count too).
        """
        c = self._check_ct(a)
        vec = broadcast_vector(factor, c.length)
        e = self.encoding
        pub = c.public
        if c.packed:
            k = float(vec[0]) if vec.size else 0.0
            if vec.size and (not np.all(vec == k) or k < 0 or k != int(k)):
                raise self._unsupported_packed("multiplication by a plaintext float or vector")
            self._check_summands(c.summands * int(k))
            pairs = [(int(v), int(k)) for v in c.values]
            out = parallel_map(pow_batch, (pub.nsquare,), pairs, self.workers)
            return self._wrap(c, [gmpy2.mpz(v) for v in out], summands=c.summands * int(k), multiplied=True)
        ks = encode_fixed(vec, precision=e.precision, value_bound=e.value_bound, what="plaintext factor")
        bound = c.bound * fixed_point_bound(value_bound=e.value_bound, precision=e.precision)
        self._check_bound(pub, bound, "mul_plain")
        pairs = [(int(v), k) for v, k in zip(c.values, ks)]
        out = parallel_map(pow_batch, (pub.nsquare,), pairs, self.workers)
        return self._wrap(
            c, [gmpy2.mpz(v) for v in out], scale_bits=c.scale_bits + e.precision, bound=bound, multiplied=True
        )

    def matmul_plain(self, a: Ciphertext, matrix: Any) -> PaillierCiphertext:
        """Enc(v) @ M: column j is ``prod_i Enc(v_i)**round(M_ij 2**precision)``."""
        c = self._check_ct(a)
        if c.packed:
            raise self._unsupported_packed("matmul_plain")
        m = as_matrix(matrix, c.length)
        e = self.encoding
        pub = c.public
        bound = c.bound * fixed_point_bound(value_bound=e.value_bound, precision=e.precision) * max(1, c.length)
        self._check_bound(pub, bound, "matmul_plain")
        columns = [
            encode_fixed(m[:, j], precision=e.precision, value_bound=e.value_bound, what="matrix entry")
            for j in range(m.shape[1])
        ]
        cts = [int(v) for v in c.values]
        if self.workers > 1 and m.shape[1] > 1 and c.length * m.shape[1] >= PARALLEL_MIN_ITEMS:
            out = parallel_map_columns(pub.nsquare, cts, columns, self.workers)
        else:
            out = matmul_batch(pub.nsquare, cts, columns)
        return PaillierCiphertext(
            values=[gmpy2.mpz(v) for v in out],
            length=int(m.shape[1]),
            public=pub,
            scale_bits=c.scale_bits + e.precision,
            summands=c.summands,
            bound=bound,
            obfuscated=False,
            ops=self,
            multiplied=True,
        )

    # --- BatchCrypt repacking of an unpacked result ------------------------------------------
    def matmul_bound(self, *, terms: int, rows: int) -> int:
        """The bound a ciphertext tracks for ``matmul_plain(v, M) + u``: ``v`` a sum of ``terms``
        fresh (or plaintext-added) vectors, ``M`` of ``rows`` rows, ``u`` one plaintext vector
        (the same arithmetic as :meth:`sum`, :meth:`add_plain` and :meth:`matmul_plain`, from
        public parameters only, so that every party derives the same :meth:`slot_layout_for`)."""
        e = self.encoding
        f = fixed_point_bound(value_bound=e.value_bound, precision=e.precision)
        return terms * f * f * max(1, rows) + fixed_point_bound(value_bound=e.value_bound, precision=2 * e.precision)

    def matmul_layout(self, *, terms: int, rows: int, summands: int) -> SlotLayout:
        """:meth:`slot_layout_for` the result of ``matmul_plain(v, M) + u`` (:meth:`matmul_bound`,
        at the product's scale ``2**(2 precision)``), ``summands`` packed vectors added up."""
        return self.slot_layout_for(bound=self.matmul_bound(terms=terms, rows=rows),
                                    scale_bits=2 * self.encoding.precision, summands=summands)

    def slot_layout_for(self, *, bound: int, scale_bits: int, summands: int) -> SlotLayout:
        """BatchCrypt slots (Zhang et al., USENIX ATC 2020, §4) for :meth:`pack_slots`: values
        ``|v| <= bound`` at scale ``2**scale_bits``, ``summands`` packed vectors added up, each
        slot ``bitlen(summands * 2 * bound)`` bits (the offset ``bound`` per summand keeps it
        >= 0 and no sum carries into the next slot), in ``key_bits - 3`` bits of the plaintext:
        the packed sum stays below ``2**(key_bits - 3) < n / 3`` (``n >= 2**(key_bits - 1)``).
        :meth:`pack_slots`'s mask is uniform mod ``n`` and takes no room.

        Raises:
            ConfigError: one slot does not fit in a plaintext (lower precision or value_bound).
        """
        if self.encoding.packed:
            raise self._unsupported_packed("slot repacking")
        slot_bits = (summands * 2 * bound).bit_length()
        room = self.key_bits - 3
        if summands < 1 or bound < 1 or slot_bits > room:
            raise ConfigError(
                f"paillier: a slot for values up to {bound.bit_length()} bits and {summands} summands needs "
                f"{slot_bits} bits, a {self.key_bits}-bit plaintext has {room}; lower precision or value_bound"
            )
        return SlotLayout(precision=scale_bits, value_bound=math.ldexp(float(bound), -scale_bits),
                          max_summands=summands, offset=bound, slot_bits=slot_bits, slots=room // slot_bits)

    def pack_slots(self, a: Ciphertext, layout: SlotLayout) -> tuple[PaillierCiphertext, list[int]]:
        """``a`` (unpacked, ``|values| <= layout.offset`` by its tracked bound, at scale
        ``layout.precision``) repacked into ``layout.plaintexts_for(a.length)`` ciphertexts, each
        holding ``P = (V + R) mod n`` for the packed value ``V = Σ_j (v_j + offset) 2**(j * slot_bits)``
        and a mask ``R`` uniform on ``[0, n)`` from the OS CSPRNG (``secrets.randbelow``); and the masks.

        ``Π_j Enc(v_j)**(2**(j b))`` (Horner: ``b`` squarings per slot) is ``Enc(Σ_j v_j 2**(j b))``
        mod ``n``, negative ``v_j`` included; the offsets and the mask are one plaintext addition.
        Hiding: ``R`` is uniform on ``Z_n`` and independent of ``V``, so ``P`` is *exactly* uniform
        on ``Z_n`` whatever ``V`` is (a one-time pad on the group ``Z_n``), also when the decryptor
        wrote the inputs of ``a`` and lied about their bound (two-party, the key holder's own
        ``[[b]]``): the mask depends on no tracked bound. The result is re-randomized
        with a full-length exponent when serialized (``multiplied``), so the ciphertext too is a
        fresh encryption of ``P``. Its tracked bound is the public bound of the *unmasked* ``V``
        (:func:`_slot_bound`): what :func:`unpack_slots` checks after ``(P - R) mod n``, where a
        lie about ``a``'s inputs shows up. Decrypt it with :meth:`decrypt_integers`.

        Raises:
            EncodingOverflowError: ``a``'s bound exceeds the layout's, or its scale differs.
        """
        c = self._check_ct(a)
        if c.packed:
            raise self._unsupported_packed("slot repacking")
        if c.bound > layout.offset or c.scale_bits != layout.precision:
            raise EncodingOverflowError(
                f"paillier: a ciphertext of bound {c.bound.bit_length()} bits at scale 2^-{c.scale_bits} does not "
                f"fit slots for {layout.offset.bit_length()} bits at scale 2^-{layout.precision}"
            )
        pub = c.public
        n, nsq = gmpy2.mpz(pub.n), gmpy2.mpz(pub.nsquare)
        shift = gmpy2.mpz(1) << layout.slot_bits
        out: list[Any] = []
        masks: list[int] = []
        for start in range(0, c.length, layout.slots):
            group = c.values[start : start + layout.slots]
            acc = gmpy2.mpz(group[-1])
            for v in reversed(group[:-1]):  # most significant slot first: one shift per slot
                acc = gmpy2.powmod(acc, shift, nsq) * v % nsq
            mask = secrets.randbelow(int(n))
            plain = (pack([0] * len(group), layout=layout)[0] + mask) % n  # the offsets, and the mask
            out.append(acc * (1 + plain * n) % nsq)
            masks.append(mask)
        bound = _slot_bound(layout, c.length)
        self._check_bound(pub, bound, "slot repacking")
        packed = PaillierCiphertext(values=out, length=len(out), public=pub, scale_bits=c.scale_bits, summands=1,
                                    bound=bound, obfuscated=False, ops=self, multiplied=True)
        return packed, masks

    def check_slots(self, ct: Ciphertext, layout: SlotLayout, *, coordinates: int) -> PaillierCiphertext:
        """``ct`` (from the wire) if its header is that of :meth:`pack_slots` or
        :meth:`encrypt_slots` for ``coordinates`` values in ``layout``: unpacked,
        ``layout.plaintexts_for(coordinates)`` plaintexts, scale ``layout.precision``, one summand,
        a bound at most the public :func:`_slot_bound`. The key holder checks every packed
        operand before adding them up, so that a sender's header cannot lift the others' scale
        or make the sum overflow.

        Raises:
            CiphertextFormatError: the header differs.
        """
        c = self._check_ct(ct)
        if (c.packed or c.length != layout.plaintexts_for(coordinates) or c.scale_bits != layout.precision
                or c.summands != 1 or c.bound > _slot_bound(layout, coordinates)):
            raise CiphertextFormatError(
                f"paillier: not a packed vector of {coordinates} values in slots of {layout.slot_bits} bits "
                "(header: packing, count, scale, summands or bound)"
            )
        return c

    def encrypt_slots(self, public: PublicContext, values: Any, layout: SlotLayout) -> PaillierCiphertext:
        """``values`` (``|x| <= value_bound``) encoded at ``layout.precision`` and packed in
        ``layout`` (one offset per slot, no mask): what another party adds to a
        :meth:`pack_slots` result slot by slot (vertical LR's noise shares)."""
        pub = self._check_public(public)
        vec = as_vector(values)
        ints = encode_fixed(vec, precision=layout.precision, value_bound=self.encoding.value_bound)
        plaintexts = pack(ints, layout=layout)
        if pub.h is None:
            cts = parallel_map(encrypt_batch, (pub.n,), plaintexts, self.workers)
        else:
            common = (pub.n, pub.h, RANDOMNESS_BITS[self.key_bits])
            cts = parallel_map(djn_encrypt_batch, common, plaintexts, self._pool_for(len(plaintexts)))
        return PaillierCiphertext(values=[gmpy2.mpz(v) for v in cts], length=len(plaintexts), public=pub,
                                  scale_bits=layout.precision, summands=1,
                                  bound=_slot_bound(layout, int(vec.shape[0])), obfuscated=True, ops=self)

    def decrypt_integers(self, secret: SecretKey, ct: Ciphertext) -> list[int]:
        """The plaintext integers of an unpacked ``ct``, in ``[0, n)``: a :meth:`pack_slots`
        result's masked packed values ``(V + R) mod n``, exactly. No bound check is possible
        here (the mask is uniform mod ``n``, so every value in ``[0, n)`` is legal): the mask's
        owner checks the unmasked ``V`` against the public layout (:func:`unpack_slots`)."""
        self._check_kind(secret, PaillierSecret, "the secret key")
        c = self._check_ct(ct)
        self._check_same_key(secret, c)
        if c.packed:
            raise self._unsupported_packed("decrypt_integers")
        pub = c.public
        plain = parallel_map(decrypt_batch, (pub.n, secret.p, secret.q), [int(v) for v in c.values], self.workers)
        return [int(m) for m in plain]

    # --- wire -------------------------------------------------------------------------------
    def serialize(self, ct: Ciphertext) -> bytes:
        c = self._check_ct(ct)
        pub = c.public
        values = [int(v) for v in c.values]
        if not c.obfuscated:
            values = self._rerandomize(pub, values, full=c.multiplied)
        width = pub.ciphertext_bytes
        bound_raw = _int_bytes(c.bound)
        head = _CT_STRUCT.pack(_WIRE_VERSION, int(c.packed), c.scale_bits, c.length, c.summands, len(values))
        return b"".join(
            [
                self._header(b"CTXT", c.fingerprint),
                head,
                len(bound_raw).to_bytes(2, "big"),
                bound_raw,
                *(v.to_bytes(width, "big") for v in values),
            ]
        )

    def deserialize(self, public: PublicContext, data: bytes) -> PaillierCiphertext:
        pub = self._check_public(public)
        fp, body = self._split_header(data, kind=b"CTXT", backend=self.name)
        self._check_same_key(pub, FingerprintOnly(fp))
        try:
            version, packed, scale_bits, length, summands, count = _CT_STRUCT.unpack_from(body)
            pos = _CT_STRUCT.size
            bound_len = int.from_bytes(body[pos : pos + 2], "big")
            pos += 2
        except struct.error as exc:
            raise CiphertextFormatError("paillier: truncated ciphertext header") from exc
        if version != _WIRE_VERSION:
            raise CiphertextFormatError(f"paillier: ciphertext format version {version}, expected {_WIRE_VERSION}")
        e = self.encoding
        expected = self.layout.plaintexts_for(length) if self.layout else length
        if bool(packed) != e.packed or packed not in (0, 1) or count != expected:
            raise CiphertextFormatError("paillier: ciphertext header does not match the context (packing or count)")
        if scale_bits < e.precision or (e.packed and (scale_bits != e.precision or summands > e.max_summands)):
            raise CiphertextFormatError("paillier: ciphertext header has an impossible scale or summand count")
        if not self._scale_possible(pub, scale_bits):
            # A scale from the wire drives _lift's exponent (2**d) and decode_fixed's divisor: an
            # unchecked 65535 costs seconds per value in sum() and decrypts to silent zeros.
            raise CiphertextFormatError(
                f"paillier: ciphertext header claims scale 2^-{scale_bits}, impossible for precision "
                f"{e.precision} with this key (at most {self._max_scale_bits(pub)} bits, a multiple of the precision)"
            )
        bound_raw = body[pos : pos + bound_len]
        pos += bound_len
        width = pub.ciphertext_bytes
        payload = body[pos:]
        if len(bound_raw) != bound_len or len(payload) != count * width:
            raise CiphertextFormatError(
                f"paillier: ciphertext body has {len(payload)} bytes, expected {count} x {width}"
            )
        bound = int.from_bytes(bound_raw, "big")
        if not e.packed and bound > pub.max_int:
            raise CiphertextFormatError("paillier: ciphertext header has an impossible bound")
        nsq = pub.nsquare
        values = []
        for i in range(count):
            v = int.from_bytes(payload[i * width : (i + 1) * width], "big")
            if not 0 < v < nsq or gmpy2.gcd(v, pub.n) != 1:
                # a non-unit (c ≡ 0 mod p or q) decrypts to a value that factors n
                raise CiphertextFormatError(f"paillier: ciphertext {i} is not in Z*_(n^2)")
            values.append(gmpy2.mpz(v))
        return PaillierCiphertext(
            values=values,
            length=length,
            public=pub,
            scale_bits=scale_bits,
            summands=summands,
            bound=bound,
            obfuscated=False,  # we cannot know how the sender produced it: re-randomize if forwarded
            ops=self,
        )

    def wire_size(self, ct: Ciphertext) -> int:
        """Exact size of ``serialize(ct)`` without paying for re-randomization."""
        c = self._check_ct(ct)
        return 40 + _CT_STRUCT.size + 2 + len(_int_bytes(c.bound)) + len(c.values) * c.public.ciphertext_bytes


def _slot_bound(layout: SlotLayout, length: int) -> int:
    """Public bound on one (unmasked) packed plaintext of ``length`` values in ``layout``: every
    slot at most ``slot_max(1) = 2 offset``, i.e. ``2 offset Σ_{j<k} 2**(j b)``. Exact, so that
    ``summands <= layout.max_summands`` such bounds add up to below ``2**(k b)`` (each slot
    ``<= slot_max(summands) < 2**b``), which :meth:`PaillierBackend.slot_layout_for` keeps below ``n / 3``."""
    k, b = min(length, layout.slots), layout.slot_bits
    return layout.slot_max(1) * (((1 << (k * b)) - 1) // ((1 << b) - 1))


def unpack_slots(
    layout: SlotLayout, plaintexts: Sequence[int], masks: Sequence[int], *, modulus: int, length: int, summands: int
) -> np.ndarray:
    """The inverse of :meth:`PaillierBackend.pack_slots` after ``summands`` packed vectors were
    added (the packed one and ``summands - 1`` from :meth:`PaillierBackend.encrypt_slots`):
    each decrypted plaintext ``P`` (in ``[0, modulus)``, ``modulus`` the key's ``n``) minus its
    mask mod ``n``, unpacked to ``length`` signed slot sums and decoded at ``layout.precision``.
    Exact: no rounding besides the encoding's. The unmasked value must fit the public layout
    (every slot within ``summands`` sums, nothing above the last slot): a sum below ``n`` never
    wraps, so a value that does not fit was not formed as the protocol says (a false bound, a
    wrong ciphertext, count or key).

    Raises:
        EncodingOverflowError: a plaintext is not in ``[0, modulus)``, or does not hold
            ``summands`` sums in the layout once unmasked (never a silently wrapped value).
    """
    if len(plaintexts) != len(masks) or len(plaintexts) != layout.plaintexts_for(length):
        raise EncodingOverflowError(
            f"packing: {len(plaintexts)} plaintexts and {len(masks)} masks for {length} values in slots of {layout.slots}"
        )
    if any(not 0 <= int(p) < modulus for p in plaintexts):
        raise EncodingOverflowError("packing: a plaintext is not in [0, n) (another key?)")
    values = [(int(p) - int(r)) % modulus for p, r in zip(plaintexts, masks)]
    return decode_fixed(unpack(values, layout=layout, length=length, summands=summands), scale_bits=layout.precision)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
