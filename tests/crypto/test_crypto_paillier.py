"""Paillier specifics: packing edges and overflow, scales, re-randomization, wire format, params,
and the fast (Damgård-Jurik-Nielsen) randomness: its sizes, its base, its key formats."""
from __future__ import annotations

import pickle
import random
import subprocess
import sys
import warnings

import gmpy2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsilo.crypto import get_backend
from fedsilo.crypto import paillier as paillier_module
from fedsilo.crypto.base import fingerprint_of
from fedsilo.crypto.paillier import (
    FULL_RANDOMNESS_MARGIN,
    RANDOMNESS_BITS,
    FixedBaseTable,
    InsecureParametersWarning,
    PaillierBackend,
    PaillierCiphertext,
    PaillierPublic,
    PaillierSecret,
    full_randomness_bits,
    is_nth_residue,
    random_exponents,
)
from fedsilo.crypto.pool import encrypt_batch as _encrypt_batch
from fedsilo.errors import (
    CiphertextFormatError,
    ConfigError,
    EncodingOverflowError,
    KeyMismatchError,
    UnsupportedOperationError,
)

pytestmark = pytest.mark.filterwarnings("ignore::fedsilo.crypto.paillier.InsecureParametersWarning")

PACKED = {"key_bits": 1024, "workers": 1, "packed": True, "value_bound": 1.0, "max_summands": 10}
UNPACKED = {"key_bits": 1024, "workers": 1}


@pytest.fixture(scope="module")
def packed(keyset_factory):
    return keyset_factory("paillier", **PACKED)


@pytest.fixture(scope="module")
def unpacked(keyset_factory):
    return keyset_factory("paillier", **UNPACKED)


# --- packing ------------------------------------------------------------------------------------
def test_packing_is_exact_at_the_edges_with_max_summands(packed):
    b, k = packed.backend, packed
    slots = b.info().values_per_ciphertext
    assert slots == 1023 // (10 * 2 * 2**32).bit_length()  # 27 slots of 37 bits in 1024-bit keys
    n = 2 * slots + 3  # several plaintexts, the last one partly filled
    top, bottom = np.ones(n), -np.ones(n)
    mixed = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    for row in (top, bottom, mixed):
        total = b.sum([b.encrypt(k.public, row) for _ in range(10)])
        assert total.summands == 10
        assert np.array_equal(b.decrypt(k.secret, total), 10 * row)  # exact, not approximately
    grid = np.array([2.0**-32, -(2.0**-32), 0.5 + 2.0**-32, -1.0 + 2.0**-31] * 3)
    rows = [grid * (i % 2 * 2 - 1) for i in range(9)]
    out = b.decrypt(k.secret, b.add_plain(b.sum([b.encrypt(k.public, r) for r in rows]), grid))
    assert np.array_equal(out, np.sum(rows, axis=0) + grid)


def test_more_than_max_summands_raises_before_computing(packed):
    b, k = packed.backend, packed
    one = b.encrypt(k.public, [0.25, -0.5])
    ten = b.sum([one] * 10)
    with pytest.raises(EncodingOverflowError, match="max_summands=10"):
        b.sum([one] * 11)
    with pytest.raises(EncodingOverflowError):
        b.add(ten, one)
    with pytest.raises(EncodingOverflowError):
        b.add_plain(ten, [0.0, 0.0])
    with pytest.raises(EncodingOverflowError):
        b.mul_plain(b.sum([one] * 4), 3)  # 12 summands
    assert np.array_equal(b.decrypt(k.secret, b.mul_plain(b.sum([one] * 5), 2)), [2.5, -5.0])
    assert np.array_equal(b.decrypt(k.secret, b.mul_plain(one, 0)), [0.0, 0.0])


def test_values_beyond_the_bound_raise(packed, unpacked):
    for ks in (packed, unpacked):
        b = ks.backend
        bound = b.params()["value_bound"]
        with pytest.raises(EncodingOverflowError, match="value_bound"):
            b.encrypt(ks.public, [0.0, np.nextafter(bound, np.inf)])
        ct = b.encrypt(ks.public, [bound, -bound])  # the bound itself is fine
        assert np.array_equal(b.decrypt(ks.secret, ct), [bound, -bound])
        with pytest.raises(EncodingOverflowError):
            b.add_plain(ct, [2 * bound, 0.0])
    with pytest.raises(EncodingOverflowError):
        unpacked.backend.mul_plain(unpacked.backend.encrypt(unpacked.public, [1.0]), 2.0**21)


