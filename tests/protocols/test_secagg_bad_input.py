"""Bad input on keyless secure aggregation (secagg), found by the bad-input sweep: each refusal
names the config key to change and to what, before anything runs; the public silo-side and
aggregator-side functions check their arrays; an aborted round names the silos it missed."""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsilo.crypto import secagg as sa
from fedsilo.crypto.registry import get_backend, get_backend_class
from fedsilo.errors import BudgetExceededError, ConfigError, EncodingOverflowError
from fedsilo.protocols.channel import InProcessHub, run_parties
from fedsilo.protocols.horizontal import secagg as P
from fedsilo.protocols.horizontal.sums import plan_sums

AGG = "agg"
GRID = 2.0**-16


def _plan(n: int, **params: Any) -> Any:
    cls = get_backend_class("secagg")
    built = cls(**params)
    return plan_sums(built, silos=[f"s{i}" for i in range(n)], min_silos=2, colluders=1, allow_exposed=False)


# ------------------------------------------------------------------- F3/F4/F10: the ring does not fit
@settings(max_examples=40, deadline=None)
@given(silos=st.integers(3, 300), bound_exp=st.integers(30, 80), grid_exp=st.integers(-30, -8))
def test_a_ring_overflow_names_the_keys_and_values_that_fit(silos: int, bound_exp: int, grid_exp: int) -> None:
    """Whenever exact sums overflow Z_2^64 the error names crypto.params.value_bound and
    crypto.params.granularity with values, and each suggested value, applied alone, fits."""
    vb, g = 2.0**bound_exp, 2.0**grid_exp
    fits = math.ceil(vb / g) * silos <= (1 << 63) - 1
    plan = _plan(silos, value_bound=vb, granularity=g)
    if fits:
        assert plan.spec(4).bits <= 64
        return
    with pytest.raises(ConfigError) as info:
        plan.spec(4)
    msg = str(info.value)
    assert "crypto.params.value_bound to <= 2^" in msg and "crypto.params.granularity to >= 2^" in msg
    lower = float(2.0 ** int(msg.split("value_bound to <= 2^")[1].split(" ")[0]))
    coarser = float(2.0 ** int(msg.split("granularity to >= 2^")[1].split(" ")[0]))
    assert lower < vb and coarser > g
    assert _plan(silos, value_bound=lower, granularity=g).spec(4).bits <= 64
    assert _plan(silos, value_bound=vb, granularity=coarser).spec(4).bits <= 64
    # and they are the tightest powers of two: one step further does not fit
    with pytest.raises(ConfigError):
        _plan(silos, value_bound=2 * lower, granularity=g).spec(4)
    with pytest.raises(ConfigError):
        _plan(silos, value_bound=vb, granularity=coarser / 2).spec(4)


def test_the_ring_bits_error_names_what_fits_in_grid_steps() -> None:
    with pytest.raises(ConfigError, match=r"needs 66 bits.*at most 3074457345618258602 grid steps"):
        sa.ring_bits(value_bound=2**63, summands=3)
    assert sa.ring_bits(value_bound=3074457345618258602, summands=3) == 64
    assert sa.max_summand_steps(3) == 3074457345618258602


def test_session_noise_the_sampler_cannot_draw_is_refused_when_planned(monkeypatch: pytest.MonkeyPatch) -> None:
    """A DDG share above 2^40 grid steps was refused only by the silo's sampler in round 1; now
    the planner refuses it naming privacy.epsilon. (The calibration never returns one today:
    ddg_epsilon flattens near 0.0035 at this size and reads 0 above sigma ~ 1e8, so the share is
    forced through the calibration here.)"""
    plan = _plan(5)
    ok = plan.ddg(length=31, epsilon=1.0, delta=1e-5, rounds=3, clip=1.0, colluders=1)
    assert 0.5 <= ok.noise_sigma <= sa.MAX_DDG_SIGMA
    huge = P.SecAggDP(clip=1.0, noise_sigma=2.0 * sa.MAX_DDG_SIGMA, colluders=1)
    monkeypatch.setattr(P, "calibrate_dp", lambda **kw: huge)
    with pytest.raises(ConfigError, match=r"privacy.epsilon = 0.001 over 3 round\(s\) needs .* more than the 2\^40.*"
                                          r"raise privacy.epsilon or lower training.rounds"):
        plan.ddg(length=31, epsilon=1e-3, delta=1e-5, rounds=3, clip=1.0, colluders=1)


