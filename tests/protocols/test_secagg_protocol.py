"""SecAgg+ rounds in-process (fedsilo.protocols.horizontal.secagg): dropout recovery, the abort
rule, the never-both-shares rule at the silo, collusion (what the aggregator and colluding silos
see), and the distributed discrete Gaussian under the masks."""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pytest
from scipy import stats

from fedsilo.crypto import secagg as sa
from fedsilo.errors import BudgetExceededError, ConfigError, CryptoError, ProtocolError
from fedsilo.privacy.accounting import epsilon
from fedsilo.privacy.events import GaussianEvent
from fedsilo.protocols.channel import Envelope, InProcessHub, run_parties
from fedsilo.protocols.horizontal import secagg as P

AGG = "agg"
SILO_TIMEOUT = 60.0
#: how long the aggregator waits for a stage: dropped silos make it wait this long
AGG_TIMEOUT = 3.0
GRID = 2.0**-16


def _silos(n: int) -> list[str]:
    return [f"site{i}" for i in range(n)]


def _values(names: list[str], length: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)  # public test data, not secret randomness
    return {s: np.round(rng.uniform(-1, 1, length) / GRID) * GRID for s in names}


def _run(
    spec: P.SecAggSpec,
    values: Mapping[str, np.ndarray],
    *,
    job: str = "job-secagg",
    round: int = 1,
    drops: Mapping[str, str] | None = None,
    silo_kw: Mapping[str, dict[str, Any]] | None = None,
    wrap_aggregator: Any = None,
) -> tuple[InProcessHub, dict[str, Any]]:
    hub = InProcessHub(job, [*spec.silos, AGG])
    drops, silo_kw = drops or {}, silo_kw or {}

    def silo(name: str) -> Any:
        return lambda ch: P.silo_secagg_sum(ch, round=round, aggregator=AGG, spec=spec, values=values[name],
                                            timeout=SILO_TIMEOUT, drop=drops.get(name), **silo_kw.get(name, {}))

    def aggregator(ch: Any) -> P.AggregatorSecAggOutcome:
        return P.aggregator_secagg_sum(wrap_aggregator(ch) if wrap_aggregator else ch, round=round, spec=spec,
                                       timeout=AGG_TIMEOUT)

    parties = {s: silo(s) for s in spec.silos}
    parties[AGG] = aggregator
    return hub, run_parties(hub, parties)


def _controls(hub: InProcessHub, kind: str) -> list[Envelope]:
    from fedsilo.protocols import codec

    return [e for e in hub.log if e.kind == P.KIND_CONTROL and codec.decode(e.body).get("type") == kind]


# ------------------------------------------------------------------------------------- dropout
def test_ten_silos_three_dropping_after_their_masked_input_give_the_exact_sum() -> None:
    names = _silos(10)
    spec = P.secagg_spec(silos=names, length=500, granularity=GRID, threshold=6, value_bound=1.0)
    assert spec.degree == 9 and spec.threshold == 6
    values = _values(names, 500)
    dropped = {"site2": "reveal", "site5": "reveal", "site7": "reveal"}
    _, out = _run(spec, values, drops=dropped)
    agg = out[AGG]
    assert agg.status == "ok", agg.reason
    # their masked inputs arrived, so their updates are in the sum; their self masks were removed
    # from the survivors' shares
    assert agg.contributors == tuple(names) and agg.recovered == ()
    exact = np.sum([values[s] for s in names], axis=0)
    assert np.array_equal(agg.total, exact)  # exact on the grid
    for s in names:
        o = out[s]
        if s in dropped:
            assert o.status == "dropped" and o.contributed
        else:
            assert o.status == "ok" and np.array_equal(o.total, exact)
            assert set(o.revealed.values()) == {"self-mask"}  # nobody dropped before masking


