"""Federated evaluation: each silo scores its own held-out rows; only a secure sum leaves it.

A silo's held-out rows never leave it. To tell the federation how the global model does, each
silo turns its scores into **metric inputs** (:func:`metric_inputs`): per class ``c``, a
histogram of the predicted probability ``p_c`` over :data:`BINS` equal bins of ``[0, 1]`` for its
rows with ``y = c`` and for its rows with ``y ≠ c``, its number of rows, the number of correctly
classified rows, and the sum of per-row losses capped at :data:`LOSS_CAP` (divided by the cap, so
each row adds at most 1). The row count is its own coordinate so that, under DP, it carries the
noise of one coordinate rather than of every histogram bin. Every coordinate lies on the grid
:data:`GRID` (each row's capped loss is rounded down to it), and the DP noise is a discrete
Gaussian on that grid. The vectors are added by secure aggregation like model updates; the decrypted sum gives
(:func:`metrics_from_inputs`)

* accuracy = correct / rows;
* AUC from the two histograms (Mann–Whitney with ties inside a bin counted one half, Hanley &
  McNeil 1982) — binary: class 1; several classes: the unweighted mean of one-vs-rest AUCs;
* mean loss (each row's loss capped at :data:`LOSS_CAP`).

What is released: these ``2·BINS·K + 3`` sums over every contributing silo's held-out rows
(``K = 1`` for a binary task, else the number of classes) — never a row, a score or a silo's
own histogram. Without DP the sum is exact. Under record-level DP it is released once, after
training, with Gaussian noise shares of total standard deviation ``z · sqrt(K + 3)`` (adding or
removing one record moves ``K`` histogram counts, the row count, the correct count and the capped
loss by at most 1 each), charged to each silo's ledger first (:func:`sensitivity`). Under silo-level DP it
is not released: a whole silo's held-out rows move every count, so no useful noise level
protects them; each silo then knows only its own metrics (:func:`local_metrics`).
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fedsilo.errors import ConfigError, DataError
from fedsilo.protocols.metrics import accuracy as _accuracy
from fedsilo.protocols.metrics import auc as _auc

__all__ = [
    "BINS",
    "DP_BIN_MERGE",
    "GRID",
    "LOSS_CAP",
    "MAX_ROWS",
    "check_encoding",
    "classes_scored",
    "encoding_scale",
    "input_size",
    "local_metrics",
    "metric_inputs",
    "metrics_from_inputs",
    "sensitivity",
]

#: Equal-width probability bins per histogram (even, so 0.5 is a bin edge). Few enough that,
#: under DP, each bin's count stands above the noise on a held-out set of a hundred rows.
BINS = 20
#: Per-row loss cap (nats): bounds one record's contribution to the loss sum.
LOSS_CAP = 10.0
#: Every coordinate lives on this grid (counts on the integers, each row's capped loss rounded
#: down to it), so the discrete Gaussian noise under DP keeps the sum on the grid.
GRID = 2.0**-6
#: Most held-out rows one silo may score: bounds each coordinate for the encodings (see
#: :func:`encoding_scale`).
MAX_ROWS = 2**20
_EPS = 1e-12


def classes_scored(n_classes: int) -> int:
    """``K``: one one-vs-rest histogram pair for a binary task, one per class otherwise."""
    return 1 if n_classes == 2 else int(n_classes)


def input_size(n_classes: int) -> int:
    """Length of a metric-input vector: ``2·BINS·K + 3``."""
    return 2 * BINS * classes_scored(n_classes) + 3


def sensitivity(n_classes: int) -> float:
    """L2 sensitivity of the summed metric inputs when one record is added or removed:
    ``sqrt(K + 3)`` (one count per class histogram pair, the row count, the correct count, the
    capped loss)."""
    return math.sqrt(classes_scored(n_classes) + 3)


def _probabilities(scores: np.ndarray, n_classes: int) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if n_classes == 2:
        s = s.reshape(-1)
        return np.stack([1.0 - s, s], axis=1)
    if s.ndim != 2 or s.shape[1] != n_classes:
        raise DataError(f"expected scores of shape (n, {n_classes}), got {s.shape}")
    return s


def metric_inputs(scores: np.ndarray, labels: np.ndarray, *, n_classes: int) -> np.ndarray:
    """This silo's metric inputs for its held-out rows (see the module docstring).

    ``scores``: P(y=1) per row (binary) or softmax rows; ``labels``: integer classes.
    """
    probs = _probabilities(scores, n_classes)
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    if probs.shape[0] != y.shape[0]:
        raise DataError(f"{probs.shape[0]} scores for {y.shape[0]} labels")
    if y.size > MAX_ROWS:
        raise DataError(
            f"{y.size} held-out rows; a silo scores at most {MAX_ROWS} (lower [data] test_fraction)"
        )
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise DataError(f"labels must lie in 0..{n_classes - 1}")
    probs = np.nan_to_num(np.clip(probs, 0.0, 1.0), nan=0.0)
    bins = np.minimum((probs * BINS).astype(np.int64), BINS - 1)
    classes = [1] if n_classes == 2 else list(range(n_classes))
    parts = []
    for c in classes:
        own = y == c
        parts.append(np.bincount(bins[own, c], minlength=BINS))
        parts.append(np.bincount(bins[~own, c], minlength=BINS))
    correct = float(np.sum(np.argmax(probs, axis=1) == y)) if y.size else 0.0
    p_true = probs[np.arange(y.size), y] if y.size else np.zeros(0)
    loss = np.floor(np.minimum(-np.log(np.maximum(p_true, _EPS)), LOSS_CAP) / LOSS_CAP / GRID) * GRID
    return np.concatenate([np.concatenate(parts).astype(np.float64), [float(y.size), correct, float(loss.sum())]])


def check_encoding(*, exact: bool, error_bound: float, scale: float) -> None:
    """An exact backend must carry :data:`GRID` divided by ``scale`` without rounding: else
    each silo's noised share would leave the grid before the sum (the discrete-Gaussian
    argument needs grid values) and the counts would not be exact.

    Raises:
        ConfigError: naming ``crypto.params.precision``.
    """
    step = GRID / scale
    if exact and error_bound > 0 and 2.0 * error_bound > step:
        bits = -math.frexp(step)[1] + 1
        raise ConfigError(
            f"the backend rounds to a {2 * error_bound:g} grid but the federated metrics need {step:g} (2^-{bits}); "
            f"set crypto.params.precision to at least {bits} fractional bits"
        )


def encoding_scale(value_bound: float | None) -> float:
    """The public power of two every silo divides its (noised) metric inputs by before it
    encrypts, so that a coordinate of up to :data:`MAX_ROWS` (plus noise) stays within the
    backend's ``value_bound`` (CKKS's default bound is 4096); 1 when the bound is large enough.
    A power of two keeps grid values exact in fixed point."""
    if value_bound is None or not math.isfinite(value_bound) or value_bound >= 2 * MAX_ROWS:
        return 1.0
    return float(2 ** math.ceil(math.log2(2 * MAX_ROWS / value_bound)))


def _binned_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    n_pos, n_neg = float(pos.sum()), float(neg.sum())
    if n_pos <= 0 or n_neg <= 0:
        return float("nan")
    below = np.cumsum(neg) - neg  # negatives in lower bins
    return float(np.sum(pos * (below + 0.5 * neg)) / (n_pos * n_neg))


#: Under DP the AUC is computed on bins merged by this factor (5 of 20): each merged bin holds
#: 4x the counts but only 2x the noise (post-processing, no privacy cost).
DP_BIN_MERGE = 4


def metrics_from_inputs(total: np.ndarray, *, n_classes: int, merge: int = 1) -> dict[str, float]:
    """Accuracy, AUC and mean loss from summed (possibly noised) metric inputs.

    Noised counts are clipped at zero and ratios to ``[0, 1]``, and ``merge`` adjacent bins are
    added up before the AUC (:data:`DP_BIN_MERGE` for a noised release): post-processing, no
    privacy cost.
    """
    v = np.asarray(total, dtype=np.float64).reshape(-1)
    if v.size != input_size(n_classes):
        raise DataError(f"metric inputs of length {v.size}, expected {input_size(n_classes)}")
    k = classes_scored(n_classes)
    if merge < 1 or BINS % merge:
        raise DataError(f"merge must divide {BINS}, got {merge}")
    hist = v[: 2 * BINS * k].reshape(k, 2, BINS // merge, merge).sum(axis=3)
    hist = np.maximum(hist, 0.0)
    rows = float(v[-3])
    if rows < 1.0:
        return {"accuracy": float("nan"), "auc": float("nan"), "loss": float("nan"), "rows": rows}
    aucs = [_binned_auc(hist[i, 0], hist[i, 1]) for i in range(k)]
    finite = [a for a in aucs if math.isfinite(a)]
    return {
        "accuracy": float(min(1.0, max(0.0, v[-2] / rows))),
        "auc": float(np.mean(finite)) if finite else float("nan"),
        "loss": float(max(0.0, v[-1]) * LOSS_CAP / rows),
        "rows": rows,
    }


def local_metrics(scores: np.ndarray, labels: np.ndarray, *, n_classes: int) -> Mapping[str, float]:
    """A silo's exact metrics on its own held-out rows (never sent anywhere)."""
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    if y.size == 0:
        return {"accuracy": float("nan"), "auc": float("nan"), "loss": float("nan"), "rows": 0.0}
    probs = _probabilities(scores, n_classes)
    loss = float(np.mean(-np.log(np.maximum(probs[np.arange(y.size), y], _EPS))))
    if n_classes == 2:
        s = probs[:, 1]
        return {"accuracy": _accuracy(labels=y, scores=s), "auc": _auc(labels=y, scores=s), "loss": loss, "rows": float(y.size)}
    aucs = [_auc(labels=(y == c).astype(np.float64), scores=probs[:, c]) for c in range(n_classes)]
    finite = [a for a in aucs if math.isfinite(a)]
    return {
        "accuracy": float(np.mean(np.argmax(probs, axis=1) == y)),
        "auc": float(np.mean(finite)) if finite else float("nan"),
        "loss": loss,
        "rows": float(y.size),
    }
