"""The ``ray`` engine (fedsilo.silos.ray_engine): every party a Ray actor with its own gRPC server
and mTLS certificate gives the threads engine's results (same rounds, final metrics, bytes and
epsilon under the same noise seed), relays per-round progress, raises the first failing party's
own error in the caller, runs 50 silos through ``fedsilo simulate --engine ray``, and leaves no
Ray process behind: not on success, not on a party's error, not on Ctrl-C, not when the driver
is killed. Without Ray installed the engine is one clear ConfigError.

Every test that runs the engine records the processes it starts (this process's descendants,
sampled while it runs: raylet, GCS, the Ray workers of the parties) and ends any survivor
itself after checking there is none.

Heavy imports stay inside the tests: each Ray worker imports this module to find its party
function (the engine hands the workers this process's import path).
"""
from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

# one xdist worker runs every Ray test (with --dist loadgroup, `make test`): the 50-silo job holds
# ~18 GB at its peak, which must not meet another heavy test on the other worker
pytestmark = [pytest.mark.network, pytest.mark.xdist_group("heavy")]

ROOT = Path(__file__).resolve().parents[2]

HZ: dict[str, Any] = {
    "federation": {"name": "h", "task": "horizontal", "seed": 3},
    "crypto": {"backend": "plain", "insecure": True},
    "data": {"source": "sklearn:breast_cancer", "label": "target", "partition": {"kind": "iid", "silos": 3}},
    "training": {"rounds": 2},
}
#: record-level DP: every noised step and the noised final metrics come from the (test-only)
#: noise seed, so two engines given the same seed must release the very same numbers
#: (a generous round deadline: on a loaded machine, e.g. right after the 50-silo job, a fresh
#: actor's first DP round once took over the default 120 s, and a skipped round is not the
#: threads engine's numbers)
HZ_DP: dict[str, Any] = {**HZ, "federation": {**HZ["federation"], "round_timeout": 300.0},
                         "training": {"rounds": 2, "batch_size": 32},
                         "privacy": {"epsilon": 8.0, "delta": 1e-5, "clip": 1.0, "level": "record"}}

#: 50 silos of the breast-cancer table (11 rows each): at test_fraction 0.5 every silo holds out
#: at least one row and keeps at least one for training with this seed
FIFTY_TOML = """
[federation]
name = "fifty"
task = "horizontal"
seed = 3
[crypto]
backend = "plain"
insecure = true
[data]
source = "sklearn:breast_cancer"
label = "target"
test_fraction = 0.5
partition = { kind = "iid", silos = 50 }
[training]
rounds = 1
"""


# -- the processes a test starts -------------------------------------------------------------------
def _stat(pid: int) -> tuple[str, int] | None:
    """``(state, start time)`` of a process, None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[19])


def _descendants(root: int) -> set[tuple[int, int]]:
    """``(pid, start time)`` of the live descendants of ``root``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), list(children.get(root, []))
    while todo:
        pid = todo.pop()
        st = _stat(pid)
        if st is not None and st[0] != "Z":
            out.add((pid, st[1]))
        todo += children.get(pid, [])
    return out


def _alive(proc: tuple[int, int]) -> bool:
    st = _stat(proc[0])
    return st is not None and st[0] != "Z" and st[1] == proc[1]


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()[:80]
    except OSError:
        return "?"


@contextmanager
def _started_processes(root: int | None = None) -> Iterator[set[tuple[int, int]]]:
    """The processes started under ``root`` (default: this process) while the block runs,
    sampled every 0.2 s; afterwards none may be left, and any that is gets killed."""
    root = os.getpid() if root is None else root
    before = _descendants(root)
    seen: set[tuple[int, int]] = set()
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            seen.update(_descendants(root) - before)
            done.wait(0.2)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    try:
        yield seen
    finally:
        done.set()
        watcher.join()
        seen.update(_descendants(root) - before)
    # a killed process is reaped a moment later: wait for it, do not time it
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in seen) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {p: _name(p[0]) for p in seen if _alive(p)}
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    assert not left, f"processes left behind: {sorted(left.values())}"


@pytest.fixture(autouse=True)
def _local_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test here starts its own local Ray, whatever cluster the environment names."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def _ray_is_down() -> bool:
    import ray

    return not ray.is_initialized()


def _run(cfg: Any, engine: str, tmp_path: Path, **kw: Any) -> dict[str, Any]:
    from fedsilo.silos.runner import run_job

    return run_job(cfg, ledger_dir=tmp_path / engine, engine=engine, **kw)


