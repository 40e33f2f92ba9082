"""Silo agents in one process (fedsilo.silos.agent): silo.toml's contract, the reports that
travel, a job's lower budget, and three agents (two hospitals and the aggregator, mTLS on
127.0.0.1 with ephemeral ports) running jobs that equal the threads engine, refusing jobs with
a reason, showing a remote party's error, and refusing strangers while serving the others.
Every agent a test starts is closed by that test's fixture."""
from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd
import pytest

from fedsilo.errors import BudgetExceededError, ConfigError, PeerRejectedError, ProtocolError
from fedsilo.privacy.events import GaussianEvent
from fedsilo.privacy.ledger import PrivacyLedger
from fedsilo.privacy.relations import ADD_REMOVE_RECORD
from fedsilo.protocols import codec
from fedsilo.protocols.horizontal.protocol import AggregatorReport, SiloReport
from fedsilo.silos.agent import CONTROL_SERVICE, Agent, AgentClient, AgentLedger, AuditLog, DeclaredSchema, party_table
from fedsilo.silos.certs import init_federation, load_tls
from fedsilo.silos.config import parse_config
from fedsilo.silos.data import load_builtin
from fedsilo.silos.reports import PartyOutcome, incoming, outgoing
from fedsilo.silos.runner import run_job
from fedsilo.silos.silo_config import load_silo_config, parse_silo_config

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "agents"
HOSPITALS = {"h1": DATA / "st_marys.csv", "h2": DATA / "city_general.csv"}
NAMES = ["h1", "h2", "aggregator"]
BOUNDS = load_builtin("sklearn:breast_cancer").bounds


# -- silo.toml --------------------------------------------------------------------------------------
ISSUE_EXAMPLE = """
[silo]
name = "alpha"
listen = "127.0.0.1:50051"
[tls]
ca = "certs/ca.pem"
cert = "certs/alpha/cert.pem"
key = "certs/alpha/key.pem"
[peers]
beta = "127.0.0.1:50052"
[[datasets]]
name = "patients"
path = "data/alpha.csv"
budget = { epsilon = 10.0, delta = 1e-5 }
[ledger]
path = "ledger.sqlite"
"""


def _silo(text: str, base: Path = Path("/srv/alpha")) -> Any:
    return parse_silo_config(tomllib.loads(text), source="silo.toml", base_dir=base)


def test_silo_toml_contract_paths_resolve_against_the_file() -> None:
    cfg = _silo(ISSUE_EXAMPLE)
    assert cfg.name == "alpha" and cfg.peers == {"beta": "127.0.0.1:50052"} and not cfg.silo.insecure
    assert cfg.resolve(cfg.tls.key) == Path("/srv/alpha/certs/alpha/key.pem")
    assert cfg.dataset_path("patients") == Path("/srv/alpha/data/alpha.csv")
    assert cfg.datasets[0].budget.epsilon == 10.0 and cfg.datasets[0].budget.delta == 1e-5
    assert cfg.ledger_path == Path("/srv/alpha/ledger.sqlite")
    assert cfg.audit_path == Path("/srv/alpha/ledger.audit.jsonl")  # default: beside the ledger
    assert _silo(ISSUE_EXAMPLE + '[audit]\npath = "/var/log/fedsilo/audit.jsonl"\n').audit_path == Path("/var/log/fedsilo/audit.jsonl")
    with pytest.raises(Exception):  # frozen
        cfg.silo.name = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.replace("[ledger]", "[ledgr]"), r"silo\.toml: unknown key 'ledgr'; did you mean 'ledger'\?"),
        (lambda t: t.replace("budget = {", "budgte = {"), r"unknown key 'datasets\[0\]\.budgte'; did you mean 'budget'\?"),
        (lambda t: t.replace('"127.0.0.1:50052"', '"127.0.0.1"'), r"key 'peers\.beta': expected 'host:port'"),
        (lambda t: t.replace("epsilon = 10.0", "epsilon = -1.0"), r"key 'datasets\[0\]\.budget\.epsilon'"),
        (lambda t: t.replace('beta = "127.0.0.1:50052"', 'alpha = "127.0.0.1:50052"'), r"\[peers\] lists this silo itself"),
        (lambda t: t.split("[tls]")[0] + "[peers]" + t.split("[peers]")[1], r"\[tls\] \(ca, cert, key\) is required"),
        (lambda t: t.replace('listen = "127.0.0.1:50051"', 'listen = "0.0.0.0:50051"\ninsecure = true'),
         r"insecure = true is allowed only on a loopback listen address"),
        (lambda t: t.replace('name = "alpha"\n', 'name = "alpha"\ninsecure = "yes"\n'), r"key 'silo\.insecure'"),
    ],
)
def test_silo_toml_errors_name_the_file_and_key(change: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _silo(change(ISSUE_EXAMPLE))


def test_insecure_agent_on_loopback_needs_no_certificates() -> None:
    text = ISSUE_EXAMPLE.split("[tls]")[0].replace('name = "alpha"\n', 'name = "alpha"\ninsecure = true\n')
    cfg = _silo(text + '[peers]\nbeta = "127.0.0.1:50052"\n')
    assert cfg.tls is None and cfg.silo.insecure


def test_an_agent_without_its_certificate_files_refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / "silo.toml").write_text(ISSUE_EXAMPLE.replace("data/alpha.csv", str(HOSPITALS["h1"])))
    with pytest.raises(ConfigError, match=r"certs/ca\.pem"):
        Agent(load_silo_config(tmp_path / "silo.toml"))
    assert not (tmp_path / "ledger.sqlite").exists()  # nothing was created


