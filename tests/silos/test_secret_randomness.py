"""Secret randomness never comes from the job seed (through ``run_job``, the simulate entry point).

The same DP config run twice with the same ``federation.seed`` must release different noised
values (the noise, masks and DP-SGD sampling come from the OS CSPRNG); without DP the same seed
gives identical results (splits, initial weights and batch order are public and seeded). A
reproducible run needs the test-only ``noise_seed``, and then says it is not private.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedsilo.privacy.ledger import PrivacyLedger
from fedsilo.silos.config import parse_config
from fedsilo.silos.runner import run_job

STATS = {
    "federation": {"name": "stats", "task": "statistics", "seed": 5},
    "crypto": {"backend": "paillier", "params": {"packed": True}},
    "data": {"source": "sklearn:breast_cancer", "label": "target", "partition": {"kind": "iid", "silos": 3}},
    "statistics": {"columns": ["mean radius"], "queries": ["count", "sum", "histogram"], "bins": 4,
                   "range": {"mean radius": [5.0, 30.0]}},
}
HORIZONTAL = {
    "federation": {"name": "hz", "task": "horizontal", "seed": 5},
    "crypto": {"backend": "plain", "insecure": True},
    "training": {"rounds": 2, "local_epochs": 1, "batch_size": 64, "lr": 0.5},
    "data": {"source": "sklearn:breast_cancer", "label": "target", "partition": {"kind": "iid", "silos": 3}},
}
SILO_DP = {"epsilon": 8.0, "level": "silo", "clip": 0.5}
RECORD_DP = {"epsilon": 8.0, "level": "record", "clip": 1.0}


def _run(cfg: dict[str, Any], tmp_path: Path, name: str, **kw: Any) -> dict[str, Any]:
    return run_job(parse_config(cfg), ledger_dir=tmp_path / name, **kw)


def _raw(res: dict[str, Any]) -> list[float]:
    col = res["raw"]["mean radius"]
    return [col["count"], col["sum"], *col["histogram"]]


def test_statistics_noise_differs_between_runs_with_the_same_seed(tmp_path: Path) -> None:
    dp = {**STATS, "privacy": {"epsilon": 2.0}}
    a, b = _run(dp, tmp_path, "a"), _run(dp, tmp_path, "b")
    assert a["private"] and b["private"]
    # discrete noise on the integer grid: one coordinate may coincide by chance (~6 %), all six
    # together only with probability ~1e-7
    assert _raw(a) != _raw(b), (_raw(a), _raw(b))
    # without DP the same seed gives the same exact answers
    assert _raw(_run(STATS, tmp_path, "c")) == _raw(_run(STATS, tmp_path, "d"))


@pytest.mark.parametrize("privacy", [SILO_DP, RECORD_DP], ids=["silo", "record"])
def test_horizontal_dp_runs_differ_and_plain_runs_repeat(tmp_path: Path, privacy: dict[str, Any]) -> None:
    dp = {**HORIZONTAL, "privacy": privacy}
    a, b = _run(dp, tmp_path, "a"), _run(dp, tmp_path, "b")
    # the model each silo ends with (seen through its own held-out metrics) depends on the noise
    own_a = [m["loss"] for m in a["silo_metrics"].values()]
    own_b = [m["loss"] for m in b["silo_metrics"].values()]
    assert all(x != y for x, y in zip(own_a, own_b)), (own_a, own_b)
    if privacy is RECORD_DP:  # the released (noised) federated metrics differ too
        assert a["final"]["accuracy"] != b["final"]["accuracy"]
    c, d = _run(HORIZONTAL, tmp_path, "c"), _run(HORIZONTAL, tmp_path, "d")
    assert c["rounds"] == d["rounds"] and c["final"] == d["final"] and c["silo_metrics"] == d["silo_metrics"]


def test_reproducible_noise_is_test_only_and_labelled_not_private(tmp_path: Path) -> None:
    dp = {**STATS, "privacy": {"epsilon": 2.0}}
    a = _run(dp, tmp_path, "a", noise_seed=3)
    b = _run(dp, tmp_path, "b", noise_seed=3)
    assert _raw(a) == _raw(b)
    assert a["private"] is False and any("NOT PRIVATE" in n for n in a["notes"])
    with PrivacyLedger.open(tmp_path / "a" / "site0.sqlite") as led:
        (entry,) = led.entries()
        assert entry.mechanism["reproducible_noise"] is True and entry.mechanism["private"] is False
    c = _run(dp, tmp_path, "c")
    assert c["private"] is True
    with PrivacyLedger.open(tmp_path / "c" / "site0.sqlite") as led:
        (entry,) = led.entries()
        assert "reproducible_noise" not in entry.mechanism
