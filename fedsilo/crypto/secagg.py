"""The maths of keyless secure aggregation: SecAgg+ masking with distributed discrete Gaussian noise.

Pure functions and two small classes, numpy-vectorized; no protocol state and no networking
(the rounds are :mod:`fedsilo.protocols.horizontal.secagg`). Sources:

* Bonawitz, Ivanov, Kreuter, Marcedone, McMahan, Patel, Ramage, Segal & Seth, "Practical Secure
  Aggregation for Privacy-Preserving Machine Learning", CCS 2017 (SecAgg): pairwise masks from
  key agreement, a self mask, t-of-n Shamir shares of both secrets for dropout recovery.
* Bell, Bonawitz, Gascón, Lepoint & Raykova, "Secure Single-Server Aggregation with
  (Poly)Logarithmic Overhead", CCS 2020 (SecAgg+): the complete graph of SecAgg replaced by a
  random graph of degree ``k = O(log n)``.
* Kairouz, Liu & Steinke, "The Distributed Discrete Gaussian Mechanism for Federated Learning with
  Secure Aggregation", ICML 2021 (DDG): randomized Walsh–Hadamard rotation, conditional randomized
  rounding, discrete Gaussian noise shares added *before* masking, arithmetic in ``Z_{2^b}``.
* Canonne, Kamath & Steinke, "The Discrete Gaussian for Differential Privacy", NeurIPS 2020: the
  discrete Gaussian sampler (their Algorithm 3).

What each piece is for
----------------------
* **Key agreement** (:class:`AgreementKey`, :func:`derive_seed`): X25519 through ``cryptography``;
  the raw shared secret goes through HKDF-SHA256 with a domain-separated ``info`` (purpose, job,
  round, the two names in canonical order), so a seed is never reused across pairs, rounds, jobs
  or purposes (mask vs. share encryption).
* **Masks** (:func:`expand_mask`): a 32-byte seed expanded to ``n`` values of ``Z_{2^b}`` with
  AES-256-CTR (default: AES-NI makes it the fastest here) or ChaCha20 from ``cryptography``,
  read with ``np.frombuffer`` and wrapped by unsigned numpy arithmetic (``uint32`` for
  ``b <= 32``, ``uint64`` up to 64 bits; ``2^b`` divides the dtype's modulus, so reducing at the
  end is exact).
* **Fixed point** (:func:`ring_bits`, :func:`encode_fixed`, :func:`decode_fixed`): floats on the
  grid ``granularity · Z`` as two's complement residues mod ``2^b``; ``b`` from the value bound,
  the number of summands and the noise, so a sum never wraps (refused above 64 bits).
* **Shamir** (:func:`share_secret`, :func:`combine_shares`): pycryptodome's
  ``Crypto.Protocol.SecretSharing.Shamir`` over GF(2^128) shares 16-byte secrets; a 32-byte seed
  or X25519 key is shared as two halves with the same indices. No field arithmetic here.
* **Neighbourhoods** (:func:`secagg_plus_degree`, :func:`neighbourhood_graph`): a k-regular
  Harary graph over a public random permutation of the silos.
* **Distributed discrete Gaussian** (:func:`discrete_gaussian_integers`, :func:`hadamard_rotate`,
  :func:`hadamard_unrotate`, :func:`conditional_round`): the silo-side steps of DDG. Its privacy
  accounting lives in :mod:`fedsilo.privacy.distributed` (this package knows nothing of privacy).

Secret randomness (keys, self-mask seeds, noise, rounding) comes from the OS CSPRNG: keys from
``cryptography`` / ``os.urandom``, noise and rounding from a :class:`SecretStream` (AES-256-CTR
under a fresh ``os.urandom`` key). Public randomness (the graph, the rotation's signs) is derived
from a public seed every party computes (:func:`public_seed`), never chosen by one party.
"""
from __future__ import annotations

import hashlib
import math
import numbers
import os
from collections.abc import Sequence
from typing import Final, Literal

import numpy as np
from Crypto.Protocol.SecretSharing import Shamir
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedsilo.errors import CiphertextFormatError, ConfigError, CryptoError, EncodingOverflowError

__all__ = [
    "KEY_BYTES",
    "MAX_RING_BITS",
    "PRGS",
    "SEED_BYTES",
    "TAIL_SIGMAS",
    "AgreementKey",
    "SecretStream",
    "check_granularity",
    "combine_shares",
    "conditional_round",
    "decode_fixed",
    "decode_integers",
    "derive_seed",
    "discrete_gaussian_integers",
    "encode_fixed",
    "encode_integers",
    "expand_mask",
    "fixed_point_bits",
    "hadamard_rotate",
    "hadamard_unrotate",
    "load_public_key",
    "max_summand_steps",
    "neighbourhood_graph",
    "padded_dimension",
    "public_seed",
    "randomized_round",
    "ring_bits",
    "ring_dtype",
    "ring_reduce",
    "rotation_signs",
    "seal",
    "secagg_plus_degree",
    "secret_stream",
    "share_secret",
    "unseal",
]

