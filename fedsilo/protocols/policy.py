"""Run-time refusals every party applies itself, whatever built its job spec.

The config loader refuses insecure settings with a message naming the file and key; a party
function must not rely on having been started from a checked config (an agent, a script or a
test may build the job spec directly), so the same rules are enforced again here, before any
key is made or any value leaves the party.
"""
from __future__ import annotations

from fedsilo.crypto.base import CryptoBackend
from fedsilo.errors import ConfigError

__all__ = ["require_confidential"]


def require_confidential(backend: CryptoBackend, *, insecure: bool, who: str) -> None:
    """Refuse a backend that does not give real confidentiality (``plain``, Paillier below 2048
    bits, any backend whose :meth:`~fedsilo.crypto.base.CryptoBackend.confidentiality` says so)
    unless the job opted in with ``[crypto] insecure = true``.

    Raises:
        ConfigError: naming the party and the backend's reason.
    """
    conf = backend.confidentiality()
    if not conf.sufficient and not insecure:
        raise ConfigError(
            f"{who}: {conf.why_not}; refusing to run without [crypto] insecure = true (tests and baselines only)"
        )
