"""Review of the streamed ECDH-PSI: pins the security-relevant behaviour of the rewrite.

Hash to curve against an independent reference (Euler's criterion, RFC 7748 §4.1), secret
scalars and send orders from the OS CSPRNG (not from the ``rng`` seed), responses in the
received order (and shuffled in cardinality-only mode), low-order and malformed peer messages
refused with :class:`ProtocolError`, exact matching under 64-bit prefix collisions, exact
multi-host results, and error messages that name no ID.
"""
from __future__ import annotations

import hashlib
import threading

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.dtypes import StringDType

from fedsilo.errors import DataError, JobAbortedError, PeerTimeoutError, ProtocolError
from fedsilo.protocols import codec, psi, psi_curve
from fedsilo.protocols.channel import InProcessHub, run_parties
from fedsilo.protocols.psi import (
    DOUBLE_BYTES,
    POINT_BYTES,
    align_guest,
    align_host,
    hash_to_curve,
    mask_points,
    psi_in_process,
    psi_party,
)

P = 2**255 - 19
A = 486662
# Curve25519 points of small order (u-coordinates), with non-canonical encodings u + p
LOW_ORDER = (
    0,
    1,
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
    P - 1,
    P,
    P + 1,
)


def _reference_hash(ident: str, domain: bytes) -> bytes:
    """Try-and-increment written independently: Euler's criterion instead of gmpy2.jacobi."""
    data = ident.encode("utf-8")
    prefix = len(domain).to_bytes(2, "big") + domain + len(data).to_bytes(4, "big") + data
    for ctr in range(128):
        u = int.from_bytes(hashlib.sha512(prefix + bytes((ctr,))).digest(), "little") % P
        rhs = (u * u * u + A * u * u + u) % P
        if rhs and pow(rhs, (P - 1) // 2, P) == 1:
            return u.to_bytes(32, "little")
    raise AssertionError("no point")


def _masked_from(hub: InProcessHub, sender: str, kind: str = psi.MASKED) -> bytes:
    return b"".join(codec.decode(e.body)["points"] for e in hub.log if e.sender == sender and e.kind == kind)


class _FixedKey:
    """Stands in for X25519PrivateKey in ``psi``: every party gets the same known scalar."""

    key = X25519PrivateKey.generate().private_bytes_raw()

    @classmethod
    def generate(cls) -> _FixedKey:
        return cls()

    def private_bytes_raw(self) -> bytes:
        return self.key


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=40), min_size=1, max_size=8), st.binary(max_size=20))
def test_hash_to_curve_matches_an_independent_reference(ids: list[str], domain: bytes) -> None:
    assert hash_to_curve(ids, domain=domain) == b"".join(_reference_hash(i, domain) for i in ids)


def test_hash_input_is_length_prefixed_so_domain_and_id_cannot_be_shifted() -> None:
    assert hash_to_curve(["bc"], domain=b"a") != hash_to_curve(["c"], domain=b"ab")
    assert psi._domain(b"d", "job1") != psi._domain(b"d", "job2")


@pytest.mark.parametrize("u", LOW_ORDER)
def test_every_low_order_point_is_refused_on_both_mask_paths(u: int) -> None:
    key = X25519PrivateKey.generate().private_bytes_raw()
    good = hash_to_curve(["x"], domain=b"t")
    for keep in (POINT_BYTES, DOUBLE_BYTES):
        with pytest.raises(ProtocolError, match="low-order"):
            mask_points(good + u.to_bytes(32, "little"), key=key, keep=keep)


def test_low_order_point_in_the_peer_s_stream_stops_the_honest_party() -> None:
    hub = InProcessHub("psi-low", ["g", "h"])

    def liar(ch):
        ch.send("g", psi.MASKED, {"points": bytes(POINT_BYTES), "n": 1, "card": False}, round=0)
        ch.recv("g", psi.MASKED, round=0, timeout=30)

    with pytest.raises((ProtocolError, JobAbortedError), match="low-order"):
        run_parties(hub, {"g": lambda ch: psi_party(ch, peer="h", ids=["1", "2"], rng=np.random.default_rng(0)),
                          "h": liar})
    # the honest party sent nothing derived from the bad point
    assert _masked_from(hub, "g", psi.DOUBLE) == b""