#: Bytes of a seed (self mask, pairwise mask, public seeds) and of an X25519 key.
SEED_BYTES: Final = 32
KEY_BYTES: Final = 32
#: Largest ring ``Z_{2^b}`` (uint64 arithmetic).
MAX_RING_BITS: Final = 64
#: Pseudo-random generators a mask seed may be expanded with.
PRGS: Final[tuple[str, ...]] = ("aes-ctr", "chacha20")
Prg = Literal["aes-ctr", "chacha20"]
#: Standard deviations of the summed noise that :func:`ring_bits` leaves room for. A discrete
#: Gaussian is sub-Gaussian with variance proxy σ² (Canonne, Kamath & Steinke 2020), so a sum of
#: ``n`` independent ones is sub-Gaussian with proxy ``nσ²``, and one coordinate exceeds 12 of
#: its standard deviations with probability below ``2·e^{-72}`` ≈ 1e-31.
#: A wrap would only hurt accuracy: the decoded sum mod 2^b is a post-processing of the noised
#: sum, so privacy never depends on it.
TAIL_SIGMAS: Final = 12.0

_DOMAIN: Final = b"fedsilo/secagg/v1"
_ZERO_NONCE: Final = bytes(16)
_AEAD_NONCE: Final = 12


def _fields(*parts: bytes | str | int) -> bytes:
    """Length-prefixed concatenation: no two different field lists give the same bytes."""
    out = bytearray()
    for part in parts:
        data = part.encode() if isinstance(part, str) else str(part).encode() if isinstance(part, int) else part
        out += len(data).to_bytes(8, "big") + data
    return bytes(out)


