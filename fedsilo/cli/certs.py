"""``fedsilo certs init | issue | show``: a federation CA and its silos' mTLS certificates.

A typer sub-app (``app``) mounted as ``fedsilo certs``; each command is one call into
:mod:`fedsilo.silos.certs` (file layout and certificate profile documented there and in
docs/agents.md). Bad input (an invalid or duplicate silo name, ``days <= 0``, an existing
non-empty output directory, missing or corrupt CA files, a file that is not a certificate or a
key) is one ``error: ...`` line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from fedsilo.cli import cli_errors

__all__ = ["app"]

app = typer.Typer(
    help="Federation certificates for the silo agents' mutual TLS: create a CA and silo "
    "certificates (init), add or renew one silo (issue), inspect a certificate (show).",
    no_args_is_help=True,
    add_completion=False,
)

HostOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--host",
        help="A DNS name or IP address the silo's certificate is also valid for (repeat the option); "
        "default: localhost and 127.0.0.1.",
        show_default=False,
    ),
]
DaysOpt = Annotated[int, typer.Option("--days", help="Validity of the silo certificates, in days.")]


def _hosts(hosts: Optional[list[str]]) -> tuple[str, ...]:
    from fedsilo.silos.certs import DEFAULT_HOSTS

    return tuple(hosts) if hosts else DEFAULT_HOSTS


@app.command("init")
@cli_errors
def init(
    federation: Annotated[str, typer.Option("--federation", help="Name of the federation (the CA's subject).", show_default=False)],
    silos: Annotated[str, typer.Option("--silos", help="Comma-separated silo names, e.g. a,b,c.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="New (or empty) directory to write the CA and silo files to.", show_default=False)],
    host: HostOpt = None,
    days: DaysOpt = 365,
    ca_days: Annotated[int, typer.Option("--ca-days", help="Validity of the CA, in days (at least --days).")] = 3650,
) -> None:
    """Create a federation CA and one certificate + key per silo.

    Writes OUT/ca.pem, OUT/ca.key and OUT/<silo>/cert.pem, OUT/<silo>/key.pem (keys mode 0600).
    An existing non-empty OUT is refused: a CA is never overwritten.
    """
    from fedsilo.silos.certs import init_federation

    names = [s.strip() for s in silos.split(",")]
    made = init_federation(out, federation=federation, silos=names, hosts=_hosts(host), days=days, ca_days=ca_days)
    typer.echo(f"federation {made.federation!r}: CA {made.ca_cert} (key {made.ca_key}), expires {made.not_after.date()}")
    typer.echo(f"CA SHA-256 fingerprint {made.fingerprint}")
    for s in made.silos:
        typer.echo(f"  silo {s.name}: {s.cert}, {s.key}")
    typer.echo(f"Give each silo ca.pem and its own directory; keep {made.ca_key.name} with whoever admits silos.")


@app.command("issue")
@cli_errors
def issue(
    ca: Annotated[Path, typer.Option("--ca", help="The federation directory (holds ca.pem and ca.key).", show_default=False)],
    silo: Annotated[str, typer.Option("--silo", help="Name of the silo to add or renew.", show_default=False)],
    host: HostOpt = None,
    days: DaysOpt = 365,
) -> None:
    """Add a silo to the federation, or renew its certificate and key (other silos untouched)."""
    from fedsilo.silos.certs import describe, issue_silo

    files = issue_silo(ca, silo=silo, hosts=_hosts(host), days=days)
    info = describe(files.cert)
    typer.echo(f"silo {files.name}: {files.cert}, {files.key}; expires {info.not_after.date()}")
    typer.echo(f"SHA-256 fingerprint {info.fingerprint_sha256}")


@app.command("show")
@cli_errors
def show(
    file: Annotated[Path, typer.Argument(help="A PEM certificate (ca.pem or a silo's cert.pem).", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")] = False,
) -> None:
    """Print a certificate's subject, issuer, SANs, validity and SHA-256 fingerprint."""
    from fedsilo.silos.certs import describe

    info = describe(file)
    if as_json:
        typer.echo(json.dumps(info.to_dict()))
        return
    status = "EXPIRED" if info.expired else "valid"
    rows = [
        ("file", str(info.path)),
        ("subject", info.subject),
        ("issuer", info.issuer),
        ("kind", "CA certificate" if info.is_ca else "silo certificate"),
        ("SANs", ", ".join(info.sans) or "(none)"),
        ("not before", info.not_before.isoformat()),
        ("not after", f"{info.not_after.isoformat()} ({status})"),
        ("key", info.key_type),
        ("serial", f"{info.serial:x}"),
        ("SHA-256", info.fingerprint_sha256),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        typer.echo(f"{k:<{width}}  {v}")