def test_peer_changing_its_announced_size_or_stopping_short_is_refused() -> None:
    one = hash_to_curve(["q"], domain=b"x")

    def changes_size(ch):
        ch.send("g", psi.MASKED, {"points": one, "n": 3, "card": False}, round=0)
        ch.send("g", psi.MASKED, {"points": one, "n": 2, "card": False}, round=0)
        ch.recv("g", psi.MASKED, round=0, timeout=30)

    def stops_short(ch):
        ch.send("g", psi.MASKED, {"points": one, "n": 2, "card": False}, round=0)
        ch.recv("g", psi.MASKED, round=0, timeout=30)

    with pytest.raises((ProtocolError, JobAbortedError), match="set size other than"):
        run_parties(InProcessHub("psi-n", ["g", "h"]),
                    {"g": lambda ch: psi_party(ch, peer="h", ids=["1"], rng=np.random.default_rng(0)),
                     "h": changes_size})
    with pytest.raises(PeerTimeoutError):
        run_parties(InProcessHub("psi-short", ["g", "h"]),
                    {"g": lambda ch: psi_party(ch, peer="h", ids=["1"], rng=np.random.default_rng(0), timeout=1.0),
                     "h": stops_short})


def test_scalars_come_from_the_os_not_from_the_rng_seed() -> None:
    ids = [f"id{i}" for i in range(20)]

    def run():
        hub = InProcessHub("psi-seed", ["g", "h"])
        run_parties(hub, {"g": lambda ch: psi_party(ch, peer="h", ids=ids, rng=np.random.default_rng(5)),
                          "h": lambda ch: psi_party(ch, peer="g", ids=ids, rng=np.random.default_rng(5))})
        return _masked_from(hub, "g")

    first, second = run(), run()
    assert len(first) == len(second) == 20 * POINT_BYTES
    # same IDs, same seeded rng, same job: a seeded scalar would repeat the values
    assert set(_split(first, POINT_BYTES)).isdisjoint(_split(second, POINT_BYTES))


def _split(blob: bytes, size: int) -> list[bytes]:
    return [blob[i : i + size] for i in range(0, len(blob), size)]


def test_stream_is_in_the_secret_order_not_row_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psi, "X25519PrivateKey", _FixedKey)
    ids = [f"row{i:03d}" for i in range(60)]
    hub = InProcessHub("psi-order", ["g", "h"])
    run_parties(hub, {"g": lambda ch: psi_party(ch, peer="h", ids=ids, rng=np.random.default_rng(9), chunk=7),
                      "h": lambda ch: psi_party(ch, peer="g", ids=ids[:5], rng=np.random.default_rng(3))})
    perm = np.random.default_rng(9).permutation(len(ids))
    domain = psi._domain(psi.DEFAULT_DOMAIN, "psi-order")
    want = mask_points(hash_to_curve([ids[i] for i in perm], domain=domain), key=_FixedKey.key)
    assert _masked_from(hub, "g") == want
    assert _masked_from(hub, "g") != mask_points(hash_to_curve(ids, domain=domain), key=_FixedKey.key)


def test_psi_in_process_draws_a_fresh_os_order_each_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psi, "X25519PrivateKey", _FixedKey)  # same scalar: only the order can differ
    hubs: list[InProcessHub] = []
    lock = threading.Lock()

    class Recording(InProcessHub):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            with lock:
                hubs.append(self)

    monkeypatch.setattr(psi, "InProcessHub", Recording)
    ids = [f"c{i}" for i in range(40)]
    psi_in_process(ids, ids[:10])
    psi_in_process(ids, ids[:10])
    one, two = (_split(_masked_from(h, "left"), POINT_BYTES) for h in hubs)
    assert sorted(one) == sorted(two) and one != two  # same values, another order (40! orders)


def test_answers_keep_the_received_order_and_cardinality_only_shuffles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psi, "X25519PrivateKey", _FixedKey)
    a = [f"a{i}" for i in range(50)]
    b = [f"a{i}" for i in range(25, 90)]
    for card in (False, True):
        hub = InProcessHub("psi-ans", ["g", "h"])
        run_parties(hub, {"g": lambda ch: psi_party(ch, peer="h", ids=a, rng=np.random.default_rng(1), chunk=8,
                                                     cardinality_only=card),
                          "h": lambda ch: psi_party(ch, peer="g", ids=b, rng=np.random.default_rng(2), chunk=5,
                                                    cardinality_only=card)})
        sent = _masked_from(hub, "g")
        back = _split(_masked_from(hub, "h", psi.DOUBLE), DOUBLE_BYTES)
        want = _split(mask_points(sent, key=_FixedKey.key, keep=DOUBLE_BYTES), DOUBLE_BYTES)
        assert sorted(back) == sorted(want)
        assert (back == want) is (not card)


rows = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), max_size=25)


