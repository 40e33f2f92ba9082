"""The results refuse a horizontal job whose completed silos hold different final models.

All silos start from ``build_model(seed=job.seed)`` and apply the same released sums, so they
end bit for bit equal (measured on plain, Paillier, CKKS, SecAgg+, silo- and record-level DP,
distributed DP-SGD, FedAdam and dropped rounds). A silo that started elsewhere (a different
torch build, or a global-RNG race on the threads engine) trains a different model all job long.
"""
from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from fedsilo.errors import ProtocolError
from fedsilo.protocols.horizontal.protocol import SiloReport
from fedsilo.silos.tasks.horizontal import check_same_final_model, simulate_horizontal


def _report(silo: str, params: Any, status: str = "completed") -> SiloReport:
    return SiloReport(silo=silo, status=status, params=np.asarray(params, dtype=np.float64),  # type: ignore[arg-type]
                      events=(), rounds_contributed=(1,))


def test_equal_final_models_pass() -> None:
    p = np.linspace(-1.0, 1.0, 7)
    check_same_final_model({n: _report(n, p.copy()) for n in ("a", "b", "c")}, job="j")


def test_different_final_models_are_refused_naming_silos_and_gap() -> None:
    p = np.linspace(-1.0, 1.0, 7)
    q = p.copy()
    q[3] += 0.25
    reports = {"a": _report("a", p), "b": _report("b", p.copy()), "c": _report("c", q)}
    with pytest.raises(ProtocolError) as err:
        check_same_final_model(reports, job="j")
    msg = str(err.value)
    assert "job 'j'" in msg and "a, b hold one" in msg and "c holds another" in msg
    assert "largest parameter difference 0.25" in msg
    assert "different initial models" in msg and "global RNG" in msg


def test_one_ulp_is_a_difference() -> None:
    # the silos agree bit for bit: no tolerance hides a model that drifted by rounding
    p = np.linspace(-1.0, 1.0, 7)
    with pytest.raises(ProtocolError, match=r"a holds one; b holds another; largest parameter difference 2\.22e-16"):
        check_same_final_model({"a": _report("a", p), "b": _report("b", np.nextafter(p, 2.0))}, job="j")


def test_withdrawn_stopped_and_remote_silos_are_not_compared() -> None:
    p = np.linspace(-1.0, 1.0, 7)
    check_same_final_model({
        "a": _report("a", p), "b": _report("b", p.copy()),
        "w": _report("w", p + 1.0, status="withdrawn"),  # left after some round: an older model
        "s": _report("s", p - 1.0, status="stopped"),
        "r": _report("r", np.zeros(0)),  # run by another agent: its report carries no model
    }, job="j")


#: a new initial model at every build: the silos start apart, as in the race (test hook)
_BUILDS = itertools.count(1)


class DistinctInit(nn.Module):
    def __init__(self, *, n_features: int, n_outputs: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features, n_outputs)
        with torch.no_grad():
            self.linear.weight.fill_(0.01 * next(_BUILDS))
            self.linear.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def test_a_simulation_whose_silos_start_apart_is_refused() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=4)
    data = {}
    for n in ("site0", "site1", "site2"):
        x = rng.uniform(-1.0, 1.0, size=(40, 4))
        data[n] = (x, (x @ w > 0).astype(np.float64))
    with pytest.raises(ProtocolError, match=r"site0 holds one; site1 holds another; site2 holds another"):
        simulate_horizontal(
            silos=data, tests={}, backend="plain", backend_params={}, insecure=True,
            model={"kind": f"{__name__}:DistinctInit"},
            training={"rounds": 1, "local_epochs": 1, "batch_size": 16, "lr": 0.5, "optimizer": "sgd", "strategy": "fedavg"},
            privacy=None, ledger_dir=None, budgets={n: (8.0, 1e-5) for n in data}, job="apart", seed=7, min_silos=2,
            round_timeout=60.0,
        )
