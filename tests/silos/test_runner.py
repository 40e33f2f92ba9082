"""The job runner: tasks are registered, every key is checked against what its task reads, and
every party owns its data, its ledger and its randomness."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedsilo.errors import ConfigError, DataError
from fedsilo.protocols.channel import Channel
from fedsilo.protocols.horizontal.secure_aggregation import (
    Contribution,
    aggregator_key_ceremony,
    aggregator_secure_sum,
    silo_key_ceremony,
    silo_secure_sum,
)
from fedsilo.crypto.registry import get_backend
from fedsilo.silos.config import JobConfig, parse_config
from fedsilo.silos.data import DataSource, FrameSource
from fedsilo.silos.runner import TASKS, JobContext, JobRun, Party, Task, register_task, run_job, sources_for
from fedsilo.silos.tasks.horizontal import HORIZONTAL

HZ = {
    "federation": {"name": "h", "task": "horizontal", "seed": 3},
    "crypto": {"backend": "plain", "insecure": True},
    "data": {"source": "sklearn:breast_cancer", "label": "target", "partition": {"kind": "iid", "silos": 3}},
    "training": {"rounds": 1},
}


def _vertical(tmp_path: Path, **sections: Any) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    ids = [f"c{i}" for i in range(80)]
    pd.DataFrame({"cid": ids, "g1": rng.random(80), "y": rng.integers(0, 2, 80)}).to_csv(tmp_path / "g.csv", index=False)
    pd.DataFrame({"cid": ids, "h1": rng.random(80)}).to_csv(tmp_path / "h.csv", index=False)
    return {
        "federation": {"name": "v", "task": "vertical"},
        "crypto": {"backend": "plain", "insecure": True},
        "privacy": {"epsilon": 8.0},
        "data": {"label": "y", "id_column": "cid", "bounds": {"g1": [0.0, 1.0], "h1": [0.0, 1.0]}},
        "training": {"rounds": 1, "batch_size": 16},
        "silos": [{"name": "g", "data": "g.csv", "role": "guest"}, {"name": "h", "data": "h.csv", "role": "host"}],
        **sections,
    }


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        # a vertical job trains hetero LR: any other model kind is an error, not silently LR
        ({"model": {"kind": "banana_forest"}}, "key 'model.kind': a vertical job trains hetero logistic regression"),
        ({"model": {"kind": "logistic", "hidden": [8]}}, "key 'model.hidden' is not read by a 'vertical' job"),
        ({"training": {"rounds": 1, "strategy": "fedprox"}}, "key 'training.strategy' is not read by a 'vertical' job"),
        ({"training": {"rounds": 1, "local_epochs": 2}}, "key 'training.local_epochs' is not read"),
        ({"statistics": {"columns": ["g1"]}}, "[statistics] is not read by a 'vertical' job"),
        ({"data": {"label": "y", "id_column": "cid", "partition": {"silos": 2}}}, "key 'data.partition' is not read"),
    ],
)
def test_vertical_keys_are_checked_against_what_the_task_reads(tmp_path: Path, patch: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_vertical(tmp_path, **patch), source="v.toml", base_dir=tmp_path)
    assert expected in str(err.value) and "v.toml" in str(err.value)


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"privacy": {"epsilon": 8.0, "logit_clip": 1.0}}, "key 'privacy.logit_clip' is not read by a 'horizontal' job"),
        ({"statistics": {"columns": ["x"]}}, "[statistics] is not read by a 'horizontal' job"),
        ({"silos": [{"name": "a", "role": "guest"}, {"name": "b"}, {"name": "c"}]},
         "key 'silos[0].role': 'guest' is not a role of a 'horizontal' job"),
        ({"federation": {"task": "horizonal"}}, "unknown task 'horizonal'; did you mean 'horizontal'?"),
        # keys horizontal training would silently ignore
        ({"training": {"rounds": 1, "l2": 0.1}}, "key 'training.l2' is not read by a 'horizontal' job"),
        ({"training": {"rounds": 1, "early_stopping_tol": 0.1}}, "key 'training.early_stopping_tol' is not read"),
        ({"model": {"kind": "logistic", "hidden": [8]}}, "key 'model.hidden' is not read by a 'horizontal' job"),
        ({"model": {"kind": "mlp", "params": {"width": 3}}}, "key 'model.params' is not read by a 'horizontal' job"),
    ],
)
def test_horizontal_keys_are_checked_against_what_the_task_reads(patch: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        parse_config({**HZ, **patch}, source="h.toml")
    assert expected in str(err.value)


def test_statistics_refuses_training_and_model_keys() -> None:
    base = {
        "federation": {"task": "statistics"},
        "crypto": {"backend": "plain", "insecure": True},
        "statistics": {"columns": ["mean radius"], "queries": ["count"]},
        "data": {"source": "sklearn:breast_cancer", "label": "target", "partition": {"kind": "iid", "silos": 3}},
    }
    parse_config(base)
    with pytest.raises(ConfigError, match=r"\[training\] is not read by a 'statistics' job"):
        parse_config({**base, "training": {"rounds": 3}})
    with pytest.raises(ConfigError, match=r"\[model\] is not read by a 'statistics' job"):
        parse_config({**base, "model": {"kind": "mlp"}})
    with pytest.raises(ConfigError, match="key 'privacy.clip' is not read by a 'statistics' job"):
        parse_config({**base, "privacy": {"epsilon": 1.0, "clip": 2.0}})
    with pytest.raises(ConfigError, match="key 'data.test_fraction' is not read by a 'statistics' job"):
        parse_config({**base, "data": {**base["data"], "test_fraction": 0.3}})


def test_results_name_the_engine_and_an_unknown_engine_is_refused_before_any_ledger(tmp_path: Path) -> None:
    cfg = parse_config(HZ)
    with pytest.raises(ConfigError, match="unknown engine 'rocket'"):
        run_job(cfg, ledger_dir=tmp_path / "l", engine="rocket")
    assert not (tmp_path / "l").exists()
    res = run_job(cfg, ledger_dir=tmp_path / "l")
    assert res["engine"] == "threads" and res["transport"] == "in-process"


def test_each_silo_loads_only_its_own_share(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each silo party loads its own source in its own thread; a bad file is named by the party
    that owns it, and nothing is charged."""
    import threading

    loaded: list[tuple[str, str]] = []
    original = FrameSource.load

    def spy(self: FrameSource) -> Any:
        loaded.append((self.silo, threading.current_thread().name))
        return original(self)

    monkeypatch.setattr(FrameSource, "load", spy)
    cfg = parse_config(HZ)
    plan, parties = HORIZONTAL.plan(cfg, JobContext("own", sources_for(cfg), tmp_path))
    frames = {p.name: p.source.load().frame for p in parties if p.source is not None}
    loaded.clear()
    own = [Party(p.name, p.role, FrameSource(frames[p.name], p.name) if p.source else None, p.ledger) for p in parties]
    from fedsilo.silos.runner import ThreadsEngine, run_plan

    run_plan(HORIZONTAL, plan, own, job="own", engine=ThreadsEngine())
    # each silo's party loads its own table on its own thread (the results' simulation_metrics,
    # a simulation-only view, read them again on the runner's thread afterwards)
    by_party = {n: {t for s, t in loaded if s == n and t != threading.main_thread().name} for n in plan.silos}
    assert all(len(threads) == 1 for threads in by_party.values()), loaded
    assert len(set().union(*by_party.values())) == 3
    bad = frames["site1"].drop(columns=["mean radius"])
    own[2] = Party("site1", "silo", FrameSource(bad, "site1", origin="site1.csv"), own[2].ledger)
    with pytest.raises(DataError, match="site1.csv: columns differ from the job's features"):
        run_plan(HORIZONTAL, plan, own, job="own", engine=ThreadsEngine())


