"""Helpers of the vertical tests: data splits, a centralized reference, a leak scanner."""
from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer

from fedsilo.crypto.base import WIRE_MAGIC
from fedsilo.protocols import codec
from fedsilo.protocols.channel import InProcessHub, run_parties
from fedsilo.protocols.vertical import VerticalSpec
from fedsilo.protocols.vertical.taylor import LOG2_MINUS_HALF, learning_rate

ROOT = Path(__file__).resolve().parents[3]
BANK = ROOT / "examples" / "bank_vertical"
HOSPITAL = ROOT / "examples" / "hospital_vertical"


def breast_cancer_tables(
    n_hosts: int = 1, *, guest_cols: int = 5, host_cols: int = 5, drop: float = 0.0, seed: int = 0
) -> dict[str, pd.DataFrame]:
    """breast_cancer split by columns: guest ``g`` (label + first columns), hosts ``h0``, ``h1``…

    Each party drops a random ``drop`` share of the patients and shuffles its rows, so PSI has
    work to do.
    """
    data = load_breast_cancer(as_frame=True)
    frame = data.frame.copy()
    frame.insert(0, "pid", [f"P{i:04d}" for i in range(len(frame))])
    cols = list(data.feature_names)
    rng = np.random.default_rng(seed)
    parts = {"g": ["pid", "target", *cols[:guest_cols]]}
    start = guest_cols
    for h in range(n_hosts):
        parts[f"h{h}"] = ["pid", *cols[start : start + host_cols]]
        start += host_cols
    out = {}
    for name, c in parts.items():
        keep = rng.random(len(frame)) >= drop
        out[name] = frame.loc[keep, c].sample(frac=1.0, random_state=int(rng.integers(1 << 30))).reset_index(drop=True)
    return out


def breast_cancer_bounds() -> dict[str, tuple[float, float]]:
    """Public bounds of every breast_cancer feature: the min/max published in the data set's
    description (scikit-learn's DESCR), as the silos' data loader reads them."""
    from fedsilo.silos.data import _descr_bounds

    data = load_breast_cancer()
    bounds = _descr_bounds(data.DESCR, list(data.feature_names))
    assert len(bounds) == len(data.feature_names)
    return bounds


def bank_tables() -> dict[str, pd.DataFrame]:
    return {"bank": pd.read_csv(BANK / "bank.csv"), "partner": pd.read_csv(BANK / "partner.csv")}


def run_job(spec: VerticalSpec, tables: Mapping[str, pd.DataFrame], *, seed: int = 0, noise_seed: int | None = None,
            **kw: Any) -> tuple[InProcessHub, dict[str, Any]]:
    """Run every party of ``spec`` (the vertical task's own party entry points, each loading its
    own table) on a hub the test can inspect; under DP each data party charges a throw-away
    ledger with a large budget. ``noise_seed`` makes the secret streams reproducible (test-only,
    not private); by default they come from the OS CSPRNG."""
    from fedsilo.silos.data import FrameSource
    from fedsilo.silos.runner import party_functions
    from fedsilo.silos.tasks.vertical import VERTICAL, VerticalPlan, parties_for

    top = spec.topology
    plan = VerticalPlan("job-test", spec, seed)
    sources = {n: FrameSource(t, n, origin=n) for n, t in tables.items()}
    hub = InProcessHub("job-test", [*top.data_parties, *([top.arbiter] if top.arbiter else [])])
    with tempfile.TemporaryDirectory() as tmp:
        budgets = {p: (1e3, spec.dp.delta) for p in top.data_parties} if spec.dp is not None else {}
        parties = parties_for(plan, sources, ledger_dir=Path(tmp), budgets=budgets, noise_seed=noise_seed)
        return hub, run_parties(hub, party_functions(VERTICAL, plan, parties, **kw))


def payloads(hub: InProcessHub, party: str, kind: str | None = None) -> list[tuple[str, str, int, Any]]:
    """(sender, kind, round, decoded payload) of every envelope ``party`` received."""
    return [
        (e.sender, e.kind, e.round, codec.decode(e.body))
        for e in hub.received_by(party)
        if kind is None or e.kind == kind
    ]


def epoch_batches(hub: InProcessHub, host: str) -> list[list[np.ndarray]]:
    """The batches the guest announced to ``host``, epoch by epoch."""
    return [p["batches"] for _, _, _, p in payloads(hub, host, "vlr/epoch") if not p.get("stop")]


def aligned_matrix(tables: Mapping[str, pd.DataFrame], party: str, ids: Iterable[str], id_column: str, drop: Iterable[str] = ()) -> np.ndarray:
    t = tables[party].set_index(tables[party][id_column].astype(str))
    cols = [c for c in t.columns if c != id_column and c not in set(drop)]
    return t.loc[list(ids), cols].to_numpy(dtype=np.float64)


