"""The channel contract, on the in-process transport."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsilo.errors import JobAbortedError, PeerRejectedError, PeerTimeoutError, ProtocolError
from fedsilo.protocols import codec
from fedsilo.protocols.channel import Envelope, InProcessHub, run_parties

payloads = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@given(payloads)
@settings(max_examples=200)
def test_codec_round_trip(obj) -> None:
    assert codec.decode(codec.encode(obj)) == obj


@given(st.lists(st.floats(allow_nan=False, width=32), max_size=50), st.sampled_from(["<f8", "<f4", "<i8"]))
def test_codec_arrays(values, dtype) -> None:
    arr = np.array(values, dtype=np.float64).astype(dtype) if dtype != "<i8" else np.arange(len(values))
    out = codec.decode(codec.encode({"a": arr}))["a"]
    assert out.dtype == arr.dtype and np.array_equal(out, arr, equal_nan=True)


@given(st.binary(max_size=64))
def test_codec_garbage_raises_protocol_error(data) -> None:
    try:
        codec.decode(data)
    except ProtocolError:
        pass


def test_codec_refuses_objects() -> None:
    with pytest.raises(ProtocolError, match="cannot send"):
        codec.encode({"f": object()})
    with pytest.raises(ProtocolError, match="cannot be sent"):
        codec.encode(np.array([object()]))


def test_messages_matched_by_sender_kind_round_and_buffered() -> None:
    hub = InProcessHub("job1", ["a", "b"])

    def a(ch):
        ch.send("b", "late", 2, round=2)  # arrives first, asked for second
        ch.send("b", "x", 1, round=1)
        return None

    def b(ch):
        return ch.recv("a", "x", round=1, timeout=5), ch.recv("a", "late", round=2, timeout=5)

    assert run_parties(hub, {"a": a, "b": b})["b"] == (1, 2)
    assert hub.bytes_sent()["a"] == sum(e.size for e in hub.log)


def test_stale_and_foreign_job_messages_are_dropped() -> None:
    hub = InProcessHub("job1", ["a", "b"])
    ch_b = hub.channel("b")
    hub._put(Envelope("other-job", 1, "a", "b", "x", codec.encode("stray"), 1))
    hub._put(Envelope("job1", 0, "a", "b", "x", codec.encode("stale"), 1))
    hub.channel("a").send("b", "x", "fresh", round=1)
    assert ch_b.recv("a", "x", round=1, timeout=1) == "fresh"


def test_exact_replay_within_a_round_is_never_delivered_twice() -> None:
    hub = InProcessHub("job1", ["a", "b"])
    hub.channel("a").send("b", "present", "once", round=1)
    original = hub.log[-1]
    hub._put(original)  # the same envelope again, as a replaying network would
    ch_b = hub.channel("b")
    assert ch_b.recv("a", "present", round=1, timeout=1) == "once"
    assert ch_b.gather(["a"], "present", round=1, timeout=0.05) == {}


def test_early_message_buffer_is_bounded_and_pruned(monkeypatch) -> None:
    from fedsilo.protocols import channel as channel_mod

    monkeypatch.setattr(channel_mod, "MAX_PENDING", 5)
    hub = InProcessHub("j", ["a", "b"])
    a, b = hub.channel("a"), hub.channel("b")
    for r in range(2, 6):
        a.send("b", "junk", r, round=r)
    a.send("b", "x", "wanted", round=1)
    assert b.recv("a", "x", round=1, timeout=1) == "wanted"
    assert b.gather(["a"], "junk", round=6, timeout=0.01) == {}  # rounds 2-5 pruned
    assert b._pending_count == 0
    for r in range(10, 17):
        a.send("b", "junk", r, round=r)
    with pytest.raises(ProtocolError, match="more than 5 early messages"):
        b.recv("a", "x", round=9, timeout=1)


def test_unknown_peer_and_timeout() -> None:
    hub = InProcessHub("j", ["a", "b"])
    with pytest.raises(PeerRejectedError, match="'mallory' is not a peer"):
        hub.channel("a").send("mallory", "x", 1, round=0)
    with pytest.raises(PeerTimeoutError, match="no 'x' from 'b' for round 0"):
        hub.channel("a").recv("b", "x", round=0, timeout=0.05)
    with pytest.raises(PeerRejectedError):
        hub.channel("eve")


def test_gather_returns_partial_participation() -> None:
    hub = InProcessHub("j", ["agg", "s1", "s2"])
    hub.channel("s1").send("agg", "u", 1, round=0)
    got = hub.channel("agg").gather(["s1", "s2"], "u", round=0, timeout=0.05)
    assert got == {"s1": 1}


def test_failing_party_aborts_others_with_its_error() -> None:
    hub = InProcessHub("j", ["a", "b"])

    def waits(ch):
        return ch.recv("b", "never", round=0, timeout=30)

    def fails(ch):
        raise ValueError("disk on fire")

    with pytest.raises(ValueError, match="disk on fire"):
        run_parties(hub, {"a": waits, "b": fails})
    with pytest.raises(JobAbortedError, match="party 'b' failed: ValueError: disk on fire"):
        hub.channel("a").recv("b", "x", round=0, timeout=1)


def test_early_message_buffer_is_bounded_in_bytes(monkeypatch) -> None:
    """A peer cannot park large early messages past the byte bound (a count alone allows
    MAX_PENDING maximal ciphertexts)."""
    from fedsilo.protocols import channel as channel_mod

    monkeypatch.setattr(channel_mod, "MAX_PENDING_BYTES", 10_000)
    hub = InProcessHub("j", ["a", "b"])
    a, b = hub.channel("a"), hub.channel("b")
    for r in range(2, 6):
        a.send("b", "junk", b"x" * 4000, round=r)
    with pytest.raises(ProtocolError, match="10000 bytes of them buffered"):
        b.recv("a", "x", round=1, timeout=1)


def test_a_failed_delivery_uses_up_its_sequence_number() -> None:
    """After a send that raised (e.g. a lost acknowledgement), the next message gets a new
    number: the receiver, which may hold the first, must not drop the second as a replay."""
    hub = InProcessHub("j", ["a", "b"])
    a, b = hub.channel("a"), hub.channel("b")
    delivered: list[int] = []
    real = a._deliver

    def flaky(env) -> None:
        real(env)  # the receiver got it ...
        delivered.append(env.seq)
        if len(delivered) == 1:
            raise TimeoutError("ack lost")  # ... but the sender never learns

    a._deliver = flaky  # type: ignore[method-assign]
    with pytest.raises(TimeoutError):
        a.send("b", "m", "first", round=1)
    a.send("b", "m2", "second", round=1)
    assert delivered == [1, 2]
    assert b.recv("a", "m", round=1, timeout=1) == "first" and b.recv("a", "m2", round=1, timeout=1) == "second"


def test_gather_of_several_kinds_takes_each_senders_first_answer() -> None:
    hub = InProcessHub("j", ["a", "b", "c", "agg"])
    a, b, c, agg = (hub.channel(p) for p in ("a", "b", "c", "agg"))
    b.send("agg", "withdraw", {"withdraw": True}, round=2)  # b answers with the other kind
    agg.gather(["c"], "other", round=1, timeout=0.0)  # nothing yet: b's message is buffered for round 2
    a.send("agg", "masked", {"y": 1}, round=2)
    c.send("agg", "unrelated", {"z": 0}, round=2)  # a kind not asked for: buffered, not taken
    got = agg.gather(["a", "b", "c"], ("masked", "withdraw"), round=2, timeout=0.2)
    assert got == {"a": {"y": 1}, "b": {"withdraw": True}}
    assert agg.recv("c", "unrelated", round=2, timeout=0.0) == {"z": 0}
