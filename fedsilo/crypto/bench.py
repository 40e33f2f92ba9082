"""Crypto benchmark logic: the same secure-aggregation work for every backend, side by side.

Task: ``parties`` silos each hold a vector of ``size`` floats drawn from U[-1, 1]; each encrypts
and serializes its vector (``encrypt_s``, the silos' total), an aggregator deserializes all,
sums them and serializes the result, re-randomized (``aggregate_s``), and the key holder
deserializes and decrypts it (``decrypt_s``). Key generation is a one-off and not counted.

* ``values_per_s = size * parties / (encrypt_s + aggregate_s + decrypt_s)``: input values
  processed per second of total compute on this machine.
* ``bytes_per_value``: bytes a silo uploads per value (serialized ciphertext / size).
* ``max_abs_error``: ``max |decrypted sum - numpy sum|``.

Each backend runs with its parameters for the ``"benchmark"`` use
(:meth:`~fedsilo.crypto.base.CryptoBackend.params_for`), never special-cased by name. A backend
with one value per ciphertext (unpacked Paillier: ~10 ms per value at 2048 bits) is measured on
the first ``paillier_sample`` values of each vector and its times are scaled by ``size /
sample`` (cost is linear in the number of ciphertexts); the row's ``note`` says so.
``packed_sample`` does the same for the packed variant of a backend with optional packing.

The result is plain data (the JSON contract of ``fedsilo bench crypto --json``)::

    {"size": N, "parties": K, "results": [{"backend", "packed", "encrypt_s", "aggregate_s",
      "decrypt_s", "values_per_s", "bytes_per_value", "max_abs_error", "note"}, ...]}
"""
from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsilo.crypto.base import CryptoBackend
from fedsilo.crypto.registry import get_backend, get_backend_class
from fedsilo.errors import ConfigError

__all__ = ["DEFAULT_BACKENDS", "expand_backends", "measure_parallel_encryption", "run_crypto_benchmark"]

DEFAULT_BACKENDS = ("paillier", "ckks")


@dataclass(frozen=True, slots=True)
class Variant:
    """One benchmark row: a backend name, its parameters and the row label."""

    backend: str
    packed: bool
    params: dict[str, Any]


#: ``NAME-packed`` / ``NAME-unpacked`` pick one variant of a backend with optional packing.
PACKING_SUFFIXES = {"-unpacked": False, "-packed": True}


def split_variant_name(name: str) -> tuple[str, bool | None]:
    """``("paillier", True)`` for ``"paillier-packed"``: a backend with optional packing
    (:attr:`~fedsilo.crypto.base.Capabilities.packing`) and the variant asked for; ``(name,
    None)`` for a plain backend name (both variants when packing is optional)."""
    for suffix, packed in PACKING_SUFFIXES.items():
        base = name[: -len(suffix)]
        if name.endswith(suffix) and base and _optional_packing(base) is not None:
            return base, packed
    return name, None


def _optional_packing(name: str) -> dict[str, Any] | None:
    try:
        packing = get_backend_class(name).capabilities().packing
    except ConfigError:
        return None
    return None if packing is None else dict(packing)


def _accepts(cls: type[CryptoBackend], option: str) -> bool:
    """Whether the backend's constructor takes ``option`` (the bench's --workers, key_bits)."""
    try:
        return option in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def expand_backends(
    names: Sequence[str], *, parties: int, key_bits: int = 2048, workers: int | None = None
) -> list[Variant]:
    """Benchmark variants for backend names. A backend with optional packing (Paillier)
    expands to its unpacked and packed variants (``NAME-unpacked`` / ``NAME-packed`` pick one).
    Every backend runs with ``params_for("benchmark", summands=parties)`` (the data lie in
    [-1, 1]: Paillier gets ``value_bound=1`` and ``max_summands=parties``, CKKS
    ``value_bound=1``), plus ``key_bits`` and ``workers`` where its constructor takes them.
    """
    out: list[Variant] = []
    for raw in names:
        name = raw.strip()
        if not name or name == "numpy":
            continue
        backend, only = split_variant_name(name)
        cls = get_backend_class(backend)
        params = cls.params_for("benchmark", summands=max(1, parties))
        for option, value in (("key_bits", key_bits), ("workers", workers)):
            if value is not None and _accepts(cls, option):
                params[option] = value
        packing = cls.capabilities().packing
        if packing is None:
            out.append(Variant(backend, False, params))
            continue
        for packed in (False, True):  # optional packing is off by default
            if only is None or only is packed:
                out.append(Variant(backend, packed, {**params, **packing} if packed else params))
    return out


def _numpy_row(data: np.ndarray) -> dict[str, Any]:
    # Best of 5: a sum of a few MB is too quick for one perf_counter interval to mean much.
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        data.sum(axis=0)
        best = min(best, time.perf_counter() - t0)
    best = max(best, 1e-9)
    return {
        "backend": "numpy",
        "packed": False,
        "encrypt_s": 0.0,
        "aggregate_s": best,
        "decrypt_s": 0.0,
        "values_per_s": data.size / best,
        "bytes_per_value": float(data.itemsize),
        "max_abs_error": 0.0,
        "note": "plaintext float64 sum (no encryption): the floor",
    }


