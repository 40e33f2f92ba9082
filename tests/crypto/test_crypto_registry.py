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
