"""Fixed-point encoding and BatchCrypt packing: pure functions, so many cheap examples."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsilo.crypto.encoding import (
    decode_fixed,
    encode_fixed,
    fixed_point_bound,
    pack,
    slot_layout,
    unpack,
)
from fedsilo.errors import ConfigError, EncodingOverflowError

LAYOUT = slot_layout(plaintext_bits=2047, precision=32, value_bound=1.0, max_summands=10)


def test_layout_matches_batchcrypt_arithmetic():
    # 2 * 2^32 * 10 needs 37 bits: 55 slots in a 2048-bit plaintext (notes: 32-bit values + 4 bits).
    assert LAYOUT.offset == 2**32
    assert LAYOUT.slot_bits == (10 * 2 * 2**32).bit_length() == 37
    assert LAYOUT.slots == 2047 // 37 == 55
    assert LAYOUT.slots * LAYOUT.slot_bits <= 2047


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), max_size=50), st.integers(0, 40))
def test_fixed_point_round_trip_error(values, precision):
    x = np.array(values, dtype=np.float64)
    ints = encode_fixed(x, precision=precision, value_bound=1e6)
    assert all(isinstance(i, int) for i in ints)
    out = decode_fixed(ints, scale_bits=precision)
    assert np.all(np.abs(out - x) <= math.ldexp(1.0, -(precision + 1)) + 1e-15 * np.abs(x))


def test_one_scale_per_vector_and_exact_grid_values():
    x = np.array([1e-9, 123456.75, -0.5])
    ints = encode_fixed(x, precision=2, value_bound=1e6)
    assert ints == [0, 493827, -2]  # one scale 2^2 for every value, no per-value exponent
    assert decode_fixed(ints, scale_bits=2).tolist() == [0.0, 123456.75, -0.5]


def test_big_integers_decode_correctly_rounded():
    big = [3 * 2**100 + 1, -(2**120)]
    assert decode_fixed(big, scale_bits=100).tolist() == [3.0, -(2.0**20)]
    ints = encode_fixed(np.array([2.0**20]), precision=64, value_bound=2.0**20)
    assert ints == [2**84]


def test_value_beyond_bound_raises_without_showing_it():
    with pytest.raises(EncodingOverflowError) as info:
        encode_fixed(np.array([0.5, 1.0000001]), precision=32, value_bound=1.0)
    assert "index 1" in str(info.value) and "1.0000001" not in str(info.value)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-(2**32), 2**32), max_size=200))
def test_pack_unpack_round_trip(ints):
    packed = pack(ints, layout=LAYOUT)
    assert len(packed) == LAYOUT.plaintexts_for(len(ints))
    assert all(0 <= p < 2**2047 for p in packed)
    assert unpack(packed, layout=LAYOUT, length=len(ints), summands=1) == ints


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 10).flatmap(lambda k: st.lists(st.lists(st.integers(-(2**32), 2**32), min_size=60, max_size=60), min_size=k, max_size=k)))
def test_packed_addition_is_slotwise_up_to_k_summands(rows):
    # Integer addition of packed plaintexts is what Paillier's ciphertext product computes.
    total = [sum(col) for col in zip(*(pack(r, layout=LAYOUT) for r in rows))]
    expected = [sum(col) for col in zip(*rows)]
    assert unpack(total, layout=LAYOUT, length=60, summands=len(rows)) == expected


def test_packing_exact_at_the_edges_with_max_summands():
    top, bottom = [LAYOUT.offset] * 55, [-LAYOUT.offset] * 55
    for rows in ([top] * 10, [bottom] * 10, [top, bottom] * 5):
        total = [sum(col) for col in zip(*(pack(r, layout=LAYOUT) for r in rows))]
        assert unpack(total, layout=LAYOUT, length=55, summands=10) == [sum(c) for c in zip(*rows)]


def test_overflow_is_detected_not_wrapped():
    top = pack([LAYOUT.offset] * 55, layout=LAYOUT)[0]
    # 11 summands of the maximum do not fit 10 summands' headroom: the slot reports overflow.
    eleven = top * 11
    with pytest.raises(EncodingOverflowError):
        unpack([eleven], layout=LAYOUT, length=55, summands=10)
    # 16 maxima carry out of every 37-bit slot; the carry out of the last slot is caught.
    # (Ciphertexts never get here: they refuse the 11th summand before adding.)
    with pytest.raises(EncodingOverflowError):
        unpack([top * 16], layout=LAYOUT, length=55, summands=16)
    with pytest.raises(EncodingOverflowError):
        pack([LAYOUT.offset + 1], layout=LAYOUT)
    with pytest.raises(EncodingOverflowError):
        unpack([1 << 2046], layout=LAYOUT, length=1, summands=1)


def test_layout_validation():
    with pytest.raises(ConfigError, match="precision"):
        slot_layout(plaintext_bits=1023, precision=64, value_bound=2.0**1000, max_summands=16)
    with pytest.raises(ConfigError, match="max_summands"):
        slot_layout(plaintext_bits=1023, precision=8, value_bound=1.0, max_summands=0)
    with pytest.raises(ConfigError, match="value_bound"):
        fixed_point_bound(value_bound=float("inf"), precision=8)
