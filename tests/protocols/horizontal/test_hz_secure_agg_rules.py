"""Secure-aggregation refusals at the party functions silo agents run: the aggregator is never a
silo (both sides of the key ceremony), and no decrypted sum hands one silo's exact contribution
to another party unless the job allows it (``[crypto] insecure = true`` or silo-level DP)."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import pytest

from fedsilo.crypto.registry import get_backend
from fedsilo.errors import ConfigError, ProtocolError
from fedsilo.protocols import codec
from fedsilo.protocols.channel import Channel, InProcessHub, run_parties
from fedsilo.protocols.horizontal.secure_aggregation import (
    KIND_CTL,
    KIND_HELLO,
    KIND_KEY_PUBLIC,
    KIND_KEY_SECRET,
    KIND_UPDATE,
    Contribution,
    aggregator_key_ceremony,
    aggregator_secure_sum,
    check_federation,
    exposed_sums_allowed,
    exposes_contribution,
    silo_key_ceremony,
    silo_secure_sum,
)

AGG = "agg"
TIMEOUT = 5.0


class Probe:
    """One silo's contribution that records whether its data was ever encrypted or charged."""

    def __init__(self, value: float) -> None:
        self.value = value
        self.encoded = 0
        self.charged = 0

    def contribution(self) -> Contribution:
        def values(present: int) -> np.ndarray:
            self.encoded += 1
            return np.full(3, self.value)

        @contextlib.contextmanager
        def charge() -> Iterator[None]:
            self.charged += 1
            yield

        return Contribution(values=values, topup=lambda present, k: np.zeros(3), charge=charge)


def _run(
    silos: list[str],
    *,
    allow: bool = False,
    silo_allow: bool | None = None,
    min_silos: int = 1,
    drops: Mapping[str, str] | None = None,
    sit_out: tuple[str, ...] = (),
    probes: dict[str, Probe] | None = None,
) -> tuple[InProcessHub, dict[str, Any], dict[str, Probe]]:
    """One secure sum with the plain backend (the rules do not depend on the scheme)."""
    backend = get_backend("plain")
    hub = InProcessHub("rules", [*silos, AGG])
    probes = probes if probes is not None else {s: Probe(float(i + 1)) for i, s in enumerate(silos)}
    shared = backend.keygen()

    def silo(ch: Channel) -> Any:
        me = ch.party
        return silo_secure_sum(
            ch, round=1, aggregator=AGG, backend=backend, secret=shared, public=shared.public(),
            contribution=None if me in sit_out else probes[me].contribution(), timeout=TIMEOUT,
            drop=(drops or {}).get(me), allow_exposed=allow if silo_allow is None else silo_allow,
        )

    def aggregator(ch: Channel) -> Any:
        return aggregator_secure_sum(
            ch, round=1, silos=silos, backend=backend, public=shared.public(), min_silos=min_silos,
            colluders=0, timeout=1.0 if drops or sit_out else TIMEOUT, allow_exposed=allow,
        )

    parties: dict[str, Callable[[Channel], Any]] = {AGG: aggregator, **{s: silo for s in silos}}
    return hub, run_parties(hub, parties), probes


def _decrypted_nothing(hub: InProcessHub, out: dict[str, Any], silos: list[str]) -> None:
    assert not [e for e in hub.log if e.kind == KIND_CTL and codec.decode(e.body)["type"] == "result"]
    for s in silos:
        assert out[s].status == "aborted" and out[s].total is None


# ------------------------------------------------------------------------------- pure rules
def test_which_sums_expose_a_contribution() -> None:
    assert exposes_contribution(contributors=2, other_recipients=0)
    assert exposes_contribution(contributors=2, other_recipients=5)
    assert exposes_contribution(contributors=1, other_recipients=1)
    assert not exposes_contribution(contributors=1, other_recipients=0)  # a one-silo job: its own data
    assert not any(exposes_contribution(contributors=k, other_recipients=r) for k in (3, 4, 10) for r in (0, 2))
    assert exposed_sums_allowed(insecure=True, silo_level_dp=False)
    assert exposed_sums_allowed(insecure=False, silo_level_dp=True)
    assert not exposed_sums_allowed(insecure=False, silo_level_dp=False)


def test_a_two_silo_federation_is_refused_at_job_start() -> None:
    with pytest.raises(ConfigError, match=r"exactly 2 silos \(a, b\) lets each compute the other's exact contribution"):
        check_federation(silos=["b", "a"], allow_exposed=False)
    check_federation(silos=["a", "b"], allow_exposed=True)
    check_federation(silos=["a"], allow_exposed=False)
    check_federation(silos=["a", "b", "c"], allow_exposed=False)


# ----------------------------------------------------------------------------- key ceremony
def test_key_ceremony_refuses_an_aggregator_that_is_a_silo_on_both_sides() -> None:
    backend = get_backend("plain")
    hub = InProcessHub("keys", ["a", "b"])
    # the silo side: no key is made and nothing is sent, whoever the leader is
    for me in ("a", "b"):
        with pytest.raises(ConfigError, match=rf"^{me}: the aggregator 'b' is also a silo of this job"):
            silo_key_ceremony(hub.channel(me), backend, silos=["a", "b"], aggregator="b", timeout=TIMEOUT)
    # the aggregator side: it refuses to wait for a key it would share with the silos
    with pytest.raises(ConfigError, match=r"^b: the aggregator 'b' is also a silo.*could decrypt each update"):
        aggregator_key_ceremony(hub.channel("b"), backend, silos=["a", "b"], timeout=TIMEOUT)
    assert not [e for e in hub.log if e.kind in (KIND_KEY_SECRET, KIND_KEY_PUBLIC)]