def test_packed_refuses_multiplications_with_a_pointer_to_unpacked(packed):
    b, k = packed.backend, packed
    ct = b.encrypt(k.public, [0.5, 0.25])
    for op in (lambda: b.mul_plain(ct, 0.5), lambda: b.mul_plain(ct, [1.0, 2.0]), lambda: b.mul_plain(ct, -1),
               lambda: b.matmul_plain(ct, np.ones((2, 2)))):
        with pytest.raises(UnsupportedOperationError, match="packed=False"):
            op()


# --- unpacked: scales and bounds -------------------------------------------------------------------
def test_scales_add_up_and_align_exactly(unpacked):
    b, k = unpacked.backend, unpacked
    x = np.array([1.5, -2.25, 3.0])
    ct = b.encrypt(k.public, x)
    prod = b.mul_plain(ct, [0.5, -4.0, 0.125])
    assert prod.scale_bits == 64
    mixed = b.add(prod, ct)  # lifts ct by 2**32 in the exponent: exact
    assert mixed.scale_bits == 64
    assert np.array_equal(b.decrypt(k.secret, mixed), x * [0.5, -4.0, 0.125] + x)
    twice = b.mul_plain(b.add_plain(mixed, 1.0), 0.25)
    assert twice.scale_bits == 96
    assert np.array_equal(b.decrypt(k.secret, twice), (x * [0.5, -4.0, 0.125] + x + 1.0) * 0.25)
    m = np.array([[1.0, 0.0, -0.5], [2.0, 0.0, 0.25], [-1.0, 0.0, 4.0]])
    assert np.array_equal(b.decrypt(k.secret, b.matmul_plain(ct, m)), x @ m)


def test_bound_tracking_refuses_before_plaintext_space_overflows(unpacked):
    b, k = unpacked.backend, unpacked
    ct = b.encrypt(k.public, [1.0])
    chain = 0
    with pytest.raises(EncodingOverflowError, match="plaintext space"):
        for chain in range(1, 100):
            ct = b.mul_plain(ct, 1.0)
    assert 10 <= chain < 20  # each product adds 52 bits of bound to a 1024-bit plaintext space
    assert np.array_equal(b.decrypt(k.secret, ct), [1.0])  # the last accepted result is still exact


