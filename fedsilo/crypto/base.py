"""The crypto backend interface: the primitive layer a protocol researcher implements.

A backend is a small object holding validated parameters. Keys come in two distinct types:

* :class:`PublicContext` is what peers receive. It can encrypt and compute on ciphertexts but
  never decrypt; ``serialize()`` carries no secret.
* :class:`SecretKey` can decrypt; ``public()`` returns a *new* public context object. Exporting
  a secret key is a separately named method (``export_secret``) so it never travels by accident.

Ciphertexts remember the fingerprint of the key they are under (a SHA-256 of the public
parameters); mixing keys raises :class:`~fedsilo.errors.KeyMismatchError` instead of producing
garbage, and bytes that do not parse raise :class:`~fedsilo.errors.CiphertextFormatError`.

Vectors are 1-D float64 numpy arrays. ``matmul_plain(ct, M)`` computes ``v @ M`` for an
encrypted ``v`` of length n and a plaintext (n, m) matrix: the ``X^T d`` of vertical logistic
regression. ``matmul_repeated(ct, M, repeat=r)`` computes the same product from an encryption of
``np.repeat(v, r)``, the layout :meth:`CryptoBackend.matmul_repeat` asks a protocol to encrypt in
when it can choose (a slot-packed scheme then needs one product and a few rotations instead of
one rotate-and-sum per column); with ``r = 1`` it is ``matmul_plain``.

A party that holds the secret key encrypts with ``encrypt_with_secret``: the same ciphertext for
every other party, cheaper where the scheme has a secret-key form (CKKS: seeded, half the bytes).

Protocols, the bench and the CLI never compare a backend's name. They ask the backend class:
:meth:`CryptoBackend.params_for` gives the parameters a :data:`Use` needs (the backend's
:meth:`~CryptoBackend.defaults_for`, under the caller's explicit parameters) and
:meth:`CryptoBackend.capabilities` says what the scheme can do (:class:`Capabilities`). A plugin
backend gets exactly what a built-in gets.
"""
from __future__ import annotations

import math

import abc
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import reduce
from typing import Any, ClassVar, Literal, get_args

import numpy as np

from fedsilo.errors import CiphertextFormatError, ConfigError, KeyMismatchError

__all__ = [
    "KEY_MODELS",
    "BackendInfo",
    "Capabilities",
    "Ciphertext",
    "Confidentiality",
    "CryptoBackend",
    "PublicContext",
    "SecretKey",
    "FingerprintOnly",
    "MIN_SECURITY_BITS",
    "USES",
    "Use",
    "as_matrix",
    "as_repeated_matrix",
    "as_repeated_terms",
    "as_vector",
    "broadcast_vector",
    "check_lengths",
    "fingerprint_of",
]

#: Prefix of every serialized fedsilo crypto object: a magic and a format version, so bytes from
#: another program or an incompatible fedsilo version fail with a clear error.
WIRE_MAGIC = b"FSC1"

#: Least classical security, in bits, a backend instance must give for fedsilo to run it without
#: ``[crypto] insecure = true``: NIST SP 800-57 part 1 rev. 5 accepts 112 bits through 2030
#: (table 4) and rates a 2048-bit RSA-type modulus, as Paillier uses, at 112 bits (table 2).
MIN_SECURITY_BITS = 112

#: What a protocol needs a backend for, when it asks :meth:`CryptoBackend.params_for`:
#:
#: * ``"aggregate"``: sums of model updates (FedAvg), ``summands`` contributions per sum, top-up
#:   shares included; values of the backend's default range.
#: * ``"statistics"``: exact sums of large-range values (counts, sums, histograms of a silo's
#:   rows), ``summands`` contributions per sum, top-ups included.
#: * ``"matmul"``: ciphertext x plaintext matrix (``matmul_plain``, vertical LR's ``X^T d``).
#: * ``"benchmark"``: a sum of ``summands`` vectors of values in [-1, 1], sized as tightly as the
#:   backend allows (what ``fedsilo bench crypto`` measures).
Use = Literal["aggregate", "statistics", "matmul", "benchmark"]
USES: tuple[str, ...] = get_args(Use)

#: The key models a backend class can declare (:attr:`Capabilities.key_model`).
KEY_MODELS: tuple[str, ...] = ("shared-key", "keyless")


