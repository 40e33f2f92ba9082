"""SecAgg+ against an *active* aggregator: it relays every key, share and survivor set, so each
must carry its owner's signature (fedsilo.protocols.identity) and every silo checks them.

Each test plays the aggregator rewriting one relayed message and shows that the silo it targets
refuses (ProtocolError naming what failed) before sending anything that would help: no shares
sealed under a substituted key, no unmasking shares for an uncertified or split survivor set."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from fedsilo.errors import ConfigError, ProtocolError
from fedsilo.protocols.channel import Channel, InProcessHub, run_parties
from fedsilo.protocols.horizontal import secagg as P
from fedsilo.protocols.identity import LocalDirectory, signed_message

AGG = "agg"
GRID = 2.0**-16


def _silos(n: int) -> list[str]:
    return [f"site{i}" for i in range(n)]


class _Rewriting:
    """The aggregator's channel with its control messages of one ``type`` rewritten per recipient."""

    def __init__(self, channel: Any, *, type: str, rewrite: Callable[[str, dict[str, Any]], dict[str, Any]]) -> None:
        self._channel, self._type, self._rewrite = channel, type, rewrite

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)

    def send(self, recipient: str, kind: str, payload: Any, *, round: int) -> int:
        if kind == P.KIND_CONTROL and payload.get("type") == self._type:
            payload = self._rewrite(recipient, dict(payload))
        return self._channel.send(recipient, kind, payload, round=round)


def _run(spec: P.SecAggSpec, *, type: str | None = None, rewrite: Any = None, job: str = "job-active",
         silo_timeout: float = 30.0) -> tuple[InProcessHub, dict[str, Any]]:
    hub = InProcessHub(job, [*spec.silos, AGG])
    values = {s: np.full(spec.length, 0.25) for s in spec.silos}

    def aggregator(ch: Channel) -> Any:
        wrapped = _Rewriting(ch, type=type, rewrite=rewrite) if type else ch
        return P.aggregator_secagg_sum(wrapped, round=1, spec=spec, timeout=3.0)  # type: ignore[arg-type]

    parties: dict[str, Any] = {
        s: (lambda ch, s=s: P.silo_secagg_sum(ch, round=1, aggregator=AGG, spec=spec, values=values[s], timeout=silo_timeout))
        for s in spec.silos
    }
    parties[AGG] = aggregator
    return hub, run_parties(hub, parties)


def _spec(n: int = 5, **kw: Any) -> P.SecAggSpec:
    return P.secagg_spec(silos=_silos(n), length=8, granularity=GRID, value_bound=1.0, **kw)


def _sent_by(hub: InProcessHub, silo: str, kind: str) -> list[Any]:
    return [e for e in hub.log if e.sender == silo and e.kind == kind]


def test_an_honest_round_signs_and_checks_everything() -> None:
    hub, out = _run(_spec())
    assert out[AGG].status == "ok" and np.allclose(out[AGG].total, 5 * 0.25)
    assert len([e for e in hub.log if e.kind == P.KIND_CONSISTENCY]) == 5


def test_a_substituted_advertised_key_is_refused_before_any_share_is_sealed() -> None:
    from fedsilo.crypto import secagg as sa

    fake = sa.AgreementKey.generate()  # the aggregator's own key, in place of site1's sealing key

    def swap(recipient: str, p: dict[str, Any]) -> dict[str, Any]:
        peers = {v: list(item) for v, item in p["peers"].items()}
        if recipient == "site0" and "site1" in peers:
            peers["site1"][0] = fake.public
        return {**p, "peers": peers}

    with pytest.raises(ProtocolError, match="signature of 'site1' does not verify"):
        hub, _ = _run(_spec(), type="keys", rewrite=swap)


