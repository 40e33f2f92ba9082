"""Issue 17 items 2-3 through `fedsilo simulate`: the baselines block and public per-feature centers."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedsilo.cli import app
from fedsilo.errors import ConfigError
from fedsilo.silos.config import load_config
from fedsilo.silos.tasks.horizontal import center_offsets, prepare_horizontal

ROOT = Path(__file__).resolve().parents[2]
HOSPITALS = ROOT / "examples" / "hospitals_horizontal" / "federation.toml"
runner = CliRunner()


def _no_dp_config(tmp_path: Path, extra: str = "") -> Path:
    """The hospitals example without [privacy] and without [training]: the shipped defaults."""
    text = HOSPITALS.read_text()
    text = re.sub(r"\n\[privacy\]\n(?:[^\[\n][^\n]*\n|\n)*", "\n", text)
    text = re.sub(r"\n\[training\]\n(?:[^\[\n][^\n]*\n|\n)*", "\n", text)
    text = text.replace("[[silos]]", extra + "\n[[silos]]", 1) if extra else text
    path = tmp_path / "federation.toml"
    path.write_text(text)
    return path


@pytest.mark.slow
def test_default_config_lands_within_001_auc_of_central(tmp_path: Path) -> None:
    cfg = _no_dp_config(tmp_path)
    assert "[training]" not in cfg.read_text() and "[privacy]" not in cfg.read_text()
    out = tmp_path / "r.json"
    res = runner.invoke(app, ["simulate", str(cfg), "--backend", "plain", "--insecure", "--quiet", "--json", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    base, fed = data["baselines"], data["simulation_metrics"]
    assert "not private" in base["label"] and base["epochs"] == 40  # defaults: 20 rounds x 2 local epochs
    assert set(base["alone"]) == {"st_marys", "city_general", "riverside"}
    assert fed["auc"] >= base["central"]["auc"] - 0.01
    # label skew: one hospital alone (few of one class) is far off in accuracy; the federation is not
    assert fed["accuracy"] > min(m["accuracy"] for m in base["alone"].values()) + 0.1
    assert "did federating pay off" in res.output


def test_no_baselines_flag(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    res = runner.invoke(app, ["simulate", str(HOSPITALS), "--backend", "plain", "--insecure", "--quiet", "--rounds", "1",
                              "--no-baselines", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "baselines" not in json.loads(out.read_text())


@pytest.mark.parametrize("center, message", [
    ('"mean radius" = 99.0', r"'mean radius' = 99 is outside its public bounds \[6.981, 28.11\]"),
    ('"no such column" = 1.0', r"key 'data.center': \['no such column'\] are not feature column"),
])
def test_bad_center_is_refused_naming_the_key(tmp_path: Path, center: str, message: str) -> None:
    cfg = _no_dp_config(tmp_path, f"[data.center]\n{center}\n")
    res = runner.invoke(app, ["simulate", str(cfg), "--backend", "plain", "--insecure", "--quiet"])
    assert res.exit_code != 0
    assert re.search(message, res.output), res.output
    assert "Traceback" not in res.output


def test_center_without_bounds_is_refused(tmp_path: Path) -> None:
    csv = tmp_path / "a.csv"
    csv.write_text("age,y\n" + "".join(f"{30 + i},{i % 2}\n" for i in range(40)))
    cfg = tmp_path / "f.toml"
    cfg.write_text(
        '[federation]\nname = "c"\ntask = "horizontal"\nmin_silos = 2\n[crypto]\nbackend = "plain"\ninsecure = true\n'
        '[data]\nlabel = "y"\ncenter = { age = 40.0 }\n'
        + "".join(f'[[silos]]\nname = "s{i}"\ndata = "a.csv"\n' for i in range(3))
    )
    with pytest.raises(ConfigError, match=r"key 'data.center': 'age' = 40 has no public bounds"):
        prepare_horizontal(load_config(cfg, insecure=True))


def test_center_maps_to_zero_and_is_the_same_shift_in_every_silo(tmp_path: Path) -> None:
    plain = prepare_horizontal(load_config(_no_dp_config(tmp_path), insecure=True))
    (tmp_path / "c").mkdir()
    centred = prepare_horizontal(load_config(_no_dp_config(tmp_path / "c", '[data.center]\n"mean radius" = 14.0\n'),
                                             insecure=True))
    j = plain.features.index("mean radius")
    shift = center_offsets(["mean radius"], {"mean radius": (6.981, 28.11)}, {"mean radius": 14.0})[0]
    assert shift == pytest.approx(2 * (14.0 - 6.981) / (28.11 - 6.981) - 1)
    for name in plain.silos:
        np.testing.assert_allclose(centred.silos[name][0][:, j], plain.silos[name][0][:, j] - shift)
        others = [k for k in range(len(plain.features)) if k != j]
        np.testing.assert_array_equal(centred.silos[name][0][:, others], plain.silos[name][0][:, others])


BANK = ROOT / "examples" / "bank_vertical" / "federation.toml"
BANK_TREES = ROOT / "examples" / "bank_vertical" / "secureboost.toml"


def _simulate(tmp_path: Path, config: Path, *args: str) -> tuple[dict, str]:
    out = tmp_path / "r.json"
    res = runner.invoke(app, ["simulate", str(config), "--quiet", "--json", str(out), "--ledger-dir",
                              str(tmp_path / "ledgers"), *args])
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text()), res.output


def test_vertical_central_baseline_is_the_no_dp_federation(tmp_path: Path) -> None:
    # without DP and masks hetero LR is exact: the federation and the central baseline (every
    # party's columns joined, trained in one place) must land on the same model, scored on the
    # same held-out aligned rows; a different split, batch order or preprocessing would show here
    data, output = _simulate(tmp_path, BANK, "--epsilon", "0", "--insecure", "--backend", "plain")
    base, fed = data["baselines"], data["simulation_metrics"]
    assert base["label"].startswith("simulation only, not private")
    assert base["epochs"] == 5 and set(base["alone"]) == {"bank"}
    assert "hosts hold no label" in base["hosts"]
    assert base["central"]["auc"] == pytest.approx(fed["auc"], abs=1e-12)
    assert base["central"]["test_loss"] == pytest.approx(fed["test_loss"], abs=1e-9)
    # the partner's columns carry most of the signal: the bank alone is far below
    assert fed["auc"] > base["alone"]["bank"]["auc"] + 0.05
    assert "did federating pay off? aligned held-out rows" in output and "vs the best silo alone (bank)" in output


@pytest.mark.slow
def test_bank_example_default_config_baselines(tmp_path: Path) -> None:
    """The bank example as shipped (CKKS, an arbiter, record-level DP at epsilon = 8): the
    federation is far above the label holder alone. Not asserted: within 0.01 AUC of central,
    which its DP noise (from the OS, not seedable here) meets in 6 of 8 runs over seeds 1-7 (the
    config's header has them; seed 7: 0.762 against 0.764), so an assertion would fail about one
    run in four."""
    data, output = _simulate(tmp_path, BANK)
    base, fed = data["baselines"], data["simulation_metrics"]
    assert "not private" in base["label"] and "hosts hold no label" in base["hosts"]
    assert list(base["alone"]) == ["bank"] and "partner" not in base["alone"]
    assert base["central"]["auc"] >= base["alone"]["bank"]["auc"] - 0.01
    # federating pays off: the DP federation is far above the label holder alone
    assert fed["auc"] > base["alone"]["bank"]["auc"] + 0.05
    assert "central, every party's columns joined, no DP (5 epochs)" in output


def test_vertical_no_baselines_flag(tmp_path: Path) -> None:
    data, _ = _simulate(tmp_path, BANK, "--epsilon", "0", "--insecure", "--backend", "plain", "--rounds", "1",
                        "--no-baselines")
    assert "baselines" not in data and data["simulation_metrics"]


def test_secureboost_central_baseline_is_the_no_dp_federation(tmp_path: Path) -> None:
    # SecureBoost without DP is lossless: joint trees (no guest-only tree) grown across the bank
    # and its partner are the trees grown on their columns joined, on the same held-out rows
    text = BANK_TREES.read_text().replace("guest_trees = 1", "guest_trees = 0")
    for name in ("bank", "partner"):
        text = text.replace(f'data = "{name}.csv"', f'data = "{(BANK.parent / f"{name}.csv").as_posix()}"')
    cfg = tmp_path / "joint.toml"
    cfg.write_text(text)
    data, _ = _simulate(tmp_path, cfg, "--epsilon", "0", "--insecure", "--backend", "plain")
    assert data["baselines"]["central"] == pytest.approx(data["simulation_metrics"], abs=1e-12)


def test_vertical_baselines_of_several_hosts(tmp_path: Path) -> None:
    # the hospital example: oncology (guest) with radiology and pathology; LR has an arbiter,
    # SecureBoost none (the baselines must not need one)
    hospital = ROOT / "examples" / "hospital_vertical"
    lr, _ = _simulate(tmp_path / "lr", hospital / "federation.toml", "--epsilon", "0", "--insecure", "--backend", "plain")
    assert lr["baselines"]["central"] == pytest.approx(lr["simulation_metrics"], abs=1e-9)
    trees, _ = _simulate(tmp_path / "trees", hospital / "secureboost.toml", "--epsilon", "0", "--insecure", "--backend",
                         "plain")
    for data in (lr, trees):
        assert list(data["baselines"]["alone"]) == ["oncology"]
        assert data["baselines"]["central"]["auc"] >= data["baselines"]["alone"]["oncology"]["auc"] - 0.02


def test_secureboost_baselines(tmp_path: Path) -> None:
    data, output = _simulate(tmp_path, BANK_TREES, "--epsilon", "0", "--insecure", "--backend", "plain")
    base, fed = data["baselines"], data["simulation_metrics"]
    assert base["label"].startswith("simulation only, not private") and base["trees"] == 10
    assert set(base["alone"]) == {"bank"} and "hosts hold no label" in base["hosts"]
    assert set(base["central"]) == set(fed)  # the same metrics, on the same held-out rows
    assert base["central"]["auc"] >= base["alone"]["bank"]["auc"] - 0.01
    assert fed["auc"] > base["alone"]["bank"]["auc"]
    assert "central, every party's columns joined, no DP (10 trees)" in output


def test_secureboost_baselines_of_a_guest_with_labels_only(tmp_path: Path) -> None:
    import pandas as pd

    bank = pd.read_csv(BANK.parent / "bank.csv")
    partner = pd.read_csv(BANK.parent / "partner.csv")
    labels = bank[["customer_id", "default"]]
    joined = partner.merge(bank.drop(columns="default"), on="customer_id", how="inner")
    labels.to_csv(tmp_path / "labels.csv", index=False)
    joined.to_csv(tmp_path / "features.csv", index=False)
    cfg = tmp_path / "trees.toml"
    cfg.write_text(
        '[federation]\nname = "t"\ntask = "vertical"\nseed = 3\n[crypto]\nbackend = "plain"\ninsecure = true\n'
        '[model]\nkind = "secureboost"\ntrees = 3\ndepth = 2\n[data]\nlabel = "default"\nid_column = "customer_id"\n'
        '[[silos]]\nname = "bank"\ndata = "labels.csv"\nrole = "guest"\n'
        '[[silos]]\nname = "partner"\ndata = "features.csv"\nrole = "host"\n'
    )
    data, output = _simulate(tmp_path, cfg)
    base = data["baselines"]
    assert base["alone"] == {} and "holds the labels only" in base["guest"]
    assert base["central"]["auc"] > 0.6
    assert "vs the best silo alone" not in output and "federation AUC" in output


def test_lr_baselines_of_a_guest_with_labels_only(tmp_path: Path) -> None:
    # as SecureBoost's: a guest without a feature has no model of its own (an intercept-only
    # "alone" row would be a constant scorer, AUC 0.5, and a meaningless "vs alone" gain)
    import pandas as pd

    bank = pd.read_csv(BANK.parent / "bank.csv")
    partner = pd.read_csv(BANK.parent / "partner.csv")
    bank[["customer_id", "default"]].to_csv(tmp_path / "labels.csv", index=False)
    partner.merge(bank.drop(columns="default"), on="customer_id").to_csv(tmp_path / "features.csv", index=False)
    cfg = tmp_path / "lr.toml"
    cfg.write_text(BANK.read_text().replace('data = "bank.csv"', 'data = "labels.csv"')
                   .replace('data = "partner.csv"', 'data = "features.csv"'))
    data, output = _simulate(tmp_path, cfg, "--epsilon", "0", "--insecure", "--backend", "plain", "--rounds", "1")
    base = data["baselines"]
    assert base["alone"] == {}
    assert base["guest"] == "the guest 'bank' holds the labels only (no feature): no model of its own"
    assert "bank alone" not in output and "vs the best silo alone" not in output
    assert "holds the labels only" in output and "vs central" in output


def test_the_cli_prints_the_final_clip_of_adaptive_clipping(tmp_path: Path) -> None:
    text = (HOSPITALS.parent / "silo_level.toml").read_text().replace('level = "silo"', 'level = "silo"\nadaptive_clip = true')
    cfg = tmp_path / "adaptive.toml"
    cfg.write_text(text)
    data, output = _simulate(tmp_path, cfg, "--backend", "plain", "--insecure", "--rounds", "2", "--no-baselines")
    clip = data["dp"]["adaptive_clip"]
    assert clip["initial_clip"] == 0.75 and clip["final_clip"] == data["dp"]["clip"]
    assert f"adaptive clipping: clip 0.75 -> {clip['final_clip']:.4g} after the last round" in output


def test_simulate_of_a_statistics_job_prints_what_fedsilo_stats_prints(tmp_path: Path) -> None:
    # the statistics, not an empty metrics table; --no-baselines is a no-op here (no baselines)
    stats = ROOT / "examples" / "federated_statistics" / "federation.toml"
    data, output = _simulate(tmp_path, stats, "--backend", "plain", "--insecure", "--no-baselines")
    assert data["task"] == "statistics" and "baselines" not in data
    lines = output.splitlines()
    assert "federated statistics" in lines[0] and "metric" not in output
    for col, queries in data["statistics"].items():
        for q in queries:
            assert any(col in line and f" {q} " in line for line in lines), (col, q)
    assert "epsilon spent: " in output
