"""The few ciphertext recipes SecureBoost needs, on integers under the guest's Paillier key.

The backend interface (:class:`~fedsilo.crypto.base.CryptoBackend`) encrypts float vectors at one
fixed-point scale; histograms need Paillier at the level of its integers: one ciphertext per
*row* to be summed over arbitrary row subsets, and several bins' sums shifted into one
plaintext. These five recipes do that on the key types of :mod:`fedsilo.crypto.paillier`
(``n``, ``h``, the primes) and its public batch functions, and nothing else:

* guest: :meth:`HistogramCipher.encrypt_rows` (encrypt row plaintexts, fresh DJN randomness),
  :meth:`HistogramCipher.open` (parse and decrypt a host's histogram);
* host: :meth:`HistogramCipher.load` (parse the guest's row ciphertexts, each checked to lie in
  ``Z*_{n²}``'s range), :meth:`HistogramCipher.bin_sums` (``Π c_i`` per feature and bin: the
  homomorphic sums, on a process pool), :meth:`HistogramCipher.seal` (shift several bins into one
  ciphertext, ``c ← c^(2^W) · c'``, add the host's own plaintext — offsets, counts, DP noise — as
  ``c · (1 + m n)``, re-randomize, serialize).

Every outbound ciphertext a host computed is re-randomized with phe's ``r^n`` (``r`` uniform,
drawn by the host), not ``h^β``: the guest chose ``h`` and knows every row's randomness, so the
guest learns nothing from a histogram's randomness about which rows it holds.

:class:`PlainHistograms` runs the same integers without encryption (the ``plain`` backend:
tests, and the benchmark's baseline). These recipes belong with the Paillier backend
(``fedsilo.crypto``); they are here until it offers them.
"""
from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import gmpy2
import numpy as np

from fedsilo.crypto.paillier import (
    RANDOMNESS_BITS,
    PaillierPublic,
    PaillierSecret,
    djn_encrypt_batch,
)
from fedsilo.crypto.pool import decrypt_batch, obfuscate_batch, parallel_map
from fedsilo.errors import ConfigError, ProtocolError

__all__ = ["HistogramCipher", "PaillierHistograms", "PlainHistograms"]


class HistogramCipher(abc.ABC):
    """Integer ciphertexts of row plaintexts and histogram bins (see the module docstring)."""

    #: the plaintext modulus ``n``
    modulus: int
    #: bits a packed plaintext may use (``key_bits - 1``: below ``n``)
    plaintext_bits: int
    #: bytes of one ciphertext on the wire
    width: int

    @abc.abstractmethod
    def encrypt_rows(self, plaintexts: Sequence[int]) -> bytes:
        """Guest: fresh encryptions of ``plaintexts`` (each in ``[0, n)``), serialized."""

    @abc.abstractmethod
    def load(self, data: Any, *, count: int, sender: str) -> list[Any]:
        """``count`` ciphertexts from ``sender``'s wire bytes.

        Raises:
            ProtocolError: not bytes, the wrong length, or a value outside ``(0, n²)``.
        """

    @abc.abstractmethod
    def bin_sums(self, cts: Sequence[Any], slots: np.ndarray, n_slots: int) -> list[Any]:
        """Host: for each slot ``s < n_slots``, the homomorphic sum of the ciphertexts
        ``cts[i]`` with ``s`` in row ``slots[i]`` (``slots``: ``(len(cts), k)`` slot indices,
        ``k`` sums each ciphertext joins, e.g. one per feature). An empty slot is ``Enc(0)``."""

    @abc.abstractmethod
    def seal(self, sums: Sequence[Any], additions: Sequence[int], *, shift: int, per: int) -> bytes:
        """Host: pack ``per`` consecutive sums into one ciphertext, sum ``k`` shifted by
        ``k·shift`` bits (``per = 1``: no packing), add ``additions[j]`` (in ``[0, n)``) to
        packed ciphertext ``j``, re-randomize and serialize."""

    @abc.abstractmethod
    def open(self, data: Any, *, count: int, sender: str) -> list[int]:
        """Guest: ``count`` plaintexts of ``sender``'s ciphertexts (needs the secret key)."""

    def _split(self, data: Any, count: int, sender: str) -> list[int]:
        if not isinstance(data, bytes) or len(data) != count * self.width:
            size = len(data) if isinstance(data, bytes) else type(data).__name__
            raise ProtocolError(f"expected {count} ciphertexts ({count * self.width} bytes) from {sender!r}, got {size}")
        w = self.width
        return [int.from_bytes(data[i * w : (i + 1) * w], "big") for i in range(count)]