def test_an_advert_re_signed_by_the_aggregator_is_not_the_silos() -> None:
    from fedsilo.crypto import secagg as sa

    fake = sa.AgreementKey.generate()
    holder: dict[str, Any] = {}

    def resign(recipient: str, p: dict[str, Any]) -> dict[str, Any]:
        ident = holder["agg"]
        peers = {v: list(item) for v, item in p["peers"].items()}
        if recipient == "site0":
            c, s, commit = fake.public, peers["site1"][1], peers["site1"][2]
            peers["site1"] = [c, s, commit, ident.credential,
                              ident.sign(P.advert_digest(job="job-active", round=1, silo="site1", c=c, s=s, commit=commit))]
        return {**p, "peers": peers}

    spec = _spec()
    hub = InProcessHub("job-active", [*spec.silos, AGG])
    holder["agg"] = hub.channel(AGG).identity

    def aggregator(ch: Channel) -> Any:
        return P.aggregator_secagg_sum(_Rewriting(ch, type="keys", rewrite=resign), round=1, spec=spec,  # type: ignore[arg-type]
                                       timeout=3.0)

    parties: dict[str, Any] = {s: (lambda ch, s=s: P.silo_secagg_sum(ch, round=1, aggregator=AGG, spec=spec,
                                                                       values=np.zeros(8), timeout=30.0)) for s in spec.silos}
    parties[AGG] = aggregator
    with pytest.raises(ProtocolError, match="credential presented for 'site1' is not 'site1'"):
        run_parties(hub, parties)
    assert not _sent_by(hub, "site0", P.KIND_SHARES)  # nothing was sealed under the aggregator's key


def test_a_split_survivor_set_cannot_be_certified() -> None:
    """The aggregator tells site0..site4 that site9 dropped and site5..site9 that it survived:
    each story gets 5 signatures, fewer than the 6 (= ⌊(10 + 1)/2⌋ + 1) that certify a set."""
    spec = _spec(10, threshold=6)
    assert spec.min_survivors == 6

    def split(recipient: str, p: dict[str, Any]) -> dict[str, Any]:
        if recipient in _silos(5):
            return {**p, "u3": [s for s in p["u3"] if s != "site9"]}
        return p

    hub, out = _run(spec, type="survivors", rewrite=split)
    # the honest aggregator code keeps only signatures on its own set (site5..9): 5 < 6, abort
    assert out[AGG].status == "aborted" and out[AGG].stage == "consistency" and "only 5 of 10 silos signed" in out[AGG].reason
    assert not [e for e in hub.log if e.kind == P.KIND_REVEAL]


def test_a_silo_refuses_to_unmask_without_a_certified_survivor_set() -> None:
    """The aggregator forwards only 3 of the 5 signatures (a set 3 silos signed is not certified)."""
    def strip(recipient: str, p: dict[str, Any]) -> dict[str, Any]:
        return {**p, "signatures": dict(sorted(p["signatures"].items())[:3])} if recipient == "site2" else p

    with pytest.raises(ProtocolError, match="signed by 3 silos, fewer than the 4"):
        _run(_spec(), type="unmask", rewrite=strip)


def test_a_forged_survivor_signature_is_refused() -> None:
    def forge(recipient: str, p: dict[str, Any]) -> dict[str, Any]:
        sigs = dict(p["signatures"])
        cred, sig = sigs["site4"]
        sigs["site4"] = [cred, bytes(64)]
        return {**p, "signatures": sigs} if recipient == "site1" else p

    with pytest.raises(ProtocolError, match="signature of 'site4' does not verify"):
        _run(_spec(), type="unmask", rewrite=forge)


def test_an_unmasking_request_off_the_certified_set_is_refused() -> None:
    """Asking for a survivor's pairwise share (as if it had dropped) contradicts the certified U3."""
    def shift(recipient: str, p: dict[str, Any]) -> dict[str, Any]:
        if recipient != "site0":
            return p
        moved = p["self_mask"][0]
        return {**p, "self_mask": p["self_mask"][1:], "pairwise": [*p["pairwise"], moved]}

    hub = None
    with pytest.raises(ProtocolError, match="does not follow the certified survivor set"):
        hub, _ = _run(_spec(), type="unmask", rewrite=shift)


