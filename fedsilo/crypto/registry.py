"""Name -> backend class registry, fed by the ``fedsilo.crypto_backends`` entry-point group.

A researcher's package adds a backend without touching fedsilo::

    [project.entry-points."fedsilo.crypto_backends"]
    mybackend = "mypkg.backend:MyBackend"

Entry points load lazily (TenSEAL is only imported when ``ckks`` is asked for).
"""
from __future__ import annotations

import difflib
from importlib.metadata import entry_points
from typing import Any

from fedsilo.crypto.base import CryptoBackend
from fedsilo.errors import BackendNotFoundError, ConfigError

__all__ = ["available_backends", "get_backend", "get_backend_class", "register_backend"]

ENTRY_POINT_GROUP = "fedsilo.crypto_backends"

# Built-ins are listed here too so a source checkout works before `pip install -e`.
_BUILTIN = {
    "plain": "fedsilo.crypto.plain:PlainBackend",
    "paillier": "fedsilo.crypto.paillier:PaillierBackend",
    "ckks": "fedsilo.crypto.ckks:CKKSBackend",
    "secagg": "fedsilo.crypto.secagg_backend:SecAggBackend",
}
_registered: dict[str, type[CryptoBackend]] = {}


def _entry_points() -> dict[str, Any]:
    found: dict[str, Any] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)
    return found


def register_backend(cls: type[CryptoBackend]) -> type[CryptoBackend]:
    """Register a backend class in-process (tests, notebooks); refuses double registration."""
    if not (isinstance(cls, type) and issubclass(cls, CryptoBackend)):
        raise ConfigError(f"{cls!r} is not a CryptoBackend subclass")
    if cls.name in _registered or cls.name in _BUILTIN:
        raise ConfigError(f"a crypto backend named {cls.name!r} is already registered")
    _registered[cls.name] = cls
    return cls


def available_backends() -> list[str]:
    """Names of every backend that can be requested, sorted."""
    return sorted(set(_BUILTIN) | set(_entry_points()) | set(_registered))


def get_backend_class(name: str) -> type[CryptoBackend]:
    if name in _registered:
        return _registered[name]
    eps = _entry_points()
    target = _BUILTIN.get(name)
    try:
        if target is not None:
            module, _, attr = target.partition(":")
            cls = getattr(__import__(module, fromlist=[attr]), attr)
        elif name in eps:
            cls = eps[name].load()
        else:
            names = available_backends()
            near = difflib.get_close_matches(name, names, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise BackendNotFoundError(
                f"unknown crypto backend {name!r}{hint} (available: {', '.join(names)})"
            )
    except ImportError as exc:
        raise BackendNotFoundError(f"crypto backend {name!r} could not be loaded: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, CryptoBackend)):
        raise BackendNotFoundError(f"entry point {name!r} does not name a CryptoBackend subclass")
    return cls


def get_backend(name: str, **params: Any) -> CryptoBackend:
    """Build the backend registered as ``name`` with backend-specific ``params``."""
    cls = get_backend_class(name)
    try:
        return cls(**params)
    except TypeError as exc:
        raise ConfigError(f"crypto backend {name!r}: invalid parameters {sorted(params)}: {exc}") from exc
