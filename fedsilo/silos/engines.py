"""Engines beyond ``threads``: every party of a job in its own OS process, over real gRPC with mTLS.

:class:`ProcessesEngine` (``run_job(cfg, engine="processes")``, ``fedsilo simulate --engine
processes``) is the production path on one machine: each party is a child process (``spawn``
start method: torch and gRPC are not fork-safe) with its own :class:`~fedsilo.silos.transport.PartyServer`
on ``127.0.0.1`` port 0 and its own certificate from a throw-away federation CA, and it talks to
its peers through :class:`~fedsilo.silos.transport.GrpcChannel` (mutual TLS, allow-list = the
job's parties). The same ``Task.party`` function runs there as in an agent.

One job, seen from the parent::

    init_federation(tmp)          a CA and one certificate per party (keys 0600), in a
                                  TemporaryDirectory removed after the job; the CA key is
                                  deleted at once (nothing more is ever issued)
    spawn one child per party     each: lead its own process group, unpickle its party
                                  function, load_tls, PartyServer(port=0) ──► ("ready", port)
    all ready ──► ("peers", {name: 127.0.0.1:port})        each: GrpcChannel, fn(channel)
    ◄── ("progress", event)*      relayed to the parent's progress callback
    ◄── ("report", report, bytes_sent) | ("error", ...)    first error: the others are terminated
    all reported ──► ("exit",)    each: close its channel and server, exit 0

Messages travel over two ``multiprocessing`` pipes per child (``ctl``: parent → child, ``out``:
child → parent), pickled: the children are this process's own, trusted.

No orphans: every child leads its own process group, so whatever it starts (a Paillier process
pool, say) is stopped with it. The parent, in ``finally`` (success, a party's error,
KeyboardInterrupt), sends SIGTERM to each child's group, SIGKILL after ``grace`` seconds, and
joins every child. A child watches ``ctl`` on a thread: at end-of-file (the parent died, even by
SIGKILL) it kills its own group at once. Children ignore SIGINT: Ctrl-C is the parent's to
handle.

Errors: a party's exception is sent back with its type, message, state and the child's
traceback, and re-raised in the parent as the same class (a ``FedsiloError`` subclass stays
that subclass, so ``fedsilo simulate`` prints one line and exit code 2 for ConfigError and
DataError), with the child's traceback as a note. The first failing party's error is raised:
errors carry the time they happened, and of errors that reach the parent together a secondary
one (:class:`~fedsilo.errors.JobAbortedError`, :class:`~fedsilo.errors.PeerTimeoutError`) yields
to a primary one, never a timeout of a party waiting for the failed one.

Progress: ``run_plan`` hands engines ``functools.partial(task.party, plan, party,
progress=shown)``; the engine takes ``progress`` out of the partial (it is not picklable), gives
the child a callable that sends each event up ``out``, and calls the parent's ``progress`` with
it on the parent's main thread (``shown`` still shows each round once).

``JobRun.bytes_sent`` is each party's ``channel.bytes_sent`` (the codec's envelope size, the
same count as the threads engine). ``JobRun.seconds`` is the job's wall time from the moment
every party is listening (peers sent) to the last report: process start-up (interpreter, the
task's imports, certificates, servers) is excluded and logged at INFO; what a party function
imports or initializes lazily on first use (in a fresh process, every time) is included.

The ray engine (:mod:`fedsilo.silos.ray_engine`) ships party functions and brings their errors
back with the same helpers: :func:`ship_party`, :func:`error_info`, :func:`rebuild_error` and
:func:`primary_error`.
"""
from __future__ import annotations

import functools
import importlib
import logging
import multiprocessing
import os
import pickle
import queue
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from fedsilo.errors import ConfigError, JobAbortedError, PeerTimeoutError, ProtocolError
from fedsilo.protocols.channel import Channel
from fedsilo.silos.certs import init_federation
from fedsilo.silos.registry import Engine, JobRun, register_engine
from fedsilo.silos.transport import TransportOptions

__all__ = [
    "CA_NAME",
    "SECONDARY_ERRORS",
    "SETTLE",
    "ProcessesEngine",
    "error_info",
    "primary_error",
    "rebuild_error",
    "ship_party",
]

log = logging.getLogger(__name__)

#: Federation name of the throw-away CA (its certificates' organization).
CA_NAME = "fedsilo-simulation"
#: Exit code of a child that found its parent gone.
ORPHANED_EXIT = 75
#: Seconds the parent waits, after a party's error, for other errors already sent.
SETTLE = 0.2
#: Errors that follow another party's failure (woken, or timed out waiting for it).
SECONDARY_ERRORS = (JobAbortedError, PeerTimeoutError)


