"""Local training leaves torch's process-wide RNG alone.

On the threads engine every silo runs in one process, and ``models.build_model`` seeds the
global RNG and draws the initial weights from it (under a lock that excludes only other builds).
A draw from that RNG by a silo in training, between another silo's ``manual_seed`` and its
weight init, gave that silo different initial weights and so a different global model for the
whole job (8 of 200 record-DP runs before ``poisson_loader`` got a private generator: each
DataLoader iteration draws its worker base seed from the loader's generator, else the global RNG).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from fedsilo.protocols.horizontal import models
from fedsilo.protocols.horizontal.models import build_model, get_flat_params
from fedsilo.protocols.horizontal.training import (
    clipped_gradient_sum,
    poisson_loader,
    record_dp_plan,
    train_local,
)
from fedsilo.protocols.spec import ModelSection
from hz_data import local_cfg


def _data(n: int = 120, d: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d))
    return x, (x @ rng.normal(size=d) > 0).astype(np.float64)


def _poisson_epoch() -> int:
    x, y = _data()
    ds = TensorDataset(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32))
    loader = poisson_loader(ds, sample_rate=0.25, steps=4, generator=torch.Generator().manual_seed(1))
    return sum(len(xb) for xb, _ in loader)


def _assert_global_rng_untouched(run: Any) -> None:
    torch.manual_seed(12345)
    before = torch.get_rng_state()
    run()
    assert torch.equal(torch.get_rng_state(), before), "drew from torch's global RNG"


def test_poisson_loader_epoch_leaves_global_rng_unchanged() -> None:
    _assert_global_rng_untouched(_poisson_epoch)


@pytest.mark.parametrize("record_dp", [True, False], ids=["dp-sgd", "sgd"])
def test_train_local_leaves_global_rng_unchanged(record_dp: bool) -> None:
    x, y = _data()
    model = build_model(ModelSection(kind="logistic"), n_features=5, seed=0)
    plan = record_dp_plan(n_examples=len(x), batch_size=16, local_epochs=2, rounds=5, target_epsilon=4.0,
                          delta=1e-5, max_grad_norm=1.0) if record_dp else None

    def run() -> None:
        res = train_local(model, x, y, global_params=get_flat_params(model),
                          config=local_cfg(epochs=2, batch_size=16, lr=0.5), n_classes=2, seed=3, record_dp=plan)
        assert res.steps == 16 and np.all(np.isfinite(res.update))

    _assert_global_rng_untouched(run)


def test_build_model_and_distributed_gradient_leave_global_rng_unchanged() -> None:
    x, y = _data()

    def run() -> None:
        model = build_model(ModelSection(kind="mlp", hidden=(4,)), n_features=5, seed=2)
        clipped_gradient_sum(model, x, y, global_params=get_flat_params(model), clip=1.0, n_classes=2)

    _assert_global_rng_untouched(run)


def test_training_between_seed_and_init_keeps_the_initial_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The race, interleaved deterministically: another silo's Poisson epoch runs after
    build_model's ``manual_seed`` and before the layers draw their weights."""
    spec = ModelSection(kind="logistic")
    expected = get_flat_params(build_model(spec, n_features=5, seed=7))

    class Interleaved(models.LogisticRegression):
        def __init__(self, **kw: Any) -> None:
            assert _poisson_epoch() > 0
            super().__init__(**kw)

    monkeypatch.setattr(models, "LogisticRegression", Interleaved)
    got = build_model(spec, n_features=5, seed=7)
    assert isinstance(got, Interleaved)
    np.testing.assert_array_equal(get_flat_params(got), expected)