# -- jobs ------------------------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_a_horizontal_job_gives_the_threads_results_and_relays_progress(tmp_path: Path) -> None:
    from fedsilo.silos.config import parse_config

    cfg = parse_config(HZ)
    shown: dict[str, list[dict[str, Any]]] = {"threads": [], "ray": []}
    threads = _run(cfg, "threads", tmp_path, progress=shown["threads"].append)
    with _started_processes() as started:
        ray = _run(cfg, "ray", tmp_path, progress=shown["ray"].append)
    assert len(started) > 3  # Ray's own processes and one worker per party really ran
    assert (ray["engine"], ray["transport"]) == ("ray", "grpc+mtls")
    assert all(r["auc"] is not None for r in threads["rounds"])  # metrics every round: compared below
    assert ray["rounds"] == threads["rounds"]
    assert ray["final"] == threads["final"]
    # one codec, one envelope size: the transport does not change what a party sends
    assert ray["bytes_sent"] == threads["bytes_sent"]
    assert ray["silo_metrics"] == threads["silo_metrics"]
    assert ray["simulation_metrics"] == threads["simulation_metrics"]
    # per-round progress crosses from the actors to the caller, once per round
    assert [e["round"] for e in shown["ray"]] == [1, 2]
    assert shown["ray"] == shown["threads"]
    assert _ray_is_down()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_record_level_dp_under_one_noise_seed_releases_the_threads_numbers(tmp_path: Path) -> None:
    from fedsilo.silos.config import parse_config

    cfg = parse_config(HZ_DP)
    threads = _run(cfg, "threads", tmp_path, noise_seed=11)
    with _started_processes():
        ray = _run(cfg, "ray", tmp_path, noise_seed=11)
    assert threads["final"]["auc"] is not None  # released once, noised: compared below
    assert ray["rounds"] == threads["rounds"]
    assert ray["final"] == threads["final"]
    assert ray["epsilon"] == threads["epsilon"]
    assert all(0 < e["epsilon"] <= 8.0 for e in ray["epsilon"].values())
    assert ray["dp"] == threads["dp"]
    assert ray["silo_metrics"] == threads["silo_metrics"]
    assert ray["private"] is False  # the noise seed made it reproducible, so not private
    assert _ray_is_down()


