"""A whole vertical job per party — align (PSI), split, train, evaluate.

:func:`vertical_party` is what each party runs, over whatever channel its engine gives it (the
``vertical`` task of :mod:`fedsilo.silos.tasks` starts it, in-process or in a silo agent).

Rounds on the channel: 0 = PSI, 1 = train/test split, 2… = training (see :mod:`.lr`), then
the final joint prediction on the evaluation rows.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fedsilo.crypto.registry import get_backend, get_backend_class
from fedsilo.errors import ConfigError, DataError, ProtocolError
from fedsilo.privacy.ledger import PrivacyLedger
from fedsilo.protocols.channel import Channel
from fedsilo.protocols.policy import require_confidential
from fedsilo.protocols.psi import align_guest, align_host, psi_executor
from fedsilo.protocols.spec import PrivacySection
from fedsilo.protocols.vertical.data import check_bounds, feature_bounds, holdout_split, prepare_table
from fedsilo.protocols.vertical.lr import (
    FitResult,
    Topology,
    TrainingConfig,
    arbiter_train,
    guest_train,
    host_train,
    predict_guest,
    serve_predictions,
    evaluation_metrics,
)

__all__ = ["ROLES", "SPLIT", "VerticalSpec", "backend_params_for", "vertical_party"]

ROLES = ("guest", "host", "arbiter")
_SPLIT_ROUND = 1
#: guest -> hosts, once after PSI: ``{"test": int array}`` (the held-out row indices; public)
SPLIT = "vlr/split"
_TRAIN_ROUND = 2


@dataclass(frozen=True, slots=True)
class VerticalSpec:
    """Everything the parties of one vertical job agree on (public configuration).

    ``bounds``: public feature bounds ``column -> (lo, hi)`` (a data dictionary, e.g. the
    config's ``[data] bounds``); each party clips its columns to them and maps them to
    ``[-1, 1]``. Under DP every feature needs bounds; without DP, columns without bounds are
    standardized with the party's own training rows.
    """

    topology: Topology
    id_column: str
    label: str
    backend: str
    backend_params: Mapping[str, Any]
    training: TrainingConfig
    #: the validated ``[privacy]`` section (record level: one customer's row), or None
    dp: PrivacySection | None
    test_fraction: float
    #: public feature bounds ``column -> (lo, hi)``
    bounds: Mapping[str, tuple[float, float]]
    #: ``[crypto] insecure``: allows a backend without confidentiality and training without DP
    insecure: bool
    #: processes per party for PSI curve work (None: all cores); a resource, not a config key
    psi_workers: int | None = 1

    def __post_init__(self) -> None:
        if self.dp is not None and not isinstance(self.dp, PrivacySection):
            raise TypeError(f"VerticalSpec.dp must be a PrivacySection (fedsilo.protocols.spec), got {type(self.dp).__name__}")
        object.__setattr__(self, "bounds", check_bounds(self.bounds))


def backend_params_for(backend: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The backend parameters vertical LR runs with: the backend's defaults for ciphertext ×
    plaintext matrix (CKKS: the depth-2 ``matmul`` profile with Galois keys) under ``params``."""
    return get_backend_class(backend).params_for("matmul", summands=1, params=params)


def vertical_party(
    channel: Channel,
    *,
    spec: VerticalSpec,
    table: pd.DataFrame | None,
    rng: np.random.Generator,
    public_rng: np.random.Generator,
    ledger: PrivacyLedger | None = None,
    dataset: str | None = None,
    source: str | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run this party's role (from ``spec.topology``) in a whole vertical job.

    Under DP a data party needs ``ledger`` and ``dataset`` and public bounds for each of its
    features (``spec.bounds``); both are checked before PSI starts.

    ``rng`` is the party's **secret** randomness (PSI shuffles, gradient masks, noise shares,
    noise on released scores): the OS CSPRNG, :func:`~fedsilo.privacy.mechanisms.secure_rng`,
    outside tests. ``public_rng`` decides only public choices (the guest's train/test split and
    batch order) and may come from the job seed.

    Returns this party's report: its history and final metrics (guest), its DP spending, PSI
    sizes, and its local model (never sent to anyone).

    Raises:
        ConfigError: DP without a ledger or without bounds for every feature.
    """
    me = channel.party
    top = spec.topology
    src = source or me
    backend = get_backend(spec.backend, **backend_params_for(spec.backend, spec.backend_params))
    require_confidential(backend, insecure=spec.insecure, who=f"{src}: party {me!r}")
    if spec.dp is None and not spec.insecure:
        raise ConfigError(
            f"{src}: party {me!r}: vertical training without DP gives every party its exact gradient, from which "
            "a party with enough features recovers the labels; add DP, or set [crypto] insecure = true "
            "(tests and baselines only)"
        )
    if me == top.arbiter:
        fit = arbiter_train(channel, topology=top, backend=backend, config=spec.training, rng=rng,
                            start_round=_TRAIN_ROUND)
        return {"role": "arbiter", "epochs": fit.epochs_run}
    if table is None:
        raise DataError(f"{src}: party {me!r} ({'guest' if me == top.guest else 'host'}) has no table")
    if spec.dp is not None and (ledger is None or dataset is None):
        raise ConfigError(f"{src}: differential privacy needs a privacy ledger and the dataset name to charge")
    T = spec.training.timeout
    common = dict(backend=backend, config=spec.training, dp=spec.dp, ledger=ledger, dataset=dataset, rng=rng,
                  start_round=_TRAIN_ROUND, bounds=spec.bounds)
    if me == top.guest:
        data = prepare_table(table, source=src, id_column=spec.id_column, label=spec.label)
        feature_bounds(data.columns, spec.bounds, source=src, required=spec.dp is not None)
        with psi_executor(spec.psi_workers) as ex:
            al = align_guest(channel, hosts=top.hosts, ids=data.id_table, rng=rng, round=0,
                             executor=ex, source=src)
        train_rows, test_rows = holdout_split(public_rng, al.size, spec.test_fraction)
        channel.broadcast(top.hosts, SPLIT, {"test": test_rows}, round=_SPLIT_ROUND)
        assert data.labels is not None
        x, y = data.features[al.positions], data.labels[al.positions]
        fit = guest_train(channel, topology=top, x=x, y=y, train_rows=train_rows, eval_rows=test_rows,
                          columns=data.columns, progress=progress, batch_rng=public_rng, **common)
        final: dict[str, float] = {}
        # Without DP (insecure) the hosts' exact held-out scores are released once; under DP no
        # per-customer score can be released usefully, so the guest gets no held-out metrics.
        if test_rows.size and spec.dp is None:
            assert fit.model is not None
            probs = predict_guest(channel, hosts=top.hosts, model=fit.model, x=x, rows=test_rows,
                                  round=fit.next_round, timeout=T)
            final = evaluation_metrics(y[test_rows], probs)
        return _report("guest", fit, al.size, al.local_size, al.pairwise, train_rows.size, test_rows.size,
                       final=final, test_ids=[al.ids[i] for i in test_rows.tolist()])
    data = prepare_table(table, source=src, id_column=spec.id_column, label=None)
    feature_bounds(data.columns, spec.bounds, source=src, required=spec.dp is not None)
    with psi_executor(spec.psi_workers) as ex:
        al = align_host(channel, guest=top.guest, ids=data.id_table, rng=rng, round=0,
                        executor=ex, source=src)
    msg = channel.recv(top.guest, SPLIT, round=_SPLIT_ROUND, timeout=T)
    test_rows = msg.get("test") if isinstance(msg, dict) else None
    if not isinstance(test_rows, np.ndarray) or test_rows.dtype.kind != "i" or (
        test_rows.size and (test_rows.min() < 0 or test_rows.max() >= al.size)
    ):
        raise ProtocolError(f"{me}: malformed train/test split from the guest")
    expected = holdout_split(np.random.default_rng(0), al.size, spec.test_fraction)[1].size
    if test_rows.size != expected or np.unique(test_rows).size != test_rows.size:
        # the host scores held-out rows for the guest: never more of them than the job agreed
        raise ProtocolError(f"{me}: the guest held out {test_rows.size} rows, the job's test_fraction means {expected}")
    train_rows = np.setdiff1d(np.arange(al.size), test_rows)
    x = data.features[al.positions]
    fit = host_train(channel, topology=top, x=x, train_rows=train_rows, eval_rows=test_rows, columns=data.columns, **common)
    if test_rows.size and spec.dp is None:
        assert fit.model is not None
        serve_predictions(channel, guest=top.guest, model=fit.model, x=x, allowed=test_rows, round=fit.next_round,
                          timeout=T)
    return _report("host", fit, al.size, al.local_size, al.pairwise, train_rows.size, test_rows.size)


def _report(role: str, fit: FitResult, aligned: int, local: int, pairwise: Mapping[str, int], n_train: int, n_test: int,
            **extra: Any) -> dict[str, Any]:
    return {
        "role": role,
        "history": fit.history,
        "epochs": fit.epochs_run,
        "stopped_early": fit.stopped_early,
        "epsilon": fit.epsilon,
        "dp": fit.dp,
        "model": fit.model,
        "psi": {"intersection": aligned, "local": local, "pairwise": dict(pairwise)},
        "rows": {"train": n_train, "test": n_test},
        **extra,
    }
