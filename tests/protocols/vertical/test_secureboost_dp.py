"""SecureBoost under DP: each host's ledger is charged once per level before its histograms leave,
the guest is never charged, a refused charge stops the job before any histogram is sent, one
histogram release is audited against its claim, and the AUC at ε = 8.

Plain backend throughout (Paillier is exact, test_secureboost_protocol.py): these tests are about
the noise and the ledger."""
from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest

from fedsilo.errors import BudgetExceededError
from fedsilo.privacy.audit import audit, gaussian_epsilon
from fedsilo.privacy.events import GaussianEvent
from fedsilo.privacy.ledger import PrivacyLedger
from fedsilo.privacy.mechanisms import secure_rng
from fedsilo.privacy.relations import REPLACE_RECORD
from fedsilo.protocols.channel import InProcessHub, run_parties
from fedsilo.protocols.spec import ModelSection, PrivacySection
from fedsilo.protocols.vertical.secureboost import BoostConfig, CryptoSettings
from fedsilo.protocols.vertical.secureboost import dp as dp_module
from fedsilo.protocols.vertical.secureboost import messages as sb
from fedsilo.protocols.vertical.secureboost.cipher import PlainHistograms
from fedsilo.protocols.vertical.secureboost.dp import calibrate
from fedsilo.protocols.vertical.secureboost.model import fit_binning
from fedsilo.protocols.vertical.secureboost.packing import decode_bins, encode_rows
from fedsilo.protocols.vertical.secureboost.parties import host_boost, layout_for
from fedsilo.silos.tasks.secureboost import simulate_secureboost
from vt_data import BANK, bank_tables, breast_cancer_bounds, breast_cancer_tables

MODEL = {"trees": 3, "depth": 2, "learning_rate": 0.3, "bins": 8, "min_leaf_rows": 10}


def _bc(**kw):
    tables = breast_cancer_tables(2, guest_cols=4, host_cols=5, seed=2)
    return simulate_secureboost(tables=tables, roles={"g": "guest", "h0": "host", "h1": "host"}, id_column="pid",
                                label="target", model=MODEL, backend="plain", insecure=True,
                                bounds=breast_cancer_bounds(), **kw)


def test_each_host_is_charged_once_per_level_and_the_guest_never(tmp_path: Path) -> None:
    res = _bc(dp={"epsilon": 6.0}, ledger_dir=tmp_path, budgets={"h0": (10.0, 1e-5), "h1": (6.0, 1e-5)}, job="sb-dp")
    dp = res["dp"]
    assert dp["releases"] == 6 and dp["level"] == "record" and dp["sample_rate"] == 1.0
    assert not (tmp_path / "g.sqlite").exists()  # the guest has no ledger: nothing of its data is released to DP
    for host in ("h0", "h1"):
        e = res["epsilon"][host]
        with PrivacyLedger(tmp_path / f"{host}.sqlite", silo=host) as led:
            entries = led.entries(host)
        assert len(entries) == dp["released"][host] <= 6 and len(entries) >= 3  # at least every tree's root
        assert all(x.status == "committed" and x.relation == REPLACE_RECORD and x.recipient == "g" for x in entries)
        assert all(x.event == GaussianEvent(dp["noise_multiplier"], 1.0, 1) for x in entries)
        assert entries[0].protocol == "secureboost" and entries[0].mechanism["features"] == 5
        assert 0 < e["epsilon"] <= 6.0 and e["ledger_spent"] == pytest.approx(e["epsilon"], rel=1e-9)
        assert res["rounds"][-1]["epsilon"][host] == pytest.approx(e["epsilon"], rel=1e-9)
    assert "g" not in res["epsilon"]
    assert any("instance space" in n for n in res["notes"])


