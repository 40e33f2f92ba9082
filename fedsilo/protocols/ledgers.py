"""Opening every party's privacy ledger for a job run on one machine.

Each party's ledger is ``LEDGER_DIR/<party>.sqlite`` with its dataset registered at its budget.
Without a directory the ledgers are throw-away (a temporary directory) — but a DP job never
runs without ledgers: every release is still charged and checked against the budget.
"""
from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from fedsilo.errors import ConfigError
from fedsilo.privacy.ledger import PrivacyLedger

__all__ = ["job_ledgers"]


@contextmanager
def job_ledgers(
    ledger_dir: str | Path | None,
    *,
    parties: Iterable[str],
    budgets: Mapping[str, tuple[float, float]],
    accountant: str,
    datasets: Mapping[str, str] | None = None,
) -> Iterator[dict[str, PrivacyLedger]]:
    """Yield ``{party: PrivacyLedger}`` with each party's dataset (default: the party's name)
    registered at ``budgets[party]``; closes them (and removes a temporary directory) on exit."""
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
        yield ledgers
    finally:
        for ledger in ledgers.values():
            ledger.close()
        if tmp is not None:
            tmp.cleanup()
