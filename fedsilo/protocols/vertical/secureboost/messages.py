"""The messages of SecureBoost, in the order of one job, and the checks a receiver makes.

Each kind goes from one role to another and carries one payload shape (encoded by
:mod:`fedsilo.protocols.codec`). ``[[·]]`` is a ciphertext under the **guest's** Paillier key,
serialized (a blob of fixed-width integers, :mod:`.cipher`); rows are int64 indices into the
aligned rows (the PSI order every party shares). The steps that send them are drawn in
:mod:`.parties`.

Rounds (from the job's ``start`` round): one set-up round (HELLO, SETUP); per tree ``t`` one round
for TREE and one per level ``d`` (LEVEL, HIST, SPLIT, PARTITION); after the last tree one round
for TREE ``{"stop": True}`` and IMPORTANCE; then one round per level of the joint prediction
(PREDICT, ROUTE).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from fedsilo.errors import ProtocolError
from fedsilo.protocols.vertical.messages import gather_all  # one helper for both vertical protocols

__all__ = [
    "HELLO",
    "HIST",
    "HOLDOUT",
    "IMPORTANCE",
    "LEVEL",
    "MESSAGE_KINDS",
    "PARTITION",
    "PREDICT",
    "ROUTE",
    "SETUP",
    "SPLIT",
    "TREE",
    "check_mask",
    "check_rows",
    "gather_all",
    "int_array",
]

# ------------------------------------------------------------------------------ message kinds
#: guest → hosts, once after PSI: ``{"test": rows}`` (the held-out rows; public among the parties)
HOLDOUT = "sb/holdout"
#: host → guest, once: ``{"rows": int, "train": int, "test": int, "features": int, "config": str,
#: "crypto": str, "dp": str}`` (its row counts, feature count, digests of its settings)
HELLO = "sb/hello"
#: guest → hosts, once: ``{"public": bytes, "features": int}`` (the guest's Paillier public key,
#: empty for ``plain``; the most features of any host, which sizes every host's noise margin)
SETUP = "sb/setup"
#: guest → hosts, per tree: ``{"stop": False, "tree": int, "rows": rows, "gh": [[g, h]] per row}``
#: (the tree's sample and one packed ciphertext per row — two unpacked: ``[[g]], [[h]]``);
#: after the last tree ``{"stop": True}``
TREE = "sb/tree"
#: guest → hosts, per level: ``{"done": False, "nodes": int array, "rows": [rows]}`` (the nodes
#: whose histograms the guest needs and their sampled rows: disjoint); ``{"done": True}`` ends the tree
LEVEL = "sb/level"
#: host → guest, answer to LEVEL: ``{"ct": [bytes]}``, per node its packed encrypted histogram
#: ``[[(G, H, count) per feature and bin]]`` (offsets, counts and, under DP, noise added)
HIST = "sb/hist"
#: guest → hosts, per level: ``{"nodes", "feature", "bin": int arrays, "rows": [rows]}`` — the
#: splits this host won ("bins 0..bin of feature go left") and every training row of each node;
#: empty arrays when it won none
SPLIT = "sb/split"
#: host → guest, answer to SPLIT: ``{"left": [bool arrays]}`` (per split, which of the node's rows
#: go left). The threshold stays at the host, in its lookup table
PARTITION = "sb/partition"
#: guest → hosts, once after training: ``{"splits": int array, "gain": float array}`` per feature
#: of that host (its features' importance; the guest knows them by index only)
IMPORTANCE = "sb/importance"
#: guest → hosts, per level of the joint prediction: ``{"tree", "node", "rows": int arrays}`` (the
#: held-out rows now at a node of this host)
PREDICT = "sb/predict"
#: host → guest, answer to PREDICT: ``{"left": bool array}``
ROUTE = "sb/route"

MESSAGE_KINDS = (HOLDOUT, HELLO, SETUP, TREE, LEVEL, HIST, SPLIT, PARTITION, IMPORTANCE, PREDICT, ROUTE)


# ------------------------------------------------------------------------------ receiving and checking




def int_array(value: Any, *, who: str, what: str) -> np.ndarray:
    """``value`` checked to be a 1-D integer array.

    Raises:
        ProtocolError: anything else.
    """
    if not isinstance(value, np.ndarray) or value.ndim != 1 or value.dtype.kind not in "iu":
        raise ProtocolError(f"{who}: malformed {what} (expected a 1-D integer array)")
    return value.astype(np.int64)


def check_rows(value: Any, *, allowed: np.ndarray, who: str, what: str) -> np.ndarray:
    """Row indices checked to be distinct members of the sorted array ``allowed``.

    Raises:
        ProtocolError: malformed, repeated, or outside ``allowed``.
    """
    rows = int_array(value, who=who, what=what)
    if rows.size and (np.unique(rows).size != rows.size or not np.isin(rows, allowed).all()):
        raise ProtocolError(f"{who}: {what} names rows twice or rows it may not use")
    return rows


def check_mask(value: Any, *, length: int, who: str, what: str) -> np.ndarray:
    """A boolean vector of ``length`` entries.

    Raises:
        ProtocolError: anything else.
    """
    if not isinstance(value, np.ndarray) or value.dtype != np.bool_ or value.shape != (length,):
        raise ProtocolError(f"{who}: malformed {what} (expected {length} booleans)")
    return value
