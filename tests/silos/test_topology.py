"""The federation graph: its edges are the messages the protocols really send (a spy on the
threads engine's channel records every envelope of a run of each example), and a federation
that cannot run is refused before anything is planned."""
from __future__ import annotations

import tomllib
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import networkx as nx
import pytest

from fedsilo.errors import ConfigError
from fedsilo.protocols.channel import InProcessHub
from fedsilo.protocols.horizontal import messages as hz_msgs
from fedsilo.protocols.horizontal import protocol as hz_protocol
from fedsilo.protocols.horizontal import statistics_plan
from fedsilo.silos import registry, runner, topology
from fedsilo.silos.config import JobConfig, apply_overrides, load_config, parse_config
from fedsilo.silos.registry import JobContext, JobRun, Party, Task, register_task
from fedsilo.silos.topology import (
    Flow,
    add_flow,
    add_party,
    check_job_topology,
    check_topology,
    describe,
    federation,
    neighbours,
    new_federation,
)

ROOT = Path(__file__).resolve().parents[2] / "examples"
HOSPITALS = ROOT / "hospitals_horizontal" / "federation.toml"
SILO_LEVEL = ROOT / "hospitals_horizontal" / "silo_level.toml"
STATISTICS = ROOT / "federated_statistics" / "federation.toml"
BANK = ROOT / "bank_vertical" / "federation.toml"
HOSPITAL_VT = ROOT / "hospital_vertical" / "federation.toml"


# ------------------------------------------------------------------------------ the spy


