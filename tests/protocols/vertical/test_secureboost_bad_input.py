"""SecureBoost's bad-input refusals on a party's own table: one line naming the file and the
column, never a label value or a row count, and before anything is sent or charged."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsilo.errors import DataError
from fedsilo.privacy.ledger import PrivacyLedger
from fedsilo.protocols.channel import InProcessHub
from fedsilo.protocols.spec import ModelSection
from fedsilo.protocols.vertical.secureboost import BoostConfig
from fedsilo.protocols.vertical.secureboost import messages as sb
from fedsilo.protocols.vertical.secureboost.boosting import (
    label_bound,
    leaf_value,
    regression_metrics,
    squared_gradients,
    squared_loss,
)
from fedsilo.protocols.vertical.secureboost.job import party_table
from fedsilo.protocols.vertical.secureboost.model import refuse_constant
from fedsilo.silos.tasks.secureboost import simulate_secureboost
from vt_data import breast_cancer_bounds, breast_cancer_tables


def _cfg(**model) -> BoostConfig:
    return BoostConfig.from_section(ModelSection(kind="secureboost", **model), timeout=10.0)


def _frame(label, **extra) -> pd.DataFrame:
    n = len(label)
    return pd.DataFrame({"id": [f"p{i}" for i in range(n)], "a": np.arange(n, dtype=float), **extra, "y": label})


def _refused(frame: pd.DataFrame, **model) -> str:
    with pytest.raises(DataError) as info:
        party_table(frame, source="guest.csv", id_column="id", label="y", config=_cfg(**model))
    msg = str(info.value)
    assert msg.startswith("guest.csv: ") and "\n" not in msg
    return msg


# ------------------------------------------------------------------ squared_error: labels too large


@pytest.mark.parametrize("trees", [1, 10, 1000])
def test_a_label_above_the_bound_is_refused_naming_the_column_and_bound_not_the_value(trees: int) -> None:
    bound = label_bound(trees=trees)
    frame = _frame([1.0, -2.0, 3.0, -1e300 if trees == 1000 else 1e300, 0.5, 7.0])
    msg = _refused(frame, objective="squared_error", trees=trees)
    assert f"label column 'y' has a value of magnitude above {bound:.3g}" in msg
    assert f"model.trees = {trees}" in msg and "rescale the label" in msg
    assert "1e+300" not in msg and "300" not in msg.replace(f"{bound:.3g}", "")  # not the value
    # at the bound itself the table is accepted
    ok = party_table(_frame([bound, -bound, 0.0]), source="guest.csv", id_column="id", label="y",
                     config=_cfg(objective="squared_error", trees=trees))
    assert ok.labels is not None and np.max(np.abs(ok.labels)) == bound


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, None])
def test_nan_and_infinite_labels_are_refused_for_squared_error(bad) -> None:
    msg = _refused(_frame([1.0, 2.0, bad, 4.0]), objective="squared_error")
    assert "label column 'y' has 1 missing, non-numeric or infinite value(s)" in msg


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 4096), trees=st.integers(1, 1000), seed=st.integers(0, 2**32 - 1))
def test_within_the_bound_every_loss_metric_and_gradient_sum_is_finite(rows: int, trees: int, seed: int) -> None:
    """The derivation of label_bound at its worst: labels at +-Y, scores moved by the largest
    shift the proof allows per tree (sqrt(n)·Y), every sum the guest computes stays finite."""
    y_max = label_bound(trees=trees, rows=rows)
    rng = np.random.default_rng(seed)
    y = rng.choice([-y_max, y_max], size=rows)
    raw = np.full(rows, float(np.mean(y))) + rng.choice([-1.0, 1.0], size=rows) * trees * math.sqrt(rows) * y_max
    g, h = squared_gradients(raw=raw, labels=y)
    assert math.isfinite(float(np.sum(g))) and math.isfinite(float(np.sum(h)))
    assert math.isfinite(squared_loss(raw=raw, labels=y))
    metrics = regression_metrics(y, raw)
    constant = bool(np.ptp(y) == 0)  # R² is NaN by definition then (no variance to explain)
    assert all(math.isfinite(v) for k, v in metrics.items() if not (k == "r2" and constant))
    assert math.isfinite(leaf_value(g_sum=float(np.sum(g)), h_sum=float(np.sum(h)), l2=0.0, learning_rate=1.0))


def test_without_the_bound_the_squared_loss_overflows() -> None:
    """What the refusal prevents: a label of 1e300 makes the loss and RMSE infinite."""
    y = np.array([1e300, 0.0, 1.0])
    raw = np.full(3, float(np.mean(y)))
    with np.errstate(over="ignore"):
        assert math.isinf(squared_loss(raw=raw, labels=y)) and math.isinf(regression_metrics(y, raw)["rmse"])
    assert 1e300 > label_bound(trees=1)


def test_a_huge_label_is_refused_before_anything_is_sent_or_charged(tmp_path: Path, monkeypatch) -> None:
    import fedsilo.silos.runner as runner  # where the threads engine builds its hub

    hubs: list[InProcessHub] = []

    def capture(*a, **k):
        hubs.append(InProcessHub(*a, **k))
        return hubs[-1]

    monkeypatch.setattr(runner, "InProcessHub", capture)
    tables = breast_cancer_tables(1, guest_cols=3, host_cols=3, seed=3)
    tables["g"] = tables["g"].assign(target=tables["g"]["target"].astype(float))
    tables["g"].loc[tables["g"].index[7], "target"] = 1e300
    with pytest.raises(DataError, match=r"g: label column 'target' has a value of magnitude above 1\.22e\+141"):
        simulate_secureboost(tables=tables, roles={"g": "guest", "h0": "host"}, id_column="pid", label="target",
                             model={"trees": 10, "depth": 2, "objective": "squared_error", "min_leaf_rows": 5},
                             backend="plain", insecure=True, bounds=breast_cancer_bounds(),
                             dp={"epsilon": 8.0}, ledger_dir=tmp_path)
    # the guest fails before PSI: it sends nothing (a host may have sent its blinded IDs first),
    # so no tree is started and no histogram released
    assert hubs and not [e for e in hubs[0].log if e.sender == "g" or e.kind == sb.HIST]
    if (tmp_path / "h0.sqlite").exists():
        with PrivacyLedger(tmp_path / "h0.sqlite", silo="h0") as led:
            assert led.entries("h0") == []


# ------------------------------------------------------------------ log_loss: a label that is not binary


@pytest.mark.parametrize(("label", "found"), [
    ([0.5, 1.5, 2.5, 3.5, 4.5, 5.5], "more than two distinct values"),
    ([1, 1, 1, 1], "one class"),
])
@pytest.mark.parametrize("missing", ["refuse", "bin"])
def test_a_non_binary_log_loss_label_names_secureboost_and_squared_error(label, found: str, missing: str) -> None:
    msg = _refused(_frame(label), missing=missing)
    assert f"label column 'y' holds {found}; SecureBoost's model.objective = \"log_loss\" needs exactly two " \
           "classes; for a numeric target set [model] objective = \"squared_error\"" in msg
    assert "logistic regression" not in msg and "5.5" not in msg and "[1" not in msg


def test_a_missing_log_loss_label_is_still_refused_as_missing() -> None:
    assert "label column 'y' has 1 missing values" in _refused(_frame([0.0, 1.0, None, 1.0, 0.0]))


# ------------------------------------------------------------------ a feature with no value


@pytest.mark.parametrize("missing", ["refuse", "bin"])
@pytest.mark.parametrize("objective", ["log_loss", "squared_error"])
def test_an_all_missing_column_is_reported_as_having_no_value(missing: str, objective: str) -> None:
    frame = _frame([0, 1, 0, 1, 0, 1], c=[np.nan] * 6, d=[None] * 6)
    msg = _refused(frame, missing=missing, objective=objective)
    assert "column 'c' has no value over the whole table (every row is missing)" in msg
    assert "(also all missing: ['d'])" in msg and "constant" not in msg and "6" not in msg


def test_no_value_over_the_training_rows_is_not_called_constant() -> None:
    x = np.array([[1.0, np.nan, 2.0], [2.0, np.nan, 2.0]])
    with pytest.raises(DataError, match=r"^t\.csv: column 'b' has no value over the aligned training rows "
                                        r"\(every row is missing\)"):
        refuse_constant(x, ["a", "b", "c"], source="t.csv", where="the aligned training rows")
    with pytest.raises(DataError, match=r"^t\.csv: column 'c' is constant over the rows: a tree") as info:
        refuse_constant(x[:, [0, 2]], ["a", "c"], source="t.csv", where="the rows")
    assert "2 rows" not in str(info.value)  # no row count
    refuse_constant(np.array([[1.0, np.nan], [np.nan, 3.0]]), ["a", "b"], source="t.csv", where="the rows")
