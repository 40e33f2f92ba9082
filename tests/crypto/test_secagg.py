"""The maths of SecAgg+ with the distributed discrete Gaussian (fedsilo.crypto.secagg).

Property tests: fixed point round trips and exact sums on the grid; masks cancel for every dropout
pattern that leaves at least t silos (with the dropped silos' pairwise masks removed through their
Shamir-reconstructed keys, as the aggregator does); Shamir reconstructs from any t shares and
t − 1 shares are consistent with other secrets; the neighbourhood graph is k-regular and the same
for every party; the discrete Gaussian sampler's mean and variance; the rotation is orthogonal and
invertible; the conditional rounding meets its norm bound. Secret randomness is never seeded here.
"""
from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from Crypto.Protocol.SecretSharing import Shamir
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsilo.crypto import secagg as sa
from fedsilo.errors import ConfigError, CryptoError, CiphertextFormatError, EncodingOverflowError

SEED = bytes(range(32))


# ------------------------------------------------------------------------------ fixed point
@settings(max_examples=60)
@given(
    exponent=st.integers(min_value=-20, max_value=0),
    steps=st.lists(st.lists(st.integers(min_value=-(2**20), max_value=2**20), min_size=3, max_size=3), min_size=1, max_size=12),
)
def test_fixed_point_sums_are_exact_on_the_grid(exponent: int, steps: list[list[int]]) -> None:
    g = 2.0**exponent
    vectors = [np.asarray(s, dtype=np.float64) * g for s in steps]
    bound = max(1.0, max(float(np.max(np.abs(v))) for v in vectors))
    bits = sa.fixed_point_bits(value_bound=bound, granularity=g, summands=len(vectors))
    rings = [sa.encode_fixed(v, granularity=g, bits=bits) for v in vectors]
    for v, r in zip(vectors, rings):
        assert r.dtype == sa.ring_dtype(bits)
        assert np.array_equal(sa.decode_fixed(r, granularity=g, bits=bits), v)  # round trip
    total = sa.ring_reduce(np.sum(np.stack(rings), axis=0, dtype=rings[0].dtype), bits=bits)
    assert np.array_equal(sa.decode_fixed(total, granularity=g, bits=bits), np.sum(np.stack(vectors), axis=0))


@given(bits=st.integers(min_value=2, max_value=64), data=st.data())
def test_integer_encoding_round_trips_at_every_width(bits: int, data: st.DataObject) -> None:
    half = 2 ** (bits - 1)
    ints = data.draw(st.lists(st.integers(min_value=-half, max_value=min(half - 1, 2**63 - 1)), min_size=1, max_size=8))
    ring = sa.encode_integers(np.asarray(ints, dtype=np.int64), bits=bits)
    if bits < 64:
        assert int(ring.max()) < 2**bits
    assert sa.decode_integers(ring, bits=bits).tolist() == ints


def test_encoding_refuses_to_wrap_and_ring_bits_refuses_above_64() -> None:
    with pytest.raises(EncodingOverflowError, match="do not fit 8-bit"):
        sa.encode_integers(np.array([127, 128]), bits=8)
    assert sa.ring_bits(value_bound=127, summands=1) == 8
    assert sa.ring_bits(value_bound=128, summands=1) == 9
    # 10 summands of up to 2^20 steps and noise of 1000 steps each: 10*2^20 + 12*sqrt(10)*1000
    assert sa.ring_bits(value_bound=2**20, summands=10, noise_sigma=1000.0) == (10 * 2**20 + math.ceil(12 * math.sqrt(10) * 1000)).bit_length() + 1
    with pytest.raises(ConfigError, match="needs 65 bits"):
        sa.ring_bits(value_bound=2**62, summands=2)
    with pytest.raises(ConfigError, match="power of two"):
        sa.fixed_point_bits(value_bound=1.0, granularity=0.1, summands=2)


