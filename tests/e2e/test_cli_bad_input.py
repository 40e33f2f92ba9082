"""Hostile input through the real `fedsilo` command: one clear `error:` line naming the file, key,
column or flag, exit code 2 for bad input, never a traceback, and nothing spent or written when
the input is refused before the run."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedsilo.cli import app

runner = CliRunner()

ROWS = 40

H_BASE = """[federation]
task = "horizontal"
{federation}
[crypto]
backend = "plain"
insecure = true
[training]
rounds = 1
{training}
[data]
label = "y"
{data}
[[silos]]
name = "a"
data = "a.csv"
[[silos]]
name = "b"
data = "{b}"
"""

S_BASE = """[federation]
task = "statistics"
[crypto]
backend = "plain"
insecure = true
{privacy}
[statistics]
{statistics}
[[silos]]
name = "a"
data = "a.csv"
[[silos]]
name = "b"
data = "b.csv"
"""

V_BASE = """[federation]
task = "vertical"
[crypto]
backend = "plain"
insecure = true
[training]
rounds = 1
[data]
label = "y"
id_column = "cid"
{data}
[[silos]]
name = "g"
data = "guest.csv"
role = "guest"
[[silos]]
name = "h"
data = "{host}"
role = "host"
[[silos]]
name = "arb"
role = "arbiter"
"""


def _rows(n: int = ROWS) -> str:
    return "id,x1,x2,y\n" + "".join(f"{i},{(i * 37 % 100) / 100},{(i * 11 % 100) / 100},{i % 2}\n" for i in range(n))


def _files(tmp: Path) -> None:
    (tmp / "a.csv").write_text(_rows())
    (tmp / "b.csv").write_text(_rows())
    (tmp / "empty.csv").write_text("")
    (tmp / "dupcols.csv").write_text("id,x1,x1,y\n" + "".join(f"{i},0.5,0.5,{i % 2}\n" for i in range(ROWS)))
    (tmp / "ragged.csv").write_text("id,x1,x2,y\n" + "".join(f"{i},0.5,0.5,{i % 2},extra\n" for i in range(ROWS)))
    (tmp / "header.csv").write_text("id,x1,x2,y\n")
    (tmp / "corrupt.parquet").write_text("not parquet")
    (tmp / "adir").mkdir()
    (tmp / "afile").write_text("")
    (tmp / "guest.csv").write_text("cid,g1,y\n" + "".join(f"c{i},{i / 60:.3f},{i % 2}\n" for i in range(60)))
    (tmp / "host.csv").write_text("cid,h1\n" + "".join(f"c{i},{i / 70:.3f}\n" for i in range(10, 70)))
    (tmp / "host_dup.csv").write_text("cid,h1\n" + "".join(f"c{i % 30},0.5\n" for i in range(10, 70)))
    (tmp / "host_str.csv").write_text("cid,h1\n" + "".join(f"c{i},abc\n" for i in range(10, 70)))


def h(federation: str = "", training: str = "", data: str = "", b: str = "b.csv", extra: str = "") -> str:
    return H_BASE.format(federation=federation, training=training, data=data, b=b) + extra


def s(statistics: str, privacy: str = "") -> str:
    return S_BASE.format(statistics=statistics, privacy=privacy)


def v(data: str = "", host: str = "host.csv") -> str:
    return V_BASE.format(data=data, host=host)


def secure(text: str, backend: str = "ckks") -> str:
    """A config without ``insecure = true``, on a real backend (``params`` lines may follow)."""
    return text.replace('backend = "plain"\ninsecure = true\n', f'backend = "{backend}"\n')


BUILTIN3 = ('[federation]\ntask = "horizontal"\n[data]\nsource = "sklearn:breast_cancer"\nlabel = "target"\n'
            'partition = {silos = 3}\n')
INSECURE_HINT = "set [crypto] insecure = true (or pass --insecure) to run it (tests and baselines only)"


# (id, config text or None, command line with {cfg} / {tmp} placeholders, exit code, fragments)
CASES = [
    # --- config values of the wrong type or out of range --------------------------------------
    ("rounds-bool", h(training="").replace("rounds = 1", "rounds = true"), ["simulate", "{cfg}"], 2,
     ["fed.toml", "key 'training.rounds'", "valid integer"]),
    ("seed-negative", h(federation="seed = -1"), ["simulate", "{cfg}"], 2, ["fed.toml", "key 'federation.seed'"]),
    ("seed-huge", h(federation="seed = 99999999999999999999"), ["simulate", "{cfg}"], 2,
     ["fed.toml", "key 'federation.seed'"]),
    ("timeout-inf", h(federation="round_timeout = inf"), ["simulate", "{cfg}"], 2,
     ["fed.toml", "key 'federation.round_timeout'", "finite"]),
    ("epsilon-inf", h(extra="[privacy]\nepsilon = inf\n"), ["simulate", "{cfg}"], 2,
     ["fed.toml", "key 'privacy.epsilon'", "finite"]),
    ("hidden-zero", h(extra='[model]\nkind = "mlp"\nhidden = [0]\n'), ["simulate", "{cfg}"], 2,
     ["fed.toml", "key 'model.hidden[0]'"]),
    ("bounds-lo-ge-hi", h(data="bounds = {x1 = [1.0, 1.0]}"), ["simulate", "{cfg}"], 2,
     ["fed.toml", "key 'data.bounds'", "'x1' = [1, 1]"]),
    ("bounds-unknown-column", h(data="bounds = {zzz = [0.0, 1.0]}"), ["simulate", "{cfg}"], 2,
     ["fed.toml: key 'data.bounds': ['zzz'] are not feature column(s)", "x1"]),
    ("backend-unknown-in-file", h().replace('backend = "plain"', 'backend = "nope"'), ["simulate", "{cfg}"], 2,
     ["fed.toml: key 'crypto.backend'", "unknown crypto backend 'nope'"]),
    ("backend-unknown-flag", h(), ["simulate", "{cfg}", "--backend", "nope"], 2,
     ["--backend: unknown crypto backend 'nope'"]),
    ("builtin-label-is-a-feature",
     '[federation]\ntask = "horizontal"\n[crypto]\nbackend = "plain"\ninsecure = true\n[data]\nsource = "sklearn:breast_cancer"\n'
     'label = "mean radius"\npartition = {silos = 2}\n', ["simulate", "{cfg}"], 2,
     ["label = 'mean radius' is a feature of sklearn:breast_cancer"]),
    ("config-is-a-directory", None, ["simulate", "{tmp}/adir"], 2, ["adir: is a directory, not a config file"]),
    # --- insecure settings need [crypto] insecure = true (refused before anything runs) --------
    ("plain-without-insecure", secure(h(), backend="plain"), ["simulate", "{cfg}", "--json", "{tmp}/r.json"], 2,
     ["fed.toml: key 'crypto.backend': 'plain' does not encrypt; " + INSECURE_HINT]),
    ("plugin-plain-without-insecure", secure(h(), backend="plugin_plain"), ["simulate", "{cfg}", "--json", "{tmp}/r.json"],
     2, ["fed.toml: key 'crypto.backend': 'plugin_plain' is a test backend that does not encrypt"]),
    ("paillier-1024-bit-key", secure(h(), backend="paillier").replace("[training]", "params = {key_bits = 1024}\n[training]"),
     ["simulate", "{cfg}", "--json", "{tmp}/r.json"], 2,
     ["fed.toml: key 'crypto.params.key_bits': 1024-bit Paillier keys give ~80-bit security", INSECURE_HINT]),
    ("paillier-bad-param-named-at-load", secure(h(), backend="paillier").replace("[training]", "params = {key_bits = 1000}\n[training]"),
     ["simulate", "{cfg}", "--json", "{tmp}/r.json"], 2,
     ["fed.toml: key 'crypto.params': paillier: key_bits must be one of"]),
    ("backend-plain-flag", BUILTIN3, ["simulate", "{cfg}", "--backend", "plain", "--json", "{tmp}/r.json"], 2,
     ["--backend plain: 'plain' does not encrypt; set [crypto] insecure = true in", "fed.toml (or pass --insecure) to run it"]),
    ("vertical-without-dp", secure(v()), ["simulate", "{cfg}", "--json", "{tmp}/r.json"], 2,
     ["fed.toml: key 'privacy': vertical training without [privacy]", "recovers the guest's labels", INSECURE_HINT]),
    ("vertical-dp-turned-off-by-flag", secure(v()) + "[privacy]\nepsilon = 8\n",
     ["simulate", "{cfg}", "--epsilon", "0", "--json", "{tmp}/r.json"], 2,
     ["--epsilon 0: vertical training without [privacy]", "insecure = true in"]),
    ("two-silos-without-dp", secure(h()), ["simulate", "{cfg}", "--json", "{tmp}/r.json"], 2,
     ["fed.toml: key 'silos': a horizontal job with exactly 2 silos lets each silo compute the other's",
      'silo-level DP ([privacy] level = "silo")', INSECURE_HINT]),
    ("two-silos-record-level-dp", secure(h(extra='[privacy]\nepsilon = 8\nlevel = "record"\n')),
     ["simulate", "{cfg}", "--json", "{tmp}/r.json"], 2, ["fed.toml: key 'silos': a horizontal job with exactly 2 silos"]),
    ("two-silos-by-flag", BUILTIN3, ["simulate", "{cfg}", "--silos", "2", "--json", "{tmp}/r.json"], 2,
     ["--silos 2: a horizontal job with exactly 2 silos"]),
    ("stats-two-silos", secure(s('columns = ["x1"]\nqueries = ["count"]'), backend="paillier"),
     ["stats", "{cfg}", "--json", "{tmp}/r.json"], 2,
     ["fed.toml: key 'silos': a statistics job with exactly 2 silos lets each silo compute the other's statistics"]),
    # --- federation shape -------------------------------------------------------------------
    ("min-silos-above-silo-count", h(federation="min_silos = 5"), ["simulate", "{cfg}"], 2,
     ["fed.toml: key 'federation.min_silos': 5", "only 2 silo(s)"]),
    ("single-silo", h().split('[[silos]]\nname = "b"')[0], ["simulate", "{cfg}"], 2,
     ["key 'federation.min_silos': 2", "only 1 silo(s)"]),
    ("test-set-one-class", h(data="test_fraction = 0.001"), ["simulate", "{cfg}"], 2,
     ["holds out none of its", "raise test_fraction"]),
    # --- silo data files ----------------------------------------------------------------------
    ("data-is-a-directory", h(b="adir"), ["simulate", "{cfg}"], 2, ["silo 'b'", "adir is a directory"]),
    ("csv-empty", h(b="empty.csv"), ["simulate", "{cfg}"], 2, ["silo 'b'", "empty.csv is empty"]),
    ("csv-repeated-column", h(b="dupcols.csv"), ["simulate", "{cfg}"], 2,
     ["dupcols.csv", "['x1'] appear more than once"]),
    ("csv-ragged-rows", h(b="ragged.csv"), ["simulate", "{cfg}"], 2,
     ["ragged.csv", "more fields than the header's 4 columns"]),
    ("parquet-unreadable", h(b="corrupt.parquet"), ["simulate", "{cfg}"], 2,
     ["silo 'b'", "cannot read Parquet file", "corrupt.parquet"]),
    # --- statistics -------------------------------------------------------------------------
    ("stats-range-not-a-column", s('columns = ["x1"]\nqueries = ["count"]\nrange = {zz = [0.0, 1.0]}'),
     ["stats", "{cfg}"], 2, ["fed.toml", "statistics.range has ['zz']"]),
    ("stats-range-lo-ge-hi", s('columns = ["x1"]\nrange = {x1 = [1.0, 0.0]}'), ["stats", "{cfg}"], 2,
     ["fed.toml", "key 'statistics.range'", "'x1' = [1, 0]"]),
    ("stats-column-twice", s('columns = ["x1", "x1"]\nqueries = ["count"]'), ["stats", "{cfg}"], 2,
     ["fed.toml", "statistics.columns lists ['x1'] more than once"]),
    ("stats-dp-sum-without-range", s('columns = ["x1"]\nqueries = ["sum"]', privacy="[privacy]\nepsilon = 1"),
     ["stats", "{cfg}"], 2, ["fed.toml", "statistics.range needs [lo, hi] for ['x1']"]),
    # --- vertical -----------------------------------------------------------------------------
    ("vertical-duplicate-ids-name-file", v(host="host_dup.csv"), ["simulate", "{cfg}"], 2,
     ["host_dup.csv: column 'cid' has duplicate IDs (the first at rows"]),
    ("vertical-non-numeric-names-file-row", v(host="host_str.csv"), ["simulate", "{cfg}"], 2,
     ["host_str.csv: column 'h1' is not numeric (row 2 of the file"]),
    ("vertical-bounds-unknown-column", v(data="bounds = {zz = [0.0, 1.0]}"), ["simulate", "{cfg}"], 2,
     ["key 'data.bounds': ['zz'] are not feature column(s)"]),
    # --- output paths and ledgers (refused before anything runs) ------------------------------
    ("simulate-json-under-a-file", h(), ["simulate", "{cfg}", "--json", "{tmp}/afile/r.json"], 2,
     ["--json", "afile is a file, not a directory"]),
    ("simulate-json-is-a-directory", h(), ["simulate", "{cfg}", "--json", "{tmp}/adir"], 2,
     ["--json", "adir: is a directory"]),
    ("stats-json-under-a-file", s('columns = ["x1"]\nqueries = ["count"]'),
     ["stats", "{cfg}", "--json", "{tmp}/afile/r.json"], 2, ["--json", "afile is a file, not a directory"]),
    ("ledger-dir-is-a-file", h(), ["simulate", "{cfg}", "--ledger-dir", "{tmp}/afile"], 2,
     ["ledger directory", "afile is a file, not a directory"]),
    # --- psi ----------------------------------------------------------------------------------
    ("psi-input-is-a-directory", None, ["psi", "--left", "{tmp}/adir", "--right", "{tmp}/a.csv", "--column", "id",
                                        "--out", "{tmp}/o.csv"], 2, ["adir is a directory"]),
    ("psi-ragged-rows", None, ["psi", "--left", "{tmp}/ragged.csv", "--right", "{tmp}/a.csv", "--column", "id",
                               "--out", "{tmp}/o.csv"], 2, ["ragged.csv", "more fields than the header"]),
    ("psi-repeated-column", None, ["psi", "--left", "{tmp}/dupcols.csv", "--right", "{tmp}/a.csv", "--column", "x1",
                                   "--out", "{tmp}/o.csv"], 2, ["dupcols.csv", "['x1'] appear more than once"]),
    ("psi-header-only", None, ["psi", "--left", "{tmp}/header.csv", "--right", "{tmp}/a.csv", "--column", "id",
                               "--out", "{tmp}/o.csv"], 2, ["header.csv", "column 'id' has no IDs"]),
    ("psi-out-is-a-directory", None, ["psi", "--left", "{tmp}/a.csv", "--right", "{tmp}/b.csv", "--column", "id",
                                      "--out", "{tmp}/adir"], 2, ["--out", "adir: is a directory"]),
    ("psi-json-under-a-file", None, ["psi", "--left", "{tmp}/a.csv", "--right", "{tmp}/b.csv", "--column", "id",
                                     "--out", "{tmp}/o.csv", "--json", "{tmp}/afile/s.json"], 2,
     ["--json", "afile is a file, not a directory"]),
    # --- bench crypto ---------------------------------------------------------------------------
    ("bench-no-backend", None, ["bench", "crypto", "--size", "4", "--parties", "2", "--backends", ","], 2,
     ["--backends ',' names no backend"]),
    ("bench-unknown-backend-before-running", None,
     ["bench", "crypto", "--size", "4", "--parties", "2", "--backends", "plain,nope"], 2,
     ["--backends: unknown crypto backend 'nope'"]),
    ("bench-json-under-a-file", None,
     ["bench", "crypto", "--size", "4", "--parties", "2", "--backends", "plain", "--json", "{tmp}/afile/b.json"], 2,
     ["--json", "afile is a file, not a directory"]),
    ("bench-json-is-a-directory", None,
     ["bench", "crypto", "--size", "4", "--parties", "2", "--backends", "plain", "--json", "{tmp}/adir"], 2,
     ["--json", "adir: is a directory"]),
    ("bench-size-beyond-memory", None,
     ["bench", "crypto", "--size", "100000000000", "--parties", "2", "--backends", "plain"], 2,
     ["--size 100000000000 x --parties 2 needs at least"]),
    ("bench-negative-seed", None, ["bench", "crypto", "--size", "4", "--backends", "plain", "--seed", "-1"], 2,
     ["--seed"]),
    ("simulate-negative-seed-flag", h(), ["simulate", "{cfg}", "--seed", "-1"], 2, ["--seed"]),
]


@pytest.mark.parametrize(("config", "args", "code", "fragments"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_error(tmp_path: Path, config: str | None, args: list[str], code: int,
                                      fragments: list[str]) -> None:
    _files(tmp_path)
    cfg = tmp_path / "fed.toml"
    if config is not None:
        cfg.write_text(config)
    ledgers = tmp_path / "ledgers"
    argv = [a.format(cfg=cfg, tmp=tmp_path) for a in args]
    if argv[0] in ("simulate", "stats") and "--ledger-dir" not in argv:
        argv += ["--ledger-dir", str(ledgers)]
    res = runner.invoke(app, argv)
    out = res.output
    assert res.exit_code == code, out
    assert "Traceback" not in out, out
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    for fragment in fragments:
        assert fragment in out, out
    if "--json" in argv or "--ledger-dir" in args:
        assert not ledgers.exists(), "refused input must not have run the job"


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["simulate", "/proc/self/mem"], "/proc/self/mem: cannot read the config file"),
        (["psi", "--left", "/proc/self/mem", "--right", "{tmp}/a.csv", "--column", "id", "--cardinality-only"],
         "cannot read /proc/self/mem"),
    ],
    ids=["config-unreadable", "psi-input-unreadable"],
)
def test_unreadable_files_are_one_line(tmp_path: Path, args: list[str], fragment: str) -> None:
    # chmod 000 does not stop root; a file whose read fails with an OS error does
    _files(tmp_path)
    res = runner.invoke(app, [a.format(tmp=tmp_path) for a in args])
    assert res.exit_code == 2, res.output
    assert fragment in res.output and "Traceback" not in res.output


@pytest.mark.parametrize(("plot", "fragment"), [("x.xyz", "unknown image format 'xyz'"), ("x", "no file extension"),
                                                ("adir", "it is a directory")], ids=["bad-format", "no-ext", "dir"])
def test_privacy_report_plot_path_checked_first(tmp_path: Path, plot: str, fragment: str) -> None:
    _files(tmp_path)
    cfg = tmp_path / "fed.toml"
    cfg.write_text(s('columns = ["x1"]\nqueries = ["count"]', privacy="[privacy]\nepsilon = 1"))
    assert runner.invoke(app, ["stats", str(cfg), "--ledger-dir", str(tmp_path / "l")]).exit_code == 0
    res = runner.invoke(app, ["privacy", "report", "--ledger", str(tmp_path / "l" / "a.sqlite"),
                              "--plot", str(tmp_path / plot)])
    assert res.exit_code == 2, res.output
    assert fragment in res.output and "Traceback" not in res.output


def test_undefined_metrics_are_null_in_json_and_notes_keep_brackets(tmp_path: Path) -> None:
    # twelve aligned customers (fewer training rows than a party's gradient coordinates would be
    # refused); strict JSON has no NaN: an undefined metric is written as null
    _files(tmp_path)
    (tmp_path / "host_small.csv").write_text("cid,h1\n" + "".join(f"c{i},{i / 12:.3f}\n" for i in range(12)))
    (tmp_path / "guest_small.csv").write_text("cid,g1,y\n" + "".join(f"c{i},{i / 12:.3f},{i % 2}\n" for i in range(12)))
    cfg = tmp_path / "fed.toml"
    cfg.write_text(v(host="host_small.csv").replace("guest.csv", "guest_small.csv"))
    out = tmp_path / "r.json"
    res = runner.invoke(app, ["simulate", str(cfg), "--json", str(out), "--ledger-dir", str(tmp_path / "l"), "-q"])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert data["final"]["auc"] is None or math.isfinite(data["final"]["auc"])
    from fedsilo.cli import to_json  # an undefined metric (one class held out) is written as null

    assert json.loads(to_json({"auc": float("nan"), "ks": float("inf")})) == {"auc": None, "ks": None}
    # a horizontal run without bounds prints the note verbatim (rich must not eat "[data]")
    cfg.write_text(h())
    res = runner.invoke(app, ["simulate", str(cfg), "--ledger-dir", str(tmp_path / "l2"), "-q"])
    assert res.exit_code == 0, res.output
    assert "add [data] bounds" in " ".join(res.output.split())
