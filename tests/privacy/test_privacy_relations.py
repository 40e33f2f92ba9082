"""Neighbouring relations: constants, levels, conservative conversion, composition target."""
from __future__ import annotations

import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsilo.errors import PrivacyError, PrivacyParameterError
from fedsilo.privacy import relations
from fedsilo.privacy.accounting import epsilon
from fedsilo.privacy.events import ComposedEvent, GaussianEvent, LaplaceEvent
from fedsilo.privacy.relations import (
    ADD_REMOVE_RECORD,
    LEVELS,
    RELATIONS,
    REPLACE_RECORD,
    ZERO_OUT_SILO,
    composition_target,
    convert,
    level_of,
    to_composition_target,
)

DELTA = 1e-5
DOUBLING = [(ZERO_OUT_SILO, ADD_REMOVE_RECORD), (ZERO_OUT_SILO, REPLACE_RECORD), (ADD_REMOVE_RECORD, REPLACE_RECORD)]
NO_IMPLICATION = [(ADD_REMOVE_RECORD, ZERO_OUT_SILO), (REPLACE_RECORD, ZERO_OUT_SILO), (REPLACE_RECORD, ADD_REMOVE_RECORD)]


def eps(event) -> float:  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # RDP optimum at the grid's edge
        return epsilon(event, delta=DELTA)


