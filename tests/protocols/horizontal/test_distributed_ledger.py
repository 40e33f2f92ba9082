"""Distributed DP-SGD's ledger ε (issue 17): the count at (2 % ε, 2 % δ) and the training at
(98 % ε, 98 % δ) for *every* released count compose by basic composition (Dwork & Roth 2014,
Thm 3.16) to the job's target. The ledger records exactly that (the count's Gaussian and the
training's (ε, δ), charged with the count before round 1; every step and the final metrics
covered by it), so a completed job's ledger total is the target's basic-composition value, not
the 7.8x the steps' Gaussians composed by RDP gave, and the results, the ledger, the CLI and the
budget pre-check agree on it."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fedsilo.cli import app
from fedsilo.privacy.accounting import epsilon
from fedsilo.privacy.events import ApproxDpEvent, ComposedEvent, CoveredEvent, GaussianEvent
from fedsilo.privacy.ledger import JobBudgetError, PrivacyLedger, budget_check
from fedsilo.privacy.relations import ADD_REMOVE_RECORD
from fedsilo.silos.config import JobConfig, parse_config
from fedsilo.silos.runner import get_task, run_job, sources_for

DELTA = 1e-5
SILOS = ("st_marys", "city_general", "riverside")


def _config(*, accountant: str = "rdp", target: float = 8.0, delta: float = DELTA, budget: float = 10.0,
            rounds: int = 3) -> JobConfig:
    return parse_config({
        "federation": {"name": "hospitals", "task": "horizontal", "seed": 7, "min_silos": 2},
        "crypto": {"backend": "plain", "insecure": True},
        "privacy": {"epsilon": target, "delta": delta, "clip": 1.0, "level": "record", "mode": "distributed",
                    "accountant": accountant},
        "training": {"rounds": rounds, "batch_size": 32, "lr": 0.5},
        "data": {"source": "sklearn:breast_cancer", "label": "target", "partition": {"kind": "iid", "silos": 3}},
        "silos": [{"name": n, "budget": {"epsilon": budget, "delta": DELTA}} for n in SILOS],
    }, source="hospitals.toml")


def _cli_json(*args: str) -> Any:
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@pytest.mark.timeout(600)
def test_a_completed_job_records_the_basic_composition_bound(tmp_path: Path) -> None:
    cfg = _config()
    # the pre-check's number, from the config alone (nothing known of the count it will release)
    planned = get_task("horizontal").planned_charges(cfg, sources_for(cfg))
    assert set(planned) == set(SILOS)
    need = budget_check(silo="st_marys", dataset="st_marys", budget=10.0, delta=DELTA, accountant="rdp",
                        planned=planned["st_marys"]).need

    results = run_job(cfg, ledger_dir=tmp_path, noise_seed=1)
    dp = results["dp"]
    assert dp["mode"] == "distributed" and dp["steps"] == 3
    # basic composition by hand, through the CLI: the count's epsilon at the delta the training
    # leaves, plus the training's 98 % of the target
    count = _cli_json("privacy", "epsilon", "--noise-multiplier", repr(dp["count_noise_multiplier"]),
                      "--delta", repr(DELTA - 0.98 * DELTA), "--json")["epsilon"]
    assert count <= 0.02 * 8.0
    basic = count + 0.98 * 8.0
    assert 8.0 - 0.01 * 0.02 * 8.0 <= basic <= 8.0
    for name in SILOS:
        ours = results["epsilon"][name]["epsilon"]
        ledger = tmp_path / f"{name}.sqlite"
        assert _cli_json("privacy", "verify", "--ledger", str(ledger), "--json")["ok"] is True
        (ds,) = _cli_json("privacy", "report", "--ledger", str(ledger), "--json")["datasets"]
        assert ours == pytest.approx(basic, abs=1e-9)
        assert ds["spent"] == pytest.approx(ours, abs=1e-12)
        assert need == pytest.approx(ours, abs=1e-12)
        # charged before round 1, so every round already shows the whole job (the progress is
        # in the ledger's covered rows)
        assert [r["epsilon"][name] for r in results["rounds"]] == pytest.approx([ours] * 3, abs=1e-12)
        with PrivacyLedger.open(ledger) as book:
            entries = book.entries(name)
        assert [e.round for e in entries] == [0, 1, 2, 3, 6]  # 6: the final metrics' channel round
        first = entries[0].event
        assert isinstance(first, ComposedEvent) and first.events[1] == ApproxDpEvent(0.98 * 8.0, 0.98 * DELTA, 1,
                                                                                      first.events[1].cover, covers=4)
        z, q = dp["silos"][name]["noise_multiplier"], dp["silos"][name]["sample_rate"]
        for e in entries[1:4]:
            assert e.event == CoveredEvent(GaussianEvent(z, q, 1), first.events[1].cover)
        assert isinstance(entries[4].event, CoveredEvent) and entries[4].event.event.sample_rate == 1.0
        assert entries[0].epsilon_spent == pytest.approx(ours, abs=1e-12)
        assert entries[-1].epsilon_spent == pytest.approx(ours, abs=1e-12)
    assert any("charged the whole job with the row count" in n for n in results["notes"])


@pytest.mark.timeout(600)
def test_pld_ledger_agrees_with_results_and_precheck(tmp_path: Path) -> None:
    """Under PLD the (ε, δ) release is dp-accounting's pessimistic PLD of an (ε, δ)-DP mechanism,
    composed with the count's: the optimal composition of the two guarantees (Dong, Roth & Su
    2022, Thm 3.2), at most their basic composition and not far below it."""
    cfg = _config(accountant="pld", rounds=2)
    planned = get_task("horizontal").planned_charges(cfg, sources_for(cfg))
    need = budget_check(silo="riverside", dataset="riverside", budget=10.0, delta=DELTA, accountant="pld",
                        planned=planned["riverside"]).need
    results = run_job(cfg, ledger_dir=tmp_path, noise_seed=2)
    ours = results["epsilon"]["riverside"]["epsilon"]
    count = epsilon(GaussianEvent(results["dp"]["count_noise_multiplier"]), delta=DELTA - 0.98 * DELTA, accountant="pld")
    assert 8.0 - 0.02 * 8.0 < ours <= count + 0.98 * 8.0 + 1e-9
    with PrivacyLedger.open(tmp_path / "riverside.sqlite") as book:
        assert book.spent("riverside") == pytest.approx(ours, abs=1e-12)
    assert need == pytest.approx(ours, abs=1e-12)


def test_a_second_distributed_job_at_the_same_delta_is_refused_before_round_1(tmp_path: Path) -> None:
    """Two (ε, δ) releases of 98 % of the dataset's δ each need more δ than it has: no finite ε.
    The pre-check refuses the job before any charge (nothing written)."""
    cfg = _config(target=3.0, budget=100.0)
    for n in SILOS:
        with PrivacyLedger(tmp_path / f"{n}.sqlite", silo=n, accountant="rdp") as ledger:
            ledger.register_dataset(n, epsilon=100.0, delta=DELTA)
            with ledger.charge(n, ComposedEvent((GaussianEvent(30.0), ApproxDpEvent(0.98, 0.98 * DELTA, 1, "earlier", covers=1))),
                               job="earlier", round=0, protocol="t", mechanism={"name": "t"}, recipient="x",
                               relation=ADD_REMOVE_RECORD):
                pass
    with pytest.raises(JobBudgetError, match=r"silo 'st_marys': the job needs epsilon=3 .*epsilon=inf"):
        run_job(cfg, ledger_dir=tmp_path, noise_seed=1)
    for n in SILOS:
        with PrivacyLedger.open(tmp_path / f"{n}.sqlite") as ledger:
            assert [e.job for e in ledger.entries(n)] == ["earlier"]
            assert math.isfinite(ledger.spent(n))