def test_a_refused_charge_stops_the_job_before_any_histogram_leaves(tmp_path: Path, monkeypatch) -> None:
    import fedsilo.silos.runner as runner  # where the threads engine builds its hub

    hubs: list[InProcessHub] = []

    def capture(*a, **k):
        hubs.append(InProcessHub(*a, **k))
        return hubs[-1]

    monkeypatch.setattr(runner, "InProcessHub", capture)
    with pytest.raises(BudgetExceededError, match="'h1'"):
        _bc(dp={"epsilon": 8.0}, ledger_dir=tmp_path, budgets={"h0": (10.0, 1e-5), "h1": (0.5, 1e-5)})
    assert not [e for e in hubs[0].log if e.kind == sb.HIST and e.sender == "h1"], "h1 released a histogram"
    with PrivacyLedger(tmp_path / "h1.sqlite", silo="h1") as led:
        assert led.entries("h1") == []


def test_dp_needs_public_bounds_for_every_feature_and_a_ledger_at_each_host() -> None:
    from fedsilo.errors import ConfigError

    tables = breast_cancer_tables(1, guest_cols=3, host_cols=3)
    with pytest.raises(ConfigError, match="public bounds"):
        simulate_secureboost(tables=tables, roles={"g": "guest", "h0": "host"}, id_column="pid", label="target",
                             model=MODEL, backend="plain", insecure=True, dp={"epsilon": 8.0})


# ------------------------------------------------------------------------------ the audit of one release


def _one_release(nodes: int, *, epsilon: float, seed: int):
    """One level of one tree at the real host, asked for by an adversarial guest: ``nodes``
    nodes of two rows each (a target row and a companion with g = h = 0 in bin 0). The target
    has |g| = clip, h = 1/4 and its value in bin 0 (state D) in the even nodes, bin 1 (D') in the
    odd ones: the replaced row attains the whitened sensitivity 1/z. Returns the whitened
    decrypted histograms of the D and D' nodes, and the plan the host used."""
    rows = 2 * nodes
    x = np.zeros((rows + 2, 1))
    target = np.arange(0, rows, 2)
    x[target, 0] = np.where(np.arange(nodes) % 2 == 0, 0.5, 1.5)  # bounds [0, 2], 2 bins: threshold 1.0
    x[rows:, 0] = [0.2, 1.8]  # two held-out rows
    train, test = np.arange(rows), np.array([rows, rows + 1])
    cfg = BoostConfig.from_section(ModelSection(kind="secureboost", trees=1, depth=1, bins=2, min_leaf_rows=1),
                                   timeout=300.0)
    crypto = CryptoSettings.from_params("plain", {})
    privacy = PrivacySection(epsilon=epsilon, delta=1e-5)
    plan = calibrate(epsilon=epsilon, delta=1e-5, accountant="rdp", trees=1, depth=1, clip=1.0)
    binning = fit_binning(x, train, ["v"], bins=2, bounds={"v": (0.0, 2.0)}, required=True, source="h")
    cipher = PlainHistograms()
    layout = layout_for(crypto, cipher, plan, rows=rows, features=1)
    g = np.zeros(rows)
    h = np.zeros(rows)
    g[target], h[target] = -1.0, 0.25
    blob = cipher.encrypt_rows(encode_rows(g=g, h=h, layout=layout, modulus=cipher.modulus))
    got: dict[str, object] = {}

    def guest(ch):
        ch.recv("h", sb.HELLO, round=2, timeout=300)
        ch.send("h", sb.SETUP, {"public": b"", "features": 1}, round=2)
        ch.send("h", sb.TREE, {"stop": False, "tree": 0, "rows": train, "gh": blob}, round=3)
        node_rows = [np.array([2 * k, 2 * k + 1]) for k in range(nodes)]
        ch.send("h", sb.LEVEL, {"done": False, "nodes": np.arange(nodes), "rows": node_rows}, round=4)
        got["hist"] = ch.recv("h", sb.HIST, round=4, timeout=300)["ct"]
        empty = np.zeros(0, dtype=np.int64)
        ch.send("h", sb.SPLIT, {"nodes": empty, "feature": empty, "bin": empty, "missing_left": np.zeros(0, dtype=bool),
                               "rows": []}, round=4)
        ch.recv("h", sb.PARTITION, round=4, timeout=300)
        ch.send("h", sb.TREE, {"stop": True}, round=5)
        ch.send("h", sb.IMPORTANCE, {"splits": np.zeros(1, dtype=np.int64)}, round=5)

    def host(ch):
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            with PrivacyLedger(Path(tmp) / "h.sqlite", silo="h") as led:
                led.register_dataset("h", epsilon=1e3, delta=1e-5)
                return host_boost(ch, guest="g", x=x, train_rows=train, test_rows=test, binning=binning, config=cfg,
                                  crypto=crypto, dp=privacy, ledger=led, dataset="h", rng=secure_rng(), start_round=2)

    run_parties(InProcessHub(f"audit-{seed}", ["g", "h"]), {"g": guest, "h": host})
    sigmas = np.array(plan.sigmas(features=1))
    whitened = np.stack([decode_bins(cipher.open(b, count=layout.plaintexts_for(2), sender="h"), bins=2, layout=layout)
                         for b in got["hist"]]) / sigmas  # (nodes, 2 bins, 3)
    flat = whitened.reshape(nodes, 6)
    return flat[0::2], flat[1::2], plan


