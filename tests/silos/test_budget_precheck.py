"""Budgets checked before round 1: a job's planned releases are composed on top of each silo's
ledger, exactly as the ledger composes its charges, and a job some silo cannot afford is refused
before any training, release or ledger entry (issue 17, item 5).

The planned releases are the ones the job then charges (compared entry by entry after a run),
a job that fits exactly runs to its last charge, one ulp less is refused, and a partly spent
ledger is composed with, not subtracted from."""
from __future__ import annotations

import math
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fedsilo.cli import app
from fedsilo.privacy.events import DpEvent, GaussianEvent
from fedsilo.privacy.ledger import JobBudgetError, PrivacyLedger, budget_check
from fedsilo.privacy.relations import ADD_REMOVE_RECORD, ZERO_OUT_SILO
from fedsilo.silos.config import JobConfig, parse_config
from fedsilo.silos.runner import get_task, run_job, sources_for

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "hospitals_horizontal" / "federation.toml"
DELTA = 1e-5
SILOS = ("st_marys", "city_general", "riverside")


def _hospitals(*, level: str, accountant: str, epsilon: float, budgets: dict[str, float], rounds: int = 2) -> JobConfig:
    """The hospitals example (built-in breast cancer, three label-skewed silos), plain backend."""
    privacy: dict[str, Any] = {"epsilon": epsilon, "delta": DELTA, "clip": 1.0, "accountant": accountant, "level": level}
    return parse_config({
        "federation": {"name": "hospitals", "task": "horizontal", "seed": 7, "min_silos": 2},
        "crypto": {"backend": "plain", "insecure": True},
        "privacy": privacy,
        "training": {"rounds": rounds, "local_epochs": 1, "batch_size": 32, "lr": 0.5},
        "data": {"source": "sklearn:breast_cancer", "label": "target",
                 "partition": {"kind": "label_skew", "silos": 3, "alpha": 0.5}},
        "silos": [{"name": n, "budget": {"epsilon": budgets[n], "delta": DELTA}} for n in SILOS],
    }, source="hospitals.toml")


def _planned(cfg: JobConfig) -> dict[str, list[tuple[DpEvent, str]]]:
    return get_task("horizontal").planned_charges(cfg, sources_for(cfg))  # type: ignore[attr-defined]


def _after(cfg: JobConfig, planned: list[tuple[DpEvent, str]], before: list[tuple[DpEvent, str]] | None = None) -> float:
    assert cfg.privacy is not None
    return budget_check(silo="s", dataset="s", budget=cfg.privacy.epsilon, delta=DELTA, accountant=cfg.privacy.accountant,
                        before=before or [], planned=planned).after


def _spend(path: Path, silo: str, budget: float, releases: list[tuple[DpEvent, str]], accountant: str = "rdp") -> None:
    with PrivacyLedger(path, silo=silo, accountant=accountant) as ledger:
        ledger.register_dataset(silo, epsilon=budget, delta=DELTA)
        for i, (event, relation) in enumerate(releases, start=1):
            with ledger.charge(silo, event, job="earlier", round=i, protocol="test", mechanism={"name": "test"},
                               recipient="aggregator", relation=relation):
                pass


def _rows(path: Path) -> list[tuple[Any, ...]]:
    """Every row of a ledger, read through the ledger (chain and anchor checked)."""
    with PrivacyLedger.open(path) as ledger:
        return [(e.seq, e.job, e.round, e.event, e.relation, e.epsilon_spent) for e in ledger.entries()] + [ledger.head]


