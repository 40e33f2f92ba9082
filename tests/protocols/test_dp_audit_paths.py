"""Four DP release paths audited end to end, from the view of a colluding party.

Each path runs the production party functions over an :class:`InProcessHub` (one thread per
party, fresh OS-seeded noise, :func:`~fedsilo.privacy.mechanisms.secure_rng`) on neighbouring
datasets, takes what a colluding party sees — the decrypted output minus everything it knows
(its own input and noise share, and, as the DP adversary, every non-target input) — and audits
it with :func:`fedsilo.privacy.audit.audit`:

* **horizontal DP-FedAvg secure sum** (``silo_secure_sum`` / ``aggregator_secure_sum``, CKKS and
  Paillier, shares from ``DPFedAvg.noise_share``, clipping by ``DPFedAvg.prepare_update``):
  3 silos, ``colluders = 1``; silo ``a`` observes, silo ``c`` is the target. Zero-out relation:
  on ``D`` the target's update is zero, on ``D'`` it is ``u`` (raw norm ``3C``, clipped to
  ``C``): the shift is the clip norm. Claimed: the round's own event,
  ``DPFedAvg.event(round=…)`` = Gaussian with ``μ = 1/z``.
* **vertical gradient release** (``guest_train`` / ``host_train`` / ``arbiter_train``, plain
  backend, arbiter topology, ``colluders = 1``): the host observes its own decrypted gradient
  and subtracts its own share (from its ``noise_tap``: the share it drew); the guest's and the
  arbiter's shares must carry ``σ_h``. Replace one row: ``(x_h = +e_i, y = 1)`` by
  ``(x_h = −e_i, y = 1)``, which moves ``d_i x_i`` from ``−x_i/2`` to ``+x_i/2``. With
  ``logit_clip = 1e-9`` the plan's sensitivity ``2·C·(P·B/4 + 1/2)`` equals that shift (up to
  1e-9), so the claim is attained (with the default ``B = 2`` the first step moves the gradient
  by a third of the sensitivity and an audit of it would look 3× too private). Claimed: one
  released gradient, Gaussian with ``μ = Δ_h/σ_h = 1/z`` (the ledger charges more: all ``P``
  gradients of the step, ``z_event = z/√P``).
* **statistics histogram** (``statistics_silo`` / ``statistics_aggregator``, plain backend,
  discrete-Gaussian shares on the plan's grid): 3 silos, ``colluders = 1``; silo ``a``
  observes (its own share recorded as it is drawn), silo ``c`` holds the target record. Add or
  remove one record: one bin moves by 1. Claimed: the release's σ, ``μ = 1/z``.
* **federated evaluation** (record-level DP, ``_evaluation_contribution`` of the horizontal
  protocol through the same secure sum, plain backend): 3 silos, ``colluders = 1``; silo ``a``
  observes, silo ``c`` holds the target. Add or remove one held-out record (NaN score, label 0:
  the four coordinates it touches move by 1 each, attaining the sensitivity ``sqrt(K + 3)``).
  Claimed: ``μ = 1/z_eval``. ``4096`` blocks of metric inputs per release (see that section).

Many runs per protocol execution: every path releases a *vector* whose noise is i.i.d. per
coordinate, and the audit needs ~10^4 runs per side (the fitted ε's relative standard error is
``≈ 1.1·sqrt(2/(n μ²) + 1/(4n))``: 1.6 % at n = 16 384, μ = 0.8 (measured over 20 repetitions:
1.6 % for the secure sum, 1.3 % for the histogram), so 10 % is 6 standard errors).
So each execution carries many independent instances of the mechanism side by side: the
secure sum ``2048`` blocks of 2 coordinates (each clipped on its own by ``prepare_update``),
the vertical gradient ``1024`` features each touched by one row only (block-diagonal rows, so a
row's clipping and its gradient coordinate involve no other row), the histogram ``8192`` bins
each holding at most one target record. Half the instances of every execution are in state
``D``, half in ``D'``. And there are several real executions (rounds, runs, jobs), whose noise
is checked to be uncorrelated: noise reused across rounds or jobs (a seed derived from public
data, say) would leave every single release's distribution intact, so no per-release audit can
see it, but the differences of two releases would then be noiseless.

False-failure margins (each below 1e-6): lower bounds at ``ALPHA = 1e-6`` on held-out runs
(``P(lb > claimed) <= 1e-6`` for a correct path; measured ≈ 1/3 of the claim); fitted ε within
10 % at >= 16 384 runs per side (>= 5.5 standard errors: the vertical path's μ = 0.74 is the
smallest; two-sided P < 1e-7); injected bugs run with >= 4 096 runs per
side and must be caught (fitted ε above 1.1× the claim: >= 10 standard errors away) and
measured within 20 % of the bugged mechanism's exact ε (>= 8 standard errors).
"""
from __future__ import annotations