class ProcessesEngine(Engine):
    """Every party its own OS process on 127.0.0.1, over gRPC with mutual TLS and a throw-away CA.

    ``startup_timeout``: seconds every child has to start listening (interpreter, imports,
    certificate, server). ``grace``: seconds a child has to exit after ``exit`` or ``terminate``
    before it is killed. ``options``: each party's transport options (default
    :class:`~fedsilo.silos.transport.TransportOptions`).
    """

    name = "processes"
    transport = "grpc+mtls"

    def __init__(self, *, startup_timeout: float = 120.0, grace: float = 3.0,
                 options: TransportOptions | None = None) -> None:
        for key, value in (("startup_timeout", startup_timeout), ("grace", grace)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"processes engine: {key} must be a positive number of seconds, got {value!r}")
        self.startup_timeout = float(startup_timeout)
        self.grace = float(grace)
        self.options = options or TransportOptions()

    def run(self, job: str, parties: Mapping[str, Callable[[Channel], Any]]) -> JobRun:
        if not parties:
            raise ConfigError("processes engine: a job needs at least one party")
        shipped = {name: ship_party(name, fn) for name, fn in parties.items()}  # refused before any process starts
        ctx = multiprocessing.get_context("spawn")
        with tempfile.TemporaryDirectory(prefix="fedsilo-ca-") as tmp:
            fed = init_federation(Path(tmp) / "federation", federation=CA_NAME, silos=list(parties))
            # nobody issues anything more: without its key the CA is dead even if a killed parent
            # leaves the directory behind
            fed.ca_key.unlink()
            files = {s.name: s for s in fed.silos}
            children: dict[str, _Child] = {}
            try:
                for name, (payload, progress) in shipped.items():
                    children[name] = _start(ctx, name, payload, has_progress=progress is not None, job=job,
                                            names=list(parties), ca=fed.ca_cert, cert=files[name].cert,
                                            key=files[name].key, options=self.options)
                    children[name].progress = progress
                started = time.perf_counter()
                _pump(children, until="ready", deadline=time.monotonic() + self.startup_timeout)
                peers = {n: f"127.0.0.1:{c.port}" for n, c in children.items()}
                log.info("job %s: %d party processes listening after %.2fs", job, len(children),
                         time.perf_counter() - started)
                start = time.perf_counter()
                for c in children.values():
                    c.ctl.send(("peers", peers))
                _pump(children, until="report", deadline=None)
                seconds = time.perf_counter() - start
                for c in children.values():
                    _send_quietly(c.ctl, ("exit",))
                for c in children.values():
                    c.process.join(self.grace)
            finally:
                _stop(children.values(), self.grace)
        return JobRun({n: c.report for n, c in children.items()}, {n: c.bytes_sent for n, c in children.items()},
                      self.name, self.transport, seconds)


register_engine("processes", ProcessesEngine)


# -- parent side -----------------------------------------------------------------------------------
@dataclass(eq=False)
class _Child:
    name: str
    process: Any
    ctl: Connection
    out: Connection
    progress: Callable[[dict[str, Any]], None] | None = None
    port: int | None = None
    reported: bool = False
    report: Any = None
    bytes_sent: int = 0
    ended: bool = False
    errors: list[tuple[float, BaseException]] = field(default_factory=list)


def _start(ctx: Any, name: str, payload: bytes, *, has_progress: bool, job: str, names: list[str], ca: Path,
           cert: Path, key: Path, options: TransportOptions) -> _Child:
    ctl_child, ctl = ctx.Pipe(duplex=False)  # parent -> child
    out, out_child = ctx.Pipe(duplex=False)  # child -> parent
    process = ctx.Process(
        target=_child_main, name=f"fedsilo-party-{name}",
        args=(name, payload, has_progress, job, names, str(ca), str(cert), str(key), options, ctl_child, out_child),
    )
    try:
        process.start()
    finally:
        # the child holds its own ends now: closing ours lets each side see the other's end-of-file
        ctl_child.close()
        out_child.close()
    return _Child(name, process, ctl, out)


def _pump(children: Mapping[str, _Child], *, until: str, deadline: float | None) -> None:
    """Handle the children's messages until every one is ``ready`` (port known) or has
    ``report``\\ ed; raise the first party's error (or a start-up timeout) as soon as it comes."""

    def done(c: _Child) -> bool:
        return c.port is not None if until == "ready" else c.reported

    while not all(done(c) for c in children.values()):
        waiting = {c.out: c for c in children.values() if not c.ended}
        if not waiting:  # pragma: no cover - an ended child without a report has an error
            raise ProtocolError("processes engine: every party process ended before the job did")
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            late = sorted(n for n, c in children.items() if not done(c))
            raise PeerTimeoutError(f"processes engine: party process(es) {late} did not start listening in time")
        ready = wait(list(waiting), timeout=left)
        for conn in ready:
            _drain(waiting[conn])  # type: ignore[index]
        if any(c.errors for c in children.values()):
            # a moment for errors already on their way, so the earliest one is chosen among all
            for conn in wait([c.out for c in children.values() if not c.ended], timeout=SETTLE):
                _drain(next(c for c in children.values() if c.out is conn))
            raise primary_error([(at, c.name, e) for c in children.values() for at, e in c.errors])


