"""The config contract: valid files load, every mistake names the file and the key."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import pytest

from fedsilo.crypto.base import Confidentiality
from fedsilo.crypto.plain import PlainBackend
from fedsilo.crypto.registry import register_backend
from fedsilo.errors import ConfigError
from fedsilo.silos.config import apply_overrides, load_config, parse_config

BASE = {
    "federation": {"name": "h", "task": "horizontal", "seed": 3},
    "data": {"source": "sklearn:breast_cancer", "label": "target", "partition": {"kind": "label_skew", "silos": 3}},
    "privacy": {"epsilon": 8.0},
}


#: a horizontal job with silo-level DP (the default level) over 3 built-in shares, no [crypto]
HORIZONTAL_DP_3 = """
[federation]
task = "horizontal"
[privacy]
epsilon = 8.0
[data]
source = "sklearn:breast_cancer"
label = "target"
partition = { silos = 3 }
"""


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
        ({"silos": [{"name": "h1"}, {"name": "H1"}]}, "silo names must be unique, ignoring case; repeated: ['H1', 'h1']"),
        ({"silos": [{"name": "h1"}, {"name": "Aggregator"}]}, "'Aggregator' differs from the aggregator's party name only by case"),
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


# ------------------------------------------------------------------ [crypto] insecure = true
class _ThinKeys(PlainBackend):
    """A plugin-style backend that encrypts (``secure = True``) but is weak below ``bits = 128``:
    the config asks the instance, never the backend's name."""

    name: ClassVar[str] = "cfgtest_thin_keys"
    secure: ClassVar[bool] = True

    def __init__(self, *, bits: int = 128) -> None:
        self.bits = bits

    def params(self) -> dict[str, Any]:
        return {"bits": self.bits}

    def confidentiality(self) -> Confidentiality:
        if self.bits < 128:
            return Confidentiality(False, self.bits, reason=f"{self.bits}-bit toy keys", param="bits")
        return Confidentiality(True, self.bits)


register_backend(_ThinKeys)

HINT = "set [crypto] insecure = true (or pass --insecure) to run it (tests and baselines only)"
VERTICAL = {
    "federation": {"task": "vertical"},
    "data": {"label": "y", "id_column": "id"},
    "silos": [{"name": "g", "data": "g.csv", "role": "guest"}, {"name": "h", "data": "h.csv", "role": "host"}],
}


def _h(silos: int = 3, **sections: Any) -> dict[str, Any]:
    d = {k: v for k, v in BASE.items() if k != "privacy"}
    d["data"] = {**BASE["data"], "partition": {"kind": "iid", "silos": silos}}
    return {**d, **sections}


def _refused(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config(data, source="fed.toml")
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize(
    ("crypto", "expected"),
    [
        ({"backend": "plain"}, "fed.toml: key 'crypto.backend': 'plain' does not encrypt; " + HINT),
        ({"backend": "paillier", "params": {"key_bits": 1024}},
         "fed.toml: key 'crypto.params.key_bits': 1024-bit Paillier keys give ~80-bit security"),
        ({"backend": "cfgtest_thin_keys", "params": {"bits": 64}}, "fed.toml: key 'crypto.params.bits': 64-bit toy keys; " + HINT),
    ],
)
def test_backends_without_confidentiality_need_insecure(crypto: dict, expected: str) -> None:
    assert _refused(_h(crypto=crypto)).startswith(expected)
    cfg = parse_config(_h(crypto={**crypto, "insecure": True}))
    assert cfg.crypto.insecure is True and cfg.crypto.backend == crypto["backend"]


@pytest.mark.parametrize(
    "crypto",
    [{"backend": "ckks"}, {"backend": "paillier"}, {"backend": "paillier", "params": {"key_bits": 3072}},
     {"backend": "cfgtest_thin_keys", "params": {"bits": 128}}],
)
def test_confidential_backends_need_no_switch(crypto: dict) -> None:
    assert parse_config(_h(crypto=crypto)).crypto.insecure is False


def test_backend_params_are_checked_at_load_insecure_or_not() -> None:
    for insecure in (False, True):
        msg = _refused(_h(crypto={"backend": "paillier", "params": {"key_bits": 1000}, "insecure": insecure}))
        assert msg.startswith("fed.toml: key 'crypto.params': paillier: key_bits must be one of")


def test_vertical_without_dp_needs_insecure() -> None:
    msg = _refused(VERTICAL)
    assert msg.startswith("fed.toml: key 'privacy': vertical training without [privacy]") and msg.endswith(HINT)
    assert parse_config({**VERTICAL, "crypto": {"insecure": True}}).privacy is None
    assert parse_config({**VERTICAL, "privacy": {"epsilon": 8.0, "level": "record"}}).privacy is not None


@pytest.mark.parametrize(
    ("privacy", "refused"),
    [(None, True), ({"epsilon": 8.0, "level": "record"}, True), ({"epsilon": 8.0, "level": "silo"}, False)],
)
def test_two_silo_horizontal_needs_silo_level_dp_or_insecure(privacy: dict | None, refused: bool) -> None:
    data = _h(2, **({"privacy": privacy} if privacy else {}))
    if refused:
        msg = _refused(data)
        assert msg.startswith("fed.toml: key 'data.partition.silos': a horizontal job with exactly 2 silos")
        assert msg.endswith(HINT)
    else:
        parse_config(data)
    parse_config({**data, "crypto": {"insecure": True}})
    parse_config(_h(3, **({"privacy": privacy} if privacy else {})))  # three silos sum safely
    parse_config({**_h(1), "federation": {"task": "horizontal", "min_silos": 1}})  # one silo: its own data


def test_two_silo_statistics_needs_insecure() -> None:
    data = {"federation": {"task": "statistics"}, "statistics": {"columns": ["a"]},
            "silos": [{"name": "a", "data": "a.csv"}, {"name": "b", "data": "b.csv"}]}
    for privacy in ({}, {"privacy": {"epsilon": 1.0, "level": "silo"}}):
        msg = _refused({**data, **privacy, "statistics": {"columns": ["a"], "queries": ["count"]}})
        assert msg.startswith("fed.toml: key 'silos': a statistics job with exactly 2 silos")
    parse_config({**data, "crypto": {"insecure": True}})


def test_overrides_that_make_a_job_insecure_name_the_flag(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, HORIZONTAL_DP_3))
    where = f"set [crypto] insecure = true in {tmp_path / 'federation.toml'} (or pass --insecure) to run it"
    with pytest.raises(ConfigError, match=r"^--backend plain: 'plain' does not encrypt; ") as err:
        apply_overrides(cfg, backend="plain")
    assert where in str(err.value)
    # silo-level DP (the default level) keeps 2 silos safe; turning DP off does not
    assert apply_overrides(cfg, silos=2).data.partition.silos == 2
    with pytest.raises(ConfigError, match=r"^--epsilon 0: a horizontal job with exactly 2 silos"):
        apply_overrides(cfg, silos=2, epsilon=0)
    with pytest.raises(ConfigError, match=r"^--silos 2: a horizontal job with exactly 2 silos"):
        apply_overrides(apply_overrides(cfg, epsilon=0), silos=2)
    # the switch itself can come from the command line (a --insecure flag, tests' baselines)
    out = apply_overrides(cfg, backend="plain", silos=2, epsilon=0, insecure=True)
    assert (out.crypto.backend, out.crypto.insecure, out.privacy) == ("plain", True, None)
    assert apply_overrides(out, rounds=1).crypto.insecure is True  # kept through later overrides
    with pytest.raises(ConfigError, match="insecure must be true or false"):
        apply_overrides(cfg, insecure="yes")