def _run_variant(
    variant: Variant, data: np.ndarray, expected: np.ndarray, *, unpacked_sample: int, packed_sample: int | None
) -> dict[str, Any]:
    parties, size = data.shape
    backend = get_backend(variant.backend, **variant.params)
    # one ciphertext per value is the slow case: measure a sample and extrapolate
    sample = unpacked_sample if backend.info().values_per_ciphertext == 1 else (packed_sample if variant.packed else None)
    secret = backend.keygen()
    public = secret.public()
    n = size if sample is None else max(1, min(size, sample))
    factor = size / n

    t0 = time.perf_counter()
    blobs = [backend.serialize(backend.encrypt(public, data[i, :n])) for i in range(parties)]
    t1 = time.perf_counter()
    received = [backend.deserialize(public, blob) for blob in blobs]
    aggregate_blob = backend.serialize(backend.sum(received))
    t2 = time.perf_counter()
    result = backend.decrypt(secret, backend.deserialize(public, aggregate_blob))
    t3 = time.perf_counter()

    encrypt_s, aggregate_s, decrypt_s = ((t1 - t0) * factor, (t2 - t1) * factor, (t3 - t2) * factor)
    info = backend.info()
    note = f"{info.description}"
    if n < size:
        note += f"; measured on {n} of {size} values per party, times scaled x{factor:g} (linear in ciphertexts)"
    return {
        "backend": variant.backend,
        "packed": variant.packed,
        "encrypt_s": encrypt_s,
        "aggregate_s": aggregate_s,
        "decrypt_s": decrypt_s,
        "values_per_s": size * parties / (encrypt_s + aggregate_s + decrypt_s),
        "bytes_per_value": sum(len(b) for b in blobs) / (parties * n),
        "max_abs_error": float(np.max(np.abs(result - expected[:n]))) if n else 0.0,
        "note": note,
    }


def run_crypto_benchmark(
    *,
    size: int,
    parties: int = 10,
    backends: Sequence[str] = DEFAULT_BACKENDS,
    seed: int = 0,
    paillier_sample: int = 500,
    packed_sample: int | None = None,
    key_bits: int = 2048,
    workers: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Sum of ``parties`` random vectors of ``size`` floats under each backend variant.

    Returns ``{"size", "parties", "results": [...]}`` (see the module docstring); the first row
    is the plaintext numpy floor.
    """
    if size < 1 or parties < 1:
        raise ConfigError(f"size and parties must be >= 1, got size={size}, parties={parties}")
    if paillier_sample < 1 or (packed_sample is not None and packed_sample < 1):
        raise ConfigError("paillier_sample / packed_sample must be >= 1")
    rng = np.random.default_rng(seed)
    data = rng.uniform(-1.0, 1.0, size=(parties, size))
    expected = data.sum(axis=0)
    results = [_numpy_row(data)]
    for variant in expand_backends(backends, parties=parties, key_bits=key_bits, workers=workers):
        if progress is not None:
            progress(f"{variant.backend}{' (packed)' if variant.packed else ''}")
        results.append(
            _run_variant(variant, data, expected, unpacked_sample=paillier_sample, packed_sample=packed_sample)
        )
    return {"size": size, "parties": parties, "results": results}


def measure_parallel_encryption(
    *, values: int = 30_000, workers: Sequence[int] = (1, 2), key_bits: int = 2048, seed: int = 0, repeats: int = 2
) -> dict[str, Any]:
    """Packed Paillier encryption time of one vector for each pool size.

    Pools are started (warmed) first; configurations alternate ``repeats`` times and the best
    time of each is kept, so a burst of load from another process skews one sample, not the
    ratio. Returns ``{"values", "ciphertexts", "seconds": {workers: s}, "speedup": {workers:
    s_first / s}}``.
    """
    data = np.random.default_rng(seed).uniform(-1.0, 1.0, values)
    setups = []
    for w in workers:
        backend = get_backend("paillier", key_bits=key_bits, packed=True, value_bound=1.0, max_summands=10, workers=w)
        public = backend.keygen().public()
        backend.encrypt(public, data[: 16 * w * backend.info().values_per_ciphertext])  # start the pool
        setups.append((w, backend, public))
    seconds: dict[int, float] = {w: float("inf") for w in workers}
    ciphertexts = 0
    for _ in range(max(1, repeats)):
        for w, backend, public in setups:
            t0 = time.perf_counter()
            ct = backend.encrypt(public, data)
            seconds[w] = min(seconds[w], time.perf_counter() - t0)
            ciphertexts = len(ct.values)  # type: ignore[attr-defined]
    base = seconds[workers[0]]
    return {
        "values": values,
        "ciphertexts": ciphertexts,
        "seconds": seconds,
        "speedup": {w: base / s for w, s in seconds.items()},
    }
