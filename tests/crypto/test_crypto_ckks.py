"""CKKS specifics: profiles and 128-bit checks, public context without secret, chunking,
capacity, depth, Galois keys, hostile bytes, seeded secret-key encryption, the raw TenSEAL bench."""
from __future__ import annotations

import os

import numpy as np
import pytest
import tenseal as ts
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsilo.crypto import get_backend
from fedsilo.crypto.ckks import MAX_COEFF_BITS_128, PROFILES, CKKSBackend
from fedsilo.errors import (
    CiphertextFormatError,
    ConfigError,
    CryptoError,
    EncodingOverflowError,
    KeyMismatchError,
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


# --- secret-key (seeded) encryption for key holders; no re-randomization of plain sums --------
needs_memfd = pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="seeded encryption needs Linux memfd")


@needs_memfd
def test_secret_key_encryption_is_seeded_and_takes_half_the_bytes(agg):
    b, k = agg.backend, agg
    assert k.secret.seeded_encryption and k.secret.fallback_reason == ""
    slots = b.p.slots
    x = np.random.default_rng(20).uniform(-1, 1, 3 * slots)
    sym, asym = b.encrypt_with_secret(k.secret, x), b.encrypt(k.public, x)
    sym_blob, asym_blob = b.serialize(sym), b.serialize(asym)
    # c0 and a seed instead of (c0, c1): 16.1 instead of 32.1 bytes per value at N = 4096
    assert len(sym_blob) / x.size < 0.52 * len(asym_blob) / x.size
    assert len(sym_blob) == b.wire_size(sym)
    # the aggregator's view: an ordinary ciphertext under the same key
    aggregator = b.load_public(k.public.serialize())
    received = b.deserialize(aggregator, sym_blob)
    assert received.fingerprint == k.public.fingerprint == sym.fingerprint
    out = b.decrypt(k.secret, received)
    assert np.max(np.abs(out - x)) <= b.info().error_bound
    # a key loaded from its export (no public key in its private context) encrypts seeded too,
    # and the original key decrypts it
    loaded = b.load_secret(k.secret.export_secret())
    again = b.encrypt_with_secret(loaded, x[:10])
    assert loaded.seeded_encryption and again.blobs is not None
    assert np.max(np.abs(b.decrypt(k.secret, again) - x[:10])) <= b.info().error_bound


