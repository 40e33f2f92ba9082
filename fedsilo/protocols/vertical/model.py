"""One party's share of the model: its preprocessing, its weights and their update.

Nothing here is ever sent: each party keeps its :class:`LocalModel`; only the (encrypted)
quantities of :mod:`.messages` leave it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedsilo.errors import DataError
from fedsilo.privacy.mechanisms import clip_rows_l2
from fedsilo.protocols.scaling import scale_with_bounds
from fedsilo.protocols.spec import PrivacySection
from fedsilo.protocols.vertical.data import feature_bounds
from fedsilo.protocols.vertical.taylor import DpPlan, standardize_apply, standardize_fit

__all__ = ["FitResult", "LocalModel", "check_matrix", "check_rows", "clip_logits", "fit_model", "update"]


@dataclass(frozen=True, slots=True)
class LocalModel:
    """One party's share of the model: its own preprocessing and weights (never sent).

    Columns with public ``bounds`` (``(lo, hi)`` arrays, NaN where a column has none) are
    clipped to them and mapped to ``[-1, 1]``; the others are standardized with ``mean`` and
    ``scale`` (training statistics; never under DP).
    """

    columns: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    clip: float | None
    weights: np.ndarray  #: one per column, plus the intercept last for the guest
    intercept: bool
    bounds: tuple[np.ndarray, np.ndarray] | None = None

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Scale (public bounds, else train statistics), clip rows under DP, append the
        guest's constant 1."""
        z = standardize_apply(x, mean=self.mean, scale=self.scale)
        if self.bounds is not None:
            lo, hi = self.bounds
            has = ~np.isnan(lo)
            if has.any():
                z[:, has] = scale_with_bounds(np.asarray(x, dtype=np.float64)[:, has], lo[has], hi[has])
        if self.clip is not None and z.shape[1]:
            z = clip_rows_l2(z, max_norm=self.clip)
        if self.intercept:
            z = np.hstack([z, np.ones((z.shape[0], 1))])
        return z

    def partial_logits(self, x: np.ndarray) -> np.ndarray:
        """This party's share ``X_p w_p`` of the logits of the raw rows ``x``."""
        return self.transform(x) @ self.weights


@dataclass
class FitResult:
    """What a party's training function returns."""

    model: LocalModel | None
    history: list[dict[str, Any]] = field(default_factory=list)
    dp: DpPlan | None = None
    epochs_run: int = 0
    stopped_early: bool = False
    next_round: int = 0
    epsilon: float | None = None  #: ε this job spent for this party (computed from its events)


# ------------------------------------------------------------------------------ inputs


def check_matrix(x: np.ndarray, *, who: str) -> np.ndarray:
    """``x`` as a finite float64 matrix.

    Raises:
        DataError: not 2-D, or NaN/infinite values.
    """
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise DataError(f"{who}: features must be a 2-D matrix, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{who}: features contain NaN or infinite values")
    return arr


def check_rows(rows: np.ndarray, n: int, *, who: str, what: str) -> np.ndarray:
    """``rows`` as int64 indices into ``n`` rows.

    Raises:
        DataError: an index outside ``0..n-1``.
    """
    r = np.asarray(rows, dtype=np.int64).ravel()
    if r.size and (r.min() < 0 or r.max() >= n):
        raise DataError(f"{who}: {what} rows outside 0..{n - 1}")
    return r


# ------------------------------------------------------------------------------ fitting


def fit_model(
    x: np.ndarray,
    train_rows: np.ndarray,
    columns: Sequence[str] | None,
    *,
    dp: PrivacySection | None,
    intercept: bool,
    bounds: Mapping[str, tuple[float, float]],
    who: str,
) -> LocalModel:
    """This party's preprocessing: public bounds where given (every column under DP), else
    standardization with its own training rows' statistics (no DP only)."""
    cols = tuple(columns) if columns is not None else tuple(f"x{j}" for j in range(x.shape[1]))
    if len(cols) != x.shape[1]:
        raise DataError(f"{who}: {len(cols)} column names for {x.shape[1]} feature columns")
    lo, hi = feature_bounds(cols, bounds, source=who, required=dp is not None)
    free = np.isnan(lo)
    mean, scale = np.zeros(x.shape[1]), np.ones(x.shape[1])
    if free.any():  # never under DP (feature_bounds refused it)
        mean[free], scale[free] = standardize_fit(x[train_rows][:, free])
    dim = x.shape[1] + (1 if intercept else 0)
    return LocalModel(cols, mean, scale, dp.clip if dp else None, np.zeros(dim), intercept,
                      (lo, hi) if not free.all() else None)


def clip_logits(u: np.ndarray, plan: DpPlan | None) -> np.ndarray:
    """Under DP, each partial logit clipped to ``±B`` (``plan.logit_clip``), as the sensitivity assumes."""
    return u if plan is None else np.clip(u, -plan.logit_clip, plan.logit_clip)


def update(model: LocalModel, grad: np.ndarray, *, lr: float, l2: float) -> LocalModel:
    """One gradient step ``w ← w − lr (g + λ w)`` (no penalty on the intercept)."""
    reg = l2 * model.weights
    if model.intercept:
        reg[-1] = 0.0
    w = model.weights - lr * (grad + reg)
    return LocalModel(model.columns, model.mean, model.scale, model.clip, w, model.intercept, model.bounds)