import dataclasses
import math
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import fedsilo.protocols.horizontal.dp as dp_module
import fedsilo.protocols.horizontal.protocol as hz_protocol
import fedsilo.protocols.horizontal.statistics_plan as stats_module  # where the noise is drawn
import fedsilo.protocols.vertical.keys as lr_module
from fedsilo.crypto.base import CryptoBackend
from fedsilo.crypto.registry import get_backend
from fedsilo.errors import FedsiloError
from fedsilo.privacy.audit import AuditResult, audit, gaussian_epsilon
from fedsilo.privacy.ledger import PrivacyLedger
from fedsilo.privacy.mechanisms import secure_rng
from fedsilo.protocols.channel import Channel, InProcessHub, run_parties
from fedsilo.protocols.horizontal import evaluation as fed_eval
from fedsilo.protocols.horizontal.dp import DPFedAvg
from fedsilo.protocols.horizontal.protocol import HorizontalJob
from fedsilo.protocols.spec import ModelSection, PrivacySection, TrainingSection

from fedsilo.protocols.horizontal.secure_aggregation import (
    Contribution,
    aggregator_key_ceremony,
    aggregator_secure_sum,
    silo_key_ceremony,
    silo_secure_sum,
)
from fedsilo.protocols.horizontal.statistics import (
    StatisticsPlan,
    local_statistics,
    plan_statistics,
    statistics_aggregator,
    statistics_silo,
)
from fedsilo.protocols.horizontal.strategies import FedAvg
from fedsilo.protocols.vertical import (
    DpPlan,
    Topology,
    TrainingConfig,
    arbiter_train,
    guest_train,
    host_train,
)

DELTA = 1e-5
ALPHA = 1e-6
TOL = 0.10
#: Tolerance when measuring a bugged path's ε with the (fewer) bug runs.
BUG_TOL = 0.20
TIMEOUT = 120.0

# ----------------------------------------------------------------------------- plumbing

_PARTY = threading.local()

def plan_for(*, columns: Any, queries: Any, bins: int, ranges: Any, privacy: Any, silos: int) -> Any:
    """plan_statistics on mappings validated as the [statistics] and [privacy] sections."""
    from fedsilo.protocols.spec import PrivacySection, StatisticsSection, section

    # model_construct: the audit needs more bins (statistical power) than a config may ask for
    request = StatisticsSection.model_construct(columns=list(columns), queries=list(queries), bins=bins,
                                                range=dict(ranges))
    return plan_statistics(request, None if privacy is None else section(PrivacySection, privacy, key="privacy"),
                           silos=silos)



def current_party() -> str | None:
    """The party whose thread is running (set by the drivers; bug injectors use it)."""
    return getattr(_PARTY, "name", None)


def _tagged(party: str, fn: Callable[[Channel], Any]) -> Callable[[Channel], Any]:
    def run(ch: Channel) -> Any:
        _PARTY.name = party
        try:
            return fn(ch)
        finally:
            _PARTY.name = None

    return run


@dataclass(frozen=True, slots=True)
class PathRuns:
    """A colluder's views of one path on D and D', and the claim they are audited against."""

    name: str
    claimed: float
    mu: float  #: Δ/σ of the claimed Gaussian mechanism
    d: np.ndarray
    d_prime: np.ndarray
    direction: np.ndarray | None
    executions: int  #: protocol executions (rounds, training runs, jobs) the views came from

    def audit(self, alpha: float = ALPHA) -> AuditResult:
        return audit(samples=self.d, samples_prime=self.d_prime, claimed_epsilon=self.claimed, delta=DELTA,
                     alpha=alpha, direction=self.direction, fit="gaussian")


def _backend(name: str, **params: Any) -> CryptoBackend:
    with warnings.catch_warnings():  # 1024-bit Paillier keys are for tests only, and say so
        warnings.filterwarnings("ignore", message=r"paillier: 1024-bit keys")
        return get_backend(name, **params)


def assert_fresh_noise(runs: PathRuns) -> None:
    """The noise of different executions is uncorrelated (fresh randomness every round/run/job).

    The ``D`` views are noise around a constant. With m >= 512 values per execution a sample
    correlation has standard deviation ``1/sqrt(m) <= 0.044``; 0.3 is 6.8 of them (all pairs of
    32 executions: P(false failure) < 1e-8). Reused noise gives a correlation of 1.
    """
    x = runs.d.reshape(runs.executions, -1)
    x = x - x.mean()
    corr = np.corrcoef(x.reshape(runs.executions, -1))
    off = corr[~np.eye(runs.executions, dtype=bool)]
    assert np.all(np.abs(off) < 0.3), f"noise correlated across executions: max |corr| {np.abs(off).max():.3f}"


def backend_available(name: str, **params: Any) -> bool:
    try:
        _backend(name, **params)
    except (FedsiloError, ImportError):
        return False
    return True


@contextmanager
def _ledgers(parties: tuple[str, ...], *, epsilon: float) -> Iterator[dict[str, PrivacyLedger]]:
    with tempfile.TemporaryDirectory() as tmp:
        opened = {p: PrivacyLedger(Path(tmp) / f"{p}.sqlite", silo=p) for p in parties}
        try:
            for p, led in opened.items():
                led.register_dataset(p, epsilon=epsilon, delta=DELTA)
            yield opened
        finally:
            for led in opened.values():
                led.close()