values_and_kinds = st.integers(1, 5).flatmap(
    lambda n: st.tuples(
        st.lists(st.floats(-100, 100, allow_nan=False), min_size=n, max_size=n).map(np.array),
        st.lists(st.integers(0, 2), min_size=1, max_size=6),
    )
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(values_and_kinds, st.integers(0, 2**32 - 1))
def test_secret_and_public_key_ciphertexts_add_within_the_error_bound(keyset_factory, case, seed):
    """Any mix of secret-key and public-key ciphertexts, summed by an aggregator that holds
    only the public context (from the wire), decrypts within the documented bound."""
    k = keyset_factory("ckks")
    b = k.backend
    base, kinds = case
    rng = np.random.default_rng(seed)
    xs = [base * rng.uniform(-1, 1, base.size) for _ in kinds]
    encrypt = {0: lambda v: b.encrypt(k.public, v), 1: lambda v: b.encrypt_with_secret(k.secret, v)}
    # kind 2: a secret-key ciphertext that went over the wire before the sum
    blobs = [b.serialize(encrypt[min(kind, 1)](x)) for x, kind in zip(xs, kinds)]
    aggregator = b.load_public(k.public.serialize())
    total = b.serialize(b.sum([b.deserialize(aggregator, blob) for blob in blobs]))
    out = b.decrypt(k.secret, b.deserialize(k.public, total))
    bound = b.info().error_bound * sum(1 + np.abs(x) for x in xs)
    assert np.all(np.abs(out - sum(xs)) <= bound + 1e-12 * np.abs(sum(xs)))
    # the key holder may also add its own ciphertext to a received one, in-process
    mixed = b.add(b.encrypt_with_secret(k.secret, xs[0]), b.deserialize(k.public, blobs[0]))
    assert np.all(np.abs(b.decrypt(k.secret, mixed) - 2 * xs[0]) <= 2 * b.info().error_bound * (1 + np.abs(xs[0])) + 1e-12)


@pytest.mark.parametrize("scale_bits", [25, 40])
def test_secret_key_error_bound_follows_the_scale(keyset_factory, scale_bits):
    k = keyset_factory("ckks", scale_bits=scale_bits)
    b = k.backend
    rng = np.random.default_rng(100 + scale_bits)
    xs = [rng.uniform(-1, 1, b.p.slots) for _ in range(10)]
    total = b.sum([b.encrypt_with_secret(k.secret, x) if i % 2 else b.encrypt(k.public, x) for i, x in enumerate(xs)])
    assert float(np.max(np.abs(b.decrypt(k.secret, total) - sum(xs)))) <= b.info().error_bound


def test_secret_key_ciphertexts_of_another_key_are_refused(agg):
    b, k = agg.backend, agg
    ours = b.encrypt_with_secret(k.secret, [1.0, 2.0])
    theirs = b.encrypt_with_secret(k.other_secret, [1.0, 2.0])
    assert ours.fingerprint != theirs.fingerprint
    for op in (lambda: b.add(ours, theirs), lambda: b.sum([ours, b.encrypt(k.public, [0.0, 0.0]), theirs])):
        with pytest.raises(KeyMismatchError, match="different keys"):
            op()
    with pytest.raises(KeyMismatchError, match="different keys"):
        b.decrypt(k.other_secret, ours)
    with pytest.raises(KeyMismatchError, match="different keys"):
        b.deserialize(k.other_public, b.serialize(ours))
    # a public context is not a secret key; other parameters are refused by name
    with pytest.raises(KeyMismatchError, match="CKKSSecret"):
        b.encrypt_with_secret(k.public, [1.0])
    with pytest.raises(ConfigError, match="parameters"):
        CKKSBackend(value_bound=2.0).encrypt_with_secret(k.secret, [1.0])
    with pytest.raises(EncodingOverflowError, match="value_bound"):
        b.encrypt_with_secret(k.secret, [b.p.value_bound * 2])
    with pytest.raises(ConfigError, match="NaN"):
        b.encrypt_with_secret(k.secret, [float("nan")])


def test_plain_sums_are_sent_as_they_are_and_plaintext_results_re_randomized(agg, mul):
    b, k = agg.backend, agg
    x = np.arange(5.0)
    a, c = b.encrypt_with_secret(k.secret, x), b.encrypt(k.public, x)
    total = b.sum([a, c])
    # Subtracting the operands one knows from a sum leaves ciphertexts, never a plaintext:
    # serialize adds no fresh encryption of zero (it would cost one more encryption per chunk).
    assert b.serialize(total) == b.serialize(total)
    received = b.deserialize(k.public, b.serialize(a))
    assert b.serialize(received) == b.serialize(received)  # (TenSEAL re-serializes it unseeded)
    # c + encode(p) with c known reveals p: such results get a fresh encryption of zero.
    shifted = b.add_plain(a, x)
    assert b.serialize(shifted) != b.serialize(shifted)
    assert b.serialize(b.sum([shifted, c])) != b.serialize(b.sum([shifted, c]))
    assert np.allclose(b.decrypt(k.secret, b.deserialize(k.public, b.serialize(shifted))), 2 * x, atol=1e-6)
    m = mul.backend
    scaled = m.mul_plain(m.encrypt_with_secret(mul.secret, x), 3.0)
    assert m.serialize(scaled) != m.serialize(scaled)
    assert np.allclose(m.decrypt(mul.secret, m.deserialize(mul.public, m.serialize(scaled))), 3 * x, atol=1e-5)


def test_secret_key_ciphertexts_support_every_operation_of_the_profile(keyset_factory):
    ks = keyset_factory("ckks", profile="matmul", value_bound=1.0)
    b = ks.backend
    rng = np.random.default_rng(21)
    x, m = rng.uniform(-1, 1, 300), rng.uniform(-1, 1, (300, 3)) / 300
    ct = b.encrypt_with_secret(ks.secret, x)
    out = b.decrypt(ks.secret, b.deserialize(ks.public, b.serialize(b.matmul_plain(ct, m))))
    assert np.max(np.abs(out - x @ m)) < 1e-5


def test_secret_key_encryption_falls_back_to_public_key_encryption(monkeypatch):
    from fedsilo.crypto import ckks

    def unavailable(*args, **kwargs):
        raise OSError("memfd_create is not available")

    monkeypatch.setattr(ckks, "_SeededEncryptor", unavailable)
    b = CKKSBackend(value_bound=1.0)
    secret = b.keygen()
    x = np.linspace(-1, 1, 7)
    ct = b.encrypt_with_secret(secret, x)
    assert not secret.seeded_encryption and "memfd_create" in secret.fallback_reason
    assert ct.blobs is None  # an ordinary public-key ciphertext: full size
    assert len(b.serialize(ct)) == len(b.serialize(b.encrypt(secret.public(), x)))
    assert np.max(np.abs(b.decrypt(secret, ct) - x)) <= b.info().error_bound


@needs_memfd
def test_tampered_seeded_ciphertexts_never_crash(agg):
    b, k = agg.backend, agg
    blob = b.serialize(b.encrypt_with_secret(k.secret, [1.0, 2.0, 3.0]))
    rng = np.random.default_rng(22)
    for _ in range(40):
        data = bytearray(blob)
        for _ in range(int(rng.integers(1, 6))):
            pos = int(rng.integers(40, len(data)))
            data[pos] = int(rng.integers(0, 256))
        try:
            b.decrypt(k.secret, b.deserialize(k.public, bytes(data)))
        except (CiphertextFormatError, CryptoError):
            pass
    # the deserializer reads through a view: bytearray and memoryview input parse the same
    for view in (bytearray(blob), memoryview(blob)):
        assert np.allclose(b.decrypt(k.secret, b.deserialize(k.public, view)), [1.0, 2.0, 3.0], atol=1e-6)


def test_vector_proto_is_tenseals_wire_format():
    from fedsilo.crypto.ckks import _varint, _vector_proto

    assert _varint(0) == b"\x00" and _varint(300) == b"\xac\x02" and _varint(2**32) == b"\x80\x80\x80\x80\x10"
    # A TenSEAL vector's own serialization, re-built from its parts, is byte-identical.
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=4096, coeff_mod_bit_sizes=[60, 49])
    ctx.global_scale = 2.0**40
    own = ts.ckks_vector(ctx, [0.5] * 2048).serialize()
    head = b"\x0a\x02" + _varint(2048) + b"\x12"
    assert own.startswith(head)
    n, pos = 0, len(head)
    shift = 0
    while True:  # the ciphertext's length varint
        byte = own[pos]
        n |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            break
    assert _vector_proto(own[pos : pos + n], size=2048, scale=2.0**40) == own