# ------------------------------------------------------------------------------ masks
@pytest.mark.parametrize("prg", sa.PRGS)
@pytest.mark.parametrize("bits", [5, 32, 33, 64])
def test_masks_are_deterministic_in_range_and_seed_dependent(prg: str, bits: int) -> None:
    a = sa.expand_mask(SEED, 1000, bits=bits, prg=prg)
    assert a.dtype == sa.ring_dtype(bits) and a.shape == (1000,)
    assert np.array_equal(a, sa.expand_mask(SEED, 1000, bits=bits, prg=prg))
    assert not np.array_equal(a, sa.expand_mask(bytes(32), 1000, bits=bits, prg=prg))
    if bits < 64:
        assert int(a.max()) < 2**bits
    # a prefix of a longer mask is the shorter mask (one keystream)
    assert np.array_equal(sa.expand_mask(SEED, 10, bits=bits, prg=prg), a[:10])


def test_masks_are_uniform_on_a_small_ring() -> None:
    from scipy import stats

    m = sa.expand_mask(SEED, 64_000, bits=6)
    counts = np.bincount(m.astype(np.int64), minlength=64)
    assert stats.chisquare(counts).pvalue > 1e-6


def _reference_keystream(seed: bytes, nbytes: int, prg: str) -> bytes:
    """The PRG's keystream from pycryptodome, an implementation independent of ``cryptography``."""
    from Crypto.Cipher import AES, ChaCha20

    if prg == "aes-ctr":  # AES-256, the whole 16-byte block a big-endian counter from 0
        return AES.new(seed, AES.MODE_CTR, nonce=b"", initial_value=0).encrypt(bytes(nbytes))
    # RFC 8439 ChaCha20, block counter 0, all-zero 96-bit nonce (cryptography's 16-byte zero nonce)
    return ChaCha20.new(key=seed, nonce=bytes(12)).encrypt(bytes(nbytes))


@pytest.mark.parametrize("prg", sa.PRGS)
@pytest.mark.parametrize("bits", [1, 5, 31, 32, 33, 50, 63, 64])
@pytest.mark.parametrize("length", [0, 1, 3, 1001, 70_001])
def test_masks_are_the_keystream_read_as_little_endian_ring_words(prg: str, bits: int, length: int) -> None:
    # known answer against another library: pins every value expand_mask produces, so a faster
    # path can only be a faster way to the same words
    width = 4 if bits <= 32 else 8
    words = np.frombuffer(_reference_keystream(SEED, width * length, prg), dtype=f"<u{width}").astype(np.uint64)
    want = words & np.uint64((1 << bits) - 1) if bits < 64 else words
    got = sa.expand_mask(SEED, length, bits=bits, prg=prg)
    assert got.dtype == sa.ring_dtype(bits) and got.shape == (length,)
    assert np.array_equal(got.astype(np.uint64), want)


def test_masks_do_not_share_memory_and_callers_own_them() -> None:
    # the protocol adds masks into the silo's vector in place; one mask must not alias another
    a = sa.expand_mask(SEED, 5000, bits=64)
    b = sa.expand_mask(SEED, 5000, bits=64)
    assert not np.shares_memory(a, b)
    a += np.uint64(1)
    assert np.array_equal(b, sa.expand_mask(SEED, 5000, bits=64))
    assert a.flags.writeable and a.flags.c_contiguous


@settings(max_examples=40)
@given(
    bits=st.integers(min_value=1, max_value=64),
    signs=st.lists(st.sampled_from([1, -1]), min_size=1, max_size=12),
    length=st.integers(min_value=1, max_value=40),
)
def test_wrapping_ring_arithmetic_then_one_reduction_is_the_exact_modular_sum(bits: int, signs: list[int], length: int) -> None:
    # what a silo does: add or subtract each neighbour's mask with numpy's unsigned wrap-around and
    # reduce once at the end; 2^bits divides the word's modulus, so this equals the sum mod 2^bits
    seeds = [bytes([i]) * 32 for i in range(len(signs))]
    ring = np.zeros(length, dtype=sa.ring_dtype(bits))
    exact = [0] * length
    for seed, sign in zip(seeds, signs):
        m = sa.expand_mask(seed, length, bits=bits)
        ring = ring + m if sign > 0 else ring - m
        exact = [e + sign * int(v) for e, v in zip(exact, m)]
    got = sa.ring_reduce(ring, bits=bits)
    assert [int(v) for v in got] == [e % (1 << bits) for e in exact]


