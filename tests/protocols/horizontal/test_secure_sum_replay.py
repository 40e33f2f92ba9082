"""A silo sends one update and one noise top-up per secure sum (privacy review, session 8): an
aggregator that announces the sum, or asks for the top-up, a second time gets a ProtocolError
and nothing more; the silo is charged once. Without the rule a second announcement drew a
second ledger charge and a second, freshly noised update of the same data."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pytest

from fedsilo.crypto.registry import get_backend
from fedsilo.errors import ProtocolError
from fedsilo.protocols.channel import InProcessHub, run_parties
from fedsilo.protocols.horizontal import messages as msgs
from fedsilo.protocols.horizontal.secure_aggregation import (
    KIND_CTL,
    KIND_HELLO,
    KIND_TOPUP,
    KIND_UPDATE,
    Contribution,
    silo_secure_sum,
)

SILOS = ["a", "b", "c"]
TIMEOUT = 10.0


def _run(aggregator_script) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:  # type: ignore[no-untyped-def]
    backend = get_backend("plain")
    key = backend.keygen()
    hub = InProcessHub("replay", [*SILOS, "agg"])
    charged = dict.fromkeys(SILOS, 0)
    encoded = dict.fromkeys(SILOS, 0)
    topups = dict.fromkeys(SILOS, 0)

    def silo(ch):  # type: ignore[no-untyped-def]
        me = ch.party

        @contextlib.contextmanager
        def charge() -> Iterator[None]:
            charged[me] += 1
            yield

        def values(n: int) -> np.ndarray:
            encoded[me] += 1
            return np.ones(3)

        def topup(present: int, contributors: int) -> np.ndarray:
            topups[me] += 1
            return np.zeros(3)

        return silo_secure_sum(ch, round=1, aggregator="agg", backend=backend, secret=key, public=key.public(),
                               contribution=Contribution(values=values, topup=topup, charge=charge), timeout=TIMEOUT)

    with pytest.raises(ProtocolError) as err:
        run_parties(hub, {"agg": aggregator_script, **dict.fromkeys(SILOS, silo)})
    return charged, encoded, topups, str(err.value)  # type: ignore[return-value]


def _present_and_collect(ch) -> None:  # type: ignore[no-untyped-def]
    for s in SILOS:
        ch.send(s, KIND_CTL, msgs.Present(3).wire(), round=1)
    for s in SILOS:
        ch.recv(s, KIND_UPDATE, round=1, timeout=TIMEOUT)


def test_a_second_announcement_of_the_sum_is_refused_and_charged_nothing() -> None:
    def aggregator(ch):  # type: ignore[no-untyped-def]
        for s in SILOS:
            ch.recv(s, KIND_HELLO, round=1, timeout=TIMEOUT)
        _present_and_collect(ch)
        for s in SILOS:  # announce again: each silo would charge and send a second noised update
            ch.send(s, KIND_CTL, msgs.Present(3).wire(), round=1)
        for s in SILOS:
            ch.recv(s, KIND_UPDATE, round=1, timeout=TIMEOUT)

    charged, encoded, _, message = _run(aggregator)
    assert charged == dict.fromkeys(SILOS, 1) and encoded == dict.fromkeys(SILOS, 1)
    assert "announced the sum a second time" in message and "one update per round" in message


def test_a_second_noise_topup_request_is_refused() -> None:
    def aggregator(ch):  # type: ignore[no-untyped-def]
        for s in SILOS:
            ch.recv(s, KIND_HELLO, round=1, timeout=TIMEOUT)
        _present_and_collect(ch)
        for _ in range(2):
            for s in SILOS:
                ch.send(s, KIND_CTL, msgs.TopupRequest(present=3, contributors=2).wire(), round=1)
            for s in SILOS:
                ch.recv(s, KIND_TOPUP, round=1, timeout=TIMEOUT)

    charged, _, topups, message = _run(aggregator)
    assert charged == dict.fromkeys(SILOS, 1) and topups == dict.fromkeys(SILOS, 1)
    assert "asked for a second noise top-up" in message