def test_ckks_vs_tenseal_benchmark_rows():
    from fedsilo.crypto.bench import CKKS_VARIANTS, measure_ckks_vs_tenseal

    result = measure_ckks_vs_tenseal(size=3000, parties=2, repeats=1)
    rows = {(r["variant"], r["encryption"]): r for r in result["rows"]}
    assert list(rows) == list(CKKS_VARIANTS)
    assert result["params"]["poly_modulus_degree"] == 4096 and result["params"]["coeff_mod_bit_sizes"] == [60, 49]
    for row in rows.values():
        assert row["max_abs_error"] < 1e-6 and row["seconds"] > 0
    # the same chunking: raw TenSEAL uploads as many bytes as fedsilo's public-key path, minus headers
    fed, raw = rows[("fedsilo", "public-key")], rows[("tenseal", "public-key")]
    assert 0 < fed["bytes_per_value"] - raw["bytes_per_value"] < 0.1
    if result["seeded"]:
        assert rows[("fedsilo", "secret-key")]["bytes_per_value"] < 0.52 * rows[("tenseal", "secret-key")]["bytes_per_value"]
    assert {(r["encryption"], r["baseline"]) for r in result["ratios"]} == {
        (enc, name) for name, enc in CKKS_VARIANTS if name != "fedsilo"
    }
    with pytest.raises(ConfigError):
        measure_ckks_vs_tenseal(size=0)


