"""gRPC transport for the silo agents: a :class:`~fedsilo.protocols.channel.Channel` over mutual TLS.

Each party runs one :class:`PartyServer` (its mailbox) and, per job, one :class:`GrpcChannel`
that sends to the peers' servers and takes its own messages from its server's inbox for that
job. Protocol code sees only the ``Channel`` interface, so the same party functions run
in-process (tests) and across organizations.

Security
    Mutual TLS, always, outside loopback: the server requires a client certificate signed by
    the federation CA (``require_client_auth=True``) and a client checks the server's
    certificate against the *name of the peer it dials* (``grpc.ssl_target_name_override``).
    A peer's identity is the silo name its verified certificate proves
    (:func:`fedsilo.silos.certs.peer_name_from_cert`), never a field of a request. A server
    interceptor admits only peers on the allow-list, before any handler runs (a refused peer
    gets ``PERMISSION_DENIED``, or ``UNAUTHENTICATED`` without a usable identity, and is logged
    and reported to ``on_refused`` as refused); an admitted peer calling an unknown method gets
    ``UNIMPLEMENTED``. An envelope's ``sender`` must equal the authenticated peer, so a silo
    cannot speak for another. Handshake failures (certificate of another CA, expired, none)
    never reach Python: gRPC core closes the connection and logs them.

    ``insecure=True`` (no TLS files) is plaintext gRPC for loopback only, refused for any other
    address: a test mode and the baseline of the transport benchmark. Identities there are
    *claims* (``fedsilo-party`` metadata), not proofs.

Wire format (service ``fedsilo.transport.v1.Mailbox``; every message raw bytes, no protobuf)
    ``Hello`` (unary)    request and response ``codec.encode({"v": int, "party": str})``: the
                         transport protocol version check at connect. A mismatch is refused
                         with ``FAILED_PRECONDITION`` naming both versions.
    ``Health`` (unary)   request empty; response ``{"status": "serving", "party", "v"}``.
    ``Deliver`` (client-streaming) one envelope: the first frame is its header,
                         ``codec.encode({"v", "job", "round", "sender", "recipient", "kind",
                         "seq", "size"})`` (at most :data:`MAX_HEADER_BYTES`), then the body in
                         frames of at most ``chunk_bytes`` (<= :data:`MAX_FRAME_BYTES`) whose
                         lengths add up to ``size`` exactly. The response is
                         ``{"status": "delivered" | "duplicate"}``, sent once the envelope is in
                         the recipient's inbox.

    Limits are enforced on both sides: a sender refuses a body above ``max_message_bytes``
    before sending; a receiver refuses a header declaring more than its own limit and stops
    reading a body as soon as it exceeds the declared size (``RESOURCE_EXHAUSTED`` /
    ``INVALID_ARGUMENT``).

Ordering and replays
    One gRPC channel (one HTTP/2 connection) per peer; a sender delivers to one peer one
    envelope at a time, in ``seq`` order, and the next only after the previous one is in the
    peer's inbox, so each sender's messages arrive in order. The receiving server also drops an
    envelope whose ``seq`` is not above the last one it accepted from that sender for that job
    (answered ``duplicate``, reported to ``on_refused``): a client retry after a lost
    acknowledgement is idempotent and a replay is never delivered twice (the base
    :class:`Channel` checks ``seq`` again).

Inboxes and time
    One bounded inbox per job (``inbox_messages``, ``inbox_bytes``; at most ``max_jobs`` open at
    once), created by the first envelope or channel of that job and closed by the channel.
    Every RPC has a deadline (``connect_timeout`` for Hello/Health, ``rpc_timeout`` for
    Deliver); transient ``UNAVAILABLE`` errors are retried with exponential backoff and jitter
    (:class:`RetryPolicy`), then raised as :class:`~fedsilo.errors.PeerTimeoutError` (peer
    unreachable) or :class:`~fedsilo.errors.PeerRejectedError` (TLS handshake failed) naming the
    peer and its address.
"""
from __future__ import annotations

import functools
import ipaddress
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc

from fedsilo.errors import (
    ConfigError,
    FedsiloError,
    JobAbortedError,
    PeerRejectedError,
    PeerTimeoutError,
    ProtocolError,
)
from fedsilo.protocols import codec
from fedsilo.protocols.channel import Channel, Envelope
from fedsilo.silos.certs import CertificateIdentity, TlsFiles, check_silo_name, identity_name, peer_name_from_cert

__all__ = [
    "DELIVER",
    "HEALTH",
    "HELLO",
    "MAX_FRAME_BYTES",
    "MAX_HEADER_BYTES",
    "PROTOCOL_VERSION",
    "SERVICE",
    "GrpcChannel",
    "PartyServer",
    "RetryPolicy",
    "TransportOptions",
    "is_loopback",
]

log = logging.getLogger(__name__)