# -------------------------------------------------------------------------- a task from scratch


class _RowCountTask(Task):
    """A minimal task written against the runner alone: the secure sum of each silo's row count
    (no DP, insecure plain backend: a test of the registry, not a release)."""

    name = "row_count_test"
    roles = ("silo",)

    def check(self, cfg: JobConfig, source: str) -> None:
        if cfg.privacy is not None:
            raise ConfigError(f"{source}: the row-count test task has no DP")

    def plan(self, cfg: JobConfig, ctx: JobContext) -> tuple[Any, Sequence[Party]]:
        sources = ctx.sources
        return tuple(sources), [Party("aggregator", "aggregator"), *(Party(n, "silo", s) for n, s in sources.items())]

    def party(self, plan: Any, party: Party, channel: Channel, progress: Any = None) -> Any:
        backend = get_backend("plain")
        if party.role == "aggregator":
            public = aggregator_key_ceremony(channel, backend, silos=plan, timeout=30)
            return aggregator_secure_sum(channel, round=1, silos=plan, backend=backend, public=public, min_silos=len(plan),
                                         colluders=1, timeout=30, allow_exposed=True)
        assert isinstance(party.source, DataSource)
        rows = float(len(party.source.load().frame))
        secret = silo_key_ceremony(channel, backend, silos=plan, aggregator="aggregator", timeout=30)
        out = silo_secure_sum(channel, round=1, aggregator="aggregator", backend=backend, secret=secret,
                              public=secret.public(), timeout=30, allow_exposed=True, colluders=1,
                              contribution=Contribution(values=lambda present: np.array([rows]),
                                                        topup=lambda present, contributors: np.zeros(1)))
        return float(out.total[0])

    def results(self, plan: Any, parties: Sequence[Party], run: JobRun) -> dict[str, Any]:
        return {"task": self.name, "rows": run.reports[plan[0]], "private": False}


