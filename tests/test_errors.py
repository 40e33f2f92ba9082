"""The one "did you mean" hint (fedsilo.errors.did_you_mean) and the messages built on it."""
from __future__ import annotations

import pytest

from fedsilo.crypto.paillier import PaillierBackend
from fedsilo.crypto.registry import check_params, get_backend_class
from fedsilo.errors import BackendNotFoundError, ConfigError, did_you_mean
from fedsilo.protocols.vertical.secureboost.config import READ_PARAMS, CryptoSettings
from fedsilo.silos.registry import get_engine, get_task, task_names


def test_nearest_choice_is_quoted_in_the_default_template() -> None:
    assert did_you_mean("ckk", ["ckks", "paillier", "plain"]) == "; did you mean 'ckks'?"
    assert did_you_mean("key_bit", READ_PARAMS) == "; did you mean 'key_bits'?"


def test_no_close_choice_gives_no_hint() -> None:
    assert did_you_mean("zzzzzz", ["ckks", "paillier", "plain"]) == ""
    assert did_you_mean("ckks", []) == ""


def test_cutoff_decides_how_near_is_near() -> None:
    # "lr" vs "lr_decay": similarity 2·2 / (2 + 8) = 0.4
    assert did_you_mean("lr", ["lr_decay"]) == ""
    assert did_you_mean("lr", ["lr_decay"], cutoff=0.4) == "; did you mean 'lr_decay'?"
    # "epochz" vs "epochs": 2·5 / 12 = 0.83, above both cutoffs the call sites use (0.6, 0.5)
    assert did_you_mean("epochz", ["epochs", "batch_size"], cutoff=0.5) == "; did you mean 'epochs'?"


def test_only_the_single_best_choice_is_named() -> None:
    assert did_you_mean("precison", ["precision", "precisions", "key_bits"]) == "; did you mean 'precision'?"


def test_template_and_non_string_names() -> None:
    assert did_you_mean("key_bit", READ_PARAMS, template=" (did you mean {!r}?)") == " (did you mean 'key_bits'?)"
    # a TOML key or table may be an int; it is compared as its text, choices may be any iterable of str
    assert did_you_mean(2048, {"2049": 1, "x": 2}) == "; did you mean '2049'?"


def test_unknown_backend_message() -> None:
    with pytest.raises(BackendNotFoundError, match=r"^unknown crypto backend 'ckk'; did you mean 'ckks'\? \(available: "):
        get_backend_class("ckk")
    with pytest.raises(BackendNotFoundError, match=r"^unknown crypto backend 'zzzzzz' \(available: "):
        get_backend_class("zzzzzz")


def test_unknown_backend_params_message() -> None:
    with pytest.raises(ConfigError) as info:
        check_params("paillier", PaillierBackend, {"precison": 1, "zzz": 2})
    assert str(info.value).startswith(
        "paillier: unknown parameters 'precison' (did you mean 'precision'?), 'zzz' in crypto.params; valid keys: "
    )


def test_unknown_task_and_engine_messages() -> None:
    names = ", ".join(task_names())
    with pytest.raises(ConfigError) as info:
        get_task("vertcal")
    assert str(info.value) == f"unknown task 'vertcal'; did you mean 'vertical'? (available: {names})"
    with pytest.raises(ConfigError) as info:
        get_task("qqqqqq")
    assert str(info.value) == f"unknown task 'qqqqqq' (available: {names})"
    with pytest.raises(ConfigError, match=r"^unknown engine 'proces'; did you mean 'processes'\? "):
        get_engine("proces")


def test_secureboost_unread_param_message() -> None:
    with pytest.raises(ConfigError) as info:
        CryptoSettings.from_params("paillier", {"key_bit": 2048})
    assert str(info.value) == (
        "key 'crypto.params.key_bit' is not read by SecureBoost; did you mean 'key_bits'? (it sizes its slots "
        "from the rows and bins itself; it reads key_bits, precision, packed, workers); remove it"
    )
    with pytest.raises(ConfigError, match=r"^key 'crypto.params.zzzz' is not read by SecureBoost \(it sizes"):
        CryptoSettings.from_params("paillier", {"zzzz": 2048})
