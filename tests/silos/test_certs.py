"""Federation CA and silo certificates (fedsilo.silos.certs): the file contract, the certificate
profile, renewal of one silo, and a clear ConfigError for every bad input."""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import pickle
import shutil
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedsilo.errors import ConfigError, PeerRejectedError
from fedsilo.silos.certs import (
    describe,
    identity_name,
    init_federation,
    issue_silo,
    load_tls,
    peer_name_from_cert,
)

SILOS = ["h0", "h1", "aggregator"]
UTC = dt.timezone.utc


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs") / "fed"
    init_federation(out, federation="hospitals", silos=SILOS)
    return out


@pytest.fixture
def own_fed(tmp_path: Path) -> Path:
    """A federation this test may modify."""
    out = tmp_path / "fed"
    init_federation(out, federation="hospitals", silos=["h0", "h1"])
    return out


def test_files_and_modes(fed: Path) -> None:
    assert sorted(p.name for p in fed.iterdir()) == sorted(["ca.pem", "ca.key", *SILOS])
    assert _mode(fed / "ca.key") == 0o600
    for s in SILOS:
        assert sorted(p.name for p in (fed / s).iterdir()) == ["cert.pem", "key.pem"]
        assert _mode(fed / s / "key.pem") == 0o600
        assert not _mode(fed / s / "cert.pem") & 0o022


def test_key_files_are_created_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        init_federation(tmp_path / "f", federation="x", silos=["a"])
    finally:
        os.umask(old)
    assert _mode(tmp_path / "f" / "ca.key") == 0o600
    assert _mode(tmp_path / "f" / "a" / "key.pem") == 0o600


def test_ca_profile(fed: Path) -> None:
    ca = _cert(fed / "ca.pem")
    assert ca.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "hospitals"
    assert "hospitals" in ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey) and ca.public_key().curve.name == "secp256r1"
    ca.verify_directly_issued_by(ca)


def test_silo_profile_chains_to_the_ca(fed: Path) -> None:
    ca = _cert(fed / "ca.pem")
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    for s in SILOS:
        c = _cert(fed / s / "cert.pem")
        c.verify_directly_issued_by(ca)
        assert c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == s
        assert c.issuer == ca.subject
        san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [s, identity_name(s), "localhost"]
        assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
        assert not c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        ku = c.extensions.get_extension_for_class(x509.KeyUsage).value
        assert ku.digital_signature and not ku.key_cert_sign
        eku = c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        aki = c.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        assert aki.key_identifier == ca_ski.digest
        ski = c.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        assert ski == x509.SubjectKeyIdentifier.from_public_key(c.public_key())
        assert peer_name_from_cert((fed / s / "cert.pem").read_bytes()) == s


def test_custom_hosts_replace_the_defaults(tmp_path: Path) -> None:
    init_federation(tmp_path / "f", federation="banks", silos=["b1"], hosts=["10.1.2.3", "::1", "Silo.Example.org"], days=30)
    c = _cert(tmp_path / "f" / "b1" / "cert.pem")
    san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["b1", identity_name("b1"), "silo.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3"), ipaddress.ip_address("::1")]
    assert c.not_valid_after_utc - c.not_valid_before_utc == dt.timedelta(days=30, minutes=5)


def test_load_tls_returns_validated_bytes_without_showing_the_key(fed: Path) -> None:
    t = load_tls(fed / "ca.pem", fed / "h0" / "cert.pem", fed / "h0" / "key.pem")
    assert t.name == "h0" and t.cert == (fed / "h0" / "cert.pem").read_bytes()
    assert t.key == (fed / "h0" / "key.pem").read_bytes() and t.ca == (fed / "ca.pem").read_bytes()
    assert "PRIVATE" not in repr(t) and "h0" in repr(t)
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(t)


