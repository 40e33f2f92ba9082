"""A federation's certificate authority and its silos' certificates (mTLS for the agents).

``fedsilo certs init`` creates a throw-away or long-lived federation CA and one certificate per
silo; the file names are a contract the agents and ``fedsilo silo start`` rely on::

    DIR/ca.pem            the federation CA certificate (give it to every silo)
    DIR/ca.key            the CA's private key (keep it with whoever admits silos; mode 0600)
    DIR/<silo>/cert.pem   the silo's certificate (CN and a DNS SAN = the silo name)
    DIR/<silo>/key.pem    the silo's private key (ship only to that silo; mode 0600)

Keys are ECDSA P-256, stored as unencrypted PKCS#8 PEM and protected by their file mode: they
are created with mode 0600 (never chmod-ed afterwards, so no window where others can read them)
and :func:`load_tls` refuses a key file that group or others can read. The CA has
BasicConstraints ``ca=True, path_length=0`` and KeyUsage ``key_cert_sign, crl_sign``; a silo
certificate has ``ca=False``, KeyUsage ``digital_signature``, ExtendedKeyUsage ``serverAuth`` and
``clientAuth`` (each agent is both a gRPC server and a client), and Subject/Authority key
identifiers. A silo's identity is its certificate's common name, which must also be one of its
DNS SANs (:func:`peer_name_from_cert`): the transport checks the peer's name against the
allow-list, and clients check a server's certificate against the name of the peer they dial.

Every function validates its whole request before it writes anything (names, days, hosts, the
output directory, the CA files) and raises :class:`~fedsilo.errors.ConfigError` naming the file
or value; nothing here prints. Certificate validity starts five minutes before "now" to absorb
clock skew between silos.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedsilo.errors import ConfigError, PeerRejectedError, ProtocolError
from fedsilo.protocols.identity import PartyIdentity
from fedsilo.silos.config import _NAME
from fedsilo.silos.data import check_creatable

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "DEFAULT_CA_DAYS",
    "DEFAULT_DAYS",
    "DEFAULT_HOSTS",
    "SILO_CERT",
    "SILO_KEY",
    "CertificateIdentity",
    "CertificateInfo",
    "FederationFiles",
    "SiloFiles",
    "TlsFiles",
    "check_silo_name",
    "describe",
    "init_federation",
    "issue_silo",
    "load_tls",
    "peer_name_from_cert",
]

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SILO_CERT = "cert.pem"
SILO_KEY = "key.pem"

#: Names every silo certificate carries besides the silo's own name (a loopback federation).
DEFAULT_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1")
#: Validity of a silo certificate; renew with ``fedsilo certs issue``.
DEFAULT_DAYS = 365
#: Validity of the federation CA; a silo certificate may not outlive it.
DEFAULT_CA_DAYS = 3650
#: Certificates are valid from this long before "now", so a silo whose clock is a little
#: behind does not see a certificate from the future.
CLOCK_SKEW = dt.timedelta(minutes=5)
#: Silo names that would be confused with the CA's files.
RESERVED_NAMES = frozenset({"ca"})
#: Every silo certificate carries ``<silo>.<IDENTITY_DOMAIN>`` as a DNS SAN, and a client checks
#: the server it dials against that name (``grpc.ssl_target_name_override``). Only the CA mints
#: names in this domain (``--host`` may not), so no other silo's certificate can pass for the
#: dialled one; a plain name or ``localhost`` SAN, which any silo may carry, never decides.
IDENTITY_DOMAIN = "silo.fedsilo.invalid"


def identity_name(silo: str) -> str:
    """The DNS name only ``silo``'s certificate carries (see :data:`IDENTITY_DOMAIN`)."""
    return f"{silo.lower()}.{IDENTITY_DOMAIN}"
#: Upper bound on ``days``: far beyond any sane validity, below datetime's overflow.
MAX_DAYS = 100 * 366

_HOSTNAME = re.compile(r"(?=.{1,253}\Z)([A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")


