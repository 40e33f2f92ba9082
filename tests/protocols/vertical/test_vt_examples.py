"""The vertical examples: generators are deterministic, configs load and run end to end."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

from vt_data import BANK, HOSPITAL


def _module(path: Path):
    spec = importlib.util.spec_from_file_location(f"gen_{path.parent.name}", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(("folder", "files"), [(BANK, ["bank.csv", "partner.csv"]),
                                               (HOSPITAL, ["oncology.csv", "radiology.csv", "pathology.csv"])])
def test_generators_reproduce_the_committed_csvs(tmp_path: Path, folder: Path, files: list[str]) -> None:
    _module(folder / "generate.py").main(tmp_path)
    for f in files:
        assert (tmp_path / f).read_bytes() == (folder / f).read_bytes(), f"{f} differs from a fresh generation"


def test_bank_data_has_partial_overlap_and_a_label() -> None:
    bank, partner = pd.read_csv(BANK / "bank.csv"), pd.read_csv(BANK / "partner.csv")
    shared = set(bank["customer_id"]) & set(partner["customer_id"])
    assert len(bank) == 2400 and len(partner) == 2300 and len(shared) == 2000
    assert set(bank["default"]) == {0, 1} and 0.1 < bank["default"].mean() < 0.25
    assert not set(bank.columns[1:]) & set(partner.columns[1:])


@pytest.mark.parametrize("folder", [BANK, HOSPITAL])
def test_example_configs_run_end_to_end(tmp_path: Path, folder: Path) -> None:
    from fedsilo.silos.config import apply_overrides, load_config
    from fedsilo.silos.simulate import run_job

    cfg = apply_overrides(load_config(folder / "federation.toml"), backend="plain", rounds=2)
    res = run_job(cfg, ledger_dir=tmp_path)
    assert res["task"] == "vertical" and res["final"]["auc"] > 0.7
    assert res["dp"]["level"] == "record"
    for party, e in res["epsilon"].items():
        assert 0 < e["epsilon"] <= 8.0 and e["ledger_spent"] == pytest.approx(e["epsilon"])
    assert res["psi"]["intersection"] > 0