def test_silos_dropping_before_their_masked_input_are_recovered_from_pairwise_shares() -> None:
    names = _silos(10)
    spec = P.secagg_spec(silos=names, length=64, granularity=GRID, threshold=6, value_bound=1.0)
    values = _values(names, 64, seed=1)
    # t = 6 of 9 neighbours (2t > k + 1 colluder): three silos may drop
    drops = {"site0": "masked", "site4": "masked", "site6": "reveal"}
    _, out = _run(spec, values, drops=drops)
    agg = out[AGG]
    assert agg.status == "ok", agg.reason
    assert set(agg.contributors) == set(names) - {"site0", "site4"}
    assert agg.recovered == ("site0", "site4")  # shared their keys, then sent no masked input
    assert np.array_equal(agg.total, np.sum([values[s] for s in agg.contributors], axis=0))
    for s in set(names) - set(drops):
        o = out[s]
        # the safety rule as the silo applied it: one kind of share per peer
        assert o.revealed["site0"] == o.revealed["site4"] == "pairwise"
        assert o.revealed["site6"] == "self-mask"


def test_a_sparse_secagg_plus_graph_gives_the_exact_sum() -> None:
    names = _silos(12)
    spec = P.secagg_spec(silos=names, length=32, granularity=GRID, degree=6, threshold=4, value_bound=1.0)
    values = _values(names, 32, seed=2)
    graph = P.round_graph(spec, job="job-secagg", round=3)
    assert all(len(v) == 6 for v in graph.values())
    hub, out = _run(spec, values, round=3, drops={"site1": "masked"})
    assert out[AGG].status == "ok"
    assert np.array_equal(out[AGG].total, np.sum([values[s] for s in names if s != "site1"], axis=0))
    # each silo received the keys of its neighbours only (n log n, not n²)
    for env in _controls(hub, "keys"):
        from fedsilo.protocols import codec

        assert set(codec.decode(env.body)["peers"]) <= set(graph[env.recipient])


@pytest.mark.parametrize(
    ("phase", "stage", "what"),
    [("unmask", "reveal", "survived to unmasking (threshold t = 6)"),
     ("reveal", "consistency", "signed the survivor set (it needs 6)"),
     ("masked", "masked", "sent their masked input (threshold t = 6)")],
)
def test_five_survivors_of_ten_with_threshold_six_abort_and_nothing_is_released(phase: str, stage: str, what: str) -> None:
    names = _silos(10)
    spec = P.secagg_spec(silos=names, length=16, granularity=GRID, threshold=6, value_bound=1.0)
    drops = {s: phase for s in names[:5]}
    hub, out = _run(spec, _values(names, 16), drops=drops)
    agg = out[AGG]
    assert agg.status == "aborted" and agg.stage == stage and agg.total is None
    assert f"only 5 of 10 silos {what}" in agg.reason and "nothing was unmasked" in agg.reason
    for s in names[5:]:
        assert out[s].status == "aborted" and out[s].total is None and "only 5 of 10" in out[s].reason
    assert not _controls(hub, "result")  # no sum left the aggregator
    # and it holds fewer than t shares of every secret: nothing can be reconstructed
    from fedsilo.protocols import codec

    counts: dict[tuple[str, str], int] = {}
    for env in hub.log:
        if env.kind == P.KIND_REVEAL:
            for kind, shares in codec.decode(env.body).items():
                for owner in shares:
                    counts[(kind, owner)] = counts.get((kind, owner), 0) + 1
    assert all(c < 6 for c in counts.values())


# ------------------------------------------------------------------------------------- the safety rule
class _Tampering:
    """The aggregator's channel, with its unmasking request to one silo rewritten."""

    def __init__(self, channel: Any, *, target: str, rewrite: Any) -> None:
        self._channel, self._target, self._rewrite = channel, target, rewrite

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)

    def send(self, recipient: str, kind: str, payload: Any, *, round: int) -> int:
        if recipient == self._target and kind == P.KIND_CONTROL and payload.get("type") == "unmask":
            payload = self._rewrite(dict(payload))
        return self._channel.send(recipient, kind, payload, round=round)


