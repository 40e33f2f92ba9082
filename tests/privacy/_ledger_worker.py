"""Subprocess helper for the ledger crash and race tests (not a test module).

Usage:
    python _ledger_worker.py crash LEDGER        reserve one release, report, then hang
    python _ledger_worker.py race LEDGER GO N    wait for file GO, try N releases, print counts
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from fedsilo.errors import BudgetExceededError
from fedsilo.privacy.events import GaussianEvent
from fedsilo.privacy.ledger import PrivacyLedger
from fedsilo.privacy.relations import ZERO_OUT_SILO

MECH = {"name": "gaussian", "clip": 1.0}


def crash(path: str) -> None:
    ledger = PrivacyLedger(path, silo="site0")
    with ledger.charge(
        "ds", GaussianEvent(2.0), job="crash", round=1, protocol="fedavg", mechanism=MECH, recipient="aggregator",
        relation=ZERO_OUT_SILO,
    ) as res:
        print(f"RESERVED {res.epsilon_spent!r}", flush=True)
        time.sleep(120)  # the parent SIGKILLs us here: "between reserve and commit"


def race(path: str, go: str, attempts: int) -> None:
    ledger = PrivacyLedger(path, silo="site0")
    deadline = time.monotonic() + 30
    while not Path(go).exists():
        if time.monotonic() > deadline:
            raise SystemExit("start signal never came")
        time.sleep(0.005)
    ok = refused = 0
    for i in range(attempts):
        try:
            with ledger.charge(
                "ds", GaussianEvent(2.0), job="race", round=i, protocol="fedavg", mechanism=MECH, recipient="aggregator",
                relation=ZERO_OUT_SILO,
            ):
                ok += 1
        except BudgetExceededError:
            refused += 1
    ledger.close()
    print(json.dumps({"ok": ok, "refused": refused}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "crash":
        crash(sys.argv[2])
    else:
        race(sys.argv[2], sys.argv[3], int(sys.argv[4]))
