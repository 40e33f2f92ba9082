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
