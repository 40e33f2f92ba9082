"""`--plots DIR` through the real `fedsilo` command: `simulate`, `stats`, `job submit` and
`job results` write metrics.png and epsilon.png (or say why one is missing), and a directory
that cannot be written is refused before the job runs (exit 2, one line)."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fedsilo.cli import app

# the agents' cluster of the agent tests (silo.toml files, `fedsilo silo start` processes)
from test_cli_agents import Cluster, _hospitals, job_toml
from fedsilo.silos.certs import init_federation

ROOT = Path(__file__).resolve().parents[2]
HOSPITALS = ROOT / "examples" / "hospitals_horizontal" / "federation.toml"
STATS = ROOT / "examples" / "federated_statistics" / "federation.toml"
PNG = b"\x89PNG\r\n\x1a\n"
runner = CliRunner()


def run(*args: Any) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def _image(path: Path) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 8000, (path, len(data))
    img = plt.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4) and img.shape[0] >= 400 and img.shape[1] >= 600, img.shape
    return img


def _written(output: str) -> list[str]:
    return [line.removeprefix("plot: ") for line in output.splitlines() if line.startswith("plot: ")]


def test_simulate_writes_metrics_and_epsilon_plots(tmp_path: Path) -> None:
    plots, out = tmp_path / "new" / "plots", tmp_path / "r.json"
    res = run("simulate", HOSPITALS, "--backend", "plain", "--insecure", "--rounds", "2", "--seed", "1", "--quiet",
              "--json", out, "--ledger-dir", tmp_path / "l", "--plots", plots)
    assert res.exit_code == 0, res.output
    assert _written(res.output) == [str(plots / "metrics.png"), str(plots / "epsilon.png")]
    for name in ("metrics.png", "epsilon.png"):
        _image(plots / name)
    data = json.loads(out.read_text())
    for silo, total in data["epsilon"].items():
        curve = [r["epsilon"][silo] for r in data["rounds"]]
        assert 0 < curve[0] <= curve[1] < total["epsilon"]  # the final metrics release comes after round 2


def test_simulate_without_dp_says_why_there_is_no_epsilon_plot(tmp_path: Path) -> None:
    plots = tmp_path / "p"
    res = run("simulate", HOSPITALS, "--backend", "plain", "--insecure", "--rounds", "1", "--epsilon", "0", "--quiet",
              "--ledger-dir", tmp_path / "l", "--plots", plots)
    assert res.exit_code == 0, res.output
    assert _written(res.output) == [str(plots / "metrics.png"), "no epsilon.png: no DP: the job spent no epsilon"]
    assert sorted(p.name for p in plots.iterdir()) == ["metrics.png"]
    _image(plots / "metrics.png")


def test_stats_plots_epsilon_per_silo(tmp_path: Path) -> None:
    plots = tmp_path / "p"
    res = run("stats", STATS, "--insecure", "--ledger-dir", tmp_path / "l", "--plots", plots)
    assert res.exit_code == 0, res.output
    assert _written(res.output)[0] == str(plots / "epsilon.png") and "no metrics.png" in _written(res.output)[1]
    assert sorted(p.name for p in plots.iterdir()) == ["epsilon.png"]
    _image(plots / "epsilon.png")


def _bad_plot_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, str]]:
    (tmp_path / "file").write_text("not a directory")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.geteuid() == 0:  # root ignores permission bits; pretend it does not
        real = os.access
        monkeypatch.setattr(os, "access",
                            lambda path, mode, **kw: not (Path(path) == ro and mode & os.W_OK) and real(path, mode, **kw))
    return [
        (tmp_path / "file", "is a file, not a directory"),
        (tmp_path / "file" / "plots", "file is a file, not a directory"),  # a parent that cannot be created
        (ro, "is not writable"),
        (ro / "plots", "is not writable"),
    ]


def _one_error_line(output: str, plots: Path, why: str) -> None:
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: --plots {plots}: ") and why in errors[0], output
    assert "Traceback" not in output


def test_simulate_and_stats_refuse_a_bad_plot_directory_before_the_job_runs(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        for plots, why in _bad_plot_dirs(tmp_path, monkeypatch):
            ledgers = tmp_path / "ledgers"
            res = run("simulate", HOSPITALS, "--backend", "plain", "--insecure", "--rounds", "1", "--quiet",
                      "--ledger-dir", ledgers, "--plots", plots)
            assert res.exit_code == 2, res.output
            _one_error_line(res.output, plots, why)
            assert not ledgers.exists()  # no party started, no budget spent
            res = run("stats", STATS, "--insecure", "--ledger-dir", ledgers, "--plots", plots)
            assert res.exit_code == 2, res.output
            _one_error_line(res.output, plots, why)
            assert not ledgers.exists()
    finally:
        (tmp_path / "ro").chmod(0o700)


def test_job_submit_and_results_refuse_a_bad_plot_directory_before_contacting_the_agent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job = tmp_path / "job.toml"
    job.write_text(job_toml())
    missing = tmp_path / "no-silo.toml"  # reading it would be the next step: the plot check comes first
    try:
        for plots, why in _bad_plot_dirs(tmp_path, monkeypatch):
            res = run("job", "submit", job, "--silo-config", missing, "--plots", plots, "-q")
            assert res.exit_code == 2, res.output
            _one_error_line(res.output, plots, why)
            res = run("job", "results", "hosp-1", "--silo-config", missing, "--plots", plots)
            assert res.exit_code == 2, res.output
            _one_error_line(res.output, plots, why)
    finally:
        (tmp_path / "ro").chmod(0o700)


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Cluster]:
    init_federation(tmp_path / "pki", federation="hospitals", silos=["h1", "h2", "aggregator"])
    c = Cluster(tmp_path / "agents", tmp_path / "pki", _hospitals(tmp_path))
    try:
        c.start(*c.names)
        yield c
    finally:
        c.close()


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_job_submit_and_results_write_the_plots_of_an_agents_job(agents: Cluster, tmp_path: Path) -> None:
    """A record-level DP job across three agent processes: the submitter's results carry ε per
    silo per round (from the remote silo's reported events too) and both figures are written,
    at submit and again from `job results`."""
    job, out, first = tmp_path / "job.toml", tmp_path / "results.json", tmp_path / "submit-plots"
    job.write_text(job_toml(dp=True, rounds=2))
    res = run("job", "submit", job, "--silo-config", agents.config("h1"), "--json", out, "--plots", first, "-q")
    assert res.exit_code == 0, res.output
    assert _written(res.output) == [str(first / "metrics.png"), str(first / "epsilon.png")]
    got = json.loads(out.read_text())
    assert got["transport"] == "grpc+mtls"
    for silo in ("h1", "h2"):
        curve = [r["epsilon"][silo] for r in got["rounds"]]
        assert 0 < curve[0] < curve[1] < got["epsilon"][silo]["epsilon"] <= 3.0
    again = tmp_path / "results-plots"
    res = run("job", "results", got["job"], "--silo-config", agents.config("h1"), "--plots", again)
    assert res.exit_code == 0, res.output
    assert _written(res.output) == [str(again / "metrics.png"), str(again / "epsilon.png")]
    for name in ("metrics.png", "epsilon.png"):
        assert (_image(first / name) == _image(again / name)).all()  # the same results, the same figure
