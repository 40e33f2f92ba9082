"""Vertical DP noise shares: every party that can (the gradient's owner included, and the arbiter
if any) adds a share; the total on each decrypted gradient is what the plan says, and no coalition
of ``colluders`` parties can subtract it below ``σ_q = z·Δ_q``.

The shares are observed through the party functions' ``noise_tap`` (what each party drew), and
checked against the gradient the owner actually applied: with one step from zero weights and a
constant learning rate, ``w_q = −lr·(g_q + noise_q)`` and ``g_q`` is known in closed form, so the
noise that reached the model is recovered exactly and must equal the sum of the drawn shares.
"""
from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import numpy as np
import pytest

from fedsilo.crypto.registry import get_backend
from fedsilo.privacy.ledger import PrivacyLedger
from fedsilo.protocols.channel import InProcessHub, run_parties
from fedsilo.protocols.spec import PrivacySection
from fedsilo.protocols.vertical import Topology, arbiter_train, guest_train, host_train
from fedsilo.protocols.vertical.lr import NoiseDraw
from vt_data import exact_matches, readable_values, vt_training

ROWS = 40
FEATURES = 1500  # per data party: the noise is checked over this many gradient coordinates
LR = 1e-3

CASES = {
    "two-party": (Topology(guest="g", hosts=("h0",)), 1),
    "arbiter": (Topology(guest="g", hosts=("h0",), arbiter="a"), 1),
    "arbiter-3-parties-2-colluders": (Topology(guest="g", hosts=("h0", "h1"), arbiter="a"), 2),
}


def _run(top: Topology, colluders: int) -> tuple[InProcessHub, dict, list[NoiseDraw], dict[str, np.ndarray], np.ndarray]:
    data_rng = np.random.default_rng(0)
    xs = {p: data_rng.uniform(-1.0, 1.0, size=(ROWS, FEATURES)) for p in top.data_parties}
    y = data_rng.integers(0, 2, size=ROWS).astype(np.float64)
    cols = {p: [f"{p}_{j}" for j in range(FEATURES)] for p in top.data_parties}
    bounds = {c: (-1.0, 1.0) for p in top.data_parties for c in cols[p]}
    # one epoch of one batch, constant lr, no L2: w_q = -lr * (g_q + noise_q) after the step
    config = vt_training(epochs=1, batch_size=ROWS, lr=LR, lr_schedule="constant", track_loss=False, timeout=60.0)
    dp = PrivacySection(epsilon=8.0, colluders=colluders)
    backend = get_backend("plain")
    draws: list[NoiseDraw] = []
    everyone = [*top.data_parties, *([top.arbiter] if top.arbiter else [])]
    hub = InProcessHub("noise-shares", everyone)
    rows, none = np.arange(ROWS), np.arange(0)
    with tempfile.TemporaryDirectory() as tmp:
        ledgers = {p: PrivacyLedger(Path(tmp) / f"{p}.sqlite", silo=p) for p in top.data_parties}
        try:
            for p, led in ledgers.items():
                led.register_dataset(p, epsilon=100.0, delta=1e-5)
            common = dict(topology=top, train_rows=rows, eval_rows=none, backend=backend, config=config, dp=dp,
                          bounds=bounds, noise_tap=draws.append)
            fns = {
                top.guest: lambda ch: guest_train(ch, x=xs[top.guest], y=y, ledger=ledgers[top.guest], dataset=top.guest,
                                                  columns=cols[top.guest], rng=np.random.default_rng(1),
                                                  batch_rng=np.random.default_rng(5), **common),
            }
            for i, h in enumerate(top.hosts):
                fns[h] = lambda ch, h=h, i=i: host_train(ch, x=xs[h], ledger=ledgers[h], dataset=h, columns=cols[h],
                                                         rng=np.random.default_rng(2 + i), **common)
            if top.arbiter:
                fns[top.arbiter] = lambda ch: arbiter_train(ch, topology=top, backend=backend, config=config,
                                                            rng=np.random.default_rng(9), noise_tap=draws.append)
            out = run_parties(hub, fns)
        finally:
            for led in ledgers.values():
                led.close()
    return hub, out, draws, xs, y


@pytest.fixture(scope="module", params=list(CASES))
def case(request: pytest.FixtureRequest):
    top, colluders = CASES[request.param]
    return top, colluders, *_run(top, colluders)


def test_every_party_adds_a_share_to_every_gradient(case) -> None:
    top, colluders, _hub, out, draws, _xs, _y = case
    plan = out[top.guest].dp
    everyone = {*top.data_parties, *([top.arbiter] if top.arbiter else [])}
    assert plan.noise_adders == len(everyone) and plan.colluders == colluders
    for q in top.data_parties:
        drawers = [d.drawer for d in draws if d.owner == q]
        assert sorted(drawers) == sorted(everyone)  # q itself and the arbiter included, once each


def test_the_drawn_shares_are_exactly_the_noise_on_the_applied_gradient(case) -> None:
    """The noise that reached q's model (recovered from its weights) is the sum of the shares
    every party says it drew: nothing else is added, and nothing is removed."""
    top, _k, _hub, out, draws, xs, y = case
    d = 0.5 - y  # residual at zero weights: u = 0, d = −y'/2
    for q in top.data_parties:
        model = out[q].model
        g = model.transform(xs[q]).T @ d / ROWS
        applied_noise = -model.weights / LR - g
        total = sum(dr.share for dr in draws if dr.owner == q)
        np.testing.assert_allclose(applied_noise, total, rtol=0, atol=1e-8)


def test_noise_total_and_what_any_coalition_can_subtract(case) -> None:
    """Empirically over the gradient's coordinates: the total noise has the planned std, and after
    any ``colluders`` parties subtract the shares they drew, the std left is still ``>= σ_q``."""
    top, colluders, _hub, out, draws, _xs, _y = case
    plan = out[top.guest].dp
    n_adders = plan.noise_adders
    for q in top.data_parties:
        sigma_q = plan.sigma(intercept=q == top.guest) / ROWS  # mean gradient: divided by the batch size
        share = plan.share_sigma(intercept=q == top.guest) / ROWS
        shares = {dr.drawer: dr.share for dr in draws if dr.owner == q}
        for s in shares.values():
            assert np.std(s) == pytest.approx(share, rel=0.08)
        total = sum(shares.values())
        expected_total = share * np.sqrt(n_adders)
        assert expected_total**2 >= sigma_q**2 * n_adders / max(1, n_adders - colluders) * (1 - 1e-12)
        assert np.std(total) == pytest.approx(expected_total, rel=0.08)
        for coalition in itertools.combinations(sorted(shares), colluders):
            left = total - sum(shares[c] for c in coalition)
            # exactly σ_q² of variance is left in expectation; allow the sampling error of 1,500 draws
            assert np.std(left) >= 0.92 * sigma_q, (q, coalition)
            assert share**2 * (n_adders - colluders) >= sigma_q**2 * (1 - 1e-12)


def test_own_share_is_never_readable_by_another_party(case) -> None:
    top, _k, hub, _out, draws, _xs, _y = case
    everyone = [*top.data_parties, *([top.arbiter] if top.arbiter else [])]
    for q in top.data_parties:
        (own,) = [dr.share for dr in draws if dr.owner == q and dr.drawer == q]
        for p in everyone:
            if p == q:
                continue
            for where, vec in readable_values(hub, p):
                assert exact_matches(vec, own) == 0.0, (q, p, where)