@pytest.mark.parametrize(
    ("rewrite", "match"),
    [
        (lambda p: {**p, "pairwise": p["self_mask"][:1]}, "asked for both the self-mask and the pairwise share"),
        (lambda p: {**p, "self_mask": [*p["self_mask"], "nobody"]}, "does not hold"),
    ],
    ids=["both-shares", "unknown-peer"],
)
def test_a_silo_refuses_an_unmasking_request_for_both_shares_of_a_peer(rewrite: Any, match: str) -> None:
    names = _silos(5)
    spec = P.secagg_spec(silos=names, length=8, granularity=GRID, threshold=3, value_bound=1.0)
    target = "site3"
    with pytest.raises(ProtocolError, match=match):
        _run(spec, _values(names, 8), wrap_aggregator=lambda ch: _Tampering(ch, target=target, rewrite=rewrite))
    # hub.log is the record of every delivered message: the target revealed nothing


def test_the_refusing_silo_sends_no_share() -> None:
    names = _silos(5)
    spec = P.secagg_spec(silos=names, length=8, granularity=GRID, threshold=3, value_bound=1.0)
    hub = InProcessHub("job-secagg", [*names, AGG])
    values = _values(names, 8)
    rewrite = lambda p: {**p, "pairwise": list(p["self_mask"])}  # noqa: E731 - both for every peer
    parties: dict[str, Any] = {
        s: (lambda ch, s=s: P.silo_secagg_sum(ch, round=1, aggregator=AGG, spec=spec, values=values[s], timeout=SILO_TIMEOUT))
        for s in names
    }
    parties[AGG] = lambda ch: P.aggregator_secagg_sum(_Tampering(ch, target="site0", rewrite=rewrite), round=1, spec=spec,
                                                      timeout=AGG_TIMEOUT)
    with pytest.raises(ProtocolError, match="both"):
        run_parties(hub, parties)
    assert not [e for e in hub.log if e.kind == P.KIND_REVEAL and e.sender == "site0"]
    assert not _controls(hub, "result")


# ------------------------------------------------------------------------------------- collusion
def _adversary_residual(
    hub: InProcessHub, *, spec: P.SecAggSpec, job: str, round: int, target: str,
    colluders: Mapping[str, P.RoundSecrets],
) -> tuple[list[np.ndarray], int]:
    """What the aggregator plus ``colluders`` can strip off ``target``'s masked input using every
    message they received and their own secrets: the self mask (its shares are revealed when the
    target survives), the pairwise masks with colluders, and — if the colluders hold ``t`` shares
    of the target's masking key — every pairwise mask. Returns the residuals (self mask removed;
    then every mask the adversary knows removed) and how many shares of the target's masking key
    the adversary holds."""
    from fedsilo.protocols import codec

    seen = [e for e in hub.log if e.recipient in {AGG, *colluders}]
    graph = P.round_graph(spec, job=job, round=round)
    adverts = {e.sender: codec.decode(e.body) for e in seen if e.kind == P.KIND_ADVERTISE}
    (y_env,) = [e for e in seen if e.kind == P.KIND_MASKED and e.sender == target]
    y = np.frombuffer(codec.decode(y_env.body)["y"], dtype=np.dtype(sa.ring_dtype(spec.bits)).newbyteorder("<"))
    y = y.astype(sa.ring_dtype(spec.bits))
    reveals = [codec.decode(e.body) for e in seen if e.kind == P.KIND_REVEAL]
    self_shares = [(graph[target].index(e.sender) + 1, codec.decode(e.body)["self_mask"][target])
                   for e in seen if e.kind == P.KIND_REVEAL and target in codec.decode(e.body)["self_mask"]]
    b = sa.combine_shares(self_shares, threshold=spec.threshold)
    residual = y - sa.expand_mask(b, y.shape[0], bits=spec.bits)
    residuals = [sa.ring_reduce(residual.copy(), bits=spec.bits)]
    # the colluders' own shares of the target's masking key (forwarded to them, sealed for them)
    key_shares = []
    for c, secrets in colluders.items():
        for env in seen:
            if env.kind == P.KIND_CONTROL and env.recipient == c and codec.decode(env.body).get("type") == "forward":
                blob = codec.decode(env.body)["sealed"].get(target)
                if blob is not None:
                    k = P.share_key(secrets.c, adverts[target]["c"], job=job, round=round, me=c, peer=target)
                    key_shares.append(P.open_share(k, blob, job=job, round=round, sender=target, recipient=c)[0:3:2])
    key_shares += [(graph[target].index(e.sender) + 1, r["pairwise"][target]) for e, r in
                   zip([e for e in seen if e.kind == P.KIND_REVEAL], reveals) if target in r["pairwise"]]
    try:
        s_target = sa.AgreementKey.from_secret(sa.combine_shares(key_shares, threshold=spec.threshold))
        peers = {v: s_target for v in graph[target]}  # every pairwise mask of the target
        seeds = {v: P.mask_seed(s_target, adverts[v]["s"], job=job, round=round, me=target, peer=v) for v in peers}
    except CryptoError:  # fewer than t shares: only the colluders' own pairwise masks
        seeds = {c: P.mask_seed(colluders[c].s, adverts[target]["s"], job=job, round=round, me=c, peer=target)
                 for c in colluders if c in graph[target]}
    for v, seed in seeds.items():
        m = sa.expand_mask(seed, y.shape[0], bits=spec.bits)
        residual = residual - m if target < v else residual + m
    residuals.append(sa.ring_reduce(residual, bits=spec.bits))
    return residuals, len(key_shares)


