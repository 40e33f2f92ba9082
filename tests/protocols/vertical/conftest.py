"""Fixtures of the vertical tests (helpers live in vt_data.py)."""
from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _quiet_absl() -> Iterator[None]:
    # dp-accounting logs (via absl) when it drops an RDP order it cannot evaluate while the
    # noise calibration searches; the bound only gets (safely) looser.
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)
