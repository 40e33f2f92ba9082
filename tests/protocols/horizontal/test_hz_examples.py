"""The shipped examples run through the config loader and the simulation glue."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedsilo.silos.config import apply_overrides, load_config
from fedsilo.silos.simulate import prepare_horizontal, run_job
from hz_data import backend_available, central_accuracy

ROOT = Path(__file__).resolve().parents[3]
HOSPITALS = ROOT / "examples" / "hospitals_horizontal" / "federation.toml"
STATISTICS = ROOT / "examples" / "federated_statistics" / "federation.toml"


@pytest.mark.parametrize(
    "backend",
    [
        "plain",
        pytest.param("ckks", marks=[pytest.mark.slow, pytest.mark.skipif(not backend_available("ckks"), reason="no ckks")]),
    ],
)
def test_hospitals_example_dp_accuracy(backend: str, tmp_path: Path) -> None:
    cfg = apply_overrides(load_config(HOSPITALS), backend=backend)
    assert cfg.privacy is not None and cfg.privacy.epsilon <= 8 and cfg.privacy.level == "record"
    res = run_job(cfg, ledger_dir=tmp_path)
    data = prepare_horizontal(cfg)
    central = central_accuracy(data, model=cfg.model.model_dump(), training=cfg.training.model_dump(), seed=cfg.federation.seed)
    assert res["final"]["accuracy"] >= central - 0.05, (res["final"], central)
    assert all(0 < v["epsilon"] <= cfg.privacy.epsilon for v in res["epsilon"].values())
    assert sorted(res["epsilon"]) == ["city_general", "riverside", "st_marys"]


def test_statistics_example(tmp_path: Path) -> None:
    cfg = load_config(STATISTICS)
    if not backend_available("paillier", packed=True):
        cfg = apply_overrides(cfg, backend="plain")
    res: dict[str, Any] = run_job(cfg, ledger_dir=tmp_path)
    radius = res["statistics"]["mean radius"]
    assert 10 < radius["mean"] < 20 and len(radius["histogram"]["counts"]) == 10
    assert all(v["epsilon"] <= 1.0 for v in res["epsilon"].values())
