"""Key files: secret keys in owner-only (0600) files, public contexts in ordinary ones.

A secret key reaches disk only through :func:`save_secret_key`, which creates the file with
mode 0600 from the start (``os.open(..., 0o600)``, never ``open()`` then ``chmod``: there is
no window in which another user could open it), refuses to overwrite an existing file unless
``overwrite=True`` and replaces atomically. :func:`load_secret_key` refuses a key file that
group or others can read (like ssh does) unless told otherwise.
"""
from __future__ import annotations

import os
import stat
import tempfile
import warnings
from pathlib import Path

from fedsilo.crypto.base import CryptoBackend, PublicContext, SecretKey
from fedsilo.errors import ConfigError, CryptoError

__all__ = [
    "InsecureKeyFileError",
    "load_public_context",
    "load_secret_key",
    "save_public_context",
    "save_secret_key",
]

SECRET_MODE = 0o600
PUBLIC_MODE = 0o644


class InsecureKeyFileError(CryptoError):
    """A secret key file is readable or writable by group or others."""


def _write_atomic(path: Path, data: bytes, *, mode: int, overwrite: bool) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} already exists; pass overwrite=True to replace it")
    if not path.parent.is_dir():
        raise ConfigError(f"directory {path.parent} does not exist")
    if not overwrite:
        # O_EXCL: fail rather than follow a symlink or truncate a file created meanwhile.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError as exc:
            raise ConfigError(f"{path} already exists; pass overwrite=True to replace it") from exc
        tmp = None
    else:
        # Write a fresh 0600 temporary file next to the target, then rename over it: the old
        # file's (possibly looser) mode is never reused and a crash leaves the old key intact.
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        tmp = Path(tmp_name)
    try:
        os.fchmod(fd, mode)  # umask may only have removed bits; make the mode exact
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if tmp is not None:
            os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        else:
            path.unlink(missing_ok=True)
        raise
    return path


def save_secret_key(secret: SecretKey, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write ``secret.export_secret()`` to ``path`` with mode 0600; returns the path."""
    if not isinstance(secret, SecretKey):
        raise ConfigError(f"save_secret_key expects a SecretKey, got {type(secret).__name__}")
    return _write_atomic(Path(path), secret.export_secret(), mode=SECRET_MODE, overwrite=overwrite)


def load_secret_key(
    backend: CryptoBackend, path: str | os.PathLike[str], *, allow_insecure_permissions: bool = False
) -> SecretKey:
    """Read a secret key written by :func:`save_secret_key`.

    Raises :class:`InsecureKeyFileError` if group or others may read or write the file
    (``allow_insecure_permissions=True`` turns that into a warning).
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError as exc:
        raise ConfigError(f"secret key file {path} does not exist") from exc
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())  # the file we read, not whatever the path points to later
        if os.name == "posix" and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            msg = (
                f"secret key file {path} has mode {stat.S_IMODE(st.st_mode):04o}; group/others can access it. "
                f"Run `chmod 600 {path}`"
            )
            if not allow_insecure_permissions:
                raise InsecureKeyFileError(msg)
            warnings.warn(msg, stacklevel=2)
        data = fh.read()
    return backend.load_secret(data)


def save_public_context(public: PublicContext, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write a public context (no secret material) with mode 0644."""
    if not isinstance(public, PublicContext):
        raise ConfigError(
            f"save_public_context expects a PublicContext, got {type(public).__name__} "
            "(for a SecretKey, save secret.public() or use save_secret_key)"
        )
    return _write_atomic(Path(path), public.serialize(), mode=PUBLIC_MODE, overwrite=overwrite)


def load_public_context(backend: CryptoBackend, path: str | os.PathLike[str]) -> PublicContext:
    """Read a public context written by :func:`save_public_context`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"public context file {path} does not exist") from exc
    return backend.load_public(data)
