"""The ``plain`` backend: the crypto interface with no encryption at all.

A baseline for benchmarks and a fast test double for protocols. ``secure = False``, so its
:meth:`~fedsilo.crypto.base.CryptoBackend.confidentiality` is not secure and a federation config
naming it is refused unless it says ``[crypto] insecure = true``.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from fedsilo.crypto.base import (
    BackendInfo,
    Ciphertext,
    CryptoBackend,
    PublicContext,
    SecretKey,
    FingerprintOnly,
    check_lengths,
    as_matrix,
    as_vector,
    broadcast_vector,
    fingerprint_of,
)
from fedsilo.errors import CiphertextFormatError

__all__ = ["PlainBackend"]


@dataclass(frozen=True, repr=False)
class PlainPublic(PublicContext):
    key_id: str
    backend: ClassVar[str] = "plain"

    @property
    def fingerprint(self) -> str:
        return fingerprint_of("plain", self.key_id)

    def serialize(self) -> bytes:
        return CryptoBackend._header(b"PUBK", self.fingerprint) + self.key_id.encode()


@dataclass(frozen=True, repr=False)
class PlainSecret(SecretKey):
    key_id: str
    backend: ClassVar[str] = "plain"

    def public(self) -> PlainPublic:
        return PlainPublic(self.key_id)

    def export_secret(self) -> bytes:
        return CryptoBackend._header(b"SECK", self.fingerprint) + self.key_id.encode()


class PlainCiphertext(Ciphertext):
    backend: ClassVar[str] = "plain"

    def __init__(self, values: np.ndarray, fingerprint: str, ops: "PlainBackend") -> None:
        self.values = values
        self.fingerprint = fingerprint
        self.length = int(values.shape[0])
        self._ops = ops


class PlainBackend(CryptoBackend):
    """No encryption; identical interface and error behaviour to the real backends."""

    name: ClassVar[str] = "plain"
    exact: ClassVar[bool] = True
    secure: ClassVar[bool] = False

    def __init__(self) -> None:
        pass

    def keygen(self) -> PlainSecret:
        return PlainSecret(secrets.token_hex(16))

    def load_public(self, data: bytes) -> PlainPublic:
        fp, body = self._split_header(data, kind=b"PUBK", backend=self.name)
        pub = PlainPublic(body.decode("ascii", errors="replace"))
        if pub.fingerprint != fp:
            raise CiphertextFormatError("plain: public context fingerprint does not match its body")
        return pub

    def load_secret(self, data: bytes) -> PlainSecret:
        fp, body = self._split_header(data, kind=b"SECK", backend=self.name)
        sk = PlainSecret(body.decode("ascii", errors="replace"))
        if sk.fingerprint != fp:
            raise CiphertextFormatError("plain: secret key fingerprint does not match its body")
        return sk

    def _wrap(self, values: np.ndarray, fingerprint: str) -> PlainCiphertext:
        return PlainCiphertext(values, fingerprint, self)

    def encrypt(self, public: PublicContext, values: Any) -> PlainCiphertext:
        self._check_kind(public, PlainPublic, "the public context")
        return self._wrap(as_vector(values).copy(), public.fingerprint)

    def decrypt(self, secret: SecretKey, ct: Ciphertext) -> np.ndarray:
        self._check_kind(secret, PlainSecret, "the secret key")
        self._check_kind(ct, PlainCiphertext, "the ciphertext")
        self._check_same_key(secret, ct)
        return ct.values.copy()

    def add(self, a: Ciphertext, b: Ciphertext) -> PlainCiphertext:
        self._check_kind(a, PlainCiphertext, "the left operand")
        self._check_kind(b, PlainCiphertext, "the right operand")
        self._check_same_key(a, b)
        check_lengths(a.length, b.length)
        return self._wrap(a.values + b.values, a.fingerprint)

    def add_plain(self, a: Ciphertext, values: Any) -> PlainCiphertext:
        self._check_kind(a, PlainCiphertext, "the ciphertext")
        v = broadcast_vector(values, a.length)
        return self._wrap(a.values + v, a.fingerprint)

    def mul_plain(self, a: Ciphertext, factor: Any) -> PlainCiphertext:
        self._check_kind(a, PlainCiphertext, "the ciphertext")
        v = broadcast_vector(factor, a.length)
        return self._wrap(a.values * v, a.fingerprint)

    def matmul_plain(self, a: Ciphertext, matrix: Any) -> PlainCiphertext:
        self._check_kind(a, PlainCiphertext, "the ciphertext")
        m = as_matrix(matrix, a.length)
        return self._wrap(a.values @ m, a.fingerprint)

    def serialize(self, ct: Ciphertext) -> bytes:
        # Raw little-endian float64, not the .npy format: numpy parses an .npy header with
        # ast.literal_eval, which CPython 3.11 does not make safe across threads (the in-process
        # engine runs every party as a thread: "AST constructor recursion depth mismatch").
        # Body: uint32 count, the values, an 8-byte BLAKE2b check (garbage and truncation are
        # refused, as a real backend's would be).
        self._check_kind(ct, PlainCiphertext, "the ciphertext")
        raw = np.ascontiguousarray(ct.values, dtype="<f8").tobytes()
        body = struct.pack("<I", ct.values.size) + raw
        return self._header(b"CTXT", ct.fingerprint) + body + hashlib.blake2b(body, digest_size=8).digest()

    def deserialize(self, public: PublicContext, data: bytes) -> PlainCiphertext:
        self._check_kind(public, PlainPublic, "the public context")
        fp, body = self._split_header(data, kind=b"CTXT", backend=self.name)
        self._check_same_key(public, FingerprintOnly(fp))
        if len(body) < 12:
            raise CiphertextFormatError("plain: corrupt ciphertext body (truncated)")
        payload, check = body[:-8], body[-8:]
        (count,) = struct.unpack_from("<I", payload)
        if len(payload) != 4 + 8 * count or not hmac.compare_digest(hashlib.blake2b(payload, digest_size=8).digest(), check):
            raise CiphertextFormatError("plain: corrupt ciphertext body (length or check value does not match)")
        return self._wrap(np.frombuffer(payload, dtype="<f8", offset=4).astype(np.float64), fp)

    def info(self) -> BackendInfo:
        return BackendInfo(
            name=self.name,
            exact=True,
            secure=False,
            values_per_ciphertext=0,
            bytes_per_value=8.0,
            error_bound=0.0,
            supports=("add", "add_plain", "mul_scalar", "mul_vector", "matmul"),
            description="no encryption (baseline / test double; needs [crypto] insecure = true)",
        )
