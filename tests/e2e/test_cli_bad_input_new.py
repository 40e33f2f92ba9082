"""Bad input for the new config keys (adaptive clipping, ``model.trainer``, ``training.fill_slots``,
SecureBoost ``objective`` / ``missing`` / ``guest_trees``) through ``fedsilo simulate``: one clear
line naming the key, file or column, exit code 2, no traceback and nothing charged to a ledger."""
from __future__ import annotations

import re
import shutil
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedsilo.cli import app

ROOT = Path(__file__).resolve().parents[2]
HORIZONTAL = ROOT / "examples" / "hospitals_horizontal" / "silo_level.toml"
VERTICAL = ROOT / "examples" / "bank_vertical" / "federation.toml"
SECUREBOOST = ROOT / "examples" / "bank_vertical" / "secureboost.toml"
runner = CliRunner()


def _config(tmp: Path, base: Path, *, add: dict[str, str] | None = None, drop: tuple[str, ...] = (),
            guest_labels_only: bool = False) -> Path:
    """A copy of example ``base`` (and its CSVs) in ``tmp``: ``add`` maps a section to TOML lines put
    right under its header, ``drop`` removes ``key = ...`` lines."""
    text = base.read_text()
    for key in drop:
        text = re.sub(rf"(?m)^{re.escape(key)}\s*=.*\n", "", text)
    for section, lines in (add or {}).items():
        header = f"[{section}]\n"
        assert header in text, section
        text = text.replace(header, header + lines + "\n", 1)
    for csv in base.parent.glob("*.csv"):
        shutil.copy(csv, tmp / csv.name)
    if guest_labels_only:
        bank = tmp / "bank.csv"
        rows = [line.split(",")[:2] for line in bank.read_text().splitlines()]
        bank.write_text("\n".join(",".join(r) for r in rows) + "\n")
        for col in ("age", "log_income", "debt_ratio", "credit_lines", "late_payments_30d", "months_customer"):
            text = re.sub(rf"(?m)^{col}\s*=.*\n", "", text)
    path = tmp / "cfg.toml"
    path.write_text(text)
    return path


def _charges(ledgers: Path) -> int:
    n = 0
    for db in ledgers.glob("*.sqlite"):
        with sqlite3.connect(db) as c:
            n += c.execute("select count(*) from entries where kind in ('reserve', 'commit')").fetchone()[0]
    return n


def _refused(tmp: Path, cfg: Path, *args: str) -> str:
    ledgers = tmp / "ledgers"
    res = runner.invoke(app, ["simulate", str(cfg), "--ledger-dir", str(ledgers), "-q", "--no-baselines", *args])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert _charges(ledgers) == 0
    return res.output


ADAPTIVE = "adaptive_clip = true"
SMALL = "rounds = 1\nlocal_epochs = 1"


@pytest.mark.parametrize(("privacy", "needle"), [
    (f"{ADAPTIVE}\ntarget_quantile = 1.0", "privacy.target_quantile"),
    (f"{ADAPTIVE}\ntarget_quantile = 0.0", "privacy.target_quantile"),
    (f"{ADAPTIVE}\ntarget_quantile = nan", "privacy.target_quantile"),
    (f"{ADAPTIVE}\nclip_lr = 0.0", "privacy.clip_lr"),
    (f"{ADAPTIVE}\nclip_lr = 11.0", "privacy.clip_lr"),
    (f"{ADAPTIVE}\nclip_lr = inf", "privacy.clip_lr"),
    (f"{ADAPTIVE}\ncount_noise = -1.0", "privacy.count_noise"),
    (f"{ADAPTIVE}\ncount_noise = 0.05", "privacy.count_noise"),
    ('adaptive_clip = "yes"', "privacy.adaptive_clip"),
    ("target_quantile = 0.3", "privacy.target_quantile"),
    ("count_noise = 3.0", "privacy.count_noise"),
    ("clip_lr = 0.3", "privacy.clip_lr"),
])
def test_bad_adaptive_clip_keys_are_refused_naming_the_key(tmp_path: Path, privacy: str, needle: str) -> None:
    out = _refused(tmp_path, _config(tmp_path, HORIZONTAL, add={"privacy": privacy, "training": SMALL}, drop=("rounds", "local_epochs")))
    assert needle in out


