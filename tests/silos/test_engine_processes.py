"""The ``processes`` engine (fedsilo.silos.engines): every party its own OS process over gRPC with
mutual TLS gives the threads engine's results (same metrics, rounds, bytes and epsilon), relays
per-round progress, raises the first failing party's own error in the parent, and never leaves a
process behind: not on success, not on a party's error, not on Ctrl-C, not when the parent dies.

Heavy imports stay inside the tests: each spawned party process imports this module to find its
party function, and should not pay for torch unless its job needs it.
"""
from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.network

ROOT = Path(__file__).resolve().parents[2]

HZ: dict[str, Any] = {
    "federation": {"name": "h", "task": "horizontal", "seed": 3},
    "crypto": {"backend": "plain", "insecure": True},
    "data": {"source": "sklearn:breast_cancer", "label": "target", "partition": {"kind": "iid", "silos": 3}},
    "training": {"rounds": 2},
}

STATS_TOML = """
[federation]
name = "s"
task = "statistics"
seed = 3
[crypto]
backend = "plain"
insecure = true
[statistics]
columns = ["mean radius", "mean area"]
queries = ["count", "sum", "mean", "histogram"]
bins = 5
range = { "mean radius" = [5.0, 30.0], "mean area" = [100.0, 2600.0] }
[data]
source = "sklearn:breast_cancer"
label = "target"
partition = { kind = "iid", silos = 3 }
"""

#: what differs between two runs of one job by design: wall time, the engine, where ledgers live
RUN_ONLY = {"seconds", "engine", "transport", "ledger_dir"}


def _spawned_children() -> list[int]:
    """Pids of this process's live (not zombie) children started by ``multiprocessing.spawn``."""
    me, out = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[1]) == me and b"multiprocessing.spawn" in cmdline:
            out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _children() -> set[int]:
    """This process's live children that multiprocessing started (spawn children included)."""
    return {p.pid for p in multiprocessing.active_children() if p.pid is not None} | set(_spawned_children())


def _assert_no_children_left(before: set[int]) -> None:
    """No child started since ``before`` is alive (other tests of this worker may own some)."""
    assert not _children() - before


def _run(cfg: Any, engine: str, tmp_path: Path, **kw: Any) -> dict[str, Any]:
    from fedsilo.silos.runner import run_job

    return run_job(cfg, ledger_dir=tmp_path / engine, engine=engine, **kw)


@pytest.mark.timeout(180)
def test_a_horizontal_job_gives_the_threads_results_and_relays_progress(tmp_path: Path) -> None:
    from fedsilo.silos.config import parse_config

    before = _children()
    cfg = parse_config(HZ)
    shown: dict[str, list[dict[str, Any]]] = {"threads": [], "processes": []}
    threads = _run(cfg, "threads", tmp_path, progress=shown["threads"].append)
    processes = _run(cfg, "processes", tmp_path, progress=shown["processes"].append)
    assert (processes["engine"], processes["transport"]) == ("processes", "grpc+mtls")
    assert processes["final"] == threads["final"]
    assert processes["rounds"] == threads["rounds"]
    # one codec, one envelope size: the transport does not change what a party sends
    assert processes["bytes_sent"] == threads["bytes_sent"]
    assert processes["silo_metrics"] == threads["silo_metrics"]
    assert processes["simulation_metrics"] == threads["simulation_metrics"]
    # per-round progress crosses the process boundary, once per round
    assert [e["round"] for e in shown["processes"]] == [1, 2]
    assert shown["processes"] == shown["threads"]
    _assert_no_children_left(before)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_record_level_dp_spends_the_threads_epsilon_per_silo(tmp_path: Path) -> None:
    from fedsilo.silos.config import parse_config

    before = _children()
    cfg = parse_config({**HZ, "training": {"rounds": 1, "batch_size": 32},
                        "privacy": {"epsilon": 8.0, "delta": 1e-5, "clip": 1.0, "level": "record"}})
    threads = _run(cfg, "threads", tmp_path)
    processes = _run(cfg, "processes", tmp_path)
    assert processes["epsilon"] == threads["epsilon"]  # noise is fresh OS randomness; epsilon is not
    assert all(0 < e["epsilon"] <= 8.0 for e in processes["epsilon"].values())
    assert processes["dp"] == threads["dp"]
    _assert_no_children_left(before)


@pytest.mark.timeout(180)
def test_the_vertical_example_spends_the_threads_epsilon_per_party(tmp_path: Path) -> None:
    from fedsilo.silos.config import apply_overrides, load_config

    before = _children()
    cfg = apply_overrides(load_config(ROOT / "examples" / "bank_vertical" / "federation.toml"),
                          backend="plain", insecure=True, rounds=1)
    threads = _run(cfg, "threads", tmp_path)
    processes = _run(cfg, "processes", tmp_path)
    assert processes["epsilon"] == threads["epsilon"]
    assert processes["psi"] == threads["psi"]
    assert processes["bytes_sent"].keys() == threads["bytes_sent"].keys()
    assert (processes["engine"], processes["transport"]) == ("processes", "grpc+mtls")
    _assert_no_children_left(before)


