"""The ``ray`` engine: every party of a job a Ray actor, over real gRPC with mutual TLS.

:class:`RayEngine` (``run_job(cfg, engine="ray")``, ``fedsilo simulate --engine ray``; the
optional extra ``pip install 'fedsilo[ray]'``) runs what a :mod:`~fedsilo.silos.engines`
``processes`` child runs, in a Ray actor instead of a child process: its own
:class:`~fedsilo.silos.transport.PartyServer` with its own certificate from a throw-away
federation CA, a :class:`~fedsilo.silos.transport.GrpcChannel` to its peers (mutual TLS,
allow-list = the job's parties) and the same ``Task.party`` function. Ray places the parties and
owns their lifecycle; their messages never go through Ray (not its object store, not its
calls): only the start-up, the reports, the errors and the progress events do.

One job, seen from the driver::

    Ray: the caller's (ray.init done)     else a private local Ray (address="local") started
                                          here and shut down at the end, or RAY_ADDRESS /
                                          address= joined (and left) for a cluster
    one actor per party (num_cpus=0)      ──► node()  each: its node id and IP, once every
                                          worker has started
    one node: host 127.0.0.1, else each party binds its node's IP
    init_federation(tmp, hosts=...)       the CA key deleted at once; each party's PEM files
                                          read and checked (load_tls), the directory removed
    ──► listen(fn, tls, allow, host)      each: unpickle its party function (the task's
                                          imports), PartyServer(host, port=0) ──► its port
    all listening ──► run(job, peers)     each: GrpcChannel, fn(channel) ──► its report
    progress events                       through one Ray queue, relayed on the driver's thread
    all reported ──► close()              each: close its channel and server
    finally                               ray.kill every actor of the job (its process group
                                          with it); a Ray started here is shut down

Certificates: each party receives its own certificate and key as PEM bytes, as the argument
of one actor call (never the actor's constructor, whose arguments Ray keeps for restarts).
Nothing is written on the actor's node. On a multi-node cluster those bytes cross Ray's own
connections: turn on Ray's TLS there (``RAY_USE_TLS``), as for anything secret a Ray job
carries. Identity does not rest on addresses: a client checks the server's certificate against
the peer's identity name (``grpc.ssl_target_name_override``), and the node IPs are added as
IP SANs only so the certificates describe where they are used.

Errors: an actor never raises; it returns its party's exception as
:func:`~fedsilo.silos.engines.error_info`, rebuilt on the driver as the same class with the
remote traceback as a note (``raised in the Ray actor of party 'x'``). The first error wins (a
:class:`~fedsilo.errors.JobAbortedError` or :class:`~fedsilo.errors.PeerTimeoutError` yields to
a primary one, as in the processes engine) and every actor of the job is killed at once. An
actor that dies (out of memory, a node lost) is a :class:`~fedsilo.errors.ProtocolError`
naming its party.

No orphans: ``ray.kill`` ends an actor's worker process and, Ray's workers each leading a
process group, whatever it started; a local Ray this engine started (its raylet, GCS, workers)
is shut down in ``finally`` (success, a party's error, KeyboardInterrupt), and its session
directory removed. Ray's own processes ignore Ctrl-C and die with the driver
(``PR_SET_PDEATHSIG``), the parties' workers with their raylet; only Ray's two node agents,
after a driver killed outright, take about a minute to notice.

``JobRun.seconds``: from the moment every party is listening to the last report, as in the
processes engine (Ray start-up, actor start-up, imports, certificates and servers excluded and
logged at INFO).
"""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from fedsilo.errors import ConfigError, PeerTimeoutError, ProtocolError
from fedsilo.protocols.channel import Channel
from fedsilo.silos.certs import DEFAULT_HOSTS, init_federation, load_tls
from fedsilo.silos.engines import CA_NAME, SETTLE, error_info, primary_error, rebuild_error, ship_party
from fedsilo.silos.registry import Engine, JobRun
from fedsilo.silos.transport import TransportOptions

__all__ = ["MISSING_EXTRA", "RayEngine"]

log = logging.getLogger(__name__)

