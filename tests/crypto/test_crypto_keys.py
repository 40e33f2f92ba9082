"""Key files: 0600 secret keys, no silent overwrite, refusal of readable key files."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from fedsilo.crypto.keys import (
    InsecureKeyFileError,
    load_public_context,
    load_secret_key,
    save_public_context,
    save_secret_key,
)
from fedsilo.errors import ConfigError

pytestmark = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


@pytest.fixture(params=["paillier", "ckks"])
def keys(request, keyset_factory):
    if request.param == "paillier":
        return keyset_factory("paillier", key_bits=1024, workers=1)
    return keyset_factory("ckks")


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_secret_key_file_is_0600_and_round_trips(keys, tmp_path):
    old = os.umask(0)  # even with a permissive umask the file is owner-only
    try:
        path = save_secret_key(keys.secret, tmp_path / "silo.key")
    finally:
        os.umask(old)
    assert mode(path) == 0o600
    loaded = load_secret_key(keys.backend, path)
    assert loaded.fingerprint == keys.secret.fingerprint
    ct = keys.backend.encrypt(keys.public, [1.5, -2.0])
    assert np.allclose(keys.backend.decrypt(loaded, ct), [1.5, -2.0], atol=1e-6)


def test_no_silent_overwrite(keys, tmp_path):
    path = save_secret_key(keys.secret, tmp_path / "silo.key")
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="overwrite"):
        save_secret_key(keys.other_secret, path)
    assert path.read_bytes() == before
    path.chmod(0o644)  # a loose old file is replaced by a fresh 0600 one, atomically
    save_secret_key(keys.other_secret, path, overwrite=True)
    assert mode(path) == 0o600
    assert load_secret_key(keys.backend, path).fingerprint == keys.other_secret.fingerprint
    assert [p.name for p in tmp_path.iterdir()] == ["silo.key"]  # no temporary files left


def test_readable_secret_key_file_is_refused(keys, tmp_path):
    path = save_secret_key(keys.secret, tmp_path / "silo.key")
    path.chmod(0o640)
    with pytest.raises(InsecureKeyFileError, match="chmod 600"):
        load_secret_key(keys.backend, path)
    with pytest.warns(UserWarning, match="0640"):
        load_secret_key(keys.backend, path, allow_insecure_permissions=True)


def test_public_context_files(keys, tmp_path):
    path = save_public_context(keys.public, tmp_path / "federation.pub")
    assert mode(path) == 0o644
    assert load_public_context(keys.backend, path).fingerprint == keys.public.fingerprint
    with pytest.raises(ConfigError):
        save_public_context(keys.secret, tmp_path / "oops.pub")  # a SecretKey is not a public context
    with pytest.raises(ConfigError):
        save_secret_key(keys.public, tmp_path / "oops.key")
    with pytest.raises(ConfigError):
        load_public_context(keys.backend, tmp_path / "missing.pub")
    with pytest.raises(ConfigError):
        load_secret_key(keys.backend, tmp_path / "missing.key")
