"""The shipped examples run through the config loader and the simulation glue."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedsilo.silos.config import apply_overrides, load_config
from fedsilo.silos.runner import run_job
from fedsilo.silos.tasks.horizontal import prepare_horizontal
from hz_data import backend_available, central_accuracy

ROOT = Path(__file__).resolve().parents[3]
HOSPITALS = ROOT / "examples" / "hospitals_horizontal" / "federation.toml"
STATISTICS = ROOT / "examples" / "federated_statistics" / "federation.toml"


def _insecure(cfg: Any) -> Any:
    """The example with ``[crypto] insecure = true`` (the plain backend is a test baseline)."""
    return cfg.model_copy(update={"crypto": cfg.crypto.model_copy(update={"insecure": True})})


@pytest.mark.parametrize(
    "backend",
    [
        "plain",
        pytest.param("ckks", marks=[pytest.mark.slow, pytest.mark.skipif(not backend_available("ckks"), reason="no ckks")]),
    ],
)
def test_hospitals_example_dp_accuracy(backend: str, tmp_path: Path) -> None:
    cfg = apply_overrides(_insecure(load_config(HOSPITALS)), backend=backend)
    assert cfg.privacy is not None and cfg.privacy.epsilon <= 8 and cfg.privacy.level == "record"
    # utility at one pinned noise draw (test-only reproducible noise: the run says it is not private)
    res = run_job(cfg, ledger_dir=tmp_path, noise_seed=7)
    assert res["private"] is False
    data = prepare_horizontal(cfg)
    central = central_accuracy(data, model=cfg.model.model_dump(), training=cfg.training.model_dump(), seed=cfg.federation.seed)
    # each hospital's exact accuracy on its own held-out rows (known only to it) ...
    own = [m["accuracy"] * m["rows"] for m in res["silo_metrics"].values()]
    pooled = sum(own) / sum(m["rows"] for m in res["silo_metrics"].values())
    assert pooled >= central - 0.05, (res["silo_metrics"], central)
    # ... and the one released federated accuracy, noised (sigma ~4 counts on ~114 rows)
    assert res["evaluation"] == "final" and abs(res["final"]["accuracy"] - pooled) <= 0.25, (res["final"], pooled)
    assert all(0 < v["epsilon"] <= cfg.privacy.epsilon for v in res["epsilon"].values())
    assert sorted(res["epsilon"]) == ["city_general", "riverside", "st_marys"]


def test_statistics_example(tmp_path: Path) -> None:
    cfg = load_config(STATISTICS)
    if not backend_available("paillier", packed=True):
        cfg = apply_overrides(_insecure(cfg), backend="plain")
    res: dict[str, Any] = run_job(cfg, ledger_dir=tmp_path)
    radius = res["statistics"]["mean radius"]
    assert 10 < radius["mean"] < 20 and len(radius["histogram"]["counts"]) == 10
    assert all(v["epsilon"] <= 1.0 for v in res["epsilon"].values())