# --- matmul_repeated: the packed product of vertical LR -----------------------------------------
@pytest.fixture(scope="module")
def mm(keyset_factory):
    return keyset_factory("ckks", profile="matmul")


def _raw_slots(ks, ct) -> np.ndarray:
    """Every slot of a one-chunk result, past its length too: what a key holder could read."""
    (chunk,) = ct.chunks
    return np.asarray(chunk.decrypt(ks.secret.secret_key()))


repeated_cases = st.tuples(
    st.integers(1, 600),  # rows: one to several ciphertexts of repeated values
    st.integers(2, 70),  # columns
    st.sampled_from([1.0, 100.0, 4000.0]),  # |v| up to the profile's value_bound
    st.integers(0, 2**32 - 1),
)


def _junk_scale(bound: float) -> float:
    """The magnitude of the junk past a matmul result's values: the largest power of two <= bound."""
    return 2.0 ** np.floor(np.log2(bound))


def _assert_uniform_junk(slots: np.ndarray, scale: float) -> None:
    """``slots`` look like independent draws of U(-scale, scale): within range, and a KS test
    against that law does not reject at 1e-7 (a copy of the data, or zeros, is rejected)."""
    from scipy import stats

    # The junk is fresh OS randomness in every product and a CI run makes ~22 of these tests
    # (15 hypothesis examples + 6 + 1): at α = 1e-4 the family failed ~2e-3 of runs, at 1e-7
    # ~2e-6. Zeros or a copy of the data still fail: for n >= 100 slots the KS distance is ~0.5,
    # p ~ 2·exp(-2·100·0.25) ~ 4e-22.
    assert slots.size >= 100 and np.max(np.abs(slots)) <= scale * (1 + 1e-9)
    assert stats.kstest(slots, stats.uniform(loc=-scale, scale=2 * scale).cdf).pvalue > 1e-7


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(repeated_cases)
def test_matmul_repeated_stays_within_the_error_bound(mm, case):
    """|Dec(matmul_repeated) - v @ M| within ``matmul_error_bound``, slot by slot, and nothing
    but the m results is in the ciphertext: every slot past them is uniform junk."""
    rows, cols, scale, seed = case
    b = mm.backend
    rng = np.random.default_rng(seed)
    repeat = 1 << (cols - 1).bit_length()
    v = scale * rng.uniform(-1, 1, rows)
    m = rng.uniform(-3, 3, (rows, cols)) / rows  # X^T d / n, as vertical LR computes it
    ct = b.encrypt(mm.public, np.repeat(v, repeat))
    out = b.matmul_repeated(ct, m, repeat=repeat)
    assert out.length == cols and out.depth_used == 2 and len(out.chunks) == 1
    bound = b.matmul_error_bound(input_l1=np.abs(v).sum(), column_l1=np.abs(m).sum(axis=0), repeat=repeat)
    got = b.decrypt(mm.secret, b.deserialize(mm.public, b.serialize(out)))
    assert np.all(np.abs(got - v @ m) <= bound + 1e-12 * np.abs(v @ m))
    _assert_uniform_junk(_raw_slots(mm, out)[cols:], _junk_scale(out.bound))


