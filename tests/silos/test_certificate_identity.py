"""A silo agent's signing identity (fedsilo.silos.certs.CertificateIdentity): what SecAgg+ uses to
sign the keys and survivor sets the aggregator relays. A signature verifies only with a
certificate the federation CA issued directly, valid now, naming exactly the signer."""
from __future__ import annotations

import datetime as dt
import pickle
from pathlib import Path

import pytest

from fedsilo.errors import ProtocolError
from fedsilo.protocols.identity import signed_message
from fedsilo.silos.certs import CertificateIdentity, init_federation, issue_silo, load_tls


def _identities(root: Path, name: str, silos: list[str]) -> dict[str, CertificateIdentity]:
    fed = init_federation(root / name, federation=name, silos=silos)
    return {s.name: CertificateIdentity(load_tls(fed.ca_cert, s.cert, s.key)) for s in fed.silos}


def _msg(signer: str) -> bytes:
    return signed_message(purpose="secagg-advertise", job="j", round=1, signer=signer, content=[b"k" * 32, b"s" * 32])


def test_a_signature_verifies_with_the_signers_certificate(tmp_path: Path) -> None:
    ids = _identities(tmp_path, "fed", ["alpha", "beta"])
    a, b = ids["alpha"], ids["beta"]
    sig = a.sign(_msg("alpha"))
    b.verify("alpha", a.credential, _msg("alpha"), sig)
    b.verify("ALPHA", a.credential, _msg("alpha"), sig)  # silo names are compared ignoring case
    with pytest.raises(ProtocolError, match="does not verify"):
        b.verify("alpha", a.credential, _msg("beta"), sig)
    with pytest.raises(ProtocolError, match="does not verify"):
        b.verify("alpha", a.credential, _msg("alpha"), sig[:-2] + bytes(2))


def test_another_silos_certificate_does_not_speak_for_a_peer(tmp_path: Path) -> None:
    ids = _identities(tmp_path, "fed", ["alpha", "beta", "gamma"])
    sig = ids["gamma"].sign(_msg("alpha"))
    with pytest.raises(ProtocolError, match="presented for 'alpha' is 'gamma'"):
        ids["beta"].verify("alpha", ids["gamma"].credential, _msg("alpha"), sig)


def test_a_certificate_of_another_federation_is_refused(tmp_path: Path) -> None:
    ours = _identities(tmp_path, "ours", ["alpha", "beta"])
    theirs = _identities(tmp_path, "theirs", ["alpha"])
    sig = theirs["alpha"].sign(_msg("alpha"))
    with pytest.raises(ProtocolError, match="not issued by this federation's CA"):
        ours["beta"].verify("alpha", theirs["alpha"].credential, _msg("alpha"), sig)


def test_an_expired_certificate_is_refused(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    fed = init_federation(tmp_path / "fed", federation="fed", silos=["alpha", "beta"], now=now - dt.timedelta(days=5))
    beta = next(s for s in fed.silos if s.name == "beta")
    b = CertificateIdentity(load_tls(fed.ca_cert, beta.cert, beta.key))
    # alpha's certificate re-issued so that it expired three days ago (its key still signs)
    old = issue_silo(tmp_path / "fed", silo="alpha", days=1, now=now - dt.timedelta(days=4))
    stale = CertificateIdentity(load_tls(fed.ca_cert, old.cert, old.key, now=now - dt.timedelta(days=3, hours=12)))
    with pytest.raises(ProtocolError, match="not valid now"):
        b.verify("alpha", stale.credential, _msg("alpha"), stale.sign(_msg("alpha")))


def test_malformed_credentials_and_the_key_never_leaves(tmp_path: Path) -> None:
    ids = _identities(tmp_path, "fed", ["alpha", "beta"])
    b = ids["beta"]
    with pytest.raises(ProtocolError, match="not a PEM certificate"):
        b.verify("alpha", b"garbage", _msg("alpha"), b"x")
    with pytest.raises(ProtocolError, match="malformed credential"):
        b.verify("alpha", b"x" * 100_000, _msg("alpha"), b"x")
    with pytest.raises(ProtocolError, match="malformed signature"):
        b.verify("alpha", ids["alpha"].credential, _msg("alpha"), b"")
    ca_pem = (tmp_path / "fed" / "ca.pem").read_bytes() if (tmp_path / "fed" / "ca.pem").exists() else None
    if ca_pem is not None:  # the CA certificate itself is no silo's credential
        with pytest.raises(ProtocolError):
            b.verify("alpha", ca_pem, _msg("alpha"), b"x" * 64)
    assert "key" not in repr(b).replace("key hidden", "")
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(b)