def _silo_files(tmp_path: Path) -> dict[str, Any]:
    """Two silos' CSVs of breast-cancer rows; the second has an empty cell in 'mean area' (the
    plan reads only headers, so the party finds it when it loads its rows; two silos and an
    aggregator keep the start-up short)."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame[["mean radius", "mean texture", "mean area", "target"]]
    frame.iloc[0::2].to_csv(tmp_path / "s0.csv", index=False)
    broken = frame.iloc[1::2].astype({"mean area": object})
    broken.iloc[4, broken.columns.get_loc("mean area")] = ""
    broken.to_csv(tmp_path / "s1.csv", index=False)
    return {
        "federation": {"name": "files", "task": "horizontal", "seed": 1},
        "crypto": {"backend": "plain", "insecure": True},
        "data": {"label": "target"},
        "training": {"rounds": 2},
        "silos": [{"name": f"s{i}", "data": f"s{i}.csv"} for i in range(2)],
    }


@pytest.mark.timeout(180)
def test_a_party_data_error_is_raised_in_the_parent_and_no_process_is_left(tmp_path: Path) -> None:
    from fedsilo.errors import DataError
    from fedsilo.silos.config import parse_config

    before = _children()
    cfg = parse_config(_silo_files(tmp_path), source="files.toml", base_dir=tmp_path)
    start = time.monotonic()
    with pytest.raises(DataError, match="mean area") as err:
        _run(cfg, "processes", tmp_path)
    # the silo's own error, not the aggregator's timeout waiting for it (round_timeout = 120 s)
    assert str(tmp_path / "s1.csv") in str(err.value)
    assert "raised in the process of party 's1'" in "\n".join(getattr(err.value, "__notes__", []))
    assert time.monotonic() - start < 100
    _assert_no_children_left(before)


@pytest.mark.timeout(180)
def test_the_cli_runs_a_statistics_job_on_processes_with_the_threads_results_exactly(tmp_path: Path) -> None:
    """``fedsilo simulate --engine processes --json``: exit 0, the engine named, and every value
    of the results (no DP: nothing random) equal to the threads engine's."""
    import json

    from typer.testing import CliRunner

    from fedsilo.cli import app, to_json
    from fedsilo.silos.config import load_config

    before = _children()
    toml = tmp_path / "job.toml"
    toml.write_text(STATS_TOML)
    out = tmp_path / "out.json"
    res = CliRunner().invoke(app, ["simulate", str(toml), "--engine", "processes", "--json", str(out),
                                   "--ledger-dir", str(tmp_path / "processes")])
    assert res.exit_code == 0, res.output
    processes = json.loads(out.read_text())
    assert (processes["engine"], processes["transport"]) == ("processes", "grpc+mtls")
    threads = json.loads(to_json(_run(load_config(toml), "threads", tmp_path)))
    assert {k: v for k, v in processes.items() if k not in RUN_ONLY} == {
        k: v for k, v in threads.items() if k not in RUN_ONLY
    }
    _assert_no_children_left(before)


# -- the engine alone, with tiny party functions (they pickle by reference to this module) ------
def _overspend(channel: Any, *, after: float) -> Any:
    from fedsilo.errors import BudgetExceededError

    time.sleep(after)
    raise BudgetExceededError(silo="b", dataset="d", spent=1.0, requested=2.5, budget=2.0, delta=1e-5)


def _wait_for(peer: str, channel: Any) -> Any:
    return channel.recv(peer, "never", round=0, timeout=120)


@pytest.mark.timeout(120)
def test_the_first_error_is_raised_with_its_class_and_fields_and_the_others_are_stopped() -> None:
    """BudgetExceededError does not survive a plain pickle round trip (keyword-only
    constructor): it still arrives as itself, with its fields and the child's traceback, long
    before the waiting party's 120 s timeout."""
    from fedsilo.errors import BudgetExceededError
    from fedsilo.silos.engines import ProcessesEngine

    before = _children()
    start = time.monotonic()
    with pytest.raises(BudgetExceededError) as err:
        ProcessesEngine().run("job-bad", {"a": functools.partial(_wait_for, "b"),
                                          "b": functools.partial(_overspend, after=0.5)})
    assert time.monotonic() - start < 60
    assert (err.value.silo, err.value.requested, err.value.budget) == ("b", 2.5, 2.0)
    assert "privacy budget exceeded for silo 'b'" in str(err.value)
    assert "raised in the process of party 'b'" in "\n".join(getattr(err.value, "__notes__", []))
    _assert_no_children_left(before)


_SCRIPT = """
import functools, sys, time
from pathlib import Path
from fedsilo.silos.engines import ProcessesEngine

def stuck(out, channel):
    import os, subprocess
    helper = subprocess.Popen(["sleep", "300"])  # what a party may start, like a Paillier pool
    tmp = Path(out) / "pids.tmp"
    tmp.write_text(f"{os.getpid()} {helper.pid}")
    tmp.rename(Path(out) / "pids")
    time.sleep(300)

if __name__ == "__main__":
    ProcessesEngine().run("stuck", {"a": functools.partial(stuck, sys.argv[1])})
"""


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "parent-killed"])
def test_no_party_outlives_its_parent(tmp_path: Path, sig: int) -> None:
    """Ctrl-C in the parent terminates every party; a parent killed outright takes them along;
    either way with whatever process a party started (its process group)."""
    script = tmp_path / "stuck.py"
    script.write_text(_SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path)], cwd=tmp_path,
                              env={**os.environ, "TMPDIR": str(tmp_path)},  # a killed parent leaves its CA dir
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 100
        while not (tmp_path / "pids").exists():
            assert parent.poll() is None, parent.stderr.read().decode() if parent.stderr else ""
            assert time.monotonic() < deadline, "the parties never started"
            time.sleep(0.2)
        pids = [int(p) for p in (tmp_path / "pids").read_text().split()]  # the party and its helper
        parent.send_signal(sig)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 20
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in pids if _alive(p)]
        if sig == signal.SIGINT:
            assert parent.returncode != 0 and b"KeyboardInterrupt" in (parent.stderr.read() if parent.stderr else b"")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
