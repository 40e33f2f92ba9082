"""gRPC transport (fedsilo.silos.transport): GrpcChannels exchange envelopes in order over mTLS,
chunk large payloads, run a real protocol with the in-process result, and refuse strangers,
spoofers, oversized and replayed envelopes and other protocol versions while serving the
allowed peers. Every server and channel a test opens is closed by that test (fixtures)."""
from __future__ import annotations

import datetime as dt
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import grpc
import numpy as np
import pandas as pd
import pytest

from fedsilo.errors import ConfigError, JobAbortedError, PeerRejectedError, PeerTimeoutError, ProtocolError
from fedsilo.protocols import codec
from fedsilo.protocols.channel import Channel, InProcessHub, run_parties
from fedsilo.protocols.horizontal import statistics_aggregator, statistics_silo
from fedsilo.protocols.horizontal.statistics_plan import plan_statistics
from fedsilo.protocols.spec import StatisticsSection
from fedsilo.silos.certs import TlsFiles, init_federation, issue_silo, load_tls
from fedsilo.silos.transport import (
    DELIVER,
    HELLO,
    PROTOCOL_VERSION,
    SERVICE,
    GrpcChannel,
    PartyServer,
    RetryPolicy,
    TransportOptions,
)

pytestmark = [pytest.mark.network, pytest.mark.timeout(60)]

SILOS = ["h0", "h1", "h2"]
AGG = "aggregator"
UTC = dt.timezone.utc
#: few, short retries: refusals surface in well under a second
FAST = TransportOptions(retry=RetryPolicy(attempts=2, initial_backoff=0.05, max_backoff=0.1), connect_timeout=5.0, rpc_timeout=20.0)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """TLS files: the federation (h0-h2, aggregator, and mallory, never allowed), another
    federation's h1, and an expired h1 of the real CA."""
    root = tmp_path_factory.mktemp("pki")
    past = dt.datetime.now(UTC) - dt.timedelta(days=30)
    fed = root / "fed"
    init_federation(fed, federation="hospitals", silos=[*SILOS, AGG, "mallory"], now=past)
    init_federation(root / "evil", federation="hospitals", silos=["h1"])
    old = root / "old"
    old.mkdir()
    for f in ("ca.pem", "ca.key"):
        shutil.copy2(fed / f, old / f)
    issue_silo(old, silo="h1", days=1, now=past)  # expired 29 days ago
    tls = {n: load_tls(fed / "ca.pem", fed / n / "cert.pem", fed / n / "key.pem") for n in [*SILOS, AGG, "mallory"]}
    evil = load_tls(root / "evil" / "ca.pem", root / "evil" / "h1" / "cert.pem", root / "evil" / "h1" / "key.pem")
    with pytest.raises(ConfigError, match="expired"):
        load_tls(old / "ca.pem", old / "h1" / "cert.pem", old / "h1" / "key.pem")
    expired = TlsFiles(
        ca=(old / "ca.pem").read_bytes(), cert=(old / "h1" / "cert.pem").read_bytes(),
        key=(old / "h1" / "key.pem").read_bytes(), name="h1", not_after=past + dt.timedelta(days=1),
    )
    return {"tls": tls, "evil": evil, "expired": expired}


class Net:
    """Opens servers and channels and remembers them, so the fixture closes every one."""

    def __init__(self, pki: dict[str, Any]) -> None:
        self.pki = pki
        self.opened: list[Any] = []
        self.refused: list[tuple[str | None, str]] = []

    def server(self, name: str, allow: list[str] | None = None, *, tls: TlsFiles | None = None,
               options: TransportOptions = FAST, insecure: bool = False) -> PartyServer:
        s = PartyServer(
            tls=None if insecure else (tls or self.pki["tls"][name]), party=name if insecure else None,
            allow=allow if allow is not None else [*SILOS, AGG], insecure=insecure, options=options,
            on_refused=lambda peer, reason: self.refused.append((peer, reason)),
        )
        self.opened.append(s)
        return s

    def channel(self, server: PartyServer, job: str, peers: dict[str, str], options: TransportOptions | None = None) -> GrpcChannel:
        ch = GrpcChannel(server, job=job, peers=peers, options=options)
        self.opened.append(ch)
        return ch

    def mesh(self, names: list[str], job: str = "job", insecure: bool = False) -> dict[str, GrpcChannel]:
        servers = {n: self.server(n, insecure=insecure) for n in names}
        peers = {n: s.address for n, s in servers.items()}
        return {n: self.channel(s, job, peers) for n, s in servers.items()}

    @contextmanager
    def raw(self, address: str, tls: TlsFiles | None, target: str, *, client_cert: bool = True) -> Iterator[grpc.Channel]:
        """A bare gRPC client (to send what GrpcChannel never would)."""
        if tls is None:
            ch = grpc.insecure_channel(address)
        else:
            creds = grpc.ssl_channel_credentials(
                root_certificates=tls.ca, private_key=tls.key if client_cert else None,
                certificate_chain=tls.cert if client_cert else None,
            )
            ch = grpc.secure_channel(address, creds, options=[("grpc.ssl_target_name_override", target)])
        try:
            yield ch
        finally:
            ch.close()