def fingerprint_of(*parts: bytes | str) -> str:
    """Short hex SHA-256 over the public parameters that identify a key or context."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()[:32]


def as_vector(values: Any, *, what: str = "values") -> np.ndarray:
    """Validate and convert input to a finite 1-D float64 vector (clear error otherwise)."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what} must be numeric, got {type(values).__name__}") from exc
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ConfigError(f"{what} must be a 1-D vector, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ConfigError(f"{what} contains NaN or infinite values")
    return arr


def check_lengths(a: int, b: int) -> None:
    if a != b:
        raise ConfigError(f"vector lengths differ: {a} vs {b}")


def broadcast_vector(values: Any, length: int) -> np.ndarray:
    """A plaintext operand as a vector of ``length`` (a scalar is broadcast)."""
    v = as_vector(values, what="plaintext operand")
    if v.shape[0] == 1 and length != 1:
        return np.full(length, v[0])
    check_lengths(length, v.shape[0])
    return v


def as_matrix(matrix: Any, rows: int) -> np.ndarray:
    """A finite float64 matrix with ``rows`` rows, for ``matmul_plain``."""
    try:
        m = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError("plaintext matrix must be numeric") from exc
    if m.ndim != 2 or m.shape[0] != rows:
        raise ConfigError(f"plaintext matrix must have shape ({rows}, m), got {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ConfigError("plaintext matrix contains NaN or infinite values")
    return m


def as_repeated_matrix(matrix: Any, *, length: int, repeat: Any) -> np.ndarray:
    """The plaintext matrix of ``matmul_repeated`` for a ciphertext of ``length`` values that
    holds each of ``length / repeat`` values ``repeat`` times: checked to have that many rows and,
    for ``repeat > 1``, at most ``repeat`` columns (ConfigError naming what is wrong otherwise)."""
    if isinstance(repeat, bool) or not isinstance(repeat, (int, np.integer)) or repeat < 1:
        raise ConfigError(f"repeat must be an integer >= 1, got {repeat!r}")
    repeat = int(repeat)
    if length % repeat:
        raise ConfigError(f"a ciphertext of {length} values cannot hold whole repeats of {repeat}")
    m = as_matrix(matrix, length // repeat)
    if repeat > 1 and m.shape[1] > repeat:
        raise ConfigError(f"matmul_repeated gives at most repeat = {repeat} columns, the matrix has {m.shape[1]}")
    return m


def as_repeated_terms(terms: Sequence[tuple[Ciphertext, Any]], *, repeat: Any) -> list[np.ndarray]:
    """The plaintext matrices of ``matmul_repeated_sum``'s ``terms``, each checked by
    :func:`as_repeated_matrix` against its ciphertext's length and all of one width (the terms'
    products are added slot by slot, so they must have the same columns).

    The one check every backend's ``matmul_repeated_sum`` runs, the generic one and CKKS's fast
    path alike, so the two refuse the same inputs with the same message.

    Raises:
        ConfigError: no terms, a matrix :func:`as_repeated_matrix` refuses, or matrices of
            different widths (the message lists every term's width, in order).
    """
    if not terms:
        raise ConfigError("matmul_repeated_sum() needs at least one (ciphertext, matrix) term")
    mats = [as_repeated_matrix(m, length=ct.length, repeat=repeat) for ct, m in terms]
    if len({m.shape[1] for m in mats}) != 1:
        raise ConfigError(
            f"matmul_repeated_sum(): every matrix must have the same columns, got {[m.shape[1] for m in mats]}"
        )
    return mats


@dataclass(frozen=True, slots=True)
class FingerprintOnly:
    """Stands in for a key in ``_check_same_key`` when only a parsed fingerprint is at hand."""

    fingerprint: str


@dataclass(frozen=True, slots=True)
class BackendInfo:
    """What ``fedsilo backends`` shows, and what a protocol may rely on."""

    name: str
    exact: bool  #: decrypt(sum) equals the fixed-point sum exactly (Paillier) vs approximately (CKKS)
    secure: bool  #: ``confidentiality().secure``: False for ``plain`` and for weak parameters
    values_per_ciphertext: int
    bytes_per_value: float  #: wire bytes per value of a full fresh ciphertext
    error_bound: float  #: documented absolute error per value of a fresh ciphertext or a sum of a few
    #: operations: add, add_plain, sum, mul_scalar, mul_vector, matmul; mul_int = multiplication
    #: by a non-negative integer scalar only (packed Paillier)
    supports: tuple[str, ...]
    description: str
    #: largest ``|x|`` an input, plaintext operand or decrypted sum may have (``inf``: no bound);
    #: protocols scale what they encrypt to stay inside it
    value_bound: float = math.inf
    #: ``"shared-key"`` (the silos share one secret key) or ``"keyless"`` (no party holds a key
    #: that opens another's input: masking, :class:`Capabilities`)
    key_model: str = "shared-key"
    #: the fewest silos a keyless sum goes on with (``t`` of ``t``-of-``n``); None: not applicable,
    #: or it depends on the federation (the default threshold follows the silo count)
    threshold: int | None = None
    #: a sum survives silos that drop mid-round (recovered from the others' shares)
    dropout_tolerant: bool = False


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend *class* can do, whatever its parameters: asked instead of its name.

    Attributes:
        exact_sums: decrypt(sum) equals the fixed-point sum exactly (Paillier, ``plain``), not
            approximately (CKKS). The class's ``exact`` flag.
        plaintext_matmul: ``matmul_plain`` works with the parameters of
            ``params_for("matmul", ...)``.
        packing: the parameters that switch on *optional* packing (several values per
            ciphertext; off by default): Paillier's ``{"packed": True}``. None when packing is not a choice (CKKS
            always packs, ``plain`` never encrypts). ``fedsilo backends`` and ``fedsilo bench
            crypto`` show both variants of such a backend (``NAME-packed`` / ``NAME-unpacked``).
        key_model: ``"shared-key"``: the backend encrypts under a key pair the silos share
            (``keygen`` / ``encrypt`` / ``decrypt``, after a key ceremony). ``"keyless"``: a
            *session* backend with no keys at all (pairwise masking, SecAgg+): its primitive
            methods raise :class:`~fedsilo.errors.UnsupportedOperationError`, and a protocol
            sums through the secure-sum session this flag selects
            (:mod:`fedsilo.protocols.horizontal.sums`).
        dropout_tolerant: a sum completes when silos drop mid-round (their part is recovered
            from the others' shares), so no top-up round is needed.
    """

    exact_sums: bool
    plaintext_matmul: bool = True
    packing: Mapping[str, Any] | None = None
    key_model: Literal["shared-key", "keyless"] = "shared-key"
    dropout_tolerant: bool = False

    @property
    def keyless(self) -> bool:
        """No party holds a decryption key (a session backend)."""
        return self.key_model == "keyless"


@dataclass(frozen=True, slots=True)
class Confidentiality:
    """Whether a *configured* backend instance keeps ciphertexts confidential.

    The capability the config check (and any protocol) asks for instead of a backend's name:
    ``plain`` never is; Paillier is not below 2048-bit keys; a plugin says so itself by
    overriding :meth:`CryptoBackend.confidentiality` (or setting ``secure = False``).

    Attributes:
        secure: ciphertexts reveal nothing practical about the plaintexts (at least
            :data:`MIN_SECURITY_BITS` bits of classical security).
        security_bits: estimated classical security of these parameters (0: no encryption;
            None: the backend does not say).
        reason: why not, as one clause for an error message ("" when secure).
        param: the backend parameter responsible (a key of ``[crypto] params``), or None when
            the backend itself is the reason (``plain``).
    """

    secure: bool
    security_bits: int | None = None
    reason: str = ""
    param: str | None = None

    @property
    def sufficient(self) -> bool:
        """``secure`` and, when the backend states its security, at least
        :data:`MIN_SECURITY_BITS` bits (a plugin cannot pass with ``Confidentiality(True, 80)``)."""
        return self.secure and (self.security_bits is None or self.security_bits >= MIN_SECURITY_BITS)

    @property
    def why_not(self) -> str:
        """The reason for an error message when not :attr:`sufficient`."""
        if self.reason:
            return self.reason
        return f"the backend states {self.security_bits} bits of security, below {MIN_SECURITY_BITS}"


class PublicContext(abc.ABC):
    """Public parameters and encryption key: safe to send to any peer."""

    backend: ClassVar[str]

    @property
    @abc.abstractmethod
    def fingerprint(self) -> str:
        """Identifies the key pair; equal on both sides of a federation."""

    @abc.abstractmethod
    def serialize(self) -> bytes:
        """Bytes for a peer; never contains secret material."""

    def is_private(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} backend={self.backend} fingerprint={self.fingerprint}>"


class SecretKey(abc.ABC):
    """Decryption key. Its repr and any log line show only the fingerprint."""

    backend: ClassVar[str]

    @abc.abstractmethod
    def public(self) -> PublicContext:
        """A new public context for this key pair (never this object made public in place)."""

    @abc.abstractmethod
    def export_secret(self) -> bytes:
        """Serialized secret key: callers must ask for it by name (e.g. to write a 0600 key file)."""

    @property
    def fingerprint(self) -> str:
        return self.public().fingerprint

    def is_private(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"<{type(self).__name__} backend={self.backend} fingerprint={self.fingerprint} (secret hidden)>"


class Ciphertext(abc.ABC):
    """An encrypted vector. ``fingerprint`` names the key; ``length`` the number of values."""

    backend: ClassVar[str]
    fingerprint: str
    length: int

    # Operators delegate once, here, to the backend's named methods.
    _ops: "CryptoBackend"

    def __add__(self, other: Any) -> "Ciphertext":
        if isinstance(other, Ciphertext):
            return self._ops.add(self, other)
        return self._ops.add_plain(self, other)

    __radd__ = __add__

    def __mul__(self, other: Any) -> "Ciphertext":
        return self._ops.mul_plain(self, other)

    __rmul__ = __mul__

    def __len__(self) -> int:
        return self.length

    def __reduce__(self) -> Any:
        # pickle (and copy) would ship the raw ciphertext without the re-randomization that
        # serialize() applies to results of add_plain / mul_plain: the input could be unwound.
        raise TypeError(
            f"{type(self).__name__} cannot be pickled or copied; send backend.serialize(ct) and "
            "rebuild it with backend.deserialize(public, data)"
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} length={self.length} key={self.fingerprint[:8]}>"


class CryptoBackend(abc.ABC):
    """One homomorphic encryption scheme behind one small interface.

    Subclasses set ``name``, ``exact``, ``secure`` and implement the abstract methods. Parameters
    are validated in ``__init__`` (raise :class:`~fedsilo.errors.ConfigError` naming the bad
    parameter). A backend whose confidentiality depends on its parameters (key sizes) overrides
    :meth:`confidentiality`. Register a third-party backend with the ``fedsilo.crypto_backends`` entry-point
    group; see :mod:`fedsilo.crypto.registry`.
    """

    name: ClassVar[str]
    exact: ClassVar[bool]
    secure: ClassVar[bool] = True

    # --- keys -------------------------------------------------------------------------------
    @abc.abstractmethod
    def keygen(self) -> SecretKey:
        """A fresh key pair; ``keygen().public()`` is what peers receive."""

    @abc.abstractmethod
    def load_public(self, data: bytes) -> PublicContext:
        """Inverse of ``PublicContext.serialize``; CiphertextFormatError on bad bytes."""

    @abc.abstractmethod
    def load_secret(self, data: bytes) -> SecretKey:
        """Inverse of ``SecretKey.export_secret``; CiphertextFormatError on bad bytes."""

    # --- encryption ---------------------------------------------------------------------------
    @abc.abstractmethod
    def encrypt(self, public: PublicContext, values: Any) -> Ciphertext:
        """Encrypt a 1-D float vector."""

    def encrypt_with_secret(self, secret: SecretKey, values: Any) -> Ciphertext:
        """Encrypt as a holder of the secret key (a key holder's own inputs).

        The result is an ordinary ciphertext under the key pair for every other party: it adds
        to public-key ciphertexts and any key holder decrypts it. Default: :meth:`encrypt` under
        ``secret.public()``; a scheme with a cheaper secret-key form overrides it (CKKS: seeded
        RLWE, half the bytes on the wire).
        """
        return self.encrypt(secret.public(), values)

    @abc.abstractmethod
    def decrypt(self, secret: SecretKey, ct: Ciphertext) -> np.ndarray:
        """Decrypt to a float64 vector of ``ct.length`` values."""

    # --- homomorphic operations ---------------------------------------------------------------
    @abc.abstractmethod
    def add(self, a: Ciphertext, b: Ciphertext) -> Ciphertext:
        """Enc(a) + Enc(b) elementwise; KeyMismatchError if keys differ."""

    @abc.abstractmethod
    def add_plain(self, a: Ciphertext, values: Any) -> Ciphertext:
        """Enc(a) + plaintext vector (or scalar broadcast)."""

    @abc.abstractmethod
    def mul_plain(self, a: Ciphertext, factor: Any) -> Ciphertext:
        """Enc(a) * plaintext scalar or elementwise vector."""

    @abc.abstractmethod
    def matmul_plain(self, a: Ciphertext, matrix: Any) -> Ciphertext:
        """Enc(v) @ M for plaintext M of shape (len(v), m): an encrypted vector of length m."""

    def matmul_repeat(self, *, rows: int, columns: int) -> int:
        """How many times :meth:`matmul_repeated` wants each value of ``v`` repeated in its
        ciphertext for a product with a plaintext matrix of ``rows`` x ``columns``: the layout a
        protocol encrypts ``v`` in when it can choose (vertical LR's residuals).

        Default 1: no repetition, and ``matmul_repeated`` is ``matmul_plain``. A slot-packed
        scheme returns a larger value when that makes encrypting the repeated vector and the
        product cheaper (CKKS: a power of two >= ``columns``). A pure function of the backend's
        parameters and the arguments, so every party derives the same layout.
        """
        return 1

    def matmul_fill_rows(self, *, columns: int) -> int | None:
        """The rows of a batch whose residuals, in :meth:`matmul_repeat`'s layout for a product
        with ``columns`` columns, fill one ciphertext: the batch a protocol picks when asked to
        fill the slots (vertical LR's ``training.fill_slots``).

        Default None: the scheme has no slots to fill (one value per ciphertext, or no
        packing); a slot-packed scheme returns its slot count over the repeat. Like
        :meth:`matmul_repeat`, a pure function of the parameters and the argument.
        """
        return None

    def matmul_repeated(self, a: Ciphertext, matrix: Any, *, repeat: int) -> Ciphertext:
        """``v @ M`` from ``a = Enc(np.repeat(v, repeat))``, for a plaintext ``M`` of shape
        (len(v), m) with ``m <= repeat`` (any ``m`` for ``repeat = 1``): an encrypted vector of
        length m, as ``matmul_plain`` of ``Enc(v)`` gives.

        Default: ``matmul_plain`` of ``a`` with ``M`` spread over the repeated rows (row
        ``i * repeat + j`` holds ``M[i, j]`` in column ``j``), correct for every backend with
        ``matmul_plain``; with ``repeat = 1``, ``matmul_plain(a, M)`` itself. Backends that
        return a larger :meth:`matmul_repeat` override it with their fast path.

        Raises:
            ConfigError: ``repeat`` is not an integer >= 1, ``a`` does not hold whole repeats,
                or ``M`` has the wrong number of rows or more than ``repeat`` columns.
        """
        m = as_repeated_matrix(matrix, length=a.length, repeat=repeat)
        if repeat == 1:
            return self.matmul_plain(a, m)
        rows, cols = m.shape
        spread = np.zeros((rows, repeat, cols))
        spread[:, np.arange(cols), np.arange(cols)] = m  # row i*repeat + j, column j: M[i, j]
        return self.matmul_plain(a, spread.reshape(rows * repeat, cols))

    def matmul_repeated_sum(self, terms: Sequence[tuple[Ciphertext, Any]], *, repeat: int) -> Ciphertext:
        """``sum_t v_t @ M_t`` from ``terms`` of ``(Enc(np.repeat(v_t, repeat)), M_t)``, every
        ``M_t`` with the same number of columns: one encrypted vector of that length.

        Default: the sum of each term's :meth:`matmul_repeated`. A slot-packed backend
        overrides it to add the terms' products before one shared rotate-and-sum (CKKS: one
        product per ciphertext, one fold and one mask whatever the number of terms), which is
        what makes a running sum of many small products (vertical LR's per-epoch loss) cheap.

        Raises:
            ConfigError: no terms, matrices of different widths, or any term
                :meth:`matmul_repeated` refuses (:func:`as_repeated_terms`).
        """
        mats = as_repeated_terms(terms, repeat=repeat)
        return self.sum([self.matmul_repeated(a, m, repeat=repeat) for (a, _), m in zip(terms, mats)])

    def sum(self, cts: Sequence[Ciphertext]) -> Ciphertext:
        """Sum of many ciphertexts (backends may override with something faster)."""
        if not cts:
            raise ConfigError("sum() needs at least one ciphertext")
        return reduce(self.add, cts)

    # --- wire ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def serialize(self, ct: Ciphertext) -> bytes:
        """Bytes for the wire (magic + version + key fingerprint + payload)."""

    @abc.abstractmethod
    def deserialize(self, public: PublicContext, data: bytes) -> Ciphertext:
        """Inverse of serialize under ``public``; KeyMismatchError if the bytes carry another
        key's fingerprint, CiphertextFormatError if they do not parse."""

    def wire_size(self, ct: Ciphertext) -> int:
        """Bytes ``ct`` costs on the wire."""
        return len(self.serialize(ct))

    # --- capabilities: what protocols ask instead of the backend's name ------------------------
    @classmethod
    def capabilities(cls) -> Capabilities:
        """What this scheme can do (default: ``exact`` from the class, matmul, no optional packing)."""
        return Capabilities(exact_sums=bool(cls.exact))

    @classmethod
    def defaults_for(cls, use: Use, *, summands: int) -> dict[str, Any]:
        """Backend parameters ``use`` (one of :data:`USES`) needs with ``summands`` contributions
        per sum; override to size your scheme. Callers go through :meth:`params_for`, which
        validates the request and lets explicit parameters win. Default: none (``{}``)."""
        return {}

    @classmethod
    def params_for(cls, use: Use, *, summands: int, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The parameters to build this backend with for ``use``: :meth:`defaults_for` merged
        under the caller's explicit ``params`` (explicit keys win). Not meant to be overridden.

        Raises:
            ConfigError: ``use`` is not one of :data:`USES`, or ``summands`` is not an integer >= 1.
        """
        if use not in USES:
            raise ConfigError(f"unknown backend use {use!r} (uses: {', '.join(USES)})")
        if isinstance(summands, bool) or not isinstance(summands, int) or summands < 1:
            raise ConfigError(f"summands must be an integer >= 1, got {summands!r}")
        return {**cls.defaults_for(use, summands=summands), **dict(params or {})}

    # --- description --------------------------------------------------------------------------
    @abc.abstractmethod
    def info(self) -> BackendInfo:
        """Properties shown by ``fedsilo backends``."""

    def params(self) -> dict[str, Any]:
        """The validated parameters this backend was built with (JSON-safe)."""
        return {}

    def confidentiality(self) -> Confidentiality:
        """Whether this instance, with its parameters, gives real confidentiality.

        The default follows the class's ``secure`` flag; backends with weak parameter choices
        override it. fedsilo refuses to run an instance that is not secure unless the
        federation config says ``[crypto] insecure = true``.
        """
        if self.secure:
            return Confidentiality(True)
        return Confidentiality(False, 0, reason=f"{self.name!r} does not encrypt")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    # --- shared checks for implementations ------------------------------------------------------
    def _check_same_key(self, *objs: Any) -> None:
        prints = {o.fingerprint for o in objs}
        if len(prints) > 1:
            raise KeyMismatchError(
                f"{self.name}: operands are under different keys ({', '.join(sorted(p[:8] for p in prints))}); "
                "ciphertexts from another key pair or context cannot be combined"
            )

    def _check_kind(self, obj: Any, kind: type, what: str) -> None:
        if not isinstance(obj, kind):
            raise KeyMismatchError(
                f"{self.name}: expected a {kind.__name__} for {what}, got {type(obj).__name__} "
                "(an object from another backend?)"
            )

    def _sum_operands(self, cts: Sequence[Ciphertext], check: Any) -> list[Any]:
        """The operands of a sum after ``check`` (the backend's ciphertext check): at least one,
        all under one key, all of one length."""
        if not cts:
            raise ConfigError("sum() needs at least one ciphertext")
        checked = [check(c, "an operand") for c in cts]
        self._check_same_key(*checked)
        for c in checked[1:]:
            check_lengths(checked[0].length, c.length)
        return checked

    @staticmethod
    def _split_header(data: bytes, *, kind: bytes, backend: str) -> tuple[str, bytes]:
        """Parse ``WIRE_MAGIC | kind(4) | fingerprint(32 ascii) | payload``."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise CiphertextFormatError(f"{backend}: expected bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) < 40 or data[:4] != WIRE_MAGIC:
            raise CiphertextFormatError(
                f"{backend}: not a fedsilo {kind.decode()} object (bad magic or truncated, {len(data)} bytes)"
            )
        if data[4:8] != kind:
            raise CiphertextFormatError(
                f"{backend}: expected a {kind.decode()!r} object, got {data[4:8]!r}"
            )
        try:
            fp = data[8:40].decode("ascii")
        except UnicodeDecodeError as exc:
            raise CiphertextFormatError(f"{backend}: corrupt key fingerprint") from exc
        return fp, data[40:]

    @staticmethod
    def _header(kind: bytes, fingerprint: str) -> bytes:
        assert len(kind) == 4 and len(fingerprint) == 32
        return WIRE_MAGIC + kind + fingerprint.encode("ascii")