def test_an_agent_refuses_a_ledger_of_another_accountant(tmp_path: Path) -> None:
    text = (ISSUE_EXAMPLE.split("[tls]")[0].replace('name = "alpha"\n', 'name = "alpha"\ninsecure = true\n')
            + f'[[datasets]]\nname = "patients"\npath = "{HOSPITALS["h1"]}"\nbudget = {{ epsilon = 10.0 }}\n'
            '[ledger]\npath = "ledger.sqlite"\naccountant = "pld"\n')
    (tmp_path / "silo.toml").write_text(text)
    PrivacyLedger(tmp_path / "ledger.sqlite", silo="alpha", accountant="rdp").close()
    with pytest.raises(ConfigError, match="key 'ledger.accountant': 'pld', but ledger .* was created with the 'rdp'"):
        Agent(load_silo_config(tmp_path / "silo.toml"))
    (tmp_path / "silo.toml").write_text(text.replace('path = "ledger.sqlite"', 'path = "fresh.sqlite"'))
    with Agent(load_silo_config(tmp_path / "silo.toml")) as agent:  # a new ledger takes the configured one
        assert agent.ledger.accountant == "pld"


# -- reports and schemas ----------------------------------------------------------------------------
def test_declared_schema_has_columns_but_never_rows() -> None:
    s = DeclaredSchema("h2", ("a", "b"), {"a": (0.0, 1.0)})
    assert s.columns() == ["a", "b"] and s.public_bounds() == {"a": (0.0, 1.0)}
    with pytest.raises(ProtocolError, match="never leave it"):
        s.load()


def test_a_silo_report_travels_without_its_model_or_its_own_metrics() -> None:
    ev = GaussianEvent(1.1, 0.1, 20)
    report = SiloReport(silo="h2", status="completed", params=np.ones(31), events=(ev,), rounds_contributed=(1, 2),
                        dp={"level": "record", "noise_multiplier": 1.1}, evaluation=({"round": 2, "accuracy": 0.9},),
                        local_evaluation={"accuracy": 0.95, "rows": 50.0})
    wire = outgoing("horizontal", "silo", report)
    assert set(wire) == {"status", "reason", "rounds_contributed", "events", "dp"}
    assert codec.decode(codec.encode(wire)) == wire  # codec-safe, no pickle
    back = incoming("horizontal", "silo", "h2", codec.decode(codec.encode(wire)))
    assert back.events == (ev,) and back.rounds_contributed == (1, 2) and back.local_evaluation is None
    assert back.evaluation == () and back.params.size == 0
    agg = AggregatorReport("completed", ({"round": 1, "status": "ok", "contributors": ["h1"], "failures": [],
                                          "withdrawn": [], "topup": False, "reason": ""},))
    assert incoming("horizontal", "aggregator", "aggregator", outgoing("horizontal", "aggregator", agg)).rounds == agg.rounds