@pytest.mark.timeout(180)
def test_the_issue_example_is_refused_from_the_cli_before_anything_is_written(tmp_path: Path) -> None:
    """`--epsilon 1000` against budgets of 10 (issue 17): one line naming the silo, its
    remaining epsilon and the job's need; a partly spent ledger keeps exactly its rows and no
    other ledger is created."""
    ledgers = tmp_path / "ledgers"
    _spend(ledgers / "city_general.sqlite", "city_general", 10.0, [(GaussianEvent(3.0, 1.0, 2), ADD_REMOVE_RECORD)])
    before = _rows(ledgers / "city_general.sqlite")
    files = sorted(p.name for p in ledgers.iterdir())
    start = time.perf_counter()
    res = CliRunner().invoke(app, ["simulate", str(EXAMPLE), "--epsilon", "1000", "--backend", "plain", "--insecure",
                                   "--ledger-dir", str(ledgers), "-q"])
    seconds = time.perf_counter() - start
    assert res.exit_code == 1, res.output
    _check_refusal(res.output)
    assert _rows(ledgers / "city_general.sqlite") == before
    assert sorted(p.name for p in ledgers.iterdir()) == files  # no ledger created, none charged
    print(f"\nrefused by the CLI in {seconds:.2f}s (in-process: config, planning and the pre-check)")


def _check_refusal(output: str) -> None:
    """The issue example's refusal: one ``error:`` line naming the first silo checked (it cannot
    afford the job), its remaining epsilon and what the job needs; no traceback."""
    assert "Traceback" not in output
    (line,) = [x for x in output.splitlines() if x.startswith("error: ")]
    need = float(re.search(r"silo 'st_marys': the job needs epsilon=([0-9.e+]+) but its ledger has 10 of 10 left "
                           r"\(spent 0; dataset 'st_marys', delta=1e-05, accountant 'rdp'\)", line).group(1))
    assert 10.0 < need <= 1000.0, line
    assert line.endswith("lower privacy.epsilon (--epsilon) or raise the budget; nothing was trained or charged")


#: the ``fedsilo`` command in a fresh interpreter, reporting whether torch or TenSEAL was ever imported
_CLI_REPORTING_TORCH = """
import sys
from fedsilo.cli import app
try:
    app(args=sys.argv[1:], prog_name="fedsilo")
finally:
    print(f"imported: torch {'torch' in sys.modules}, tenseal {'tenseal' in sys.modules}", flush=True)
"""


@pytest.mark.timeout(180)
def test_the_issue_example_is_refused_in_a_fresh_process_without_importing_torch(tmp_path: Path) -> None:
    """Planning a job and its budget pre-check need the config, the silos' data and the
    accountant, not torch: the refusal of `--epsilon 1000`, run as a user runs it (a new
    process), never imports torch (about 2 s of a refusal that took 5 s), so a refused job pays
    neither training nor its imports. It writes no ledger entry: the ledger directory stays
    empty. A property of the imports, not of the clock: the wall time is only printed."""
    ledgers = tmp_path / "ledgers"
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", _CLI_REPORTING_TORCH, "simulate", str(EXAMPLE), "--epsilon", "1000", "--backend", "plain",
         "--insecure", "--ledger-dir", str(ledgers), "-q"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        out, err = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:  # timed out (or the test was interrupted): never leave it running
            proc.kill()
            proc.wait()
    seconds = time.perf_counter() - start
    assert proc.returncode == 1, (out, err)
    _check_refusal(err)
    # nor TenSEAL: --backend plain replaces the file's CKKS backend before it is built
    assert out.splitlines()[-1] == "imported: torch False, tenseal False", out
    assert not ledgers.exists() or list(ledgers.iterdir()) == []  # no ledger created, none charged
    print(f"\nrefused by `fedsilo simulate` in a new process in {seconds:.2f}s wall, torch not imported")


