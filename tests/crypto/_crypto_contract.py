"""The crypto backend contract: one abstract suite every backend subclasses.

A subclass sets ``backend_name`` / ``backend_params`` (and optionally smaller ``max_examples``
for slow schemes); everything else -- homomorphisms, wire round trips, key and format errors --
is proved here, with tolerances derived from the backend's own ``info().error_bound``:

* each encoded operand ``v`` may err by ``error_bound * (1 + |v|)``;
* a product ``x * f`` by ``error_bound * (1 + |x|) * (1 + |f|)``;
* sums add their terms' bounds (docs/crypto.md, "error model").
"""
from __future__ import annotations

import os
from typing import Any, ClassVar

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsilo.crypto import BackendInfo, Confidentiality
from fedsilo.crypto.base import MIN_SECURITY_BITS
from fedsilo.errors import (
    CiphertextFormatError,
    ConfigError,
    FedsiloError,
    KeyMismatchError,
    UnsupportedOperationError,
)

# float64 rounding of the decoded result and of numpy's own reference computation.
RTOL = 1e-12


def vectors(bound: float, min_size: int = 1, max_size: int = 12, size: int | None = None) -> st.SearchStrategy:
    elems = st.floats(-bound, bound, allow_nan=False, allow_infinity=False)
    if size is not None:
        min_size = max_size = size
    return st.lists(elems, min_size=min_size, max_size=max_size).map(lambda v: np.array(v, dtype=np.float64))


def assert_close(actual: np.ndarray, expected: np.ndarray, tol: np.ndarray | float) -> None:
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape
    limit = np.asarray(tol) + RTOL * np.abs(expected)
    err = np.abs(actual - expected)
    assert np.all(err <= limit), f"max error {np.max(err - limit, initial=0):.3g} over tolerance"


