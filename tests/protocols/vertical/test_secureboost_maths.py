"""SecureBoost's pure parts: bins, split gains, the packed integer layout, the DP calibration."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsilo.errors import ConfigError, DataError, EncodingOverflowError
from fedsilo.privacy.accounting import epsilon
from fedsilo.protocols.vertical.secureboost.boosting import (
    apply_thresholds,
    best_split,
    histogram,
    leaf_value,
    quantile_thresholds,
    uniform_thresholds,
)
from fedsilo.protocols.vertical.secureboost.cipher import PlainHistograms
from fedsilo.protocols.vertical.secureboost.dp import HistogramDp, calibrate
from fedsilo.protocols.vertical.secureboost.model import refuse_constant
from fedsilo.protocols.vertical.secureboost.packing import HistLayout, decode_bins, encode_rows, offsets_plaintexts


# ------------------------------------------------------------------------------ bins


def test_quantile_thresholds_are_scikit_learns() -> None:
    """Known answer: the thresholds scikit-learn's HistGradientBoosting bins with (its _BinMapper),
    for a continuous column, a column with few distinct values and one with heavy ties."""
    from sklearn.ensemble._hist_gradient_boosting.binning import _BinMapper

    rng = np.random.default_rng(3)
    x = np.column_stack([rng.normal(size=700), np.round(rng.normal(size=700) * 2), rng.poisson(0.7, size=700)])
    for bins in (8, 32, 255):
        sk = _BinMapper(n_bins=bins + 1, subsample=None).fit(x).bin_thresholds_
        for j in range(x.shape[1]):
            np.testing.assert_allclose(quantile_thresholds(values=x[:, j], bins=bins), sk[j], rtol=0, atol=1e-12)


def test_bins_follow_the_thresholds_and_constant_columns_are_refused() -> None:
    t = np.array([0.5, 1.5])
    assert apply_thresholds(values=np.array([-3.0, 0.5, 0.6, 1.5, 9.0]), thresholds=t).tolist() == [0, 0, 1, 1, 2]
    np.testing.assert_allclose(uniform_thresholds(lo=0.0, hi=4.0, bins=4), [1.0, 2.0, 3.0])
    assert quantile_thresholds(values=np.ones(10), bins=8).size == 0
    with pytest.raises(DataError, match=r"host\.csv: column 'b' is constant over the whole table"):
        refuse_constant(np.array([[1.0, 2.0], [3.0, 2.0]]), ["a", "b"], source="host.csv", where="the whole table")


# ------------------------------------------------------------------------------ splits


def _brute_force(bins, g, h, n_bins, *, l2, mcw, mlr):
    """Every (feature, bin) split of the rows, scored directly from its two row sets."""
    best = None
    G, H = g.sum(), h.sum()
    parent = G * G / (H + l2)
    for f in range(bins.shape[1]):
        for b in range(n_bins - 1):
            left = bins[:, f] <= b
            gl, hl, cl = g[left].sum(), h[left].sum(), left.sum()
            gr, hr, cr = G - gl, H - hl, (~left).sum()
            if hl < mcw or hr < mcw or cl < mlr or cr < mlr:
                continue
            gain = gl * gl / (hl + l2) + gr * gr / (hr + l2) - parent
            if gain > 0 and (best is None or gain > best[2] + 1e-12):
                best = (f, b, gain)
    return best


@settings(max_examples=60)
@given(seed=st.integers(0, 2**31 - 1), l2=st.sampled_from([0.0, 1.0]), mlr=st.sampled_from([1, 5]))
def test_best_split_is_the_brute_force_best(seed: int, l2: float, mlr: int) -> None:
    rng = np.random.default_rng(seed)
    rows, features, n_bins = 60, 3, 6
    bins = rng.integers(0, n_bins, size=(rows, features))
    p = rng.uniform(0.05, 0.95, rows)
    y = rng.integers(0, 2, rows)
    g, h = p - y, p * (1 - p)
    got = best_split(histogram(bins=bins, g=g, h=h, n_bins=n_bins), g_total=g.sum(), h_total=h.sum(), rows_total=rows,
                     l2=l2, min_child_weight=0.5, min_leaf_rows=mlr)
    want = _brute_force(bins, g, h, n_bins, l2=l2, mcw=0.5, mlr=mlr)
    if want is None:
        assert got is None
    else:
        assert got is not None and (got.feature, got.bin) == want[:2] and got.gain == pytest.approx(want[2], rel=1e-9)


def test_leaf_value_is_the_shrunk_newton_step() -> None:
    assert leaf_value(g_sum=3.0, h_sum=1.0, l2=1.0, learning_rate=0.5) == pytest.approx(-0.75)
    assert leaf_value(g_sum=3.0, h_sum=0.0, l2=0.0, learning_rate=0.5) == 0.0


# ------------------------------------------------------------------------------ packing


def _layout(rows: int, *, packed: bool, margins=(0, 0, 0), precision: int = 24) -> HistLayout:
    return HistLayout(precision, rows, 1.0, 0.25, margins, 2047, packed)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), packed=st.booleans(), dp=st.booleans())
def test_packed_histogram_round_trips_exactly(seed: int, packed: bool, dp: bool) -> None:
    """Row plaintexts summed per bin (mod n), plus the host's offsets, counts and noise, packed
    and unpacked: the guest gets every bin's exact (G, H, count) plus exactly the noise, for
    sums of either sign and noise up to its margin."""
    rng = np.random.default_rng(seed)
    rows, n_bins = int(rng.integers(1, 200)), int(rng.integers(1, 70))
    g = rng.choice([-1.0, 1.0, 0.0], rows) if rng.random() < 0.3 else rng.uniform(-1, 1, rows)
    h = rng.uniform(0, 0.25, rows)
    margins = (2**30, 2**28, 500) if dp else (0, 0, 0)
    layout = _layout(rows, packed=packed, margins=margins)
    cipher = PlainHistograms()
    n = cipher.modulus
    plain = encode_rows(g=g, h=h, layout=layout, modulus=n)
    slot = rng.integers(0, n_bins, rows)
    parts = layout.row_plaintexts
    sums = [0] * (n_bins * parts)
    for i in range(rows):
        for j in range(parts):
            sums[slot[i] * parts + j] = (sums[slot[i] * parts + j] + plain[i * parts + j]) % n
    counts = np.bincount(slot, minlength=n_bins)
    noise = None
    if dp:
        noise = np.column_stack([rng.integers(-m, m + 1, n_bins) for m in margins]).astype(np.int64)
        noise[0] = [-margins[0], -margins[1], -margins[2]]  # the extremes fit
    additions = offsets_plaintexts(counts=counts, noise=noise, layout=layout, modulus=n)
    if packed:
        blob = cipher.seal(sums, additions, shift=layout.width, per=layout.bins_per_plaintext)
    else:
        full = [v for k in range(n_bins) for v in (sums[2 * k], sums[2 * k + 1], 0)]
        blob = cipher.seal(full, additions, shift=0, per=1)
    got = decode_bins(cipher.open(blob, count=layout.plaintexts_for(n_bins), sender="h"), bins=n_bins, layout=layout)
    scale = 2.0**layout.precision
    gi, hi = np.rint(g * scale), np.rint(h * scale)
    want = np.column_stack([np.bincount(slot, weights=gi, minlength=n_bins), np.bincount(slot, weights=hi, minlength=n_bins),
                            counts]).astype(np.float64)
    if noise is not None:
        want += noise
    want[:, :2] /= scale
    np.testing.assert_array_equal(got, want)


def test_packing_puts_many_bins_in_a_ciphertext_and_refuses_overflow() -> None:
    layout = _layout(10_000, packed=True, precision=32)
    assert layout.width <= 120 and layout.bins_per_plaintext >= 17  # ≈ 17 bins per 2048-bit ciphertext
    assert _layout(10_000, packed=False).plaintexts_for(32) == 96
    with pytest.raises(EncodingOverflowError, match="outside the encodable bounds"):
        encode_rows(g=np.array([1.5]), h=np.array([0.1]), layout=layout, modulus=PlainHistograms().modulus)
    with pytest.raises(EncodingOverflowError, match="bits above its last bin"):
        decode_bins([1 << (layout.width * layout.bins_per_plaintext)], bins=layout.bins_per_plaintext, layout=layout)
    with pytest.raises(EncodingOverflowError, match="beyond the slot margin"):
        offsets_plaintexts(counts=np.zeros(1, dtype=np.int64), noise=np.array([[5, 0, 0]]), layout=_layout(3, packed=True),
                           modulus=PlainHistograms().modulus)
    with pytest.raises(ConfigError, match="needs .* bits but a plaintext holds"):
        HistLayout(52, 10**6, 1.0, 0.25, (2**200, 0, 0), 255, True)


# ------------------------------------------------------------------------------ DP


def test_one_row_moving_bins_has_whitened_sensitivity_exactly_one_over_z() -> None:
    """Replace one row's values at a host with F features (node memberships fixed): in every
    feature it leaves one bin for another, with |g| = clip and h = 1/4 at worst. Whitened by
    (σ_G, σ_H, σ_C), the histograms move by exactly 1/z: the multiplier the ledger is charged."""
    plan = HistogramDp(8.0, 1e-5, "rdp", noise_multiplier=1.7, releases=1, clip=0.5)
    for features in (1, 3, 11):
        sg, sh, sc = plan.sigmas(features=features)
        rng = np.random.default_rng(features)
        others = rng.integers(0, 4, size=(30, features))
        g_o, h_o = rng.uniform(-0.5, 0.5, 30), rng.uniform(0, 0.25, 30)
        before = np.vstack([others, np.zeros((1, features), dtype=np.int64)])
        after = np.vstack([others, np.full((1, features), 3, dtype=np.int64)])
        g, h = np.append(g_o, -0.5), np.append(h_o, 0.25)
        diff = histogram(bins=after, g=g, h=h, n_bins=4) - histogram(bins=before, g=g, h=h, n_bins=4)
        whitened = diff / np.array([sg, sh, sc])
        assert np.linalg.norm(whitened) == pytest.approx(1 / plan.noise_multiplier, rel=1e-12)


def test_calibration_meets_the_target_over_every_release() -> None:
    plan = calibrate(epsilon=8.0, delta=1e-5, accountant="rdp", trees=10, depth=3, clip=1.0)
    assert plan.releases == 30
    spent = epsilon(plan.event().__class__(plan.noise_multiplier, 1.0, 30), delta=1e-5)
    assert spent <= 8.0 and spent > 7.8
    assert plan.spent(30) == pytest.approx(spent) and plan.spent(0) is None
    assert math.isclose(calibrate(epsilon=8.0, delta=1e-5, accountant="rdp", trees=1, depth=1, clip=5.0).clip, 1.0)
    with pytest.raises(ConfigError, match="clip"):
        calibrate(epsilon=8.0, delta=1e-5, accountant="rdp", trees=1, depth=1, clip=0.0)


def test_noised_gains_are_corrected_so_that_noise_alone_rarely_wins() -> None:
    """A guest feature with real signal (exact histogram) against a host feature that carries
    none, whose histogram is pure DP noise: scored raw, the host's largest noised gain wins
    about half the time (55 of 100 here); bias-corrected and bounded below
    (NOISY_GAIN_PENALTY), almost never."""
    rng = np.random.default_rng(11)
    rows, n_bins, sigma = 400, 16, 6.0
    wins_raw = wins_corrected = 0
    for _ in range(100):
        x = rng.integers(0, n_bins, rows)
        y = (rng.random(rows) < np.where(x < n_bins // 2, 0.3, 0.6)).astype(float)
        g, h = 0.45 - y, np.full(rows, 0.2475)
        kw = dict(g_total=g.sum(), h_total=h.sum(), rows_total=rows, l2=1.0, min_child_weight=1.0, min_leaf_rows=1)
        guest = best_split(histogram(bins=x[:, None], g=g, h=h, n_bins=n_bins), **kw)
        host_exact = histogram(bins=rng.integers(0, n_bins, (rows, 1)), g=g, h=h, n_bins=n_bins)
        noisy = host_exact + rng.normal(0, [sigma, sigma / 4, sigma], size=host_exact.shape)
        raw = best_split(noisy, **kw)
        corrected = best_split(noisy, g_noise_var=sigma**2, **kw)
        wins_raw += raw is not None and raw.gain > guest.gain
        wins_corrected += corrected is not None and corrected.gain > guest.gain
    assert wins_raw > 40 and wins_corrected < 10, (wins_raw, wins_corrected)


# ------------------------------------------------------------------------------ missing-value bins, regression


def _brute_force_missing(bins: np.ndarray, g: np.ndarray, h: np.ndarray, nan_bin: int, *, l2: float, mlr: int):
    """Every (feature, bin, NaN side) in scikit-learn's order: per feature NaNs right scanning
    bins upwards (first best), then NaNs left scanning downwards (first best found: the highest
    bin), which wins only with a strictly larger gain; then the first feature of largest gain."""
    G, H, n = g.sum(), h.sum(), bins.shape[0]
    parent = G * G / (H + l2)

    def gain(f: int, b: int, side: bool) -> float | None:
        nan = bins[:, f] == nan_bin
        left = (bins[:, f] <= b) & ~nan | (nan & side)
        gl, hl, cl = g[left].sum(), h[left].sum(), left.sum()
        gr, hr, cr = G - gl, H - hl, n - cl
        if hl < 1e-3 or hr < 1e-3 or cl < mlr or cr < mlr:
            return None
        v = gl * gl / (hl + l2) + gr * gr / (hr + l2) - parent
        return v if v > 0 else None

    best = None
    for f in range(bins.shape[1]):
        mine = None
        for b in range(nan_bin):
            v = gain(f, b, False)
            if v is not None and (mine is None or v > mine[2] + 1e-12):
                mine = (f, b, v, False)
        for b in range(nan_bin - 2, -1, -1):
            v = gain(f, b, True)
            if v is not None and (mine is None or v > mine[2] + 1e-12):
                mine = (f, b, v, True)
        if mine is not None and (best is None or mine[2] > best[2] + 1e-12):
            best = mine
    return best


@settings(max_examples=60)
@given(seed=st.integers(0, 2**31 - 1), l2=st.sampled_from([0.0, 1.0]), mlr=st.sampled_from([1, 5]))
def test_best_split_with_a_missing_value_bin_tries_both_sides(seed: int, l2: float, mlr: int) -> None:
    """With missing-value bins the split is the brute-force best over every bin and both sides a
    NaN can go (XGBoost's default direction), "every value left, NaNs right" included."""
    rng = np.random.default_rng(seed)
    rows, features, n_bins = 60, 3, 5
    bins = rng.integers(0, n_bins + 1, size=(rows, features))  # bin n_bins: NaN
    g, h = rng.normal(size=rows), np.ones(rows)
    got = best_split(histogram(bins=bins, g=g, h=h, n_bins=n_bins + 1), g_total=g.sum(), h_total=h.sum(),
                     rows_total=rows, l2=l2, min_child_weight=1e-3, min_leaf_rows=mlr, missing=True)
    want = _brute_force_missing(bins, g, h, n_bins, l2=l2, mlr=mlr)
    if want is None:
        assert got is None
    else:
        assert got is not None and (got.feature, got.bin, got.missing_left) == (want[0], want[1], want[3])
        assert got.gain == pytest.approx(want[2], rel=1e-9)


def test_missing_values_get_their_own_bin_and_a_side_at_each_split() -> None:
    from fedsilo.protocols.vertical.secureboost.model import fit_binning, goes_left

    x = np.array([[1.0, np.nan], [2.0, 5.0], [np.nan, 5.0], [4.0, np.nan]])
    b = fit_binning(x, np.arange(4), ["a", "b"], bins=4, bounds={}, required=False, source="t.csv", missing=True)
    assert b.has_missing == (True, True) and b.missing_bin == 4
    np.testing.assert_array_equal(b.transform(x), [[0, 4], [1, 0], [4, 0], [2, 4]])
    np.testing.assert_array_equal(b.thresholds[0], [1.5, 3.0])  # the NaN is not a value
    assert b.split_bins(1) == 1 and b.threshold(1, 0) == math.inf  # column b: "5.0 left, NaN right" only
    np.testing.assert_array_equal(goes_left(x[:, 0], 1.5, True), [True, False, True, False])
    # one value and NaNs can split; no value at all cannot
    refuse_constant(x[:, 1:], ["b"], source="t.csv", where="the rows")
    with pytest.raises(DataError, match=r"column 'c' has no value over the rows \(every row is missing\)"):
        refuse_constant(np.full((3, 1), np.nan), ["c"], source="t.csv", where="the rows")


def test_the_squared_error_objective_is_scikit_learns() -> None:
    from fedsilo.protocols.vertical.secureboost.boosting import objective, regression_metrics

    loss = objective("squared_error")
    y, raw = np.array([1.0, 3.0, 8.0]), np.array([2.0, 2.0, 2.0])
    g, h = loss.gradients(raw=raw, labels=y, clip=math.inf)
    np.testing.assert_array_equal(g, [1.0, -1.0, -6.0])
    np.testing.assert_array_equal(h, [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(loss.gradients(raw=raw, labels=y, clip=2.0)[0], [1.0, -1.0, -2.0])  # DP's clip
    assert loss.base(y) == 4.0 and not loss.classification and loss.h_bound == 1.0
    m = regression_metrics(y, raw)
    assert m["rmse"] == pytest.approx(math.sqrt(38 / 3)) and m["mae"] == pytest.approx(8 / 3)
    assert m["r2"] == pytest.approx(1 - 38 / 26) and m["test_loss"] == pytest.approx(19 / 3)


def test_squared_error_sensitivity_is_one_over_z_with_the_residual_clip() -> None:
    """Under DP the squared error's residual is clipped to ``privacy.clip`` (here 3, not capped at
    1 as the logistic loss's) and ``h = 1``: a row moving bins still moves the whitened
    histograms by exactly 1/z."""
    plan = calibrate(epsilon=8.0, delta=1e-5, accountant="rdp", trees=2, depth=2, clip=3.0, objective="squared_error")
    assert plan.clip == 3.0 and plan.h_bound == 1.0
    sg, sh, sc = plan.sigmas(features=2)
    before, after = np.zeros((1, 2), dtype=np.int64), np.full((1, 2), 3, dtype=np.int64)
    diff = histogram(bins=after, g=np.array([-3.0]), h=np.ones(1), n_bins=4) - \
        histogram(bins=before, g=np.array([-3.0]), h=np.ones(1), n_bins=4)
    assert np.linalg.norm(diff / np.array([sg, sh, sc])) == pytest.approx(1 / plan.noise_multiplier, rel=1e-12)
    assert calibrate(epsilon=8.0, delta=1e-5, accountant="rdp", trees=2, depth=2, clip=3.0).clip == 1.0  # logistic
