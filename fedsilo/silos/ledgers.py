"""Opening every party's privacy ledger for a job run on one machine.

Each party's ledger is ``LEDGER_DIR/<party>.sqlite`` with its dataset registered at its budget.
Without a directory the ledgers are throw-away (a temporary directory) — but a DP job never
runs without ledgers: every release is still charged and checked against the budget.

A test run with reproducible (seeded) noise is not private: its ledgers are wrapped so that
every entry's mechanism records ``"reproducible_noise": true`` and ``"private": false``.
"""
from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedsilo.errors import ConfigError
from fedsilo.privacy.ledger import PrivacyLedger

__all__ = ["NotPrivateLedger", "job_ledgers"]


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


@contextmanager
def job_ledgers(
    ledger_dir: str | Path | None,
    *,
    parties: Iterable[str],
    budgets: Mapping[str, tuple[float, float]],
    accountant: str,
    datasets: Mapping[str, str] | None = None,
    reproducible_noise: bool = False,
) -> Iterator[dict[str, Any]]:
    """Yield ``{party: PrivacyLedger}`` with each party's dataset (default: the party's name)
    registered at ``budgets[party]``; closes them (and removes a temporary directory) on exit.
    ``reproducible_noise`` (tests only) wraps each in :class:`NotPrivateLedger`."""
    tmp: tempfile.TemporaryDirectory[str] | None = None
    ledgers: dict[str, PrivacyLedger] = {}
    try:
        if ledger_dir is None:
            tmp = tempfile.TemporaryDirectory(prefix="fedsilo-ledgers-")
            ledger_dir = tmp.name
        directory = Path(ledger_dir)
        directory.mkdir(parents=True, exist_ok=True)
        for party in parties:
            if party not in budgets:
                raise ConfigError(f"no privacy budget for silo {party!r}")
            eps_b, delta_b = budgets[party]
            ledger = PrivacyLedger(directory / f"{party}.sqlite", silo=party, accountant=accountant)
            ledgers[party] = ledger
            ledger.register_dataset((datasets or {}).get(party, party), epsilon=float(eps_b), delta=float(delta_b))
        yield {p: NotPrivateLedger(led) for p, led in ledgers.items()} if reproducible_noise else ledgers
    finally:
        for ledger in ledgers.values():
            ledger.close()
        if tmp is not None:
            tmp.cleanup()
