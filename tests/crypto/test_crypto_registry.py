"""Registry: built-ins, the entry-point plugin, unknown names and bad parameters."""
from __future__ import annotations

import pytest

from fedsilo.crypto import available_backends, get_backend, get_backend_class
from fedsilo.errors import BackendNotFoundError, ConfigError


def test_builtins_and_plugin_are_registered():
    names = available_backends()
    assert {"plain", "paillier", "ckks", "plugin_plain"} <= set(names)
    plugin = get_backend("plugin_plain")
    assert type(plugin).__module__ == "fedsilo_test_plugin"  # loaded through the entry point


@pytest.mark.parametrize(("typo", "nearest"), [("cks", "ckks"), ("paillie", "paillier"), ("plian", "plain")])
def test_unknown_backend_suggests_the_nearest_name(typo, nearest):
    with pytest.raises(BackendNotFoundError, match=f"did you mean '{nearest}'"):
        get_backend(typo)
    with pytest.raises(ConfigError):  # BackendNotFoundError is also a ConfigError
        get_backend_class(typo)


def test_unknown_parameter_is_a_config_error():
    with pytest.raises(ConfigError, match="key_bitz"):
        get_backend("paillier", key_bitz=2048)
    with pytest.raises(ConfigError, match="profil"):
        get_backend("ckks", profil="mul")


@pytest.mark.parametrize(("backend", "params", "want"), [
    ("paillier", {"key_bitz": 2048},
     "paillier: unknown parameter 'key_bitz' (did you mean 'key_bits'?) in crypto.params; "
     "valid keys: key_bits, precision, value_bound, packed, max_summands, workers"),
    ("ckks", {"profil": "mul", "zzz": 1},
     "ckks: unknown parameters 'profil' (did you mean 'profile'?), 'zzz' in crypto.params; "
     "valid keys: profile, poly_modulus_degree, coeff_mod_bit_sizes, scale_bits, galois, value_bound"),
    ("plain", {"key_bits": 2048}, "plain: unknown parameter 'key_bits' in crypto.params; valid keys: none"),
    ("plugin_plain", {"max_sumands": 2},
     "plugin_plain: unknown parameter 'max_sumands' (did you mean 'max_summands'?) in crypto.params; "
     "valid keys: max_summands"),
])
def test_unknown_parameter_names_backend_key_hint_and_valid_keys(backend, params, want):
    """One line from the registry, not the constructor's TypeError naming __init__."""
    with pytest.raises(ConfigError) as info:
        get_backend(backend, **params)
    msg = str(info.value)
    assert want in msg and "__init__" not in msg and "\n" not in msg


def test_secagg_unknown_parameter_is_hinted_once():
    """Whether secagg checks its own keys (it takes **kwargs) or leaves them to the registry,
    the hint appears exactly once."""
    with pytest.raises(ConfigError) as info:
        get_backend("secagg", thresold=3)
    assert str(info.value).count("did you mean") == 1 and "'thresold' (did you mean 'threshold'?)" in str(info.value)


def test_accepted_params_reads_the_signature():
    from fedsilo.crypto.registry import accepted_params, check_params

    assert accepted_params(get_backend_class("plugin_plain")) == ("max_summands",)
    assert accepted_params(get_backend_class("plain")) == ()

    class OwnKeys(type(get_backend("plain"))):  # type: ignore[misc]
        def __init__(self, **params):  # takes any key: it checks them itself
            super().__init__()

    assert accepted_params(OwnKeys) is None
    assert check_params("own", OwnKeys, {"anything": 1}) is None
    plugin = get_backend("plugin_plain", max_summands=3)  # known keys still reach the constructor
    assert plugin.max_summands == 3
