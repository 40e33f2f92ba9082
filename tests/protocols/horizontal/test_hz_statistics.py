"""Federated statistics against numpy: exact without DP, within the noise bound with DP."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedsilo.errors import ConfigError, NotEnoughSilosError
from fedsilo.privacy.accounting import epsilon
from fedsilo.privacy.events import GaussianEvent
from fedsilo.privacy.ledger import PrivacyLedger
from fedsilo.protocols.horizontal import simulate_statistics
from fedsilo.protocols.horizontal.statistics import plan_statistics
from hz_data import backend_available

RANGES = {"age": (0.0, 100.0), "dose": (-5.0, 5.0)}
QUERIES = ["count", "sum", "mean", "histogram"]
PAILLIER = pytest.param(
    "paillier", id="paillier",
    marks=[pytest.mark.slow, pytest.mark.skipif(not backend_available("paillier", packed=True), reason="paillier backend not installed")],
)


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
        budgets={n: (4.0, 1e-5) for n in frames}, job="stats", seed=3, backend_params={}, backend="plain",
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
        assert float(got["count"]).is_integer()  # counts noised on the integer grid


def test_budget_refusal_and_not_enough_silos(frames: dict[str, pd.DataFrame], tmp_path: Any) -> None:
    privacy = {"epsilon": 2.0, "delta": 1e-5}
    budgets = {"h0": (4.0, 1e-5), "h1": (4.0, 1e-5), "h2": (1.0, 1e-5)}
    res = _run(frames, privacy=privacy, ledger_dir=tmp_path, budgets=budgets)
    assert res["silos"] == ["h0", "h1"]  # h2 withdrew, the others topped up the noise
    assert res["epsilon"]["h2"]["epsilon"] == 0.0
    # the same query again: h0 and h1 still afford it (2 + 2 <= 4 under RDP), but require 3 silos
    with pytest.raises(NotEnoughSilosError, match="nothing was decrypted"):
        _run(frames, privacy=privacy, ledger_dir=tmp_path, budgets=budgets, min_silos=3)


def test_dropout_gets_topup(frames: dict[str, pd.DataFrame]) -> None:
    res = _run(frames, privacy={"epsilon": 2.0, "delta": 1e-5}, faults={"h1": "update"}, round_timeout=3.0)
    assert res["silos"] == ["h0", "h2"]
    assert res["statistics"]["age"]["count"] == pytest.approx(200, abs=100)


def test_plan_validation() -> None:
    with pytest.raises(ConfigError, match="range.age is required for histogram"):
        plan_statistics(columns=["age"], queries=["histogram"], bins=4, ranges={}, privacy=None)
    with pytest.raises(ConfigError, match="DP sum"):
        plan_statistics(columns=["age"], queries=["mean"], bins=4, ranges={}, privacy={"epsilon": 1.0})
    with pytest.raises(ConfigError, match="queries"):
        plan_statistics(columns=["age"], queries=["median"], bins=4, ranges={}, privacy=None)
    plan = plan_statistics(columns=["age"], queries=["mean"], bins=4, ranges={}, privacy=None)
    assert [r.query for r in plan.releases] == ["count", "sum"]
