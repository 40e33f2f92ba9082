"""Vertical DP contracts: public batches (no subsampling claimed), replace-one sensitivity,
public-bounds scaling, and no DP release without a ledger."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsilo.crypto.registry import get_backend
from fedsilo.errors import BudgetExceededError, ConfigError, ProtocolError
from fedsilo.privacy.accounting import epsilon
from fedsilo.privacy.events import GaussianEvent
from fedsilo.privacy.ledger import PrivacyLedger
from fedsilo.protocols.channel import InProcessHub
from fedsilo.protocols.scaling import scale_with_bounds
from fedsilo.protocols.spec import PrivacySection
from fedsilo.protocols.vertical import (
    Topology,
    VerticalSpec,
    guest_train,
    host_train,
    vertical_party,
)
from fedsilo.protocols.vertical.data import check_bounds
from fedsilo.protocols.vertical.lr import _clip_logits
from fedsilo.protocols.vertical.taylor import calibrate, epoch_partition, guest_residual_part, host_residual_part
from vt_data import (
    aligned_matrix,
    breast_cancer_bounds,
    breast_cancer_tables,
    epoch_batches,
    run_job,
    simulate,
    vt_spec,
    vt_training,
)

ARBITER = Topology(guest="g", hosts=("h0",), arbiter="a")


def _dp_spec(top: Topology = ARBITER, **kw) -> VerticalSpec:
    kw.setdefault("training", vt_training(epochs=2, batch_size=40, lr=0.3))
    kw.setdefault("bounds", breast_cancer_bounds())
    return vt_spec(topology=top, id_column="pid", label="target", backend="plain", insecure=True, dp=PrivacySection(epsilon=8.0), **kw)


# ------------------------------------------------------------------------------ H1: batches and accounting


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 400), st.integers(1, 120), st.integers(0, 2**32 - 1))
def test_epoch_partition_puts_every_row_in_exactly_one_batch(rows: int, batch_size: int, seed: int) -> None:
    batches = epoch_partition(rows=rows, batch_size=batch_size, rng=np.random.default_rng(seed))
    assert len(batches) == math.ceil(rows / batch_size)
    assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(rows))
    sizes = [b.size for b in batches]
    assert max(sizes) - min(sizes) <= 1 and max(sizes) <= batch_size


@pytest.mark.parametrize("name", ["arbiter", "two-party"])
def test_dp_batches_partition_the_training_rows_every_epoch(name: str) -> None:
    top = ARBITER if name == "arbiter" else Topology(guest="g", hosts=("h0",))
    hub, out = run_job(_dp_spec(top, training=vt_training(epochs=3, batch_size=40, lr=0.3)), breast_cancer_tables(1))
    n_train = out["g"]["rows"]["train"]
    epochs = epoch_batches(hub, "h0")
    assert len(epochs) == 3
    for batches in epochs:  # what the recipients of noised gradients see: public batch membership
        assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(n_train))
    assert not all(np.array_equal(a, b) for a, b in zip(epochs[0], epochs[1]))  # a fresh shuffle per epoch


def test_bank_calibration_meets_epsilon_without_subsampling_amplification() -> None:
    """The reviewer's case: bank example, 1,600 training rows, batch 128, 5 epochs, ε = 8. Every
    customer is in one (public) batch per epoch, so its privacy loss is 5 Gaussian releases
    with the event multiplier — not a Poisson-subsampled Gaussian (which under-counted ~15.7 as 8)."""
    plan = calibrate(epsilon=8.0, delta=1e-5, rows=1600, batch_size=128, epochs=5, parties=2, arbiter=True, clip=1.0,
                     logit_clip=2.0)
    true_cost = GaussianEvent(plan.event_multiplier, 1.0, plan.epochs)
    assert plan.job_event() == true_cost
    assert 7.9 < epsilon(true_cost, delta=1e-5) <= 8.0


@settings(max_examples=12, deadline=None)
@given(st.floats(0.5, 12.0), st.integers(1, 12), st.integers(2, 4), st.sampled_from(["rdp", "pld"]))
def test_calibration_never_overshoots_epsilon(eps: float, epochs: int, parties: int, accountant: str) -> None:
    plan = calibrate(epsilon=eps, delta=1e-5, rows=500, batch_size=64, epochs=epochs, parties=parties, arbiter=True,
                     clip=1.0, logit_clip=2.0, accountant=accountant)
    assert plan.sample_rate == 1.0
    assert epsilon(GaussianEvent(plan.event_multiplier, 1.0, epochs), delta=1e-5, accountant=accountant) <= eps


def test_host_refuses_batches_that_are_not_a_partition(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fedsilo.protocols.vertical.parties as lr

    def overlapping(*, rows: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
        return [np.arange(0, rows // 2), np.arange(0, rows // 2), np.arange(rows // 2, rows)]  # rows 0.. twice

    monkeypatch.setattr(lr, "epoch_partition", overlapping)
    with pytest.raises(ProtocolError, match="do not partition"):
        simulate(tables=breast_cancer_tables(1), roles={"g": "guest", "h0": "host", "a": "arbiter"},
                          id_column="pid", label="target", backend="plain", insecure=True, epochs=1, dp={"epsilon": 8.0},
                          ledger_dir=tmp_path, bounds=breast_cancer_bounds())
    with PrivacyLedger(tmp_path / "h0.sqlite", silo="h0") as led:
        assert led.entries("h0") == []  # the host charged nothing for a guest that broke its accounting


# ------------------------------------------------------------------------------ M1: replace-one sensitivity


@pytest.mark.parametrize("parties", [2, 3])
@pytest.mark.parametrize("clip", [0.5, 1.0, 2.0])
def test_replace_one_sensitivity_bounds_every_replacement_and_is_attained(parties: int, clip: float) -> None:
    plan = calibrate(epsilon=8.0, delta=1e-5, rows=100, batch_size=10, epochs=1, parties=parties, arbiter=True, clip=clip,
                     logit_clip=2.0)
    B = plan.logit_clip

    def contribution(x: np.ndarray, logits: list[float], label: int, *, intercept: bool) -> np.ndarray:
        """One customer's term d·x_p of party p's gradient sum, through the protocol's own maths."""
        u = _clip_logits(np.array(logits), plan)
        d = guest_residual_part(logits=u[:1], labels=np.array([label])) + sum(
            host_residual_part(logits=u[j : j + 1]) for j in range(1, parties)
        )
        return d[0] * (np.append(x, 1.0) if intercept else x)

    x = np.full(3, clip / math.sqrt(3))  # a row at the clip norm
    for intercept in (True, False):
        # the worst case: every logit at +B with label 0 (d = +D), replaced by −B with label 1 (d = −D)
        worst = np.linalg.norm(contribution(x, [9.0] * parties, 0, intercept=intercept)
                               - contribution(x, [-9.0] * parties, 1, intercept=intercept))
        assert worst == pytest.approx(plan.sensitivity(intercept=intercept))
        rng = np.random.default_rng(0)
        for _ in range(200):
            rows = [rng.normal(size=3) for _ in range(2)]
            rows = [r * min(1.0, clip / np.linalg.norm(r)) for r in rows]
            a = contribution(rows[0], list(rng.normal(0, 3, parties)), int(rng.integers(2)), intercept=intercept)
            b = contribution(rows[1], list(rng.normal(0, 3, parties)), int(rng.integers(2)), intercept=intercept)
            assert np.linalg.norm(a - b) <= plan.sensitivity(intercept=intercept) + 1e-12
    assert plan.sigma(intercept=False) == pytest.approx(plan.noise_multiplier * 2 * clip * plan.residual_bound)


