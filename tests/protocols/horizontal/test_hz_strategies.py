"""Strategies: the pure maths against hand computations, and a contract every strategy meets."""
from __future__ import annotations

import numpy as np
import pytest

from fedsilo.errors import ConfigError, NotEnoughSilosError
from fedsilo.protocols.horizontal.dp import DPFedAvg
from fedsilo.protocols.horizontal.strategies import (
    STRATEGIES,
    AggregateResult,
    FedAdam,
    FedAvg,
    FedProx,
    FedYogi,
    ServerState,
    adaptive_step,
    make_strategy,
    uniform_mean,
    yogi_second_moment,
)


def test_uniform_mean_and_fedavg_step() -> None:
    s = FedAvg(server_lr=0.5)
    st = s.initialize(np.array([1.0, 2.0]))
    new = s.aggregate_fit(round=1, state=st, result=AggregateResult(np.array([3.0, 6.0]), ("a", "b", "c")))
    np.testing.assert_allclose(new.params, [1.0 + 0.5 * 1.0, 2.0 + 0.5 * 2.0])
    assert new.round == 1
    np.testing.assert_allclose(st.params, [1.0, 2.0])  # input state untouched
    with pytest.raises(NotEnoughSilosError):
        uniform_mean(total=np.zeros(2), count=0)


def test_fedadam_matches_hand_computation() -> None:
    s = FedAdam(eta=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    st = s.initialize(np.zeros(2))
    delta = np.array([0.2, -0.4])
    new = s.aggregate_fit(round=1, state=st, result=AggregateResult(2 * delta, ("a", "b")))
    m = 0.1 * delta
    v = 0.99 * 1e-6 + 0.01 * delta**2
    np.testing.assert_allclose(new.params, 0.1 * m / (np.sqrt(v) + 1e-3))
    np.testing.assert_allclose(new.extra["m"], m)
    np.testing.assert_allclose(new.extra["v"], v)


def test_yogi_second_moment_sign_rule() -> None:
    v = np.array([1.0, 0.0])
    d = np.array([0.5, 0.5])
    # v > d^2: decreases by (1-b2) d^2; v < d^2: increases by (1-b2) d^2
    np.testing.assert_allclose(yogi_second_moment(v=v, delta=d, beta2=0.9), [1.0 - 0.1 * 0.25, 0.0 + 0.1 * 0.25])
    assert isinstance(FedYogi().initialize(np.zeros(1)).extra["v"], np.ndarray)
    np.testing.assert_allclose(adaptive_step(params=np.zeros(1), m=np.ones(1), v=np.ones(1), eta=1.0, tau=0.0), [1.0])


def test_fedprox_configures_mu() -> None:
    assert FedProx(mu=0.3).configure_fit(round=1, state=ServerState(np.zeros(1))).proximal_mu == 0.3
    assert FedAvg().configure_fit(round=1, state=ServerState(np.zeros(1))).proximal_mu == 0.0


def test_make_strategy_errors() -> None:
    with pytest.raises(ConfigError, match="unknown strategy"):
        make_strategy("fedsgd")
    with pytest.raises(ConfigError, match="strategy_params"):
        make_strategy("fedavg", {"mu": 0.1})
    with pytest.raises(ConfigError):
        FedAdam(beta1=1.5)


@pytest.fixture(params=sorted(STRATEGIES) + ["dp-fedavg"])
def strategy(request: pytest.FixtureRequest):
    if request.param == "dp-fedavg":
        return DPFedAvg(FedAdam(), clip=1.0, noise_multiplier=1.0)
    return make_strategy(request.param)


class TestStrategyContract:
    """Every strategy (and the DP wrapper): pure in its state, deterministic, shape-preserving."""

    def test_same_state_same_result(self, strategy) -> None:
        st = strategy.initialize(np.arange(4.0))
        res = AggregateResult(np.ones(4), ("a", "b"), ("c",))
        a = strategy.aggregate_fit(round=1, state=st, result=res)
        b = strategy.aggregate_fit(round=1, state=st, result=res)
        np.testing.assert_array_equal(a.params, b.params)
        assert a.params.shape == (4,) and a.round == 1
        np.testing.assert_array_equal(st.params, np.arange(4.0))

    def test_no_state_on_self_between_phases(self, strategy) -> None:
        before = dict(vars(strategy))
        st = strategy.initialize(np.zeros(3))
        strategy.configure_fit(round=1, state=st)
        strategy.prepare_update(np.ones(3), round=1)
        strategy.aggregate_fit(round=1, state=st, result=AggregateResult(np.ones(3), ("a",)))
        assert dict(vars(strategy)).keys() == before.keys()

    def test_zero_update_is_a_fixed_point(self, strategy) -> None:
        st = strategy.initialize(np.array([0.5, -1.0]))
        new = strategy.aggregate_fit(round=1, state=st, result=AggregateResult(np.zeros(2), ("a", "b")))
        np.testing.assert_allclose(new.params, st.params)


def test_a_registered_strategy_with_its_own_server_state_runs_from_a_config() -> None:
    """Adding a strategy is one class and one registration: the config accepts its name and
    ServerState.extra holds its state (here a server momentum), with no edit anywhere else."""
    from dataclasses import replace as _replace
    from typing import Any, ClassVar

    from fedsilo.silos.tasks.horizontal import simulate_horizontal
    from fedsilo.protocols.horizontal.strategies import (
        STRATEGIES,
        FedAvg,
        ServerState,
        register_strategy,
        uniform_mean,
    )
    from fedsilo.silos.config import parse_config
    from hz_data import base_kwargs, breast_cancer_silos

    class ServerMomentum(FedAvg):
        name: ClassVar[str] = "test_server_momentum"

        def initialize(self, params: np.ndarray) -> ServerState:
            return ServerState(params=params, extra={"velocity": np.zeros_like(params)})

        def aggregate_fit(self, *, round: int, state: ServerState, result: AggregateResult) -> ServerState:
            vel = 0.5 * state.extra["velocity"] + uniform_mean(total=result.total, count=len(result.contributors))
            return _replace(state, params=state.params + vel, round=round, extra={"velocity": vel})

        def describe(self) -> dict[str, Any]:
            return {"name": self.name}

    register_strategy(ServerMomentum)
    register_strategy(ServerMomentum)  # the same class again: a no-op
    assert "test_server_momentum" in STRATEGIES

    class Impostor(FedAvg):
        name: ClassVar[str] = "test_server_momentum"

    with pytest.raises(ConfigError, match="already registered"):
        register_strategy(Impostor)
    base = {"federation": {"task": "horizontal"}, "crypto": {"backend": "plain", "insecure": True},
            "data": {"source": "sklearn:breast_cancer", "label": "target", "partition": {"silos": 3}}}
    assert parse_config({**base, "training": {"strategy": "test_server_momentum"}}).training.strategy == "test_server_momentum"
    with pytest.raises(ConfigError, match=r"unknown strategy 'fedavgg'; did you mean 'fedavg'"):
        parse_config({**base, "training": {"strategy": "fedavgg"}})
    data = breast_cancer_silos()
    res = simulate_horizontal(**base_kwargs(data, training={"rounds": 4, "local_epochs": 1, "batch_size": 32, "lr": 0.5,
                                                            "strategy": "test_server_momentum"}))
    assert res["final"]["accuracy"] > 0.85