@dataclass(frozen=True, slots=True)
class SiloFiles:
    """One silo's certificate and key files."""

    name: str
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class FederationFiles:
    """What :func:`init_federation` wrote."""

    federation: str
    ca_cert: Path
    ca_key: Path
    silos: tuple[SiloFiles, ...]
    fingerprint: str
    not_after: dt.datetime


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Validated PEM bytes for gRPC credentials (:func:`load_tls`); the key never shows in a repr.

    ``name`` is the silo name the certificate proves (its CN), ``not_after`` its expiry (UTC).
    """

    ca: bytes = field(repr=False)
    cert: bytes = field(repr=False)
    key: bytes = field(repr=False)
    name: str
    not_after: dt.datetime

    def __reduce__(self) -> Any:
        raise TypeError("TlsFiles holds a private key and is not picklable; pass the file paths instead")


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """What ``fedsilo certs show`` prints about one certificate."""

    path: Path
    subject: str
    issuer: str
    common_name: str | None
    sans: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    expired: bool
    fingerprint_sha256: str
    serial: int
    is_ca: bool
    key_type: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "subject": self.subject,
            "issuer": self.issuer,
            "common_name": self.common_name,
            "sans": list(self.sans),
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "expired": self.expired,
            "fingerprint_sha256": self.fingerprint_sha256,
            "serial": f"{self.serial:x}",
            "is_ca": self.is_ca,
            "key_type": self.key_type,
        }


# -- validation (no side effects) ---------------------------------------------------------------
def check_silo_name(name: str, *, what: str = "silo name") -> str:
    """``name`` if it is a valid silo name (the config's rule, not ``ca``); ConfigError otherwise."""
    if not isinstance(name, str) or re.fullmatch(_NAME, name) is None:
        raise ConfigError(
            f"invalid {what} {name!r}: use 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    if name.lower() in RESERVED_NAMES:
        raise ConfigError(f"invalid {what} {name!r}: the name is reserved for the federation CA's files")
    return name


def _check_silo_names(silos: Sequence[str]) -> list[str]:
    names = [check_silo_name(s) for s in silos]
    if not names:
        raise ConfigError("no silos given: name at least one, e.g. --silos a,b,c")
    seen: dict[str, str] = {}
    for n in names:
        # DNS names (SANs, TLS name checks) and some file systems ignore case
        if n.lower() in seen:
            raise ConfigError(f"duplicate silo name {n!r} (names are compared ignoring case: {seen[n.lower()]!r})")
        seen[n.lower()] = n
    return names


def _check_days(days: int, option: str = "days") -> int:
    if isinstance(days, bool) or not isinstance(days, int) or not 0 < days <= MAX_DAYS:
        raise ConfigError(f"{option} must be a whole number of days between 1 and {MAX_DAYS}, got {days!r}")
    return days


def _check_hosts(hosts: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for h in hosts:
        if not isinstance(h, str) or not h.strip():
            raise ConfigError(f"invalid host {h!r}: give a DNS name or an IP address")
        h = h.strip()
        if "*" in h or h.rstrip(".").lower().endswith(IDENTITY_DOMAIN):
            raise ConfigError(f"invalid host {h!r}: wildcards and names under {IDENTITY_DOMAIN} are reserved for the CA")
        try:
            ip = ipaddress.ip_address(h.strip("[]"))
        except ValueError:
            if _HOSTNAME.fullmatch(h) is None:
                raise ConfigError(f"invalid host {h!r}: not an IP address or a DNS name") from None
            out.append(x509.DNSName(h.rstrip(".").lower()))
        else:
            out.append(x509.IPAddress(ip))
    return out


def _sans(name: str, hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(name), x509.DNSName(identity_name(name))]
    for g in _check_hosts(hosts):
        if g not in names and not (isinstance(g, x509.DNSName) and g.value.lower() == name.lower()):
            names.append(g)
    return names


def _now(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        return dt.datetime.now(dt.timezone.utc)
    if now.tzinfo is None:
        raise ConfigError("now must be a timezone-aware datetime")
    return now.astimezone(dt.timezone.utc)


def _check_out_dir(out: Path) -> None:
    if out.exists():
        if not out.is_dir():
            raise ConfigError(f"--out {out}: exists and is not a directory")
        try:
            empty = not any(out.iterdir())
        except OSError as exc:
            raise ConfigError(f"--out {out}: cannot read the directory: {exc.strerror or exc}") from None
        if not empty:
            raise ConfigError(
                f"--out {out}: directory is not empty; fedsilo never overwrites a federation CA "
                "(choose a new directory, or use `fedsilo certs issue` to add or renew a silo)"
            )
        if not os.access(out, os.W_OK | os.X_OK):
            raise ConfigError(f"--out {out}: directory is not writable")
        return
    check_creatable(out, "--out")


# -- reading -------------------------------------------------------------------------------------
def _read(path: Path, role: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{role} {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{role} {path}: is a directory, not a file") from None
    except PermissionError:
        raise ConfigError(f"{role} {path}: not readable (permission denied)") from None
    except OSError as exc:
        raise ConfigError(f"{role} {path}: cannot read: {exc.strerror or exc}") from None


def _parse_cert(data: bytes, path: Path, role: str) -> x509.Certificate:
    if b"PRIVATE KEY-----" in data:
        raise ConfigError(f"{role} {path}: is a private key, not a certificate")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise ConfigError(f"{role} {path}: not a PEM certificate (corrupt, truncated or another format)") from None


def _parse_key(data: bytes, path: Path, role: str) -> ec.EllipticCurvePrivateKey | Any:
    if b"-----BEGIN CERTIFICATE-----" in data:
        raise ConfigError(f"{role} {path}: is a certificate, not a private key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(
            f"{role} {path}: the key is encrypted; fedsilo reads unencrypted keys protected by file mode 0600"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"{role} {path}: not a PEM private key (corrupt, truncated or another format)") from None


def _check_key_mode(path: Path, role: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise ConfigError(f"{role} {path}: cannot stat: {exc.strerror or exc}") from None
    if os.stat(path).st_uid != os.geteuid():
        raise ConfigError(f"{role} {path}: owned by another user; a key must belong to the user who runs the silo")
    if mode & 0o077:
        raise ConfigError(
            f"{role} {path}: readable by group or others (mode {mode & 0o777:o}); "
            f"restrict it with `chmod 600 {path}`"
        )


def _public_der(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _key_matches(cert: x509.Certificate, key: Any) -> bool:
    return _public_der(cert.public_key()) == _public_der(key.public_key())


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _common_name(cert: x509.Certificate) -> str | None:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else None


def _dns_sans(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(v) for v in ext.value.get_values_for_type(x509.DNSName)]


def _check_valid_at(cert: x509.Certificate, now: dt.datetime, path: Path, role: str) -> None:
    if now < cert.not_valid_before_utc:
        raise ConfigError(f"{role} {path}: not valid before {cert.not_valid_before_utc.isoformat()} (check the clock)")
    if now > cert.not_valid_after_utc:
        raise ConfigError(
            f"{role} {path}: expired on {cert.not_valid_after_utc.isoformat()}; renew it with `fedsilo certs issue`"
        )


def _fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def peer_name_from_cert(pem: bytes) -> str:
    """The silo name a certificate proves: its common name, which must be a valid silo name
    and also one of its DNS SANs. Raises :class:`~fedsilo.errors.PeerRejectedError` otherwise."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise PeerRejectedError("peer certificate is not a PEM certificate") from None
    cn = _common_name(cert)
    if cn is None:
        raise PeerRejectedError("peer certificate has no common name")
    try:
        check_silo_name(cn)
    except ConfigError as exc:
        raise PeerRejectedError(f"peer certificate: {exc}") from None
    sans = {s.lower() for s in _dns_sans(cert)}
    if cn.lower() not in sans or identity_name(cn) not in sans:
        raise PeerRejectedError(f"peer certificate for {cn!r} does not carry its name and identity as DNS SANs")
    if _is_ca(cert):
        raise PeerRejectedError(f"peer certificate for {cn!r} is a CA certificate, not a silo's")
    return cn


def load_tls(ca: Path, cert: Path, key: Path, *, now: dt.datetime | None = None) -> TlsFiles:
    """Read and validate a silo's TLS files; the bytes gRPC credentials take.

    Checked, each failure a :class:`~fedsilo.errors.ConfigError` naming the file: every file is
    readable PEM of the right kind; ``ca`` is a CA certificate; ``cert`` is signed by ``ca``,
    is not a CA, carries its silo name (:func:`peer_name_from_cert`) and both server and client
    authentication; ``key`` is unencrypted, matches ``cert`` and is not readable by group or
    others; ``ca`` and ``cert`` are valid at ``now`` (default: the current time).
    """
    ca, cert, key = Path(ca), Path(cert), Path(key)
    moment = _now(now)
    ca_pem, cert_pem, key_pem = _read(ca, "CA certificate"), _read(cert, "certificate"), _read(key, "private key")
    ca_cert = _parse_cert(ca_pem, ca, "CA certificate")
    leaf = _parse_cert(cert_pem, cert, "certificate")
    private = _parse_key(key_pem, key, "private key")
    if not _is_ca(ca_cert):
        raise ConfigError(f"CA certificate {ca}: is not a CA certificate (BasicConstraints ca=False or missing)")
    if _is_ca(leaf):
        raise ConfigError(f"certificate {cert}: is a CA certificate; give the silo's own cert.pem")
    try:
        leaf.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise ConfigError(
            f"certificate {cert}: was not issued by the CA in {ca} (another federation's CA, or a stale certificate)"
        ) from None
    try:
        name = peer_name_from_cert(cert_pem)
    except PeerRejectedError as exc:
        raise ConfigError(f"certificate {cert}: {exc}") from None
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is not None and not {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(eku):
        raise ConfigError(f"certificate {cert}: needs both serverAuth and clientAuth extended key usage")
    if not _key_matches(leaf, private):
        raise ConfigError(f"private key {key}: does not match the certificate {cert}")
    _check_key_mode(key, "private key")
    _check_valid_at(ca_cert, moment, ca, "CA certificate")
    _check_valid_at(leaf, moment, cert, "certificate")
    return TlsFiles(ca=ca_pem, cert=cert_pem, key=key_pem, name=name, not_after=leaf.not_valid_after_utc)


def describe(path: Path) -> CertificateInfo:
    """Subject, issuer, SANs, validity and SHA-256 fingerprint of the PEM certificate at ``path``."""
    path = Path(path)
    cert = _parse_cert(_read(path, "certificate"), path, "certificate")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = tuple(
            f"DNS:{g.value}" if isinstance(g, x509.DNSName) else f"IP:{g.value}" if isinstance(g, x509.IPAddress)
            else f"{type(g).__name__}:{g.value}"
            for g in san
        )
    except x509.ExtensionNotFound:
        sans = ()
    pub = cert.public_key()
    key_type = f"EC {pub.curve.name}" if isinstance(pub, ec.EllipticCurvePublicKey) else type(pub).__name__
    return CertificateInfo(
        path=path,
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        common_name=_common_name(cert),
        sans=sans,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        expired=_now(None) > cert.not_valid_after_utc,
        fingerprint_sha256=_fingerprint(cert),
        serial=cert.serial_number,
        is_ca=_is_ca(cert),
        key_type=key_type,
    )


# -- building ------------------------------------------------------------------------------------
def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _ca_certificate(key: ec.EllipticCurvePrivateKey, federation: str, now: dt.datetime, days: int) -> x509.Certificate:
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation),
        x509.NameAttribute(NameOID.COMMON_NAME, f"{federation} federation CA"),
    ])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )


def _silo_certificate(
    *, ca_cert: x509.Certificate, ca_key: Any, key: ec.EllipticCurvePrivateKey, name: str,
    sans: list[x509.GeneralName], now: dt.datetime, days: int,
) -> x509.Certificate:
    org = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    subject = x509.Name(
        ([x509.NameAttribute(NameOID.ORGANIZATION_NAME, str(org[0].value))] if org else [])
        + [x509.NameAttribute(NameOID.COMMON_NAME, name)]
    )
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(now - CLOCK_SKEW, ca_cert.not_valid_before_utc))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(aki, critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (which must not exist) with ``mode`` from the start."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_replacing(path: Path, data: bytes, mode: int) -> Path:
    """Write ``data`` to a fresh temporary file next to ``path`` (created with ``mode``); returns
    it, for an atomic ``os.replace`` once every file of the change is written."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    _write_new(tmp, data, mode)
    return tmp


def _os_error(path: Path, exc: OSError) -> ConfigError:
    return ConfigError(f"{path}: cannot write: {exc.strerror or exc}")


def init_federation(
    out: Path,
    *,
    federation: str,
    silos: Sequence[str],
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = DEFAULT_DAYS,
    ca_days: int = DEFAULT_CA_DAYS,
    now: dt.datetime | None = None,
) -> FederationFiles:
    """Create a federation CA and one certificate per silo in ``out`` (see the module docstring).

    ``out`` must not exist or be an empty directory: an existing CA is never overwritten (a new
    CA would silently cut every silo holding the old one off the federation). ``hosts`` are the
    extra SANs of every silo certificate (IP addresses as IP SANs, names as DNS SANs); ``days``
    the silo certificates' validity, ``ca_days`` the CA's (at least ``days``). ``now`` (tests)
    moves the issuing time.
    """
    out = Path(out)
    check_silo_name(federation, what="federation name")
    names = _check_silo_names(list(silos))
    _check_days(days)
    _check_days(ca_days, "ca_days")
    if ca_days < days:
        raise ConfigError(f"the CA ({ca_days} days) may not expire before its silo certificates ({days} days)")
    sans = {n: _sans(n, hosts) for n in names}
    moment = _now(now)
    _check_out_dir(out)

    ca_key = _new_key()
    ca_cert = _ca_certificate(ca_key, federation, moment, ca_days)
    written: list[SiloFiles] = []
    try:
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_new(out / CA_KEY, _key_pem(ca_key), 0o600)
        _write_new(out / CA_CERT, _cert_pem(ca_cert), 0o644)
        for n in names:
            key = _new_key()
            cert = _silo_certificate(ca_cert=ca_cert, ca_key=ca_key, key=key, name=n, sans=sans[n], now=moment, days=days)
            d = out / n
            d.mkdir(mode=0o700)
            _write_new(d / SILO_KEY, _key_pem(key), 0o600)
            _write_new(d / SILO_CERT, _cert_pem(cert), 0o644)
            written.append(SiloFiles(n, d / SILO_CERT, d / SILO_KEY))
    except OSError as exc:
        raise _os_error(Path(exc.filename) if exc.filename else out, exc) from None
    return FederationFiles(
        federation=federation, ca_cert=out / CA_CERT, ca_key=out / CA_KEY, silos=tuple(written),
        fingerprint=_fingerprint(ca_cert), not_after=ca_cert.not_valid_after_utc,
    )


def issue_silo(
    ca_dir: Path,
    *,
    silo: str,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = DEFAULT_DAYS,
    now: dt.datetime | None = None,
) -> SiloFiles:
    """Add a silo to the federation in ``ca_dir``, or renew its certificate and key.

    Only ``ca_dir/<silo>/cert.pem`` and ``key.pem`` are (atomically) replaced; the CA and the
    other silos' files are never touched. The new certificate may not outlive the CA.
    """
    ca_dir = Path(ca_dir)
    name = check_silo_name(silo)
    _check_days(days)
    sans = _sans(name, hosts)
    moment = _now(now)
    if not ca_dir.is_dir():
        raise ConfigError(f"--ca {ca_dir}: no such directory (create a federation with `fedsilo certs init`)")
    ca_path, key_path = ca_dir / CA_CERT, ca_dir / CA_KEY
    ca_cert = _parse_cert(_read(ca_path, "CA certificate"), ca_path, "CA certificate")
    ca_key = _parse_key(_read(key_path, "CA key"), key_path, "CA key")
    if not _is_ca(ca_cert):
        raise ConfigError(f"CA certificate {ca_path}: is not a CA certificate")
    if not _key_matches(ca_cert, ca_key):
        raise ConfigError(f"CA key {key_path}: does not match the CA certificate {ca_path}")
    _check_key_mode(key_path, "CA key")
    _check_valid_at(ca_cert, moment, ca_path, "CA certificate")
    if moment + dt.timedelta(days=days) > ca_cert.not_valid_after_utc:
        left = (ca_cert.not_valid_after_utc - moment).days
        raise ConfigError(
            f"a {days}-day certificate would outlive the CA in {ca_path} "
            f"(it expires on {ca_cert.not_valid_after_utc.date().isoformat()}); use --days {max(left, 1)} or less"
        )
    d = ca_dir / name
    clash = [p.name for p in ca_dir.iterdir() if p.is_dir() and p.name != name and p.name.lower() == name.lower()]
    if clash:
        # DNS names, and so the TLS name checks, ignore case: the two would be one identity
        raise ConfigError(f"silo {name!r}: {clash[0]!r} exists in {ca_dir} (names are compared ignoring case)")
    if d.exists() and not d.is_dir():
        raise ConfigError(f"{d}: exists and is not a directory")
    for other in (d / SILO_CERT, d / SILO_KEY):
        if other.exists() and not other.is_file():
            raise ConfigError(f"{other}: exists and is not a file")

    key = _new_key()
    cert = _silo_certificate(ca_cert=ca_cert, ca_key=ca_key, key=key, name=name, sans=sans, now=moment, days=days)
    tmps: list[Path] = []
    try:
        d.mkdir(mode=0o700, exist_ok=True)
        tmps.append(_write_replacing(d / SILO_KEY, _key_pem(key), 0o600))
        tmps.append(_write_replacing(d / SILO_CERT, _cert_pem(cert), 0o644))
        os.replace(tmps[0], d / SILO_KEY)
        os.replace(tmps[1], d / SILO_CERT)
    except OSError as exc:
        for t in tmps:
            t.unlink(missing_ok=True)
        raise _os_error(Path(exc.filename) if exc.filename else d, exc) from None
    return SiloFiles(name, d / SILO_CERT, d / SILO_KEY)


class CertificateIdentity(PartyIdentity):
    """A silo agent's signing identity: its mTLS certificate and key, checked against the federation CA.

    What the silo signs (SecAgg+'s advertised keys and survivor set, which the aggregator relays)
    is signed with the same key that proves the silo's name in TLS, over a domain-separated digest
    (:func:`fedsilo.protocols.identity.signed_message`; TLS 1.3 signs under its own context
    string, so neither signature can be replayed as the other). A peer's credential is its
    certificate PEM: accepted only if the federation CA issued it directly, it is valid now, it
    is not a CA, and it proves exactly the peer's silo name (:func:`peer_name_from_cert`).
    """

    def __init__(self, tls: TlsFiles) -> None:
        self.name = tls.name
        self._cert = tls.cert
        self._key = serialization.load_pem_private_key(tls.key, password=None)
        self._ca = x509.load_pem_x509_certificate(tls.ca)

    def __repr__(self) -> str:
        return f"<CertificateIdentity {self.name!r} (key hidden)>"

    def __reduce__(self) -> Any:
        raise TypeError("a party identity holds a private key and is not picklable")

    @property
    def credential(self) -> bytes:
        return self._cert

    def sign(self, message: bytes) -> bytes:
        return _sign_with(self._key, message)

    def verify(self, peer: str, credential: bytes, message: bytes, signature: bytes) -> None:
        credential, signature = self.check_sizes(peer, credential, signature)
        try:
            cert = x509.load_pem_x509_certificate(credential)
        except ValueError:
            raise ProtocolError(f"{self.name}: the credential presented for {peer!r} is not a PEM certificate") from None
        try:
            cert.verify_directly_issued_by(self._ca)
        except (ValueError, TypeError, InvalidSignature):
            raise ProtocolError(
                f"{self.name}: the certificate presented for {peer!r} was not issued by this federation's CA"
            ) from None
        try:
            name = peer_name_from_cert(credential)
        except PeerRejectedError as exc:
            raise ProtocolError(f"{self.name}: the certificate presented for {peer!r}: {exc}") from None
        if name.lower() != peer.lower():
            raise ProtocolError(f"{self.name}: the certificate presented for {peer!r} is {name!r}'s")
        moment = _now(None)
        if not cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc:
            raise ProtocolError(f"{self.name}: the certificate of {peer!r} is not valid now "
                                f"(valid {cert.not_valid_before_utc.isoformat()} to {cert.not_valid_after_utc.isoformat()})")
        try:
            _verify_with(cert.public_key(), signature, message)
        except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
            raise ProtocolError(f"{self.name}: the signature of {peer!r} does not verify against its certificate") from None


def _sign_with(key: Any, message: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(message, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(message)
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(message, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), hashes.SHA256())
    raise ConfigError(f"a silo key of type {type(key).__name__} cannot sign (EC, Ed25519 or RSA keys can)")


def _verify_with(key: Any, signature: bytes, message: bytes) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    elif isinstance(key, ed25519.Ed25519PublicKey):
        key.verify(signature, message)
    elif isinstance(key, rsa.RSAPublicKey):
        key.verify(signature, message, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), hashes.SHA256())
    else:
        raise InvalidSignature("unsupported key type")