def test_key_ceremony_still_works_with_a_separate_aggregator() -> None:
    backend = get_backend("plain")
    hub = InProcessHub("keys", ["a", "b", "c", AGG])
    parties: dict[str, Callable[[Channel], Any]] = {
        AGG: lambda ch: aggregator_key_ceremony(ch, backend, silos=["a", "b", "c"], timeout=TIMEOUT),
        **{s: (lambda ch: silo_key_ceremony(ch, backend, silos=["a", "b", "c"], aggregator=AGG, timeout=TIMEOUT))
           for s in "abc"},
    }
    out = run_parties(hub, parties)
    assert len({out[s].fingerprint for s in "abc"} | {out[AGG].fingerprint}) == 1
    assert out[AGG].is_private() is False


# ------------------------------------------------------------------- aggregator-side aborts
def test_two_announced_silos_are_aborted_before_anything_is_encrypted() -> None:
    hub, out, probes = _run(["a", "b"])
    agg = out[AGG]
    assert agg.status == "aborted" and "a sum of 2 would let each contributor compute the other's" in agg.reason
    assert "nothing was decrypted" in agg.reason
    _decrypted_nothing(hub, out, ["a", "b"])
    assert all(p.encoded == 0 and p.charged == 0 for p in probes.values())  # no ledger charge either
    assert not [e for e in hub.log if e.kind == KIND_UPDATE]


def test_a_round_left_with_two_contributors_by_a_dropout_decrypts_nothing() -> None:
    hub, out, _ = _run(["a", "b", "c"], drops={"c": "update"})
    agg = out[AGG]
    assert agg.status == "aborted" and agg.failures == ("c",)
    assert "only 2 of 3 announced silos sent their update; a sum of 2" in agg.reason
    _decrypted_nothing(hub, out, ["a", "b", "c"])


def test_one_contributor_is_not_revealed_to_the_silos_that_sat_out() -> None:
    hub, out, probes = _run(["a", "b", "c"], sit_out=("b", "c"))
    assert out[AGG].status == "aborted" and "a sum of 1 would give that silo's exact update to the others" in out[AGG].reason
    _decrypted_nothing(hub, out, ["a", "b", "c"])
    assert probes["a"].encoded == 0


def test_safe_sums_still_complete() -> None:
    _, out, _ = _run(["a", "b", "c"])
    assert out[AGG].status == "ok" and out[AGG].contributors == ("a", "b", "c")
    np.testing.assert_allclose(out["a"].total, np.full(3, 6.0))
    _, solo, _ = _run(["a"])  # a one-silo job sums only its own data
    assert solo[AGG].status == "ok" and solo["a"].status == "ok"


def test_insecure_or_silo_level_dp_allows_a_sum_of_two() -> None:
    _, out, probes = _run(["a", "b"], allow=True)
    assert out[AGG].status == "ok" and out[AGG].contributors == ("a", "b")
    np.testing.assert_allclose(out["a"].total, np.full(3, 3.0))
    assert probes["a"].charged == probes["b"].charged == 1


# ------------------------------------------------------------------ silo-side refusals
def test_silos_send_nothing_into_an_announced_sum_of_two() -> None:
    # an aggregator running another policy than the silos': they refuse before charging
    probes = {"a": Probe(1.0), "b": Probe(2.0)}
    with pytest.raises(ProtocolError, match=r"announced a sum of 2 silos, from which each could compute the other's"):
        _run(["a", "b"], allow=True, silo_allow=False, probes=probes)
    assert all(p.encoded == 0 and p.charged == 0 for p in probes.values())


def _rogue_result(contributors: list[str], *, receiver: str, hello: bool) -> tuple[InProcessHub, Any]:
    """An aggregator that returns a 'result' of ``contributors`` without the rules."""
    backend = get_backend("plain")
    secret = backend.keygen()
    hub = InProcessHub("rogue", ["a", "b", AGG])
    ct = backend.serialize(backend.encrypt(secret.public(), np.ones(3)))

    def aggregator(ch: Channel) -> None:
        if hello:
            ch.recv(receiver, KIND_HELLO, round=1, timeout=TIMEOUT)
        ch.send(receiver, KIND_CTL, {"type": "result", "ct": ct, "contributors": contributors, "failures": []}, round=1)

    def silo(ch: Channel) -> Any:
        return silo_secure_sum(
            ch, round=1, aggregator=AGG, backend=backend, secret=secret, public=secret.public(),
            contribution=Probe(1.0).contribution() if hello else None, timeout=TIMEOUT,
        )

    return hub, {AGG: aggregator, receiver: silo}


@pytest.mark.parametrize(
    ("contributors", "receiver", "hello", "other"),
    [(["a", "b"], "a", True, "b"), (["b"], "a", False, "b")],
    ids=["contributed-to-a-sum-of-two", "sat-out-of-a-sum-of-one"],
)
def test_silos_refuse_to_decrypt_a_sum_that_exposes_another_silo(contributors: list[str], receiver: str, hello: bool,
                                                                  other: str) -> None:
    hub, parties = _rogue_result(contributors, receiver=receiver, hello=hello)
    with pytest.raises(ProtocolError, match=rf"refusing to decrypt .* would learn '{other}''s exact update"):
        run_parties(hub, parties)


def test_a_silo_that_sat_out_may_decrypt_a_sum_of_two() -> None:
    # it learns only the sum of the two others ("a" and a third silo "c")
    hub, parties = _rogue_result(["a", "c"], receiver="b", hello=False)
    out = run_parties(hub, parties)
    assert out["b"].status == "ok" and out["b"].contributors == ("a", "c")
