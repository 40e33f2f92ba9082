"""Crypto backends behind one small interface, looked up by name.

>>> from fedsilo.crypto import get_backend
>>> backend = get_backend("paillier", packed=True)
>>> sk = backend.keygen(); pk = sk.public()
"""
from fedsilo.crypto.base import BackendInfo, Capabilities, Ciphertext, Confidentiality, CryptoBackend, PublicContext, SecretKey
from fedsilo.crypto.registry import available_backends, get_backend, get_backend_class, register_backend

__all__ = [
    "BackendInfo",
    "Capabilities",
    "Ciphertext",
    "Confidentiality",
    "CryptoBackend",
    "PublicContext",
    "SecretKey",
    "available_backends",
    "get_backend",
    "get_backend_class",
    "register_backend",
]
