"""The silo agent: one organization's long-lived process (``fedsilo silo start --config silo.toml``).

An :class:`Agent` holds its silo's datasets, TLS files, privacy ledger and audit log, and serves
one gRPC port (:class:`~fedsilo.silos.transport.PartyServer`, mutual TLS, allow-list = the
peers of ``silo.toml``) with two services: the transport's ``Mailbox`` (the parties' messages)
and this module's ``Control`` (jobs). It runs the same party functions as ``fedsilo simulate``
(:meth:`~fedsilo.silos.runner.Task.party`) over a :class:`~fedsilo.silos.transport.GrpcChannel`.

Party names and identities
    A job's party is played by the agent **of the same name** (its certificate's CN): a
    ``[[silos]]`` entry by the agent named like it, the aggregator of a horizontal or statistics
    job (party ``"aggregator"``, :data:`fedsilo.protocols.horizontal.protocol.AGGREGATOR`) by
    the agent named ``aggregator``. So the transport's identity check (an envelope's sender
    must be the authenticated peer) holds unchanged: no party can speak for another.

A job (control plane, service ``fedsilo.agent.v1.Control``; codec-encoded dicts, never pickle)
    1. ``Submit`` (the operator's CLI, authenticated with the silo's own certificate, to its
       own agent, the *coordinator*): the JOB.toml text.
    2. The coordinator validates the job against its own policy, then sends ``Offer`` (the job
       id and the TOML text) to every other party's agent. Each agent parses and validates the
       text itself (:func:`fedsilo.silos.config.parse_config` with its own base directory, the
       task's checks) against its local policy (:meth:`Agent.evaluate`: peers on its
       allow-list, the dataset named by ``[[silos]] data`` present, its columns, the budget,
       insecure settings) and answers *accepted* with its dataset's schema (column names and
       public bounds, never a row) or *refused* with a reason.
    3. Any refusal: ``Cancel`` to the others, and the submitter sees every reason. Otherwise
       ``Start`` (every data party's declared schema) to every agent: each plans the same job
       itself (:meth:`Task.plan` with schema-only sources for the peers and its own file for
       itself), puts its own source and ledger into its :class:`~fedsilo.silos.runner.Party`
       and runs it.
    4. Parties report to the coordinator: ``Progress`` (round, contributors) and, at the end,
       ``Report`` (:mod:`fedsilo.silos.reports`: only what the submitter may know, or the error
       with the step it happened at). A failure makes the coordinator ``Abort`` every agent.
       The coordinator ``Ping``\\ s the agents while the job runs: a silent agent is *missing*
       (the job stops naming it, or continues if its quorum still holds).
    5. The coordinator assembles the results with :meth:`Task.results`; the CLI polls
       ``Status`` and fetches ``Results``; ``List`` lists the jobs.

Budgets
    Each dataset's budget is the operator's (``silo.toml``), registered in the ledger at start.
    A job's ``[[silos]] budget`` may lower it for that job (a charge that would bring the
    dataset past the lower value is refused), never raise it (refused at the offer).

Shutdown (SIGTERM / SIGINT)
    New offers are refused, every running job is aborted (its party stops at its next receive
    and sends nothing more; a release is charged in the ledger before its ciphertext leaves, so
    the ledger is consistent), the coordinator is told, the ledger closed; exit 0.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import secrets
import signal
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import grpc

from fedsilo.errors import (
    BudgetExceededError,
    ConfigError,
    DataError,
    FedsiloError,
    JobAbortedError,
    PeerRejectedError,
    PeerTimeoutError,
    ProtocolError,
)
from fedsilo.protocols import codec
from fedsilo.silos.certs import TlsFiles, identity_name, load_tls
from fedsilo.silos.config import JobConfig, parse_config
from fedsilo.silos.data import DataSource, FileSource
from fedsilo.silos.ledgers import LedgerSpec
from fedsilo.silos.reports import (
    jsonable,
    PartyError,
    PartyOutcome,
    check_progress,
    for_results,
    incoming,
    one_line,
    outgoing,
    progress_out,
)
from fedsilo.silos.silo_config import SiloConfig, load_silo_config, split_address
from fedsilo.silos.topology import check_topology, federation, neighbours
from fedsilo.silos.transport import HEALTH, GrpcChannel, PartyServer, RetryPolicy, TransportOptions, is_loopback

__all__ = [
    "AGENT_TASKS",
    "CONTROL_SERVICE",
    "Agent",
    "AgentClient",
    "AgentLedger",
    "AgentLedgerSpec",
    "AuditLog",
    "DeclaredSchema",
    "party_table",
    "serve",
]

log = logging.getLogger(__name__)

CONTROL_VERSION = 1
CONTROL_SERVICE = f"fedsilo.agent.v{CONTROL_VERSION}.Control"
#: methods only the agent's own identity (its operator's CLI) may call
OWN = ("Submit", "Status", "Results", "List")
#: methods the peers call (each also checks the caller's part in the job)
PEER = ("Offer", "Start", "Cancel", "Abort", "Missing", "Report", "Progress", "Ping")
#: Seconds a submitter's agent waits for a peer's answer to an offer (its checks include planning
#: the job's releases on its own data)
OFFER_TIMEOUT = 180.0
#: tasks an agent runs: their party tables are known (party_table)
AGENT_TASKS = ("horizontal", "statistics", "vertical")
#: the horizontal/statistics aggregator's party name, :data:`fedsilo.protocols.horizontal.protocol.AGGREGATOR`
#: (not imported here: that module loads torch)
AGGREGATOR = "aggregator"
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
MAX_JOB_TOML = 1024 * 1024
MAX_COLUMNS = 10_000
#: replies stay under the transport server's send limit (64 KiB); results are paged
_PAGE = 48 * 1024
_TERMINAL = ("completed", "failed", "refused", "aborted")
#: an offer without a Start is dropped after this many seconds
OFFER_TTL = 300.0
#: finished jobs kept in memory (older ones are served from their record in the jobs directory)
KEEP_JOBS = 100


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


# -- audit -------------------------------------------------------------------------------------------
class AuditLog:
    """Append-only JSON lines: every job offer (accepted or refused, with the reason), every
    ledger charge (= every release), every refused peer; fsynced line by line, mode 0600."""

    def __init__(self, path: Path, *, silo: str) -> None:
        self.path = Path(path)
        self.silo = silo
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot open the audit log {self.path}: {exc.strerror or exc}") from None

    def write(self, kind: str, /, **fields: Any) -> None:
        line = json.dumps({"time": _now(), "silo": self.silo, "event": kind, **jsonable(fields)},
                          sort_keys=False, allow_nan=False) + "\n"
        with self._lock:
            if self._fd is None:
                log.warning("audit log closed; not recorded: %s", line.strip())
                return
            data = line.encode()
            while data:
                data = data[os.write(self._fd, data):]
            os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


# -- ledgers ---------------------------------------------------------------------------------------
class AgentLedger:
    """A party's ledger inside an agent: every charge is recorded in the audit log, and a job
    that lowered the dataset's budget (``cap``) is held to the lower value. Everything else is
    the wrapped :class:`~fedsilo.privacy.ledger.PrivacyLedger`."""

    def __init__(self, ledger: Any, *, job: str, audit: AuditLog | None, cap: float | None) -> None:
        self._ledger = ledger
        self._job = job
        self._audit = audit
        self._cap = cap

    def charge(self, dataset: str, event: Any, **kwargs: Any) -> Any:
        if self._cap is not None:
            self._check_cap(dataset, event, kwargs.get("relation"))
        reservation = self._ledger.charge(dataset, event, **kwargs)
        if self._audit is not None:
            self._audit.write(
                "charge", job=kwargs.get("job", self._job), round=kwargs.get("round"), dataset=dataset,
                protocol=kwargs.get("protocol"), recipient=kwargs.get("recipient"), relation=kwargs.get("relation"),
                dp_event=event.to_json(), epsilon_spent=reservation.epsilon_spent, reservation=reservation.reservation_id,
            )
        return reservation

    def _check_cap(self, dataset: str, event: Any, relation: Any) -> None:
        from fedsilo.privacy.accounting import epsilon
        from fedsilo.privacy.events import ComposedEvent
        from fedsilo.privacy.relations import to_composition_target

        assert self._cap is not None
        releases = [(e.event, e.relation) for e in self._ledger.entries(dataset)]
        _, events = to_composition_target([*releases, (event, relation)])
        _, delta = self._ledger.budget(dataset)
        after = epsilon(ComposedEvent(events), delta=delta, accountant=self._ledger.accountant)
        if not after <= self._cap:
            raise BudgetExceededError(silo=self._ledger.silo, dataset=dataset, spent=self._ledger.spent(dataset),
                                      requested=after, budget=self._cap, delta=delta)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)


@dataclass(frozen=True)
class AgentLedgerSpec(LedgerSpec):
    """The agent's own ledger file, dataset and **operator's** budget for one party of a job,
    opened as an :class:`AgentLedger` (audited, held to a job's lower ``cap``)."""

    job: str = ""
    cap: float | None = None
    audit: AuditLog | None = None

    @contextlib.contextmanager
    def open(self) -> Iterator[Any]:
        with LedgerSpec.open(self) as ledger:
            yield AgentLedger(ledger, job=self.job, audit=self.audit, cap=self.cap)


# -- schemas -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeclaredSchema(DataSource):
    """A peer's dataset as its agent declared it when accepting a job: column names and public
    bounds. Its rows never travel, so :meth:`load` refuses."""

    silo: str
    declared: tuple[str, ...]
    bounds: Mapping[str, tuple[float, float]] = dataclasses.field(default_factory=dict)

    @property
    def where(self) -> str:  # type: ignore[override]
        return f"silo {self.silo!r}'s dataset (declared schema)"

    def load(self) -> Any:
        raise ProtocolError(f"the rows of silo {self.silo!r} never leave it: only its declared schema is known here")

    def columns(self) -> list[str]:
        return list(self.declared)

    def public_bounds(self) -> dict[str, tuple[float, float]]:
        return dict(self.bounds)


def _schema_in(wire: Any, *, silo: str) -> DeclaredSchema:
    what = f"the schema declared by silo {silo!r}"
    if not isinstance(wire, dict) or set(wire) != {"columns", "bounds"}:
        raise ProtocolError(f"{what} is malformed")
    cols = wire["columns"]
    if (not isinstance(cols, list) or not 0 < len(cols) <= MAX_COLUMNS
            or not all(isinstance(c, str) and 0 < len(c) <= 256 for c in cols) or len(set(cols)) != len(cols)):
        raise ProtocolError(f"{what}: columns must be 1-{MAX_COLUMNS} distinct names")
    bounds = wire["bounds"]
    if not isinstance(bounds, dict) or len(bounds) > MAX_COLUMNS:
        raise ProtocolError(f"{what}: bounds are malformed")
    out: dict[str, tuple[float, float]] = {}
    for k, v in bounds.items():
        ok = (isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                         and math.isfinite(x) for x in v) and v[0] < v[1])
        if not ok or k not in cols:
            raise ProtocolError(f"{what}: bound of {k!r} is malformed")
        out[k] = (float(v[0]), float(v[1]))
    return DeclaredSchema(silo, tuple(cols), out)


