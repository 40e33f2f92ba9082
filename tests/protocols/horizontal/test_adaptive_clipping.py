"""Adaptive clipping for silo-level DP-FedAvg (Andrew, Thakkar, McMahan & Ramaswamy, NeurIPS 2021):
the geometric clip update, the accounting of the update + clipped-count pair as one Gaussian, the
noise on the count bit, the ledger charge, and an end-to-end run from a badly chosen clip."""
from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld, rdp
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fedsilo.errors import ConfigError
from fedsilo.privacy.accounting import epsilon
from fedsilo.privacy.events import ComposedEvent, GaussianEvent
from fedsilo.privacy.ledger import PrivacyLedger
from fedsilo.protocols.horizontal import dp as hzdp
from fedsilo.protocols.horizontal import protocol as hzp
from fedsilo.protocols.horizontal.dp import (
    ADAPTIVE_COUNT_SHARE,
    AdaptiveClipDPFedAvg,
    AdaptiveClipRound,
    adaptive_noise_split,
    effective_noise_multiplier,
    geometric_clip_update,
    silo_noise_multiplier,
)
from fedsilo.protocols.horizontal.secure_aggregation import share_parties
from fedsilo.protocols.horizontal.strategies import AggregateResult, FedAvg
from fedsilo.silos.config import parse_config
from fedsilo.silos.tasks.horizontal import planned_releases, simulate_horizontal
from hz_data import base_kwargs, breast_cancer_silos, hz_job

ROOT = Path(__file__).resolve().parents[3]
ADAPTIVE = {"epsilon": 8.0, "delta": 1e-5, "clip": 0.5, "level": "silo", "adaptive_clip": True,
            "target_quantile": 0.5, "clip_lr": 0.5}
TRAINING = {"rounds": 6, "local_epochs": 1, "batch_size": 32, "lr": 0.5}


# ------------------------------------------------------------------------------------ the maths
@settings(max_examples=50, deadline=None)
@given(z=st.floats(0.05, 50.0), share=st.floats(0.01, 0.99))
def test_split_recombines_to_the_effective_multiplier(z: float, share: float) -> None:
    sigma_b = z / (2.0 * math.sqrt(share))
    z_update, count = adaptive_noise_split(noise_multiplier=z, count_noise=sigma_b)
    assert count == sigma_b and z_update > z
    assert effective_noise_multiplier(update_noise_multiplier=z_update, count_noise=count) == pytest.approx(z, rel=1e-12)
    # the default: ADAPTIVE_COUNT_SHARE of the precision 1/z^2 goes to the count
    z_default, count_default = adaptive_noise_split(noise_multiplier=z, count_noise=None)
    assert (2 * count_default) ** -2 == pytest.approx(ADAPTIVE_COUNT_SHARE * z ** -2, rel=1e-12)
    assert z_default == pytest.approx(z / math.sqrt(1 - ADAPTIVE_COUNT_SHARE), rel=1e-12)


def test_count_noise_too_small_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"privacy.count_noise = 0.5 is too small.*z/2 = 0.6"):
        adaptive_noise_split(noise_multiplier=1.2, count_noise=0.5)


def test_aggregate_steps_the_inner_strategy_and_the_clip() -> None:
    """Alg. 1 of the paper on a hand-made decrypted sum: the mean of the update part, and
    C <- C exp(-eta (b_bar - gamma)) with b_bar the unclipped fraction of the contributors."""
    strategy = AdaptiveClipDPFedAvg(FedAvg(), clip=2.0, noise_multiplier=1.0, count_noise=None,
                                    target_quantile=0.7, clip_lr=0.3)
    state = strategy.initialize(np.zeros(3))
    assert strategy.clip_at(state) == 2.0
    updates = [np.array([0.1, 0.2, 0.0]), np.array([3.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0]), np.array([0.0, 5.0, 0.0])]
    view = strategy.at(state)
    sent = [view.prepare_update(u, round=1) for u in updates]
    assert [s[-1] for s in sent] == [0.5, -0.5, 0.5, -0.5]  # centred bits b - 1/2
    assert all(np.linalg.norm(s[:-1]) <= 2.0 + 1e-12 for s in sent)
    total = np.sum(sent, axis=0)
    new = strategy.aggregate_fit(round=1, state=state, result=AggregateResult(total, ("a", "b", "c", "d")))
    np.testing.assert_allclose(new.params, total[:-1] / 4)
    assert strategy.clip_at(new) == pytest.approx(2.0 * math.exp(-0.3 * (0.5 - 0.7)), rel=1e-12)
    assert new.round == 1


