"""``[training] fill_slots``: vertical LR picks the batch whose packed residuals fill one ciphertext.

* Through the real CLI on the bank example (CKKS, DP): 512-row batches (the guest's 7
  coordinates repeat over 8 slots of 4,096), the same ε and ledger charges as at any batch size.
* The DP accounting holds when the batch size changes: the same per-epoch event whatever the
  batch (disjoint batches, parallel composition), only the steps per epoch follow the batch.
* Bad input is one clear line naming the key: a backend without slots, both keys set, a task
  that does not read it.
"""
from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from typer.testing import CliRunner

from fedsilo.cli import app
from fedsilo.crypto import registry
from fedsilo.crypto.plain import PlainBackend
from fedsilo.errors import ConfigError
from fedsilo.protocols import codec
from fedsilo.protocols.spec import PrivacySection, TrainingSection
from fedsilo.protocols.vertical import Topology
from fedsilo.protocols.vertical.config import TrainingConfig
from fedsilo.protocols.vertical.taylor import calibrate
from vt_data import BANK, breast_cancer_bounds, breast_cancer_tables, epoch_batches, run_job, vt_spec, vt_training

runner = CliRunner()


class FillPlain(PlainBackend):
    """The plain backend with a 256-slot packed layout: ``matmul_repeat`` as CKKS's, and
    ``matmul_fill_rows`` the rows that fill 256 slots (32 at up to 8 coordinates), so that a
    test's few hundred rows take several fill-sized batches per epoch."""

    name: ClassVar[str] = "plain-fill"

    def matmul_repeat(self, *, rows: int, columns: int) -> int:
        return 1 << (columns - 1).bit_length()

    def matmul_fill_rows(self, *, columns: int) -> int | None:
        return 256 // self.matmul_repeat(rows=1, columns=columns)


@pytest.fixture
def fill_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry._registered, FillPlain.name, FillPlain)


def _bank_config(tmp_path: Path, training: str, *, backend: str = "ckks", rounds: int = 1) -> Path:
    text = (BANK / "federation.toml").read_text()
    text = re.sub(r"\[training\]\n(.*\n)*?\n", f"[training]\nrounds = {rounds}\nlr = 0.3\n{training}\n\n", text, count=1)
    text = text.replace('backend = "ckks"', f'backend = "{backend}"')
    for csv in ("bank.csv", "partner.csv"):
        text = text.replace(f'data = "{csv}"', f'data = "{(BANK / csv).as_posix()}"')
    path = tmp_path / "fed.toml"
    path.write_text(text)
    return path


@pytest.mark.slow
def test_fill_slots_through_the_cli_on_the_bank_example(tmp_path: Path) -> None:
    """1,600 training rows in ceil(1600 / 512) = 4 batches per epoch on CKKS, charged the same
    per-epoch event as the example's batch 128 (13 steps): ε and the ledgers agree."""
    out = tmp_path / "v.json"
    res = runner.invoke(app, ["simulate", str(_bank_config(tmp_path, "fill_slots = true")), "--json", str(out),
                              "--ledger-dir", str(tmp_path / "l"), "--quiet"])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["rows"]["train"] == 1600 and data["epochs"] == 1
    assert data["dp"]["rounds"] == math.ceil(1600 / 512) == 4  # steps: one per 512-row batch
    common = dict(epsilon=8.0, delta=1e-5, rows=1600, epochs=1, parties=2, arbiter=True, clip=1.0, logit_clip=2.0)
    planned = calibrate(batch_size=128, **common)
    assert data["dp"]["event_noise_multiplier"] == planned.event_multiplier
    for e in data["epsilon"].values():
        assert e["epsilon"] == pytest.approx(data["rounds"][-1]["epsilon"]["bank"]) and e["epsilon"] <= 8.0
        assert e["ledger_spent"] == pytest.approx(e["epsilon"])
    assert data["simulation_metrics"]["auc"] > 0.6  # one DP epoch of 4 steps at ε = 8


def test_the_dp_accounting_holds_when_fill_slots_changes_the_batch(fill_plain: None) -> None:
    """The same job at batch 128 and with fill_slots (32-row batches here): every party charges
    the same event per epoch and reports the same ε; the plan differs only in its steps, and the
    batches announced are a partition into batches of at most 32 rows."""
    top = Topology(guest="g", hosts=("h0",), arbiter="a")
    tables = breast_cancer_tables(1, drop=0.1)
    dp = PrivacySection(epsilon=8.0)
    runs = {}
    for name, training in {"batch 128": vt_training(epochs=2, batch_size=128, lr=0.3),
                           "fill": vt_training(epochs=2, lr=0.3, fill_slots=True)}.items():
        spec = vt_spec(topology=top, id_column="pid", label="target", backend="plain-fill", insecure=True,
                       training=training, dp=dp, bounds=breast_cancer_bounds())
        runs[name] = run_job(spec, tables, noise_seed=5)
    (_, fixed), (hub, fill) = runs["batch 128"], runs["fill"]
    train = fill["g"]["rows"]["train"]
    for p in top.data_parties:
        a, b = fixed[p]["dp"], fill[p]["dp"]
        assert a.epoch_event() == b.epoch_event() and a.job_event() == b.job_event()
        assert fill[p]["epsilon"] == fixed[p]["epsilon"]
        assert (a.steps_per_epoch, b.steps_per_epoch) == (math.ceil(train / 128), math.ceil(train / 32))
    for batches in epoch_batches(hub, "h0"):
        assert len(batches) == math.ceil(train / 32) and max(b.size for b in batches) <= 32
        assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(train))
    # the residuals fill the 256 slots: 32 rows x the repeat of 8 (the guest's 6 coordinates)
    lengths = {struct.unpack_from("<I", codec.decode(e.body)["ct"], 40)[0] for e in hub.log if e.kind == "vlr/residual"}
    assert max(lengths) <= 256 and 256 in lengths


def test_fill_slots_refusals_name_the_key(tmp_path: Path) -> None:
    for training, backend, message in [
        ("fill_slots = true", "paillier", "key 'training.fill_slots': backend 'paillier' has no slots to fill"),
        ("fill_slots = true\nbatch_size = 64", "ckks", "key 'training.batch_size': training.fill_slots = true picks the batch"),
    ]:
        res = runner.invoke(app, ["simulate", str(_bank_config(tmp_path, training, backend=backend)), "--quiet",
                                  "--ledger-dir", str(tmp_path / "l"), "--insecure"])
        assert res.exit_code == 2, res.output
        assert message in res.output and "Traceback" not in res.output
    horizontal = tmp_path / "h.toml"
    horizontal.write_text('[federation]\ntask = "horizontal"\n[crypto]\nbackend = "plain"\ninsecure = true\n'
                          '[training]\nfill_slots = true\n[data]\nsource = "sklearn:breast_cancer"\nlabel = "target"\n'
                          'partition = {silos = 2}\n')
    res = runner.invoke(app, ["simulate", str(horizontal), "--quiet", "--ledger-dir", str(tmp_path / "l")])
    assert res.exit_code == 2 and "key 'training.fill_slots' is not read by a 'horizontal' job" in res.output
    with pytest.raises(ConfigError, match="training.batch_size"):
        TrainingConfig.from_sections(TrainingSection(fill_slots=True, batch_size=64), timeout=1.0)
    assert TrainingConfig.from_sections(TrainingSection(fill_slots=True), timeout=1.0).fill_slots
