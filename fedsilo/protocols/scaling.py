"""Feature scaling with public bounds: one pure function shared by every protocol and the silos.

Under differential privacy a feature must be scaled with bounds that do not depend on the data
(a *data dictionary* the federation agrees on): scaling with the data's own mean, standard
deviation, minimum or maximum lets one record move how every other record is scaled, and the
sensitivity bound of whatever is computed afterwards no longer holds.
"""
from __future__ import annotations

import numpy as np

__all__ = ["scale_with_bounds"]


def scale_with_bounds(X: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Clip to the public box ``[lo, hi]`` and map it to ``[-1, 1]`` (column-wise).

    A column with ``hi == lo`` has no width and maps to ``-1``; callers refuse ``hi < lo``.
    """
    span = np.where(hi > lo, hi - lo, 1.0)
    return 2.0 * (np.clip(X, lo, hi) - lo) / span - 1.0
