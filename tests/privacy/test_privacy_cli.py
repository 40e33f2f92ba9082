"""`fedsilo privacy ...` driven through typer's CliRunner: JSON contracts and exit codes."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedsilo.cli.privacy import app
from fedsilo.privacy.accounting import epsilon, noise_multiplier
from fedsilo.privacy.events import ComposedEvent, GaussianEvent, LaplaceEvent
from fedsilo.privacy.ledger import PrivacyLedger, anchor_path, key_path
from fedsilo.privacy.relations import ADD_REMOVE_RECORD, ZERO_OUT_SILO

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
            with led.charge("breast_cancer", GaussianEvent(1.1), job="j", round=r, protocol="fedavg", mechanism=MECH, recipient="agg", relation=ZERO_OUT_SILO):
                pass
        with led.charge("census", LaplaceEvent(0.5), job="s", round=0, protocol="stats", mechanism={"name": "dlap"}, recipient="guest", relation=ADD_REMOVE_RECORD):
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
    assert {"spent", "epsilon_budget", "delta", "remaining", "releases", "level", "relation"} <= set(bc)
    assert bc["releases"] == 2 and bc["epsilon_budget"] == 8.0 and bc["level"] == "silo"
    assert bc["relation"] == "zero-out-silo" and ds["census"]["relation"] == "add-remove-record"
    assert "entries" not in data
    assert bc["spent"] == pytest.approx(epsilon(GaussianEvent(1.1, 1.0, 2), delta=1e-5))
    assert bc["remaining"] == pytest.approx(8.0 - bc["spent"])
    assert ds["census"]["level"] == "record" and ds["census"]["spent"] == pytest.approx(0.5, rel=1e-9)


def test_report_table_and_plot(ledger_file: Path, tmp_path: Path) -> None:
    png = tmp_path / "eps.png"
    result = run("report", "--ledger", str(ledger_file), "--plot", str(png))
    assert result.exit_code == 0, result.stderr
    assert "breast_cancer" in result.stdout and "census" in result.stdout
    assert "zero-out-silo" in result.stdout and "add-remove-record" in result.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_one_line_error(run("report", "--ledger", str(ledger_file), "--plot", str(tmp_path / "no" / "x.png")), 2)


def test_verify(ledger_file: Path) -> None:
    result = run("verify", "--ledger", str(ledger_file))
    assert result.exit_code == 0 and "OK" in result.stdout
    data = json.loads(run("verify", "--ledger", str(ledger_file), "--json").stdout)
    assert data["ok"] is True and data["entries"] == 8 and data["anchored_seq"] == 8
    assert data["anchor"] == str(anchor_path(ledger_file))
    with sqlite3.connect(ledger_file) as c:
        c.execute("UPDATE entries SET epsilon = 0.001 WHERE kind = 'reserve'")
    assert_one_line_error(run("verify", "--ledger", str(ledger_file)), 1)
    assert_one_line_error(run("report", "--ledger", str(ledger_file)), 1)


def test_report_entries_name_the_relation(ledger_file: Path) -> None:
    result = run("report", "--ledger", str(ledger_file), "--json", "--entries")
    assert result.exit_code == 0, result.stderr
    entries = json.loads(result.stdout)["entries"]
    assert [(e["dataset"], e["relation"], e["level"]) for e in entries] == [
        ("breast_cancer", "zero-out-silo", "silo"),
        ("breast_cancer", "zero-out-silo", "silo"),
        ("census", "add-remove-record", "record"),
    ]
    assert entries[0]["event"] == GaussianEvent(1.1).to_json() and entries[-1]["status"] == "committed"
    table = run("report", "--ledger", str(ledger_file), "--entries")
    assert table.exit_code == 0, table.stderr
    assert "Releases" in table.stdout and table.stdout.count("zero-out-silo") >= 3


def test_report_names_a_mixed_datasets_record_relation(tmp_path: Path) -> None:
    path = tmp_path / "mixed.sqlite"
    with PrivacyLedger(path, silo="site0") as led:
        led.register_dataset("ds", epsilon=50.0, delta=1e-5)
        for rel in (ZERO_OUT_SILO, ADD_REMOVE_RECORD):
            with led.charge("ds", GaussianEvent(2.0), job="j", round=0, protocol="p", mechanism=MECH, recipient="a", relation=rel):
                pass
    (ds,) = json.loads(run("report", "--ledger", str(path), "--json").stdout)["datasets"]
    assert (ds["relation"], ds["level"]) == ("add-remove-record", "record")
    # the silo-level release counts per record at z/2
    assert ds["spent"] == pytest.approx(epsilon(ComposedEvent((GaussianEvent(1.0), GaussianEvent(2.0))), delta=1e-5))


def _rolled_back(tmp_path: Path) -> Path:
    """A ledger whose database was replaced by a copy taken 3 releases earlier."""
    path = tmp_path / "site0.sqlite"
    aside = tmp_path / "aside.sqlite"

    def releases(rounds: range) -> None:
        with PrivacyLedger(path, silo="site0") as led:
            led.register_dataset("ds", epsilon=50.0, delta=1e-5)
            for r in rounds:
                with led.charge("ds", GaussianEvent(2.0), job="j", round=r, protocol="p", mechanism=MECH, recipient="a", relation=ZERO_OUT_SILO):
                    pass

    releases(range(3))
    shutil.copyfile(path, aside)
    releases(range(3, 6))
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    shutil.copyfile(aside, path)
    return path


def test_verify_fails_on_a_rolled_back_ledger(tmp_path: Path) -> None:
    path = _rolled_back(tmp_path)
    result = run("verify", "--ledger", str(path))
    assert_one_line_error(result, 1)
    assert "ends at seq 7 but its anchor" in result.stderr and "records seq 13" in result.stderr
    assert "rolled back or truncated" in result.stderr
    data = run("verify", "--ledger", str(path), "--json")
    assert data.exit_code == 1
    out = json.loads(data.stdout)
    assert out["ok"] is False and "rolled back" in out["error"]
    assert_one_line_error(run("report", "--ledger", str(path)), 1)
    assert_one_line_error(run("report", "--ledger", str(path), "--json", "--entries"), 1)


def test_verify_subprocess_on_a_rolled_back_ledger(tmp_path: Path) -> None:
    """The same through the real entry point (as an operator runs it)."""
    path = _rolled_back(tmp_path)
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH")]))
    code = "from fedsilo.cli.privacy import app; app(prog_name='fedsilo privacy')"
    proc = subprocess.run(
        [sys.executable, "-c", code, "verify", "--ledger", str(path)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "rolled back" in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr


def test_verify_fails_on_truncation_and_anchor_problems(ledger_file: Path) -> None:
    with sqlite3.connect(ledger_file) as c:
        (h4,) = c.execute("SELECT hash FROM entries WHERE seq = 4").fetchone()
        c.execute("DELETE FROM entries WHERE seq > 4")
        c.execute("UPDATE meta SET value = '4' WHERE key = 'head_seq'")
        c.execute("UPDATE meta SET value = ? WHERE key = 'head_hash'", (h4,))
    result = run("verify", "--ledger", str(ledger_file))
    assert_one_line_error(result, 1)
    assert "ends at seq 4 but its anchor" in result.stderr and "records seq 8" in result.stderr


@pytest.mark.parametrize("damage", ["anchor", "key", "forge"])
def test_verify_fails_on_missing_or_forged_anchor_files(ledger_file: Path, damage: str) -> None:
    if damage == "anchor":
        anchor_path(ledger_file).unlink()
    elif damage == "key":
        key_path(ledger_file).unlink()
    else:
        a = json.loads(anchor_path(ledger_file).read_text())
        anchor_path(ledger_file).write_text(json.dumps({**a, "seq": 2}))
    result = run("verify", "--ledger", str(ledger_file))
    assert_one_line_error(result, 1)
    assert {"anchor": "is missing", "key": "key file", "forge": "does not authenticate"}[damage] in result.stderr


def test_verify_refuses_a_key_others_can_read(ledger_file: Path) -> None:
    key_path(ledger_file).chmod(0o644)
    result = run("verify", "--ledger", str(ledger_file))
    assert_one_line_error(result, 2)
    assert "chmod 600" in result.stderr


def test_report_of_a_ledger_without_datasets_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite"
    PrivacyLedger(path, silo="site0").close()
    res = run("report", "--ledger", str(path))
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().splitlines() == [f"ledger {path} of silo 'site0' has no datasets yet (nothing charged)"]
    assert "┏" not in res.stdout  # no empty table


@pytest.mark.parametrize("command", ["report", "verify"])
@pytest.mark.parametrize("content", [b"", b"hello\n"])
def test_read_commands_leave_a_non_ledger_file_untouched(tmp_path: Path, command: str, content: bytes) -> None:
    path = tmp_path / "e.sqlite"
    path.write_bytes(content)
    res = run(command, "--ledger", str(path))
    assert_one_line_error(res, 2)
    assert "not a fedsilo privacy ledger" in res.stderr
    assert path.read_bytes() == content and [p.name for p in tmp_path.iterdir()] == ["e.sqlite"]