#: The error when Ray is not installed.
MISSING_EXTRA = "the ray engine needs the optional extra: pip install 'fedsilo[ray]'"
#: Where the parties' notes say an error was raised.
WHERE = "Ray actor"
#: Object store of a local Ray started here: the parties' messages never use it (only small
#: start-up arguments and reports do), so Ray's minimum instead of 30 % of the machine's memory.
OBJECT_STORE_BYTES = 80 * 1024 * 1024
#: Default start-up deadline: this, plus so much per party. Each party costs a Ray worker and
#: the task's imports (torch: several CPU-seconds and ~300 MB), and on a small machine they all
#: share the same cores, so the deadline grows with the job.
STARTUP_SECONDS = 120.0
STARTUP_SECONDS_PER_PARTY = 10.0
#: Seconds between two looks at the progress queue while the parties run.
POLL = 0.2
LOOPBACK = "127.0.0.1"


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(MISSING_EXTRA) from None
    return ray


class RayEngine(Engine):
    """Every party a Ray actor with its own gRPC server, over mutual TLS and a throw-away CA.

    ``address``: the Ray cluster to join (default: ``RAY_ADDRESS`` if set, else a private local
    Ray started for the job and shut down after it; ``"local"`` always starts one). A Ray the
    caller initialized already is used as it is and left running. ``num_cpus``: CPUs of a local
    Ray started here (default: this process's CPUs; the actors reserve none, so any number of
    parties fits). ``startup_timeout``: seconds every actor has to start and listen (Ray worker,
    imports, certificate, server; default :data:`STARTUP_SECONDS` plus
    :data:`STARTUP_SECONDS_PER_PARTY` per party). ``grace``: seconds the parties have to close their channels
    and servers after the job before their actors are killed. ``options``: each party's
    transport options (default :class:`~fedsilo.silos.transport.TransportOptions`).

    Raises :class:`~fedsilo.errors.ConfigError` (:data:`MISSING_EXTRA`) when Ray is not installed.
    """

    name = "ray"
    transport = "grpc+mtls"

    def __init__(self, *, address: str | None = None, num_cpus: int | None = None,
                 startup_timeout: float | None = None, grace: float = 3.0,
                 options: TransportOptions | None = None) -> None:
        _import_ray()
        for key, value in (("startup_timeout", startup_timeout), ("grace", grace)):
            if key == "startup_timeout" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"ray engine: {key} must be a positive number of seconds, got {value!r}")
        if num_cpus is not None and (isinstance(num_cpus, bool) or not isinstance(num_cpus, int) or num_cpus < 1):
            raise ConfigError(f"ray engine: num_cpus must be an integer >= 1, got {num_cpus!r}")
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise ConfigError(f"ray engine: address must be a Ray address ('auto', 'HOST:PORT'), got {address!r}")
        self.address = address
        self.num_cpus = num_cpus
        self.startup_timeout = None if startup_timeout is None else float(startup_timeout)
        self.grace = float(grace)
        self.options = options or TransportOptions()

    def run(self, job: str, parties: Mapping[str, Callable[[Channel], Any]]) -> JobRun:
        if not parties:
            raise ConfigError("ray engine: a job needs at least one party")
        shipped = {n: ship_party(n, fn, engine="ray", where=WHERE) for n, fn in parties.items()}  # before Ray starts
        progress = {n: p for n, (_, p) in shipped.items() if p is not None}
        ray = _import_ray()
        with _session(ray, address=self.address, num_cpus=self.num_cpus, parties=len(parties)):
            actors: dict[str, Any] = {}
            inbox = None
            try:
                began = time.perf_counter()
                timeout = self.startup_timeout or STARTUP_SECONDS + STARTUP_SECONDS_PER_PARTY * len(parties)
                deadline = time.monotonic() + timeout
                cls = _actor_class(ray)
                for n in parties:
                    # no CPU reserved: a party mostly waits for its peers, so 50 fit on 2 cores
                    # (Ray then sets OMP_NUM_THREADS=1); SPREAD shares a cluster's nodes out
                    actors[n] = cls.options(num_cpus=0, scheduling_strategy="SPREAD").remote(n)
                # every worker first: Ray starts only a few at a time, and parties importing their
                # task meanwhile would starve those starts of CPU (on 2 cores, many times over)
                nodes = _gather(ray, {n: a.node.remote() for n, a in actors.items()}, deadline, "start")
                log.info("job %s: %d party actors started after %.2fs", job, len(actors), time.perf_counter() - began)
                hosts = _bind_hosts(nodes)
                tls = _party_tls(list(parties), sorted(set(hosts.values()) - {LOOPBACK}))
                if progress:
                    from ray.util.queue import Queue

                    inbox = Queue(actor_options={"num_cpus": 0})
                names, path = list(parties), [p for p in sys.path if p]
                ports = _gather(ray, {n: a.listen.remote(shipped[n][0], path, tls.pop(n), names, hosts[n],
                                                         self.options) for n, a in actors.items()},
                                deadline, "listen")
                peers = {n: _address(hosts[n], int(ports[n])) for n in parties}
                log.info("job %s: %d party actors listening after %.2fs", job, len(actors), time.perf_counter() - began)
                start = time.perf_counter()
                runs = {a.run.remote(job, peers, inbox if n in progress else None): n for n, a in actors.items()}
                outcomes = _collect(ray, runs, inbox, progress)
                seconds = time.perf_counter() - start
                # every party reported: none sends any more, so each may close its server now
                ray.wait([a.close.remote() for a in actors.values()], num_returns=len(actors), timeout=self.grace)
            finally:
                _kill(ray, [*actors.values(), *([inbox.actor] if inbox is not None else [])])
        return JobRun({n: outcomes[n][0] for n in parties}, {n: outcomes[n][1] for n in parties},
                      self.name, self.transport, seconds)


