"""The config contract: valid files load, every mistake names the file and the key."""
from __future__ import annotations

from pathlib import Path

import pytest

from fedsilo.errors import ConfigError
from fedsilo.silos.config import apply_overrides, load_config, parse_config

BASE = {
    "federation": {"name": "h", "task": "horizontal", "seed": 3},
    "data": {"source": "sklearn:breast_cancer", "label": "target", "partition": {"kind": "label_skew", "silos": 3}},
    "privacy": {"epsilon": 8.0},
}


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "federation.toml"
    p.write_text(text)
    return p


def test_loads_and_resolves_paths(tmp_path: Path) -> None:
    p = write(tmp_path, """
[federation]
task = "statistics"
[statistics]
columns = ["age"]
[[silos]]
name = "a"
data = "a.csv"
""")
    cfg = load_config(p)
    assert cfg.resolve(cfg.silos[0].data) == tmp_path.resolve() / "a.csv"
    assert cfg.privacy is None and cfg.crypto.backend == "ckks"


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"federation": {"task": "horizontal", "sed": 1}}, "unknown key 'federation.sed'; did you mean 'seed'?"),
        ({"privacy": {"epsilon": 8.0, "delt": 1e-5}}, "unknown key 'privacy.delt'; did you mean 'delta'?"),
        ({"privacy": {"epsilon": -1.0}}, "key 'privacy.epsilon': Input should be greater than 0"),
        ({"privacy": {"epsilon": 1.0, "delta": 1.5}}, "key 'privacy.delta'"),
        ({"privacy": {"epsilon": 1.0, "accountant": "moments"}}, "key 'privacy.accountant'"),
        ({"federation": {"task": "diagonal"}}, "key 'federation.task'"),
        ({"crypto": {"backend": "ckks", "parms": {}}}, "did you mean 'params'?"),
        ({"training": {"rounds": 0}}, "key 'training.rounds'"),
        ({"silos": [{"name": "a"}, {"name": "a"}]}, "silo names must be unique"),
        ({"federation": {"task": "statistics"}}, "needs a [statistics] section"),
    ],
)
def test_bad_configs_name_file_and_key(patch: dict, expected: str) -> None:
    data = {**BASE, **patch}
    with pytest.raises(ConfigError) as err:
        parse_config(data, source="fed.toml")
    assert "fed.toml" in str(err.value)
    assert expected in str(err.value)


def test_vertical_needs_roles() -> None:
    data = {
        "federation": {"task": "vertical"},
        "data": {"label": "y", "id_column": "id"},
        "silos": [{"name": "a", "data": "a.csv", "role": "host"}],
    }
    with pytest.raises(ConfigError, match="exactly one silo with role 'guest'"):
        parse_config(data)


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[federation\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_overrides_revalidate() -> None:
    cfg = parse_config(BASE)
    out = apply_overrides(cfg, backend="paillier", silos=4, rounds=2, epsilon=3.0, seed=9)
    assert (out.crypto.backend, out.data.partition.silos, out.training.rounds) == ("paillier", 4, 2)
    assert out.privacy.epsilon == 3.0 and out.federation.seed == 9
    assert apply_overrides(cfg, epsilon=0).privacy is None
    with pytest.raises(ConfigError, match="training.rounds"):
        apply_overrides(cfg, rounds=-1)


def test_silos_override_needs_builtin_data() -> None:
    cfg = parse_config({"federation": {"task": "statistics"}, "statistics": {"columns": ["a"]}, "silos": [{"name": "a", "data": "a.csv"}]})
    with pytest.raises(ConfigError, match="--silos applies only"):
        apply_overrides(cfg, silos=3)
