"""CKKS specifics: profiles and 128-bit checks, public context without secret, chunking,
capacity, depth, Galois keys, hostile bytes."""
from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts

from fedsilo.crypto import get_backend
from fedsilo.crypto.ckks import MAX_COEFF_BITS_128, PROFILES, CKKSBackend
from fedsilo.errors import (
    CiphertextFormatError,
    ConfigError,
    CryptoError,
    EncodingOverflowError,
    UnsupportedOperationError,
)


@pytest.fixture(scope="module")
def agg(keyset_factory):
    return keyset_factory("ckks")


@pytest.fixture(scope="module")
def mul(keyset_factory):
    return keyset_factory("ckks", profile="mul", value_bound=100.0)


def test_profiles_are_within_128_bit_security():
    for name, p in PROFILES.items():
        backend = CKKSBackend(profile=name)
        assert sum(p["coeff_mod_bit_sizes"]) <= MAX_COEFF_BITS_128[p["poly_modulus_degree"]]
        assert backend.p.depth == {"aggregate": 0, "mul": 1, "matmul": 2}[name]
        assert backend.p.galois == (name == "matmul")
    # Sized to the circuit: the aggregation profile is ~2.5x smaller on the wire than the tutorial's.
    assert CKKSBackend().info().bytes_per_value < 40
    assert CKKSBackend(profile="matmul").info().bytes_per_value > 70


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"profile": "agregate"}, "aggregate"),  # nearest profile suggested
        ({"poly_modulus_degree": 5000}, "poly_modulus_degree"),
        ({"coeff_mod_bit_sizes": (60, 60)}, "128-bit"),  # 120 bits > 109 for N=4096
        ({"coeff_mod_bit_sizes": "60,49"}, "coeff_mod_bit_sizes"),
        ({"coeff_mod_bit_sizes": (60,)}, "coeff_mod_bit_sizes"),
        ({"profile": "mul", "coeff_mod_bit_sizes": (60, 30, 60)}, "scale_bits"),
        ({"scale_bits": 70}, "scale_bits"),
        ({"galois": True}, "galois"),
        ({"galois": "yes", "profile": "matmul"}, "galois"),
        ({"value_bound": 1e9}, "value_bound"),
        ({"value_bound": -1.0}, "value_bound"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_parameters_name_the_parameter(params, name):
    with pytest.raises(ConfigError, match=name):
        get_backend("ckks", **params)


def test_public_context_has_no_secret_key(agg):
    b, k = agg.backend, agg
    wire = k.public.serialize()
    peer = b.load_public(wire)
    assert not peer.is_private() and not peer.context.is_private()
    assert not peer.context.has_secret_key()
    vec = b.encrypt(peer, [1.0, 2.0]).chunks[0]
    with pytest.raises(ValueError):  # TenSEAL itself cannot decrypt without the secret key
        vec.decrypt()
    assert len(wire) < 200_000  # no relinearization or Galois keys in an aggregation context
    # A context that *does* carry a secret is refused as a "public" context.
    leaked = b"".join([wire[:40], wire[40:42], wire[42 : 42 + int.from_bytes(wire[40:42], "big")]])
    private_bytes = k.secret._ctx.serialize(save_secret_key=True, save_relin_keys=False)
    from fedsilo.crypto.ckks import _fingerprint

    forged_fp = _fingerprint(k.public.params, private_bytes)
    forged = b"FSC1PUBK" + forged_fp.encode() + leaked[40:] + private_bytes
    with pytest.raises(CiphertextFormatError, match="secret"):
        b.load_public(forged)


def test_long_vectors_are_chunked_transparently(agg):
    b, k = agg.backend, agg
    slots = b.info().values_per_ciphertext
    x = np.random.default_rng(1).uniform(-50, 50, 2 * slots + 17)
    ct = b.encrypt(k.public, x)
    assert len(ct.chunks) == 3
    out = b.decrypt(k.secret, b.add_plain(b.sum([ct, ct]), x))
    assert np.max(np.abs(out - 3 * x)) < 3 * b.info().error_bound * (1 + 50)
    blob = b.serialize(ct)
    assert len(blob) == b.wire_size(ct)
    assert np.max(np.abs(b.decrypt(k.secret, b.deserialize(k.public, blob)) - x)) < 1e-5


def test_depth_and_galois_requirements(agg, mul):
    ct = agg.backend.encrypt(agg.public, [1.0, 2.0])
    with pytest.raises(UnsupportedOperationError, match="profile"):
        agg.backend.mul_plain(ct, 2.0)
    m_ct = mul.backend.encrypt(mul.public, [1.0, 2.0])
    once = mul.backend.mul_plain(m_ct, [0.5, 3.0])
    assert np.allclose(mul.backend.decrypt(mul.secret, once), [0.5, 6.0], atol=1e-5)
    with pytest.raises(UnsupportedOperationError, match="depth"):
        mul.backend.mul_plain(once, 2.0)
    with pytest.raises(UnsupportedOperationError, match="Galois"):
        mul.backend.matmul_plain(m_ct, np.ones((2, 2)))
    # Adding a level-1 result and a fresh ciphertext works (TenSEAL aligns the moduli).
    assert np.allclose(mul.backend.decrypt(mul.secret, mul.backend.add(once, m_ct)), [1.5, 8.0], atol=1e-5)


def test_capacity_overflow_is_refused(agg, mul):
    b, k = agg.backend, agg
    bound = b.p.value_bound
    with pytest.raises(EncodingOverflowError):
        b.encrypt(k.public, [bound * 1.01])
    full = b.encrypt(k.public, [bound, -bound])
    assert np.allclose(b.decrypt(k.secret, b.sum([full] * 64)), [64 * bound, -64 * bound], atol=1e-3)
    with pytest.raises(EncodingOverflowError, match="capacity"):
        b.sum([full] * 65)  # 65 * 4096 > 2^18: CKKS would wrap silently
    with pytest.raises(EncodingOverflowError):
        mul.backend.mul_plain(mul.backend.encrypt(mul.public, [1.0]), 1e4)


def test_matmul_plan_for_tall_matrices(keyset_factory):
    ks = keyset_factory("ckks", profile="matmul", value_bound=1.0)
    b = ks.backend
    slots = b.info().values_per_ciphertext
    rng = np.random.default_rng(3)
    n = slots + 100  # two input chunks
    x = rng.uniform(-1, 1, n)
    m = rng.uniform(-1, 1, (n, 3)) / n  # X^T d / n, as vertical LR computes it
    m[:, 1] = 0.0  # an all-zero column stays exactly zero
    out = b.decrypt(ks.secret, b.matmul_plain(b.encrypt(ks.public, x), m))
    assert out.shape == (3,)
    assert np.max(np.abs(out - x @ m)) < 1e-5


def test_hostile_bytes_never_crash(agg):
    b, k = agg.backend, agg
    blob = b.serialize(b.encrypt(k.public, [1.0, 2.0, 3.0]))
    rng = np.random.default_rng(11)
    for _ in range(60):
        data = bytearray(blob)
        for _ in range(int(rng.integers(1, 8))):
            pos = int(rng.integers(40, len(data)))
            data[pos] = int(rng.integers(0, 256))
        try:
            ct = b.deserialize(k.public, bytes(data))
            b.decrypt(k.secret, ct)  # a flipped coefficient is still a (garbage) ciphertext
        except (CiphertextFormatError, CryptoError):
            pass
    # A chunk that claims more slots than the ring has is refused before TenSEAL decrypts it.
    small = ts.ckks_vector(k.public.context, [1.0]).serialize()
    header = blob[:40] + blob[40 : 40 + 22]
    forged = header + len(small).to_bytes(8, "big") + small
    with pytest.raises(CiphertextFormatError, match="slots"):
        b.deserialize(k.public, forged)


def test_secret_round_trip_and_mismatch(agg, keyset_factory):
    b, k = agg.backend, agg
    exported = k.secret.export_secret()
    assert b.load_secret(exported).fingerprint == k.secret.fingerprint
    # Glue our public half to another secret: detected by the probe decryption.
    other = keyset_factory("ckks").other_secret.export_secret()
    pub_len = int.from_bytes(exported[40:42], "big")
    head_len = 40 + 2 + pub_len
    (n_pub,) = (int.from_bytes(exported[head_len : head_len + 8], "big"),)
    ours_public = exported[: head_len + 8 + n_pub]
    (o_pub,) = (int.from_bytes(other[head_len : head_len + 8], "big"),)
    their_private = other[head_len + 8 + o_pub :]
    with pytest.raises(CryptoError):
        b.load_secret(ours_public + their_private)


def test_rescale_correction_uses_the_contexts_primes(mul):
    from fedsilo.crypto.ckks import _primes_match_context, seal_primes

    primes = seal_primes(poly_modulus_degree=8192, coeff_mod_bit_sizes=(60, 40, 60))
    assert [q.bit_length() for q in primes] == [60, 40, 60]
    assert all(q % (2 * 8192) == 1 for q in primes)
    assert _primes_match_context(mul.public.context, primes[:-1])
    assert not _primes_match_context(mul.public.context, [primes[0], primes[1] + 2 * 8192])
    # With the correction a product is as accurate as a fresh ciphertext (1.3e-7 relative without).
    b, k = mul.backend, mul
    rng = np.random.default_rng(4)
    x, f = rng.uniform(-1, 1, 4096), rng.uniform(-1, 1, 4096)
    out = b.decrypt(k.secret, b.mul_plain(b.encrypt(k.public, 100 * x), f))
    assert np.max(np.abs(out - 100 * x * f)) < 1e-6  # uncorrected: ~1.3e-5


# --- review fixes: error bound vs scale, prime chain, private factors in messages, pickling -----
@pytest.mark.parametrize("scale_bits", [25, 30, 40])
def test_error_bound_follows_the_scale(keyset_factory, scale_bits):
    k = keyset_factory("ckks", scale_bits=scale_bits)
    b = k.backend
    rng = np.random.default_rng(scale_bits)
    xs = [rng.uniform(-1, 1, b.p.slots) for _ in range(10)]
    total = b.sum([b.encrypt(k.public, x) for x in xs])
    err = float(np.max(np.abs(b.decrypt(k.secret, total) - sum(xs))))
    assert err <= b.info().error_bound
    # and the bound stays within ~two orders of magnitude of the truth (not vacuous)
    assert b.info().error_bound < 100 * err


def test_built_in_profiles_keep_their_documented_error_bounds():
    assert CKKSBackend(profile="aggregate").info().error_bound == 1e-7
    assert CKKSBackend(profile="mul").info().error_bound == 1e-7
    assert CKKSBackend(profile="matmul").info().error_bound == 1e-5
    assert CKKSBackend(scale_bits=30).info().error_bound == pytest.approx(1e-7 * 2**10)


def test_a_context_with_another_prime_chain_is_refused(agg):
    from fedsilo.crypto.base import CryptoBackend
    from fedsilo.crypto.ckks import _fingerprint

    b = agg.backend  # aggregate: N=4096, primes [60, 49]
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=4096, coeff_mod_bit_sizes=[49, 60])
    ctx.global_scale = 2.0**40
    raw = ctx.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)
    block = b.p.to_json()
    wire = CryptoBackend._header(b"PUBK", _fingerprint(b.p, raw)) + len(block).to_bytes(2, "big") + block + raw
    with pytest.raises(CiphertextFormatError, match="prime chain"):
        b.load_public(wire)
    # the genuine context still loads
    assert b.load_public(agg.public.serialize()).fingerprint == agg.public.fingerprint


def test_capacity_errors_do_not_show_private_factors(keyset_factory):
    k = keyset_factory("ckks", profile="mul")
    b = k.backend
    ct = b.encrypt(k.public, np.ones(3))
    with pytest.raises(EncodingOverflowError) as info:
        b.mul_plain(ct, np.array([1.0, 87.25, 3.0]))
    msg = str(info.value)
    assert "3.57e+05" not in msg and "357376" not in msg and "87.25" not in msg
    assert "2^19" in msg and "2^18" in msg


def test_ciphertexts_refuse_pickling(agg):
    import copy
    import pickle

    ct = agg.backend.encrypt(agg.public, np.ones(2))
    with pytest.raises(TypeError, match="serialize"):
        pickle.dumps(ct)
    with pytest.raises(TypeError, match="serialize"):
        copy.deepcopy(ct)