def test_describe(fed: Path) -> None:
    info = describe(fed / "h1" / "cert.pem")
    c = _cert(fed / "h1" / "cert.pem")
    assert info.common_name == "h1" and info.subject == "CN=h1,O=hospitals"
    assert info.issuer == "CN=hospitals federation CA,O=hospitals"
    assert info.sans == ("DNS:h1", f"DNS:{identity_name('h1')}", "DNS:localhost", "IP:127.0.0.1")
    assert info.fingerprint_sha256 == c.fingerprint(hashes.SHA256()).hex(":").upper()
    assert not info.expired and not info.is_ca and info.key_type == "EC secp256r1"
    assert info.to_dict()["not_after"] == c.not_valid_after_utc.isoformat()
    assert describe(fed / "ca.pem").is_ca


def test_issue_renews_one_silo_only(own_fed: Path) -> None:
    before = {p: p.read_bytes() for p in own_fed.rglob("*") if p.is_file()}
    issue_silo(own_fed, silo="h1", days=10)
    after = {p: p.read_bytes() for p in own_fed.rglob("*") if p.is_file()}
    assert set(after) == set(before)
    changed = {p.relative_to(own_fed).as_posix() for p in before if before[p] != after[p]}
    assert changed == {"h1/cert.pem", "h1/key.pem"}
    assert _mode(own_fed / "h1" / "key.pem") == 0o600
    assert not list(own_fed.rglob(".*.tmp"))
    load_tls(own_fed / "ca.pem", own_fed / "h1" / "cert.pem", own_fed / "h1" / "key.pem")
    c = _cert(own_fed / "h1" / "cert.pem")
    assert c.not_valid_after_utc - c.not_valid_before_utc == dt.timedelta(days=10, minutes=5)


def test_issue_adds_a_silo(own_fed: Path) -> None:
    before = {p: p.read_bytes() for p in own_fed.rglob("*") if p.is_file()}
    files = issue_silo(own_fed, silo="h2", hosts=["192.168.0.7"])
    assert files.cert == own_fed / "h2" / "cert.pem" and _mode(files.key) == 0o600
    assert all(p.read_bytes() == b for p, b in before.items())
    assert describe(files.cert).sans == ("DNS:h2", f"DNS:{identity_name('h2')}", "IP:192.168.0.7")


# -- bad input: one clear ConfigError each, nothing written ----------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"silos": ["a", "bad name"]}, "invalid silo name 'bad name'"),
        ({"silos": ["a", "-a"]}, "invalid silo name '-a'"),
        ({"silos": ["a", "x" * 64]}, "invalid silo name"),
        ({"silos": ["a", "a\n"]}, "invalid silo name"),
        ({"silos": ["a", "b", "a"]}, "duplicate silo name 'a'"),
        ({"silos": ["a", "A"]}, "duplicate silo name 'A'"),
        ({"silos": ["a", "ca"]}, "'ca': the name is reserved"),
        ({"silos": ["a", "CA"]}, "reserved"),
        ({"silos": []}, "no silos given"),
        ({"federation": "my fed"}, "invalid federation name"),
        ({"days": 0}, "days must be a whole number of days between 1"),
        ({"days": -3}, "days must be"),
        ({"days": 400, "ca_days": 300}, "may not expire before its silo certificates"),
        ({"hosts": ["not a host!"]}, "invalid host 'not a host!'"),
        ({"hosts": [""]}, "invalid host"),
    ],
)
def test_init_refuses_bad_input_before_writing(tmp_path: Path, kwargs: dict, match: str) -> None:
    args: dict = {"federation": "f", "silos": ["a", "b"]}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        init_federation(tmp_path / "out", **args)
    assert not (tmp_path / "out").exists()


def test_init_refuses_a_non_empty_directory_and_a_file(tmp_path: Path) -> None:
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="directory is not empty; fedsilo never overwrites"):
        init_federation(tmp_path / "used", federation="f", silos=["a"])
    assert sorted(p.name for p in (tmp_path / "used").iterdir()) == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        init_federation(tmp_path / "file", federation="f", silos=["a"])
    (tmp_path / "empty").mkdir()
    init_federation(tmp_path / "empty", federation="f", silos=["a"])  # an empty directory is fine
    assert (tmp_path / "empty" / "ca.pem").is_file()


