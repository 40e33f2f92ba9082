"""The federation of a job as a directed graph: who sends messages to whom, and what travels.

:func:`federation` turns a :class:`~fedsilo.silos.config.JobConfig` into a
``networkx.DiGraph``:

* **nodes**: every party of the job, with ``role`` (a ``[[silos]] role``, or a role the task adds
  such as ``aggregator``), ``data`` (the ``[[silos]] data`` value as written — a file path, or for
  a job across agents the name of the silo's dataset — or the built-in data set's share; None for
  a party without data) and ``budget`` (``(epsilon, delta)`` of its ledger; None without DP);
* **edges** ``sender -> receiver``: exactly the pairs the task's protocol sends messages on, with
  ``flows`` (a tuple of :class:`Flow`: what travels, in words, the wire kinds that carry it, and
  the run-time condition if it does not travel in every run) and ``travels`` (the words, joined);
* **graph attributes**: ``task``, ``name`` (``[federation] name``), ``hub`` (the party that
  combines the others' messages: the aggregator; in a vertical job the guest) and ``source``
  (the config file, for errors).

The edges are read off the protocols, not guessed: the horizontal and statistics jobs run the
secure sum of :mod:`fedsilo.protocols.horizontal.secure_aggregation` (silos never talk to each
other except in the key ceremony, where the *leader* — the first silo in sorted order — sends the
shared secret key to every other silo: that is the only silo-to-silo edge of a shared-key
backend; a keyless backend's SecAgg+ sums have none, the aggregator relays every sealed share),
the vertical job runs PSI with the guest (:mod:`fedsilo.protocols.psi`) and the parties of
:mod:`fedsilo.protocols.vertical.parties` (hosts never talk to each other; with an arbiter every
data party talks to it; without one the guest and its one host exchange everything). A flow that
depends only on the config (DP or not, the position of a host) is listed or left out from the
config; one that depends on the run (a top-up after a dropout) carries its ``when``.

A task declares its topology with :meth:`~fedsilo.silos.registry.Task.topology` (a plug-in task
builds its graph with :func:`new_federation`, :func:`add_party` and :func:`add_flow`); the built-in
tasks' topologies are here, by task name (:data:`BUILTIN_TOPOLOGIES`), until they move into their
task modules. :func:`check_topology` refuses a federation that cannot run (``run_job`` calls
:func:`check_job_topology` before it plans anything), and :func:`neighbours` gives the peers one
party exchanges messages with — what a silo agent's allow-list must cover.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import networkx as nx

from fedsilo.errors import ConfigError
from fedsilo.silos.registry import get_task

if TYPE_CHECKING:
    from fedsilo.silos.config import JobConfig

__all__ = [
    "AGGREGATOR",
    "BUILTIN_TOPOLOGIES",
    "Flow",
    "add_flow",
    "add_party",
    "check_job_topology",
    "check_topology",
    "describe",
    "federation",
    "neighbours",
    "new_federation",
]

#: the aggregator's party name in horizontal and statistics jobs: the protocols' ``AGGREGATOR``
#: (not imported: that would import torch with the runner; tests/silos/test_topology.py pins it)
AGGREGATOR = "aggregator"


@dataclass(frozen=True, slots=True)
class Flow:
    """One thing that travels along an edge.

    ``what``: in words (``"encrypted residuals"``); ``kinds``: the wire kinds
    (:attr:`~fedsilo.protocols.channel.Envelope.kind`) that carry it; ``when``: the run-time
    condition under which it travels (``"after a dropout"``), None if it travels in every run.
    """

    what: str
    kinds: tuple[str, ...]
    when: str | None = None

    def __post_init__(self) -> None:
        if not self.what or not self.kinds:
            raise ConfigError(f"a flow names what travels and its wire kinds, got {self.what!r} {self.kinds!r}")

    def label(self) -> str:
        return self.what if self.when is None else f"{self.what} ({self.when})"


# ------------------------------------------------------------------------------ building a graph


def new_federation(cfg: JobConfig, *, hub: str) -> nx.DiGraph:
    """An empty federation graph of ``cfg``'s job whose messages ``hub`` combines."""
    return nx.DiGraph(task=cfg.federation.task, name=cfg.federation.name, hub=hub, source=cfg._source)


def add_party(graph: nx.DiGraph, name: str, *, role: str, data: str | None = None,
              budget: tuple[float, float] | None = None) -> None:
    """Add party ``name`` with its ``role``, the ``data`` it brings and its ledger ``budget``."""
    graph.add_node(name, role=role, data=data, budget=budget)