def test_arguments_are_checked() -> None:
    for kwargs in ({"target_quantile": 1.0}, {"target_quantile": 0.0}, {"clip_lr": 0.0}, {"clip_lr": math.inf}):
        args = {"clip": 1.0, "noise_multiplier": 1.0, "count_noise": None, "target_quantile": 0.5, "clip_lr": 0.2,
                **kwargs}
        with pytest.raises(ConfigError):
            AdaptiveClipDPFedAvg(FedAvg(), **args)
    with pytest.raises(Exception, match="not a finite number"):
        geometric_clip_update(1.0, unclipped_fraction=math.nan, target_quantile=0.5, lr=0.2)


# ----------------------------------------------------------------------------------- accounting
@pytest.mark.parametrize("rounds", [1, 8, 50])
def test_accounting_equals_dp_accounting(rounds: int) -> None:
    """One GaussianEvent(z) per round with the effective z: equal to dp-accounting's RDP for
    GaussianDpEvent(z) and for the two mechanisms composed (z_update and 2 sigma_b), and the
    job's epsilon meets the target as a fixed clip's does."""
    job = hz_job(job="j", backend="plain", backend_params={}, training={**TRAINING, "rounds": rounds},
                 privacy=ADAPTIVE, n_features=4)
    strategy = job.strategy(["a", "b", "c"])
    assert isinstance(strategy, AdaptiveClipDPFedAvg)
    z = strategy.noise_multiplier
    assert z == silo_noise_multiplier(epsilon=8.0, delta=1e-5, rounds=rounds)
    ours = epsilon(ComposedEvent(tuple(strategy.event(round=r) for r in range(1, rounds + 1))), delta=1e-5)
    one = rdp.RdpAccountant()
    one.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), rounds))
    two = rdp.RdpAccountant()
    two.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(strategy.update_noise_multiplier), rounds))
    two.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(2 * strategy.count_noise), rounds))
    assert ours == pytest.approx(one.get_epsilon(1e-5), rel=1e-9)
    assert ours == pytest.approx(two.get_epsilon(1e-5), rel=1e-9)
    assert ours <= 8.0
    # PLD: Gaussian privacy losses compose into the Gaussian of the effective z (discretization aside)
    acc = pld.PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(strategy.update_noise_multiplier), rounds))
    acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(2 * strategy.count_noise), rounds))
    assert epsilon(GaussianEvent(z, 1.0, rounds), delta=1e-5, accountant="pld") == pytest.approx(acc.get_epsilon(1e-5), rel=2e-3)


def test_config_errors_are_one_line() -> None:
    def cfg(privacy: dict[str, Any], backend: str = "plain") -> Any:
        return parse_config({
            "federation": {"name": "t", "task": "horizontal", "seed": 7},
            "crypto": {"backend": backend, "insecure": True},
            "data": {"source": "sklearn:breast_cancer", "label": "target",
                     "partition": {"kind": "label_skew", "silos": 3, "alpha": 0.5}},
            "privacy": privacy,
        })

    with pytest.raises(ConfigError, match=r'privacy.adaptive_clip = true .* privacy.level = .record.') as e:
        cfg({"epsilon": 8.0, "level": "record", "adaptive_clip": True})
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"privacy.clip_lr is read only with privacy.adaptive_clip = true"):
        cfg({"epsilon": 8.0, "clip_lr": 0.3})
    with pytest.raises(ConfigError, match=r"privacy.target_quantile"):
        cfg({"epsilon": 8.0, "adaptive_clip": True, "target_quantile": 1.5})
    job = hz_job(job="j", backend="secagg", backend_params={}, training=TRAINING, privacy=ADAPTIVE, n_features=4)
    with pytest.raises(ConfigError, match=r"privacy.adaptive_clip = true needs a shared-key crypto.backend"):
        job.strategy(["a", "b", "c"])