def _audit(executions: int, nodes: int, epsilon: float):
    d, d_prime, plan = [], [], None
    for seed in range(executions):
        a, b, plan = _one_release(nodes, epsilon=epsilon, seed=seed)
        d.append(a)
        d_prime.append(b)
    d, d_prime = np.vstack(d), np.vstack(d_prime)
    direction = d_prime.mean(axis=0) - d.mean(axis=0)
    claimed = gaussian_epsilon(mu=1.0 / plan.noise_multiplier, delta=1e-5)
    return audit(samples=d, samples_prime=d_prime, claimed_epsilon=claimed, delta=1e-5, alpha=1e-6,
                 direction=direction), claimed, plan


@pytest.mark.slow
def test_one_histogram_release_meets_its_claim() -> None:
    """12 288 releases per side (6 protocol executions of 4 096 nodes each, fresh OS noise): the
    fitted ε is within 10 % of the exact ε of the Gaussian with μ = 1/z, the lower bound does not
    refute it, and the ledger's (RDP) charge for the release is at least as large."""
    result, claimed, plan = _audit(6, 4096, epsilon=3.0)
    assert result.fitted_epsilon == pytest.approx(claimed, rel=0.10), (result, claimed)
    assert not result.refuted and result.lower_bound <= claimed
    assert plan.spent(1) >= claimed


@pytest.mark.slow
def test_the_audit_catches_halved_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    original = dp_module.HistogramDp.sigmas

    def halved(self, *, features):
        return tuple(s / 2 for s in original(self, features=features))

    monkeypatch.setattr(dp_module.HistogramDp, "sigmas", halved)
    result, claimed, plan = _audit(2, 4096, epsilon=3.0)
    # the noise really drawn is half the plan's: whitened with the halved sigmas, μ = 2/z
    exact_bug = gaussian_epsilon(mu=2.0 / plan.noise_multiplier, delta=1e-5)
    assert result.fitted_epsilon > 1.1 * claimed
    assert result.fitted_epsilon == pytest.approx(exact_bug, rel=0.2)


# ------------------------------------------------------------------------------ utility


@pytest.mark.slow
def test_auc_at_epsilon_8_on_the_bank_example() -> None:
    """The bank example's public bounds, 10 trees of depth 3, 32 bins: AUC without DP and at
    ε = 8 per host (docs/secureboost.md reports the mean over seeds)."""
    bounds = tomllib.load(open(BANK / "federation.toml", "rb"))["data"]["bounds"]
    kw = dict(tables=bank_tables(), roles={"bank": "guest", "partner": "host"}, id_column="customer_id", label="default",
              model={"trees": 10, "depth": 3, "learning_rate": 0.3, "bins": 32}, backend="plain", insecure=True,
              bounds=bounds, seed=7)
    plain = simulate_secureboost(**kw)["final"]["auc"]
    noised = simulate_secureboost(**kw, dp={"epsilon": 8.0})
    print(f"bank: AUC {plain:.3f} without DP, {noised['final']['auc']:.3f} at epsilon 8")
    assert plain > 0.74 and noised["final"]["auc"] > 0.6
    assert noised["epsilon"]["partner"]["epsilon"] <= 8.0