@settings(max_examples=150, deadline=None)
@given(rows, rows)
def test_members_equals_set_membership_under_prefix_collisions(own: list, other: list) -> None:
    # words from a tiny alphabet: many rows share a 64-bit prefix, and ``other`` has duplicates
    def arr(pairs):
        words = np.array([[lo * 0x0101010101010101, hi * 0x0303030303030303] for lo, hi in pairs],
                         dtype=np.uint64).reshape(-1, 2)
        return words.view(np.uint8).reshape(-1, DOUBLE_BYTES).copy()

    got = psi._members(arr(own), arr(other)).tolist()
    assert got == [pair in set(other) for pair in own]


ids_st = st.lists(st.text(min_size=1, max_size=20), max_size=12, unique=True)


@settings(max_examples=15, deadline=None)
@given(ids_st, ids_st, ids_st, st.integers(1, 5))
def test_multi_host_alignment_equals_the_plain_three_way_intersection(g: list, h1: list, h2: list, chunk: int) -> None:
    shared = set(g) & set(h1) & set(h2)
    hub = InProcessHub("psi-3", ["g", "h1", "h2"])
    parties = {
        "g": lambda ch: align_guest(ch, hosts=["h1", "h2"], ids=g, rng=np.random.default_rng(0), chunk=chunk),
        "h1": lambda ch: align_host(ch, guest="g", ids=h1, rng=np.random.default_rng(1), chunk=chunk),
        "h2": lambda ch: align_host(ch, guest="g", ids=h2, rng=np.random.default_rng(2), chunk=chunk),
    }
    if not shared:
        with pytest.raises((DataError, JobAbortedError), match="share no IDs"):
            run_parties(hub, parties)
        return
    out = run_parties(hub, parties)
    want = sorted(shared)
    for name, ids in (("g", g), ("h1", h1), ("h2", h2)):
        assert list(out[name].ids) == want
        assert [ids[i] for i in out[name].positions] == want
    assert out["g"].pairwise == {"h1": len(set(g) & set(h1)), "h2": len(set(g) & set(h2))}


def test_ids_with_nul_long_and_non_ascii_characters_intersect_exactly() -> None:
    a = ["a", "a\x00", "\x00", "é", "e\u0301", "😀" * 10, "x" * 100, "1"]
    b = ["a\x00", "e\u0301", "x" * 100, "x" * 99, "01", "😀" * 10]
    run = psi_in_process(a, b)
    assert list(run.left.ids) == list(run.right.ids) == sorted(set(a) & set(b))


def test_different_hash_domains_give_an_empty_intersection_on_both_sides() -> None:
    # the digest check cannot see this: both sides agree on the (empty) result
    hub = InProcessHub("psi-dom", ["g", "h"])
    out = run_parties(hub, {
        "g": lambda ch: psi_party(ch, peer="h", ids=["x", "y"], rng=np.random.default_rng(0), domain=b"one"),
        "h": lambda ch: psi_party(ch, peer="g", ids=["x", "y"], rng=np.random.default_rng(1), domain=b"two"),
    })
    assert out["g"].size == out["h"].size == 0


def test_error_messages_name_no_id_of_either_party() -> None:
    a = ["alice-7731", "bob-1288", "carol-5520"]
    b = ["bob-1288", "dave-9043"]
    hub = InProcessHub("psi-err", ["g", "h"])
    with pytest.raises((ProtocolError, JobAbortedError)) as mismatch:
        run_parties(hub, {
            "g": lambda ch: psi_party(ch, peer="h", ids=a, rng=np.random.default_rng(0), cardinality_only=True),
            "h": lambda ch: psi_party(ch, peer="g", ids=b, rng=np.random.default_rng(1)),
        })
    with pytest.raises((DataError, JobAbortedError)) as none:
        run_parties(InProcessHub("psi-err2", ["g", "h"]), {
            "g": lambda ch: align_guest(ch, hosts=["h"], ids=a[:1], rng=np.random.default_rng(0)),
            "h": lambda ch: align_host(ch, guest="g", ids=b[1:], rng=np.random.default_rng(1)),
        })
    for exc in (mismatch.value, none.value):
        assert not any(i in str(exc) for i in a + b), str(exc)