def test_init_refuses_an_unwritable_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.geteuid() == 0:  # root ignores permission bits; pretend it does not
        monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != ro)
    try:
        with pytest.raises(ConfigError, match=r"--out .*ro/fed: directory .*ro is not writable"):
            init_federation(ro / "fed", federation="f", silos=["a"])
    finally:
        ro.chmod(0o700)
    assert not (ro / "fed").exists()


def test_issue_refuses_bad_input(own_fed: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such directory"):
        issue_silo(tmp_path / "nope", silo="h2")
    with pytest.raises(ConfigError, match="invalid silo name"):
        issue_silo(own_fed, silo="h 2")
    with pytest.raises(ConfigError, match="reserved"):
        issue_silo(own_fed, silo="ca")
    with pytest.raises(ConfigError, match="days must be"):
        issue_silo(own_fed, silo="h2", days=0)
    with pytest.raises(ConfigError, match="would outlive the CA"):
        issue_silo(own_fed, silo="h2", days=4000)
    assert not (own_fed / "h2").exists()


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda d: (d / "ca.key").unlink(), r"CA key .*ca.key: no such file"),
        (lambda d: (d / "ca.pem").unlink(), r"CA certificate .*ca.pem: no such file"),
        (lambda d: (d / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n"),
         "not a PEM certificate"),
        (lambda d: (d / "ca.key").write_bytes(b"not a key at all"), "not a PEM private key"),
        (lambda d: shutil.copy(d / "ca.pem", d / "ca.key"), "is a certificate, not a private key"),
        (lambda d: shutil.copy(d / "h0" / "key.pem", d / "ca.key"), "does not match the CA certificate"),
        (lambda d: shutil.copy(d / "h0" / "cert.pem", d / "ca.pem"), "is not a CA certificate"),
        (lambda d: (d / "ca.key").chmod(0o644), r"readable by group or others .*chmod 600"),
    ],
    ids=["no-ca-key", "no-ca-cert", "corrupt-ca-cert", "corrupt-ca-key", "ca-key-is-cert", "ca-key-mismatch",
         "ca-not-ca", "ca-key-mode"],
)
def test_issue_refuses_missing_or_corrupt_ca_files(own_fed: Path, damage, match: str) -> None:
    damage(own_fed)
    with pytest.raises(ConfigError, match=match):
        issue_silo(own_fed, silo="h2")
    assert not (own_fed / "h2").exists()


def test_load_tls_refusals(fed: Path, tmp_path: Path) -> None:
    ca, cert, key = fed / "ca.pem", fed / "h0" / "cert.pem", fed / "h0" / "key.pem"
    other = tmp_path / "other"
    init_federation(other, federation="other", silos=["h0"])
    with pytest.raises(ConfigError, match="was not issued by the CA"):
        load_tls(ca, other / "h0" / "cert.pem", other / "h0" / "key.pem")
    with pytest.raises(ConfigError, match=r"key .*does not match the certificate"):
        load_tls(ca, cert, fed / "h1" / "key.pem")
    with pytest.raises(ConfigError, match="is a private key, not a certificate"):
        load_tls(ca, key, key)
    with pytest.raises(ConfigError, match="is a certificate, not a private key"):
        load_tls(ca, cert, cert)
    with pytest.raises(ConfigError, match="is not a CA certificate"):
        load_tls(cert, cert, key)
    with pytest.raises(ConfigError, match="no such file"):
        load_tls(ca, tmp_path / "missing.pem", key)
    with pytest.raises(ConfigError, match="is a directory"):
        load_tls(ca, fed, key)
    loose = tmp_path / "loose.pem"
    shutil.copy(key, loose)
    loose.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by group or others"):
        load_tls(ca, cert, loose)
    with pytest.raises(ConfigError, match="expired on"):
        load_tls(ca, cert, key, now=dt.datetime.now(UTC) + dt.timedelta(days=400))
    with pytest.raises(ConfigError, match="not valid before"):
        load_tls(ca, cert, key, now=dt.datetime.now(UTC) - dt.timedelta(days=1))