def _masked_inputs(names, graph, keys, selfs, inputs, bits, participants):
    """Every silo's masked input as the protocol computes it (masks with the neighbours that took part)."""
    out = {}
    for u in participants:
        y = inputs[u].copy()
        y += sa.expand_mask(selfs[u], y.shape[0], bits=bits)
        for v in graph[u]:
            if v not in participants:
                continue
            seed = sa.derive_seed(keys[u].agree(keys[v].public), job="j", round=1, a=u, b=v, purpose="mask")
            m = sa.expand_mask(seed, y.shape[0], bits=bits)
            if u < v:
                y += m
            else:
                y -= m
        out[u] = sa.ring_reduce(y, bits=bits)
    return out


@settings(max_examples=25)
@given(n=st.integers(min_value=3, max_value=9), bits=st.sampled_from([12, 32, 40]), data=st.data())
def test_masks_cancel_for_any_dropout_pattern_leaving_t(n: int, bits: int, data: st.DataObject) -> None:
    names = [f"s{i}" for i in range(n)]
    degree = n - 1 if n < 6 else data.draw(st.sampled_from([d for d in range(2, n - 1, 2)] + [n - 1]))
    graph = sa.neighbourhood_graph(names, degree=degree, seed=SEED)
    t = data.draw(st.integers(min_value=2, max_value=degree))
    keys = {u: sa.AgreementKey.generate() for u in names}
    selfs = {u: bytes([i]) * 32 for i, u in enumerate(names)}
    length = 16
    inputs = {u: sa.encode_integers(np.arange(length) * (i + 1) - 7, bits=bits) for i, u in enumerate(names)}
    # who sent masked inputs (U3) among those that shared (U2 = everyone here); at least t
    sent = data.draw(st.lists(st.sampled_from(names), min_size=t, max_size=n, unique=True))
    masked = _masked_inputs(names, graph, keys, selfs, inputs, bits, participants=set(names))
    total = np.zeros(length, dtype=sa.ring_dtype(bits))
    for u in sent:
        total += masked[u]
        total -= sa.expand_mask(selfs[u], length, bits=bits)
    for u in set(names) - set(sent):  # dropped after sharing: rebuild its key from t shares
        shares = sa.share_secret(keys[u].export_secret(), threshold=t, holders=len(graph[u]))
        key = sa.AgreementKey.from_secret(sa.combine_shares(shares[-t:], threshold=t))
        assert key.public == keys[u].public
        for v in graph[u]:
            if v in sent:
                m = sa.expand_mask(sa.derive_seed(key.agree(keys[v].public), job="j", round=1, a=u, b=v, purpose="mask"),
                                   length, bits=bits)
                if v < u:
                    total -= m
                else:
                    total += m
    sa.ring_reduce(total, bits=bits)
    expected = sum(sa.decode_integers(inputs[u], bits=bits) for u in sent)
    assert np.array_equal(sa.decode_integers(total, bits=bits), expected)


def test_pairwise_seeds_agree_and_are_domain_separated() -> None:
    a, b = sa.AgreementKey.generate(), sa.AgreementKey.generate()
    ab = sa.derive_seed(a.agree(b.public), job="j", round=3, a="x", b="y", purpose="mask")
    ba = sa.derive_seed(b.agree(a.public), job="j", round=3, a="y", b="x", purpose="mask")
    assert ab == ba and len(ab) == 32
    shared = a.agree(b.public)
    others = {
        sa.derive_seed(shared, job="j", round=4, a="x", b="y", purpose="mask"),
        sa.derive_seed(shared, job="k", round=3, a="x", b="y", purpose="mask"),
        sa.derive_seed(shared, job="j", round=3, a="x", b="z", purpose="mask"),
        sa.derive_seed(shared, job="j", round=3, a="x", b="y", purpose="share-key"),
    }
    assert ab not in others and len(others) == 4
    with pytest.raises(CiphertextFormatError):
        a.agree(b"\x01" * 31)
    with pytest.raises(CryptoError, match="low-order"):
        a.agree(bytes(32))  # the identity point
    assert "secret hidden" in repr(a) and a.public.hex()[:12] not in repr(a)
    with pytest.raises(TypeError):
        pickle.dumps(a)


