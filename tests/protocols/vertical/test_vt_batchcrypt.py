"""BatchCrypt-packed masked gradients on Paillier (issue 16 item 3): the packing maths (exact,
masked, re-randomized, refused when it would overflow) and the protocol, which trains the same
model as the unpacked path while sending ``ceil(d / slots)`` ciphertexts per gradient."""
from __future__ import annotations

import dataclasses
import functools
import struct
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsilo.crypto.paillier import SLOT_MASK_BITS, PaillierBackend, unpack_slots
from fedsilo.errors import ConfigError, EncodingOverflowError, ProtocolError
from fedsilo.protocols.spec import PrivacySection
from fedsilo.protocols.vertical import Topology
from fedsilo.protocols.vertical.keys import GradSlots
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
    got = unpack_slots(layout, be.decrypt_integers(sk, total), masks, length=cols, summands=1 + noise)
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
    used = min(10, layout.slots) * layout.slot_bits  # the first ciphertext's slots
    for p, r in ((pa, ra), (pb, rb)):
        assert r[0] < 2 ** (used + SLOT_MASK_BITS) and p[0] - r[0] < 2**used  # mask 40 bits wider than the value
        assert p[0].bit_length() > used + SLOT_MASK_BITS - 20  # what the key holder sees is mask-sized
    assert pa != pb and pa[0] - ra[0] == pb[0] - rb[0]  # fresh masks, the same packed value
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
        be.slot_layout_for(bound=2**1000, scale_bits=64, summands=1)
    layout = be.matmul_layout(terms=2, rows=32, summands=1)
    packed, masks = be.pack_slots(g, layout)
    ints = be.decrypt_integers(sk, packed)
    with pytest.raises(EncodingOverflowError, match="smaller than its mask"):
        unpack_slots(layout, ints, [m + 2**400 for m in masks], length=3, summands=1)
    with pytest.raises(EncodingOverflowError, match="plaintexts"):
        unpack_slots(layout, ints + ints, masks, length=3, summands=1)


def test_open_refuses_a_malformed_answer() -> None:
    be, sk = _keys()
    top = Topology(guest="g", hosts=("h",), arbiter="a")
    slots = GradSlots.for_step(be, enabled=True, rows=16, owner="g", topology=top, dims={"g": 6, "h": 5}, dp=False)
    assert slots is not None and slots.count == 1
    for bad in ([], [1, 2], ["x"], [-1], np.zeros(1), [True]):
        with pytest.raises(ProtocolError, match="malformed packed gradient from 'a'"):
            slots.open(bad, [0], sender="a")
    with pytest.raises(ProtocolError, match="does not unpack"):
        slots.open([2**900], [0], sender="a")  # a slot above its headroom
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
