"""BatchCrypt-packed masked gradients on Paillier (issue 16 item 3): the packing maths (exact,
masked, re-randomized, refused when it would overflow) and the protocol, which trains the same
model as the unpacked path while sending ``ceil(d / slots)`` ciphertexts per gradient."""
from __future__ import annotations

import dataclasses
import functools
import struct
import warnings
from typing import Any

import gmpy2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsilo.crypto.encoding import encode_fixed, fixed_point_bound, pack
from fedsilo.crypto.paillier import PaillierBackend, PaillierCiphertext, unpack_slots
from fedsilo.errors import ConfigError, EncodingOverflowError, ProtocolError
from fedsilo.protocols.spec import PrivacySection
from fedsilo.protocols.vertical import Topology
from fedsilo.protocols.vertical.keys import GradSlots, Keys, Packing, decrypt_for_peer
from fedsilo.protocols.vertical.parties import _arbiter_step
from vt_data import bank_tables, breast_cancer_bounds, breast_cancer_tables, payloads, run_job, vt_spec, vt_training

PARAMS = {"key_bits": 1024, "workers": 1}  # 1024-bit: tests only


@functools.cache
def _keys() -> tuple[PaillierBackend, object]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        be = PaillierBackend(**PARAMS)
    return be, be.keygen()


def _gradient(be: PaillierBackend, sk, rng: np.random.Generator, *, rows: int, cols: int, terms: int = 2):
    """``[[d]] @ X + u`` as the protocol forms it: ``d`` a sum of ``terms`` vectors, one plain."""
    pk = sk.public()
    parts = [be.encrypt(pk, rng.uniform(-1, 1, rows)) for _ in range(terms - 1)]
    d = be.add_plain(be.sum(parts), rng.uniform(-1, 1, rows))
    return be.add_plain(be.matmul_plain(d, rng.normal(size=(rows, cols)) / rows), rng.normal(size=cols) * 1e-3)


