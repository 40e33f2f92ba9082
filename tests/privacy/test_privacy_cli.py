"""`fedsilo privacy ...` driven through typer's CliRunner: JSON contracts and exit codes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedsilo.cli.privacy import app
from fedsilo.privacy.accounting import epsilon, noise_multiplier
from fedsilo.privacy.events import GaussianEvent, LaplaceEvent
from fedsilo.privacy.ledger import PrivacyLedger

runner = CliRunner()
MECH = {"name": "gaussian", "clip": 1.0}


def run(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args))


def assert_one_line_error(result, code: int = 2) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.fixture
def ledger_file(tmp_path: Path) -> Path:
    path = tmp_path / "site0.sqlite"
    with PrivacyLedger(path, silo="site0") as led:
        led.register_dataset("breast_cancer", epsilon=8.0, delta=1e-5)
        led.register_dataset("census", epsilon=2.0, delta=1e-6)
        for r in range(2):
            with led.charge("breast_cancer", GaussianEvent(1.1), job="j", round=r, protocol="fedavg", mechanism=MECH, recipient="agg"):
                pass
        with led.charge("census", LaplaceEvent(0.5), job="s", round=0, protocol="stats", mechanism={"name": "dlap"}, recipient="guest", level="record"):
            pass
    return path


def test_help_lists_commands() -> None:
    result = run("--help")
    assert result.exit_code == 0
    for cmd in ("epsilon", "noise", "report", "verify"):
        assert cmd in result.stdout


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_epsilon_json(accountant: str) -> None:
    result = run("epsilon", "--noise-multiplier", "1.1", "--sample-rate", "1", "--steps", "3", "--delta", "1e-5", "--accountant", accountant, "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {"epsilon", "delta", "accountant"}
    assert data["accountant"] == accountant and data["delta"] == 1e-5
    assert data["epsilon"] == pytest.approx(epsilon(GaussianEvent(1.1, 1.0, 3), delta=1e-5, accountant=accountant))


def test_epsilon_table() -> None:
    result = run("epsilon", "--noise-multiplier", "0.8", "--sample-rate", "0.1", "--steps", "100", "--delta", "1e-5")
    assert result.exit_code == 0
    assert "12.4086" in result.stdout and "rdp" in result.stdout


def test_noise_json() -> None:
    result = run("noise", "--target-epsilon", "8", "--delta", "1e-5", "--sample-rate", "1", "--steps", "3", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert {"noise_multiplier", "epsilon", "delta"} <= set(data)
    assert data["noise_multiplier"] == pytest.approx(noise_multiplier(target_epsilon=8.0, delta=1e-5, steps=3))
    assert data["epsilon"] <= 8.0
    assert run("noise", "--target-epsilon", "8", "--delta", "1e-5", "--steps", "3").exit_code == 0


@pytest.mark.parametrize(
    "args",
    [
        ["epsilon", "--noise-multiplier", "1", "--sample-rate", "1.5", "--delta", "1e-5"],
        ["epsilon", "--noise-multiplier", "1", "--sample-rate", "0", "--delta", "1e-5"],
        ["epsilon", "--noise-multiplier", "-1", "--delta", "1e-5"],
        ["epsilon", "--noise-multiplier", "0", "--delta", "1e-5"],
        ["epsilon", "--noise-multiplier", "1", "--delta", "1"],
        ["epsilon", "--noise-multiplier", "1", "--delta", "1.5"],
        ["epsilon", "--noise-multiplier", "1", "--delta", "1e-5", "--steps", "0"],
        ["epsilon", "--noise-multiplier", "1", "--delta", "1e-5", "--accountant", "gdp"],
        ["noise", "--target-epsilon", "1", "--delta", "1e-5", "--sample-rate", "2"],
        ["noise", "--target-epsilon", "-1", "--delta", "1e-5"],
        ["noise", "--target-epsilon", "1e-5", "--delta", "1e-5"],
        ["report", "--ledger", "/nonexistent/ledger.sqlite"],
        ["verify", "--ledger", "/nonexistent/ledger.sqlite"],
    ],
)
def test_bad_arguments_exit_2_with_one_line(args: list[str]) -> None:
    assert_one_line_error(run(*args), 2)


def test_too_small_target_names_the_cap() -> None:
    result = run("noise", "--target-epsilon", "1e-5", "--delta", "1e-5")
    assert "MAX_NOISE_MULTIPLIER" in result.stderr


def test_report_json(ledger_file: Path) -> None:
    result = run("report", "--ledger", str(ledger_file), "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["silo"] == "site0" and data["accountant"] == "rdp"
    ds = {d["dataset"]: d for d in data["datasets"]}
    assert set(ds) == {"breast_cancer", "census"}
    bc = ds["breast_cancer"]
    assert {"spent", "epsilon_budget", "delta", "remaining", "releases", "level"} <= set(bc)
    assert bc["releases"] == 2 and bc["epsilon_budget"] == 8.0 and bc["level"] == "silo"
    assert bc["spent"] == pytest.approx(epsilon(GaussianEvent(1.1, 1.0, 2), delta=1e-5))
    assert bc["remaining"] == pytest.approx(8.0 - bc["spent"])
    assert ds["census"]["level"] == "record" and ds["census"]["spent"] == pytest.approx(0.5, rel=1e-9)


def test_report_table_and_plot(ledger_file: Path, tmp_path: Path) -> None:
    png = tmp_path / "eps.png"
    result = run("report", "--ledger", str(ledger_file), "--plot", str(png))
    assert result.exit_code == 0, result.stderr
    assert "breast_cancer" in result.stdout and "census" in result.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_one_line_error(run("report", "--ledger", str(ledger_file), "--plot", str(tmp_path / "no" / "x.png")), 2)


def test_verify(ledger_file: Path) -> None:
    result = run("verify", "--ledger", str(ledger_file))
    assert result.exit_code == 0 and "OK" in result.stdout
    data = json.loads(run("verify", "--ledger", str(ledger_file), "--json").stdout)
    assert data["ok"] is True and data["entries"] == 8
    import sqlite3

    with sqlite3.connect(ledger_file) as c:
        c.execute("UPDATE entries SET epsilon = 0.001 WHERE kind = 'reserve'")
    assert_one_line_error(run("verify", "--ledger", str(ledger_file)), 1)
    assert_one_line_error(run("report", "--ledger", str(ledger_file)), 1)
