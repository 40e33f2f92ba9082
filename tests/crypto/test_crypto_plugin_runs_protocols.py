"""A backend written from scratch outside fedsilo runs the protocols like a built-in.

``plugin_plain`` (tests/plugin_backend, loaded through the entry point) does not subclass any
built-in. It refuses sums of more than ``max_summands`` contributions and defaults to 1, so it
only runs because the protocols ask it for its parameters (``params_for``), as they ask the
built-ins; the results equal the ``plain`` backend's.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedsilo.crypto import get_backend, get_backend_class
from fedsilo.crypto.base import USES, Capabilities, CryptoBackend
from fedsilo.crypto.plain import PlainBackend
from fedsilo.errors import ConfigError, EncodingOverflowError
from fedsilo.silos.tasks.horizontal import simulate_horizontal
from fedsilo.silos.tasks.statistics import simulate_statistics

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "protocols" / "horizontal"))
from hz_data import base_kwargs, breast_cancer_silos

PLUGIN = "plugin_plain"


def test_the_plugin_is_written_from_scratch():
    cls = get_backend_class(PLUGIN)
    assert cls.__module__ == "fedsilo_test_plugin"
    builtins = {get_backend_class(n) for n in ("plain", "paillier", "ckks")}
    assert issubclass(cls, CryptoBackend) and not any(issubclass(cls, b) for b in builtins | {PlainBackend})
    conf = get_backend(PLUGIN).confidentiality()
    assert not conf.secure and conf.security_bits == 0 and "does not encrypt" in conf.reason
    # without the capability call its default leaves no room for a sum of two silos
    backend = get_backend(PLUGIN)
    public = backend.keygen().public()
    with pytest.raises(EncodingOverflowError, match="max_summands"):
        backend.sum([backend.encrypt(public, [1.0]), backend.encrypt(public, [2.0])])


def test_params_for_merges_defaults_under_explicit_params():
    cls = get_backend_class(PLUGIN)
    assert cls.params_for("aggregate", summands=6) == {"max_summands": 6}
    assert cls.params_for("aggregate", summands=6, params={"max_summands": 9}) == {"max_summands": 9}
    assert get_backend_class("plain").params_for("statistics", summands=6) == {}
    with pytest.raises(ConfigError, match="unknown backend use"):
        cls.params_for("banana", summands=2)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="summands"):
        cls.params_for("aggregate", summands=0)
    assert set(USES) == {"aggregate", "statistics", "matmul", "benchmark"}
    assert get_backend_class("plain").capabilities() == Capabilities(exact_sums=True)


def test_builtin_defaults_are_the_ones_the_protocols_used_to_hard_code():
    paillier = get_backend_class("paillier")
    assert paillier.params_for("aggregate", summands=6) == {"max_summands": 16}
    assert paillier.params_for("aggregate", summands=40) == {"max_summands": 40}
    assert paillier.params_for("statistics", summands=6, params={"key_bits": 1024}) == {
        "packed": True, "precision": 24, "value_bound": 2.0**40, "max_summands": 16, "key_bits": 1024,
    }
    assert paillier.params_for("matmul", summands=1) == {}
    assert paillier.capabilities().packing == {"packed": True}
    ckks = get_backend_class("ckks")
    assert ckks.params_for("matmul", summands=1) == {"profile": "matmul"}
    assert ckks.params_for("matmul", summands=1, params={"profile": "mul"}) == {"profile": "mul"}
    assert ckks.params_for("aggregate", summands=6) == {} and not ckks.capabilities().exact_sums


def test_plugin_runs_horizontal_fedavg_like_plain():
    data = breast_cancer_silos(3)
    plain = simulate_horizontal(**base_kwargs(data))
    plugin = simulate_horizontal(**base_kwargs(data, backend=PLUGIN))
    assert plugin["backend"] == PLUGIN and plugin["task"] == "horizontal"
    assert len(plugin["rounds"]) == 5 and plugin["rounds"][-1]["silos"] == ["site0", "site1", "site2"]
    # same model, same per-silo and combined metrics: only the backend's name and wire bytes differ
    for key in ("rounds", "final", "silo_metrics", "simulation_metrics", "epsilon", "dp"):
        assert plugin[key] == plain[key], key
    assert plugin["final"]["accuracy"] > 0.8


def test_plugin_runs_statistics_like_plain():
    rng = np.random.default_rng(11)
    frames = {
        f"h{i}": pd.DataFrame({"age": rng.uniform(20, 90, n).round(1), "dose": rng.normal(0.5 * i, 1.5, n)})
        for i, n in enumerate((120, 300, 80))
    }
    args: dict[str, Any] = {
        "silos": frames, "columns": ["age", "dose"], "queries": ["count", "sum", "mean", "histogram"], "bins": 8,
        "ranges": {"age": (0.0, 100.0), "dose": (-5.0, 5.0)}, "privacy": None, "ledger_dir": None,
        "budgets": {n: (4.0, 1e-5) for n in frames}, "job": "stats", "backend_params": {}, "insecure": True,
    }
    plain = simulate_statistics(backend="plain", **args)
    plugin = simulate_statistics(backend=PLUGIN, **args)
    assert plugin["statistics"] == plain["statistics"] and plugin["raw"] == plain["raw"]
    assert plugin["silos"] == plain["silos"] == ["h0", "h1", "h2"]
    pooled = pd.concat(frames.values())
    assert plugin["statistics"]["age"]["count"] == len(pooled)
    assert plugin["statistics"]["dose"]["sum"] == pytest.approx(pooled["dose"].sum(), rel=1e-9)
