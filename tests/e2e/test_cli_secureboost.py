"""`fedsilo simulate` with `[model] kind = "secureboost"` on the vertical examples' tables: the
results contract on the threads and processes engines, and bad input as one clear line, exit 2."""
from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fedsilo.cli import app

ROOT = Path(__file__).resolve().parents[2]
BANK = ROOT / "examples" / "bank_vertical"
HOSPITAL = ROOT / "examples" / "hospital_vertical"
runner = CliRunner()


def _toml(tmp: Path, *, silos: str, label: str, id_column: str, backend: str = "plain", params: str = "{}",
          model: str = "trees = 5\ndepth = 3\n", extra: str = "") -> Path:
    path = tmp / "secureboost.toml"
    path.write_text(
        f'[federation]\nname = "sb"\ntask = "vertical"\nseed = 7\nround_timeout = 120.0\n'
        f'[crypto]\nbackend = "{backend}"\nparams = {params}\ninsecure = true\n'
        f'[model]\nkind = "secureboost"\n{model}'
        f'[data]\nlabel = "{label}"\nid_column = "{id_column}"\n{extra}{silos}'
    )
    return path


def _bank_silos(bank: Path = BANK / "bank.csv", partner: Path = BANK / "partner.csv") -> str:
    return (f'[[silos]]\nname = "bank"\ndata = "{bank}"\nrole = "guest"\n'
            f'[[silos]]\nname = "partner"\ndata = "{partner}"\nrole = "host"\n')


def _bank(tmp: Path, **kw) -> Path:
    return _toml(tmp, silos=kw.pop("silos", _bank_silos()), label="default", id_column="customer_id", **kw)


def _run(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


def test_simulate_runs_secureboost_on_the_bank_example_and_writes_the_contract(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    res = _run("simulate", _bank(tmp_path, model="trees = 8\ndepth = 3\nbins = 32\n"), "--json", out, "--ledger-dir",
               tmp_path / "l")
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert (data["task"], data["model"], data["engine"]) == ("vertical", "secureboost", "threads")
    assert data["final"]["auc"] > 0.72 and {"accuracy", "ks", "test_loss"} <= set(data["final"])
    assert data["topology"] == {"guest": "bank", "hosts": ["partner"], "arbiter": None}
    assert len(data["rounds"]) == 8 and data["trees"] == 8 and data["dp"] is None
    # each party's importance under its own feature names
    assert set(data["importance"]["partner"]) == set(pd.read_csv(BANK / "partner.csv", nrows=1).columns) - {"customer_id"}
    assert sum(v["splits"] for v in data["importance"]["partner"].values()) > 0
    assert data["psi"]["intersection"] == 2000 and data["rows"] == {"train": 1600, "test": 400}
    assert any("NOT PRIVATE" in n for n in data["notes"])


@pytest.mark.network
@pytest.mark.timeout(300)
def test_the_hospital_example_on_the_processes_engine_gives_the_threads_results(tmp_path: Path) -> None:
    """Three departments, one agent process each (gRPC + mTLS on 127.0.0.1), Paillier (1024-bit:
    a logic test): the same trees as on threads, and no process left behind."""
    silos = "".join(f'[[silos]]\nname = "{n}"\ndata = "{HOSPITAL / (n + ".csv")}"\nrole = "{r}"\n'
                    for n, r in (("oncology", "guest"), ("radiology", "host"), ("pathology", "host")))
    toml = _toml(tmp_path, silos=silos, label="malignant", id_column="patient_id", backend="paillier",
                 params="{key_bits = 1024, workers = 1}", model="trees = 3\ndepth = 2\nbins = 16\n")
    before = {p.pid for p in multiprocessing.active_children()}
    results = {}
    for engine in ("processes", "threads"):
        out = tmp_path / f"{engine}.json"
        res = _run("simulate", toml, "--engine", engine, "--json", out, "--ledger-dir", tmp_path / engine, "--quiet")
        assert res.exit_code == 0, res.output
        results[engine] = json.loads(out.read_text())
    assert results["processes"]["transport"] == "grpc+mtls"
    for key in ("final", "importance", "rows", "psi"):
        assert results["processes"][key] == results["threads"][key], key
    assert results["threads"]["final"]["auc"] > 0.95
    assert not {p.pid for p in multiprocessing.active_children()} - before


def _blank_utilization_of_row_5(frame: pd.DataFrame) -> None:
    frame["utilization"] = frame["utilization"].where(frame.index != 5)


def _bank_with_text_income(tmp: Path) -> Path:
    frame = pd.read_csv(BANK / "bank.csv", dtype={"customer_id": str, "log_income": str})
    frame.loc[3, "log_income"] = "unknown"
    path = tmp / "bank.csv"
    frame.to_csv(path, index=False)
    return path


def _partner_with(tmp: Path, change) -> Path:
    frame = pd.read_csv(BANK / "partner.csv", dtype={"customer_id": str})
    change(frame)
    path = tmp / "partner.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(("make", "message"), [
    (lambda tmp: _bank(tmp, silos=_bank_silos(partner=_partner_with(tmp, lambda f: f.insert(1, "region", 3)))),
     "partner.csv: column 'region' is constant over the whole table"),
    (lambda tmp: _bank(tmp, silos=_bank_silos(partner=_partner_with(tmp, _blank_utilization_of_row_5))),
     "partner.csv: column 'utilization' has 1 missing/NaN/infinite value(s) (first at row 7 of the file)"),
    (lambda tmp: _bank(tmp, model="trees = 2\nmin_leaf_rows = 900\n"),
     "too few for one split with model.min_leaf_rows = 900 rows in each leaf (needs 1800)"),
    (lambda tmp: _bank(tmp, model="trees = 2\nmin_leaf_rows = 100\nsubsample = 0.1\n"),
     "each tree is grown on 160 of the 1600 aligned training rows, too few for one split"),
    (lambda tmp: _bank(tmp, extra="[privacy]\nepsilon = 8.0\n"), "SecureBoost under DP bins every feature over public bounds"),
    (lambda tmp: _bank(tmp, silos=_bank_silos() + '[[silos]]\nname = "arbiter"\nrole = "arbiter"\n'),
     "SecureBoost has no arbiter"),
    (lambda tmp: _bank(tmp, model="trees = 2\ndepth = 0\n"), "key 'model.depth': Input should be greater than or equal to 1"),
    (lambda tmp: _toml(tmp, silos=_bank_silos(bank=_bank_with_text_income(tmp)), label="log_income",
                       id_column="customer_id", model='trees = 2\nobjective = "squared_error"\n'),
     "bank.csv: column 'log_income' is not numeric (row 5 of the file has 'unknown')"),
])
def test_bad_input_is_one_clear_line_exit_2(tmp_path: Path, make, message: str) -> None:
    res = _run("simulate", make(tmp_path), "--quiet", "--ledger-dir", tmp_path / "l")
    assert res.exit_code == 2, res.output
    assert message in res.output, res.output
    assert "Traceback" not in res.output