@pytest.mark.parametrize(
    "bad",
    [
        {"status": "completed", "reason": "", "rounds_contributed": [1], "events": [{"kind": "exec", "code": "x"}], "dp": None},
        {"status": "hacked", "reason": "", "rounds_contributed": [], "events": [], "dp": None},
        {"status": "completed", "reason": "", "rounds_contributed": [], "events": [], "dp": None, "params": [1.0]},
        {"status": "completed", "reason": "", "rounds_contributed": ["1"], "events": [], "dp": None},
        [1, 2],
    ],
)
def test_malformed_reports_from_peers_are_refused(bad: Any) -> None:
    with pytest.raises(ProtocolError, match="malformed report from silo 'h2'"):
        incoming("horizontal", "silo", "h2", bad)


def test_an_outcome_names_its_party_and_its_error_is_one_line() -> None:
    wire = {"party": "h2", "status": "failed", "seconds": 1.0, "bytes_sent": 0, "report": None,
            "error": {"step": "round 3", "type": "DataError", "message": "bad\nfile"}}
    out = PartyOutcome.from_wire(wire, party="h2")
    assert out.error is not None and out.error.line() == "silo 'h2' failed at round 3: DataError: bad file"
    with pytest.raises(ProtocolError, match="names party 'h2'"):
        PartyOutcome.from_wire(wire, party="h1")  # no party reports for another


def test_party_table_maps_each_party_to_the_agent_of_its_name() -> None:
    from fedsilo.protocols.horizontal import protocol
    from fedsilo.silos import agent

    cfg = parse_config(tomllib.loads(_job(dp=False)), source="job.toml")
    assert party_table(cfg) == {"h1": "silo", "h2": "silo", "aggregator": "aggregator"}
    assert agent.AGGREGATOR == protocol.AGGREGATOR  # the agent named like the protocols' aggregator plays it


def test_a_job_may_lower_a_budget_and_the_lower_value_holds(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "l.sqlite", silo="h1")
    ledger.register_dataset("patients", epsilon=10.0, delta=1e-5)
    audit = AuditLog(tmp_path / "audit.jsonl", silo="h1")
    capped = AgentLedger(ledger, job="j", audit=audit, cap=2.0)
    kw = dict(job="j", round=1, protocol="fedavg", mechanism={"name": "gaussian"}, recipient="aggregator",
              relation=ADD_REMOVE_RECORD)
    with capped.charge("patients", GaussianEvent(3.0, 1.0, 1), **kw):
        pass
    with pytest.raises(BudgetExceededError, match=r"budget epsilon=2"):
        with capped.charge("patients", GaussianEvent(0.5, 1.0, 10), **kw):
            pass
    assert len(ledger.entries("patients")) == 1  # the refused release wrote nothing
    audit.close()
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [x["event"] for x in lines] == ["charge"] and lines[0]["dataset"] == "patients"
    ledger.close()


# -- three agents in this process -------------------------------------------------------------------------
def _bounds() -> str:
    return "[data.bounds]\n" + "\n".join(f'"{k}" = [{lo!r}, {hi!r}]' for k, (lo, hi) in BOUNDS.items())


def _job(*, dp: bool, rounds: int = 2, silos: dict[str, str] | None = None, budgets: dict[str, float] | None = None,
         extra: str = "") -> str:
    silos = silos or {"h1": "patients", "h2": "patients"}
    parts = [f"""
[federation]
name = "hosp"
task = "horizontal"
seed = 3
min_silos = 2
round_timeout = 20.0
[crypto]
backend = "plain"
insecure = true
[training]
rounds = {rounds}
batch_size = 32
[data]
label = "target"
{extra}"""]
    if dp:
        parts.append('[privacy]\nepsilon = 3.0\nlevel = "record"\n')
    for name, data in silos.items():
        budget = f"\nbudget = {{ epsilon = {budgets[name]} }}" if budgets and name in budgets else ""
        parts.append(f'[[silos]]\nname = "{name}"\ndata = "{data}"{budget}\n')
    if dp:
        parts.append(_bounds())
    return "\n".join(parts)


