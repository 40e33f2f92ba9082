"""``[model] kind = "secureboost"``: the typed keys, their ranges, and every refusal as one line
naming the file and the key (before any party starts)."""
from __future__ import annotations

from pathlib import Path

import pytest

from fedsilo.errors import ConfigError
from fedsilo.protocols.spec import SECUREBOOST_KEYS, ModelSection, section
from fedsilo.protocols.vertical.secureboost import BoostConfig, CryptoSettings
from fedsilo.silos.config import parse_config
from vt_data import BANK

BASE = {
    "federation": {"name": "sb", "task": "vertical", "seed": 7},
    "crypto": {"backend": "paillier", "params": {"workers": 1}, "insecure": True},
    "model": {"kind": "secureboost", "trees": 5, "depth": 3},
    "data": {"label": "default", "id_column": "customer_id"},
    "silos": [{"name": "bank", "data": str(BANK / "bank.csv"), "role": "guest"},
              {"name": "partner", "data": str(BANK / "partner.csv"), "role": "host"}],
}


def _with(**changes):
    cfg = {k: (dict(v) if isinstance(v, dict) else list(v)) for k, v in BASE.items()}
    for path, value in changes.items():
        table, _, key = path.partition("__")
        if key:
            cfg[table] = {**cfg.get(table, {}), key: value}
        else:
            cfg[table] = value
    return cfg


def _plan(cfg: dict):
    from fedsilo.silos.registry import JobContext, get_task
    from fedsilo.silos.runner import check_task, sources_for
    from fedsilo.silos.topology import check_job_topology

    job = parse_config(cfg, source="fed.toml")
    check_task(job, "fed.toml")
    check_job_topology(job)
    return get_task("vertical").plan(job, JobContext("j", sources_for(job), Path("/tmp/unused-ledgers")))


def test_the_model_keys_are_typed_with_defaults() -> None:
    m = section(ModelSection, {"kind": "secureboost", "trees": 7}, key="model")
    cfg = BoostConfig.from_section(m, timeout=10.0)
    assert (cfg.trees, cfg.depth, cfg.bins, cfg.learning_rate, cfg.l2, cfg.subsample, cfg.min_leaf_rows) == \
           (7, 3, 32, 0.3, 1.0, 1.0, 20)
    assert set(SECUREBOOST_KEYS) <= set(ModelSection.model_fields)
    plan, parties = _plan(BASE)
    assert plan.kind == "secureboost" and [p.role for p in parties] == ["guest", "host"]
    assert plan.spec.crypto.packed and plan.spec.crypto.key_bits == 2048  # packed is SecureBoost's default


@pytest.mark.parametrize(("changes", "message"), [
    ({"model__depth": 0}, "key 'model.depth': Input should be greater than or equal to 1"),
    ({"model__bins": 1}, "key 'model.bins': Input should be greater than or equal to 2"),
    ({"model__subsample": 0.0}, "key 'model.subsample': Input should be greater than 0"),
    ({"model__learning_rate": 2.0}, "key 'model.learning_rate': Input should be less than or equal to 1"),
    ({"model__trees": True}, "key 'model.trees': Input should be a valid integer"),
    ({"model__tree": 3}, "unknown key 'model.tree'; did you mean 'trees'?"),
    ({"model__objective": "squared"}, "key 'model.objective': Input should be 'log_loss' or 'squared_error'"),
    ({"model__missing": "impute"}, "key 'model.missing': Input should be 'refuse' or 'bin'"),
    ({"model__guest_trees": 6}, "fed.toml: key 'model.guest_trees': must be at most model.trees (5) (got 6)"),
    ({"model__guest_trees": 6, "model__trees": 0}, "key 'model.trees': Input should be greater than or equal to 1"),
    ({"model__guest_trees": -1}, "key 'model.guest_trees': Input should be greater than or equal to 0"),
])
def test_bad_model_values_are_named(changes, message) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_with(**changes), source="fed.toml")
    assert message in str(err.value) and "fed.toml" in str(err.value)


