"""Models, flat parameters, local training (SGD/Adam, FedProx, DP-SGD plan)."""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedsilo.protocols.spec import ModelSection, section
from hz_data import local_cfg
import torch
from torch.utils.data import TensorDataset

from fedsilo.errors import ConfigError
from fedsilo.privacy.accounting import epsilon
from fedsilo.privacy.events import GaussianEvent
from fedsilo.protocols.horizontal.models import MLP, LogisticRegression, build_model, get_flat_params, set_flat_params
from fedsilo.protocols.horizontal.training import (
    PoissonBatchSampler,
    poisson_loader,
    record_dp_plan,
    train_local,
)


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
    m = build_model(section(ModelSection, spec, key="model"), n_features=5, seed=1)
    assert isinstance(m, cls)
    p = get_flat_params(m)
    np.testing.assert_array_equal(p, get_flat_params(build_model(section(ModelSection, spec, key="model"), n_features=5, seed=1)))  # deterministic init
    assert not np.array_equal(p, get_flat_params(build_model(section(ModelSection, spec, key="model"), n_features=5, seed=2)))
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
        build_model(section(ModelSection, spec, key="model"), n_features=3, seed=0)


def test_training_is_deterministic_and_learns() -> None:
    x, y = _data()
    m = build_model(ModelSection(kind="logistic"), n_features=5, seed=0)
    p0 = get_flat_params(m)
    cfg = local_cfg(epochs=3, batch_size=16, lr=0.5)
    a = train_local(m, x, y, global_params=p0, config=cfg, n_classes=2, seed=5)
    b = train_local(build_model(ModelSection(kind="logistic"), n_features=5, seed=0), x, y, global_params=p0, config=cfg, n_classes=2, seed=5)
    np.testing.assert_array_equal(a.update, b.update)
    assert a.steps == 3 * 8 and a.loss < 0.5


def test_fedprox_pulls_towards_global() -> None:
    x, y = _data()
    p0 = get_flat_params(build_model(ModelSection(kind="logistic"), n_features=5, seed=0))
    far = train_local(build_model(ModelSection(kind="logistic"), n_features=5, seed=0), x, y, global_params=p0,
                      config=local_cfg(epochs=3, lr=0.5, batch_size=16), n_classes=2, seed=1)
    near = train_local(build_model(ModelSection(kind="logistic"), n_features=5, seed=0), x, y, global_params=p0,
                       config=local_cfg(epochs=3, lr=0.5, batch_size=16, proximal_mu=1.0), n_classes=2, seed=1)
    assert np.linalg.norm(near.update) < np.linalg.norm(far.update)


def test_adam_and_multiclass() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 4))
    y = rng.integers(0, 3, size=90)
    m = build_model(ModelSection(kind="mlp", hidden=[8]), n_features=4, n_classes=3, seed=0)
    r = train_local(m, x, y, global_params=get_flat_params(m), config=local_cfg(optimizer="adam", lr=0.01), n_classes=3, seed=0)
    assert r.update.shape == get_flat_params(m).shape and np.isfinite(r.loss)


def test_record_dp_plan_meets_target_and_trains() -> None:
    plan = record_dp_plan(n_examples=120, batch_size=16, local_epochs=2, rounds=5, target_epsilon=4.0, delta=1e-5, max_grad_norm=1.0)
    assert plan.steps_per_epoch == 8 and plan.sample_rate == 1 / 8
    total = plan.event(epochs=2)
    eps = epsilon(type(total)(total.noise_multiplier, total.sample_rate, total.steps * 5), delta=1e-5)
    assert 3.9 < eps <= 4.0
    x, y = _data()
    m = build_model(ModelSection(kind="logistic"), n_features=5, seed=0)
    p0 = get_flat_params(m)
    a = train_local(m, x, y, global_params=p0, config=local_cfg(epochs=2, batch_size=16, lr=0.5), n_classes=2, seed=3, record_dp=plan)
    b = train_local(build_model(ModelSection(kind="logistic"), n_features=5, seed=0), x, y, global_params=p0,
                    config=local_cfg(epochs=2, batch_size=16, lr=0.5), n_classes=2, seed=3, record_dp=plan)
    np.testing.assert_array_equal(a.update, b.update)  # seeded sampling and noise
    assert a.steps == 16 and np.all(np.isfinite(a.update))