def test_load_config_applies_overrides_and_builds_only_the_backend_that_runs(tmp_path: Path) -> None:
    """``load_config(overrides=)`` is ``load_config`` then ``apply_overrides``, except that a
    ``--backend`` naming another backend replaces the file's unbuilt: a refusal still names the
    flag that made the job insecure, a file's insecure backend replaced by a secure one is no
    longer refused, and the file's params for the replaced backend are neither checked nor kept."""
    path = write(tmp_path, HORIZONTAL_DP_3 + '[crypto]\nbackend = "plain"\nparams = { no_such_param = 1 }\n')
    with pytest.raises(ConfigError, match=r"key 'crypto.params'"):
        load_config(path, insecure=True)  # the file's own backend, built: its params are refused
    cfg = load_config(path, overrides={"backend": "paillier", "rounds": 2, "epsilon": None})
    assert (cfg.crypto.backend, dict(cfg.crypto.params), cfg.training.rounds) == ("paillier", {}, 2)
    (tmp_path / "same").mkdir()
    same = write(tmp_path / "same", HORIZONTAL_DP_3)
    with pytest.raises(ConfigError, match=r"^--backend plain: 'plain' does not encrypt; "):
        load_config(same, overrides={"backend": "plain"})
    assert load_config(same, overrides={"backend": "ckks"}).crypto.backend == "ckks"  # the file's default, built once
    assert load_config(same, overrides={"rounds": None}).model_dump() == load_config(same).model_dump()


def test_a_file_problem_found_after_a_backend_flag_names_the_file(tmp_path: Path) -> None:
    """Found by a review: with --backend replacing the file's backend, the insecure settings are
    checked once, after the flags; one that only the file set must still name the file, not the
    command line. A backend that is not a name is refused, not a TypeError."""
    path = write(tmp_path, HORIZONTAL_DP_3.replace("partition = { silos = 3 }", "partition = { silos = 2 }")
                 .replace("epsilon = 8.0", 'epsilon = 8.0\nlevel = "record"') + '[crypto]\nbackend = "plain"\n')
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: key 'data.partition.silos': a horizontal job "
                                          "with exactly 2 silos"):
        load_config(path, overrides={"backend": "paillier"})
    for bad in (["ckks"], {"name": "ckks"}, 3):
        with pytest.raises(ConfigError, match=r"^--backend: a backend name is a string"):
            load_config(path, overrides={"backend": bad})


def test_a_learning_rate_past_any_model_is_refused_naming_the_key(tmp_path: Path) -> None:
    """Found by a review: lr = 1e39 overflowed float32 inside torch's optimizer step (a
    traceback after the job started); refused by the config, naming file and key."""
    path = write(tmp_path, HORIZONTAL_DP_3 + "[training]\nlr = 1e39\n")
    with pytest.raises(ConfigError, match=r"federation\.toml.*training\.lr"):
        load_config(path)
    assert load_config(write(tmp_path, HORIZONTAL_DP_3 + "[training]\nlr = 1e6\n")).training.lr == 1e6
