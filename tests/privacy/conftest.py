"""Shared fixtures for the privacy tests (fast: the whole directory runs in well under 60 s)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsilo.privacy.ledger import PrivacyLedger


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    return tmp_path / "silo0" / "privacy.sqlite"


@pytest.fixture
def ledger(ledger_path: Path) -> Iterator[PrivacyLedger]:
    with PrivacyLedger(ledger_path, silo="site0") as led:
        yield led
