"""The ``ckks`` backend: approximate HE on real vectors with TenSEAL (Microsoft SEAL).

Scheme: CKKS (Cheon, Kim, Kim, Song, "Homomorphic Encryption for Arithmetic of Approximate
Numbers", ASIACRYPT 2017), RNS variant as implemented by SEAL. A ciphertext holds
``poly_modulus_degree / 2`` slots; fedsilo's :class:`CKKSCiphertext` holds a *list* of TenSEAL
``CKKSVector`` chunks so vectors of any length work transparently. Every chunk is encrypted
full-width (zero padding costs nothing: a ciphertext has the same size however many slots are
used) so slot-wide rotations in ``matmul_plain`` sum exactly the real values.

Parameters are sized to the circuit, not copied from a tutorial (docs/crypto.md has the table):

========== ====== ================== ===== ====== =============================================
profile    N      coeff_mod_bit_sizes scale depth  operations
========== ====== ================== ===== ====== =============================================
aggregate  4096   [60, 49]           2^40  0      add, add_plain, sum (no rescaling needed)
mul        8192   [60, 40, 60]       2^40  1      + mul_plain (scalar / vector)
matmul     8192   [60, 40, 40, 60]   2^40  2      + matmul_plain, matmul_repeated (Galois keys)
========== ====== ================== ===== ====== =============================================

All sit within the 128-bit security bounds of the HE standard (total modulus <= 109 bits for
N = 4096, <= 218 bits for N = 8192); custom parameters are checked against that table.
Galois keys (rotations; ~34 MB in the public context instead of ~0.2-2 MB) are generated only
when ``galois=True`` (default: only for the ``matmul`` profile).

Magnitudes: a CKKS slot wraps around silently once ``|value| * 2**scale`` approaches the last
prime, so every ciphertext carries an upper bound on its magnitudes and operations that could
exceed ``capacity = 2**(q0_bits - scale_bits - 2)`` raise EncodingOverflowError instead.

Slots past a matmul result's length hold uniform junk from the OS CSPRNG, not the data's
residue that masking leaves there (a key holder decrypts every slot), and the packed layout of
``matmul_repeat`` depends on the public parameters only, never on the platform.

Key holders encrypt with the secret key (:meth:`CKKSBackend.encrypt_with_secret`): RLWE
secret-key encryption ``(-a s + m + e, a)`` with ``a`` expanded from a seed, which SEAL serializes
as ``c0`` plus the seed: half the bytes, about 2x faster than public-key encryption, and an
ordinary ciphertext to every receiver (TenSEAL's loader expands the seed; it adds to public-key
ciphertexts). TenSEAL's own tensors never produce the seeded form (``TenSEALContext::encrypt``
writes a full ciphertext), so fedsilo encrypts these through SEAL's API as TenSEAL ships it
(``tenseal.sealapi``), whose objects are saved and loaded by path only: an anonymous in-memory
file (Linux ``memfd``) carries them, never a file system. Where that is unavailable, public-key
encryption is used instead (same ciphertexts, only slower and larger).
"""
from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np

try:
    import tenseal as ts
    from tenseal import sealapi
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(f"fedsilo's ckks backend needs TenSEAL (`pip install tenseal`): {exc}") from exc

# TenSEAL's Python tensor wrappers turn every input list into a numpy array, a PlainTensor and
# back into a list before the C++ constructor sees it (~0.35 ms of a 1.2 ms encryption at
# N = 4096). fedsilo builds the C++ objects directly and wraps them the documented way
# (``ts.CKKSVector(data=...)``); every operation afterwards goes through the wrapper.
_NativeVector = ts._ts_cpp.CKKSVector

from fedsilo.crypto.base import (
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
    as_repeated_terms,
    as_vector,
    broadcast_vector,
    fingerprint_of,
)
from fedsilo.crypto.secagg import secret_stream
from fedsilo.errors import (
    CiphertextFormatError,
    ConfigError,
    CryptoError,
    EncodingOverflowError,
    KeyMismatchError,
    UnsupportedOperationError,
    did_you_mean,
)

__all__ = ["CKKSBackend", "CKKSCiphertext", "CKKSParams", "CKKSPublic", "CKKSSecret", "PROFILES"]

#: Largest total coefficient modulus (bits) for 128-bit classical security with a ternary
#: secret: HomomorphicEncryption.org security standard (Albrecht et al., 2018), table 1, as
#: enforced by SEAL's ``CoeffModulus::MaxBitCount``.
MAX_COEFF_BITS_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}

#: Named parameter sets (see the module docstring and docs/crypto.md).
PROFILES: dict[str, dict[str, Any]] = {
    "aggregate": {"poly_modulus_degree": 4096, "coeff_mod_bit_sizes": (60, 49), "scale_bits": 40},
    "mul": {"poly_modulus_degree": 8192, "coeff_mod_bit_sizes": (60, 40, 60), "scale_bits": 40},
    "matmul": {"poly_modulus_degree": 8192, "coeff_mod_bit_sizes": (60, 40, 40, 60), "scale_bits": 40},
}

#: Documented absolute error per fresh value (|x| <= 1) or sum of a few. Measured maxima
#: (docs/crypto.md): fresh ~9e-9, sum of 10 ~3e-8, product ~1e-8 (with the rescale-prime
#: correction below; 1.3e-7 * |x f| without it). The rotations of matmul_plain add up to ~2e-6
#: absolute whatever the inputs, so contexts with Galois keys document 1e-5. Each bound keeps a
#: >= 3x margin over the measured maxima. A matmul's error also grows with the input's L1 norm
#: (the matrix's encoding error times |v|): CKKSBackend.matmul_error_bound.
_ERROR_BOUND = {False: 1e-7, True: 1e-5}


def error_bound_for(params: "CKKSParams") -> float:
    """``info().error_bound`` for a parameter set: CKKS noise is absolute and inversely
    proportional to the scale, and grows about linearly with N.

    ``_ERROR_BOUND[galois] * max(1, N / 8192) * 2**(40 - scale_bits)``, not shrunk for
    ``scale_bits > 40`` (conservative). The measured maxima (docs/crypto.md, "Error bound and
    scale") are a sum of 10 at about ``4 N 2**-scale_bits`` (e.g. 1.6e-2 at N=4096 and
    scale_bits=20; 7.5e-4 at N=8192 and 25) and a matmul at 1.0e-3 for scale_bits=30: every
    bound keeps a >= 3x margin. At the built-in profiles (scale 2^40, N <= 8192) this is the
    documented 1e-7 (1e-5 with Galois keys).
    """
    factor = max(1.0, params.poly_modulus_degree / 8192) * math.ldexp(1.0, max(0, 40 - params.scale_bits))
    return _ERROR_BOUND[params.galois] * factor

_WIRE_VERSION = 1
_CT_STRUCT = struct.Struct(">BQBdI")  # version, length, depth_used, bound, n_chunks
_LEN = struct.Struct(">Q")