def _drain(c: _Child) -> None:
    """Read every message ``c`` has sent so far (its end-of-file ends it)."""
    while True:
        try:
            if not c.out.poll():
                return
            msg = c.out.recv()
        except (EOFError, OSError):
            c.ended = True
            c.process.join(1.0)
            if not c.reported and not c.errors:
                code = c.process.exitcode
                c.errors.append((time.time(), ProtocolError(
                    f"party {c.name!r}: its process ended (exit code {code}) before it reported"
                    + (" (killed by a signal: out of memory?)" if code is not None and code < 0 else "")
                )))
            return
        kind = msg[0]
        if kind == "ready":
            c.port = int(msg[1])
            log.debug("party %s listening on 127.0.0.1:%d (started in %.2fs)", c.name, c.port, msg[2])
        elif kind == "progress":
            if c.progress is not None:
                c.progress(msg[1])
        elif kind == "report":
            c.report, c.bytes_sent, c.reported = msg[1], int(msg[2]), True
        elif kind == "error":
            c.errors.append((msg[1]["at"], rebuild_error(c.name, msg[1])))


def _send_quietly(conn: Connection, msg: Any) -> None:
    try:
        conn.send(msg)
    except (OSError, ValueError):  # the child is gone already
        pass


def _stop(children: Any, grace: float) -> None:
    """Stop every child and whatever it started: SIGTERM to each child's process group (the
    child and, say, its Paillier pool), SIGKILL after ``grace`` seconds, join all, close the pipes.

    Each child leads its own process group (:func:`_child_main`), so the group outlives a child
    only while one of its processes does: a ``killpg`` of an empty group is a no-op (ESRCH),
    never another process's signal.
    """
    children = list(children)
    for c in children:
        if c.process.is_alive():
            _signal_group(c, signal.SIGTERM)
    end = time.monotonic() + grace
    for c in children:
        c.process.join(max(0.0, end - time.monotonic()))
    for c in children:
        if c.process.is_alive():
            log.warning("party %s did not exit within %.1fs of SIGTERM: killing it", c.name, grace)
        _signal_group(c, signal.SIGKILL)  # also any process the child left behind
    for c in children:
        c.process.join()
        c.ctl.close()
        c.out.close()
        c.process.close()


def _signal_group(c: _Child, sig: int) -> None:
    pid = c.process.pid
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        # not (yet) a group leader, or the group is empty: the child itself, if it still runs
        if c.process.is_alive() and sig == signal.SIGKILL:
            c.process.kill()
        elif c.process.is_alive():
            c.process.terminate()


# -- child side ------------------------------------------------------------------------------------
def _child_main(name: str, payload: bytes, has_progress: bool, job: str, names: list[str], ca: str, cert: str,
                key: str, options: TransportOptions, ctl: Connection, out: Connection) -> None:
    """One party's process: its server, its channel, its party function; reports go up ``out``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        os.setpgid(0, 0)  # lead a process group: the parent stops this party and all it starts at once
    except OSError:
        pass
    started = time.perf_counter()
    inbox: queue.Queue[tuple[Any, ...]] = queue.Queue()
    threading.Thread(target=_watch_parent, args=(ctl, inbox), name="fedsilo-parent-watch", daemon=True).start()
    lock = threading.Lock()

    def send(msg: tuple[Any, ...]) -> None:
        with lock:
            out.send(msg)

    server = channel = None
    clean = False
    try:
        from fedsilo.silos.certs import load_tls
        from fedsilo.silos.transport import GrpcChannel, PartyServer

        fn = pickle.loads(payload)  # imports the task's modules (torch, ...): part of start-up
        server = PartyServer(allow=names, tls=load_tls(Path(ca), Path(cert), Path(key)), host="127.0.0.1", port=0,
                             options=options)
        send(("ready", server.port, time.perf_counter() - started))
        kind, peers = inbox.get()
        if kind != "peers":
            raise ProtocolError(f"party {name!r}: expected its peers from the engine, got {kind!r}")
        channel = GrpcChannel(server, job=job, peers=peers, options=options)
        if has_progress:
            report = fn(channel, progress=lambda event: send(("progress", event)))
        else:
            report = fn(channel)
        try:
            send(("report", report, channel.bytes_sent))
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise ProtocolError(f"party {name!r}: its report cannot be sent to the parent ({exc})") from None
        inbox.get()  # "exit": the others may still be delivering to this party until every one reported
        clean = True
    except BaseException as exc:  # noqa: BLE001 - every failure goes to the parent
        try:
            send(("error", error_info(exc)))
        except (OSError, ValueError):
            pass
    finally:
        if channel is not None:
            channel.close()
        if server is not None:
            server.stop(grace=0.5)
    # The party's work is done and closed (its ledger by the party function, its channel and
    # server above): skip the interpreter's finalization, which takes seconds with gRPC and
    # torch loaded. The parent's SIGKILL of this process group ends anything this left behind.
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(0 if clean else 1)


def _watch_parent(ctl: Connection, inbox: queue.Queue[tuple[Any, ...]]) -> None:
    """Pass the parent's messages to the party; exit the process when the parent is gone."""
    while True:
        try:
            msg = ctl.recv()
        except (EOFError, OSError):
            # the parent died: no party (nor a pool it started) outlives it
            if os.getpgid(0) == os.getpid():
                os.killpg(0, signal.SIGKILL)
            os._exit(ORPHANED_EXIT)
        inbox.put(msg)
        if msg[0] == "exit":
            return