def _spied_run(cfg: JobConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[tuple[str, str], set[str]]:
    """Run ``cfg`` on the threads engine and return ``{(sender, receiver): {kinds}}`` of every
    envelope its hub delivered (the hub's own log; only the runner's name is patched)."""
    hubs: list[InProcessHub] = []

    class SpyHub(InProcessHub):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            hubs.append(self)

    monkeypatch.setattr(runner, "InProcessHub", SpyHub)
    runner.run_job(cfg, ledger_dir=tmp_path / "ledgers", noise_seed=5, engine="threads")
    (hub,) = hubs
    seen: dict[tuple[str, str], set[str]] = defaultdict(set)
    for env in hub.log:
        seen[(env.sender, env.recipient)].add(env.kind)
    assert seen, "the spy recorded no message"
    return dict(seen)


def _assert_edges_are_the_messages(graph: nx.DiGraph, seen: dict[tuple[str, str], set[str]]) -> None:
    # exactly the pairs: every message on an edge, every edge used in a fault-free run
    assert set(seen) == set(graph.edges), (
        f"messages off the graph: {sorted(set(seen) - set(graph.edges))}; "
        f"edges never used: {sorted(set(graph.edges) - set(seen))}"
    )
    for (s, r), kinds in seen.items():
        flows: Sequence[Flow] = graph.edges[s, r]["flows"]
        declared = {k for f in flows for k in f.kinds}
        assert kinds <= declared, f"{s} -> {r} sent kinds the graph does not name: {sorted(kinds - declared)}"
        # a flow without a run-time condition travels in every run (conditional ones: a top-up
        # only after a dropout)
        unseen = [f.what for f in flows if f.when is None and not set(f.kinds) & kinds]
        assert not unseen, f"{s} -> {r}: the graph says {unseen} travel(s), the run sent none"


def _plain(path: Path, **overrides: Any) -> JobConfig:
    cfg = load_config(path, insecure=True)
    return apply_overrides(cfg, backend="plain", **overrides)


def _two_party(dp: bool) -> JobConfig:
    """The bank example without its arbiter: guest and host hold a key pair each."""
    data = tomllib.loads(BANK.read_text())
    data["silos"] = [s for s in data["silos"] if s["role"] != "arbiter"]
    data["crypto"] = {"backend": "plain", "insecure": True}
    data["training"]["rounds"] = 1
    if not dp:
        data.pop("privacy")
    return parse_config(data, source="two_party.toml", base_dir=BANK.parent)


def _secagg_silo_level() -> JobConfig:
    """The silo-level example on the keyless backend (its distributed discrete Gaussian is
    accounted with RDP; the example's PLD would be refused)."""
    data = tomllib.loads(SILO_LEVEL.read_text())
    data["crypto"] = {"backend": "secagg"}
    data["privacy"]["accountant"] = "rdp"
    data["training"]["rounds"] = 1
    return parse_config(data, source="silo_level_secagg.toml", base_dir=SILO_LEVEL.parent)


RUNS = {
    "hospitals-plain": lambda: _plain(HOSPITALS, rounds=1),
    "hospitals-ckks": lambda: apply_overrides(load_config(HOSPITALS), rounds=1),
    "hospitals-no-dp": lambda: _plain(HOSPITALS, rounds=1, epsilon=0),
    "hospitals-silo-level": lambda: _plain(SILO_LEVEL, rounds=1),
    "statistics-paillier": lambda: load_config(STATISTICS),
    "bank-vertical": lambda: _plain(BANK, rounds=1),
    "hospital-vertical-3-party": lambda: _plain(HOSPITAL_VT, rounds=1),
    "hospital-vertical-no-dp": lambda: _plain(HOSPITAL_VT, rounds=1, epsilon=0),
    "two-party-dp": lambda: _two_party(dp=True),
    "two-party-no-dp": lambda: _two_party(dp=False),
    # the keyless backend: SecAgg+ rounds, every silo-to-silo message relayed by the aggregator
    "hospitals-secagg": lambda: apply_overrides(load_config(HOSPITALS), backend="secagg", rounds=1),
    "statistics-secagg": lambda: apply_overrides(load_config(STATISTICS), backend="secagg"),
    "hospitals-secagg-no-dp": lambda: apply_overrides(load_config(HOSPITALS), backend="secagg", rounds=1, epsilon=0),
    "hospitals-secagg-silo-level": lambda: _secagg_silo_level(),
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", list(RUNS))
def test_the_edges_are_the_messages_of_a_real_run(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = RUNS[name]()
    graph = federation(cfg)
    check_topology(graph, cfg)
    _assert_edges_are_the_messages(graph, _spied_run(cfg, tmp_path, monkeypatch))


def test_the_spy_bites_a_graph_with_an_edge_too_many_or_too_few(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _plain(HOSPITALS, rounds=1)
    seen = _spied_run(cfg, tmp_path, monkeypatch)
    more = federation(cfg)
    add_flow(more, "st_marys", "riverside", Flow("gossip", ("made.up",)))  # silos that never talk
    with pytest.raises(AssertionError, match="edges never used"):
        _assert_edges_are_the_messages(more, seen)
    fewer = federation(cfg)
    fewer.remove_edge("city_general", "st_marys")  # the key ceremony's edge
    with pytest.raises(AssertionError, match="messages off the graph"):
        _assert_edges_are_the_messages(fewer, seen)


# ------------------------------------------------------------------------------ the graphs


def test_horizontal_silos_talk_to_each_other_only_in_the_key_ceremony() -> None:
    graph = federation(load_config(HOSPITALS))
    leader = "city_general"  # the first silo in sorted order makes and hands out the key
    silo_edges = {(s, r) for s, r in graph.edges if "aggregator" not in (s, r)}
    assert silo_edges == {(leader, "riverside"), (leader, "st_marys")}
    for s, r in silo_edges:
        assert [f.kinds for f in graph.edges[s, r]["flows"]] == [(hz_msgs.KEY_SECRET,)]
    assert graph.edges[leader, "aggregator"]["flows"][0].kinds == (hz_msgs.KEY_PUBLIC,)
    # the secret key never goes to the aggregator; the public key only from the leader
    assert all(hz_msgs.KEY_SECRET not in f.kinds for f in graph.edges[leader, "aggregator"]["flows"])
    assert all(hz_msgs.KEY_PUBLIC not in f.kinds for f in graph.edges["riverside", "aggregator"]["flows"])
    assert graph.graph["hub"] == topology.AGGREGATOR == hz_protocol.AGGREGATOR == statistics_plan.AGGREGATOR
    assert graph.nodes["aggregator"] == {"role": "aggregator", "data": None, "budget": None}
    assert graph.nodes["st_marys"]["budget"] == (10.0, 1e-5)
    assert graph.nodes["st_marys"]["data"].startswith("sklearn:breast_cancer (share 1 of 3")


def test_a_keyless_backend_has_no_silo_to_silo_edge() -> None:
    from fedsilo.protocols.horizontal import secagg as sg

    graph = federation(apply_overrides(load_config(HOSPITALS), backend="secagg"))
    assert {(s, r) for s, r in graph.edges if "aggregator" not in (s, r)} == set()
    assert set(graph.edges) == {(n, "aggregator") for n in ("st_marys", "city_general", "riverside")} | {
        ("aggregator", n) for n in ("st_marys", "city_general", "riverside")}
    kinds = {k for f in graph.edges["riverside", "aggregator"]["flows"] for k in f.kinds}
    # (under DP a silo whose budget is exhausted says so: a conditional flow)
    assert kinds == {sg.KIND_ADVERTISE, sg.KIND_SHARES, sg.KIND_MASKED, sg.KIND_CONSISTENCY, sg.KIND_REVEAL,
                     sg.KIND_WITHDRAW}
    assert [f.when for f in graph.edges["riverside", "aggregator"]["flows"] if sg.KIND_WITHDRAW in f.kinds] == [
        "when its budget is exhausted"]
    assert hz_msgs.KEY_SECRET not in kinds and hz_msgs.KEY_PUBLIC not in kinds
    assert neighbours(graph, "city_general") == {"aggregator"}  # no key leader any more


def test_the_neighbours_are_the_peers_an_allow_list_needs() -> None:
    hz = federation(load_config(HOSPITALS))
    assert neighbours(hz, "aggregator") == {"st_marys", "city_general", "riverside"}
    assert neighbours(hz, "city_general") == {"aggregator", "st_marys", "riverside"}  # the key leader
    assert neighbours(hz, "riverside") == {"aggregator", "city_general"}  # never st_marys
    vt = federation(load_config(HOSPITAL_VT))
    assert neighbours(vt, "radiology") == {"oncology", "trust_centre"}  # hosts never talk to each other
    assert neighbours(vt, "trust_centre") == {"oncology", "radiology", "pathology"}
    assert neighbours(federation(_two_party(dp=True)), "partner") == {"bank"}
    with pytest.raises(ConfigError, match="'nobody' is not a party of the job"):
        neighbours(hz, "nobody")


def test_vertical_flows_follow_the_config() -> None:
    def kinds(graph: nx.DiGraph, s: str, r: str) -> set[str]:
        return {k for f in graph.edges[s, r]["flows"] for k in f.kinds}

    dp = federation(load_config(HOSPITAL_VT))
    no_dp = federation(_plain(HOSPITAL_VT, epsilon=0))
    assert "vlr/noise" in kinds(dp, "radiology", "trust_centre") and "vlr/noise" not in kinds(no_dp, "radiology", "trust_centre")
    assert "vlr/predict" in kinds(no_dp, "oncology", "radiology") and "vlr/predict" not in kinds(dp, "oncology", "radiology")
    # the loss cross term: only the hosts after the first, only without DP
    assert "vlr/cross" in kinds(no_dp, "pathology", "oncology") and "vlr/cross" not in kinds(no_dp, "radiology", "oncology")
    assert dp.nodes["trust_centre"] == {"role": "arbiter", "data": None, "budget": None}
    assert dp.nodes["oncology"]["data"] == "oncology.csv" and dp.graph["hub"] == "oncology"


def test_describe_is_plain_data() -> None:
    out = describe(federation(load_config(BANK)))
    assert out["task"] == "vertical" and out["hub"] == "bank"
    assert [p["name"] for p in out["parties"]] == ["bank", "partner", "arbiter"]
    assert out["parties"][0]["budget"] == {"epsilon": 10.0, "delta": 1e-5}
    edge = next(e for e in out["edges"] if (e["from"], e["to"]) == ("bank", "partner"))
    assert {"what": "encrypted residuals", "kinds": ["vlr/residual"], "when": None} in edge["travels"]


# ------------------------------------------------------------------------------ the checks


def _good(cfg: JobConfig) -> nx.DiGraph:
    graph = federation(cfg)
    check_topology(graph, cfg)
    return graph


@pytest.mark.parametrize(
    ("break_it", "fragment"),
    [
        (lambda g: g.add_edge("st_marys", "st_marys", flows=(Flow("x", ("x",)),)), "'st_marys' sends messages to itself"),
        (lambda g: add_flow(g, "st_marys", "ghost", Flow("x", ("x",))), "party 'ghost' has no role"),
        (lambda g: add_party(g, "auditor", role="auditor", data="a.csv"), "role 'auditor', not a role of a 'horizontal' job"),
        (lambda g: g.add_edge("st_marys", "riverside"), "the edge 'st_marys' -> 'riverside' does not say what travels"),
        # the key leader hears only from the aggregator (the others also hear from the leader)
        (lambda g: g.remove_edge("aggregator", "city_general"), "'city_general' has no path from 'aggregator'"),
        (lambda g: g.remove_edge("riverside", "aggregator"), "'riverside' has no path to 'aggregator'"),
        (lambda g: [g.remove_edge(*e) for e in list(g.in_edges("riverside")) + list(g.out_edges("riverside"))],
         "falls apart into 2 groups"),
        (lambda g: g.remove_node("riverside"), "silo 'riverside' of the config is not a party"),
        (lambda g: g.graph.update(hub="nobody"), "names no hub among its parties"),
        (lambda g: g.graph.pop("task"), "names no task"),
    ],
    ids=["self-loop", "unknown-party", "foreign-role", "edge-without-flows", "no-path-back", "no-path-to-hub",
         "disconnected", "config-silo-missing", "no-hub", "no-task"],
)
def test_a_federation_that_cannot_run_is_refused(break_it: Any, fragment: str) -> None:
    cfg = load_config(HOSPITALS)
    graph = _good(cfg)
    break_it(graph)
    with pytest.raises(ConfigError) as err:
        check_topology(graph, cfg)
    assert fragment in str(err.value) and str(HOSPITALS) in str(err.value)


def test_a_party_without_data_needs_no_path_back_but_must_be_connected() -> None:
    cfg = load_config(BANK)
    graph = _good(cfg)
    graph.remove_edge("arbiter", "bank")
    graph.remove_edge("arbiter", "partner")  # the arbiter only receives: odd, but it holds no data
    check_topology(graph, cfg)


def test_a_role_the_config_gives_differently_is_refused() -> None:
    cfg = load_config(BANK)
    graph = _good(cfg)
    graph.nodes["partner"]["role"] = "arbiter"
    with pytest.raises(ConfigError, match="silo 'partner' has role 'arbiter' in the federation but 'host' in the config"):
        check_topology(graph, cfg)


# ------------------------------------------------------------------------------ plug-in tasks


class _PlanNever(Task):
    """A plug-in task with its own topology; planning fails the test (the check comes first)."""

    name = "topology_test"
    roles = ("silo",)
    broken = False

    def topology(self, cfg: JobConfig) -> nx.DiGraph:
        graph = new_federation(cfg, hub="collector")
        add_party(graph, "collector", role="collector")
        for n in cfg.silo_names():
            add_party(graph, n, role="silo", data=f"share of {n}")
            add_flow(graph, n, "collector", Flow("counts", ("count",)))
            if not self.broken:
                add_flow(graph, "collector", n, Flow("total", ("total",)))
        return graph

    def plan(self, cfg: JobConfig, ctx: JobContext) -> tuple[Any, Sequence[Party]]:
        raise AssertionError("planned although the topology is refused")

    def party(self, plan: Any, party: Party, channel: Any, progress: Any = None) -> Any:
        raise AssertionError("unreachable")

    def results(self, plan: Any, parties: Sequence[Party], run: JobRun) -> dict[str, Any]:
        raise AssertionError("unreachable")


_PLUGIN = {
    "federation": {"name": "p", "task": "topology_test"},
    "crypto": {"backend": "plain", "insecure": True},
    "data": {"source": "sklearn:breast_cancer", "label": "target", "partition": {"kind": "iid", "silos": 3}},
}


@pytest.fixture
def plugin() -> Any:
    task = _PlanNever()
    register_task(task)
    yield task
    registry._TASKS.pop(task.name, None)


def test_a_plugin_task_declares_its_own_topology(plugin: _PlanNever) -> None:
    cfg = parse_config(_PLUGIN, source="plugin.toml")
    graph = check_job_topology(cfg)
    assert graph is not None and graph.graph["hub"] == "collector"
    assert neighbours(graph, "site1") == {"collector"}


def test_run_job_refuses_a_broken_topology_before_planning(plugin: _PlanNever, tmp_path: Path) -> None:
    plugin.broken = True  # the collector never answers: the results never reach the silos
    cfg = parse_config(_PLUGIN, source="plugin.toml")
    with pytest.raises(ConfigError, match="plugin.toml: the federation: data party 'site0' has no path from 'collector'"):
        runner.run_job(cfg, ledger_dir=tmp_path)


def test_a_task_without_a_topology_is_not_checked_but_cannot_be_shown(plugin: _PlanNever,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_PlanNever, "topology", Task.topology)
    cfg = parse_config(_PLUGIN, source="plugin.toml")
    assert check_job_topology(cfg) is None
    with pytest.raises(ConfigError, match="task 'topology_test' declares no topology"):
        federation(cfg)


def test_a_topology_that_is_not_a_graph_is_refused(plugin: _PlanNever, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_PlanNever, "topology", lambda self, cfg: [("a", "b")])
    with pytest.raises(ConfigError, match="returned list, not a networkx.DiGraph"):
        check_job_topology(parse_config(_PLUGIN, source="plugin.toml"))
