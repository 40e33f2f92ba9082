"""PSI: exact agreement with a plain set intersection, agreed order, what each side receives."""
from __future__ import annotations

import gmpy2
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsilo.errors import DataError, JobAbortedError, ProtocolError
from fedsilo.protocols import codec, psi
from fedsilo.protocols.channel import InProcessHub, run_parties
from fedsilo.protocols.psi import (
    DOUBLE_BYTES,
    POINT_BYTES,
    align_guest,
    align_host,
    hash_to_curve,
    ids_from_column,
    mask_points,
    psi_in_process,
    psi_party,
)

P = 2**255 - 19


def _two_party(a, b, **kw):
    hub = InProcessHub("psi-test", ["g", "h"])
    out = run_parties(
        hub,
        {
            "g": lambda ch: psi_party(ch, peer="h", ids=a, rng=np.random.default_rng(1), **kw),
            "h": lambda ch: psi_party(ch, peer="g", ids=b, rng=np.random.default_rng(2), **kw),
        },
    )
    return hub, out["g"], out["h"]


def test_hash_to_curve_gives_points_on_the_curve_and_depends_on_domain() -> None:
    ids = [f"id{i}" for i in range(200)]
    pts = hash_to_curve(ids, domain=b"d1")
    assert len(pts) == 200 * POINT_BYTES
    for j in range(200):
        u = int.from_bytes(pts[32 * j : 32 * j + 32], "little")
        assert 0 < u < P
        assert gmpy2.jacobi((u**3 + 486662 * u * u + u) % P, P) == 1  # on the curve, not the twist
    assert hash_to_curve(ids, domain=b"d1") == pts
    other = hash_to_curve(ids, domain=b"d2")
    assert all(pts[32 * j : 32 * j + 32] != other[32 * j : 32 * j + 32] for j in range(200))


def test_masking_commutes() -> None:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    a, b = (X25519PrivateKey.generate().private_bytes_raw() for _ in range(2))
    h = hash_to_curve(["x", "y", "z"], domain=b"t")
    assert mask_points(mask_points(h, key=a), key=b) == mask_points(mask_points(h, key=b), key=a)


def test_low_order_point_from_peer_is_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    key = X25519PrivateKey.generate().private_bytes_raw()
    with pytest.raises(ProtocolError, match="low-order"):
        mask_points(bytes(32), key=key)
    with pytest.raises(ProtocolError, match="whole number"):
        mask_points(bytes(33), key=key)


def test_two_party_exact_agreement_and_agreed_order() -> None:
    rng = np.random.default_rng(0)
    universe = [f"cust-{i:06d}" for i in range(6000)]
    a = list(rng.choice(universe, 3000, replace=False))
    b = list(rng.choice(universe, 2500, replace=False))
    hub, g, h = _two_party(a, b)
    expected = set(a) & set(b)
    assert set(g.ids) == expected and g.size == len(expected)
    assert g.ids == h.ids  # the same order on both sides ...
    assert list(g.ids) == sorted(expected)  # ... sorted by ID
    assert [a[i] for i in g.positions] == list(g.ids)  # positions index each side's own rows
    assert [b[i] for i in h.positions] == list(h.ids)
    assert (g.local_size, g.peer_size, h.local_size, h.peer_size) == (3000, 2500, 2500, 3000)
    # 32 bytes per own masked ID out, 16 per double-masked peer ID back (a truncated u-coordinate)
    sent = hub.bytes_sent()
    assert 32 * 3000 + 16 * 2500 <= sent["g"] < 32 * 3000 + 16 * 2500 + 2000
    assert 32 * 2500 + 16 * 3000 <= sent["h"] < 32 * 2500 + 16 * 3000 + 2000


def test_no_party_receives_the_other_s_ids_in_the_clear() -> None:
    a = [f"alice-secret-{i}" for i in range(300)]
    b = [f"alice-secret-{i}" for i in range(150, 450)]
    hub, _, _ = _two_party(a, b)
    for party, others in (("g", set(b) - set(a)), ("h", set(a) - set(b))):
        blob = b"".join(e.body for e in hub.received_by(party))
        assert not any(i.encode() in blob for i in others)
        kinds = {e.kind for e in hub.received_by(party)}
        assert kinds == {"psi/masked", "psi/double", "psi/confirm"}
        for e in hub.received_by(party):
            msg = codec.decode(e.body)
            if e.kind == "psi/masked":
                assert len(msg["points"]) % POINT_BYTES == 0
            if e.kind == "psi/double":
                assert len(msg["points"]) % DOUBLE_BYTES == 0


@settings(max_examples=25, deadline=None)
@given(
    st.sets(st.text(min_size=1, max_size=6), max_size=25),
    st.sets(st.text(min_size=1, max_size=6), max_size=25),
)
def test_psi_equals_set_intersection(a: set[str], b: set[str]) -> None:
    _, g, h = _two_party(sorted(a), sorted(b))
    assert set(g.ids) == a & b and g.ids == h.ids