def _schema_out(columns: list[str], bounds: Mapping[str, tuple[float, float]]) -> dict[str, Any]:
    return {"columns": list(columns), "bounds": {k: [float(a), float(b)] for k, (a, b) in bounds.items()}}


# -- the party table ---------------------------------------------------------------------------------
def party_table(cfg: JobConfig) -> dict[str, str]:
    """``{party: role}`` of a job as every agent computes it from JOB.toml; each party is played
    by the agent of the same name (the aggregator by the agent named ``aggregator``)."""
    task = cfg.federation.task
    if task not in AGENT_TASKS:
        raise ConfigError(f"agents run {', '.join(AGENT_TASKS)} jobs; {task!r} has no known party table")
    if task in ("horizontal", "statistics"):
        return {**{s.name: "silo" for s in cfg.silos}, AGGREGATOR: "aggregator"}
    return {s.name: s.role for s in cfg.silos}


def _rounds_of(cfg: JobConfig) -> int:
    return 1 if cfg.federation.task == "statistics" else int(cfg.training.rounds)


# -- jobs ------------------------------------------------------------------------------------------------
class _Refused(Exception):
    """A job this agent does not run, with the reason its submitter sees."""


@dataclass
class _Job:
    """One job at this agent (as a party, and as the coordinator if it was submitted here)."""

    job: str
    toml: str
    source: str
    cfg: JobConfig
    coordinator: str
    parties: dict[str, str]
    dataset: str | None
    cap: float | None
    schema: dict[str, Any] | None
    #: the parties this one exchanges protocol messages with (the federation graph's neighbours)
    talks_to: frozenset[str] = frozenset()
    #: the parties that send it protocol messages: its job inbox takes envelopes from these only
    senders: frozenset[str] = frozenset()
    state: str = "offered"
    created: float = dataclasses.field(default_factory=time.time)
    step: str = "plan"
    abort: threading.Event = dataclasses.field(default_factory=threading.Event)
    abort_reason: str = ""
    #: parties the coordinator declared missing: this party's channel stops waiting for them
    gone: set[str] = dataclasses.field(default_factory=set)
    thread: threading.Thread | None = None
    # coordinator only
    submitted: str = ""
    started: float | None = None
    finished: float | None = None
    outcomes: dict[str, PartyOutcome] = dataclasses.field(default_factory=dict)
    missing: dict[str, str] = dataclasses.field(default_factory=dict)
    events: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    rounds_seen: set[int] = dataclasses.field(default_factory=set)
    schemas: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: str | None = None
    results: dict[str, Any] | None = None
    results_blob: bytes | None = None
    plan: Any = None
    planned: Any = None
    local_report: Any = None

    @property
    def task(self) -> str:
        return self.cfg.federation.task