def add_flow(graph: nx.DiGraph, sender: str, receiver: str, *flows: Flow) -> None:
    """``flows`` travel from ``sender`` to ``receiver`` (the edge is added on the first)."""
    if not graph.has_edge(sender, receiver):
        graph.add_edge(sender, receiver, flows=())
    edge = graph.edges[sender, receiver]
    edge["flows"] = (*edge["flows"], *flows)
    edge["travels"] = ", ".join(dict.fromkeys(f.label() for f in edge["flows"]))


def _budget(cfg: JobConfig, name: str) -> tuple[float, float] | None:
    """A data party's ledger budget: its own, else the job's target; None without DP (no ledger)."""
    if cfg.privacy is None:
        return None
    silo = next((s for s in cfg.silos if s.name == name), None)
    if silo is not None and silo.budget is not None:
        return (float(silo.budget.epsilon), float(silo.budget.delta))
    return (float(cfg.privacy.epsilon), float(cfg.privacy.delta))


def _data(cfg: JobConfig) -> dict[str, str | None]:
    """What each listed or partitioned party brings: its ``[[silos]] data``, or its share."""
    if cfg.data.source is not None and cfg.data.partition is not None:
        p = cfg.data.partition
        return {n: f"{cfg.data.source} (share {i + 1} of {p.silos}, {p.kind})" for i, n in enumerate(cfg.silo_names())}
    return {s.name: s.data for s in cfg.silos}


# ------------------------------------------------------------------------------ the built-in tasks


def _secure_sum(cfg: JobConfig, *, update: str, evaluation: bool) -> nx.DiGraph:
    """Silos and one aggregator running the noised secure sum (horizontal, statistics).

    Round 0 (:func:`~fedsilo.protocols.horizontal.secure_aggregation.silo_key_ceremony`): the
    leader sends the shared secret key to every other silo and the public key to the
    aggregator. Every sum: each silo sends its announcement, its encrypted ``update`` and (after a
    dropout) a top-up to the aggregator, which answers every silo with the round's control
    messages and the encrypted aggregate (messages.py's figure). ``evaluation``: the silos'
    encrypted evaluation counts go through the same sums.
    """
    # the protocols' own names; imported here, as the runner imports this module for every job
    from fedsilo.protocols.horizontal import messages as hz_msgs
    from fedsilo.protocols.horizontal.secure_aggregation import key_leader

    names = cfg.silo_names()
    data = _data(cfg)
    graph = new_federation(cfg, hub=AGGREGATOR)
    add_party(graph, AGGREGATOR, role="aggregator")
    for n in names:
        add_party(graph, n, role="silo", data=data.get(n), budget=_budget(cfg, n))
    leader = key_leader(names)
    for n in names:
        if n != leader:
            add_flow(graph, leader, n, Flow("shared secret key", (hz_msgs.KEY_SECRET,)))
    add_flow(graph, leader, AGGREGATOR, Flow("public key", (hz_msgs.KEY_PUBLIC,)))
    noised = "noised " if cfg.privacy is not None else ""
    for n in names:
        add_flow(graph, n, AGGREGATOR, Flow("announcement", (hz_msgs.HELLO,)),
                 Flow(f"encrypted {noised}{update}", (hz_msgs.UPDATE,)),
                 *([Flow("encrypted evaluation counts", (hz_msgs.UPDATE,))] if evaluation else []),
                 Flow("encrypted top-up", (hz_msgs.TOPUP,), when="after a dropout"))
        add_flow(graph, AGGREGATOR, n, Flow("encrypted aggregate and round control", (hz_msgs.CONTROL,)))
    return graph