@pytest.fixture
def net(pki: dict[str, Any]) -> Iterator[Net]:
    n = Net(pki)
    try:
        yield n
    finally:
        for thing in reversed(n.opened):
            thing.close()


def _hello(ch: grpc.Channel, party: str, version: int = PROTOCOL_VERSION) -> dict[str, Any]:
    return codec.decode(ch.unary_unary(HELLO)(codec.encode({"v": version, "party": party}), timeout=5))


def _frames(*, sender: str, recipient: str, body: bytes, seq: int = 1, job: str = "job", kind: str = "m",
            size: int | None = None, round: int = 1) -> list[bytes]:
    header = {"v": PROTOCOL_VERSION, "job": job, "round": round, "sender": sender, "recipient": recipient,
              "kind": kind, "seq": seq, "size": len(body) if size is None else size}
    return [codec.encode(header), body] if body else [codec.encode(header)]


def _deliver(ch: grpc.Channel, frames: list[bytes]) -> dict[str, Any]:
    return codec.decode(ch.stream_unary(DELIVER)(iter(frames), timeout=5))


def _works(net: Net, server: PartyServer, sender: str = "h0", job: str = "check") -> None:
    """An allowed peer still gets through."""
    s = net.server(sender)
    a = net.channel(s, job, {server.party: server.address})
    b = net.channel(server, job, {sender: s.address})
    a.send(server.party, "ping", {"ok": 1}, round=1)
    assert b.recv(sender, "ping", round=1, timeout=10) == {"ok": 1}


# -- exchanges ---------------------------------------------------------------------------------
def test_three_channels_exchange_in_order(net: Net) -> None:
    ch = net.mesh(["h0", "h1", "h2"])
    for r in range(1, 21):
        ch["h0"].send("h2", "m", {"r": r, "from": "h0"}, round=r)
        ch["h1"].send("h2", "m", np.full(3, r), round=r)
    for r in range(1, 21):
        got = ch["h2"].gather(["h0", "h1"], "m", round=r, timeout=10)
        assert got["h0"] == {"r": r, "from": "h0"}
        np.testing.assert_array_equal(got["h1"], np.full(3, r))
    ch["h2"].broadcast(["h0", "h1"], "done", "bye", round=21)
    assert ch["h0"].recv("h2", "done", round=21, timeout=10) == "bye"
    assert ch["h1"].recv("h2", "done", round=21, timeout=10) == "bye"
    assert ch["h2"].health("h0") == {"status": "serving", "party": "h0", "v": PROTOCOL_VERSION}


def test_large_payload_is_chunked_and_arrives_intact(net: Net) -> None:
    ch = net.mesh(["h0", "h1"])
    rng = np.random.default_rng(3)
    blob = rng.bytes(6 * 1024 * 1024 + 17)  # above gRPC's 4 MiB message limit: only chunks get through
    arr = rng.standard_normal(700_000)  # 5.6 MB
    ch["h0"].send("h1", "blob", {"ct": blob, "arr": arr}, round=1)
    got = ch["h1"].recv("h0", "blob", round=1, timeout=30)
    assert got["ct"] == blob
    np.testing.assert_array_equal(got["arr"], arr)


