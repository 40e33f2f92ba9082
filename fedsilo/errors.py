"""fedsilo's error tree: one root, a few documented kinds.

Library code raises these; only the CLI maps them to exit codes. Every message says what was
wrong and where (file, key, silo, dataset), so a user never has to read a library traceback.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "did_you_mean",
    "FedsiloError",
    "ConfigError",
    "DataError",
    "CryptoError",
    "KeyMismatchError",
    "CiphertextFormatError",
    "EncodingOverflowError",
    "UnsupportedOperationError",
    "BackendNotFoundError",
    "PrivacyError",
    "PrivacyParameterError",
    "BudgetExceededError",
    "LedgerIntegrityError",
    "ProtocolError",
    "PeerRejectedError",
    "NotEnoughSilosError",
    "PeerTimeoutError",
    "JobAbortedError",
]


class FedsiloError(Exception):
    """Root of every error fedsilo raises on purpose."""


class ConfigError(FedsiloError):
    """A configuration file, key or command-line value is invalid."""


class DataError(FedsiloError):
    """Input data is unusable: missing columns, NaN, non-numeric values, duplicate IDs."""


class CryptoError(FedsiloError):
    """Base of the crypto layer's errors."""


class KeyMismatchError(CryptoError):
    """A ciphertext or key belongs to another key pair or context than the one used."""


class CiphertextFormatError(CryptoError):
    """Bytes that should hold a ciphertext or context are garbage, truncated or of another version."""


class EncodingOverflowError(CryptoError):
    """A value does not fit the fixed-point encoding or packing slot; raised, never wrapped."""


class UnsupportedOperationError(CryptoError):
    """The backend (or this backend mode, e.g. packed Paillier) cannot do the requested operation."""


class BackendNotFoundError(CryptoError, ConfigError):
    """No crypto backend is registered under the requested name."""


class PrivacyError(FedsiloError):
    """Base of the privacy layer's errors."""


class PrivacyParameterError(PrivacyError, ConfigError):
    """A privacy parameter is out of range (q outside (0, 1], z <= 0, delta outside (0, 1), ...).

    Both a ``PrivacyError`` (the privacy layer refused) and a ``ConfigError`` (the value usually
    comes from a config file or a command-line flag), so either ``except`` clause catches it.
    """


class BudgetExceededError(PrivacyError):
    """A release would push a silo's dataset past its privacy budget; nothing was released."""

    def __init__(
        self,
        *,
        silo: str,
        dataset: str,
        spent: float,
        requested: float,
        budget: float,
        delta: float,
    ) -> None:
        self.silo = silo
        self.dataset = dataset
        self.spent = spent
        self.requested = requested
        self.budget = budget
        self.delta = delta
        super().__init__(
            f"privacy budget exceeded for silo {silo!r}, dataset {dataset!r}: "
            f"spent epsilon={spent:.4g}, this release would bring it to {requested:.4g}, "
            f"budget epsilon={budget:.4g} (delta={delta:g}); nothing was released"
        )


class LedgerIntegrityError(PrivacyError):
    """The ledger's hash chain is broken: a row was edited, deleted or inserted out of band."""


class ProtocolError(FedsiloError):
    """A protocol message is out of order, malformed, or from the wrong job/round/sender."""


class PeerRejectedError(ProtocolError):
    """A peer is unknown, not allowed, or failed authentication."""


class NotEnoughSilosError(ProtocolError):
    """Fewer than the required number of silos remain; the round is aborted, nothing decrypted."""


class PeerTimeoutError(ProtocolError):
    """A peer's message did not arrive before the deadline."""


class JobAbortedError(ProtocolError):
    """Another party of the job failed; carries that party's error message."""


def did_you_mean(name: object, choices: Iterable[str], *, cutoff: float = 0.6,
                 template: str = "; did you mean {!r}?") -> str:
    """The "did you mean" hint of an unknown ``name``: ``template`` filled with the one nearest
    of ``choices``, or ``""`` when none is close enough.

    Nearness is :func:`difflib.get_close_matches`'s (``n=1``): Ratcliff/Obershelp similarity
    ``2·M / (len(a) + len(b))`` (M matched characters) of at least ``cutoff``; 0.6 is difflib's
    default. ``name`` is compared as ``str(name)`` (a TOML key or a CLI value may be any type).
    The default ``template`` appends to a message (``f"unknown task {name!r}{hint} (...)"``).
    """
    near = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=cutoff)
    return template.format(near[0]) if near else ""
