"""The parties' training: :func:`guest_boost` and :func:`host_boost` over a :class:`Channel`.

The guest holds the labels and the Paillier key; hosts hold features. One tree (``[[·]]`` is
encryption under the guest's key; :mod:`.packing` for the integers, :mod:`.messages` for the
payloads)::

    guest : g_i = p_i - y_i, h_i = p_i (1 - p_i) per sampled row (squared error: g_i = raw_i - y_i
            over the guest's own scale s, h_i = 1; :func:`gradient_scale`);
            m_i = g_i·2^P + (h_i·2^P)·2^Wg                       -- TREE [[m_i]] -->        hosts
    per level d = 0 .. depth - 1:
    guest : the nodes whose histograms it needs, their sampled rows -- LEVEL -->            hosts
    host  : per node, feature f and bin b:  [[S_fb]] = Π_{i in node, bin_f(i) = b} [[m_i]]
            K bins per ciphertext:  [[P]] = Π_k [[S_k]]^(2^(k·W)) · (1 + A·n)
            (A: its offsets, the bins' row counts and, under DP, noise;
             the ledger is charged first)                           -- HIST [[P]] -->         guest
    guest : decrypt and unpack (G, H, count) per bin; a sibling's histogram is parent - child;
            its own features' histograms in the clear; the best split of every node over
            every party's features; the winning host gets "(f, b) won" -- SPLIT -->           host h
    host h: t = its threshold of bin b; (tree, node) -> (f, t) into its lookup table
                                                                    -- PARTITION left -->     guest
    guest : the children's rows; a node that is not split is a leaf of value -lr·G/(H + λ),
            from its own exact g, h

With missing-value bins each histogram has one more bin per feature (the NaNs) and SPLIT says
where a split sends them. The first ``guest_trees`` trees are the guest's alone: grown on its
exact histograms, with no message (the hosts skip their rounds).

Per level the guest asks for one histogram per pair of children: the smaller child's when both
can split (the larger is derived by subtraction), else that of the one that can. Every node
asked for has at least ``2·min_leaf_rows`` sampled rows and the nodes of one level are disjoint:
each host checks both before it answers (and, under DP, before it charges).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedsilo.errors import ConfigError, DataError, ProtocolError
from fedsilo.privacy.ledger import PrivacyLedger
from fedsilo.protocols.channel import Channel
from fedsilo.protocols.spec import PrivacySection
from fedsilo.protocols.vertical.secureboost.boosting import (
    OBJECTIVES,
    Objective,
    SplitChoice,
    best_split,
    histogram,
    leaf_value,
)
from fedsilo.protocols.vertical.secureboost.cipher import HistogramCipher
from fedsilo.protocols.vertical.secureboost.config import BoostConfig, CryptoSettings, dp_digest
from fedsilo.protocols.vertical.secureboost.dp import HistogramDp, calibrate, draw_noise, level_charge
from fedsilo.protocols.vertical.secureboost.messages import (
    HELLO,
    HIST,
    IMPORTANCE,
    LEVEL,
    PARTITION,
    SETUP,
    SPLIT,
    TREE,
    check_mask,
    check_rows,
    gather_all,
    int_array,
)
from fedsilo.protocols.vertical.secureboost.model import (
    Binning,
    GuestModel,
    GuestTree,
    HostModel,
    Importance,
    Split,
    children,
)
from fedsilo.protocols.vertical.secureboost.packing import HistLayout, decode_bins, encode_rows, noise_margin, offsets_plaintexts

__all__ = ["BoostResult", "guest_boost", "host_boost", "layout_for", "rounds_used"]


@dataclass
class BoostResult:
    """What a party's training function returns."""

    model: GuestModel | HostModel
    history: list[dict[str, Any]] = field(default_factory=list)
    #: ``{party: {feature: {"splits", "gain"}}}``: the guest's own features by name, hosts' by index
    importance: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    dp: HistogramDp | None = None
    trees: int = 0
    #: histogram releases: a host's charges (the guest: how many it asked each host for)
    releases: dict[str, int] = field(default_factory=dict)
    epsilon: float | None = None
    next_round: int = 0


def rounds_used(config: BoostConfig) -> int:
    """Rounds training takes from its ``start_round``: set-up, ``1 + depth`` per tree, the stop."""
    return 1 + config.trees * (1 + config.depth) + 1