def test_a_job_a_host_cannot_afford_is_refused_before_any_party_starts(tmp_path: Path) -> None:
    """The runner's budget pre-check composes every planned level release (trees · depth) on the
    host's ledger before PSI: a budget below the job's ε refuses the job with nothing charged."""
    from fedsilo.privacy.ledger import JobBudgetError
    from fedsilo.silos.config import parse_config
    from fedsilo.silos.runner import run_job

    bounds = tomllib.load(open(BANK / "federation.toml", "rb"))["data"]["bounds"]
    cfg = parse_config({
        "federation": {"name": "sb", "task": "vertical"},
        "crypto": {"backend": "plain", "insecure": True},
        "privacy": {"epsilon": 8.0},
        "model": {"kind": "secureboost", "trees": 4, "depth": 3},
        "data": {"label": "default", "id_column": "customer_id", "bounds": bounds},
        "silos": [{"name": "bank", "data": str(BANK / "bank.csv"), "role": "guest"},
                  {"name": "partner", "data": str(BANK / "partner.csv"), "role": "host",
                   "budget": {"epsilon": 5.0, "delta": 1e-5}}],
    }, source="fed.toml")
    with pytest.raises(JobBudgetError, match="partner"):
        run_job(cfg, ledger_dir=tmp_path)
    with PrivacyLedger(tmp_path / "partner.sqlite", silo="partner") as led:
        assert led.entries("partner") == []


def test_regression_under_dp_clips_the_residual_and_guest_only_trees_charge_nothing(tmp_path: Path) -> None:
    """Squared error at ε = 6 with ``privacy.clip = 2`` and one guest-only tree of three: each
    host's ledger holds at most (3 − 1)·2 charges, each recording the residual clip and h = 1,
    and the noise is calibrated for those 4 releases (less noise than for 6)."""
    tables = breast_cancer_tables(2, guest_cols=4, host_cols=5, seed=2)
    g = tables["g"].copy()
    g["target"] = g.pop("mean radius")
    tables = {**tables, "g": g}
    bounds = {k: v for k, v in breast_cancer_bounds().items() if k != "mean radius"}
    res = simulate_secureboost(tables=tables, roles={"g": "guest", "h0": "host", "h1": "host"}, id_column="pid",
                               label="target", model={**MODEL, "objective": "squared_error", "guest_trees": 1},
                               backend="plain", insecure=True, bounds=bounds, dp={"epsilon": 6.0, "clip": 2.0},
                               ledger_dir=tmp_path, job="sb-reg")
    dp = res["dp"]
    assert dp["releases"] == 4 and dp["clip"] == 2.0
    full = calibrate(epsilon=6.0, delta=1e-5, accountant="rdp", trees=3, depth=2, clip=2.0, objective="squared_error")
    assert dp["noise_multiplier"] < full.noise_multiplier
    for host in ("h0", "h1"):
        with PrivacyLedger(tmp_path / f"{host}.sqlite", silo=host) as led:
            entries = led.entries(host)
        assert 2 <= len(entries) == dp["released"][host] <= 4
        assert {x.mechanism["tree"] for x in entries} <= {2, 3}  # 1-based: tree 1 was the guest's alone
        assert all(x.mechanism["clip"] == 2.0 and x.mechanism["h_bound"] == 1.0 for x in entries)
    # The noise comes from the OS CSPRNG: over 200 runs r2 ranged 0.468-0.537 (a bound of 0.5
    # failed 7 % of them); a model that learned nothing scores r2 <= 0.
    assert set(res["final"]) == {"rmse", "mae", "r2", "test_loss"} and res["final"]["r2"] > 0.35