# ----------------------------------------------------------------------------- horizontal secure sum

HZ_SILOS = ("a", "b", "c")
HZ_OBSERVER, HZ_TARGET, HZ_AGGREGATOR = "a", "c", "aggregator"
HZ_CLIP = 1.0
HZ_Z = 1.25  # μ = 1/z = 0.8: claimed ε ≈ 3.39 at δ = 1e-5
HZ_BLOCKS, HZ_DIM = 2048, 2
HZ_DIRECTION = np.array([0.6, 0.8])
HZ_BACKENDS: dict[str, dict[str, Any]] = {
    "ckks": {},
    # 1024-bit keys (tests only), 16 fractional bits (rounding 1.5e-5 next to noise of std 0.9),
    # |values| < 16, 3 summands: 42 slots per ciphertext, ~0.6 s per round of 4096 values
    "paillier": {"packed": True, "key_bits": 1024, "workers": 1, "precision": 16, "value_bound": 16.0, "max_summands": 4},
}
HZ_ROUNDS, HZ_BUG_ROUNDS = 16, 4


def secure_sum_runs(backend: str, *, rounds: int = HZ_ROUNDS) -> PathRuns:
    """``rounds`` noised secure sums of DP-FedAvg updates; silo ``a``'s view of silo ``c``'s blocks.

    Relies only on ``DPFedAvg.prepare_update`` / ``noise_share`` / ``topup_share`` / ``event`` and
    the two secure-sum party functions, as the horizontal protocol's contribution does.
    """
    be = _backend(backend, **HZ_BACKENDS[backend])
    dp = DPFedAvg(FedAvg(), clip=HZ_CLIP, noise_multiplier=HZ_Z, colluders=1)
    data = np.random.default_rng(2024)  # the silos' updates (data, not noise)
    raw_other = {s: data.normal(0.0, 0.8, size=(rounds, HZ_BLOCKS, HZ_DIM)) for s in HZ_SILOS if s != HZ_TARGET}
    in_d_prime = np.arange(HZ_BLOCKS) % 2 == 1  # odd blocks: the target sent u; even: zero-out

    def update(silo: str, rnd: int) -> np.ndarray:
        if silo == HZ_TARGET:
            raw = np.where(in_d_prime[:, None], 3.0 * HZ_CLIP * HZ_DIRECTION, 0.0)
        else:
            raw = raw_other[silo][rnd - 1]
        return np.concatenate([dp.prepare_update(block, round=rnd) for block in raw])

    views: list[np.ndarray] = []

    def silo(ch: Channel) -> None:
        secret = silo_key_ceremony(ch, be, silos=HZ_SILOS, aggregator=HZ_AGGREGATOR, timeout=TIMEOUT)
        public = secret.public()
        rng = secure_rng()
        for rnd in range(1, rounds + 1):
            u = update(ch.party, rnd)
            drawn: dict[str, np.ndarray] = {}

            def values(present: int, u: np.ndarray = u, drawn: dict[str, np.ndarray] = drawn) -> np.ndarray:
                drawn["share"] = dp.noise_share(present=present, size=u.size, rng=rng)
                return u + drawn["share"]

            def topup(present: int, contributors: int, u: np.ndarray = u) -> np.ndarray:
                return dp.topup_share(present=present, contributors=contributors, size=u.size, rng=rng)

            out = silo_secure_sum(ch, round=rnd, aggregator=HZ_AGGREGATOR, backend=be, secret=secret, public=public,
                                  contribution=Contribution(values=values, topup=topup), timeout=TIMEOUT)
            assert out.status == "ok" and out.total is not None, out.reason
            if ch.party == HZ_OBSERVER:
                others = sum(update(s, rnd) for s in HZ_SILOS if s not in (HZ_OBSERVER, HZ_TARGET))
                views.append((out.total - u - drawn["share"] - others).reshape(HZ_BLOCKS, HZ_DIM))

    def aggregator(ch: Channel) -> None:
        public = aggregator_key_ceremony(ch, be, silos=HZ_SILOS, timeout=TIMEOUT)
        for rnd in range(1, rounds + 1):
            out = aggregator_secure_sum(ch, round=rnd, silos=HZ_SILOS, backend=be, public=public,
                                        min_silos=len(HZ_SILOS), colluders=dp.colluders, timeout=TIMEOUT)
            assert out.status == "ok", out.reason

    hub = InProcessHub("dp-audit-secure-sum", [*HZ_SILOS, HZ_AGGREGATOR])
    run_parties(hub, {**{s: _tagged(s, silo) for s in HZ_SILOS}, HZ_AGGREGATOR: _tagged(HZ_AGGREGATOR, aggregator)})
    seen = np.stack(views)  # (rounds, blocks, dim)
    mu = 1.0 / dp.event(round=1).noise_multiplier  # sensitivity C over total noise z·C
    return PathRuns(
        f"DP-FedAvg secure sum ({backend})", gaussian_epsilon(mu=mu, delta=DELTA), mu,
        seen[:, ~in_d_prime].reshape(-1, HZ_DIM), seen[:, in_d_prime].reshape(-1, HZ_DIM), HZ_DIRECTION, rounds,
    )