def _threads(job: str, tmp: Path) -> dict[str, Any]:
    """The same job on the threads engine, each silo's dataset as a file path."""
    data = tomllib.loads(job)
    for s in data["silos"]:
        s["data"] = str(HOSPITALS[s["name"]])
    return run_job(parse_config(data, source="threads.toml"), ledger_dir=tmp)


class Federation:
    """Writes silo.toml files for h1, h2 and the aggregator, starts their agents on ephemeral
    ports and writes each one's peers' real ports back into the files (agents re-read the
    addresses for every job)."""

    def __init__(self, root: Path, pki: Path, names: list[str] = NAMES, *,
                 unlisted: dict[str, set[str]] | None = None) -> None:
        self.root, self.pki, self.names = root, pki, list(names)
        self.unlisted = unlisted or {}  # silo -> peers left off its allow-list
        self.agents: dict[str, Agent] = {}

    def toml(self, name: str, ports: dict[str, int], datasets: dict[str, Path]) -> Path:
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        peers = "\n".join(f'{p} = "127.0.0.1:{ports.get(p, 1)}"' for p in self.names
                          if p != name and p not in self.unlisted.get(name, ()))
        ds = "".join(f'[[datasets]]\nname = "{n}"\npath = "{p}"\nbudget = {{ epsilon = 10.0, delta = 1e-5 }}\n'
                     # these test jobs also run without DP (the operator's opt-in), except on "strict"
                     + ('allow_no_dp = true\n' if n != "strict" else '')
                     for n, p in datasets.items())
        (d / "silo.toml").write_text(
            f'[silo]\nname = "{name}"\nlisten = "127.0.0.1:0"\n[tls]\nca = "{self.pki}/ca.pem"\n'
            f'cert = "{self.pki}/{name}/cert.pem"\nkey = "{self.pki}/{name}/key.pem"\n[peers]\n{peers}\n{ds}'
            '[ledger]\npath = "ledger.sqlite"\n'
        )
        return d / "silo.toml"

    def start(self, datasets: dict[str, dict[str, Path]]) -> None:
        paths = {n: self.toml(n, {}, datasets.get(n, {})) for n in self.names}
        for n in self.names:
            self.agents[n] = Agent(load_silo_config(paths[n]), config_path=paths[n], ping_interval=0.5)
        ports = {n: int(a.address.rsplit(":", 1)[1]) for n, a in self.agents.items()}
        for n in self.names:
            self.toml(n, ports, datasets.get(n, {}))

    def client(self, name: str = "h1") -> AgentClient:
        return AgentClient.for_silo(load_silo_config(self.root / name / "silo.toml"))

    def run(self, job: str, name: str = "h1") -> dict[str, Any]:
        with self.client(name) as c:
            reply = c.submit(job, source="job.toml")
            if reply["status"] != "accepted":
                return reply
            st = c.wait(reply["job"], timeout=100)
            return {**c.results(reply["job"]), "status": st["state"], "job": reply["job"]}

    def audit(self, name: str) -> list[dict[str, Any]]:
        return [json.loads(x) for x in (self.root / name / "ledger.audit.jsonl").read_text().splitlines()]

    def close(self) -> None:
        for a in self.agents.values():
            a.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pki")
    init_federation(root / "fed", federation="hospitals", silos=[*NAMES, "mallory"])
    init_federation(root / "evil", federation="hospitals", silos=["h2"])
    return {"fed": root / "fed", "evil": root / "evil"}


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory, pki: dict[str, Path]) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("agents")
    broken = root / "broken.csv"  # the job's columns, a value no feature can hold (found when h2 loads its rows)
    frame = pd.read_csv(HOSPITALS["h2"]).astype({"mean area": object})
    frame.loc[7, "mean area"] = "n/a"
    frame.to_csv(broken, index=False)
    pd.read_csv(HOSPITALS["h2"]).drop(columns=["mean area"]).to_csv(root / "narrow.csv", index=False)
    f = Federation(root, pki["fed"])
    try:
        f.start({"h1": {"patients": HOSPITALS["h1"]},
                 "h2": {"patients": HOSPITALS["h2"], "broken": broken, "narrow": root / "narrow.csv",
                        "strict": HOSPITALS["h2"]}})
        yield f
    finally:
        f.close()