# ------------------------------------------------------------------------------ worker functions
# Module-level and on plain ints, so the crypto pool's worker processes can run them.


def _products(nsquare: int, n_slots: int, items: list[tuple[int, tuple[int, ...]]]) -> list[list[int]]:
    """Partial ``Π c mod n²`` per slot over ``items`` = ``(c, slots of c)``; one list (for
    :func:`~fedsilo.crypto.pool.parallel_map`, which concatenates the workers' lists)."""
    nsq = gmpy2.mpz(nsquare)
    acc: list[Any] = [None] * n_slots
    for c, slots in items:
        m = gmpy2.mpz(c)
        for s in slots:
            a = acc[s]
            acc[s] = m if a is None else a * m % nsq
    return [[1 if a is None else int(a) for a in acc]]


def _horner(nsquare: int, shift: int, groups: list[list[int]]) -> list[int]:
    """Per group ``[c_0, …, c_{K-1}]``: ``Π c_k^(2^(k·shift)) mod n²`` by Horner's rule (``K-1``
    raisings to ``2^shift``, i.e. ``shift`` squarings each)."""
    nsq = gmpy2.mpz(nsquare)
    power = gmpy2.mpz(1) << shift
    out = []
    for group in groups:
        acc = gmpy2.mpz(group[-1])
        for c in reversed(group[:-1]):
            acc = gmpy2.powmod(acc, power, nsq) * c % nsq
        out.append(int(acc))
    return out


def _combine(partials: list[list[int]], modulus: int, add: bool) -> list[int]:
    first = list(partials[0])
    for part in partials[1:]:
        first = [(a + b) % modulus if add else a * b % modulus for a, b in zip(first, part)]
    return first


# ------------------------------------------------------------------------------ Paillier