@pytest.mark.parametrize(
    ("rewrite", "match"),
    [
        (lambda r, p: {**p, "u3": [s for s in p["u3"] if s != r]}, "leaves out"),
        (lambda r, p: {**p, "u3": sorted({r, "site0"})}, "a survivor set of 2 silos, below the 4"),
        (lambda r, p: {**p, "u2": [r]}, "malformed survivor set"),
        (lambda r, p: {**p, "u2": [s for s in p["u2"] if s != "site0"], "u3": [s for s in p["u3"] if s != "site0"]},
         "disagrees with the shares forwarded"),
        (lambda r, p: {**p, "u3": ["zz", *p["u3"]]}, "malformed survivor set"),
        (lambda r, p: {**p, "u3": list(reversed(p["u3"]))}, "malformed survivor set"),
    ],
    ids=["me-left-out", "below-quorum", "u3-not-in-u2", "u2-not-what-was-forwarded", "unknown-silo", "unsorted"],
)
def test_a_silo_checks_the_survivor_set_before_signing(rewrite: Any, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        _run(_spec(), type="survivors", rewrite=lambda r, p: rewrite(r, p) if r == "site3" else p)


def test_disconnected_survivors_are_refused_by_silo_and_aggregator() -> None:
    """Survivors that fall apart in the graph would let each part's sum be unmasked alone."""
    import itertools

    names = _silos(12)
    spec = P.secagg_spec(silos=names, length=4, granularity=GRID, value_bound=1.0, degree=4, threshold=3, colluders=0)
    graph = P.round_graph(spec, job="job-active", round=1)
    assert P.connected(graph, names)
    # four silos whose removal cuts the ring-like Harary graph in two (two runs of k/2 = 2)
    cut = next(set(c) for c in itertools.combinations(names, 4) if not P.connected(graph, sorted(set(names) - set(c))))
    survivors = sorted(set(names) - cut)
    assert len(survivors) >= spec.min_survivors

    # an honest aggregator aborts before asking anyone to unmask
    hub = InProcessHub("job-active", [*names, AGG])
    parties: dict[str, Any] = {
        s: (lambda ch, s=s: P.silo_secagg_sum(ch, round=1, aggregator=AGG, spec=spec, values=np.zeros(4), timeout=30.0,
                                              drop="masked" if s in cut else None)) for s in names
    }
    parties[AGG] = lambda ch: P.aggregator_secagg_sum(ch, round=1, spec=spec, timeout=3.0)
    out = run_parties(hub, parties)
    assert out[AGG].status == "aborted" and out[AGG].stage == "masked" and "fall apart" in out[AGG].reason
    assert not [e for e in hub.log if e.kind == P.KIND_REVEAL]

    # and a silo told such a survivor set refuses to sign it
    target = survivors[0]
    with pytest.raises(ProtocolError, match="fall apart"):
        _run(spec, type="survivors", rewrite=lambda r, p: {**p, "u3": survivors} if r == target else p)


def test_a_plaintext_channel_without_identity_is_refused() -> None:
    class _NoIdentity:
        def __init__(self, ch: Channel) -> None:
            self._ch = ch

        identity = None

        def __getattr__(self, name: str) -> Any:
            return getattr(self._ch, name)

    spec = _spec()
    hub = InProcessHub("job-active", [*spec.silos, AGG])
    with pytest.raises(ConfigError, match="needs signing identities"):
        P.silo_secagg_sum(_NoIdentity(hub.channel("site0")), round=1, aggregator=AGG, spec=spec,  # type: ignore[arg-type]
                          values=np.zeros(8), timeout=1.0)
    assert not hub.log


def test_signatures_are_bound_to_job_round_purpose_and_signer() -> None:
    d = LocalDirectory(["a", "b"])
    a, b = d.identity("a"), d.identity("b")
    m = signed_message(purpose="p", job="j", round=1, signer="a", content=[b"x"])
    sig = a.sign(m)
    b.verify("a", a.credential, m, sig)
    for other in (signed_message(purpose="q", job="j", round=1, signer="a", content=[b"x"]),
                  signed_message(purpose="p", job="k", round=1, signer="a", content=[b"x"]),
                  signed_message(purpose="p", job="j", round=2, signer="a", content=[b"x"]),
                  signed_message(purpose="p", job="j", round=1, signer="a", content=[b"y"])):
        with pytest.raises(ProtocolError, match="does not verify"):
            b.verify("a", a.credential, other, sig)
    with pytest.raises(ProtocolError, match="is not 'b'"):
        a.verify("b", a.credential, m, sig)  # a's key presented as b's
    with pytest.raises(ProtocolError, match="not a party"):
        a.verify("c", a.credential, m, sig)
    with pytest.raises(ProtocolError, match="malformed"):
        a.verify("b", b"", m, sig)
    with pytest.raises(TypeError, match="not picklable"):
        import pickle

        pickle.dumps(a)


# ------------------------------------------------------------------ findings of the crypto review
class _Blind(_Rewriting):
    """A malicious aggregator: it rewrites one control type and skips its own signature checks."""

    identity = None


def test_a_silo_masked_with_chosen_shares_keeps_its_self_mask() -> None:
    """The aggregator forwards the target only the colluder's shares, so the target masks with the
    colluder alone; unmasking its self mask would then give its input to the colluder. The
    target's signed mask list is not N(u) ∩ U2, so no honest holder reveals its self-mask share
    (10 silos, degree 2, one colluder: a configuration secagg_spec accepts)."""
    names = _silos(10)
    spec = P.secagg_spec(silos=names, length=6, granularity=GRID, value_bound=1.0, degree=2, colluders=1)
    graph = P.round_graph(spec, job="job-active", round=1)
    target = names[3]
    colluder, honest = graph[target]

    def forward_only_the_colluders(recipient: str, p: dict[str, Any]) -> dict[str, Any]:
        return {**p, "sealed": {colluder: p["sealed"][colluder]}} if recipient == target else p

    hub = InProcessHub("job-active", [*names, AGG])
    values = {s: np.full(6, 0.25) for s in names}
    parties: dict[str, Any] = {}
    for s in names:
        def fn(ch: Channel, s: str = s) -> Any:
            try:
                return P.silo_secagg_sum(ch, round=1, aggregator=AGG, spec=spec, values=values[s], timeout=20.0)
            except ProtocolError as exc:  # each silo is its own process in production: record, go on
                return exc
        parties[s] = fn
    parties[AGG] = lambda ch: P.aggregator_secagg_sum(_Blind(ch, type="forward", rewrite=forward_only_the_colluders),  # type: ignore[arg-type]
                                                      round=1, spec=spec, timeout=2.0)
    out = run_parties(hub, parties)
    from fedsilo.protocols import codec

    revealed = [codec.decode(e.body)["self_mask"] for e in hub.log if e.kind == P.KIND_REVEAL]
    assert not [r for r in revealed if target in r], "a share of the target's self mask was revealed"
    assert isinstance(out[honest], ProtocolError) and "does not verify" in str(out[honest])


def test_an_honest_aggregator_drops_a_masked_input_whose_mask_list_is_wrong() -> None:
    """Its own check: the target's input leaves the sum (its pairwise masks come off its key)."""
    names = _silos(6)
    spec = P.secagg_spec(silos=names, length=4, granularity=GRID, value_bound=1.0)
    graph = P.round_graph(spec, job="job-active", round=1)
    target = names[2]
    keep = graph[target][: spec.threshold]

    def fewer(recipient: str, p: dict[str, Any]) -> dict[str, Any]:
        return {**p, "sealed": {u: p["sealed"][u] for u in keep}} if recipient == target else p

    hub, out = _run(spec, type="forward", rewrite=fewer)  # the honest code behind a rewriting relay
    assert out[AGG].status == "ok" and target not in out[AGG].contributors
    assert np.allclose(out[AGG].total, 0.25 * 5)


@pytest.mark.parametrize("which", ["c", "s"])
def test_a_signed_low_order_key_drops_only_its_silo(which: str) -> None:
    spec = _spec(5)
    bad = P.RoundSecrets.fresh()
    getattr(bad, which).public = bytes(32)  # the all-zero point, correctly signed by site0
    hub = InProcessHub("job-active", [*spec.silos, AGG])
    parties: dict[str, Any] = {
        s: (lambda ch, s=s: P.silo_secagg_sum(ch, round=1, aggregator=AGG, spec=spec, values=np.full(8, 0.25), timeout=30.0,
                                              round_secrets=bad if s == "site0" else None)) for s in spec.silos
    }
    parties[AGG] = lambda ch: P.aggregator_secagg_sum(ch, round=1, spec=spec, timeout=2.0)
    out = run_parties(hub, parties)
    assert out[AGG].status == "ok" and out[AGG].contributors == tuple(spec.silos[1:])
    assert np.allclose(out[AGG].total, 0.25 * 4)


def test_a_low_order_key_relayed_by_an_aggregator_stops_a_silo_before_anything_is_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def poison(recipient: str, p: dict[str, Any]) -> dict[str, Any]:
        return p

    # an aggregator that relays site0's signed low-order advert unchecked
    monkeypatch.setattr(P, "_parse_advertise", lambda p, **kw: (p["c"], p["s"], p["commit"], p["cred"], p["sig"]))
    spec = _spec(5)
    bad = P.RoundSecrets.fresh()
    bad.s.public = bytes(32)
    hub = InProcessHub("job-active", [*spec.silos, AGG])
    parties: dict[str, Any] = {
        s: (lambda ch, s=s: P.silo_secagg_sum(ch, round=1, aggregator=AGG, spec=spec, values=np.zeros(8), timeout=30.0,
                                              round_secrets=bad if s == "site0" else None)) for s in spec.silos
    }
    parties[AGG] = lambda ch: P.aggregator_secagg_sum(_Blind(ch, type="keys", rewrite=poison), round=1, spec=spec,  # type: ignore[arg-type]
                                                      timeout=2.0)
    with pytest.raises(ProtocolError, match="unusable public key"):
        run_parties(hub, parties)
    assert not [e for e in hub.log if e.kind == P.KIND_SHARES and e.sender != "site0"]


class _Corrupting:
    """A silo that reveals all-zero shares (a malicious or broken holder)."""

    def __init__(self, channel: Channel) -> None:
        self._ch = channel

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ch, name)

    def send(self, recipient: str, kind: str, payload: Any, *, round: int) -> int:
        if kind == P.KIND_REVEAL:
            payload = {k: {u: bytes(32) for u in v} for k, v in payload.items()}
        return self._ch.send(recipient, kind, payload, round=round)


