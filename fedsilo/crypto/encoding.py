"""Fixed-point encoding and BatchCrypt-style packing: pure functions on floats and integers.

Encryption never sees a float. A vector is first *encoded* here into integers, then the Paillier
backend encrypts those integers (``(1 + mn)·h^α``, or phe's ``raw_encrypt`` for format-1 keys; the same layering as python-paillier's
``EncodedNumber`` / ``EncryptedNumber`` split, but with one fixed scale for the whole vector).

Fixed point (one scale per vector)
    ``x -> round(x * 2**precision)``. Every value of a vector shares the scale ``2**precision``:
    per-value exponents (what ``phe.EncodedNumber.encode`` picks for a float) would reveal each
    value's magnitude in the clear and force a costly exponent alignment on every addition.
    Rounding costs at most ``2**-(precision + 1)`` per value.

Packing (BatchCrypt: Zhang et al., "BatchCrypt: Efficient Homomorphic Encryption for
Cross-Silo Federated Learning", USENIX ATC 2020, section 4)
    Many fixed-point values share one Paillier plaintext. Slot ``i`` of a plaintext occupies bits
    ``[i * slot_bits, (i + 1) * slot_bits)``. A value ``v`` (with ``|v| <= bound``) is stored
    as ``v + bound`` (an offset, so every slot is non-negative and no borrow ever crosses a slot
    boundary). Adding two packed plaintexts adds slot-wise; after ``k`` summands a slot holds
    ``sum(v) + k * bound <= k * 2 * bound``, so ``slot_bits = bitlen(K * 2 * bound)`` leaves
    headroom for ``K`` summands. The summand count ``k`` travels with the ciphertext; more than
    ``K`` summands, a value beyond ``bound``, or a slot that decodes outside its range raise
    :class:`~fedsilo.errors.EncodingOverflowError` -- an overflow is never wrapped silently.

All functions are keyword-only pure functions; nothing here holds state or keys.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from fedsilo.errors import ConfigError, EncodingOverflowError

__all__ = [
    "SlotLayout",
    "decode_fixed",
    "encode_fixed",
    "fixed_point_bound",
    "pack",
    "slot_layout",
    "unpack",
]

# Integers below this are exact in float64 and in int64: the fast numpy path is exact there.
_EXACT_INT = 2**53


def fixed_point_bound(*, value_bound: float, precision: int) -> int:
    """Largest ``|round(x * 2**precision)|`` for ``|x| <= value_bound`` (an integer >= 1)."""
    if not (math.isfinite(value_bound) and value_bound > 0):
        raise ConfigError(f"value_bound must be a positive finite number, got {value_bound!r}")
    if precision < 0:
        raise ConfigError(f"precision must be >= 0 fractional bits, got {precision}")
    # Exact rational arithmetic (no float overflow for large bounds): ceil(vb * 2**precision).
    num, den = float(value_bound).as_integer_ratio()
    return max(1, -((-num << precision) // den))


def encode_fixed(
    values: np.ndarray, *, precision: int, value_bound: float, what: str = "value"
) -> list[int]:
    """Signed integers ``round(x * 2**precision)`` for a finite float vector.

    Raises :class:`EncodingOverflowError` if any ``|x| > value_bound``. The message names the
    index, never the value (no plaintext in logs or tracebacks).
    """
    arr = np.asarray(values, dtype=np.float64)
    over = np.flatnonzero(np.abs(arr) > value_bound)
    if over.size:
        raise EncodingOverflowError(
            f"{over.size} {what}(s) exceed value_bound={value_bound:g} (first at index {int(over[0])}); "
            "raise value_bound (packed Paillier: fewer values per ciphertext) or clip the input"
        )
    bound = fixed_point_bound(value_bound=value_bound, precision=precision)
    if bound.bit_length() > 1000:
        # x * 2**precision may not fit a float64: exact rationals, rounded half to even.
        return [round(Fraction(float(v)) * (1 << precision)) for v in arr]
    # ldexp by a power of two is exact; rint rounds half to even, like Python's round().
    scaled = np.rint(np.ldexp(arr, precision))
    if bound < _EXACT_INT:
        return scaled.astype(np.int64).tolist()
    return [int(v) for v in scaled]  # int(float) is exact for any integral float


def decode_fixed(ints: Sequence[int], *, scale_bits: int) -> np.ndarray:
    """Float64 values ``m / 2**scale_bits``, correctly rounded, for signed integers ``m``."""
    try:
        arr = np.array(ints, dtype=np.int64)
    except OverflowError:
        # Beyond int64: Python's int / int true division is correctly rounded at any size.
        divisor = 1 << scale_bits
        return np.fromiter((m / divisor for m in ints), dtype=np.float64, count=len(ints))
    if arr.size and int(np.max(np.abs(arr))) >= _EXACT_INT:
        divisor = 1 << scale_bits
        return np.fromiter((int(m) / divisor for m in ints), dtype=np.float64, count=len(ints))
    return np.ldexp(arr.astype(np.float64), -scale_bits)


@dataclass(frozen=True, slots=True)
class SlotLayout:
    """How fixed-point values sit in one packed Paillier plaintext (all public parameters)."""

    precision: int  #: fractional bits of the fixed-point encoding
    value_bound: float  #: inputs must satisfy |x| <= value_bound
    max_summands: int  #: K: headroom for this many summands per slot
    offset: int  #: ``ceil(value_bound * 2**precision)``: added to every value so slots stay >= 0
    slot_bits: int  #: ``bitlen(K * 2 * offset)``
    slots: int  #: values per plaintext: ``plaintext_bits // slot_bits``

    def slot_max(self, summands: int) -> int:
        """Largest legal slot content after ``summands`` additions (offset included)."""
        return summands * 2 * self.offset

    def plaintexts_for(self, length: int) -> int:
        return -(-length // self.slots)


def slot_layout(
    *, plaintext_bits: int, precision: int, value_bound: float, max_summands: int
) -> SlotLayout:
    """Size the slots for ``max_summands`` summands of values in ``[-value_bound, value_bound]``.

    ``plaintext_bits`` is how many bits a plaintext may use: ``key_bits - 1`` keeps every packed
    integer below the modulus ``n`` (phe's keys have exactly ``key_bits`` bits, so n >= 2**(key_bits-1)).
    """
    if max_summands < 1:
        raise ConfigError(f"max_summands must be >= 1, got {max_summands}")
    offset = fixed_point_bound(value_bound=value_bound, precision=precision)
    slot_bits = (max_summands * 2 * offset).bit_length()
    if slot_bits > plaintext_bits:
        raise ConfigError(
            f"packing: one slot needs {slot_bits} bits (precision={precision}, value_bound={value_bound:g}, "
            f"max_summands={max_summands}) but a plaintext holds {plaintext_bits}; lower precision or value_bound"
        )
    return SlotLayout(
        precision=precision,
        value_bound=value_bound,
        max_summands=max_summands,
        offset=offset,
        slot_bits=slot_bits,
        slots=plaintext_bits // slot_bits,
    )


def pack(ints: Sequence[int], *, layout: SlotLayout, summands: int = 1) -> list[int]:
    """Pack signed fixed-point integers (``|v| <= offset``) into plaintext integers.

    Value ``j`` goes to plaintext ``j // slots``, slot ``j % slots`` (slot 0 = least significant
    bits). Each value is stored with ``summands * offset`` added (``summands=1`` for fresh values).
    Unused slots of the last plaintext stay 0, which no sum can push past its slot.
    """
    shift = layout.slot_bits
    base = summands * layout.offset
    top = layout.slot_max(summands)
    out: list[int] = []
    for start in range(0, len(ints), layout.slots):
        acc = 0
        # Most significant slot first so each step is one shift and one OR.
        for v in reversed(ints[start : start + layout.slots]):
            u = v + base
            if not 0 <= u <= top:
                raise EncodingOverflowError(
                    f"packing: a value at index >= {start} is outside the slot range (bound {layout.value_bound:g})"
                )
            acc = (acc << shift) | u
        out.append(acc)
    return out


def unpack(packed: Sequence[int], *, layout: SlotLayout, length: int, summands: int) -> list[int]:
    """Inverse of :func:`pack` after ``summands`` additions: signed integer sums per slot.

    Raises :class:`EncodingOverflowError` if a slot holds more than ``summands * 2 * offset``
    or bits remain above the last slot: an overflow (or a ciphertext under another key), never
    a silently wrapped value.
    """
    shift = layout.slot_bits
    mask = (1 << shift) - 1
    top = layout.slot_max(summands)
    base = summands * layout.offset
    out: list[int] = []
    remaining = length
    for index, m in enumerate(packed):
        take = min(layout.slots, remaining)
        for _ in range(take):
            u = m & mask
            if u > top:
                raise EncodingOverflowError(
                    f"packing: slot overflow in plaintext {index} ({summands} summands, "
                    f"headroom for {layout.max_summands}); decrypted under the wrong key?"
                )
            out.append(u - base)
            m >>= shift
        # Padding slots of the last plaintext are 0 plus whatever plaintext additions put there,
        # which is bounded the same way; anything above the slot area means overflow.
        for _ in range(layout.slots - take):
            if (m & mask) > top:
                raise EncodingOverflowError(f"packing: slot overflow in padding of plaintext {index}")
            m >>= shift
        if m:
            raise EncodingOverflowError(
                f"packing: plaintext {index} has bits above its last slot (overflow or wrong key)"
            )
        remaining -= take
    return out