def _collusion_run(spec: P.SecAggSpec, colluding: list[str], round: int) -> tuple[list[np.ndarray], np.ndarray, int]:
    target = "site0"
    x = {s: np.full(spec.length, 0.0) for s in spec.silos}
    x[target] = np.full(spec.length, 1.0)  # the fixed input the adversary tries to read
    secrets = {c: P.RoundSecrets.fresh() for c in colluding}
    hub, out = _run(spec, x, job="job-collude", round=round, silo_kw={c: {"round_secrets": secrets[c]} for c in colluding})
    assert out[AGG].status == "ok" and np.array_equal(out[AGG].total, np.sum(list(x.values()), axis=0))
    residuals, shares = _adversary_residual(hub, spec=spec, job="job-collude", round=round, target=target, colluders=secrets)
    return residuals, sa.encode_fixed(x[target], granularity=1.0, bits=spec.bits), shares


def test_aggregator_with_t_minus_1_colluding_silos_sees_the_target_input_uniform() -> None:
    names = _silos(5)
    # a 4-bit ring (16 residues) so that a chi-square test over the residues is sharp
    spec = P.secagg_spec(silos=names, length=512, granularity=1.0, threshold=3, value_bound=1.0)
    assert spec.bits == 4 and spec.degree == 4
    pooled: list[list[np.ndarray]] = [[], []]
    for r in range(1, 13):
        residuals, x_target, shares = _collusion_run(spec, ["site1", "site2"], r)  # t − 1 = 2 colluders
        assert shares == spec.threshold - 1  # one short of the masking key
        for acc, residual in zip(pooled, residuals):
            assert not np.array_equal(residual, x_target)
            acc.append(residual)
    for acc in pooled:  # self mask stripped; then every mask the adversary knows stripped too
        counts = np.bincount(np.concatenate(acc).astype(np.int64), minlength=16)
        assert stats.chisquare(counts).pvalue > 1e-6  # uniform in Z_16 although the input is fixed


def test_t_colluding_silos_read_the_target_input_the_threshold_is_t() -> None:
    names = _silos(5)
    spec = P.secagg_spec(silos=names, length=512, granularity=1.0, threshold=3, value_bound=1.0)
    residuals, x_target, shares = _collusion_run(spec, ["site1", "site2", "site3"], 1)  # t colluders
    assert shares == spec.threshold
    assert np.array_equal(residuals[-1], x_target)  # the target's exact input: what t colluders learn


# ------------------------------------------------------------------------------------- DP under the masks
@contextlib.contextmanager
def _recording_charge(hub: InProcessHub, silo: str, log: list[int]) -> Iterator[None]:
    log.append(sum(1 for e in hub.log if e.sender == silo and e.kind == P.KIND_MASKED))
    yield