def test_sealed_shares_authenticate_their_direction() -> None:
    key = bytes(range(32))
    blob = sa.seal(key, b"share", aad=b"j|1|a->b")
    assert sa.unseal(key, blob, aad=b"j|1|a->b") == b"share"
    for bad_aad in (b"j|1|b->a", b"j|2|a->b"):
        with pytest.raises(CryptoError, match="does not authenticate"):
            sa.unseal(key, blob, aad=bad_aad)
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(CryptoError):
        sa.unseal(key, tampered, aad=b"j|1|a->b")


# ------------------------------------------------------------------------------ Shamir
@settings(max_examples=40)
@given(secret=st.binary(min_size=32, max_size=32), holders=st.integers(min_value=2, max_value=12), data=st.data())
def test_shamir_any_t_shares_reconstruct(secret: bytes, holders: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(min_value=2, max_value=holders))
    shares = sa.share_secret(secret, threshold=t, holders=holders)
    assert [i for i, _ in shares] == list(range(1, holders + 1))
    subset = data.draw(st.lists(st.sampled_from(shares), min_size=t, max_size=holders, unique=True))
    assert sa.combine_shares(subset, threshold=t) == secret
    with pytest.raises(CryptoError, match="cannot reconstruct"):
        sa.combine_shares(subset[: t - 1], threshold=t)


@settings(max_examples=30)
@given(secret=st.binary(min_size=32, max_size=32), holders=st.integers(min_value=3, max_value=10), data=st.data())
def test_shamir_t_minus_one_shares_are_consistent_with_other_secrets(secret: bytes, holders: int, data: st.DataObject) -> None:
    """Information-theoretic hiding: t − 1 shares plus any value for one more index interpolate
    (pycryptodome's own Lagrange interpolation) to a degree-(t−1) polynomial through the t − 1
    shares; different values give different secrets, so the t − 1 shares fit several secrets."""
    t = data.draw(st.integers(min_value=2, max_value=holders))
    shares = sa.share_secret(secret, threshold=t, holders=holders)
    seen = shares[: t - 1]
    missing = shares[t - 1][0]
    candidates = set()
    for fake in (bytes(16), b"\x01" * 16, b"\xff" * 16):
        lo = Shamir.combine([(i, v[:16]) for i, v in seen] + [(missing, fake)])
        hi = Shamir.combine([(i, v[16:]) for i, v in seen] + [(missing, fake)])
        candidates.add(lo + hi)
    assert len(candidates) == 3  # three different secrets, each consistent with the t − 1 shares
    assert sa.combine_shares(shares[:t], threshold=t) == secret


def test_shamir_refuses_bad_parameters() -> None:
    with pytest.raises(ConfigError, match="threshold"):
        sa.share_secret(SEED, threshold=1, holders=3)
    with pytest.raises(ConfigError, match="exceeds"):
        sa.share_secret(SEED, threshold=4, holders=3)
    with pytest.raises(ConfigError, match="32 bytes"):
        sa.share_secret(b"short", threshold=2, holders=3)
    shares = sa.share_secret(SEED, threshold=2, holders=3)
    with pytest.raises(CryptoError, match="duplicate"):
        sa.combine_shares([shares[0], shares[0]], threshold=2)


