"""Bad input on secagg and federated statistics through the real `fedsilo` command (the
bad-input sweep's F3/F4/F5/F10 and the unknown-parameter hint) and at an agent's offer (F7):
each is refused before anything runs, in one line naming the key to change and to what."""
from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedsilo.cli import app
from fedsilo.privacy.ledger import PrivacyLedger

ROOT = Path(__file__).resolve().parents[2]
STATS = ROOT / "examples" / "federated_statistics" / "federation.toml"
SILOS = ("st_marys", "city_general", "riverside")
runner = CliRunner()


def _stats_config(tmp_path: Path, params: str, *, budget: float = 4.0) -> Path:
    text = STATS.read_text().replace('backend = "paillier"', 'backend = "secagg"')
    text = text.replace("params = { packed = true }", f"params = {{ {params} }}")
    text = text.replace("budget = { epsilon = 4.0, delta = 1e-5 }", f"budget = {{ epsilon = {budget}, delta = 1e-5 }}")
    cfg = tmp_path / "stats.toml"
    cfg.write_text(text)
    return cfg


def _stats(cfg: Path, ledgers: Path) -> object:
    return runner.invoke(app, ["stats", str(cfg), "--ledger-dir", str(ledgers)])


@pytest.mark.parametrize("params, want", [
    ("value_bound = 1e15", ["crypto.params.value_bound to <= 2^37", "crypto.params.granularity to >= 2^-11"]),
    ("granularity = 0.5", ["crypto.params.granularity = 2**-16 or finer"]),
    ("degree = 7", ["crypto.params.degree = 7 but a job of 3 silos gives each at most 2 neighbours",
                    "set crypto.params.degree <= 2"]),
    ("thresold = 2", ["unknown parameter 'thresold' (did you mean 'threshold'?)"]),
], ids=["ring-overflow", "grid-underflow", "degree", "unknown-param"])
def test_a_statistics_job_secagg_cannot_run_names_the_key_and_value(params: str, want: list, tmp_path: Path) -> None:
    res = _stats(_stats_config(tmp_path, params), tmp_path / "ledgers")
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert line.startswith("error: ") and "Traceback" not in res.output
    for w in want:
        assert w in " ".join(line.split()), line
    assert not (tmp_path / "ledgers").exists() or not any((tmp_path / "ledgers").iterdir())


@pytest.mark.timeout(600)
def test_statistics_budgets_are_checked_by_the_planned_charge_before_any_release(tmp_path: Path) -> None:
    """At a budget of 1.5 the statistics job (ε = 1) runs twice: RDP composes two releases to
    ε 1.46 (the old target-vs-remaining check refused the second run, 1.0 > 0.5 left); the third
    is refused before any release, naming the silo, what is left and what the job needs, with
    nothing charged."""
    cfg = _stats_config(tmp_path, "", budget=1.5)
    ledgers = tmp_path / "ledgers"
    for _ in range(2):
        res = _stats(cfg, ledgers)
        assert res.exit_code == 0, res.output
    res = _stats(cfg, ledgers)
    assert res.exit_code != 0
    line = " ".join(res.output.split())
    assert "silo 'st_marys': the job needs epsilon=0.9972 but its ledger has 0.04" in line, line
    assert "of 1.5 left" in line and "nothing was trained or charged" in line
    for silo in SILOS:
        ledger = PrivacyLedger.open(ledgers / f"{silo}.sqlite")
        try:
            assert len(ledger.entries()) == 2  # the refused run charged nothing
        finally:
            ledger.close()


def test_an_agent_with_a_plaintext_transport_refuses_a_secagg_job_at_the_offer(tmp_path: Path) -> None:
    from fedsilo.silos.agent import Agent, _Refused
    from fedsilo.silos.silo_config import load_silo_config

    csv = ROOT / "examples" / "agents" / "st_marys.csv"
    (tmp_path / "silo.toml").write_text(
        '[silo]\nname = "alpha"\nlisten = "127.0.0.1:0"\ninsecure = true\n'
        '[peers]\nbeta = "127.0.0.1:50052"\ngamma = "127.0.0.1:50054"\naggregator = "127.0.0.1:50053"\n'
        f'[[datasets]]\nname = "patients"\npath = "{csv}"\nbudget = {{ epsilon = 10.0 }}\n'
    )
    job = (
        '[federation]\nname = "hosp"\ntask = "horizontal"\n[crypto]\nbackend = "{backend}"\n{insecure}'
        '[training]\nrounds = 1\n[data]\nlabel = "target"\n[privacy]\nepsilon = 3.0\nlevel = "record"\n'
        '[[silos]]\nname = "alpha"\ndata = "patients"\n[[silos]]\nname = "beta"\ndata = "patients"\n'
        '[[silos]]\nname = "gamma"\ndata = "patients"\n'
    )
    with Agent(load_silo_config(tmp_path / "silo.toml")) as agent:
        with pytest.raises(_Refused) as info:
            agent.evaluate("job-1", job.format(backend="secagg", insecure=""), coordinator="beta", source="job.toml")
        msg = str(info.value)
        assert "needs party identities (mTLS certificates)" in msg and "silo 'alpha' runs a plaintext transport" in msg
        assert "key 'crypto.backend'" in msg
        # a shared-key job gets past this check (refused, if at all, for another reason)
        try:
            agent.evaluate("job-2", job.format(backend="plain", insecure="insecure = true\n"), coordinator="beta",
                           source="job.toml")
        except _Refused as exc:
            assert "mTLS" not in str(exc), exc