# --------------------------------------------------- DP-SGD: the charged event is what ran
@contextlib.contextmanager
def _count_optimizer_steps() -> Iterator[list[int]]:
    """Every optimizer.step() taken in this process (torch's global post-step hook)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    count = [0]
    lock = threading.Lock()

    def hook(*_: Any) -> None:
        with lock:
            count[0] += 1

    handle = register_optimizer_step_post_hook(hook)
    try:
        yield count
    finally:
        handle.remove()


# 5952 rows: m = 93 steps per epoch, where Opacus' DPDataLoader would run int(1 / (1 / 93)) = 92
@pytest.mark.parametrize("n", [100, 150, 455, 1000, 5952])
def test_dp_sgd_takes_exactly_the_charged_steps(n: int) -> None:
    x, y = _data(n=n, d=3, seed=n)
    plan = record_dp_plan(n_examples=n, batch_size=64, local_epochs=2, rounds=3, target_epsilon=4.0, delta=1e-5,
                          max_grad_norm=1.0)
    assert plan.steps_per_epoch == max(1, round(n / 64)) and plan.sample_rate == 1 / plan.steps_per_epoch
    m = build_model(ModelSection(kind="logistic"), n_features=3, seed=0)
    with _count_optimizer_steps() as taken:
        res = train_local(m, x, y, global_params=get_flat_params(m), config=local_cfg(epochs=2, batch_size=64),
                          n_classes=2, seed=n, record_dp=plan)
    assert taken[0] == res.steps == 2 * plan.steps_per_epoch
    # the round's event is exactly that run: T optimizer steps, each a Poisson batch at rate q
    assert plan.event(epochs=2) == GaussianEvent(plan.noise_multiplier, plan.sample_rate, taken[0])


def test_poisson_batches_are_exact_in_number_and_rate() -> None:
    def batches(seed: int) -> list[list[int]]:
        return list(PoissonBatchSampler(num_samples=200, sample_rate=0.05, steps=400,
                                        generator=torch.Generator().manual_seed(seed)))

    a = batches(1)
    assert len(a) == 400 and a == batches(1) and a != batches(2)  # only the generator decides
    sizes = np.array([len(b) for b in a])
    assert abs(sizes.mean() - 10.0) < 0.5  # E|B| = n q
    assert all(b == sorted(set(b)) and all(0 <= i < 200 for i in b) for b in a)  # each row at most once
    included = np.zeros(200)
    for b in a:
        included[b] += 1
    assert abs(included.mean() / 400 - 0.05) < 0.005  # every row independently at rate q
    with pytest.raises(ConfigError, match="steps"):
        PoissonBatchSampler(num_samples=10, sample_rate=0.5, steps=0, generator=torch.Generator())


def test_empty_poisson_batches_still_take_a_noised_step() -> None:
    x, y = _data(n=3, d=2, seed=1)
    plan = record_dp_plan(n_examples=3, batch_size=1, local_epochs=4, rounds=1, target_epsilon=4.0, delta=1e-5,
                          max_grad_norm=1.0)
    loader = poisson_loader(TensorDataset(torch.zeros(3, 2), torch.zeros(3, 1)), sample_rate=plan.sample_rate,
                            steps=50, generator=torch.Generator().manual_seed(0))
    shapes = [tuple(xb.shape) for xb, _ in loader]
    assert (0, 2) in shapes and len(shapes) == 50  # empty batches happen and keep their shape
    m = build_model(ModelSection(kind="logistic"), n_features=2, seed=0)
    with _count_optimizer_steps() as taken:
        res = train_local(m, x, y, global_params=get_flat_params(m), config=local_cfg(epochs=4, batch_size=1),
                          n_classes=2, seed=0, record_dp=plan)
    assert taken[0] == res.steps == 4 * plan.steps_per_epoch and np.all(np.isfinite(res.update))


def test_record_level_job_charges_the_steps_its_silos_take(tmp_path: Path) -> None:
    """Through run_job: the steps in each silo's DP record equal the optimizer steps taken."""
    from fedsilo.silos.config import parse_config
    from fedsilo.silos.runner import run_job

    cfg = parse_config({
        "federation": {"name": "steps", "task": "horizontal", "seed": 2},
        "crypto": {"backend": "plain", "insecure": True},
        "privacy": {"epsilon": 8.0, "level": "record"},
        "training": {"rounds": 2, "local_epochs": 2, "batch_size": 24, "lr": 0.5},
        "data": {"source": "sklearn:breast_cancer", "label": "target", "partition": {"kind": "iid", "silos": 3}},
    })
    with _count_optimizer_steps() as taken:
        res = run_job(cfg, ledger_dir=tmp_path)
    per_silo = res["dp"]["silos"]
    assert len(per_silo) == 3 and all(v["steps"] > 0 for v in per_silo.values())
    assert taken[0] == sum(v["steps"] for v in per_silo.values())
