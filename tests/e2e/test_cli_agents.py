"""End to end across silo agent processes: `fedsilo silo start` for two hospitals and the
aggregator (mTLS, 127.0.0.1, ephemeral ports: each agent writes its bound address to its state
file), `fedsilo job submit|status|results|list` through a hospital's own agent, refusals with a
reason, a remote party's error, strangers refused and audited, SIGTERM and SIGKILL mid-job
with the ledgers consistent, restarts and new jobs. Every process a test starts is ended by
that test's fixture (terminate, wait, kill)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pandas as pd
import pytest
from typer.testing import CliRunner

from fedsilo.cli import app, to_json
from fedsilo.privacy.ledger import PrivacyLedger
from fedsilo.protocols import codec
from fedsilo.silos.agent import CONTROL_SERVICE, AgentClient
from fedsilo.silos.certs import init_federation
from fedsilo.silos.config import parse_config
from fedsilo.silos.data import load_builtin
from fedsilo.silos.runner import run_job
from fedsilo.silos.silo_config import load_silo_config

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "agents"
FEDSILO = Path(sys.executable).parent / "fedsilo"
BOUNDS = load_builtin("sklearn:breast_cancer").bounds
runner = CliRunner()


def cli(*args: Any) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def job_toml(*, dp: bool = False, rounds: int = 2, silos: dict[str, str] | None = None, budgets: dict[str, float] | None = None,
             min_silos: int = 2, round_timeout: float = 20.0) -> str:
    silos = silos or {"h1": "patients", "h2": "patients"}
    out = [f'[federation]\nname = "hosp"\ntask = "horizontal"\nseed = 5\nmin_silos = {min_silos}\n'
           f'round_timeout = {round_timeout}\n[crypto]\nbackend = "plain"\ninsecure = true\n'
           f'[training]\nrounds = {rounds}\nbatch_size = 32\n[data]\nlabel = "target"\n']
    if dp:
        out.append('[privacy]\nepsilon = 3.0\nlevel = "record"\n')
    for name, data in silos.items():
        budget = f"\nbudget = {{ epsilon = {budgets[name]} }}" if budgets and name in budgets else ""
        out.append(f'[[silos]]\nname = "{name}"\ndata = "{data}"{budget}\n')
    if dp:
        out.append("[data.bounds]\n" + "\n".join(f'"{k}" = [{lo!r}, {hi!r}]' for k, (lo, hi) in BOUNDS.items()))
    return "\n".join(out)


class AgentProcess:
    """One `fedsilo silo start` process; ready once its state file names its pid and address."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.cfg = load_silo_config(config)
        self.log = config.with_name(f"agent-{time.time_ns()}.log")
        self._log = self.log.open("wb")
        self.proc = subprocess.Popen([str(FEDSILO), "silo", "start", "--config", str(config)], stdout=self._log,
                                     stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    def ready(self, timeout: float = 90.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                state = json.loads(self.cfg.state_path.read_text())
                if state["pid"] == self.proc.pid:
                    return str(state["address"])
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"agent not ready after {timeout}s: {self.log.read_text()[-3000:]}")

    def end(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.wait()

    def wait(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


class Cluster:
    """silo.toml files for the agents of a federation and their processes."""

    def __init__(self, root: Path, pki: Path, datasets: dict[str, dict[str, Path]],
                 env: dict[str, str] | None = None) -> None:
        self.root, self.pki, self.datasets, self.env = root, pki, datasets, env
        self.names = list(datasets)
        self.procs: dict[str, AgentProcess] = {}
        self.ports: dict[str, int] = {}

    def write(self, name: str) -> Path:
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        peers = "\n".join(f'{p} = "127.0.0.1:{self.ports.get(p, 1)}"' for p in self.names if p != name)
        ds = "".join(f'[[datasets]]\nname = "{n}"\npath = "{p}"\nbudget = {{ epsilon = 10.0, delta = 1e-5 }}\n'
                     # these test jobs also run without DP (the operator's opt-in)
                     'allow_no_dp = true\n'
                     for n, p in self.datasets[name].items())
        (d / "silo.toml").write_text(
            f'[silo]\nname = "{name}"\nlisten = "127.0.0.1:0"\n[tls]\nca = "{self.pki}/ca.pem"\n'
            f'cert = "{self.pki}/{name}/cert.pem"\nkey = "{self.pki}/{name}/key.pem"\n[peers]\n{peers}\n{ds}'
            '[ledger]\npath = "ledger.sqlite"\n'
        )
        return d / "silo.toml"

    def start(self, *names: str) -> None:
        for n in names:
            self.procs[n] = AgentProcess(self.write(n), self.env)
        for n in names:
            self.ports[n] = int(self.procs[n].ready().rsplit(":", 1)[1])
        for n in self.names:  # every agent re-reads its peers' addresses for each job
            self.write(n)

    def config(self, name: str = "h1") -> Path:
        return self.root / name / "silo.toml"

    def client(self, name: str = "h1") -> AgentClient:
        return AgentClient.for_silo(load_silo_config(self.config(name)))

    def audit(self, name: str) -> list[dict[str, Any]]:
        return [json.loads(x) for x in (self.root / name / "ledger.audit.jsonl").read_text().splitlines()]

    def close(self) -> None:
        for p in self.procs.values():  # all at once, then wait for each (kill if it hangs)
            if p.proc.poll() is None:
                p.proc.terminate()
        for p in self.procs.values():
            p.end()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pki")
    init_federation(root / "fed", federation="hospitals", silos=["h1", "h2", "h3", "aggregator", "mallory"])
    init_federation(root / "evil", federation="hospitals", silos=["h2"])
    return {"fed": root / "fed", "evil": root / "evil"}


def _hospitals(root: Path, *, third: bool = False) -> dict[str, dict[str, Path]]:
    broken = root / "broken.csv"  # the job's columns, a missing value (found when h2's party loads its rows)
    frame = pd.read_csv(DATA / "city_general.csv").astype({"worst symmetry": object})
    frame.loc[3, "worst symmetry"] = ""
    frame.to_csv(broken, index=False)
    narrow = root / "narrow.csv"  # a column short: seen in its declared schema, refused at submission
    pd.read_csv(DATA / "city_general.csv").drop(columns=["worst symmetry"]).to_csv(narrow, index=False)
    out = {"h1": {"patients": DATA / "st_marys.csv"},
           "h2": {"patients": DATA / "city_general.csv", "broken": broken, "narrow": narrow}}
    if third:
        both = pd.concat([pd.read_csv(DATA / "st_marys.csv"), pd.read_csv(DATA / "city_general.csv")])
        both.sample(n=200, random_state=1).to_csv(root / "h3.csv", index=False)
        out["h3"] = {"patients": root / "h3.csv"}
    return {**out, "aggregator": {}}


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory, pki: dict[str, Path]) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("trio")
    # gRPC's log silenced: the agents still audit the failed TLS handshake (_strangers_are_refused_and_audited)
    c = Cluster(root, pki["fed"], _hospitals(root), env={"GRPC_VERBOSITY": "NONE"})
    try:
        c.start("h1", "h2", "aggregator")
        yield c
    finally:
        c.close()


@pytest.fixture
def cluster(tmp_path: Path, pki: dict[str, Path]) -> Iterator[Any]:
    made: list[Cluster] = []

    def make(*, third: bool = False) -> Cluster:
        c = Cluster(tmp_path, pki["fed"], _hospitals(tmp_path, third=third))
        made.append(c)
        c.start(*c.names)
        return c

    try:
        yield make
    finally:
        for c in made:
            c.close()


def _threads(job: str, tmp: Path) -> dict[str, Any]:
    data = tomllib.loads(job)
    for s in data["silos"]:
        s["data"] = str(DATA / ("st_marys.csv" if s["name"] == "h1" else "city_general.csv"))
    return json.loads(to_json(run_job(parse_config(data, source="threads.toml"), ledger_dir=tmp / "threads")))


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.timeout(200)
def test_jobs_across_three_agent_processes(trio: Cluster, tmp_path: Path, pki: dict[str, Path]) -> None:
    """The hospitals' job through h1's agent equals the threads engine; refused jobs show every
    reason (exit 2); a remote DataError shows the silo (exit 1); strangers are refused and
    audited while the agent keeps serving."""
    job = tmp_path / "job.toml"
    job.write_text(job_toml())
    out = tmp_path / "results.json"
    start = time.perf_counter()
    res = cli("job", "submit", job, "--silo-config", trio.config("h1"), "--json", out)
    wall = time.perf_counter() - start
    assert res.exit_code == 0, res.output
    assert "accepted by every silo" in res.output and "engine agents, transport grpc+mtls" in res.output
    got = json.loads(out.read_text())
    start = time.perf_counter()
    ref = _threads(job.read_text(), tmp_path)
    threads_wall = time.perf_counter() - start
    assert got["rounds"] == ref["rounds"] and got["final"] == ref["final"] and len(got["rounds"]) == 2
    assert got["engine"] == "agents" and got["transport"] == "grpc+mtls"
    assert set(got["party_seconds"]) == {"h1", "h2", "aggregator"} and set(got["silo_metrics"]) == {"h1"}
    print(f"\nagents: job {got['seconds']:.2f}s (submit to results {wall:.2f}s); threads: job {ref['seconds']:.2f}s "
          f"(run_job {threads_wall:.2f}s)")
    listed = cli("job", "list", "--silo-config", trio.config("h1"), "--json")
    assert listed.exit_code == 0, listed.output
    assert {"job": got["job"], "state": "completed", "task": "horizontal"}.items() <= next(
        j for j in json.loads(listed.output) if j["job"] == got["job"]).items()
    assert cli("job", "list", "--silo-config", trio.config("h1")).exit_code == 0
    status = cli("job", "status", got["job"], "--silo-config", trio.config("h1"))
    assert status.exit_code == 0 and "completed" in status.output and "h2: done" in status.output
    again = cli("job", "results", got["job"], "--silo-config", trio.config("h1"), "--json", tmp_path / "again.json")
    assert again.exit_code == 0 and json.loads((tmp_path / "again.json").read_text()) == got

    # refusals: every reason at the submitter, exit 2
    job.write_text(job_toml(dp=True, budgets={"h2": 50.0}, silos={"h1": "patients", "h2": "patients"}))
    res = cli("job", "submit", job, "--silo-config", trio.config("h1"), "-q")
    assert res.exit_code == 2, res.output
    assert "error: job refused: silo 'h2': " in res.output and "above the operator's budget epsilon=10" in res.output
    assert "Traceback" not in res.output
    job.write_text(job_toml(silos={"h1": "patients", "h2": "patients", "h9": "patients"}))
    res = cli("job", "submit", job, "--silo-config", trio.config("h1"), "-q")
    assert res.exit_code == 2 and "['h9'] is not on the allow-list of silo 'h1'" in res.output
    job.write_text(job_toml(silos={"h1": "patients", "h2": "narrow"}))
    res = cli("job", "submit", job, "--silo-config", trio.config("h1"), "-q")
    assert res.exit_code == 2 and "missing at 'h2': ['worst symmetry']" in res.output, res.output

    # a remote party's error: the silo, the step and the message on one line, exit 1
    job.write_text(job_toml(silos={"h1": "patients", "h2": "broken"}))
    res = cli("job", "submit", job, "--silo-config", trio.config("h1"), "-q")
    assert res.exit_code == 1, res.output
    line = next(x for x in res.output.splitlines() if x.startswith("error: "))
    assert "silo 'h2' failed at start: DataError: its data failed the job's checks" in line
    assert "Traceback" not in res.output
    _strangers_are_refused_and_audited(trio, pki)


def _strangers_are_refused_and_audited(trio: Cluster, pki: dict[str, Path]) -> None:
    address = f"127.0.0.1:{trio.ports['h1']}"

    def call(silo_dir: Path, name: str) -> grpc.StatusCode:
        creds = grpc.ssl_channel_credentials(root_certificates=(pki["fed"] / "ca.pem").read_bytes(),
                                             private_key=(silo_dir / name / "key.pem").read_bytes(),
                                             certificate_chain=(silo_dir / name / "cert.pem").read_bytes())
        with grpc.secure_channel(address, creds, options=[("grpc.ssl_target_name_override", "h1")]) as ch:
            try:
                ch.unary_unary(f"/{CONTROL_SERVICE}/List")(codec.encode({}), timeout=5)
            except grpc.RpcError as exc:
                return exc.code()
        return grpc.StatusCode.OK

    assert call(pki["fed"], "mallory") == grpc.StatusCode.PERMISSION_DENIED  # same CA, not on the allow-list
    assert call(pki["evil"], "h2") == grpc.StatusCode.UNAVAILABLE  # another CA: the TLS handshake fails
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        refused = [a for a in trio.audit("h1") if a["event"] == "peer_refused"]
        if any(a["peer"] == "mallory" for a in refused) and any("TLS handshake failed" in a["reason"] for a in refused):
            break
        time.sleep(0.2)
    assert any(a["peer"] == "mallory" and "not on the allow-list" in a["reason"] for a in refused), refused
    assert any("TLS handshake failed" in a["reason"] for a in refused), refused
    health = cli("silo", "health", "--config", trio.config("h1"))
    assert health.exit_code == 0 and json.loads(health.output)["status"] == "serving"


@pytest.mark.network
@pytest.mark.timeout(60)
def test_an_agent_without_certificates_refuses_to_start(tmp_path: Path) -> None:
    toml = tmp_path / "silo.toml"
    toml.write_text('[silo]\nname = "h1"\nlisten = "127.0.0.1:0"\n[peers]\nh2 = "127.0.0.1:7000"\n')
    out = subprocess.run([str(FEDSILO), "silo", "start", "--config", str(toml)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "[tls] (ca, cert, key) is required" in out.stderr and "Traceback" not in out.stderr
    toml.write_text('[silo]\nname = "h1"\nlisten = "0.0.0.0:0"\ninsecure = true\n')
    out = subprocess.run([str(FEDSILO), "silo", "start", "--config", str(toml)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "allowed only on a loopback listen address" in out.stderr
    assert not (tmp_path / "ledger.sqlite").exists()


def _first_round(client: AgentClient, job: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = client.status(job)
        if st["events"]:
            return st["events"][0]
        assert st["state"] == "running", st
        time.sleep(0.05)
    raise AssertionError("no round completed")


def _restart(c: Cluster, name: str) -> None:
    c.procs[name].end()
    c.start(name)


def _verify(ledger: Path) -> None:
    res = cli("privacy", "verify", "--ledger", ledger)
    assert res.exit_code == 0, res.output


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.timeout(220)
def test_sigterm_and_sigkill_mid_job_keep_the_ledgers_consistent_and_restarts_serve(cluster: Any, tmp_path: Path) -> None:
    """SIGTERM: the agent exits 0, the job fails naming it, its ledger verifies. SIGKILL: the
    job stops naming the missing silo, no ledger under-counts (round 1 left h2: its charge is
    in h2's ledger). After each, the restarted agent serves a new job."""
    c = cluster()
    with c.client() as client:
        job = client.submit(job_toml(dp=True, rounds=300), source="job.toml")["job"]
        first = _first_round(client, job)
        assert first["silos"] == ["h1", "h2"]
        c.procs["h2"].proc.send_signal(signal.SIGTERM)
        assert c.procs["h2"].proc.wait(timeout=60) == 0
        st = client.wait(job, timeout=60)
    assert st["state"] == "failed" and st["error"].startswith("silo 'h2' failed at round ")
    assert "is stopping (received SIGTERM)" in st["error"]
    _verify(c.root / "h2" / "ledger.sqlite")
    with PrivacyLedger.open(c.root / "h2" / "ledger.sqlite") as ledger:
        assert any(e.job == job and e.round == 1 for e in ledger.entries("patients"))
    audit = [a["event"] for a in c.audit("h2")]
    assert audit[-1] == "agent_stopped" and "charge" in audit and c.audit("h2")[-1]["ledger_verified"] is True
    assert audit.index("agent_stopping") < audit.index("job_aborted") < len(audit) - 1

    _restart(c, "h2")
    with c.client() as client:
        job = client.submit(job_toml(dp=True, rounds=300), source="job.toml")["job"]
        assert _first_round(client, job)["silos"] == ["h1", "h2"]
        os.kill(c.procs["h2"].proc.pid, signal.SIGKILL)
        c.procs["h2"].proc.wait(timeout=30)
        st = client.wait(job, timeout=90)
    assert st["state"] == "failed" and st["error"].startswith("silo 'h2' is missing: its agent stopped answering")
    assert "(the job needs 2 silos, 1 left); job stopped" in st["error"]
    for name in ("h1", "h2"):  # no under-count: every release that left was charged first
        _verify(c.root / name / "ledger.sqlite")
        with PrivacyLedger.open(c.root / name / "ledger.sqlite") as ledger:
            assert any(e.job == job and e.round == 1 for e in ledger.entries("patients"))

    _restart(c, "h2")
    (tmp_path / "job.toml").write_text(job_toml(rounds=1))
    res = cli("job", "submit", tmp_path / "job.toml", "--silo-config", c.config("h1"), "-q")
    assert res.exit_code == 0, res.output


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.timeout(200)
def test_a_job_continues_per_its_quorum_when_one_of_three_silos_is_killed(cluster: Any, tmp_path: Path) -> None:
    # 60 rounds: enough runway that the kill lands mid-job even when the machine is slow to deliver it
    c = cluster(third=True)
    silos = {"h1": "patients", "h2": "patients", "h3": "patients"}
    with c.client() as client:
        # a round with every silo first (on a loaded machine an early round may be skipped: a
        # party's first training round imports torch), then the kill
        job = client.submit(job_toml(dp=True, rounds=60, silos=silos, round_timeout=15.0), source="job.toml")["job"]
        deadline = time.monotonic() + 120
        while not any(e.get("silos") == ["h1", "h2", "h3"] for e in client.status(job)["events"]):
            assert time.monotonic() < deadline and client.status(job)["state"] == "running", client.status(job)
            time.sleep(0.05)
        os.kill(c.procs["h3"].proc.pid, signal.SIGKILL)
        c.procs["h3"].proc.wait(timeout=30)
        st = client.wait(job, timeout=120)
        assert st["state"] == "completed", st
        res = client.results(job)["results"]
    assert res["rounds"][-1]["silos"] == ["h1", "h2"] and any("h3" in r["silos"] for r in res["rounds"])
    assert any("silo 'h3' went missing during the job" in n for n in res["notes"])
    assert st["parties"]["h3"] == "missing"
    # h3's charges are in its own ledger only: no round shows an epsilon for it, h1's grows
    assert all(r["epsilon"]["h3"] is None for r in res["rounds"]) and res["epsilon"]["h3"]["epsilon"] is None
    # (the job's total adds the final metrics release, charged after the last round)
    assert 0 < res["rounds"][0]["epsilon"]["h1"] < res["rounds"][-1]["epsilon"]["h1"] < res["epsilon"]["h1"]["epsilon"]


def _bank_job(*, backend: str, dp: bool, rounds: int) -> str:
    """The bank example as an agent job: each company names its agent's dataset."""
    text = (ROOT / "examples" / "bank_vertical" / "federation.toml").read_text()
    text = text.replace('data = "bank.csv"', 'data = "customers"').replace('data = "partner.csv"', 'data = "customers"')
    text = text.replace("rounds = 5 ", f"rounds = {rounds} ")
    if backend != "ckks":
        text = text.replace('backend = "ckks"', f'backend = "{backend}"\ninsecure = true')
    if not dp:  # the [privacy] table, up to the next one
        start = text.index("[privacy]")
        text = text[:start] + text[text.index("[training]", start):]
    return text


def _bank_threads(job: str, tmp: Path) -> dict[str, Any]:
    data = tomllib.loads(job)
    for s in data["silos"]:
        if "data" in s:
            s["data"] = str(ROOT / "examples" / "bank_vertical" / f"{s['name']}.csv")
    return json.loads(to_json(run_job(parse_config(data, source="threads.toml"), ledger_dir=tmp / "threads")))


@pytest.fixture
def banks(tmp_path: Path) -> Iterator[Cluster]:
    init_federation(tmp_path / "pki", federation="banks", silos=["bank", "partner", "arbiter"])
    bank = ROOT / "examples" / "bank_vertical"
    c = Cluster(tmp_path / "agents", tmp_path / "pki",
                {"bank": {"customers": bank / "bank.csv"}, "partner": {"customers": bank / "partner.csv"}, "arbiter": {}})
    try:
        c.start(*c.names)
        yield c
    finally:
        c.close()


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_the_bank_vertical_example_across_three_agent_processes(banks: Cluster, tmp_path: Path) -> None:
    """The bank's vertical job submitted through the guest's agent (`fedsilo job submit`),
    the partner and the arbiter each in their own agent process over mTLS. Without DP the model's
    held-out metrics equal the threads engine's; with DP (CKKS, the example's own backend) every
    party spends the threads engine's epsilon, and each company's ledger holds its charges."""
    job = tmp_path / "job.toml"
    job.write_text(_bank_job(backend="plain", dp=False, rounds=2))
    out = tmp_path / "plain.json"
    res = cli("job", "submit", job, "--silo-config", banks.config("bank"), "--json", out, "-q")
    assert res.exit_code == 0, res.output
    got, ref = json.loads(out.read_text()), _bank_threads(job.read_text(), tmp_path / "plain")
    assert got["engine"] == "agents" and got["transport"] == "grpc+mtls" and got["task"] == "vertical"
    assert got["psi"] == ref["psi"] and got["rows"] == ref["rows"] and got["epochs"] == ref["epochs"] == 2
    for key in ("accuracy", "auc", "ks", "test_loss"):
        assert got["final"][key] == pytest.approx(ref["final"][key], abs=1e-9), key
    assert [r["loss"] for r in got["rounds"]] == pytest.approx([r["loss"] for r in ref["rounds"]], abs=1e-9)
    assert set(got["party_seconds"]) == {"bank", "partner", "arbiter"}

    job.write_text(_bank_job(backend="ckks", dp=True, rounds=2))
    out = tmp_path / "ckks.json"
    res = cli("job", "submit", job, "--silo-config", banks.config("bank"), "--json", out, "-q")
    assert res.exit_code == 0, res.output
    got, ref = json.loads(out.read_text()), _bank_threads(job.read_text(), tmp_path / "ckks")
    assert got["backend"] == "ckks" and got["private"] is True
    assert {p: e["epsilon"] for p, e in got["epsilon"].items()} == {p: e["epsilon"] for p, e in ref["epsilon"].items()}
    assert got["epsilon"]["bank"]["epsilon"] > 0 and got["psi"] == ref["psi"]
    for name in ("bank", "partner"):  # each company's charges are in its own agent's ledger
        _verify(banks.root / name / "ledger.sqlite")
        with PrivacyLedger.open(banks.root / name / "ledger.sqlite") as ledger:
            assert sum(1 for e in ledger.entries("customers") if e.job == got["job"]) >= 2


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.xdist_group("heavy")  # not beside the 50-silo Ray job (tests/silos/test_engine_ray.py)
@pytest.mark.timeout(480)
def test_ten_agent_processes_complete_a_five_round_job(tmp_path: Path) -> None:
    """Ten hospitals' agents and the aggregator's, each its own `fedsilo silo start` process
    with its own certificate, run a 5-round record-level DP job submitted through one
    hospital's agent; every silo is in every round and each one's ledger verifies."""
    names = [f"h{i}" for i in range(1, 11)]
    init_federation(tmp_path / "pki", federation="hospitals", silos=[*names, "aggregator"])
    rows = pd.concat([pd.read_csv(DATA / "st_marys.csv"), pd.read_csv(DATA / "city_general.csv")])
    rows = rows.sample(frac=1.0, random_state=3).reset_index(drop=True)
    datasets: dict[str, dict[str, Path]] = {}
    for i, name in enumerate(names):
        path = tmp_path / f"{name}.csv"
        rows.iloc[i::len(names)].to_csv(path, index=False)
        datasets[name] = {"patients": path}
    c = Cluster(tmp_path / "agents", tmp_path / "pki", {**datasets, "aggregator": {}})
    try:
        c.start(*c.names)
        job = tmp_path / "job.toml"
        job.write_text(job_toml(dp=True, rounds=5, silos={n: "patients" for n in names}, min_silos=10,
                                round_timeout=60.0))
        out = tmp_path / "results.json"
        res = cli("job", "submit", job, "--silo-config", c.config("h1"), "--json", out, "-q")
        assert res.exit_code == 0, res.output
        got = json.loads(out.read_text())
        assert len(got["rounds"]) == 5 and all(r["silos"] == sorted(names) for r in got["rounds"]), got["rounds"]
        assert set(got["party_seconds"]) == {*names, "aggregator"} and got["transport"] == "grpc+mtls"
        # each silo's sample rate is its own batch over its own rows: epsilons differ, none above the job's
        assert set(got["epsilon"]) == set(names) and all(0 < e["epsilon"] <= 3.0 for e in got["epsilon"].values())
        print(f"\n10 agents, 5 rounds: job {got['seconds']:.2f}s")
        for name in names:
            _verify(c.root / name / "ledger.sqlite")
    finally:
        c.close()


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.timeout(200)
def test_budgets_are_checked_when_each_agent_accepts_an_offer(trio: Cluster, tmp_path: Path) -> None:
    """Issue 17: `epsilon = 1000` against the operators' budgets of 10 is refused by the
    submitter's own agent, naming the silo, what the job needs and what its ledger has left; a
    job that fits there but not in h2's budget lowered to 2 is refused by h2 when it is offered
    the job, with what the job needs there (h2's ledger totals stay in its audit log). No ledger
    gains a row."""
    heads = {}
    for name in ("h1", "h2"):
        with PrivacyLedger.open(trio.root / name / "ledger.sqlite") as ledger:
            heads[name] = (ledger.head, len(ledger.entries()))
    job = tmp_path / "job.toml"
    job.write_text(job_toml(dp=True).replace("epsilon = 3.0", "epsilon = 1000.0"))
    res = cli("job", "submit", job, "--silo-config", trio.config("h1"), "-q")
    assert res.exit_code == 2, res.output
    assert "silo 'h1': the job needs epsilon=" in res.output and "but its ledger has 10 of 10 left" in res.output
    assert "lower privacy.epsilon (--epsilon) or raise the budget" in res.output and "Traceback" not in res.output

    job.write_text(job_toml(dp=True, budgets={"h2": 2.0}))
    res = cli("job", "submit", job, "--silo-config", trio.config("h1"), "-q")
    assert res.exit_code == 2, res.output
    line = next(x for x in res.output.splitlines() if x.startswith("error: "))
    assert "silo 'h2', dataset 'patients': the job's target epsilon=3 does not fit in the dataset's remaining " \
           "budget (the job's releases need epsilon=" in line, line
    assert "spent" not in line and "silo 'h1'" not in line  # h1 accepted (its budget covers the job), h2 refused
    refused = [a for a in trio.audit("h2") if a["event"] == "budget_refused"]
    assert refused and 2.0 < refused[-1]["need"] <= 3.0 and refused[-1]["budget"] == 2.0
    for name in ("h1", "h2"):
        with PrivacyLedger.open(trio.root / name / "ledger.sqlite") as ledger:
            assert (ledger.head, len(ledger.entries())) == heads[name]
