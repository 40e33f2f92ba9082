"""Fixed-point integers for g, h and histogram bins, packed into Paillier plaintexts. Pure.

The guest turns each row's ``(g, h)`` into one integer (the *row plaintext*); a host's bin sum of
row plaintexts, plus the integer the host adds itself (offsets, the bin's row count, DP noise),
holds three *slots* ``(G, H, count)``; several bins' sums are then packed into one plaintext by
shifting (the BatchCrypt idea, Zhang et al., USENIX ATC 2020, applied to histograms as in
SecureBoost+, Chen et al., arXiv:2110.10927). Every size comes from public numbers only
(:class:`HistLayout`), so the guest unpacks exactly what the host packed::

    row plaintext  = g_int + h_int · 2**Wg                      (g_int signed, h_int >= 0)
    bin value      = (ΣG + Og + nG) + (ΣH + Oh + nH)·2**Wg + (count + Oc + nC)·2**(Wg+Wh)
    packed value   = Σ_k bin_k · 2**(k·W),   W = Wg + Wh + Wc,   k < bins_per_plaintext

``g_int = round(g · 2**P)``, ``h_int = round(h · 2**P)`` (``P`` = ``precision``); the offsets
``O`` make every slot non-negative whatever the sums and the noise ``n`` (bounded by
``margin`` grid steps), and each slot's width ``W`` holds its largest value, so no carry ever
crosses a slot. Arithmetic is modulo the plaintext modulus ``n``; a row plaintext with a
negative ``g_int`` is ``n - |·|``, and because every operation is linear mod ``n`` the final
value, once the offsets are in, is the exact non-negative packed integer (below ``n`` by
construction). Unpacked, each of ``G``, ``H`` and ``count`` has a plaintext of its own.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedsilo.errors import ConfigError, EncodingOverflowError

__all__ = ["NOISE_TAIL", "HistLayout", "decode_bins", "encode_rows", "noise_margin", "offsets_plaintexts"]

#: DP noise is refused beyond this many standard deviations (a discrete Gaussian draw there has
#: probability below exp(-2000)); the slots have room for it.
NOISE_TAIL = 64


def noise_margin(*, sigma: float, granularity: float) -> int:
    """Grid steps of room a slot keeps for noise of standard deviation ``sigma`` (0: none)."""
    return 0 if sigma <= 0 else int(math.ceil(NOISE_TAIL * sigma / granularity))


@dataclass(frozen=True, slots=True)
class HistLayout:
    """The public sizes of one tree's encodings.

    Args:
        precision: ``P``, fractional bits of ``g`` and ``h``.
        rows: the most rows one sum can hold (the tree's sample size).
        g_bound, h_bound: ``|g| <= g_bound``, ``0 <= h <= h_bound`` per row.
        margins: room for DP noise in grid steps for ``(G, H, count)`` (zeros without DP).
        plaintext_bits: bits a packed plaintext may use (``key_bits - 1``: below ``n``).
        packed: one row plaintext for ``(g, h)`` and many bins per plaintext; else one
            plaintext per value.
    """

    precision: int
    rows: int
    g_bound: float
    h_bound: float
    margins: tuple[int, int, int]
    plaintext_bits: int
    packed: bool

    def __post_init__(self) -> None:
        if self.rows < 1 or self.precision < 0:
            raise ConfigError(f"histogram layout needs rows >= 1 and precision >= 0, got {self.rows}, {self.precision}")
        if self.packed and self.bins_per_plaintext < 1:
            raise ConfigError(
                f"one histogram bin needs {self.width} bits but a plaintext holds {self.plaintext_bits}; "
                "lower [crypto] params.precision or use a larger key"
            )

    # -- slot sizes ----------------------------------------------------------------------------
    @property
    def g_int_bound(self) -> int:
        return int(math.ceil(self.g_bound * 2**self.precision))

    @property
    def h_int_bound(self) -> int:
        return int(math.ceil(self.h_bound * 2**self.precision))

    @property
    def offsets(self) -> tuple[int, int, int]:
        """``(Og, Oh, Oc)``: what the host adds to every slot so that it is never negative."""
        mg, mh, mc = self.margins
        return self.rows * self.g_int_bound + mg, mh, mc

    @property
    def widths(self) -> tuple[int, int, int]:
        """``(Wg, Wh, Wc)``: bits of each slot, enough for its largest value."""
        og, oh, oc = self.offsets
        mg, mh, mc = self.margins
        return (
            (2 * og).bit_length(),
            (self.rows * self.h_int_bound + oh + mh).bit_length(),
            (self.rows + oc + mc).bit_length(),
        )

    @property
    def width(self) -> int:
        """``W``: bits of one bin."""
        return sum(self.widths)

    @property
    def bins_per_plaintext(self) -> int:
        """Bins packed in one plaintext (1 unpacked, where each value has its own)."""
        return self.plaintext_bits // self.width if self.packed else 1

    def plaintexts_for(self, bins: int) -> int:
        """Plaintexts (ciphertexts) one histogram of ``bins`` bins takes on the wire."""
        return -(-bins // self.bins_per_plaintext) if self.packed else 3 * bins

    @property
    def row_plaintexts(self) -> int:
        """Plaintexts per row the guest encrypts: 1 packed (``g`` and ``h`` together), 2 unpacked."""
        return 1 if self.packed else 2


def encode_rows(*, g: np.ndarray, h: np.ndarray, layout: HistLayout, modulus: int) -> list[int]:
    """The guest's row plaintexts, in ``[0, modulus)``: packed one per row (``g_int + h_int·2**Wg``),
    unpacked two per row (``g_int`` then ``h_int``, rows in order).

    Raises:
        EncodingOverflowError: a value outside its bound (names the index, never the value).
    """
    scale = 2.0**layout.precision
    gi = np.rint(np.asarray(g, dtype=np.float64) * scale)
    hi = np.rint(np.asarray(h, dtype=np.float64) * scale)
    bad = np.flatnonzero((np.abs(gi) > layout.g_int_bound) | (hi < 0) | (hi > layout.h_int_bound))
    if bad.size:
        raise EncodingOverflowError(f"{bad.size} gradient(s) outside the encodable bounds (first at row {int(bad[0])})")
    g_list = [int(v) for v in gi]
    h_list = [int(v) for v in hi]
    if layout.packed:
        shift = layout.widths[0]
        return [(a + (b << shift)) % modulus for a, b in zip(g_list, h_list)]
    out: list[int] = []
    for a, b in zip(g_list, h_list):
        out += [a % modulus, b]
    return out


def offsets_plaintexts(
    *, counts: np.ndarray, noise: np.ndarray | None, layout: HistLayout, modulus: int
) -> list[int]:
    """What a host adds to its (packed) bin sums before sending: the offsets, each bin's row
    count and the DP noise (``noise``: ``(bins, 3)`` integers in grid steps, or None).

    Packed: one integer per plaintext (bins ``k·K .. k·K + K - 1``); unpacked: three per bin.

    Raises:
        EncodingOverflowError: noise beyond its margin (probability below exp(-2000)).
    """
    og, oh, oc = layout.offsets
    nb = int(counts.shape[0])
    if noise is None:
        noise = np.zeros((nb, 3), dtype=np.int64)
    if np.any(np.abs(noise) > np.asarray(layout.margins)):
        raise EncodingOverflowError("DP noise beyond the slot margin (a draw of probability below exp(-2000)); retry")
    slots = [(og + int(noise[k, 0]), oh + int(noise[k, 1]), oc + int(counts[k]) + int(noise[k, 2])) for k in range(nb)]
    if not layout.packed:
        return [v % modulus for s in slots for v in s]
    wg, wh, _ = layout.widths
    width, per = layout.width, layout.bins_per_plaintext
    out = []
    for start in range(0, nb, per):
        acc = 0
        for k, (a, b, c) in enumerate(slots[start : start + per]):
            acc += (a + (b << wg) + (c << (wg + wh))) << (k * width)
        out.append(acc % modulus)
    return out


def decode_bins(plaintexts: Sequence[int], *, bins: int, layout: HistLayout) -> np.ndarray:
    """The guest's view of one histogram: ``(bins, 3)`` floats ``(G, H, count)``, offsets removed.

    Raises:
        EncodingOverflowError: a slot or the bits above the last slot hold more than any honest
            sum can (a corrupt ciphertext, or one under another key).
    """
    og, oh, oc = layout.offsets
    scale = 2.0**-layout.precision
    if len(plaintexts) != layout.plaintexts_for(bins):
        raise EncodingOverflowError(f"expected {layout.plaintexts_for(bins)} plaintexts for {bins} bins, got {len(plaintexts)}")
    raw: list[tuple[int, int, int]] = []
    if layout.packed:
        wg, wh, wc = layout.widths
        width, per = layout.width, layout.bins_per_plaintext
        for index, m in enumerate(plaintexts):
            take = min(per, bins - index * per)
            if m >> (take * width):
                raise EncodingOverflowError(f"histogram plaintext {index} has bits above its last bin (overflow or wrong key)")
            for k in range(take):
                v = m >> (k * width)
                raw.append((v & ((1 << wg) - 1), (v >> wg) & ((1 << wh) - 1), (v >> (wg + wh)) & ((1 << wc) - 1)))
    else:
        it = iter(plaintexts)
        raw = [(a, b, c) for a, b, c in zip(it, it, it)]
        limits = [1 << w for w in layout.widths]
        if any(a >= limits[0] or b >= limits[1] or c >= limits[2] for a, b, c in raw):
            raise EncodingOverflowError("a histogram value is larger than any honest sum (overflow or wrong key)")
    out = np.empty((bins, 3))
    for k, (a, b, c) in enumerate(raw):
        out[k] = ((a - og) * scale, (b - oh) * scale, float(c - oc))
    return out