@pytest.mark.parametrize("dp", [False, True], ids=["no-dp", "record-dp"])
@pytest.mark.network
@pytest.mark.timeout(180)
def test_three_agents_equal_the_threads_engine(fed: Federation, dp: bool, tmp_path: Path) -> None:
    job = _job(dp=dp)
    got = fed.run(job)
    assert got["status"] == "completed", got
    res, ref = got["results"], json.loads(json.dumps(_threads(job, tmp_path), default=str))
    if dp:  # the noise is secret (OS CSPRNG): the same rounds and contributors, the same epsilon
        assert [(r["round"], r["silos"]) for r in res["rounds"]] == [(r["round"], r["silos"]) for r in ref["rounds"]]
    else:  # no noise: the same model, the same released metrics
        assert res["rounds"] == ref["rounds"] and res["final"] == pytest.approx(ref["final"], nan_ok=True)
    assert res["engine"] == "agents" and res["transport"] == "grpc+mtls" and set(res["party_seconds"]) == set(NAMES)
    assert set(res["silo_metrics"]) == {"h1"}  # the submitter's own held-out metrics only
    assert res["simulation_metrics"] == {}
    if dp:
        assert res["epsilon"] == ref["epsilon"] and res["epsilon"]["h2"]["epsilon"] > 0
        for name in ("h1", "h2"):  # every release charged before it left, in the operator's ledger
            with PrivacyLedger.open(fed.root / name / "ledger.sqlite") as ledger:
                ledger.verify()
                entries = [e for e in ledger.entries("patients") if e.job == got["job"]]
                assert ledger.budget("patients") == (10.0, 1e-5)
            charges = [a for a in fed.audit(name) if a["event"] == "charge" and a["job"] == got["job"]]
            assert len(charges) == len(entries) > 0
    else:
        assert res["dp"] is None


@pytest.mark.network
@pytest.mark.timeout(120)
def test_jobs_against_local_policy_are_refused_with_the_reason_and_agents_keep_serving(fed: Federation) -> None:
    missing = fed.run(_job(dp=False, silos={"h1": "patients", "h2": "nope"}))
    assert missing["status"] == "refused"
    (r,) = missing["reasons"]
    assert r["silo"] == "h2" and "has no dataset 'nope' (its datasets: patients, broken, narrow, strict)" in r["reason"]

    above = fed.run(_job(dp=True, budgets={"h2": 50.0}))
    (r,) = above["reasons"]
    assert r["silo"] == "h2" and "above the operator's budget epsilon=10" in r["reason"] and r["kind"] == "policy"

    stranger = fed.run(_job(dp=False, silos={"h1": "patients", "h2": "patients", "h3": "patients"}))
    (r,) = stranger["reasons"]  # the submitter's own agent refuses first
    assert r["silo"] == "h1" and "['h3'] is not on the allow-list of silo 'h1'" in r["reason"]

    lower = fed.run(_job(dp=True, budgets={"h2": 2.0}))  # a lower budget is fine, but 3.0 does not fit under it
    (r,) = lower["reasons"]
    # the submitter learns that it does not fit, not the silo's ledger totals (they stay in its audit log)
    assert r["silo"] == "h2" and "target epsilon=3 does not fit in the dataset's remaining budget" in r["reason"]
    assert "spent" not in r["reason"] and any(a["event"] == "budget_refused" for a in fed.audit("h2"))

    no_dp = fed.run(_job(dp=False, silos={"h1": "patients", "h2": "strict"}))  # no opt-in: exact releases refused
    (r,) = no_dp["reasons"]
    assert r["silo"] == "h2" and "runs no job without [privacy] on dataset 'strict'" in r["reason"]

    pld = fed.run(_job(dp=True).replace('level = "record"', 'level = "record"\naccountant = "pld"'))
    (r,) = pld["reasons"]  # calibrated with PLD, charged with RDP: the plan's epsilon would not be the ledger's
    assert r["silo"] == "h1" and "key 'privacy.accountant': the job is calibrated with 'pld'" in r["reason"]

    offers = [a for a in fed.audit("h2") if a["event"] == "job_offer" and a["decision"] == "refused"]
    assert any("nope" in a["reason"] for a in offers) and any("above the operator's" in a["reason"] for a in offers)
    assert fed.run(_job(dp=False, rounds=1))["status"] == "completed"  # still serving


