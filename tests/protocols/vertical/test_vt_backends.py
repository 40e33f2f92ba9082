"""Hetero LR under real encryption (CKKS, Paillier): same model as plaintext, AUC as sklearn."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fedsilo.protocols.spec import PrivacySection
from fedsilo.protocols.vertical import Topology, TrainingConfig
from vt_data import (
    vt_spec,
    vt_training,
    aligned_matrix,
    bank_tables,
    breast_cancer_bounds,
    breast_cancer_tables,
    run_job,
    sklearn_reference,
    standardize,
)

BACKENDS = {
    "ckks": {},  # vertical LR picks profile="matmul"
    "paillier": {"key_bits": 1024, "workers": 1},  # 1024-bit: tests only
}


def _fit(tables, top: Topology, backend: str, params, training: TrainingConfig, label: str, id_column: str, dp=None,
         noise_seed=None):
    spec = vt_spec(topology=top, id_column=id_column, label=label, backend=backend, backend_params=params,
                        training=training, dp=dp, bounds=breast_cancer_bounds() if dp is not None else {},
                        insecure=True)  # plain, 1024-bit Paillier and no-DP runs: test baselines
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 1024-bit Paillier keys warn (tests only)
        return run_job(spec, tables, noise_seed=noise_seed)


def _auc_gaps(tables, out, top: Topology, label: str, id_column: str) -> dict[str, float]:
    """AUC of the federated model and of sklearn's centralized LogisticRegression trained on the
    same aligned training rows and the same features: on the held-out rows and on all rows."""
    guest = out[top.guest]
    ids = sorted(set.intersection(*(set(t[id_column].astype(str)) for t in tables.values())))
    test = set(guest["test_ids"])
    is_test = np.array([i in test for i in ids])
    y = tables[top.guest].assign(**{id_column: tables[top.guest][id_column].astype(str)}).set_index(id_column).loc[ids, label].to_numpy(float)
    raw = {p: aligned_matrix(tables, p, ids, id_column, drop=[label]) for p in top.data_parties}
    u = sum(out[p]["model"].partial_logits(raw[p]) for p in top.data_parties)
    x = np.hstack([raw[p] for p in top.data_parties])
    x_train, x_all = standardize(x[~is_test], x)
    sk = sklearn_reference(x_train, y[~is_test])
    s_sk = sk.decision_function(x_all)
    return {
        "fed_test": roc_auc_score(y[is_test], u[is_test]),
        "sk_test": roc_auc_score(y[is_test], s_sk[is_test]),
        "fed_all": roc_auc_score(y, u),
        "sk_all": roc_auc_score(y, s_sk),
        "reported_test": guest["final"]["auc"],
    }


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("arbiter", [True, False], ids=["arbiter", "two-party"])
def test_encrypted_training_matches_plaintext_and_sklearn(backend: str, arbiter: bool) -> None:
    top = Topology(guest="g", hosts=("h0",), arbiter="a" if arbiter else None)
    tables = breast_cancer_tables(1, guest_cols=5, host_cols=5, drop=0.05)
    training = vt_training(epochs=3, batch_size=128, lr=0.3)
    _, plain = _fit(tables, top, "plain", {}, training, "target", "pid")
    hub, enc = _fit(tables, top, backend, BACKENDS[backend], training, "target", "pid")
    # same seed -> same batches; the masks (OS CSPRNG) cancel exactly: the encrypted run follows the plaintext one
    tol = 1e-3 if backend == "ckks" else 1e-7
    for p in top.data_parties:
        np.testing.assert_allclose(enc[p]["model"].weights, plain[p]["model"].weights, atol=tol)
    np.testing.assert_allclose([r["loss"] for r in enc["g"]["history"]], [r["loss"] for r in plain["g"]["history"]], atol=tol)
    gaps = _auc_gaps(tables, enc, top, "target", "pid")
    assert abs(gaps["fed_all"] - gaps["sk_all"]) <= 0.01, gaps
    assert abs(gaps["fed_test"] - gaps["sk_test"]) <= 0.01, gaps
    assert gaps["reported_test"] == pytest.approx(gaps["fed_test"], abs=1e-12)
    assert sum(hub.bytes_sent().values()) > 0


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_encrypted_training_with_dp_and_three_parties(backend: str) -> None:
    top = Topology(guest="g", hosts=("h0", "h1"), arbiter="a")
    tables = breast_cancer_tables(2, guest_cols=4, host_cols=4, drop=0.05)
    training = vt_training(epochs=2, batch_size=128, lr=0.3)
    # test-only reproducible noise: the same noise_seed draws the same noise, so even the DP
    # run follows plaintext (a private run never takes a noise seed)
    _, plain = _fit(tables, top, "plain", {}, training, "target", "pid", dp=PrivacySection(epsilon=8.0), noise_seed=11)
    _, enc = _fit(tables, top, backend, BACKENDS[backend], training, "target", "pid", dp=PrivacySection(epsilon=8.0), noise_seed=11)
    tol = 1e-3 if backend == "ckks" else 1e-7
    for p in top.data_parties:
        np.testing.assert_allclose(enc[p]["model"].weights, plain[p]["model"].weights, atol=tol)
    assert enc["g"]["final"] == {}  # DP: no held-out scores leave the hosts


@pytest.mark.slow
def test_bank_example_ckks_auc_matches_sklearn() -> None:
    tables = bank_tables()
    top = Topology(guest="bank", hosts=("partner",), arbiter="arbiter")
    training = vt_training(epochs=4, batch_size=128, lr=0.3)
    _, out = _fit(tables, top, "ckks", {}, training, "default", "customer_id")
    gaps = _auc_gaps(tables, out, top, "default", "customer_id")
    # on all aligned rows the Taylor model is within 0.01 of exact logistic regression; on the
    # 400 held-out rows the two differ by up to ~0.012 (estimation noise of either model)
    assert abs(gaps["fed_all"] - gaps["sk_all"]) <= 0.01, gaps
    assert abs(gaps["fed_test"] - gaps["sk_test"]) <= 0.02, gaps

