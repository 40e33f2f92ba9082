"""Crypto test fixtures: keys are generated once per session and backend configuration."""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any

import pytest

from fedsilo.crypto import CryptoBackend, PublicContext, SecretKey, get_backend


@dataclass(frozen=True)
class KeySet:
    backend: CryptoBackend
    secret: SecretKey
    public: PublicContext
    other_secret: SecretKey  #: a second, unrelated key pair of the same backend
    other_public: PublicContext


@functools.lru_cache(maxsize=None)
def _keyset(name: str, params: tuple[tuple[str, Any], ...]) -> KeySet:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 1024-bit test keys warn on purpose
        backend = get_backend(name, **dict(params))
    secret, other = backend.keygen(), backend.keygen()
    return KeySet(backend, secret, secret.public(), other, other.public())


@pytest.fixture(scope="session")
def keyset_factory():
    """``keyset_factory(name, **params)``: a cached :class:`KeySet` (keygen is slow)."""

    def make(name: str, **params: Any) -> KeySet:
        return _keyset(name, tuple(sorted(params.items(), key=lambda kv: kv[0])))

    return make