class Agent:
    """One silo's agent: its server, its ledger, its audit log and its jobs.

    ``config_path`` (the silo.toml file) lets the agent re-read the peers' **addresses** for
    every job (an operator can move a peer without a restart; the allow-list, the peers' names,
    is fixed at start). ``options``: transport limits and timing; ``ping_interval`` /
    ``ping_misses``: how often the coordinator checks the agents of a running job and after how
    many failed checks in a row one is *missing*.
    """

    def __init__(self, cfg: SiloConfig, *, config_path: Path | None = None, options: TransportOptions | None = None,
                 ping_interval: float = 1.0, ping_misses: int = 3, party_join_timeout: float = 60.0) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.config_path = config_path
        self.options = options or TransportOptions(max_workers=16)
        self.ping_interval = ping_interval
        self.ping_misses = ping_misses
        self.party_join_timeout = party_join_timeout
        self.tls: TlsFiles | None = None
        if cfg.tls is not None:
            self.tls = load_tls(cfg.resolve(cfg.tls.ca), cfg.resolve(cfg.tls.cert), cfg.resolve(cfg.tls.key))
            if self.tls.name != self.name:
                raise ConfigError(
                    f"silo.name is {self.name!r} but the certificate {cfg.resolve(cfg.tls.cert)} names silo "
                    f"{self.tls.name!r}: an agent's name is its certificate's"
                )
        self.transport = "grpc+mtls" if self.tls is not None else "grpc+insecure"
        for d in cfg.datasets:
            path = cfg.resolve(d.path)
            if not path.is_file():
                raise ConfigError(f"silo {self.name!r}: dataset {d.name!r}: file not found: {path} (key 'datasets[].path')")
        self._lock = threading.RLock()
        self._jobs: dict[str, _Job] = {}
        self._draining = False
        self._closed = False
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix=f"agent-{self.name}")
        self._progress_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"agent-{self.name}-progress")
        self._clients: dict[str, AgentClient] = {}
        self._instance = _one_agent_per_ledger(cfg)
        try:
            self.audit = AuditLog(cfg.audit_path, silo=self.name)
            self.ledger = self._open_ledger()
        except BaseException:
            os.close(self._instance)
            raise
        try:
            host, port = split_address(cfg.silo.listen, allow_port_zero=True)
            self.server = PartyServer(
                allow=list(cfg.peers), tls=self.tls, party=self.name if self.tls is None else None, host=host,
                port=port, insecure=self.tls is None, options=self.options, on_refused=self._on_refused,
                registered_jobs_only=True,
                handlers=[self._control_handler()], own_methods=[HEALTH, *(f"/{CONTROL_SERVICE}/{m}" for m in OWN)],
            )
        except BaseException:
            self.ledger.close()
            self.audit.close()
            os.close(self._instance)
            raise
        self.address = self.server.address
        self._write_state()
        self.audit.write("agent_started", address=self.address, transport=self.transport, peers=sorted(cfg.peers),
                         datasets={d.name: {"epsilon": d.budget.epsilon, "delta": d.budget.delta} for d in cfg.datasets})
        log.info("silo agent %s serving on %s (%s)", self.name, self.address, self.transport)

    # -- start-up and shutdown ---------------------------------------------------------------
    def _open_ledger(self) -> Any:
        from fedsilo.privacy.ledger import PrivacyLedger

        path = self.cfg.ledger_path
        if path.is_dir():
            raise ConfigError(f"ledger.path {path} is a directory, not a ledger file")
        want = self.cfg.ledger.accountant
        ledger = PrivacyLedger.open(path) if path.exists() else PrivacyLedger(path, silo=self.name, accountant=want)
        try:
            if ledger.silo != self.name:
                raise ConfigError(f"ledger {path} belongs to silo {ledger.silo!r}, not {self.name!r}")
            if ledger.accountant != want:
                raise ConfigError(
                    f"key 'ledger.accountant': {want!r}, but ledger {path} was created with the {ledger.accountant!r} "
                    "accountant (fixed for a ledger's life): set it back, or start a new ledger file"
                )
            for d in self.cfg.datasets:  # the operator's budget, registered once; a changed one is refused
                ledger.register_dataset(d.name, epsilon=float(d.budget.epsilon), delta=float(d.budget.delta))
        except BaseException:
            ledger.close()
            raise
        return ledger

    def _write_state(self) -> None:
        path = self.cfg.state_path
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"silo": self.name, "pid": os.getpid(), "address": self.address,
                                       "transport": self.transport, "started": _now()}) + "\n")
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot write the agent state file %s: %s", path, exc)

    def close(self, reason: str = "the agent is stopping") -> None:
        """Refuse new jobs, abort every running one, wait for its parties, close the ledger and
        the server. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._draining = True
            running = [j for j in self._jobs.values() if j.state in ("offered", "running")]
        self.audit.write("agent_stopping", reason=reason, running=[j.job for j in running])
        for js in running:
            if js.coordinator == self.name:
                self._fail(js, f"the submitter's agent {self.name!r} is stopping ({reason})", state="aborted")
            else:
                self._abort_local(js, f"agent {self.name!r} is stopping ({reason})")
        deadline = time.monotonic() + self.party_join_timeout
        for js in running:
            if js.thread is not None:
                js.thread.join(max(0.0, deadline - time.monotonic()))
        self._pool.shutdown(wait=True, cancel_futures=False)
        self._progress_pool.shutdown(wait=True, cancel_futures=True)
        for client in list(self._clients.values()):
            client.close()
        self.server.stop(grace=1.0)
        try:
            self.ledger.verify()
            verified = True
        except FedsiloError as exc:
            log.error("ledger %s does not verify: %s", self.cfg.ledger_path, exc)
            verified = False
        self.ledger.close()
        self.audit.write("agent_stopped", reason=reason, ledger_verified=verified)
        self.audit.close()
        with contextlib.suppress(OSError):
            state = json.loads(self.cfg.state_path.read_text())
            if state.get("pid") == os.getpid():
                self.cfg.state_path.unlink()
        os.close(self._instance)  # releases the lock: another agent may serve this ledger now
        log.info("silo agent %s stopped", self.name)

    def __enter__(self) -> "Agent":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- peers -----------------------------------------------------------------------------------
    def _on_refused(self, peer: str | None, reason: str) -> None:
        self.audit.write("peer_refused", peer=peer, reason=reason)

    def peer_addresses(self) -> dict[str, str]:
        """The peers' addresses: silo.toml's ``[peers]`` re-read now (names outside the
        allow-list fixed at start are ignored)."""
        peers = dict(self.cfg.peers)
        if self.config_path is not None:
            try:
                fresh = load_silo_config(self.config_path)
            except ConfigError as exc:
                log.warning("cannot re-read %s, using the peers' addresses of start-up: %s", self.config_path, exc)
            else:
                for name, address in fresh.peers.items():
                    if name in peers:
                        peers[name] = address
        return peers

    def _client(self, peer: str) -> "AgentClient":
        address = self.peer_addresses().get(peer)
        if address is None:
            raise PeerRejectedError(f"{peer!r} is not a peer of silo {self.name!r}")
        with self._lock:
            client = self._clients.get(peer)
            if client is not None and client.address != address:
                client.close()
                client = None
            if client is None:
                client = self._clients[peer] = AgentClient(me=self.name, peer=peer, address=address, tls=self.tls,
                                                           options=self.options)
            return client

    def _call(self, peer: str, method: str, payload: dict[str, Any], *, timeout: float = 30.0,
              attempts: int = 3) -> dict[str, Any]:
        return self._client(peer).call(method, payload, timeout=timeout, attempts=attempts)

    # -- control service ---------------------------------------------------------------------------
    def _control_handler(self) -> grpc.GenericRpcHandler:
        table: dict[str, Callable[[str, dict[str, Any]], dict[str, Any]]] = {
            "Submit": self._rpc_submit, "Status": self._rpc_status, "Results": self._rpc_results, "List": self._rpc_list,
            "Offer": self._rpc_offer, "Start": self._rpc_start, "Cancel": self._rpc_cancel, "Abort": self._rpc_abort,
            "Missing": self._rpc_missing,
            "Report": self._rpc_report, "Progress": self._rpc_progress, "Ping": self._rpc_ping,
        }
        return grpc.method_handlers_generic_handler(
            CONTROL_SERVICE, {m: grpc.unary_unary_rpc_method_handler(self._wrap(m, fn)) for m, fn in table.items()}
        )

    def _wrap(self, method: str, fn: Callable[[str, dict[str, Any]], dict[str, Any]]) -> Callable[[bytes, Any], bytes]:
        def handler(request: bytes, context: grpc.ServicerContext) -> bytes:
            server = getattr(self, "server", None)
            if server is None:  # a call in the instant between binding and the end of start-up
                context.abort(grpc.StatusCode.UNAVAILABLE, f"silo {self.name!r} is starting")
            caller = server.caller(context)
            if method in OWN and caller != self.name:
                reason = f"{CONTROL_SERVICE}/{method} is for the silo's own operator only, not for {caller!r}"
                self._on_refused(caller, reason)
                context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)
            try:
                msg = codec.decode(request)
            except ProtocolError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed {method} request: {exc}")
            if not isinstance(msg, dict):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed {method} request: not a mapping")
            try:
                reply = fn(caller, msg)
            except ProtocolError as exc:
                self._on_refused(caller, f"{method}: {exc}")
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, one_line(exc))
            except FedsiloError as exc:
                reply = {"error": one_line(exc), "bad_input": isinstance(exc, (ConfigError, DataError))}
            except Exception as exc:  # noqa: BLE001 - a bug here must not take the server down
                log.exception("%s %s failed", self.name, method)
                reply = {"error": f"{type(exc).__name__}: {one_line(exc)}", "bad_input": False}
            return codec.encode(reply)

        return handler

    def _job(self, msg: dict[str, Any]) -> str:
        job = msg.get("job")
        if not isinstance(job, str) or not _JOB_ID.match(job):
            raise ProtocolError(f"invalid job id {job!r}")
        return job

    # -- policy -------------------------------------------------------------------------------------------
    def evaluate(self, job: str, text: str, *, coordinator: str, source: str) -> _Job:
        """Parse and validate a job against this silo's policy; :class:`_Refused` with the
        reason otherwise. Nothing is changed here."""
        if self._draining:
            raise _Refused(f"silo {self.name!r} is shutting down and accepts no jobs")
        if not _JOB_ID.match(job):
            raise _Refused(f"invalid job id {job!r}")
        with self._lock:
            if job in self._jobs:
                raise _Refused(f"job {job!r} is already known to silo {self.name!r}")
        if not isinstance(text, str) or len(text.encode()) > MAX_JOB_TOML:
            raise _Refused(f"the job's TOML must be text of at most {MAX_JOB_TOML} bytes")
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise _Refused(f"{source}: not valid TOML: {exc}") from None
        try:
            cfg = parse_config(data, source=source, base_dir=self.cfg.base_dir)
        except FedsiloError as exc:
            raise _Refused(one_line(exc)) from None
        try:
            parties = party_table(cfg)
        except ConfigError as exc:
            raise _Refused(str(exc)) from None
        if cfg.data.source is not None:
            raise _Refused(
                f"{source}: [data] source is a built-in data set: a job across agents names each silo's dataset "
                "in [[silos]] data (the dataset's name in that silo's silo.toml)"
            )
        if cfg.federation.task in ("horizontal",) and ":" in cfg.model.kind:
            raise _Refused(
                f"{source}: key 'model.kind': {cfg.model.kind!r} names a Python class; an agent runs built-in models "
                "only (a job would otherwise import code its submitter chose)"
            )
        if cfg.federation.task in ("horizontal",) and cfg.model.trainer is not None:
            raise _Refused(
                f"{source}: key 'model.trainer': {cfg.model.trainer!r} names a Python function; an agent runs the "
                "built-in training loop only (a job would otherwise run code its submitter chose)"
            )
        if self.name not in parties:
            raise _Refused(f"silo {self.name!r} is not a party of this job (parties: {', '.join(parties)})")
        if coordinator not in parties:
            raise _Refused(f"the submitting silo {coordinator!r} is not a party of this job")
        try:
            graph = federation(cfg)
            check_topology(graph, cfg)  # as run_job does before it plans
            talks_to = frozenset(neighbours(graph, self.name))
            senders = frozenset(graph.predecessors(self.name))
        except ConfigError as exc:
            raise _Refused(one_line(exc)) from None
        # Every party must be on the allow-list, not only those this one exchanges messages with:
        # every silo receives the releases derived from this silo's data (and with a shared-key
        # backend holds the key to its ciphertexts), so the operator vets each participant.
        strangers = sorted(p for p in parties if p != self.name and p not in self.server.allow)
        if strangers:
            raise _Refused(
                f"{strangers} {'is' if len(strangers) == 1 else 'are'} not on the allow-list of silo {self.name!r} "
                f"(its peers: {', '.join(sorted(self.server.allow)) or 'none'})"
            )
        if cfg.federation.task == "vertical":
            guest = next(s.name for s in cfg.silos if s.role == "guest")
            if coordinator != guest:
                raise _Refused(f"a vertical job is submitted through its guest's agent ({guest!r}, the label holder), "
                               f"not {coordinator!r}")
        if cfg.federation.task == "statistics" and coordinator == AGGREGATOR:
            raise _Refused("a statistics job is submitted through a silo's agent (the silos receive the statistics)")
        if cfg.crypto.insecure:
            host, _ = split_address(self.cfg.silo.listen, allow_port_zero=True)
            if not is_loopback(host):
                raise _Refused(
                    f"{source}: [crypto] insecure = true (the plain backend, weak keys, no-DP vertical training or sums "
                    f"of two silos): silo {self.name!r} serves a non-loopback address and refuses insecure jobs"
                )
        if self.tls is None:
            from fedsilo.crypto.registry import get_backend_class

            try:
                keyless = get_backend_class(cfg.crypto.backend).capabilities().keyless
            except FedsiloError as exc:
                raise _Refused(f"{source}: key 'crypto.backend': {one_line(exc)}") from None
            if keyless:
                # refused at the offer, not in round 1 (found by the bad-input sweep): SecAgg+
                # relays keys and survivor sets through the aggregator, so each silo signs them
                # with its certificate key, which a plaintext transport does not have
                raise _Refused(
                    f"{source}: key 'crypto.backend': {cfg.crypto.backend!r} is keyless secure aggregation, which "
                    f"needs party identities (mTLS certificates) to sign its keys and survivor sets; silo "
                    f"{self.name!r} runs a plaintext transport (no [tls] in its silo.toml): give it a certificate "
                    "(fedsilo certs) or use a shared-key backend"
                )
        role = parties[self.name]
        dataset = cap = schema = None
        if role in ("silo", "guest", "host"):
            entry = next(s for s in cfg.silos if s.name == self.name)
            if not entry.data:
                raise _Refused(f"{source}: silo {self.name!r} has no dataset (key 'silos[].data' names one of its datasets)")
            ds = self.cfg.dataset(entry.data)
            if ds is None:
                offered = ", ".join(d.name for d in self.cfg.datasets) or "none"
                raise _Refused(f"silo {self.name!r} has no dataset {entry.data!r} (its datasets: {offered})")
            dataset = ds.name
            src = FileSource(self.cfg.resolve(ds.path), self.name)
            try:
                columns = src.columns()
            except FedsiloError as exc:
                raise _Refused(f"dataset {dataset!r}: {one_line(exc)}") from None
            self._check_columns(cfg, role, dataset, columns)
            schema = _schema_out(columns, src.public_bounds())
            if len(codec.encode(schema)) > _PAGE:
                raise _Refused(f"dataset {dataset!r}: its schema ({len(columns)} columns) is too large for the control plane")
            if cfg.privacy is not None:
                if cfg.privacy.accountant != self.ledger.accountant:
                    # the job's noise is calibrated with its accountant; this ledger composes with
                    # its own, so the job's epsilon would not be the one charged here
                    raise _Refused(
                        f"{source}: key 'privacy.accountant': the job is calibrated with {cfg.privacy.accountant!r}, "
                        f"but silo {self.name!r}'s ledger accounts with {self.ledger.accountant!r}: set accountant = "
                        f"{self.ledger.accountant!r}"
                    )
                cap = self._check_budget(cfg, entry, ds, source, own=coordinator == self.name)
            elif not ds.allow_no_dp:
                # without [privacy] a job releases exact sums of this dataset, which no ledger
                # entry accounts for: only the operator may allow that, per dataset
                raise _Refused(
                    f"{source}: silo {self.name!r} runs no job without [privacy] on dataset {ds.name!r} (exact "
                    "releases are not accounted in its ledger); add a [privacy] section, or the operator sets "
                    "allow_no_dp = true for that dataset in silo.toml"
                )
        return _Job(job, text, source, cfg, coordinator, parties, dataset, cap, schema, talks_to, senders)

    def _check_columns(self, cfg: JobConfig, role: str, dataset: str, columns: list[str]) -> None:
        need: list[tuple[str, str]] = []
        task = cfg.federation.task
        if task == "horizontal" and cfg.data.label:
            need.append((cfg.data.label, "[data] label"))
        if task == "statistics" and cfg.statistics is not None:
            need += [(c, "[statistics] columns") for c in cfg.statistics.columns]
        if task == "vertical":
            need.append((str(cfg.data.id_column), "[data] id_column"))
            if role == "guest":
                need.append((str(cfg.data.label), "[data] label"))
        missing = [(c, why) for c, why in need if c not in columns]
        if missing:
            listed = ", ".join(f"{c!r} ({why})" for c, why in missing)
            raise _Refused(f"silo {self.name!r}: dataset {dataset!r} has no column {listed}")

    def _check_budget(self, cfg: JobConfig, entry: Any, ds: Any, source: str, *, own: bool) -> float | None:
        """The job's budget cap for this dataset (a job's lower ``[[silos]] budget``), after checking
        that the whole job fits in it: every release the job plans here, composed on top of the
        ledger as each charge will compose it. ``own``: the job was submitted through this agent,
        so the refusal may show the ledger's totals to its own operator; a peer's submitter
        learns only what the job needs and that it does not fit (the totals stay in the audit
        log, ``budget_refused``)."""
        assert cfg.privacy is not None
        op = ds.budget
        cap = None
        if entry.budget is not None:
            if entry.budget.epsilon > op.epsilon:
                raise _Refused(
                    f"{source}: silos[{self.name}].budget asks epsilon={entry.budget.epsilon:g} for dataset {ds.name!r} "
                    f"of silo {self.name!r}, above the operator's budget epsilon={op.epsilon:g} (silo.toml): a job can "
                    "lower a budget, never raise it"
                )
            if entry.budget.delta != op.delta:
                raise _Refused(
                    f"{source}: silos[{self.name}].budget asks delta={entry.budget.delta:g} for dataset {ds.name!r}, "
                    f"but the operator's budget is at delta={op.delta:g} (a dataset is accounted at one delta)"
                )
            if entry.budget.epsilon < op.epsilon:
                cap = float(entry.budget.epsilon)
        limit = cap if cap is not None else float(op.epsilon)
        if cfg.privacy.epsilon <= limit - self.ledger.spent(ds.name) + 1e-12:
            # the job's releases are calibrated to compose to at most its target: a target within
            # what is left fits without planning them (planning a record-level silo calibrates its
            # DP-SGD). The ledger still checks every charge as it is made.
            return cap
        check = self._planned_check(cfg, ds)
        if check is not None:
            # the job's planned releases composed on top of this ledger, as each charge will compose
            # them: refused now, before the job starts here or anywhere, if the last would not fit
            check = dataclasses.replace(check, budget=limit)
            if not check.fits:
                self.audit.write("budget_refused", dataset=ds.name, target=cfg.privacy.epsilon, need=check.need,
                                 spent=check.spent, after=check.after, budget=limit)
                if own:
                    raise _Refused(check.refusal())
                raise _Refused(
                    f"silo {self.name!r}, dataset {ds.name!r}: the job's target epsilon={cfg.privacy.epsilon:g} does not "
                    f"fit in the dataset's remaining budget (the job's releases need epsilon={check.need:.4g} here, on "
                    "top of the dataset's earlier releases); lower privacy.epsilon (--epsilon) or ask the silo's operator"
                )
            return cap
        spent = self.ledger.spent(ds.name)  # a task that does not plan its releases: its target vs what is left
        if cfg.privacy.epsilon > limit - spent + 1e-12:
            # the ledger's totals stay here (the audit log): a submitter learns only that it does not fit
            self.audit.write("budget_refused", dataset=ds.name, target=cfg.privacy.epsilon, spent=spent, budget=limit)
            raise _Refused(
                f"silo {self.name!r}, dataset {ds.name!r}: the job's target epsilon={cfg.privacy.epsilon:g} does not "
                "fit in the dataset's remaining budget"
            )
        return cap

    def _planned_check(self, cfg: JobConfig, ds: Any) -> Any:
        """The ledger's dry run (:meth:`~fedsilo.privacy.ledger.PrivacyLedger.preview`) of every
        release this silo would charge in the job (``Task.planned_charges`` on its own dataset,
        as :func:`~fedsilo.silos.runner.check_job_budgets` does for a simulation); None for a
        task that does not plan its releases. A dataset that fails the job's checks is refused
        without quoting its data (the details go to the audit log)."""
        from fedsilo.silos.runner import get_task, planned_releases

        src = FileSource(self.cfg.resolve(ds.path), self.name)
        try:
            planned = planned_releases(get_task(cfg.federation.task), cfg, {self.name: src})
            if planned is None or self.name not in planned:
                return None
            return self.ledger.preview(ds.name, planned[self.name])
        except DataError as exc:
            self.audit.write("budget_check_failed", dataset=ds.name, error=type(exc).__name__, message=one_line(exc))
            raise _Refused(f"silo {self.name!r}: dataset {ds.name!r} failed the job's checks (DataError; the "
                           "details are in the silo's audit log)") from None
        except FedsiloError as exc:
            raise _Refused(one_line(exc)) from None

    # -- own-operator RPCs (the coordinator) -------------------------------------------------------------------
    def _rpc_submit(self, caller: str, msg: dict[str, Any]) -> dict[str, Any]:
        text, source = msg.get("toml"), msg.get("source") or "JOB.toml"
        if not isinstance(text, str) or not isinstance(source, str) or len(source) > 1024:
            raise ProtocolError("Submit needs the job's TOML text")
        return self.submit(text, source=source)

    def submit(self, text: str, *, source: str = "JOB.toml") -> dict[str, Any]:
        """Run a job coordinated by this agent: offer it to every party's agent, start it if all
        accept. ``{"status": "accepted", "job"}`` or ``{"status": "refused", "reasons"}``."""
        name = "job"
        with contextlib.suppress(Exception):
            name = str(tomllib.loads(text).get("federation", {}).get("name") or "job")
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", name):
            name = "job"
        job = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        self._sweep()
        try:
            js = self.evaluate(job, text, coordinator=self.name, source=source)
        except _Refused as r:
            self.audit.write("job_offer", job=job, coordinator=self.name, decision="refused", reason=str(r))
            return {"status": "refused", "job": job, "reasons": [{"silo": self.name, "reason": str(r), "kind": "policy"}]}
        js.submitted = _now()
        with self._lock:
            self._jobs[job] = js
        self.server.register_job(job, js.senders)  # envelopes from the parties that send to it only
        self.audit.write("job_offer", job=job, coordinator=self.name, decision="accepted", task=js.task,
                         party=self.name, role=js.parties[self.name], dataset=js.dataset)
        others = [p for p in js.parties if p != self.name]
        answers = dict(zip(others, self._pool.map(lambda p: self._offer(p, js), others)))
        reasons = [{"silo": p, "reason": a["reason"], "kind": a["kind"]} for p, a in answers.items() if not a["accepted"]]
        if reasons:
            for p, a in answers.items():
                if a["accepted"]:
                    with contextlib.suppress(FedsiloError):
                        self._call(p, "Cancel", {"job": job, "reason": "another silo refused the job"}, attempts=1)
            with self._lock:
                js.state, js.error = "refused", "; ".join(f"silo {r['silo']!r}: {r['reason']}" for r in reasons)
                js.finished = time.time()
            self._save(js)
            return {"status": "refused", "job": job, "reasons": reasons}
        js.schemas = {p: a["schema"] for p, a in answers.items() if a.get("schema") is not None}
        if js.schema is not None:
            js.schemas[self.name] = js.schema
        try:  # the plan every agent will compute, from the declared schemas: refuse a job none could run
            self._plan(js)
        except FedsiloError as exc:
            reason = one_line(exc)
            for p in others:  # the reason (it may name another silo's columns) stays with the submitter
                with contextlib.suppress(FedsiloError):
                    self._call(p, "Cancel", {"job": job, "reason": "the submitting silo could not plan the job"},
                               attempts=1)
            with self._lock:
                js.state, js.error, js.finished = "refused", f"silo {self.name!r}: {reason}", time.time()
            self.audit.write("job_offer", job=job, coordinator=self.name, decision="refused", reason=reason)
            self._save(js)
            return {"status": "refused", "job": job, "reasons": [{"silo": self.name, "reason": reason, "kind": "policy"}]}
        js.state, js.started = "running", time.time()
        failed = []
        for p, result in zip(others, self._pool.map(lambda p: self._start_remote(p, js), others)):
            if result is not None:
                failed.append(f"silo {p!r}: {result}")
        if failed:
            self._fail(js, "the job could not start: " + "; ".join(failed))
            return {"status": "accepted", "job": job}
        self.audit.write("job_started", job=job, coordinator=self.name, parties=js.parties)
        self._launch(js)
        threading.Thread(target=self._monitor, args=(js,), name=f"monitor-{job}", daemon=True).start()
        return {"status": "accepted", "job": job}

    def _offer(self, peer: str, js: _Job) -> dict[str, Any]:
        try:
            # a peer may plan its releases to check its budget (a record-level silo calibrates its
            # DP-SGD, seconds on a loaded host): more time than a control call's 30 s
            reply = self._call(peer, "Offer", {"v": CONTROL_VERSION, "job": js.job, "toml": js.toml,
                                               "source": js.source}, timeout=OFFER_TIMEOUT)
        except FedsiloError as exc:
            return {"accepted": False, "reason": one_line(exc), "kind": "unreachable"}
        if reply.get("error"):
            return {"accepted": False, "reason": one_line(reply["error"]), "kind": "unreachable"}
        if not reply.get("accepted"):
            return {"accepted": False, "reason": one_line(reply.get("reason") or "refused"), "kind": "policy"}
        schema = reply.get("schema")
        if js.parties[peer] in ("silo", "guest", "host"):
            try:
                _schema_in(schema, silo=peer)
            except ProtocolError as exc:
                return {"accepted": False, "reason": str(exc), "kind": "unreachable"}
        return {"accepted": True, "schema": schema, "kind": "ok"}

    def _start_remote(self, peer: str, js: _Job) -> str | None:
        try:
            reply = self._call(peer, "Start", {"job": js.job, "schemas": js.schemas})
        except FedsiloError as exc:
            return one_line(exc)
        return reply.get("error")

    def _rpc_status(self, caller: str, msg: dict[str, Any]) -> dict[str, Any]:
        job = self._job(msg)
        since = msg.get("since", 0)
        if isinstance(since, bool) or not isinstance(since, int) or since < 0:
            raise ProtocolError("Status: since must be an integer >= 0")
        with self._lock:
            js = self._jobs.get(job)
            if js is None or js.coordinator != self.name:
                saved = self._load(job)
                if saved is None:
                    return {"error": f"no job {job!r} was submitted through silo {self.name!r}", "bad_input": True}
                return {"job": job, "state": saved["state"], "task": saved.get("task"), "rounds": saved.get("rounds"),
                        "events": [], "next": since, "error": saved.get("error"), "parties": saved.get("parties", {})}
            events = js.events[since:since + 200]
            return {"job": job, "state": js.state, "task": js.task, "rounds": _rounds_of(js.cfg), "events": events,
                    "next": since + len(events), "error": js.error, "parties": self._party_states(js)}

    def _party_states(self, js: _Job) -> dict[str, str]:
        out = {}
        for p in js.parties:
            if p in js.missing:
                out[p] = "missing"
            elif p in js.outcomes:
                out[p] = "done" if js.outcomes[p].status == "ok" else "failed"
            else:
                out[p] = "running" if js.state == "running" else js.state
        return out

    def _rpc_results(self, caller: str, msg: dict[str, Any]) -> dict[str, Any]:
        job = self._job(msg)
        offset = msg.get("offset", 0)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ProtocolError("Results: offset must be an integer >= 0")
        with self._lock:
            js = self._jobs.get(job)
            if js is not None and js.coordinator == self.name:
                state, error, blob = js.state, js.error, js.results_blob
            else:
                saved = self._load(job)
                if saved is None:
                    return {"error": f"no job {job!r} was submitted through silo {self.name!r}", "bad_input": True}
                state, error = saved["state"], saved.get("error")
                blob = codec.encode(saved["results"]) if saved.get("results") is not None else None
        if blob is None:
            return {"job": job, "state": state, "error": error, "total": 0, "chunk": b""}
        return {"job": job, "state": state, "error": error, "total": len(blob), "chunk": blob[offset:offset + _PAGE]}

    def _rpc_list(self, caller: str, msg: dict[str, Any]) -> dict[str, Any]:
        rows: dict[str, dict[str, Any]] = {}
        with contextlib.suppress(OSError):
            for f in sorted(self.cfg.jobs_dir.glob("*.json")):
                with contextlib.suppress(OSError, ValueError):
                    d = json.loads(f.read_text())
                    rows[d["job"]] = {k: d.get(k) for k in ("job", "state", "task", "submitted", "seconds", "error")}
        with self._lock:
            for js in self._jobs.values():
                if js.coordinator == self.name:
                    rows[js.job] = self._summary(js)
        listed = sorted(rows.values(), key=lambda r: str(r.get("submitted") or ""))[-200:]
        return {"jobs": [{k: (one_line(v, 200) if isinstance(v, str) else v) for k, v in r.items()} for r in listed]}

    def _summary(self, js: _Job) -> dict[str, Any]:
        seconds = (js.finished or time.time()) - js.started if js.started else None
        return {"job": js.job, "state": js.state, "task": js.task, "submitted": js.submitted, "seconds": seconds,
                "error": js.error}

    # -- peer RPCs -------------------------------------------------------------------------------------------
    def _rpc_offer(self, caller: str, msg: dict[str, Any]) -> dict[str, Any]:
        job = self._job(msg)
        text, source = msg.get("toml"), msg.get("source") or f"{job}.toml"
        if msg.get("v") != CONTROL_VERSION:
            return {"accepted": False, "reason": f"control protocol v{msg.get('v')} offered, silo {self.name!r} speaks "
                                                  f"v{CONTROL_VERSION}"}
        if not isinstance(text, str) or not isinstance(source, str) or len(source) > 1024:
            raise ProtocolError("Offer needs the job's TOML text")
        self._sweep()
        try:
            js = self.evaluate(job, text, coordinator=caller, source=source)
        except _Refused as r:
            self.audit.write("job_offer", job=job, coordinator=caller, decision="refused", reason=str(r))
            log.info("%s refused job %s from %s: %s", self.name, job, caller, r)
            return {"accepted": False, "reason": str(r)}
        with self._lock:
            if job in self._jobs:
                return {"accepted": False, "reason": f"job {job!r} is already known to silo {self.name!r}"}
            self._jobs[job] = js
        # only the job's parties may deliver into it, and only once this agent accepted it
        self.server.register_job(job, js.senders)  # envelopes from the parties that send to it only
        self.audit.write("job_offer", job=job, coordinator=caller, decision="accepted", task=js.task, party=self.name,
                         role=js.parties[self.name], dataset=js.dataset)
        return {"accepted": True, "schema": js.schema}

    def _sweep(self) -> None:
        """Expire offers that never started; forget all but the last KEEP_JOBS finished jobs."""
        now = time.time()
        with self._lock:
            for job, js in list(self._jobs.items()):
                if js.state == "offered" and now - js.created > OFFER_TTL:
                    js.state = "aborted"
                    self.audit.write("job_aborted", job=job, reason="offer expired without a start")
            done = sorted((j for j in self._jobs.values() if j.state in _TERMINAL
                           and (j.thread is None or not j.thread.is_alive())), key=lambda j: j.created)
            for js in done[:max(0, len(done) - KEEP_JOBS)]:
                del self._jobs[js.job]

    def _coordinated_by(self, caller: str, msg: dict[str, Any]) -> _Job:
        job = self._job(msg)
        with self._lock:
            js = self._jobs.get(job)
        if js is None or js.coordinator != caller:
            raise ProtocolError(f"job {job!r} was not offered to silo {self.name!r} by {caller!r}")
        return js

    def _rpc_start(self, caller: str, msg: dict[str, Any]) -> dict[str, Any]:
        js = self._coordinated_by(caller, msg)
        schemas = msg.get("schemas")
        if not isinstance(schemas, dict):
            raise ProtocolError("Start needs the declared schemas")
        data_parties = [p for p, r in js.parties.items() if r in ("silo", "guest", "host")]
        if sorted(schemas) != sorted(data_parties):
            raise ProtocolError(f"Start: schemas for {sorted(schemas)}, the job's data parties are {sorted(data_parties)}")
        for p, s in schemas.items():
            _schema_in(s, silo=p)
        if js.schema is not None and schemas[self.name] != js.schema:
            raise ProtocolError(f"Start: the schema of {self.name!r} is not the one it declared")
        with self._lock:
            if js.state != "offered":
                return {"error": f"job {js.job!r} is {js.state} on silo {self.name!r}", "bad_input": False}
            if self._draining:
                js.state = "aborted"
                return {"error": f"silo {self.name!r} is shutting down", "bad_input": False}
            js.schemas, js.state, js.started = schemas, "running", time.time()
        self.audit.write("job_started", job=js.job, coordinator=caller)
        self._launch(js)
        return {"status": "started"}

    def _rpc_cancel(self, caller: str, msg: dict[str, Any]) -> dict[str, Any]:
        js = self._coordinated_by(caller, msg)
        with self._lock:
            state = js.state
            if state == "offered":
                js.state = "aborted"
        if state != "offered":  # a Cancel withdraws an offer; a started job stops by Abort only
            self.audit.write("job_cancel_ignored", job=js.job, state=state)
            return {"status": state}
        self.audit.write("job_cancelled", job=js.job, reason=one_line(msg.get("reason") or "cancelled by the submitter"))
        return {"status": "cancelled"}

    def _rpc_abort(self, caller: str, msg: dict[str, Any]) -> dict[str, Any]:
        js = self._coordinated_by(caller, msg)
        self._abort_local(js, one_line(msg.get("reason") or f"aborted by {caller!r}"))
        return {"status": "aborted"}

    def _rpc_missing(self, caller: str, msg: dict[str, Any]) -> dict[str, Any]:
        js = self._coordinated_by(caller, msg)
        party = msg.get("party")
        if party not in js.parties or party == self.name or js.parties[party] != "silo":
            raise ProtocolError(f"Missing: {party!r} is not another silo of job {js.job!r}")
        js.gone.add(str(party))
        self.audit.write("party_missing", job=js.job, party=party, reason=one_line(msg.get("reason") or ""),
                         told_by=caller)
        return {"status": "ok"}

    def _rpc_ping(self, caller: str, msg: dict[str, Any]) -> dict[str, Any]:
        job = self._job(msg)
        with self._lock:
            js = self._jobs.get(job)
            state = js.state if js is not None and js.coordinator == caller else "unknown"
        return {"state": state}

    def _reporting(self, caller: str, msg: dict[str, Any]) -> tuple[_Job, str]:
        job = self._job(msg)
        party = msg.get("party")
        with self._lock:
            js = self._jobs.get(job)
        if js is None or js.coordinator != self.name:
            raise ProtocolError(f"job {job!r} was not submitted through silo {self.name!r}")
        if party != caller or party not in js.parties:
            # identity from the certificate: an agent reports only for the party it plays
            raise ProtocolError(f"{caller!r} cannot report for party {party!r} of job {job!r}")
        return js, party

    def _rpc_progress(self, caller: str, msg: dict[str, Any]) -> dict[str, Any]:
        js, party = self._reporting(caller, msg)
        event = check_progress(msg.get("event"), party=party)
        self._record_progress(js, party, event)
        return {"status": "ok"}

    def _rpc_report(self, caller: str, msg: dict[str, Any]) -> dict[str, Any]:
        js, party = self._reporting(caller, msg)
        outcome = PartyOutcome.from_wire(msg.get("outcome"), party=party)
        if outcome.status == "ok":
            role = js.parties[party]
            incoming(js.task, role, party, outcome.report)  # refuse a malformed report now, naming the party
        self._record_outcome(js, outcome)
        return {"status": "ok"}

    # -- running one party -------------------------------------------------------------------------------------
    def _launch(self, js: _Job) -> None:
        js.thread = threading.Thread(target=self._run_party, args=(js,), name=f"party-{self.name}-{js.job}", daemon=True)
        js.thread.start()

    def _sources(self, js: _Job) -> dict[str, DataSource]:
        out: dict[str, DataSource] = {}
        for s in js.cfg.silos:
            if js.parties.get(s.name) not in ("silo", "guest", "host"):
                continue
            if s.name == self.name:
                assert js.dataset is not None
                out[s.name] = FileSource(self.cfg.dataset_path(js.dataset), self.name)
            else:
                out[s.name] = _schema_in(js.schemas[s.name], silo=s.name)
        return out

    def _plan(self, js: _Job) -> tuple[Any, Any]:
        """``task.plan`` of the job from the declared schemas (and this silo's own file)."""
        from fedsilo.silos.runner import JobContext, get_task

        ctx = JobContext(js.job, self._sources(js), self.cfg.ledger_path.parent)
        return get_task(js.task).plan(js.cfg, ctx)

    def _run_party(self, js: _Job) -> None:
        from fedsilo.silos.runner import get_task

        start = time.perf_counter()
        sent = 0
        report: Any = None
        error: PartyError | None = None
        try:
            task = get_task(js.task)
            js.step = "plan"
            plan, parties = self._plan(js)
            mine = next(p for p in parties if p.name == self.name)
            ledger = None
            if mine.ledger is not None:
                assert js.dataset is not None
                ledger = AgentLedgerSpec(self.cfg.ledger_path, silo=self.name, dataset=js.dataset,
                                         budget=self.ledger.budget(js.dataset), accountant=self.ledger.accountant,
                                         job=js.job, cap=js.cap, audit=self.audit)
            source = FileSource(self.cfg.dataset_path(js.dataset), self.name) if js.dataset else None
            mine = dataclasses.replace(mine, source=source, ledger=ledger, noise_seed=None)
            if js.coordinator == self.name:
                js.plan, js.planned = plan, parties
            js.step = "start"
            addresses = self.peer_addresses()
            peers = {p: addresses[p] for p in sorted(js.talks_to) if p in addresses}
            if len(peers) != len(js.talks_to):
                raise ConfigError(f"silo {self.name!r}: no address for {sorted(js.talks_to - set(peers))} in [peers]")
            droppable = {p for p, r in js.parties.items() if r == "silo"}
            if js.abort.is_set():
                raise JobAbortedError(js.abort_reason)
            with _AgentChannel(self.server, job=js.job, peers=peers, options=self.options, abort=js.abort,
                               droppable=droppable, gone=js.gone, senders=js.senders) as channel:
                try:
                    report = task.party(plan, mine, channel, progress=lambda ev: self._party_progress(js, ev))
                finally:
                    sent = channel.bytes_sent
        except BaseException as exc:  # noqa: BLE001 - reported to the submitter
            if js.abort.is_set() and not isinstance(exc, (DataError, ConfigError)):
                # this agent stopping is the cause of the others' failures; an abort it was sent is not
                exc = (AgentStoppingError if self._draining else JobAbortedError)(js.abort_reason)
            error = PartyError.from_exception(self.name, js.step, exc)
            self.audit.write("party_failed", job=js.job, step=js.step, error=type(exc).__name__, message=one_line(exc))
            if not isinstance(exc, FedsiloError):
                log.exception("party %s of job %s failed", self.name, js.job)
            else:
                log.info("party %s of job %s failed at %s: %s", self.name, js.job, js.step, exc)
        seconds = time.perf_counter() - start
        role = js.parties[self.name]
        if error is None:
            try:
                wire = {} if js.coordinator == self.name else outgoing(js.task, role, report)
                outcome = PartyOutcome(self.name, "ok", seconds, sent, wire)
            except Exception as exc:  # noqa: BLE001
                outcome = PartyOutcome(self.name, "failed", seconds, sent, None,
                                       PartyError.from_exception(self.name, "report", exc))
        else:
            outcome = PartyOutcome(self.name, "failed", seconds, sent, None, error)
        if js.coordinator != self.name:
            with self._lock:
                if js.state == "running":
                    js.state = "completed" if outcome.status == "ok" else "failed"
                js.finished = time.time()
        if js.coordinator == self.name:
            js.local_report = report
            self._record_outcome(js, outcome)
        else:
            self.audit.write("job_finished", job=js.job, status=outcome.status,
                             error=outcome.error.line() if outcome.error else None)
            try:
                self._call(js.coordinator, "Report", {"job": js.job, "party": self.name, "outcome": outcome.to_wire()},
                           attempts=5)
            except FedsiloError as exc:
                self.audit.write("report_undelivered", job=js.job, coordinator=js.coordinator, reason=one_line(exc))
                log.warning("%s: cannot report job %s to %s: %s", self.name, js.job, js.coordinator, exc)

    def _party_progress(self, js: _Job, event: dict[str, Any]) -> None:
        rnd = event.get("round")
        if isinstance(rnd, int):
            js.step = f"round {rnd + 1}"
        if js.coordinator == self.name:
            self._record_progress(js, self.name, dict(event))
            return
        payload = {"job": js.job, "party": self.name, "event": progress_out(event)}

        def send() -> None:
            with contextlib.suppress(FedsiloError):
                self._call(js.coordinator, "Progress", payload, timeout=10.0, attempts=1)

        with contextlib.suppress(RuntimeError):  # the pool is shut down while the agent stops
            self._progress_pool.submit(send)

    def _abort_local(self, js: _Job, reason: str) -> None:
        with self._lock:
            if js.abort.is_set():
                return
            js.abort_reason = reason
            js.abort.set()
            if js.state in ("offered", "running") and js.coordinator != self.name:
                js.state = "aborted"
        self.server.close_job(js.job)  # a party waiting on its inbox stops now
        self.audit.write("job_aborted", job=js.job, reason=reason)

    # -- the coordinator's bookkeeping ------------------------------------------------------------------------
    def _record_progress(self, js: _Job, party: str, event: dict[str, Any]) -> None:
        own = js.parties[self.name] in ("silo", "guest")
        if own and party != self.name:
            return  # this silo's own events carry what it received (the released metrics)
        rnd = event.get("round")
        with self._lock:
            if not isinstance(rnd, int) or rnd in js.rounds_seen:
                return
            js.rounds_seen.add(rnd)
            js.events.append(jsonable({**event, "party": party, "time": time.time()}))

    def _record_outcome(self, js: _Job, outcome: PartyOutcome) -> None:
        with self._lock:
            if outcome.party in js.outcomes or outcome.party in js.missing:
                return
            js.outcomes[outcome.party] = outcome
            done = len(js.outcomes) + len(js.missing) == len(js.parties)
            first_failure = outcome.status == "failed" and js.error is None and js.state == "running"
        if first_failure:
            assert outcome.error is not None
            if outcome.error.type in _SECONDARY and not done:
                # a party woken by another's failure (aborted, timed out waiting) often reports
                # first: give the cause SETTLE seconds to arrive and name the job's error
                timer = threading.Timer(SETTLE, self._settle, args=(js, outcome.error.line()))
                timer.daemon = True  # never holds a stopping agent's process
                timer.start()
                return
            self._fail(js, outcome.error.line())
        elif done and js.state == "running":
            failed = [o.error for o in js.outcomes.values() if o.status == "failed" and o.error is not None]
            if failed and js.error is None:  # only secondary failures, every outcome in: the first one
                self._fail(js, failed[0].line())
            else:
                self._finish(js)

    def _settle(self, js: _Job, line: str) -> None:
        with self._lock:
            pending = js.error is None and js.state == "running"
        if pending:
            self._fail(js, line)

    def _fail(self, js: _Job, message: str, *, state: str = "failed") -> None:
        with self._lock:
            if js.state in _TERMINAL:
                return
            js.state, js.error, js.finished = state, message, time.time()
        self.audit.write("job_finished", job=js.job, status=state, error=message)
        self._abort_local(js, message)
        others = [p for p in js.parties if p != self.name and p not in js.missing]

        def tell(p: str) -> None:
            with contextlib.suppress(FedsiloError):
                self._call(p, "Abort", {"job": js.job, "reason": message}, timeout=10.0, attempts=2)

        threads = [threading.Thread(target=tell, args=(p,), daemon=True) for p in others]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15.0)
        self._save(js)

    def _finish(self, js: _Job) -> None:
        from fedsilo.silos.runner import get_task

        try:
            results = self._results(js, get_task(js.task))
        except FedsiloError as exc:
            self._fail(js, one_line(exc))
            return
        except Exception as exc:  # noqa: BLE001
            log.exception("results of job %s", js.job)
            self._fail(js, f"assembling the results failed: {type(exc).__name__}: {one_line(exc)}")
            return
        with self._lock:
            js.results = results
            js.results_blob = codec.encode(results)
            js.state, js.finished = "completed", time.time()
        self.audit.write("job_finished", job=js.job, status="completed")
        self._save(js)

    def _results(self, js: _Job, task: Any) -> dict[str, Any]:
        import numpy as np

        from fedsilo.silos.runner import JobRun

        reports: dict[str, Any] = {}
        for party, role in js.parties.items():
            if party == self.name:
                reports[party] = for_results(js.task, role, js.local_report)
            elif party in js.missing:
                reports[party] = _missing_report(js.task, role, party, js.missing[party])
            else:
                reports[party] = incoming(js.task, role, party, js.outcomes[party].report)
        sent = {p: o.bytes_sent for p, o in js.outcomes.items()}
        wall = (js.finished or time.time()) - (js.started or time.time())
        run = JobRun(reports, sent, "agents", self.transport, wall)
        parties = list(js.planned)
        if js.task == "horizontal":
            from fedsilo.silos.tasks.horizontal import SiloRows

            n = js.plan.job.n_features
            parties = [dataclasses.replace(p, source=SiloRows(np.zeros((0, n)), np.zeros(0), None)) if p.role == "silo"
                       else p for p in parties]
        results = task.results(js.plan, parties, run)
        notes = list(results.get("notes") or [])
        if js.task == "horizontal":
            results["silo_metrics"] = {k: v for k, v in (results.get("silo_metrics") or {}).items() if k == self.name}
            results["simulation_metrics"] = {}
            notes.append("agents: no simulation_metrics (no party holds every silo's held-out rows); silo_metrics "
                         "holds only this silo's own held-out metrics, known only to it")
            if js.parties[self.name] != "silo":
                notes.append("the federated metrics are released to the silos only; the aggregator receives none")
        if js.task == "vertical":
            results["simulation_metrics"] = {}
            notes = [n.split("; 'simulation_metrics' are computed by the simulation")[0] for n in notes]
            notes.append("agents: no simulation_metrics (each party keeps its own part of the model)")
        for party, why in js.missing.items():
            if isinstance(results.get("epsilon"), dict) and party in results["epsilon"]:
                results["epsilon"][party] = {**results["epsilon"][party], "epsilon": None}
            for row in results.get("rounds") or ():  # its charges are in its own ledger, not in any report here
                if isinstance(row.get("epsilon"), dict) and party in row["epsilon"]:
                    row["epsilon"][party] = None
            notes.append(f"silo {party!r} went missing during the job ({why}); the job continued per its quorum, and "
                         f"{party!r}'s own ledger holds what it spent")
        if js.cfg.crypto.insecure:
            notes.append("NOT PRIVATE: [crypto] insecure = true allowed insecure settings (the plain backend, weak keys, "
                         "no-DP vertical training or sums of two silos): tests and baselines only")
            results["private"] = False
        results["notes"] = notes
        results["engine"], results["transport"] = "agents", self.transport
        results["job"] = js.job
        results["submitted_by"] = self.name
        results["party_seconds"] = {p: o.seconds for p, o in js.outcomes.items()}
        return jsonable(results)

    def _save(self, js: _Job) -> None:
        record = {**self._summary(js), "rounds": _rounds_of(js.cfg), "parties": self._party_states(js),
                  "results": js.results}
        path = self.cfg.jobs_dir / f"{js.job}.json"
        try:
            self.cfg.jobs_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(jsonable(record), allow_nan=False))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot save job %s: %s", js.job, exc)

    def _load(self, job: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.cfg.jobs_dir / f"{job}.json").read_text())
        except (OSError, ValueError):
            return None

    def _monitor(self, js: _Job) -> None:
        """Ping the agents of a running job; one silent ``ping_misses`` times in a row is missing."""
        misses: dict[str, int] = {}
        detail: dict[str, str] = {}
        while not self._closed:
            time.sleep(self.ping_interval)
            with self._lock:
                if js.state != "running":
                    return
                waiting = [p for p in js.parties if p != self.name and p not in js.outcomes and p not in js.missing]
            for p in waiting:
                try:
                    state = self._call(p, "Ping", {"job": js.job}, timeout=max(2.0, self.ping_interval * 2),
                                       attempts=1).get("state")
                    ok = state in ("running", "completed", "failed", "aborted")
                    why = f"its agent does not know the job (state {state!r}; restarted?)"
                except FedsiloError as exc:
                    ok, why = False, f"its agent stopped answering: {one_line(exc, 300)}"
                misses[p] = 0 if ok else misses.get(p, 0) + 1
                detail[p] = why
                if misses[p] >= self.ping_misses:
                    self._on_missing(js, p, detail[p])

    def _on_missing(self, js: _Job, party: str, why: str) -> None:
        with self._lock:
            if js.state != "running" or party in js.outcomes or party in js.missing:
                return
            role = js.parties[party]
            silos = [p for p, r in js.parties.items() if r == "silo"]
            left = [p for p in silos if p != party and p not in js.missing
                    and not (p in js.outcomes and js.outcomes[p].status == "failed")]
            continues = role == "silo" and len(left) >= js.cfg.federation.min_silos
            if continues:
                js.missing[party] = why
            done = len(js.outcomes) + len(js.missing) == len(js.parties)
        who = f"silo {party!r}" if party != AGGREGATOR else "the aggregator"
        self.audit.write("party_missing", job=js.job, party=party, reason=why, continues=continues)
        if not continues:
            need = "" if role != "silo" else f" (the job needs {js.cfg.federation.min_silos} silos, {len(left)} left)"
            self._fail(js, f"{who} is missing: {why}{need}; job stopped")
            return
        js.gone.add(party)  # the parties stop waiting for it: its rounds' deadlines need not pass
        for p in js.parties:
            if p not in (self.name, party) and p not in js.missing:
                with contextlib.suppress(FedsiloError):
                    self._call(p, "Missing", {"job": js.job, "party": party, "reason": why}, timeout=10.0, attempts=2)
        if done:
            self._finish(js)