def test_load_tls_unreadable_file(fed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    locked = tmp_path / "key.pem"
    shutil.copy(fed / "h0" / "key.pem", locked)
    locked.chmod(0o000)
    if os.geteuid() == 0:  # root reads any file; make this one fail as it would for anyone else
        real = Path.read_bytes
        monkeypatch.setattr(Path, "read_bytes", lambda self: _raise(PermissionError(13, "denied")) if self == locked else real(self))
    with pytest.raises(ConfigError, match=r"private key .*key.pem: not readable \(permission denied\)"):
        load_tls(fed / "ca.pem", fed / "h0" / "cert.pem", locked)


def _raise(exc: BaseException) -> bytes:
    raise exc


def test_an_expired_certificate_can_be_issued_for_tests_and_is_refused(tmp_path: Path) -> None:
    past = dt.datetime.now(UTC) - dt.timedelta(days=30)
    init_federation(tmp_path / "f", federation="f", silos=["a"], now=past)
    issue_silo(tmp_path / "f", silo="b", days=1, now=past)
    assert describe(tmp_path / "f" / "b" / "cert.pem").expired
    load_tls(tmp_path / "f" / "ca.pem", tmp_path / "f" / "a" / "cert.pem", tmp_path / "f" / "a" / "key.pem")
    with pytest.raises(ConfigError, match=r"cert.pem: expired on .*fedsilo certs issue"):
        load_tls(tmp_path / "f" / "ca.pem", tmp_path / "f" / "b" / "cert.pem", tmp_path / "f" / "b" / "key.pem")


def _leaf(cn: str | None, dns: list[str]) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    b = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
    )
    if dns:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_peer_name_needs_cn_and_matching_dns_san() -> None:
    assert peer_name_from_cert(_leaf("h0", ["h0", identity_name("h0"), "localhost"])) == "h0"
    with pytest.raises(PeerRejectedError, match="does not carry its name"):
        peer_name_from_cert(_leaf("h0", ["localhost"]))
    with pytest.raises(PeerRejectedError, match="no common name"):
        peer_name_from_cert(_leaf(None, ["h0"]))
    with pytest.raises(PeerRejectedError, match="invalid silo name"):
        peer_name_from_cert(_leaf("evil name", ["evil name"]))
    with pytest.raises(PeerRejectedError, match="not a PEM certificate"):
        peer_name_from_cert(b"junk")


def test_no_certificate_can_carry_another_silos_identity(tmp_path: Path) -> None:
    """The dialled name is ``<silo>.silo.fedsilo.invalid`` (security review: a --host equal to
    another silo's name, or a case variant, let one silo's certificate pass for another's)."""
    init_federation(tmp_path / "fed", federation="f", silos=["alice", "bob"])
    for host in (identity_name("alice"), "ALICE.silo.fedsilo.invalid.", "*.example.org"):
        with pytest.raises(ConfigError, match="reserved for the CA"):
            issue_silo(tmp_path / "fed", silo="mallory", hosts=[host])
    with pytest.raises(ConfigError, match="'alice' exists .* ignoring case"):
        issue_silo(tmp_path / "fed", silo="ALICE")
    # a mallory certificate naming "alice" as a plain host still lacks alice's identity
    files = issue_silo(tmp_path / "fed", silo="mallory", hosts=["alice"])
    pem = files.cert.read_bytes()
    assert f"DNS:{identity_name('alice')}" not in describe(files.cert).sans and peer_name_from_cert(pem) == "mallory"


def test_a_ca_certificate_is_not_a_peer(tmp_path: Path) -> None:
    fed = init_federation(tmp_path / "fed", federation="f", silos=["a"])
    with pytest.raises(PeerRejectedError):
        peer_name_from_cert(fed.ca_cert.read_bytes())
