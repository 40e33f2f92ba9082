"""Every crypto backend passes the same contract suite (tests/crypto/_crypto_contract.py)."""
from __future__ import annotations

from _crypto_contract import BackendContract


class TestPlainContract(BackendContract):
    backend_name = "plain"
    max_examples = 40
    expect_secure = False


class TestPluginPlainContract(BackendContract):
    """Loaded through the ``fedsilo.crypto_backends`` entry point of tests/plugin_backend."""

    backend_name = "plugin_plain"
    backend_params = {"max_summands": 64}  # the contract sums up to 10 (x a few) ciphertexts
    max_examples = 10
    expect_secure = False  # its confidentiality() says so: the capability, not the name, decides


class TestPaillierContract(BackendContract):
    # 1024-bit keys keep the suite fast; workers=1 avoids pool start-up in every xdist worker.
    backend_name = "paillier"
    backend_params = {"key_bits": 1024, "workers": 1}
    max_examples = 15
    max_len = 8
    expect_secure = False  # ~80-bit: runs in a federation only with [crypto] insecure = true


class TestPaillierPackedContract(BackendContract):
    backend_name = "paillier"
    backend_params = {"key_bits": 1024, "workers": 1, "packed": True}
    max_examples = 15
    expect_secure = False


class TestCKKSContract(BackendContract):
    """Default profile: additions only (mul/matmul must raise UnsupportedOperationError)."""

    backend_name = "ckks"
    max_examples = 20


class TestCKKSMatmulContract(BackendContract):
    """Depth-2 profile with Galois keys: every operation."""

    backend_name = "ckks"
    backend_params = {"profile": "matmul", "value_bound": 100.0}
    max_examples = 15