def _statistics_parties(frames: dict[str, pd.DataFrame]) -> dict[str, Callable[[Channel], Any]]:
    """The production party functions of a statistics job (plain backend, no DP: exact)."""
    request = StatisticsSection(columns=["age", "dose"], queries=["count", "sum", "mean", "histogram"], bins=6,
                                range={"age": (0.0, 100.0), "dose": (-5.0, 5.0)})
    plan = plan_statistics(request, None, silos=len(SILOS))
    parties: dict[str, Callable[[Channel], Any]] = {
        AGG: lambda ch: statistics_aggregator(ch, silos=SILOS, backend="plain", backend_params={}, min_silos=2,
                                              colluders=1, timeout=20.0),
    }
    for n in SILOS:
        parties[n] = lambda ch, n=n: statistics_silo(
            ch, job="stats", silos=SILOS, aggregator=AGG, frame=frames[n], plan=plan, backend="plain",
            backend_params={}, timeout=20.0, insecure=True,  # plain backend: a test baseline
        )
    return parties


@pytest.mark.parametrize("insecure", [False, True], ids=["mtls", "plaintext-loopback"])
def test_statistics_protocol_over_grpc_equals_in_process(net: Net, insecure: bool) -> None:
    rng = np.random.default_rng(5)
    frames = {n: pd.DataFrame({"age": rng.uniform(20, 90, k).round(1), "dose": rng.normal(0, 1.5, k)})
              for n, k in zip(SILOS, (60, 90, 40))}
    parties = _statistics_parties(frames)
    want = run_parties(InProcessHub("stats", [*SILOS, AGG]), parties)
    ch = net.mesh([*SILOS, AGG], job="stats", insecure=insecure)
    with ThreadPoolExecutor(len(parties)) as pool:
        futures = {n: pool.submit(fn, ch[n]) for n, fn in parties.items()}
        got = {n: f.result(timeout=50) for n, f in futures.items()}
    assert got[AGG]["status"] == "ok" and got[AGG]["contributors"] == SILOS
    pooled = pd.concat(frames.values())
    for n in SILOS:
        assert got[n]["statistics"] == want[n]["statistics"]
        assert got[n]["raw"] == want[n]["raw"]
        assert got[n]["statistics"]["age"]["count"] == len(pooled)
        assert got[n]["statistics"]["dose"]["sum"] == pytest.approx(pooled["dose"].sum(), abs=1e-6)


# -- refusals; the server keeps serving the allowed peers -------------------------------------------
def test_client_cert_of_another_ca_fails_the_handshake(net: Net) -> None:
    server = net.server("h2")
    with net.raw(server.address, net.pki["evil"], "h2") as raw:
        with pytest.raises(grpc.RpcError) as err:
            _hello(raw, "h1")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    evil = net.server("h1", tls=net.pki["evil"])
    with pytest.raises(PeerRejectedError, match=r"h1: peer 'h2' at 127\.0\.0\.1:\d+: TLS handshake failed"):
        net.channel(evil, "job", {"h2": server.address}).send("h2", "m", 1, round=1)
    _works(net, server)


def test_expired_client_cert_fails_the_handshake(net: Net) -> None:
    server = net.server("h2")
    with net.raw(server.address, net.pki["expired"], "h2") as raw:
        with pytest.raises(grpc.RpcError) as err:
            _hello(raw, "h1")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not server._inboxes
    _works(net, server)


