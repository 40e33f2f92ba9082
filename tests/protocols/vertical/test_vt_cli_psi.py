"""`fedsilo psi` through typer's CliRunner on an app built with register()."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from fedsilo.cli.psi import register


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:  # keep `psi` a named sub-command
        """test app"""

    return app


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {
        "a": pd.DataFrame({"customer_id": [f"{i:05d}" for i in range(300)], "x": range(300)}),
        "b": pd.DataFrame({"customer_id": [f"{i:05d}" for i in range(200, 500)][::-1]}),
        "dup": pd.DataFrame({"customer_id": ["1", "2", "2"]}),
        "null": pd.DataFrame({"customer_id": ["1", "", "3"]}),
    }
    paths = {}
    for name, frame in out.items():
        paths[name] = tmp_path / f"{name}.csv"
        frame.to_csv(paths[name], index=False)
    return paths


def _run(app: typer.Typer, *args: str):
    return CliRunner().invoke(app, ["psi", *args])


def test_psi_writes_aligned_ids_and_stats(app, files, tmp_path: Path) -> None:
    out, stats = tmp_path / "aligned.csv", tmp_path / "stats.json"
    res = _run(app, "--left", str(files["a"]), "--right", str(files["b"]), "--column", "customer_id",
               "--out", str(out), "--json", str(stats))
    assert res.exit_code == 0, res.output
    aligned = pd.read_csv(out, dtype=str)
    assert list(aligned.columns) == ["customer_id"]
    assert list(aligned["customer_id"]) == [f"{i:05d}" for i in range(200, 300)]  # leading zeros kept, agreed order
    s = json.loads(stats.read_text())
    assert (s["left"], s["right"], s["intersection"]) == (300, 300, 100)
    assert set(s["bytes_sent"]) == {"left", "right"} and s["bytes_sent"]["left"] >= 32 * 300 + 16 * 300
    assert s["seconds"] >= 0
    assert "intersection 100" in res.output


def test_cardinality_only(app, files, tmp_path: Path) -> None:
    stats = tmp_path / "s.json"
    res = _run(app, "--left", str(files["a"]), "--right", str(files["b"]), "--column", "customer_id",
               "--cardinality-only", "--json", str(stats))
    assert res.exit_code == 0, res.output
    assert json.loads(stats.read_text())["intersection"] == 100


@pytest.mark.parametrize(
    ("left", "column", "message"),
    [
        ("missing", "customer_id", "no such file"),
        ("a", "id", "no column 'id'"),
        ("dup", "customer_id", "duplicate IDs (the first at rows"),
        ("null", "customer_id", "missing IDs (first at row 3 of the file)"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(app, files, tmp_path: Path, left: str, column: str, message: str) -> None:
    path = files.get(left, tmp_path / "nope.csv")
    res = _run(app, "--left", str(path), "--right", str(files["b"]), "--column", column, "--out", str(tmp_path / "o.csv"))
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.output
    assert str(path.name) in lines[0]


def test_out_is_required_unless_cardinality_only(app, files) -> None:
    res = _run(app, "--left", str(files["a"]), "--right", str(files["b"]), "--column", "customer_id")
    assert res.exit_code == 2 and "--out is required" in res.output