def test_id_errors_name_rows_not_values() -> None:
    # an agent's failure reason reaches every other silo: a party's own IDs must not be in it
    import pandas as pd

    from fedsilo.errors import DataError
    from fedsilo.protocols.psi_ids import IdTable, ids_from_column

    for call in (lambda: IdTable.from_ids(["x", "alice@bank", "y", "alice@bank"], source="b.csv"),
                 lambda: ids_from_column(pd.Series(["x", "alice@bank", "alice@bank"]), source="b.csv", column="id")):
        with pytest.raises(DataError) as err:
            call()
        assert "alice" not in str(err.value) and "rows 2 and" in str(err.value) and "of the table" in str(err.value)
    with pytest.raises(DataError) as err:
        ids_from_column(pd.Series([1.0, 2.5]), source="b.csv", column="id", first_line=2)
    assert "2.5" not in str(err.value) and "row 3 of the file" in str(err.value)


def test_a_peer_announcing_a_huge_set_is_a_protocol_error() -> None:
    from fedsilo.errors import ProtocolError
    from fedsilo.protocols import psi

    with pytest.raises(ProtocolError, match="more than the"):
        psi._masked_of({"points": b"", "n": 2**40, "card": False}, "h", False, None)


def test_the_confirmation_digest_does_not_depend_on_byte_order() -> None:
    from fedsilo.protocols import psi

    rng = np.random.default_rng(3)
    values = rng.integers(0, 256, size=(50, 16), dtype=np.uint8)
    words = values.view("<u8")
    order = np.lexsort((words[:, 1], words[:, 0]))
    assert psi._digest(values) == hashlib.sha256(values[order].tobytes()).digest()
    assert psi._digest(values[::-1].copy()) == psi._digest(values)


# ------------------------------------------------------------------ crypto review of 51373d9 (H10)


def _scripted_peer(ids: list[str], *, card: bool, keyed: bool, out: dict):
    """A peer following the protocol by hand with its own scalar (to check ``g``'s digest bit by bit).

    ``keyed=False`` sends the old unkeyed digest (IDs and matched *wire* values only): ``g`` must
    refuse it, so the tails really are in the digest.
    """

    def run(ch) -> None:
        key = X25519PrivateKey.generate().private_bytes_raw()
        dom = psi._domain(psi.DEFAULT_DOMAIN, ch.job)
        ch.send("g", psi.MASKED, {"points": psi._hash_and_mask(ids, dom, key), "n": len(ids), "card": card}, round=0)
        theirs = ch.recv("g", psi.MASKED, round=0, timeout=30)["points"]
        full = np.frombuffer(mask_points(theirs, key=key), dtype=np.uint8).reshape(-1, POINT_BYTES)
        heads, tails = full[:, :DOUBLE_BYTES].copy(), full[:, DOUBLE_BYTES:].copy()
        ch.send("g", psi.DOUBLE, {"points": heads[::-1].tobytes() if card else heads.tobytes()}, round=0)
        own = np.frombuffer(ch.recv("g", psi.DOUBLE, round=0, timeout=30)["points"], dtype=np.uint8).reshape(-1, DOUBLE_BYTES)
        hit = psi._members(own, heads)
        matched = sorted(np.asarray(ids, dtype=object)[hit].tolist()) if not card else None
        ids_arr = None if card else np.array(matched, dtype=StringDType())
        mine_tails = tails[psi._members(heads, own[hit])]
        if keyed:
            digest = psi._confirmation(ids_arr, mine_tails)
        else:
            wire = psi._digest(own[hit])  # what 51373d9 sent
            digest = wire if card else hashlib.sha256(psi._id_digest(ids_arr) + wire).digest()
        ch.send("g", psi.CONFIRM, {"digest": digest}, round=0)
        out["theirs"] = ch.recv("g", psi.CONFIRM, round=0, timeout=30)["digest"]
        out["mine"] = digest

    return run


@pytest.mark.parametrize("card", [False, True])
def test_the_confirmation_is_keyed_by_the_unsent_tails_which_both_sides_hold(card: bool) -> None:
    g_ids = [f"cust-{i}" for i in range(40)]
    h_ids = [f"cust-{i}" for i in range(30, 70)]
    out: dict = {}
    hub = InProcessHub("psi-keyed", ["g", "h"])
    res = run_parties(hub, {"g": lambda ch: psi_party(ch, peer="h", ids=g_ids, rng=np.random.default_rng(),
                                                      cardinality_only=card),
                            "h": _scripted_peer(h_ids, card=card, keyed=True, out=out)})
    assert res["g"].size == 10 and out["theirs"] == out["mine"]  # same tails, computed independently
    # the unkeyed digest of the same run is refused: the tails are really hashed
    hub = InProcessHub("psi-keyed", ["g", "h"])
    with pytest.raises((ProtocolError, JobAbortedError), match="different intersections"):
        run_parties(hub, {"g": lambda ch: psi_party(ch, peer="h", ids=g_ids, rng=np.random.default_rng(),
                                                    cardinality_only=card),
                          "h": _scripted_peer(h_ids, card=card, keyed=False, out={})})


