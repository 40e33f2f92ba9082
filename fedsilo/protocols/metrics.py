"""Binary-classification metrics as small pure functions (numpy only).

Shared by the vertical and horizontal protocols. ``labels`` are 0/1, ``scores`` any real
numbers where larger means "more likely 1" (probabilities or logits).
"""
from __future__ import annotations

import numpy as np

from fedsilo.errors import DataError

__all__ = ["accuracy", "auc", "ks_statistic", "log_loss"]


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise DataError(f"labels and scores differ in length: {y.size} vs {s.size}")
    if y.size == 0:
        raise DataError("metrics need at least one example")
    if not np.all((y == 0) | (y == 1)):
        raise DataError("labels must be 0 or 1")
    if not np.all(np.isfinite(s)):
        raise DataError("scores contain NaN or infinite values")
    return y, s


def auc(*, labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the Mann–Whitney U statistic over (#pos · #neg).

    Ties count one half (mid-ranks), as in ``sklearn.metrics.roc_auc_score``
    (Hanley & McNeil, Radiology 1982). NaN if only one class is present.
    """
    y, s = _check(labels, scores)
    pos = int(y.sum())
    neg = y.size - pos
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # mid-ranks for ties
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], s.size]
    mid = (starts + ends + 1) / 2.0  # 1-based average rank of each tie group
    ranks[order] = np.repeat(mid, ends - starts)
    u = ranks[y == 1].sum() - pos * (pos + 1) / 2.0
    return float(u / (pos * neg))


def accuracy(*, labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> float:
    """Share of examples with ``(score >= threshold) == label`` (scores as probabilities)."""
    y, s = _check(labels, scores)
    return float(np.mean((s >= threshold) == (y == 1)))


def ks_statistic(*, labels: np.ndarray, scores: np.ndarray) -> float:
    """Kolmogorov–Smirnov statistic: max |F_pos(t) − F_neg(t)| over thresholds t.

    The separation measure of credit scoring (e.g. Thomas, Edelman & Crook, *Credit Scoring
    and Its Applications*, 2002, §7): equals ``max(TPR − FPR)`` over the ROC curve. NaN if only
    one class is present.
    """
    y, s = _check(labels, scores)
    pos = y.sum()
    neg = y.size - pos
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    ys, ss = y[order], s[order]
    last = np.r_[np.flatnonzero(np.diff(ss)), ss.size - 1]  # end of each tie group
    tpr = np.cumsum(ys)[last] / pos
    fpr = np.cumsum(1 - ys)[last] / neg
    return float(np.max(np.abs(tpr - fpr)))


def log_loss(*, labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-12) -> float:
    """Mean binary cross-entropy of probabilities (clipped to ``[eps, 1 − eps]``)."""
    y, p = _check(labels, probabilities)
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