@pytest.mark.parametrize(("level", "accountant"), [("record", "rdp"), ("silo", "pld")])
@pytest.mark.timeout(300)
def test_a_job_that_fits_exactly_runs_one_ulp_less_is_refused_and_its_charges_are_the_planned_ones(
        tmp_path: Path, level: str, accountant: str) -> None:
    probe = _hospitals(level=level, accountant=accountant, epsilon=4.0, budgets=dict.fromkeys(SILOS, 10.0))
    planned = _planned(probe)
    exact = {n: _after(probe, planned[n]) for n in SILOS}
    assert all(0 < e <= 4.0 for e in exact.values()), exact

    short = {**exact, "city_general": math.nextafter(exact["city_general"], 0.0)}
    with pytest.raises(JobBudgetError) as err:
        run_job(_hospitals(level=level, accountant=accountant, epsilon=4.0, budgets=short), ledger_dir=tmp_path / "short")
    assert [c.silo for c in err.value.checks] == ["city_general"]
    assert "silo 'city_general': the job needs epsilon=" in str(err.value) and "st_marys" not in str(err.value)
    assert not list((tmp_path / "short").iterdir())  # no ledger file, not even a registration

    res = run_job(_hospitals(level=level, accountant=accountant, epsilon=4.0, budgets=exact), ledger_dir=tmp_path / "l",
                  noise_seed=1)
    assert all(sorted(r["silos"]) == sorted(SILOS) for r in res["rounds"]), res["rounds"]
    for n in SILOS:
        with PrivacyLedger.open(tmp_path / "l" / f"{n}.sqlite") as ledger:
            entries = ledger.entries(n)
            # the pre-check planned exactly what the job charged, in order, and its last charge
            # brought the ledger to the budget, to the bit
            assert [(e.event, e.relation) for e in entries] == planned[n]
            assert entries[-1].epsilon_spent == exact[n] == ledger.budget(n)[0]
            assert ledger.remaining(n) == 0.0
    relation = ADD_REMOVE_RECORD if level == "record" else ZERO_OUT_SILO
    assert {r for n in SILOS for _, r in planned[n]} == {relation}


@pytest.mark.timeout(300)
def test_a_partly_spent_ledger_is_composed_with_not_subtracted_from(tmp_path: Path) -> None:
    """History + job is composed: a budget below spent + need but above their composition runs;
    just below the composition it is refused, naming that silo, its spent and composed epsilon."""
    probe = _hospitals(level="silo", accountant="rdp", epsilon=3.0, budgets=dict.fromkeys(SILOS, 10.0))
    planned = _planned(probe)["riverside"]
    history = [(GaussianEvent(2.0, 1.0, 1), ZERO_OUT_SILO)] * 3  # an earlier silo-level job
    need = _after(probe, planned)
    spent = _after(probe, history)
    composed = _after(probe, planned, before=history)
    assert composed < spent + need  # composition is not a sum: a subtraction would refuse the job
    budget = 0.5 * (composed + spent + need)

    refused = tmp_path / "refused"
    _spend(refused / "riverside.sqlite", "riverside", composed * (1 - 1e-9), history)
    rows = _rows(refused / "riverside.sqlite")
    cfg = _hospitals(level="silo", accountant="rdp", epsilon=3.0,
                     budgets={"st_marys": 10.0, "city_general": 10.0, "riverside": composed * (1 - 1e-9)})
    with pytest.raises(JobBudgetError) as err:
        run_job(cfg, ledger_dir=refused)
    (check,) = err.value.checks
    assert check.silo == "riverside" and check.spent == pytest.approx(spent) and check.after == pytest.approx(composed)
    assert check.need == pytest.approx(need) and check.remaining == pytest.approx(composed * (1 - 1e-9) - spent)
    assert f"(spent {spent:.4g}, composed with it epsilon={composed:.4g};" in str(err.value)
    assert _rows(refused / "riverside.sqlite") == rows
    assert sorted(p.name for p in refused.iterdir() if p.suffix == ".sqlite") == ["riverside.sqlite"]

    fits = tmp_path / "fits"
    _spend(fits / "riverside.sqlite", "riverside", budget, history)
    cfg = _hospitals(level="silo", accountant="rdp", epsilon=3.0,
                     budgets={"st_marys": 10.0, "city_general": 10.0, "riverside": budget})
    run_job(cfg, ledger_dir=fits, noise_seed=2)
    with PrivacyLedger.open(fits / "riverside.sqlite") as ledger:
        assert ledger.entries("riverside")[-1].epsilon_spent == composed <= budget < spent + need


