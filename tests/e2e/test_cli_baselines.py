"""Issue 17 items 2-3 through `fedsilo simulate`: the baselines block and public per-feature centers."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedsilo.cli import app
from fedsilo.errors import ConfigError
from fedsilo.silos.config import load_config
from fedsilo.silos.tasks.horizontal import center_offsets, prepare_horizontal

ROOT = Path(__file__).resolve().parents[2]
HOSPITALS = ROOT / "examples" / "hospitals_horizontal" / "federation.toml"
runner = CliRunner()


def _no_dp_config(tmp_path: Path, extra: str = "") -> Path:
    """The hospitals example without [privacy] and without [training]: the shipped defaults."""
    text = HOSPITALS.read_text()
    text = re.sub(r"\n\[privacy\]\n(?:[^\[\n][^\n]*\n|\n)*", "\n", text)
    text = re.sub(r"\n\[training\]\n(?:[^\[\n][^\n]*\n|\n)*", "\n", text)
    text = text.replace("[[silos]]", extra + "\n[[silos]]", 1) if extra else text
    path = tmp_path / "federation.toml"
    path.write_text(text)
    return path


@pytest.mark.slow
def test_default_config_lands_within_001_auc_of_central(tmp_path: Path) -> None:
    cfg = _no_dp_config(tmp_path)
    assert "[training]" not in cfg.read_text() and "[privacy]" not in cfg.read_text()
    out = tmp_path / "r.json"
    res = runner.invoke(app, ["simulate", str(cfg), "--backend", "plain", "--insecure", "--quiet", "--json", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    base, fed = data["baselines"], data["simulation_metrics"]
    assert "not private" in base["label"] and base["epochs"] == 40  # defaults: 20 rounds x 2 local epochs
    assert set(base["alone"]) == {"st_marys", "city_general", "riverside"}
    assert fed["auc"] >= base["central"]["auc"] - 0.01
    # label skew: one hospital alone (few of one class) is far off in accuracy; the federation is not
    assert fed["accuracy"] > min(m["accuracy"] for m in base["alone"].values()) + 0.1
    assert "did federating pay off" in res.output


def test_no_baselines_flag(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    res = runner.invoke(app, ["simulate", str(HOSPITALS), "--backend", "plain", "--insecure", "--quiet", "--rounds", "1",
                              "--no-baselines", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "baselines" not in json.loads(out.read_text())


@pytest.mark.parametrize("center, message", [
    ('"mean radius" = 99.0', r"'mean radius' = 99 is outside its public bounds \[6.981, 28.11\]"),
    ('"no such column" = 1.0', r"key 'data.center': \['no such column'\] are not feature column"),
])
def test_bad_center_is_refused_naming_the_key(tmp_path: Path, center: str, message: str) -> None:
    cfg = _no_dp_config(tmp_path, f"[data.center]\n{center}\n")
    res = runner.invoke(app, ["simulate", str(cfg), "--backend", "plain", "--insecure", "--quiet"])
    assert res.exit_code != 0
    assert re.search(message, res.output), res.output
    assert "Traceback" not in res.output


def test_center_without_bounds_is_refused(tmp_path: Path) -> None:
    csv = tmp_path / "a.csv"
    csv.write_text("age,y\n" + "".join(f"{30 + i},{i % 2}\n" for i in range(40)))
    cfg = tmp_path / "f.toml"
    cfg.write_text(
        '[federation]\nname = "c"\ntask = "horizontal"\nmin_silos = 2\n[crypto]\nbackend = "plain"\ninsecure = true\n'
        '[data]\nlabel = "y"\ncenter = { age = 40.0 }\n'
        + "".join(f'[[silos]]\nname = "s{i}"\ndata = "a.csv"\n' for i in range(3))
    )
    with pytest.raises(ConfigError, match=r"key 'data.center': 'age' = 40 has no public bounds"):
        prepare_horizontal(load_config(cfg, insecure=True))


def test_center_maps_to_zero_and_is_the_same_shift_in_every_silo(tmp_path: Path) -> None:
    plain = prepare_horizontal(load_config(_no_dp_config(tmp_path), insecure=True))
    (tmp_path / "c").mkdir()
    centred = prepare_horizontal(load_config(_no_dp_config(tmp_path / "c", '[data.center]\n"mean radius" = 14.0\n'),
                                             insecure=True))
    j = plain.features.index("mean radius")
    shift = center_offsets(["mean radius"], {"mean radius": (6.981, 28.11)}, {"mean radius": 14.0})[0]
    assert shift == pytest.approx(2 * (14.0 - 6.981) / (28.11 - 6.981) - 1)
    for name in plain.silos:
        np.testing.assert_allclose(centred.silos[name][0][:, j], plain.silos[name][0][:, j] - shift)
        others = [k for k in range(len(plain.features)) if k != j]
        np.testing.assert_array_equal(centred.silos[name][0][:, others], plain.silos[name][0][:, others])
