"""Each party's own privacy ledger, opened by the party itself.

A party of a job receives a :class:`LedgerSpec` (where its ledger file is, which dataset it
charges, the budget to register), never an open ledger: it opens the file in its own process,
registers its dataset at its budget and closes the file when its part of the job ends. On one
machine (``fedsilo simulate``) the files are ``LEDGER_DIR/<party>.sqlite``; an agent names its
own in ``silo.toml``.

A test run with reproducible (seeded) noise is not private: its ledger is wrapped so that every
entry's mechanism records ``"reproducible_noise": true`` and ``"private": false``.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsilo.errors import ConfigError
from fedsilo.privacy.ledger import PrivacyLedger

__all__ = ["LedgerSpec", "NotPrivateLedger"]


class NotPrivateLedger:
    """A ledger whose entries say the run was not private (reproducible noise, tests only).

    Delegates everything to the wrapped :class:`PrivacyLedger`; :meth:`charge` adds
    ``"reproducible_noise": true, "private": false`` to the recorded mechanism.
    """

    def __init__(self, ledger: PrivacyLedger) -> None:
        self._ledger = ledger

    def charge(self, dataset: str, event: Any, *, mechanism: Mapping[str, Any], **kwargs: Any) -> Any:
        tagged = {**dict(mechanism), "reproducible_noise": True, "private": False}
        return self._ledger.charge(dataset, event, mechanism=tagged, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)


@dataclass(frozen=True)
class LedgerSpec:
    """Where one party's ledger lives and what it registers there.

    ``budget`` is ``(epsilon, delta)`` for ``dataset``; registering it again with the same
    budget is a no-op, with another budget an error (the ledger keeps the first). The accountant
    is the job's (``[privacy] accountant``). ``reproducible_noise`` (tests only) wraps the
    ledger in :class:`NotPrivateLedger`.
    """

    path: Path
    silo: str
    dataset: str
    budget: tuple[float, float]
    accountant: str
    reproducible_noise: bool = False

    @contextlib.contextmanager
    def open(self) -> Iterator[Any]:
        """The party's open ledger with its dataset registered; closed on exit."""
        if self.path.exists() and self.path.is_dir():
            raise ConfigError(f"ledger {self.path} is a directory, not a ledger file")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the ledger directory {self.path.parent}: {exc.strerror or exc}") from None
        ledger = PrivacyLedger(self.path, silo=self.silo, accountant=self.accountant)
        try:
            ledger.register_dataset(self.dataset, epsilon=float(self.budget[0]), delta=float(self.budget[1]))
            yield NotPrivateLedger(ledger) if self.reproducible_noise else ledger
        finally:
            ledger.close()


@contextlib.contextmanager
def opened(spec: LedgerSpec | None) -> Iterator[Any]:
    """``spec.open()``, or ``None`` for a party without a ledger (no DP, aggregator)."""
    if spec is None:
        yield None
    else:
        with spec.open() as ledger:
            yield ledger