# ------------------------------------------------------------------------------- degree and params
def test_a_degree_above_n_minus_1_is_refused_not_clamped() -> None:
    assert _plan(3, degree=2).spec(4).degree == 2
    with pytest.raises(ConfigError, match=r"crypto.params.degree = 7 but a job of 3 silos gives each at most 2 "
                                          r"neighbours; set crypto.params.degree <= 2"):
        _plan(3, degree=7).spec(4)
    with pytest.raises(ConfigError, match=r"crypto.params.degree = 3: .* needs an even degree"):
        _plan(8, degree=3).spec(4)
    assert _plan(8, degree=4).spec(4).degree == 4


@pytest.mark.parametrize("params, hint", [
    ({"thresold": 3}, "'thresold' (did you mean 'threshold'?)"),
    ({"valuebound": 1.0}, "'valuebound' (did you mean 'value_bound'?)"),
    ({"precision": 24}, "'precision' in crypto.params; valid keys: threshold, degree, granularity, value_bound, prg"),
])
def test_unknown_secagg_params_get_a_did_you_mean_hint(params: dict, hint: str) -> None:
    with pytest.raises(ConfigError) as info:
        get_backend("secagg", **params)
    assert hint in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------ F9: noised_input / decode_sum
def _specs() -> dict[str, P.SecAggSpec]:
    names = ["a", "b", "c"]
    return {
        "exact": P.secagg_spec(silos=names, length=5, granularity=GRID, value_bound=4.0),
        "dp": P.secagg_spec(silos=names, length=5, granularity=2.0**-10,
                            dp=P.SecAggDP(clip=1.0, noise_sigma=8.0, colluders=1)),
    }


@pytest.mark.parametrize("kind", ["exact", "dp"])
@pytest.mark.parametrize("values, match", [
    (np.zeros(4), r"expected 5 values, got shape \(4,\)"),
    (np.zeros((5, 1)), r"expected 5 values, got shape \(5, 1\)"),
    (np.array([0.1, np.nan, 0, 0, 0]), "NaN or infinite"),
    (np.array([0.1, np.inf, 0, 0, 0]), "NaN or infinite"),
    (np.array([1 + 1j, 0, 0, 0, 0]), "real numbers.*complex128"),
    (np.array(["1", "2", "3", "4", "5"]), "real numbers.*dtype <U1"),
    (np.array([True, False, True, False, True]), "real numbers.*dtype bool"),
    ([[1.0], [2.0, 3.0]], "flat vector of numbers"),
    ("12345", "real numbers"),
])
def test_noised_input_refuses_bad_vectors(kind: str, values: Any, match: str) -> None:
    spec = _specs()[kind]
    with pytest.raises(ConfigError, match=match):
        P.noised_input(spec, values, job="j", round=1, stream=sa.secret_stream())


def test_noised_input_checks_the_bound_the_clip_and_its_arguments() -> None:
    specs = _specs()
    with pytest.raises(EncodingOverflowError, match="value_bound 4"):
        P.noised_input(specs["exact"], np.array([5.0, 0, 0, 0, 0]), job="j", round=1, stream=sa.secret_stream())
    with pytest.raises(ConfigError, match="L2 norm exceeds the clip 1"):
        P.noised_input(specs["dp"], np.array([1.0, 1.0, 0, 0, 0]), job="j", round=1, stream=sa.secret_stream())
    with pytest.raises(ConfigError, match="stream must be a SecretStream"):
        P.noised_input(specs["dp"], np.zeros(5), job="j", round=1, stream=np.random.default_rng(0))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="spec must be a SecAggSpec"):
        P.noised_input({"length": 5}, np.zeros(5), job="j", round=1, stream=sa.secret_stream())  # type: ignore[arg-type]
    # good input still round-trips exactly (integers are accepted as numbers)
    ring = P.noised_input(specs["exact"], [1, -2, 3, 0, 4], job="j", round=1, stream=sa.secret_stream())
    np.testing.assert_array_equal(P.decode_sum(specs["exact"], ring, job="j", round=1), [1, -2, 3, 0, 4])


@pytest.mark.parametrize("kind", ["exact", "dp"])
def test_decode_sum_refuses_a_total_that_is_not_the_rings_vector(kind: str) -> None:
    spec = _specs()[kind]
    dt = np.dtype(sa.ring_dtype(spec.bits))
    good = np.zeros(spec.dimension, dtype=dt)
    assert P.decode_sum(spec, good.copy(), job="j", round=1).shape == (spec.length,)
    other = np.uint32 if dt == np.uint64 else np.uint64
    for bad, match in (
        (np.zeros(spec.dimension + 1, dtype=dt), "vector of"),
        (np.zeros(spec.dimension, dtype=other), f"must be a {dt} vector"),
        (np.zeros(spec.dimension, dtype=np.float64), "got a float64 array"),
        (np.zeros(spec.dimension, dtype=np.int64), "got a int64 array"),
        (list(good), "got a list"),
    ):
        with pytest.raises(ConfigError, match=match):
            P.decode_sum(spec, bad, job="j", round=1)  # type: ignore[arg-type]
    frozen = good.copy()
    frozen.flags.writeable = False
    with pytest.raises(ConfigError, match="writable"):
        P.decode_sum(spec, frozen, job="j", round=1)


