"""``fedsilo certs init | issue | show`` through the real command: the file contract, what
``show`` prints, renewal of one silo, and one clear ``error:`` line (exit 2, no traceback) for
every bad input."""
from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from typer.testing import CliRunner

from fedsilo.cli import app

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, ["certs", *args])


def _init(out: Path, silos: str = "a,b,c", *extra: str):
    return _run("init", "--federation", "labs", "--silos", silos, "--out", str(out), *extra)


def _one_error_line(result, match: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.stderr)
    assert "Traceback" not in result.output + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert match in lines[0], lines[0]


@pytest.fixture
def fed(tmp_path: Path) -> Path:
    out = tmp_path / "fed"
    res = _init(out)
    assert res.exit_code == 0, res.stderr
    return out


def test_init_writes_the_contract_files(fed: Path) -> None:
    assert sorted(p.name for p in fed.iterdir()) == ["a", "b", "c", "ca.key", "ca.pem"]
    for s in "abc":
        assert stat.S_IMODE((fed / s / "key.pem").stat().st_mode) == 0o600
        cert = x509.load_pem_x509_certificate((fed / s / "cert.pem").read_bytes())
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate((fed / "ca.pem").read_bytes()))
    assert stat.S_IMODE((fed / "ca.key").stat().st_mode) == 0o600


def test_init_output_names_files_and_fingerprint(tmp_path: Path) -> None:
    res = _init(tmp_path / "f", "x,y", "--host", "10.0.0.9", "--host", "silo.example.org", "--days", "90")
    assert res.exit_code == 0, res.stderr
    ca = x509.load_pem_x509_certificate((tmp_path / "f" / "ca.pem").read_bytes())
    assert ca.fingerprint(hashes.SHA256()).hex(":").upper() in res.output
    assert "silo x:" in res.output and "silo y:" in res.output
    show = _run("show", str(tmp_path / "f" / "x" / "cert.pem"), "--json")
    info = json.loads(show.output)
    assert info["sans"] == ["DNS:x", "DNS:x.silo.fedsilo.invalid", "IP:10.0.0.9", "DNS:silo.example.org"]


def test_show_prints_subject_issuer_sans_validity_fingerprint(fed: Path) -> None:
    res = _run("show", str(fed / "b" / "cert.pem"))
    assert res.exit_code == 0, res.stderr
    cert = x509.load_pem_x509_certificate((fed / "b" / "cert.pem").read_bytes())
    out = res.output
    assert "subject     CN=b,O=labs" in out
    assert "issuer      CN=labs federation CA,O=labs" in out
    assert "DNS:b, DNS:b.silo.fedsilo.invalid, DNS:localhost, IP:127.0.0.1" in out
    assert cert.not_valid_before_utc.isoformat() in out
    assert f"{cert.not_valid_after_utc.isoformat()} (valid)" in out
    assert cert.fingerprint(hashes.SHA256()).hex(":").upper() in out
    ca = _run("show", str(fed / "ca.pem"), "--json")
    assert json.loads(ca.output)["is_ca"] is True


def test_issue_renews_one_silo_without_touching_others(fed: Path) -> None:
    before = {p: p.read_bytes() for p in fed.rglob("*") if p.is_file()}
    res = _run("issue", "--ca", str(fed), "--silo", "b", "--days", "30")
    assert res.exit_code == 0, res.stderr
    changed = sorted(p.relative_to(fed).as_posix() for p in before if p.read_bytes() != before[p])
    assert changed == ["b/cert.pem", "b/key.pem"]
    assert stat.S_IMODE((fed / "b" / "key.pem").stat().st_mode) == 0o600
    res = _run("issue", "--ca", str(fed), "--silo", "d")
    assert res.exit_code == 0 and (fed / "d" / "cert.pem").is_file()
    assert all(p.read_bytes() == b for p, b in before.items() if not p.is_relative_to(fed / "b"))


@pytest.mark.parametrize(
    ("silos", "extra", "match"),
    [
        ("a,b c", [], "invalid silo name 'b c'"),
        ("a,,b", [], "invalid silo name ''"),
        ("a,b,a", [], "duplicate silo name 'a'"),
        ("a,ca", [], "'ca': the name is reserved"),
        ("a,b", ["--days", "0"], "days must be a whole number"),
        ("a,b", ["--days", "-1"], "days must be a whole number"),
        ("a,b", ["--host", "bad host"], "invalid host 'bad host'"),
    ],
)
def test_init_bad_input(tmp_path: Path, silos: str, extra: list[str], match: str) -> None:
    _one_error_line(_init(tmp_path / "out", silos, *extra), match)
    assert not (tmp_path / "out").exists()


def test_init_refuses_an_existing_federation(fed: Path) -> None:
    before = {p: p.read_bytes() for p in fed.rglob("*") if p.is_file()}
    _one_error_line(_init(fed), "directory is not empty; fedsilo never overwrites a federation CA")
    assert all(p.read_bytes() == b for p, b in before.items())


def test_issue_bad_input(fed: Path, tmp_path: Path) -> None:
    _one_error_line(_run("issue", "--ca", str(tmp_path / "none"), "--silo", "d"), "no such directory")
    _one_error_line(_run("issue", "--ca", str(fed), "--silo", "ca"), "reserved")
    _one_error_line(_run("issue", "--ca", str(fed), "--silo", "d!"), "invalid silo name 'd!'")
    _one_error_line(_run("issue", "--ca", str(fed), "--silo", "d", "--days", "0"), "days must be")
    (fed / "ca.key").write_text("garbage")
    _one_error_line(_run("issue", "--ca", str(fed), "--silo", "d"), "ca.key: not a PEM private key")
    shutil.copy(fed / "a" / "key.pem", fed / "ca.key")
    _one_error_line(_run("issue", "--ca", str(fed), "--silo", "d"), "does not match the CA certificate")
    (fed / "ca.key").unlink()
    _one_error_line(_run("issue", "--ca", str(fed), "--silo", "d"), "ca.key: no such file")
    (fed / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    _one_error_line(_run("issue", "--ca", str(fed), "--silo", "d"), "ca.pem: not a PEM certificate")
    assert not (fed / "d").exists()


def test_show_bad_input(fed: Path, tmp_path: Path) -> None:
    _one_error_line(_run("show", str(fed / "a" / "key.pem")), "is a private key, not a certificate")
    _one_error_line(_run("show", str(tmp_path / "missing.pem")), "no such file")
    _one_error_line(_run("show", str(fed)), "is a directory")
    (tmp_path / "junk.pem").write_bytes(b"\x00\x01junk")
    _one_error_line(_run("show", str(tmp_path / "junk.pem")), "not a PEM certificate")
