"""The encrypted training loss (no DP only): the Taylor loss ``log 2 − 1/2 + 2·mean(d²)``.

``Σ d² / R`` over an epoch's ``R`` rows is summed under encryption from each party's part of
``d = a + Σ_h b_h`` (see :mod:`.taylor`): every host sends ``[[‖b_h‖²/R]]`` with its partial
logits, the guest adds ``(Σa² + 2 a·Σb) / R`` and, with more than one host, each later host's
cross term ``[[2 (Σ_{h'<h} b_h')·b_h / R]]``. Once per epoch the guest sends the sum (a few
partial sums when the backend's magnitude bound forbids one) to the key holder, who decrypts
it and returns one scalar. Under DP the loss is never decrypted (it would be a further
release).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from fedsilo.crypto.base import Ciphertext, CryptoBackend
from fedsilo.errors import EncodingOverflowError, ProtocolError
from fedsilo.protocols.channel import Channel
from fedsilo.protocols.vertical.keys import Keys, Packing
from fedsilo.protocols.vertical.messages import LOSS, LOSS_VALUE
from fedsilo.protocols.vertical.taylor import taylor_loss

__all__ = [
    "accumulate",
    "cross_term",
    "decrypt_loss",
    "request_loss",
    "serve_loss",
    "square_term",
]


# ------------------------------------------------------------------------------ per step


def square_term(b: np.ndarray, *, rows: int) -> np.ndarray:
    """``‖b_h‖² / R``: a host's own part of ``Σ d² / R`` (the host encrypts it)."""
    return np.array([float(b @ b) / rows])


def cross_term(backend: CryptoBackend, prefix: Ciphertext, b: np.ndarray, *, rows: int, packing: Packing) -> Ciphertext:
    """``[[2 prefix·b_h / R]]``: a later host's cross term with the hosts before it (arbiter
    only), ``prefix`` in the step's layout ``packing``."""
    return packing.product(backend, prefix, (2.0 * b / rows)[:, None])


def accumulate(backend: CryptoBackend, acc: list[Ciphertext], term: Ciphertext) -> None:
    """Add ``term`` to the last running sum, or start a new one when the backend's (public,
    conservative) magnitude bound would overflow — CKKS tracks ``value_bound`` per summand."""
    if acc:
        try:
            acc[-1] = backend.add(acc[-1], term)
            return
        except EncodingOverflowError:
            pass
    acc.append(term)


# ------------------------------------------------------------------------------ per epoch


def request_loss(
    ch: Channel, keys: Keys, *, holder: str, sums: list[Ciphertext], round: int, timeout: float
) -> float | None:
    """The guest's side of the loss: send the epoch's running sums (under ``holder``'s key) to
    the key holder and turn the decrypted total into the mean Taylor loss (None after an epoch
    without steps)."""
    ch.send(holder, LOSS, [keys.ser(c) for c in sums], round=round)
    value = ch.recv(holder, LOSS_VALUE, round=round, timeout=timeout)
    if not sums:
        return None
    return taylor_loss(sum_squared_residuals=float(value["sum"]), rows=1)


def serve_loss(ch: Channel, keys: Keys, *, guest: str, round: int, timeout: float) -> None:
    """The key holder's side of the loss: decrypt the guest's sums and return their total."""
    blobs = ch.recv(guest, LOSS, round=round, timeout=timeout)
    ch.send(guest, LOSS_VALUE, {"sum": decrypt_loss(keys, blobs, sender=guest)}, round=round)


def decrypt_loss(keys: Keys, blobs: Any, *, sender: str) -> float:
    """The key holder's side of the loss: decrypt the (few) partial sums, add them up."""
    if not isinstance(blobs, list):
        raise ProtocolError(f"malformed loss message from {sender!r}")
    return float(sum(float(keys.dec(keys.de(b, sender=sender))[0]) for b in blobs))
