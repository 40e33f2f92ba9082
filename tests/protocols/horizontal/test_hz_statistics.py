"""Federated statistics against numpy: exact without DP, within the noise bound with DP."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsilo.errors import ConfigError, EncodingOverflowError, NotEnoughSilosError, ProtocolError
from fedsilo.privacy.accounting import epsilon
from fedsilo.privacy.events import GaussianEvent
from fedsilo.privacy.ledger import PrivacyLedger
from fedsilo.privacy.mechanisms import noise_share_sigma, noise_share_topup_sigma, secure_rng
from fedsilo.protocols.channel import InProcessHub
from fedsilo.protocols.horizontal import statistics_silo
from fedsilo.silos.tasks.statistics import simulate_statistics
from fedsilo.protocols.horizontal.statistics import (
    FINEST_GRANULARITY,
    _noise,
    finalize_statistics,
    plan_statistics,
    raw_statistics,
)
from hz_data import backend_available

RANGES = {"age": (0.0, 100.0), "dose": (-5.0, 5.0)}
QUERIES = ["count", "sum", "mean", "histogram"]
PAILLIER = pytest.param(
    "paillier", id="paillier",
    marks=[pytest.mark.slow, pytest.mark.skipif(not backend_available("paillier", packed=True), reason="paillier backend not installed")],
)

def plan_for(*, columns: Any, queries: Any, bins: int, ranges: Any, privacy: Any, silos: int) -> Any:
    """plan_statistics on mappings validated as the [statistics] and [privacy] sections."""
    from fedsilo.protocols.spec import PrivacySection, StatisticsSection, section

    request = section(StatisticsSection, {"columns": list(columns), "queries": list(queries), "bins": bins,
                                          "range": dict(ranges)}, key="statistics")
    return plan_statistics(request, None if privacy is None else section(PrivacySection, privacy, key="privacy"),
                           silos=silos)



@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(11)
    out = {}
    for i, n in enumerate((120, 300, 80)):
        out[f"h{i}"] = pd.DataFrame({"age": rng.uniform(20, 90, n).round(1), "dose": rng.normal(0.5 * i, 1.5, n), "id": np.arange(n)})
    return out


def _run(frames: dict[str, pd.DataFrame], **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(
        silos=frames, columns=["age", "dose"], queries=QUERIES, bins=8, ranges=RANGES, privacy=None, ledger_dir=None,
        budgets={n: (4.0, 1e-5) for n in frames}, job="stats", backend_params={}, backend="plain",
        insecure=True,  # plain backend: a test baseline
    )
    args.update(kw)
    return simulate_statistics(**args)


@pytest.mark.parametrize("backend", ["plain", PAILLIER])
def test_exact_without_dp(frames: dict[str, pd.DataFrame], backend: str) -> None:
    res = _run(frames, backend=backend, backend_params={"packed": True} if backend == "paillier" else {})
    pooled = pd.concat(frames.values())
    for col in ("age", "dose"):
        got = res["statistics"][col]
        assert got["count"] == len(pooled)
        assert got["sum"] == pytest.approx(pooled[col].sum(), rel=1e-9, abs=1e-6)
        assert got["mean"] == pytest.approx(pooled[col].mean(), rel=1e-9)
        lo, hi = RANGES[col]
        want, edges = np.histogram(pooled[col].clip(lo, hi), bins=8, range=(lo, hi))
        assert got["histogram"]["counts"] == want.tolist()
        np.testing.assert_allclose(got["histogram"]["edges"], edges)
    assert res["dp"] is None and res["silos"] == ["h0", "h1", "h2"]


def test_dp_within_noise_bounds_and_charged(frames: dict[str, pd.DataFrame], tmp_path: Any) -> None:
    privacy = {"epsilon": 2.0, "delta": 1e-5, "accountant": "rdp"}
    res = _run(frames, privacy=privacy, ledger_dir=tmp_path)
    pooled = pd.concat(frames.values())
    dp = res["dp"]
    assert dp["releases"] == 6  # count, sum, histogram per column
    want_eps = epsilon(GaussianEvent(dp["noise_multiplier"], 1.0, 6), delta=1e-5)
    assert want_eps <= 2.0
    for n in frames:
        assert res["epsilon"][n] == {"epsilon": want_eps, "delta": 1e-5}
        led = PrivacyLedger(tmp_path / f"{n}.sqlite", silo=n)
        assert led.spent(n) == pytest.approx(want_eps)
        assert [e.level for e in led.entries(n)] == ["record"]
        # the decrypted sums go to every silo (key holders), the aggregator only relays them
        (entry,) = led.entries(n)
        assert entry.recipient == "silos:h0,h1,h2"
        assert entry.mechanism["recipients"] == ["h0", "h1", "h2"] and entry.mechanism["relayed_by"] == "aggregator"
        assert entry.mechanism["neighbours"] == "add/remove one record of a silo"
    # total noise std is at most sigma * sqrt(n / (n - colluders)); 6 sigma is a 1e-9 event
    widen = np.sqrt(3 / 2)
    for col in ("age", "dose"):
        got = res["statistics"][col]
        lo, hi = RANGES[col]
        s_count, s_sum = dp["sigma"][f"{col}.count"] * widen, dp["sigma"][f"{col}.sum"] * widen
        assert abs(got["count"] - len(pooled)) <= 6 * s_count
        assert abs(got["sum"] - pooled[col].clip(lo, hi).sum()) <= 6 * s_sum + 1e-3
        assert got["count"] != len(pooled) or got["sum"] != pooled[col].sum()  # noise is there
        want, _ = np.histogram(pooled[col].clip(lo, hi), bins=8, range=(lo, hi))
        assert np.all(np.abs(np.array(got["histogram"]["counts"]) - want) <= 6 * dp["sigma"][f"{col}.histogram"] * widen)
        assert float(got["count"]).is_integer() and got["count"] >= 0  # post-processed
        g = dp["granularity"][f"{col}.count"]
        assert float(res["raw"][col]["count"] / g).is_integer()  # noised on the count's grid


def test_budget_refusal_and_not_enough_silos(frames: dict[str, pd.DataFrame], tmp_path: Any) -> None:
    privacy = {"epsilon": 2.0, "delta": 1e-5}
    budgets = {"h0": (4.0, 1e-5), "h1": (4.0, 1e-5), "h2": (1.0, 1e-5)}
    # h2 withdraws; a sum of the other two would expose each one's statistics to the other
    with pytest.raises(NotEnoughSilosError, match="sum of 2"):
        _run(frames, privacy=privacy, ledger_dir=tmp_path / "safe", budgets=budgets, backend="paillier",
             backend_params={"packed": True}, insecure=False)
    res = _run(frames, privacy=privacy, ledger_dir=tmp_path, budgets=budgets)
    assert res["silos"] == ["h0", "h1"]  # h2 withdrew, the others topped up the noise
    assert res["epsilon"]["h2"]["epsilon"] == 0.0
    # the same query again: h0 and h1 still afford it (2 + 2 <= 4 under RDP), but require 3 silos
    with pytest.raises(NotEnoughSilosError, match="nothing was decrypted"):
        _run(frames, privacy=privacy, ledger_dir=tmp_path, budgets=budgets, min_silos=3)


def test_dropout_gets_topup(frames: dict[str, pd.DataFrame]) -> None:
    # a sum of the two remaining silos would give each the other's statistics: refused ...
    with pytest.raises(NotEnoughSilosError, match="sum of 2 would let each contributor compute the other"):
        _run(frames, privacy={"epsilon": 2.0, "delta": 1e-5}, faults={"h1": "update"}, round_timeout=3.0,
             backend="paillier", backend_params={"packed": True}, insecure=False)
    # ... unless the job opts in to insecure settings
    res = _run(frames, privacy={"epsilon": 2.0, "delta": 1e-5}, faults={"h1": "update"}, round_timeout=3.0)
    assert res["silos"] == ["h0", "h2"]
    assert res["statistics"]["age"]["count"] == pytest.approx(200, abs=100)


def test_plan_validation() -> None:
    with pytest.raises(ConfigError, match="range.age is required for histogram"):
        plan_for(columns=["age"], queries=["histogram"], bins=4, ranges={}, privacy=None, silos=2)
    with pytest.raises(ConfigError, match="DP sum"):
        plan_for(columns=["age"], queries=["mean"], bins=4, ranges={}, privacy={"epsilon": 1.0}, silos=2)
    with pytest.raises(ConfigError, match="queries"):
        plan_for(columns=["age"], queries=["median"], bins=4, ranges={}, privacy=None, silos=2)
    with pytest.raises(ConfigError, match="cannot tolerate 1 colluding"):
        plan_for(columns=["age"], queries=["count"], bins=4, ranges={}, privacy={"epsilon": 1.0}, silos=1)
    plan = plan_for(columns=["age"], queries=["mean"], bins=4, ranges={}, privacy=None, silos=2)
    assert [r.query for r in plan.releases] == ["count", "sum"]


# --------------------------------------------------------------------------------- discrete-Gaussian shares
def _narrowest_draw(sigma: float, silos: int, colluders: int) -> float:
    """Independent of the planner: the narrowest share or top-up any silo can draw."""
    widths = [noise_share_sigma(sigma=sigma, parties=n - colluders) for n in range(colluders + 1, silos + 1)]
    for n in range(colluders + 2, silos + 1):
        for k in range(colluders + 1, n):
            widths.append(noise_share_topup_sigma(sigma=sigma, parties=n - colluders, present=k - colluders))
    return min(widths)


def _check_plan(plan: Any, silos: int, colluders: int) -> None:
    for r in plan.releases:
        mantissa, _ = math.frexp(r.granularity)
        assert mantissa == 0.5 and FINEST_GRANULARITY <= r.granularity <= 1.0  # a power of two
        assert float(r.sensitivity / r.granularity).is_integer()  # sensitivity on the grid
        assert r.sigma == pytest.approx(plan.noise_multiplier * r.sensitivity)
        assert _narrowest_draw(r.sigma, silos, colluders) / r.granularity >= 3.0


def test_counts_get_a_finer_grid_when_shares_are_narrow() -> None:
    # eps = 8 over 3 releases, 3 silos, colluders 1: sigma = 1.105, shares 0.78 -- too narrow for
    # the integer grid (the sum of shares would not be the discrete Gaussian the accountant assumes)
    plan = plan_for(columns=["a"], queries=["count", "sum", "histogram"], bins=4, ranges={"a": (0.0, 1.0)},
                           privacy={"epsilon": 8.0, "delta": 1e-5}, silos=3)
    count, total, hist = plan.releases
    assert count.sigma / math.sqrt(2) == pytest.approx(0.7816, abs=1e-4)
    assert count.granularity == hist.granularity == 0.25 and total.granularity == 2.0**-16
    assert count.share_steps == pytest.approx(0.7816 / 0.25, abs=1e-3)
    _check_plan(plan, 3, 1)
    # wide shares keep the integer grid
    wide = plan_for(columns=["a"], queries=["count"], bins=4, ranges={}, privacy={"epsilon": 0.5}, silos=3)
    assert wide.releases[0].granularity == 1.0


@settings(max_examples=40, deadline=None)
@given(
    eps=st.floats(0.05, 60.0),
    silos=st.integers(1, 12),
    colluders=st.integers(1, 2),
    bound=st.floats(1e-4, 1e4),
    queries=st.sampled_from([["count"], ["sum"], ["count", "sum", "histogram"], ["mean"]]),
)
def test_every_noise_draw_is_at_least_three_grid_steps(eps: float, silos: int, colluders: int, bound: float, queries: list) -> None:
    privacy = {"epsilon": eps, "delta": 1e-5, "colluders": colluders}
    try:
        plan = plan_for(columns=["x"], queries=queries, bins=3, ranges={"x": (-bound, bound / 2)},
                               privacy=privacy, silos=silos)
    except ConfigError as exc:
        assert silos < colluders + 1 or "narrower than 3 steps" in str(exc)
        return
    _check_plan(plan, silos, colluders)


def test_plan_refuses_zero_colluders() -> None:
    """A silo knows its own share and sees the decrypted sum: 0 colluders is never safe."""
    with pytest.raises(ConfigError, match=r"privacy.colluders': Input should be greater than or equal to 1"):
        plan_for(columns=["x"], queries=["count"], bins=3, ranges={}, privacy={"epsilon": 1.0, "colluders": 0}, silos=3)


def test_plan_refuses_shares_it_cannot_widen() -> None:
    # a range of 1e-9 needs a sum grid far below 2**-24 for shares 3 steps wide
    with pytest.raises(ConfigError, match="narrower than 3 steps of the finest grid"):
        plan_for(columns=["x"], queries=["sum"], bins=2, ranges={"x": (0.0, 1e-9)},
                        privacy={"epsilon": 8.0}, silos=3)


def test_silos_refuse_narrow_draws_and_plans_for_fewer_silos(frames: dict[str, pd.DataFrame]) -> None:
    plan = plan_for(columns=["age"], queries=["count"], bins=2, ranges={}, privacy={"epsilon": 8.0}, silos=2)
    with pytest.raises(ProtocolError, match="narrower than 3 steps"):
        _noise(plan, lambda s: s / 100, secure_rng(0))  # e.g. an aggregator claiming 10^4 present silos
    hub = InProcessHub("s", ["h0", "h1", "h2", "aggregator"])
    with pytest.raises(ConfigError, match="sized its noise grids for 2 silos"):
        statistics_silo(hub.channel("h0"), job="s", silos=["h0", "h1", "h2"], aggregator="aggregator",
                        frame=frames["h0"], plan=plan, backend="plain", backend_params={},
                        ledger=None, dataset=None)


@pytest.mark.parametrize("backend", ["plain", PAILLIER])
@pytest.mark.filterwarnings("ignore::fedsilo.crypto.paillier.InsecureParametersWarning")
def test_dp_counts_live_on_their_grid(frames: dict[str, pd.DataFrame], backend: str) -> None:
    params = {"packed": True, "key_bits": 1024} if backend == "paillier" else {}  # 1024: test speed only
    res = _run(frames, privacy={"epsilon": 8.0, "delta": 1e-5}, backend=backend, backend_params=params,
               budgets={n: (8.0, 1e-5) for n in frames})
    pooled = pd.concat(frames.values())
    values = []
    for col in ("age", "dose"):
        g = res["dp"]["granularity"][f"{col}.count"]
        assert g == res["dp"]["granularity"][f"{col}.histogram"] < 1.0
        raw = res["raw"][col]
        values += [raw["count"], *raw["histogram"]]
        assert all(float(v / g).is_integer() for v in [raw["count"], *raw["histogram"]])
        assert abs(raw["count"] - len(pooled)) <= 6 * res["dp"]["sigma"][f"{col}.count"] * math.sqrt(3 / 2)
    assert not all(float(v).is_integer() for v in values)  # the finer grid is really used


def test_encoding_precision_must_cover_the_grid(frames: dict[str, pd.DataFrame], tmp_path: Any) -> None:
    # counts need a 2**-3 grid at eps = 8 over 2 releases and 3 silos: 2 fractional bits cannot carry it
    with pytest.raises(ConfigError, match="precision to at least 3 fractional bits"):
        _run(frames, privacy={"epsilon": 8.0, "delta": 1e-5}, backend="paillier", queries=["count"],
             backend_params={"packed": True, "precision": 2}, ledger_dir=tmp_path)
    assert not list(tmp_path.iterdir())  # refused before any ledger was created


@pytest.mark.slow
@pytest.mark.skipif(not backend_available("paillier", packed=True), reason="paillier backend not installed")
@pytest.mark.filterwarnings("ignore::fedsilo.crypto.paillier.InsecureParametersWarning")
def test_paillier_overflow_is_still_detected(frames: dict[str, pd.DataFrame]) -> None:
    # h1 holds 300 rows: its count does not fit value_bound = 256
    with pytest.raises(EncodingOverflowError, match="value_bound"):
        _run(frames, privacy={"epsilon": 8.0, "delta": 1e-5}, backend="paillier", budgets={n: (8.0, 1e-5) for n in frames},
             backend_params={"packed": True, "key_bits": 1024, "value_bound": 256.0})


# --------------------------------------------------------------------------------- post-processing
def test_post_processing_clamps_counts_and_keeps_raw() -> None:
    plan = plan_for(columns=["x"], queries=["count", "sum", "mean", "histogram"], bins=3,
                           ranges={"x": (0.0, 10.0)}, privacy={"epsilon": 1.0}, silos=3)
    layout = {(r.column, r.query): r for r in plan.releases}
    total = np.zeros(plan.size)
    total[layout[("x", "count")].offset] = -4.0
    total[layout[("x", "sum")].offset] = 7.5
    h = layout[("x", "histogram")]
    total[h.offset : h.offset + 3] = [-23.0, 5.0, 2.6]
    out = finalize_statistics(total, plan)["x"]
    assert out["count"] == 0.0
    assert out["histogram"]["counts"] == [0.0, 5.0, 3.0]
    assert out["mean"] == 7.5  # released sum / max(1, released count), clipped to the range
    assert out["sum"] == 7.5
    raw = raw_statistics(total, plan)["x"]
    assert raw == {"count": -4.0, "sum": 7.5, "histogram": [-23.0, 5.0, 2.6]}  # unbiased, for aggregation
    total[layout[("x", "sum")].offset] = -30.0
    assert finalize_statistics(total, plan)["x"]["mean"] == 0.0  # clipped to [lo, hi]


def test_results_carry_raw_values(frames: dict[str, pd.DataFrame]) -> None:
    res = _run(frames, privacy={"epsilon": 2.0, "delta": 1e-5})
    for col in ("age", "dose"):
        got, raw = res["statistics"][col], res["raw"][col]
        assert set(raw) == {"count", "sum", "histogram"}
        assert got["count"] == max(0.0, round(raw["count"])) and got["sum"] == raw["sum"]
        assert got["histogram"]["counts"] == [max(0.0, float(round(v))) for v in raw["histogram"]]
        lo, hi = RANGES[col]
        assert got["mean"] == pytest.approx(min(hi, max(lo, raw["sum"] / max(1.0, got["count"]))))
    exact = _run(frames)
    assert exact["raw"]["age"]["count"] == exact["statistics"]["age"]["count"] == 500


def test_a_one_silo_job_without_dp_sums_its_own_statistics(frames: dict[str, pd.DataFrame]) -> None:
    """No other silo receives the sum, so no coalition exists: the job is not refused."""
    res = _run({"h0": frames["h0"]}, min_silos=1)
    assert res["statistics"]["age"]["count"] == len(frames["h0"])