#: Version of the wire format above; peers must speak the same one (checked by ``Hello``).
PROTOCOL_VERSION = 1
SERVICE = f"fedsilo.transport.v{PROTOCOL_VERSION}.Mailbox"
HELLO, HEALTH, DELIVER = (f"/{SERVICE}/{m}" for m in ("Hello", "Health", "Deliver"))
#: Largest header frame of a Deliver stream (routing fields only).
MAX_HEADER_BYTES = 64 * 1024
#: Largest frame either side sends or accepts: the gRPC default message limit, so no
#: deployment ever needs to raise gRPC's own limits.
MAX_FRAME_BYTES = 4 * 1024 * 1024
#: Metadata key naming the caller in insecure (plaintext, loopback) mode only.
PARTY_METADATA = "fedsilo-party"
_MIB = 1024 * 1024

OnRefused = Callable[[str | None, str], None]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff for transient ``UNAVAILABLE`` errors: ``attempts`` tries in all,
    waiting ``initial_backoff * multiplier**k`` seconds (capped at ``max_backoff``, with
    jitter in [50 %, 100 %]) between them."""

    attempts: int = 5
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            raise ConfigError(f"retry attempts must be an integer >= 1, got {self.attempts!r}")
        if not 0 < self.initial_backoff <= self.max_backoff:
            raise ConfigError("retry backoff: need 0 < initial_backoff <= max_backoff")
        if self.multiplier < 1:
            raise ConfigError(f"retry multiplier must be >= 1, got {self.multiplier!r}")

    def delays(self) -> Iterator[float]:
        delay = self.initial_backoff
        for _ in range(self.attempts - 1):
            yield delay * (0.5 + random.random() / 2)  # jitter: public timing, not a secret
            delay = min(delay * self.multiplier, self.max_backoff)


@dataclass(frozen=True, slots=True)
class TransportOptions:
    """Limits and timing of one party's transport (server and client side).

    ``max_message_bytes``: largest envelope body sent or accepted. ``chunk_bytes``: body frame
    size. ``rpc_timeout`` / ``connect_timeout``: deadlines (s) of Deliver / Hello and Health.
    ``inbox_messages`` / ``inbox_bytes``: per-job inbox bounds; ``max_jobs``: inboxes open at
    once. ``max_workers``: server threads; ``max_concurrent_rpcs``: RPCs beyond are refused
    with ``RESOURCE_EXHAUSTED``. ``keepalive_time`` / ``keepalive_timeout`` (s): HTTP/2 pings.
    """

    max_message_bytes: int = 512 * _MIB
    chunk_bytes: int = 1 * _MIB
    rpc_timeout: float = 120.0
    connect_timeout: float = 10.0
    inbox_messages: int = 10_000
    inbox_bytes: int = 2048 * _MIB
    max_jobs: int = 64
    max_workers: int = 8
    max_concurrent_rpcs: int = 64
    keepalive_time: float = 30.0
    keepalive_timeout: float = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "chunk_bytes", "inbox_messages", "inbox_bytes", "max_jobs",
                     "max_workers", "max_concurrent_rpcs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"transport option {name} must be an integer >= 1, got {v!r}")
        if self.chunk_bytes > MAX_FRAME_BYTES:
            raise ConfigError(f"transport option chunk_bytes must be at most {MAX_FRAME_BYTES}, got {self.chunk_bytes}")
        for name in ("rpc_timeout", "connect_timeout", "keepalive_time", "keepalive_timeout"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 7 * 24 * 3600:
                raise ConfigError(f"transport option {name} must be a positive number of seconds, got {v!r}")


# -- addresses ------------------------------------------------------------------------------------
def _split(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"invalid address {address!r}: expected host:port")
    return host.strip("[]"), int(port)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (127.0.0.0/8, ::1)."""
    h = host.strip("[]")
    if h.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def _refuse_insecure(host: str, what: str) -> None:
    if not is_loopback(host):
        raise ConfigError(
            f"insecure (plaintext) transport is allowed on loopback only; {what} {host!r} is not a loopback "
            "address: give the silo's TLS files (fedsilo certs init)"
        )


# -- inbox ---------------------------------------------------------------------------------------
class _InboxClosed(ProtocolError):
    """The job's channel on this party was closed (or the server stopped)."""


