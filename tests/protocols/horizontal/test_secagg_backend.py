"""The keyless ``secagg`` backend wired into horizontal FedAvg through the secure-sum session.

The backend class (capabilities, info, no primitives), the session's plan (quorum, threshold,
the DDG calibration), and the production party functions on an in-process hub: exact sums,
only SecAgg+ messages and no silo-to-silo traffic, dropouts recovered or refused, withdrawal,
record-level DP against CKKS on the same seed, silo-level DP charged with the session's DDG event.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fedsilo.crypto.base import CryptoBackend
from fedsilo.crypto.registry import available_backends, get_backend, get_backend_class
from fedsilo.errors import ConfigError, UnsupportedOperationError
from fedsilo.privacy.accounting import epsilon
from fedsilo.privacy.events import ComposedEvent, DistributedDiscreteGaussianEvent
from fedsilo.privacy.ledger import PrivacyLedger
from fedsilo.privacy.relations import ADD_REMOVE_RECORD, ZERO_OUT_SILO, convert
from fedsilo.protocols import codec
from fedsilo.protocols.channel import InProcessHub, run_parties
from fedsilo.protocols.horizontal import messages as hz_msgs
from fedsilo.protocols.horizontal import secagg as sg
from fedsilo.protocols.horizontal.dp import SessionNoiseDPFedAvg
from fedsilo.protocols.horizontal.protocol import AGGREGATOR, aggregator, silo
from fedsilo.protocols.horizontal.sums import ddg_granularity, plan_sums
from fedsilo.silos.tasks.horizontal import make_job, simulate_horizontal
from fedsilo.protocols.spec import ModelSection, PrivacySection, TrainingSection, section
from hz_data import backend_available, base_kwargs, breast_cancer_silos, hz_job

TRAINING = {"rounds": 3, "local_epochs": 2, "batch_size": 32, "lr": 0.5, "optimizer": "sgd", "strategy": "fedavg"}
SILO_DP = {"epsilon": 8.0, "delta": 1e-5, "clip": 0.5, "accountant": "rdp", "level": "silo"}
RECORD_DP = {"epsilon": 8.0, "delta": 1e-5, "clip": 1.0, "accountant": "rdp", "level": "record"}
SECAGG_KINDS = set(sg.MESSAGE_KINDS)


# --------------------------------------------------------------------------------- the backend class
def test_secagg_is_a_registered_keyless_session_backend() -> None:
    assert "secagg" in available_backends()
    cls = get_backend_class("secagg")
    caps = cls.capabilities()
    assert caps.key_model == "keyless" and caps.keyless and caps.exact_sums and caps.dropout_tolerant
    assert not caps.plaintext_matmul
    for name in ("plain", "paillier", "ckks"):
        assert get_backend_class(name).capabilities().key_model == "shared-key"
    be = get_backend("secagg", threshold=3)
    info = be.info()
    assert info.key_model == "keyless" and info.exact and info.secure and info.dropout_tolerant
    assert info.threshold == 3 and info.error_bound == 2.0**-25 and info.bytes_per_value == 8.0
    assert be.confidentiality().sufficient
    with pytest.raises(UnsupportedOperationError, match="keyless session backend"):
        be.keygen()
    with pytest.raises(UnsupportedOperationError, match="horizontal jobs only"):
        be.encrypt(None, [1.0])  # type: ignore[arg-type]
    assert isinstance(be, CryptoBackend)


@pytest.mark.parametrize("params, match", [
    ({"threshold": 1}, "threshold must be an integer >= 2"),
    ({"degree": True}, "degree must be an integer"),
    ({"granularity": 0.3}, "granularity"),
    ({"value_bound": -1.0}, "value_bound must be a finite number > 0"),
    ({"prg": "rc4"}, "unknown prg 'rc4'"),
])
def test_bad_parameters_are_refused_naming_them(params: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        get_backend("secagg", **params)


def test_the_plan_sizes_the_quorum_by_the_exposure_rule_and_refuses_a_threshold_above_the_degree() -> None:
    cls = get_backend_class("secagg")
    names = ["a", "b", "c"]
    # without DP a sum of 2 of 3 would let each read the other's update: every sum needs all 3
    assert plan_sums(cls, silos=names, min_silos=2, colluders=1, allow_exposed=False).quorum == 3
    # exposed sums allowed, but a certified survivor set needs floor((3 + 1)/2) + 1 = 3 silos
    assert plan_sums(cls, silos=names, min_silos=2, colluders=1, allow_exposed=True).quorum == 3
    assert plan_sums(cls, silos=list("abcdef"), min_silos=2, colluders=1, allow_exposed=True).quorum == 4
    spec = plan_sums(cls, silos=names, min_silos=2, colluders=1, allow_exposed=False).spec(10)
    assert spec.threshold == 2 and spec.min_contributors == 3 and spec.degree == 2
    with pytest.raises(ConfigError, match="threshold = 3 but each of the 3 silos has only 2 neighbours"):
        plan_sums(cls, silos=names, min_silos=2, colluders=1, allow_exposed=False,
                  backend_params={"threshold": 3}).spec(10)
    assert plan_sums(get_backend_class("ckks"), silos=names, min_silos=2, colluders=1, allow_exposed=False).keyless is False


def test_the_ddg_grid_keeps_the_rounding_inflation_small() -> None:
    for clip, length in ((0.5, 31), (1.0, 1000), (3.0, 10**5)):
        g = ddg_granularity(clip=clip, length=length)
        d = 2 ** int(np.ceil(np.log2(length)))
        assert np.log2(g) == int(np.log2(g))
        assert 64 * np.sqrt(d) <= clip / g < 128 * np.sqrt(d)


def test_ddg_event_doubles_both_sensitivities_from_silo_to_record_level() -> None:
    ev = DistributedDiscreteGaussianEvent(noise_sigma=40.0, shares=2, l2_sensitivity=100.0, l1_sensitivity=900.0,
                                          dimension=32, steps=3)
    rec = convert(ev, source=ZERO_OUT_SILO, target=ADD_REMOVE_RECORD)
    assert isinstance(rec, DistributedDiscreteGaussianEvent)
    assert (rec.l2_sensitivity, rec.l1_sensitivity, rec.noise_sigma, rec.steps) == (200.0, 1800.0, 40.0, 3)
    assert epsilon(rec, delta=1e-5) > epsilon(ev, delta=1e-5)


# --------------------------------------------------------------------------------- party functions
def run_direct(data: Any, *, backend: str, training: dict = TRAINING, privacy: dict | None = None,
               faults: dict | None = None, ledgers: dict | None = None, min_silos: int = 2,
               round_timeout: float = 20.0, insecure: bool = False, backend_params: dict | None = None) -> tuple[InProcessHub, dict[str, Any]]:
    """The production party functions on an in-process hub we can inspect (seeded noise)."""
    names = list(data.silos)
    job = hz_job(
        job="direct", backend=backend, backend_params=backend_params or {}, model={"kind": "logistic"},
        training=training, privacy=privacy, n_features=data.silos[names[0]][0].shape[1], seed=7,
        min_silos=min_silos, round_timeout=round_timeout, insecure=insecure,
    )
    hub = InProcessHub("direct", [*names, AGGREGATOR])
    parties: dict[str, Any] = {AGGREGATOR: lambda ch: aggregator(ch, job=job, silos=names)}
    for i, n in enumerate(names):
        x, y = data.silos[n]
        parties[n] = lambda ch, n=n, x=x, y=y, i=i: silo(
            ch, job=job, silos=names, aggregator=AGGREGATOR, x=x, y=y, test=data.tests[n],
            ledger=(ledgers or {}).get(n), dataset=n, noise_seed=100 + i, drop_rounds=(faults or {}).get(n),
        )
    return hub, run_parties(hub, parties)


def _ledgers(tmp_path: Any, names: Any, budget: float = 8.0) -> dict[str, PrivacyLedger]:
    out = {}
    for n in names:
        out[n] = PrivacyLedger(tmp_path / f"{n}.sqlite", silo=n)
        out[n].register_dataset(n, epsilon=budget, delta=1e-5)
    return out


def test_without_dp_the_model_is_plain_fedavgs_up_to_the_grid(bc3: Any) -> None:
    """Each update value is rounded to the 2^-24 grid before masking, so a round's mean moves
    by at most 2^-25 per parameter; three rounds of SGD on a logistic model keep the parameters
    within 1e-6 of plaintext FedAvg's (and the released metric counts are identical)."""
    _, plain = run_direct(bc3, backend="plain", insecure=True)
    hub, secagg = run_direct(bc3, backend="secagg")
    for n in bc3.silos:
        np.testing.assert_allclose(secagg[n].params, plain[n].params, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(secagg[n].params, secagg["site0"].params)  # every silo holds one model
        assert [e["accuracy"] for e in secagg[n].evaluation] == [e["accuracy"] for e in plain[n].evaluation]
    assert [r["contributors"] for r in secagg[AGGREGATOR].rounds] == [sorted(bc3.silos)] * 3
    # only SecAgg+ messages, never a key, and no silo talks to another silo
    kinds = {e.kind for e in hub.log}
    assert kinds <= SECAGG_KINDS and hz_msgs.KEY_SECRET not in kinds
    assert all(AGGREGATOR in (e.sender, e.recipient) for e in hub.log)
    # what the aggregator receives from a silo: public keys, sealed shares, ring words, shares
    for e in hub.log:
        if e.recipient == AGGREGATOR and e.kind == sg.KIND_MASKED:
            payload = codec.decode(e.body)
            # ring words and the silo's signature on the neighbours it masked with
            assert set(payload) == {"y", "sig"} and isinstance(payload["y"], bytes) and isinstance(payload["sig"], bytes)


@pytest.fixture(scope="module")
def bc5() -> Any:
    """Five silos: degree 4, threshold 3, so one silo may drop (with three silos t = 2 of 2
    neighbours, and any dropout aborts the round)."""
    return breast_cancer_silos(5, 1.0, 7)


def test_a_silo_dropping_after_its_masked_input_is_recovered(bc5: Any) -> None:
    # "topup" = silent at unmasking: its self mask comes from the survivors' shares, it stays in
    hub, out = run_direct(bc5, backend="secagg", faults={"site2": {2: "topup"}})
    rounds = out[AGGREGATOR].rounds
    assert [r["status"] for r in rounds] == ["ok"] * 3
    assert rounds[1]["contributors"] == sorted(bc5.silos)
    assert not [e for e in hub.log if e.sender == "site2" and e.kind == sg.KIND_REVEAL and e.round == 2]
    for n in bc5.silos:
        np.testing.assert_array_equal(out[n].params, out["site0"].params)


def test_a_silo_dropping_before_its_masked_input_is_left_out(bc5: Any) -> None:
    # "update" = silent before its masked input: its pairwise masks come off its reconstructed key
    _, out = run_direct(bc5, backend="secagg", faults={"site2": {2: "update"}}, round_timeout=5.0)
    r = out[AGGREGATOR].rounds[1]
    assert r["status"] == "ok" and "site2" not in r["contributors"] and r["failures"] == ["site2"]
    for n in bc5.silos:  # also the silo that dropped receives the sum: one model everywhere
        np.testing.assert_array_equal(out[n].params, out["site0"].params)


def test_a_sum_left_to_two_silos_is_refused_without_dp(bc3: Any) -> None:
    # with three silos a dropout leaves a sum of two, which would expose each update: refused
    _, refused = run_direct(bc3, backend="secagg", faults={"site2": {2: "update"}}, round_timeout=5.0)
    r = refused[AGGREGATOR].rounds[1]
    assert r["status"] == "aborted" and "nothing was unmasked" in r["reason"]
    assert [x["status"] for x in refused[AGGREGATOR].rounds] == ["ok", "aborted", "ok"]
    for n in bc3.silos:  # nothing released: every silo keeps the same model, also the one that dropped
        np.testing.assert_array_equal(refused[n].params, refused["site0"].params)


def test_silo_level_dp_charges_the_sessions_ddg_event(bc3: Any, tmp_path: Any) -> None:
    ledgers = _ledgers(tmp_path, bc3.silos)
    hub, out = run_direct(bc3, backend="secagg", privacy=SILO_DP, ledgers=ledgers)
    events = {n: out[n].events for n in bc3.silos}
    (event,) = set(events["site0"])
    assert isinstance(event, DistributedDiscreteGaussianEvent) and len(events["site0"]) == 3
    # min_silos 2, but a certified survivor set needs floor((3 + 1)/2) + 1 = 3 silos: every sum
    # holds all three, and with 1 colluder two honest shares are counted
    assert event.shares == 2
    total = epsilon(ComposedEvent(events["site0"]), delta=1e-5, accountant="rdp")
    assert 8.0 * 0.99 <= total <= 8.0
    for n, led in ledgers.items():
        entries = led.entries(n)
        assert [e.event for e in entries] == [event] * 3 and all(e.level == "silo" for e in entries)
        assert entries[0].mechanism["name"] == "distributed discrete gaussian"
        assert entries[0].mechanism["relayed_by"] == AGGREGATOR
        # the aggregator unmasks the noised sum itself: it is named as a recipient
        assert entries[0].mechanism["unmasked_by"] == AGGREGATOR and entries[0].recipient.startswith(f"{AGGREGATOR}+silos:")
        assert led.spent(n) == pytest.approx(total, rel=1e-9)
    # the masked inputs carry integers on the DDG grid (no float of the data), padded to 2^k
    d = event.dimension
    y = [codec.decode(e.body)["y"] for e in hub.log if e.kind == sg.KIND_MASKED and e.round == 1]
    assert len(y) == 3 and all(len(b) in (4 * d, 8 * d) for b in y)
    assert out["site0"].dp["level"] == "silo"


def test_the_planner_calibrates_the_ddg_and_refuses_pld(bc3: Any) -> None:
    common = dict(job="j", silos=list(bc3.silos), backend="secagg", backend_params={},
                  model=section(ModelSection, {"kind": "logistic"}, key="model"),
                  training=section(TrainingSection, {**TRAINING, "rounds": 8}, key="training"),
                  n_features=bc3.silos["site0"][0].shape[1], n_classes=2, seed=7, min_silos=2, round_timeout=30.0,
                  insecure=False)
    job = make_job(privacy=section(PrivacySection, SILO_DP, key="privacy"), **common)
    strategy = job.strategy(list(bc3.silos))
    assert isinstance(strategy, SessionNoiseDPFedAvg)
    eight = ComposedEvent((strategy.event(round=1),) * 8)
    assert 8.0 * 0.99 <= epsilon(eight, delta=1e-5, accountant="rdp") <= 8.0
    with pytest.raises(ConfigError, match='Renyi-DP bound only.*privacy.accountant = "rdp"'):
        make_job(privacy=section(PrivacySection, {**SILO_DP, "accountant": "pld"}, key="privacy"), **common)


def test_a_withdrawn_silo_is_not_waited_for_again(bc5: Any, tmp_path: Any) -> None:
    names = list(bc5.silos)
    tr = {**TRAINING, "rounds": 4}
    job = hz_job(job="direct", backend="secagg", backend_params={}, model={"kind": "logistic"}, training=tr,
                 privacy=SILO_DP, n_features=bc5.silos[names[0]][0].shape[1], seed=7)
    two = epsilon(ComposedEvent((job.strategy(names).event(round=1),) * 2), delta=1e-5, accountant="rdp")
    ledgers = _ledgers(tmp_path, names)
    ledgers["site2"].close()
    ledgers["site2"] = PrivacyLedger(tmp_path / "site2-small.sqlite", silo="site2")
    ledgers["site2"].register_dataset("site2", epsilon=two * 1.001, delta=1e-5)  # two rounds only
    hub, out = run_direct(bc5, backend="secagg", training=tr, privacy=SILO_DP, ledgers=ledgers, round_timeout=5.0)
    assert out["site2"].status == "withdrawn" and out["site2"].rounds_contributed == (1, 2)
    rounds = out[AGGREGATOR].rounds
    assert rounds[2]["withdrawn"] == ["site2"] and "site2" not in rounds[2]["contributors"]
    assert rounds[3]["status"] == "ok" and "site2" not in rounds[3]["contributors"]
    assert [e for e in hub.log if e.sender == "site2" and e.kind == sg.KIND_WITHDRAW and e.round == 3]
    assert not [e for e in hub.log if e.sender == "site2" and e.round == 4]  # it left the job
    assert ledgers["site2"].spent("site2") == pytest.approx(two, rel=1e-9)


@pytest.mark.timeout(600)
@pytest.mark.skipif(not backend_available("ckks"), reason="ckks backend not installed")
def test_record_level_dp_accuracy_matches_ckks_on_the_same_seed(bc3: Any, tmp_path: Any) -> None:
    """The example's record-level DP (ε = 8): with the same noise seed the DP-SGD noise is the
    same, so the two backends' models differ only by CKKS's approximation and the 2^-24 grid:
    accuracy equal on most runs (see the bound's comment for the runs that are not), ε from the
    same accountant on the same events."""
    res = {}
    for backend in ("ckks", "secagg"):
        res[backend] = simulate_horizontal(**base_kwargs(
            bc3, backend=backend, insecure=False, privacy=RECORD_DP, training={**TRAINING, "rounds": 5},
            ledger_dir=tmp_path / backend, noise_seed=11,
            # on a loaded machine a 30 s stage deadline can skip a round (a different model, not a bug)
            round_timeout=300.0,
        ))
    for backend, r in res.items():
        assert [len(x["silos"]) for x in r["rounds"]] == [3] * 5, (backend, r["rounds"], r.get("notes"))
    a, b = res["ckks"]["simulation_metrics"], res["secagg"]["simulation_metrics"]
    # Measured (this job, 230 pairs: noise seeds 1-227 and 11 four times, one process; since
    # poisson_loader stopped drawing from torch's global RNG, which let a silo start from other
    # initial weights): accuracy equal in every pair, final loss within 6e-8, final parameters
    # within 1.6e-7 (CKKS's OS-drawn encryption noise); seed 11 reproduced accuracy 0.887 each time.
    # On seed 11 the nearest held-out score is 7.8e-3 from the 0.5 threshold, while 1.6e-7 on the
    # 31 parameters of inputs in [-1, 1] moves a score by < 1.3e-6: the bound allows one row to
    # flip anyway (a platform whose torch trains another model may put a row near it; two such
    # rows ~1e-8). A silo that started apart now fails the job (check_same_final_model); wrong sums
    # still fail the floor (chance accuracy 0.63, measured min over the 227 seeds 0.780).
    assert a["accuracy"] > 0.75 and b["accuracy"] > 0.75, (a, b)
    held_out = sum(len(y) for _, y in bc3.tests.values())
    assert abs(a["accuracy"] - b["accuracy"]) * held_out <= 1 + 1e-9, (a, b)
    assert abs(a["loss"] - b["loss"]) <= 1e-5, (a, b)  # 170x the largest gap measured
    for n in bc3.silos:
        assert res["secagg"]["epsilon"][n]["epsilon"] == pytest.approx(res["ckks"]["epsilon"][n]["epsilon"], rel=1e-12)
        assert res["secagg"]["epsilon"][n]["epsilon"] <= 8.0


def test_a_job_whose_every_round_aborts_is_stopped_not_completed(bc3: Any) -> None:
    # a silo silent in every round leaves sums of two, each refused: no round trains, and the job
    # must say so (it reported "completed" with the initial model)
    _, out = run_direct(bc3, backend="secagg", training={**TRAINING, "rounds": 2},
                        faults={"site2": {1: "update", 2: "update"}}, round_timeout=5.0)
    assert [r["status"] for r in out[AGGREGATOR].rounds] == ["aborted", "aborted"]
    assert out[AGGREGATOR].status == "stopped" and "trained no round" in out[AGGREGATOR].reason
    for n in ("site0", "site1"):
        assert out[n].status == "stopped" and "trained no round" in out[n].reason, (n, out[n].status)
