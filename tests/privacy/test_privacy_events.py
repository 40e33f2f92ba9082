"""DP events: frozen, validated, exact JSON round trips, unknown input refused."""
from __future__ import annotations

import dataclasses
import json

import dp_accounting
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsilo.errors import ConfigError, PrivacyError, PrivacyParameterError
from fedsilo.privacy.events import (
    ComposedEvent,
    DpEvent,
    GaussianEvent,
    LaplaceEvent,
    event_from_json,
)

z_st = st.floats(min_value=1e-3, max_value=1e4, allow_nan=False)
q_st = st.floats(min_value=1e-6, max_value=1.0, allow_nan=False, exclude_min=False)
t_st = st.integers(min_value=1, max_value=10**6)
leaf_st = st.one_of(
    st.builds(GaussianEvent, z_st, q_st, t_st),
    st.builds(LaplaceEvent, st.floats(min_value=1e-4, max_value=100.0), t_st),
)
event_st = st.recursive(
    leaf_st, lambda children: st.lists(children, min_size=1, max_size=4).map(lambda l: ComposedEvent(tuple(l))), max_leaves=10
)


@settings(max_examples=100, deadline=None)
@given(event_st)
def test_json_round_trip_is_exact(event: DpEvent) -> None:
    text = json.dumps(event.to_json())
    back = event_from_json(json.loads(text))
    assert back == event
    assert DpEvent.from_json(json.loads(text)) == event
    assert type(back).from_json(json.loads(text)) == event


def test_events_are_frozen_slotted_dataclasses() -> None:
    for ev in (GaussianEvent(1.0), LaplaceEvent(0.5), ComposedEvent((GaussianEvent(1.0),))):
        assert dataclasses.is_dataclass(ev)
        assert not hasattr(ev, "__dict__")
        field = dataclasses.fields(ev)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(ev, field, getattr(ev, field))


def test_defaults_and_list_to_tuple() -> None:
    assert GaussianEvent(1.1) == GaussianEvent(1.1, 1.0, 1)
    assert LaplaceEvent(0.3).steps == 1
    c = ComposedEvent([GaussianEvent(1.0), LaplaceEvent(1.0)])  # type: ignore[arg-type]
    assert isinstance(c.events, tuple)


@pytest.mark.parametrize(
    "make",
    [
        lambda: GaussianEvent(0.0),
        lambda: GaussianEvent(-1.0),
        lambda: GaussianEvent(float("nan")),
        lambda: GaussianEvent(float("inf")),
        lambda: GaussianEvent(1.0, 0.0),
        lambda: GaussianEvent(1.0, 1.5),
        lambda: GaussianEvent(1.0, 1.0, 0),
        lambda: GaussianEvent(1.0, 1.0, 2.0),  # type: ignore[arg-type]
        lambda: GaussianEvent(1.0, 1.0, True),  # type: ignore[arg-type]
        lambda: GaussianEvent("1.0"),  # type: ignore[arg-type]
        lambda: LaplaceEvent(0.0),
        lambda: LaplaceEvent(1.0, -3),
    ],
)
def test_bad_parameters_are_refused(make) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PrivacyParameterError) as info:
        make()
    assert isinstance(info.value, PrivacyError) and isinstance(info.value, ConfigError)


def test_composed_refuses_empty_and_foreign_events() -> None:
    with pytest.raises(PrivacyError):
        ComposedEvent(())
    with pytest.raises(PrivacyError):
        ComposedEvent((dp_accounting.GaussianDpEvent(1.0),))  # type: ignore[arg-type]
    with pytest.raises(PrivacyError):
        ComposedEvent((DpEvent(),))


@pytest.mark.parametrize(
    "data",
    [
        {"kind": "exponential", "epsilon": 1.0},
        {"kind": "dp_accounting.GaussianDpEvent", "noise_multiplier": 1.0},
        {"noise_multiplier": 1.0},
        {"kind": "gaussian"},
        {"kind": "gaussian", "noise_multiplier": 1.0, "module": "os"},
        {"kind": "laplace", "epsilon": 1.0, "sensitivity": 2},
        {"kind": "composed", "events": {"kind": "laplace", "epsilon": 1.0}},
        {"kind": "composed", "events": []},
        {"kind": "gaussian", "noise_multiplier": 1.0, "steps": 1.5},
        ["gaussian", 1.0],
    ],
)
def test_from_json_refuses_unknown_or_malformed(data: object) -> None:
    with pytest.raises(PrivacyError):
        event_from_json(data)  # type: ignore[arg-type]


def test_from_json_on_subclass_checks_the_kind() -> None:
    with pytest.raises(PrivacyError):
        GaussianEvent.from_json({"kind": "laplace", "epsilon": 1.0})


def test_conversion_to_dp_accounting() -> None:
    assert GaussianEvent(2.0).to_dp_accounting() == dp_accounting.GaussianDpEvent(2.0)
    assert GaussianEvent(2.0, 0.1, 5).to_dp_accounting() == dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(2.0)), 5
    )
    # Pure eps-DP is accounted as its worst case: discrete Laplace on integers, sensitivity 1.
    assert LaplaceEvent(0.5, 3).to_dp_accounting() == dp_accounting.SelfComposedDpEvent(
        dp_accounting.dp_event.DiscreteLaplaceDpEvent(noise_parameter=0.5, sensitivity=1), 3
    )
    composed = ComposedEvent((GaussianEvent(1.0), LaplaceEvent(1.0))).to_dp_accounting()
    assert isinstance(composed, dp_accounting.ComposedDpEvent) and len(composed.events) == 2


def test_numpy_scalars_are_accepted_and_stored_as_python_numbers() -> None:
    import numpy as np

    ev = GaussianEvent(np.float32(1.5), np.float64(0.25), np.int64(3))  # type: ignore[arg-type]
    assert ev == GaussianEvent(1.5, 0.25, 3)
    assert type(ev.noise_multiplier) is float and type(ev.steps) is int
    assert json.loads(json.dumps(ev.to_json()))["steps"] == 3
