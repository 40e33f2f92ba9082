"""ε per party per round in the results (horizontal per silo per round, vertical per data party
per epoch) and the PNG figures of a job's results (fedsilo.silos.plots).

The per-round ε is checked against an independent composition with dp-accounting's own
RdpAccountant, and against the job's final ε: equal after the last round unless something is
charged after training (the record-level final metrics release)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
import pandas as pd
import pytest
import opacus  # noqa: F401  (imported once here, not inside a party's first round)
import torch

from fedsilo.errors import ConfigError, ProtocolError
from fedsilo.privacy.accounting import epsilon
from fedsilo.privacy.events import ComposedEvent, GaussianEvent
from fedsilo.protocols.horizontal.protocol import SiloReport
from fedsilo.protocols.spec import ModelSection, PrivacySection, TrainingSection
from fedsilo.silos import plots
from fedsilo.silos.plots import EPSILON_PNG, METRICS_PNG, check_plot_dir, plot_results, skipped_plots
from fedsilo.silos.reports import incoming, outgoing
from fedsilo.silos.tasks.horizontal import make_job, silo_charges, simulate_horizontal
from fedsilo.silos.tasks.statistics import simulate_statistics
from fedsilo.silos.tasks.vertical import simulate_vertical

torch.set_num_threads(1)

DELTA = 1e-5
TRAINING = {"rounds": 4, "local_epochs": 1, "batch_size": 32, "lr": 0.5, "optimizer": "sgd", "strategy": "fedavg"}
SILO_DP = {"epsilon": 8.0, "delta": DELTA, "clip": 0.5, "level": "silo"}
RECORD_DP = {"epsilon": 8.0, "delta": DELTA, "clip": 1.0, "level": "record"}
PNG = b"\x89PNG\r\n\x1a\n"


def _silos(n: int = 3, rows: int = 150, features: int = 4, seed: int = 0) -> tuple[dict, dict]:
    """Separable rows already in [-1, 1] (a silo's scaled table) and each silo's held-out rows."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=features)
    train, test = {}, {}
    for i in range(n):
        x = rng.uniform(-1, 1, size=(rows, features))
        y = (x @ w > 0).astype(np.int64)
        cut = int(rows * 0.8)
        train[f"site{i}"], test[f"site{i}"] = (x[:cut], y[:cut]), (x[cut:], y[cut:])
    return train, test


def _horizontal(privacy: dict | None, **kw: Any) -> dict[str, Any]:
    train, test = _silos()
    args: dict[str, Any] = dict(
        silos=train, tests=test, backend="plain", backend_params={}, model={"kind": "logistic"}, training=TRAINING,
        privacy=privacy, ledger_dir=None, budgets={n: (8.0, DELTA) for n in train}, job="plots", seed=7, min_silos=2,
        # generous: a loaded machine must not skip round 1 (a party's first round imports opacus)
        round_timeout=120.0, insecure=True,  # the plain backend: a test baseline
        noise_seed=5,
    )
    args.update(kw)
    return json.loads(json.dumps(simulate_horizontal(**args)))  # as --json writes it


def _rdp(event: Any, count: int) -> float:
    """dp-accounting's own RDP accountant, composed by hand (independent of fedsilo's accounting)."""
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(event, count)
    return float(acc.get_epsilon(DELTA))


def _gaussian(z: float, q: float = 1.0) -> Any:
    g = dp_accounting.GaussianDpEvent(z)
    return g if q == 1.0 else dp_accounting.PoissonSampledDpEvent(q, g)


def _per_round(res: dict[str, Any]) -> dict[str, list[float]]:
    names = list(res["epsilon"])
    return {n: [r["epsilon"][n] for r in res["rounds"]] for n in names}


def _non_decreasing(xs: list[float]) -> bool:
    return all(a <= b for a, b in zip(xs, xs[1:]))


# ------------------------------------------------------------------------- ε per round: horizontal
@pytest.fixture(scope="module")
def record() -> dict[str, Any]:
    return _horizontal(RECORD_DP)


def test_record_level_epsilon_per_round_is_the_accountants_and_the_final_release_comes_after(record: dict) -> None:
    res = record
    z_eval = res["dp"]["evaluation_noise_multiplier"]
    curves = _per_round(res)
    assert set(curves) == {"site0", "site1", "site2"}
    assert [r["silos"] for r in res["rounds"]] == [["site0", "site1", "site2"]] * 4  # every silo charged every round
    for n, curve in curves.items():
        info = res["dp"]["silos"][n]
        per_round = info["steps"] // 4  # every round is the same DP-SGD run (steps per round)
        assert per_round * 4 == info["steps"]
        event = _gaussian(info["noise_multiplier"], info["sample_rate"])
        want = [_rdp(event, r * per_round) for r in range(1, 5)]
        assert curve == pytest.approx(want, rel=1e-10)
        assert _non_decreasing(curve) and curve[0] > 0
        # the job's epsilon = every training charge + the one metrics release after training
        training = GaussianEvent(info["noise_multiplier"], info["sample_rate"], info["steps"])
        assert curve[-1] == epsilon(training, delta=DELTA)  # exactly the prefix of all training charges
        total = res["epsilon"][n]["epsilon"]
        assert total == epsilon(ComposedEvent((training, GaussianEvent(z_eval, 1.0, 1))), delta=DELTA)
        composed = dp_accounting.rdp.RdpAccountant()
        composed.compose(event, info["steps"]).compose(_gaussian(z_eval))
        assert total == pytest.approx(composed.get_epsilon(DELTA), rel=1e-10)
        assert curve[-1] < total <= 8.0


def test_silo_level_epsilon_per_round_follows_who_was_charged_when(tmp_path: Path) -> None:
    """site1 sits round 2 out (not charged); site2's budget holds two rounds, it withdraws in
    round 3 (never charged again): each curve is the composition of that silo's own charges."""
    from fedsilo.protocols.horizontal.dp import silo_noise_multiplier

    z = silo_noise_multiplier(epsilon=8.0, delta=DELTA, rounds=4)
    two = epsilon(GaussianEvent(z, 1.0, 2), delta=DELTA)
    budgets = {"site0": (8.0, DELTA), "site1": (8.0, DELTA), "site2": (two * 1.001, DELTA)}
    res = _horizontal(SILO_DP, budgets=budgets, ledger_dir=tmp_path, round_timeout=5.0,
                      faults={"site1": {2: "hello"}})
    assert [r["silos"] for r in res["rounds"]] == [
        ["site0", "site1", "site2"], ["site0", "site2"], ["site0", "site1"], ["site0", "site1"]]
    charged = {"site0": [1, 2, 3, 4], "site1": [1, 3, 4], "site2": [1, 2]}
    curves = _per_round(res)
    for n, rounds in charged.items():
        want = [_rdp(_gaussian(z), sum(1 for c in rounds if c <= r)) for r in range(1, 5)]
        assert curves[n] == pytest.approx(want, rel=1e-10), n
        assert _non_decreasing(curves[n])
        assert curves[n][-1] == res["epsilon"][n]["epsilon"]  # nothing is charged after training
    assert curves["site1"][1] == curves["site1"][0] < curves["site1"][2]
    assert curves["site2"][1] == curves["site2"][2] == curves["site2"][3] == pytest.approx(two)


def test_without_dp_rounds_carry_no_epsilon() -> None:
    res = _horizontal(None, training={**TRAINING, "rounds": 2})
    assert res["dp"] is None and all("epsilon" not in r for r in res["rounds"])
    assert all("accuracy" in r for r in res["rounds"])


def _job(privacy: dict, rounds: int = 3) -> Any:
    return make_job(
        job="j", silos=["a", "b", "c"], backend="plain", backend_params={}, model=ModelSection(kind="logistic"),
        training=TrainingSection(**{**TRAINING, "rounds": rounds}), privacy=PrivacySection(**privacy), n_features=4,
        n_classes=2, seed=0, min_silos=2, round_timeout=5.0, insecure=True,
    )


def test_the_round_of_each_event_travels_in_what_a_remote_silo_reports() -> None:
    """On the agents' path the coordinator gets a silo's reduced report: its events and the
    rounds it contributed to are enough to place every charge in its round."""
    job = _job(RECORD_DP)
    train = GaussianEvent(1.3, 0.2, 5)
    final = job.evaluation_event()
    native = SiloReport(silo="b", status="completed", params=np.zeros(3), events=(train, train, final),
                        rounds_contributed=(1, 3))
    wire = json.loads(json.dumps(outgoing("horizontal", "silo", native)))
    charges = silo_charges(job, incoming("horizontal", "silo", "b", wire))
    assert charges.rounds == (1, 3) and charges.events == (train, train, final)
    assert charges.after_training == (final,)


@pytest.mark.parametrize(("privacy", "events", "rounds"), [
    pytest.param(RECORD_DP, 3, (1,), id="two-events-after-training"),
    pytest.param(SILO_DP, 2, (1,), id="silo-level-has-no-final-release"),
    pytest.param(SILO_DP, 1, (1, 2), id="a-round-without-its-charge"),
    pytest.param(SILO_DP, 2, (2, 1), id="rounds-out-of-order"),
    pytest.param(SILO_DP, 1, (4,), id="a-round-the-job-does-not-have"),
])
def test_a_report_whose_events_do_not_fit_its_rounds_is_refused(privacy: dict, events: int, rounds: tuple) -> None:
    job = _job(privacy)
    report = SiloReport(silo="b", status="completed", params=np.zeros(3), events=(GaussianEvent(2.0, 1.0, 1),) * events,
                        rounds_contributed=rounds)
    with pytest.raises(ProtocolError, match="malformed report from silo 'b'"):
        silo_charges(job, report)


# ------------------------------------------------------------------------- ε per epoch: vertical
def _vertical(dp: dict | None, epochs: int = 3) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    ids = [f"c{i}" for i in range(160)]
    g = pd.DataFrame({"cid": ids, "g1": rng.random(160), "g2": rng.random(160)})
    g["y"] = (g["g1"] + rng.normal(0, 0.2, 160) > 0.5).astype(int)
    h = pd.DataFrame({"cid": ids, "h1": rng.random(160), "h2": rng.random(160)})
    res = simulate_vertical(
        tables={"g": g, "h": h}, roles={"g": "guest", "h": "host"}, id_column="cid", label="y", backend="plain",
        training={"rounds": epochs, "batch_size": 32}, dp=dp, insecure=True, noise_seed=3,
        bounds={c: (0.0, 1.0) for c in ("g1", "g2", "h1", "h2")},
    )
    return json.loads(json.dumps(res, default=str))


def test_vertical_epsilon_per_epoch_is_the_accountants_and_ends_at_each_partys_epsilon() -> None:
    res = _vertical({"epsilon": 4.0, "delta": DELTA})
    z = res["dp"]["event_noise_multiplier"]
    curves = _per_round(res)
    assert set(curves) == {"g", "h"} and [r["round"] for r in res["rounds"]] == [1, 2, 3]
    want = [_rdp(_gaussian(z), e) for e in (1, 2, 3)]
    for p, curve in curves.items():
        assert curve == pytest.approx(want, rel=1e-10) and _non_decreasing(curve)
        assert curve[-1] == res["epsilon"][p]["epsilon"] <= 4.0  # vertical charges nothing after training


# ------------------------------------------------------------------------- figures
def _png(path: Path, *, min_bytes: int = 8000) -> tuple[int, ...]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > min_bytes, (path, len(data))
    return tuple(plt.imread(path).shape)


def test_record_level_results_give_both_figures(record: dict, tmp_path: Path) -> None:
    out = tmp_path / "new" / "plots"  # created
    written = plot_results(record, out)
    assert written == [out / METRICS_PNG, out / EPSILON_PNG] and skipped_plots(record) == {}
    for path in written:
        h, w, c = _png(path)
        assert c in (3, 4) and 400 <= h <= 800 and w >= 600


def test_silo_level_results_have_no_metrics_figure_and_say_why(tmp_path: Path) -> None:
    res = _horizontal(SILO_DP, training={**TRAINING, "rounds": 2})
    assert plot_results(res, tmp_path) == [tmp_path / EPSILON_PNG]
    assert not (tmp_path / METRICS_PNG).exists()
    assert "silo-level DP releases no federated metrics" in skipped_plots(res)[METRICS_PNG]
    _png(tmp_path / EPSILON_PNG)


def test_without_dp_only_the_metrics_figure(tmp_path: Path) -> None:
    res = _vertical(None)
    assert all(isinstance(r["loss"], float) for r in res["rounds"])
    assert plot_results(res, tmp_path) == [tmp_path / METRICS_PNG]
    assert skipped_plots(res) == {EPSILON_PNG: "no DP: the job spent no epsilon"}
    _png(tmp_path / METRICS_PNG)


def test_statistics_epsilon_per_silo_as_bars(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    frames = {f"h{i}": pd.DataFrame({"age": rng.uniform(20, 90, 100)}) for i in range(3)}
    res = simulate_statistics(silos=frames, columns=["age"], queries=["count", "mean"], bins=4, ranges={"age": (0, 100)},
                              privacy={"epsilon": 1.0, "delta": DELTA}, ledger_dir=None,
                              budgets={n: (4.0, DELTA) for n in frames}, job="s", backend_params={}, backend="plain",
                              insecure=True)
    assert "rounds" not in res
    assert plot_results(res, tmp_path) == [tmp_path / EPSILON_PNG]
    assert "no rounds" in skipped_plots(res)[METRICS_PNG]
    _png(tmp_path / EPSILON_PNG, min_bytes=5000)


def test_dp_results_without_per_round_epsilon_draw_no_epsilon_figure(record: dict, tmp_path: Path) -> None:
    old = {**record, "rounds": [{k: v for k, v in r.items() if k != "epsilon"} for r in record["rounds"]]}
    assert plot_results(old, tmp_path) == [tmp_path / METRICS_PNG]
    assert "no per-round epsilon" in skipped_plots(old)[EPSILON_PNG]


def test_nothing_to_draw_writes_nothing(tmp_path: Path) -> None:
    res = {"task": "statistics", "statistics": {}, "epsilon": {"h0": {"epsilon": None, "delta": None}}, "dp": None}
    assert plot_results(res, tmp_path / "p") == [] and not (tmp_path / "p").exists()
    assert skipped_plots(res) == {METRICS_PNG: "a statistics job has no rounds: its one release is in 'statistics'",
                                  EPSILON_PNG: "no DP: the job spent no epsilon"}


def test_not_a_results_object_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a results object"):
        plot_results({"rounds": []}, tmp_path)
    with pytest.raises(ConfigError, match="not a results object"):
        plot_results([], tmp_path)  # type: ignore[arg-type]


def test_figures_are_drawn_on_the_agg_canvas_without_pyplot(record: dict, tmp_path: Path) -> None:
    fig = plots._draw_epsilon(record)
    assert type(fig.canvas).__name__ == "FigureCanvasAgg"
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert {"site0", "site1", "site2"} <= set(", ".join(labels).split(", "))


# ------------------------------------------------------------------------- the plot directory
def test_plot_directory_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check_plot_dir(tmp_path / "a" / "b")  # creatable
    assert not (tmp_path / "a").exists()  # nothing created by the check
    check_plot_dir(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"--plots .*file: is a file, not a directory"):
        check_plot_dir(tmp_path / "file")
    with pytest.raises(ConfigError, match=r"--plots .*file/sub: .*file is a file, not a directory"):
        check_plot_dir(tmp_path / "file" / "sub")
    (tmp_path / "d" / METRICS_PNG).mkdir(parents=True)
    with pytest.raises(ConfigError, match="metrics.png is a directory"):
        check_plot_dir(tmp_path / "d")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.geteuid() == 0:  # root ignores permission bits; pretend it does not
        monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != ro)
    try:
        with pytest.raises(ConfigError, match=r"--plots .*ro: directory .*ro is not writable"):
            check_plot_dir(ro)
        with pytest.raises(ConfigError, match=r"--plots .*ro/new: directory .*ro is not writable"):
            check_plot_dir(ro / "new")
    finally:
        ro.chmod(0o700)


def test_plot_dirs_that_would_fail_after_the_job_are_refused_before_it(tmp_path: Path) -> None:
    """Found by the bad-input sweep: each of these passed the check, the job ran (and charged
    the ledgers), and only writing the figures failed."""
    from fedsilo.cli.simulate import check_plots
    from fedsilo.errors import ConfigError
    from fedsilo.silos.plots import check_plot_dir

    (tmp_path / "gone").symlink_to(tmp_path / "missing")
    with pytest.raises(ConfigError, match="is a dangling symbolic link"):
        check_plot_dir(tmp_path / "gone")
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "metrics.png").symlink_to(tmp_path / "missing" / "m.png")
    with pytest.raises(ConfigError, match="metrics.png is a dangling symbolic link"):
        check_plot_dir(tmp_path / "plots")
    with pytest.raises(ConfigError, match="--plots .*: File name too long|--plots .*name too long"):
        check_plot_dir(tmp_path / ("z" * 300))
    with pytest.raises(ConfigError, match="the same path as --json"):
        check_plots(tmp_path / "out", tmp_path / "out")