@pytest.mark.parametrize("path", ["matmul_repeated", "matmul_plain"])
def test_slots_past_the_result_do_not_depend_on_the_data(mm, monkeypatch, path):
    """The mask's encoding leaves ~1e-11-relative copies of the fold's partial sums (of the
    column sums, for matmul_plain) in the slots it zeroes: without the junk those slots are a
    deterministic linear function of the data (the same in every run, halved with the data),
    which a key holder could read at large magnitudes. With it they are uniform junk over a
    power of two, fresh in every product: uncorrelated across runs on the same data, and not
    halved with the data."""
    from fedsilo.crypto import ckks

    b = mm.backend
    rng = np.random.default_rng(41)
    rows, cols, repeat = 300, 6, 8
    v = b.p.value_bound * rng.uniform(0.5, 1, rows)  # large partial sums: the worst case for the residue
    m = rng.uniform(0, 3, (rows, cols)) / rows

    def past(values: np.ndarray) -> tuple[np.ndarray, float]:
        if path == "matmul_repeated":
            out = b.matmul_repeated(b.encrypt(mm.public, np.repeat(values, repeat)), m, repeat=repeat)
        else:
            out = b.matmul_plain(b.encrypt(mm.public, values), m)
        return _raw_slots(mm, out)[cols:], out.bound

    with monkeypatch.context() as patch:  # without the junk: the data's residue
        patch.setattr(ckks.CKKSBackend, "_fill_past_length", lambda self, chunks, length, bound: None)
        bare, again, half = past(v)[0], past(v)[0], past(v / 2)[0]
    assert np.max(np.abs(bare)) < 1e-5  # "zeros" to the eye, yet a function of the data:
    assert np.corrcoef(bare, again)[0, 1] > 0.99 and np.median(half / bare) == pytest.approx(0.5, abs=0.01)
    (first, bound), (second, _), (halved, _) = past(v), past(v), past(v / 2)
    for slots in (first, second, halved):
        _assert_uniform_junk(slots, _junk_scale(bound))
    assert abs(np.corrcoef(first, second)[0, 1]) < 0.1 and abs(np.corrcoef(first, halved)[0, 1]) < 0.1


@pytest.mark.parametrize("repeat", [1, 8, 64])
@pytest.mark.parametrize("pattern", ["constant", "alternating"])
def test_matmul_error_bound_holds_at_the_value_bound_with_4096_rows(mm, repeat, pattern):
    """The worst case of the error model: |v| = value_bound on 4,096 rows with constant or
    alternating signs and constant columns, where the matrix's encoding errors add up
    coherently over the rows. ``error_bound * (1 + ||M_j||_1)`` alone (the bound before) is
    exceeded there; ``matmul_error_bound`` holds."""
    b = mm.backend
    rows, cols = 4096, max(1, repeat - 3)
    sign = np.ones(rows) if pattern == "constant" else (-1.0) ** np.arange(rows)
    v = b.p.value_bound * sign
    m = sign[:, None] * np.full((rows, cols), 0.5 / rows)
    if repeat == 1:
        out = b.matmul_plain(b.encrypt(mm.public, v), m)
    else:
        out = b.matmul_repeated(b.encrypt(mm.public, np.repeat(v, repeat)), m, repeat=repeat)
    err = np.abs(b.decrypt(mm.secret, out) - v @ m)
    column_l1 = np.abs(m).sum(axis=0)
    bound = b.matmul_error_bound(input_l1=np.abs(v).sum(), column_l1=column_l1, repeat=repeat)
    assert np.all(err <= bound), (err.max(), bound.max())
    assert bound.max() < 1e-3  # and it is a usable bound: 6 sqrt(repeat) 2^-40 ||v||_1 <= 7.5e-4 here
    if repeat == 64:
        assert err.max() > b.info().error_bound * (1 + column_l1.max())  # the old bound did not hold