def _silo_files(tmp_path: Path) -> dict[str, Any]:
    """Two silos' CSVs of breast-cancer rows; one cell of the second's 'mean area' is text, which
    only that silo's party finds, loading its rows (the plan reads headers only)."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame[["mean radius", "mean texture", "mean area", "target"]]
    frame.iloc[0::2].to_csv(tmp_path / "s0.csv", index=False)
    bad = frame.iloc[1::2].astype({"mean area": object})
    bad.iloc[5, 2] = "n/a?"
    bad.to_csv(tmp_path / "s1.csv", index=False)
    return {
        "federation": {"name": "files", "task": "horizontal", "seed": 1},
        "crypto": {"backend": "plain", "insecure": True},
        "data": {"label": "target"},
        "training": {"rounds": 2},
        "silos": [{"name": f"s{i}", "data": f"s{i}.csv"} for i in range(2)],
    }


@pytest.mark.timeout(300)
def test_a_party_data_error_reaches_the_caller_and_no_ray_process_is_left(tmp_path: Path) -> None:
    from fedsilo.errors import DataError
    from fedsilo.silos.config import parse_config

    cfg = parse_config(_silo_files(tmp_path), source="files.toml", base_dir=tmp_path)
    with _started_processes() as started, pytest.raises(DataError, match="'mean area' is not numeric") as err:
        _run(cfg, "ray", tmp_path)
    assert started
    # the silo's own error, not the aggregator's timeout waiting for it (round_timeout = 120 s)
    assert str(tmp_path / "s1.csv") in str(err.value)
    assert "raised in the Ray actor of party 's1'" in "\n".join(getattr(err.value, "__notes__", []))
    assert _ray_is_down()


# -- the engine alone, with tiny party functions (pickled by reference to this module) -----------
def _overspend(channel: Any, *, after: float) -> Any:
    from fedsilo.errors import BudgetExceededError

    time.sleep(after)
    raise BudgetExceededError(silo="b", dataset="d", spent=1.0, requested=2.5, budget=2.0, delta=1e-5)


def _wait_for(peer: str, channel: Any) -> Any:
    return channel.recv(peer, "never", round=0, timeout=120)


def _pid(channel: Any) -> int:
    return os.getpid()


@pytest.mark.timeout(240)
def test_the_first_error_is_raised_with_its_class_and_fields_and_the_others_are_stopped() -> None:
    """BudgetExceededError does not survive a plain pickle round trip (keyword-only
    constructor): it still arrives as itself, with its fields and the actor's traceback, and the
    party still waiting for it (120 s) is killed rather than waited for."""
    from fedsilo.errors import BudgetExceededError
    from fedsilo.silos.ray_engine import RayEngine

    start = time.monotonic()
    with _started_processes(), pytest.raises(BudgetExceededError) as err:
        RayEngine().run("job-bad", {"a": functools.partial(_wait_for, "b"),
                                    "b": functools.partial(_overspend, after=0.5)})
    assert time.monotonic() - start < 110  # not the waiting party's timeout
    assert (err.value.silo, err.value.requested, err.value.budget) == ("b", 2.5, 2.0)
    assert "privacy budget exceeded for silo 'b'" in str(err.value)
    assert "raised in the Ray actor of party 'b'" in "\n".join(getattr(err.value, "__notes__", []))
    assert _ray_is_down()


@pytest.mark.timeout(240)
def test_a_ray_the_caller_started_stays_up_but_the_job_s_actors_do_not() -> None:
    import ray

    from fedsilo.silos.ray_engine import RayEngine

    with _started_processes():
        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
        try:
            run = RayEngine().run("job-mine", {"a": _pid, "b": _pid})
            assert ray.is_initialized()  # the caller's Ray: still the caller's
            workers = {(pid, st[1]) for pid in run.reports.values() if (st := _stat(pid)) is not None}
            deadline = time.monotonic() + 20
            while any(_alive(w) for w in workers) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not [w for w in workers if _alive(w)], "the job's actors outlived it"
            assert (run.engine, run.transport) == ("ray", "grpc+mtls")
        finally:
            ray.shutdown()


def test_without_ray_the_engine_is_one_config_error_naming_the_extra(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedsilo.cli import app
    from fedsilo.errors import ConfigError
    from fedsilo.silos.registry import get_engine

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were absent
    with pytest.raises(ConfigError, match=r"the ray engine needs the optional extra: pip install 'fedsilo\[ray\]'"):
        get_engine("ray")
    toml = tmp_path / "job.toml"
    toml.write_text(FIFTY_TOML)
    res = CliRunner().invoke(app, ["simulate", str(toml), "--engine", "ray", "--ledger-dir", str(tmp_path / "l")])
    assert res.exit_code == 2, res.output
    assert "pip install 'fedsilo[ray]'" in res.output and "Traceback" not in res.output
    # the module itself never needs Ray: the registry loads the class by its path
    code = "import sys; sys.modules['ray'] = None; import fedsilo.silos.ray_engine as m; print(m.RayEngine.name)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "ray", out.stderr


def test_parties_on_one_node_talk_over_loopback_and_across_nodes_over_their_node_ips(tmp_path: Path) -> None:
    """Where each party listens, and what its certificate says: on one Ray node every party binds
    127.0.0.1; across nodes each binds its node's IP, which its certificate then also names
    (identity still rests on the CA-only identity name, checked by every client)."""
    from fedsilo.silos.certs import describe
    from fedsilo.silos.ray_engine import _bind_hosts, _party_tls

    one = {"aggregator": ("n1", "10.0.0.5"), "site0": ("n1", "10.0.0.5")}
    assert _bind_hosts(one) == {"aggregator": "127.0.0.1", "site0": "127.0.0.1"}
    two = {"aggregator": ("n1", "10.0.0.5"), "site0": ("n2", "10.0.0.6")}
    assert _bind_hosts(two) == {"aggregator": "10.0.0.5", "site0": "10.0.0.6"}

    tls = _party_tls(["aggregator", "site0"], ["10.0.0.5", "10.0.0.6"])
    assert set(tls) == {"aggregator", "site0"}
    ca, cert, key, name, _ = tls["site0"]
    assert name == "site0" and b"PRIVATE KEY" in key and b"PRIVATE KEY" not in cert
    assert tls["aggregator"][0] == ca  # one CA for the job, a key of its own for each party
    assert tls["aggregator"][2] != key
    (tmp_path / "cert.pem").write_bytes(cert)
    sans = describe(tmp_path / "cert.pem").sans
    assert {"IP:10.0.0.5", "IP:10.0.0.6", "IP:127.0.0.1", "DNS:site0"} <= set(sans)


@pytest.mark.parametrize("kwargs, match", [
    ({"startup_timeout": 0}, "startup_timeout must be a positive number"),
    ({"grace": -1.0}, "grace must be a positive number"),
    ({"num_cpus": 0}, "num_cpus must be an integer >= 1"),
    ({"address": " "}, "address must be a Ray address"),
])
def test_bad_engine_settings_are_config_errors(kwargs: dict[str, Any], match: str) -> None:
    from fedsilo.errors import ConfigError
    from fedsilo.silos.ray_engine import RayEngine

    with pytest.raises(ConfigError, match=match):
        RayEngine(**kwargs)


@pytest.mark.slow
@pytest.mark.exclusive  # run alone by make test (memory)
@pytest.mark.timeout(900)  # ~4-5 minutes on 2 free cores; the engine's own start-up deadline is 630 s
def test_fifty_silos_complete_a_horizontal_job_through_the_cli(tmp_path: Path) -> None:
    """The acceptance test of the ray engine: ``fedsilo simulate --engine ray`` with 50 silos
    and an aggregator (51 actors on however many cores), every silo in the round, and nothing
    of Ray's printed into the command's output."""
    import json

    from typer.testing import CliRunner

    from fedsilo.cli import app

    toml = tmp_path / "fifty.toml"
    toml.write_text(FIFTY_TOML)
    out = tmp_path / "out.json"
    with _started_processes() as started:
        res = CliRunner().invoke(app, ["simulate", str(toml), "--engine", "ray", "--quiet", "--json", str(out),
                                       "--ledger-dir", str(tmp_path / "ledgers")])
    assert res.exit_code == 0, res.output
    assert len(started) > 51  # one worker per party, and Ray's own
    results = json.loads(out.read_text())
    assert (results["engine"], results["transport"]) == ("ray", "grpc+mtls")
    assert [r["round"] for r in results["rounds"]] == [1]
    assert sorted(results["rounds"][0]["silos"]) == sorted(f"site{i}" for i in range(50))
    assert set(results["bytes_sent"]) == {"aggregator", *(f"site{i}" for i in range(50))}
    assert all(b > 0 for b in results["bytes_sent"].values())
    assert "(raylet)" not in res.output and "Token authentication" not in res.output  # Ray's own chatter
    assert _ray_is_down()


_DRIVER = """
import functools, sys
from fedsilo.silos.ray_engine import RayEngine
from test_engine_ray import _stuck