def test_cardinality_only_reveals_only_the_size() -> None:
    a = [str(i) for i in range(500)]
    b = [str(i) for i in range(300, 1000)]
    hub, g, h = _two_party(a, b, cardinality_only=True)
    assert g.size == h.size == 200
    assert g.ids == h.ids == () and g.positions.size == 0
    # the double-masked own IDs come back shuffled: their order says nothing about which matched
    sent = codec.decode(next(e.body for e in hub.received_by("h") if e.kind == "psi/masked"))["points"]
    assert len(sent) == 500 * POINT_BYTES


def test_mismatched_modes_are_refused() -> None:
    hub = InProcessHub("psi-test", ["g", "h"])
    with pytest.raises((ProtocolError, JobAbortedError)):
        run_parties(
            hub,
            {
                "g": lambda ch: psi_party(ch, peer="h", ids=["1"], rng=np.random.default_rng(1), cardinality_only=True),
                "h": lambda ch: psi_party(ch, peer="g", ids=["1"], rng=np.random.default_rng(2)),
            },
        )


def test_multi_host_alignment_intersects_pairwise_results() -> None:
    rng = np.random.default_rng(3)
    universe = [f"p{i}" for i in range(3000)]
    g_ids = list(rng.choice(universe, 2000, replace=False))
    h_ids = {h: list(rng.choice(universe, 1800, replace=False)) for h in ("h0", "h1")}
    hub = InProcessHub("align", ["g", "h0", "h1"])
    out = run_parties(
        hub,
        {
            "g": lambda ch: align_guest(ch, hosts=["h0", "h1"], ids=g_ids, rng=np.random.default_rng(0)),
            **{
                h: (lambda h: lambda ch: align_host(ch, guest="g", ids=h_ids[h], rng=np.random.default_rng(1)))(h)
                for h in ("h0", "h1")
            },
        },
    )
    expected = sorted(set(g_ids) & set(h_ids["h0"]) & set(h_ids["h1"]))
    assert list(out["g"].ids) == expected
    for h in ("h0", "h1"):
        assert out[h].ids == out["g"].ids
        assert [h_ids[h][i] for i in out[h].positions] == expected
        assert out["g"].pairwise[h] == len(set(g_ids) & set(h_ids[h]))
    assert [g_ids[i] for i in out["g"].positions] == expected


def test_no_overlap_is_a_data_error_on_every_side() -> None:
    hub = InProcessHub("align", ["g", "h"])
    with pytest.raises(DataError, match="share no IDs"):
        run_parties(
            hub,
            {
                "g": lambda ch: align_guest(ch, hosts=["h"], ids=["a", "b"], rng=np.random.default_rng(0), source="bank.csv"),
                "h": lambda ch: align_host(ch, guest="g", ids=["c", "d"], rng=np.random.default_rng(1), source="partner.csv"),
            },
        )


def test_ids_from_column_rejects_bad_ids_with_file_column_and_example() -> None:
    with pytest.raises(DataError, match=r"bank\.csv: column 'id' has duplicate IDs \(the first at rows 1 and 2 of the table\)"):
        ids_from_column(pd.Series([7, 7, 8]), source="bank.csv", column="id")
    with pytest.raises(DataError, match=r"bank\.csv: column 'id' has 1 missing IDs \(first at row 2 of the table\)"):
        ids_from_column(pd.Series(["a", None, "c"]), source="bank.csv", column="id")
    with pytest.raises(DataError, match="empty IDs"):
        ids_from_column(pd.Series(["a", ""]), source="f", column="id")
    with pytest.raises(DataError, match="non-integral"):
        ids_from_column(pd.Series([1.5, 2.0]), source="f", column="id")
    assert ids_from_column(pd.Series([1042, 7]), source="f", column="id") == ["1042", "7"]
    assert ids_from_column(pd.Series([1042.0, 7.0]), source="f", column="id") == ["1042", "7"]
    assert ids_from_column(pd.Series(["007", "x"]), source="f", column="id") == ["007", "x"]


def test_process_pool_path_gives_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psi, "POOL_THRESHOLD", 100)
    a = [f"c{i}" for i in range(1200)]
    b = [f"c{i}" for i in range(600, 2000)]
    run = psi_in_process(a, b, workers=2)
    assert list(run.left.ids) == sorted(set(a) & set(b)) and run.left.ids == run.right.ids


@pytest.mark.slow
def test_psi_1e5_by_1e5_half_overlap_exact() -> None:
    n = 100_000
    rng = np.random.default_rng(5)
    ids = rng.choice(10**9, size=int(1.5 * n), replace=False).astype(str)
    a, b = list(ids[:n]), list(ids[n // 2 :])
    run = psi_in_process(a, b, workers=None)
    assert run.left.ids == run.right.ids
    assert set(run.left.ids) == set(a) & set(b) and run.left.size == n // 2
    assert run.bytes_sent["left"] < (32 + 16) * n * 1.01