def test_a_task_registered_from_outside_runs_through_the_config_and_the_runner(tmp_path: Path) -> None:
    register_task(_RowCountTask())
    try:
        cfg = parse_config({**HZ, "federation": {"task": "row_count_test"}, "training": {}})
        res = run_job(cfg, ledger_dir=tmp_path)
        assert res["rows"] == 569.0 and res["engine"] == "threads"
    finally:
        from fedsilo.silos import registry

        registry._TASKS.pop("row_count_test", None)
    assert "row_count_test" not in TASKS


def test_a_csv_with_a_byte_order_mark_has_the_same_schema_as_its_rows(tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" starts with a BOM: the planner's schema and the party's rows agree."""
    from fedsilo.silos.data import FileSource

    p = tmp_path / "bom.csv"
    p.write_bytes(b"\xef\xbb\xbfid,a,label\n1,0.5,1\n")
    src = FileSource(p, "g")
    assert src.columns() == list(src.load().frame.columns) == ["id", "a", "label"]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # silos listed without data and no built-in source: one clear error, not an assertion
        ({"federation": {"task": "horizontal"}, "data": {"label": "y"}, "silos": [{"name": "a"}, {"name": "b"}]},
         "no data: set [data] source"),
        ({**HZ, "silos": [{"name": "a", "data": "a.csv"}, {"name": "b", "data": "b.csv"}, {"name": "c", "data": "c.csv"}],
          "data": {**HZ["data"], "partition": {"kind": "iid", "silos": 3}}},
         "[data] source and [[silos]] data files are both set"),
    ],
)
def test_where_the_data_comes_from_is_unambiguous(data: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(data, source="f.toml")
    assert expected in str(err.value) and "f.toml" in str(err.value)


def test_vertical_refuses_a_quorum_and_early_stopping_under_dp(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="key 'federation.min_silos' is not read by a 'vertical' job"):
        parse_config(_vertical(tmp_path, federation={"name": "v", "task": "vertical", "min_silos": 2}), base_dir=tmp_path)
    with pytest.raises(ConfigError, match="key 'training.early_stopping_tol': under DP"):
        parse_config(_vertical(tmp_path, training={"rounds": 1, "early_stopping_tol": 0.1}), base_dir=tmp_path)


def test_a_flag_a_task_does_not_read_is_named_as_typed() -> None:
    from fedsilo.silos.config import apply_overrides

    cfg = parse_config({
        "federation": {"task": "statistics"}, "crypto": {"backend": "plain", "insecure": True},
        "statistics": {"columns": ["mean radius"], "queries": ["count"]},
        "data": {"source": "sklearn:breast_cancer", "label": "target", "partition": {"kind": "iid", "silos": 3}},
    }, source="s.toml")
    with pytest.raises(ConfigError, match=r"^--rounds 3: \[training\] is not read by a 'statistics' job"):
        apply_overrides(cfg, rounds=3)