def _vertical(tmp_path: Path, *, budgets: dict[str, float]) -> JobConfig:
    rng = np.random.default_rng(0)
    ids = [f"c{i}" for i in range(120)]
    pd.DataFrame({"cid": ids, "g1": rng.random(120), "y": rng.integers(0, 2, 120)}).to_csv(tmp_path / "g.csv", index=False)
    pd.DataFrame({"cid": ids, "h1": rng.random(120)}).to_csv(tmp_path / "h.csv", index=False)
    return parse_config({
        "federation": {"name": "v", "task": "vertical"},
        "crypto": {"backend": "plain", "insecure": True},
        "privacy": {"epsilon": 4.0, "delta": DELTA},
        "data": {"label": "y", "id_column": "cid", "bounds": {"g1": [0.0, 1.0], "h1": [0.0, 1.0]}},
        "training": {"rounds": 2, "batch_size": 32},
        "silos": [{"name": "g", "data": "g.csv", "role": "guest", "budget": {"epsilon": budgets["g"], "delta": DELTA}},
                  {"name": "h", "data": "h.csv", "role": "host", "budget": {"epsilon": budgets["h"], "delta": DELTA}}],
    }, source="v.toml", base_dir=tmp_path)


@pytest.mark.timeout(180)
def test_vertical_releases_are_planned_before_psi(tmp_path: Path) -> None:
    """Each data party's epoch charges are known from the config alone: refused before PSI
    (no ledger file), and, when they fit, exactly what the parties charge."""
    with pytest.raises(JobBudgetError) as err:
        run_job(_vertical(tmp_path, budgets={"g": 10.0, "h": 3.5}), ledger_dir=tmp_path / "short")
    assert [c.silo for c in err.value.checks] == ["h"] and 3.5 < err.value.checks[0].need <= 4.0
    assert not list((tmp_path / "short").iterdir())
    cfg = _vertical(tmp_path, budgets={"g": 10.0, "h": 4.0})
    planned = get_task("vertical").planned_charges(cfg, sources_for(cfg))  # type: ignore[attr-defined]
    assert set(planned) == {"g", "h"} and len(planned["h"]) == 2
    run_job(cfg, ledger_dir=tmp_path / "l", noise_seed=3)
    for party in ("g", "h"):
        with PrivacyLedger.open(tmp_path / "l" / f"{party}.sqlite") as ledger:
            assert [(e.event, e.relation) for e in ledger.entries()] == planned[party]


@pytest.mark.timeout(120)
def test_without_the_pre_check_a_spent_budget_still_decrypts_nothing(tmp_path: Path) -> None:
    """What the write-ahead charge still guards (a concurrent job spent the budget after the
    pre-check): simulate_horizontal, which does not pre-check, withdraws every silo at its first
    charge and decrypts nothing, an error, not an untrained model."""
    from fedsilo.errors import NotEnoughSilosError
    from fedsilo.silos.tasks.horizontal import simulate_horizontal

    rng = np.random.default_rng(0)
    silos = {f"s{i}": (rng.uniform(-1, 1, (60, 4)), rng.integers(0, 2, 60)) for i in range(3)}
    tests = {f"s{i}": (rng.uniform(-1, 1, (20, 4)), rng.integers(0, 2, 20)) for i in range(3)}
    with pytest.raises(NotEnoughSilosError, match=r"trained no round: .*privacy budget exhausted.*nothing was decrypted"):
        simulate_horizontal(silos=silos, tests=tests, backend="plain", backend_params={}, model={"kind": "logistic"},
                            training={"rounds": 1}, privacy={"epsilon": 5.0, "level": "silo"}, ledger_dir=tmp_path,
                            budgets={n: (1.0, DELTA) for n in silos}, job="j", seed=0, min_silos=2, round_timeout=10.0,
                            insecure=True)
    for n in silos:
        with PrivacyLedger.open(tmp_path / f"{n}.sqlite") as ledger:
            assert ledger.entries(n) == []  # every refused charge wrote nothing


