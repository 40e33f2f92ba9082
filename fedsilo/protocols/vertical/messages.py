"""The messages of vertical logistic regression, in the order of one job, and their checks.

Each kind below goes from one role to another and carries one payload shape, encoded by
:mod:`fedsilo.protocols.codec`; ``[[x]]`` is a serialized ciphertext (bytes) under the key of
whoever decrypts it, party names are strings, ``R`` is the number of training rows in the epoch.
The steps that send them are drawn in :mod:`.parties`.

Rounds (from the ``start_round`` of training): one set-up round (HELLO, SETUP, KEY); then per
epoch one round for EPOCH, one per step (PARTIAL … PLAIN) and one for the loss (LOSS,
LOSS_VALUE); then the final EPOCH ``{"stop": True}``. The joint prediction (PREDICT, SCORE)
runs once, after training, in a round of the job's choosing.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedsilo.errors import PeerTimeoutError, ProtocolError
from fedsilo.protocols.channel import Channel

__all__ = [
    "CROSS",
    "EPOCH",
    "GRAD",
    "HELLO",
    "KEY",
    "LOSS",
    "LOSS_VALUE",
    "MESSAGE_KINDS",
    "NOISE",
    "PARTIAL",
    "PLAIN",
    "PREDICT",
    "PROTOCOL",
    "RESIDUAL",
    "SCORE",
    "SETUP",
    "as_float_vector",
    "check_partition",
    "check_setup",
    "gather_all",
]

#: the protocol's name in ledger entries
PROTOCOL = "vertical_lr"

# ------------------------------------------------------------------------------ message kinds
# One payload shape each, in the order of one job (the figure in :mod:`.parties`).
#: host → guest, once: ``{"rows": int, "train": int, "eval": int, "dim": int, "config": str, "dp": str}``
#: (its aligned row counts, its gradient's length, digests of its training and DP settings)
HELLO = "vlr/hello"
#: guest → hosts (+ arbiter), once: ``{"dims": {party: int}, "plan": DpPlan JSON | None, "loss": bool}``
SETUP = "vlr/setup"
#: key holder → party, once: ``{"public": bytes}`` (a public context, never a secret key); the
#: arbiter sends its key to every data party, two-party each party sends its own to the other
KEY = "vlr/key"
#: guest → hosts, per epoch: ``{"stop": False, "batches": [int array]}`` (the epoch's partition of
#: the training rows); guest → arbiter, per epoch: ``{"stop": False, "sizes": [int]}`` (the batch
#: sizes only); to both after the last epoch: ``{"stop": True}``
EPOCH = "vlr/epoch"
#: host → guest, per step: ``{"ct": [[b_h]], "sq"?: [[‖b_h‖²/R]]}`` (``sq`` only when the loss is
#: tracked), under the arbiter's key, or (two-party) the host's own. ``[[b_h]]``, like every
#: residual ciphertext below, holds the batch's ``n_b`` values each repeated ``repeat`` times
#: (:class:`.keys.Packing`, from the backend's ``matmul_repeat``: 1 for Paillier and ``plain``),
#: ``n_b · repeat`` values; a receiver refuses any other length
PARTIAL = "vlr/partial"
#: guest → host, per step: ``{"ct": [[·]], "prefix"?: [[Σ_{h'<h} b_h']]}`` (in the step's layout);
#: with an arbiter ``ct`` is the whole residual ``[[d]]`` (and ``prefix``, for the loss, goes to
#: the 2nd host on); two-party it is the guest's part ``[[a]]`` under the guest's own key (the
#: host adds ``b``)
RESIDUAL = "vlr/residual"
#: host → guest, per step (loss tracked, arbiter, 2nd host on): ``[[2 prefix·b_h / R]]``
CROSS = "vlr/cross"
#: party → key holder (the arbiter; two-party, the other party), per step: ``[[g_p + m_p (+ n_pp)]]``,
#: ``m_p`` values whatever the residuals' layout; on Paillier BatchCrypt-packed
#: (:class:`.keys.GradSlots`): ``ceil(m_p / slots)`` values, each a masked packed plaintext
GRAD = "vlr/grad"
#: party → arbiter, per step (DP, arbiter only): ``{owner: [[n_qp]]}``, one noise share per other
#: data party, packed like the owner's gradient (two-party, the key holder adds its share itself
#: before decrypting: no message)
NOISE = "vlr/noise"
#: key holder → party, per step: the decrypted masked (and noised) gradient, a float vector; for a
#: packed gradient the masked packed plaintexts, a list of ``ceil(m_p / slots)`` ints
PLAIN = "vlr/plain"
#: guest → key holder, per epoch (no DP): ``[[[partial loss sums]]]``, a list of ciphertexts
LOSS = "vlr/loss"
#: key holder → guest, per epoch (no DP): ``{"sum": float}``
LOSS_VALUE = "vlr/loss_value"
#: guest → hosts, once after training (no DP): ``{"rows": int array}``
PREDICT = "vlr/predict"
#: host → guest, answer to PREDICT: the exact partial scores of those rows, a float vector
SCORE = "vlr/score"

MESSAGE_KINDS = (HELLO, SETUP, KEY, EPOCH, PARTIAL, RESIDUAL, CROSS, GRAD, NOISE, PLAIN, LOSS, LOSS_VALUE, PREDICT, SCORE)


# ------------------------------------------------------------------------------ receiving and checking


def gather_all(ch: Channel, senders: Sequence[str], kind: str, *, round: int, timeout: float) -> dict[str, Any]:
    """One ``kind`` message from every one of ``senders`` in ``round``, by sender.

    Raises:
        PeerTimeoutError: some sender sent nothing within ``timeout`` seconds.
    """
    got = ch.gather(senders, kind, round=round, timeout=timeout)
    missing = sorted(set(senders) - set(got))
    if missing:
        raise PeerTimeoutError(
            f"{ch.party}: no {kind!r} from {', '.join(map(repr, missing))} for round {round} within {timeout:g}s"
        )
    return got


def as_float_vector(value: Any, *, length: int, sender: str, what: str) -> np.ndarray:
    """``value`` checked to be ``length`` float64 values (a PLAIN gradient, SCORE partial scores).

    Raises:
        ProtocolError: anything else.
    """
    if not isinstance(value, np.ndarray) or value.dtype != np.float64 or value.shape != (length,):
        raise ProtocolError(f"malformed {what} from {sender!r} (expected {length} float64 values)")
    return value


def check_setup(setup: Any, *, who: str) -> dict[str, Any]:
    """The guest's SETUP message, checked to be a mapping with a ``dims`` mapping.

    Raises:
        ProtocolError: anything else.
    """
    if not isinstance(setup, dict) or not isinstance(setup.get("dims"), dict):
        raise ProtocolError(f"{who}: malformed setup message from the guest")
    return setup


def check_partition(batches: Any, rows: int, *, who: str) -> list[np.ndarray]:
    """The guest's batches of one epoch, checked to be a partition of ``range(rows)``: each
    training row in exactly one batch — what this party's per-epoch DP charge assumes."""
    if not isinstance(batches, list) or any(
        not isinstance(b, np.ndarray) or b.ndim != 1 or b.dtype.kind != "i" for b in batches
    ):
        raise ProtocolError(f"{who}: malformed batches from the guest")
    flat = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
    if flat.size != rows or not np.array_equal(np.sort(flat), np.arange(rows)):
        raise ProtocolError(
            f"{who}: the guest's batches do not partition the {rows} training rows (each row exactly once per epoch)"
        )
    return batches