def test_out_of_range_plaintext_is_reported_not_wrapped(unpacked):
    b, k = unpacked.backend, unpacked
    n = k.public.n
    good = b.encrypt(k.public, [1.0])
    forged = PaillierCiphertext(
        values=[_encrypt_batch(n, [n // 2])[0]], length=1, public=good.public, scale_bits=32,
        summands=1, bound=good.bound, obfuscated=True, ops=b,
    )
    with pytest.raises(EncodingOverflowError):
        b.decrypt(k.secret, forged)


def test_parallel_encryption_gives_the_same_plaintexts(keyset_factory):
    ks = keyset_factory("paillier", key_bits=1024, workers=1, packed=True, value_bound=1.0, max_summands=10)
    two = get_backend("paillier", key_bits=1024, workers=2, packed=True, value_bound=1.0, max_summands=10)
    x = np.random.default_rng(0).uniform(-1, 1, 27 * 40)  # 40 ciphertexts: enough to go to the pool
    ct = two.encrypt(ks.public, x)
    assert np.max(np.abs(two.decrypt(ks.secret, two.sum([ct, ct])) - 2 * x)) <= 2 * 2.0**-33
    for out in (two.add(ct, ct), two.mul_plain(ct, 2)):  # short and full re-randomization on the pool
        back = two.deserialize(ks.public, two.serialize(out))
        assert [int(v) for v in back.values] != [int(v) for v in out.values]
        assert np.max(np.abs(two.decrypt(ks.secret, back) - 2 * x)) <= 2 * 2.0**-33


# --- wire --------------------------------------------------------------------------------------------
def test_wire_format_is_fixed_width_big_endian(unpacked):
    b, k = unpacked.backend, unpacked
    ct = b.encrypt(k.public, [1.0, 2.0, 3.0])
    blob = b.serialize(ct)
    width = 2 * 1024 // 8
    assert len(blob) == b.wire_size(ct)
    payload = blob[-3 * width :]
    values = [int.from_bytes(payload[i * width : (i + 1) * width], "big") for i in range(3)]
    assert values == [int(v) for v in ct.values]  # fresh ciphertexts are sent as they are
    assert b"1" * 20 not in blob  # no decimal strings
    with pytest.raises(CiphertextFormatError):
        b.deserialize(k.public, blob + b"\x00")
    with pytest.raises(CiphertextFormatError):  # a "ciphertext" >= n^2
        b.deserialize(k.public, blob[:-width] + b"\xff" * width)
    with pytest.raises(CiphertextFormatError):  # 0 is not in Z*_(n^2)
        b.deserialize(k.public, blob[:-width] + bytes(width))


def test_outbound_results_are_rerandomized(unpacked):
    b, k = unpacked.backend, unpacked
    ct = b.encrypt(k.public, [0.5, -0.5])
    shifted = b.add_plain(ct, [1.0, 1.0])
    first, second = b.serialize(shifted), b.serialize(shifted)
    assert first != second  # fresh randomness each time it leaves
    w = 2 * 1024 // 8
    wire = int.from_bytes(first[-2 * w : -w], "big")
    # Without re-randomization, anyone holding ct could recover the plaintext from ct * (1 + m n).
    assert wire != int(shifted.values[0])
    for blob in (first, second):
        assert np.array_equal(b.decrypt(k.secret, b.deserialize(k.public, blob)), [1.5, 0.5])


def test_secret_key_shows_and_pickles_nothing(unpacked):
    sk = unpacked.secret
    text = repr(sk) + str(sk) + repr(unpacked.public)
    for prime in (sk.p, sk.q):
        assert str(prime) not in text and hex(prime)[2:] not in text
        raw = prime.to_bytes((prime.bit_length() + 7) // 8, "big")
        assert raw not in unpacked.public.serialize()
    with pytest.raises(TypeError):
        pickle.dumps(sk)


def test_mixing_packed_and_unpacked_is_refused(packed, unpacked):
    with pytest.raises(KeyMismatchError):
        unpacked.backend.decrypt(packed.secret, packed.backend.encrypt(packed.public, [0.5]))
    with pytest.raises(ConfigError, match="packed"):
        unpacked.backend.load_public(packed.public.serialize())
    with pytest.raises(ConfigError):
        unpacked.backend.encrypt(packed.public, [0.5])


# --- parameters ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"key_bits": 1000}, "key_bits"),
        ({"key_bits": True}, "key_bits"),
        ({"precision": -1}, "precision"),
        ({"precision": 65}, "precision"),
        ({"value_bound": 0}, "value_bound"),
        ({"value_bound": float("nan")}, "value_bound"),
        ({"packed": "yes"}, "packed"),
        ({"max_summands": 0}, "max_summands"),
        ({"workers": 0}, "workers"),
        ({"key_bits": 1024, "packed": True, "precision": 64, "value_bound": 2.0**1000}, "precision"),
        ({"not_a_param": 1}, "not_a_param"),
    ],
)
def test_bad_parameters_name_the_parameter(params, name):
    with pytest.raises(ConfigError, match=name):
        get_backend("paillier", **params)


def test_small_keys_warn_and_defaults_are_sane():
    with pytest.warns(InsecureParametersWarning):
        PaillierBackend(key_bits=1024)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        default = PaillierBackend()
    assert default.params()["key_bits"] == 2048 and default.params()["workers"] >= 1
    unpacked, packed = default.info(), PaillierBackend(packed=True).info()
    assert unpacked.bytes_per_value == 512.0
    assert unpacked.bytes_per_value / packed.bytes_per_value >= 20  # BatchCrypt target at defaults
    assert packed.supports == ("add", "add_plain", "sum", "mul_int")


@pytest.mark.parametrize(("key_bits", "secure", "bits"), [(1024, False, 80), (2048, True, 112), (3072, True, 128), (4096, True, 152)])
def test_confidentiality_follows_the_key_size(key_bits, secure, bits):
    conf = PaillierBackend(key_bits=key_bits, workers=1).confidentiality()
    assert (conf.secure, conf.security_bits) == (secure, bits)
    if not secure:
        # what the federation config's error names: the parameter and its security level
        assert conf.param == "key_bits" and "1024-bit" in conf.reason and "~80-bit" in conf.reason
    assert PaillierBackend(key_bits=key_bits, workers=1, packed=True).info().secure is secure


def test_missing_gmpy2_fails_loudly():
    code = (
        "import phe.util; phe.util.HAVE_GMP = False\n"
        "try:\n    import fedsilo.crypto.paillier\nexcept ImportError as e:\n    print('IMPORT', e)\n"
        "from fedsilo.crypto import get_backend\nfrom fedsilo.errors import BackendNotFoundError\n"
        "try:\n    get_backend('paillier')\nexcept BackendNotFoundError as e:\n    print('REGISTRY', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert "IMPORT" in out and "gmpy2" in out and "REGISTRY" in out


# --- review fixes: hostile scale in the header, pickling ----------------------------------------
def _with_scale(backend, blob: bytes, scale_bits: int) -> bytes:
    from fedsilo.crypto.paillier import _CT_STRUCT

    head, body = blob[:40], blob[40:]
    ver, packed, _, length, summands, count = _CT_STRUCT.unpack_from(body)
    return head + _CT_STRUCT.pack(ver, packed, scale_bits, length, summands, count) + body[_CT_STRUCT.size :]


@pytest.mark.parametrize("scale_bits", [65535, 33, 32 * 200])
def test_an_impossible_scale_from_the_wire_is_refused(unpacked, scale_bits):
    b = unpacked.backend
    blob = b.serialize(b.encrypt(unpacked.public, np.ones(4)))
    with pytest.raises(CiphertextFormatError, match="scale"):
        b.deserialize(unpacked.public, _with_scale(b, blob, scale_bits))


def test_a_value_beyond_the_declared_bound_is_reported(unpacked):
    from fedsilo.crypto.paillier import _CT_STRUCT

    b = unpacked.backend
    ct = b.encrypt(unpacked.public, np.ones(4))
    blob = b.serialize(ct)
    pos = 40 + _CT_STRUCT.size
    bound_len = int.from_bytes(blob[pos : pos + 2], "big")
    forged = blob[:pos] + (1).to_bytes(2, "big") + b"\x01" + blob[pos + 2 + bound_len :]  # bound 1
    with pytest.raises(EncodingOverflowError, match="declared bound"):
        b.decrypt(unpacked.secret, b.deserialize(unpacked.public, forged))
    # legitimate depth-1 results still deserialize and decrypt
    prod = b.mul_plain(ct, 0.5)
    back = b.deserialize(unpacked.public, b.serialize(prod))
    assert np.allclose(b.decrypt(unpacked.secret, back), 0.5)


def test_ciphertexts_refuse_pickling(unpacked):
    ct = unpacked.backend.encrypt(unpacked.public, np.ones(2))
    with pytest.raises(TypeError, match="serialize"):
        pickle.dumps(ct)


# --- fast randomness: h**α with a short α, fixed-base tables, key formats ---------------------------
GRID = 2.0**-32  # the default precision: values on this grid encrypt and decrypt exactly


def grid_vectors(max_abs_steps: int = 2**52, max_size: int = 6) -> st.SearchStrategy:
    """Vectors of multiples of 2**-32 within the default value_bound (2**20)."""
    ints = st.lists(st.integers(-max_abs_steps, max_abs_steps), min_size=1, max_size=max_size)
    return ints.map(lambda v: np.array(v, dtype=np.float64) * GRID)


class _Recorder:
    """Wraps ``random_exponents`` to record what each call asked for and returned."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, list[int]]] = []

    def __call__(self, count: int, bits: int) -> list[int]:
        out = random_exponents(count, bits)
        self.calls.append((bits, out))
        return out


@pytest.fixture()
def recorder(monkeypatch) -> _Recorder:
    rec = _Recorder()
    monkeypatch.setattr(paillier_module, "random_exponents", rec)
    return rec


def test_keygen_makes_the_modulus_and_base_the_argument_needs(unpacked):
    sk, pub = unpacked.secret, unpacked.public
    p, q, n, h = sk.p, sk.q, pub.n, pub.h
    assert n == p * q and n.bit_length() == 1024 and p.bit_length() == q.bit_length() == 512
    assert p % 4 == 3 and q % 4 == 3 and gmpy2.gcd(p - 1, q - 1) == 2
    assert abs(p - q).bit_length() > 512 - 16
    assert h is not None and 1 < h < n * n and gmpy2.jacobi(h % n, n) == 1
    assert is_nth_residue(h, p, q)  # h**α encrypts zero: decryption stays exact
    assert not is_nth_residue(h * (1 + n) % (n * n), p, q)  # the check bites
    # h is part of the key: another h under the same n is another fingerprint
    assert PaillierPublic(n, pub.encoding, h).fingerprint == pub.fingerprint
    assert PaillierPublic(n, pub.encoding, h * h % (n * n)).fingerprint != pub.fingerprint


def test_stated_sizes():
    assert RANDOMNESS_BITS == {1024: 256, 2048: 256, 3072: 256, 4096: 304}  # 2·max(128, λ)
    assert FULL_RANDOMNESS_MARGIN == 128 and full_randomness_bits(2048) == 2176


def test_fresh_ciphertexts_are_h_to_a_short_alpha(unpacked, recorder):
    b, k = unpacked.backend, unpacked
    x = np.array([1.5, -2.0, 0.0, 3.25])
    ct = b.encrypt(k.public, x)
    (bits, alphas), = recorder.calls
    assert bits == RANDOMNESS_BITS[1024] == 256 and len(alphas) == 4
    assert all(0 <= a < 2**256 for a in alphas) and len(set(alphas)) == 4
    n, nsq, h = k.public.n, k.public.nsquare, k.public.h
    for c, value, a in zip(ct.values, x, alphas):
        m = int(round(value / GRID)) % n
        assert int(c) == (1 + m * n) * pow(h, a, nsq) % nsq  # exactly (1 + m n) h^α


@settings(max_examples=25, deadline=None)
@given(bits=st.integers(1, 2400), count=st.integers(1, 40))
def test_random_exponents_have_exactly_the_asked_length(bits, count):
    out = random_exponents(count, bits)
    assert len(out) == count and all(0 <= a < 2**bits for a in out)


def test_random_exponents_are_uniform_over_the_full_length():
    for bits in (256, 2176, 13):
        out = random_exponents(4000, bits)
        top = sum(a >> (bits - 1) for a in out)  # the top bit is set about half the time
        assert 1800 < top < 2200, (bits, top)
        assert sum(a & 1 for a in out) > 1800  # and so is the bottom bit


def test_randomness_is_not_seeded(unpacked):
    b, k = unpacked.backend, unpacked
    cts, keys = [], []
    for _ in range(2):
        # Seeding Python's and numpy's global generators must not repeat anything: the
        # randomness comes from os.urandom / secrets.
        random.seed(0)
        np.random.seed(0)
        cts.append([int(v) for v in b.encrypt(k.public, [1.0, 1.0]).values])
        keys.append(b.keygen().public())
    assert cts[0][0] != cts[0][1] and cts[0] != cts[1]
    assert keys[0].n != keys[1].n and keys[0].h != keys[1].h


def test_rerandomization_uses_a_full_exponent_only_after_multiplications(unpacked, recorder, monkeypatch):
    b, k = unpacked.backend, unpacked
    x = np.array([0.5, -1.25])
    ct = b.encrypt(k.public, x)
    recorder.calls.clear()
    uniform: list[int] = []
    real_obfuscate = paillier_module.obfuscate_batch

    def spy(n, batch):  # phe's r**n with a uniform r: what products leave with
        uniform.append(len(batch))
        return real_obfuscate(n, batch)

    monkeypatch.setattr(paillier_module, "obfuscate_batch", spy)
    cases = [
        (b.add(ct, ct), 256, 2 * x),  # sums and add_plain: the randomness depends on no plaintext
        (b.add_plain(ct, 1.0), 256, x + 1.0),
        # raised to a plaintext factor: uniform r**n, not h**β (a key holder may have chosen h)
        (b.mul_plain(ct, 0.5), None, 0.5 * x),
        (b.add(b.mul_plain(ct, -2.0), ct), None, -x),  # ... and still so after an addition
        (b.matmul_plain(ct, np.array([[1.0], [2.0]])), None, np.array([x @ [1.0, 2.0]])),
    ]
    for out, bits, expected in cases:
        recorder.calls.clear()
        uniform.clear()
        blob = b.serialize(out)
        if bits is None:
            assert recorder.calls == [] and sum(uniform) == len(out.values)
        else:
            (asked, betas), = recorder.calls
            assert asked == bits and all(0 <= v < 2**bits for v in betas) and uniform == []
        received = b.deserialize(k.public, blob)
        assert [int(v) for v in received.values] != [int(v) for v in out.values]
        assert np.array_equal(b.decrypt(k.secret, received), expected)
        # forwarding a received ciphertext: its sender already refreshed the randomness
        recorder.calls.clear()
        b.serialize(received)
        assert recorder.calls[0][0] == 256
    recorder.calls.clear()
    b.serialize(ct)  # a fresh ciphertext leaves as it is
    assert recorder.calls == []


@settings(max_examples=15, deadline=None)
@given(x=grid_vectors())
def test_property_round_trip_is_exact(unpacked, x):
    b, k = unpacked.backend, unpacked
    assert np.array_equal(b.decrypt(k.secret, b.encrypt(k.public, x)), x)
    assert np.array_equal(b.decrypt(k.secret, b.deserialize(k.public, b.serialize(b.encrypt(k.public, x)))), x)


@settings(max_examples=15, deadline=None)
@given(data=st.integers(1, 6).flatmap(lambda n: st.tuples(grid_vectors(2**50, n), grid_vectors(2**50, n))))
def test_property_homomorphic_addition_is_exact(unpacked, data):
    b, k = unpacked.backend, unpacked
    x, y = (v[: min(len(data[0]), len(data[1]))] for v in data)
    total = b.add(b.encrypt(k.public, x), b.encrypt(k.public, y))
    assert np.array_equal(b.decrypt(k.secret, total), x + y)


@settings(max_examples=15, deadline=None)
@given(x=grid_vectors(2**30), factor=st.integers(-8, 8))
def test_property_rerandomization_changes_the_ciphertext_not_the_plaintext(unpacked, x, factor):
    b, k = unpacked.backend, unpacked
    ct = b.encrypt(k.public, x)
    for out, expected in ((b.add_plain(ct, x), 2 * x), (b.mul_plain(ct, float(factor)), factor * x)):
        first, second = b.serialize(out), b.serialize(out)
        assert first != second
        for blob in (first, second):
            back = b.deserialize(k.public, blob)
            assert all(int(u) != int(v) for u, v in zip(back.values, out.values))
            assert np.array_equal(b.decrypt(k.secret, back), expected)


@settings(max_examples=10, deadline=None)
@given(rows=st.integers(1, 60).flatmap(
    lambda n: st.lists(st.lists(st.integers(-(2**32), 2**32), min_size=n, max_size=n), min_size=1, max_size=10)
))
def test_property_packed_sums_are_exact(packed, rows):
    b, k = packed.backend, packed
    vectors = [np.array(r, dtype=np.float64) * GRID for r in rows]  # |x| <= 1 = value_bound
    blobs = [b.serialize(b.encrypt(k.public, v)) for v in vectors]
    total = b.sum([b.deserialize(k.public, blob) for blob in blobs])
    out = b.decrypt(k.secret, b.deserialize(k.public, b.serialize(total)))
    assert np.array_equal(out, np.sum(vectors, axis=0))


@settings(max_examples=30, deadline=None)
@given(window=st.integers(1, 9), bits=st.integers(1, 300), data=st.data())
def test_fixed_base_table_matches_powmod(window, bits, data):
    modulus = (2**127 - 1) * (2**89 - 1)
    base = data.draw(st.integers(2, modulus - 1))
    table = FixedBaseTable(base, modulus, bits=bits, window=window)
    for e in (0, 1, 2**bits - 1, data.draw(st.integers(0, 2**bits - 1))):
        assert int(table.pow(e)) == pow(base, e, modulus)
    with pytest.raises(ValueError):
        table.pow(2**bits)


def _format1(public: PaillierPublic) -> PaillierPublic:
    return PaillierPublic(public.n, public.encoding)  # h None: written before h existed


def test_format1_keys_still_load_and_work_phe_style(unpacked, monkeypatch):
    b, k = unpacked.backend, unpacked
    old_pub = _format1(k.public)
    old_sec = PaillierSecret(old_pub, k.secret.p, k.secret.q)
    pub_blob, sec_blob = old_pub.serialize(), old_sec.export_secret()
    assert pub_blob[40] == 1 and sec_blob[40] == 1  # format byte after the 40-byte header
    assert len(pub_blob) == len(k.public.serialize()) - 2 * 1024 // 8  # no h on the wire
    pub, sec = b.load_public(pub_blob), b.load_secret(sec_blob)
    assert pub.h is None and not pub.fast_randomness and sec.public().h is None
    # the fingerprint of format 1 is what it always was: peers and old ciphertexts still match
    assert pub.fingerprint == fingerprint_of("paillier", k.public.n.to_bytes(128, "big"), k.public.encoding.describe())

    def refuse(*_args):
        raise AssertionError("a format-1 key must not use the DJN base")

    monkeypatch.setattr(paillier_module, "djn_encrypt_batch", refuse)
    monkeypatch.setattr(paillier_module, "djn_rerandomize_batch", refuse)
    x = np.array([1.0, -0.5])
    ct = b.encrypt(pub, x)
    blob = b.serialize(b.mul_plain(ct, 2.0))
    assert np.array_equal(b.decrypt(sec, b.deserialize(pub, blob)), 2 * x)


def test_unknown_key_format_is_a_clear_error(unpacked):
    b = unpacked.backend
    blob = bytearray(unpacked.public.serialize())
    blob[40] = 3
    with pytest.raises(CiphertextFormatError, match="format version 3; this fedsilo reads versions 1, 2"):
        b.load_public(bytes(blob))
    with pytest.raises(CiphertextFormatError, match="truncated"):
        b.load_public(unpacked.public.serialize()[:-1])  # h cut short


def test_a_bad_randomness_base_is_refused(unpacked):
    b, k = unpacked.backend, unpacked
    n, nsq, h = k.public.n, k.public.nsquare, k.public.h
    z = next(v for v in range(2, 1000) if gmpy2.jacobi(v, n) == -1)
    for bad in (1, nsq + 1, n, h * pow(z, n, nsq) % nsq):  # range, gcd, Jacobi symbol -1
        blob = PaillierPublic(n, k.public.encoding, bad).serialize()
        with pytest.raises(CiphertextFormatError, match="randomness base"):
            b.load_public(blob)
    # h (1 + n) passes every public check (n-th residuosity is the DCR problem itself) but
    # would make every encryption decrypt to garbage: the key holder refuses it.
    forged = PaillierSecret(PaillierPublic(n, k.public.encoding, h * (1 + n) % nsq), k.secret.p, k.secret.q)
    assert b.load_public(forged.public().serialize()).h == forged.public_context.h
    with pytest.raises(CiphertextFormatError, match="not an n-th residue"):
        b.load_secret(forged.export_secret())


def test_fast_vs_phe_benchmark_contract():
    from fedsilo.crypto.bench import PAILLIER_ROWS, measure_paillier_encryption

    result = measure_paillier_encryption(key_bits=1024, values=6, repeats=1)  # checks every result exactly
    assert (result["short_bits"], result["full_bits"]) == (256, 1152)
    assert [(r["name"], r["operation"]) for r in result["rows"]] == [(n, op) for n, op, _ in PAILLIER_ROWS]
    for row in result["rows"]:
        assert row["per_s"] > 0 and "{" not in row["label"]
    assert result["rows"][0]["vs_phe"] == 1.0 and result["rows"][3]["vs_phe"] == 1.0  # the baselines
    with pytest.raises(ConfigError, match="values"):
        measure_paillier_encryption(key_bits=1024, values=0)



def test_a_degenerate_base_and_non_unit_ciphertexts_are_refused(unpacked):
    """From the crypto review: h = n² − 1 (order 2) passed every load check, and a ciphertext
    ≡ 0 mod n decrypts (phe's CRT) to a value that factors n."""
    b, k = unpacked.backend, unpacked
    pub = k.public
    n, nsq = pub.n, pub.n * pub.n
    weak = PaillierPublic(n, pub.encoding, nsq - 1)
    with pytest.raises(CiphertextFormatError, match="invalid randomness base"):
        b.load_public(weak.serialize())
    blob = bytearray(b.serialize(b.encrypt(pub, np.array([0.5]))))
    width = (nsq.bit_length() + 7) // 8
    blob[-width:] = int(n).to_bytes(width, "big")  # c = n: not a unit
    with pytest.raises(CiphertextFormatError, match="not in Z"):
        b.deserialize(pub, bytes(blob))