def _missing_report(task: str, role: str, party: str, why: str) -> Any:
    import numpy as np

    if task == "horizontal":
        from fedsilo.protocols.horizontal.protocol import SiloReport

        return SiloReport(silo=party, status="stopped", params=np.zeros(0), events=(), rounds_contributed=(),
                          reason=f"silo {party!r} went missing: {why}")
    return {"status": "stopped", "reason": f"silo {party!r} went missing: {why}", "charged": False, "contributors": [],
            "statistics": None, "raw": None}


class _AgentChannel(GrpcChannel):
    """A party's channel inside an agent: stops at the next send or receive once its job is
    aborted, and treats a silo whose agent is unreachable, or that the coordinator declared
    missing (``gone``), as a silo that went silent: its messages are lost and nobody waits for
    its messages any longer (as in-process for a dropped silo), so the protocol's quorum
    decides."""

    #: how often a wait re-checks which senders went missing (seconds)
    POLL = 0.5

    def __init__(self, server: PartyServer, *, job: str, peers: Mapping[str, str], options: TransportOptions,
                 abort: threading.Event, droppable: set[str], gone: set[str] | None = None,
                 senders: frozenset[str] | None = None) -> None:
        super().__init__(server, job=job, peers=peers, options=options, senders=senders)
        self._abort = abort
        self._droppable = droppable
        self.gone: set[str] = gone if gone is not None else set()

    def gather(self, senders: Any, kind: str, *, round: int, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        pending = set(senders) - self.gone
        out: dict[str, Any] = {}
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            got = super().gather(pending, kind, round=round, timeout=min(left, self.POLL))
            out.update(got)
            pending = pending - set(got) - self.gone
        return out

    def _check(self) -> None:
        if self._abort.is_set():
            raise JobAbortedError(f"job {self.job!r} was aborted")

    def _deliver(self, envelope: Any) -> None:
        self._check()
        if envelope.recipient in self.gone:
            return
        try:
            super()._deliver(envelope)
        except PeerTimeoutError as exc:
            if envelope.recipient not in self._droppable:
                raise
            self.gone.add(envelope.recipient)
            log.warning("%s: %s is unreachable; treating it as a silo that dropped out of job %s (%s)",
                        self.party, envelope.recipient, self.job, exc)

    def _next(self, deadline: float) -> Any:
        self._check()
        return super()._next(deadline)


# -- the client (the operator's CLI, and one agent calling another) -----------------------------------------
class AgentStoppingError(JobAbortedError):
    """A party's job ended because its own agent is stopping (SIGTERM): the cause of the
    other parties' aborts, so the job's error names it."""


#: failures that follow another party's (woken by its abort, timed out waiting for it)
_SECONDARY = frozenset({"JobAbortedError", "PeerTimeoutError"})
#: seconds the coordinator waits, after a secondary failure, for the failure that caused it
SETTLE = 2.0


def _one_agent_per_ledger(cfg: SiloConfig) -> int:
    """An exclusive lock beside the ledger, held while the agent runs (the descriptor): a
    second agent on the same ledger would overwrite the first one's state file and mix two
    processes' charges in one ledger."""
    import fcntl

    path = cfg.ledger_path.with_name(f"{cfg.ledger_path.stem}.agent.lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ConfigError(f"key 'ledger.path': cannot create the agent lock {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ConfigError(
            f"another agent already serves ledger {cfg.ledger_path} (its state: {cfg.state_path}); stop it first, "
            "or give this agent its own [ledger] path"
        ) from None
    return fd


class AgentClient:
    """Calls the ``Control`` service of one agent: ``me`` authenticates with ``tls`` (its
    certificate), and the server's certificate must name ``peer``."""

    def __init__(self, *, me: str, peer: str, address: str, tls: TlsFiles | None,
                 options: TransportOptions | None = None) -> None:
        self.me, self.peer, self.address, self.tls = me, peer, address, tls
        self.options = options or TransportOptions()
        opts = [
            ("grpc.max_send_message_length", 4 * 1024 * 1024 + 1024),  # a job's TOML, the schemas
            ("grpc.max_receive_message_length", 4 * 1024 * 1024 + 1024),
            ("grpc.enable_retries", 0),  # one layer of retries: call()
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if tls is None:
            self._channel = grpc.insecure_channel(address, options=opts)
            self._metadata: tuple[tuple[str, str], ...] = (("fedsilo-party", me),)
        else:
            creds = grpc.ssl_channel_credentials(root_certificates=tls.ca, private_key=tls.key, certificate_chain=tls.cert)
            # the server must prove it is the silo we mean, whatever the address
            self._channel = grpc.secure_channel(address, creds, options=[*opts, ("grpc.ssl_target_name_override", identity_name(peer))])
            self._metadata = ()

    @classmethod
    def for_silo(cls, cfg: SiloConfig) -> "AgentClient":
        """The operator's client of its own agent (its own certificate), at the address the
        running agent wrote in its state file (or ``[silo] listen``)."""
        tls = None
        if cfg.tls is not None:
            tls = load_tls(cfg.resolve(cfg.tls.ca), cfg.resolve(cfg.tls.cert), cfg.resolve(cfg.tls.key))
        return cls(me=cfg.name, peer=cfg.name, address=agent_address(cfg), tls=tls)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "AgentClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _raw(self, method: str, request: bytes, timeout: float, attempts: int) -> bytes:
        fn = self._channel.unary_unary(method)
        policy = RetryPolicy(attempts=max(1, attempts), initial_backoff=0.2, max_backoff=2.0)
        delays = policy.delays()
        while True:
            try:
                return fn(request, timeout=timeout, metadata=self._metadata)
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
                details = (exc.details() if hasattr(exc, "details") else None) or code.name
                if code == grpc.StatusCode.UNAVAILABLE:
                    delay = next(delays, None)
                    if delay is not None:
                        time.sleep(delay)
                        continue
                    if any(h in details.lower() for h in ("handshake", "ssl", "tls", "certificate")):
                        raise PeerRejectedError(f"silo {self.peer!r} at {self.address}: TLS handshake failed ({details})") from None
                    raise PeerTimeoutError(f"silo {self.peer!r} at {self.address} is unreachable ({one_line(details, 300)})") from None
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise PeerTimeoutError(f"silo {self.peer!r} at {self.address}: no answer within {timeout:g}s") from None
                raise PeerRejectedError(f"silo {self.peer!r} at {self.address} refused: {code.name}: {one_line(details, 500)}") from None

    def call(self, method: str, payload: dict[str, Any], *, timeout: float = 30.0, attempts: int = 3) -> dict[str, Any]:
        reply = codec.decode(self._raw(f"/{CONTROL_SERVICE}/{method}", codec.encode(payload), timeout, attempts))
        if not isinstance(reply, dict):
            raise ProtocolError(f"silo {self.peer!r}: malformed {method} reply")
        return reply

    def health(self, *, timeout: float = 10.0) -> dict[str, Any]:
        reply = codec.decode(self._raw(HEALTH, b"", timeout, 2))
        if not isinstance(reply, dict):
            raise ProtocolError(f"silo {self.peer!r}: malformed Health reply")
        return reply

    # -- the operator's calls --------------------------------------------------------------------------------
    def _checked(self, reply: dict[str, Any]) -> dict[str, Any]:
        if reply.get("error") and "state" not in reply:
            raise (ConfigError if reply.get("bad_input") else ProtocolError)(str(reply["error"]))
        return reply

    def submit(self, text: str, *, source: str = "JOB.toml", timeout: float = OFFER_TIMEOUT + 60.0) -> dict[str, Any]:
        return self._checked(self.call("Submit", {"toml": text, "source": source}, timeout=timeout, attempts=1))

    def status(self, job: str, *, since: int = 0) -> dict[str, Any]:
        return self._checked(self.call("Status", {"job": job, "since": since}, timeout=10.0))

    def results(self, job: str) -> dict[str, Any]:
        """``{"job", "state", "error", "results"}`` (results None unless completed)."""
        first = self._checked(self.call("Results", {"job": job, "offset": 0}, timeout=30.0))
        blob = bytes(first.get("chunk") or b"")
        total = int(first.get("total") or 0)
        while len(blob) < total:
            more = self._checked(self.call("Results", {"job": job, "offset": len(blob)}, timeout=30.0))
            chunk = bytes(more.get("chunk") or b"")
            if not chunk:
                raise ProtocolError(f"silo {self.peer!r}: results of job {job!r} ended early")
            blob += chunk
        results = codec.decode(blob) if total else None
        return {"job": job, "state": first.get("state"), "error": first.get("error"), "results": results}

    def jobs(self) -> list[dict[str, Any]]:
        return list(self._checked(self.call("List", {}, timeout=10.0)).get("jobs") or [])

    def wait(self, job: str, *, progress: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
             poll: float = 0.25, timeout: float | None = None) -> dict[str, Any]:
        """Poll ``Status`` until the job ends; ``progress(status, event)`` per new round."""
        since = 0
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            st = self.status(job, since=since)
            for ev in st.get("events") or []:
                if progress is not None:
                    progress(st, ev)
            since = int(st.get("next") or since)
            if st.get("state") in _TERMINAL:
                return st
            if deadline is not None and time.monotonic() > deadline:
                raise PeerTimeoutError(f"job {job!r} did not finish within {timeout:g}s (state {st.get('state')!r})")
            time.sleep(poll)


def agent_address(cfg: SiloConfig) -> str:
    """Where the silo's running agent listens: its state file (written at start, with the bound
    port), else ``[silo] listen`` (a wildcard host dialed as loopback)."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        state = json.loads(cfg.state_path.read_text())
        pid = int(state["pid"])
        os.kill(pid, 0)
        return str(state["address"])
    host, port = split_address(cfg.silo.listen, allow_port_zero=True)
    if port == 0:
        raise ConfigError(
            f"silo {cfg.name!r}: no running agent found ({cfg.state_path} is missing or stale) and [silo] listen has "
            "port 0; start it with `fedsilo silo start --config ...`"
        )
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- the process ------------------------------------------------------------------------------------------
class _HandshakeTap:
    """Tees the process's stderr: gRPC core logs a failed TLS handshake there (no Python code
    runs for it), and each such line is also written to the audit log as a refused peer."""

    MARK = b"Handshake failed"

    def __init__(self, on_line: Callable[[str], None]) -> None:
        self._on_line = on_line
        self._orig = os.dup(2)
        r, w = os.pipe()
        os.dup2(w, 2)
        os.close(w)
        self._r = r
        self._thread = threading.Thread(target=self._pump, name="stderr-tap", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._r, 65536)
            except OSError:
                break
            if not chunk:
                break
            view = memoryview(chunk)
            while view:
                try:
                    view = view[os.write(self._orig, view):]
                except OSError:
                    break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if self.MARK in line:
                    with contextlib.suppress(Exception):
                        self._on_line(one_line(line.decode("utf-8", "replace"), 500))
            buf = buf[-65536:]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.dup2(self._orig, 2)  # the pipe's last writer goes: the pump ends
        self._thread.join(2.0)
        with contextlib.suppress(OSError):
            os.close(self._r)
        with contextlib.suppress(OSError):
            os.close(self._orig)


def _warm_up() -> None:
    with contextlib.suppress(Exception):
        from fedsilo.silos.runner import task_names

        task_names()


def serve(config: str | Path, *, announce: Callable[[dict[str, Any]], None] | None = None,
          tap_stderr: bool = True) -> None:
    """Run the agent of ``config`` until SIGTERM or SIGINT, then stop it cleanly (returns).

    ``announce`` receives ``{"event": "listening", "silo", "address", "pid", ...}`` once the
    agent serves (the CLI prints it as one JSON line)."""
    path = Path(config)
    cfg = load_silo_config(path)
    stop = threading.Event()
    why: list[str] = []

    def on_signal(signum: int, frame: Any) -> None:
        why.append(signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    tap = None
    try:
        agent = Agent(cfg, config_path=path)
        # a long-lived agent loads the tasks (and torch) now, not inside its first job's deadlines
        threading.Thread(target=_warm_up, name="warm-up", daemon=True).start()
        if tap_stderr:
            with contextlib.suppress(OSError):
                tap = _HandshakeTap(lambda line: agent.audit.write("peer_refused", peer=None,
                                                                   reason=f"TLS handshake failed: {line}"))
        try:
            if announce is not None:
                announce({"event": "listening", "silo": agent.name, "address": agent.address, "pid": os.getpid(),
                          "transport": agent.transport, "audit": str(cfg.audit_path), "ledger": str(cfg.ledger_path)})
            while not stop.wait(0.5):
                pass
        finally:
            agent.close(f"received {why[0]}" if why else "stopped")
    finally:
        if tap is not None:
            tap.close()
        for s, h in previous.items():
            signal.signal(s, h)