def reference_fit(
    xs: Mapping[str, np.ndarray],
    y: np.ndarray,
    batches: list[list[np.ndarray]],
    *,
    lr: float,
    schedule: str = "sqrt",
    l2: float = 0.0,
) -> tuple[dict[str, np.ndarray], list[float]]:
    """Centralized Taylor mini-batch gradient descent on already transformed matrices.

    ``xs`` maps party -> training matrix (guest's with the intercept column), ``y`` the 0/1
    training labels; returns final weights per party and the per-epoch mean Taylor loss.
    """
    w = {p: np.zeros(x.shape[1]) for p, x in xs.items()}
    guest = next(iter(xs))
    losses = []
    for epoch, epoch_batches in enumerate(batches, start=1):
        lr_e = learning_rate(base=lr, epoch=epoch, schedule=schedule)
        total, rows = 0.0, 0
        for idx in epoch_batches:
            if idx.size == 0:
                continue
            u = sum(xs[p][idx] @ w[p] for p in xs)
            d = 0.25 * u - 0.5 * (2 * y[idx] - 1)
            total += float(d @ d)
            rows += idx.size
            for p in xs:
                g = xs[p][idx].T @ d / idx.size
                reg = l2 * w[p]
                if p == guest:
                    reg[-1] = 0.0
                w[p] = w[p] - lr_e * (g + reg)
        losses.append(LOG2_MINUS_HALF + 2 * total / rows)
    return w, losses


# ------------------------------------------------------------------------------ leak scanner


def _walk(obj: Any, path: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{path}[{i}]")
    else:
        yield path, obj


def key_owners(hub: InProcessHub) -> dict[str, str]:
    """Key fingerprint -> party holding the secret key (the sender of each ``vlr/key``)."""
    owners = {}
    for e in hub.log:
        if e.kind == "vlr/key":
            public = codec.decode(e.body)["public"]
            owners[public[8:40].decode()] = e.sender
    return owners


def readable_values(hub: InProcessHub, party: str) -> list[tuple[str, np.ndarray]]:
    """Every float vector ``party`` could read: plaintext arrays and scalars, and ciphertexts
    under a key it holds (with the plain backend their payload is the plaintext)."""
    from fedsilo.crypto.plain import PlainBackend

    owners = key_owners(hub)
    out: list[tuple[str, np.ndarray]] = []
    for e in hub.received_by(party):
        for path, value in _walk(codec.decode(e.body)):
            where = f"{e.kind} from {e.sender} (round {e.round}){path}"
            if isinstance(value, bytes) and value[:8] == WIRE_MAGIC + b"CTXT":
                if owners.get(value[8:40].decode()) == party:
                    # the plain backend's body: uint32 count, float64 values, 8-byte check
                    out.append((where, np.frombuffer(value[44:-8], dtype="<f8")))
            elif isinstance(value, np.ndarray) and value.dtype.kind == "f":
                out.append((where, value.ravel()))
            elif isinstance(value, float):
                out.append((where, np.array([value])))
    assert PlainBackend  # the decoding above is the plain backend's format
    return out


def exact_matches(vector: np.ndarray, secret_values: np.ndarray) -> float:
    """Share of ``vector``'s entries that equal some entry of ``secret_values`` exactly."""
    if vector.size == 0:
        return 0.0
    return float(np.isin(vector, secret_values).mean())


def looks_like_labels(vector: np.ndarray) -> bool:
    return vector.size >= 8 and (np.isin(vector, [0.0, 1.0]).all() or np.isin(vector, [-1.0, 1.0]).all())


def sklearn_reference(train_x: np.ndarray, train_y: np.ndarray) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=1e4, max_iter=5000).fit(train_x, train_y)


def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean = train.mean(axis=0)
    sd = train.std(axis=0)
    sd[~(sd > 0)] = 1.0
    return [(a - mean) / sd for a in (train, *others)]



#: the learning rate these tests were tuned with (the examples' lr; [training] lr's default is 0.1)
TEST_LR = 0.3


def training_section(*, epochs: int = 10, batch_size: int = 64, lr: float = TEST_LR, l2: float = 0.0,
                     tol: float | None = None) -> Any:
    """The [training] section of a vertical test job (rounds = epochs)."""
    from fedsilo.protocols.spec import TrainingSection, section

    return section(TrainingSection, {"rounds": epochs, "batch_size": batch_size, "lr": lr, "l2": l2,
                                     "early_stopping_tol": tol}, key="training")


def vt_training(*, epochs: int = 10, batch_size: int = 64, lr: float = TEST_LR, l2: float = 0.0,
                tol: float | None = None, timeout: float = 600.0, **constants: Any) -> Any:
    """The protocol's TrainingConfig of a test job: the [training] keys through their section,
    plus the protocol's own constants (``lr_schedule``, ``track_loss``, ``mask_scale``)."""
    from fedsilo.protocols.vertical.lr import TrainingConfig

    cfg = TrainingConfig.from_sections(training_section(epochs=epochs, batch_size=batch_size, lr=lr, l2=l2, tol=tol),
                                       timeout=timeout)
    if constants:
        import dataclasses

        cfg = dataclasses.replace(cfg, **constants)
    return cfg


def simulate(*, epochs: int = 10, batch_size: int = 64, lr: float = TEST_LR, l2: float = 0.0,
             tol: float | None = None, dp: Any = None, **kw: Any) -> dict[str, Any]:
    """simulate_vertical with the training keys of these tests."""
    from fedsilo.silos.tasks.vertical import simulate_vertical

    return simulate_vertical(training=training_section(epochs=epochs, batch_size=batch_size, lr=lr, l2=l2, tol=tol),
                             dp=dp, **kw)


def vt_spec(**kw: Any) -> Any:
    """A VerticalSpec of a test job: what these tests leave out gets the config's defaults."""
    from fedsilo.protocols.vertical import VerticalSpec

    defaults: dict[str, Any] = {"backend": "ckks", "backend_params": {}, "training": vt_training(), "dp": None,
                                "test_fraction": 0.2, "bounds": {}, "insecure": False}
    return VerticalSpec(**{**defaults, **kw})
