"""Models, flat parameters, local training (SGD/Adam, FedProx, DP-SGD plan)."""
from __future__ import annotations

import numpy as np
import pytest

from fedsilo.errors import ConfigError
from fedsilo.privacy.accounting import epsilon
from fedsilo.protocols.horizontal.models import MLP, LogisticRegression, build_model, get_flat_params, set_flat_params
from fedsilo.protocols.horizontal.training import LocalConfig, record_dp_plan, train_local


def _data(n: int = 120, d: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = (x @ rng.normal(size=d) > 0).astype(np.float64)
    return x, y


@pytest.mark.parametrize(
    "spec,cls",
    [
        ({"kind": "logistic"}, LogisticRegression),
        ({"kind": "mlp", "hidden": [8, 4]}, MLP),
        ({"kind": "fedsilo.protocols.horizontal.models:MLP", "params": {"hidden": [3]}}, MLP),
    ],
)
def test_build_and_flat_roundtrip(spec: dict, cls: type) -> None:
    m = build_model(spec, n_features=5, seed=1)
    assert isinstance(m, cls)
    p = get_flat_params(m)
    np.testing.assert_array_equal(p, get_flat_params(build_model(spec, n_features=5, seed=1)))  # deterministic init
    assert not np.array_equal(p, get_flat_params(build_model(spec, n_features=5, seed=2)))
    set_flat_params(m, p + 1.0)
    np.testing.assert_allclose(get_flat_params(m), p + 1.0, atol=1e-6)


@pytest.mark.parametrize(
    "spec,match",
    [
        ({"kind": "svm"}, "import path"),
        ({"kind": "no.such.module:Net"}, "cannot be imported"),
        ({"kind": "numpy:ndarray"}, "not a torch.nn.Module"),
        ({"kind": "mlp", "hidden": []}, "hidden"),
    ],
)
def test_bad_model_specs(spec: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_model(spec, n_features=3, seed=0)


def test_training_is_deterministic_and_learns() -> None:
    x, y = _data()
    m = build_model({"kind": "logistic"}, n_features=5, seed=0)
    p0 = get_flat_params(m)
    cfg = LocalConfig(epochs=3, batch_size=16, lr=0.5)
    a = train_local(m, x, y, global_params=p0, config=cfg, n_classes=2, seed=5)
    b = train_local(build_model({"kind": "logistic"}, n_features=5, seed=0), x, y, global_params=p0, config=cfg, n_classes=2, seed=5)
    np.testing.assert_array_equal(a.update, b.update)
    assert a.steps == 3 * 8 and a.loss < 0.5


def test_fedprox_pulls_towards_global() -> None:
    x, y = _data()
    p0 = get_flat_params(build_model({"kind": "logistic"}, n_features=5, seed=0))
    far = train_local(build_model({"kind": "logistic"}, n_features=5, seed=0), x, y, global_params=p0,
                      config=LocalConfig(epochs=3, lr=0.5, batch_size=16), n_classes=2, seed=1)
    near = train_local(build_model({"kind": "logistic"}, n_features=5, seed=0), x, y, global_params=p0,
                       config=LocalConfig(epochs=3, lr=0.5, batch_size=16, proximal_mu=1.0), n_classes=2, seed=1)
    assert np.linalg.norm(near.update) < np.linalg.norm(far.update)


def test_adam_and_multiclass() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 4))
    y = rng.integers(0, 3, size=90)
    m = build_model({"kind": "mlp", "hidden": [8]}, n_features=4, n_classes=3, seed=0)
    r = train_local(m, x, y, global_params=get_flat_params(m), config=LocalConfig(optimizer="adam", lr=0.01), n_classes=3, seed=0)
    assert r.update.shape == get_flat_params(m).shape and np.isfinite(r.loss)


def test_record_dp_plan_meets_target_and_trains() -> None:
    plan = record_dp_plan(n_examples=120, batch_size=16, local_epochs=2, rounds=5, target_epsilon=4.0, delta=1e-5, max_grad_norm=1.0)
    assert plan.steps_per_epoch == 8 and plan.sample_rate == 1 / 8
    total = plan.event(epochs=2)
    eps = epsilon(type(total)(total.noise_multiplier, total.sample_rate, total.steps * 5), delta=1e-5)
    assert 3.9 < eps <= 4.0
    x, y = _data()
    m = build_model({"kind": "logistic"}, n_features=5, seed=0)
    p0 = get_flat_params(m)
    a = train_local(m, x, y, global_params=p0, config=LocalConfig(epochs=2, batch_size=16, lr=0.5), n_classes=2, seed=3, record_dp=plan)
    b = train_local(build_model({"kind": "logistic"}, n_features=5, seed=0), x, y, global_params=p0,
                    config=LocalConfig(epochs=2, batch_size=16, lr=0.5), n_classes=2, seed=3, record_dp=plan)
    np.testing.assert_array_equal(a.update, b.update)  # seeded sampling and noise
    assert a.steps == 16 and np.all(np.isfinite(a.update))