class _Inbox:
    """The envelopes of one job waiting for the local party, bounded in count and bytes."""

    def __init__(self, job: str, max_messages: int, max_bytes: int) -> None:
        self.job = job
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._queue: deque[Envelope] = deque()
        self._bytes = 0
        self._last_seq: dict[str, int] = {}
        self._cond = threading.Condition()
        self._closed: str | None = None

    def put(self, env: Envelope) -> str:
        """``"delivered"``, ``"duplicate"`` (seq not above the sender's last), or raise
        ProtocolError (inbox full or closed)."""
        with self._cond:
            if self._closed is not None:
                raise _InboxClosed(f"job {self.job!r} is closed on this party ({self._closed})")
            if env.seq <= self._last_seq.get(env.sender, 0):
                return "duplicate"
            size = len(env.body)
            if len(self._queue) >= self._max_messages or self._bytes + size > self._max_bytes:
                raise ProtocolError(
                    f"inbox of job {self.job!r} is full ({len(self._queue)} envelopes, {self._bytes} bytes; "
                    f"limits {self._max_messages} envelopes, {self._max_bytes} bytes)"
                )
            self._last_seq[env.sender] = env.seq
            self._queue.append(env)
            self._bytes += size
            self._cond.notify_all()
            return "delivered"

    def get(self, deadline: float) -> Envelope | None:
        with self._cond:
            while True:
                if self._queue:
                    env = self._queue.popleft()
                    self._bytes -= len(env.body)
                    return env
                if self._closed is not None:
                    raise JobAbortedError(f"job {self.job!r}: {self._closed}")
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def close(self, reason: str) -> None:
        with self._cond:
            if self._closed is None:
                self._closed = reason
            self._queue.clear()
            self._bytes = 0
            self._cond.notify_all()


