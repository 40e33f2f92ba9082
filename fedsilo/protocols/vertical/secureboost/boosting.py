"""The maths of gradient-boosted trees on histograms: pure functions on arrays, no state.

Second-order boosting (Chen & Guestrin, "XGBoost: A Scalable Tree Boosting System", KDD 2016,
eqs. 5-7) on binned features (Ke et al., "LightGBM", NeurIPS 2017), for one of two losses
(:data:`OBJECTIVES`):

* ``log_loss``: per row ``g = p - y`` and ``h = p (1 - p)`` with ``p = sigmoid(raw score)``;
  ``squared_error`` (half the squared error, scikit-learn's ``HalfSquaredError``): ``g = raw - y``,
  ``h = 1``;
* a node's value is ``w = -G / (H + λ)`` (``G``, ``H`` its sums of ``g``, ``h``) and a split's
  gain ``G_L²/(H_L + λ) + G_R²/(H_R + λ) - G²/(H + λ)`` (twice XGBoost's; the factor does not
  change which split wins); a split needs ``gain > 0``, ``H`` and a row count of at least
  ``min_child_weight`` and ``min_leaf_rows`` on each side;
* a feature is cut into bins by thresholds ``t_0 < t_1 < …``; row value ``x`` falls in bin
  ``i`` when ``t_{i-1} < x <= t_i``, and "split at bin ``b``" sends bins ``0..b`` left;
* with missing-value bins (``[model] missing = "bin"``) a NaN falls in one more bin after the
  last, and a split also says which side it goes to: both sides are tried at every split
  (XGBoost's learned default direction, its Algorithm 3, "sparsity-aware split finding").

These are the rules scikit-learn's ``HistGradientBoostingClassifier`` and ``…Regressor`` follow
(their quantile thresholds, baselines, gain, leaf value and missing-value bin), which the
acceptance tests compare with.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedsilo.errors import DataError
from fedsilo.protocols.vertical.prediction import evaluation_metrics
from fedsilo.protocols.vertical.taylor import sigmoid  # one logistic function for both vertical models

__all__ = [
    "G_BOUND",
    "H_BOUND",
    "NOISY_GAIN_PENALTY",
    "OBJECTIVES",
    "Objective",
    "SplitChoice",
    "apply_thresholds",
    "base_score",
    "best_split",
    "histogram",
    "label_bound",
    "leaf_value",
    "logistic_gradients",
    "log_loss",
    "missing_default",
    "objective",
    "quantile_thresholds",
    "sigmoid",
    "squared_gradients",
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


def squared_gradients(*, raw: np.ndarray, labels: np.ndarray, clip: float = math.inf) -> tuple[np.ndarray, np.ndarray]:
    """``(g, h)`` of half the squared error at raw scores ``raw``: ``g = raw - y`` (the residual,
    clipped to ``[-clip, clip]`` under DP) and ``h = 1``."""
    raw = np.asarray(raw, dtype=np.float64)
    return np.clip(raw - labels, -clip, clip), np.ones_like(raw)


def squared_loss(*, raw: np.ndarray, labels: np.ndarray) -> float:
    """Mean of half the squared error (scikit-learn's ``HalfSquaredError``)."""
    raw = np.asarray(raw, dtype=np.float64)
    return float(np.mean(0.5 * (raw - labels) ** 2)) if raw.size else float("nan")


#: Rows :func:`label_bound` allows for (2^40 ≈ 1.1e12, more than any party loads), so the bound
#: it reports depends on public settings only, never on a table's row count.
MAX_ROWS = 2**40


def label_bound(*, trees: int, rows: int = MAX_ROWS) -> float:
    """Largest ``|y|`` of a squared-error label for which ``trees`` trees on ``rows`` rows keep
    every loss, metric and gradient sum a finite float64: ``sqrt(M / n) / (2 + T·sqrt(n))``
    (``M`` the largest float64, ``n = rows``, ``T = trees``).

    Derivation, with ``Y = max |y|``: the base score ``ȳ`` has ``|ȳ| <= Y``. A tree adds to each
    row of a leaf ``v = -α m``, ``m`` the mean residual ``r = raw - y`` of the leaf's ``k``
    sampled rows and ``α = lr · k / (k + λ)`` in (0, 1] (:func:`leaf_value` with ``h = 1``).
    Over those rows ``Σ (r - α m)² = Σ r² - α (2 - α) k m² <= Σ r²``: the sample's sum of
    squared residuals never grows from its start ``Σ (ȳ - y)² <= Σ y² <= n Y²``, so
    ``|v| <= |m| <= sqrt(Σ r² / k) <= sqrt(n) Y``. Any row's score (held-out ones too) stays
    within ``Y + T sqrt(n) Y`` and its residual within ``(2 + T sqrt(n)) Y``; ``n`` squared
    residuals then sum to at most ``n (2 + T sqrt(n))² Y² <= M``, and the gradient sums
    (``<= n (2 + T sqrt(n)) Y``) are smaller still. The monotone step is exact for
    ``subsample = 1`` without DP; with a subsample (a tree starts from rows earlier trees moved
    unseen) or DP noise it is not proven, which the default ``rows`` (2^40, ~1e139 at 1000
    trees, against labels far below 1e30 in practice) leaves ample room for.
    """
    if trees < 1 or rows < 1:
        raise ValueError(f"label_bound needs trees >= 1 and rows >= 1, got trees={trees}, rows={rows}")
    return math.sqrt(float(np.finfo(np.float64).max) / rows) / (2.0 + trees * math.sqrt(rows))


def regression_metrics(labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """RMSE, MAE, R² (1 − SSE/SST; NaN when the labels are constant) and ``test_loss`` (the mean
    half squared error) of ``predictions``."""
    y, p = np.asarray(labels, dtype=np.float64), np.asarray(predictions, dtype=np.float64)
    if y.size == 0:
        return {}
    err = p - y
    sst = float(np.sum((y - y.mean()) ** 2))
    return {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err))),
            "r2": 1.0 - float(np.sum(err**2)) / sst if sst > 0 else float("nan"),
            "test_loss": float(np.mean(0.5 * err**2))}