def layout_for(crypto: CryptoSettings, cipher: HistogramCipher, plan: HistogramDp | None, *, rows: int,
               features: int, loss: Objective = OBJECTIVES["log_loss"]) -> HistLayout:
    """The public encoding of a tree of ``rows`` sampled rows for a host of ``features`` features.

    ``|g|`` is bounded by ``privacy.clip`` under DP, else by the loss's own bound (1 for the
    logistic loss); the squared error's residual has none, so without DP the guest encodes
    ``g / s`` with a scale ``s >= max |g|`` it keeps to itself (:func:`gradient_scale`): the
    bound is then 1 and the hosts learn nothing of the residuals' size."""
    grid = 2.0**-crypto.precision
    margins = (0, 0, 0)
    clip = loss.g_cap if math.isfinite(loss.g_cap) else 1.0
    if plan is not None:
        sg, sh, sc = plan.sigmas(features=features)
        margins = (noise_margin(sigma=sg, granularity=grid), noise_margin(sigma=sh, granularity=grid),
                   noise_margin(sigma=sc, granularity=1.0))
        clip = plan.clip
    return HistLayout(crypto.precision, rows, clip, loss.h_bound, margins, cipher.plaintext_bits, crypto.packed)


def gradient_scale(g: np.ndarray, loss: Objective, plan: HistogramDp | None) -> float:
    """What the guest divides ``g`` by before encoding (and multiplies the decrypted sums by): 1,
    except for an unbounded ``g`` without DP (the squared error's residual), where it is the
    smallest power of two at least ``max |g|`` (exact in floating point; the guest's own, never
    sent)."""
    if plan is not None or math.isfinite(loss.g_cap):
        return 1.0
    top = float(np.max(np.abs(g))) if g.size else 0.0
    return 1.0 if top == 0.0 else float(2.0 ** math.ceil(math.log2(top)))


def _plan(dp: PrivacySection | None, config: BoostConfig) -> HistogramDp | None:
    if dp is None:
        return None
    return calibrate(epsilon=dp.epsilon, delta=dp.delta, accountant=dp.accountant, trees=config.joint_trees,
                     depth=config.depth, clip=dp.clip, objective=config.objective)


def _check_trainable(n_train: int, config: BoostConfig, *, who: str) -> None:
    """Too few rows for even one split: refused by every party alike (all know the counts)."""
    sample = config.sample_size(n_train)
    if sample < 2 * config.min_leaf_rows:
        raise DataError(
            f"{who}: each tree is grown on {sample} of the {n_train} aligned training rows, too few for one split "
            f"with model.min_leaf_rows = {config.min_leaf_rows} rows in each leaf (needs {2 * config.min_leaf_rows}); "
            "lower model.min_leaf_rows, raise model.subsample, or align more rows"
        )


# ------------------------------------------------------------------------------ guest


@dataclass
class _Node:
    """A node as the guest grows it: every training row in it, its sampled rows, their exact sums."""

    id: int
    depth: int
    rows: np.ndarray
    sample: np.ndarray
    g: float
    h: float


@dataclass(frozen=True)
class _GuestRun:
    """What the guest's trees share for a whole run (fixed after set-up)."""

    channel: Channel
    hosts: tuple[str, ...]
    config: BoostConfig
    crypto: CryptoSettings
    cipher: HistogramCipher
    plan: HistogramDp | None
    features: Mapping[str, int]  #: each host's feature count
    binning: Binning  #: the guest's own bins
    bins: np.ndarray  #: the guest's bin indices of every aligned row
    x: np.ndarray  #: the guest's raw features of every aligned row
    train_rows: np.ndarray

    @property
    def me(self) -> str:
        return self.channel.party

    def splittable(self, node: _Node) -> bool:
        c = self.config
        return (node.depth < c.depth and node.sample.size >= 2 * c.min_leaf_rows
                and node.h >= 2 * c.min_child_weight)