def hz_bug(monkeypatch: pytest.MonkeyPatch, bug: str) -> float:
    """Inject a bug into DP-FedAvg; returns the factor it multiplies the colluder's μ by."""
    if bug == "noise-halved":
        real = DPFedAvg.noise_share
        monkeypatch.setattr(DPFedAvg, "noise_share", lambda self, **kw: 0.5 * real(self, **kw))
        return 2.0
    if bug == "share-missing":  # silo b adds no noise: the observer sees one share of σ²/2
        real = DPFedAvg.noise_share
        monkeypatch.setattr(
            DPFedAvg, "noise_share",
            lambda self, **kw: np.zeros(kw["size"]) if current_party() == "b" else real(self, **kw),
        )
        return math.sqrt(2.0)
    if bug == "clip-skipped":  # the target's raw update has norm 3C
        monkeypatch.setattr(dp_module, "clip_l2", lambda v, *, max_norm: np.asarray(v, dtype=np.float64).copy())
        return 3.0
    raise AssertionError(bug)


PAILLIER = pytest.param(
    "paillier", id="paillier",
    marks=pytest.mark.skipif(not backend_available("paillier", **HZ_BACKENDS["paillier"]), reason="paillier unavailable"),
)
CKKS = pytest.param(
    "ckks", id="ckks", marks=pytest.mark.skipif(not backend_available("ckks"), reason="ckks (TenSEAL) unavailable")
)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", [CKKS, PAILLIER])
def test_secure_sum_round_meets_its_claim(backend: str) -> None:
    runs = secure_sum_runs(backend)
    assert_fresh_noise(runs)
    res = runs.audit()
    assert res.runs == HZ_ROUNDS * HZ_BLOCKS
    assert not res.refuted and res.lower_bound < res.claimed_epsilon
    assert res.fitted_epsilon == pytest.approx(res.claimed_epsilon, rel=TOL)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("bug", ["noise-halved", "share-missing", "clip-skipped"])
@pytest.mark.parametrize("backend", [CKKS, PAILLIER])
def test_secure_sum_round_audit_catches(monkeypatch: pytest.MonkeyPatch, backend: str, bug: str) -> None:
    factor = hz_bug(monkeypatch, bug)
    runs = secure_sum_runs(backend, rounds=HZ_BUG_ROUNDS)
    _assert_caught(runs, factor)