class PaillierHistograms(HistogramCipher):
    """The recipes under a Paillier key (format 2: with the DJN randomness base ``h``).

    ``secret`` only at the guest (the key owner); ``workers`` processes of the crypto pool for
    encryption, decryption, sums, packing and re-randomization (1: in-process).
    """

    def __init__(self, public: PaillierPublic, *, secret: PaillierSecret | None = None, workers: int = 1) -> None:
        if not isinstance(public, PaillierPublic):
            raise ConfigError(f"a Paillier public key is needed, got {type(public).__name__}")
        if public.h is None:
            raise ConfigError("SecureBoost needs a Paillier key with a DJN randomness base (format 2); make a new key")
        if secret is not None and secret.public_context.fingerprint != public.fingerprint:
            raise ConfigError("the secret key does not belong to this public key")
        self.public = public
        self._secret = secret
        self.workers = max(1, int(workers))
        self.modulus = public.n
        self.nsquare = public.nsquare
        self.plaintext_bits = public.key_bits - 1
        self.width = public.ciphertext_bytes

    def __repr__(self) -> str:  # never the primes
        return f"PaillierHistograms({self.public.key_bits}-bit, fingerprint {self.public.fingerprint[:12]}, workers={self.workers})"

    def __reduce__(self) -> Any:
        raise TypeError("PaillierHistograms holds a secret key and cannot be pickled")

    def _wire(self, values: Sequence[int]) -> bytes:
        w = self.width
        return b"".join(int(v).to_bytes(w, "big") for v in values)

    def encrypt_rows(self, plaintexts: Sequence[int]) -> bytes:
        common = (self.public.n, self.public.h, RANDOMNESS_BITS[self.public.key_bits])
        return self._wire(parallel_map(djn_encrypt_batch, common, list(plaintexts), self.workers))

    def load(self, data: Any, *, count: int, sender: str) -> list[Any]:
        values = self._split(data, count, sender)
        nsq = self.nsquare
        bad = next((i for i, v in enumerate(values) if not 0 < v < nsq), None)
        if bad is not None:
            raise ProtocolError(f"ciphertext {bad} from {sender!r} is not in Z*_(n^2)")
        return [gmpy2.mpz(v) for v in values]

    def bin_sums(self, cts: Sequence[Any], slots: np.ndarray, n_slots: int) -> list[Any]:
        items = [(int(c), tuple(int(s) for s in row)) for c, row in zip(cts, slots)]
        if not items:
            return [1] * n_slots
        partials = parallel_map(_products, (self.nsquare, n_slots), items, self.workers)
        return _combine(partials, self.nsquare, add=False)

    def seal(self, sums: Sequence[Any], additions: Sequence[int], *, shift: int, per: int) -> bytes:
        values = [int(s) for s in sums]
        if per > 1:
            groups = [values[i : i + per] for i in range(0, len(values), per)]
            values = parallel_map(_horner, (self.nsquare, shift), groups, self.workers)
        if len(additions) != len(values):
            raise ValueError(f"{len(additions)} plaintext additions for {len(values)} ciphertexts")
        n, nsq = self.modulus, self.nsquare
        values = [c * ((1 + (m % n) * n) % nsq) % nsq for c, m in zip(values, additions)]
        # which rows went into which bin is the host's secret, and the guest (the key holder)
        # chose h and knows every row's alpha: h**beta would leave sum(alpha_i) over the bin's
        # rows readable by a discrete-log-capable key holder (a knapsack on the memberships). So
        # histograms leave with phe's r**n, r uniform in Z*_n drawn here (crypto review, as the
        # backend does after products): uniform whatever h and the rows' randomness
        fresh = parallel_map(obfuscate_batch, (n,), values, self.workers)
        return self._wire(fresh)

    def open(self, data: Any, *, count: int, sender: str) -> list[int]:
        if self._secret is None:
            raise ProtocolError("only the key owner (the guest) can open histograms")
        cts = self.load(data, count=count, sender=sender)
        sk = self._secret
        return [int(m) for m in parallel_map(decrypt_batch, (self.public.n, sk.p, sk.q), [int(c) for c in cts], self.workers)]


# ------------------------------------------------------------------------------ no encryption


class PlainHistograms(HistogramCipher):
    """The same integers and wire sizes without any encryption (``plain`` backend: tests and
    baselines only; every value is readable by whoever receives it)."""

    def __init__(self, *, key_bits: int = 2048) -> None:
        self.modulus = (1 << key_bits) - 1
        self.plaintext_bits = key_bits - 1
        self.width = key_bits // 8

    def __repr__(self) -> str:
        return f"PlainHistograms({self.plaintext_bits + 1} bits, no encryption)"

    def _wire(self, values: Sequence[int]) -> bytes:
        return b"".join(int(v).to_bytes(self.width, "big") for v in values)

    def encrypt_rows(self, plaintexts: Sequence[int]) -> bytes:
        return self._wire([int(m) % self.modulus for m in plaintexts])

    def load(self, data: Any, *, count: int, sender: str) -> list[Any]:
        values = self._split(data, count, sender)
        if any(v >= self.modulus for v in values):
            raise ProtocolError(f"a value from {sender!r} is outside the plaintext range")
        return values

    def bin_sums(self, cts: Sequence[Any], slots: np.ndarray, n_slots: int) -> list[Any]:
        acc = [0] * n_slots
        for c, row in zip(cts, slots.tolist()):
            for s in row:
                acc[s] += c
        return [a % self.modulus for a in acc]

    def seal(self, sums: Sequence[Any], additions: Sequence[int], *, shift: int, per: int) -> bytes:
        values = [int(s) for s in sums]
        if per > 1:
            values = [sum(v << (k * shift) for k, v in enumerate(values[i : i + per])) for i in range(0, len(values), per)]
        if len(additions) != len(values):
            raise ValueError(f"{len(additions)} plaintext additions for {len(values)} values")
        return self._wire([(v + m) % self.modulus for v, m in zip(values, additions)])

    def open(self, data: Any, *, count: int, sender: str) -> list[int]:
        return self.load(data, count=count, sender=sender)