def guest_boost(
    channel: Channel,
    *,
    hosts: Sequence[str],
    x: np.ndarray,
    y: np.ndarray,
    train_rows: np.ndarray,
    test_rows: np.ndarray,
    binning: Binning,
    config: BoostConfig,
    crypto: CryptoSettings,
    dp: PrivacySection | None,
    public_rng: np.random.Generator,
    start_round: int,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> BoostResult:
    """The guest's side of training: generates the key, drives the trees, finds every split.

    ``x``/``y`` are the guest's aligned rows (features may be empty: labels only); ``train_rows``
    and ``test_rows`` index them (the hosts hold the same index sets); ``binning`` is the
    guest's own (:func:`~.model.fit_binning`); ``public_rng`` draws each tree's subsample (from
    the job seed: the sample is announced to every host).

    Raises:
        DataError: a host's row counts differ from the guest's; too few rows for one split.
        ConfigError: a host runs other settings.
    """
    me, hosts, T = channel.party, tuple(hosts), config.timeout
    loss = config.loss
    y = np.asarray(y, dtype=np.float64)
    if loss.classification and not np.all((y == 0) | (y == 1)):
        raise DataError(f"{me}: labels must be 0 or 1")
    if not np.all(np.isfinite(y)):
        raise DataError(f"{me}: labels must be finite numbers")
    if config.guest_trees and binning.features == 0:
        raise ConfigError(f"{me}: key 'model.guest_trees': the guest holds no feature to grow a guest-only tree on")
    _check_trainable(train_rows.size, config, who=me)
    r = start_round
    features = _hello(channel, hosts, rows=x.shape[0], train=train_rows.size, test=test_rows.size, config=config,
                      crypto=crypto, dp=dp, round=r, timeout=T)
    plan = _plan(dp, config)
    cipher, public = crypto.keygen()
    # one layout for every host (the row plaintexts are the same for all): room for the noise of
    # the host with the most features
    widest = max(features.values())
    channel.broadcast(hosts, SETUP, {"public": public, "features": widest}, round=r)
    run = _GuestRun(channel, hosts, config, crypto, cipher, plan, features, binning, binning.transform(x), x, train_rows)
    base = loss.base(y[train_rows])
    raw = np.full(x.shape[0], base)
    importance = {p: Importance.zeros(features[p] if p != me else binning.features) for p in (me, *hosts)}
    releases = {h: 0 for h in hosts}
    trees: list[GuestTree] = []
    history: list[dict[str, Any]] = []
    r += 1
    n_sample = config.sample_size(train_rows.size)
    for t in range(config.trees):
        sample = train_rows if n_sample >= train_rows.size else np.sort(public_rng.choice(train_rows, n_sample, replace=False))
        g, h = loss.gradients(raw=raw[sample], labels=y[sample], clip=plan.clip if plan else loss.g_cap)
        gvec, hvec = np.zeros(x.shape[0]), np.zeros(x.shape[0])
        gvec[sample], hvec[sample] = g, h
        layout = layout_for(crypto, cipher, plan, rows=sample.size, features=widest, loss=loss)
        scale = gradient_scale(g, loss, plan)
        joint = hosts if not config.guest_only(t) else ()  # a guest-only tree: no encryption, no message
        if joint:
            rows_ct = cipher.encrypt_rows(encode_rows(g=g / scale, h=h, layout=layout, modulus=cipher.modulus))
            channel.broadcast(hosts, TREE, {"stop": False, "tree": t, "rows": sample, "gh": rows_ct}, round=r)
        tree, delta, asked = _grow_tree(run, joint, sample, gvec, hvec, importance, layout, scale, round=r + 1)
        for hname, n in asked.items():
            releases[hname] += n
        raw += delta
        trees.append(tree)
        # the training loss is the guest's own (its labels, its scores): no release
        record: dict[str, Any] = {"round": t + 1, "loss": loss.loss(raw=raw[train_rows], labels=y[train_rows]),
                                  "leaves": len(tree.leaves),
                                  "splits": {p: sum(1 for s in tree.splits.values() if s.owner == p) for p in (me, *hosts)},
                                  "releases": dict(releases)}
        history.append(record)
        if progress is not None:
            eps = {hh: plan.spent(releases[hh]) or 0.0 for hh in hosts} if plan is not None else None
            progress({"round": t + 1, "rounds": config.trees, "loss": record["loss"], "epsilon": eps})
        r += 1 + config.depth
    channel.broadcast(hosts, TREE, {"stop": True}, round=r)
    for hname in hosts:
        imp = importance[hname]
        # split counts only: a gain is built from the guest's exact node totals G, H (label
        # statistics, not noised), so it stays in the guest's results (privacy review)
        channel.send(hname, IMPORTANCE, {"splits": imp.splits}, round=r)
    named = {me: importance[me].named(binning.columns),
             **{hname: importance[hname].named([f"#{j}" for j in range(features[hname])]) for hname in hosts}}
    model = GuestModel(base, tuple(trees), binning, me)
    return BoostResult(model, history, named, plan, len(trees), releases, None, r + 1)


def _hello(channel: Channel, hosts: Sequence[str], *, rows: int, train: int, test: int, config: BoostConfig,
           crypto: CryptoSettings, dp: PrivacySection | None, round: int, timeout: float) -> dict[str, int]:
    """Every host's row counts and settings checked against the guest's; each host's feature count."""
    me = channel.party
    hellos = gather_all(channel, hosts, HELLO, round=round, timeout=timeout)
    out = {}
    for h, msg in hellos.items():
        if not isinstance(msg, dict):
            raise ProtocolError(f"{me}: malformed hello from {h!r}")
        if (msg.get("rows"), msg.get("train"), msg.get("test")) != (rows, train, test):
            raise DataError(
                f"host {h!r} has {msg.get('rows')} aligned rows ({msg.get('train')} for training, {msg.get('test')} "
                f"held out); the guest {me!r} has {rows} ({train}, {test}): the parties' tables are not aligned"
            )
        if (msg.get("config"), msg.get("crypto"), msg.get("dp")) != (config.digest(), crypto.digest(), dp_digest(dp)):
            raise ConfigError(f"host {h!r} was started with other tree, crypto or DP settings than the guest {me!r}")
        f = msg.get("features")
        if isinstance(f, bool) or not isinstance(f, int) or f < 1:
            raise ProtocolError(f"{me}: host {h!r} announced {f!r} features")
        out[h] = f
    return out


def _grow_tree(run: _GuestRun, hosts: Sequence[str], sample: np.ndarray, gvec: np.ndarray, hvec: np.ndarray,
               importance: dict[str, Importance], layout: HistLayout, scale: float, *,
               round: int) -> tuple[GuestTree, np.ndarray, dict[str, int]]:
    """One tree over the guest's features and those of ``hosts`` (none: a guest-only tree, the
    same growth on the guest's exact histograms with no message sent), level by level (rounds
    ``round .. round + depth - 1``); returns it, its value for every aligned row (0 outside the
    training rows) and how many levels' histograms each host released. ``scale``: the hosts'
    ``G`` sums are of ``g / scale`` (:func:`gradient_scale`)."""
    ch, cfg, me, hosts = run.channel, run.config, run.me, tuple(hosts)
    B = cfg.hist_bins
    in_sample = np.zeros(run.x.shape[0], dtype=bool)
    in_sample[sample] = True
    splits: dict[int, Split] = {}
    leaves: dict[int, float] = {}
    asked = {h: 0 for h in hosts}
    delta = np.zeros(run.x.shape[0])

    def node(nid: int, depth: int, rows: np.ndarray) -> _Node:
        s = rows[in_sample[rows]]
        return _Node(nid, depth, rows, s, float(gvec[s].sum()), float(hvec[s].sum()))

    def leaf(n: _Node) -> None:
        leaves[n.id] = leaf_value(g_sum=n.g, h_sum=n.h, l2=cfg.l2, learning_rate=cfg.learning_rate)
        delta[n.rows] = leaves[n.id]

    root = node(0, 0, run.train_rows)
    frontier: list[_Node] = []
    if run.splittable(root):
        frontier = [root]
    else:
        leaf(root)
    requested: list[_Node] = list(frontier)
    derived: dict[int, tuple[int, int]] = {}  # node -> (parent, sibling): hist = parent - sibling
    hist: dict[int, dict[str, np.ndarray]] = {}
    noise: dict[int, int] = {}  # DP: a node histogram's noise variance, in releases (a derived one adds two)
    for d in range(cfg.depth):
        r = round + d
        if not frontier:
            ch.broadcast(hosts, LEVEL, {"done": True}, round=r)
            break
        ids = np.array([n.id for n in requested], dtype=np.int64)
        ch.broadcast(hosts, LEVEL, {"done": False, "nodes": ids, "rows": [n.sample for n in requested]}, round=r)
        got = gather_all(ch, hosts, HIST, round=r, timeout=cfg.timeout)
        level_hist: dict[int, dict[str, np.ndarray]] = {n.id: {} for n in frontier}
        for h in hosts:
            asked[h] += 1
            blobs = got[h].get("ct") if isinstance(got[h], dict) else None
            if not isinstance(blobs, list) or len(blobs) != len(requested):
                raise ProtocolError(f"{me}: malformed histograms from {h!r}")
            F = run.features[h]
            for n, blob in zip(requested, blobs):
                plain = run.cipher.open(blob, count=layout.plaintexts_for(F * B), sender=h)
                decoded = decode_bins(plain, bins=F * B, layout=layout).reshape(F, B, 3)
                decoded[..., 0] *= scale
                level_hist.setdefault(n.id, {})[h] = decoded
            for nid, (parent, sibling) in derived.items():
                level_hist[nid][h] = hist[parent][h] - level_hist[sibling][h]
        hist = level_hist
        noise = {**{n.id: 1 for n in requested}, **{nid: noise.get(p, 1) + 1 for nid, (p, _) in derived.items()}}
        decisions = {n.id: _decide(run, hosts, n, hist.get(n.id, {}), gvec, hvec, noise.get(n.id, 1)) for n in frontier}
        # the splits each host won, with every training row of the node (to partition)
        won: dict[str, list[tuple[_Node, SplitChoice]]] = {h: [] for h in hosts}
        for n in frontier:
            dec = decisions[n.id]
            if dec is not None and dec[0] != me:
                won[dec[0]].append((n, dec[1]))
        for h in hosts:
            mine = won[h]
            ch.send(h, SPLIT, {"nodes": np.array([n.id for n, _ in mine], dtype=np.int64),
                               "feature": np.array([c.feature for _, c in mine], dtype=np.int64),
                               "bin": np.array([c.bin for _, c in mine], dtype=np.int64),
                               "missing_left": np.array([c.missing_left for _, c in mine], dtype=bool),
                               "rows": [n.rows for n, _ in mine]}, round=r)
        parts = gather_all(ch, hosts, PARTITION, round=r, timeout=cfg.timeout)
        lefts: dict[int, np.ndarray] = {}
        for h in hosts:
            masks = parts[h].get("left") if isinstance(parts[h], dict) else None
            if not isinstance(masks, list) or len(masks) != len(won[h]):
                raise ProtocolError(f"{me}: malformed partition from {h!r}")
            for (n, _), m in zip(won[h], masks):
                lefts[n.id] = check_mask(m, length=n.rows.size, who=me, what=f"partition from {h!r}")
        frontier_next: list[_Node] = []
        requested, derived = [], {}
        for n in frontier:
            dec = decisions[n.id]
            if dec is None:
                leaf(n)
                continue
            owner, choice = dec
            if owner == me:
                left = _guest_split(run, n, choice, splits)
            else:
                left = lefts[n.id]
                splits[n.id] = Split(owner)
            a, b, ok_a, ok_b = _children(run, n, left, choice, owner, importance, node, leaf, frontier_next)
            small, large = (a, b) if a.sample.size <= b.sample.size else (b, a)
            ok_small = ok_a if small is a else ok_b
            ok_large = ok_b if small is a else ok_a
            if ok_small and ok_large:
                requested.append(small)
                derived[large.id] = (n.id, small.id)
            elif ok_small or ok_large:
                requested.append(small if ok_small else large)
        frontier = frontier_next
    return GuestTree(splits, leaves), delta, asked


def _guest_split(run: _GuestRun, n: _Node, choice: SplitChoice, splits: dict[int, Split]) -> np.ndarray:
    """The guest's own split of ``n`` into ``splits``; which of the node's rows go left."""
    f = choice.feature
    threshold, ml, left = run.binning.split(f, choice.bin, run.x[n.rows, f], chosen_left=choice.missing_left)
    splits[n.id] = Split(run.me, f, threshold, ml)
    return left


def _children(run: _GuestRun, n: _Node, left: np.ndarray, choice: SplitChoice, owner: str,
              importance: dict[str, Importance], node: Callable[[int, int, np.ndarray], _Node],
              leaf: Callable[[_Node], None], frontier: list[_Node]) -> tuple[_Node, _Node, bool, bool]:
    """The two children of the split ``n``: importance counted, each into ``frontier`` when it
    can split, else a leaf."""
    importance[owner] = importance[owner].add(choice.feature, choice.gain)
    lid, rid = children(n.id)
    a, b = node(lid, n.depth + 1, n.rows[left]), node(rid, n.depth + 1, n.rows[~left])
    ok_a, ok_b = run.splittable(a), run.splittable(b)
    for c, ok in ((a, ok_a), (b, ok_b)):
        if ok:
            frontier.append(c)
        else:
            leaf(c)
    return a, b, ok_a, ok_b


def _decide(run: _GuestRun, hosts: Sequence[str], n: _Node, host_hist: Mapping[str, np.ndarray], gvec: np.ndarray,
            hvec: np.ndarray, releases: int) -> tuple[str, SplitChoice] | None:
    """The best split of ``n`` over the guest's own features (exact histograms) and every host's
    (decrypted, under DP noised: ``releases`` noise draws per bin, two for a derived sibling);
    ties go to the guest, then to the hosts in order.

    Under DP a host's gains are corrected for the noise's mean inflation of ``G²``
    (:func:`~.boosting.best_split`'s ``g_noise_var``), so the guest's exact gains and the hosts'
    noised ones compare on the same footing; the largest of many noisy gains is still biased
    upwards (docs/secureboost.md, "Utility")."""
    cfg = run.config
    kw = dict(g_total=n.g, h_total=n.h, rows_total=int(n.sample.size), l2=cfg.l2,
              min_child_weight=cfg.min_child_weight, min_leaf_rows=cfg.min_leaf_rows, missing=cfg.missing_bins)
    best: tuple[str, SplitChoice] | None = None
    if run.bins.shape[1]:
        own = histogram(bins=run.bins[n.sample], g=gvec[n.sample], h=hvec[n.sample], n_bins=cfg.hist_bins)
        c = best_split(own, **kw)  # type: ignore[arg-type]
        if c is not None:
            best = (run.me, c)
    for h in hosts:
        var = releases * run.plan.sigmas(features=run.features[h])[0] ** 2 if run.plan is not None else 0.0
        c = best_split(host_hist[h], g_noise_var=var, **kw)  # type: ignore[arg-type]
        if c is not None and (best is None or c.gain > best[1].gain):
            best = (h, c)
    return best


# ------------------------------------------------------------------------------ host


@dataclass(frozen=True)
class _HostRun:
    """What a host's trees share for a whole run (fixed after set-up)."""

    channel: Channel
    guest: str
    config: BoostConfig
    crypto: CryptoSettings
    cipher: HistogramCipher
    plan: HistogramDp | None
    binning: Binning
    bins: np.ndarray  #: its bin indices of every aligned row
    x: np.ndarray  #: its raw features of every aligned row
    train_rows: np.ndarray
    widest: int  #: the noise margin's feature count (the guest's SETUP)
    ledger: PrivacyLedger | None
    dataset: str | None
    rng: np.random.Generator

    @property
    def me(self) -> str:
        return self.channel.party


def host_boost(
    channel: Channel,
    *,
    guest: str,
    x: np.ndarray,
    train_rows: np.ndarray,
    test_rows: np.ndarray,
    binning: Binning,
    config: BoostConfig,
    crypto: CryptoSettings,
    dp: PrivacySection | None,
    ledger: PrivacyLedger | None,
    dataset: str | None,
    rng: np.random.Generator,
    start_round: int,
) -> BoostResult:
    """A host's side of training: answers every histogram request and every split it won.

    ``x`` holds its aligned rows; ``binning`` its own bins (thresholds never leave it); ``rng``
    its **secret** randomness (DP noise: the OS CSPRNG outside tests). Under DP, ``ledger`` and
    ``dataset`` are required, and each level's histograms are charged before they are computed.

    Raises:
        ConfigError: DP without a ledger.
        ProtocolError: a request outside the protocol (rows it may not use, a node below
            ``2·min_leaf_rows`` sampled rows, overlapping nodes, more trees or levels than agreed).
    """
    me, T = channel.party, config.timeout
    if dp is not None and (ledger is None or dataset is None):
        raise ConfigError(f"{me}: differential privacy needs a privacy ledger and the dataset name to charge")
    _check_trainable(train_rows.size, config, who=me)
    r = start_round
    channel.send(guest, HELLO, {"rows": int(x.shape[0]), "train": int(train_rows.size), "test": int(test_rows.size),
                                "features": binning.features, "config": config.digest(), "crypto": crypto.digest(),
                                "dp": dp_digest(dp)}, round=r)
    setup = channel.recv(guest, SETUP, round=r, timeout=T)
    widest = setup.get("features") if isinstance(setup, dict) else None
    if isinstance(widest, bool) or not isinstance(widest, int) or widest < binning.features:
        raise ProtocolError(f"{me}: malformed set-up from the guest")
    cipher = crypto.host_cipher(setup.get("public"))
    plan = _plan(dp, config)
    run = _HostRun(channel, guest, config, crypto, cipher, plan, binning, binning.transform(x), x, np.sort(train_rows),
                   widest, ledger, dataset, rng)
    table: dict[tuple[int, int], tuple[int, float, bool]] = {}
    splits = np.zeros(binning.features, dtype=np.int64)
    # the first guest_trees trees are the guest's alone: no message, their rounds skipped
    releases, trees = 0, config.guest_trees
    r += 1 + config.guest_trees * (1 + config.depth)
    while True:
        msg = channel.recv(guest, TREE, round=r, timeout=T)
        if not isinstance(msg, dict):
            raise ProtocolError(f"{me}: malformed tree message from the guest")
        if msg.get("stop"):
            break
        if trees >= config.trees:
            raise ProtocolError(f"{me}: the guest started tree {trees + 1} of a job of {config.trees} trees")
        releases += _host_tree(run, msg, trees, table, splits, round=r + 1)
        trees += 1
        r += 1 + config.depth
    imp = channel.recv(guest, IMPORTANCE, round=r, timeout=T)
    counted = imp.get("splits") if isinstance(imp, dict) else None
    if not isinstance(counted, np.ndarray) or counted.shape != (binning.features,) or not np.array_equal(counted, splits):
        raise ProtocolError(f"{me}: malformed feature importance from the guest (its split counts are not this host's)")
    # the gains are the guest's (label statistics): the host reports its split counts only
    importance = Importance(splits, np.full(binning.features, np.nan)).named(binning.columns)
    epsilon = plan.spent(releases) if plan is not None else None
    return BoostResult(HostModel(binning, table), [], {me: importance}, plan, trees, {me: releases}, epsilon, r + 1)


def _host_tree(run: _HostRun, msg: Mapping[str, Any], t: int, table: dict[tuple[int, int], tuple[int, float, bool]],
               splits: np.ndarray, *, round: int) -> int:
    """One tree at a host (rounds ``round .. round + depth - 1``); returns the levels it released."""
    ch, cfg, me, guest = run.channel, run.config, run.me, run.guest
    sample = check_rows(msg.get("rows"), allowed=run.train_rows, who=me, what="tree sample")
    if sample.size != cfg.sample_size(run.train_rows.size) or msg.get("tree") != t:
        raise ProtocolError(f"{me}: the guest's sample for tree {t + 1} is not the agreed {cfg.sample_size(run.train_rows.size)} rows")
    layout = layout_for(run.crypto, run.cipher, run.plan, rows=sample.size, features=run.widest, loss=cfg.loss)
    cts = run.cipher.load(msg.get("gh"), count=sample.size * layout.row_plaintexts, sender=guest)
    position = np.full(run.x.shape[0], -1, dtype=np.int64)
    position[sample] = np.arange(sample.size)
    released = 0
    # the rows of every node of this tree the host can vouch for: the root's, and the children of
    # the splits it won itself (a split query must stay inside them: see _partitions)
    known: dict[int, np.ndarray] = {0: np.sort(run.train_rows)}
    for d in range(cfg.depth):
        r = round + d
        level = ch.recv(guest, LEVEL, round=r, timeout=cfg.timeout)
        if not isinstance(level, dict):
            raise ProtocolError(f"{me}: malformed level request from the guest")
        if level.get("done"):
            break
        nodes = int_array(level.get("nodes"), who=me, what="level request")
        rows = level.get("rows")
        if not isinstance(rows, list) or len(rows) != nodes.size or np.unique(nodes).size != nodes.size:
            raise ProtocolError(f"{me}: malformed level request from the guest")
        rows = [check_rows(rr, allowed=sample, who=me, what="node rows") for rr in rows]
        small = [int(n) for n, rr in zip(nodes, rows) if rr.size < 2 * cfg.min_leaf_rows]
        if small:
            raise ProtocolError(
                f"{me}: the guest asked for the histogram of node {small[0]} with fewer than "
                f"2·min_leaf_rows = {2 * cfg.min_leaf_rows} rows (it could single out rows)"
            )
        if rows and sum(rr.size for rr in rows) != np.unique(np.concatenate(rows)).size:
            raise ProtocolError(f"{me}: the guest's nodes of one level overlap (each row is in one node per level)")
        detail = {"tree": t + 1, "level": d, "nodes": int(nodes.size), "rows": int(sum(rr.size for rr in rows)),
                  "features": run.binning.features, "bins": cfg.hist_bins}
        with level_charge(run.ledger, run.dataset, run.plan, job=ch.job, round=r, guest=guest, detail=detail):
            blobs = [_histogram(run, cts, position[rr], rr, layout) for rr in rows]
            ch.send(guest, HIST, {"ct": blobs}, round=r)
        released += run.plan is not None
        ch.send(guest, PARTITION, {"left": _partitions(run, ch.recv(guest, SPLIT, round=r, timeout=cfg.timeout),
                                                        t, table, splits, depth=d, known=known)}, round=r)
    return released


def _histogram(run: _HostRun, cts: Sequence[Any], idx: np.ndarray, rows: np.ndarray, layout: HistLayout) -> bytes:
    """One node's encrypted histogram: per feature and bin the sum of its rows' ciphertexts, with
    the offsets, the row counts and (DP) the noise added, packed and re-randomized."""
    F, B = run.binning.features, run.config.hist_bins
    slots = run.bins[rows] + (np.arange(F) * B)[None, :]  # (rows, F): feature f's bin b is slot f·B + b
    counts = np.bincount(slots.ravel(), minlength=F * B)
    noise = None
    if run.plan is not None:
        noise = draw_noise(run.plan, features=F, bins=B, precision=run.crypto.precision, rng=run.rng)
    additions = offsets_plaintexts(counts=counts, noise=noise, layout=layout, modulus=run.cipher.modulus)
    if layout.packed:
        sums = run.cipher.bin_sums([cts[i] for i in idx], slots, F * B)
        return run.cipher.seal(sums, additions, shift=layout.width, per=layout.bins_per_plaintext)
    # unpacked: [[g]] and [[h]] of row i are cts[2i], cts[2i+1]; per bin G, H and the count
    both = [cts[2 * i] for i in idx] + [cts[2 * i + 1] for i in idx]
    sums = run.cipher.bin_sums(both, np.vstack([2 * slots, 2 * slots + 1]), 2 * F * B)
    full: list[Any] = []
    for k in range(F * B):
        full += [sums[2 * k], sums[2 * k + 1], 1]  # the count's ciphertext is Enc(0) plus its addition
    return run.cipher.seal(full, additions, shift=0, per=1)


def _partitions(run: _HostRun, msg: Any, t: int, table: dict[tuple[int, int], tuple[int, float, bool]],
                splits: np.ndarray, *, depth: int, known: dict[int, np.ndarray]) -> list[np.ndarray]:
    """The splits this host won at a level: each into its lookup table; which rows go left.

    A split answers ``x_f <= threshold`` for every row it names, so the host answers only what an
    honest tree could ask (found by the privacy review: a guest naming every (feature, bin) over
    all rows read every row's bins): nodes of this level (ids ``2^d − 1 .. 2^(d+1) − 2``), each
    split once, with disjoint row sets of at least ``2·min_leaf_rows`` rows, the root's rows all
    the training rows, and a node whose parent this host split exactly that split's child.
    Which (feature, bin) the guest picks is its choice in the protocol anyway (it computes the
    gains); the rows are what the host can check."""
    me = run.me
    if not isinstance(msg, dict):
        raise ProtocolError(f"{me}: malformed split message from the guest")
    nodes = int_array(msg.get("nodes"), who=me, what="split nodes")
    feats = int_array(msg.get("feature"), who=me, what="split features")
    bins = int_array(msg.get("bin"), who=me, what="split bins")
    nan_left = check_mask(msg.get("missing_left"), length=nodes.size, who=me, what="split NaN sides")
    rows = msg.get("rows")
    if not (nodes.size == feats.size == bins.size) or not isinstance(rows, list) or len(rows) != nodes.size:
        raise ProtocolError(f"{me}: malformed split message from the guest")
    out = []
    first, last = 2**depth - 1, 2 ** (depth + 1) - 2
    if np.unique(nodes).size != nodes.size:
        raise ProtocolError(f"{me}: the guest's split message names a node twice")
    claimed: list[np.ndarray] = []
    for node, f, b, chosen, rr in zip(nodes.tolist(), feats.tolist(), bins.tolist(), nan_left.tolist(), rows):
        if not 0 <= f < run.binning.features or not 0 <= b < run.binning.split_bins(f) or (t, node) in table:
            raise ProtocolError(f"{me}: the guest's split ({node}, feature {f}, bin {b}) does not exist here")
        rr = check_rows(rr, allowed=run.train_rows, who=me, what="split rows")
        if not first <= node <= last:
            raise ProtocolError(f"{me}: the guest's split names node {node}, which is not a node of level {depth}")
        if rr.size < 2 * run.config.min_leaf_rows:
            raise ProtocolError(f"{me}: the guest's split of node {node} names fewer than 2·min_leaf_rows rows")
        expected = known.get(node)
        if expected is not None and not np.array_equal(np.sort(rr), expected):
            raise ProtocolError(f"{me}: the guest's split of node {node} names other rows than that node holds")
        parent = (node - 1) // 2
        if node and expected is None and parent in known and not np.isin(rr, known[parent]).all():
            raise ProtocolError(f"{me}: the guest's split of node {node} names rows outside its parent")
        claimed.append(rr)
        threshold, ml, left = run.binning.split(f, b, run.x[rr, f], chosen_left=bool(chosen))
        table[(t, node)] = (f, threshold, ml)
        splits[f] += 1
        lid, rid = 2 * node + 1, 2 * node + 2
        known[lid], known[rid] = np.sort(rr[left]), np.sort(rr[~left])
        out.append(left)
    if claimed and sum(c.size for c in claimed) != np.unique(np.concatenate(claimed)).size:
        raise ProtocolError(f"{me}: the guest's splits of one level overlap (each row is in one node per level)")
    return out
