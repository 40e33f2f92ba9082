"""Party identities: how a party signs what another party relays, and how the receiver checks it.

A protocol that routes one party's public material through another (SecAgg+'s advertised keys
and survivor sets travel through the aggregator) must not let the relay substitute them. Each
:class:`~fedsilo.protocols.channel.Channel` therefore carries the party's
:class:`PartyIdentity`: the silo agents' is their mTLS certificate and key
(:class:`fedsilo.silos.certs.CertificateIdentity`, ECDSA P-256 under the federation CA); the
in-process hub's is an Ed25519 key per party held in a :class:`LocalDirectory` that the hub
creates (every party of one process trusts the process, so the directory is its PKI).

A signature always covers a domain-separated message (:func:`signed_message`): a purpose string,
the job, the round, the signer, then the content, so a signature made for one job, round, purpose
or signer verifies for no other.
"""
from __future__ import annotations

import abc
import hashlib
from collections.abc import Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fedsilo.errors import ProtocolError
from fedsilo.protocols import codec

__all__ = ["PartyIdentity", "LocalDirectory", "signed_message", "MAX_CREDENTIAL_BYTES", "MAX_SIGNATURE_BYTES"]

#: Largest credential (a certificate chain's PEM) and signature a party accepts from a relay.
MAX_CREDENTIAL_BYTES = 16 * 1024
MAX_SIGNATURE_BYTES = 512


def signed_message(*, purpose: str, job: str, round: int, signer: str, content: object) -> bytes:
    """The bytes a party signs: ``SHA-256(codec([purpose, job, round, signer, content]))``.

    ``content`` is anything :mod:`fedsilo.protocols.codec` encodes (bytes, names, lists), encoded
    canonically, so both ends derive the same bytes from the same values."""
    return hashlib.sha256(codec.encode(["fedsilo-signed", purpose, job, int(round), signer, content])).digest()


class PartyIdentity(abc.ABC):
    """One party's signing key and its view of who the other parties are.

    ``credential`` is what another party needs to check this party's signatures (a certificate
    chain, or a public key), sent along with the signed material.
    """

    name: str

    @property
    @abc.abstractmethod
    def credential(self) -> bytes:
        """This party's public credential."""

    @abc.abstractmethod
    def sign(self, message: bytes) -> bytes:
        """A signature of ``message`` (from :func:`signed_message`) by this party."""

    @abc.abstractmethod
    def verify(self, peer: str, credential: bytes, message: bytes, signature: bytes) -> None:
        """Check that ``signature`` is ``peer``'s on ``message``, with ``credential`` proving who
        ``peer`` is.

        Raises:
            ProtocolError: naming ``peer`` and what failed (credential not issued to ``peer`` by
                the trusted root, expired, signature invalid, malformed).
        """

    def check_sizes(self, peer: str, credential: object, signature: object) -> tuple[bytes, bytes]:
        """``(credential, signature)`` if both are bytes of a sane size, else ProtocolError."""
        if not isinstance(credential, bytes) or not 0 < len(credential) <= MAX_CREDENTIAL_BYTES:
            raise ProtocolError(f"{self.name}: malformed credential for {peer!r}")
        if not isinstance(signature, bytes) or not 0 < len(signature) <= MAX_SIGNATURE_BYTES:
            raise ProtocolError(f"{self.name}: malformed signature from {peer!r}")
        return credential, signature


class LocalDirectory:
    """Ed25519 identities of the parties of one process (the in-process hub's PKI).

    Keys come from the OS CSPRNG (``Ed25519PrivateKey.generate``). A party's credential is its raw
    public key; :meth:`PartyIdentity.verify` trusts only the key the directory holds for ``peer``.
    """

    def __init__(self, parties: Iterable[str]) -> None:
        self._keys = {p: Ed25519PrivateKey.generate() for p in parties}
        self._public = {p: k.public_key() for p, k in self._keys.items()}

    def identity(self, party: str) -> PartyIdentity:
        if party not in self._keys:
            raise ProtocolError(f"{party!r} has no identity in this directory")
        return _LocalIdentity(party, self._keys[party], self._public)


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


class _LocalIdentity(PartyIdentity):
    def __init__(self, name: str, key: Ed25519PrivateKey, public: dict[str, Ed25519PublicKey]) -> None:
        self.name = name
        self._key = key
        self._public = public

    def __repr__(self) -> str:
        return f"<LocalIdentity {self.name!r} (key hidden)>"

    def __reduce__(self) -> object:
        raise TypeError("a party identity holds a private key and is not picklable")

    @property
    def credential(self) -> bytes:
        return _raw(self._public[self.name])

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def verify(self, peer: str, credential: bytes, message: bytes, signature: bytes) -> None:
        credential, signature = self.check_sizes(peer, credential, signature)
        known = self._public.get(peer)
        if known is None:
            raise ProtocolError(f"{self.name}: {peer!r} is not a party of this process (no identity to check it against)")
        if credential != _raw(known):
            raise ProtocolError(f"{self.name}: the credential presented for {peer!r} is not {peer!r}'s")
        try:
            known.verify(signature, message)
        except InvalidSignature:
            raise ProtocolError(f"{self.name}: the signature of {peer!r} does not verify") from None