def _keyless_sum(cfg: JobConfig, *, update: str, evaluation: bool) -> nx.DiGraph:
    """Silos and one aggregator running SecAgg+ (:mod:`fedsilo.protocols.horizontal.secagg`), the
    secure sum of a keyless backend: no key ceremony and **no silo-to-silo edge**. Every
    silo-to-silo message of the protocol (public keys, Shamir shares sealed for one neighbour)
    is relayed by the aggregator: each silo sends it its signed public keys, its sealed shares,
    its masked ``update`` (and evaluation counts), its signature on the survivor set and its
    unmasking shares; the aggregator answers with the round's control messages (the neighbours'
    signed keys, the shares sealed for this silo, the survivor set, the unmasking request with
    the survivors' signatures, and the unmasked sum)."""
    from fedsilo.protocols.horizontal import secagg as sg

    names = cfg.silo_names()
    data = _data(cfg)
    graph = new_federation(cfg, hub=AGGREGATOR)
    add_party(graph, AGGREGATOR, role="aggregator")
    noised = "noised " if cfg.privacy is not None else ""
    for n in names:
        add_party(graph, n, role="silo", data=data.get(n), budget=_budget(cfg, n))
        add_flow(graph, n, AGGREGATOR, Flow("round public keys", (sg.KIND_ADVERTISE,)),
                 Flow("Shamir shares sealed for each neighbour", (sg.KIND_SHARES,)),
                 Flow(f"masked {noised}{update}", (sg.KIND_MASKED,)),
                 *([Flow("masked evaluation counts", (sg.KIND_MASKED,))] if evaluation else []),
                 Flow("signature on the round's survivor set", (sg.KIND_CONSISTENCY,)),
                 Flow("unmasking shares", (sg.KIND_REVEAL,)),
                 *([Flow("withdrawal notice", (sg.KIND_WITHDRAW,), when="when its budget is exhausted")]
                   if cfg.privacy is not None else []))
        add_flow(graph, AGGREGATOR, n, Flow("relayed keys and sealed shares, round control and the unmasked sum",
                                            (sg.KIND_CONTROL,)))
    return graph


def _keyless(cfg: JobConfig) -> bool:
    """Whether the job's backend is a keyless session backend (asked of its capabilities)."""
    from fedsilo.crypto.registry import get_backend_class
    from fedsilo.errors import FedsiloError

    try:
        return get_backend_class(cfg.crypto.backend).capabilities().keyless
    except FedsiloError:
        return False  # an unknown backend is the config check's error, not the graph's


def _horizontal(cfg: JobConfig) -> nx.DiGraph:
    # federated metrics are released every round without DP, once under record-level DP, never
    # under silo-level DP (HorizontalJob.evaluation)
    evaluation = cfg.privacy is None or cfg.privacy.level == "record"
    if _keyless(cfg):
        return _keyless_sum(cfg, update="model update", evaluation=evaluation)
    return _secure_sum(cfg, update="model update", evaluation=evaluation)


def _statistics(cfg: JobConfig) -> nx.DiGraph:
    # one secure sum of the statistics vector, the session the backend's key model selects
    if _keyless(cfg):
        return _keyless_sum(cfg, update="statistics", evaluation=False)
    return _secure_sum(cfg, update="statistics", evaluation=False)


