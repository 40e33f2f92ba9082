"""A researcher's backend living outside fedsilo, written from scratch against ``fedsilo.crypto.base``.

It proves two things: the entry-point registry finds a third-party backend, and such a backend
gets exactly what a built-in gets from the protocols (:meth:`CryptoBackend.params_for`), with
no name of it anywhere in fedsilo.

**Insecure on purpose**: a "ciphertext" holds its values in the clear (``confidentiality()``
says so, so a job needs ``[crypto] insecure = true``). To show that the protocols ask it for
its parameters, it counts summands like a packed scheme: a sum may hold at most
``max_summands`` contributions (default 1), and :meth:`defaults_for` asks for as many as the
use needs; without that call, a secure sum of two silos would raise.
"""
from __future__ import annotations

import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

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
    as_vector,
    broadcast_vector,
    check_lengths,
    fingerprint_of,
)
from fedsilo.errors import CiphertextFormatError, ConfigError, EncodingOverflowError

__all__ = ["PluginPlainBackend"]

NAME = "plugin_plain"
_KEY_ID_BYTES = 32
_CT_HEAD = struct.Struct(">BQI")  # version, length, summands
_VERSION = 1


@dataclass(frozen=True, repr=False)
class ToyPublic(PublicContext):
    key_id: bytes
    backend: ClassVar[str] = NAME

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(NAME, self.key_id)

    def serialize(self) -> bytes:
        return CryptoBackend._header(b"PUBK", self.fingerprint) + self.key_id


@dataclass(frozen=True, repr=False)
class ToySecret(SecretKey):
    key_id: bytes
    backend: ClassVar[str] = NAME

    def public(self) -> ToyPublic:
        return ToyPublic(self.key_id)

    def export_secret(self) -> bytes:
        return CryptoBackend._header(b"SECK", self.fingerprint) + self.key_id

    def __reduce__(self) -> Any:
        raise TypeError("ToySecret cannot be pickled; use export_secret() explicitly")


class ToyCiphertext(Ciphertext):
    backend: ClassVar[str] = NAME

    def __init__(self, values: np.ndarray, fingerprint: str, summands: int, ops: PluginPlainBackend) -> None:
        self.values = values
        self.fingerprint = fingerprint
        self.length = int(values.shape[0])
        self.summands = summands
        self._ops = ops