@pytest.mark.parametrize("backend", [CKKS])
def test_reused_noise_is_caught(monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    """Every round's release alone is as claimed; only the fresh-noise check can see the reuse."""
    real, first = DPFedAvg.noise_share, {}

    def reused(self: DPFedAvg, **kw: Any) -> np.ndarray:
        return first.setdefault(current_party(), real(self, **kw)).copy()

    monkeypatch.setattr(DPFedAvg, "noise_share", reused)
    runs = secure_sum_runs(backend, rounds=HZ_BUG_ROUNDS)
    with pytest.raises(AssertionError, match="correlated across executions"):
        assert_fresh_noise(runs)


def _assert_caught(runs: PathRuns, factor: float) -> None:
    res = runs.audit()
    bugged = gaussian_epsilon(mu=factor * runs.mu, delta=DELTA)
    assert res.fitted_epsilon is not None and res.fitted_epsilon > (1 + TOL) * res.claimed_epsilon
    assert res.fitted_epsilon == pytest.approx(bugged, rel=BUG_TOL)
    assert res.lower_bound < bugged


# ----------------------------------------------------------------------------- vertical gradient

VT_TOPOLOGY = Topology(guest="g", hosts=("h",), arbiter="a")
VT_ROWS = 1024  # = host features: row i has x_h = ±e_i (the cost per run grows as rows²)
#: epsilon 5 for one epoch gives z ≈ 1.35 on each gradient (μ = 1/z ≈ 0.74, claimed ε ≈ 3.1)
VT_DP = PrivacySection(epsilon=5.0, logit_clip=1e-9, colluders=1)
VT_RUNS, VT_BUG_RUNS = 32, 8


def _training_step(
    *, run: int, x_host: np.ndarray, x_guest: np.ndarray, y: np.ndarray, host_cols: list[str],
    bounds: dict[str, tuple[float, float]], config: TrainingConfig,
) -> tuple[np.ndarray, DpPlan]:
    """One one-step training; the host's decrypted gradient minus its own share, and the plan."""
    top = VT_TOPOLOGY
    backend = _backend("plain")
    rows, none = np.arange(VT_ROWS), np.arange(0)
    draws: list[Any] = []
    hub = InProcessHub("dp-audit-vertical", [top.guest, *top.hosts, top.arbiter])
    with _ledgers(top.data_parties, epsilon=1e3) as led:
        common: dict[str, Any] = {"topology": top, "train_rows": rows, "eval_rows": none, "backend": backend,
                                  "config": config, "dp": VT_DP, "bounds": bounds}

        def guest(ch: Channel) -> Any:
            return guest_train(ch, x=x_guest, y=y, ledger=led["g"], dataset="g", columns=["g0"], rng=secure_rng(),
                               batch_rng=np.random.default_rng(run), **common)  # the batch order is public

        def host(ch: Channel) -> Any:
            return host_train(ch, x=x_host, ledger=led["h"], dataset="h", columns=host_cols, rng=secure_rng(),
                              noise_tap=draws.append, **common)

        def arbiter(ch: Channel) -> Any:
            return arbiter_train(ch, topology=top, backend=backend, config=config, rng=secure_rng())

        out = run_parties(hub, {"g": _tagged("g", guest), "h": _tagged("h", host), "a": _tagged("a", arbiter)})
    own = [d.share for d in draws if d.drawer == "h" and d.owner == "h"]
    assert len(own) == 1, "one step: the host draws one share of its own gradient"
    # one step from zero weights, lr 1, no L2: w = -(z - mask), z the decrypted noised gradient
    return -out["h"].model.weights / config.lr - own[0], out["h"].dp


def gradient_runs(*, runs: int = VT_RUNS) -> PathRuns:
    """``runs`` one-step trainings; the host's view of its own released gradient, per feature."""
    config = dataclasses.replace(
        TrainingConfig.from_sections(TrainingSection(rounds=1, batch_size=VT_ROWS, lr=1.0), timeout=TIMEOUT),
        lr_schedule="constant", track_loss=False,
    )
    in_d_prime = np.arange(VT_ROWS) % 2 == 1
    x_host = np.diag(np.where(in_d_prime, -1.0, 1.0))  # D: x_h = +e_i, D': -e_i; all labels 1
    host_cols = [f"h{j}" for j in range(VT_ROWS)]
    steps = [
        _training_step(run=run, x_host=x_host, x_guest=np.zeros((VT_ROWS, 1)), y=np.ones(VT_ROWS),
                       host_cols=host_cols, bounds={c: (-1.0, 1.0) for c in [*host_cols, "g0"]}, config=config)
        for run in range(runs)
    ]
    plan = steps[0][1]
    seen = np.stack([view for view, _ in steps])
    mu = plan.sensitivity(intercept=False) / plan.sigma(intercept=False)  # = 1/z
    return PathRuns(
        "vertical LR gradient (host)", gaussian_epsilon(mu=mu, delta=DELTA), mu,
        seen[:, ~in_d_prime].reshape(-1), seen[:, in_d_prime].reshape(-1), None, runs,
    )


def vt_bug(monkeypatch: pytest.MonkeyPatch, bug: str) -> float:
    if bug == "noise-halved":
        real = DpPlan.share_sigma
        monkeypatch.setattr(DpPlan, "share_sigma", lambda self, **kw: 0.5 * real(self, **kw))
        return 2.0
    if bug == "share-missing":  # the arbiter draws zeros: the host sees the guest's share only
        real = lr_module.gaussian_noise
        monkeypatch.setattr(
            lr_module, "gaussian_noise",
            lambda **kw: np.zeros(kw["size"]) if current_party() == "a" else real(**kw),
        )
        return math.sqrt(2.0)
    raise AssertionError(bug)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_vertical_gradient_meets_its_claim() -> None:
    runs = gradient_runs()
    assert_fresh_noise(runs)
    assert runs.mu == pytest.approx(1.0 / 1.35, rel=0.05)
    res = runs.audit()
    assert res.runs == VT_RUNS * VT_ROWS
    assert not res.refuted and res.lower_bound < res.claimed_epsilon
    assert res.fitted_epsilon == pytest.approx(res.claimed_epsilon, rel=TOL)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("bug", ["noise-halved", "share-missing"])
def test_vertical_gradient_audit_catches(monkeypatch: pytest.MonkeyPatch, bug: str) -> None:
    factor = vt_bug(monkeypatch, bug)
    _assert_caught(gradient_runs(runs=VT_BUG_RUNS), factor)


# ----------------------------------------------------------------------------- statistics histogram

ST_SILOS = ("a", "b", "c")
ST_OBSERVER, ST_TARGET, ST_AGGREGATOR = "a", "c", "aggregator"
ST_BINS = 8192
ST_EPSILON = 4.0  # the job's target (RDP); the claimed exact ε of the one release is lower
ST_JOBS, ST_BUG_JOBS = 4, 1


def _histogram_job(plan: StatisticsPlan, frames: dict[str, pd.DataFrame]) -> tuple[np.ndarray, np.ndarray]:
    """One DP histogram job: the decrypted histogram silo ``a`` receives, and ``a``'s own share."""
    own: list[np.ndarray] = []
    real = stats_module.discrete_gaussian

    def recorded(**kw: Any) -> np.ndarray:
        out = real(**kw)
        if current_party() == ST_OBSERVER:
            own.append(out)
        return out

    def silo(name: str, led: PrivacyLedger) -> Callable[[Channel], Any]:
        return _tagged(name, lambda ch: statistics_silo(
            ch, job="audit", silos=ST_SILOS, aggregator=ST_AGGREGATOR, frame=frames[name], plan=plan, backend="plain",
            backend_params={}, ledger=led, dataset=name, timeout=TIMEOUT, insecure=True))  # plain: audit baseline

    def aggregator(ch: Channel) -> Any:
        return statistics_aggregator(ch, silos=ST_SILOS, backend="plain", backend_params={},
                                     min_silos=len(ST_SILOS), colluders=plan.colluders, timeout=TIMEOUT)

    hub = InProcessHub("dp-audit-statistics", [*ST_SILOS, ST_AGGREGATOR])
    with _ledgers(ST_SILOS, epsilon=1e3) as led, pytest.MonkeyPatch.context() as mp:
        mp.setattr(stats_module, "discrete_gaussian", recorded)
        out = run_parties(hub, {**{s: silo(s, led[s]) for s in ST_SILOS}, ST_AGGREGATOR: _tagged(ST_AGGREGATOR, aggregator)})
    assert out[ST_OBSERVER]["status"] == "ok", out[ST_OBSERVER]["reason"]
    assert len(own) == 1, "no dropout: the observer draws one share"
    return np.asarray(out[ST_OBSERVER]["raw"]["v"]["histogram"], dtype=np.float64), own[0]


def histogram_runs(*, jobs: int = ST_JOBS) -> PathRuns:
    """``jobs`` DP histogram jobs; silo ``a``'s view of each bin (odd bins hold a target record)."""
    plan = plan_for(columns=["v"], queries=["histogram"], bins=ST_BINS, ranges={"v": (0.0, float(ST_BINS))},
                           privacy={"epsilon": ST_EPSILON, "delta": DELTA, "colluders": 1}, silos=len(ST_SILOS))
    (release,) = plan.releases
    data = np.random.default_rng(7)  # the silos' records (data, not noise)
    base = {s: pd.DataFrame({"v": data.uniform(0.0, ST_BINS, size=200)}) for s in ST_SILOS}
    in_d_prime = np.arange(ST_BINS) % 2 == 1  # D': bin i holds the target's record i; D: it does not
    targets = pd.DataFrame({"v": np.flatnonzero(in_d_prime) + 0.5})
    frames = {**base, ST_TARGET: pd.concat([base[ST_TARGET], targets], ignore_index=True)}
    known = sum(local_statistics(base[s], plan) for s in ST_SILOS)  # everything but the target records
    seen = np.stack([total - share - known for total, share in (_histogram_job(plan, frames) for _ in range(jobs))])
    mu = release.sensitivity / release.sigma  # = 1/z
    return PathRuns(
        "statistics histogram", gaussian_epsilon(mu=mu, delta=DELTA), mu,
        seen[:, ~in_d_prime].reshape(-1), seen[:, in_d_prime].reshape(-1), None, jobs,
    )


def st_bug(monkeypatch: pytest.MonkeyPatch, bug: str) -> float:
    real = stats_module.discrete_gaussian
    if bug == "noise-halved":
        monkeypatch.setattr(stats_module, "discrete_gaussian", lambda **kw: real(**{**kw, "sigma": 0.5 * kw["sigma"]}))
        return 2.0
    if bug == "share-missing":  # silo b draws zeros
        monkeypatch.setattr(
            stats_module, "discrete_gaussian",
            lambda **kw: np.zeros(kw["size"]) if current_party() == "b" else real(**kw),
        )
        return math.sqrt(2.0)
    raise AssertionError(bug)


@pytest.mark.timeout(300)
def test_histogram_release_meets_its_claim() -> None:
    runs = histogram_runs()
    assert_fresh_noise(runs)
    res = runs.audit()
    assert res.runs == ST_JOBS * ST_BINS
    assert not res.refuted and res.lower_bound < res.claimed_epsilon
    assert res.fitted_epsilon == pytest.approx(res.claimed_epsilon, rel=TOL)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("bug", ["noise-halved", "share-missing"])
def test_histogram_release_audit_catches(monkeypatch: pytest.MonkeyPatch, bug: str) -> None:
    factor = st_bug(monkeypatch, bug)
    _assert_caught(histogram_runs(jobs=ST_BUG_JOBS), factor)


# ----------------------------------------------------------------------------- federated evaluation
#
# The record-level federated evaluation release (:mod:`fedsilo.protocols.horizontal.evaluation`,
# ``protocol._evaluation_contribution``): every silo sends its metric inputs (probability
# histograms, row count, correct count, capped loss on a 2^-6 grid) plus discrete-Gaussian
# noise shares of total σ = z_eval·sqrt(K + 3) through the real secure sum (plain backend,
# ``insecure=True``). 3 silos, ``colluders = 1``; silo ``a`` observes (its own share recorded from
# the contribution it sends), silo ``c`` holds the target. Add/remove one held-out record.
#
# Many instances per execution: one contribution is ``EV_BLOCKS`` metric-input vectors of
# ``2·BINS·K + 3 = 43`` coordinates side by side (one call of the real ``_evaluation_contribution``
# with the concatenation: its noise is i.i.d. per coordinate, so each block is one independent
# instance of the release); in odd blocks the target's held-out set holds the target record.
#
# The target record is one whose score is NaN with label 0 (a held-out row with a non-finite
# feature, or a diverged model): ``metric_inputs`` maps it to bin 0 of the negative histogram,
# argmax 0 = label (correct) and p_true = 0 (capped loss 1), so it moves the four coordinates
# by exactly 1 each: ``||Δ|| = sqrt(K + 3) = 2``, the sensitivity the accounting assumes (no
# finite-score record attains it: a correct one has loss <= 0.0625, so ||Δ|| <= sqrt(3.004)).

EV_SILOS = ("a", "b", "c")
EV_OBSERVER, EV_TARGET, EV_AGGREGATOR = "a", "c", "aggregator"
#: the job's ε; the evaluation gets EVALUATION_SHARE = 1/4 of it: z_eval ≈ 1.30 (μ ≈ 0.77,
#: claimed exact ε ≈ 3.23 at δ = 1e-5, ledger RDP ε 3.5)
EV_EPSILON = 14.0
EV_BLOCKS = 4096  # 4096 · 43 = 176 128 coordinates per contribution
EV_ROUNDS, EV_BUG_ROUNDS = 8, 2


def evaluation_job(n_classes: int = 2) -> HorizontalJob:
    return HorizontalJob(
        job="dp-audit-evaluation", backend="plain", backend_params={}, model=ModelSection(kind="logistic"),
        training=TrainingSection(rounds=1),
        privacy=PrivacySection(level="record", epsilon=EV_EPSILON, delta=DELTA, colluders=1),
        n_features=1, n_classes=n_classes, seed=0, min_silos=len(EV_SILOS), round_timeout=120.0,
        insecure=True,  # plain: audit baseline
    )


def _held_out(data: np.random.Generator, rows: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A silo's held-out scores (P(y=1), or softmax rows) and labels (data, not noise)."""
    y = data.integers(0, n_classes, size=rows)
    if n_classes == 2:
        return np.clip(data.beta(2.0, 2.0, size=rows) + 0.2 * (y - 0.5), 0.0, 1.0), y
    return data.dirichlet(np.ones(n_classes), size=rows), y


def _target_record(n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The target held-out record: NaN score(s), label 0 — attains the sensitivity sqrt(K + 3)."""
    return (np.array([np.nan]) if n_classes == 2 else np.full((1, n_classes), np.nan)), np.array([0])


def evaluation_runs(*, rounds: int = EV_ROUNDS, n_classes: int = 2) -> PathRuns:
    """``rounds`` DP evaluation releases; silo ``a``'s view of each block (odd blocks: target in)."""
    job = evaluation_job(n_classes)
    be = _backend("plain")
    data = np.random.default_rng(11)
    held = {s: _held_out(data, 50, n_classes) for s in EV_SILOS}
    per_block = {s: fed_eval.metric_inputs(*held[s], n_classes=n_classes) for s in EV_SILOS}
    record = _target_record(n_classes)
    with_record = fed_eval.metric_inputs(
        np.concatenate([held[EV_TARGET][0], record[0]]), np.concatenate([held[EV_TARGET][1], record[1]]),
        n_classes=n_classes,
    )
    direction = with_record - per_block[EV_TARGET]  # D -> D': what one held-out record moves
    assert np.linalg.norm(direction) == pytest.approx(fed_eval.sensitivity(job.n_classes)), "sensitivity attained"
    dim = direction.size
    in_d_prime = np.arange(EV_BLOCKS) % 2 == 1
    inputs = {s: np.tile(per_block[s], EV_BLOCKS) for s in EV_SILOS}
    inputs[EV_TARGET] = np.where(in_d_prime[:, None], with_record, per_block[EV_TARGET]).reshape(-1)
    views: list[np.ndarray] = []
    charged: dict[str, int] = {}

    def silo(led: dict[str, PrivacyLedger]) -> Callable[[Channel], None]:
        def run(ch: Channel) -> None:
            me = ch.party
            secret = silo_key_ceremony(ch, be, silos=EV_SILOS, aggregator=EV_AGGREGATOR, timeout=TIMEOUT)
            public = secret.public()
            rng = secure_rng()
            x = inputs[me]
            for rnd in range(1, rounds + 1):
                real = hz_protocol._evaluation_contribution(
                    job, x, dp=True, rng=rng, ledger=led[me], dataset=me, round=rnd, recipients=EV_SILOS,
                    aggregator=EV_AGGREGATOR, scale=1.0,
                )
                own: list[np.ndarray] = []  # what this silo knows of the noise: every vector it sent

                def values(present: int, real: Contribution = real, own: list[np.ndarray] = own) -> np.ndarray:
                    out = real.values(present)
                    own.append(out - x)
                    return out

                def topup(present: int, contributors: int, real: Contribution = real,
                          own: list[np.ndarray] = own) -> np.ndarray:
                    out = real.topup(present, contributors)
                    own.append(out)
                    return out

                out = silo_secure_sum(
                    ch, round=rnd, aggregator=EV_AGGREGATOR, backend=be, secret=secret, public=public,
                    contribution=Contribution(values=values, topup=topup, charge=real.charge), timeout=TIMEOUT,
                    allow_exposed=job.allow_exposed, colluders=job.colluders_in(len(EV_SILOS)),
                )
                assert out.status == "ok" and out.total is not None, out.reason
                if out.charged:
                    charged[me] = charged.get(me, 0) + 1
                if me == EV_OBSERVER:
                    known = x + sum(own) + inputs["b"] + np.tile(per_block[EV_TARGET], EV_BLOCKS)
                    views.append((out.total - known).reshape(EV_BLOCKS, dim))

        return run

    def aggregator(ch: Channel) -> None:
        public = aggregator_key_ceremony(ch, be, silos=EV_SILOS, timeout=TIMEOUT)
        for rnd in range(1, rounds + 1):
            out = aggregator_secure_sum(
                ch, round=rnd, silos=EV_SILOS, backend=be, public=public, min_silos=job.min_silos,
                colluders=job.colluders_in(len(EV_SILOS)), timeout=TIMEOUT, allow_exposed=job.allow_exposed,
            )
            assert out.status == "ok", out.reason

    hub = InProcessHub("dp-audit-evaluation", [*EV_SILOS, EV_AGGREGATOR])
    with _ledgers(EV_SILOS, epsilon=1e3) as led:
        run_parties(hub, {**{s: _tagged(s, silo(led)) for s in EV_SILOS},
                          EV_AGGREGATOR: _tagged(EV_AGGREGATOR, aggregator)})
    assert charged == {s: rounds for s in EV_SILOS}, f"every release charged to every ledger: {charged}"
    seen = np.stack(views)  # (rounds, blocks, dim)
    mu = fed_eval.sensitivity(job.n_classes) / (job.evaluation_noise_multiplier * fed_eval.sensitivity(job.n_classes))
    assert mu == pytest.approx(1.0 / job.evaluation_event().noise_multiplier)
    return PathRuns(
        f"federated evaluation (record level, {n_classes} classes)", gaussian_epsilon(mu=mu, delta=DELTA), mu,
        seen[:, ~in_d_prime].reshape(-1, dim), seen[:, in_d_prime].reshape(-1, dim), direction, rounds,
    )


def ev_bug(monkeypatch: pytest.MonkeyPatch, bug: str) -> float:
    """Inject a bug into the evaluation's noise shares; returns the factor on the colluder's μ."""
    real = hz_protocol.gaussian_share
    if bug == "noise-halved":
        monkeypatch.setattr(hz_protocol, "gaussian_share", lambda **kw: real(**{**kw, "sigma": 0.5 * kw["sigma"]}))
        return 2.0
    if bug == "share-missing":  # silo b adds no noise: the observer sees c's share only
        monkeypatch.setattr(
            hz_protocol, "gaussian_share",
            lambda **kw: np.zeros(kw["size"]) if current_party() == "b" else real(**kw),
        )
        return math.sqrt(2.0)
    raise AssertionError(bug)


@pytest.mark.timeout(120)
def test_evaluation_release_meets_its_claim() -> None:
    runs = evaluation_runs()
    assert_fresh_noise(runs)
    res = runs.audit()
    assert res.runs == EV_ROUNDS * EV_BLOCKS
    assert not res.refuted and res.lower_bound < res.claimed_epsilon
    assert res.fitted_epsilon == pytest.approx(res.claimed_epsilon, rel=TOL)


@pytest.mark.timeout(120)
def test_multiclass_evaluation_release_meets_its_claim() -> None:
    """K = 3: one record moves K histogram counts (one per one-vs-rest pair), sensitivity sqrt(6)."""
    runs = evaluation_runs(n_classes=3)
    assert runs.direction is not None and np.count_nonzero(runs.direction) == 3 + 3
    assert_fresh_noise(runs)
    res = runs.audit()
    assert res.runs == EV_ROUNDS * EV_BLOCKS
    assert not res.refuted and res.lower_bound < res.claimed_epsilon
    assert res.fitted_epsilon == pytest.approx(res.claimed_epsilon, rel=TOL)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("bug", ["noise-halved", "share-missing"])
def test_evaluation_release_audit_catches(monkeypatch: pytest.MonkeyPatch, bug: str) -> None:
    factor = ev_bug(monkeypatch, bug)
    _assert_caught(evaluation_runs(rounds=EV_BUG_ROUNDS), factor)