# ------------------------------------------------------------------------------ the graph
@settings(max_examples=40)
@given(n=st.integers(min_value=3, max_value=60), data=st.data())
def test_graph_is_k_regular_symmetric_and_the_same_for_every_party(n: int, data: st.DataObject) -> None:
    names = [f"silo-{i:03d}" for i in range(n)]
    degree = data.draw(st.sampled_from([d for d in range(2, n - 1, 2)] + [n - 1]))
    seed = data.draw(st.binary(min_size=32, max_size=32))
    graph = sa.neighbourhood_graph(names, degree=degree, seed=seed)
    assert set(graph) == set(names)
    for u, near in graph.items():
        assert len(near) == degree and u not in near and len(set(near)) == degree
        assert all(u in graph[v] for v in near)  # symmetric
    # every party computes it from the public seed alone, whatever order it lists the silos in
    shuffled = list(reversed(names))
    assert sa.neighbourhood_graph(shuffled, degree=degree, seed=seed) == graph


def test_graph_depends_on_the_public_seed_and_refuses_odd_sparse_degrees() -> None:
    names = [f"s{i}" for i in range(20)]
    a = sa.neighbourhood_graph(names, degree=4, seed=sa.public_seed(job="j", round=1, purpose="graph"))
    b = sa.neighbourhood_graph(names, degree=4, seed=sa.public_seed(job="j", round=2, purpose="graph"))
    assert a != b
    with pytest.raises(ConfigError, match="even degree"):
        sa.neighbourhood_graph(names, degree=5, seed=SEED)


