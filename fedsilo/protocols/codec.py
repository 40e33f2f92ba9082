"""A small, safe, self-describing codec for protocol payloads.

Payloads are trees of None, bool, int, float, str, bytes, lists, str-keyed dicts and numpy
arrays. Unlike pickle, decoding never runs code, so the same bytes can cross organizations
(gRPC) or stay in-process (tests) with identical behaviour and an honest byte count.
"""
from __future__ import annotations

import struct
from typing import Any

import numpy as np

from fedsilo.errors import ProtocolError

__all__ = ["decode", "encode"]

_NONE, _TRUE, _FALSE, _INT, _FLOAT, _STR, _BYTES, _LIST, _DICT, _ARRAY, _BIGINT = range(11)
_ALLOWED_DTYPES = {"<f8", "<f4", "<i8", "<i4", "|u1", "|b1", "<u8"}
MAX_DEPTH = 32


def encode(obj: Any) -> bytes:
    out = bytearray()
    _enc(obj, out, 0)
    return bytes(out)


def _enc(obj: Any, out: bytearray, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ProtocolError("payload nests too deeply")
    if obj is None:
        out.append(_NONE)
    elif obj is True:
        out.append(_TRUE)
    elif obj is False:
        out.append(_FALSE)
    elif isinstance(obj, (int, np.integer)):
        v = int(obj)
        if -(2**63) <= v < 2**63:
            out.append(_INT)
            out += struct.pack("<q", v)
        else:
            data = v.to_bytes((v.bit_length() + 8) // 8, "big", signed=True)
            out.append(_BIGINT)
            out += struct.pack("<I", len(data)) + data
    elif isinstance(obj, (float, np.floating)):
        out.append(_FLOAT)
        out += struct.pack("<d", float(obj))
    elif isinstance(obj, str):
        data = obj.encode("utf-8")
        out.append(_STR)
        out += struct.pack("<I", len(data)) + data
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        data = obj if isinstance(obj, (bytes, bytearray)) else memoryview(obj).cast("B")
        out.append(_BYTES)
        out += struct.pack("<Q", len(data))
        out += data  # appended in place: no intermediate copy of a large body
    elif isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        dt = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        arr = arr.astype(dt, copy=False)
        if dt.str not in _ALLOWED_DTYPES:
            raise ProtocolError(f"arrays of dtype {arr.dtype} cannot be sent")
        dstr = dt.str.encode()
        out.append(_ARRAY)
        out += struct.pack("<B", len(dstr)) + dstr + struct.pack("<B", arr.ndim)
        out += struct.pack(f"<{arr.ndim}Q", *arr.shape)
        raw = memoryview(arr).cast("B") if arr.size else b""
        out += struct.pack("<Q", len(raw))
        out += raw
    elif isinstance(obj, (list, tuple)):
        out.append(_LIST)
        out += struct.pack("<I", len(obj))
        for item in obj:
            _enc(item, out, depth + 1)
    elif isinstance(obj, dict):
        out.append(_DICT)
        out += struct.pack("<I", len(obj))
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ProtocolError(f"payload dict keys must be str, got {type(k).__name__}")
            _enc(k, out, depth + 1)
            _enc(v, out, depth + 1)
    else:
        raise ProtocolError(f"cannot send a value of type {type(obj).__name__} in a payload")


def decode(data: bytes) -> Any:
    try:
        obj, pos = _dec(memoryview(data), 0, 0)
    except (struct.error, ValueError, UnicodeDecodeError, IndexError) as exc:
        raise ProtocolError(f"malformed payload ({exc})") from exc
    if pos != len(data):
        raise ProtocolError(f"malformed payload ({len(data) - pos} trailing bytes)")
    return obj


def _take(buf: memoryview, pos: int, n: int) -> tuple[bytes, int]:
    if pos + n > len(buf):
        raise ValueError("truncated")
    return bytes(buf[pos : pos + n]), pos + n


def _dec(buf: memoryview, pos: int, depth: int) -> tuple[Any, int]:
    if depth > MAX_DEPTH:
        raise ValueError("nesting too deep")
    tag = buf[pos]
    pos += 1
    if tag == _NONE:
        return None, pos
    if tag == _TRUE:
        return True, pos
    if tag == _FALSE:
        return False, pos
    if tag == _INT:
        raw, pos = _take(buf, pos, 8)
        return struct.unpack("<q", raw)[0], pos
    if tag == _BIGINT:
        raw, pos = _take(buf, pos, 4)
        data, pos = _take(buf, pos, struct.unpack("<I", raw)[0])
        return int.from_bytes(data, "big", signed=True), pos
    if tag == _FLOAT:
        raw, pos = _take(buf, pos, 8)
        return struct.unpack("<d", raw)[0], pos
    if tag == _STR:
        raw, pos = _take(buf, pos, 4)
        data, pos = _take(buf, pos, struct.unpack("<I", raw)[0])
        return data.decode("utf-8"), pos
    if tag == _BYTES:
        raw, pos = _take(buf, pos, 8)
        return _take(buf, pos, struct.unpack("<Q", raw)[0])
    if tag == _ARRAY:
        raw, pos = _take(buf, pos, 1)
        dstr, pos = _take(buf, pos, raw[0])
        if dstr.decode() not in _ALLOWED_DTYPES:
            raise ValueError(f"dtype {dstr!r} not allowed")
        raw, pos = _take(buf, pos, 1)
        ndim = raw[0]
        raw, pos = _take(buf, pos, 8 * ndim)
        shape = struct.unpack(f"<{ndim}Q", raw)
        raw, pos = _take(buf, pos, 8)
        data, pos = _take(buf, pos, struct.unpack("<Q", raw)[0])
        arr = np.frombuffer(data, dtype=np.dtype(dstr.decode())).reshape(shape).copy()
        return arr, pos
    if tag == _LIST:
        raw, pos = _take(buf, pos, 4)
        items = []
        for _ in range(struct.unpack("<I", raw)[0]):
            item, pos = _dec(buf, pos, depth + 1)
            items.append(item)
        return items, pos
    if tag == _DICT:
        raw, pos = _take(buf, pos, 4)
        out: dict[str, Any] = {}
        for _ in range(struct.unpack("<I", raw)[0]):
            k, pos = _dec(buf, pos, depth + 1)
            if not isinstance(k, str):
                raise ValueError("dict key is not a string")
            out[k], pos = _dec(buf, pos, depth + 1)
        return out, pos
    raise ValueError(f"unknown tag {tag}")
