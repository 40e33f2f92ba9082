"""The benchmark's JSON contract and the CLI commands, driven through typer's CliRunner."""
from __future__ import annotations

import json
import warnings

import pytest
import typer
from typer.testing import CliRunner

from fedsilo.crypto.bench import expand_backends, run_crypto_benchmark

ROW_KEYS = {
    "backend", "packed", "encrypt_s", "aggregate_s", "decrypt_s",
    "values_per_s", "bytes_per_value", "max_abs_error", "note",
}


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    from fedsilo.cli import app  # the real `fedsilo` command, with crypto.register() mounted

    return app


def test_json_contract_and_definitions():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_crypto_benchmark(size=120, parties=3, backends=["paillier", "ckks", "plain"],
                                      seed=1, paillier_sample=10, key_bits=1024, workers=1)
    assert set(result) == {"size", "parties", "results"}
    assert (result["size"], result["parties"]) == (120, 3)
    rows = result["results"]
    assert [(r["backend"], r["packed"]) for r in rows] == [
        ("numpy", False), ("paillier", False), ("paillier", True), ("ckks", False), ("plain", False),
    ]
    for row in rows:
        assert set(row) == ROW_KEYS
        total = row["encrypt_s"] + row["aggregate_s"] + row["decrypt_s"]
        assert row["values_per_s"] == pytest.approx(120 * 3 / total)
    unpacked, packed, ckks = rows[1], rows[2], rows[3]
    assert "10 of 120" in unpacked["note"]  # extrapolated, and says so
    assert "of 120" not in packed["note"]
    assert unpacked["max_abs_error"] <= 3 * 2.0**-33 and ckks["max_abs_error"] < 1e-6
    assert unpacked["bytes_per_value"] > 250 > 20 > packed["bytes_per_value"]
    json.dumps(result)


def test_variants():
    names = [(v.backend, v.packed) for v in expand_backends(["paillier-packed", "ckks", "numpy"], parties=4)]
    assert names == [("paillier", True), ("ckks", False)]


def test_cli_backends_lists_plugins(app):
    result = CliRunner().invoke(app, ["backends", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    names = {r["name"] for r in rows}
    assert {"plain", "paillier", "ckks", "plugin_plain"} <= names
    packed = next(r for r in rows if r["params"] == {"packed": True})
    assert packed["values_per_ciphertext"] > 1 and packed["exact"]
    # the confidentiality capability the config check uses, per row
    plain = next(r for r in rows if r["name"] == "plain")
    assert plain["secure"] is False and plain["security_bits"] == 0 and "does not encrypt" in plain["insecure_reason"]
    assert packed["secure"] is True and packed["security_bits"] == 112 and packed["insecure_reason"] is None
    table = CliRunner().invoke(app, ["backends"], terminal_width=200)
    assert table.exit_code == 0 and "approx" in table.output and "exact" in table.output


def test_cli_bench_crypto_writes_json(app, tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        app, ["bench", "crypto", "--size", "50", "--parties", "2", "--backends", "ckks,plain", "--json", str(out)],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [r["backend"] for r in data["results"]] == ["numpy", "ckks", "plain"]
    assert "sum of 2 silos x 50 values" in result.output


def test_cli_errors_are_one_clean_line(app):
    result = CliRunner().invoke(app, ["bench", "crypto", "--size", "10", "--backends", "cks"])
    assert result.exit_code == 2
    assert "did you mean 'ckks'" in result.output and "Traceback" not in result.output
