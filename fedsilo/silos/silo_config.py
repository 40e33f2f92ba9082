"""``silo.toml``: one organization's agent (``fedsilo silo start --config silo.toml``).

The operator's file, not a job's: who this silo is and where it listens, its TLS files, the
allow-list of peers (name = address), the datasets it offers with **the operator's budget** for
each (a job can lower it, never raise it), its privacy ledger and its audit log. Every key is
documented in docs/agents.md. Paths are relative to the file. Unknown keys are errors naming the
file, the key and the nearest valid key, exactly like the federation config
(:mod:`fedsilo.silos.config`), whose name rule and error format this module reuses.

::

    [silo]
    name = "alpha"
    listen = "127.0.0.1:50051"      # port 0: an ephemeral port, reported when the agent is up
    insecure = false                # true: plaintext gRPC without [tls], loopback only (tests)
    [tls]
    ca = "certs/ca.pem"
    cert = "certs/alpha/cert.pem"
    key = "certs/alpha/key.pem"
    [peers]                         # the allow-list: name = host:port
    beta = "127.0.0.1:50052"
    [[datasets]]
    name = "patients"
    path = "data/alpha.csv"
    budget = { epsilon = 10.0, delta = 1e-5 }
    [ledger]
    path = "ledger.sqlite"
    [audit]                         # optional; default: <ledger name>.audit.jsonl beside the ledger
    path = "audit.jsonl"
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from typing import Annotated

from pydantic import AfterValidator, Field, StringConstraints, ValidationError, field_validator, model_validator

from fedsilo.errors import ConfigError
from fedsilo.protocols.spec import Bool, Section, format_errors
from fedsilo.silos.config import _NAME, Budget, read_toml
from fedsilo.silos.data import DATASET_SUFFIXES

__all__ = [
    "AuditSection",
    "DatasetSection",
    "LedgerSection",
    "SiloConfig",
    "SiloIdentity",
    "TlsSection",
    "load_silo_config",
    "parse_silo_config",
    "split_address",
]


def split_address(address: str, *, allow_port_zero: bool = False) -> tuple[str, int]:
    """``(host, port)`` of ``host:port`` (IPv6 as ``[::1]:port``); ValueError otherwise."""
    if not isinstance(address, str):
        raise ValueError(f"expected 'host:port', got {address!r}")
    host, sep, port = address.rpartition(":")
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    low = 0 if allow_port_zero else 1
    if not sep or not host or not port.isdigit() or not low <= int(port) <= 65535 or any(c.isspace() for c in host):
        raise ValueError(f"expected 'host:port' with a port in {low}..65535")
    return host, int(port)


def _peer_address(value: str) -> str:
    split_address(value)
    return value


#: a peer's ``host:port`` (a port of 1..65535)
PeerAddress = Annotated[str, AfterValidator(_peer_address)]
#: a peer's silo name (the config's name rule)
PeerName = Annotated[str, StringConstraints(pattern=_NAME)]


class SiloIdentity(Section):
    #: this silo's name: the CN of its certificate, the name its peers list it under
    name: str = Field(pattern=_NAME)
    #: host:port to listen on (port 0: an ephemeral port, written to the agent's state file)
    listen: str = "127.0.0.1:0"
    #: plaintext gRPC without certificates: allowed only when ``listen`` is a loopback address
    insecure: Bool = False

    @field_validator("listen")
    @classmethod
    def _address(cls, value: str) -> str:
        split_address(value, allow_port_zero=True)
        return value


class TlsSection(Section):
    ca: str
    cert: str
    key: str


class DatasetSection(Section):
    name: str = Field(pattern=_NAME)
    #: a CSV or Parquet file
    path: str

    @field_validator("path")
    @classmethod
    def _table_file(cls, value: str) -> str:
        if Path(value).suffix.lower() not in DATASET_SUFFIXES:
            raise ValueError(f"not a table file fedsilo reads: expected a name ending in {', '.join(DATASET_SUFFIXES)}")
        return value

    #: the operator's budget for this dataset: registered in the ledger, never raised by a job
    budget: Budget
    #: run jobs without [privacy] on this dataset (their exact releases are not accounted)
    allow_no_dp: Bool = False


class LedgerSection(Section):
    path: str = "ledger.sqlite"
    #: the ledger's accountant, fixed when the ledger is created; jobs must be calibrated with it
    accountant: Literal["rdp", "pld"] = "rdp"


class AuditSection(Section):
    path: str


class SiloConfig(Section):
    silo: SiloIdentity
    tls: TlsSection | None = None
    #: the allow-list: peer silo name -> "host:port"
    peers: dict[PeerName, PeerAddress] = Field(default_factory=dict)
    datasets: list[DatasetSection] = Field(default_factory=list)
    ledger: LedgerSection = Field(default_factory=LedgerSection)
    audit: AuditSection | None = None
    #: directory of the file; paths resolve against it
    base_dir: Path = Field(default=Path("."), exclude=True)

    @field_validator("peers")
    @classmethod
    def _peers(cls, peers: dict[str, str]) -> dict[str, str]:
        lower = [n.lower() for n in peers]
        dup = sorted({n for n in peers if lower.count(n.lower()) > 1})
        if dup:
            raise ValueError(f"peer names are compared ignoring case; repeated: {dup}")
        return peers

    @model_validator(mode="after")
    def _cross_checks(self) -> "SiloConfig":
        from fedsilo.silos.transport import is_loopback

        me = self.silo.name
        if me.lower() in (p.lower() for p in self.peers):
            raise ValueError(f"[peers] lists this silo itself ({me!r}); list only the other silos")
        names = [d.name.lower() for d in self.datasets]  # a job names one: no two a case apart
        dup = sorted({d.name for d in self.datasets if names.count(d.name.lower()) > 1})
        if dup:
            raise ValueError(f"dataset names must be unique, ignoring case; repeated: {dup}")
        host, _ = split_address(self.silo.listen, allow_port_zero=True)
        if self.silo.insecure:
            if not is_loopback(host):
                raise ValueError(
                    f"silo.insecure = true is allowed only on a loopback listen address; {self.silo.listen!r} is not "
                    "one: give the silo's [tls] files (fedsilo certs init)"
                )
            if self.tls is not None:
                raise ValueError("silo.insecure = true runs without certificates: remove [tls], or set insecure = false")
            bad = [n for n, a in self.peers.items() if not is_loopback(split_address(a)[0])]
            if bad:
                raise ValueError(f"silo.insecure = true: peers {bad} are not on loopback addresses")
        elif self.tls is None:
            raise ValueError(
                "[tls] (ca, cert, key) is required: an agent speaks mutual TLS only (fedsilo certs init); "
                "a test agent on loopback may set [silo] insecure = true instead"
            )
        return self

    # -- resolved paths --------------------------------------------------------------------
    def resolve(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else (self.base_dir / p)

    @property
    def name(self) -> str:
        return self.silo.name

    @property
    def ledger_path(self) -> Path:
        return self.resolve(self.ledger.path)

    @property
    def audit_path(self) -> Path:
        if self.audit is not None:
            return self.resolve(self.audit.path)
        p = self.ledger_path
        return p.with_name(f"{p.stem}.audit.jsonl")

    @property
    def state_path(self) -> Path:
        """Where the running agent writes its pid and bound address (``fedsilo job`` reads it)."""
        p = self.ledger_path
        return p.with_name(f"{p.stem}.agent.json")

    @property
    def jobs_dir(self) -> Path:
        """Where the agent keeps the record of each job it coordinated (``fedsilo job list``)."""
        p = self.ledger_path
        return p.with_name(f"{p.stem}.jobs")

    def dataset(self, name: str) -> DatasetSection | None:
        return next((d for d in self.datasets if d.name == name), None)

    def dataset_path(self, name: str) -> Path:
        d = self.dataset(name)
        if d is None:
            raise ConfigError(f"silo {self.name!r} has no dataset {name!r}")
        return self.resolve(d.path)


def parse_silo_config(data: dict[str, Any], *, source: str = "<silo.toml>", base_dir: Path | None = None) -> SiloConfig:
    """Validate a silo.toml dict; ConfigError with one line per problem, naming file and key."""
    try:
        return SiloConfig.model_validate({**data, "base_dir": base_dir or Path(".")})
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, source, SiloConfig)) from None


def load_silo_config(path: str | Path) -> SiloConfig:
    """Read and validate a ``silo.toml`` file (paths in it resolve against its directory)."""
    p = Path(path)
    data = read_toml(p, what="silo config")
    return parse_silo_config(data, source=str(p), base_dir=p.resolve().parent)