@dataclass(frozen=True, slots=True)
class Objective:
    """One loss: its gradients, baseline, training loss, the bounds the packing and DP use, and
    the held-out metrics of its predictions.

    ``g_cap``: ``|g|`` never exceeds it (1 for the logistic loss; none for the residual, which
    DP clips with ``privacy.clip``); ``h_bound``: ``0 <= h <= h_bound``.
    """

    name: str
    g_cap: float
    h_bound: float
    classification: bool

    def base(self, labels: np.ndarray) -> float:
        """The raw score every row starts from (scikit-learn's baseline)."""
        return base_score(labels=labels) if self.classification else float(np.mean(labels))

    def gradients(self, *, raw: np.ndarray, labels: np.ndarray, clip: float) -> tuple[np.ndarray, np.ndarray]:
        if self.classification:
            return logistic_gradients(raw=raw, labels=labels, clip=clip)
        return squared_gradients(raw=raw, labels=labels, clip=clip)

    def loss(self, *, raw: np.ndarray, labels: np.ndarray) -> float:
        return log_loss(raw=raw, labels=labels) if self.classification else squared_loss(raw=raw, labels=labels)

    def metrics(self, labels: np.ndarray, raw: np.ndarray) -> dict[str, float]:
        """The vertical contract's held-out metrics: AUC, accuracy, KS, log loss for
        ``log_loss``; RMSE, MAE, R², squared loss for ``squared_error``."""
        return evaluation_metrics(labels, sigmoid(raw)) if self.classification else regression_metrics(labels, raw)


#: ``[model] objective`` -> its :class:`Objective`
OBJECTIVES = {
    "log_loss": Objective("log_loss", G_BOUND, H_BOUND, True),
    "squared_error": Objective("squared_error", math.inf, 1.0, False),
}


def objective(name: str) -> Objective:
    """The :class:`Objective` of ``[model] objective = name``."""
    return OBJECTIVES[name]


def leaf_value(*, g_sum: float, h_sum: float, l2: float, learning_rate: float) -> float:
    """The shrunk leaf value ``-lr · G / (H + λ)`` (0 when ``H + λ`` is 0)."""
    den = h_sum + l2
    return 0.0 if den <= 0 else -learning_rate * g_sum / den


# ------------------------------------------------------------------------------ binning


def quantile_thresholds(*, values: np.ndarray, bins: int) -> np.ndarray:
    """Thresholds of at most ``bins`` bins from the data's own quantiles.

    With at most ``bins`` distinct values, the midpoints between consecutive ones; otherwise the
    ``k/bins`` quantiles (``k = 1..bins-1``, the averaged inverse of the empirical CDF), repeated
    thresholds dropped. A constant column has none. NaNs (missing values) are left out.
    """
    col = np.asarray(values, dtype=np.float64)
    col = np.sort(col[~np.isnan(col)])
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


def apply_thresholds(*, values: np.ndarray, thresholds: np.ndarray, missing_bin: int | None = None) -> np.ndarray:
    """Bin index per value: the first ``i`` with ``x <= t_i`` (``len(thresholds)`` past the last);
    a NaN in bin ``missing_bin`` (missing-value bins; else wherever ``searchsorted`` puts it)."""
    values = np.asarray(values, dtype=np.float64)
    out = np.searchsorted(thresholds, values, side="left").astype(np.int64)
    if missing_bin is not None:
        out[np.isnan(values)] = missing_bin
    return out