def test_matmul_repeat_picks_a_power_of_two_when_packing_pays(mm, mul):
    b = mm.backend
    slots = b.p.slots
    assert b.matmul_repeat(rows=128, columns=7) == 8  # the bank example's guest: 6 features + intercept
    assert b.matmul_repeat(rows=256, columns=51) == 64
    assert b.matmul_repeat(rows=256, columns=64) == 64
    assert b.matmul_repeat(rows=256, columns=1) == 1  # one column: nothing to pack
    assert b.matmul_repeat(rows=256, columns=slots + 1) == 1  # more columns than slots
    assert mul.backend.matmul_repeat(rows=256, columns=8) == 1  # no Galois keys, no depth 2
    for rows in (1, 100, 4096, 10_000):
        r = b.matmul_repeat(rows=rows, columns=5)
        assert r in (1, 8)


def test_matmul_repeated_is_matmul_plain_of_the_unrepeated_vector(mm):
    b = mm.backend
    rng = np.random.default_rng(31)
    v, m = rng.uniform(-1, 1, 300), rng.uniform(-1, 1, (300, 5)) / 300
    packed = b.decrypt(mm.secret, b.matmul_repeated(b.encrypt(mm.public, np.repeat(v, 8)), m, repeat=8))
    plain = b.decrypt(mm.secret, b.matmul_plain(b.encrypt(mm.public, v), m))
    assert np.max(np.abs(packed - plain)) <= 2 * b.info().error_bound * (1 + np.abs(m).sum(axis=0).max())
    # repeat 1 is matmul_plain itself; a repeat that is not a power of two takes the generic path
    one = b.decrypt(mm.secret, b.matmul_repeated(b.encrypt(mm.public, v), m, repeat=1))
    three = b.decrypt(mm.secret, b.matmul_repeated(b.encrypt(mm.public, np.repeat(v, 6)), m, repeat=6))
    for got in (one, three):
        assert np.max(np.abs(got - v @ m)) <= b.info().error_bound * (1 + np.abs(m).sum(axis=0).max())


def test_matmul_repeated_results_are_ordinary_ciphertexts(mm):
    """The result adds to fresh ciphertexts, takes a plaintext offset (the protocol's mask), is
    re-randomized before it leaves, and works on seeded secret-key input."""
    b = mm.backend
    rng = np.random.default_rng(32)
    v, m = rng.uniform(-1, 1, 200), rng.uniform(-1, 1, (200, 6)) / 200
    for ct in (b.encrypt(mm.public, np.repeat(v, 8)), b.encrypt_with_secret(mm.secret, np.repeat(v, 8))):
        g = b.matmul_repeated(ct, m, repeat=8)
        mask = rng.uniform(-2048, 2048, 6)
        sent = b.add_plain(b.add(g, b.encrypt(mm.public, np.ones(6))), mask)
        assert sent.plain_operand and b.serialize(sent) != b.serialize(sent)
        got = b.decrypt(mm.secret, b.deserialize(mm.public, b.serialize(sent)))
        assert np.max(np.abs(got - (v @ m + 1 + mask))) < 1e-4
        # the slots past the values: the product's junk, plus the fresh ciphertext's zeros
        assert np.max(np.abs(_raw_slots(mm, sent)[6:])) <= _junk_scale(g.bound) + 1e-6


