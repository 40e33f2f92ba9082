"""PSI confirmation and low-overlap warning (issue 16 item 4 review), the curve fast path, one ID check.

The confirmation digest covers the intersection's IDs in the agreed order and the values they
were matched on: it agrees iff both sides hold the same IDs in the same order. An ID *format*
mismatch ("00123" against "123") never reaches the intersection, so it is reported by the
low-overlap warning each party raises from sizes it already knows, naming no ID.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.dtypes import StringDType

from fedsilo.errors import DataError, JobAbortedError, ProtocolError
from fedsilo.protocols import psi
from fedsilo.protocols.channel import InProcessHub, run_parties
from fedsilo.protocols.psi import (
    DOUBLE_BYTES,
    IdTable,
    LowOverlapWarning,
    hash_to_curve,
    ids_from_column,
    mask_points,
    psi_in_process,
    psi_party,
)

_IDS = st.lists(st.text(min_size=1, max_size=6), max_size=12)


def _arr(ids: list[str]) -> np.ndarray:
    return np.array(ids, dtype=StringDType())


@settings(max_examples=200, deadline=None)
@given(_IDS, _IDS, st.binary(min_size=0, max_size=4 * DOUBLE_BYTES))
def test_confirmation_agrees_iff_both_sides_hold_the_same_ids_in_the_same_order(
    mine: list[str], theirs: list[str], raw: bytes
) -> None:
    doubles = np.frombuffer(raw[: len(raw) // DOUBLE_BYTES * DOUBLE_BYTES], dtype=np.uint8).reshape(-1, DOUBLE_BYTES)
    same = psi._confirmation(_arr(mine), doubles) == psi._confirmation(_arr(theirs), doubles)
    assert same == (mine == theirs)


def test_the_id_digest_delimits_ids_and_sees_the_order() -> None:
    assert psi._id_digest(_arr(["a", "bc"])) != psi._id_digest(_arr(["ab", "c"]))
    assert psi._id_digest(_arr(["a", "b"])) != psi._id_digest(_arr(["b", "a"]))
    assert psi._id_digest(_arr([])) != psi._id_digest(_arr([""]))
    many = _arr([str(i) for i in range(3 * psi._DIGEST_BLOCK // 2)])  # across digest blocks
    assert psi._id_digest(many) != psi._id_digest(many[::-1].copy())


def test_a_peer_that_orders_the_intersection_otherwise_is_caught_naming_no_id() -> None:
    ids = ["alice-77", "bob-12", "carol-55", "dave-90"]
    honest = IdTable.from_ids(ids, source="g")
    # another implementation's agreed order: the same IDs and matches, reversed ranks
    other = IdTable(values=honest.values, rank=(len(ids) - 1 - honest.rank).astype(honest.rank.dtype), source="h")
    hub = InProcessHub("psi-order", ["g", "h"])
    with pytest.raises((ProtocolError, JobAbortedError)) as err:
        run_parties(hub, {
            "g": lambda ch: psi_party(ch, peer="h", ids=honest, rng=np.random.default_rng(0)),
            "h": lambda ch: psi_party(ch, peer="g", ids=other, rng=np.random.default_rng(1)),
        })
    assert "different intersections" in str(err.value)
    assert not any(i in str(err.value) for i in ids)


@pytest.mark.parametrize(
    ("left", "right", "hint"),
    [
        ([f"{i:07d}" for i in range(1000, 1060)], [str(i) for i in range(1000, 1060)], "leading zeros"),
        ([f"AC{i}" for i in range(1000, 1060)], [f"ac{i}" for i in range(1000, 1060)], "upper-case letters"),
        ([f" {i}" for i in range(1000, 1060)], [str(i) for i in range(1000, 1060)], "leading or trailing spaces"),
    ],
)
def test_a_format_mismatch_is_reported_by_a_warning_that_names_no_id(left: list[str], right: list[str], hint: str) -> None:
    # a format mismatch gives the same (small) intersection on both sides: the digests agree and
    # the run completes; each side warns from the sizes it already knows
    with pytest.warns(LowOverlapWarning) as caught:
        run = psi_in_process(left, right)
    assert run.left.size == run.right.size == 0
    texts = [str(w.message) for w in caught if issubclass(w.category, LowOverlapWarning)]
    assert len(texts) == 2 and any(hint in t for t in texts)
    assert all("less than 10%" in t for t in texts)
    for t in texts:
        assert not any(i.strip() in t for i in left + right), t
        assert "60" not in t  # no set size either


def test_cardinality_only_warns_alike_and_a_good_overlap_does_not_warn() -> None:
    with pytest.warns(LowOverlapWarning):
        psi_in_process([f"{i:05d}" for i in range(1, 30)], [str(i) for i in range(1, 30)], cardinality_only=True)
    a = [str(i) for i in range(40)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", LowOverlapWarning)
        assert psi_in_process(a, a[30:] + ["x", "y"]).left.size == 10  # 10 of the smaller set's 12
        assert psi_in_process(a, []).left.size == 0  # an empty side: nothing to compare


@settings(max_examples=25, deadline=None)
@given(st.lists(st.text(max_size=8), min_size=1, max_size=20, unique=True), st.sampled_from([32, DOUBLE_BYTES]))
def test_mask_points_fast_path_equals_the_public_api(ids: list[str], keep: int) -> None:
    key = X25519PrivateKey.generate().private_bytes_raw()
    pts = hash_to_curve(ids, domain=b"t")
    sk = X25519PrivateKey.from_private_bytes(key)
    want = b"".join(
        sk.exchange(X25519PublicKey.from_public_bytes(pts[i : i + 32]))[:keep] for i in range(0, len(pts), 32)
    )
    assert mask_points(pts, key=key, keep=keep) == want


@pytest.mark.parametrize(
    ("values", "first_line", "message"),
    [
        # a CSV (first data row on line 2): rows are the file's lines, as the NaN error counts them
        (["x", "alice@b", "y", "alice@b", "y"], 2,
         r"b\.csv: column 'id' has duplicate IDs \(the first at rows 3 and 5 of the file\); IDs must be unique"),
        (["z", "y", "y", "z"], 2, r"b\.csv: column 'id' has duplicate IDs \(the first at rows 2 and 5 of the file\)"),
        (["x", "", "y", ""], 2, r"b\.csv: column 'id' has 2 empty IDs \(first at row 3 of the file\)"),
        # not a file: the row's 1-based position in the table
        (["x", "alice@b", "y", "alice@b", "y"], None,
         r"b\.csv: column 'id' has duplicate IDs \(the first at rows 2 and 4 of the table\)"),
        (["x", "", "y", ""], None, r"b\.csv: column 'id' has 2 empty IDs \(first at row 2 of the table\)"),
    ],
)
def test_column_and_table_id_checks_are_one_check_with_one_message(values: list[str], first_line: int | None,
                                                                   message: str) -> None:
    errors = []
    kw = dict(source="b.csv", column="id", first_line=first_line)
    for call in (
        lambda: ids_from_column(pd.Series(values), **kw),
        lambda: IdTable.from_ids(values, **kw),
        lambda: IdTable.from_ids(_arr(values), **kw),
        lambda: IdTable.from_chunks([pd.Series(values[:1]), pd.Series(values[1:])], **kw),
    ):
        with pytest.raises(DataError, match=message) as err:
            call()
        errors.append(str(err.value))
        assert "alice" not in str(err.value)
    assert len(set(errors)) == 1


def test_duplicate_id_error_gives_no_count_and_chunks_count_file_lines_by_default() -> None:
    values = ["a", "b", "a", "b", "c", "c"]  # three IDs repeat: the message must not say so
    with pytest.raises(DataError) as err:
        ids_from_column(pd.Series(values), source="b.csv", column="id")
    assert str(err.value) == "b.csv: column 'id' has duplicate IDs (the first at rows 1 and 3 of the table); IDs must be unique"
    assert "3 duplicate" not in str(err.value)
    # from_chunks reads a CSV with a header line (fedsilo psi): the file's line numbers
    with pytest.raises(DataError, match=r"rows 2 and 4 of the file"):
        IdTable.from_chunks([pd.Series(values[:2]), pd.Series(values[2:])], source="b.csv", column="id")
    with pytest.raises(DataError, match=r"missing IDs \(first at row 4 of the file\)"):
        IdTable.from_chunks([pd.Series(["a"]), pd.Series(["b", None])], source="b.csv", column="id")
    with pytest.raises(DataError, match=r"non-integral numbers \(first at row 2 of the table\)"):
        ids_from_column(pd.Series([1.0, 2.5]), source="b.csv", column="id")