# ------------------------------------------------------------------------------ H2: public bounds


def test_dp_without_bounds_for_every_feature_is_a_config_error() -> None:
    tables = breast_cancer_tables(1)
    bounds = breast_cancer_bounds()
    del bounds["mean radius"], bounds["mean compactness"]  # one guest and one host column
    kw = dict(tables=tables, roles={"g": "guest", "h0": "host", "a": "arbiter"}, id_column="pid", label="target",
              backend="plain", insecure=True, epochs=1, dp={"epsilon": 8.0})
    with pytest.raises(ConfigError, match=r"g: \['mean radius'\]; h0: \['mean compactness'\].*\[data\] bounds"):
        simulate(**kw, bounds=bounds)
    with pytest.raises(ConfigError, match=r"\[data\] bounds"):
        simulate(**kw)
    simulate(**{**kw, "dp": None}, bounds=bounds)  # without DP the party's own statistics may stay


def test_party_functions_refuse_dp_without_bounds(tmp_path) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 2)), rng.integers(0, 2, 30)
    led = PrivacyLedger(tmp_path / "g.sqlite", silo="g")
    led.register_dataset("g", epsilon=10.0, delta=1e-5)
    hub = InProcessHub("b", ["g", "h"])
    with pytest.raises(ConfigError, match=r"\['b'\].*\[data\] bounds"):
        guest_train(hub.channel("g"), topology=Topology(guest="g", hosts=("h",)), x=x, y=y, train_rows=np.arange(30),
                    eval_rows=np.arange(0), backend=get_backend("plain"), config=vt_training(),
                    dp=PrivacySection(epsilon=8.0), ledger=led, dataset="g", columns=["a", "b"], bounds={"a": (-3.0, 3.0)},
                    rng=rng, batch_rng=rng)
    led.close()
    assert hub.log == []  # refused before anything was sent