class BackendContract:
    """Abstract contract suite; subclasses are collected as ``Test*Contract``."""

    backend_name: ClassVar[str]
    backend_params: ClassVar[dict[str, Any]] = {}
    max_examples: ClassVar[int] = 25
    magnitude: ClassVar[float] = 100.0  # |values| and |factors| drawn by the properties
    max_len: ClassVar[int] = 12
    #: what ``confidentiality().secure`` must say for these parameters
    expect_secure: ClassVar[bool] = True

    # --- fixtures -----------------------------------------------------------------------------
    @pytest.fixture(scope="class")
    @classmethod
    def keys(cls, keyset_factory):
        return keyset_factory(cls.backend_name, **cls.backend_params)

    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls, keys):
        return keys.backend

    @pytest.fixture(scope="class")
    @classmethod
    def info(cls, backend) -> BackendInfo:
        return backend.info()

    def run(self, strategy: st.SearchStrategy, check) -> None:
        """Run a property with this backend's example budget (slow schemes use fewer)."""
        examples = int(os.environ.get("FEDSILO_CRYPTO_EXAMPLES", self.max_examples))

        @settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(strategy)
        def prop(args):
            check(*args) if isinstance(args, tuple) else check(args)

        prop()

    # --- properties ---------------------------------------------------------------------------
    def test_round_trip(self, backend, keys, info):
        def check(x):
            ct = backend.encrypt(keys.public, x)
            assert len(ct) == x.shape[0] and ct.fingerprint == keys.public.fingerprint
            assert_close(backend.decrypt(keys.secret, ct), x, info.error_bound * (1 + np.abs(x)))

        self.run(vectors(self.magnitude, max_size=self.max_len), check)

    def test_add(self, backend, keys, info):
        def check(x, y):
            out = backend.decrypt(keys.secret, backend.add(backend.encrypt(keys.public, x), backend.encrypt(keys.public, y)))
            assert_close(out, x + y, info.error_bound * (2 + np.abs(x) + np.abs(y)))

        self.run(self._pairs(), check)

    def test_add_plain_and_operators(self, backend, keys, info):
        def check(x, y):
            ct = backend.encrypt(keys.public, x)
            out = backend.decrypt(keys.secret, ct + y)  # Ciphertext.__add__ delegates to add_plain
            assert_close(out, x + y, info.error_bound * (2 + np.abs(x) + np.abs(y)))
            scalar = float(y[0])
            out = backend.decrypt(keys.secret, scalar + ct)  # scalar broadcast, __radd__
            assert_close(out, x + scalar, info.error_bound * (2 + np.abs(x) + abs(scalar)))

        self.run(self._pairs(), check)

    def test_mul_scalar(self, backend, keys, info):
        def check(x, f):
            ct = backend.encrypt(keys.public, x)
            if "mul_scalar" not in info.supports:
                with pytest.raises(UnsupportedOperationError):
                    backend.mul_plain(ct, f)
                return
            out = backend.decrypt(keys.secret, ct * f)
            assert_close(out, x * f, info.error_bound * (1 + np.abs(x)) * (1 + abs(f)))

        factor = st.floats(-self.magnitude, self.magnitude, allow_nan=False).filter(lambda f: f != int(f) or f < 0)
        self.run(st.tuples(vectors(self.magnitude, max_size=self.max_len), factor), check)

    def test_mul_vector(self, backend, keys, info):
        def check(x, f):
            ct = backend.encrypt(keys.public, x)
            if "mul_vector" not in info.supports:
                fractional = f + 0.5 * (f == np.round(f))  # not an integer scalar in disguise
                with pytest.raises(UnsupportedOperationError):
                    backend.mul_plain(ct, fractional)
                return
            out = backend.decrypt(keys.secret, backend.mul_plain(ct, f))
            assert_close(out, x * f, info.error_bound * (1 + np.abs(x)) * (1 + np.abs(f)))

        self.run(self._pairs(min_size=2), check)

    def test_sum_of_ten(self, backend, keys, info):
        def check(rows):
            cts = [backend.encrypt(keys.public, r) for r in rows]
            out = backend.decrypt(keys.secret, backend.sum(cts))
            expected = np.sum(rows, axis=0)
            assert_close(out, expected, info.error_bound * np.sum(1 + np.abs(rows), axis=0))

        def rows_of(n):
            return st.lists(vectors(self.magnitude, size=n), min_size=10, max_size=10).map(np.array)

        self.run(st.integers(1, self.max_len).flatmap(rows_of), check)

    def test_matmul(self, backend, keys, info):
        def check(x, m):
            ct = backend.encrypt(keys.public, x)
            if "matmul" not in info.supports:
                with pytest.raises(UnsupportedOperationError):
                    backend.matmul_plain(ct, m)
                return
            out = backend.decrypt(keys.secret, backend.matmul_plain(ct, m))
            assert out.shape == (m.shape[1],)
            tol = info.error_bound * ((1 + np.abs(x))[:, None] * (1 + np.abs(m))).sum(axis=0)
            assert_close(out, x @ m, tol)

        def case(n_rows: int, n_cols: int):
            elems = st.floats(-self.magnitude / 10, self.magnitude / 10, allow_nan=False)
            matrix = st.lists(elems, min_size=n_rows * n_cols, max_size=n_rows * n_cols).map(
                lambda v: np.array(v).reshape(n_rows, n_cols)
            )
            return st.tuples(vectors(self.magnitude, size=n_rows), matrix)

        self.run(st.tuples(st.integers(1, self.max_len), st.integers(1, 4)).flatmap(lambda s: case(*s)), check)

    def test_serialization_round_trip(self, backend, keys, info):
        peer = backend.load_public(keys.public.serialize())  # what a peer does with our bytes
        assert peer.fingerprint == keys.public.fingerprint

        def check(x, y):
            blob = backend.serialize(backend.encrypt(peer, x))
            assert isinstance(blob, bytes) and blob[:4] == b"FSC1"
            received = backend.deserialize(keys.public, blob)
            assert_close(backend.decrypt(keys.secret, received), x, info.error_bound * (1 + np.abs(x)))
            # A computed (not fresh) ciphertext goes through the same wire format.
            summed = backend.deserialize(peer, backend.serialize(backend.add_plain(received, y)))
            assert_close(
                backend.decrypt(keys.secret, summed), x + y, info.error_bound * (2 + np.abs(x) + np.abs(y))
            )

        self.run(self._pairs(), check)

    def _pairs(self, min_size: int = 1) -> st.SearchStrategy:
        return st.integers(min_size, self.max_len).flatmap(
            lambda n: st.tuples(vectors(self.magnitude, size=n), vectors(self.magnitude, size=n))
        )

    # --- fixed examples -----------------------------------------------------------------------
    def test_empty_and_long_vectors(self, backend, keys, info):
        empty = backend.encrypt(keys.public, [])
        assert backend.decrypt(keys.secret, empty).shape == (0,)
        x = np.linspace(-1, 1, 3 * max(1, info.values_per_ciphertext) + 5)  # several ciphertexts/chunks
        assert_close(backend.decrypt(keys.secret, backend.encrypt(keys.public, x)), x, info.error_bound * (1 + np.abs(x)))

    def test_wire_size_matches_serialize(self, backend, keys):
        ct = backend.encrypt(keys.public, np.arange(5.0))
        assert backend.wire_size(ct) == len(backend.serialize(ct))

    def test_info_and_params_are_plain_data(self, backend, info):
        assert info.name == backend.name
        assert info.error_bound >= 0 and info.bytes_per_value > 0
        assert info.exact == backend.exact
        import json

        json.dumps(backend.params())
        assert type(backend).__name__ in repr(backend)

    # --- keys ---------------------------------------------------------------------------------
    def test_confidentiality_is_declared_and_shown(self, backend, info):
        conf = backend.confidentiality()
        assert isinstance(conf, Confidentiality)
        assert conf.secure is self.expect_secure and info.secure is conf.secure
        if conf.secure:
            assert conf.reason == "" and conf.param is None
            assert conf.security_bits is None or conf.security_bits >= MIN_SECURITY_BITS
        else:
            # one clause for the config error, naming a real parameter if one is to blame
            assert conf.reason and "\n" not in conf.reason
            assert conf.param is None or conf.param in backend.params()
            assert conf.security_bits is None or conf.security_bits < MIN_SECURITY_BITS

    def test_public_context_cannot_decrypt(self, backend, keys):
        assert not keys.public.is_private()
        peer = backend.load_public(keys.public.serialize())
        assert not peer.is_private()
        ct = backend.encrypt(peer, [1.0, 2.0])
        with pytest.raises(FedsiloError):
            backend.decrypt(peer, ct)

    def test_public_is_a_new_object_and_repr_hides_secret(self, keys):
        assert keys.secret.public() is not keys.secret.public()
        assert keys.secret.is_private()
        text = repr(keys.secret) + str(keys.secret)
        assert "hidden" in text and keys.secret.fingerprint in text

    def test_secret_export_round_trip(self, backend, keys, info):
        again = backend.load_secret(keys.secret.export_secret())
        assert again.fingerprint == keys.secret.fingerprint
        x = np.array([0.5, -2.0, 3.25])
        out = backend.decrypt(again, backend.encrypt(keys.public, x))
        assert_close(out, x, info.error_bound * (1 + np.abs(x)))

    # --- errors -------------------------------------------------------------------------------
    def test_other_key_is_refused(self, backend, keys):
        ours = backend.encrypt(keys.public, [1.0, 2.0])
        theirs = backend.encrypt(keys.other_public, [1.0, 2.0])
        assert ours.fingerprint != theirs.fingerprint
        with pytest.raises(KeyMismatchError):
            backend.add(ours, theirs)
        with pytest.raises(KeyMismatchError):
            backend.sum([ours, ours, theirs])
        with pytest.raises(KeyMismatchError):
            backend.decrypt(keys.other_secret, ours)
        with pytest.raises(KeyMismatchError):
            backend.deserialize(keys.other_public, backend.serialize(ours))

    def test_garbage_and_truncated_bytes(self, backend, keys):
        blob = backend.serialize(backend.encrypt(keys.public, [1.0, -1.0, 0.5]))
        rng = np.random.default_rng(7)
        bad = [
            b"",
            b"garbage",
            blob[:39],
            blob[:41],
            blob[: len(blob) // 2],
            blob[:-1],
            blob[:40] + rng.bytes(len(blob) - 40),
            blob[:40] + bytes(len(blob) - 40),
            b"XXXX" + blob[4:],
            blob[:4] + b"PUBK" + blob[8:],
        ]
        for data in bad:
            with pytest.raises(CiphertextFormatError):
                backend.deserialize(keys.public, data)
        with pytest.raises(CiphertextFormatError):
            backend.deserialize(keys.public, "not bytes")  # type: ignore[arg-type]
        pub = keys.public.serialize()
        for data in (b"", pub[:50], pub[:-3], b"FSC1PUBK" + b"0" * 32 + b"junk"):
            with pytest.raises(CiphertextFormatError):
                backend.load_public(data)
        for data in (b"", keys.secret.export_secret()[:60]):
            with pytest.raises(CiphertextFormatError):
                backend.load_secret(data)

    def test_length_mismatch_and_bad_input(self, backend, keys):
        a = backend.encrypt(keys.public, [1.0, 2.0])
        b = backend.encrypt(keys.public, [1.0, 2.0, 3.0])
        with pytest.raises(ConfigError):
            backend.add(a, b)
        with pytest.raises(ConfigError):
            backend.add_plain(a, [1.0, 2.0, 3.0])
        with pytest.raises(ConfigError):
            backend.encrypt(keys.public, [1.0, float("nan")])
        with pytest.raises(ConfigError):
            backend.encrypt(keys.public, [[1.0]])
        with pytest.raises(ConfigError):
            backend.sum([])

    def test_objects_of_other_backends_are_refused(self, backend, keys, keyset_factory):
        other_name = "ckks" if backend.name in ("plain", "plugin_plain") else "plain"
        other = keyset_factory(other_name)
        foreign = other.backend.encrypt(other.public, [1.0])
        ours = backend.encrypt(keys.public, [1.0])
        with pytest.raises(KeyMismatchError):
            backend.add(ours, foreign)
        with pytest.raises(KeyMismatchError):
            backend.encrypt(other.public, [1.0])
        with pytest.raises(KeyMismatchError):
            backend.decrypt(other.secret, ours)