def _vertical(cfg: JobConfig) -> nx.DiGraph:
    """The guest, its hosts and at most one arbiter (:mod:`fedsilo.protocols.vertical.parties`).

    Guest and each host: PSI both ways, then the guest's alignment, split, set-up, epochs and
    encrypted residuals, the host's hello and encrypted partial logits; without DP also the
    training loss and the joint prediction of the held-out rows. With an arbiter every data party
    sends it its masked gradient (and under DP its noise shares) and gets it back decrypted, and
    hosts never talk to each other; without one the guest and its host hold a key pair each and
    swap keys, gradients and decryptions.

    The role counts (one guest, at least one host, at most one arbiter; one host without an
    arbiter) are the task's own checks (``Task.check``, ``Task.plan``); this graph follows the
    ``[[silos]]`` as written.
    """
    from fedsilo.protocols import psi
    from fedsilo.protocols.vertical import messages as vt_msgs
    from fedsilo.protocols.vertical.job import SPLIT

    psi_ids = Flow("PSI blinded IDs and intersection digest", (psi.MASKED, psi.DOUBLE, psi.CONFIRM))
    key = Flow("public key", (vt_msgs.KEY,))
    grad = Flow("masked encrypted gradient", (vt_msgs.GRAD,))
    plain = Flow("decrypted masked gradient", (vt_msgs.PLAIN,))
    dp = cfg.privacy is not None
    data = _data(cfg)
    roles = {s.name: s.role for s in cfg.silos}
    guest = next((n for n, r in roles.items() if r == "guest"), None)
    if guest is None:
        raise ConfigError(f"{cfg._source}: task 'vertical' needs exactly one silo with role 'guest'")
    hosts = [n for n, r in roles.items() if r == "host"]
    arbiters = [n for n, r in roles.items() if r == "arbiter"]
    graph = new_federation(cfg, hub=guest)
    for n, r in roles.items():
        add_party(graph, n, role=r, data=data.get(n), budget=None if r == "arbiter" else _budget(cfg, n))

    def no_dp(*flows: Flow) -> list[Flow]:  # the training loss and the joint prediction: no DP only
        return [] if dp else list(flows)

    for j, h in enumerate(hosts):
        add_flow(graph, guest, h, psi_ids, Flow("aligned rows and held-out split", (psi.FINAL, SPLIT)),
                 Flow("training set-up and epoch batches", (vt_msgs.SETUP, vt_msgs.EPOCH)),
                 Flow("encrypted residuals", (vt_msgs.RESIDUAL,)),
                 *no_dp(Flow("held-out rows to score", (vt_msgs.PREDICT,))))
        add_flow(graph, h, guest, psi_ids, Flow("row counts and settings digests", (vt_msgs.HELLO,)),
                 Flow("encrypted partial logits", (vt_msgs.PARTIAL,)),
                 # with an arbiter the hosts after the first add a cross term to the loss
                 *no_dp(*([Flow("encrypted loss cross term", (vt_msgs.CROSS,))] if arbiters and j > 0 else []),
                        Flow("partial scores of held-out rows", (vt_msgs.SCORE,))))
        if not arbiters:  # two-party: each holds a key pair and decrypts the other's gradient
            add_flow(graph, guest, h, key, grad, plain, *no_dp(Flow("encrypted loss sums", (vt_msgs.LOSS,))))
            add_flow(graph, h, guest, key, grad, plain, *no_dp(Flow("training loss", (vt_msgs.LOSS_VALUE,))))
    noise = [Flow("encrypted noise shares", (vt_msgs.NOISE,))] if dp else []
    for a in arbiters:
        add_flow(graph, guest, a, Flow("training set-up and batch sizes", (vt_msgs.SETUP, vt_msgs.EPOCH)), grad,
                 *noise, *no_dp(Flow("encrypted loss sums", (vt_msgs.LOSS,))))
        add_flow(graph, a, guest, key, plain, *no_dp(Flow("training loss", (vt_msgs.LOSS_VALUE,))))
        for h in hosts:
            add_flow(graph, h, a, grad, *noise)
            add_flow(graph, a, h, key, plain)
    return graph


#: The built-in tasks' topologies by task name (a task's own :meth:`Task.topology` comes first).
BUILTIN_TOPOLOGIES: Mapping[str, Callable[[JobConfig], nx.DiGraph]] = {
    "horizontal": _horizontal,
    "statistics": _statistics,
    "vertical": _vertical,
}


# ------------------------------------------------------------------------------ the job's graph


def _declared(cfg: JobConfig) -> nx.DiGraph | None:
    task = get_task(cfg.federation.task)
    graph = task.topology(cfg)
    if graph is None and cfg.federation.task in BUILTIN_TOPOLOGIES:
        graph = BUILTIN_TOPOLOGIES[cfg.federation.task](cfg)
    if graph is not None and not isinstance(graph, nx.DiGraph):
        raise ConfigError(f"task {task.name!r}: Task.topology returned {type(graph).__name__}, not a networkx.DiGraph")
    return graph


def federation(cfg: JobConfig) -> nx.DiGraph:
    """The job's federation graph (see the module docstring), not yet checked.

    Raises:
        ConfigError: the job's task declares no topology (:meth:`Task.topology`).
    """
    graph = _declared(cfg)
    if graph is None:
        raise ConfigError(
            f"{cfg._source}: task {cfg.federation.task!r} declares no topology (Task.topology returns None)"
        )
    return graph


def check_job_topology(cfg: JobConfig) -> nx.DiGraph | None:
    """The job's federation, checked with :func:`check_topology` against ``cfg`` (what
    ``run_job`` calls before it plans); None, and nothing checked, for a task that declares no
    topology."""
    graph = _declared(cfg)
    if graph is not None:
        check_topology(graph, cfg)
    return graph