def test_dp_scaling_of_other_rows_does_not_depend_on_one_customer() -> None:
    """Replace one customer's row (features and label) with extreme values: every other
    customer's scaled features are unchanged. Standardizing with the training rows' own mean and
    standard deviation would move them all, breaking the per-row sensitivity bound."""
    tables = breast_cancer_tables(1, drop=0.0)
    ids = sorted(tables["g"]["pid"])
    victim = ids[0]
    changed = {p: t.copy() for p, t in tables.items()}
    for p, t in changed.items():
        row = t["pid"] == victim
        for c in t.columns:
            if c not in ("pid", "target"):
                t.loc[row, c] = 1e6
        if "target" in t:
            t.loc[row, "target"] = 1 - t.loc[row, "target"]
    spec = _dp_spec(training=vt_training(epochs=1, batch_size=64, lr=0.3))
    _, a = run_job(spec, tables)
    _, b = run_job(spec, changed)
    others = ids[1:]
    for p in ("g", "h0"):
        raw = aligned_matrix(tables, p, others, "pid", drop=["target"])
        np.testing.assert_array_equal(a[p]["model"].transform(raw), b[p]["model"].transform(raw))
        assert np.all(np.abs(a[p]["model"].transform(raw)[:, : raw.shape[1]]) <= 1.0)  # within the clip ball


def test_bounds_scaling_maps_the_public_box_to_minus_one_one() -> None:
    bounds = breast_cancer_bounds()
    hub, out = run_job(_dp_spec(training=vt_training(epochs=1, batch_size=64)), breast_cancer_tables(1))
    model = out["h0"]["model"]
    lo = np.array([bounds[c][0] for c in model.columns])
    hi = np.array([bounds[c][1] for c in model.columns])
    x = np.vstack([lo, hi, lo - 1.0, hi + 1.0, (lo + hi) / 2])
    np.testing.assert_allclose(scale_with_bounds(x, lo, hi)[:, 0], [-1, 1, -1, 1, 0], atol=1e-12)
    scaled = scale_with_bounds(x, lo, hi)
    norms = np.linalg.norm(scaled, axis=1, keepdims=True)
    np.testing.assert_allclose(model.transform(x), scaled * np.minimum(1.0, 1.0 / norms))  # then clipped to C = 1


@pytest.mark.parametrize("bad", [{"a": (1.0, 1.0)}, {"a": (2.0, 1.0)}, {"a": (0.0, math.inf)}, {"a": (0.0,)},
                                 {"a": "0,1"}, {"a": (True, 2.0)}])
def test_bad_bounds_are_refused(bad) -> None:
    with pytest.raises(ConfigError, match=r"\[data\] bounds: 'a'"):
        check_bounds(bad)
    with pytest.raises(ConfigError, match=r"\[data\] bounds"):
        vt_spec(topology=ARBITER, id_column="pid", label="target", bounds=bad)


# ------------------------------------------------------------------------------ H3: ledgers


@pytest.mark.parametrize("role", ["guest", "host", "job"])
def test_dp_without_a_ledger_is_refused_before_anything_is_sent(role: str) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 2)), rng.integers(0, 2, 30)
    top = Topology(guest="g", hosts=("h",))
    hub = InProcessHub("l", ["g", "h"])
    common = dict(topology=top, x=x, train_rows=np.arange(30), eval_rows=np.arange(0), backend=get_backend("plain"),
                  config=vt_training(), dp=PrivacySection(epsilon=8.0), columns=["a", "b"],
                  bounds={"a": (-3.0, 3.0), "b": (-3.0, 3.0)}, rng=rng)
    with pytest.raises(ConfigError, match="needs a privacy ledger"):
        if role == "guest":
            guest_train(hub.channel("g"), y=y, batch_rng=rng, **common)
        elif role == "host":
            host_train(hub.channel("h"), **common)
        else:
            vertical_party(hub.channel("h"), spec=_dp_spec(Topology(guest="g", hosts=("h",))),
                           table=breast_cancer_tables(1)["h0"], rng=rng, public_rng=rng, dataset="h")
    assert hub.log == []


def test_simulate_without_ledger_dir_still_charges_a_ledger() -> None:
    kw = dict(tables=breast_cancer_tables(1), roles={"g": "guest", "h0": "host"}, id_column="pid", label="target",
              backend="plain", insecure=True, epochs=2, dp={"epsilon": 4.0}, bounds=breast_cancer_bounds())
    res = simulate(**kw)
    for e in res["epsilon"].values():
        assert 3.9 < e["epsilon"] <= 4.0 and e["ledger_spent"] == pytest.approx(e["epsilon"])
    with pytest.raises(BudgetExceededError, match="'h0'"):  # budgets hold without a ledger_dir too
        simulate(**kw, budgets={"g": (10.0, 1e-5), "h0": (1.0, 1e-5)})
