"""Fixtures of the horizontal-protocol tests (helpers live in hz_data.py)."""
from __future__ import annotations

from typing import Any

import pytest
import torch

from hz_data import breast_cancer_silos

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def bc3() -> Any:
    """breast_cancer, 3 label-skewed silos (alpha 0.5), as `fedsilo simulate` prepares it."""
    return breast_cancer_silos(3, 0.5, 7)


def pytest_configure(config: pytest.Config) -> None:
    # Opacus' per-example hooks trigger this torch warning on every DP-SGD step (harmless).
    config.addinivalue_line("filterwarnings", "ignore:Full backward hook is firing:UserWarning")
