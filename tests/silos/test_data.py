"""Data loading: clear errors for each bad input, nothing silently dropped."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsilo.errors import ConfigError, DataError
from fedsilo.silos.config import parse_config
from fedsilo.silos.data import (
    binary_labels,
    load_builtin,
    load_table,
    partition_frame,
    require_numeric,
    scale_with_bounds,
)
from fedsilo.silos.tasks.horizontal import prepare_horizontal


def test_breast_cancer_has_published_bounds_for_every_feature() -> None:
    t = load_builtin("sklearn:breast_cancer")
    features = [c for c in t.frame.columns if c != "target"]
    assert set(t.bounds) == set(features)
    X = t.frame[features].to_numpy()
    lo = np.array([t.bounds[f][0] for f in features])
    hi = np.array([t.bounds[f][1] for f in features])
    # the description's table is the data's own min/max to 3-4 significant digits
    assert np.all(X.min(axis=0) >= lo - 1e-3 * np.abs(lo) - 1e-3)
    assert np.all(X.max(axis=0) <= hi + 1e-3 * np.abs(hi) + 1e-3)


def test_scale_maps_box_to_unit_interval() -> None:
    X = np.array([[0.0, 5.0], [10.0, -5.0], [20.0, 0.0]])
    out = scale_with_bounds(X, np.array([0.0, -5.0]), np.array([10.0, 5.0]))
    assert out.min() == -1.0 and out.max() == 1.0
    assert out[2, 0] == 1.0  # clipped, not extrapolated


def test_label_skew_partition_keeps_every_row_once() -> None:
    t = load_builtin("sklearn:breast_cancer")
    parts = partition_frame(t.frame, label="target", kind="label_skew", silos=3, alpha=0.5, rng=np.random.default_rng(0))
    assert sum(len(p) for p in parts) == len(t.frame)
    assert min(len(p) for p in parts) >= 10
    assert len({round(p["target"].mean(), 2) for p in parts}) > 1


def test_csv_errors_name_file_column_and_row(tmp_path: Path) -> None:
    p = tmp_path / "site.csv"
    pd.DataFrame({"a": [1.0, np.nan, 3.0], "b": ["1", "x", "2"], "y": [0, 1, 2]}).to_csv(p, index=False)
    t = load_table(p, name="site")
    with pytest.raises(DataError, match=r"site.csv: column 'a' has 1 missing/NaN.*row 3"):
        require_numeric(t, ["a"])
    with pytest.raises(DataError, match=r"column 'b' is not numeric \(row 3 of the file has 'x'\)"):
        require_numeric(t, ["b"])
    with pytest.raises(DataError, match=r"missing column\(s\) \['zz'\]"):
        require_numeric(t, ["zz"])
    with pytest.raises(DataError, match=r"must be binary 0/1 for this model, and it holds other values$"):
        binary_labels(t, "y")
    with pytest.raises(DataError, match="data file not found"):
        load_table(tmp_path / "none.csv", name="x")


def test_prepare_horizontal_from_files_checks_every_silo(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        df = pd.DataFrame({"f1": rng.normal(size=30), "f2": rng.normal(size=30), "y": rng.integers(0, 2, 30)})
        if name == "b":
            df.loc[4, "f2"] = np.nan
        df.to_csv(tmp_path / f"{name}.csv", index=False)
    cfg = parse_config(
        {
            "federation": {"task": "horizontal"},
            "crypto": {"insecure": True},  # two silos: each could subtract its own update
            "data": {"label": "y"},
            "silos": [{"name": "a", "data": "a.csv"}, {"name": "b", "data": "b.csv"}],
        },
        base_dir=tmp_path,
    )
    with pytest.raises(DataError, match=r"b.csv: column 'f2' has 1 missing"):
        prepare_horizontal(cfg)


def test_prepare_horizontal_builtin_shapes() -> None:
    cfg = parse_config(
        {
            "federation": {"task": "horizontal", "seed": 1},
            "data": {"source": "sklearn:breast_cancer", "label": "target", "partition": {"kind": "iid", "silos": 3}},
        }
    )
    data = prepare_horizontal(cfg)
    assert len(data.silos) == 3 and len(data.features) == 30
    total = sum(len(y) for _, y in data.silos.values()) + sum(len(y) for _, y in data.tests.values())
    assert total == 569
    assert all(np.abs(X).max() <= 1.0 for X, _ in data.silos.values())
    assert not data.notes


def test_dp_without_public_bounds_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    pd.DataFrame({"f1": rng.normal(size=30), "y": rng.integers(0, 2, 30)}).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame({"f1": rng.normal(size=30), "y": rng.integers(0, 2, 30)}).to_csv(tmp_path / "b.csv", index=False)
    base = {
        "federation": {"task": "horizontal"},
        "crypto": {"insecure": True},  # two silos
        "data": {"label": "y"},
        "silos": [{"name": "a", "data": "a.csv"}, {"name": "b", "data": "b.csv"}],
    }
    with pytest.raises(ConfigError, match=r"no public bounds.*\[data\] bounds"):
        prepare_horizontal(parse_config({**base, "privacy": {"epsilon": 1.0}}, base_dir=tmp_path))
    ok = parse_config(
        {**base, "privacy": {"epsilon": 1.0}, "data": {"label": "y", "bounds": {"f1": [-3.0, 3.0]}}}, base_dir=tmp_path
    )
    assert not prepare_horizontal(ok).notes
    assert prepare_horizontal(parse_config(base, base_dir=tmp_path)).notes  # no DP: a note, not an error


def test_every_built_in_classification_set_has_published_bounds_for_every_feature() -> None:
    """wine's description spells 'Malic Acid', 'Colour Intensity' and 'OD280/OD315 of diluted
    wines' for malic_acid, color_intensity and od280/od315_of_diluted_wines: 6 of its 13 features
    had no bound, so a DP job on sklearn:wine was refused from a config file."""
    from fedsilo.silos.data import load_builtin

    for source in ("sklearn:breast_cancer", "sklearn:wine"):
        table = load_builtin(source)
        features = [c for c in table.frame.columns if c != "target"]
        assert sorted(table.bounds) == sorted(features), source
        # (the published ranges are rounded: a few values fall just outside, and are clipped)
        assert all(lo < hi for lo, hi in table.bounds.values()), source
    wine = load_builtin("sklearn:wine").bounds
    assert wine["color_intensity"] == (1.3, 13.0) and wine["od280/od315_of_diluted_wines"] == (1.27, 4.0)