# -- shared with the other engines (fedsilo.silos.ray_engine): a party's function out, its error back
def ship_party(name: str, fn: Callable[..., Any], *, engine: str = "processes",
               where: str = "process") -> tuple[bytes, Callable[[dict[str, Any]], None] | None]:
    """``fn`` pickled for the party's own ``where`` (its process, its actor), without its
    progress callable (returned apart: it stays with the caller); ConfigError if it cannot be."""
    progress = None
    if isinstance(fn, functools.partial) and "progress" in fn.keywords:
        progress = fn.keywords["progress"]
        fn = functools.partial(fn.func, *fn.args, **{k: v for k, v in fn.keywords.items() if k != "progress"})
    try:
        return pickle.dumps(fn), progress
    except Exception as exc:  # noqa: BLE001 - any pickling failure means the same thing
        raise ConfigError(
            f"{engine} engine: the party function of {name!r} cannot be sent to its {where} "
            f"({type(exc).__name__}: {exc}); its task, plan and Party must be picklable"
        ) from None


def primary_error(errors: list[tuple[float, str, BaseException]]) -> BaseException:
    """The error to raise: the earliest, preferring one that is not a consequence of another's."""
    errors = sorted(errors, key=lambda e: e[0])
    first = [e for _, _, e in errors if not isinstance(e, SECONDARY_ERRORS)]
    return first[0] if first else errors[0][2]


def rebuild_error(name: str, info: dict[str, Any], *, where: str = "process") -> BaseException:
    """The party's exception from its :func:`error_info`, as the same class where possible, with
    its traceback as a note naming the party's ``where`` (its process, its actor)."""
    exc: BaseException | None = None
    if info.get("pickled") is not None:
        try:
            exc = pickle.loads(info["pickled"])
        except Exception:  # noqa: BLE001 - fall back to the type and message
            exc = None
    if not isinstance(exc, BaseException):
        cls = _error_class(info["module"], info["qualname"])
        if cls is not None:
            exc = cls.__new__(cls)
            BaseException.__init__(exc, info["message"])
            exc.__dict__.update(info.get("state") or {})
        else:
            exc = ProtocolError(f"party {name!r} failed: {info['qualname']}: {info['message']}")
    exc.add_note(f"raised in the {where} of party {name!r}:\n{info['traceback'].rstrip()}")
    return exc


def _error_class(module: str, qualname: str) -> type[BaseException] | None:
    """fedsilo's own error classes and the builtins', by name; nothing else is imported."""
    if module not in ("builtins", "fedsilo.errors"):
        return None
    cls = getattr(importlib.import_module(module), qualname, None)
    return cls if isinstance(cls, type) and issubclass(cls, BaseException) else None


def error_info(exc: BaseException) -> dict[str, Any]:
    """What :func:`rebuild_error` needs to raise ``exc`` again in another process: its class by
    name, message, traceback, the time it happened, and the exception pickled (or its state)."""
    pickled: bytes | None
    try:
        pickled = pickle.dumps(exc)
        pickle.loads(pickled)  # e.g. BudgetExceededError's keyword-only constructor does not round-trip
    except Exception:  # noqa: BLE001
        pickled = None
    return {
        "module": type(exc).__module__,
        "qualname": type(exc).__qualname__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
        "at": time.time(),
        "pickled": pickled,
        "state": _picklable_state(exc) if pickled is None else None,
    }


def _picklable_state(exc: BaseException) -> dict[str, Any] | None:
    state = dict(getattr(exc, "__dict__", {}))
    state.pop("__notes__", None)
    try:
        pickle.loads(pickle.dumps(state))
    except Exception:  # noqa: BLE001
        return None
    return state
