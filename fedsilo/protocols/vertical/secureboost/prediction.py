"""Joint prediction with the trees split across parties, and the metrics of its scores.

The guest walks every row down every tree, level by level. At its own splits it compares the
row's value with its threshold; at a host's split it asks that host, which answers left or right
from its lookup table. Per level each host gets one PREDICT message (possibly empty) and sends
one ROUTE back, so a job's prediction takes ``depth`` rounds whatever the number of trees.

What this releases: the guest learns, for each row and tree, the path — at every host split on
it, which side the row's value is on (never the value or the threshold); a host learns which rows
reach which of its nodes (through them, the sides of the splits above). A host answers only for
rows it was told it may score (in a job: the held-out rows) and only for its own splits.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedsilo.errors import ProtocolError
from fedsilo.protocols.channel import Channel
from fedsilo.protocols.vertical.secureboost.messages import PREDICT, ROUTE, check_mask, check_rows, gather_all, int_array
from fedsilo.protocols.vertical.secureboost.model import GuestModel, HostModel, children, goes_left

__all__ = ["predict_guest", "serve_routes"]


def predict_guest(
    channel: Channel, *, hosts: Sequence[str], model: GuestModel, x: np.ndarray, rows: np.ndarray, depth: int,
    round: int, timeout: float,
) -> np.ndarray:
    """Raw scores of ``rows`` (aligned indices; ``x`` the guest's aligned rows) under the joint
    trees, in rounds ``round .. round + depth - 1``."""
    me = channel.party
    rows = np.asarray(rows, dtype=np.int64)
    at = np.zeros((len(model.trees), rows.size), dtype=np.int64)
    for d in range(depth):
        asks: dict[str, list[tuple[int, int, np.ndarray]]] = {h: [] for h in hosts}
        for t, tree in enumerate(model.trees):
            for v in np.unique(at[t]).tolist():
                split = tree.splits.get(v)
                if split is None:
                    continue  # a leaf
                sel = np.flatnonzero(at[t] == v)
                if split.owner == me:
                    go = goes_left(x[rows[sel], split.feature], split.threshold, split.missing_left)
                    left, right = children(v)
                    at[t, sel] = np.where(go, left, right)
                else:
                    asks[split.owner].append((t, v, sel))
        for h in hosts:
            q = asks[h]
            sizes = [s.size for _, _, s in q]
            channel.send(h, PREDICT, {
                "tree": np.repeat(np.array([t for t, _, _ in q], dtype=np.int64), sizes),
                "node": np.repeat(np.array([v for _, v, _ in q], dtype=np.int64), sizes),
                "rows": rows[np.concatenate([s for _, _, s in q])] if q else np.zeros(0, dtype=np.int64),
            }, round=round + d)
        answers = gather_all(channel, hosts, ROUTE, round=round + d, timeout=timeout)
        for h in hosts:
            q = asks[h]
            total = sum(s.size for _, _, s in q)
            msg = answers[h]
            go = check_mask(msg.get("left") if isinstance(msg, dict) else None, length=total, who=me,
                            what=f"routes from {h!r}")
            start = 0
            for t, v, sel in q:
                left, right = children(v)
                at[t, sel] = np.where(go[start : start + sel.size], left, right)
                start += sel.size
    raw = np.full(rows.size, model.base)
    for t, tree in enumerate(model.trees):
        try:
            raw += np.array([tree.leaves[int(v)] for v in at[t]])
        except KeyError as exc:  # pragma: no cover - a tree deeper than `depth`
            raise ProtocolError(f"{me}: a row did not reach a leaf of tree {t + 1} in {depth} levels") from exc
    return raw


def serve_routes(
    channel: Channel, *, guest: str, model: HostModel, x: np.ndarray, allowed: np.ndarray, trees: int, depth: int,
    round: int, timeout: float,
) -> int:
    """A host's side: answer ``depth`` PREDICT messages for rows in ``allowed`` (sorted aligned
    indices) at its own splits; returns how many answers it gave.

    Raises:
        ProtocolError: rows it may not score (training rows), or a node that is not its split.
    """
    me = channel.party
    answered = 0
    for d in range(depth):
        msg = channel.recv(guest, PREDICT, round=round + d, timeout=timeout)
        if not isinstance(msg, dict):
            raise ProtocolError(f"{me}: malformed prediction request from {guest!r}")
        tree = int_array(msg.get("tree"), who=me, what="prediction trees")
        node = int_array(msg.get("node"), who=me, what="prediction nodes")
        rows = int_array(msg.get("rows"), who=me, what="prediction rows")
        if not (tree.size == node.size == rows.size):
            raise ProtocolError(f"{me}: malformed prediction request from {guest!r}")
        if rows.size and not np.isin(rows, allowed).all():
            raise ProtocolError(f"{me}: prediction request from {guest!r} names rows it may not score (training rows?)")
        left = np.zeros(rows.size, dtype=bool)
        for t, v in {(int(a), int(b)) for a, b in zip(tree.tolist(), node.tolist())}:
            if (t, v) not in model.table or not 0 <= t < trees:
                raise ProtocolError(f"{me}: prediction request from {guest!r} for a split it does not hold")
            sel = (tree == t) & (node == v)
            # the same row may reach this node of this tree only once
            check_rows(rows[sel], allowed=allowed, who=me, what="prediction rows")
            left[sel] = model.goes_left(t, v, x[rows[sel]])
        channel.send(guest, ROUTE, {"left": left}, round=round + d)
        answered += int(rows.size)
    return answered
