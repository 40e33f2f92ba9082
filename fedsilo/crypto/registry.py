"""Name -> backend class registry, fed by the ``fedsilo.crypto_backends`` entry-point group.

A researcher's package adds a backend without touching fedsilo::

    [project.entry-points."fedsilo.crypto_backends"]
    mybackend = "mypkg.backend:MyBackend"

Entry points load lazily (TenSEAL is only imported when ``ckks`` is asked for).
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from fedsilo.crypto.base import CryptoBackend
from fedsilo.errors import BackendNotFoundError, ConfigError, did_you_mean

__all__ = [
    "accepted_params", "available_backends", "check_params", "get_backend", "get_backend_class", "has_backend",
    "register_backend",
]

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


def has_backend(name: str) -> bool:
    """Whether ``name`` can be requested: ``name in available_backends()``, reading the
    installed packages' entry points only for a name that is neither built in nor registered
    in-process (a scan costs 2-5 ms, and a command line's config is checked up to 3 times)."""
    return name in _BUILTIN or name in _registered or name in _entry_points()


def get_backend_class(name: str) -> type[CryptoBackend]:
    if name in _registered:
        return _registered[name]
    target = _BUILTIN.get(name)
    # built-ins never read the installed packages' entry points: a job asks for its backend's
    # class every round, and scanning the entry points cost ~28 % of a small DP job's CPU
    eps = _entry_points() if target is None else {}
    try:
        if target is not None:
            module, _, attr = target.partition(":")
            cls = getattr(__import__(module, fromlist=[attr]), attr)
        elif name in eps:
            cls = eps[name].load()
        else:
            names = available_backends()
            raise BackendNotFoundError(
                f"unknown crypto backend {name!r}{did_you_mean(name, names)} (available: {', '.join(names)})"
            )
    except ImportError as exc:
        raise BackendNotFoundError(f"crypto backend {name!r} could not be loaded: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, CryptoBackend)):
        raise BackendNotFoundError(f"entry point {name!r} does not name a CryptoBackend subclass")
    return cls


def accepted_params(cls: type[CryptoBackend]) -> tuple[str, ...] | None:
    """The keyword parameters ``cls(**params)`` accepts, in signature order, or None when its
    ``__init__`` takes ``**kwargs`` (the backend then checks its keys itself)."""
    sig = inspect.signature(cls.__init__)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return tuple(
        n for i, (n, p) in enumerate(sig.parameters.items())
        if i > 0 and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)  # i = 0 is self
    )


def check_params(name: str, cls: type[CryptoBackend], params: Mapping[str, Any]) -> None:
    """Refuse ``[crypto] params`` keys the backend ``name`` does not take, in one line naming the
    backend, each unknown key with its nearest accepted key, and every accepted key.

    The one place for this hint: without it an unknown key is the constructor's ``TypeError``
    ("__init__() got an unexpected keyword argument").
    """
    accepted = accepted_params(cls)
    if accepted is None:
        return
    unknown = sorted(set(params) - set(accepted))
    if not unknown:
        return
    named = [f"{key!r}" + did_you_mean(key, accepted, template=" (did you mean {!r}?)") for key in unknown]
    valid = ", ".join(accepted) if accepted else "none (it takes no parameters)"
    raise ConfigError(
        f"{name}: unknown parameter{'s' if len(named) > 1 else ''} {', '.join(named)} in crypto.params; "
        f"valid keys: {valid}"
    )


def get_backend(name: str, **params: Any) -> CryptoBackend:
    """Build the backend registered as ``name`` with backend-specific ``params``.

    Raises:
        BackendNotFoundError: no backend of that name (with the nearest name).
        ConfigError: a key the backend does not take (:func:`check_params`), or a bad value
            (the backend's own check).
    """
    cls = get_backend_class(name)
    check_params(name, cls, params)
    try:
        return cls(**params)
    except TypeError as exc:
        raise ConfigError(f"crypto backend {name!r}: invalid parameters {sorted(params)}: {exc}") from exc