def test_adaptive_clip_is_refused_at_record_level_and_with_secagg(tmp_path: Path) -> None:
    record = _config(tmp_path, HORIZONTAL, add={"privacy": ADAPTIVE}, drop=("level", "colluders"))
    record.write_text(record.read_text().replace("[privacy]\n", '[privacy]\nlevel = "record"\n', 1))
    assert "privacy.adaptive_clip" in _refused(tmp_path, record)
    assert "privacy.adaptive_clip" in _refused(tmp_path, _config(tmp_path, HORIZONTAL, add={"privacy": ADAPTIVE}),
                                               "--backend", "secagg")


@pytest.mark.parametrize("trainer", ["no_such_module_r2xyz:fit", "fedsilo.protocols.horizontal.trainer:no_such_fn", 'trainer = 5'])
def test_unresolvable_trainer_is_refused_naming_model_trainer(tmp_path: Path, trainer: str) -> None:
    line = trainer if trainer.startswith("trainer") else f'trainer = "{trainer}"'
    out = _refused(tmp_path, _config(tmp_path, HORIZONTAL, add={"model": line}))
    assert "model.trainer" in out


@pytest.mark.parametrize(("add", "drop", "args", "needle"), [
    ({"training": "fill_slots = true"}, (), (), "training.batch_size"),
    ({"training": "fill_slots = true"}, ("batch_size",), ("--backend", "paillier"), "training.fill_slots"),
    ({"training": 'fill_slots = "yes"'}, ("batch_size",), (), "training.fill_slots"),
])
def test_bad_fill_slots_is_refused(tmp_path: Path, add: dict, drop: tuple, args: tuple, needle: str) -> None:
    assert needle in _refused(tmp_path, _config(tmp_path, VERTICAL, add=add, drop=drop), *args)


def test_fill_slots_is_refused_by_a_horizontal_job(tmp_path: Path) -> None:
    assert "training.fill_slots" in _refused(tmp_path, _config(tmp_path, HORIZONTAL, add={"training": "fill_slots = true"}))


@pytest.mark.parametrize(("model", "needle"), [
    ('objective = "hinge"', "model.objective"),
    ('missing = "zero"', "model.missing"),
    ("guest_trees = -1", "model.guest_trees"),
    ("guest_trees = 1.5", "model.guest_trees"),
    ("guest_trees = 11", "model.guest_trees"),
    ("guest_trees = 10", "model.guest_trees"),  # every tree guest-only under DP: nothing to account for
])
def test_bad_secureboost_model_keys_are_refused(tmp_path: Path, model: str, needle: str) -> None:
    key = model.split(" ")[0]
    assert needle in _refused(tmp_path, _config(tmp_path, SECUREBOOST, add={"model": model}, drop=(key,)))


def test_guest_trees_with_a_labels_only_guest_is_refused(tmp_path: Path) -> None:
    out = _refused(tmp_path, _config(tmp_path, SECUREBOOST, guest_labels_only=True))
    assert "model.guest_trees" in out and "bank" in out


@pytest.mark.parametrize(("labels", "needle"), [
    (lambda k, v: "abc" if k == 3 else v, "'default'"),
    (lambda k, v: "inf" if k == 3 else v, "'default'"),
])
def test_bad_regression_labels_are_refused_naming_the_column(tmp_path: Path, labels, needle: str) -> None:
    cfg = _config(tmp_path, SECUREBOOST, add={"model": 'objective = "squared_error"'}, drop=("objective",))
    bank = tmp_path / "bank.csv"
    lines = bank.read_text().splitlines()
    head, rows = lines[0], [line.split(",") for line in lines[1:]]
    for k, r in enumerate(rows):
        r[1] = labels(k, r[1])
    bank.write_text("\n".join([head] + [",".join(r) for r in rows]) + "\n")
    out = _refused(tmp_path, cfg)
    assert needle in out and "bank.csv" in out