def test_distributed_discrete_gaussian_round_is_noised_under_the_masks_and_charged_first() -> None:
    names = _silos(6)
    dp = P.calibrate_dp(epsilon=4.0, delta=1e-5, rounds=1, clip=1.0, granularity=2.0**-10, length=300, threshold=4,
                        colluders=1)
    spec = P.secagg_spec(silos=names, length=300, granularity=2.0**-10, threshold=4, dp=dp)
    event = spec.dp_event()
    assert event.shares == 3 and event.dimension == 512
    assert epsilon(event, delta=1e-5) <= 4.0
    rng = np.random.default_rng(3)
    values = {}
    for s in names:
        v = rng.normal(size=300)
        values[s] = v / np.linalg.norm(v) * 0.8
    hub = InProcessHub("job-dp", [*names, AGG])
    before: dict[str, list[int]] = {s: [] for s in names}
    parties: dict[str, Any] = {
        s: (lambda ch, s=s: P.silo_secagg_sum(ch, round=1, aggregator=AGG, spec=spec, values=values[s], timeout=SILO_TIMEOUT,
                                             charge=lambda s=s: _recording_charge(hub, s, before[s])))
        for s in names
    }
    parties[AGG] = lambda ch: P.aggregator_secagg_sum(ch, round=1, spec=spec, timeout=SILO_TIMEOUT)
    out = run_parties(hub, parties)
    assert all(b == [0] for b in before.values())  # the ledger was entered before any masked input left
    assert all(out[s].charged and out[s].contributed for s in names)
    agg = out[AGG]
    err = agg.total - np.sum(list(values.values()), axis=0)
    # the released sum carries the six shares' noise: per coordinate σ·√6 grid steps (the rotation
    # is orthogonal, so the noise stays isotropic), plus the rounding's at most one step per silo
    expected = dp.noise_sigma * math.sqrt(6) * spec.granularity
    assert 0.85 * expected < float(err.std()) < 1.15 * expected
    assert abs(float(err.mean())) < 6 * expected / math.sqrt(300)


def test_dp_round_epsilon_matches_the_continuous_gaussian_at_large_sigma() -> None:
    names = _silos(6)
    dp = P.calibrate_dp(epsilon=2.0, delta=1e-5, rounds=5, clip=1.0, granularity=2.0**-14, length=1000, threshold=4)
    spec = P.secagg_spec(silos=names, length=1000, granularity=2.0**-14, threshold=4, dp=dp)
    event = spec.dp_event()
    z = math.sqrt(event.shares) * event.noise_sigma / event.l2_sensitivity
    five = type(event)(event.noise_sigma, event.shares, event.l2_sensitivity, event.l1_sensitivity, event.dimension, 5)
    assert math.isclose(epsilon(five, delta=1e-5), epsilon(GaussianEvent(z, 1.0, 5), delta=1e-5), rel_tol=1e-9)
    assert epsilon(five, delta=1e-5) <= 2.0


@contextlib.contextmanager
def _refused_charge() -> Iterator[None]:
    raise BudgetExceededError(silo="site1", dataset="d", spent=7.9, requested=8.4, budget=8.0, delta=1e-5)
    yield  # pragma: no cover


def test_a_refused_ledger_charge_withdraws_the_silo_and_the_round_goes_on() -> None:
    names = _silos(6)
    spec = P.secagg_spec(silos=names, length=16, granularity=GRID, threshold=4, value_bound=1.0)
    values = _values(names, 16, seed=4)
    hub, out = _run(spec, values, silo_kw={"site1": {"charge": _refused_charge}})
    assert out["site1"].status == "withdrawn" and "privacy budget exceeded" in out["site1"].reason
    assert not [e for e in hub.log if e.sender == "site1" and e.kind == P.KIND_MASKED]
    agg = out[AGG]
    assert agg.status == "ok" and agg.recovered == ("site1",)
    assert np.array_equal(agg.total, np.sum([values[s] for s in names if s != "site1"], axis=0))


