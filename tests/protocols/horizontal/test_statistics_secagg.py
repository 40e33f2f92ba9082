"""Federated statistics over a keyless secure sum (``[crypto] backend = "secagg"``, issue 14).

The statistics rounds run on the secure-sum session the backend's key model selects: without DP
the answers are plain's (counts exact, sums within the 2^-24 grid); under DP the job costs the
very GaussianEvent a Paillier run costs, each silo's discrete-Gaussian share drawn once for the
session's quorum (no top-up) and at least 3 grid steps wide; a dropout is recovered or left out
as in SecAgg+, and below the quorum (or the threshold) the round aborts before anything is
unmasked. The production party functions run on an in-process hub whose log we inspect, and
the same job through the threads, processes and Ray engines.
"""
from __future__ import annotations

import math
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsilo.errors import ConfigError, EncodingOverflowError, NotEnoughSilosError
from fedsilo.privacy.accounting import epsilon
from fedsilo.privacy.events import GaussianEvent
from fedsilo.privacy.ledger import PrivacyLedger
from fedsilo.protocols import codec
from fedsilo.protocols.channel import InProcessHub, run_parties
from fedsilo.protocols.horizontal import messages as hz_msgs
from fedsilo.protocols.horizontal import secagg as sg
from fedsilo.protocols.horizontal import statistics as stats_mod
from fedsilo.protocols.horizontal.statistics import (
    MIN_SHARE_STEPS,
    plan_statistics,
    statistics_aggregator,
    statistics_silo,
)
from fedsilo.protocols.horizontal.statistics_plan import AGGREGATOR
from fedsilo.protocols.spec import PrivacySection, StatisticsSection, section
from fedsilo.silos.config import parse_config
from fedsilo.silos.tasks.statistics import make_statistics_job, simulate_statistics
from fedsilo.silos.topology import federation, neighbours
from hz_data import backend_available

RANGES = {"age": (0.0, 100.0), "dose": (-5.0, 5.0)}
QUERIES = ["count", "sum", "mean", "histogram"]
DP = {"epsilon": 2.0, "delta": 1e-5, "accountant": "rdp"}
#: a sum of n silos' values, each rounded to the 2^-24 grid: at most half a step per silo
HALF_STEP = 2.0**-25
SECAGG_KINDS = set(sg.MESSAGE_KINDS)
needs_paillier = pytest.mark.skipif(not backend_available("paillier", packed=True), reason="paillier backend not installed")


@pytest.fixture(scope="module")
def frames5() -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(11)
    out = {}
    for i, n in enumerate((120, 300, 80, 150, 60)):
        out[f"h{i}"] = pd.DataFrame({"age": rng.uniform(20, 90, n).round(1), "dose": rng.normal(0.5 * i, 1.5, n)})
    return out