# ------------------------------------------------------------------ the run: clip, noise, ledger
def _capture(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Every round's clip, each silo's inner update norm, and every vector handed to encryption."""
    seen: dict[str, Any] = {"norms": {}, "sent": {}, "bits": {}}
    lock = threading.Lock()
    prepare, contribution = AdaptiveClipRound.prepare_update, hzp._contribution

    def prepare_update(self: AdaptiveClipRound, update: np.ndarray, *, round: int) -> np.ndarray:
        out = prepare(self, update, round=round)
        with lock:
            seen["norms"].setdefault(round, []).append((self.clip, float(np.linalg.norm(self.inner.prepare_update(update, round=round)))))
            seen["bits"].setdefault(round, []).append(float(out[-1]))
        return out

    def wrapped(strategy: Any, update: np.ndarray, **kw: Any) -> Any:
        c = contribution(strategy, update, **kw)
        values = c.values

        def spy(present: int) -> np.ndarray:
            v = values(present)
            with lock:
                seen["sent"].setdefault(kw["round"], []).append((float(update[-1]), float(v[-1]), present))
            return v

        object.__setattr__(c, "values", spy)
        return c

    monkeypatch.setattr(AdaptiveClipRound, "prepare_update", prepare_update)
    monkeypatch.setattr(hzp, "_contribution", wrapped)
    return seen


def test_clip_follows_the_geometric_update_without_noise(bc3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Noise shares set to zero (a test-only patch: the count is then exact), the clip of every
    round is the paper's update from the previous round's clip and the silos' update norms."""
    seen = _capture(monkeypatch)
    monkeypatch.setattr(hzdp, "gaussian_share", lambda *, size, **kw: np.zeros(size))
    privacy = {**ADAPTIVE, "clip": 0.01, "clip_lr": 0.5, "target_quantile": 0.6}
    res = simulate_horizontal(**base_kwargs(bc3, privacy=privacy, training=TRAINING, noise_seed=1,
                                            budgets={n: (100.0, 1e-5) for n in bc3.silos}))
    clips = [seen["norms"][r][0][0] for r in range(1, TRAINING["rounds"] + 1)]
    assert clips[0] == 0.01
    for r in range(1, TRAINING["rounds"] + 1):
        pairs = seen["norms"][r]
        assert len(pairs) == 3 and all(c == clips[r - 1] for c, _ in pairs)
        unclipped = sum(norm <= c for c, norm in pairs) / len(pairs)
        want = clips[r - 1] * math.exp(-0.5 * (unclipped - 0.6))
        after = clips[r] if r < TRAINING["rounds"] else res["dp"]["adaptive_clip"]["final_clip"]
        assert after == pytest.approx(want, rel=1e-12)
    assert clips[-1] > clips[0]  # too small at first: every update clipped, the clip grows
    assert res["dp"]["clip"] == res["dp"]["adaptive_clip"]["final_clip"]


@pytest.mark.parametrize("colluders", [1, 2])
def test_count_leaves_each_silo_noised(monkeypatch: pytest.MonkeyPatch, colluders: int) -> None:
    """What each silo hands to encryption in the count coordinate is its centred bit plus a
    Gaussian share sized so any present - colluders shares carry N(0, sigma_b^2): never the bit."""
    data = breast_cancer_silos(5, 0.5, 7)
    seen = _capture(monkeypatch)
    rounds = 30
    res = simulate_horizontal(**base_kwargs(data, privacy={**ADAPTIVE, "colluders": colluders},
                                            training={**TRAINING, "rounds": rounds}, noise_seed=3,
                                            budgets={n: (100.0, 1e-5) for n in data.silos}))
    sigma_b = res["dp"]["adaptive_clip"]["count_noise"]
    sent = [s for r in range(1, rounds + 1) for s in seen["sent"][r]]
    assert len(sent) == 5 * rounds
    assert all(bit in (-0.5, 0.5) for bit, _, _ in sent)
    assert all(value not in (-0.5, 0.5) for _, value, _ in sent)
    noise = np.array([value - bit for bit, value, _ in sent])
    share = sigma_b / math.sqrt(share_parties(present=5, colluders=colluders))
    # 150 draws: the sample std is within ~6 % (one sd) of the share's; 25 % is 4 sd
    assert float(np.std(noise)) == pytest.approx(share, rel=0.25)
    assert abs(float(np.mean(noise))) < 0.35 * share


def test_ledger_holds_each_rounds_charge(bc3: Any, tmp_path: Path) -> None:
    res = simulate_horizontal(**base_kwargs(bc3, privacy=ADAPTIVE, training=TRAINING, ledger_dir=tmp_path,
                                            budgets={n: (10.0, 1e-5) for n in bc3.silos}))
    dp = res["dp"]
    z = dp["noise_multiplier"]
    job = hz_job(job="j", backend="plain", backend_params={}, training=TRAINING, privacy=ADAPTIVE, n_features=30)
    planned = planned_releases(job, list(bc3.silos), n_examples=None)
    assert planned == [(GaussianEvent(z, 1.0, 1), "zero-out-silo")] * TRAINING["rounds"]
    for name in bc3.silos:
        ledger = PrivacyLedger.open(tmp_path / f"{name}.sqlite")
        entries = ledger.entries(name)
        assert [e.round for e in entries] == list(range(1, TRAINING["rounds"] + 1))
        assert all(e.event == GaussianEvent(z, 1.0, 1) for e in entries)
        mech = [e.mechanism for e in entries]
        assert all(m["adaptive_clip"] and m["count_noise"] == dp["adaptive_clip"]["count_noise"] for m in mech)
        assert mech[0]["clip"] == ADAPTIVE["clip"] and mech[0]["initial_clip"] == ADAPTIVE["clip"]
        assert all(m["sigma"] == pytest.approx(m["update_noise_multiplier"] * m["clip"]) for m in mech)
        assert ledger.spent(name) == pytest.approx(epsilon(GaussianEvent(z, 1.0, TRAINING["rounds"]), delta=1e-5), rel=1e-12)
        assert res["epsilon"][name]["epsilon"] == pytest.approx(ledger.spent(name), rel=1e-12)
    # the clip moved, and the ledger recorded each round's
    assert len({m["clip"] for m in mech}) == TRAINING["rounds"]


# ------------------------------------------------------------------------------------ end to end
def _simulate(tmp_path: Path, privacy: str, tag: str) -> dict[str, Any]:
    from fedsilo.cli import app

    text = f"""
[federation]
name = "adaptive_{tag}"
task = "horizontal"
seed = 7

[crypto]
backend = "plain"
insecure = true

[privacy]
epsilon = 50.0
level = "silo"
{privacy}

[training]
rounds = 20
local_epochs = 1
batch_size = 32
lr = 0.5

[data]
source = "sklearn:breast_cancer"
label = "target"
partition = {{ kind = "label_skew", silos = 10, alpha = 0.5 }}
test_fraction = 0.2
"""
    text += "".join(f'\n[[silos]]\nname = "s{i}"\nbudget = {{ epsilon = 60.0, delta = 1e-5 }}\n' for i in range(10))
    (tmp_path / tag).mkdir()
    config, out = tmp_path / tag / "federation.toml", tmp_path / tag / "results.json"
    config.write_text(text)
    res = CliRunner().invoke(app, ["simulate", str(config), "--json", str(out), "--ledger-dir",
                                   str(tmp_path / tag / "ledgers"), "--quiet"])
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_simulate_from_a_clip_100x_too_small_reaches_the_tuned_fixed_clip(tmp_path: Path) -> None:
    """``fedsilo simulate``: 10 label-skewed silos, epsilon 50 per silo. A fixed clip of 1.0 (the
    best of 0.1 / 0.3 / 1.0 on these settings) against adaptive clipping started at 0.01."""
    fixed = _simulate(tmp_path, "clip = 1.0", "fixed")
    adaptive = _simulate(tmp_path, "clip = 0.01\nadaptive_clip = true\ntarget_quantile = 0.9\nclip_lr = 1.0", "adaptive")
    a = adaptive["dp"]["adaptive_clip"]
    assert a["initial_clip"] == 0.01 and a["final_clip"] > 0.1
    assert adaptive["dp"]["noise_multiplier"] == fixed["dp"]["noise_multiplier"]  # same epsilon
    for name, e in adaptive["epsilon"].items():
        assert e["epsilon"] == pytest.approx(fixed["epsilon"][name]["epsilon"], rel=1e-12)
    # `fedsilo privacy epsilon` on the effective multiplier agrees with the in-job accounting
    from fedsilo.cli import app

    cli = CliRunner().invoke(app, ["privacy", "epsilon", "--noise-multiplier", repr(adaptive["dp"]["noise_multiplier"]),
                                   "--delta", "1e-5", "--steps", "20", "--json"])
    assert cli.exit_code == 0, cli.output
    assert json.loads(cli.stdout)["epsilon"] == pytest.approx(adaptive["epsilon"]["s0"]["epsilon"], rel=1e-12)
    got, want = adaptive["simulation_metrics"], fixed["simulation_metrics"]
    assert got["auc"] >= want["auc"] - 0.02, (got, want)
    assert got["accuracy"] >= want["accuracy"] - 0.06, (got, want)