@pytest.mark.timeout(120)
def test_a_withdrawal_is_not_waited_for() -> None:
    """The aggregator takes a silo's withdrawal notice in place of its masked input: with a
    10-minute stage deadline the round still ends at once (the test's own 120 s timeout would
    fail it otherwise)."""
    names = _silos(6)
    spec = P.secagg_spec(silos=names, length=16, granularity=GRID, threshold=4, value_bound=1.0)
    values = _values(names, 16, seed=5)
    hub = InProcessHub("job-secagg", [*names, AGG])
    parties: dict[str, Any] = {
        s: (lambda ch, s=s: P.silo_secagg_sum(ch, round=1, aggregator=AGG, spec=spec, values=values[s], timeout=SILO_TIMEOUT,
                                              charge=_refused_charge if s == "site1" else None))
        for s in names
    }
    parties[AGG] = lambda ch: P.aggregator_secagg_sum(ch, round=1, spec=spec, timeout=600.0)
    out = run_parties(hub, parties)
    assert out[AGG].status == "ok" and out[AGG].withdrawn == ("site1",) and out[AGG].recovered == ("site1",)


# ------------------------------------------------------------------------------------- refusals
def test_refusals_before_anything_is_sent() -> None:
    names = _silos(4)
    with pytest.raises(ConfigError, match="threshold"):
        P.secagg_spec(silos=names, length=4, granularity=GRID, threshold=4, value_bound=1.0)
    with pytest.raises(ConfigError, match="exactly one"):
        P.secagg_spec(silos=names, length=4, granularity=GRID, threshold=2)
    with pytest.raises(ConfigError, match="colluders"):
        P.secagg_spec(silos=names, length=4, granularity=GRID, threshold=2, dp=P.SecAggDP(clip=1.0, noise_sigma=10.0, colluders=2))
    # 2t <= k + colluders: two disjoint halves of the neighbours could be told different stories
    with pytest.raises(ConfigError, match=r"needs colluders < t and 2t > k \+ colluders"):
        P.secagg_spec(silos=names, length=4, granularity=GRID, threshold=2, value_bound=1.0)
    assert P.secagg_spec(silos=names, length=4, granularity=GRID, value_bound=1.0).threshold == 3  # the default
    with pytest.raises(ConfigError, match="more than the 64"):
        P.secagg_spec(silos=names, length=4, granularity=2.0**-60, threshold=3, value_bound=2.0**10)
    dp = P.SecAggDP(clip=1.0, noise_sigma=10.0)
    spec = P.secagg_spec(silos=names, length=4, granularity=GRID, threshold=3, dp=dp)
    hub = InProcessHub("job", [*names, AGG])
    with pytest.raises(ConfigError, match="exceeds the clip"):
        P.silo_secagg_sum(hub.channel("site0"), round=1, aggregator=AGG, spec=spec, values=np.ones(4), timeout=1)
    with pytest.raises(ConfigError, match="must not be a silo"):
        P.silo_secagg_sum(hub.channel("site0"), round=1, aggregator="site1", spec=spec, values=np.zeros(4), timeout=1)
    assert hub.log == []


def test_a_silo_sends_no_masked_input_when_too_few_shares_were_forwarded() -> None:
    """An aggregator that forwards a silo no shares would make it mask with its self mask alone,
    and its neighbours' self-mask shares would then open its input (Bonawitz et al. 2017, Fig. 4:
    a user aborts if |U2| < t). The silo refuses: it never sends a masked input."""
    names = _silos(5)
    spec = P.secagg_spec(silos=names, length=16, granularity=GRID, value_bound=1.0)
    target = "site0"

    class _EmptyForward:
        def __init__(self, ch: Any) -> None:
            self._ch = ch

        def __getattr__(self, name: str) -> Any:
            return getattr(self._ch, name)

        def send(self, recipient: str, kind: str, payload: Any, *, round: int) -> None:
            if recipient == target and kind == P.KIND_CONTROL and payload.get("type") == "forward":
                payload = {**payload, "sealed": {}}
            return self._ch.send(recipient, kind, payload, round=round)

    with pytest.raises(ProtocolError, match=r"site0: round 1: shares from only 1 silos were forwarded .* the masked "
                                            r"input is not sent"):
        _run(spec, _values(names, 16, seed=3), job="job-empty", round=1, wrap_aggregator=_EmptyForward)
