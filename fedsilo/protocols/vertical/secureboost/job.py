"""A whole SecureBoost job per party: align (PSI), hold out rows, grow the trees, predict.

:func:`secureboost_party` is what each party runs, over whatever channel its engine gives it
(the ``vertical`` task with ``[model] kind = "secureboost"`` starts it, in-process or in a silo
agent). Rounds on the channel: 0 = PSI, 1 = the held-out rows, 2… = training
(:func:`.parties.rounds_used`), then ``depth`` rounds of joint prediction on the held-out rows.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fedsilo.errors import ConfigError, DataError, ProtocolError
from fedsilo.privacy.ledger import PrivacyLedger
from fedsilo.protocols.channel import Channel
from fedsilo.protocols.policy import require_confidential
from fedsilo.protocols.psi import align_guest, align_host, psi_executor
from fedsilo.protocols.spec import PrivacySection
from fedsilo.protocols.vertical.data import (
    PartyTable,
    check_bounds,
    check_labels,
    feature_bounds,
    feature_matrix,
    holdout_split,
    party_ids,
    prepare_table,
)
from fedsilo.protocols.vertical.secureboost.boosting import label_bound
from fedsilo.protocols.vertical.secureboost.config import BoostConfig, CryptoSettings
from fedsilo.protocols.vertical.secureboost.messages import HOLDOUT, int_array
from fedsilo.protocols.vertical.secureboost.model import fit_binning, refuse_constant, refuse_empty
from fedsilo.protocols.vertical.secureboost.parties import BoostResult, guest_boost, host_boost, rounds_used
from fedsilo.protocols.vertical.secureboost.prediction import predict_guest, serve_routes

__all__ = ["SecureBoostSpec", "holdout_split", "party_table", "secureboost_party"]

_HOLDOUT_ROUND = 1
_TRAIN_ROUND = 2


@dataclass(frozen=True, slots=True)
class SecureBoostSpec:
    """Everything the parties of one SecureBoost job agree on (public configuration).

    ``bounds``: public feature bounds ``column -> (lo, hi)``; a column with bounds gets
    equal-width bins over them, one without gets its training rows' quantiles (refused under
    DP, where every feature needs bounds).
    """

    guest: str
    hosts: tuple[str, ...]
    id_column: str
    label: str
    crypto: CryptoSettings
    config: BoostConfig
    #: the validated ``[privacy]`` section (record level), or None
    dp: PrivacySection | None
    test_fraction: float
    bounds: Mapping[str, tuple[float, float]]
    #: ``[crypto] insecure``: allows the plain backend, small keys and training without DP
    insecure: bool
    #: processes per party for PSI curve work (a resource, not a config key)
    psi_workers: int | None = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "hosts", tuple(self.hosts))
        names = [self.guest, *self.hosts]
        if not self.hosts:
            raise ConfigError("SecureBoost needs at least one host")
        if len(set(names)) != len(names):
            raise ConfigError(f"SecureBoost roles must name distinct parties, got {names}")
        if self.dp is not None and not isinstance(self.dp, PrivacySection):
            raise TypeError(f"SecureBoostSpec.dp must be a PrivacySection, got {type(self.dp).__name__}")
        object.__setattr__(self, "bounds", check_bounds(self.bounds))


def party_table(frame: pd.DataFrame, *, source: str, id_column: str, label: str | None,
                config: BoostConfig) -> PartyTable:
    """One party's table checked for SecureBoost: :func:`~fedsilo.protocols.vertical.data.prepare_table`'s
    checks, except that with missing-value bins (``missing = "bin"``) a feature's NaNs are kept
    (anything else non-numeric or infinite is still refused), a feature with no value at all is
    refused as such (either ``missing``), a ``log_loss`` label needs exactly two classes, and for
    the squared error the label is any number within :func:`~.boosting.label_bound`.

    Raises:
        DataError: naming ``source`` and the column.
    """
    classification = config.loss.classification
    if isinstance(frame, pd.DataFrame) and len(frame) and id_column in frame.columns:
        cols = [c for c in frame.columns if c not in (id_column, label)]
        refuse_empty(frame[cols].isna().all().tolist(), [str(c) for c in cols], source=source,
                     where="the whole table")
        if classification and label is not None and label in frame.columns:
            _two_classes(frame[label], source=source, column=label)
    if classification and not config.missing_bins:
        return prepare_table(frame, source=source, id_column=id_column, label=label)
    if not isinstance(frame, pd.DataFrame) or len(frame) == 0 or id_column not in frame.columns \
            or (label is not None and label not in frame.columns):
        prepare_table(frame, source=source, id_column=id_column, label=label)  # raises the same errors
    cols = [c for c in frame.columns if c not in (id_column, label)]
    if not cols and label is None:
        raise DataError(f"{source}: no feature columns besides the ID column {id_column!r}")
    nan = frame[cols].isna().to_numpy() if config.missing_bins else np.zeros((len(frame), len(cols)), dtype=bool)
    x = feature_matrix(frame[cols].mask(nan, 0.0) if nan.any() else frame[cols], cols, source=source)
    x[nan] = np.nan
    y = None
    if label is not None:
        y = check_labels(frame[label], source=source, column=label) if classification else \
            _real_labels(frame[label], source=source, column=label, trees=config.trees)
    return PartyTable(source=source, id_table=party_ids(frame, source=source, id_column=id_column),
                      columns=tuple(str(c) for c in cols), features=x, labels=y)


def _two_classes(series: pd.Series, *, source: str, column: str) -> None:
    """A ``log_loss`` label holds exactly two classes (DataError naming the column and the
    objective to use otherwise; no label value or count). Missing labels are left to
    :func:`~fedsilo.protocols.vertical.data.check_labels`."""
    if series.isna().any():
        return
    k = int(series.nunique())
    if k != 2:
        raise DataError(
            f"{source}: label column {column!r} holds {'one class' if k == 1 else 'more than two distinct values'}; "
            "SecureBoost's model.objective = \"log_loss\" needs exactly two classes; for a numeric target set "
            "[model] objective = \"squared_error\""
        )


def _real_labels(series: pd.Series, *, source: str, column: str, trees: int) -> np.ndarray:
    """A regression target as finite floats within :func:`~.boosting.label_bound` (DataError
    naming the column, and the bound but not the value, otherwise)."""
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        raise DataError(f"{source}: label column {column!r} has {int(bad.sum())} missing, non-numeric or infinite "
                        f"value(s) (first at row {int(np.flatnonzero(bad)[0])}); model.objective = \"squared_error\" "
                        "needs a number in every row")
    bound = label_bound(trees=trees)
    if values.size and float(np.max(np.abs(values))) > bound:
        # refused here, before PSI: nothing is sent or charged for a job whose losses would be inf
        raise DataError(
            f"{source}: label column {column!r} has a value of magnitude above {bound:.3g}, the largest "
            f"model.objective = \"squared_error\" accepts with model.trees = {trees} (its squared residuals must sum "
            "to a finite float64; boosting.label_bound); rescale the label"
        )
    return values


def secureboost_party(
    channel: Channel,
    *,
    spec: SecureBoostSpec,
    table: pd.DataFrame,
    rng: np.random.Generator,
    public_rng: np.random.Generator,
    ledger: PrivacyLedger | None = None,
    dataset: str | None = None,
    source: str | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run this party's role (guest or host, from ``spec``) in a whole SecureBoost job.

    ``rng`` is the party's **secret** randomness (PSI shuffles, DP noise): the OS CSPRNG,
    :func:`~fedsilo.privacy.mechanisms.secure_rng`, outside tests. ``public_rng`` decides only
    public choices (the guest's held-out split and tree subsamples). Under DP a host needs
    ``ledger`` and ``dataset`` (checked before PSI); the guest is never charged (its labels
    reach no other party in the clear; docs/secureboost.md).

    Returns this party's report: history, metrics and importance (guest), its own features'
    importance and DP spending (host), PSI sizes, and its local model (never sent).

    Raises:
        ConfigError: an insecure setting without ``insecure``, DP without a ledger or bounds.
        DataError: bad tables (missing IDs or labels, NaN, a constant column), too few rows.
    """
    me = channel.party
    src = source or me
    role = "guest" if me == spec.guest else "host"
    if me != spec.guest and me not in spec.hosts:
        raise ConfigError(f"{src}: {me!r} is not a party of this SecureBoost job")
    require_confidential(spec.crypto.backend_object(), insecure=spec.insecure, who=f"{src}: party {me!r}")
    if spec.dp is None and not spec.insecure:
        raise ConfigError(
            f"{src}: party {me!r}: SecureBoost without DP gives the guest every host's exact histograms (per node, "
            "feature and bin, sums of the guest's own gradients), from which it narrows down the hosts' feature "
            "values; add [privacy], or set [crypto] insecure = true (tests and baselines only)"
        )
    if role == "host" and spec.dp is not None and (ledger is None or dataset is None):
        raise ConfigError(f"{src}: differential privacy needs a privacy ledger and the dataset name to charge")
    cfg, T = spec.config, spec.config.timeout
    data = party_table(table, source=src, id_column=spec.id_column, label=spec.label if role == "guest" else None,
                       config=cfg)
    if role == "host" and not data.columns:
        raise DataError(f"{src}: a host needs at least one feature column")
    refuse_constant(data.features, data.columns, source=src, where="the whole table")
    feature_bounds(data.columns, spec.bounds, source=src, required=spec.dp is not None)  # before PSI
    with psi_executor(spec.psi_workers) as ex:
        if role == "guest":
            al = align_guest(channel, hosts=spec.hosts, ids=data.id_table, rng=rng, round=0, executor=ex, source=src)
        else:
            al = align_host(channel, guest=spec.guest, ids=data.id_table, rng=rng, round=0, executor=ex, source=src)
    x = data.features[al.positions]
    train_rows, test_rows = _holdout(channel, spec, al.size, public_rng, role=role)
    binning = fit_binning(x, train_rows, data.columns, bins=cfg.bins, bounds=spec.bounds,
                          required=spec.dp is not None, source=src, missing=cfg.missing_bins)
    predict_round = _TRAIN_ROUND + rounds_used(cfg)
    if role == "guest":
        assert data.labels is not None
        y = data.labels[al.positions]
        fit = guest_boost(channel, hosts=spec.hosts, x=x, y=y, train_rows=train_rows, test_rows=test_rows,
                          binning=binning, config=cfg, crypto=spec.crypto, dp=spec.dp, public_rng=public_rng,
                          start_round=_TRAIN_ROUND, progress=progress)
        final: dict[str, float] = {}
        if test_rows.size:
            raw = predict_guest(channel, hosts=spec.hosts, model=fit.model, x=x, rows=test_rows,  # type: ignore[arg-type]
                                depth=cfg.depth, round=predict_round, timeout=T)
            final = cfg.loss.metrics(y[test_rows], raw)
        return _report("guest", fit, al, train_rows.size, test_rows.size, final=final,
                       test_ids=[al.ids[i] for i in test_rows.tolist()])
    fit = host_boost(channel, guest=spec.guest, x=x, train_rows=train_rows, test_rows=test_rows, binning=binning,
                     config=cfg, crypto=spec.crypto, dp=spec.dp, ledger=ledger, dataset=dataset, rng=rng,
                     start_round=_TRAIN_ROUND)
    if test_rows.size:
        serve_routes(channel, guest=spec.guest, model=fit.model, x=x, allowed=test_rows,  # type: ignore[arg-type]
                     trees=fit.trees, depth=cfg.depth, round=predict_round, timeout=T)
    return _report("host", fit, al, train_rows.size, test_rows.size)