def test_degree_is_logarithmic_and_meets_its_bound() -> None:
    assert sa.secagg_plus_degree(10, bad_fraction=1 / 3) == 9  # 4 bad silos can make a run of 4: complete graph
    assert sa.secagg_plus_degree(5, bad_fraction=0.5) == 4  # small federations: the complete graph
    ks = [sa.secagg_plus_degree(n, bad_fraction=0.1) for n in (10**3, 10**4, 10**5, 10**6)]
    assert ks == sorted(ks) and ks[-1] < 60  # grows like log n
    for n in (100, 1000, 10**4):
        k = sa.secagg_plus_degree(n, bad_fraction=0.2)
        if k < n - 1:
            assert n * sa._run_probability(n, math.ceil(0.2 * n), k // 2) <= 2.0**-40
            if k > 2:
                assert n * sa._run_probability(n, math.ceil(0.2 * n), k // 2 - 1) > 2.0**-40  # the smallest


# ------------------------------------------------------------------------------ discrete Gaussian
@pytest.mark.parametrize("sigma", [0.6, 2.5, 40.0])
def test_discrete_gaussian_mean_and_variance(sigma: float) -> None:
    n = 200_000
    x = sa.discrete_gaussian_integers(sigma=sigma, size=n, stream=sa.secret_stream())
    assert x.dtype == np.int64 and x.shape == (n,)
    ks = np.arange(-int(20 * sigma) - 20, int(20 * sigma) + 21)
    w = np.exp(-(ks.astype(float) ** 2) / (2 * sigma**2))
    var = float(np.sum(w * ks**2) / np.sum(w))  # the exact variance of N_Z(0, σ²)
    # 6 standard errors (var of x² is 2σ⁴ for a Gaussian, a little less here)
    assert abs(float(x.mean())) < 6 * math.sqrt(var / n)
    assert abs(float(x.var()) - var) < 6 * math.sqrt(2 * var * var / n) + 1e-9
    if sigma < 1:  # the pmf, not only two moments
        from scipy import stats

        support = np.arange(-4, 5)
        expected = np.exp(-(support.astype(float) ** 2) / (2 * sigma**2))
        expected = expected / expected.sum() * n
        counts = np.array([np.count_nonzero(x == k) for k in support])
        assert stats.chisquare(counts, expected * counts.sum() / expected.sum()).pvalue > 1e-6


def test_secret_stream_is_os_random_unless_seeded_for_tests() -> None:
    a, b = sa.secret_stream(), sa.secret_stream()
    assert a.random_bytes(32) != b.random_bytes(32)
    assert not a.reproducible and sa.secret_stream(7).reproducible
    assert sa.secret_stream(7).random_bytes(16) == sa.secret_stream(7).random_bytes(16)
    u = a.uniform(10_000)
    assert float(u.min()) > 0.0 and float(u.max()) <= 1.0
    with pytest.raises(TypeError):
        pickle.dumps(a)
    with pytest.raises(ConfigError, match="SecretStream"):
        sa.discrete_gaussian_integers(sigma=1.0, size=3, stream=np.random.default_rng(0))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ rotation and rounding
@settings(max_examples=40)
@given(dim=st.integers(min_value=1, max_value=300), seed=st.binary(min_size=32, max_size=32), data=st.data())
def test_rotation_is_orthogonal_and_invertible(dim: int, seed: bytes, data: st.DataObject) -> None:
    values = data.draw(st.lists(st.floats(min_value=-1e3, max_value=1e3), min_size=dim, max_size=dim))
    x = np.asarray(values)
    y = sa.hadamard_rotate(x, seed=seed)
    assert y.shape == (sa.padded_dimension(dim),)
    assert math.isclose(float(np.linalg.norm(y)), float(np.linalg.norm(x)), rel_tol=1e-12, abs_tol=1e-9)
    assert np.allclose(sa.hadamard_unrotate(y, seed=seed, dim=dim), x, rtol=0, atol=1e-9)


def test_rotation_matrix_is_orthogonal_and_flattens_a_spike() -> None:
    d = 64
    basis = np.eye(d)
    u = np.stack([sa.hadamard_rotate(basis[i], seed=SEED) for i in range(d)], axis=1)
    assert np.allclose(u.T @ u, np.eye(d), atol=1e-12)
    assert np.allclose(np.abs(u), 1 / math.sqrt(d))  # a spike becomes perfectly flat
    signs = sa.rotation_signs(d, SEED)
    assert set(np.unique(signs)) == {-1.0, 1.0}


def test_conditional_rounding_meets_the_bound_and_is_unbiased() -> None:
    from fedsilo.privacy.distributed import rounded_l2_bound

    stream = sa.secret_stream()
    d, c = 256, 50.0
    x = np.random.default_rng(1).normal(size=d)
    x *= c / np.linalg.norm(x)
    bound = rounded_l2_bound(norm=c, dimension=d, beta=math.exp(-0.5))
    draws = np.stack([sa.conditional_round(x, norm_bound=bound, stream=stream) for _ in range(400)])
    assert np.all(np.linalg.norm(draws.astype(float), axis=1) <= bound)
    assert np.all(np.abs(draws - x) < 1)  # floor or ceil of every coordinate
    assert abs(float(np.mean(draws - x))) < 0.01  # unbiased (up to the conditioning, which is mild)
    with pytest.raises(CryptoError, match="clip the vector"):
        sa.conditional_round(x * 3, norm_bound=bound, stream=stream, max_tries=20)


def test_degree_two_graph_is_one_cycle() -> None:
    names = [f"s{i}" for i in range(7)]
    graph = sa.neighbourhood_graph(names, degree=2, seed=SEED)
    edges = {frozenset((u, v)) for u, near in graph.items() for v in near}
    assert len(edges) == 7  # the Harary graph H_{2,7}: one cycle through all 7 silos
    walk, prev = ["s0"], None
    while len(walk) < 8:
        nxt = next(v for v in graph[walk[-1]] if v != prev)
        prev = walk[-1]
        walk.append(nxt)
    assert walk[-1] == "s0" and len(set(walk[:-1])) == 7


def test_the_discrete_gaussian_sampler_refuses_a_sigma_it_cannot_draw() -> None:
    """Found by the bad-input sweep: σ = 1e300 never returned (σ² overflowed the acceptance test)."""
    from fedsilo.crypto import secagg as sa_
    from fedsilo.errors import ConfigError as _ConfigError

    with pytest.raises(_ConfigError, match="sigma must be at most 2\\^40"):
        sa_.discrete_gaussian_integers(sigma=1e300, size=3, stream=sa_.secret_stream())
    assert sa_.discrete_gaussian_integers(sigma=2.0**40, size=3, stream=sa_.secret_stream()).dtype == np.int64