# -- server -------------------------------------------------------------------------------------
class _Refusal(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@functools.lru_cache(maxsize=256)
def _name_of_cert(pem: bytes) -> str:
    return peer_name_from_cert(pem)


class _AllowList(grpc.ServerInterceptor):
    """Admits a call only if the caller's authenticated name is on the allow-list.

    The check runs inside the returned handler (where the call's real context, and so the
    verified certificate, is available) *before* the wrapped handler's body; for an unknown
    method the check runs first too, so a stranger learns nothing about which methods exist.
    """

    def __init__(self, server: "PartyServer") -> None:
        self._server = server

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        method = handler_call_details.method
        handler = continuation(handler_call_details)
        if handler is None:
            return grpc.stream_stream_rpc_method_handler(self._guard(self._unimplemented(method), method))
        wrap = {
            "unary_unary": grpc.unary_unary_rpc_method_handler,
            "unary_stream": grpc.unary_stream_rpc_method_handler,
            "stream_unary": grpc.stream_unary_rpc_method_handler,
            "stream_stream": grpc.stream_stream_rpc_method_handler,
        }
        for kind, make in wrap.items():
            behavior = getattr(handler, kind)
            if behavior is not None:
                return make(
                    self._guard(behavior, method),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler  # pragma: no cover - grpc always sets one behavior

    def _guard(self, behavior: Callable[[Any, Any], Any], method: str) -> Callable[[Any, Any], Any]:
        server = self._server

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                server._admit(context, method)
            except _Refusal as r:
                server._refused(server._claimed(context), f"{method}: {r.message}")
                context.abort(r.code, r.message)
            return behavior(request, context)

        return guarded

    @staticmethod
    def _unimplemented(method: str) -> Callable[[Any, Any], Any]:
        def unknown(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"method {method} is not part of {SERVICE}")

        return unknown


class PartyServer:
    """One party's gRPC mailbox: ``Hello``, ``Health`` and ``Deliver`` behind the allow-list.

    ``tls`` (from :func:`fedsilo.silos.certs.load_tls`) makes it a mutual-TLS server whose
    party name is the certificate's; without it the server refuses to start unless
    ``insecure=True`` and ``host`` is a loopback address (then ``party`` must be given).
    ``allow`` names the peers admitted (the local party's own name is not needed).
    ``port=0`` binds an ephemeral port; :attr:`port` and :attr:`address` report the bound one.
    ``on_refused(peer, reason)`` is called for every refused call or envelope (``peer`` is the
    claimed name, or None), next to a ``WARNING`` log line.

    ``handlers`` (grpc generic handlers, e.g. a silo agent's control service) are served on the
    same port behind the same allow-list interceptor; ``own_methods`` lists full method names
    (``/package.Service/Method``) that this party's *own* identity may also call (its operator's
    command line, authenticated with the silo's own certificate). Every other method admits
    only the peers on ``allow``.

    The server starts in the constructor and stops with :meth:`stop` (or as a context manager).
    """

    def __init__(
        self,
        *,
        allow: Iterable[str],
        tls: TlsFiles | None = None,
        party: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        insecure: bool = False,
        options: TransportOptions | None = None,
        on_refused: OnRefused | None = None,
        handlers: Iterable[grpc.GenericRpcHandler] = (),
        own_methods: Iterable[str] = (),
        registered_jobs_only: bool = False,
    ) -> None:
        self.options = options or TransportOptions()
        if tls is None:
            if not insecure:
                raise ConfigError(
                    "no TLS files: a party server needs its certificate, key and the federation CA "
                    "(fedsilo certs init); plaintext is allowed only with insecure=True on loopback"
                )
            _refuse_insecure(host, "host")
            if party is None:
                raise ConfigError("an insecure party server needs its party name")
        elif party is not None and party != tls.name:
            raise ConfigError(f"party {party!r} does not match the name in its certificate ({tls.name!r})")
        self.party: str = check_silo_name(party if tls is None else tls.name, what="party name")  # type: ignore[arg-type]
        self.tls = tls
        #: what this party signs relayed protocol material with (its certificate's key); None in
        #: plaintext mode, where nothing can be signed
        self.identity = CertificateIdentity(tls) if tls is not None else None
        self.insecure = tls is None
        self.allow = frozenset(check_silo_name(a, what="allowed peer") for a in allow) - {self.party}
        self.host = host
        self.on_refused = on_refused
        self.own_methods = frozenset(own_methods)
        #: an agent accepts envelopes only for jobs it agreed to (register_job), so no peer can
        #: open inboxes for made-up jobs; an engine's parties register as they start instead
        self.registered_jobs_only = registered_jobs_only
        self._protocol_version = PROTOCOL_VERSION
        self._inboxes: dict[str, _Inbox] = {}
        self._closed_jobs: set[str] = set()
        #: each local job's peers (GrpcChannel registers them): nobody else may fill its inbox
        self._members: dict[str, frozenset[str]] = {}
        #: Deliver streams in progress per peer: one peer cannot hold every worker thread
        self._streams: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stopped = False

        o = self.options
        server_options = [
            # a body frame or a header is the largest message; responses are tiny
            ("grpc.max_receive_message_length", MAX_FRAME_BYTES + 1024),
            ("grpc.max_send_message_length", MAX_HEADER_BYTES),
            # ping idle clients to find dead connections; accept the clients' own pings
            ("grpc.keepalive_time_ms", int(o.keepalive_time * 2000)),
            ("grpc.keepalive_timeout_ms", int(o.keepalive_timeout * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", int(o.keepalive_time * 1000 / 2)),
            # a second server must fail to bind a port already in use, not share it
            ("grpc.so_reuseport", 0),
        ]
        self._executor = ThreadPoolExecutor(max_workers=o.max_workers, thread_name_prefix=f"fedsilo-{self.party}")
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Hello": grpc.unary_unary_rpc_method_handler(self._hello),
                "Health": grpc.unary_unary_rpc_method_handler(self._health),
                "Deliver": grpc.stream_unary_rpc_method_handler(self._deliver),
            },
        )
        self._server = grpc.server(
            self._executor,
            handlers=[handler, *handlers],
            interceptors=[_AllowList(self)],
            options=server_options,
            maximum_concurrent_rpcs=o.max_concurrent_rpcs,
        )
        bind = _join(host, port)
        try:
            if self.tls is not None:
                creds = grpc.ssl_server_credentials(
                    [(self.tls.key, self.tls.cert)], root_certificates=self.tls.ca, require_client_auth=True
                )
                bound = self._server.add_secure_port(bind, creds)
            else:
                bound = self._server.add_insecure_port(bind)
        except RuntimeError as exc:
            bound = 0
            detail = f": {exc}"
        else:
            detail = ""
        if not bound:
            self._executor.shutdown(wait=False)
            raise ConfigError(f"party {self.party!r}: cannot listen on {bind} (address in use or not local){detail}")
        self.port: int = bound
        self._server.start()
        log.info("party %s listening on %s (%s)", self.party, self.address, "INSECURE plaintext" if self.insecure else "mTLS")

    @property
    def address(self) -> str:
        return _join(self.host, self.port)

    # -- lifecycle --------------------------------------------------------------------------
    def stop(self, grace: float = 1.0) -> None:
        """Stop accepting calls, let running ones finish for ``grace`` seconds, wake every
        party waiting on an inbox (JobAbortedError) and join the server's threads."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._server.stop(grace).wait()
        with self._lock:
            boxes = list(self._inboxes.values())
            self._inboxes.clear()
        for box in boxes:
            box.close(f"party server {self.party!r} stopped")
        self._executor.shutdown(wait=True)

    close = stop

    def __enter__(self) -> "PartyServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inboxes ----------------------------------------------------------------------------
    def inbox(self, job: str) -> _Inbox:
        with self._lock:
            if self._stopped:
                raise ProtocolError(f"party server {self.party!r} is stopped")
            if job in self._closed_jobs:
                raise ProtocolError(f"job {job!r} is closed on this party")
            box = self._inboxes.get(job)
            if box is None:
                if len(self._inboxes) >= self.options.max_jobs:
                    raise ProtocolError(f"too many open jobs on this party (limit {self.options.max_jobs})")
                box = self._inboxes[job] = _Inbox(job, self.options.inbox_messages, self.options.inbox_bytes)
            return box

    def register_job(self, job: str, peers: Iterable[str]) -> None:
        """Only ``peers`` may deliver envelopes of ``job`` from now on (others: PERMISSION_DENIED)."""
        with self._lock:
            self._members[job] = frozenset(peers)

    def close_job(self, job: str) -> None:
        """Drop ``job``'s inbox; later envelopes for it are refused."""
        with self._lock:
            self._closed_jobs.add(job)
            self._members.pop(job, None)
            box = self._inboxes.pop(job, None)
        if box is not None:
            box.close("the job's channel was closed")

    # -- admission ----------------------------------------------------------------------------
    def _identify(self, context: grpc.ServicerContext) -> str:
        if self.tls is not None:
            pem = context.auth_context().get("x509_pem_cert")
            if not pem:
                raise _Refusal(grpc.StatusCode.UNAUTHENTICATED, "no verified client certificate")
            try:
                return _name_of_cert(pem[0])
            except PeerRejectedError as exc:
                raise _Refusal(grpc.StatusCode.UNAUTHENTICATED, str(exc)) from None
        claimed = [v for k, v in (context.invocation_metadata() or ()) if k == PARTY_METADATA]
        if len(claimed) != 1 or not isinstance(claimed[0], str):
            raise _Refusal(grpc.StatusCode.UNAUTHENTICATED, f"insecure mode: the call must name its party in {PARTY_METADATA!r}")
        try:
            return check_silo_name(claimed[0], what="party name")
        except ConfigError as exc:
            raise _Refusal(grpc.StatusCode.UNAUTHENTICATED, str(exc)) from None

    def _claimed(self, context: grpc.ServicerContext) -> str | None:
        """The name a refused caller presents (its certificate's CN, or in insecure mode its
        metadata), for the refusal log only: it is not an authenticated identity."""
        if self.tls is not None:
            cn = context.auth_context().get("x509_common_name")
            return cn[0].decode("utf-8", "replace") if cn else None
        for k, v in context.invocation_metadata() or ():
            if k == PARTY_METADATA:
                return str(v)
        return None

    def caller(self, context: grpc.ServicerContext) -> str:
        """The authenticated name of the caller of a call this server admitted (for handlers
        passed as ``handlers``): its certificate's silo name (insecure mode: its claim)."""
        try:
            return self._identify(context)
        except _Refusal as r:
            context.abort(r.code, r.message)
            raise  # pragma: no cover - abort raises

    def _admit(self, context: grpc.ServicerContext, method: str | None = None) -> str:
        peer = self._identify(context)
        if peer == self.party and method is not None and method in self.own_methods:
            return peer
        if peer not in self.allow:
            raise _Refusal(grpc.StatusCode.PERMISSION_DENIED, f"silo {peer!r} is not on the allow-list of {self.party!r}")
        return peer

    def _refused(self, peer: str | None, reason: str) -> None:
        log.warning("party %s refused %s: %s", self.party, repr(peer) if peer else "an unidentified caller", reason)
        if self.on_refused is not None:
            try:
                self.on_refused(peer, reason)
            except Exception:  # noqa: BLE001 - an audit hook must not turn a refusal into an admission
                log.exception("on_refused hook failed")

    def _abort(self, context: grpc.ServicerContext, peer: str, code: grpc.StatusCode, message: str) -> None:
        self._refused(peer, message)
        context.abort(code, message)

    # -- handlers (run only after _AllowList admitted the caller) -------------------------------
    def _hello(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        peer = self._admit(context)
        msg = _decode_dict(request)
        if msg is None:
            self._abort(context, peer, grpc.StatusCode.INVALID_ARGUMENT, "malformed Hello")
        assert msg is not None
        theirs = msg.get("v")
        if theirs != self._protocol_version:
            self._abort(
                context, peer, grpc.StatusCode.FAILED_PRECONDITION,
                f"transport protocol version mismatch: {peer!r} speaks fedsilo.transport v{theirs}, "
                f"{self.party!r} speaks v{self._protocol_version}",
            )
        if msg.get("party") != peer:
            self._abort(context, peer, grpc.StatusCode.PERMISSION_DENIED,
                        f"Hello names party {msg.get('party')!r} but the caller is {peer!r}")
        return codec.encode({"v": self._protocol_version, "party": self.party})

    def _health(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return codec.encode({"status": "serving", "party": self.party, "v": self._protocol_version})

    def _deliver(self, frames: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        peer = self._admit(context)
        limit = max(1, self.options.max_workers // 4)
        with self._lock:
            busy = self._streams.get(peer, 0)
            if busy < limit:
                self._streams[peer] = busy + 1
        if busy >= limit:
            self._abort(context, peer, grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"{peer!r} already has {busy} deliveries in progress (limit {limit})")
        # the server's own deadline: a stream that stalls is cancelled, whatever the client asked
        watchdog = threading.Timer(self.options.rpc_timeout, context.cancel)
        watchdog.daemon = True
        watchdog.start()
        try:
            return self._receive(peer, frames, context)
        finally:
            watchdog.cancel()
            with self._lock:
                self._streams[peer] -= 1

    def _receive(self, peer: str, frames: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        first = next(frames, None)
        if first is None:
            self._abort(context, peer, grpc.StatusCode.INVALID_ARGUMENT, "empty Deliver stream (no header)")
        assert first is not None
        if len(first) > MAX_HEADER_BYTES:
            self._abort(context, peer, grpc.StatusCode.INVALID_ARGUMENT, f"envelope header above {MAX_HEADER_BYTES} bytes")
        try:
            header = _parse_header(first)
        except ProtocolError as exc:
            self._abort(context, peer, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if header["v"] != self._protocol_version:
            self._abort(
                context, peer, grpc.StatusCode.FAILED_PRECONDITION,
                f"transport protocol version mismatch: {peer!r} speaks fedsilo.transport v{header['v']}, "
                f"{self.party!r} speaks v{self._protocol_version}",
            )
        what = f"envelope {header['kind']!r} seq {header['seq']} of job {header['job']!r}"
        if header["sender"] != peer:
            self._abort(context, peer, grpc.StatusCode.PERMISSION_DENIED,
                        f"{what} claims sender {header['sender']!r} but the authenticated peer is {peer!r}")
        if header["recipient"] != self.party:
            self._abort(context, peer, grpc.StatusCode.INVALID_ARGUMENT,
                        f"{what} is addressed to {header['recipient']!r}, this party is {self.party!r}")
        size, limit = header["size"], self.options.max_message_bytes
        if size > limit:
            self._abort(context, peer, grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"{what} of {size} bytes exceeds the limit of {self.party!r}, {limit} bytes (max_message_bytes)")
        with self._lock:
            members = self._members.get(header["job"])
            closed = header["job"] in self._closed_jobs
        if members is None and closed:
            # the job ended here (done, aborted, the agent stopping): the sender's failure follows
            # this party's, and says so (ABORTED -> JobAbortedError), so this party's own error wins
            self._abort(context, peer, grpc.StatusCode.ABORTED, f"{what}: the job is closed at {self.party!r}")
        if members is None and self.registered_jobs_only:
            self._abort(context, peer, grpc.StatusCode.PERMISSION_DENIED, f"{what}: no such job on {self.party!r}")
        if members is not None and peer not in members:
            self._abort(context, peer, grpc.StatusCode.PERMISSION_DENIED, f"{what}: {peer!r} is not a peer of that job")
        body = bytearray()
        for frame in frames:
            if len(body) + len(frame) > size:
                self._abort(context, peer, grpc.StatusCode.INVALID_ARGUMENT,
                            f"{what} body is longer than its declared {size} bytes")
            body += frame
        if len(body) != size:
            self._abort(context, peer, grpc.StatusCode.INVALID_ARGUMENT,
                        f"{what} body is truncated ({len(body)} of {size} bytes)")
        env = Envelope(header["job"], header["round"], peer, self.party, header["kind"], bytes(body), header["seq"])
        try:  # the job's inbox exists only once a whole envelope arrived (a bare header claims nothing)
            box = self.inbox(header["job"])
        except ProtocolError as exc:
            self._abort(context, peer, grpc.StatusCode.FAILED_PRECONDITION, f"{what}: {exc}")
        try:
            status = box.put(env)
        except _InboxClosed as exc:
            self._abort(context, peer, grpc.StatusCode.FAILED_PRECONDITION, f"{what}: {exc}")
        except ProtocolError as exc:
            self._abort(context, peer, grpc.StatusCode.RESOURCE_EXHAUSTED, f"{what}: {exc}")
        if status == "duplicate":
            self._refused(peer, f"{what} is a duplicate (a replay or a retried delivery); not delivered again")
        else:
            log.debug("party %s accepted %s from %s (%d bytes)", self.party, what, peer, size)
        return codec.encode({"status": status})


def _decode_dict(data: bytes) -> dict[str, Any] | None:
    try:
        msg = codec.decode(data)
    except ProtocolError:
        return None
    return msg if isinstance(msg, dict) else None


_HEADER_FIELDS = {"v": int, "job": str, "round": int, "sender": str, "recipient": str, "kind": str, "seq": int, "size": int}


def _parse_header(data: bytes) -> dict[str, Any]:
    msg = _decode_dict(data)
    if msg is None:
        raise ProtocolError("malformed envelope header")
    if set(msg) != set(_HEADER_FIELDS):
        raise ProtocolError(f"envelope header fields {sorted(msg)}, expected {sorted(_HEADER_FIELDS)}")
    for k, t in _HEADER_FIELDS.items():
        if not isinstance(msg[k], t) or isinstance(msg[k], bool):
            raise ProtocolError(f"envelope header field {k!r} is not of type {t.__name__}")
    for k in ("job", "kind", "sender", "recipient"):
        if not 0 < len(msg[k]) <= 256:
            raise ProtocolError(f"envelope header field {k!r} must be 1-256 characters")
    if msg["round"] < 0 or msg["seq"] < 1 or msg["size"] < 0:
        raise ProtocolError("envelope header: round must be >= 0, seq >= 1, size >= 0")
    return msg


def _header(env: Envelope, version: int) -> bytes:
    return codec.encode({
        "v": version, "job": env.job, "round": env.round, "sender": env.sender, "recipient": env.recipient,
        "kind": env.kind, "seq": env.seq, "size": len(env.body),
    })


# -- client -------------------------------------------------------------------------------------
_HANDSHAKE_HINTS = ("handshake", "ssl", "tls", "certificate", "hostname verification")


class _PeerLink:
    """The connection to one peer: one gRPC channel, one envelope in flight at a time."""

    def __init__(self, owner: "GrpcChannel", peer: str, address: str) -> None:
        self.owner = owner
        self.peer = peer
        self.address = address
        self.lock = threading.Lock()
        self.greeted = False
        o = owner.options
        channel_options = [
            # frames are at most chunk_bytes of body or a header; responses are tiny
            ("grpc.max_send_message_length", MAX_FRAME_BYTES + 1024),
            ("grpc.max_receive_message_length", MAX_HEADER_BYTES),
            # HTTP/2 pings find a dead peer even between calls (the server permits them)
            ("grpc.keepalive_time_ms", int(o.keepalive_time * 1000)),
            ("grpc.keepalive_timeout_ms", int(o.keepalive_timeout * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            # fedsilo retries itself (RetryPolicy; Deliver is idempotent by seq): no second layer
            ("grpc.enable_retries", 0),
            # reconnect quickly enough for RetryPolicy's first backoffs to see a restarted peer
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", int(o.retry.max_backoff * 1000)),
        ]
        tls = owner.server.tls
        if tls is None:
            self.channel = grpc.insecure_channel(address, options=channel_options)
            self.metadata: tuple[tuple[str, str], ...] = ((PARTY_METADATA, owner.party),)
        else:
            creds = grpc.ssl_channel_credentials(root_certificates=tls.ca, private_key=tls.key, certificate_chain=tls.cert)
            # the server's certificate must name the peer we mean to reach, whatever the address
            # the name only the peer's own certificate carries (certs.IDENTITY_DOMAIN), never a
            # plain host name another silo's certificate may also list
            channel_options.append(("grpc.ssl_target_name_override", identity_name(peer)))
            self.channel = grpc.secure_channel(address, creds, options=channel_options)
            self.metadata = ()
        self._hello = self.channel.unary_unary(HELLO)
        self._health = self.channel.unary_unary(HEALTH)
        self._deliver = self.channel.stream_unary(DELIVER)

    def close(self) -> None:
        self.channel.close()

    def _where(self) -> str:
        return f"{self.owner.party}: peer {self.peer!r} at {self.address}"

    def _call(self, what: str, fn: Callable[[], bytes]) -> bytes:
        delays = self.owner.options.retry.delays()
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
                details = exc.details() if hasattr(exc, "details") else str(exc)
                if code == grpc.StatusCode.UNAVAILABLE:
                    delay = next(delays, None)
                    if delay is not None and not self.owner._closed:
                        log.info("%s: %s unavailable (attempt %d), retrying in %.2fs: %s",
                                 self._where(), what, attempt, delay, details)
                        time.sleep(delay)
                        continue
                raise self._translate(what, code, details, attempt) from None

    def _translate(self, what: str, code: grpc.StatusCode, details: str | None, attempts: int) -> FedsiloError:
        details = details or code.name
        where = self._where()
        if code == grpc.StatusCode.UNAVAILABLE:
            if any(h in details.lower() for h in _HANDSHAKE_HINTS):
                return PeerRejectedError(
                    f"{where}: TLS handshake failed ({details}); check that both silos hold certificates "
                    f"of the same federation CA, that they have not expired and that the peer's names {self.peer!r}"
                )
            return PeerTimeoutError(f"{where}: unreachable for {what} after {attempts} attempts ({details})")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return PeerTimeoutError(f"{where}: {what} did not complete before its deadline ({details})")
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return PeerRejectedError(f"{where}: does not serve {SERVICE} ({details})")
        if code == grpc.StatusCode.ABORTED:
            return JobAbortedError(f"{where} refused {what}: {details}")
        return PeerRejectedError(f"{where} refused {what}: {code.name}: {details}")

    def hello(self) -> None:
        version = self.owner._protocol_version
        request = codec.encode({"v": version, "party": self.owner.party})
        timeout = self.owner.options.connect_timeout
        reply = _decode_dict(self._call("Hello", lambda: self._hello(request, timeout=timeout, metadata=self.metadata)))
        if reply is None:
            raise PeerRejectedError(f"{self._where()}: malformed Hello reply")
        if reply.get("v") != version:
            raise PeerRejectedError(
                f"{self._where()}: transport protocol version mismatch: {self.peer!r} speaks "
                f"fedsilo.transport v{reply.get('v')}, {self.owner.party!r} speaks v{version}"
            )
        if reply.get("party") != self.peer:
            raise PeerRejectedError(f"{self._where()}: answered as {reply.get('party')!r}")
        self.greeted = True

    def health(self) -> dict[str, Any]:
        timeout = self.owner.options.connect_timeout
        reply = _decode_dict(self._call("Health", lambda: self._health(b"", timeout=timeout, metadata=self.metadata)))
        if reply is None:
            raise PeerRejectedError(f"{self._where()}: malformed Health reply")
        return reply

    def deliver(self, env: Envelope) -> str:
        with self.lock:  # one envelope in flight per peer: the peer sees this sender's seq order
            if not self.greeted:
                self.hello()
            header = _header(env, self.owner._protocol_version)
            chunk = self.owner.options.chunk_bytes
            body = memoryview(env.body)

            def frames() -> Iterator[bytes]:
                yield header
                for i in range(0, len(body), chunk):
                    yield bytes(body[i : i + chunk])

            timeout = self.owner.options.rpc_timeout
            what = f"delivery of {env.kind!r} seq {env.seq}"
            attempts = 0

            def attempt() -> bytes:
                nonlocal attempts
                attempts += 1
                return self._deliver(frames(), timeout=timeout, metadata=self.metadata)

            reply = _decode_dict(self._call(what, attempt))
            if reply is None or reply.get("status") not in ("delivered", "duplicate"):
                raise PeerRejectedError(f"{self._where()}: malformed Deliver reply")
            if reply["status"] == "duplicate" and attempts == 1:
                # only a retry of this very envelope may find it delivered already: on a first
                # attempt the peer holds another envelope under this number, and this one is lost
                raise ProtocolError(f"{self._where()}: {what} was taken for a replay (its number was already used)")
            return str(reply["status"])


class GrpcChannel(Channel):
    """One party's channel for one job over gRPC: sends to the peers' :class:`PartyServer`\\ s
    and receives from its own ``server``'s inbox for ``job``.

    ``peers`` maps each peer's silo name to its ``host:port`` (the local party may be listed; it
    is ignored). Every peer must be on ``server``'s allow-list, and in insecure mode every
    address must be loopback. Connections are opened lazily (a ``Hello`` on the first envelope
    to a peer) or all at once by :meth:`connect`. :meth:`close` (or leaving the ``with`` block)
    closes the connections and the job's inbox.
    """

    def __init__(
        self,
        server: PartyServer,
        *,
        job: str,
        peers: Mapping[str, str],
        options: TransportOptions | None = None,
        senders: Iterable[str] | None = None,
    ) -> None:
        super().__init__(party=server.party, job=job, peers=peers, identity=server.identity)
        if not isinstance(job, str) or not 0 < len(job) <= 256:
            raise ConfigError(f"invalid job id {job!r}: 1-256 characters")
        self.server = server
        self.options = options or server.options
        self._protocol_version = server._protocol_version
        self._closed = False
        strangers = sorted(self.peers - server.allow)
        if strangers:
            raise ConfigError(
                f"{self.party}: peers {strangers} of job {job!r} are not on this silo's allow-list "
                f"({', '.join(sorted(server.allow)) or 'empty'}); they could not reach it"
            )
        self._links: dict[str, _PeerLink] = {}
        try:
            for name in sorted(self.peers):
                address = peers[name]
                host, _ = _split(address)
                if server.insecure:
                    _refuse_insecure(host, f"peer {name!r} address")
                self._links[name] = _PeerLink(self, name, address)
            # the job's inbox takes envelopes from the peers that send to this party (``senders``,
            # e.g. its predecessors in the federation graph), by default from every peer
            admitted = self.peers if senders is None else frozenset(senders)
            if not admitted <= self.peers:
                raise ConfigError(f"{self.party}: senders {sorted(admitted - self.peers)} of job {job!r} are not its peers")
            server.register_job(job, admitted)
            self._inbox = server.inbox(job)
        except BaseException:
            self.close()
            raise

    def connect(self) -> None:
        """Say ``Hello`` to every peer now (version and identity checks), instead of lazily."""
        for link in self._links.values():
            with link.lock:
                if not link.greeted:
                    link.hello()

    def health(self, peer: str) -> dict[str, Any]:
        """The peer's ``Health`` answer (``{"status": "serving", "party", "v"}``)."""
        if peer not in self._links:
            raise PeerRejectedError(f"{self.party}: {peer!r} is not a peer of job {self.job!r}")
        return self._links[peer].health()

    def _deliver(self, envelope: Envelope) -> None:
        if self._closed:
            raise ProtocolError(f"{self.party}: the channel of job {self.job!r} is closed")
        limit = self.options.max_message_bytes
        if len(envelope.body) > limit:
            raise ProtocolError(
                f"{self.party}: {envelope.kind!r} message of {len(envelope.body)} bytes to {envelope.recipient!r} "
                f"exceeds the transport limit of {limit} bytes (max_message_bytes)"
            )
        self._links[envelope.recipient].deliver(envelope)

    def _next(self, deadline: float) -> Envelope | None:
        if self._closed:
            raise ProtocolError(f"{self.party}: the channel of job {self.job!r} is closed")
        return self._inbox.get(deadline)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for link in getattr(self, "_links", {}).values():
            link.close()
        if hasattr(self, "_inbox"):
            self.server.close_job(self.job)

    def __enter__(self) -> "GrpcChannel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