def _holdout(channel: Channel, spec: SecureBoostSpec, n: int, public_rng: np.random.Generator, *,
             role: str) -> tuple[np.ndarray, np.ndarray]:
    """The guest draws the held-out rows and tells the hosts; a host checks their number."""
    T = spec.config.timeout
    if role == "guest":
        train, test = holdout_split(public_rng, n, spec.test_fraction)
        channel.broadcast(spec.hosts, HOLDOUT, {"test": test}, round=_HOLDOUT_ROUND)
        return train, test
    me = channel.party
    msg = channel.recv(spec.guest, HOLDOUT, round=_HOLDOUT_ROUND, timeout=T)
    test = int_array(msg.get("test") if isinstance(msg, dict) else None, who=me, what="held-out rows")
    expected = holdout_split(np.random.default_rng(0), n, spec.test_fraction)[1].size
    if test.size != expected or np.unique(test).size != test.size or (test.size and (test.min() < 0 or test.max() >= n)):
        # the host answers prediction queries for held-out rows: never more of them than agreed
        raise ProtocolError(f"{me}: the guest held out {test.size} rows, the job's test_fraction means {expected}")
    return np.setdiff1d(np.arange(n), test), np.sort(test)


def _report(role: str, fit: BoostResult, al: Any, n_train: int, n_test: int, **extra: Any) -> dict[str, Any]:
    # the keys of a vertical report (so agents and results read it alike), plus SecureBoost's own
    return {
        "role": role,
        "history": fit.history,
        "epochs": fit.trees,
        "stopped_early": False,
        "epsilon": fit.epsilon,
        "dp": fit.dp,
        "model": fit.model,
        "importance": fit.importance,
        "releases": fit.releases,
        "psi": {"intersection": al.size, "local": al.local_size, "pairwise": dict(al.pairwise)},
        "rows": {"train": n_train, "test": n_test},
        **extra,
    }
