"""`fedsilo federation show` through the real command: parties, edges and the verdict; a PNG
that is a real image; bad input as one `error:` line with exit code 2."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fedsilo.cli import app
from fedsilo.silos import registry
from fedsilo.silos.config import JobConfig
from fedsilo.silos.registry import JobContext, JobRun, Party, Task, register_task
from fedsilo.silos.topology import Flow, add_flow, add_party, new_federation

runner = CliRunner()

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
HOSPITALS = EXAMPLES / "hospitals_horizontal" / "federation.toml"
VERTICAL = EXAMPLES / "hospital_vertical" / "federation.toml"
ALL = [HOSPITALS, EXAMPLES / "hospitals_horizontal" / "silo_level.toml", EXAMPLES / "federated_statistics" / "federation.toml",
       EXAMPLES / "bank_vertical" / "federation.toml", VERTICAL, EXAMPLES / "agents" / "job.toml"]


def _one_error_line(res: Any, fragment: str) -> None:
    assert res.exit_code == 2, (res.exit_code, res.output)
    assert "Traceback" not in res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("config", ALL, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_example_is_a_valid_federation(config: Path) -> None:
    res = runner.invoke(app, ["federation", "show", str(config)])
    assert res.exit_code == 0, res.output
    assert "parties (name, role, data, budget):" in res.stdout and "edges (sender -> receiver: what travels):" in res.stdout
    assert "valid: every data party reaches" in res.stdout and not res.stderr


def test_the_text_names_roles_data_budgets_and_what_travels() -> None:
    res = runner.invoke(app, ["federation", "show", str(VERTICAL)])
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "federation 'hospital_vertical' (task vertical, hub oncology): 4 parties, 10 edges" in out
    oncology = next(line for line in out.splitlines() if line.strip().startswith("oncology "))
    assert "guest" in oncology and "oncology.csv" in oncology and "epsilon 10, delta 1e-05" in oncology
    assert "  radiology -> trust_centre: masked encrypted gradient, encrypted noise shares" in out
    assert "radiology -> pathology" not in out and "pathology -> radiology" not in out


def test_json_is_the_graph_with_the_verdict() -> None:
    res = runner.invoke(app, ["federation", "show", str(HOSPITALS), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["valid"] is True and out["problem"] is None and out["hub"] == "aggregator"
    assert {p["name"]: p["role"] for p in out["parties"]} == {
        "aggregator": "aggregator", "st_marys": "silo", "city_general": "silo", "riverside": "silo"}
    pairs = {(e["from"], e["to"]) for e in out["edges"]}
    assert len(pairs) == 8 and ("city_general", "st_marys") in pairs and ("st_marys", "riverside") not in pairs
    key = next(e for e in out["edges"] if (e["from"], e["to"]) == ("city_general", "riverside"))
    assert key["travels"] == [{"what": "shared secret key", "kinds": ["key.secret"], "when": None}]


def test_plot_is_a_real_png(tmp_path: Path) -> None:
    import matplotlib.image

    out = tmp_path / "federation.png"
    res = runner.invoke(app, ["federation", "show", str(VERTICAL), "--plot", str(out)])
    assert res.exit_code == 0, res.output
    assert f"plot written to {out}" in res.stdout
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 30_000
    image = matplotlib.image.imread(out)
    assert image.shape[0] > 500 and image.shape[1] > 500
    assert image[..., :3].std() > 0.05  # drawn, not a blank canvas


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["{tmp}/missing.toml"], "config file not found"),
        (["{tmp}/bad.toml"], "not valid TOML"),
        (["{tmp}/unknown_task.toml"], "unknown task 'horizontl'; did you mean 'horizontal'?"),
        ([str(HOSPITALS), "--plot", "{tmp}/no/such/dir/f.png"], "directory {tmp}/no/such/dir does not exist"),
        ([str(HOSPITALS), "--plot", "{tmp}/f.xyz"], "unknown image format 'xyz'"),
        ([str(HOSPITALS), "--plot", "{tmp}/f"], "no file extension"),
        ([str(HOSPITALS), "--plot", "{tmp}"], "it is a directory"),
        # the plot path is checked before the config is read
        (["{tmp}/missing.toml", "--plot", "{tmp}/f.xyz"], "unknown image format 'xyz'"),
    ],
    ids=["missing-file", "malformed-toml", "unknown-task", "plot-dir-missing", "plot-format", "plot-no-ext",
         "plot-is-dir", "plot-first"],
)
def test_bad_input_is_one_line(tmp_path: Path, args: list[str], fragment: str) -> None:
    (tmp_path / "bad.toml").write_text("[federation\ntask = 1\n")
    (tmp_path / "unknown_task.toml").write_text(HOSPITALS.read_text().replace('task = "horizontal"', 'task = "horizontl"'))
    res = runner.invoke(app, ["federation", "show", *[a.format(tmp=tmp_path) for a in args]])
    _one_error_line(res, fragment.format(tmp=tmp_path))
    assert not list(tmp_path.glob("f*")), "nothing is written for refused input"


# ------------------------------------------------------------------------------ plug-in topologies


class _Gather(Task):
    """A plug-in task whose collector never answers the silos (an invalid federation)."""

    name = "cli_topology_test"
    roles = ("silo",)

    def topology(self, cfg: JobConfig) -> Any:
        graph = new_federation(cfg, hub="collector")
        add_party(graph, "collector", role="collector")
        for n in cfg.silo_names():
            add_party(graph, n, role="silo", data="rows")
            add_flow(graph, n, "collector", Flow("counts", ("count",)))
        return graph

    def plan(self, cfg: JobConfig, ctx: JobContext) -> tuple[Any, Sequence[Party]]:
        raise AssertionError("show never plans")

    def party(self, plan: Any, party: Party, channel: Any, progress: Any = None) -> Any:
        raise AssertionError("show never runs a party")

    def results(self, plan: Any, parties: Sequence[Party], run: JobRun) -> dict[str, Any]:
        raise AssertionError("show never runs a job")


_PLUGIN = """[federation]
task = "cli_topology_test"
[crypto]
backend = "plain"
insecure = true
[data]
source = "sklearn:breast_cancer"
label = "target"
partition = { kind = "iid", silos = 3 }
"""


@pytest.fixture
def plugin_config(tmp_path: Path) -> Any:
    task = register_task(_Gather())
    cfg = tmp_path / "plugin.toml"
    cfg.write_text(_PLUGIN)
    yield cfg
    registry._TASKS.pop(task.name, None)


def test_an_invalid_federation_is_shown_then_refused(plugin_config: Path, tmp_path: Path) -> None:
    png = tmp_path / "broken.png"
    res = runner.invoke(app, ["federation", "show", str(plugin_config), "--plot", str(png)])
    _one_error_line(res, "data party 'site0' has no path from 'collector' (the results never reach it)")
    assert "site0 -> collector: counts" in res.stdout and "valid:" not in res.stdout
    assert png.read_bytes()[:4] == b"\x89PNG"  # drawn anyway: the picture shows what is missing
    res = runner.invoke(app, ["federation", "show", str(plugin_config), "--json"])
    assert res.exit_code == 2
    out = json.loads(res.stdout)
    assert out["valid"] is False and "has no path from 'collector'" in out["problem"]


def test_a_task_without_a_topology_cannot_be_shown(plugin_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_Gather, "topology", Task.topology)
    res = runner.invoke(app, ["federation", "show", str(plugin_config)])
    _one_error_line(res, "task 'cli_topology_test' declares no topology")


@pytest.mark.parametrize("plot", ["x.pgf", "z" * 300 + ".png"])
def test_a_plot_path_matplotlib_cannot_write_here_is_one_line(tmp_path: Path, plot: str) -> None:
    """.pgf needs a TeX installation; a name too long for the file system is an OSError."""
    res = runner.invoke(app, ["federation", "show", str(HOSPITALS),
                              "--plot", str(tmp_path / plot)])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and "cannot write plot" in res.output