# ------------------------------------------------------------- F8: an abort names the missing silos
def _round(spec: P.SecAggSpec, *, drops: Mapping[str, str], charge: Mapping[str, Any] | None = None) -> dict[str, Any]:
    hub = InProcessHub("job-bad", [*spec.silos, AGG])
    values = {s: np.zeros(spec.length) for s in spec.silos}

    def silo(name: str) -> Any:
        return lambda ch: P.silo_secagg_sum(ch, round=1, aggregator=AGG, spec=spec, values=values[name], timeout=30.0,
                                            drop=drops.get(name), charge=(charge or {}).get(name))

    parties: dict[str, Any] = {s: silo(s) for s in spec.silos}
    parties[AGG] = lambda ch: P.aggregator_secagg_sum(ch, round=1, spec=spec, timeout=2.0)
    return run_parties(hub, parties)


@pytest.mark.parametrize("phase", ["advertise", "masked"])
def test_an_aborted_round_names_the_silo_that_went_silent(phase: str) -> None:
    spec = P.secagg_spec(silos=["a", "b", "c"], length=3, granularity=GRID, value_bound=1.0, quorum=3)
    agg = _round(spec, drops={"c": phase})[AGG]
    assert agg.status == "aborted" and "did not answer in time or sent invalid messages: c]" in agg.reason
    assert "nothing was unmasked" in agg.reason


@contextlib.contextmanager
def _refused() -> Iterator[None]:
    raise BudgetExceededError(silo="c", dataset="c", spent=1.0, requested=2.0, budget=1.0, delta=1e-5)
    yield  # pragma: no cover


def test_an_aborted_round_names_the_silo_that_withdrew() -> None:
    spec = P.secagg_spec(silos=["a", "b", "c"], length=3, granularity=GRID, value_bound=1.0, quorum=3)
    out = _round(spec, drops={}, charge={"c": _refused})
    assert out["c"].status == "withdrawn"
    agg = out[AGG]
    assert agg.status == "aborted" and agg.withdrawn == ("c",)
    assert "needs 3 contributions (the quorum) [withdrew (privacy budget exhausted): c]" in agg.reason


def test_a_statistics_job_a_silo_withdraws_from_fails_naming_it(tmp_path: Any) -> None:
    """F5: h2's ledger was spent by another job after the pre-check (simulate_statistics runs
    none, as a concurrent job would slip past it): h2 withdraws, the keyless sum aborts below its
    quorum before unmasking, and the job's error names h2 as withdrawn."""
    import pandas as pd

    from fedsilo.errors import NotEnoughSilosError
    from fedsilo.privacy.events import GaussianEvent
    from fedsilo.privacy.ledger import PrivacyLedger
    from fedsilo.privacy.relations import ADD_REMOVE_RECORD
    from fedsilo.silos.tasks.statistics import simulate_statistics

    rng = np.random.default_rng(3)  # public test data
    frames = {n: pd.DataFrame({"age": rng.uniform(20, 80, 40)}) for n in ("h0", "h1", "h2")}
    with PrivacyLedger(tmp_path / "h2.sqlite", silo="h2") as led:
        led.register_dataset("h2", epsilon=2.0, delta=1e-5)
        led.charge("h2", GaussianEvent(2.2, 1.0, 1), job="other", round=1, protocol="test",
                   mechanism={"name": "gaussian"}, recipient="test", relation=ADD_REMOVE_RECORD)
    with pytest.raises(NotEnoughSilosError, match=r"needs 3 contributions \(the quorum\) \[withdrew \(privacy budget "
                                                  r"exhausted\): h2\]"):
        simulate_statistics(silos=frames, columns=["age"], queries=["count", "sum"], bins=4,
                            ranges={"age": [0.0, 100.0]}, privacy={"epsilon": 1.0, "delta": 1e-5, "accountant": "rdp"},
                            ledger_dir=tmp_path, budgets={n: (2.0, 1e-5) for n in frames}, job="stats",
                            backend_params={}, backend="secagg", round_timeout=10.0)
    with PrivacyLedger(tmp_path / "h2.sqlite", silo="h2") as led:
        assert [e.job for e in led.entries()] == ["other"]  # h2 charged nothing for this job
