"""Silo-level DP end to end: the decrypted sum carries exactly the target noise, applied once;
the shipped silo-level example reports the epsilon of the accountant it names.

The unit tests in ``test_hz_dp.py`` size the shares; these run the production party functions
(``simulate_horizontal``) and look at what every silo decrypts. They would catch noise added
twice (or not at all), shares sized for the wrong number of silos, clipping of the wrong
quantity, and a server step that scales the noised sum by anything but the contributor count.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedsilo.privacy.accounting import epsilon
from fedsilo.privacy.events import GaussianEvent
from fedsilo.silos.tasks.horizontal import simulate_horizontal
from fedsilo.protocols.horizontal.dp import DPFedAvg, silo_noise_multiplier
from fedsilo.silos.config import apply_overrides, load_config
from fedsilo.silos.runner import run_job
from hz_data import base_kwargs

ROOT = Path(__file__).resolve().parents[3]
SILO_LEVEL = ROOT / "examples" / "hospitals_horizontal" / "silo_level.toml"


def _capture(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Record every clipped update, every decrypted total and every server step."""
    seen: dict[str, Any] = {"clipped": {}, "steps": {}}
    lock = threading.Lock()
    prepare, aggregate = DPFedAvg.prepare_update, DPFedAvg.aggregate_fit

    def prepare_update(self: DPFedAvg, update: np.ndarray, *, round: int) -> np.ndarray:
        out = prepare(self, update, round=round)
        with lock:
            seen["clipped"].setdefault(round, []).append(out.copy())
        return out

    def aggregate_fit(self: DPFedAvg, *, round: int, state: Any, result: Any) -> Any:
        new = aggregate(self, round=round, state=state, result=result)
        with lock:
            seen["steps"].setdefault(round, []).append((result.total.copy(), len(result.contributors), new.params - state.params))
        return new

    monkeypatch.setattr(DPFedAvg, "prepare_update", prepare_update)
    monkeypatch.setattr(DPFedAvg, "aggregate_fit", aggregate_fit)
    return seen


@pytest.mark.parametrize("colluders", [1, 2])
def test_decrypted_sum_carries_target_noise_once(bc3: Any, monkeypatch: pytest.MonkeyPatch, colluders: int) -> None:
    seen = _capture(monkeypatch)
    clip, rounds, n = 0.5, 2, len(bc3.silos)
    privacy = {"epsilon": 8.0, "delta": 1e-5, "clip": clip, "level": "silo", "colluders": colluders}
    # an MLP so one round's noise vector has ~8k coordinates: its std is measured to ~1 %
    training = {"rounds": rounds, "local_epochs": 1, "batch_size": 64, "lr": 0.5}
    res = simulate_horizontal(**base_kwargs(bc3, model={"kind": "mlp", "hidden": [256]}, training=training, privacy=privacy))
    z = silo_noise_multiplier(epsilon=8.0, delta=1e-5, rounds=rounds)
    assert res["dp"]["noise_multiplier"] == z
    target = z * clip * np.sqrt(n / (n - colluders))  # each share N(0, (zC)^2 / (n - colluders))
    for rnd in range(1, rounds + 1):
        clipped = seen["clipped"][rnd]
        assert len(clipped) == n and all(np.linalg.norm(u) <= clip for u in clipped)
        steps = seen["steps"][rnd]
        assert len(steps) == n  # every silo decrypted ...
        total, contributors, step = steps[0]
        assert all(np.array_equal(total, t) for t, _, _ in steps)  # ... the same sum
        noise = total - np.sum(clipped, axis=0)
        assert abs(noise.mean()) < 0.05 * target
        assert noise.std() == pytest.approx(target, rel=0.04)
        # FedAvg (server_lr 1) applies the noised sum divided by the number of contributors
        assert contributors == n
        np.testing.assert_allclose(step, total / n, rtol=1e-12, atol=1e-12)


def test_silo_level_example(tmp_path: Path) -> None:
    file = load_config(SILO_LEVEL)
    cfg = apply_overrides(file.model_copy(update={"crypto": file.crypto.model_copy(update={"insecure": True})}), backend="plain")
    assert cfg.privacy is not None and cfg.privacy.level == "silo" and cfg.privacy.epsilon <= 8
    assert cfg.privacy.colluders == 1  # the safe default is kept in the shipped example
    # reproducible noise (test-only, not private): with 3 silos the silo-level noise moves the
    # accuracy over a wide range (docs/horizontal.md: worst seed 0.36), so a utility check of the
    # tuned settings pins one draw
    res = run_job(cfg, ledger_dir=tmp_path, noise_seed=7)
    assert res["private"] is False
    dp = res["dp"]
    assert dp["level"] == "silo" and dp["rounds"] == cfg.training.rounds
    # the reported epsilon is the configured accountant's, and the results say which one it is
    assert dp["accountant"] == cfg.privacy.accountant == "pld"
    want = epsilon(GaussianEvent(dp["noise_multiplier"], 1.0, dp["rounds"]), delta=cfg.privacy.delta, accountant="pld")
    assert want <= cfg.privacy.epsilon
    assert all(v["epsilon"] == pytest.approx(want, rel=1e-9) for v in res["epsilon"].values())
    # silo level: no federated metrics are released; each hospital knows its own
    assert res["evaluation"] == "none" and res["final"]["accuracy"] is None
    own = res["silo_metrics"]
    pooled = sum(m["accuracy"] * m["rows"] for m in own.values()) / sum(m["rows"] for m in own.values())
    assert pooled >= 0.75, own