@pytest.mark.network
@pytest.mark.timeout(120)
def test_a_remote_data_error_reaches_the_submitter_with_silo_step_and_message(fed: Federation) -> None:
    got = fed.run(_job(dp=False, silos={"h1": "patients", "h2": "broken"}))
    assert got["status"] == "failed"
    assert got["error"].startswith("silo 'h2' failed at start: DataError: ")
    # the remote silo's data error names its kind, not its data (values, IDs, paths stay in its audit log)
    assert "its data failed the job's checks" in got["error"] and "broken.csv" not in got["error"]
    failed = [a for a in fed.audit("h2") if a["event"] == "party_failed"]
    assert failed and "column 'mean area' has 1 missing/NaN/infinite value(s)" in failed[-1]["message"], failed[-1]
    assert "\n" not in got["error"]
    # columns that differ between silos: seen in the declared schemas, refused before any party starts
    got = fed.run(_job(dp=False, silos={"h1": "patients", "h2": "narrow"}))
    assert got["status"] == "refused", got
    assert "columns differ from those of silo 'h1': only at 'h2': [], missing at 'h2': ['mean area']" in got["reasons"][0]["reason"]
    assert fed.run(_job(dp=False, rounds=1))["status"] == "completed"


@pytest.mark.network
@pytest.mark.timeout(60)
def test_strangers_and_peers_cannot_use_an_agents_operator_methods(fed: Federation, pki: dict[str, Path]) -> None:
    h1 = fed.agents["h1"]
    fedd = pki["fed"]
    mallory = AgentClient(me="mallory", peer="h1", address=h1.address,
                          tls=load_tls(fedd / "ca.pem", fedd / "mallory" / "cert.pem", fedd / "mallory" / "key.pem"))
    with mallory, pytest.raises(PeerRejectedError, match="PERMISSION_DENIED: .*'mallory' is not on the allow-list"):
        mallory.submit(_job(dp=False))
    h2 = AgentClient(me="h2", peer="h1", address=h1.address,
                     tls=load_tls(fedd / "ca.pem", fedd / "h2" / "cert.pem", fedd / "h2" / "key.pem"))
    with h2, pytest.raises(PeerRejectedError, match="for the silo's own operator only, not for 'h2'"):
        h2.submit(_job(dp=False))  # a peer cannot submit through another silo's agent
    evil = pki["evil"]
    other_ca = AgentClient(me="h2", peer="h1", address=h1.address,
                           tls=load_tls(evil / "ca.pem", evil / "h2" / "cert.pem", evil / "h2" / "key.pem"))
    with other_ca, pytest.raises(PeerRejectedError, match="TLS handshake failed"):
        other_ca.call("List", {}, attempts=2)
    refused = [a for a in fed.audit("h1") if a["event"] == "peer_refused"]
    assert any(a["peer"] == "mallory" for a in refused) and any(a["peer"] == "h2" for a in refused)
    with fed.client("h1") as me:
        assert me.health()["status"] == "serving"
        assert isinstance(me.jobs(), list)
    # the operator's identity may not speak for a peer on the mailbox
    creds = grpc.ssl_channel_credentials(root_certificates=h1.tls.ca, private_key=h1.tls.key, certificate_chain=h1.tls.cert)
    with grpc.secure_channel(h1.address, creds, options=[("grpc.ssl_target_name_override", "h1")]) as ch:
        with pytest.raises(grpc.RpcError) as err:
            ch.unary_unary(f"/{CONTROL_SERVICE}/Offer")(codec.encode({"job": "x"}), timeout=5)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.network