# -- the driver's side ----------------------------------------------------------------------------
_LOCK = threading.Lock()
#: jobs of this process using a Ray this module started (the last one shuts it down)
_STARTED: dict[str, Any] = {"users": 0, "tmp": None}


@contextlib.contextmanager
def _session(ray: Any, *, address: str | None, num_cpus: int | None, parties: int) -> Iterator[None]:
    """A Ray to run on for one job: the caller's, or one started (or joined) and ended here.
    Jobs running at once in one process share the Ray the first of them started (with its
    settings), and the last to finish ends it."""
    with _LOCK:
        if _STARTED["users"]:  # another job of this process started it: share it
            _STARTED["users"] += 1
            owned = True
        elif not ray.is_initialized():
            _STARTED["tmp"] = _init(ray, address=address, num_cpus=num_cpus, parties=parties)
            _STARTED["users"] = 1
            owned = True
        else:  # the caller's: used as it is, left running
            owned = False
    try:
        yield
    finally:
        if owned:
            with _LOCK:
                _STARTED["users"] -= 1
                if not _STARTED["users"]:
                    tmp, _STARTED["tmp"] = _STARTED["tmp"], None
                    _shutdown(ray)
                    if tmp is not None:
                        shutil.rmtree(tmp, ignore_errors=True)


