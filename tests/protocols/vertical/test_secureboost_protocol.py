"""SecureBoost's protocol: the same trees as a centralized grower, on every backend and packing,
what each party can read in the messages it really received, and the hosts' refusals.

Paillier runs here use 1024-bit keys where the test is about the protocol's logic (values,
messages), not about security (``[crypto] insecure``); the acceptance test against
scikit-learn (test_secureboost_sklearn.py) runs 2048-bit keys.
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedsilo.crypto.base import WIRE_MAGIC
from fedsilo.errors import DataError, ProtocolError
from fedsilo.protocols import codec
from fedsilo.protocols.channel import InProcessHub, run_parties
from fedsilo.protocols.metrics import auc
from fedsilo.protocols.spec import ModelSection
from fedsilo.protocols.vertical.secureboost import BoostConfig, CryptoSettings, SecureBoostSpec, holdout_split
from fedsilo.protocols.vertical.secureboost.job import party_table
from fedsilo.protocols.vertical.secureboost import messages as sb
from fedsilo.protocols.vertical.secureboost.boosting import (
    base_score,
    best_split,
    histogram,
    leaf_value,
    logistic_gradients,
    sigmoid,
)
from fedsilo.protocols.vertical.secureboost.cipher import PlainHistograms
from fedsilo.protocols.vertical.secureboost.model import HostModel, fit_binning, joint_scores
from fedsilo.protocols.vertical.secureboost.packing import decode_bins, encode_rows
from fedsilo.protocols.vertical.secureboost.parties import host_boost, layout_for
from fedsilo.protocols.vertical.secureboost.prediction import serve_routes
from vt_data import breast_cancer_tables

SMALL_KEYS = {"key_bits": 1024, "workers": 1}  # logic tests only (insecure)
MODEL = {"kind": "secureboost", "trees": 4, "depth": 3, "learning_rate": 0.3, "bins": 16, "min_leaf_rows": 10,
         "min_child_weight": 1e-3, "l2": 1.0}
ROLES = {"g": "guest", "h0": "host", "h1": "host"}


def _spec(backend: str = "plain", params: dict | None = None, **model: Any) -> SecureBoostSpec:
    cfg = BoostConfig.from_section(ModelSection(**{**MODEL, **model}), timeout=120.0)
    return SecureBoostSpec("g", ("h0", "h1"), "pid", "target", CryptoSettings.from_params(backend, params or {}), cfg,
                           None, 0.2, {}, True)


def _run(spec: SecureBoostSpec, tables: dict[str, pd.DataFrame], seed: int = 0) -> tuple[InProcessHub, dict[str, Any]]:
    """Every party of ``spec`` through the vertical task's own entry point, on a hub the test reads."""
    from fedsilo.silos.data import FrameSource
    from fedsilo.silos.runner import party_functions
    from fedsilo.silos.tasks.secureboost import SecureBoostPlan, parties_for
    from fedsilo.silos.tasks.vertical import VERTICAL

    plan = SecureBoostPlan("sb-test", spec, seed)
    sources = {n: FrameSource(t, n, origin=n) for n, t in tables.items()}
    hub = InProcessHub("sb-test", ["g", *spec.hosts])
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 1024-bit keys warn
        parties = parties_for(plan, sources, ledger_dir=Path(tmp), budgets={}, noise_seed=None)
        return hub, run_parties(hub, party_functions(VERTICAL, plan, parties))


@pytest.fixture(scope="module")
def tables() -> dict[str, pd.DataFrame]:
    return breast_cancer_tables(2, guest_cols=4, host_cols=5, drop=0.05, seed=1)


@pytest.fixture(scope="module")
def plain_run(tables) -> tuple[InProcessHub, dict[str, Any]]:
    return _run(_spec(), tables)


def _aligned(tables: dict[str, pd.DataFrame], spec: SecureBoostSpec):
    """Each party's aligned features (the agreed order: sorted IDs), the labels, the split."""
    ids = sorted(set.intersection(*[set(t["pid"].astype(str)) for t in tables.values()]))
    xs, y = {}, None
    for p in ("g", *spec.hosts):
        d = party_table(tables[p], source=p, id_column="pid", label="target" if p == "g" else None, config=spec.config)
        where = {i: k for k, i in enumerate(d.ids)}
        rows = np.array([where[i] for i in ids])
        xs[p] = (d.features[rows], d.columns)
        if p == "g":
            y = d.labels[rows]
    rng = np.random.Generator(np.random.Philox(np.random.SeedSequence([0, 0])))  # the guest's public stream
    train, test = holdout_split(rng, len(ids), spec.test_fraction)
    return xs, y, train, test