@pytest.mark.timeout(60)
def test_an_agent_runs_built_in_models_only(fed: Federation) -> None:
    got = fed.run(_job(dp=False, extra='[model]\nkind = "os:system"\n'))
    (r,) = got["reasons"]
    assert r["silo"] == "h1" and "names a Python class; an agent runs built-in models only" in r["reason"]


@pytest.mark.network
@pytest.mark.timeout(60)
def test_an_agent_runs_the_built_in_training_loop_only(fed: Federation) -> None:
    got = fed.run(_job(dp=False, extra='[model]\ntrainer = "os:system"\n'))
    (r,) = got["reasons"]
    assert r["silo"] == "h1" and "key 'model.trainer': 'os:system' names a Python function" in r["reason"]


@pytest.mark.network
@pytest.mark.timeout(120)
def test_a_statistics_job_across_agents_equals_the_threads_engine(fed: Federation, tmp_path: Path) -> None:
    job = """
[federation]
name = "stats"
task = "statistics"
[crypto]
backend = "plain"
insecure = true
[privacy]
epsilon = 1.0
[statistics]
columns = ["mean radius"]
queries = ["count", "mean"]
range = { "mean radius" = [5.0, 30.0] }
[[silos]]
name = "h1"
data = "patients"
[[silos]]
name = "h2"
data = "patients"
"""
    got = fed.run(job)
    assert got["status"] == "completed", got
    ref = _threads(job, tmp_path)
    res = got["results"]
    assert res["epsilon"] == ref["epsilon"] and res["silos"] == ref["silos"] == ["h1", "h2"]
    assert res["statistics"]["mean radius"]["count"] == pytest.approx(ref["statistics"]["mean radius"]["count"], abs=60)
    assert fed.run(job, name="aggregator")["reasons"][0]["reason"].startswith("a statistics job is submitted through a silo")


@pytest.mark.network
@pytest.mark.timeout(180)
def test_the_bank_vertical_job_across_agents_spends_the_threads_epsilon(tmp_path: Path) -> None:
    bank = ROOT / "examples" / "bank_vertical"
    names = ["bank", "partner", "arbiter"]
    init_federation(tmp_path / "pki", federation="banks", silos=names)
    text = (bank / "federation.toml").read_text()
    text = text.replace('data = "bank.csv"', 'data = "customers"').replace('data = "partner.csv"', 'data = "customers"')
    text = text.replace('backend = "ckks"', 'backend = "plain"\ninsecure = true').replace("rounds = 5 ", "rounds = 1 ")
    f = Federation(tmp_path, tmp_path / "pki", names)
    try:
        f.start({"bank": {"customers": bank / "bank.csv"}, "partner": {"customers": bank / "partner.csv"}})
        assert f.run(text, name="partner")["reasons"][0]["reason"].startswith("a vertical job is submitted through its guest")
        got = f.run(text, name="bank")
        assert got["status"] == "completed", got
    finally:
        f.close()
    data = tomllib.loads(text)
    for s in data["silos"]:
        if "data" in s:
            s["data"] = str(bank / f"{s['name']}.csv")
    ref = run_job(parse_config(data, source="threads.toml"), ledger_dir=tmp_path / "threads")
    res = got["results"]
    assert {p: e["epsilon"] for p, e in res["epsilon"].items()} == {p: e["epsilon"] for p, e in ref["epsilon"].items()}
    assert res["psi"] == ref["psi"] and res["rows"] == ref["rows"]
    assert res["epsilon"]["partner"]["ledger_spent"] is None  # the host's ledger stays with the host
    assert res["simulation_metrics"] == {} and res["engine"] == "agents"