@pytest.mark.filterwarnings("ignore::fedsilo.protocols.psi.LowOverlapWarning")
@pytest.mark.parametrize("card", [False, True])
def test_a_reader_of_the_messages_cannot_test_guessed_ids_against_the_confirmation(card: bool) -> None:
    """/tmp/r4/check_observer.py as a test: everything on the wire, a dictionary of candidate IDs."""
    g_ids = [f"cust-{i}" for i in range(0, 50)]
    h_ids = [f"cust-{i}" for i in range(49, 90)]  # share only cust-49
    hub = InProcessHub("obs", ["g", "h"])
    run_parties(hub, {"g": lambda ch: psi_party(ch, peer="h", ids=g_ids, rng=np.random.default_rng(), cardinality_only=card),
                      "h": lambda ch: psi_party(ch, peer="g", ids=h_ids, rng=np.random.default_rng(), cardinality_only=card)})
    a = np.frombuffer(_masked_from(hub, "h", psi.DOUBLE), dtype=np.uint8).reshape(-1, DOUBLE_BYTES)
    b = np.frombuffer(_masked_from(hub, "g", psi.DOUBLE), dtype=np.uint8).reshape(-1, DOUBLE_BYTES)
    matched = a[psi._members(a, b)]
    assert matched.shape[0] == 1  # the reader does see which wire values matched
    confirms = {codec.decode(e.body)["digest"] for e in hub.log if e.kind == psi.CONFIRM}
    assert len(confirms) == 1  # both sides agreed
    dtype = StringDType()
    wire = psi._digest(matched)
    guesses = [None] if card else [np.array([f"cust-{i}"], dtype=dtype) for i in range(100)]
    for cand in guesses:
        for tag in (b"", psi._CONFIRM_DOMAIN, psi._CONFIRM_CARD_DOMAIN):
            head = b"" if cand is None else psi._id_digest(cand)
            assert hashlib.sha256(tag + head + wire).digest() not in confirms
        assert psi._confirmation(cand, matched) not in confirms  # the wire values in place of the tails


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("u", LOW_ORDER[:3])
def test_a_low_order_point_names_the_peer_on_both_paths(u: int, workers: int) -> None:
    def liar(ch):
        ch.send("g", psi.MASKED, {"points": u.to_bytes(32, "little"), "n": 1, "card": False}, round=0)
        ch.recv("g", psi.MASKED, round=0, timeout=30)

    with psi.psi_executor(workers) as ex:
        hub = InProcessHub("psi-low", ["g", "h"])
        with pytest.raises((ProtocolError, JobAbortedError), match=r"PSI with 'h': sent an invalid or low-order"):
            run_parties(hub, {"g": lambda ch: psi_party(ch, peer="h", ids=["1", "2"], rng=np.random.default_rng(),
                                                        executor=ex, timeout=30),
                              "h": liar})
    with pytest.raises(psi_curve.InvalidPointError):  # the curve layer: a ProtocolError subclass
        mask_points(u.to_bytes(32, "little"), key=X25519PrivateKey.generate().private_bytes_raw())
    assert issubclass(psi_curve.InvalidPointError, ProtocolError)


@pytest.mark.parametrize("broken", ["raises", "differs", "missing"])
def test_the_private_constructor_is_used_only_if_it_agrees_with_the_public_one(
    broken: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import types

    import cryptography.hazmat.bindings._rust as rust
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    assert psi_curve._fast_public_key() is not X25519PublicKey.from_public_bytes  # the real layout: fast path

    def raises(b: bytes):
        raise RuntimeError("moved")

    other = X25519PrivateKey.generate().public_key()
    fake = {"raises": raises, "differs": lambda b: other}
    layout = types.SimpleNamespace() if broken == "missing" else types.SimpleNamespace(
        x25519=types.SimpleNamespace(from_public_bytes=fake[broken]))
    monkeypatch.setattr(rust, "openssl", layout)
    assert psi_curve._fast_public_key() == X25519PublicKey.from_public_bytes


def test_an_id_that_is_not_unicode_text_is_named_by_its_row_not_its_value() -> None:
    """Found by the PSI crypto review: the error quoted the ID itself."""
    from fedsilo.protocols.psi_ids import IdTable

    with pytest.raises(DataError, match=r"t\.csv: column 'cid': the ID at row 2 of the table is not valid Unicode") as err:
        IdTable.from_ids(["ok", "secret\ud800"], source="t.csv", column="cid")
    assert "secret" not in str(err.value)