if __name__ == "__main__":
    RayEngine().run("stuck", {"a": functools.partial(_stuck, sys.argv[1])})
"""


def _stuck(out: str, channel: Any) -> None:
    helper = subprocess.Popen(["sleep", "300"])  # what a party may start, like a Paillier pool
    tmp = Path(out) / "pids.tmp"
    tmp.write_text(f"{os.getpid()} {helper.pid}")
    tmp.rename(Path(out) / "pids")
    time.sleep(300)


#: Ray's node agents: after a driver killed outright they notice their raylet is gone only after
#: their own timeouts (about a minute); everything else of the job dies with the driver
RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "driver-killed"])
def test_no_party_outlives_its_driver(tmp_path: Path, sig: int) -> None:
    """Ctrl-C in the driver ends the job, its actors and the local Ray it started, every
    process of it; a driver killed outright takes its parties along (Ray's raylet and GCS die
    with it, its workers with the raylet), and with a party whatever it started (a Ray worker
    leads its own process group)."""
    script = tmp_path / "driver.py"
    script.write_text(_DRIVER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    driver = subprocess.Popen([sys.executable, str(script), str(tmp_path)], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen: set[tuple[int, int]] = set()
    try:
        deadline = time.monotonic() + 200
        while not (tmp_path / "pids").exists():
            assert driver.poll() is None, driver.stderr.read().decode() if driver.stderr else ""
            assert time.monotonic() < deadline, "the party never started"
            seen |= _descendants(driver.pid)
            time.sleep(0.2)
        seen |= _descendants(driver.pid)
        party, helper = (int(p) for p in (tmp_path / "pids").read_text().split())
        assert party in {p for p, _ in seen} and helper in {p for p, _ in seen}  # under this driver's Ray
        names = {p: _name(p[0]) for p in seen}
        driver.send_signal(sig)
        driver.wait(timeout=60)
        must_end = {p for p in seen if sig == signal.SIGINT or not names[p].startswith(RAY_AGENTS)}
        # a killed process is reaped a moment later: wait for it, do not time it
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in must_end) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not sorted(names[p] for p in must_end if _alive(p))
        if sig == signal.SIGINT:
            assert driver.returncode != 0 and b"KeyboardInterrupt" in (driver.stderr.read() if driver.stderr else b"")
            assert not _session_dirs(driver.pid)  # the local Ray's session directory is gone too
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        for pid, start in seen:  # Ray's lingering agents (driver killed), or anything a failure left
            if _alive((pid, start)):
                os.kill(pid, signal.SIGKILL)
        for d in _session_dirs(driver.pid):  # what a killed driver could not remove
            shutil.rmtree(d, ignore_errors=True)


def _session_dirs(driver: int) -> list[Path]:
    """The engine's temporary directories holding a Ray session of the process ``driver`` (Ray
    names a session after its driver's pid)."""
    import tempfile

    roots = {Path(tempfile.gettempdir()), Path("/tmp")}
    return [d for root in roots for d in root.glob("fedsilo-ray-*") if list(d.glob(f"session_*_{driver}"))]