def _init(ray: Any, *, address: str | None, num_cpus: int | None, parties: int) -> str | None:
    """``ray.init`` for this engine: a private local Ray, or the cluster at ``address`` /
    ``RAY_ADDRESS``; returns the local Ray's session directory (removed after the job)."""
    target = address or os.environ.get("RAY_ADDRESS") or "local"
    # the workers' output stays in their log files: one line per party per round is noise here
    quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
    if target != "local":
        if num_cpus is not None:
            raise ConfigError(f"ray engine: num_cpus applies to a local Ray only, not to the cluster at {target!r}")
        try:
            ray.init(address=target, **quiet)
        except Exception as exc:  # noqa: BLE001 - Ray raises many kinds; each means "cannot join"
            raise ConfigError(f"ray engine: cannot join the Ray cluster at {target!r}: {_first_line(exc)}") from None
        return None
    tmp = tempfile.mkdtemp(prefix="fedsilo-ray-", dir=_short_tmp())
    try:
        ray.init(
            address="local", num_cpus=num_cpus or _cpus(), include_dashboard=False,
            object_store_memory=OBJECT_STORE_BYTES, _temp_dir=tmp,
            # Ray prints a warning to the driver for every few workers beyond 4x its CPUs, not
            # counting 2 x max_io_workers; one worker per party is this engine's design, so the
            # allowance covers the parties. (I/O workers only spill objects, which a job of
            # tiny start-up arguments and reports never does.)
            _system_config={"max_io_workers": (parties + 1) // 2 + 4}, **quiet,
        )
    except BaseException as exc:  # noqa: BLE001 - a half-started Ray (or Ctrl-C) must not outlive this
        if ray.is_initialized():
            _shutdown(ray)
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(exc, Exception):
            raise
        raise ConfigError(f"ray engine: cannot start a local Ray: {_first_line(exc)}") from None
    _private_token()
    return tmp


def _private_token() -> None:
    """Ray (2.60) writes the token of its token authentication to ``~/.ray/auth_token`` with
    the process umask (often 0644), and a local Ray listens on every interface: anyone on the
    host who reads the token could run code in the party actors. Keep it the user's own."""
    token = Path.home() / ".ray" / "auth_token"
    with contextlib.suppress(OSError):
        if token.is_file() and token.stat().st_uid == os.getuid() and token.stat().st_mode & 0o077:
            os.chmod(token, 0o600)


def _cpus() -> int:
    """The CPUs this process may run on (its affinity where the OS has one)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)


def _short_tmp() -> str:
    """Where a local Ray's session directory goes: the temporary directory, unless its path is
    too long for the Unix sockets Ray puts ~85 characters below it (107 bytes at most)."""
    tmp = tempfile.gettempdir()
    return tmp if len(tmp) <= 20 else "/tmp"


def _shutdown(ray: Any) -> None:
    try:
        ray.shutdown(wait_for_processes=True)  # every raylet, GCS and worker gone when run returns
    except TypeError:  # a Ray before wait_for_processes
        ray.shutdown()


def _actor_class(ray: Any) -> Any:
    """:class:`_PartyActor` as a Ray actor class (anew for each job: a Ray shut down forgets
    the classes it was given)."""
    return ray.remote(_PartyActor)


def _bind_hosts(nodes: Mapping[str, tuple[str, str]]) -> dict[str, str]:
    """Each party's listen address: loopback when every party is on one node, else its node's IP."""
    if len({node for node, _ in nodes.values()}) == 1:
        return {n: LOOPBACK for n in nodes}
    return {n: ip for n, (_, ip) in nodes.items()}


def _party_tls(names: list[str], node_ips: list[str]) -> dict[str, tuple[bytes, bytes, bytes, str, Any]]:
    """Each party's checked TLS files from a throw-away CA, as PEM bytes in memory."""
    with tempfile.TemporaryDirectory(prefix="fedsilo-ca-") as tmp:
        fed = init_federation(Path(tmp) / "federation", federation=CA_NAME, silos=names,
                              hosts=[*DEFAULT_HOSTS, *node_ips])
        fed.ca_key.unlink()  # nothing more is ever issued
        out = {}
        for silo in fed.silos:
            tls = load_tls(fed.ca_cert, silo.cert, silo.key)
            # TlsFiles refuses pickling; the fields go, by name, to the one party they belong to
            out[silo.name] = (tls.ca, tls.cert, tls.key, tls.name, tls.not_after)
    return out


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _gather(ray: Any, refs: Mapping[str, Any], deadline: float, step: str) -> dict[str, Any]:
    """Every party's answer to one start-up call; the first party's error, an actor that died, or
    a :class:`PeerTimeoutError` naming the late ones at ``deadline``."""
    by_ref = {ref: n for n, ref in refs.items()}
    ready, late = ray.wait(list(by_ref), num_returns=len(by_ref), timeout=max(0.0, deadline - time.monotonic()))
    answers, errors = {}, []
    for ref in ready:
        name = by_ref[ref]
        outcome = _outcome(ray, name, ref)
        if outcome[0] == "error":
            errors.append(outcome[1])
        else:
            answers[name] = outcome[1]
    if errors:
        raise primary_error(errors)
    if late:
        names = sorted(by_ref[r] for r in late)
        raise PeerTimeoutError(f"ray engine: party actor(s) {names} did not {step} in time; raise startup_timeout "
                               "(RayEngine(startup_timeout=...)) or check the Ray cluster's CPU and memory")
    return answers


def _collect(ray: Any, runs: Mapping[Any, str], inbox: Any, progress: Mapping[str, Callable[..., None]]
             ) -> dict[str, tuple[Any, int]]:
    """Wait for every party's report, relaying progress; raise the first party's error."""
    pending = dict(runs)
    reports: dict[str, tuple[Any, int]] = {}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL)
        _relay(inbox, progress)
        errors = []
        for ref in ready:
            name = pending.pop(ref)
            outcome = _outcome(ray, name, ref)
            if outcome[0] == "error":
                errors.append(outcome[1])
            else:
                reports[name] = outcome[1]
        if errors:
            # a moment for errors already on their way, so the earliest one is chosen among all
            more, _ = ray.wait(list(pending), num_returns=len(pending), timeout=SETTLE) if pending else ([], [])
            errors += [o[1] for o in (_outcome(ray, pending[r], r) for r in more) if o[0] == "error"]
            raise primary_error(errors)
    _relay(inbox, progress)  # a party's events are queued before its report returns
    return reports