def test_constants() -> None:
    assert (ZERO_OUT_SILO, ADD_REMOVE_RECORD, REPLACE_RECORD) == ("zero-out-silo", "add-remove-record", "replace-record")
    assert RELATIONS == (ZERO_OUT_SILO, ADD_REMOVE_RECORD, REPLACE_RECORD)
    assert LEVELS == ("silo", "record")
    assert set(relations.__all__) >= {"ZERO_OUT_SILO", "ADD_REMOVE_RECORD", "REPLACE_RECORD", "RELATIONS", "level_of", "convert"}
    assert [level_of(r) for r in RELATIONS] == ["silo", "record", "record"]
    for bad in ("silo", "record", "add/remove", "", None, 1):
        with pytest.raises(PrivacyParameterError, match="unknown neighbouring relation"):
            level_of(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("relation", RELATIONS)
def test_same_relation_is_unchanged(relation: str) -> None:
    for event in (GaussianEvent(1.1, 0.01, 100), LaplaceEvent(0.5, 3), ComposedEvent((GaussianEvent(2.0), LaplaceEvent(0.1)))):
        assert convert(event, source=relation, target=relation) is event


@pytest.mark.parametrize(("source", "target"), DOUBLING)
def test_doubling_conversions(source: str, target: str) -> None:
    assert convert(GaussianEvent(1.7, 1.0, 8), source=source, target=target) == GaussianEvent(0.85, 1.0, 8)
    assert convert(LaplaceEvent(0.3, 4), source=source, target=target) == LaplaceEvent(0.6, 4)
    composed = ComposedEvent((GaussianEvent(2.0), ComposedEvent((LaplaceEvent(0.1),)), GaussianEvent(4.0, 1.0, 3)))
    assert convert(composed, source=source, target=target) == ComposedEvent(
        (GaussianEvent(1.0), ComposedEvent((LaplaceEvent(0.2),)), GaussianEvent(2.0, 1.0, 3))
    )


@pytest.mark.parametrize(("source", "target"), DOUBLING)
def test_subsampled_gaussian_is_refused(source: str, target: str) -> None:
    for event in (GaussianEvent(1.0, 0.01, 100), ComposedEvent((LaplaceEvent(0.1), GaussianEvent(2.0, 0.5)))):
        with pytest.raises(PrivacyError) as info:
            convert(event, source=source, target=target)
        message = str(info.value)
        assert repr(source) in message and repr(target) in message
        assert "subsampled" in message and "no sound simple conversion" in message


@pytest.mark.parametrize(("source", "target"), NO_IMPLICATION)
def test_no_implication_is_refused(source: str, target: str) -> None:
    for event in (GaussianEvent(5.0), LaplaceEvent(0.1)):
        with pytest.raises(PrivacyError, match="no implication") as info:
            convert(event, source=source, target=target)
        assert repr(source) in str(info.value) and repr(target) in str(info.value)


def test_convert_refuses_bad_input() -> None:
    with pytest.raises(PrivacyParameterError):
        convert(GaussianEvent(1.0), source="silo", target=ZERO_OUT_SILO)
    with pytest.raises(PrivacyParameterError):
        convert(GaussianEvent(1.0), source=ZERO_OUT_SILO, target="record")
    with pytest.raises(PrivacyError):
        convert({"kind": "gaussian"}, source=ZERO_OUT_SILO, target=REPLACE_RECORD)  # type: ignore[arg-type]
    # an event whose conversion would leave the valid range is refused, not wrapped
    with pytest.raises(PrivacyError, match="'zero-out-silo' to 'replace-record'"):
        convert(LaplaceEvent(1e308), source=ZERO_OUT_SILO, target=REPLACE_RECORD)
    with pytest.raises(PrivacyError, match="'add-remove-record' to 'replace-record'"):
        convert(GaussianEvent(5e-324), source=ADD_REMOVE_RECORD, target=REPLACE_RECORD)


@settings(max_examples=60, deadline=None)
@given(
    z=st.floats(min_value=0.2, max_value=50.0),
    steps=st.integers(min_value=1, max_value=200),
    pair=st.sampled_from(DOUBLING),
)
def test_gaussian_conversion_never_decreases_epsilon(z: float, steps: int, pair: tuple[str, str]) -> None:
    original = GaussianEvent(z, 1.0, steps)
    converted = convert(original, source=pair[0], target=pair[1])
    assert isinstance(converted, GaussianEvent)
    assert converted.noise_multiplier == z / 2 and converted.steps == steps and converted.sample_rate == 1.0
    assert eps(converted) >= eps(original)


@settings(max_examples=60, deadline=None)
@given(
    e=st.floats(min_value=1e-3, max_value=20.0),
    steps=st.integers(min_value=1, max_value=50),
    pair=st.sampled_from(DOUBLING),
)
def test_laplace_conversion_doubles_epsilon(e: float, steps: int, pair: tuple[str, str]) -> None:
    original = LaplaceEvent(e, steps)
    converted = convert(original, source=pair[0], target=pair[1])
    assert converted == LaplaceEvent(2 * e, steps)
    assert eps(converted) >= eps(original)
    if steps == 1:
        assert eps(converted) == pytest.approx(2 * e, rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    parts=st.lists(
        st.one_of(
            st.builds(GaussianEvent, st.floats(min_value=0.3, max_value=20.0), st.just(1.0), st.integers(1, 20)),
            st.builds(LaplaceEvent, st.floats(min_value=1e-3, max_value=5.0), st.integers(1, 5)),
        ),
        min_size=1,
        max_size=4,
    ),
    pair=st.sampled_from(DOUBLING),
)
def test_composed_conversion_never_decreases_epsilon(parts: list, pair: tuple[str, str]) -> None:  # type: ignore[type-arg]
    original = ComposedEvent(tuple(parts))
    converted = convert(original, source=pair[0], target=pair[1])
    assert isinstance(converted, ComposedEvent)
    assert converted.events == tuple(convert(p, source=pair[0], target=pair[1]) for p in parts)
    assert eps(converted) >= eps(original)


def test_the_audits_silo_level_example() -> None:
    """silo_level.toml: 8 rounds at z = 1.70 are eps ~7.98 per silo and ~19.1 per patient (PLD)."""
    silo = GaussianEvent(1.70, 1.0, 8)
    record = convert(silo, source=ZERO_OUT_SILO, target=ADD_REMOVE_RECORD)
    assert record == GaussianEvent(0.85, 1.0, 8)
    assert epsilon(silo, delta=DELTA, accountant="pld") == pytest.approx(7.98, abs=0.02)
    assert epsilon(record, delta=DELTA, accountant="pld") == pytest.approx(19.1, abs=0.1)


@pytest.mark.parametrize(
    ("present", "target"),
    [
        ({ZERO_OUT_SILO}, ZERO_OUT_SILO),
        ({ADD_REMOVE_RECORD}, ADD_REMOVE_RECORD),
        ({REPLACE_RECORD}, REPLACE_RECORD),
        ({ZERO_OUT_SILO, ADD_REMOVE_RECORD}, ADD_REMOVE_RECORD),
        ({ZERO_OUT_SILO, REPLACE_RECORD}, REPLACE_RECORD),
        ({ADD_REMOVE_RECORD, REPLACE_RECORD}, REPLACE_RECORD),
        (set(RELATIONS), REPLACE_RECORD),
    ],
)
def test_composition_target(present: set[str], target: str) -> None:
    assert composition_target(sorted(present)) == target
    assert composition_target(list(present) * 3) == target


def test_composition_target_refuses_nothing_and_unknowns() -> None:
    with pytest.raises(PrivacyParameterError):
        composition_target([])
    with pytest.raises(PrivacyParameterError):
        composition_target([ZERO_OUT_SILO, "record"])


def test_to_composition_target() -> None:
    assert to_composition_target([]) == (None, ())
    target, events = to_composition_target(
        [(GaussianEvent(2.0), ZERO_OUT_SILO), (GaussianEvent(1.0, 0.01, 100), ADD_REMOVE_RECORD), (LaplaceEvent(0.5), ZERO_OUT_SILO)]
    )
    assert target == ADD_REMOVE_RECORD
    assert events == (GaussianEvent(1.0), GaussianEvent(1.0, 0.01, 100), LaplaceEvent(1.0))
    target, events = to_composition_target([(GaussianEvent(2.0), ZERO_OUT_SILO), (LaplaceEvent(0.5), ADD_REMOVE_RECORD), (GaussianEvent(3.0, 0.5), REPLACE_RECORD)])
    assert target == REPLACE_RECORD
    # zero-out-silo -> replace-record is one doubling (any record change stays in the C-ball: 2C)
    assert events == (GaussianEvent(1.0), LaplaceEvent(1.0), GaussianEvent(3.0, 0.5))
    with pytest.raises(PrivacyError) as info:
        to_composition_target([(GaussianEvent(1.0, 0.01, 100), ADD_REMOVE_RECORD), (GaussianEvent(3.0), REPLACE_RECORD)])
    assert "'add-remove-record'" in str(info.value) and "'replace-record'" in str(info.value)


def test_a_subsampled_gaussian_cannot_be_charged_as_replace_one(tmp_path) -> None:
    """The accountant's subsampled-Gaussian bound is the add/remove one: under replace-one the
    same event costs more (dp-accounting's REPLACE_ONE PLD: 0.895 against 0.718 for
    GaussianEvent(1.0, 0.01, 100) at delta 1e-5), so the ledger refuses it, writing nothing."""
    from fedsilo.errors import PrivacyError
    from fedsilo.privacy.events import GaussianEvent
    from fedsilo.privacy.ledger import PrivacyLedger
    from fedsilo.privacy.relations import ADD_REMOVE_RECORD, REPLACE_RECORD, check_accountable

    sampled = GaussianEvent(1.0, 0.01, 100)
    with pytest.raises(PrivacyError, match="sample_rate 0.01.*replace-record"):
        check_accountable(sampled, REPLACE_RECORD)
    check_accountable(sampled, ADD_REMOVE_RECORD)
    check_accountable(GaussianEvent(1.0, 1.0, 3), REPLACE_RECORD)
    with PrivacyLedger(tmp_path / "l.sqlite", silo="s") as led:
        led.register_dataset("d", epsilon=10.0, delta=1e-5)
        with pytest.raises(PrivacyError, match="replace-record"):
            led.charge("d", sampled, job="j", round=1, protocol="p", mechanism={}, recipient="r", relation=REPLACE_RECORD)
        assert led.entries("d") == []
