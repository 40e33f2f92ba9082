"""``[model] trainer = "package.module:function"``: a user's own local training loop.

The loops live in ``_user_trainer.py`` next to this file (pytest puts this directory on
sys.path, so ``_user_trainer`` imports in the CLI's threads engine)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import _user_trainer as ut
from fedsilo.cli import app
from fedsilo.errors import ConfigError
from fedsilo.protocols.horizontal.models import build_model, get_flat_params
from fedsilo.protocols.horizontal.trainer import TrainerSettings, resolve_trainer
from fedsilo.protocols.horizontal.training import LocalConfig, train_local
from fedsilo.protocols.spec import ModelSection, TrainingSection

runner = CliRunner()


def _config(tmp_path: Path, *, trainer: str | None, privacy: str = "", training: str = "rounds = 3") -> Path:
    model = 'kind = "logistic"\n' + (f'trainer = "{trainer}"\n' if trainer else "")
    text = (
        '[federation]\ntask = "horizontal"\nseed = 3\n[crypto]\nbackend = "plain"\ninsecure = true\n'
        f"[model]\n{model}[training]\n{training}\n{privacy}"
        '[data]\nsource = "sklearn:breast_cancer"\nlabel = "target"\n'
        'partition = { kind = "label_skew", silos = 3, alpha = 0.5 }\n'
    )
    path = tmp_path / f"fed{abs(hash(text))}.toml"
    path.write_text(text)
    return path


def _simulate(cfg: Path, tmp_path: Path, *extra: str):
    out = tmp_path / f"{cfg.stem}.json"
    res = runner.invoke(app, ["simulate", str(cfg), "--quiet", "--no-baselines", "--json", str(out), "--ledger-dir",
                              str(tmp_path / f"ledgers-{cfg.stem}"), *extra])
    return res, out


def _rounds(calls: list[tuple[np.ndarray, np.ndarray, int]]) -> list[list[tuple[np.ndarray, np.ndarray, int]]]:
    """Calls grouped by the global model they started from, in the order the rounds ran."""
    groups: list[list[tuple[np.ndarray, np.ndarray, int]]] = []
    for call in calls:
        if groups and np.array_equal(groups[-1][0][0], call[0]):
            groups[-1].append(call)
        else:
            groups.append([call])
    return groups


def test_cli_job_trains_with_the_user_loop_and_aggregates_exactly_its_updates(tmp_path: Path) -> None:
    ut.CALLS.clear()
    res, out = _simulate(_config(tmp_path, trainer="_user_trainer:adam_prox"), tmp_path, "--epsilon", "0")
    assert res.exit_code == 0, res.output
    rounds = _rounds(ut.CALLS)
    assert [len(r) for r in rounds] == [3, 3, 3]  # 3 silos x 3 rounds, every local update from the user loop
    # round 1 starts from the job's initial model; each next round's global model is the last
    # one plus the mean of the updates the function returned (FedAvg, server_lr 1, plain sums)
    initial = build_model(ModelSection(), n_features=30, n_classes=2, seed=3)
    np.testing.assert_allclose(rounds[0][0][0], get_flat_params(initial), atol=1e-7)
    for before, after in zip(rounds, rounds[1:]):
        expected = before[0][0] + np.mean([u for _, u, _ in before], axis=0)
        # the model is float32: each round starts from the float64 global model rounded to it
        # (half an ulp at most, here and in the round before)
        ulp = 2.0**-23 * np.maximum(np.abs(before[0][0]), np.abs(after[0][0]))
        assert np.all(np.abs(after[0][0] - expected) <= ulp + 1e-12), np.abs(after[0][0] - expected).max()
        assert all(np.abs(u).max() > 1e-3 for _, u, _ in before)
    data = json.loads(out.read_text())
    assert data["simulation_metrics"]["auc"] > 0.9


def test_silo_level_dp_runs_the_user_loop_and_charges_the_same_epsilon(tmp_path: Path) -> None:
    privacy = '[privacy]\nepsilon = 4.0\nlevel = "silo"\nclip = 0.5\n'
    ut.CALLS.clear()
    with_loop, out_loop = _simulate(_config(tmp_path, trainer="_user_trainer:returns_model", privacy=privacy,
                                            training="rounds = 2"), tmp_path)
    assert with_loop.exit_code == 0, with_loop.output
    assert [len(r) for r in _rounds(ut.CALLS)] == [3, 3]
    builtin, out_builtin = _simulate(_config(tmp_path, trainer=None, privacy=privacy, training="rounds = 2"), tmp_path)
    assert builtin.exit_code == 0, builtin.output
    a, b = json.loads(out_loop.read_text()), json.loads(out_builtin.read_text())
    assert a["dp"]["level"] == "silo" and a["dp"]["noise_multiplier"] == b["dp"]["noise_multiplier"]
    assert set(a["epsilon"]) == {"site0", "site1", "site2"}
    for silo, e in a["epsilon"].items():
        assert e["epsilon"] == pytest.approx(b["epsilon"][silo]["epsilon"], rel=1e-12) and 0 < e["epsilon"] <= 4.0 + 1e-9


@pytest.mark.parametrize(
    ("privacy", "message"),
    [
        ('[privacy]\nepsilon = 8.0\nlevel = "record"\n', "cannot run under record-level local DP-SGD"),
        ('[privacy]\nepsilon = 8.0\nlevel = "record"\nmode = "distributed"\n', 'cannot run under privacy.mode = "distributed"'),
    ],
)
def test_record_level_dp_refuses_a_user_loop_before_anything_is_charged(tmp_path: Path, privacy: str, message: str) -> None:
    ut.CALLS.clear()
    training = "rounds = 3\nlocal_epochs = 1"  # distributed DP-SGD runs no local epochs
    res, _ = _simulate(_config(tmp_path, trainer="_user_trainer:adam_prox", privacy=privacy, training=training), tmp_path)
    assert res.exit_code == 2, res.output
    assert "key 'model.trainer': '_user_trainer:adam_prox' " + message in res.output
    assert "Traceback" not in res.output and not ut.CALLS
    assert not list((tmp_path).glob("ledgers-*/*.sqlite"))


@pytest.mark.parametrize(
    ("trainer", "message"),
    [
        ("no_such_module_xyz:fit", "module 'no_such_module_xyz' cannot be imported"),
        ("_user_trainer:missing", "module '_user_trainer' has no attribute 'missing'"),
        ("_user_trainer:NOT_CALLABLE", "is a int, not a function"),
        ("_user_trainer.adam_prox", "is not an import path of the form 'package.module:function'"),
        ("_user_trainer:wrong_return", "returned a LogisticRegression; it must return (trained model or update, n_examples)"),
        ("_user_trainer:wrong_first", "returned str 'weights' as its first value"),
        ("_user_trainer:nan_update", "returned an update with 31 NaN/inf value(s)"),
        ("_user_trainer:wrong_shape", "returned an update of shape (32,); the job's model needs (31,)"),
        ("_user_trainer:zero_examples", "returned n_examples = 0; it must be between 1 and the number of training rows"),
        ("_user_trainer:too_many_examples", "returned n_examples = "),
        ("_user_trainer:float_examples", "returned n_examples = float 5.0; it must be an int"),
        ("_user_trainer:raises", "raised RuntimeError: my loop broke"),
    ],
)
def test_a_bad_trainer_is_one_clear_line(tmp_path: Path, trainer: str, message: str) -> None:
    res, _ = _simulate(_config(tmp_path, trainer=trainer, training="rounds = 1"), tmp_path, "--epsilon", "0")
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.output, res.output
    assert f"key 'model.trainer': {trainer!r}" in lines[0] and message in lines[0], lines[0]
    if trainer.endswith("too_many_examples"):
        assert "between 1 and the number of training rows" in lines[0]
    if trainer.endswith("raises"):
        assert "second line" not in res.output  # the exception's first line only


def _train(trainer: str | None, *, l2: float = 0.0, rows: int = 40) -> tuple[np.ndarray, int]:
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-1, 1, (rows, 4)), (rng.random(rows) < 0.5).astype(np.int64)
    model = build_model(ModelSection(), n_features=4, n_classes=2, seed=1)
    start = get_flat_params(model)
    config = LocalConfig.from_sections(TrainingSection(l2=l2, batch_size=8), proximal_mu=0.25, trainer=trainer)
    local = train_local(model, x, y, global_params=start, config=config, n_classes=2, seed=5)
    return local.update, local.num_examples


def test_train_local_returns_the_user_update_and_count_and_passes_the_settings() -> None:
    ut.CALLS.clear()
    update, n = _train("_user_trainer:adam_prox")
    ((_, returned, count),) = ut.CALLS
    np.testing.assert_array_equal(update, returned)
    assert n == count == 40
    ut.CALLS.clear()
    update, n = _train("_user_trainer:returns_model")  # a returned model: its parameters minus the global ones
    np.testing.assert_allclose(update, ut.CALLS[0][1], rtol=0, atol=0)
    ut.SEEN.clear()
    _train("_user_trainer:records_settings", l2=0.3)
    (s,) = ut.SEEN
    assert isinstance(s, TrainerSettings)
    assert (s.epochs, s.batch_size, s.lr, s.optimizer, s.l2, s.proximal_mu, s.rows, s.n_classes) == (
        TrainingSection().local_epochs, 8, TrainingSection().lr, "sgd", 0.3, 0.25, 40, 2)
    assert isinstance(s.generator, torch.Generator) and s.device == torch.device("cpu")
    assert isinstance(s.loss, torch.nn.BCEWithLogitsLoss)
    with pytest.raises(AttributeError):
        s.lr = 1.0  # type: ignore[misc]  # frozen


def test_the_builtin_loop_does_not_read_l2(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="training.l2 is read only by a user training loop"):
        LocalConfig(epochs=1, batch_size=8, lr=0.1, optimizer="sgd", l2=0.1)
    res, _ = _simulate(_config(tmp_path, trainer=None, training="rounds = 1\nl2 = 0.1"), tmp_path, "--epsilon", "0")
    assert res.exit_code == 2 and "key 'training.l2' is not read by a 'horizontal' job" in res.output, res.output
    assert resolve_trainer("_user_trainer:adam_prox") is ut.adam_prox