@settings(max_examples=8, deadline=None)
@given(cols=st.integers(1, 20), rows=st.integers(1, 40), noise=st.integers(0, 3), seed=st.integers(0, 2**31))
def test_packed_gradient_decrypts_exactly_with_noise_shares(cols: int, rows: int, noise: int, seed: int) -> None:
    be, sk = _keys()
    pk, rng = sk.public(), np.random.default_rng(seed)
    g = _gradient(be, sk, rng, rows=rows, cols=cols)
    layout = be.matmul_layout(terms=2, rows=rows, summands=1 + noise)
    assert g.bound <= layout.offset  # the public formula bounds what the ciphertext tracks
    packed, masks = be.pack_slots(g, layout)
    assert len(packed.values) == -(-cols // layout.slots) == len(masks)
    shares = [rng.normal(size=cols) * 1e-2 for _ in range(noise)]
    total = be.sum([be.deserialize(pk, be.serialize(packed)), *(be.encrypt_slots(pk, s, layout) for s in shares)])
    got = unpack_slots(layout, be.decrypt_integers(sk, total), masks, modulus=pk.n, length=cols, summands=1 + noise)
    want = be.decrypt(sk, g) + (sum(shares) if shares else 0.0)
    # exact on the fixed-point grid (each share rounded to 2^-64 once), up to float64's sum of ``want``
    grid = (noise + 1) * 2.0 ** -(2 * be.encoding.precision)
    np.testing.assert_allclose(got, want, rtol=4e-16, atol=grid + 1e-16)


def test_the_mask_hides_the_packed_value_and_is_fresh() -> None:
    be, sk = _keys()
    g = _gradient(be, sk, np.random.default_rng(1), rows=16, cols=10)
    layout = be.matmul_layout(terms=2, rows=16, summands=1)
    (a, ra), (b, rb) = be.pack_slots(g, layout), be.pack_slots(g, layout)
    pa, pb = be.decrypt_integers(sk, a), be.decrypt_integers(sk, b)
    n = sk.public().n
    used = min(10, layout.slots) * layout.slot_bits  # the first ciphertext's slots
    for p, r in ((pa, ra), (pb, rb)):
        assert 0 <= r[0] < n and 0 <= p[0] < n and (p[0] - r[0]) % n < 2**used  # mask mod n, value in the slots
        assert p[0].bit_length() > n.bit_length() - 20  # what the key holder sees is n-sized
    assert pa != pb and (pa[0] - ra[0]) % n == (pb[0] - rb[0]) % n  # fresh masks, the same packed value
    # re-randomized on the way out: two serializations differ and decrypt alike
    assert be.serialize(a) != be.serialize(a)
    assert be.decrypt_integers(sk, be.deserialize(sk.public(), be.serialize(a))) == pa


def test_packing_refuses_what_would_overflow() -> None:
    be, sk = _keys()
    g = _gradient(be, sk, np.random.default_rng(2), rows=32, cols=3)
    small = be.matmul_layout(terms=2, rows=8, summands=1)  # sized for fewer rows than g has
    with pytest.raises(EncodingOverflowError, match="does not fit slots"):
        be.pack_slots(g, small)
    with pytest.raises(ConfigError, match="key_bits|plaintext"):
        be.slot_layout_for(bound=2**1020, scale_bits=64, summands=1)  # 1022 bits > 1024 - 3
    layout = be.matmul_layout(terms=2, rows=32, summands=1)
    packed, masks = be.pack_slots(g, layout)
    ints, n = be.decrypt_integers(sk, packed), sk.public().n
    with pytest.raises(EncodingOverflowError, match="slot|above"):  # a wrong mask unmasks to a stray value
        unpack_slots(layout, ints, [m + 2**400 for m in masks], modulus=n, length=3, summands=1)
    with pytest.raises(EncodingOverflowError, match="plaintexts"):
        unpack_slots(layout, ints + ints, masks, modulus=n, length=3, summands=1)
    with pytest.raises(EncodingOverflowError, match=r"not in \[0, n\)"):
        unpack_slots(layout, [n + ints[0]], masks, modulus=n, length=3, summands=1)


@settings(max_examples=25, deadline=None)
@given(data=st.data(), summands=st.integers(1, 4), bound_bits=st.integers(1, 50))  # sums exact in float64
def test_mask_mod_n_round_trip_is_exact(data: st.DataObject, summands: int, bound_bits: int) -> None:
    """For values within the layout, pack → mask mod n → unmask → unpack is exact, and the
    masked plaintext is in [0, n) (the decryptor's view: V + R mod n, R uniform on Z_n)."""
    be, sk = _keys()
    n = sk.public().n
    layout = be.slot_layout_for(bound=2**bound_bits - 1, scale_bits=0, summands=summands)
    length = data.draw(st.integers(1, 2 * layout.slots + 1))
    top = layout.offset
    vectors = [data.draw(st.lists(st.integers(-top, top), min_size=length, max_size=length)) for _ in range(summands)]
    packed = [sum(col) for col in zip(*(pack(v, layout=layout) for v in vectors))]  # summands vectors added
    masks = [data.draw(st.integers(0, n - 1)) for _ in packed]
    masked = [(p + r) % n for p, r in zip(packed, masks)]
    assert all(0 <= m < n for m in masked)
    got = unpack_slots(layout, masked, masks, modulus=n, length=length, summands=summands)
    np.testing.assert_array_equal(got, np.sum(np.array(vectors, dtype=np.float64), axis=0))


def test_open_refuses_a_malformed_answer() -> None:
    be, sk = _keys()
    top = Topology(guest="g", hosts=("h",), arbiter="a")
    slots = GradSlots.for_step(be, enabled=True, rows=16, owner="g", topology=top, dims={"g": 6, "h": 5}, dp=False)
    assert slots is not None and slots.count == 1
    for bad in ([], [1, 2], ["x"], [-1], np.zeros(1), [True]):
        with pytest.raises(ProtocolError, match="malformed packed gradient from 'a'"):
            slots.open(bad, [0], sender="a", modulus=sk.public().n)
    with pytest.raises(ProtocolError, match="malformed packed gradient from 'a'"):
        slots.open([sk.public().n], [0], sender="a", modulus=sk.public().n)  # not below n
    with pytest.raises(ProtocolError, match="does not unpack"):
        slots.open([2**1020 - 1], [0], sender="a", modulus=sk.public().n)  # every slot above its headroom
    assert GradSlots.for_step(be, enabled=False, rows=16, owner="g", topology=top, dims={"g": 6, "h": 5}, dp=False) is None


def _fit(tables, top, training, *, dp=None, noise_seed=None, label="target", id_column="pid", bounds=None):
    spec = vt_spec(topology=top, id_column=id_column, label=label, backend="paillier", backend_params=PARAMS,
                   training=training, dp=dp, bounds=bounds if bounds is not None else {}, insecure=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 1024-bit keys warn (tests only)
        return run_job(spec, tables, noise_seed=noise_seed)


def _grad_ciphertexts(hub, holder: str, sender: str) -> list[int]:
    """How many Paillier ciphertexts each GRAD message from ``sender`` to ``holder`` held (the
    count field of the wire header, after the 40-byte key header)."""
    return [struct.unpack(">BBHQQI", body[40:64])[-1] for s, _, _, body in payloads(hub, holder, "vlr/grad")
            if s == sender]


@pytest.mark.parametrize("arbiter", [True, False], ids=["arbiter", "two-party"])
def test_packed_path_trains_the_unpacked_model_under_dp(arbiter: bool) -> None:
    top = Topology(guest="g", hosts=("h0",), arbiter="a" if arbiter else None)
    tables = breast_cancer_tables(1, guest_cols=5, host_cols=8, drop=0.05)
    training = vt_training(epochs=2, batch_size=128, lr=0.3)
    dp = PrivacySection(epsilon=8.0)
    bounds = breast_cancer_bounds()
    # the same test-only noise seed: the same masks' draws, noise shares and batches on both paths
    hub, packed = _fit(tables, top, training, dp=dp, noise_seed=5, bounds=bounds)
    hub0, unpacked = _fit(tables, top, dataclasses.replace(training, batchcrypt=False), dp=dp, noise_seed=5,
                          bounds=bounds)
    for p in top.data_parties:
        np.testing.assert_allclose(packed[p]["model"].weights, unpacked[p]["model"].weights, atol=1e-9)
    holder = "a" if arbiter else "g"
    sizes, sizes0 = _grad_ciphertexts(hub, holder, "h0"), _grad_ciphertexts(hub0, holder, "h0")
    assert set(sizes0) == {8} and set(sizes) == {1}  # 8 coordinates, one packed ciphertext (1024-bit key)
    assert sum(hub.bytes_sent().values()) < sum(hub0.bytes_sent().values())


def test_bank_example_same_predictions_and_auc_packed_or_not() -> None:
    from sklearn.metrics import roc_auc_score

    tables = bank_tables()
    top = Topology(guest="bank", hosts=("partner",), arbiter="arbiter")
    training = vt_training(epochs=1, batch_size=256, lr=0.3)
    _, packed = _fit(tables, top, training, label="default", id_column="customer_id")
    _, unpacked = _fit(tables, top, dataclasses.replace(training, batchcrypt=False), label="default",
                       id_column="customer_id")
    rows = {p: np.random.default_rng(0).normal(size=(400, packed[p]["model"].weights.size - (p == "bank")))
            for p in top.data_parties}
    u = sum(packed[p]["model"].partial_logits(rows[p]) for p in top.data_parties)
    u0 = sum(unpacked[p]["model"].partial_logits(rows[p]) for p in top.data_parties)
    np.testing.assert_allclose(1 / (1 + np.exp(-u)), 1 / (1 + np.exp(-u0)), atol=1e-6)
    y = (u0 > np.median(u0)).astype(int)  # any labels: the two scores rank the rows alike
    assert roc_auc_score(y, u) == roc_auc_score(y, u0)
    assert packed["bank"]["final"]["auc"] == pytest.approx(unpacked["bank"]["final"]["auc"], abs=1e-12)


class _Wire:
    """The network between two parties of a step, one message per (sender, kind): in-memory."""

    def __init__(self, party: str, msgs: dict[tuple[str, str], Any]) -> None:
        self.party, self.msgs, self.sent = party, msgs, []

    def gather(self, senders: Any, kind: str, *, round: int, timeout: float) -> dict[str, Any]:
        return {s: self.msgs[(s, kind)] for s in senders}

    def recv(self, sender: str, kind: str, *, round: int, timeout: float) -> Any:
        return self.msgs[(sender, kind)]

    def send(self, to: str, kind: str, payload: Any, *, round: int) -> None:
        self.sent.append((to, kind, payload))


def _read_slots(p: int, *, shift: int, slot_bits: int, count: int) -> list[int]:
    """What a lying host reads from bits ``shift`` up of a plaintext (signed slots)."""
    w, out = p >> shift, []
    for _ in range(count):
        s = w & ((1 << slot_bits) - 1)
        w >>= slot_bits
        if s >= 1 << (slot_bits - 1):
            s, w = s - (1 << slot_bits), w + 1
        out.append(s)
    return out


@pytest.mark.parametrize("seed", [7, 8])
def test_a_host_lying_about_its_bound_recovers_nothing_and_is_caught(seed: int) -> None:
    """Two-party: the host (key holder) sends a [[b]] whose header declares a fresh encryption's
    bound but whose row i holds 2**K, K above the packed value (the review's attack). With a mask
    uniform mod n the host's decryption holds none of the guest's features in those bits, and
    the guest's unmasking of the host's (honest) answer stops with a ProtocolError naming it."""
    be, sk = _keys()
    pub, n = sk.public(), sk.public().n
    top, rows, dims = Topology(guest="g", hosts=("h",), arbiter=None), 16, {"g": 6, "h": 5}
    slots = GradSlots.for_step(be, enabled=True, rows=rows, owner="g", topology=top, dims=dims, dp=False)
    assert slots is not None and slots.count == 1
    rng = np.random.default_rng(seed)
    x, a = rng.normal(size=(rows, dims["g"])), rng.uniform(-1, 1, rows)  # the guest's private batch
    used = dims["g"] * slots.layout.slot_bits
    i, k = 3, used + 42  # the shift that read the features out exactly under the old 40-bit mask
    f = fixed_point_bound(value_bound=be.encoding.value_bound, precision=be.encoding.precision)
    nsq = pub.nsquare
    raw = [(1 << k) if r == i else 0 for r in range(rows)]
    lying = PaillierCiphertext(values=[gmpy2.mpz(pow(1 + n, v, nsq) * pow(2, n, nsq) % nsq) for v in raw],
                               length=rows, public=pub, scale_bits=be.encoding.precision, summands=1, bound=f,
                               obfuscated=False, ops=be)
    # the guest's real arithmetic (_guest_step_two_party) on the lying [[b]]
    peer, pk = Keys(be, be.load_public(pub.serialize())), Packing.for_step(be, rows=rows, dims=dims)
    b = peer.de(be.serialize(lying), sender="h", length=pk.length)
    g = be.add_plain(pk.product(be, be.add_plain(b, pk.spread(a)), x / rows), np.zeros(dims["g"]))
    data, masks = peer.seal(g, slots)
    # the host's real answer (decrypt_for_peer), and what it can read from it
    wire = _Wire("h", {("g", "vlr/grad"): data})
    decrypt_for_peer(wire, Keys(be, pub, sk), peer="g", plan=None, me="h", topology=top, dims=dims, norm=float(rows),
                     rng=np.random.default_rng(), round=1, timeout=1.0, tap=None, slots=slots)
    ((_, _, answer),) = wire.sent
    want = encode_fixed(x[i] / rows, precision=be.encoding.precision, value_bound=be.encoding.value_bound)
    read = _read_slots(answer[0], shift=k, slot_bits=slots.layout.slot_bits, count=dims["g"])
    assert sum(int(r == w) for r, w in zip(read, want)) == 0  # each a 2^-slot_bits chance: none recovered
    assert 0 <= answer[0] < n
    with pytest.raises(ProtocolError, match="packed gradient from 'h' does not unpack"):
        peer.unseal(answer, masks, slots, sender="h")


def test_malformed_packed_messages_name_their_sender() -> None:
    """The review's malformed GRAD messages, at the arbiter and two-party at the key holder:
    each a one-line ProtocolError naming the sender, never a bare crypto error."""
    be, sk = _keys()
    pk, n, width = sk.public(), sk.public().n, sk.public().ciphertext_bytes
    dims, rows = {"g": 6, "h": 12}, 16
    head = 40 + struct.calcsize(">BBHQQI")

    def honest(top: Topology, p: str) -> tuple[bytes, GradSlots]:
        sl = GradSlots.for_step(be, enabled=True, rows=rows, owner=p, topology=top, dims=dims, dp=False)
        assert sl is not None
        d = be.add_plain(be.encrypt(pk, np.random.uniform(-1, 1, rows)), np.random.uniform(-1, 1, rows))
        g = be.add_plain(be.matmul_plain(d, np.random.uniform(-1, 1, (rows, dims[p])) / rows), np.zeros(dims[p]))
        return Keys(be, pk).seal(g, sl)[0], sl

    def with_value(data: bytes, v: int) -> bytes:
        start = head + 2 + int.from_bytes(data[head : head + 2], "big")
        return data[:start] + int(v).to_bytes(width, "big") + data[start + width :]

    def with_bound(data: bytes, bound: int) -> bytes:
        raw = bound.to_bytes((bound.bit_length() + 7) // 8 or 1, "big")
        return data[:head] + len(raw).to_bytes(2, "big") + raw + data[head + 2 + int.from_bytes(data[head : head + 2], "big") :]

    arb = Topology(guest="g", hosts=("h",), arbiter="a")
    two = Topology(guest="g", hosts=("h",), arbiter=None)
    gdata, _ = honest(arb, "g")
    hdata, _ = honest(arb, "h")
    cases = {
        "not bytes": [1, 2],
        "wrong count": be.serialize(be.encrypt(pk, np.zeros(2))),
        "truncated": gdata[:-5],
        "value >= n^2": with_value(gdata, pk.nsquare + 1),
        "value 0": with_value(gdata, 0),
        "non-unit": with_value(gdata, sk.p * 7),
        "bound > n/3": with_bound(gdata, n),
        "bound above the layout's": with_bound(gdata, n // 2**200),
    }
    all_slots = {p: GradSlots.for_step(be, enabled=True, rows=rows, owner=p, topology=arb, dims=dims, dp=False)
                 for p in dims}
    for name, bad in cases.items():
        wire = _Wire("a", {("g", "vlr/grad"): bad, ("h", "vlr/grad"): hdata})
        with pytest.raises(ProtocolError, match="from 'g'") as err:
            _arbiter_step(wire, Keys(be, pk, sk), topology=arb, dims=dims, plan=None, rng=np.random.default_rng(),
                          norm=float(rows), round=1, timeout=1.0, tap=None, slots=all_slots)
        assert "\n" not in str(err.value), name
        _, s2 = honest(two, "g")
        wire = _Wire("h", {("g", "vlr/grad"): bad})
        with pytest.raises(ProtocolError, match="from 'g'"):
            decrypt_for_peer(wire, Keys(be, pk, sk), peer="g", plan=None, me="h", topology=two, dims=dims,
                             norm=float(rows), rng=np.random.default_rng(), round=1, timeout=1.0, tap=None, slots=s2)
        assert not wire.sent, name  # nothing decrypted, nothing answered


def test_an_impossible_layout_is_refused_before_round_1() -> None:
    """A batch whose packed gradient cannot fit a plaintext: a ConfigError naming the keys,
    from the pre-flight (before SETUP, keys or any ledger charge), not from the first epoch."""
    from fedsilo.protocols.channel import InProcessHub
    from fedsilo.protocols.vertical import guest_train
    from fedsilo.protocols.vertical.config import dp_digest

    be, _ = _keys()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wide = PaillierBackend(key_bits=1024, workers=1, precision=64, value_bound=1e140)  # a slot > 1021 bits
    top = Topology(guest="g", hosts=("h",), arbiter="a")
    dims = {"g": 3, "h": 3}
    GradSlots.preflight(be, enabled=True, rows=64, topology=top, dims=dims, dp=True)  # fits
    with pytest.raises(ConfigError, match=r"key 'training.batch_size'.*key_bits"):
        GradSlots.preflight(wide, enabled=True, rows=4, topology=top, dims=dims, dp=True)
    GradSlots.preflight(wide, enabled=False, rows=4, topology=top, dims=dims, dp=True)  # unpacked: nothing to fit
    # the guest refuses it before it sends anything
    config = vt_training(epochs=1, batch_size=4, timeout=5.0)
    hub = InProcessHub("job-preflight", ["g", "h", "a"])
    hub.channel("h").send("g", "vlr/hello", {"rows": 4, "train": 4, "eval": 0, "dim": 2,
                                             "config": config.digest(), "dp": dp_digest(None)}, round=1)
    with pytest.raises(ConfigError, match="key 'training.batch_size'.*does not fit the packed"):
        guest_train(hub.channel("g"), topology=top, x=np.zeros((4, 1)), y=np.array([0, 1, 0, 1]),
                    train_rows=np.arange(4), eval_rows=np.arange(0), backend=wide, config=config,
                    rng=np.random.default_rng(), batch_rng=np.random.default_rng(0))
    assert not hub.received_by("h") and not hub.received_by("a")