def _int(name: str, value: object, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _seed(name: str, seed: object) -> bytes:
    if not isinstance(seed, (bytes, bytearray)) or len(seed) != SEED_BYTES:
        raise ConfigError(f"{name} must be {SEED_BYTES} bytes, got {type(seed).__name__} of length {len(seed) if isinstance(seed, (bytes, bytearray)) else '-'}")
    return bytes(seed)


_zero_block = bytes(0)


def _zeros(nbytes: int) -> memoryview:
    """A read-only view of ``nbytes`` zero bytes, from one buffer grown on demand and shared by
    every thread (a fresh ``bytes(n)`` would memset and page-fault on every mask)."""
    global _zero_block
    block = _zero_block  # one read: another thread may replace it with a larger block meanwhile
    if len(block) < nbytes:
        block = bytes(max(nbytes, 2 * len(block)))
        _zero_block = block
    return memoryview(block)[:nbytes]


# ---------------------------------------------------------------------------------------------
# Secret randomness
# ---------------------------------------------------------------------------------------------
class SecretStream:
    """Secret random bits: the AES-256-CTR keystream under a 32-byte key from ``os.urandom``.

    A counter-mode DRBG in the manner of NIST SP 800-90A's CTR_DRBG (without reseeding: a stream
    serves one silo for one round). Used for the discrete Gaussian noise and the randomized
    rounding; keys and self-mask seeds come straight from ``cryptography`` / ``os.urandom``.
    Build one with :func:`secret_stream`. Never pickled or shown (its key is secret).
    """

    __slots__ = ("_enc", "reproducible")

    def __init__(self, key: bytes, *, reproducible: bool = False) -> None:
        self._enc = Cipher(algorithms.AES(_seed("stream key", key)), modes.CTR(_ZERO_NONCE)).encryptor()
        #: True for a test-only seeded stream (the noise can be regenerated by anyone with the seed).
        self.reproducible = reproducible

    def _fill(self, nbytes: int) -> np.ndarray:
        out = np.empty(nbytes + 16, dtype=np.uint8)  # update_into wants a block of slack
        self._enc.update_into(_zeros(nbytes), out)
        return out[:nbytes]

    def random_bytes(self, n: int) -> bytes:
        """``n`` secret random bytes."""
        return self._fill(_int("n", n, low=0)).tobytes()

    def uint64(self, n: int) -> np.ndarray:
        """``n`` independent uniform 64-bit integers."""
        return self._fill(8 * _int("n", n, low=0)).view("<u8").astype(np.uint64, copy=False)

    def uniform(self, n: int) -> np.ndarray:
        """``n`` uniform floats in ``(0, 1]``: the top 53 bits of a 64-bit word, plus one step,
        times ``2^-53`` (``(0, 1]`` so that ``log`` never sees 0)."""
        return ((self.uint64(n) >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53

    def __repr__(self) -> str:
        return f"<SecretStream{' reproducible (test-only)' if self.reproducible else ''}>"

    def __reduce__(self) -> object:
        raise TypeError("a SecretStream holds a secret key and cannot be pickled or copied")


def secret_stream(seed: int | None = None) -> SecretStream:
    """A :class:`SecretStream` keyed from the OS CSPRNG, or (``seed``, **tests only**) reproducible.

    The same contract as :func:`fedsilo.privacy.mechanisms.secure_rng` and the runner's
    ``noise_seed``: production code passes ``None``; a seed makes the noise reproducible and
    therefore not private (the stream's ``reproducible`` flag says so).
    """
    if seed is None:
        return SecretStream(os.urandom(SEED_BYTES))
    seed = _int("seed", seed, low=0)
    return SecretStream(hashlib.sha256(_fields(_DOMAIN, "test-only noise seed", seed)).digest(), reproducible=True)


# ---------------------------------------------------------------------------------------------
# Key agreement (Bonawitz et al. 2017, §4: one X25519 pair for masks, one for share encryption)
# ---------------------------------------------------------------------------------------------
def load_public_key(raw: object, *, what: str = "public key") -> X25519PublicKey:
    """A peer's raw 32-byte X25519 public key; CiphertextFormatError if it is not one."""
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != KEY_BYTES:
        raise CiphertextFormatError(f"{what} must be {KEY_BYTES} raw bytes")
    try:
        return X25519PublicKey.from_public_bytes(bytes(raw))
    except ValueError as exc:
        raise CiphertextFormatError(f"{what} is not an X25519 public key") from exc


class AgreementKey:
    """One X25519 key pair (fresh per round). Its repr shows only a fingerprint of the public key.

    ``export_secret()`` is named so that the secret leaves the object only on purpose: SecAgg
    Shamir-shares the masking key among the neighbours for dropout recovery.
    """

    __slots__ = ("_secret", "public")

    def __init__(self, secret: X25519PrivateKey) -> None:
        self._secret = secret
        #: raw 32-byte public key, what peers receive
        self.public: bytes = secret.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @classmethod
    def generate(cls) -> "AgreementKey":
        """A fresh key pair from the OS CSPRNG (``cryptography``/OpenSSL)."""
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_secret(cls, raw: bytes) -> "AgreementKey":
        """The key pair of a reconstructed 32-byte secret (the aggregator recovering a dropout)."""
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != KEY_BYTES:
            raise CryptoError(f"an X25519 secret key is {KEY_BYTES} bytes")
        return cls(X25519PrivateKey.from_private_bytes(bytes(raw)))

    def export_secret(self) -> bytes:
        """The raw 32-byte secret scalar (to be Shamir-shared; never sent whole)."""
        return self._secret.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    def agree(self, peer_public: bytes) -> bytes:
        """The raw X25519 shared secret with ``peer_public``; CryptoError for a low-order point
        (the all-zero shared secret, which OpenSSL refuses), CiphertextFormatError for bad bytes."""
        peer = load_public_key(peer_public, what="peer public key")
        try:
            return self._secret.exchange(peer)
        except ValueError as exc:
            raise CryptoError("X25519 agreement with a low-order public key refused") from exc

    def __repr__(self) -> str:
        return f"<AgreementKey public={hashlib.sha256(self.public).hexdigest()[:12]} (secret hidden)>"

    def __reduce__(self) -> object:
        raise TypeError("an AgreementKey holds a secret key and cannot be pickled or copied")


def derive_seed(shared_secret: bytes, *, job: str, round: int, a: str, b: str, purpose: str) -> bytes:
    """A 32-byte seed for the pair ``{a, b}`` from their X25519 shared secret (HKDF-SHA256, RFC 5869).

    ``info`` binds the purpose (``"mask"``: pairwise mask, ``"share-key"``: encryption of Shamir
    shares), the job, the round and the two names in sorted order, so both ends derive the same
    seed and no seed serves two pairs, rounds, jobs or purposes (Bonawitz et al. 2017 use a fresh
    key per round for the same reason).
    """
    if not isinstance(shared_secret, (bytes, bytearray)) or len(shared_secret) != KEY_BYTES:
        raise CryptoError(f"an X25519 shared secret is {KEY_BYTES} bytes")
    if a == b:
        raise ConfigError(f"a pairwise seed needs two different parties, got {a!r} twice")
    lo, hi = sorted((a, b))
    hkdf = HKDF(algorithm=hashes.SHA256(), length=SEED_BYTES, salt=None,
                info=_fields(_DOMAIN, purpose, job, _int("round", round, low=0), lo, hi))
    return hkdf.derive(bytes(shared_secret))


def public_seed(*, job: str, round: int, purpose: str) -> bytes:
    """Public shared randomness every party computes alike: SHA-256 over the job, round and purpose.

    Used for the neighbourhood graph and the rotation's signs; no single party chooses it (the job
    id is fixed before any party knows its keys).
    """
    return hashlib.sha256(_fields(_DOMAIN, "public", purpose, job, _int("round", round, low=0))).digest()


# ---------------------------------------------------------------------------------------------
# Masks: seed -> n values of Z_{2^b}
# ---------------------------------------------------------------------------------------------
def ring_dtype(bits: int) -> type[np.unsignedinteger]:
    """``uint32`` for ``b <= 32`` (half the keystream and the wire bytes), else ``uint64``."""
    b = _int("bits", bits, low=1)
    if b > MAX_RING_BITS:
        raise ConfigError(f"ring bits must be <= {MAX_RING_BITS}, got {bits}")
    return np.uint32 if b <= 32 else np.uint64


def ring_reduce(x: np.ndarray, *, bits: int) -> np.ndarray:
    """``x mod 2^b`` in place (a no-op when ``b`` is the dtype's width)."""
    width = 8 * x.dtype.itemsize
    if bits < width:
        x &= x.dtype.type((1 << bits) - 1)
    return x


def _keystream(seed: bytes, nbytes: int, prg: str) -> np.ndarray:
    """``nbytes`` of the PRG's keystream as a uint8 array (plus 16 bytes of slack at the end)."""
    if prg == "aes-ctr":
        cipher = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_NONCE))
    elif prg == "chacha20":
        cipher = Cipher(algorithms.ChaCha20(seed, _ZERO_NONCE), mode=None)
    else:
        raise ConfigError(f"unknown mask generator {prg!r}; expected one of {', '.join(PRGS)}")
    # Every seed keys exactly one stream (derive_seed binds pair, round, job and purpose), so a
    # fixed all-zero IV/nonce never repeats a (key, nonce) pair.
    out = np.empty(nbytes + 16, dtype=np.uint8)  # update_into wants room for one more block
    cipher.encryptor().update_into(_zeros(nbytes), out)
    return out


def expand_mask(seed: bytes, length: int, *, bits: int, prg: Prg = "aes-ctr") -> np.ndarray:
    """``length`` pseudo-random values, uniform in ``Z_{2^bits}``, from a 32-byte seed.

    The PRG's keystream read as little-endian ``uint32``/``uint64`` words (:func:`ring_dtype`),
    reduced mod ``2^bits``: uniform because every bit of the keystream is. The mask of the
    SecAgg figure (Bonawitz et al. 2017, Fig. 4, "PRG(s)").
    """
    seed = _seed("mask seed", seed)
    n = _int("length", length, low=0)
    dt = ring_dtype(bits)
    width = np.dtype(dt).itemsize
    buf = _keystream(seed, n * width, prg)
    # little-endian words on every host (astype is a no-op on little-endian ones)
    out = buf[: n * width].view(np.dtype(dt).newbyteorder("<")).astype(dt, copy=False)
    return ring_reduce(out, bits=bits)


# ---------------------------------------------------------------------------------------------
# Fixed point in Z_{2^b}
# ---------------------------------------------------------------------------------------------
def ring_bits(*, value_bound: int, summands: int, noise_sigma: float = 0.0, tail_sigmas: float = TAIL_SIGMAS) -> int:
    """Smallest ``b`` such that a sum never wraps around in ``Z_{2^b}`` (two's complement).

    Args:
        value_bound: the largest ``|v|`` one summand's coordinate may take, in grid steps.
        summands: how many vectors the sum holds (every silo's masked input).
        noise_sigma: standard deviation of each summand's discrete Gaussian noise, in grid steps
            (0: no noise).
        tail_sigmas: standard deviations of the summed noise left room for (:data:`TAIL_SIGMAS`).

    The sum's coordinates lie in ``[-B, B]`` with ``B = summands·value_bound +
    ⌈tail_sigmas·sqrt(summands)·noise_sigma⌉``; ``b = bitlen(B) + 1`` holds them.

    Raises:
        ConfigError: bad arguments, or ``b > 64`` (the message names the bound).
    """
    v = _int("value_bound", value_bound, low=0)
    n = _int("summands", summands, low=1)
    if isinstance(noise_sigma, bool) or not isinstance(noise_sigma, numbers.Real) or not (
        math.isfinite(noise_sigma) and noise_sigma >= 0
    ):
        raise ConfigError(f"noise_sigma must be a finite number >= 0, got {noise_sigma!r}")
    bound = n * v + math.ceil(float(tail_sigmas) * math.sqrt(n) * float(noise_sigma))
    bits = max(2, bound.bit_length() + 1)
    if bits > MAX_RING_BITS:
        raise ConfigError(
            f"a sum of {n} vectors with coordinates up to {v} grid steps"
            + (f" and noise of {noise_sigma:.4g} steps per summand" if noise_sigma else "")
            + f" needs {bits} bits, more than the {MAX_RING_BITS} of Z_2^64; lower the value bound to at most "
            f"{max(0, ((1 << (MAX_RING_BITS - 1)) - 1 - math.ceil(float(tail_sigmas) * math.sqrt(n) * float(noise_sigma))) // n)} "
            "grid steps (or use a coarser granularity), less noise, or fewer summands"
        )
    return bits


def max_summand_steps(summands: int) -> int:
    """The largest ``value_bound`` (grid steps) :func:`ring_bits` accepts for ``summands``
    noiseless summands within :data:`MAX_RING_BITS`: ``B = summands·v`` must satisfy
    ``bitlen(B) + 1 <= 64``, i.e. ``v <= (2^63 − 1) // summands``."""
    n = _int("summands", summands, low=1)
    return ((1 << (MAX_RING_BITS - 1)) - 1) // n


def check_granularity(value: object) -> float:
    """``value`` as a float if it is a positive power of two (grid values are then exact floats);
    ConfigError otherwise."""
    g = _positive("granularity", value)
    if math.frexp(g)[0] != 0.5:
        raise ConfigError(f"granularity must be a power of two (e.g. 2**-16) so that grid values are exact floats, got {value!r}")
    return g


def fixed_point_bits(*, value_bound: float, granularity: float, summands: int, noise_sigma: float = 0.0) -> int:
    """:func:`ring_bits` for float inputs ``|x| <= value_bound`` on the grid ``granularity·Z``.

    ``noise_sigma`` is in grid steps, as :func:`ring_bits` takes it.
    """
    g = check_granularity(granularity)
    bound = _positive("value_bound", value_bound)
    return ring_bits(value_bound=math.ceil(bound / g), summands=summands, noise_sigma=noise_sigma)


def encode_integers(values: np.ndarray, *, bits: int) -> np.ndarray:
    """Signed integers as residues of ``Z_{2^b}`` (two's complement).

    Raises:
        EncodingOverflowError: a value outside ``[-2^(b-1), 2^(b-1))``; nothing is wrapped. The
            message names how many, never a value.
    """
    dt = ring_dtype(bits)
    ints = np.asarray(values)
    if ints.dtype.kind not in "iu":
        raise ConfigError(f"encode_integers needs an integer array, got dtype {ints.dtype}")
    ints = ints.astype(np.int64, copy=False)
    if bits < 64:
        half = 1 << (bits - 1)
        over = int(np.count_nonzero((ints < -half) | (ints >= half)))
        if over:
            raise EncodingOverflowError(f"{over} value(s) do not fit {bits}-bit two's complement")
    return ring_reduce(ints.astype(np.uint64).astype(dt), bits=bits)


def decode_integers(ring: np.ndarray, *, bits: int) -> np.ndarray:
    """Residues of ``Z_{2^b}`` back to signed ``int64`` (``r >= 2^(b-1)`` means ``r - 2^b``)."""
    b = _int("bits", bits, low=1)
    r = np.asarray(ring).astype(np.uint64)
    shift = np.uint64(64 - b)
    # sign extension: move bit b-1 to bit 63, reinterpret as int64, arithmetic shift back
    return (r << shift).view(np.int64) >> np.int64(64 - b)


def encode_fixed(values: np.ndarray, *, granularity: float, bits: int) -> np.ndarray:
    """Floats rounded to the nearest multiple of ``granularity`` (half to even), in ``Z_{2^b}``.

    Values already on the grid are encoded exactly, so their sums decode exactly (while the sum
    has fewer than 2^53 grid steps).

    Raises:
        ConfigError: NaN or infinite values.
        EncodingOverflowError: a value beyond ``2^(b-1)`` grid steps.
    """
    g = check_granularity(granularity)
    x = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ConfigError("values to encode contain NaN or infinite values")
    steps = np.rint(x / g)
    if np.any(np.abs(steps) >= 2.0**63):
        raise EncodingOverflowError(f"values do not fit {bits}-bit two's complement at granularity {g:g}")
    return encode_integers(steps.astype(np.int64), bits=bits)


def decode_fixed(ring: np.ndarray, *, granularity: float, bits: int) -> np.ndarray:
    """A sum in ``Z_{2^b}`` back to floats: signed residue times ``granularity``."""
    return decode_integers(ring, bits=bits).astype(np.float64) * check_granularity(granularity)


# ---------------------------------------------------------------------------------------------
# Shamir t-of-n over GF(2^128) (pycryptodome), 32-byte secrets as two 16-byte halves
# ---------------------------------------------------------------------------------------------
def share_secret(secret: bytes, *, threshold: int, holders: int) -> list[tuple[int, bytes]]:
    """``holders`` shares ``(index, 32 bytes)`` of a 32-byte secret, any ``threshold`` of which
    reconstruct it (Shamir, CACM 1979; pycryptodome's ``Shamir.split`` per 16-byte half, with
    fresh random polynomial coefficients from the OS CSPRNG). Indices are ``1..holders``.

    Raises:
        ConfigError: a secret that is not 32 bytes, ``threshold < 2`` (a threshold of 1 hands the
            secret to every holder) or ``threshold > holders``.
    """
    s = _seed("secret", secret)
    n = _int("holders", holders, low=1)
    t = _int("threshold", threshold, low=2)
    if t > n:
        raise ConfigError(f"threshold {t} exceeds the {n} share holders")
    lo = Shamir.split(t, n, s[:16])
    hi = Shamir.split(t, n, s[16:])
    return [(i, a + b) for (i, a), (j, b) in zip(lo, hi) if i == j]


def combine_shares(shares: Sequence[tuple[int, bytes]], *, threshold: int) -> bytes:
    """The 32-byte secret from at least ``threshold`` shares of :func:`share_secret` (the first
    ``threshold`` by index are used: pycryptodome interpolates exactly as many points as given).

    Raises:
        CryptoError: fewer than ``threshold`` shares, duplicate indices or malformed shares.
    """
    t = _int("threshold", threshold, low=2)
    got: dict[int, bytes] = {}
    for item in shares:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise CryptoError("a Shamir share is an (index, 32 bytes) pair")
        idx, value = item
        if isinstance(idx, bool) or not isinstance(idx, int) or idx < 1 or not isinstance(value, bytes) or len(value) != 32:
            raise CryptoError("a Shamir share is an (index >= 1, 32 bytes) pair")
        if idx in got:
            raise CryptoError(f"duplicate Shamir share index {idx}")
        got[idx] = value
    if len(got) < t:
        raise CryptoError(f"{len(got)} Shamir share(s) cannot reconstruct a {t}-of-n secret")
    use = sorted(got.items())[:t]
    lo = Shamir.combine([(i, v[:16]) for i, v in use])
    hi = Shamir.combine([(i, v[16:]) for i, v in use])
    return lo + hi


# ---------------------------------------------------------------------------------------------
# Authenticated encryption of shares between two silos (relayed by the aggregator)
# ---------------------------------------------------------------------------------------------
def seal(key: bytes, plaintext: bytes, *, aad: bytes) -> bytes:
    """ChaCha20-Poly1305 under a 32-byte pairwise key: ``nonce (12 random bytes) | ciphertext``.

    The key (``derive_seed(..., purpose="share-key")``) is the same in both directions of a pair,
    so the nonce is random; ``aad`` binds job, round, sender and recipient.
    """
    nonce = os.urandom(_AEAD_NONCE)
    return nonce + ChaCha20Poly1305(_seed("share key", key)).encrypt(nonce, plaintext, aad)


def unseal(key: bytes, blob: bytes, *, aad: bytes) -> bytes:
    """Inverse of :func:`seal`; CryptoError if the bytes were altered, or sealed for another
    pair, job, round or direction."""
    if not isinstance(blob, (bytes, bytearray)) or len(blob) < _AEAD_NONCE + 16:
        raise CryptoError("a sealed share is too short")
    try:
        return ChaCha20Poly1305(_seed("share key", key)).decrypt(bytes(blob[:_AEAD_NONCE]), bytes(blob[_AEAD_NONCE:]), aad)
    except InvalidTag:
        raise CryptoError("a sealed share does not authenticate (altered, or not for this pair and round)") from None


# ---------------------------------------------------------------------------------------------
# SecAgg+ neighbourhoods (Bell et al. 2020)
# ---------------------------------------------------------------------------------------------
def _run_probability(n: int, bad: int, run: int) -> float:
    """P(``run`` given ring positions are all bad) for ``bad`` bad nodes placed uniformly at random
    among ``n``: the hypergeometric ``C(bad, run) / C(n, run)``."""
    if run > bad:
        return 0.0
    p = 1.0
    for j in range(run):
        p *= (bad - j) / (n - j)
    return p


def secagg_plus_degree(n: int, *, bad_fraction: float, security_bits: int = 40) -> int:
    """Degree ``k`` of the SecAgg+ neighbourhood graph for ``n`` silos (``n − 1``: SecAgg's
    complete graph, which small federations get).

    Bell et al. (CCS 2020) show that a random graph of degree ``k = O(log n)`` keeps the honest,
    surviving silos connected with probability ``1 − 2^-σ`` when at most a ``γ`` fraction of the
    silos collude with the server and a ``δ`` fraction drop; connectivity is what makes the
    server learn only the sum of *all* honest survivors (a disconnected honest subgraph would
    reveal the sum of each component). fedsilo's graph is the Harary graph (a ring with each silo
    joined to its ``k/2`` nearest silos on either side) over a public random permutation
    (:func:`neighbourhood_graph`). Its honest survivors are disconnected only if the ring holds two
    runs of at least ``k/2`` consecutive bad (colluding or dropped) silos; by the union bound over
    the ``n`` starting positions that has probability at most
    ``n · C(B, k/2)/C(n, k/2) ≤ n·β^{k/2}`` with ``B = ⌈β·n⌉`` bad silos. This returns the
    smallest even ``k`` making that ``≤ 2^-security_bits`` (the ``σ = 40`` of Bell et al.'s
    concrete parameters), so ``k ≈ 2·(σ ln 2 + ln n)/ln(1/β)``: logarithmic in ``n``.

    Args:
        n: silos in the round (``>= 2``).
        bad_fraction: ``β = γ + δ`` in ``(0, 1)``: colluding plus dropped silos, as a fraction.
        security_bits: ``σ``.

    Raises:
        ConfigError: bad arguments.
    """
    n = _int("n", n, low=2)
    sigma = _int("security_bits", security_bits, low=1)
    if isinstance(bad_fraction, bool) or not isinstance(bad_fraction, numbers.Real) or not 0.0 < bad_fraction < 1.0:
        raise ConfigError(f"bad_fraction must be in (0, 1), got {bad_fraction!r}")
    bad = min(n, math.ceil(bad_fraction * n))
    target = 2.0 ** -sigma
    for half in range(1, n):
        if 2 * half >= n - 1:
            return n - 1
        if n * _run_probability(n, bad, half) <= target:
            return 2 * half
    return n - 1  # pragma: no cover - the loop returns by half = n // 2


def neighbourhood_graph(names: Sequence[str], *, degree: int, seed: bytes) -> dict[str, tuple[str, ...]]:
    """Every silo's neighbours in the SecAgg+ graph: ``{name: sorted neighbour names}``.

    The names are placed on a ring in the order of ``SHA-256(seed | name)`` (a public random
    permutation: every party computing it from the same :func:`public_seed` gets the same graph),
    and each is joined to the ``degree/2`` nearest on both sides: the Harary graph ``H_{k,n}``,
    ``k``-regular. ``degree >= n − 1`` gives the complete graph (SecAgg).

    Raises:
        ConfigError: fewer than 2 names, duplicates, or an odd degree below ``n − 1``.
    """
    ordered = sorted(names)
    n = len(ordered)
    if n < 2:
        raise ConfigError(f"a neighbourhood graph needs at least 2 silos, got {n}")
    if len(set(ordered)) != n:
        raise ConfigError("silo names in a neighbourhood graph must be unique")
    k = _int("degree", degree, low=1)
    s = _seed("graph seed", seed)
    if k >= n - 1:
        return {a: tuple(b for b in ordered if b != a) for a in ordered}
    if k % 2:
        raise ConfigError(f"a Harary neighbourhood graph over {n} silos needs an even degree below {n - 1}, got {k}")
    ring = sorted(ordered, key=lambda name: hashlib.sha256(_fields(s, name)).digest())
    half = k // 2
    out: dict[str, tuple[str, ...]] = {}
    for i, name in enumerate(ring):
        near = {ring[(i + d) % n] for d in range(1, half + 1)} | {ring[(i - d) % n] for d in range(1, half + 1)}
        out[name] = tuple(sorted(near))
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------------------
# Distributed discrete Gaussian: the silo-side steps (Kairouz, Liu & Steinke 2021)
# ---------------------------------------------------------------------------------------------
#: Largest σ (grid steps) :func:`discrete_gaussian_integers` draws with: 12σ·√n stays far inside int64.
MAX_DDG_SIGMA = 2.0**40


def discrete_gaussian_integers(*, sigma: float, size: int, stream: SecretStream) -> np.ndarray:
    """``size`` i.i.d. draws of the discrete Gaussian ``N_Z(0, σ²)``: ``P(k) ∝ exp(−k²/(2σ²))``.

    Canonne, Kamath & Steinke (NeurIPS 2020), Algorithm 3, vectorized: propose ``Y`` from the
    discrete Laplace with scale ``t = ⌊σ⌋ + 1`` (the difference of two geometric variables
    ``⌊−t·ln U⌋``), accept with probability ``exp(−(|Y| − σ²/t)²/(2σ²))``; the expected number of
    proposals per draw is below 2 for every σ. The uniforms come from a :class:`SecretStream`
    (the OS CSPRNG). Documented alternative to the paper's exact rational-arithmetic Bernoulli
    sampler (too slow in Python for 10^6 values): the geometric variates and the acceptance test
    use float64, so probabilities are exact up to float64 rounding (relative error ~1e-16), as in
    :func:`fedsilo.privacy.mechanisms.discrete_gaussian`; outputs are always integers.
    """
    s = _positive("sigma", sigma)
    if s > MAX_DDG_SIGMA:
        # beyond it σ² overflows the acceptance test or the draws leave int64 (found by the
        # bad-input sweep: σ = 1e300 never returned); no 64-bit ring holds such noise anyway
        raise ConfigError(f"sigma must be at most 2^40 grid steps for the discrete Gaussian sampler, got {sigma!r}")
    n = _int("size", size, low=0)
    if not isinstance(stream, SecretStream):
        raise ConfigError(f"stream must be a SecretStream (fedsilo.crypto.secagg.secret_stream()), got {type(stream).__name__}")
    t = math.floor(s) + 1.0
    shift = s * s / t
    two_var = 2.0 * s * s
    out = np.empty(n, dtype=np.int64)
    todo = np.arange(n)
    while todo.size:
        m = todo.size
        u = stream.uniform(3 * m)
        g1 = np.floor(-t * np.log(u[:m]))
        g2 = np.floor(-t * np.log(u[m : 2 * m]))
        y = g1 - g2
        accept = np.log(u[2 * m :]) < -((np.abs(y) - shift) ** 2) / two_var
        out[todo[accept]] = y[accept].astype(np.int64)
        todo = todo[~accept]
    return out


def padded_dimension(dim: int) -> int:
    """The Walsh–Hadamard dimension for a vector of ``dim`` values: the next power of two."""
    d = _int("dim", dim, low=1)
    return 1 << (d - 1).bit_length()


def rotation_signs(dim: int, seed: bytes) -> np.ndarray:
    """The public random diagonal ``D`` of the rotation: ``dim`` signs ±1 (float64) from the bits
    of the AES-CTR stream of a public seed (:func:`public_seed`)."""
    d = _int("dim", dim, low=1)
    nbytes = (d + 7) // 8
    stream = _keystream(_seed("rotation seed", seed), nbytes, "aes-ctr")
    bits = np.unpackbits(stream[:nbytes])[:d]
    return 1.0 - 2.0 * bits.astype(np.float64)


def _fwht(a: np.ndarray) -> np.ndarray:
    """Unnormalized fast Walsh–Hadamard transform of a power-of-two-length vector (a new array):
    ``log2(D)`` butterfly passes, each one vectorized over all blocks."""
    n = a.shape[0]
    out = np.array(a, dtype=np.float64, copy=True)
    h = 1
    while h < n:
        v = out.reshape(-1, 2, h)
        x = v[:, 0, :].copy()
        v[:, 0, :] += v[:, 1, :]
        v[:, 1, :] = x - v[:, 1, :]
        h *= 2
    return out


def hadamard_rotate(x: np.ndarray, *, seed: bytes) -> np.ndarray:
    """``U x`` with ``U = H·D/√D'``: zero-pad ``x`` to ``D' = padded_dimension(len(x))``, flip signs
    with the public diagonal ``D`` (:func:`rotation_signs`), apply the normalized Walsh–Hadamard
    matrix. ``U`` is orthogonal, so the L2 norm (the DP sensitivity) is unchanged, while the
    coordinates become flat (each about ``‖x‖/√D'``): Kairouz, Liu & Steinke 2021, §4.1 and
    Lemma 29 (the randomized Hadamard transform keeps the modular wrap-around of the sum
    unlikely for a small ring)."""
    v = np.asarray(x, dtype=np.float64)
    if v.ndim != 1:
        raise ConfigError(f"hadamard_rotate needs a 1-D vector, got shape {v.shape}")
    dim = padded_dimension(max(1, v.shape[0]))
    padded = np.zeros(dim)
    padded[: v.shape[0]] = v
    return _fwht(padded * rotation_signs(dim, seed)) / math.sqrt(dim)


def hadamard_unrotate(y: np.ndarray, *, seed: bytes, dim: int) -> np.ndarray:
    """``U^{-1} y = D·H·y/√D'`` (``H`` is symmetric and ``(H/√D')² = I``), truncated to ``dim``:
    the inverse of :func:`hadamard_rotate`, applied to the decoded sum."""
    v = np.asarray(y, dtype=np.float64)
    d = _int("dim", dim, low=1)
    if v.ndim != 1 or v.shape[0] != padded_dimension(d):
        raise ConfigError(f"hadamard_unrotate needs a vector of {padded_dimension(d)} values for dim {d}, got shape {v.shape}")
    return (_fwht(v) / math.sqrt(v.shape[0]) * rotation_signs(v.shape[0], seed))[:d]


def randomized_round(x: np.ndarray, *, stream: SecretStream) -> np.ndarray:
    """Unbiased randomized rounding to integers: ``⌊x⌋ + Bernoulli(x − ⌊x⌋)`` per coordinate."""
    v = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise ConfigError("values to round contain NaN or infinite values")
    low = np.floor(v)
    frac = v - low
    # uniform() is in (0, 1]: P(u <= frac) = frac up to the 2^-53 grid
    return (low + (stream.uniform(v.shape[0]) <= frac)).astype(np.int64)


def conditional_round(
    x: np.ndarray, *, norm_bound: float, stream: SecretStream, max_tries: int = 1000
) -> np.ndarray:
    """Kairouz, Liu & Steinke 2021, §4.1 and Proposition 22 (conditional randomized rounding): repeat
    :func:`randomized_round` until the result's L2 norm is at most ``norm_bound``.

    With ``‖x‖ <= c`` and ``norm_bound`` from
    :func:`fedsilo.privacy.distributed.rounded_l2_bound` (their Theorem 1's
    ``min(c + √d, sqrt(c² + d/4 + √(2 ln(1/β))·(c + √d/2)))``), each try is accepted with
    probability at least ``1 − β``; the accepted vector's norm is then a deterministic bound,
    the L2 sensitivity the privacy analysis uses. The comparison is made on the float64 sum of
    squares with a relative margin of 1e-9 (never accepting a norm above the bound through
    rounding).

    Raises:
        CryptoError: no try within ``max_tries`` met the bound (the input was not clipped to the
            norm the bound was computed for).
    """
    v = np.asarray(x, dtype=np.float64)
    bound = _positive("norm_bound", norm_bound)
    limit = bound * bound * (1.0 - 1e-9)
    for _ in range(_int("max_tries", max_tries, low=1)):
        r = randomized_round(v, stream=stream)
        rf = r.astype(np.float64)
        if float(np.dot(rf, rf)) <= limit:
            return r
    raise CryptoError(
        f"conditional randomized rounding found no rounding within the norm bound in {max_tries} tries; "
        "clip the vector to the norm the bound was computed for"
    )
