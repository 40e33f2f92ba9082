"""``fedsilo silo start|check|health``: run and inspect one organization's silo agent."""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from fedsilo.cli import cli_errors

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, help="This organization's silo agent (silo.toml, docs/agents.md).")

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="The silo's silo.toml (docs/agents.md).")]
LogOpt = Annotated[str, typer.Option("--log-level", help="debug | info | warning | error (logs go to stderr).")]


@app.command("start")
@cli_errors
def start(config: ConfigOpt, log_level: LogOpt = "info") -> None:
    """Serve this silo's agent until SIGTERM or SIGINT (then stop cleanly, exit 0).

    Prints one JSON line when it serves: {"event": "listening", "silo", "address", "pid", ...}
    (with `listen = "HOST:0"` the address has the port it bound)."""
    from fedsilo.errors import ConfigError

    # The agent audits refused TLS handshakes from gRPC core's log, where a failed handshake is
    # an INFO line (gRPC's default level; no Python code runs for it). GRPC_VERBOSITY = ERROR,
    # WARNING or NONE would silence it, and the audit with it. gRPC reads it once, when it loads
    # (below).
    quieter = os.environ.get("GRPC_VERBOSITY", "").strip().upper()
    raised = quieter not in ("", "INFO", "DEBUG")
    if raised:
        os.environ["GRPC_VERBOSITY"] = "INFO"
    from fedsilo.silos.agent import serve

    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        raise ConfigError(f"--log-level {log_level!r}: expected debug, info, warning or error")
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if raised:
        logging.getLogger("fedsilo.silos.agent").warning(
            "GRPC_VERBOSITY=%s raised to INFO: the audit log records failed TLS handshakes from gRPC's INFO log",
            quieter)

    def announce(event: dict[str, Any]) -> None:
        typer.echo(json.dumps(event))
        sys.stdout.flush()

    serve(config, announce=announce)


@app.command("check")
@cli_errors
def check(config: ConfigOpt) -> None:
    """Validate silo.toml, its TLS files and datasets without starting the agent."""
    from fedsilo.errors import ConfigError
    from fedsilo.silos.certs import load_tls
    from fedsilo.silos.data import csv_header
    from fedsilo.silos.silo_config import load_silo_config

    cfg = load_silo_config(config)
    if cfg.tls is not None:
        tls = load_tls(cfg.resolve(cfg.tls.ca), cfg.resolve(cfg.tls.cert), cfg.resolve(cfg.tls.key))
        if tls.name != cfg.name:
            raise ConfigError(f"{config}: silo.name is {cfg.name!r} but the certificate names {tls.name!r}")
        typer.echo(f"tls: {tls.name}, certificate valid until {tls.not_after:%Y-%m-%d}")
    else:
        typer.echo("tls: none (INSECURE plaintext, loopback only)")
    for d in cfg.datasets:
        path = cfg.resolve(d.path)
        columns = csv_header(path, who=f"dataset {d.name!r}: ") if path.suffix.lower() == ".csv" else ["(parquet)"]
        typer.echo(f"dataset {d.name}: {path} ({len(columns)} columns), budget epsilon={d.budget.epsilon:g} "
                   f"delta={d.budget.delta:g}")
    typer.echo(f"peers: {', '.join(f'{n}={a}' for n, a in cfg.peers.items()) or 'none'}")
    typer.echo(f"ledger: {cfg.ledger_path}; audit log: {cfg.audit_path}")


@app.command("health")
@cli_errors
def health(config: ConfigOpt) -> None:
    """Ask this silo's running agent for its health (the transport's Health RPC)."""
    from fedsilo.silos.agent import AgentClient
    from fedsilo.silos.silo_config import load_silo_config

    with AgentClient.for_silo(load_silo_config(config)) as client:
        typer.echo(json.dumps(client.health()))