def check_topology(graph: nx.DiGraph, cfg: JobConfig | None = None) -> None:
    """Refuse a federation that cannot run, naming the first problem.

    Checked: the graph names its task and a hub that is one of its parties; every party has a
    role of the task (``Task.roles``, or the hub's role); no party sends to itself (a channel has
    no such peer); every edge says what travels; the parties form one federation (weakly
    connected); every party with data can reach the hub and be reached from it (its
    contributions get in, the results get back). With ``cfg``, also: every silo of the config is
    a party with the config's role.

    The role counts a task needs (one guest, at most one arbiter, ...) are the task's own checks
    (``Task.check``, ``Task.plan``) and are not repeated here.

    Raises:
        ConfigError: naming the config file (``graph.graph["source"]``) and the problem.
    """
    where = f"{graph.graph.get('source', '<topology>')}: the federation"
    task_name = graph.graph.get("task")
    if not task_name:
        raise ConfigError(f"{where} names no task (graph attribute 'task')")
    roles = get_task(str(task_name)).roles
    hub = graph.graph.get("hub")
    if hub is None or hub not in graph:
        raise ConfigError(f"{where} of the {task_name!r} job names no hub among its parties (hub: {hub!r})")
    allowed = (*roles, graph.nodes[hub].get("role"))
    for name, attrs in graph.nodes(data=True):
        role = attrs.get("role")
        if not isinstance(role, str) or not role:
            raise ConfigError(f"{where}: party {name!r} has no role (an edge names a party that was never added?)")
        if role not in allowed:
            raise ConfigError(f"{where}: party {name!r} has role {role!r}, not a role of a {task_name!r} job "
                              f"(roles: {', '.join(dict.fromkeys(allowed))})")
    loops = sorted(str(n) for n, _ in nx.selfloop_edges(graph))
    if loops:
        raise ConfigError(f"{where}: party {loops[0]!r} sends messages to itself")
    for s, r, attrs in graph.edges(data=True):
        flows = attrs.get("flows")
        if not flows or not all(isinstance(f, Flow) for f in flows):
            raise ConfigError(f"{where}: the edge {s!r} -> {r!r} does not say what travels (no flows)")
    if graph.number_of_nodes() > 1 and not nx.is_weakly_connected(graph):
        parts = sorted((sorted(map(str, c)) for c in nx.weakly_connected_components(graph)), key=lambda c: c[0])
        raise ConfigError(f"{where} falls apart into {len(parts)} groups that never exchange a message: "
                          + "; ".join(", ".join(c) for c in parts))
    to_hub = nx.ancestors(graph, hub)
    from_hub = nx.descendants(graph, hub)
    for name, attrs in graph.nodes(data=True):
        if name == hub or attrs.get("data") is None:
            continue
        if name not in to_hub:
            raise ConfigError(f"{where}: data party {name!r} has no path to {hub!r} (its contributions never arrive)")
        if name not in from_hub:
            raise ConfigError(f"{where}: data party {name!r} has no path from {hub!r} (the results never reach it)")
    if cfg is not None:
        listed = {s.name: s.role for s in cfg.silos} or {n: "silo" for n in cfg.silo_names()}
        for name, role in listed.items():
            if name not in graph:
                raise ConfigError(f"{where}: silo {name!r} of the config is not a party of the federation")
            if graph.nodes[name]["role"] != role:
                raise ConfigError(f"{where}: silo {name!r} has role {graph.nodes[name]['role']!r} in the federation "
                                  f"but {role!r} in the config")


def neighbours(graph: nx.DiGraph, party: str) -> set[str]:
    """The parties ``party`` sends messages to or receives messages from: exactly the peers a
    silo agent playing ``party`` must have on its allow-list.

    Raises:
        ConfigError: ``party`` is not a party of the federation.
    """
    if party not in graph:
        raise ConfigError(f"{party!r} is not a party of the job (parties: {', '.join(sorted(map(str, graph)))})")
    return (set(graph.successors(party)) | set(graph.predecessors(party))) - {party}


def describe(graph: nx.DiGraph) -> dict[str, Any]:
    """The federation as plain data (what ``fedsilo federation show --json`` prints): the
    graph's attributes, the parties in insertion order and the edges with their flows."""
    def party(name: str, attrs: Mapping[str, Any]) -> dict[str, Any]:
        budget = attrs.get("budget")
        return {"name": name, "role": attrs.get("role"), "data": attrs.get("data"),
                "budget": None if budget is None else {"epsilon": budget[0], "delta": budget[1]}}

    def flows(items: Iterable[Flow]) -> list[dict[str, Any]]:
        return [{"what": f.what, "kinds": list(f.kinds), "when": f.when} for f in items]

    return {
        "task": graph.graph.get("task"),
        "name": graph.graph.get("name"),
        "hub": graph.graph.get("hub"),
        "parties": [party(n, a) for n, a in graph.nodes(data=True)],
        "edges": [{"from": s, "to": r, "travels": flows(a.get("flows") or ())} for s, r, a in graph.edges(data=True)],
    }