def test_matmul_repeated_refuses_bad_shapes_levels_and_magnitudes(mm, mul, keyset_factory):
    b = mm.backend
    ct = b.encrypt(mm.public, np.repeat(np.ones(10), 4))
    with pytest.raises(ConfigError, match="whole repeats"):
        b.matmul_repeated(ct, np.ones((10, 3)), repeat=3)  # 40 values are not whole repeats of 3
    with pytest.raises(ConfigError, match="shape"):
        b.matmul_repeated(ct, np.ones((9, 3)), repeat=4)
    with pytest.raises(ConfigError, match="at most repeat = 4 columns"):
        b.matmul_repeated(ct, np.ones((10, 5)), repeat=4)
    for bad in (0, -2, 2.0, True):
        with pytest.raises(ConfigError, match="repeat"):
            b.matmul_repeated(ct, np.ones((10, 1)), repeat=bad)
    used = b.matmul_repeated(ct, np.ones((10, 2)) / 10, repeat=4)
    with pytest.raises(UnsupportedOperationError, match="matmul_repeated"):
        b.matmul_repeated(b.mul_plain(b.encrypt(mm.public, np.ones(8)), 0.5), np.ones((2, 2)), repeat=4)
    with pytest.raises(UnsupportedOperationError):
        b.matmul_repeated(used, np.ones((1, 1)), repeat=2)
    with pytest.raises(UnsupportedOperationError, match="Galois"):
        mul.backend.matmul_repeated(mul.backend.encrypt(mul.public, np.ones(8)), np.ones((2, 2)), repeat=4)
    # a column L1 norm that could wrap CKKS is refused, showing powers of two only
    with pytest.raises(EncodingOverflowError, match=r"2\^") as info:
        b.matmul_repeated(ct, np.full((10, 2), 1e5 + 0.123), repeat=4)
    assert "0.123" not in str(info.value) and "100000" not in str(info.value)
    # zero rows or an all-zero matrix: an encryption of zeros
    zero = b.matmul_repeated(ct, np.zeros((10, 3)), repeat=4)
    assert np.max(np.abs(b.decrypt(mm.secret, zero))) <= b.info().error_bound and zero.length == 3


def test_matmul_repeated_without_memfd_computes_the_same_layout_by_the_generic_path(mm, monkeypatch):
    """The layout follows from public parameters only: a party on a platform without
    os.memfd_create asks for the same repeat and fill as one with it (so a job across platforms
    agrees on every residual's length), and computes the same product, slower."""
    from fedsilo.crypto import ckks

    b = mm.backend
    layouts = [(b.matmul_repeat(rows=r, columns=c), b.matmul_fill_rows(columns=c)) for r in (1, 100, 4096) for c in (2, 5, 11)]
    rng = np.random.default_rng(33)
    v, m = rng.uniform(-1, 1, 50), rng.uniform(-1, 1, (50, 3)) / 50
    fast = b.decrypt(mm.secret, b.matmul_repeated(b.encrypt(mm.public, np.repeat(v, 4)), m, repeat=4))
    monkeypatch.setattr(ckks, "_fold_available", lambda: False)
    assert [(b.matmul_repeat(rows=r, columns=c), b.matmul_fill_rows(columns=c)) for r in (1, 100, 4096) for c in (2, 5, 11)] == layouts
    assert b.matmul_repeat(rows=100, columns=5) == 8
    out = b.matmul_repeated(b.encrypt(mm.public, np.repeat(v, 4)), m, repeat=4)
    slow = b.decrypt(mm.secret, out)
    tol = b.matmul_error_bound(input_l1=np.abs(v).sum(), column_l1=np.abs(m).sum(axis=0), repeat=4)
    assert np.all(np.abs(slow - v @ m) <= tol) and np.all(np.abs(fast - v @ m) <= tol)
    _assert_uniform_junk(_raw_slots(mm, out)[3:], _junk_scale(out.bound))


def test_matmul_fill_rows_fill_one_ciphertext(mm, mul):
    b, s = mm.backend, mm.backend.p.slots
    assert b.matmul_fill_rows(columns=6) == s // 8 == 512  # the 10-feature benchmark's guest: 5 + intercept
    assert b.matmul_fill_rows(columns=11) == s // 16
    assert b.matmul_fill_rows(columns=1) == s  # one column: plain vectors, one value per slot
    assert b.matmul_fill_rows(columns=s + 1) == s  # more columns than slots: no packing either
    for columns in (2, 7, 64, 100):
        rows = b.matmul_fill_rows(columns=columns)
        assert rows * b.matmul_repeat(rows=rows, columns=columns) == s
    assert mul.backend.matmul_fill_rows(columns=6) is None  # no matmul without Galois keys
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="columns"):
            b.matmul_fill_rows(columns=bad)