@pytest.mark.parametrize(("bad_holders", "drop", "ok"), [(1, None, True), (1, "masked", True), (4, None, False)])
def test_corrupt_shares_are_detected_by_the_commitments(bad_holders: int, drop: str | None, ok: bool) -> None:
    """One corrupt holder among 7: another t-subset reconstructs every committed secret, and the
    sum is right; with more corrupt holders than spare shares the round aborts and every silo is
    told (nothing wrong is released)."""
    spec = _spec(7)
    corrupt = set(spec.silos[1:1 + bad_holders])
    hub = InProcessHub("job-active", [*spec.silos, AGG])
    parties: dict[str, Any] = {
        s: (lambda ch, s=s: P.silo_secagg_sum(_Corrupting(ch) if s in corrupt else ch, round=1, aggregator=AGG, spec=spec,  # type: ignore[arg-type]
                                              values=np.full(8, 0.25), timeout=30.0, drop=drop if s == "site0" else None))
        for s in spec.silos
    }
    parties[AGG] = lambda ch: P.aggregator_secagg_sum(ch, round=1, spec=spec, timeout=2.0)
    out = run_parties(hub, parties)
    if ok:
        contributors = 7 if drop is None else 6
        assert out[AGG].status == "ok" and np.allclose(out[AGG].total, 0.25 * contributors)
    else:
        assert out[AGG].status == "aborted" and "corrupt share" in out[AGG].reason
        assert all(out[s].status == "aborted" for s in spec.silos if s not in corrupt)


