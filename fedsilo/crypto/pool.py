"""Paillier's process pool: the worker functions and the ``ProcessPoolExecutor`` they run on.

The worker functions are module-level and take plain ints, so they pickle cheaply; each is the
serial implementation as well (``workers=1`` or a short input calls it in-process). The pools
(one per pool size) start on first use, are reused, and shut down at exit.

Start method: ``forkserver``, not ``fork``: silo agents run gRPC and TenSEAL threads, and forking
a multi-threaded process can deadlock the child on a lock held at fork time. The forkserver
preloads this module once, so each worker starts without re-importing it. Like ``spawn``, it
re-imports the caller's ``__main__``: scripts need the usual ``if __name__ == "__main__":``
guard (or ``workers=1``); a worker that dies raises :class:`~fedsilo.errors.CryptoError` saying
so. For decryption the primes go to these local child processes of the key holder, never to
another host.
"""
from __future__ import annotations

import atexit
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import chain
from typing import Any

import gmpy2
from phe import paillier as _phe

from fedsilo.errors import CryptoError

__all__ = [
    "PARALLEL_MIN_ITEMS",
    "decrypt_batch",
    "encrypt_batch",
    "matmul_batch",
    "obfuscate_batch",
    "parallel_map",
    "parallel_map_columns",
    "pow_batch",
]

#: Below this many items the pool's IPC costs more than it saves.
PARALLEL_MIN_ITEMS = 8


# --------------------------------------------------------------------------------------------
# Worker functions: Paillier maths on plain ints (phe's raw layer, gmpy2 powmod).
# --------------------------------------------------------------------------------------------
_WORKER_KEYS: dict[int, Any] = {}


def _phe_public(n: int) -> Any:
    key = _WORKER_KEYS.get(n)
    if key is None:
        key = _WORKER_KEYS[n] = _phe.PaillierPublicKey(n)
    return key


def encrypt_batch(n: int, plaintexts: list[int]) -> list[int]:
    """raw_encrypt: ``(1 + m n) * r**n mod n**2`` with ``r`` from the OS CSPRNG (phe)."""
    key = _phe_public(n)
    return [key.raw_encrypt(m) for m in plaintexts]


def obfuscate_batch(n: int, ciphertexts: list[int]) -> list[int]:
    """Re-randomize: multiply by a fresh encryption of zero (``r**n``)."""
    key = _phe_public(n)
    nsq = gmpy2.mpz(key.nsquare)
    return [int(gmpy2.mpz(c) * key.raw_encrypt(0) % nsq) for c in ciphertexts]


def decrypt_batch(n: int, p: int, q: int, ciphertexts: list[int]) -> list[int]:
    """CRT decryption (phe's raw_decrypt). The private key object lives only for this call."""
    key = _phe.PaillierPrivateKey(_phe_public(n), p, q)
    return [key.raw_decrypt(int(c)) for c in ciphertexts]


def pow_batch(nsquare: int, pairs: list[tuple[int, int]]) -> list[int]:
    """``c**k mod n**2`` for signed ``k`` (gmpy2 inverts for k < 0): Enc(m)**k = Enc(k m)."""
    nsq = gmpy2.mpz(nsquare)
    return [int(gmpy2.powmod(c, k, nsq)) for c, k in pairs]


def matmul_batch(nsquare: int, ciphertexts: list[int], columns: list[list[int]]) -> list[int]:
    """``prod_i c_i**M_ij mod n**2`` per column j: Enc(sum_i x_i M_ij)."""
    nsq = gmpy2.mpz(nsquare)
    cts = [gmpy2.mpz(c) for c in ciphertexts]
    out = []
    for column in columns:
        acc = gmpy2.mpz(1)
        for c, k in zip(cts, column):
            if k:
                acc = acc * gmpy2.powmod(c, k, nsq) % nsq
        out.append(int(acc))
    return out


# --------------------------------------------------------------------------------------------
# The pool
# --------------------------------------------------------------------------------------------
_POOLS: dict[int, ProcessPoolExecutor] = {}
_POOL_FAILED = (
    "paillier: a worker process of the encryption pool died ({exc}). If this is a script, put its "
    "code under `if __name__ == \"__main__\":` (worker processes re-import the main module); "
    "otherwise pass workers=1"
)


def _get_pool(workers: int) -> ProcessPoolExecutor:
    pool = _POOLS.get(workers)
    if pool is None:
        # forkserver, not fork (see the module docstring); the forkserver preloads this module
        # and the Paillier backend, whose fast encryption runs in the workers
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__, "fedsilo.crypto.paillier"])
        pool = _POOLS[workers] = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    return pool


@atexit.register
def _shutdown_pools() -> None:
    for pool in _POOLS.values():
        pool.shutdown(wait=False, cancel_futures=True)
    _POOLS.clear()


def _run_chunks(fn: Callable[..., list[Any]], common: tuple[Any, ...], chunks: list[list[Any]], workers: int) -> list[Any]:
    """``fn(*common, chunk)`` for every chunk on the pool of ``workers``, results in order."""
    try:
        pool = _get_pool(workers)
        futures = [pool.submit(fn, *common, chunk) for chunk in chunks]
        return list(chain.from_iterable(f.result() for f in futures))
    except BrokenProcessPool as exc:
        _POOLS.pop(workers, None)
        raise CryptoError(_POOL_FAILED.format(exc=exc)) from exc


def parallel_map(fn: Callable[..., list[Any]], common: tuple[Any, ...], items: list[Any], workers: int) -> list[Any]:
    """``fn(*common, items)`` split over ``workers`` processes, order preserved."""
    if workers <= 1 or len(items) < PARALLEL_MIN_ITEMS:
        return fn(*common, items)
    # A few chunks per worker balance uneven progress without much pickling overhead.
    n_chunks = min(len(items), workers * 4)
    size = -(-len(items) // n_chunks)
    return _run_chunks(fn, common, [items[i : i + size] for i in range(0, len(items), size)], workers)


def parallel_map_columns(nsquare: int, cts: list[int], columns: list[list[int]], workers: int) -> list[int]:
    """matmul over the pool: each task gets all ciphertexts and a block of columns."""
    n_chunks = min(len(columns), workers * 2)
    size = -(-len(columns) // n_chunks)
    return _run_chunks(matmul_batch, (nsquare, cts), [columns[i : i + size] for i in range(0, len(columns), size)], workers)
