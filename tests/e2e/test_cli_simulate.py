"""End to end through the real entry points: the `fedsilo` command on the shipped examples."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedsilo.cli import app

ROOT = Path(__file__).resolve().parents[2]
HOSPITALS = ROOT / "examples" / "hospitals_horizontal" / "federation.toml"
STATS = ROOT / "examples" / "federated_statistics" / "federation.toml"
runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_version_through_console_script() -> None:
    exe = Path(sys.executable).parent / "fedsilo"
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("fedsilo ")


def test_simulate_writes_results_contract(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    res = run("simulate", HOSPITALS, "--backend", "plain", "--insecure", "--rounds", "2", "--seed", "1", "--json", out,
              "--ledger-dir", tmp_path / "ledgers", "--quiet")
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert {"task", "backend", "rounds", "final", "epsilon", "dp", "bytes_sent"} <= set(data)
    assert data["task"] == "horizontal" and data["backend"] == "plain"
    assert len(data["rounds"]) == 2
    # record-level DP: the released metrics are one noised estimate (sigma ~5 counts on ~114
    # held-out rows); the model itself is measured by the simulation
    assert data["evaluation"] == "final" and 0.0 <= data["final"]["accuracy"] <= 1.0 and 0.0 <= data["final"]["auc"] <= 1.0
    assert 0.5 < data["simulation_metrics"]["auc"] <= 1.0
    assert set(data["epsilon"]) == {"st_marys", "city_general", "riverside"}
    for e in data["epsilon"].values():
        assert 0 < e["epsilon"] <= 8.0 + 1e-9 and e["delta"] == 1e-5
    assert data["dp"]["rounds"] == 2 and data["dp"]["delta"] == 1e-5
    assert all(n > 0 for n in data["bytes_sent"].values())
    # the ledgers are real SQLite files the privacy CLI can verify and report
    for silo in data["epsilon"]:
        ledger = tmp_path / "ledgers" / f"{silo}.sqlite"
        assert run("privacy", "verify", "--ledger", ledger).exit_code == 0
        rep = run("privacy", "report", "--ledger", ledger, "--json")
        assert rep.exit_code == 0, rep.output


def test_budget_is_enforced_across_runs_sharing_a_ledger(tmp_path: Path) -> None:
    ledgers = tmp_path / "ledgers"
    first = run("simulate", HOSPITALS, "--backend", "plain", "--insecure", "--rounds", "2", "--ledger-dir", ledgers, "--quiet")
    assert first.exit_code == 0, first.output
    # budgets are 10 per hospital; a second eps=8 job cannot fit: each hospital stops
    # participating when its next release would cross 10, and no ledger ever passes it
    second = run("simulate", HOSPITALS, "--backend", "plain", "--insecure", "--rounds", "2", "--ledger-dir", ledgers, "--quiet")
    assert "Traceback" not in second.output
    # the first job used its 8 (training calibrated so that rounds + the final metrics release
    # compose to 8): the second job's planned releases cannot fit, and it is refused before round 1
    assert second.exit_code == 1, second.output
    assert "silo 'st_marys': the job needs epsilon=" in second.output and "nothing was trained or charged" in second.output
    for silo in ("st_marys", "city_general", "riverside"):
        rep = run("privacy", "report", "--ledger", ledgers / f"{silo}.sqlite", "--json")
        (ds,) = json.loads(rep.stdout)["datasets"]
        assert ds["spent"] <= ds["epsilon_budget"] + 1e-9


def test_without_dp_reports_no_dp(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    res = run("simulate", HOSPITALS, "--backend", "plain", "--insecure", "--rounds", "1", "--epsilon", "0", "--json", out, "--quiet",
              "--ledger-dir", tmp_path / "l")
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["dp"] is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[federation]\ntask = "horizontal"\n[crypto]\nbackend = "ckk"\n[data]\nsource = "sklearn:breast_cancer"\nlabel = "target"\npartition = {silos = 2}\n',
         "unknown crypto backend 'ckk'; did you mean 'ckks'?"),
        ('[federation]\ntask = "horizontal"\n[privacy]\nepsilon = 1\nclipp = 2\n', "unknown key 'privacy.clipp'; did you mean 'clip'?"),
        ('[federation]\ntask = "horizontal"\n[data]\nlabel = "outcome"\n[[silos]]\nname = "a"\ndata = "a.csv"\n',
         "a.csv: missing column(s) ['outcome']"),
    ],
)
def test_bad_config_is_one_clear_line_exit_2(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "fed.toml"
    cfg.write_text(text)
    (tmp_path / "a.csv").write_text("x,y\n1,0\n2,1\n")
    res = run("simulate", cfg, "--quiet", "--ledger-dir", tmp_path / "l")
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output


def test_nan_in_a_silo_file_names_file_and_column(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("x,y\n1,0\n2,1\n3,0\n4,1\n")
    (tmp_path / "b.csv").write_text("x,y\n1,0\n,1\n3,0\n4,1\n")
    cfg = tmp_path / "fed.toml"
    cfg.write_text('[federation]\ntask = "horizontal"\n[crypto]\nbackend = "plain"\ninsecure = true\n[data]\nlabel = "y"\n'
                   '[[silos]]\nname = "a"\ndata = "a.csv"\n[[silos]]\nname = "b"\ndata = "b.csv"\n')
    res = run("simulate", cfg, "--quiet", "--ledger-dir", tmp_path / "l")
    assert res.exit_code == 2
    assert "b.csv: column 'x' has 1 missing/NaN" in res.output


def test_stats_cli_on_example(tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    res = run("stats", STATS, "--json", out, "--ledger-dir", tmp_path / "l")
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["task"] == "statistics"
    radius = data["statistics"]["mean radius"]
    # 569 patients: the DP count is the truth plus fresh noise of total std sigma * sqrt(3/2)
    # (three shares, each sized to survive one colluder); six of those is a 2e-9 event
    sigma = data["dp"]["sigma"]["mean radius.count"]
    assert abs(radius["count"] - 569) < 6 * sigma * (3 / 2) ** 0.5, (radius["count"], sigma)
    assert 10.0 < radius["mean"] < 18.0


HOSPITAL_VERTICAL = ROOT / "examples" / "hospital_vertical" / "federation.toml"


def test_simulate_vertical_example_contract(tmp_path: Path) -> None:
    out = tmp_path / "v.json"
    res = run("simulate", HOSPITAL_VERTICAL, "--backend", "plain", "--insecure", "--rounds", "2", "--json", out,
              "--ledger-dir", tmp_path / "l", "--quiet")
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["task"] == "vertical"
    # under DP no held-out score leaves a host: the guest has no metrics, the simulation has
    assert data["final"] == {} and data["private"] is False  # --insecure (the plain backend)
    assert any("NOT PRIVATE" in n for n in data["notes"])
    assert {"accuracy", "auc", "ks"} <= set(data["simulation_metrics"])
    assert data["simulation_metrics"]["auc"] > 0.9
    assert data["psi"]["intersection"] > 0
    assert all(e["epsilon"] <= 8.0 + 1e-9 for e in data["epsilon"].values())
    assert len(data["rounds"]) == 2


def test_a_job_in_which_no_round_completes_is_an_error_not_an_untrained_model(tmp_path: Path) -> None:
    """Silo level, every hospital's budget spent by a first run: the second run is refused before
    round 1 (exit 1), naming the budget, instead of printing an untrained model (the mid-job "no
    round completed" path is tested in tests/silos/test_budget_precheck.py)."""
    silo_level = ROOT / "examples" / "hospitals_horizontal" / "silo_level.toml"
    ledgers = tmp_path / "l"
    first = run("simulate", silo_level, "--backend", "plain", "--insecure", "--rounds", "1", "--ledger-dir", ledgers, "--quiet")
    assert first.exit_code == 0, first.output
    second = run("simulate", silo_level, "--backend", "plain", "--insecure", "--rounds", "1", "--ledger-dir", ledgers, "--quiet")
    assert second.exit_code == 1 and "Traceback" not in second.output
    assert "the job needs epsilon=" in second.output and "nothing was trained or charged" in second.output


def test_test_only_noise_seed_and_reserved_silo_names_are_checked(tmp_path: Path) -> None:
    from fedsilo.errors import ConfigError
    from fedsilo.silos.config import load_config, parse_config
    from fedsilo.silos.runner import run_job

    with pytest.raises(ConfigError, match="noise_seed .* must be an integer >= 0"):
        run_job(load_config(HOSPITALS, insecure=True), ledger_dir=tmp_path, noise_seed=-1)
    with pytest.raises(ConfigError, match="'aggregator' is the aggregator's party name"):
        parse_config({"federation": {"task": "horizontal"}, "data": {"label": "y"},
                      "silos": [{"name": "aggregator", "data": "a.csv"}, {"name": "b", "data": "b.csv"}, {"name": "c", "data": "c.csv"}]})


def test_colluders_beyond_the_silos_and_a_ledger_directory_are_named_errors(tmp_path: Path) -> None:
    from fedsilo.errors import ConfigError
    from fedsilo.silos.config import parse_config

    with pytest.raises(ConfigError, match=r"privacy.colluders = 3 but the job has 3 silo\(s\)"):
        parse_config({"federation": {"task": "horizontal"}, "privacy": {"epsilon": 1.0, "colluders": 3},
                      "data": {"source": "sklearn:breast_cancer", "label": "target", "partition": {"silos": 3}}})
    res = run("privacy", "verify", "--ledger", tmp_path)
    assert res.exit_code == 2 and "is a directory; pass the ledger's .sqlite file" in res.output