@pytest.mark.parametrize(
    ("total", "contributors"),
    [(np.zeros((2, 3)), ["site0", "site1", "site2"]), (np.zeros(3, dtype=np.uint8), ["site0", "site1", "site2"]),
     (np.full(3, np.nan), ["site0", "site1", "site2"]), (np.zeros(3), "xyz"), (np.zeros(3), []),
     (np.zeros(3), ["site0", "mallory", "site2"])],
    ids=["shape", "dtype", "nan", "str-contributors", "no-contributors", "unknown-contributor"],
)
def test_a_silo_that_sat_out_checks_the_result_it_is_sent(total: np.ndarray, contributors: Any) -> None:
    from fedsilo.crypto.secagg_backend import SecAggBackend
    from fedsilo.protocols.horizontal.sums import open_silo_sum, plan_sums

    names = ["site0", "site1", "site2"]
    plan = plan_sums(SecAggBackend, silos=names, min_silos=2, colluders=1, allow_exposed=False)
    hub = InProcessHub("job-sync", [*names, AGG])

    def silo(ch: Channel) -> Any:
        sums = open_silo_sum(ch, SecAggBackend(), plan=plan, aggregator=AGG, timeout=5.0, allow_exposed=False, colluders=1)
        return sums.sum(round=1, contribution=None, length=3)

    def agg(ch: Channel) -> None:
        ch.send("site0", P.KIND_CONTROL, {"type": "result", "total": total, "contributors": contributors, "dropped": []},
                round=1)

    with pytest.raises(ProtocolError, match="malformed result"):
        run_parties(hub, {"site0": silo, AGG: agg})
