"""Paillier specifics: packing edges and overflow, scales, re-randomization, wire format, params."""
from __future__ import annotations

import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

from fedsilo.crypto import get_backend
from fedsilo.crypto.paillier import (
    InsecureParametersWarning,
    PaillierBackend,
    PaillierCiphertext,
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
    x = np.random.default_rng(0).uniform(-1, 1, 27 * 12)
    ct = two.encrypt(ks.public, x)
    assert np.max(np.abs(two.decrypt(ks.secret, two.sum([ct, ct])) - 2 * x)) <= 2 * 2.0**-33
    assert two.serialize(two.add(ct, ct))  # re-randomization on the pool


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