def _reference(xs, y, train, cfg: BoostConfig) -> np.ndarray:
    """A centralized grower of the same trees (pooled columns, each party's own bins; guest's
    columns first as the protocol breaks ties): raw scores of every aligned row."""
    binnings = [fit_binning(x, train, cols, bins=cfg.bins, bounds={}, required=False, source=p) for p, (x, cols) in xs.items()]
    x_all = np.hstack([x for x, _ in xs.values()])
    bins = np.hstack([b.transform(x) for b, (x, _) in zip(binnings, xs.values())])
    thresholds = [t for b in binnings for t in b.thresholds]
    base = base_score(labels=y[train])
    raw = np.full(y.size, base)
    for _ in range(cfg.trees):
        g, h = np.zeros(y.size), np.zeros(y.size)
        g[train], h[train] = logistic_gradients(raw=raw[train], labels=y[train])
        frontier = [(train, np.arange(y.size), 0)]  # (training rows, every row routed here, depth)
        delta = np.zeros(y.size)
        while frontier:
            rows, routed, depth = frontier.pop()
            G, H = g[rows].sum(), h[rows].sum()
            choice = None
            if depth < cfg.depth and rows.size >= 2 * cfg.min_leaf_rows and H >= 2 * cfg.min_child_weight:
                choice = best_split(histogram(bins=bins[rows], g=g[rows], h=h[rows], n_bins=cfg.bins), g_total=G, h_total=H,
                                    rows_total=rows.size, l2=cfg.l2, min_child_weight=cfg.min_child_weight,
                                    min_leaf_rows=cfg.min_leaf_rows)
            if choice is None:
                delta[routed] = leaf_value(g_sum=G, h_sum=H, l2=cfg.l2, learning_rate=cfg.learning_rate)
                continue
            t = thresholds[choice.feature][choice.bin]
            lr, lt = x_all[rows, choice.feature] <= t, x_all[routed, choice.feature] <= t
            frontier += [(rows[lr], routed[lt], depth + 1), (rows[~lr], routed[~lt], depth + 1)]
        raw += delta
    return raw


# ------------------------------------------------------------------------------ the trees


def test_federated_trees_are_the_centralized_trees(tables, plain_run) -> None:
    """Two hosts, plain backend: the joint model scores every aligned row as a centralized grower
    of the same trees does, and the joint prediction's held-out metrics are that model's."""
    spec = _spec()
    hub, out = plain_run
    xs, y, train, test = _aligned(tables, spec)
    ref = _reference(xs, y, train, spec.config)
    fed = joint_scores(out["g"]["model"], xs["g"][0], {h: (out[h]["model"], xs[h][0]) for h in spec.hosts})
    np.testing.assert_allclose(fed, ref, rtol=0, atol=1e-7)
    assert out["g"]["final"]["auc"] == pytest.approx(auc(labels=y[test], scores=sigmoid(ref[test])), abs=1e-12)
    splits = [s.owner for t in out["g"]["model"].trees for s in t.splits.values()]
    assert {"g", "h0", "h1"} <= set(splits)  # every party won splits: the comparison covers all paths
    # each party's importance: its own names; the guest names the hosts' features by index only
    assert set(out["h0"]["importance"]["h0"]) == set(xs["h0"][1])
    assert set(out["g"]["importance"]["h0"]) == {f"#{j}" for j in range(5)}
    assert [v["splits"] for v in out["h0"]["importance"]["h0"].values()] == \
           [v["splits"] for v in out["g"]["importance"]["h0"].values()]