def test_log_loss_with_three_label_values_is_refused(tmp_path: Path) -> None:
    cfg = _config(tmp_path, SECUREBOOST)
    bank = tmp_path / "bank.csv"
    lines = bank.read_text().splitlines()
    rows = [line.split(",") for line in lines[1:]]
    for k, r in enumerate(rows):
        r[1] = str(k % 3)
    bank.write_text("\n".join([lines[0]] + [",".join(r) for r in rows]) + "\n")
    assert "'default'" in _refused(tmp_path, cfg)


def _rewrite_column(path: Path, col: int, value) -> None:
    """Replace column ``col`` of every data row of the CSV ``path`` by ``value(k, old)``."""
    lines = path.read_text().splitlines()
    rows = [line.split(",") for line in lines[1:]]
    for k, r in enumerate(rows):
        r[col] = value(k, r[col])
    path.write_text("\n".join([lines[0]] + [",".join(r) for r in rows]) + "\n")


def test_low_overlap_warning_is_one_clean_line_naming_the_real_id_column(tmp_path: Path) -> None:
    cfg = _config(tmp_path, VERTICAL)
    _rewrite_column(tmp_path / "partner.csv", 0, lambda k, v: f"X{v}")  # no ID in common with the bank
    out = _refused(tmp_path, cfg, "--rounds", "1")
    warned = [line for line in out.splitlines() if "shares less than" in line]
    assert warned and all(line.startswith("warning: PSI with ") for line in warned), out
    assert all("column 'customer_id'" in line for line in warned)
    assert "column 'id'" not in out
    # Python's default format would add the warn call's file, line and source line
    assert "psi.py" not in out and "LowOverlapWarning" not in out and "_finish(" not in out
    assert "error: " in out and "share no IDs" in out


def test_duplicate_ids_name_the_file_lines_and_no_count(tmp_path: Path) -> None:
    cfg = _config(tmp_path, VERTICAL)
    ids = (tmp_path / "partner.csv").read_text().splitlines()[1].split(",")[0]
    _rewrite_column(tmp_path / "partner.csv", 0, lambda k, v: ids if k in (1, 4, 5) else v)  # data rows 0, 1, 4, 5
    out = _refused(tmp_path, cfg, "--rounds", "1")
    assert "partner.csv: column 'customer_id' has duplicate IDs (the first at rows 2 and 3 of the file); " \
        "IDs must be unique" in " ".join(out.split())
    assert ids not in out


def test_lr_label_with_more_than_two_values_names_the_column_not_the_values(tmp_path: Path) -> None:
    cfg = _config(tmp_path, VERTICAL)
    _rewrite_column(tmp_path / "bank.csv", 1, lambda k, v: "secret_label" if k == 3 else "7" if k == 5 else v)
    out = " ".join(_refused(tmp_path, cfg, "--rounds", "1").split())
    assert "bank.csv: label column 'default' holds more than two distinct values; logistic regression needs " \
        "exactly two classes" in out
    assert "secret_label" not in out and "'7'" not in out and "found" not in out


def test_cli_shows_fedsilo_warnings_in_one_line_and_other_warnings_as_python_does(capsys) -> None:
    import warnings

    from fedsilo.cli import cli_errors
    from fedsilo.protocols.psi import LowOverlapWarning

    @cli_errors
    def command() -> None:
        warnings.warn("ours:\n  two lines", LowOverlapWarning, stacklevel=1)
        warnings.warn("theirs", UserWarning, stacklevel=1)

    before: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *rest: before.append(str(message))  # whatever was there
        command()
        assert before == ["theirs"]  # other libraries' warnings: to the hook that was there
        command.__wrapped__()  # the hook ends with the command: ours go to the previous hook again
    assert before == ["theirs", "ours:\n  two lines", "theirs"]
    err = capsys.readouterr().err
    assert err == "warning: ours: two lines\n"  # one line, no file, line number or source line