def _outcome(ray: Any, name: str, ref: Any) -> tuple[str, Any]:
    """``("ok", value)`` or ``("error", (time, name, exception))`` of one actor call."""
    try:
        kind, *value = ray.get(ref)
    except ray.exceptions.RayError as exc:
        return "error", (time.time(), name, ProtocolError(
            f"party {name!r}: its Ray actor failed before it reported ({type(exc).__name__}: {_first_line(exc)}); "
            "out of memory, a lost node, or fedsilo missing on a node of the cluster?"
        ))
    if kind == "error":
        return "error", (value[0]["at"], name, rebuild_error(name, value[0], where=WHERE))
    if kind == "report":
        try:
            return "ok", (pickle.loads(value[0]), int(value[1]))
        except Exception as exc:  # noqa: BLE001 - whatever the report's classes do when unpickled
            return "error", (time.time(), name, ProtocolError(f"party {name!r}: its report cannot be read ({exc})"))
    return "ok", value[0]


def _relay(inbox: Any, progress: Mapping[str, Callable[..., None]]) -> None:
    """Hand the queued progress events to each party's callable, on this (the driver's) thread."""
    if inbox is None:
        return
    size = inbox.qsize()
    if size:
        for name, event in inbox.get_nowait_batch(size):
            progress[name](event)


def _kill(ray: Any, actors: list[Any]) -> None:
    for actor in actors:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # noqa: BLE001 - dead already, or Ray is going down: nothing left to end
            pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- the actor's side ----------------------------------------------------------------------------
class _PartyActor:
    """One party in a Ray worker: its server, its channel, its party function. No method raises:
    each returns ``(kind, ...)``, an error as ``("error", error_info(exc))``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.fn: Callable[..., Any] | None = None
        self.server: Any = None
        self.channel: Any = None

    def node(self) -> tuple[str, tuple[str, str]]:
        """Where this actor runs: ``(node id, node IP)``."""
        import ray

        return "ok", (ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address())

    def listen(self, payload: bytes, path: list[str], tls: tuple[bytes, bytes, bytes, str, Any], names: list[str],
               host: str, options: TransportOptions) -> tuple[str, Any]:
        """Load the party function, start this party's server on ``host`` (port 0) behind the
        allow-list ``names``; its port.

        ``path``: the driver's ``sys.path``; its directories this node has are appended (after
        the worker's own), so a party function pickled by reference imports here as it would in
        a processes-engine child (which inherits the parent's path)."""
        try:
            from fedsilo.silos.certs import TlsFiles
            from fedsilo.silos.transport import PartyServer

            sys.path.extend(p for p in path if p not in sys.path and os.path.isdir(p))
            self.fn = pickle.loads(payload)  # imports the task's modules (torch, ...): part of start-up
            ca, cert, key, name, not_after = tls
            files = TlsFiles(ca=ca, cert=cert, key=key, name=name, not_after=not_after)
            self.server = PartyServer(allow=names, tls=files, host=host, port=0, options=options)
            return "ok", self.server.port
        except BaseException as exc:  # noqa: BLE001 - every failure goes to the driver
            return "error", error_info(exc)

    def run(self, job: str, peers: Mapping[str, str], inbox: Any) -> tuple[Any, ...]:
        """Run the party over a channel to ``peers``: its report pickled, and its bytes sent."""
        try:
            from fedsilo.silos.transport import GrpcChannel

            if self.fn is None or self.server is None:
                raise ProtocolError(f"party {self.name!r}: run before listen")
            self.channel = GrpcChannel(self.server, job=job, peers=peers)
            if inbox is not None:
                report = self.fn(self.channel, progress=lambda event: inbox.put((self.name, event)))
            else:
                report = self.fn(self.channel)
            try:
                body = pickle.dumps(report)
            except Exception as exc:  # noqa: BLE001
                raise ProtocolError(f"party {self.name!r}: its report cannot be sent to the driver ({exc})") from None
            return "report", body, self.channel.bytes_sent
        except BaseException as exc:  # noqa: BLE001 - every failure goes to the driver
            return "error", error_info(exc)

    def close(self) -> tuple[str, None]:
        """Close the channel and the server (the others may deliver until every one reported)."""
        if self.channel is not None:
            self.channel.close()
        if self.server is not None:
            self.server.stop(grace=0.5)
        return "ok", None