@pytest.fixture(scope="module")
def frames3(frames5: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    return {n: frames5[n] for n in ("h0", "h1", "h2")}


def _run(frames: dict[str, pd.DataFrame], **kw: Any) -> dict[str, Any]:
    """The statistics task through the runner (threads unless ``engine`` is given)."""
    args: dict[str, Any] = dict(
        silos=frames, columns=["age", "dose"], queries=QUERIES, bins=8, ranges=RANGES, privacy=None, ledger_dir=None,
        budgets={n: (4.0, 1e-5) for n in frames}, job="stats", backend_params={}, backend="secagg",
    )
    args.update(kw)
    return simulate_statistics(**args)


def _plain(frames: dict[str, pd.DataFrame], **kw: Any) -> dict[str, Any]:
    return _run(frames, backend="plain", insecure=True, **kw)  # plain: the test baseline


def _request(**over: Any) -> StatisticsSection:
    body = {"columns": ["age", "dose"], "queries": QUERIES, "bins": 8, "range": {k: tuple(v) for k, v in RANGES.items()}}
    return section(StatisticsSection, {**body, **over}, key="statistics")


def _privacy(**over: Any) -> PrivacySection:
    return section(PrivacySection, {**DP, **over}, key="privacy")


def _job(frames: dict[str, Any], *, privacy: dict | None = None, min_silos: int = 2, backend: str = "secagg",
         backend_params: dict | None = None, insecure: bool = False, round_timeout: float = 20.0) -> Any:
    return make_statistics_job(
        job="direct", silos=list(frames), request=_request(), privacy=None if privacy is None else _privacy(**privacy),
        backend=backend, backend_params=backend_params or {}, min_silos=min_silos, round_timeout=round_timeout,
        insecure=insecure,
    )


def _ledgers(tmp_path: Path, names: Any, budget: float = 4.0) -> dict[str, PrivacyLedger]:
    out = {}
    for n in names:
        out[n] = PrivacyLedger(tmp_path / f"{n}.sqlite", silo=n)
        out[n].register_dataset(n, epsilon=budget, delta=1e-5)
    return out


def run_direct(frames: dict[str, pd.DataFrame], job: Any, *, ledgers: dict | None = None,
               faults: dict | None = None, noise_seed: int | None = 5) -> tuple[InProcessHub, dict[str, Any]]:
    """The production party functions on an in-process hub we can inspect."""
    names = list(frames)
    hub = InProcessHub(job.job, [*names, AGGREGATOR])
    parties: dict[str, Any] = {AGGREGATOR: lambda ch: statistics_aggregator(
        ch, silos=names, backend=job.backend, backend_params=job.backend_params, min_silos=job.min_silos,
        colluders=stats_mod.exposure_colluders(job.plan), timeout=job.round_timeout, allow_exposed=job.allow_exposed,
        plan=job.plan)}
    for i, n in enumerate(names):
        parties[n] = lambda ch, n=n, i=i: statistics_silo(
            ch, job=job.job, silos=names, aggregator=AGGREGATOR, frame=frames[n], plan=job.plan, backend=job.backend,
            backend_params=job.backend_params, ledger=(ledgers or {}).get(n), dataset=n,
            noise_seed=None if noise_seed is None else noise_seed + i, timeout=job.round_timeout,
            drop=(faults or {}).get(n), allow_exposed=job.allow_exposed, insecure=job.insecure,
        )
    return hub, run_parties(hub, parties)


def _controls(hub: InProcessHub) -> list[str]:
    """The type of every control message the aggregator sent a silo."""
    return [codec.decode(e.body)["type"] for e in hub.log if e.kind == sg.KIND_CONTROL]


def _pooled(frames: dict[str, pd.DataFrame], names: Any) -> pd.DataFrame:
    return pd.concat([frames[n] for n in names])


# --------------------------------------------------------------------------------- exact, without DP
def test_without_dp_counts_equal_plains_and_sums_are_within_the_grid(frames3: dict[str, pd.DataFrame]) -> None:
    plain, secagg = _plain(frames3), _run(frames3)
    assert secagg["backend"] == "secagg" and secagg["private"] is True and secagg["dp"] is None
    assert secagg["silos"] == plain["silos"] == ["h0", "h1", "h2"]
    for col in ("age", "dose"):
        p, s = plain["statistics"][col], secagg["statistics"][col]
        assert s["count"] == p["count"] == sum(len(f) for f in frames3.values())  # exact
        assert s["histogram"] == p["histogram"]  # every bin count exact, same edges
        assert abs(s["sum"] - p["sum"]) <= 3 * HALF_STEP  # each silo's sum rounded to 2^-24
        assert s["mean"] == pytest.approx(p["mean"], abs=3 * HALF_STEP / s["count"] * 1.01)
        assert s["sum"] != pytest.approx(0.0)  # a real sum came back, not zeros
    # the keyless run is not the plain run in disguise: no key, masked words on the wire
    assert secagg["bytes_sent"]["aggregator"] > 0


def test_only_secagg_messages_travel_and_no_silo_talks_to_another(frames3: dict[str, pd.DataFrame]) -> None:
    hub, out = run_direct(frames3, _job(frames3))
    kinds = {e.kind for e in hub.log}
    assert kinds <= SECAGG_KINDS and hz_msgs.KEY_SECRET not in kinds and hz_msgs.KEY_PUBLIC not in kinds
    assert all(AGGREGATOR in (e.sender, e.recipient) for e in hub.log)
    masked = [codec.decode(e.body) for e in hub.log if e.kind == sg.KIND_MASKED]
    assert len(masked) == 3 and all(set(m) == {"y", "sig"} and isinstance(m["y"], bytes) for m in masked)
    for n in frames3:
        assert out[n]["status"] == "ok" and out[n]["statistics"] == out["h0"]["statistics"]
    assert out[AGGREGATOR]["status"] == "ok" and out[AGGREGATOR]["contributors"] == ["h0", "h1", "h2"]


# --------------------------------------------------------------------------------- DP
@needs_paillier
def test_dp_costs_the_epsilon_of_a_paillier_run_and_is_charged_before_sending(
    frames3: dict[str, pd.DataFrame], tmp_path: Path,
) -> None:
    paillier = _run(frames3, backend="paillier", backend_params={"packed": True}, privacy=DP,
                    ledger_dir=tmp_path / "paillier")
    secagg = _run(frames3, privacy=DP, ledger_dir=tmp_path / "secagg")
    assert secagg["dp"]["noise_multiplier"] == paillier["dp"]["noise_multiplier"]
    assert secagg["dp"]["releases"] == paillier["dp"]["releases"] == 6
    want = epsilon(GaussianEvent(paillier["dp"]["noise_multiplier"], 1.0, 6), delta=1e-5, accountant="rdp")
    assert 0 < want <= DP["epsilon"]
    for n in frames3:
        assert secagg["epsilon"][n] == paillier["epsilon"][n] == {"epsilon": want, "delta": 1e-5}
        entries = {b: PrivacyLedger(tmp_path / b / f"{n}.sqlite", silo=n).entries(n) for b in ("paillier", "secagg")}
        (pe,), (se,) = entries["paillier"], entries["secagg"]
        assert se.event == pe.event == GaussianEvent(paillier["dp"]["noise_multiplier"], 1.0, 6)
        assert se.status == "committed" and se.level == "record" and se.relation == pe.relation
        # the keyless shares are drawn once for the quorum (all 3: a sum of 2 would expose one)
        assert se.mechanism["quorum"] == 3 and "quorum" not in pe.mechanism
        # the aggregator unmasks the noised sum itself: it is named as a recipient
        assert se.recipient == "aggregator+silos:h0,h1,h2" and pe.recipient == "silos:h0,h1,h2"
        assert se.mechanism["unmasked_by"] == AGGREGATOR and "unmasked_by" not in pe.mechanism


def test_under_one_noise_seed_dp_releases_are_plains_exactly(frames3: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    """Three silos: the quorum is all three, so each share is the shared-key round's share with
    every silo present, on the same grids; the masked sum is exact on those grids, so the
    released numbers are the plain backend's under the same (test-only) noise seed."""
    plain = _plain(frames3, privacy=DP, ledger_dir=tmp_path / "plain", noise_seed=9)
    secagg = _run(frames3, privacy=DP, ledger_dir=tmp_path / "secagg", noise_seed=9)
    assert secagg["dp"]["granularity"] == plain["dp"]["granularity"]
    assert secagg["raw"] == plain["raw"] and secagg["statistics"] == plain["statistics"]
    pooled = _pooled(frames3, frames3)
    assert secagg["raw"]["age"]["count"] != len(pooled) or secagg["raw"]["dose"]["count"] != len(pooled)  # noised


def test_each_share_is_drawn_once_for_the_quorum_and_is_three_steps_wide(
    frames5: dict[str, pd.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = _job(frames5, privacy=DP, round_timeout=5.0)
    plan = job.plan
    assert plan.quorum == 4  # 5 silos, 1 colluder: a certified survivor set, floor((5 + 1)/2) + 1
    drawn: list[tuple[float, int]] = []
    real = stats_mod.noise_share_sigma

    def spy(*, sigma: float, parties: int) -> float:
        drawn.append((sigma, parties))
        return real(sigma=sigma, parties=parties)

    def no_topup(**kw: Any) -> float:
        raise AssertionError("a keyless sum never asks for a top-up")

    monkeypatch.setattr(stats_mod, "noise_share_sigma", spy)
    monkeypatch.setattr(stats_mod, "noise_share_topup_sigma", no_topup)
    _, out = run_direct(frames5, job, ledgers=_ledgers(tmp_path, frames5), faults={"h4": "update"})
    assert out[AGGREGATOR]["status"] == "ok" and out[AGGREGATOR]["contributors"] == ["h0", "h1", "h2", "h3"]
    # every silo that sent drew one share per release, for quorum − colluders = 3 parties,
    # although five silos took part and four contributed
    assert len(drawn) == 5 * len(plan.releases)
    by_sigma = {r.sigma: r for r in plan.releases}
    for sigma, parties in drawn:
        assert parties == 3
        r = by_sigma[sigma]
        assert (sigma / math.sqrt(parties)) / r.granularity >= MIN_SHARE_STEPS
        assert r.share_sigma == pytest.approx(sigma / math.sqrt(3))
    # the keyless plan's grids are never finer than the two-phase round's (no top-up to fit)
    shared = plan_statistics(_request(), _privacy(), silos=5)
    for k, s in zip(plan.releases, shared.releases, strict=True):
        assert k.granularity >= s.granularity and k.share_steps >= MIN_SHARE_STEPS


@settings(max_examples=40, deadline=None)
@given(eps=st.floats(0.05, 60.0), silos=st.integers(2, 12), colluders=st.integers(1, 2), spare=st.integers(0, 10),
       bound=st.floats(1e-4, 1e4))
def test_a_keyless_plan_makes_every_draw_three_grid_steps_wide(eps: float, silos: int, colluders: int, spare: int,
                                                                bound: float) -> None:
    quorum = min(silos, colluders + 1 + spare)
    request = _request(columns=["x"], queries=["count", "sum", "histogram"], bins=3, range={"x": (-bound, bound / 2)})
    try:
        plan = plan_statistics(request, _privacy(epsilon=eps, colluders=colluders), silos=silos, quorum=quorum)
    except ConfigError as exc:
        assert silos < colluders + 1 or "narrower than 3 steps" in str(exc)
        return
    assert plan.quorum == quorum and plan.mechanism()["quorum"] == quorum
    for r in plan.releases:
        assert r.share_sigma == pytest.approx(r.sigma / math.sqrt(quorum - colluders))
        assert r.share_sigma / r.granularity >= MIN_SHARE_STEPS
        assert float(r.sensitivity / r.granularity).is_integer()


# --------------------------------------------------------------------------------- dropouts and aborts
def test_a_silo_dropping_after_its_masked_input_is_still_in_the_sum(frames5: dict[str, pd.DataFrame]) -> None:
    # "topup" = silent at unmasking: its self mask comes from the survivors' shares
    hub, out = run_direct(frames5, _job(frames5, round_timeout=5.0), faults={"h2": "topup"})
    assert out[AGGREGATOR]["status"] == "ok" and out[AGGREGATOR]["contributors"] == sorted(frames5)
    assert not [e for e in hub.log if e.sender == "h2" and e.kind == sg.KIND_REVEAL]
    pooled = _pooled(frames5, frames5)
    got = out["h0"]["statistics"]["age"]
    assert got["count"] == len(pooled) and abs(got["sum"] - pooled["age"].sum()) <= 5 * HALF_STEP + 1e-9


def test_a_silo_dropping_before_its_masked_input_is_left_out_and_not_charged(
    frames5: dict[str, pd.DataFrame], tmp_path: Path,
) -> None:
    ledgers = _ledgers(tmp_path, frames5)
    job = _job(frames5, privacy=DP, round_timeout=5.0)
    _, out = run_direct(frames5, job, ledgers=ledgers, faults={"h2": "update"})
    agg = out[AGGREGATOR]
    assert agg["status"] == "ok" and agg["contributors"] == ["h0", "h1", "h3", "h4"] and agg["failures"] == ["h2"]
    want = epsilon(job.plan.event(), delta=1e-5)
    for n in frames5:
        assert ledgers[n].spent(n) == (0.0 if n == "h2" else pytest.approx(want))
        assert out[n]["charged"] is (n != "h2")
        assert out[n]["statistics"] == out["h0"]["statistics"]  # the silo that dropped still learns the sum
    # four shares of σ²/2 each: the noise on the count is within 6·σ·sqrt(2) of the four silos' count
    left = _pooled(frames5, agg["contributors"])
    sigma = {f"{r.column}.{r.query}": r.sigma for r in job.plan.releases}
    assert abs(out["h0"]["raw"]["age"]["count"] - len(left)) <= 6 * sigma["age.count"] * math.sqrt(2)


@pytest.mark.parametrize("faults, min_silos, match", [
    ({"h2": "update"}, 5, "a released sum needs 5 contributions"),  # below the quorum
    ({"h1": "update", "h2": "update", "h3": "update"}, 2, r"\(threshold t = 3\)"),  # below SecAgg's threshold
], ids=["quorum", "threshold"])
def test_below_the_quorum_the_round_aborts_and_nothing_is_unmasked(
    frames5: dict[str, pd.DataFrame], tmp_path: Path, faults: dict, min_silos: int, match: str,
) -> None:
    ledgers = _ledgers(tmp_path, frames5)
    job = _job(frames5, privacy=DP, min_silos=min_silos, round_timeout=5.0)
    hub, out = run_direct(frames5, job, ledgers=ledgers, faults=faults)
    agg = out[AGGREGATOR]
    assert agg["status"] == "aborted" and re.search(match, agg["reason"]) and "nothing was unmasked" in agg["reason"]
    for n in frames5:
        assert out[n]["statistics"] is None and out[n]["raw"] is None
        assert out[n]["status"] == "aborted" and "nothing was unmasked" in out[n]["reason"]
    # no unmasking was asked for, no share revealed, no sum sent
    assert "unmask" not in _controls(hub) and "result" not in _controls(hub)
    assert not [e for e in hub.log if e.kind == sg.KIND_REVEAL]
    # through the runner the job's results say why
    with pytest.raises(NotEnoughSilosError, match="nothing was unmasked"):
        _run(frames5, privacy=DP, ledger_dir=tmp_path / "run", min_silos=min_silos, faults=faults, round_timeout=5.0)


def test_a_silo_whose_budget_is_spent_withdraws_and_the_others_go_on(frames5: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    budgets = {n: (1.0 if n == "h3" else 4.0, 1e-5) for n in frames5}
    res = _run(frames5, privacy=DP, ledger_dir=tmp_path, budgets=budgets, round_timeout=5.0)
    assert res["silos"] == ["h0", "h1", "h2", "h4"] and res["epsilon"]["h3"]["epsilon"] == 0.0
    assert PrivacyLedger(tmp_path / "h3.sqlite", silo="h3").spent("h3") == 0.0
    # with three silos a withdrawal leaves a sum of two, which would expose each: refused
    three = {n: frames5[n] for n in ("h0", "h1", "h3")}
    with pytest.raises(NotEnoughSilosError, match=r"needs 3 contributions \(the quorum\) \[withdrew \(privacy budget "
                                                  r"exhausted\): h3\]; the round is aborted and nothing was unmasked"):
        _run(three, privacy=DP, ledger_dir=tmp_path / "three", budgets={n: budgets[n] for n in three}, round_timeout=5.0)


# --------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("quorum, match", [
    (0, r"quorum must be an integer in \[1, 3\]"),
    (4, r"quorum must be an integer in \[1, 3\]"),
    (True, "quorum must be an integer"),
    (1, "a quorum of 1 contribution.s. cannot tolerate 1 colluding silo"),
])
def test_a_bad_quorum_is_refused_by_the_planner(quorum: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        plan_statistics(_request(), _privacy(), silos=3, quorum=quorum)


def test_a_plan_for_another_session_is_refused_before_anything_is_sent(frames3: dict[str, pd.DataFrame],
                                                                       tmp_path: Path) -> None:
    names = list(frames3)
    ledger = _ledgers(tmp_path, ["h0"])["h0"]
    shared_key_plan = plan_statistics(_request(), _privacy(), silos=3)
    keyless_plan = plan_statistics(_request(), _privacy(), silos=3, quorum=3)
    wrong_quorum = plan_statistics(_request(), _privacy(), silos=3, quorum=2)
    cases = [
        ("secagg", shared_key_plan, "two-phase round of a shared-key backend.*plan with quorum=3"),
        ("secagg", wrong_quorum, "quorum of 2 contributions but this secure sum releases sums of at least 3"),
        ("plain", keyless_plan, "drew its noise shares once for a keyless sum's quorum of 3"),
    ]
    for backend, plan, match in cases:
        hub = InProcessHub("s", [*names, AGGREGATOR])
        with pytest.raises(ConfigError, match=match):
            statistics_silo(hub.channel("h0"), job="s", silos=names, aggregator=AGGREGATOR, frame=frames3["h0"],
                            plan=plan, backend=backend, backend_params={}, ledger=ledger, dataset="h0", insecure=True)
        with pytest.raises(ConfigError, match=match):
            statistics_aggregator(hub.channel(AGGREGATOR), silos=names, backend=backend, backend_params={},
                                  min_silos=2, colluders=1, plan=plan)
        assert not hub.log  # refused before any message
    assert ledger.spent("h0") == 0.0 and not ledger.entries("h0")


def test_a_keyless_aggregator_needs_the_plan() -> None:
    hub = InProcessHub("s", ["h0", "h1", "h2", AGGREGATOR])
    with pytest.raises(ConfigError, match="keyless secure sum needs the statistics plan"):
        statistics_aggregator(hub.channel(AGGREGATOR), silos=["h0", "h1", "h2"], backend="secagg", backend_params={},
                              min_silos=2, colluders=1)
    assert not hub.log


@pytest.mark.parametrize("silos, kw, match", [
    (["h0"], {}, "needs at least 2 silos"),
    (["h0", "h1"], {"insecure": True}, r"threshold must be an integer in \[2, degree = 1\]"),
    (["h0", "h1", "h2"], {"backend_params": {"threshold": 3}}, "threshold = 3 but each of the 3 silos has only 2"),
    (["h0", "h1", "h2"], {"backend_params": {"value_bound": 2.0**50}}, "64"),
    (["h0", "h1", "h2"], {"privacy": DP, "backend_params": {"granularity": 2.0**-8}},
     "precision to at least 16 fractional bits"),
], ids=["one-silo", "two-silos", "threshold", "ring-bits", "grid"])
def test_a_job_the_keyless_sum_cannot_run_is_refused_before_any_party_starts(
    silos: list, kw: dict, match: str, tmp_path: Path,
) -> None:
    frames = {n: pd.DataFrame({"age": [1.0], "dose": [0.0]}) for n in silos}
    with pytest.raises(ConfigError, match=match):
        _run(frames, ledger_dir=tmp_path, min_silos=1, **kw)
    assert not list(tmp_path.iterdir())  # no ledger was created


def test_a_value_above_the_value_bound_is_refused_before_the_silo_sends(frames3: dict[str, pd.DataFrame]) -> None:
    # h1 holds 300 rows: its count does not fit value_bound = 256
    job = _job(frames3, backend_params={"value_bound": 256.0})
    hub = InProcessHub("direct", [*frames3, AGGREGATOR])
    with pytest.raises(EncodingOverflowError, match="value_bound"):
        statistics_silo(hub.channel("h1"), job="direct", silos=list(frames3), aggregator=AGGREGATOR,
                        frame=frames3["h1"], plan=job.plan, backend="secagg", backend_params=job.backend_params)
    assert not hub.log


# --------------------------------------------------------------------------------- topology
def _stats_config(backend: str) -> Any:
    crypto = {"backend": backend} if backend != "plain" else {"backend": "plain", "insecure": True}
    return parse_config({
        "federation": {"name": "s", "task": "statistics", "seed": 3},
        "crypto": crypto,
        "privacy": {"epsilon": 1.0, "delta": 1e-5},
        "statistics": {"columns": ["mean radius"], "queries": ["count", "sum"], "range": {"mean radius": [5.0, 30.0]}},
        "data": {"source": "sklearn:breast_cancer", "label": "target", "partition": {"kind": "iid", "silos": 3}},
    })


def test_a_keyless_statistics_federation_has_no_silo_to_silo_edge() -> None:
    graph = federation(_stats_config("secagg"))
    silos = [n for n, a in graph.nodes(data=True) if a["role"] == "silo"]
    assert len(silos) == 3
    assert {(s, r) for s, r in graph.edges if AGGREGATOR not in (s, r)} == set()
    for n in silos:
        assert neighbours(graph, n) == {AGGREGATOR}
        kinds = {k for f in graph.edges[n, AGGREGATOR]["flows"] for k in f.kinds}
        assert sg.KIND_MASKED in kinds and hz_msgs.UPDATE not in kinds and hz_msgs.KEY_PUBLIC not in kinds
        assert any("masked noised statistics" == f.what for f in graph.edges[n, AGGREGATOR]["flows"])
    # the shared-key statistics job keeps its key ceremony's edges
    paillier = federation(_stats_config("paillier"))
    assert {(s, r) for s, r in paillier.edges if AGGREGATOR not in (s, r)}


# --------------------------------------------------------------------------------- engines
@pytest.mark.network
@pytest.mark.timeout(300)
def test_the_processes_engine_releases_the_threads_numbers(frames3: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    """One OS process per party over gRPC with mutual TLS; under one noise seed the DP release
    is the threads engine's."""
    kw: dict[str, Any] = dict(privacy=DP, noise_seed=3, queries=["count", "sum", "histogram"])
    threads = _run(frames3, ledger_dir=tmp_path / "threads", **kw)
    procs = _run(frames3, ledger_dir=tmp_path / "procs", engine="processes", **kw)
    assert (procs["engine"], procs["transport"]) == ("processes", "grpc+mtls")
    assert procs["raw"] == threads["raw"] and procs["epsilon"] == threads["epsilon"]
    assert procs["silos"] == threads["silos"] == ["h0", "h1", "h2"]


def _descendants(root: int) -> set[tuple[int, str]]:
    """``(pid, start time)`` of the live descendants of ``root`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), list(children.get(root, []))
    while todo:
        pid = todo.pop()
        start = _started(pid)
        if start is not None:
            out.add((pid, start))
        todo += children.get(pid, [])
    return out


def _started(pid: int) -> str | None:
    """A live (not zombie) process's start time, None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


@contextmanager
def _no_process_left() -> Iterator[set[tuple[int, str]]]:
    """Every process started under this one while the block runs (sampled, since Ray's daemons
    move on), none alive afterwards; a survivor is killed, then reported."""
    before = _descendants(os.getpid())
    seen: set[tuple[int, str]] = set()
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            seen.update(_descendants(os.getpid()) - before)
            done.wait(0.2)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    try:
        yield seen
    finally:
        done.set()
        watcher.join()
        deadline = time.monotonic() + 30  # a stopped process is reaped a moment later
        while any(_started(p) == s for p, s in seen) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = sorted(p for p, s in seen if _started(p) == s)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    assert not left, f"processes left behind: {left}"


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.xdist_group("heavy")
@pytest.mark.timeout(600)
def test_the_ray_engine_releases_the_threads_numbers(frames3: dict[str, pd.DataFrame], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # a private local Ray, stopped after the job
    kw: dict[str, Any] = dict(privacy=DP, noise_seed=3, queries=["count", "sum"])
    threads = _run(frames3, ledger_dir=tmp_path / "threads", **kw)
    with _no_process_left() as started:
        ray = _run(frames3, ledger_dir=tmp_path / "ray", engine="ray", **kw)
    assert started  # Ray's processes really ran
    assert ray["engine"] == "ray" and ray["raw"] == threads["raw"] and ray["epsilon"] == threads["epsilon"]


def test_a_silo_whose_sum_exceeds_the_value_bound_is_clamped_not_refused(tmp_path: Path) -> None:
    """Found by the privacy review: a silo whose noised column sum overflowed the keyless value
    bound failed the job by name, after its noise was drawn, depending on its data (one bit of
    its statistic, unaccounted). The local block is now clamped to the bound minus 12 noise
    standard deviations before the noise (1-Lipschitz: the sensitivity, hence ε, is unchanged)."""
    from fedsilo.silos.tasks.statistics import simulate_statistics

    rng = np.random.default_rng(0)  # public test data
    frames = {"a": pd.DataFrame({"income": rng.uniform(8e5, 1e6, 5000)}),
              "b": pd.DataFrame({"income": rng.uniform(0, 1e3, 100)}),
              "c": pd.DataFrame({"income": rng.uniform(0, 1e3, 100)})}
    out = simulate_statistics(silos=frames, columns=["income"], queries=["sum", "count"], bins=4,
                              ranges={"income": (0.0, 1e6)}, privacy={"epsilon": 2.0, "delta": 1e-5},
                              ledger_dir=tmp_path, budgets={n: (4.0, 1e-5) for n in frames}, job="ovf",
                              backend_params={}, backend="secagg", min_silos=3)
    assert out["statistics"]["income"]["count"] > 5000
    assert out["statistics"]["income"]["sum"] < 2.0**32  # clamped below the bound, not refused
    assert all(v["epsilon"] <= 2.0 for v in out["epsilon"].values())