def test_no_client_cert_is_refused(net: Net) -> None:
    server = net.server("h2")
    with net.raw(server.address, net.pki["tls"]["h1"], "h2", client_cert=False) as raw:
        with pytest.raises(grpc.RpcError) as err:
            _deliver(raw, _frames(sender="h1", recipient="h2", body=b"x"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not server._inboxes
    _works(net, server)


def test_server_certificate_must_name_the_dialed_peer(net: Net) -> None:
    h1, h2 = net.server("h1"), net.server("h2")
    # h0 believes h2 lives at h1's address: h1's certificate does not name h2
    ch = net.channel(net.server("h0"), "job", {"h1": h1.address, "h2": h1.address})
    with pytest.raises(PeerRejectedError, match="TLS handshake failed"):
        ch.send("h2", "m", 1, round=1)
    assert not h1._inboxes and not h2._inboxes


def test_valid_cert_not_on_the_allow_list_is_denied_before_any_handler(net: Net, caplog: pytest.LogCaptureFixture) -> None:
    server = net.server("h2", allow=["h0", "h1"])
    caplog.set_level(logging.DEBUG, logger="fedsilo.silos.transport")
    with net.raw(server.address, net.pki["tls"]["mallory"], "h2") as raw:
        with pytest.raises(grpc.RpcError) as err:
            _deliver(raw, _frames(sender="mallory", recipient="h2", body=b"hello"))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "silo 'mallory' is not on the allow-list of 'h2'" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            raw.unary_unary(f"/{SERVICE}/NoSuchMethod")(b"", timeout=5)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED  # strangers learn no method names
    assert not server._inboxes  # the Deliver handler never ran
    assert [p for p, _ in net.refused] == ["mallory", "mallory"]
    refused = [r for r in caplog.records if "refused 'mallory'" in r.getMessage()]
    assert len(refused) == 2 and all(r.levelno == logging.WARNING for r in refused)
    assert not [r for r in caplog.records if "accepted" in r.getMessage()]
    mallory = net.server("mallory", allow=["h2"])
    with pytest.raises(PeerRejectedError, match=r"mallory: peer 'h2' at .* refused Hello: PERMISSION_DENIED"):
        net.channel(mallory, "job", {"h2": server.address}).send("h2", "m", 1, round=1)
    _works(net, server)


def test_allowed_peer_calling_an_unknown_method_gets_unimplemented(net: Net) -> None:
    server = net.server("h2")
    with net.raw(server.address, net.pki["tls"]["h1"], "h2") as raw:
        for method in (f"/{SERVICE}/NoSuchMethod", "/other.Service/Deliver"):
            with pytest.raises(grpc.RpcError) as err:
                raw.unary_unary(method)(b"", timeout=5)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert _hello(raw, "h1") == {"v": PROTOCOL_VERSION, "party": "h2"}
    _works(net, server)


def test_sender_spoofing_is_refused_and_logged(net: Net) -> None:
    server = net.server("h2")
    inbox_ch = net.channel(server, "job", {"h0": "127.0.0.1:1", "h1": "127.0.0.1:1"})
    with net.raw(server.address, net.pki["tls"]["h1"], "h2") as raw:
        with pytest.raises(grpc.RpcError) as err:
            _deliver(raw, _frames(sender="h0", recipient="h2", body=codec.encode("from h0, honest")))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "claims sender 'h0' but the authenticated peer is 'h1'" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:  # nor may it address another party through this one
            _deliver(raw, _frames(sender="h1", recipient="h0", body=codec.encode("x")))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert net.refused[0][0] == "h1" and "claims sender 'h0'" in net.refused[0][1]
    assert inbox_ch.gather(["h0"], "m", round=1, timeout=0.3) == {}
    _works(net, server)


def test_oversized_messages_are_refused_on_both_sides(net: Net) -> None:
    small = TransportOptions(max_message_bytes=1024 * 1024, retry=FAST.retry)
    big = TransportOptions(max_message_bytes=8 * 1024 * 1024, retry=FAST.retry)
    receiver = net.server("h1", options=small)
    sender = net.server("h0", options=small)
    payload = b"\x00" * (2 * 1024 * 1024)
    ch = net.channel(sender, "job", {"h1": receiver.address})
    with pytest.raises(ProtocolError, match=r"h0: 'm' message of \d+ bytes to 'h1' exceeds the transport limit of 1048576"):
        ch.send("h1", "m", payload, round=1)
    loose = net.channel(net.server("h2", options=big), "job", {"h1": receiver.address})
    with pytest.raises(PeerRejectedError, match=r"RESOURCE_EXHAUSTED: .* exceeds the limit of 'h1', 1048576 bytes"):
        loose.send("h1", "m", payload, round=1)
    with net.raw(receiver.address, net.pki["tls"]["h0"], "h1") as raw:  # a header that lies about the size
        with pytest.raises(grpc.RpcError) as err:
            _deliver(raw, _frames(sender="h0", recipient="h1", body=b"x" * 100, size=10))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "longer than its declared 10" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            _deliver(raw, _frames(sender="h0", recipient="h1", body=b"x" * 10, size=100))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "truncated" in err.value.details()
    assert not any(box._queue for box in receiver._inboxes.values())
    _works(net, receiver)


def test_replayed_envelope_is_not_delivered_twice(net: Net) -> None:
    server = net.server("h2")
    ch = net.channel(server, "job", {"h1": "127.0.0.1:1"})
    frames = _frames(sender="h1", recipient="h2", body=codec.encode({"pay": 100}), seq=1)
    with net.raw(server.address, net.pki["tls"]["h1"], "h2") as raw:
        assert _deliver(raw, frames) == {"status": "delivered"}
        assert _deliver(raw, frames) == {"status": "duplicate"}
        assert ch.recv("h1", "m", round=1, timeout=5) == {"pay": 100}
        assert _deliver(raw, frames) == {"status": "duplicate"}
    assert ch.gather(["h1"], "m", round=1, timeout=0.3) == {}
    assert any("duplicate" in reason for _, reason in net.refused)


def test_protocol_version_mismatch_names_both_versions(net: Net) -> None:
    server = net.server("h2")
    with net.raw(server.address, net.pki["tls"]["h1"], "h2") as raw:
        with pytest.raises(grpc.RpcError) as err:
            _hello(raw, "h1", version=PROTOCOL_VERSION + 1)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"'h1' speaks fedsilo.transport v{PROTOCOL_VERSION + 1}, 'h2' speaks v{PROTOCOL_VERSION}" in err.value.details()
    newer = net.server("h0")
    newer._protocol_version = PROTOCOL_VERSION + 1  # a peer from a future release
    ch = net.channel(net.server("h1"), "job", {"h0": newer.address})
    with pytest.raises(PeerRejectedError, match=rf"version mismatch: 'h1' speaks fedsilo.transport v{PROTOCOL_VERSION}, 'h0' speaks v{PROTOCOL_VERSION + 1}"):
        ch.send("h0", "m", 1, round=1)
    _works(net, server)


def test_inbox_is_bounded(net: Net) -> None:
    opts = TransportOptions(inbox_messages=2, retry=FAST.retry)
    receiver = net.server("h1", options=opts)
    ch = net.channel(net.server("h0"), "job", {"h1": receiver.address})
    ch.send("h1", "m", 1, round=1)
    ch.send("h1", "m", 2, round=2)
    with pytest.raises(PeerRejectedError, match="inbox of job 'job' is full"):
        ch.send("h1", "m", 3, round=3)


def test_unreachable_peer_retries_then_times_out(net: Net) -> None:
    gone = net.server("h1")
    address = gone.address
    gone.stop()
    ch = net.channel(net.server("h0"), "job", {"h1": address},
                     options=TransportOptions(retry=RetryPolicy(attempts=3, initial_backoff=0.05, max_backoff=0.1)))
    t0 = time.monotonic()
    with pytest.raises(PeerTimeoutError, match=rf"h0: peer 'h1' at {address}: unreachable for Hello after 3 attempts"):
        ch.send("h1", "m", 1, round=1)
    assert time.monotonic() - t0 < 5


def test_transient_unavailability_is_retried(net: Net) -> None:
    probe = net.server("h1")
    port = probe.port
    probe.stop()
    late: list[PartyServer] = []

    def start_later() -> None:
        time.sleep(0.4)
        s = PartyServer(tls=net.pki["tls"]["h1"], allow=SILOS, port=port, options=FAST)
        net.opened.append(s)
        late.append(s)

    starter = threading.Thread(target=start_later)
    starter.start()
    try:
        patient = TransportOptions(retry=RetryPolicy(attempts=8, initial_backoff=0.1, max_backoff=0.4))
        ch = net.channel(net.server("h0"), "job", {"h1": f"127.0.0.1:{port}"}, options=patient)
        ch.send("h1", "m", "after a restart", round=1)
    finally:
        starter.join(10)
    receiver = net.channel(late[0], "job", {"h0": "127.0.0.1:1"})
    assert receiver.recv("h0", "m", round=1, timeout=5) == "after a restart"


def test_a_port_in_use_is_a_clear_error(net: Net) -> None:
    taken = net.server("h1")
    with pytest.raises(ConfigError, match=rf"party 'h1': cannot listen on 127.0.0.1:{taken.port}"):
        PartyServer(tls=net.pki["tls"]["h1"], allow=SILOS, port=taken.port)


def test_insecure_mode_is_loopback_only(net: Net) -> None:
    with pytest.raises(ConfigError, match="no TLS files"):
        PartyServer(party="h0", allow=SILOS)
    with pytest.raises(ConfigError, match="loopback only; host '0.0.0.0'"):
        PartyServer(party="h0", allow=SILOS, insecure=True, host="0.0.0.0")
    server = net.server("h0", insecure=True)
    with pytest.raises(ConfigError, match="loopback only; peer 'h1' address '10.0.0.2'"):
        GrpcChannel(server, job="job", peers={"h1": "10.0.0.2:7000"})
    with pytest.raises(ConfigError, match=r"peers \['mallory'\] of job 'job' are not on this silo's allow-list"):
        GrpcChannel(server, job="job", peers={"mallory": "127.0.0.1:7000"})
    with net.raw(server.address, None, "h0") as raw:  # plaintext still needs a (claimed) allowed name
        with pytest.raises(grpc.RpcError) as err:
            _hello(raw, "h1")
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_stop_wakes_waiting_parties_and_leaves_no_threads(net: Net) -> None:
    before = set(threading.enumerate())
    ch = net.mesh(["h0", "h1"], job="j")
    ch["h0"].send("h1", "m", 1, round=1)
    assert ch["h1"].recv("h0", "m", round=1, timeout=5) == 1
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            ch["h1"].recv("h0", "m", round=2, timeout=30)
        except BaseException as exc:  # noqa: BLE001 - inspected below
            errors.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    try:
        time.sleep(0.2)
        for thing in net.opened:
            if isinstance(thing, PartyServer):
                thing.stop(grace=0.5)
    finally:
        waiter.join(10)
    assert not waiter.is_alive() and isinstance(errors[0], JobAbortedError)
    for thing in net.opened:
        thing.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and set(threading.enumerate()) - before:
        time.sleep(0.05)
    assert not set(threading.enumerate()) - before


@pytest.mark.network
@pytest.mark.timeout(60)
def test_only_a_jobs_peers_may_fill_its_inbox(net: Net) -> None:
    """An allowed silo that is not a peer of a job cannot deliver into that job (security
    review: it could fill the inbox and fail the job)."""
    server = net.server("h2")
    net.channel(server, "job", {"h0": "127.0.0.1:1"})
    with net.raw(server.address, net.pki["tls"]["h1"], "h2") as raw:
        with pytest.raises(grpc.RpcError) as err:
            _deliver(raw, _frames(sender="h1", recipient="h2", body=codec.encode("junk")))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "not a peer of that job" in err.value.details()
    _works(net, server)


@pytest.mark.network
@pytest.mark.timeout(60)
def test_a_stalled_delivery_is_cancelled_by_the_server(net: Net) -> None:
    """A stream that sends its header and then nothing holds no worker past the server's own
    deadline (security review: slowloris)."""
    import threading

    server = net.server("h2", options=TransportOptions(rpc_timeout=1.0, retry=FAST.retry))
    stall = threading.Event()

    def frames():
        yield _frames(sender="h1", recipient="h2", body=b"x" * 10)[0]
        stall.wait(30)  # never sends the body

    with net.raw(server.address, net.pki["tls"]["h1"], "h2") as raw:
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            raw.stream_unary(DELIVER)(frames(), timeout=30)
        stall.set()
        assert err.value.code() == grpc.StatusCode.CANCELLED and time.monotonic() - start < 10
    _works(net, server)


@pytest.mark.network
@pytest.mark.timeout(60)
def test_an_agent_server_refuses_envelopes_of_jobs_it_never_accepted(net: Net) -> None:
    """registered_jobs_only (the agents): a peer cannot open inboxes for made-up jobs (agent
    review: 64 junk jobs blocked every later job)."""
    server = PartyServer(tls=net.pki["tls"]["h2"], allow=[*SILOS, AGG], options=FAST, registered_jobs_only=True)
    net.opened.append(server)
    with net.raw(server.address, net.pki["tls"]["h1"], "h2") as raw:
        with pytest.raises(grpc.RpcError) as err:
            _deliver(raw, _frames(sender="h1", recipient="h2", body=codec.encode("junk"), job="made-up"))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "no such job" in err.value.details()
    assert not server._inboxes
    _works(net, server)