@pytest.mark.parametrize(("changes", "message"), [
    ({"silos": [*BASE["silos"], {"name": "arb", "role": "arbiter"}]},
     "SecureBoost has no arbiter (the guest, which holds the labels, holds the Paillier key); remove the silo 'arb'"),
    ({"crypto__backend": "ckks", "crypto__params": {}}, "key 'crypto.backend': SecureBoost sums gradients exactly"),
    ({"crypto__params": {"value_bound": 4.0}}, "key 'crypto.params.value_bound' is not read by SecureBoost"),
    ({"crypto__params": {"key_bitz": 2048}},
     "key 'crypto.params.key_bitz' is not read by SecureBoost; did you mean 'key_bits'? (it sizes its slots from "
     "the rows and bins itself; it reads key_bits, precision, packed, workers); remove it"),
    ({"crypto__params": {"precision": 60}}, "key 'crypto.params.precision': SecureBoost encodes g and h with at most 52"),
    ({"training": {"rounds": 3}}, "[training] is not read by a 'vertical (secureboost)' job"),
    ({"privacy": {"epsilon": 8.0, "colluders": 2}}, "key 'privacy.colluders' is not read"),
    ({"model__hidden": [4]}, "key 'model.hidden' is not read"),
    ({"model__guest_trees": 5, "privacy": {"epsilon": 8.0}},
     "key 'model.guest_trees': every one of the 5 trees is guest-only, so no host releases anything"),
])
def test_settings_secureboost_cannot_run_are_refused_before_it_starts(changes, message) -> None:
    with pytest.raises(ConfigError) as err:
        _plan(_with(**changes))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_without_dp_it_needs_insecure_and_under_dp_every_feature_needs_bounds() -> None:
    with pytest.raises(ConfigError, match=r"key 'privacy'.*SecureBoost without \[privacy\] gives the guest"):
        parse_config(_with(crypto={"backend": "paillier", "params": {"workers": 1}}), source="fed.toml")
    with pytest.raises(ConfigError, match=r"fed\.toml: SecureBoost under DP bins every feature over public bounds "
                                          r".*; none for bank: \['age'"):
        _plan(_with(privacy={"epsilon": 8.0}))


def test_crypto_settings_read_only_what_secureboost_uses() -> None:
    plain = CryptoSettings.from_params("plain", {})
    assert plain.backend == "plain" and plain.packed
    with pytest.raises(ConfigError, match="the plain backend takes no parameters"):
        CryptoSettings.from_params("plain", {"packed": False})
    unpacked = CryptoSettings.from_params("paillier", {"packed": False, "key_bits": 3072, "workers": 1})
    assert (unpacked.packed, unpacked.key_bits) == (False, 3072) and unpacked.digest() != plain.digest()


def test_the_new_model_keys_reach_the_agreed_config_and_its_digest(tmp_path: Path) -> None:
    """objective, missing and guest_trees are agreed settings (in the digest every host checks);
    a guest without features cannot grow a guest-only tree (refused naming the key)."""
    plan, _ = _plan(_with(model={"kind": "secureboost", "trees": 5, "objective": "squared_error", "missing": "bin",
                                 "guest_trees": 2}, data={"label": "log_income", "id_column": "customer_id"}))
    cfg = plan.spec.config
    assert (cfg.objective, cfg.missing, cfg.guest_trees, cfg.hist_bins, cfg.joint_trees) == ("squared_error", "bin", 2, 33, 3)
    base = BoostConfig.from_section(section(ModelSection, {"kind": "secureboost", "trees": 5}, key="model"), timeout=1.0)
    assert base.digest() != cfg.digest() and (base.objective, base.missing, base.guest_trees) == ("log_loss", "refuse", 0)
    labels_only = tmp_path / "labels.csv"
    labels_only.write_text("customer_id,default\n" + "".join(f"C{i},{i % 2}\n" for i in range(50)))
    silos = [{"name": "bank", "data": str(labels_only), "role": "guest"}, BASE["silos"][1]]
    with pytest.raises(ConfigError, match=r"key 'model.guest_trees': the guest 'bank' holds the labels only"):
        _plan(_with(model__guest_trees=1, silos=silos))