class PluginPlainBackend(CryptoBackend):
    """No encryption, a summand budget, and the capability methods a protocol asks for."""

    name: ClassVar[str] = NAME
    exact: ClassVar[bool] = True
    secure: ClassVar[bool] = False

    def __init__(self, *, max_summands: int = 1) -> None:
        if isinstance(max_summands, bool) or not isinstance(max_summands, int) or max_summands < 1:
            raise ConfigError(f"{NAME}: max_summands must be an integer >= 1, got {max_summands!r}")
        self.max_summands = max_summands

    # --- capabilities -----------------------------------------------------------------------
    @classmethod
    def capabilities(cls) -> Capabilities:
        return Capabilities(exact_sums=True, plaintext_matmul=True, packing=None)

    @classmethod
    def defaults_for(cls, use: Use, *, summands: int) -> dict[str, Any]:
        """Room for every contribution of a sum, whatever the use."""
        return {"max_summands": summands}

    def confidentiality(self) -> Confidentiality:
        return Confidentiality(False, 0, reason=f"{NAME!r} is a test backend that does not encrypt")

    def params(self) -> dict[str, Any]:
        return {"max_summands": self.max_summands}

    def info(self) -> BackendInfo:
        return BackendInfo(
            name=self.name,
            exact=True,
            secure=False,
            values_per_ciphertext=0,
            bytes_per_value=8.0,
            error_bound=0.0,
            supports=("add", "add_plain", "sum", "mul_scalar", "mul_vector", "matmul"),
            description=f"test plugin: no encryption, <= {self.max_summands} summands (needs [crypto] insecure = true)",
        )

    # --- keys -------------------------------------------------------------------------------
    def keygen(self) -> ToySecret:
        return ToySecret(secrets.token_bytes(_KEY_ID_BYTES))

    def _key_body(self, data: bytes, kind: bytes) -> bytes:
        fp, body = self._split_header(data, kind=kind, backend=self.name)
        if len(body) != _KEY_ID_BYTES or fingerprint_of(NAME, body) != fp:
            raise CiphertextFormatError(f"{NAME}: corrupt key (fingerprint does not match its body)")
        return body

    def load_public(self, data: bytes) -> ToyPublic:
        return ToyPublic(self._key_body(data, b"PUBK"))

    def load_secret(self, data: bytes) -> ToySecret:
        return ToySecret(self._key_body(data, b"SECK"))

    # --- "encryption" -----------------------------------------------------------------------
    def _ct(self, ct: Any, what: str = "the ciphertext") -> ToyCiphertext:
        self._check_kind(ct, ToyCiphertext, what)
        return ct

    def encrypt(self, public: PublicContext, values: Any) -> ToyCiphertext:
        self._check_kind(public, ToyPublic, "the public context")
        return ToyCiphertext(as_vector(values).copy(), public.fingerprint, 1, self)

    def decrypt(self, secret: SecretKey, ct: Ciphertext) -> np.ndarray:
        self._check_kind(secret, ToySecret, "the secret key")
        c = self._ct(ct)
        self._check_same_key(secret, c)
        return c.values.copy()

    # --- homomorphic operations -------------------------------------------------------------
    def add(self, a: Ciphertext, b: Ciphertext) -> ToyCiphertext:
        return self.sum([a, b])

    def sum(self, cts: Sequence[Ciphertext]) -> ToyCiphertext:
        checked = self._sum_operands(cts, self._ct)
        total = sum(c.summands for c in checked)
        if total > self.max_summands:
            raise EncodingOverflowError(
                f"{NAME}: the sum would hold {total} summands, max_summands={self.max_summands}"
            )
        values = np.sum([c.values for c in checked], axis=0)
        return ToyCiphertext(values, checked[0].fingerprint, total, self)

    def add_plain(self, a: Ciphertext, values: Any) -> ToyCiphertext:
        c = self._ct(a)
        return ToyCiphertext(c.values + broadcast_vector(values, c.length), c.fingerprint, c.summands, self)

    def mul_plain(self, a: Ciphertext, factor: Any) -> ToyCiphertext:
        c = self._ct(a)
        return ToyCiphertext(c.values * broadcast_vector(factor, c.length), c.fingerprint, c.summands, self)

    def matmul_plain(self, a: Ciphertext, matrix: Any) -> ToyCiphertext:
        c = self._ct(a)
        return ToyCiphertext(c.values @ as_matrix(matrix, c.length), c.fingerprint, c.summands, self)

    # --- wire -------------------------------------------------------------------------------
    def serialize(self, ct: Ciphertext) -> bytes:
        c = self._ct(ct)
        head = _CT_HEAD.pack(_VERSION, c.length, c.summands)
        return self._header(b"CTXT", c.fingerprint) + head + c.values.astype(">f8").tobytes()

    def deserialize(self, public: PublicContext, data: bytes) -> ToyCiphertext:
        self._check_kind(public, ToyPublic, "the public context")
        fp, body = self._split_header(data, kind=b"CTXT", backend=self.name)
        self._check_same_key(public, FingerprintOnly(fp))
        try:
            version, length, summands = _CT_HEAD.unpack_from(body)
        except struct.error as exc:
            raise CiphertextFormatError(f"{NAME}: truncated ciphertext header") from exc
        payload = body[_CT_HEAD.size :]
        if version != _VERSION or summands < 1 or len(payload) != 8 * length:
            raise CiphertextFormatError(f"{NAME}: corrupt ciphertext ({len(payload)} payload bytes for {length} values)")
        values = np.frombuffer(payload, dtype=">f8").astype(np.float64)
        if not np.all(np.isfinite(values)):
            raise CiphertextFormatError(f"{NAME}: ciphertext holds non-finite values")
        check_lengths(length, values.shape[0])
        return ToyCiphertext(values, fp, summands, self)
