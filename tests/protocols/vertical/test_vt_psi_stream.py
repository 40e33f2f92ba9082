"""Streamed PSI: chunked messages, compact ID tables, exact matching, progress, bad ID files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fedsilo.cli.psi import read_id_csv, register
from fedsilo.errors import DataError, JobAbortedError, ProtocolError
from fedsilo.protocols import codec, psi
from fedsilo.protocols.channel import InProcessHub, run_parties
from fedsilo.protocols.psi import DOUBLE_BYTES, POINT_BYTES, IdTable, psi_in_process, psi_party

ids_st = st.lists(st.text(min_size=1, max_size=5), max_size=30, unique=True)


def _pair(a, b, *, chunk_a=psi.CHUNK, chunk_b=psi.CHUNK, **kw):
    hub = InProcessHub("psi-stream", ["g", "h"])
    out = run_parties(
        hub,
        {
            "g": lambda ch: psi_party(ch, peer="h", ids=a, rng=np.random.default_rng(1), chunk=chunk_a, **kw),
            "h": lambda ch: psi_party(ch, peer="g", ids=b, rng=np.random.default_rng(2), chunk=chunk_b, **kw),
        },
    )
    return hub, out["g"], out["h"]


@settings(max_examples=40, deadline=None)
@given(ids_st, ids_st, st.integers(1, 7), st.integers(1, 7))
def test_streamed_psi_equals_plain_intersection(a: list[str], b: list[str], chunk_a: int, chunk_b: int) -> None:
    hub, g, h = _pair(a, b, chunk_a=chunk_a, chunk_b=chunk_b)
    want = sorted(set(a) & set(b))
    assert list(g.ids) == list(h.ids) == want
    assert [a[i] for i in g.positions] == want and [b[i] for i in h.positions] == want
    assert (g.size, g.local_size, g.peer_size) == (len(want), len(a), len(b))
    # chunks smaller than the sets really are separate messages of at most `chunk` points
    masked = [codec.decode(e.body)["points"] for e in hub.received_by("h") if e.kind == "psi/masked"]
    assert sum(len(p) for p in masked) == POINT_BYTES * len(a)
    assert all(len(p) <= POINT_BYTES * chunk_a for p in masked)
    assert len(masked) == max(1, -(-len(a) // chunk_a))


@settings(max_examples=20, deadline=None)
@given(ids_st, st.lists(st.text(min_size=1, max_size=5), max_size=3, unique=True), st.integers(1, 4))
def test_unbalanced_and_cardinality_only(a: list[str], b: list[str], chunk: int) -> None:
    hub, g, h = _pair(a, b, chunk_a=chunk, chunk_b=chunk, cardinality_only=True)
    assert g.size == h.size == len(set(a) & set(b))
    assert g.ids == h.ids == () and g.positions.size == 0
    # what each side sends scales with its own set: n x 32 out, m x 16 back
    doubles = [codec.decode(e.body)["points"] for e in hub.received_by("g") if e.kind == "psi/double"]
    assert sum(len(p) for p in doubles) == DOUBLE_BYTES * len(a)


def test_empty_sets_on_either_side() -> None:
    for a, b in (([], []), ([], ["x"]), (["x", "y"], [])):
        _, g, h = _pair(a, b, chunk_a=1, chunk_b=1)
        assert g.ids == h.ids == () and g.size == 0 and (g.local_size, g.peer_size) == (len(a), len(b))


def test_members_is_exact_when_64_bit_prefixes_collide() -> None:
    rng = np.random.default_rng(0)
    other = rng.integers(0, 256, size=(50, 16), dtype=np.uint8)
    other[10:14, :8] = other[9, :8]  # five rows share one 64-bit prefix
    own = np.concatenate([other[[12, 3]], rng.integers(0, 256, size=(3, 16), dtype=np.uint8)])
    own[2, :8] = other[9, :8]  # same prefix as the run, different rest: not a member
    assert psi._members(own, other).tolist() == [True, True, False, False, False]
    assert psi._members(own, other[:0]).tolist() == [False] * 5


def test_id_table_refuses_duplicates_and_empty_ids_naming_the_source() -> None:
    with pytest.raises(DataError, match=r"bank\.csv: column 'id' has duplicate IDs \(the first at rows 1 and 3 of the table\)"):
        IdTable.from_ids(["a", "b", "a", "c", "a", "c"], source="bank.csv")
    with pytest.raises(DataError, match="empty IDs"):
        IdTable.from_ids(["a", ""], source="f")
    with pytest.raises(DataError, match="must be strings"):
        IdTable.from_ids(["a", 3], source="f")  # type: ignore[list-item]


def test_id_table_from_chunks_numbers_rows_across_chunks_and_sorts_like_python() -> None:
    with pytest.raises(DataError, match=r"f: column 'id' has 1 missing IDs \(first at row 5 of the file\)"):
        IdTable.from_chunks([pd.Series(["a", "b"]), pd.Series(["c", None])], source="f", column="id")
    with pytest.raises(DataError, match="duplicate IDs"):  # a duplicate in a later chunk
        IdTable.from_chunks([pd.Series(["a", "b"]), pd.Series(["c", "a"])], source="f", column="id")
    words = ["b", "a", "ä", "Z", "日本", "a b", "ab", "\u00e9", "e\u0301", "10", "9"]
    t = IdTable.from_chunks([pd.Series(words[:4]), pd.Series(words[4:])], source="f", column="id")
    assert t.take(t.sort_rows(np.arange(len(words)))) == sorted(words)


def test_progress_reaches_every_curve_operation() -> None:
    a = [f"c{i}" for i in range(700)]
    b = [f"c{i}" for i in range(300, 500)]
    events: list[dict] = []
    run = psi_in_process(a, b, chunk=64, progress=events.append)
    assert run.left.size == 200
    done = [e["done"] for e in events]
    assert done == sorted(done) and events[-1]["done"] == events[-1]["total"] == 2 * (700 + 200)


def test_peer_sending_more_points_than_announced_is_refused() -> None:
    hub = InProcessHub("psi-bad", ["g", "h"])

    def liar(ch):
        ch.send("g", psi.MASKED, {"points": bytes(POINT_BYTES * 2), "n": 1, "card": False}, round=0)
        ch.recv("g", psi.MASKED, round=0, timeout=30)

    with pytest.raises((ProtocolError, JobAbortedError), match="more than the 1 masked IDs"):
        run_parties(hub, {"g": lambda ch: psi_party(ch, peer="h", ids=["1"], rng=np.random.default_rng(0)),
                          "h": liar})


# ------------------------------------------------------------------------------ ID files


def test_read_id_csv_streams_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "ids.csv"
    pd.DataFrame({"x": range(10), "id": [f"{i:03d}" for i in range(10)]}).to_csv(path, index=False)
    table = read_id_csv(path, "id", chunk_rows=3)
    assert table.take(np.arange(10)) == [f"{i:03d}" for i in range(10)]  # leading zeros kept
    dup = tmp_path / "dup.csv"
    dup.write_text("id\n1\n2\n3\n4\n2\n")
    with pytest.raises(DataError, match=r"dup\.csv: column 'id' has duplicate IDs \(the first at rows 3 and 6 of the file\)"):
        read_id_csv(dup, "id", chunk_rows=2)


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:  # keep `psi` a named sub-command
        """test app"""

    return app


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("id\n1\n2,3\n", "Expected 1 fields in line 3, saw 2"),
        ("id\n", "has no IDs"),
        ("", "is empty"),
        ("id,x\n1,a\n,b\n2,c\n", "missing IDs (first at row 3 of the file)"),
        (b"id\n\xff\xfe1\n", "UTF-8"),
    ],
)
def test_malformed_id_file_is_one_line_and_exit_code_2(app, tmp_path: Path, content, message: str) -> None:
    bad, good = tmp_path / "bad.csv", tmp_path / "good.csv"
    if isinstance(content, bytes):
        bad.write_bytes(content)
    else:
        bad.write_text(content)
    good.write_text("id\n1\n2\n")
    res = CliRunner().invoke(app, ["psi", "--left", str(bad), "--right", str(good), "--column", "id",
                                   "--out", str(tmp_path / "o.csv"), "--quiet"])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.output
    assert "bad.csv" in lines[0]


def test_cli_writes_large_output_in_agreed_order_with_progress_bar(app, tmp_path: Path) -> None:
    left, right, out = tmp_path / "l.csv", tmp_path / "r.csv", tmp_path / "o.csv"
    pd.DataFrame({"id": [f"k,{i}" for i in range(2500)]}).to_csv(left, index=False)  # IDs that need quoting
    pd.DataFrame({"id": [f"k,{i}" for i in range(2000, 4000)][::-1]}).to_csv(right, index=False)
    res = CliRunner().invoke(app, ["psi", "--left", str(left), "--right", str(right), "--column", "id",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "intersection 500" in res.output
    got = pd.read_csv(out, dtype=str)["id"].tolist()
    assert got == sorted(f"k,{i}" for i in range(2000, 2500))