@dataclass(frozen=True, slots=True)
class CKKSParams:
    """Validated CKKS parameters; all public, all part of the public context's fingerprint."""

    profile: str
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int
    galois: bool
    value_bound: float

    @property
    def depth(self) -> int:
        """Multiplicative depth: rescalings available (middle primes)."""
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def capacity(self) -> float:
        """Largest safe |value| at any level: ``2**(q0_bits - scale_bits - 2)``."""
        return math.ldexp(1.0, self.coeff_mod_bit_sizes[0] - self.scale_bits - 2)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "v": _WIRE_VERSION,
                "profile": self.profile,
                "poly_modulus_degree": self.poly_modulus_degree,
                "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes),
                "scale_bits": self.scale_bits,
                "galois": self.galois,
                "value_bound": self.value_bound,
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "CKKSParams":
        try:
            d = json.loads(raw.decode("utf-8"))
            if d.pop("v") != _WIRE_VERSION:
                raise ValueError("version")
            return cls(
                profile=str(d["profile"]),
                poly_modulus_degree=int(d["poly_modulus_degree"]),
                coeff_mod_bit_sizes=tuple(int(b) for b in d["coeff_mod_bit_sizes"]),
                scale_bits=int(d["scale_bits"]),
                galois=bool(d["galois"]),
                value_bound=float(d["value_bound"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            raise CiphertextFormatError(f"ckks: corrupt parameter block ({exc})") from exc


def _validate_params(
    *,
    profile: str,
    poly_modulus_degree: Any,
    coeff_mod_bit_sizes: Any,
    scale_bits: Any,
    galois: Any,
    value_bound: Any,
) -> CKKSParams:
    """Check a parameter set against SEAL's rules and the 128-bit table; ConfigError names the key."""
    if profile not in PROFILES:
        hint = did_you_mean(profile, PROFILES)
        raise ConfigError(f"ckks: unknown profile {profile!r}{hint} (profiles: {', '.join(PROFILES)})")
    base = PROFILES[profile]
    n = base["poly_modulus_degree"] if poly_modulus_degree is None else poly_modulus_degree
    coeffs = base["coeff_mod_bit_sizes"] if coeff_mod_bit_sizes is None else coeff_mod_bit_sizes
    scale = base["scale_bits"] if scale_bits is None else scale_bits
    if not _is_int(n) or n not in MAX_COEFF_BITS_128 or n < 2048:
        raise ConfigError(f"ckks: poly_modulus_degree must be one of 2048..32768 (power of two), got {n!r}")
    if isinstance(coeffs, (str, bytes)) or not isinstance(coeffs, Sequence) or not all(_is_int(b) for b in coeffs):
        raise ConfigError(f"ckks: coeff_mod_bit_sizes must be a list of integers, got {coeff_mod_bit_sizes!r}")
    coeffs = tuple(int(b) for b in coeffs)
    if len(coeffs) < 2:
        raise ConfigError("ckks: coeff_mod_bit_sizes needs at least 2 primes (data prime(s) + special prime)")
    min_bits = (2 * n).bit_length() + 1  # primes must be 1 mod 2N
    if any(not min_bits <= b <= 60 for b in coeffs):
        raise ConfigError(f"ckks: every coeff_mod_bit_sizes entry must be in [{min_bits}, 60] for N={n}, got {list(coeffs)}")
    if sum(coeffs) > MAX_COEFF_BITS_128[n]:
        raise ConfigError(
            f"ckks: coeff_mod_bit_sizes {list(coeffs)} total {sum(coeffs)} bits; N={n} allows at most "
            f"{MAX_COEFF_BITS_128[n]} bits at 128-bit security (raise poly_modulus_degree or drop primes)"
        )
    if not _is_int(scale) or not 20 <= scale <= 60:
        raise ConfigError(f"ckks: scale_bits must be an integer in [20, 60], got {scale!r}")
    middle = coeffs[1:-1]
    if any(b != scale for b in middle):
        # TenSEAL resets the scale to 2**scale_bits after each rescale: primes of another size
        # would silently scale the result by 2**(b - scale_bits).
        raise ConfigError(
            f"ckks: middle coeff_mod_bit_sizes {list(middle)} must equal scale_bits={scale} (one rescale per prime)"
        )
    if coeffs[0] - scale - 2 < 1:
        raise ConfigError(f"ckks: first prime ({coeffs[0]} bits) leaves no room above scale_bits={scale}")
    if galois is None:
        galois = profile == "matmul"
    if not isinstance(galois, bool):
        raise ConfigError(f"ckks: galois must be true or false, got {galois!r}")
    depth = len(coeffs) - 2
    if galois and depth < 2:
        raise ConfigError("ckks: galois=True is only useful for matmul_plain, which needs depth 2 (profile='matmul')")
    if galois and coeffs[-1] < max(coeffs[:-1]):
        raise ConfigError("ckks: with galois keys the special (last) prime must be the largest (key-switching noise)")
    capacity = math.ldexp(1.0, coeffs[0] - scale - 2)
    if value_bound is None:
        value_bound = capacity / 64  # headroom for 64 summands by default
    if isinstance(value_bound, bool) or not isinstance(value_bound, (int, float)) or not (
        math.isfinite(value_bound) and 0 < value_bound <= capacity
    ):
        raise ConfigError(
            f"ckks: value_bound must be a positive number <= capacity {capacity:g} for these primes, got {value_bound!r}"
        )
    return CKKSParams(str(profile), int(n), coeffs, int(scale), galois, float(value_bound))


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def seal_primes(*, poly_modulus_degree: int, coeff_mod_bit_sizes: Sequence[int]) -> list[int]:
    """The primes SEAL's ``CoeffModulus::Create(N, bit_sizes)`` picks, in chain order.

    For each bit size b: the largest primes below ``2**b`` that are ``1 mod 2N`` (so the NTT
    exists), found downwards in steps of 2N; then, for each entry of ``bit_sizes`` in order, the
    *smallest* remaining prime of that size (SEAL pops from the back of the descending list).
    """
    from collections import Counter

    import gmpy2

    step = 2 * poly_modulus_degree
    table: dict[int, list[int]] = {}
    for bits, count in Counter(coeff_mod_bit_sizes).items():
        found, value, low = [], (1 << bits) - step + 1, 1 << (bits - 1)
        while len(found) < count and value > low:
            if gmpy2.is_prime(value):
                found.append(value)
            value -= step
        table[bits] = found
    return [table[bits].pop() for bits in coeff_mod_bit_sizes]


def _primes_match_context(ctx: Any, data_primes: Sequence[int]) -> bool:
    """Check derived primes against the context: TenSEAL exposes the low 64-bit limb of each
    level's modulus product, which pins the primes down (each is < 2**64 and odd)."""
    try:
        level = ctx.seal_context().data.first_context_data()
        k = len(data_primes)
        while level is not None:
            product = 1
            for q in data_primes[:k]:
                product *= q
            if level.total_coeff_modulus() != product % 2**64:
                return False
            level, k = level.next_context_data(), k - 1
        return k == 0
    except Exception:
        return False


# --------------------------------------------------------------------------------------------
# Seeded secret-key encryption (SEAL through tenseal.sealapi)
# --------------------------------------------------------------------------------------------
def _varint(value: int) -> bytes:
    """Protocol-buffers base-128 varint of a non-negative integer."""
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def _vector_proto(ciphertext: bytes, *, size: int, scale: float) -> bytes:
    """TenSEAL's ``CKKSVectorProto`` (tenseal/proto/tensors.proto) for one SEAL ciphertext.

    Fields: 1 ``sizes`` (packed uint32), 2 ``ciphertexts`` (bytes), 3 ``scale`` (double,
    little-endian): what ``CKKSVector::save_proto`` writes, so ``ts.ckks_vector_from`` loads it
    and SEAL's ``Ciphertext::load`` expands a seeded ciphertext on the way.
    """
    sizes = _varint(size)
    return b"".join(
        [b"\x0a", _varint(len(sizes)), sizes, b"\x12", _varint(len(ciphertext)), ciphertext, b"\x19", struct.pack("<d", scale)]
    )


def _fold_available() -> bool:
    """Whether :meth:`CKKSBackend.matmul_repeated`'s fast path can run here: it moves
    ciphertexts between SEAL and TenSEAL through a Linux ``memfd`` (as seeded encryption does)."""
    return hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")


class _MemFile:
    """An anonymous in-memory file (Linux ``memfd``) with a path, for SEAL objects that
    ``tenseal.sealapi`` saves and loads by path only. It has no name in any file system, is not
    inherited by child processes, and is gone when closed."""

    def __init__(self, name: str) -> None:
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        self.path = f"/proc/self/fd/{self.fd}"

    def read(self) -> bytes:
        return os.pread(self.fd, os.fstat(self.fd).st_size, 0)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


class _SeededEncryptor:
    """Secret-key CKKS encryption whose ciphertexts serialize in SEAL's seeded form.

    SEAL's ``Encryptor::encrypt_symmetric(plain)`` returns a ``Serializable<Ciphertext>`` that
    stores ``c0`` and the PRNG seed of ``c1 = a`` (Microsoft SEAL, native/examples/
    7_serialization.cpp): 16 instead of 32 bytes per value at N = 4096. The SEAL context is
    rebuilt from the parameters and must have TenSEAL's parameter id; the construction ends with
    a probe (encrypt here, load through TenSEAL's public context, decrypt) so a mismatch in any
    step is found before the first real value is encrypted.
    """

    def __init__(self, params: CKKSParams, private_ctx: Any, public_ctx: Any) -> None:
        sa = sealapi
        n, bits = params.poly_modulus_degree, list(params.coeff_mod_bit_sizes)
        parms = sa.EncryptionParameters(sa.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(n)
        parms.set_coeff_modulus(sa.CoeffModulus.Create(n, bits))
        self._context = sa.SEALContext(parms, True, sa.SEC_LEVEL_TYPE.TC128)
        if list(self._context.key_parms_id()) != list(private_ctx.seal_context().data.key_parms_id()):
            raise RuntimeError("SEAL's context for these parameters differs from TenSEAL's")
        key = sa.SecretKey()
        with _MemFile("fedsilo-ckks-key") as f:  # the secret key only passes through memory
            private_ctx.secret_key().data.save(f.path)
            key.load(self._context, f.path)
        self._encryptor = sa.Encryptor(self._context, key)
        self._encoder = sa.CKKSEncoder(self._context)
        self._scale = math.ldexp(1.0, params.scale_bits)
        self._slots = params.slots
        probe = [0.5, -0.25] + [0.0] * (self._slots - 2)
        loaded = ts.CKKSVector(data=_NativeVector(public_ctx.data, self.encrypt([probe])[0]))
        got = loaded.decrypt(private_ctx.secret_key())
        if loaded.size() != self._slots or abs(got[0] - 0.5) > 1e-3 or abs(got[1] + 0.25) > 1e-3:
            raise RuntimeError("a seeded probe ciphertext did not decrypt through TenSEAL")

    def encrypt(self, rows: Sequence[list[float]]) -> list[bytes]:
        """One ``CKKSVectorProto`` (see :func:`_vector_proto`) per full-width row of floats."""
        sa = sealapi
        out = []
        with _MemFile("fedsilo-ckks-ct") as f:  # one per call: callers may share a key across threads
            for row in rows:
                plain = sa.Plaintext()
                self._encoder.encode(row, self._scale, plain)
                self._encryptor.encrypt_symmetric(plain).save(f.path)  # truncates, writes, closes
                out.append(_vector_proto(f.read(), size=self._slots, scale=self._scale))
        return out


# --------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------
class CKKSPublic(PublicContext):
    """A TenSEAL context without secret key (public key, optional Galois keys) + parameters."""

    backend: ClassVar[str] = "ckks"

    def __init__(self, params: CKKSParams, ctx_bytes: bytes, ctx: Any, fingerprint: str) -> None:
        self.params = params
        self._ctx_bytes = ctx_bytes
        self.context = ctx
        self._fp = fingerprint

    @property
    def fingerprint(self) -> str:
        return self._fp

    def serialize(self) -> bytes:
        block = self.params.to_json()
        return b"".join(
            [CryptoBackend._header(b"PUBK", self._fp), len(block).to_bytes(2, "big"), block, self._ctx_bytes]
        )

    def is_private(self) -> bool:
        return bool(self.context.is_private())


class CKKSSecret(SecretKey):
    """Holds a private TenSEAL context. ``public()`` gives a separate public context object."""

    backend: ClassVar[str] = "ckks"

    def __init__(self, params: CKKSParams, private_ctx: Any, public_bytes: bytes) -> None:
        self.params = params
        self._ctx = private_ctx
        self._public_bytes = public_bytes
        self._fp = _fingerprint(params, public_bytes)
        self._public_ctx: Any = None
        self._seeded: _SeededEncryptor | None = None
        #: why :meth:`CKKSBackend.encrypt_with_secret` falls back to public-key encryption with
        #: this key ("" while seeded secret-key encryption works, or before its first use)
        self.fallback_reason = ""

    @property
    def fingerprint(self) -> str:
        return self._fp

    def public(self) -> CKKSPublic:
        if self._public_ctx is None:
            # Built from the public bytes, never by making the private context public in place.
            self._public_ctx = ts.context_from(self._public_bytes)
        return CKKSPublic(self.params, self._public_bytes, self._public_ctx, self._fp)

    @property
    def seeded_encryption(self) -> bool:
        """Whether ``encrypt_with_secret`` encrypts with this key (seeded, secret-key) rather
        than falling back to public-key encryption (:attr:`fallback_reason` says why)."""
        return self._seeded_encryptor() is not None

    def _seeded_encryptor(self) -> _SeededEncryptor | None:
        """Built on first use (a probe encryption proves it); None when it cannot work here."""
        if self._seeded is None and not self.fallback_reason:
            try:
                self._seeded = _SeededEncryptor(self.params, self._ctx, self.public().context)
            except (AttributeError, OSError, RuntimeError, ValueError, TypeError) as exc:
                # e.g. no os.memfd_create (not Linux) or no /proc: slower, never wrong
                self.fallback_reason = f"{type(exc).__name__}: {exc}"
        return self._seeded

    def secret_key(self) -> Any:
        return self._ctx.secret_key()

    def export_secret(self) -> bytes:
        block = self.params.to_json()
        private = self._ctx.serialize(
            save_public_key=False, save_secret_key=True, save_galois_keys=False, save_relin_keys=False
        )
        return b"".join(
            [
                CryptoBackend._header(b"SECK", self._fp),
                len(block).to_bytes(2, "big"),
                block,
                _LEN.pack(len(self._public_bytes)),
                self._public_bytes,
                private,
            ]
        )

    def __reduce__(self) -> Any:
        raise TypeError("CKKSSecret cannot be pickled; use export_secret() explicitly")


def _log2_ceil(value: float) -> int:
    """``ceil(log2(value))`` for value > 0: the only form in which a bound is ever shown."""
    return math.ceil(math.log2(value)) if value > 0 else 0


def _fingerprint(params: CKKSParams, public_bytes: bytes) -> str:
    return fingerprint_of("ckks", params.to_json(), public_bytes)


# --------------------------------------------------------------------------------------------
# Ciphertexts
# --------------------------------------------------------------------------------------------
class CKKSCiphertext(Ciphertext):
    """``length`` values in ``ceil(length / slots)`` full-width TenSEAL CKKSVectors.

    ``depth_used``: rescalings consumed; ``bound``: upper bound on |values| (public-derived
    for sums, from the factor's magnitude after products; on the wire rounded up to a power of
    two); ``plain_operand``: a plaintext went into it (``add_plain``, ``mul_plain``,
    ``matmul_plain``) since it was encrypted or received, so ``serialize`` re-randomizes it.

    A ciphertext from ``encrypt_with_secret`` starts as its wire form only (``blobs``: seeded
    TenSEAL vector protos, which ``serialize`` sends as they are); ``chunks`` loads them on
    first use.
    """

    backend: ClassVar[str] = "ckks"

    def __init__(
        self,
        *,
        chunks: list[Any] | None = None,
        blobs: list[bytes] | None = None,
        length: int,
        public: CKKSPublic,
        depth_used: int,
        bound: float,
        plain_operand: bool,
        ops: "CKKSBackend",
    ) -> None:
        if (chunks is None) == (blobs is None):
            raise TypeError("CKKSCiphertext needs exactly one of chunks and blobs")
        self._chunks = chunks
        self.blobs = blobs
        self.length = length
        self.public = public
        self.fingerprint = public.fingerprint
        self.depth_used = depth_used
        self.bound = bound
        self.plain_operand = plain_operand
        self._ops = ops

    @property
    def chunks(self) -> list[Any]:
        """The TenSEAL vectors (loaded from ``blobs`` on first use)."""
        if self._chunks is None:
            assert self.blobs is not None
            ctx = self.public.context.data
            self._chunks = [ts.CKKSVector(data=_NativeVector(ctx, raw)) for raw in self.blobs]
        return self._chunks


# --------------------------------------------------------------------------------------------
# The backend
# --------------------------------------------------------------------------------------------
class CKKSBackend(CryptoBackend):
    """CKKS through TenSEAL with parameters sized to the circuit.

    Parameters (keyword-only; ConfigError names a bad one):

    profile
        ``"aggregate"`` (default; additions only), ``"mul"`` (depth 1) or ``"matmul"`` (depth 2
        and Galois keys). See :data:`PROFILES`.
    poly_modulus_degree, coeff_mod_bit_sizes, scale_bits
        Override the profile's values; checked against the 128-bit security table.
    galois
        Generate Galois (rotation) keys, needed by ``matmul_plain`` only. Default: True for the
        ``matmul`` profile, False otherwise.
    value_bound
        Inputs and plaintext addends must satisfy ``|x| <= value_bound`` (default: capacity / 64,
        i.e. 4096 for the built-in profiles, leaving headroom for 64 summands).
    """

    name: ClassVar[str] = "ckks"
    exact: ClassVar[bool] = False
    _BYTES_PER_VALUE: ClassVar[dict[tuple[int, tuple[int, ...]], float]] = {}

    def __init__(
        self,
        *,
        profile: str = "aggregate",
        poly_modulus_degree: int | None = None,
        coeff_mod_bit_sizes: Sequence[int] | None = None,
        scale_bits: int | None = None,
        galois: bool | None = None,
        value_bound: float | None = None,
    ) -> None:
        self.p = _validate_params(
            profile=profile,
            poly_modulus_degree=poly_modulus_degree,
            coeff_mod_bit_sizes=coeff_mod_bit_sizes,
            scale_bits=scale_bits,
            galois=galois,
            value_bound=value_bound,
        )
        self._rescale_ratios: tuple[float, ...] | None = None

    # --- capabilities -----------------------------------------------------------------------
    @classmethod
    def capabilities(cls) -> Capabilities:
        """Approximate sums; matmul with the ``matmul`` profile; always packed (not optional)."""
        return Capabilities(exact_sums=False, plaintext_matmul=True, packing=None)

    @classmethod
    def defaults_for(cls, use: Use, *, summands: int) -> dict[str, Any]:
        """``matmul``: the depth-2 ``matmul`` profile (with Galois keys) for ciphertext x matrix;
        ``benchmark``: ``value_bound = 1`` (values in [-1, 1]); otherwise the defaults."""
        if use == "matmul":
            return {"profile": "matmul"}
        if use == "benchmark":
            return {"value_bound": 1.0}
        return {}

    # --- description ------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        p = self.p
        return {
            "profile": p.profile,
            "poly_modulus_degree": p.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(p.coeff_mod_bit_sizes),
            "scale_bits": p.scale_bits,
            "galois": p.galois,
            "value_bound": p.value_bound,
        }

    def _bytes_per_value(self) -> float:
        """Measured once per (N, primes): wire bytes of a fresh full ciphertext / slots."""
        key = (self.p.poly_modulus_degree, self.p.coeff_mod_bit_sizes)
        if key not in self._BYTES_PER_VALUE:
            ctx = self._new_context(galois=False)
            size = len(ts.ckks_vector(ctx, [0.0] * self.p.slots).serialize())
            self._BYTES_PER_VALUE[key] = size / self.p.slots
        return self._BYTES_PER_VALUE[key]

    def confidentiality(self) -> Confidentiality:
        """Always secure: every parameter set is checked against the 128-bit table on
        construction (:data:`MAX_COEFF_BITS_128`), so a weaker one never gets this far."""
        return Confidentiality(True, 128)

    def info(self) -> BackendInfo:
        p = self.p
        supports = ["add", "add_plain", "sum"]
        if p.depth >= 1:
            supports += ["mul_scalar", "mul_vector"]
        if p.galois and p.depth >= 2:
            supports.append("matmul")
        return BackendInfo(
            name=self.name,
            exact=False,
            secure=self.confidentiality().secure,
            values_per_ciphertext=p.slots,
            bytes_per_value=self._bytes_per_value(),
            error_bound=error_bound_for(p),
            supports=tuple(supports),
            value_bound=p.value_bound,
            description=(
                f"CKKS (TenSEAL) profile {p.profile}: N={p.poly_modulus_degree}, primes "
                f"{list(p.coeff_mod_bit_sizes)}, scale 2^{p.scale_bits}, depth {p.depth}, 128-bit security, "
                f"|x| <= {p.value_bound:g}{', Galois keys' if p.galois else ''}"
            ),
        )

    # --- keys -------------------------------------------------------------------------------
    def _new_context(self, *, galois: bool) -> Any:
        p = self.p
        ctx = ts.context(
            ts.SCHEME_TYPE.CKKS,
            poly_modulus_degree=p.poly_modulus_degree,
            coeff_mod_bit_sizes=list(p.coeff_mod_bit_sizes),
        )
        ctx.global_scale = 2.0**p.scale_bits
        if galois:
            ctx.generate_galois_keys()
        return ctx

    def keygen(self) -> CKKSSecret:
        ctx = self._new_context(galois=self.p.galois)
        # Relinearization keys are only for ct x ct products, which fedsilo never does.
        public_bytes = ctx.serialize(
            save_public_key=True, save_secret_key=False, save_galois_keys=self.p.galois, save_relin_keys=False
        )
        return CKKSSecret(self.p, ctx, public_bytes)

    def _parse_params(self, body: bytes, what: str) -> tuple[CKKSParams, bytes]:
        if len(body) < 2:
            raise CiphertextFormatError(f"ckks: truncated {what}")
        size = int.from_bytes(body[:2], "big")
        raw = body[2 : 2 + size]
        if len(raw) != size:
            raise CiphertextFormatError(f"ckks: truncated {what}")
        params = CKKSParams.from_json(raw)
        if params != self.p:
            raise ConfigError(
                f"ckks: the {what} was made with {params.to_json().decode()} but this backend has "
                f"{self.p.to_json().decode()}; use the federation's parameters"
            )
        return params, body[2 + size :]

    def _load_context(self, raw: bytes, what: str) -> Any:
        try:
            ctx = ts.context_from(raw)
        except Exception as exc:  # TenSEAL raises ValueError / RuntimeError for bad streams
            raise CiphertextFormatError(f"ckks: {what} does not parse ({exc})") from exc
        try:
            parms = ctx.seal_context().data.key_context_data().parms()
            n = parms.poly_modulus_degree()
            total = ctx.seal_context().data.key_context_data().total_coeff_modulus_bit_count()
        except Exception as exc:
            raise CiphertextFormatError(f"ckks: {what} is not a CKKS context ({exc})") from exc
        if n != self.p.poly_modulus_degree or total != sum(self.p.coeff_mod_bit_sizes):
            raise CiphertextFormatError(f"ckks: {what} parameters differ from its parameter block")
        # N and the total bits are not enough: primes [49, 60] under a block saying [60, 49]
        # would make every capacity check wrong (sums wrap silently). Compare the whole chain.
        if not self._chain_matches(ctx):
            raise CiphertextFormatError(
                f"ckks: {what} has another prime chain than its parameter block "
                f"{list(self.p.coeff_mod_bit_sizes)} (same N and total bits, different primes or order)"
            )
        return ctx

    def _chain_matches(self, ctx: Any) -> bool:
        """The context's full coefficient-modulus chain is the one SEAL derives from the block."""
        p = self.p
        primes = seal_primes(poly_modulus_degree=p.poly_modulus_degree, coeff_mod_bit_sizes=p.coeff_mod_bit_sizes)
        try:
            key_level = ctx.seal_context().data.key_context_data()
            product = 1
            for q in primes:
                product *= q
            if key_level.total_coeff_modulus() != product % 2**64:
                return False
        except Exception:
            return False
        return _primes_match_context(ctx, primes[:-1])

    def load_public(self, data: bytes) -> CKKSPublic:
        fp, body = self._split_header(data, kind=b"PUBK", backend=self.name)
        params, ctx_bytes = self._parse_params(body, "public context")
        if _fingerprint(params, ctx_bytes) != fp:
            raise CiphertextFormatError("ckks: public context is corrupt (fingerprint does not match its body)")
        ctx = self._load_context(ctx_bytes, "public context")
        if ctx.is_private():
            raise CiphertextFormatError(
                "ckks: the 'public' context contains a secret key; refusing it (the sender leaked its key)"
            )
        if params.galois and not ctx.has_galois_keys():
            raise CiphertextFormatError("ckks: public context lacks the Galois keys its parameters promise")
        return CKKSPublic(params, ctx_bytes, ctx, fp)

    def load_secret(self, data: bytes) -> CKKSSecret:
        fp, body = self._split_header(data, kind=b"SECK", backend=self.name)
        params, rest = self._parse_params(body, "secret key")
        try:
            (pub_len,) = _LEN.unpack_from(rest)
        except struct.error as exc:
            raise CiphertextFormatError("ckks: truncated secret key") from exc
        public_bytes = rest[_LEN.size : _LEN.size + pub_len]
        private_bytes = rest[_LEN.size + pub_len :]
        if len(public_bytes) != pub_len or _fingerprint(params, public_bytes) != fp:
            raise CiphertextFormatError("ckks: secret key file is corrupt (fingerprint does not match)")
        ctx = self._load_context(private_bytes, "secret key")
        if not ctx.is_private():
            raise CiphertextFormatError("ckks: secret key file holds no secret key")
        secret = CKKSSecret(params, ctx, public_bytes)
        # The public half must belong to this secret: one encrypt/decrypt round trip proves it.
        probe = ts.ckks_vector(secret.public().context, [0.5])
        if abs(probe.decrypt(secret.secret_key())[0] - 0.5) > 1e-3:
            raise KeyMismatchError("ckks: the secret key does not match the public context stored with it")
        return secret

    # --- helpers ----------------------------------------------------------------------------
    def _check_public(self, public: Any) -> CKKSPublic:
        self._check_kind(public, CKKSPublic, "the public context")
        if public.params != self.p:
            raise ConfigError("ckks: public context parameters differ from this backend's")
        return public

    def _check_ct(self, ct: Any, what: str = "the ciphertext") -> CKKSCiphertext:
        self._check_kind(ct, CKKSCiphertext, what)
        if ct.public.params != self.p:
            raise KeyMismatchError(f"ckks: {what} was made under other CKKS parameters than this backend's")
        return ct

    def _check_capacity(self, bound: float, op: str) -> None:
        """Refuse an operation whose result bound exceeds the capacity.

        The message shows only powers of two (as on the wire): a bound after ``mul_plain`` /
        ``matmul_plain`` is derived from a private factor's peak or column norm, which must not
        reach a log line or traceback (house rule 6).
        """
        if bound > self.p.capacity:
            raise EncodingOverflowError(
                f"ckks: {op} could reach |value| up to 2^{_log2_ceil(bound)} > capacity "
                f"2^{_log2_ceil(self.p.capacity)} (2^(first prime - scale - 2)); CKKS would wrap silently, "
                f"so this is refused (lower the operands' magnitudes or value_bound)"
            )

    def _check_depth(self, ct: CKKSCiphertext, needed: int, op: str) -> None:
        if ct.depth_used + needed > self.p.depth:
            raise UnsupportedOperationError(
                f"ckks: {op} needs {needed} more rescaling level(s) but profile {self.p.profile!r} has depth "
                f"{self.p.depth} and {ct.depth_used} are used; use profile='mul' (depth 1) or 'matmul' (depth 2)"
            )

    def _padded_chunks(self, values: np.ndarray) -> list[list[float]]:
        """Full-width rows of ``slots`` floats (zero-padded), converted to lists in one call."""
        s = self.p.slots
        rows = -(-values.shape[0] // s)
        padded = np.zeros(rows * s)
        padded[: values.shape[0]] = values
        return padded.reshape(rows, s).tolist()

    def _wrap(self, ct: CKKSCiphertext, chunks: list[Any], *, plain_operand: bool, **changes: Any) -> CKKSCiphertext:
        fields = dict(
            chunks=chunks,
            length=ct.length,
            public=ct.public,
            depth_used=ct.depth_used,
            bound=ct.bound,
            plain_operand=plain_operand,
            ops=self,
        )
        fields.update(changes)
        return CKKSCiphertext(**fields)

    def _rescale_ratio(self, public: CKKSPublic, depth_used: int) -> float:
        """``q / 2**scale_bits`` for the prime the next rescale drops.

        TenSEAL divides by that prime but then *declares* the scale to be ``2**scale_bits``
        again, so every product would come out multiplied by ``2**scale_bits / q`` (a relative
        error of 1.3e-7 and 6.7e-7 for the two 40-bit primes of the ``matmul`` profile).
        Multiplying the plaintext factor by this ratio cancels that. Falls back to 1.0 if the
        primes derived from SEAL's rule do not match the context.
        """
        if self._rescale_ratios is None:
            p = self.p
            primes = seal_primes(poly_modulus_degree=p.poly_modulus_degree, coeff_mod_bit_sizes=p.coeff_mod_bit_sizes)
            data = primes[:-1]  # the last prime is the special (key-switching) prime
            if _primes_match_context(public.context, data):
                # Rescales drop the data primes from the end of the chain.
                self._rescale_ratios = tuple(q / 2.0**p.scale_bits for q in reversed(data[1:]))
            else:  # pragma: no cover - only if SEAL changes its prime selection
                self._rescale_ratios = tuple(1.0 for _ in data[1:])
        return self._rescale_ratios[depth_used]

    @staticmethod
    def _call(op: str, fn: Any, *args: Any) -> Any:
        """Run a TenSEAL operation; its ValueError / RuntimeError become a CryptoError."""
        try:
            return fn(*args)
        except (ValueError, RuntimeError, TypeError) as exc:
            raise CryptoError(f"ckks: TenSEAL refused {op}: {exc}") from exc

    # --- encryption -------------------------------------------------------------------------
    def _input_rows(self, values: Any) -> tuple[int, list[list[float]]]:
        """Check an input vector (finite, within value_bound) and cut it into full-width rows."""
        vec = as_vector(values)
        over = np.flatnonzero(np.abs(vec) > self.p.value_bound)
        if over.size:
            raise EncodingOverflowError(
                f"ckks: {over.size} value(s) exceed value_bound={self.p.value_bound:g} (first at index {int(over[0])})"
            )
        return int(vec.shape[0]), self._padded_chunks(vec)

    def encrypt(self, public: PublicContext, values: Any) -> CKKSCiphertext:
        """Public-key encryption: what any holder of the public context can do."""
        pub = self._check_public(public)
        length, rows = self._input_rows(values)
        ctx = pub.context.data
        chunks = [ts.CKKSVector(data=self._call("encrypt", _NativeVector, ctx, row)) for row in rows]
        return CKKSCiphertext(
            chunks=chunks,
            length=length,
            public=pub,
            depth_used=0,
            bound=self.p.value_bound,
            plain_operand=False,
            ops=self,
        )

    def encrypt_with_secret(self, secret: SecretKey, values: Any) -> CKKSCiphertext:
        """Encrypt as a holder of the secret key (the shared-key silos): seeded secret-key RLWE.

        The result is an ordinary ciphertext under the same key for every other party: it adds
        to public-key ciphertexts, the aggregator (public context only) sums it, any key holder
        decrypts it, and the same value bound, capacity and error bound apply (a fresh
        secret-key ciphertext carries less noise than a public-key one, ~1e-9 against ~1e-8).
        On the wire it takes half the bytes (``c0`` and a seed) and it is ~2x faster to make
        (encryption and serialization; the receiver spends ~0.1 ms per chunk expanding the seed).
        Where seeded encryption cannot run (no ``os.memfd_create``), this is :meth:`encrypt`
        under ``secret.public()``; ``secret.fallback_reason`` says why.

        Raises:
            KeyMismatchError: ``secret`` is not a CKKS secret key.
            ConfigError: its parameters are not this backend's, or the values are not a finite
                1-D vector.
            EncodingOverflowError: a value exceeds ``value_bound``.
        """
        self._check_kind(secret, CKKSSecret, "the secret key")
        if secret.params != self.p:
            raise ConfigError("ckks: secret key parameters differ from this backend's")
        pub = secret.public()
        seeded = secret._seeded_encryptor()
        if seeded is None:
            return self.encrypt(pub, values)
        length, rows = self._input_rows(values)
        return CKKSCiphertext(
            blobs=self._call("encrypt", seeded.encrypt, rows),
            length=length,
            public=pub,
            depth_used=0,
            bound=self.p.value_bound,
            plain_operand=False,
            ops=self,
        )

    def decrypt(self, secret: SecretKey, ct: Ciphertext) -> np.ndarray:
        self._check_kind(secret, CKKSSecret, "the secret key")
        c = self._check_ct(ct)
        self._check_same_key(secret, c)
        sk = secret.secret_key()
        parts = [np.asarray(self._call("decrypt", chunk.decrypt, sk), dtype=np.float64) for chunk in c.chunks]
        if not parts:
            return np.zeros(0)
        return np.concatenate(parts)[: c.length]

    # --- homomorphic operations -------------------------------------------------------------
    def add(self, a: Ciphertext, b: Ciphertext) -> CKKSCiphertext:
        return self.sum([a, b])

    def sum(self, cts: Sequence[Ciphertext]) -> CKKSCiphertext:
        checked = self._sum_operands(cts, self._check_ct)
        first = checked[0]
        if len(checked) == 1:
            return first
        bound = sum(c.bound for c in checked)
        self._check_capacity(bound, "this addition")
        chunks = []
        for k in range(len(first.chunks)):
            acc = self._call("add", first.chunks[k].add, checked[1].chunks[k])
            for c in checked[2:]:
                self._call("add", acc.add_, c.chunks[k])
            chunks.append(acc)
        # A sum of ciphertexts alone needs no re-randomization (docs/crypto.md): subtracting
        # the operands one knows leaves ciphertexts, never a plaintext.
        return self._wrap(
            first,
            chunks,
            plain_operand=any(c.plain_operand for c in checked),
            depth_used=max(c.depth_used for c in checked),
            bound=bound,
        )

    def add_plain(self, a: Ciphertext, values: Any) -> CKKSCiphertext:
        c = self._check_ct(a)
        vec = broadcast_vector(values, c.length)
        if vec.size and float(np.max(np.abs(vec))) > self.p.value_bound:
            raise EncodingOverflowError(f"ckks: a plaintext operand exceeds value_bound={self.p.value_bound:g}")
        bound = c.bound + self.p.value_bound
        self._check_capacity(bound, "add_plain")
        chunks = [self._call("add_plain", ch.add, part) for ch, part in zip(c.chunks, self._padded_chunks(vec))]
        return self._wrap(c, chunks, plain_operand=True, bound=bound)

    def mul_plain(self, a: Ciphertext, factor: Any) -> CKKSCiphertext:
        c = self._check_ct(a)
        vec = broadcast_vector(factor, c.length)
        self._check_depth(c, 1, "mul_plain")
        peak = float(np.max(np.abs(vec))) if vec.size else 0.0
        bound = c.bound * max(peak, 1.0)  # a factor < 1 still goes through a 2^scale encoding
        self._check_capacity(bound, "mul_plain")
        ratio = self._rescale_ratio(c.public, c.depth_used)
        if vec.size and np.all(vec == vec[0]):
            # One scalar: TenSEAL encodes it once for all slots.
            chunks = [self._call("mul_plain", ch.mul, float(vec[0]) * ratio) for ch in c.chunks]
        else:
            parts = self._padded_chunks(vec * ratio)
            chunks = [self._call("mul_plain", ch.mul, part) for ch, part in zip(c.chunks, parts)]
        return self._wrap(c, chunks, plain_operand=True, depth_used=c.depth_used + 1, bound=bound)

    def matmul_plain(self, a: Ciphertext, matrix: Any) -> CKKSCiphertext:
        """``v @ M`` by per-column dot products, then one mask per column to pack the results.

        Plan (documented in docs/crypto.md): for column j, ``acc_j = sum_k chunk_k * M[k-th
        block, j]`` (one plaintext product per chunk, level 1), then TenSEAL's rotate-and-add
        ``sum()`` over the full slot ring leaves ``y_j`` in every slot (``log2(slots)``
        rotations), then a one-row ``mm`` with the unit vector ``e_(j mod slots)`` keeps it in
        slot j (level 2). Cost: ``chunks * m`` plaintext products + ``m`` rotation sums + ``m``
        masks, instead of one rotation per *row* for TenSEAL's diagonal-method ``mm`` (measured
        1.9 s for 512 x 16 vs 0.19 s). The slots past ``m`` hold uniform junk
        (:meth:`_fill_past_length`), never the sums' residue. Needs Galois keys and depth 2:
        profile 'matmul'. Error: :meth:`matmul_error_bound`.
        """
        c = self._check_ct(a)
        if not self.p.galois:
            raise UnsupportedOperationError(
                "ckks: matmul_plain needs Galois (rotation) keys; create the backend with profile='matmul' "
                "(galois=True; the public context grows to ~34 MB)"
            )
        self._check_depth(c, 2, "matmul_plain")
        m = as_matrix(matrix, c.length)
        n_out = m.shape[1]
        col_l1 = float(np.max(np.sum(np.abs(m), axis=0))) if m.size else 0.0
        bound = c.bound * max(col_l1, 1.0)
        self._check_capacity(bound, "matmul_plain")
        s = self.p.slots
        if c.length == 0 or n_out == 0:
            zeros = self.encrypt(c.public, np.zeros(n_out))
            return self._wrap(zeros, zeros.chunks, plain_operand=True, depth_used=c.depth_used + 2, bound=bound)
        # Scale corrections for the two rescales (see _rescale_ratio).
        first, second = self._rescale_ratio(c.public, c.depth_used), self._rescale_ratio(c.public, c.depth_used + 1)
        padded = np.zeros((len(c.chunks) * s, n_out))
        padded[: c.length] = m * first
        out_chunks: list[Any] = [None] * (-(-n_out // s))
        for j in range(n_out):
            acc = None
            for k, chunk in enumerate(c.chunks):
                column = padded[k * s : (k + 1) * s, j]
                if not np.any(column):
                    continue
                prod = self._call("matmul_plain", chunk.mul, column.tolist())
                if acc is None:
                    acc = prod
                else:
                    self._call("matmul_plain", acc.add_, prod)
            if acc is None:
                continue  # an all-zero column: its slot stays 0
            total = self._call("matmul_plain", acc.sum)
            unit = np.zeros(s)
            unit[j % s] = second
            term = self._call("matmul_plain", total.mm, [unit.tolist()])
            slot = j // s
            if out_chunks[slot] is None:
                out_chunks[slot] = term
            else:
                self._call("matmul_plain", out_chunks[slot].add_, term)
        for i, chunk in enumerate(out_chunks):
            if chunk is None:  # every column of this block was zero
                out_chunks[i] = self.encrypt(c.public, np.zeros(s)).chunks[0]
        self._fill_past_length(out_chunks, n_out, bound)
        return CKKSCiphertext(
            chunks=out_chunks,
            length=n_out,
            public=c.public,
            depth_used=c.depth_used + 2,
            bound=bound,
            plain_operand=True,
            ops=self,
        )

    # --- the packed product of vertical LR: matmul_repeated ------------------------------------
    #: Relative costs behind :meth:`matmul_repeat`, in rotations at level 1 (N = 8192, measured,
    #: docs/crypto.md "Packed product"): a plaintext product at level 0, and one more input chunk
    #: for the protocol to encrypt, re-randomize, send and load.
    _PRODUCT_COST: ClassVar[float] = 1.3
    _CHUNK_COST: ClassVar[float] = 6.0

    def matmul_repeat(self, *, rows: int, columns: int) -> int:
        """The power of two ``w >= columns`` when :meth:`matmul_repeated` on ``Enc(np.repeat(v,
        w))`` is cheaper than per-column :meth:`matmul_plain` on ``Enc(v)``, else 1.

        Packed: ``ceil(rows * w / slots)`` products, ``log2(min(slots, rows * w) / w)``
        rotations and one mask, plus the extra input chunks a protocol encrypts and sends.
        Per column: ``columns`` rotate-and-sums over the slot ring (``log2(slots)`` rotations
        each) and masks. 1 without Galois keys or depth 2, for a single column, or for more
        columns than slots.

        A function of the public parameters and the arguments only, never of the platform:
        every party derives the same layout. Where the fast path cannot run (no
        ``os.memfd_create``), :meth:`matmul_repeated` computes the same product on the same
        layout by the interface's generic path (slower, same result).
        """
        p = self.p
        if columns < 2 or rows < 1 or not (p.galois and p.depth >= 2):
            return 1
        w = 1 << (int(columns) - 1).bit_length()
        s = p.slots
        if w > s:
            return 1
        chunks, plain_chunks = -(-rows * w // s), -(-rows // s)
        span = min(s, 1 << (rows * w - 1).bit_length())
        packed = math.log2(span // w) + 1 + chunks * self._PRODUCT_COST + (chunks - plain_chunks) * self._CHUNK_COST
        per_column = columns * (plain_chunks * self._PRODUCT_COST + math.log2(s) + 1)
        return w if packed < per_column else 1

    def matmul_fill_rows(self, *, columns: int) -> int | None:
        """The rows of a batch whose residuals, in :meth:`matmul_repeat`'s layout for a product
        with ``columns`` columns, fill one ciphertext: ``slots // w`` (``w`` the power of two
        ``>= columns``), or ``slots`` where the product does not pack (one column, or more
        columns than slots). None without Galois keys or depth 2 (no ``matmul_plain``)."""
        p = self.p
        if isinstance(columns, bool) or not isinstance(columns, (int, np.integer)) or columns < 1:
            raise ConfigError(f"columns must be an integer >= 1, got {columns!r}")
        if not (p.galois and p.depth >= 2):
            return None
        w = 1 << (int(columns) - 1).bit_length()
        rows = p.slots // w if w <= p.slots else p.slots
        return rows if self.matmul_repeat(rows=rows, columns=int(columns)) == w else p.slots

    def matmul_error_bound(self, *, input_l1: float, column_l1: Any, repeat: int = 1) -> np.ndarray:
        """The documented error of ``matmul_plain`` (``repeat = 1``) and ``matmul_repeated`` per
        output column: ``e (1 + ||M[:, j]||_1) + 6 sqrt(repeat) 2^-scale_bits ||v||_1``
        (``e = info().error_bound``, ``v`` the unrepeated input vector; docs/crypto.md,
        "Packed product").

        The second term is the plaintext matrix's encoding error: CKKS rounds the N
        coefficients of ``2^scale * IDFT(plaintext)`` to integers (Cheon et al. 2017, §3.2),
        which the product multiplies by ``v_i``; structured inputs (constant or alternating
        ``v``, constant columns) add those errors up coherently over the rows, more so in the
        repeated layout (its plaintext has period ``repeat``). Measured maxima of
        ``err / (||v||_1 2^-40 sqrt(repeat))`` at N = 8192: 0.48 at ``repeat = 1`` (16,384
        rows), 0.3 to 1.3 for ``repeat`` 2 to 1,024 and 1.78 at ``repeat = slots`` (3.4x under
        6). At ``|v| = value_bound`` on 4,096 rows this term dominates: measured up to 3.1e-4
        (``repeat`` 256) where ``e (1 + ||M||_1)`` is 1.5e-5; for vertical LR's residuals
        (``|d| ~ 1``, a batch of rows) it is below 1e-6.
        """
        column = np.abs(np.asarray(column_l1, dtype=np.float64))
        coherent = 6.0 * math.sqrt(max(1, int(repeat))) * math.ldexp(abs(float(input_l1)), -self.p.scale_bits)
        return error_bound_for(self.p) * (1.0 + column) + coherent

    def _fill_past_length(self, chunks: list[Any], length: int, bound: float) -> None:
        """Fill every slot past the first ``length`` (in the last chunk) with uniform junk from
        the OS CSPRNG, in place.

        A masked product leaves copies or partial sums of its values, times the mask's
        encoding error (~5e-11), in the slots it masks to "zero"; a key holder decrypts every
        slot. Uniform junk in ``(-J, J]``, ``J`` the largest power of two ``<= bound``: every
        such residue is at most ``bound`` times the encoding error (``bound`` bounds every
        partial sum), so it moves the junk's distribution by a statistical distance of at most
        that error (~2^-34) per slot, and the rescaling noise is drowned alike. ``J`` reveals
        only ``floor(log2(bound))``, less than the wire header's ``ceil``, and keeps every slot
        within the ciphertext's magnitude bound (the capacity checks stay valid).
        """
        s = self.p.slots
        used = length - (len(chunks) - 1) * s
        if not chunks or used >= s or bound <= 0:
            return
        junk_scale = math.ldexp(1.0, math.floor(math.log2(bound)))
        junk = np.zeros(s)
        junk[used:] = junk_scale * (2.0 * secret_stream().uniform(s - used) - 1.0)
        self._call("matmul", chunks[-1].add_, junk.tolist())

    def matmul_repeated(self, a: Ciphertext, matrix: Any, *, repeat: int) -> CKKSCiphertext:
        """``v @ M`` from ``Enc(np.repeat(v, repeat))``: one plaintext product per chunk, the
        chunks added, ``log2(span / repeat)`` rotate-and-adds, one mask.

        Slot ``i * repeat + j`` holds ``v_i``; multiplied by ``M[i, j]`` (0 for ``j >= m``)
        at level 1, the chunks summed, then rotations by ``repeat, 2 repeat, ...`` up to the
        ``span`` the rows fill (a power of two, at most the slot count) leave
        ``y_j = sum_i v_i M[i, j]`` in slot ``j``; a plaintext mask keeps slots ``0..m-1``
        (level 2), and every slot past ``m`` is filled with uniform junk
        (:meth:`_fill_past_length`): an ordinary ciphertext of ``m`` values, as ``matmul_plain``
        gives. ``repeat`` must be a power of two up to the slot count for this path; any other
        value (and ``repeat = 1``) takes the interface's generic path, as does a platform without
        ``os.memfd_create`` (same layout, same result, slower). Needs Galois keys and depth 2
        (profile 'matmul'). Error: :meth:`matmul_error_bound`.
        """
        return self.matmul_repeated_sum([(a, matrix)], repeat=repeat)

    def matmul_repeated_sum(self, terms: Sequence[tuple[Ciphertext, Any]], *, repeat: int) -> CKKSCiphertext:
        """``sum_t v_t @ M_t`` from ``terms`` of ``(Enc(np.repeat(v_t, repeat)), M_t)``: every
        term's chunk products (level 1) added, then one ``log2(span / repeat)`` fold and one
        mask for all of them (:meth:`matmul_repeated` is the one-term case), so a sum of ``k``
        products costs ``k`` plaintext products, not ``k`` folds.

        The terms must be under one key, at one depth (their products are added at one level)
        and of one width ``m``; the bound is the sum of the terms' ``bound * max(1, ||M_t||_1)``.
        Error: the sum of the terms' :meth:`matmul_error_bound` (each term's product error, the
        fold's rotation error once).
        """
        checked = [(self._check_ct(a), m) for a, m in terms]
        mats = as_repeated_terms(checked, repeat=repeat)
        r, s = int(repeat), self.p.slots
        if r == 1 or r > s or r & (r - 1) or not _fold_available():
            # the interface's generic path per term (same layout, same result, slower)
            return self.sum([CryptoBackend.matmul_repeated(self, c, m, repeat=r) for (c, _), m in zip(checked, mats)])
        first_ct = checked[0][0]
        self._check_same_key(*(c for c, _ in checked))  # KeyMismatchError for a term under another key
        if len({c.depth_used for c, _ in checked}) != 1:
            raise ConfigError(
                "matmul_repeated_sum(): every ciphertext must be at the same depth, got "
                f"{sorted({c.depth_used for c, _ in checked})}"
            )
        if not self.p.galois:
            raise UnsupportedOperationError(
                "ckks: matmul_repeated needs Galois (rotation) keys; create the backend with profile='matmul' "
                "(galois=True; the public context grows to ~34 MB)"
            )
        self._check_depth(first_ct, 2, "matmul_repeated")
        cols = mats[0].shape[1]
        bound = 0.0
        for (c, _), m in zip(checked, mats):
            col_l1 = float(np.max(np.sum(np.abs(m), axis=0))) if m.size else 0.0
            bound += c.bound * max(col_l1, 1.0)
        self._check_capacity(bound, "matmul_repeated")
        first = self._rescale_ratio(first_ct.public, first_ct.depth_used)
        second = self._rescale_ratio(first_ct.public, first_ct.depth_used + 1)
        acc = None
        span = 1
        for (c, _), m in zip(checked, mats):
            rows = m.shape[0]
            span = max(span, min(s, 1 << (rows * r - 1).bit_length()) if rows else 1)
            spread = np.zeros((rows, r))
            spread[:, :cols] = m * first
            for chunk, part in zip(c.chunks, self._padded_chunks(spread.ravel())):
                if not any(part):
                    continue
                prod = self._call("matmul_repeated", chunk.mul, part)
                if acc is None:
                    acc = prod
                else:
                    self._call("matmul_repeated", acc.add_, prod)
        if acc is None:  # no rows, no columns or all-zero matrices
            zeros = self.encrypt(first_ct.public, np.zeros(cols))
            return self._wrap(zeros, zeros.chunks, plain_operand=True, depth_used=first_ct.depth_used + 2, bound=bound)
        folded = self._call("matmul_repeated", self._fold, acc, r, span, first_ct.public)
        keep = np.zeros(s)
        keep[:cols] = second
        out = self._call("matmul_repeated", folded.mul, keep.tolist())
        self._fill_past_length([out], cols, bound)
        return CKKSCiphertext(
            chunks=[out],
            length=cols,
            public=first_ct.public,
            depth_used=first_ct.depth_used + 2,
            bound=bound,
            plain_operand=True,
            ops=self,
        )

    def _fold(self, vec: Any, stride: int, span: int, public: CKKSPublic) -> Any:
        """``vec`` rotated-and-added by ``stride, 2 stride, ..., span / 2``: slot ``j < stride``
        then holds the sum of slots ``j, j + stride, ... < span``.

        TenSEAL's tensors expose no rotation, so SEAL's evaluator (``tenseal.sealapi``, on the
        context's own SEAL context and Galois keys) rotates a copy of the chunk's ciphertext,
        which comes back as a TenSEAL vector through an anonymous in-memory file (as the seeded
        encryption does): one save and load per product, ~1 ms.
        """
        ctx = public.context
        evaluator = sealapi.Evaluator(ctx.seal_context().data)
        keys = ctx.galois_keys().data
        (ct,) = vec.ciphertext()
        rotated = sealapi.Ciphertext()
        step = stride
        while step < span:
            evaluator.rotate_vector(ct, step, keys, rotated)
            evaluator.add_inplace(ct, rotated)
            step *= 2
        with _MemFile("fedsilo-ckks-fold") as f:
            ct.save(f.path)
            raw = f.read()
        proto = _vector_proto(raw, size=self.p.slots, scale=math.ldexp(1.0, self.p.scale_bits))
        return ts.CKKSVector(data=_NativeVector(ctx.data, proto))

    # --- wire -------------------------------------------------------------------------------
    def _rerandomize(self, c: CKKSCiphertext) -> list[Any]:
        """Add a fresh encryption of 0 so a result of add_plain / mul_plain cannot be unwound by
        someone who knows the input ciphertext."""
        ctx, zero = c.public.context.data, [0.0] * self.p.slots
        return [
            self._call("rerandomize", ch.add, ts.CKKSVector(data=_NativeVector(ctx, zero))) for ch in c.chunks
        ]

    def _wire_chunks(self, c: CKKSCiphertext) -> list[bytes]:
        """Each chunk's TenSEAL bytes as ``serialize`` sends them."""
        if c.plain_operand:
            return [ch.serialize() for ch in self._rerandomize(c)]
        if c.blobs is not None:
            return c.blobs  # seeded, straight from encrypt_with_secret
        return [ch.serialize() for ch in c.chunks]

    def serialize(self, ct: Ciphertext) -> bytes:
        """The wire form: header (fingerprint, length, depth, bound) and each chunk.

        Results of a plaintext operation are re-randomized first (``plain_operand``); fresh
        encryptions, received ciphertexts and sums of those go as they are.
        """
        c = self._check_ct(ct)
        raws = self._wire_chunks(c)
        # The bound travels rounded up to a power of two: it may depend on a factor's magnitude.
        wire_bound = math.ldexp(1.0, math.ceil(math.log2(c.bound))) if c.bound > 0 else 0.0
        parts = [self._header(b"CTXT", c.fingerprint), _CT_STRUCT.pack(_WIRE_VERSION, c.length, c.depth_used, wire_bound, len(raws))]
        for raw in raws:
            parts += [_LEN.pack(len(raw)), raw]
        return b"".join(parts)

    def deserialize(self, public: PublicContext, data: bytes) -> CKKSCiphertext:
        pub = self._check_public(public)
        # Only the 40-byte header goes through the shared parser (which copies what it returns);
        # the chunks are read through a view, each copied once, into TenSEAL.
        if isinstance(data, memoryview) and (data.itemsize != 1 or not data.c_contiguous):
            data = data.tobytes()
        is_buffer = isinstance(data, (bytes, bytearray, memoryview))
        fp, _ = self._split_header(data[:40] if is_buffer else data, kind=b"CTXT", backend=self.name)
        body = memoryview(data)[40:]
        self._check_same_key(pub, FingerprintOnly(fp))
        try:
            version, length, depth_used, bound, n_chunks = _CT_STRUCT.unpack_from(body)
        except struct.error as exc:
            raise CiphertextFormatError("ckks: truncated ciphertext header") from exc
        if version != _WIRE_VERSION:
            raise CiphertextFormatError(f"ckks: ciphertext format version {version}, expected {_WIRE_VERSION}")
        s = self.p.slots
        if (
            n_chunks != -(-length // s)
            or depth_used > self.p.depth
            or not math.isfinite(bound)
            or not 0 <= bound <= self.p.capacity
        ):
            raise CiphertextFormatError("ckks: ciphertext header is inconsistent with the context")
        pos, ctx = _CT_STRUCT.size, pub.context.data
        chunks = []
        for i in range(n_chunks):
            try:
                (size,) = _LEN.unpack_from(body, pos)
            except struct.error as exc:
                raise CiphertextFormatError(f"ckks: truncated ciphertext (chunk {i})") from exc
            raw = body[pos + _LEN.size : pos + _LEN.size + size]
            pos += _LEN.size + size
            if len(raw) != size or size == 0:
                raise CiphertextFormatError(f"ckks: truncated ciphertext (chunk {i})")
            try:
                vec = ts.CKKSVector(data=_NativeVector(ctx, bytes(raw)))
            except Exception as exc:  # TenSEAL / SEAL raise ValueError, RuntimeError, ...
                raise CiphertextFormatError(f"ckks: chunk {i} does not parse ({exc})") from exc
            # Never let a size field from the wire drive TenSEAL's decrypt past the slot count.
            if vec.size() != s:
                raise CiphertextFormatError(f"ckks: chunk {i} has {vec.size()} slots, expected {s}")
            chunks.append(vec)
        if pos != len(body):
            raise CiphertextFormatError("ckks: trailing bytes after the last chunk")
        return CKKSCiphertext(
            chunks=chunks, length=length, public=pub, depth_used=depth_used, bound=bound, plain_operand=False, ops=self
        )

    def wire_size(self, ct: Ciphertext) -> int:
        """Bytes of ``serialize(ct)`` (re-randomization does not change a chunk's size)."""
        c = self._check_ct(ct)
        raws = c.blobs if c.blobs is not None and not c.plain_operand else [ch.serialize() for ch in c.chunks]
        return 40 + _CT_STRUCT.size + sum(_LEN.size + len(raw) for raw in raws)