def missing_default(*, has_missing: bool, chosen_left: bool, rows_left: int, rows_right: int) -> bool:
    """Whether a NaN goes left at a split: the side the split chose when the feature had missing
    values in the training rows, else the side with more training rows (scikit-learn's rule:
    a NaN met only in prediction follows the majority)."""
    return chosen_left if has_missing else rows_left > rows_right


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
    ``0..bin`` go left), its ``gain``, the left child's sums and where a NaN goes."""

    feature: int
    bin: int
    gain: float
    g_left: float
    h_left: float
    rows_left: float
    #: missing-value bins: the NaNs go left (else right)
    missing_left: bool = False


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
    missing: bool = False,
) -> SplitChoice | None:
    """The split of largest gain over every feature and bin of ``hist`` (``(features, bins, 3)``
    sums of ``g``, ``h`` and rows), or None when no split is valid.

    The left child is a cumulative sum over bins; the right child is the node's exact totals
    minus the left (the guest knows its own ``G``, ``H`` and the node's row count exactly, even
    when ``hist`` carries DP noise). Ties go to the first feature, then the first bin.

    ``missing`` (missing-value bins): the last bin of ``hist`` holds the NaNs; every split is
    tried with them on the right (bins ``0..b`` left, for ``b`` up to the last value bin: "values
    left, NaNs right" included) and then on the left (bins ``0..b`` and the NaNs), per
    feature in scikit-learn's scan order: NaNs right from the first bin up (ties to the lower
    bin), then NaNs left from the last bin down (ties to the higher bin), which wins only with a
    strictly larger gain; then the first feature of largest gain.

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
    args = (g_total, h_total, rows_total, l2, min_child_weight, min_leaf_rows, g_noise_var)
    if not missing:
        left = np.cumsum(hist[:, :-1, :], axis=1)  # splits after bins 0..n_bins-2
        gain = _gains(left, np.arange(1, left.shape[1] + 1), *args)
        return _choice(left, gain, *_first_max(gain), False) if gain is not None else None
    values, nan = hist[:, :-1, :], hist[:, -1:, :]
    cum = np.cumsum(values, axis=1)
    # NaNs right: bins 0..b left for b = 0..B-1; NaNs left: bins 0..b and the NaNs, b = 0..B-2
    to_right, to_left = cum, cum[:, :-1, :] + nan
    g_right = _gains(to_right, np.arange(1, cum.shape[1] + 1), *args)
    g_left = _gains(to_left, np.arange(2, cum.shape[1] + 1), *args) if to_left.shape[1] else None
    if g_right is None and g_left is None:
        return None
    F = hist.shape[0]
    # per feature as scikit-learn scans: NaNs right left to right (the first best bin), then NaNs
    # left right to left (the last best bin), which wins only with a strictly larger gain; then
    # the first feature of largest gain
    r_bin = np.argmax(g_right, axis=1) if g_right is not None else np.zeros(F, dtype=np.int64)
    r_val = g_right[np.arange(F), r_bin] if g_right is not None else np.full(F, -np.inf)
    if g_left is not None:
        l_bin = g_left.shape[1] - 1 - np.argmax(g_left[:, ::-1], axis=1)
        l_val = g_left[np.arange(F), l_bin]
    else:
        l_bin, l_val = np.zeros(F, dtype=np.int64), np.full(F, -np.inf)
    use_left = l_val > r_val
    f = int(np.argmax(np.where(use_left, l_val, r_val)))
    if use_left[f]:
        return _choice(to_left, g_left, f, int(l_bin[f]), True)  # type: ignore[arg-type]
    return _choice(to_right, g_right, f, int(r_bin[f]), False)  # type: ignore[arg-type]


def _first_max(gain: np.ndarray) -> tuple[int, int]:
    """``(feature, bin)`` of the first maximum: feature-major, then bin."""
    f, b = divmod(int(np.argmax(gain)), gain.shape[1])
    return f, b


def _choice(left: np.ndarray, gain: np.ndarray, f: int, b: int, missing_left: bool) -> SplitChoice | None:
    """The split at ``(f, b)`` of the candidates ``left``/``gain``, or None when it gains nothing."""
    best = float(gain[f, b])
    if not best > 0.0:
        return None
    return SplitChoice(f, b, best, float(left[f, b, 0]), float(left[f, b, 1]), float(left[f, b, 2]), missing_left)


def _gains(left: np.ndarray, terms: np.ndarray, g_total: float, h_total: float, rows_total: int, l2: float,
           min_child_weight: float, min_leaf_rows: int, g_noise_var: float) -> np.ndarray | None:
    """The gain of every candidate split whose left sums are ``left`` (``(features, splits, 3)``;
    ``terms``: bins summed in each, for the noise); ``-inf`` where invalid, None when none is
    valid."""
    if left.shape[1] == 0:
        return None
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
    s2 = (terms * g_noise_var)[None, :]  # noise variance of G_L (and G_R)
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = (gl * gl - s2) / (hl + l2) + (gr * gr - s2) / (hr + l2) - parent
        if g_noise_var > 0:
            var = (4 * gl * gl * s2 + 2 * s2 * s2) / (hl + l2) ** 2 + (4 * gr * gr * s2 + 2 * s2 * s2) / (hr + l2) ** 2
            gain = gain - NOISY_GAIN_PENALTY * np.sqrt(var)
        return np.where(ok, gain, -np.inf)
