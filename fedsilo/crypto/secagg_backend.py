"""The ``secagg`` backend: keyless secure aggregation (SecAgg+ masking), as a *session* backend.

No party holds a key that opens another party's input: silos mask their vectors with pairwise
masks that cancel in the sum and a self mask the survivors help remove (the maths:
:mod:`fedsilo.crypto.secagg`; the rounds: :mod:`fedsilo.protocols.horizontal.secagg`;
``docs/secagg.md``). There is no ciphertext to add, so this class carries only the public
parameters of the sums; its :meth:`capabilities` say ``key_model = "keyless"``, and a protocol
sums through the secure-sum session that flag selects
(:func:`fedsilo.protocols.horizontal.sums.open_silo_sum`). The primitive methods of
:class:`~fedsilo.crypto.base.CryptoBackend` raise
:class:`~fedsilo.errors.UnsupportedOperationError`.

Parameters (``[crypto] params``):

* ``threshold``: ``t``, shares that reconstruct a secret and the fewest silos a sum goes on
  with; default ``⌊(k + c)/2⌋ + 1`` for the neighbourhood degree ``k`` and ``c`` colluders (a
  protocol may raise it to its own minimum of contributors).
* ``degree``: neighbours per silo; default from the silo count (SecAgg's complete graph up to 11
  silos, ``O(log n)`` above).
* ``granularity``: the fixed-point grid of exact sums (a power of two, default ``2^-24``).
* ``value_bound``: largest ``|x|`` per value of an exact sum (default ``2^21``, so the federated
  metrics' counts need no scaling; for federated statistics up to ``2^32``, what the 64-bit ring
  holds for the job's silos: :meth:`SecAggBackend.defaults_for`).
* ``prg``: ``"aes-ctr"`` (default) or ``"chacha20"``.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, NoReturn

import numpy as np

from fedsilo.crypto import secagg as sa
from fedsilo.crypto.base import BackendInfo, Capabilities, Ciphertext, CryptoBackend, PublicContext, SecretKey
from fedsilo.errors import ConfigError, UnsupportedOperationError

__all__ = ["SecAggBackend", "DEFAULT_GRANULARITY", "DEFAULT_VALUE_BOUND", "PARAMS"]

#: Grid of exact sums: model updates are rounded to it (half an ulp of it per value and silo).
DEFAULT_GRANULARITY = 2.0**-24
#: Largest |x| of an exact sum by default: 2^21 >= twice the most held-out rows a silo may
#: score, so the metric inputs need no scaling (``evaluation.encoding_scale``).
DEFAULT_VALUE_BOUND = 2.0**21
#: The ``[crypto] params`` keys of the secagg backend.
PARAMS = ("threshold", "degree", "granularity", "value_bound", "prg")


class SecAggBackend(CryptoBackend):
    """SecAgg+ pairwise masking in ``Z_{2^b}``: no key, exact on its grid, dropout-tolerant."""

    name: ClassVar[str] = "secagg"
    exact: ClassVar[bool] = True
    secure: ClassVar[bool] = True

    def __init__(
        self,
        *,
        threshold: int | None = None,
        degree: int | None = None,
        granularity: float = DEFAULT_GRANULARITY,
        value_bound: float = DEFAULT_VALUE_BOUND,
        prg: str = "aes-ctr",
    ) -> None:
        # an unknown key is refused by fedsilo.crypto.registry.check_params (did-you-mean, valid keys)
        for key, value, low in (("threshold", threshold, 2), ("degree", degree, 1)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise ConfigError(f"secagg: {key} must be an integer >= {low}, got {value!r}")
        try:
            g = sa.check_granularity(granularity)
        except ConfigError as exc:
            raise ConfigError(f"secagg: granularity: {exc}") from None
        if isinstance(value_bound, bool) or not isinstance(value_bound, (int, float)) or not (
            math.isfinite(value_bound) and value_bound > 0
        ):
            raise ConfigError(f"secagg: value_bound must be a finite number > 0, got {value_bound!r}")
        if prg not in sa.PRGS:
            raise ConfigError(f"secagg: unknown prg {prg!r}; expected one of {', '.join(sa.PRGS)}")
        self.threshold = threshold
        self.degree = degree
        self.granularity = g
        self.value_bound = float(value_bound)
        self.prg = prg

    @classmethod
    def capabilities(cls) -> Capabilities:
        return Capabilities(exact_sums=True, plaintext_matmul=False, key_model="keyless", dropout_tolerant=True)

    @classmethod
    def defaults_for(cls, use: Any, *, summands: int) -> dict[str, Any]:
        """Statistics sum raw counts and column sums (a silo may hold millions of rows): the
        largest power-of-two ``value_bound`` up to ``2^32`` whose ring still fits 64 bits for
        ``summands`` contributions at the default grid. Other uses keep the class defaults."""
        if use != "statistics":
            return {}
        bound = 2.0**32
        while bound > DEFAULT_VALUE_BOUND:
            try:
                sa.fixed_point_bits(value_bound=bound, granularity=DEFAULT_GRANULARITY, summands=summands)
                break
            except ConfigError:
                bound /= 2
        return {"value_bound": bound}

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"granularity": self.granularity, "value_bound": self.value_bound, "prg": self.prg}
        if self.threshold is not None:
            out["threshold"] = self.threshold
        if self.degree is not None:
            out["degree"] = self.degree
        return out

    def info(self) -> BackendInfo:
        t = f"t = {self.threshold}" if self.threshold is not None else "t = majority of each neighbourhood"
        bits = sa.fixed_point_bits(value_bound=self.value_bound, granularity=self.granularity, summands=2)
        return BackendInfo(
            name=self.name,
            exact=True,
            secure=True,
            values_per_ciphertext=0,
            bytes_per_value=float(np.dtype(sa.ring_dtype(bits)).itemsize),
            # exact sums round each value to the grid (half a step per value and silo)
            error_bound=self.granularity / 2,
            supports=("sum",),
            description=(
                f"SecAgg+ masking ({self.prg}, Shamir t-of-n): no key, exact on a 2^{int(math.log2(self.granularity))} "
                f"grid, dropout-tolerant, threshold {t}; DP: distributed discrete Gaussian"
            ),
            value_bound=self.value_bound,
            key_model="keyless",
            threshold=self.threshold,
            dropout_tolerant=True,
        )

    # -- no keys, no ciphertexts: a session backend ---------------------------------------------
    def _session_only(self, what: str) -> NoReturn:
        raise UnsupportedOperationError(
            f"secagg: {what} is not available: secagg is a keyless session backend (no keys, no ciphertexts); "
            "it sums through a secure-sum session and is supported for horizontal jobs only"
        )

    def keygen(self) -> SecretKey:
        self._session_only("keygen")

    def load_public(self, data: bytes) -> PublicContext:
        self._session_only("load_public")

    def load_secret(self, data: bytes) -> SecretKey:
        self._session_only("load_secret")

    def encrypt(self, public: PublicContext, values: Any) -> Ciphertext:
        self._session_only("encrypt")

    def decrypt(self, secret: SecretKey, ct: Ciphertext) -> np.ndarray:
        self._session_only("decrypt")

    def add(self, a: Ciphertext, b: Ciphertext) -> Ciphertext:
        self._session_only("add")

    def add_plain(self, a: Ciphertext, values: Any) -> Ciphertext:
        self._session_only("add_plain")

    def mul_plain(self, a: Ciphertext, factor: Any) -> Ciphertext:
        self._session_only("mul_plain")

    def matmul_plain(self, a: Ciphertext, matrix: Any) -> Ciphertext:
        self._session_only("matmul_plain")

    def serialize(self, ct: Ciphertext) -> bytes:
        self._session_only("serialize")

    def deserialize(self, public: PublicContext, data: bytes) -> Ciphertext:
        self._session_only("deserialize")