@pytest.mark.parametrize("datasets, message", [
    ('[[datasets]]\nname = "p"\npath = "a.xlsx"\nbudget = { epsilon = 1.0 }\n',
     "key 'datasets[0].path': not a table file fedsilo reads: expected a name ending in .csv, .parquet, .pq (got 'a.xlsx')"),
    ('[[datasets]]\nname = "Patients"\npath = "a.csv"\nbudget = { epsilon = 1.0 }\n'
     '[[datasets]]\nname = "patients"\npath = "b.csv"\nbudget = { epsilon = 1.0 }\n',
     "dataset names must be unique, ignoring case; repeated: ['Patients', 'patients']"),
])
def test_silo_toml_refuses_unreadable_dataset_files_and_case_twins(datasets: str, message: str) -> None:
    text = '[silo]\nname = "h1"\nlisten = "127.0.0.1:0"\ninsecure = true\n' + datasets
    with pytest.raises(ConfigError) as err:
        parse_silo_config(tomllib.loads(text), source="silo.toml")
    assert message in str(err.value) and "silo.toml" in str(err.value)


@pytest.mark.network
@pytest.mark.timeout(180)
def test_every_party_must_be_allow_listed_and_a_job_inbox_admits_only_its_senders(tmp_path: Path) -> None:
    """h2 and h3 never exchange a message in a horizontal job, but each receives the sums of the
    other's data (and, with a shared key, could decrypt its ciphertexts): an agent whose
    allow-list leaves out h3 refuses the job. With full allow-lists the job runs, and h2's job
    inbox admits only the parties that send to it (the aggregator and the key leader h1), not h3."""
    names = ["h1", "h2", "h3", "aggregator"]
    init_federation(tmp_path / "pki", federation="hospitals", silos=names)
    silos = {"h1": "patients", "h2": "patients", "h3": "patients"}
    datasets = {n: {"patients": HOSPITALS["h1" if n == "h3" else n]} for n in ("h1", "h2", "h3")}
    f = Federation(tmp_path / "narrow", tmp_path / "pki", names, unlisted={"h2": {"h3"}})
    try:
        f.start(datasets)
        (r,) = f.run(_job(dp=False, rounds=1, silos=silos))["reasons"]
        assert r["silo"] == "h2" and "['h3'] is not on the allow-list of silo 'h2'" in r["reason"]
    finally:
        f.close()
    f = Federation(tmp_path / "full", tmp_path / "pki", names)
    admitted: list[frozenset[str]] = []
    try:
        f.start(datasets)
        server = f.agents["h2"].server
        register = server.register_job
        server.register_job = lambda job, peers: (admitted.append(frozenset(peers)), register(job, peers))[1]
        got = f.run(_job(dp=False, rounds=1, silos=silos))
        assert got["status"] == "completed", got
        assert got["results"]["rounds"][0]["silos"] == ["h1", "h2", "h3"]
    finally:
        f.close()
    assert admitted and set(admitted) == {frozenset({"h1", "aggregator"})}, admitted


def test_a_second_agent_on_the_same_ledger_is_refused(tmp_path: Path) -> None:
    text = (ISSUE_EXAMPLE.split("[tls]")[0].replace('name = "alpha"\n', 'name = "alpha"\ninsecure = true\n')
            + f'[[datasets]]\nname = "patients"\npath = "{HOSPITALS["h1"]}"\nbudget = {{ epsilon = 10.0 }}\n')
    (tmp_path / "silo.toml").write_text(text)
    with Agent(load_silo_config(tmp_path / "silo.toml")) as first:
        with pytest.raises(ConfigError, match="another agent already serves ledger .*ledger.sqlite"):
            Agent(load_silo_config(tmp_path / "silo.toml"))
        assert json.loads(load_silo_config(tmp_path / "silo.toml").state_path.read_text())["address"] == first.address
    with Agent(load_silo_config(tmp_path / "silo.toml")):  # released when the first one stopped
        pass