@pytest.mark.parametrize("packed", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_paillier_gives_the_plain_backend_s_trees(tables, plain_run, packed: bool) -> None:
    """Paillier is exact: packed (one ciphertext per row, many bins per ciphertext) and unpacked
    (one ciphertext per value) give the plain run's metrics and importance to the last bit."""
    _, plain = plain_run
    spec = _spec("paillier", {**SMALL_KEYS, "packed": packed})
    hub, out = _run(spec, tables)
    assert out["g"]["final"] == plain["g"]["final"]
    assert out["g"]["importance"] == plain["g"]["importance"]
    # on the wire: per row one ciphertext packed (two unpacked); per node histogram of 5 features ×
    # 16 bins, ceil(80 / bins per plaintext) ciphertexts packed, 3 per bin unpacked
    width = 2 * 1024 // 8
    for e in hub.log:
        body = codec.decode(e.body)
        if e.kind == sb.TREE and not body.get("stop"):
            assert len(body["gh"]) == body["rows"].size * (1 if packed else 2) * width
        if e.kind == sb.HIST:
            layout = layout_for(spec.crypto, PlainHistograms(key_bits=1024), None, rows=out["g"]["rows"]["train"],
                                features=5)
            per_node = layout.plaintexts_for(5 * 16)
            assert per_node == (-(-80 // layout.bins_per_plaintext) if packed else 240)
            assert all(len(b) == per_node * width for b in body["ct"])
    if packed:
        assert layout.bins_per_plaintext >= 8


def test_subsample_grows_each_tree_on_its_announced_share(tables) -> None:
    spec = _spec(subsample=0.5)
    hub, out = _run(spec, tables)
    n_train = out["g"]["rows"]["train"]
    samples = [codec.decode(e.body)["rows"] for e in hub.log if e.kind == sb.TREE and e.recipient == "h0"
               and not codec.decode(e.body).get("stop")]
    assert len(samples) == spec.config.trees and all(s.size == round(0.5 * n_train) for s in samples)
    assert len({s.tobytes() for s in samples}) == spec.config.trees  # a fresh sample per tree
    assert out["g"]["final"]["auc"] > 0.9


# ------------------------------------------------------------------------------ who reads what


def _run_capturing_key(spec: SecureBoostSpec, tables: dict[str, pd.DataFrame]):
    """A run with the guest's key captured (the test may decrypt what the guest could)."""
    keys: list[Any] = []
    original = CryptoSettings.keygen

    def capture(self):
        cipher, public = original(self)
        keys.append(cipher)
        return cipher, public

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CryptoSettings, "keygen", capture)
        hub, out = _run(spec, tables)
    return hub, out, keys[0]


@pytest.fixture(scope="module")
def paillier_run(tables):
    """A 1024-bit Paillier run with the guest's key captured."""
    return _run_capturing_key(_spec("paillier", SMALL_KEYS), tables)


def _leaves(obj: Any, path: str = ""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, f"{path}[{i}]")
    else:
        yield path, obj


def test_no_host_receives_labels_g_or_h_in_the_clear(tables, paillier_run) -> None:
    """Every value a host received: row indices and small integers, the guest's public key,
    the importance floats, and ciphertexts — each a number of about 2·key_bits bits that decrypts
    (with the guest's key, which the host does not have) to the packed g and h of a row."""
    hub, out, guest_cipher = paillier_run
    xs, y, train, _ = _aligned(tables, _spec())
    g0, h0 = logistic_gradients(raw=np.full(train.size, base_score(labels=y[train])), labels=y[train])
    secrets_ = np.concatenate([y, g0, h0])
    width = guest_cipher.width
    for host in ("h0", "h1"):
        kinds = set()
        for e in hub.received_by(host):
            kinds.add(e.kind)
            for path, v in _leaves(codec.decode(e.body)):
                where = f"{e.kind}{path}"
                if isinstance(v, np.ndarray) and v.dtype.kind == "f" or isinstance(v, float):
                    assert e.kind == sb.IMPORTANCE, where  # the only floats a host gets: total gains
                    nonzero = np.atleast_1d(v)[np.atleast_1d(v) != 0]
                    assert not np.isin(nonzero, secrets_).any(), where
                elif isinstance(v, np.ndarray):
                    assert v.dtype.kind in "iub" and (v.size == 0 or int(v.max()) < 10**6), where
                elif isinstance(v, bytes) and e.kind == sb.TREE:
                    cts = [int.from_bytes(v[i : i + width], "big") for i in range(0, len(v), width)]
                    assert min(c.bit_length() for c in cts) > 1024 + 900, where  # ciphertexts mod n², not plaintexts
        assert {sb.TREE, sb.LEVEL, sb.SPLIT, sb.IMPORTANCE, sb.PREDICT} <= kinds
    # and what the first tree's ciphertexts hold is exactly g and h of the sampled rows
    first = next(codec.decode(e.body) for e in hub.received_by("h0") if e.kind == sb.TREE)
    plain = guest_cipher.open(first["gh"], count=first["rows"].size, sender="test")
    layout = layout_for(_spec("paillier", SMALL_KEYS).crypto, guest_cipher, None, rows=first["rows"].size, features=5)
    assert plain == encode_rows(g=g0, h=h0, layout=layout, modulus=guest_cipher.modulus)


def test_guest_receives_no_host_feature_value_or_threshold(tables, paillier_run) -> None:
    """From the hosts the guest gets digests and counts, ciphertexts and left/right booleans.
    Decrypted, the histograms hold sums of its own g and h and row counts: no host feature value
    or threshold appears anywhere, and its model knows only which host owns a host split."""
    hub, out, guest_cipher = paillier_run
    spec = _spec("paillier", SMALL_KEYS)
    xs, y, train, _ = _aligned(tables, spec)
    host_values = set()
    for h in spec.hosts:
        x, cols = xs[h]
        b = fit_binning(x, train, cols, bins=spec.config.bins, bounds={}, required=False, source=h)
        host_values |= set(np.unique(x).tolist()) | {float(v) for t in b.thresholds for v in t}
        model = out[h]["model"]
        assert isinstance(model, HostModel) and model.table  # the thresholds live here
    readable: list[float] = []
    for e in hub.received_by("g"):
        if e.sender == "g" or e.kind.startswith("psi"):
            continue
        payload = codec.decode(e.body)
        for path, v in _leaves(payload):
            if isinstance(v, np.ndarray):
                assert v.dtype.kind in "b" or e.kind == sb.HELLO, f"{e.kind}{path}"
            elif isinstance(v, float):
                readable.append(v)
        if e.kind == sb.HIST:
            for blob in payload["ct"]:
                layout = layout_for(spec.crypto, guest_cipher, None, rows=out["g"]["rows"]["train"], features=5)
                plain = guest_cipher.open(blob, count=layout.plaintexts_for(5 * spec.config.bins), sender=e.sender)
                readable += decode_bins(plain, bins=5 * spec.config.bins, layout=layout)[:, :2].ravel().tolist()
    assert readable and not any(v in host_values for v in readable if v not in (0.0,))
    for tree in out["g"]["model"].trees:
        for split in tree.splits.values():
            if split.owner != "g":
                assert split.feature is None and split.threshold is None


# ------------------------------------------------------------------------------ refusals


def _fake_guest_against_host(tables, send, *, expect: str) -> None:
    """A guest that follows the set-up, then sends what ``send(channel, sample, blob)`` sends:
    the real host must refuse it with ``expect``."""
    spec = _spec()
    cfg, crypto = spec.config, spec.crypto
    x, cols = _aligned(tables, spec)[0]["h0"]
    train = np.arange(x.shape[0] - 20)
    test = np.arange(x.shape[0] - 20, x.shape[0])
    binning = fit_binning(x, train, cols, bins=cfg.bins, bounds={}, required=False, source="h0")
    cipher = PlainHistograms()
    layout = layout_for(crypto, cipher, None, rows=train.size, features=5)
    blob = cipher.encrypt_rows(encode_rows(g=np.zeros(train.size), h=np.full(train.size, 0.2), layout=layout,
                                           modulus=cipher.modulus))

    def guest(ch):
        ch.recv("h0", sb.HELLO, round=2, timeout=30)
        ch.send("h0", sb.SETUP, {"public": b"", "features": 5}, round=2)
        ch.send("h0", sb.TREE, {"stop": False, "tree": 0, "rows": train, "gh": blob}, round=3)
        send(ch, train)
        ch.recv("h0", sb.HIST, round=4, timeout=30)  # wakes on the host's failure

    def host(ch):
        return host_boost(ch, guest="g", x=x, train_rows=train, test_rows=test, binning=binning, config=cfg, crypto=crypto,
                          dp=None, ledger=None, dataset=None, rng=np.random.default_rng(0), start_round=2)

    hub = InProcessHub("fake", ["g", "h0"])
    with pytest.raises(ProtocolError, match=expect):
        run_parties(hub, {"g": guest, "h0": host})


def test_host_refuses_the_histogram_of_a_node_that_would_single_out_rows(tables) -> None:
    _fake_guest_against_host(tables, lambda ch, train: ch.send("h0", sb.LEVEL, {"done": False, "nodes": np.array([0]),
                                                                             "rows": [train[:3]]}, round=3 + 1),
                             expect="fewer than 2·min_leaf_rows")


def test_host_refuses_overlapping_nodes_and_rows_outside_the_sample(tables) -> None:
    _fake_guest_against_host(tables, lambda ch, train: ch.send("h0", sb.LEVEL, {"done": False, "nodes": np.array([1, 2]),
                                                                             "rows": [train[:40], train[20:60]]}, round=4),
                             expect="overlap")
    _fake_guest_against_host(tables, lambda ch, train: ch.send("h0", sb.LEVEL, {"done": False, "nodes": np.array([0]),
                                                                             "rows": [np.arange(len(train), len(train) + 25)]},
                                                               round=4),
                             expect="rows it may not use")


def test_host_answers_only_held_out_rows_at_its_own_splits() -> None:
    x = np.array([[0.0], [1.0], [2.0], [3.0]])
    model = HostModel(fit_binning(x, np.arange(4), ["a"], bins=4, bounds={}, required=False, source="h"), {(0, 0): (0, 1.5)})
    for rows, nodes, expect in ((np.array([1]), np.array([0]), "may not score"), (np.array([3]), np.array([1]), "does not hold")):
        def guest(ch, rows=rows, nodes=nodes):
            ch.send("h", sb.PREDICT, {"tree": np.zeros(1, dtype=np.int64), "node": nodes, "rows": rows}, round=9)
            ch.recv("h", sb.ROUTE, round=9, timeout=30)

        def host(ch):
            return serve_routes(ch, guest="g", model=model, x=x, allowed=np.array([2, 3]), trees=1, depth=1, round=9,
                                timeout=30)

        with pytest.raises(ProtocolError, match=expect):
            run_parties(InProcessHub("p", ["g", "h"]), {"g": guest, "h": host})


def test_the_public_key_travels_in_the_backend_s_format_and_histograms_are_whole_ciphertexts(paillier_run) -> None:
    """The guest's public key travels as the backend's own format (magic, fingerprint); the row
    and histogram blobs are multiples of the ciphertext width."""
    hub, _, guest_cipher = paillier_run
    setup = next(codec.decode(e.body) for e in hub.log if e.kind == sb.SETUP)
    assert setup["public"].startswith(WIRE_MAGIC + b"PUBK")
    for e in hub.log:
        if e.kind == sb.HIST:
            assert all(len(b) % guest_cipher.width == 0 for b in codec.decode(e.body)["ct"])


def _split_oracle_run(split_message: Any) -> None:
    """A deviating guest: one honest root level, then the SPLIT it chooses (found by the privacy
    review: a SPLIT naming every (feature, bin) over all rows read every row's bins)."""
    from fedsilo.protocols.channel import InProcessHub, run_parties
    from fedsilo.protocols.spec import ModelSection
    from fedsilo.protocols.vertical.secureboost import BoostConfig, CryptoSettings
    from fedsilo.protocols.vertical.secureboost import messages as sb
    from fedsilo.protocols.vertical.secureboost.cipher import PlainHistograms
    from fedsilo.protocols.vertical.secureboost.model import fit_binning
    from fedsilo.protocols.vertical.secureboost.packing import encode_rows
    from fedsilo.protocols.vertical.secureboost.parties import host_boost, layout_for

    rng = np.random.default_rng(3)  # public test data
    n, F, B = 300, 4, 16
    x = rng.normal(size=(n, F))
    cols = [f"c{j}" for j in range(F)]
    cfg = BoostConfig.from_section(ModelSection(kind="secureboost", trees=2, depth=2, bins=B, min_leaf_rows=20,
                                                min_child_weight=1e-3), timeout=30.0)
    crypto = CryptoSettings.from_params("plain", {})
    train, test = np.arange(n - 30), np.arange(n - 30, n)
    binning = fit_binning(x, train, cols, bins=B, bounds={c: (-4.0, 4.0) for c in cols}, required=True, source="h0")
    cipher = PlainHistograms()
    layout = layout_for(crypto, cipher, None, rows=train.size, features=F)
    blob = cipher.encrypt_rows(encode_rows(g=np.zeros(train.size), h=np.full(train.size, 0.2), layout=layout,
                                           modulus=cipher.modulus))

    def guest(ch: Any) -> None:
        ch.recv("h0", sb.HELLO, round=2, timeout=30)
        ch.send("h0", sb.SETUP, {"public": b"", "features": F}, round=2)
        ch.send("h0", sb.TREE, {"stop": False, "tree": 0, "rows": train, "gh": blob}, round=3)
        ch.send("h0", sb.LEVEL, {"done": False, "nodes": np.array([0]), "rows": [train]}, round=4)
        ch.recv("h0", sb.HIST, round=4, timeout=30)
        ch.send("h0", sb.SPLIT, split_message(binning, train), round=4)
        ch.recv("h0", sb.PARTITION, round=4, timeout=30)

    def host(ch: Any) -> Any:
        return host_boost(ch, guest="g", x=x, train_rows=train, test_rows=test, binning=binning, config=cfg,
                          crypto=crypto, dp=None, ledger=None, dataset=None, rng=np.random.default_rng(0),
                          start_round=2)

    run_parties(InProcessHub("oracle", ["g", "h0"]), {"g": guest, "h0": host})


def _every_bin(binning: Any, train: np.ndarray, *, nodes: Any = None) -> dict[str, Any]:
    pairs = [(f, b) for f in range(binning.features) for b in range(binning.thresholds[f].size)]
    return {"nodes": np.arange(len(pairs), dtype=np.int64) if nodes is None else nodes(len(pairs)),
            "feature": np.array([f for f, _ in pairs], dtype=np.int64),
            "bin": np.array([b for _, b in pairs], dtype=np.int64), "missing_left": np.zeros(len(pairs), dtype=bool),
            "rows": [train] * len(pairs)}


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (lambda binning, train: _every_bin(binning, train), "not a node of level 0"),
        (lambda binning, train: _every_bin(binning, train, nodes=lambda k: np.zeros(k, dtype=np.int64)), "names a node twice"),
        (lambda binning, train: {"nodes": np.array([0]), "feature": np.array([0]), "bin": np.array([0]),
                                 "missing_left": np.zeros(1, dtype=bool), "rows": [train[:100]]}, "other rows than that node holds"),
        (lambda binning, train: {"nodes": np.array([0]), "feature": np.array([0]), "bin": np.array([0]),
                                 "missing_left": np.zeros(1, dtype=bool), "rows": [train[:10]]}, "fewer than 2·min_leaf_rows"),
    ],
    ids=["invented-nodes", "one-node-many-times", "root-with-other-rows", "tiny-node"],
)
def test_a_host_answers_only_splits_an_honest_tree_could_ask(message: Any, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        _split_oracle_run(message)


# ------------------------------------------------------------------------------ regression, guest-only trees, NaNs


def _regression_tables(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The same parties with a real-valued target at the guest (a column it does not keep)."""
    g = tables["g"].copy()
    target = g.pop("mean radius")
    g["target"] = target * 10.0 + 3.0  # labels of order 100: nothing like an index or a boolean
    return {**tables, "g": g}


@pytest.fixture(scope="module")
def regression_run(tables):
    rt = _regression_tables(tables)
    return (rt, *_run_capturing_key(_spec("paillier", SMALL_KEYS, objective="squared_error"), rt))


def test_regression_no_host_receives_labels_residuals_or_their_size(regression_run) -> None:
    """Squared error over Paillier: a host receives indices, booleans and ciphertexts only (no
    float at all: the split counts are integers), and the row ciphertexts decrypt to the
    residuals divided by the guest's own power-of-two scale, so not even max |y - pred| is
    public. The joint prediction scores the held-out rows with RMSE/MAE/R²."""
    rt, hub, out, guest_cipher = regression_run
    spec = _spec("paillier", SMALL_KEYS, objective="squared_error")
    xs, y, train, _ = _aligned(rt, spec)
    assert y.max() > 50  # real-valued labels
    for host in spec.hosts:
        for e in hub.received_by(host):
            for path, v in _leaves(codec.decode(e.body)):
                where = f"{e.kind}{path}"
                assert not isinstance(v, float), where
                if isinstance(v, np.ndarray):
                    assert v.dtype.kind in "iub" and (v.size == 0 or int(v.max()) < 10**6), where
                elif isinstance(v, bytes) and e.kind == sb.TREE:
                    width = guest_cipher.width
                    cts = [int.from_bytes(v[i : i + width], "big") for i in range(0, len(v), width)]
                    assert min(c.bit_length() for c in cts) > 1024 + 900, where
    first = next(codec.decode(e.body) for e in hub.received_by("h0") if e.kind == sb.TREE)
    layout = layout_for(spec.crypto, guest_cipher, None, rows=first["rows"].size, features=5, loss=spec.config.loss)
    assert layout.g_bound == 1.0 and layout.h_bound == 1.0  # public bounds of the scaled residual and h = 1
    g0 = np.full(train.size, y[train].mean()) - y[train]
    scale = 2.0 ** np.ceil(np.log2(np.abs(g0).max()))
    plain = guest_cipher.open(first["gh"], count=first["rows"].size, sender="test")
    assert plain == encode_rows(g=g0 / scale, h=np.ones(train.size), layout=layout, modulus=guest_cipher.modulus)
    assert set(out["g"]["final"]) == {"rmse", "mae", "r2", "test_loss"} and out["g"]["final"]["r2"] > 0.5


def test_regression_federated_trees_are_the_plain_backend_s(tables, regression_run) -> None:
    rt, _, out, _ = regression_run
    hub, plain = _run(_spec(objective="squared_error"), rt)
    assert out["g"]["final"] == pytest.approx(plain["g"]["final"], rel=1e-9)
    assert out["g"]["importance"] == plain["g"]["importance"]


def test_guest_only_trees_send_nothing_to_the_hosts(tables, plain_run) -> None:
    """``guest_trees = 2``: the first two trees are grown on the guest's columns alone: no row
    ciphertexts, no level, no split message for them; the hosts' lookup tables start at tree 2."""
    spec = _spec(guest_trees=2)
    hub, out = _run(spec, tables)
    trees = [codec.decode(e.body) for e in hub.log if e.kind == sb.TREE and e.recipient == "h0"]
    assert [m["tree"] for m in trees if not m.get("stop")] == [2, 3]
    assert all(codec.decode(e.body)["tree"] >= 2 for e in hub.log if e.kind == sb.TREE and not codec.decode(e.body).get("stop"))
    model = out["g"]["model"]
    for t in (0, 1):
        assert {s.owner for s in model.trees[t].splits.values()} == {"g"}
    for h in spec.hosts:
        assert all(t >= 2 for t, _ in out[h]["model"].table)
    assert [sum(r["splits"][h] for h in spec.hosts) for r in out["g"]["history"]][:2] == [0, 0]
    # a guest-only first tree is the joint first tree when the guest wins every split there anyway
    assert out["g"]["final"]["auc"] > 0.9


def test_nan_rows_follow_each_split_s_learned_side(tables) -> None:
    """Missing-value bins over Paillier: NaNs at the guest and at a host are binned, every split
    records where they go, and the federated model scores every aligned row (NaNs included) as
    the plain run does."""
    rng = np.random.default_rng(4)  # public test data
    t = {p: f.copy() for p, f in tables.items()}
    for p, c in (("g", "mean texture"), ("h0", t["h0"].columns[1]), ("h1", t["h1"].columns[2])):
        t[p].loc[rng.random(len(t[p])) < 0.2, c] = np.nan
    _, plain = _run(_spec(missing="bin"), t)
    hub, out = _run(_spec("paillier", SMALL_KEYS, missing="bin"), t)
    assert out["g"]["final"] == plain["g"]["final"] and out["g"]["final"]["auc"] > 0.9
    splits = [codec.decode(e.body) for e in hub.log if e.kind == sb.SPLIT]
    assert all(s["missing_left"].dtype == np.bool_ and s["missing_left"].size == s["nodes"].size for s in splits)
    assert all(isinstance(ml, bool) for h in ("h0", "h1") for (_, _, ml) in out[h]["model"].table.values())
    with pytest.raises(DataError, match="column '.*' has [0-9]+ missing/NaN/infinite value"):
        _run(_spec(), t)  # the default refuses a NaN, naming the column
