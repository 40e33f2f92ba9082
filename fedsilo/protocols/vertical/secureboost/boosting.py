"""The maths of gradient-boosted trees on histograms: pure functions on arrays, no state.

Second-order boosting (Chen & Guestrin, "XGBoost: A Scalable Tree Boosting System", KDD 2016,
eqs. 5-7) with the logistic loss, on binned features (Ke et al., "LightGBM", NeurIPS 2017):

* per row ``g = p - y`` and ``h = p (1 - p)`` with ``p = sigmoid(raw score)``;
* a node's value is ``w = -G / (H + λ)`` (``G``, ``H`` its sums of ``g``, ``h``) and a split's
  gain ``G_L²/(H_L + λ) + G_R²/(H_R + λ) - G²/(H + λ)`` (twice XGBoost's; the factor does not
  change which split wins); a split needs ``gain > 0``, ``H`` and a row count of at least
  ``min_child_weight`` and ``min_leaf_rows`` on each side;
* a feature is cut into bins by thresholds ``t_0 < t_1 < …``; row value ``x`` falls in bin
  ``i`` when ``t_{i-1} < x <= t_i``, and "split at bin ``b``" sends bins ``0..b`` left.

These are the rules scikit-learn's ``HistGradientBoostingClassifier`` follows (its quantile
thresholds, its baseline, its gain and leaf value), which the acceptance test compares with.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsilo.errors import DataError

__all__ = [
    "G_BOUND",
    "H_BOUND",
    "NOISY_GAIN_PENALTY",
    "SplitChoice",
    "apply_thresholds",
    "base_score",
    "best_split",
    "histogram",
    "leaf_value",
    "logistic_gradients",
    "log_loss",
    "quantile_thresholds",
    "sigmoid",
    "uniform_thresholds",
]

#: ``|g| <= 1`` for the logistic loss (``p - y`` with ``p`` in (0, 1))
G_BOUND = 1.0
#: ``0 <= h <= 1/4`` for the logistic loss (``p (1 - p)``)
H_BOUND = 0.25
#: Under DP a host's noised gain enters the comparison as a lower confidence bound: its
#: bias-corrected value minus this many standard deviations of its noise (see :func:`best_split`).
#: Without it the largest of a host's many noised gains wins nearly every split against the
#: guest's exact ones; measured on the bank example at ε = 8 (docs/secureboost.md): 0 gives
#: AUC 0.725, 1 gives 0.763, 2 gives 0.692.
NOISY_GAIN_PENALTY = 1.0


def sigmoid(x: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-x))`` without overflow warnings."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def base_score(*, labels: np.ndarray) -> float:
    """The raw score every row starts from: the log-odds of the training labels' mean
    (scikit-learn's baseline for the binary log loss), clipped away from 0 and 1."""
    p = float(np.clip(np.mean(labels), 1e-12, 1 - 1e-12))
    return float(np.log(p / (1.0 - p)))


def logistic_gradients(*, raw: np.ndarray, labels: np.ndarray, clip: float = G_BOUND) -> tuple[np.ndarray, np.ndarray]:
    """``(g, h)`` of the logistic loss at raw scores ``raw``: ``g = p - y`` clipped to
    ``[-clip, clip]`` (``clip >= 1`` leaves it unchanged) and ``h = p (1 - p)``."""
    p = sigmoid(raw)
    g = np.clip(p - labels, -clip, clip)
    return g, p * (1.0 - p)


def log_loss(*, raw: np.ndarray, labels: np.ndarray) -> float:
    """Mean logistic loss of raw scores (numerically stable form)."""
    raw = np.asarray(raw, dtype=np.float64)
    return float(np.mean(np.logaddexp(0.0, raw) - labels * raw)) if raw.size else float("nan")


def leaf_value(*, g_sum: float, h_sum: float, l2: float, learning_rate: float) -> float:
    """The shrunk leaf value ``-lr · G / (H + λ)`` (0 when ``H + λ`` is 0)."""
    den = h_sum + l2
    return 0.0 if den <= 0 else -learning_rate * g_sum / den


# ------------------------------------------------------------------------------ binning


def quantile_thresholds(*, values: np.ndarray, bins: int) -> np.ndarray:
    """Thresholds of at most ``bins`` bins from the data's own quantiles.

    With at most ``bins`` distinct values, the midpoints between consecutive ones; otherwise the
    ``k/bins`` quantiles (``k = 1..bins-1``, the averaged inverse of the empirical CDF), repeated
    thresholds dropped. A constant column has none.
    """
    col = np.sort(np.asarray(values, dtype=np.float64))
    distinct = np.unique(col)
    if distinct.size <= 1:
        return np.zeros(0)
    if distinct.size <= bins:
        return (distinct[:-1] + distinct[1:]) / 2.0
    qs = np.linspace(0.0, 100.0, bins + 1)[1:-1]
    return np.unique(np.percentile(col, qs, method="averaged_inverted_cdf"))


def uniform_thresholds(*, lo: float, hi: float, bins: int) -> np.ndarray:
    """``bins - 1`` equal-width thresholds over the public range ``[lo, hi]``: they do not depend
    on any row, which DP needs (a data quantile moves when one row is replaced, and with it other
    rows' bins)."""
    if not lo < hi:
        raise DataError(f"a feature range needs lo < hi, got [{lo:g}, {hi:g}]")
    return np.linspace(lo, hi, bins + 1)[1:-1]


def apply_thresholds(*, values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Bin index per value: the first ``i`` with ``x <= t_i`` (``len(thresholds)`` past the last)."""
    return np.searchsorted(thresholds, np.asarray(values, dtype=np.float64), side="left").astype(np.int64)


def histogram(*, bins: np.ndarray, g: np.ndarray, h: np.ndarray, n_bins: int) -> np.ndarray:
    """Per feature and bin, the sums ``(G, H, count)`` of the rows: ``(features, n_bins, 3)``.

    ``bins`` is ``(rows, features)`` of bin indices; ``g``, ``h`` one value per row.
    """
    rows, features = bins.shape
    out = np.zeros((features, n_bins, 3))
    for f in range(features):
        b = bins[:, f]
        out[f, :, 0] = np.bincount(b, weights=g, minlength=n_bins)
        out[f, :, 1] = np.bincount(b, weights=h, minlength=n_bins)
        out[f, :, 2] = np.bincount(b, minlength=n_bins)
    return out


# ------------------------------------------------------------------------------ split finding


@dataclass(frozen=True, slots=True)
class SplitChoice:
    """The best split of one node over one party's features: ``feature`` index, ``bin`` (bins
    ``0..bin`` go left), its ``gain`` and the left child's sums."""

    feature: int
    bin: int
    gain: float
    g_left: float
    h_left: float
    rows_left: float


def best_split(
    hist: np.ndarray,
    *,
    g_total: float,
    h_total: float,
    rows_total: int,
    l2: float,
    min_child_weight: float,
    min_leaf_rows: int,
    g_noise_var: float = 0.0,
) -> SplitChoice | None:
    """The split of largest gain over every feature and bin of ``hist`` (``(features, bins, 3)``
    sums of ``g``, ``h`` and rows), or None when no split is valid.

    The left child is a cumulative sum over bins; the right child is the node's exact totals
    minus the left (the guest knows its own ``G``, ``H`` and the node's row count exactly, even
    when ``hist`` carries DP noise). Ties go to the first feature, then the first bin.

    ``g_noise_var`` (DP): the variance of the noise on one bin's ``G``. A left sum over ``b``
    bins then carries variance ``s² = b·g_noise_var`` (and so does the right, the exact total
    minus it), which inflates ``G_L²`` by ``s²`` on average: it is subtracted, and the gain is
    scored by its lower confidence bound, minus :data:`NOISY_GAIN_PENALTY` standard deviations
    (``Var(X²) = 4μ²s² + 2s⁴`` for ``X ~ N(μ, s²)``, ``μ`` estimated by the noised sum; the
    noise on ``H`` is left out). Only the split's choice changes (post-processing: no privacy
    cost); the returned ``gain`` is that score.
    """
    if hist.size == 0 or hist.shape[1] < 2:
        return None
    left = np.cumsum(hist[:, :-1, :], axis=1)  # splits after bins 0..n_bins-2
    gl, hl, cl = left[..., 0], left[..., 1], left[..., 2]
    gr, hr, cr = g_total - gl, h_total - hl, rows_total - cl
    ok = (
        (hl >= min_child_weight) & (hr >= min_child_weight)
        & (cl >= min_leaf_rows) & (cr >= min_leaf_rows)
        & (hl + l2 > 0) & (hr + l2 > 0)
    )
    if not ok.any():
        return None
    parent = g_total * g_total / (h_total + l2) if h_total + l2 > 0 else 0.0
    s2 = (np.arange(1, left.shape[1] + 1) * g_noise_var)[None, :]  # noise variance of G_L (and G_R)
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = (gl * gl - s2) / (hl + l2) + (gr * gr - s2) / (hr + l2) - parent
        if g_noise_var > 0:
            var = (4 * gl * gl * s2 + 2 * s2 * s2) / (hl + l2) ** 2 + (4 * gr * gr * s2 + 2 * s2 * s2) / (hr + l2) ** 2
            gain = gain - NOISY_GAIN_PENALTY * np.sqrt(var)
        gain = np.where(ok, gain, -np.inf)
    flat = int(np.argmax(gain))  # first maximum: feature-major, then bin
    f, b = divmod(flat, gain.shape[1])
    best = float(gain[f, b])
    if not best > 0.0:
        return None
    return SplitChoice(f, b, best, float(gl[f, b]), float(hl[f, b]), float(cl[f, b]))