# ------------------------------------------------------------------------------ the example configs, new keys


def _example(tmp: Path, folder: Path, *, trees: int = 3) -> Path:
    """The example's own secureboost.toml with fewer trees (to stay fast) and its tables' paths
    made absolute; everything else (Paillier 2048, DP ε = 8, bounds, guest_trees) as shipped."""
    text = (folder / "secureboost.toml").read_text()
    assert "trees = 10\n" in text
    text = text.replace("trees = 10\n", f"trees = {trees}\n")
    for csv in folder.glob("*.csv"):
        text = text.replace(f'data = "{csv.name}"', f'data = "{csv}"')
    path = tmp / "secureboost.toml"
    path.write_text(text)
    return path


# The AUC floors sit far below the runs' OS-drawn DP noise: measured with the configs' settings
# (trees = 3, ε = 8; backend plain, the same noise) the bank's AUC over 100 runs ranged 0.694-0.789
# (mean 0.744, sd 0.016; the old floor 0.70 failed 1 run in 100), the hospital's over 80 runs
# 0.901-0.996 (mean 0.963, sd 0.020; the old 0.9 failed ~0.1 %). 0.62 and 0.80 are > 7 sd below the
# mean, and a model that learned nothing (AUC 0.5) still fails.
@pytest.mark.slow
@pytest.mark.parametrize(("folder", "hosts", "auc"), [(BANK, ["partner"], 0.62), (HOSPITAL, ["radiology", "pathology"], 0.80)],
                         ids=["bank", "hospital"])
def test_the_example_secureboost_configs_run_end_to_end(tmp_path: Path, folder: Path, hosts: list[str], auc: float) -> None:
    import tomllib

    from fedsilo.privacy.ledger import PrivacyLedger

    shipped = tomllib.loads((folder / "secureboost.toml").read_text())
    out = tmp_path / "r.json"
    res = _run("simulate", _example(tmp_path, folder), "--json", out, "--ledger-dir", tmp_path / "l", "--quiet")
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert (data["model"], data["objective"], data["backend"], data["private"]) == ("secureboost", "log_loss", "paillier", True)
    assert data["final"]["auc"] > auc and data["trees"] == 3
    joint = 3 - shipped["model"].get("guest_trees", 0)
    assert data["dp"]["releases"] == joint * shipped["model"]["depth"]
    for h in hosts:
        assert 0 < data["epsilon"][h]["epsilon"] <= shipped["privacy"]["epsilon"]
        with PrivacyLedger(tmp_path / "l" / f"{h}.sqlite", silo=h) as led:
            assert 0 < len(led.entries(h)) <= data["dp"]["releases"]
    if shipped["model"].get("guest_trees"):
        assert all(v == 0 for p, v in data["rounds"][0]["splits"].items() if p in hosts)  # the guest's tree


def test_missing_value_bins_run_a_table_the_default_refuses(tmp_path: Path) -> None:
    partner = _partner_with(tmp_path, _blank_utilization_of_row_5)
    out = tmp_path / "r.json"
    res = _run("simulate", _bank(tmp_path, silos=_bank_silos(partner=partner), model="trees = 3\nmissing = \"bin\"\n"),
               "--json", out, "--ledger-dir", tmp_path / "l", "--quiet")
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["final"]["auc"] > 0.7


def test_regression_reports_rmse_mae_and_r2(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    toml = _toml(tmp_path, silos=_bank_silos(), label="log_income", id_column="customer_id",
                 model='trees = 5\nobjective = "squared_error"\n')
    res = _run("simulate", toml, "--json", out, "--ledger-dir", tmp_path / "l", "--quiet")
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["objective"] == "squared_error" and set(data["final"]) == {"rmse", "mae", "r2", "test_loss"}
    assert 0 < data["final"]["r2"] < 1 and data["final"]["rmse"] < 0.5
