"""Pure functions: metrics against scikit-learn, Taylor loss algebra, DP calibration."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, log_loss as sk_log_loss, roc_auc_score, roc_curve

from fedsilo.errors import ConfigError, DataError, PrivacyParameterError
from fedsilo.privacy.accounting import epsilon
from fedsilo.privacy.events import GaussianEvent
from fedsilo.protocols.metrics import accuracy, auc, ks_statistic, log_loss
from fedsilo.protocols.vertical.taylor import (
    LOG2_MINUS_HALF,
    DpPlan,
    calibrate,
    guest_residual_part,
    host_residual_part,
    learning_rate,
    residual_bound,
    sigmoid,
    taylor_loss,
)

labelled = st.integers(min_value=2, max_value=60).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 1), min_size=n, max_size=n),
        st.lists(st.sampled_from([-2.0, -0.5, 0.0, 0.1, 0.5, 1.0, 3.0]) | st.floats(-5, 5), min_size=n, max_size=n),
    )
)


@settings(max_examples=150, deadline=None)
@given(labelled)
def test_auc_and_ks_match_sklearn(data) -> None:
    y, s = (np.array(v, dtype=float) for v in data)
    if y.min() == y.max():
        assert math.isnan(auc(labels=y, scores=s)) and math.isnan(ks_statistic(labels=y, scores=s))
        return
    assert auc(labels=y, scores=s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s)
    assert ks_statistic(labels=y, scores=s) == pytest.approx(np.max(np.abs(tpr - fpr)), abs=1e-12)


def test_accuracy_and_log_loss_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200).astype(float)
    p = rng.random(200)
    assert accuracy(labels=y, scores=p) == pytest.approx(accuracy_score(y, p >= 0.5))
    assert log_loss(labels=y, probabilities=p) == pytest.approx(sk_log_loss(y, p))


def test_metrics_refuse_bad_input() -> None:
    with pytest.raises(DataError, match="0 or 1"):
        auc(labels=np.array([0, 2]), scores=np.array([0.1, 0.2]))
    with pytest.raises(DataError, match="length"):
        auc(labels=np.array([0, 1]), scores=np.array([0.1]))
    with pytest.raises(DataError, match="NaN"):
        ks_statistic(labels=np.array([0, 1]), scores=np.array([0.1, np.nan]))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(-6, 6), st.floats(-6, 6), st.integers(0, 1)), min_size=1, max_size=30))
def test_taylor_loss_from_residuals_equals_the_expansion(rows) -> None:
    ug, uh, y = (np.array(c, dtype=float) for c in zip(*rows))
    d = guest_residual_part(logits=ug, labels=y) + host_residual_part(logits=uh)
    u, yp = ug + uh, 2 * y - 1
    direct = np.mean(math.log(2) - yp * u / 2 + u**2 / 8)
    assert taylor_loss(sum_squared_residuals=float(d @ d), rows=len(rows)) == pytest.approx(direct, abs=1e-9)
    assert LOG2_MINUS_HALF == pytest.approx(math.log(2) - 0.5)


def test_taylor_gradient_approximates_the_logistic_gradient_near_zero() -> None:
    u = np.linspace(-0.5, 0.5, 11)
    for y in (0.0, 1.0):
        d = guest_residual_part(logits=u, labels=np.full_like(u, y))
        assert np.max(np.abs(d - (sigmoid(u) - y))) < 0.003  # sigma(u) - y = 1/2 + u/4 - u^3/48 - y + ...


def test_learning_rate_schedules() -> None:
    assert learning_rate(base=0.4, epoch=4, schedule="sqrt") == pytest.approx(0.2)
    assert learning_rate(base=0.4, epoch=4, schedule="constant") == 0.4
    with pytest.raises(ConfigError):
        learning_rate(base=0.4, epoch=1, schedule="cosine")


def test_sigmoid_is_stable() -> None:
    z = np.array([-1000.0, -1.0, 0.0, 1.0, 1000.0])
    s = sigmoid(z)
    assert np.all(np.isfinite(s)) and s[2] == 0.5 and s[0] == 0.0 and s[-1] == 1.0


def test_residual_bound_and_sensitivity() -> None:
    assert residual_bound(parties=2, logit_clip=2.0) == 1.5
    assert residual_bound(parties=3, logit_clip=2.0) == 2.0
    with pytest.raises(ConfigError):
        residual_bound(parties=1, logit_clip=2.0)


@pytest.mark.parametrize("parties", [2, 3])
def test_calibration_meets_the_target_for_each_party(parties: int) -> None:
    plan = calibrate(epsilon=4.0, delta=1e-5, rows=1000, batch_size=50, epochs=3, parties=parties, arbiter=True,
                     clip=1.0, logit_clip=2.0)
    # the batches are public among the parties: no subsampling amplification, one release per
    # customer per epoch (disjoint batches), three epochs
    assert plan.sample_rate == 1.0 and plan.steps_per_epoch == 20 and plan.releases == parties
    assert plan.epoch_event() == GaussianEvent(plan.event_multiplier, 1.0, 1)
    assert plan.job_event() == GaussianEvent(plan.event_multiplier, 1.0, 3)
    # the noise on each released gradient is z * Δ_p (replace-one); a customer's row reaches all P
    # noised gradients of its step (each party's own moves its weights), so the event uses z / sqrt(P)
    assert plan.noise_multiplier == pytest.approx(plan.event_multiplier * math.sqrt(parties))
    assert plan.sigma(intercept=True) == pytest.approx(plan.noise_multiplier * 2 * math.sqrt(2) * plan.residual_bound)
    assert plan.sigma(intercept=False) == pytest.approx(plan.noise_multiplier * 2 * plan.residual_bound)
    eps = epsilon(plan.job_event(), delta=1e-5)
    assert 3.9 < eps <= 4.0
    assert DpPlan.from_json(plan.to_json()) == plan


def test_calibration_refuses_an_impossible_budget() -> None:
    with pytest.raises(PrivacyParameterError):
        calibrate(epsilon=1e-6, delta=1e-5, rows=100, batch_size=100, epochs=1000, parties=2, arbiter=True, clip=1.0,
                  logit_clip=2.0)


def test_noise_shares_tolerate_colluders() -> None:
    kw = dict(epsilon=4.0, delta=1e-5, rows=1000, batch_size=50, epochs=1, parties=3, clip=1.0, logit_clip=2.0)
    # arbiter topology: 3 data parties + the arbiter add a share each; any one may subtract its own
    one = calibrate(**kw, arbiter=True)
    assert one.colluders == 1 and one.noise_adders == 4
    assert one.share_sigma(intercept=False) == pytest.approx(one.sigma(intercept=False) / math.sqrt(3))
    two = calibrate(**kw, arbiter=True, colluders=2)
    assert two.share_sigma(intercept=False) == pytest.approx(two.sigma(intercept=False) / math.sqrt(2))
    assert two.event_multiplier == one.event_multiplier  # costs utility, not epsilon
    many = calibrate(**kw, arbiter=True, colluders=7)  # more colluders than adders: each share is σ
    assert many.share_sigma(intercept=False) == pytest.approx(many.sigma(intercept=False))
    # two-party topology: the owner and the key holder add a share each, either may subtract its own
    pair = calibrate(**{**kw, "parties": 2}, arbiter=False)
    assert pair.noise_adders == 2
    assert pair.share_sigma(intercept=True) == pytest.approx(pair.sigma(intercept=True))
    for bad in (0, -1, True):
        with pytest.raises(ConfigError):
            calibrate(**kw, arbiter=True, colluders=bad)
