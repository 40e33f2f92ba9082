"""Joint prediction after training (no DP only), and the evaluation metrics of its scores.

A job runs it at most once, on the held-out rows: it reveals the hosts' exact partial scores
of those rows to the guest (see :mod:`.lr`, "Who learns what").
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedsilo.errors import ProtocolError
from fedsilo.protocols.channel import Channel
from fedsilo.protocols.metrics import accuracy, auc, ks_statistic, log_loss
from fedsilo.protocols.vertical.messages import PREDICT, SCORE, as_float_vector, gather_all
from fedsilo.protocols.vertical.model import LocalModel
from fedsilo.protocols.vertical.taylor import sigmoid

__all__ = ["evaluation_metrics", "predict_guest", "serve_predictions"]


def predict_guest(
    channel: Channel,
    *,
    hosts: Sequence[str],
    model: LocalModel,
    x: np.ndarray,
    rows: np.ndarray,
    round: int,
    timeout: float = 600.0,
    transformed: np.ndarray | None = None,
) -> np.ndarray:
    """Joint prediction, the guest's side: probabilities for ``rows`` of the aligned data.

    The guest sends the row indices; each host answers with its partial scores ``X_h w_h`` for
    those rows (exact, as in FATE's hetero-LR prediction; never called in a DP job); the guest
    adds its own and the intercept and applies the sigmoid. Only the guest learns the scores.
    """
    rows = np.asarray(rows, dtype=np.int64)
    xg = transformed if transformed is not None else model.transform(x)
    channel.broadcast(hosts, PREDICT, {"rows": rows}, round=round)
    got = gather_all(channel, hosts, SCORE, round=round, timeout=timeout)
    u = xg[rows] @ model.weights
    for h in hosts:
        u = u + as_float_vector(got[h], length=rows.size, sender=h, what="partial scores")
    return sigmoid(u)


def serve_predictions(
    channel: Channel,
    *,
    guest: str,
    model: LocalModel,
    x: np.ndarray,
    round: int,
    timeout: float = 600.0,
    allowed: np.ndarray | None = None,
    transformed: np.ndarray | None = None,
) -> np.ndarray:
    """Joint prediction, a host's side: answer one request with its exact partial scores.

    ``allowed`` restricts which rows the guest may ask about (e.g. only evaluation rows, never
    training rows); a request outside it raises :class:`ProtocolError`. The scores leave the
    host unnoised, so a DP job never calls this (see :mod:`.lr`, "Who learns what").
    """
    msg = channel.recv(guest, PREDICT, round=round, timeout=timeout)
    rows = msg.get("rows") if isinstance(msg, dict) else None
    if not isinstance(rows, np.ndarray) or rows.ndim != 1 or rows.dtype.kind != "i":
        raise ProtocolError(f"malformed prediction request from {guest!r}")
    n = x.shape[0]
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise ProtocolError(f"prediction request from {guest!r} names rows outside 0..{n - 1}")
    if allowed is not None and not np.isin(rows, allowed).all():
        raise ProtocolError(f"prediction request from {guest!r} names rows it may not score (training rows?)")
    xh = transformed if transformed is not None else model.transform(x)
    scores = xh[rows] @ model.weights
    channel.send(guest, SCORE, scores, round=round)
    return scores


def evaluation_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """AUC, accuracy, KS and log loss of the probabilities ``probs`` for 0/1 ``labels``."""
    return {
        "auc": auc(labels=labels, scores=probs),
        "accuracy": accuracy(labels=labels, scores=probs),
        "ks": ks_statistic(labels=labels, scores=probs),
        "test_loss": log_loss(labels=labels, probabilities=probs),
    }