def test_a_distributed_dp_sgd_job_is_checked_by_its_target_before_round_1(tmp_path: Path) -> None:
    """Found by the privacy review: a job whose releases were not planned up front (distributed
    DP-SGD follows the row count it releases) skipped the pre-check, charged the count and its
    steps, and withdrew before the final metrics: budget burnt, no model. Its whole guarantee is
    now charged with the row count (the count and the training's (eps, delta)), so it is planned
    and composed with what the ledger spent, before anything is charged: here the earlier
    release composes at the delta the training leaves, and the two exceed the budget."""
    from fedsilo.errors import BudgetExceededError

    silos = ("st_marys", "city_general", "riverside")
    cfg = parse_config({
        "federation": {"name": "hospitals", "task": "horizontal", "seed": 7, "min_silos": 2},
        "crypto": {"backend": "plain", "insecure": True},
        "privacy": {"epsilon": 8.0, "delta": 1e-5, "clip": 1.0, "level": "record", "mode": "distributed"},
        "training": {"rounds": 5, "local_epochs": 1, "batch_size": 32, "lr": 0.5},
        "data": {"source": "sklearn:breast_cancer", "label": "target", "partition": {"kind": "iid", "silos": 3}},
        "silos": [{"name": n, "budget": {"epsilon": 10.0, "delta": 1e-5}} for n in silos],
    }, source="hospitals.toml")
    for n in silos:
        with PrivacyLedger(tmp_path / f"{n}.sqlite", silo=n, accountant="rdp") as ledger:
            ledger.register_dataset(n, epsilon=10.0, delta=1e-5)
            with ledger.charge(n, GaussianEvent(1.6, 1.0, 4), job="earlier", round=1, protocol="t",
                               mechanism={"name": "t"}, recipient="x", relation=ADD_REMOVE_RECORD):
                pass
    with pytest.raises(BudgetExceededError, match=r"silo 'st_marys': the job needs epsilon=8 but its ledger has 3\.877 "
                       r"of 10 left \(spent 6\.123, composed with it epsilon=14\.97; .*nothing was trained or charged"):
        run_job(cfg, ledger_dir=tmp_path, noise_seed=1)
    for n in silos:
        with PrivacyLedger.open(tmp_path / f"{n}.sqlite") as ledger:
            assert [e.job for e in ledger.entries(n)] == ["earlier"]  # nothing charged by the refused job


def test_a_ledger_that_cannot_be_written_is_refused_before_the_job_naming_it(tmp_path: Path, monkeypatch) -> None:
    """Found by the bad-input sweep: a read-only (immutable) ledger failed a party at its first
    charge with sqlite's traceback. The pre-check opens each existing ledger for writing first.
    (The OS refusal is simulated: the test runs as root, whom chmod does not stop.)"""
    import os

    from fedsilo.errors import ConfigError

    cfg = parse_config({
        "federation": {"name": "hospitals", "task": "horizontal", "seed": 7},
        "crypto": {"backend": "plain", "insecure": True},
        "privacy": {"epsilon": 2.0, "delta": 1e-5, "clip": 1.0, "level": "silo"},
        "training": {"rounds": 1},
        "data": {"source": "sklearn:breast_cancer", "label": "target", "partition": {"kind": "iid", "silos": 3}},
    }, source="hospitals.toml")
    run_job(cfg, ledger_dir=tmp_path, noise_seed=1)
    target = tmp_path / f"{cfg.silo_names()[0]}.sqlite"
    real_open = os.open

    def refusing(path, flags, *args, **kw):  # the OS's EPERM for an immutable file
        if Path(path) == target and flags & os.O_RDWR:
            raise PermissionError(1, "Operation not permitted", str(path))
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", refusing)
    with pytest.raises(ConfigError, match=rf"ledger {re.escape(str(target))}: cannot be written"):
        run_job(cfg, ledger_dir=tmp_path, noise_seed=1)
