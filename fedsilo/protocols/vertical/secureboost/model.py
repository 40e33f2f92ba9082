"""Each party's share of the boosted trees. Nothing here is ever sent.

* :class:`Binning` — one party's bins: thresholds per feature, from its own training rows
  (quantiles) or from public bounds (equal width; required under DP);
* :class:`GuestModel` — the guest's trees: the structure, its own splits with their thresholds,
  for each host's split only **which host** owns it, and every leaf value;
* :class:`HostModel` — a host's lookup table: ``(tree, node) → (feature, threshold, NaN goes
  left)`` for the splits it won, never shown to anyone.

Nodes are numbered as in a heap: the root is 0, the children of ``i`` are ``2i + 1`` (left:
``x <= threshold``) and ``2i + 2``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedsilo.errors import DataError
from fedsilo.protocols.vertical.data import feature_bounds
from fedsilo.protocols.vertical.secureboost.boosting import (
    apply_thresholds,
    missing_default,
    quantile_thresholds,
    uniform_thresholds,
)

__all__ = [
    "Binning",
    "GuestModel",
    "GuestTree",
    "HostModel",
    "Importance",
    "Split",
    "children",
    "fit_binning",
    "goes_left",
    "joint_scores",
    "refuse_constant",
    "refuse_empty",
]


def children(node: int) -> tuple[int, int]:
    """``(left, right)`` of ``node``."""
    return 2 * node + 1, 2 * node + 2


def goes_left(values: np.ndarray, threshold: float, missing_left: bool) -> np.ndarray:
    """Which ``values`` go left at a split: ``x <= threshold``, a NaN to the side the split says."""
    values = np.asarray(values, dtype=np.float64)
    return np.where(np.isnan(values), missing_left, values <= threshold)


def refuse_empty(all_missing: Sequence[bool], columns: Sequence[str], *, source: str, where: str) -> None:
    """A column with no value at all (every row missing) is refused, naming it (all such columns).

    Raises:
        DataError: naming ``source``, the column and ``where`` it has no value.
    """
    empty = [c for c, e in zip(columns, all_missing, strict=True) if e]
    if empty:
        raise DataError(
            f"{source}: column {empty[0]!r} has no value over {where} (every row is missing): a tree can never "
            f"split on it; drop it{f' (also all missing: {empty[1:]})' if len(empty) > 1 else ''}"
        )


def refuse_constant(x: np.ndarray, columns: Sequence[str], *, source: str, where: str) -> None:
    """A column that can never split a node is refused, naming it: no value at all
    (:func:`refuse_empty`, with missing-value bins), or one value throughout; one value and some
    NaNs can split (NaN or not).

    Raises:
        DataError: naming ``source``, the column and ``where`` it is empty or constant (never a
            row count).
    """
    if x.shape[0] == 0:
        return
    nan = np.isnan(x)
    refuse_empty(nan.all(axis=0).tolist(), columns, source=source, where=where)
    flat = [c for j, c in enumerate(columns) if not nan[:, j].any() and np.ptp(x[:, j]) == 0]
    if flat:
        raise DataError(
            f"{source}: column {flat[0]!r} is constant over {where}: a tree can never "
            f"split on it; drop it{f' (also constant: {flat[1:]})' if len(flat) > 1 else ''}"
        )


@dataclass(frozen=True, slots=True)
class Binning:
    """One party's bins: ``thresholds[j]`` of column ``columns[j]`` (bin ``i`` holds
    ``t_{i-1} < x <= t_i``), and for each column whether they came from public bounds.

    ``missing_bin``: the bin of a NaN (``[model] bins``: after every value bin) with
    missing-value bins, else None; ``has_missing[j]``: column ``j`` has NaNs in the training rows
    (this party's own knowledge)."""

    columns: tuple[str, ...]
    thresholds: tuple[np.ndarray, ...]
    public: tuple[bool, ...]
    missing_bin: int | None = None
    has_missing: tuple[bool, ...] = ()

    @property
    def features(self) -> int:
        return len(self.columns)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Bin indices ``(rows, features)`` of the raw rows ``x``."""
        out = np.empty((x.shape[0], self.features), dtype=np.int64)
        for j, t in enumerate(self.thresholds):
            out[:, j] = apply_thresholds(values=x[:, j], thresholds=t, missing_bin=self.missing_bin)
        return out

    def split_bins(self, feature: int) -> int:
        """Bins a split of ``feature`` may name: after each threshold, and with missing-value bins
        after the last value bin too ("every value left, NaNs right")."""
        return self.thresholds[feature].size + (self.missing_bin is not None)

    def split(self, feature: int, bin: int, values: np.ndarray, *, chosen_left: bool) -> tuple[float, bool, np.ndarray]:
        """A split of ``feature`` after ``bin`` over ``values`` (the column at a node's training
        rows): its threshold, whether a NaN goes left (:func:`~.boosting.missing_default`: the
        side the guest chose, or the larger child when this column had no NaN in training) and
        which values go left. The owner of the split (guest or host) applies it alike."""
        threshold = self.threshold(feature, bin)
        le = values <= threshold  # NaN: False
        n_left = int(le.sum())
        ml = missing_default(has_missing=bool(self.has_missing and self.has_missing[feature]), chosen_left=chosen_left,
                             rows_left=n_left, rows_right=int(values.size) - n_left)
        return threshold, ml, goes_left(values, threshold, ml)

    def threshold(self, feature: int, bin: int) -> float:
        """The value splitting bins ``0..bin`` from the rest (``inf`` past the last threshold:
        every value left)."""
        t = self.thresholds[feature]
        return float(t[bin]) if bin < t.size else float("inf")


def fit_binning(
    x: np.ndarray,
    train_rows: np.ndarray,
    columns: Sequence[str],
    *,
    bins: int,
    bounds: Mapping[str, tuple[float, float]],
    required: bool,
    source: str,
    missing: bool = False,
) -> Binning:
    """Thresholds of each column: equal-width over its public bounds when it has some (every
    column must under DP: ``required``), else the quantiles of this party's training rows;
    ``missing``: NaNs get bin ``bins`` (missing-value bins).

    Raises:
        ConfigError: ``required`` and some columns have no bounds (all named).
        DataError: a column constant over the training rows.
    """
    cols = tuple(columns)
    lo, hi = feature_bounds(cols, bounds, source=source, required=required)
    xt = x[train_rows]
    refuse_constant(xt, cols, source=source, where="the aligned training rows")
    thresholds, public = [], []
    for j in range(len(cols)):
        if np.isnan(lo[j]):
            thresholds.append(quantile_thresholds(values=xt[:, j], bins=bins))
            public.append(False)
        else:
            thresholds.append(uniform_thresholds(lo=float(lo[j]), hi=float(hi[j]), bins=bins))
            public.append(True)
    return Binning(cols, tuple(thresholds), tuple(public), bins if missing else None,
                   tuple(bool(np.isnan(xt[:, j]).any()) for j in range(len(cols))))


@dataclass(frozen=True, slots=True)
class Importance:
    """Per feature of one party: how many splits it won and their total gain."""

    splits: np.ndarray
    gain: np.ndarray

    @classmethod
    def zeros(cls, features: int) -> "Importance":
        return cls(np.zeros(features, dtype=np.int64), np.zeros(features))

    def add(self, feature: int, gain: float) -> "Importance":
        splits, total = self.splits.copy(), self.gain.copy()
        splits[feature] += 1
        total[feature] += gain
        return Importance(splits, total)

    def named(self, columns: Sequence[str]) -> dict[str, dict[str, float]]:
        """``{column: {"splits", "gain"}}`` (only a party's own columns have names; ``gain`` None
        where the party does not know it: a host's, which only the guest computes)."""
        return {c: {"splits": int(s), "gain": None if np.isnan(g) else float(g)}
                for c, s, g in zip(columns, self.splits, self.gain)}


@dataclass(frozen=True, slots=True)
class Split:
    """An internal node in the guest's view: the ``owner`` party, and for the guest's own
    splits its ``feature``, ``threshold`` and where a NaN goes (for a host's, the guest knows
    only the host)."""

    owner: str
    feature: int | None = None
    threshold: float | None = None
    missing_left: bool = False


@dataclass(frozen=True, slots=True)
class GuestTree:
    splits: Mapping[int, Split]
    leaves: Mapping[int, float]


@dataclass(frozen=True)
class GuestModel:
    """The guest's trees (never sent): base score, trees, its own binning."""

    base: float
    trees: tuple[GuestTree, ...]
    binning: Binning
    guest: str


@dataclass(frozen=True)
class HostModel:
    """A host's lookup table (never sent): ``(tree, node) → (feature, threshold, NaN goes left)``."""

    binning: Binning
    table: Mapping[tuple[int, int], tuple[int, float, bool]] = field(default_factory=dict)

    def goes_left(self, tree: int, node: int, x: np.ndarray) -> np.ndarray:
        """Which of the raw rows ``x`` go left at this host's split ``(tree, node)``."""
        feature, threshold, missing_left = self.table[(tree, node)]
        return goes_left(x[:, feature], threshold, missing_left)


def joint_scores(guest: GuestModel, guest_x: np.ndarray, hosts: Mapping[str, tuple[HostModel, np.ndarray]]) -> np.ndarray:
    """Raw scores of rows every party holds, from every party's model: what the joint
    prediction computes, done in one place — **simulation only** (no party holds all models)."""
    n = guest_x.shape[0]
    raw = np.full(n, guest.base)
    for t, tree in enumerate(guest.trees):
        node = np.zeros(n, dtype=np.int64)
        while True:
            inner = np.isin(node, list(tree.splits))
            if not inner.any():
                break
            for v in np.unique(node[inner]):
                at = node == v
                split = tree.splits[int(v)]
                if split.owner == guest.guest:
                    left = goes_left(guest_x[at, split.feature], split.threshold, split.missing_left)
                else:
                    model, x = hosts[split.owner]
                    left = model.goes_left(t, int(v), x[at])
                node[at] = np.where(left, 2 * v + 1, 2 * v + 2)
        raw += np.array([tree.leaves[int(v)] for v in node])
    return raw
