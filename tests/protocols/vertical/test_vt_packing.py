"""Vertical LR on packed residuals (``matmul_repeat`` / ``matmul_repeated``) and secret-key
encryption for key holders.

* The packed path gives the per-column path's model: exactly with a plain test double that asks
  for CKKS's layout, and within the CKKS error bound (held-out AUC and per-epoch losses) on the
  bank example.
* The messages keep their privacy: the leak scan of ``test_vt_lr`` on the packed path, and on
  CKKS nothing but the masked gradient is in any ciphertext a key holder decrypts.
* The DP accounting depends neither on the layout nor on the batch size.
* Every backend has ``encrypt_with_secret`` and ``matmul_repeated``; ``Keys.enc`` uses the
  secret key where the party holds it (seeded CKKS: half the bytes).
"""
from __future__ import annotations

import math
import struct
import warnings
from typing import Any, ClassVar

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fedsilo.crypto import registry
from fedsilo.crypto.ckks import CKKSBackend
from fedsilo.crypto.plain import PlainBackend
from fedsilo.crypto.registry import get_backend
from fedsilo.errors import ProtocolError
from fedsilo.protocols import codec
from fedsilo.protocols.spec import PrivacySection
from fedsilo.protocols.vertical import Topology
from fedsilo.protocols.vertical.keys import Keys, Packing
from fedsilo.protocols.vertical.taylor import LOG2_MINUS_HALF, calibrate
from test_vt_lr import _assert_no_raw_data_reaches_others
from vt_data import (
    aligned_matrix,
    bank_tables,
    breast_cancer_bounds,
    breast_cancer_tables,
    epoch_batches,
    run_job,
    vt_spec,
    vt_training,
)

TOPOLOGIES = {
    "arbiter-1host": Topology(guest="g", hosts=("h0",), arbiter="a"),
    "arbiter-2hosts": Topology(guest="g", hosts=("h0", "h1"), arbiter="a"),
    "two-party": Topology(guest="g", hosts=("h0",)),
}


class PackedPlain(PlainBackend):
    """The plain backend asking for CKKS's layout (each residual value repeated over a power of
    two >= the longest gradient) and computing through the interface's generic
    ``matmul_repeated``: the protocol's packed path in exact arithmetic, with readable messages."""

    name: ClassVar[str] = "plain-packed"

    def matmul_repeat(self, *, rows: int, columns: int) -> int:
        return 1 << (columns - 1).bit_length()


class SpyCKKS(CKKSBackend):
    """CKKS that keeps every secret key it generates, so a test can read what key holders read."""

    name: ClassVar[str] = "ckks-spy"
    secrets: ClassVar[list[Any]] = []

    def keygen(self) -> Any:
        secret = super().keygen()
        self.secrets.append(secret)
        return secret


@pytest.fixture
def packed_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry._registered, PackedPlain.name, PackedPlain)
    monkeypatch.setitem(registry._registered, SpyCKKS.name, SpyCKKS)
    monkeypatch.setattr(SpyCKKS, "secrets", [])


def _spec(top: Topology, backend: str, **kw: Any) -> Any:
    kw.setdefault("training", vt_training(epochs=2, batch_size=40, lr=0.3, l2=0.01))
    if kw.get("dp") is not None:
        kw.setdefault("bounds", breast_cancer_bounds())
    return vt_spec(topology=top, id_column="pid", label="target", backend=backend, insecure=True, **kw)


def _ciphertexts(hub: Any, kind: str, key: str | None = "ct") -> list[bytes]:
    out = []
    for e in hub.log:
        if e.kind == kind:
            payload = codec.decode(e.body)
            out.append(payload if key is None else payload[key])
    return out


# ------------------------------------------------------------------------------ the layout


def test_packing_layout_repeats_each_row_and_reads_each_once() -> None:
    pk = Packing(rows=3, repeat=4)
    assert pk.length == 12
    np.testing.assert_array_equal(pk.spread([1.0, 2.0, 3.0]), [1.0] * 4 + [2.0] * 4 + [3.0] * 4)
    # a one-column product counts each row once (what the loss terms compute)
    be = PlainBackend()
    sk = be.keygen()
    dot = pk.product(be, be.encrypt(sk.public(), pk.spread([5.0, 6.0, 7.0])), np.array([[1.0], [2.0], [3.0]]))
    np.testing.assert_allclose(be.decrypt(sk, dot), [1 * 5 + 2 * 6 + 3 * 7])
    # every party derives the same layout from public values: the batch size and the longest gradient
    dims = {"g": 7, "h0": 5, "h1": 3}
    assert Packing.for_step(PackedPlain(), rows=128, dims=dims) == Packing(128, 8)
    assert Packing.for_step(PlainBackend(), rows=128, dims=dims) == Packing(128, 1)
    assert Packing.for_step(CKKSBackend(profile="matmul"), rows=128, dims=dims) == Packing(128, 8)


# ------------------------------------------------------------------------------ same model, same privacy


@pytest.mark.parametrize("name", list(TOPOLOGIES))
def test_packed_path_gives_the_per_column_model(packed_backends: None, name: str) -> None:
    top = TOPOLOGIES[name]
    tables = breast_cancer_tables(len(top.hosts), drop=0.1)
    _, plain = run_job(_spec(top, "plain"), tables)
    hub, packed = run_job(_spec(top, "plain-packed"), tables)
    # The masks are fresh OS randomness in each run: adding and removing them rounds at about
    # |mask| * 2^-52 per step, so the two runs agree to ~1e-12, not bit for bit (CI saw 1.2e-12).
    for p in top.data_parties:
        np.testing.assert_allclose(packed[p]["model"].weights, plain[p]["model"].weights, rtol=0, atol=1e-9)
    np.testing.assert_allclose([r["loss"] for r in packed["g"]["history"]], [r["loss"] for r in plain["g"]["history"]],
                               rtol=1e-9)
    assert packed["g"]["final"]["auc"] == pytest.approx(plain["g"]["final"]["auc"], abs=1e-9)
    # the residuals really went packed: batch rows x the power of two >= the longest gradient (6)
    batch_sizes = {int(b.size) for p in _ciphertexts(hub, "vlr/epoch", None) if not p.get("stop") for b in p.get("batches", [])}
    lengths = {struct.unpack_from("<I", ct, 40)[0] for ct in _ciphertexts(hub, "vlr/residual")}
    assert lengths == {8 * n for n in batch_sizes}
    # gradients, masks and noise shares keep their lengths: m_p values
    assert {struct.unpack_from("<I", ct, 40)[0] for ct in _ciphertexts(hub, "vlr/grad", None)} <= {6, 5}


@pytest.mark.parametrize("name", ["arbiter-2hosts", "two-party"])
@pytest.mark.parametrize("dp", [None, PrivacySection(epsilon=8.0)])
def test_packed_messages_reveal_no_raw_features_or_labels(packed_backends: None, name: str, dp: Any) -> None:
    """The leak scan of test_vt_lr, on the packed path: what each party can read (plaintexts and
    ciphertexts under its own keys) holds no other party's features and nothing label-like, and
    every gradient a key holder decrypts is masked."""
    top = TOPOLOGIES[name]
    tables = breast_cancer_tables(len(top.hosts), drop=0.1, seed=2)
    training = vt_training(epochs=2, batch_size=64, lr=0.3)
    hub, out = run_job(_spec(top, "plain-packed", training=training, dp=dp), tables)
    assert {struct.unpack_from("<I", ct, 40)[0] % 8 for ct in _ciphertexts(hub, "vlr/residual")} == {0}
    _assert_no_raw_data_reaches_others(hub, tables, top, out, training.mask_scale)


@pytest.mark.parametrize("arbiter", [True, False], ids=["arbiter", "two-party"])
def test_ckks_key_holders_decrypt_nothing_but_masked_gradients(packed_backends: None, arbiter: bool) -> None:
    """Every slot of every gradient ciphertext a key holder decrypts, past the gradient's length
    too: the m_p masked values, then uniform junk over a power of two, fresh in every step (the
    repeats and partial sums the fold leaves are masked away, and the mask's encoding residue is
    drowned, before the ciphertext leaves its party; tests/crypto/test_crypto_ckks.py shows the
    residue without the junk is a function of the data). Two-party, the residuals a party
    encrypts under its own key are seeded (secret-key) ciphertexts, about half the bytes of a
    public-key one."""
    top = Topology(guest="g", hosts=("h0",), arbiter="a" if arbiter else None)
    tables = breast_cancer_tables(1, drop=0.05)
    training = vt_training(epochs=1, batch_size=128, lr=0.3)
    hub, out = run_job(_spec(top, "ckks-spy", training=training), tables)
    backend = SpyCKKS(profile="matmul")
    by_fingerprint = {s.fingerprint: s for s in SpyCKKS.secrets}
    grads = _ciphertexts(hub, "vlr/grad", None)
    assert grads
    from scipy import stats

    mask_scale = 0.5 * backend.info().value_bound  # the protocol's M on CKKS (2048)
    pasts = []
    for blob in grads:
        secret = by_fingerprint[blob[8:40].decode()]
        ct = backend.deserialize(secret.public(), blob)
        assert ct.length in (6, 5)
        (chunk,) = ct.chunks
        slots = np.asarray(chunk.decrypt(secret.secret_key()))
        assert np.median(np.abs(slots[: ct.length])) > 0.05 * mask_scale  # masked: |g| is << 1 here
        past = slots[ct.length :]
        # uniform junk over the power of two under the product's bound: [[d]]'s bound (two
        # value bounds added: 8192) times the largest column L1 norm of X/n (<= 1)
        junk = 2.0 ** np.ceil(np.log2(np.max(np.abs(past))))
        assert junk == 2 * backend.p.value_bound and np.max(np.abs(past)) <= ct.bound
        # one KS test per gradient ciphertext of the job (tens per run): alpha 1e-7 keeps the family's
        # false-alarm rate ~1e-6, while zeros or a copy of the data give p ~ 1e-20 over these thousands of slots
        assert stats.kstest(past, stats.uniform(loc=-junk, scale=2 * junk).cdf).pvalue > 1e-7
        pasts.append(past[:4000])
    assert np.max(np.abs(np.corrcoef(pasts) - np.eye(len(pasts)))) < 0.1  # fresh in every gradient
    public_key_size = len(backend.serialize(backend.encrypt(SpyCKKS.secrets[0].public(), np.zeros(8))))
    for blob in _ciphertexts(hub, "vlr/partial"):  # one chunk each: 128 rows x 8 slots
        if arbiter:  # under the arbiter's public key
            assert len(blob) > 0.95 * public_key_size
        else:  # the host's [[b]] under its own key
            assert len(blob) < 0.6 * public_key_size
    assert out["g"]["final"]["auc"] > 0.9


# ------------------------------------------------------------------------------ CKKS: same AUC, same losses


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_bank_example_packed_ckks_matches_plain_within_the_error_bound() -> None:
    """The bank example (guest 6 features + intercept, host 5; 1,600 training rows; 5 epochs of
    13 batches, lr 0.3 / sqrt(epoch)) on CKKS's packed path against the plain backend, with the
    same seed, split and batches (the masks cancel exactly).

    Tolerances from the CKKS error bound ``e = info().error_bound`` (1e-5). In step t each
    decrypted gradient coordinate errs by at most ``eps_t = e (1 + c_t) + e``:
    ``matmul_repeated``'s bound for the batch's largest column L1 norm ``c_t`` of ``X_p / n_t``,
    plus the masked value's decryption, plus ``matmul_error_bound``'s coherent term
    ``6 sqrt(8) 2^-40 ||d_t||_1`` with ``||d_t||_1 <= sqrt(n_t R mean(d^2))`` (Cauchy-Schwarz
    and the plain run's epoch loss, below; doubled for the CKKS run's own residuals). The Taylor step is linear, ``w <- (I - lr H_t) w + ...``
    with ``H_t = X_t^T X_t / (4 n_t)``, and non-expansive when ``lr lambda_max(H_t) <= 2``
    (checked for every batch), so the weights, all parties' together, differ by at most
    ``tol_w = sum_t lr_t sqrt(D) eps_t`` in L2 (D gradient coordinates in all). A score then
    differs by at most ``delta = max_i ||x_i||_2 tol_w``, the held-out AUC by at most the share of
    (positive, negative) held-out pairs whose plain scores are within ``2 delta``, and the epoch
    loss ``log 2 - 1/2 + 2 mean(d^2)`` (``d = u/4 - y'/2``, each row's at its step's weights) by
    ``2 (2 sqrt(mean d^2) delta/4 + (delta/4)^2) + 2 * 4 e (steps + 1)``: the residuals' change
    (Cauchy-Schwarz, with the plain run's ``mean d^2`` read from its own loss), plus four CKKS
    operations in the loss terms per step and the decryption."""
    tables = bank_tables()
    top = Topology(guest="bank", hosts=("partner",), arbiter="arbiter")
    training = vt_training(epochs=5, batch_size=128, lr=0.3)

    def fit(backend: str) -> tuple[Any, dict[str, Any]]:
        spec = vt_spec(topology=top, id_column="customer_id", label="default", backend=backend, training=training,
                       insecure=True)
        return run_job(spec, tables, seed=7)

    _, plain = fit("plain")
    hub, enc = fit("ckks")
    e = get_backend("ckks", profile="matmul").info().error_bound
    epochs = epoch_batches(hub, "partner")
    # the packed path ran: every residual holds its batch 8 times (7 coordinates in the guest's gradient)
    sizes = {int(b.size) for batches in epochs for b in batches}
    assert {struct.unpack_from(">Q", blob, 41)[0] for blob in _ciphertexts(hub, "vlr/residual")} == {8 * n for n in sizes}

    guest = plain["bank"]
    ids = sorted(set.intersection(*(set(t["customer_id"].astype(str)) for t in tables.values())))
    test_ids = set(guest["test_ids"])
    is_test = np.array([i in test_ids for i in ids])
    raw = {p: aligned_matrix(tables, p, ids, "customer_id", drop=["default"]) for p in top.data_parties}
    xs = {p: plain[p]["model"].transform(raw[p]) for p in top.data_parties}  # the guest's with its intercept
    x_all = np.hstack([xs[p] for p in top.data_parties])
    x_train = x_all[~is_test]
    dims = x_all.shape[1]
    ckks = get_backend("ckks", profile="matmul")
    rows = int((~is_test).sum())
    tol_w = 0.0
    for epoch, batches in enumerate(epochs, start=1):
        lr_e = training.lr / math.sqrt(epoch)
        mean_d2 = (guest["history"][epoch - 1]["loss"] - LOG2_MINUS_HALF) / 2
        for idx in batches:
            xb = x_train[idx]
            assert lr_e * np.linalg.eigvalsh(xb.T @ xb / (4 * idx.size))[-1] <= 2  # non-expansive step
            c_t = max(float(np.abs(xs[p][~is_test][idx]).sum(axis=0).max()) / idx.size for p in top.data_parties)
            d_l1 = 2 * math.sqrt(idx.size * rows * mean_d2)
            product = float(ckks.matmul_error_bound(input_l1=d_l1, column_l1=c_t, repeat=8))
            tol_w += lr_e * math.sqrt(dims) * (product + e)
    w_plain = np.concatenate([plain[p]["model"].weights for p in top.data_parties])
    w_enc = np.concatenate([enc[p]["model"].weights for p in top.data_parties])
    assert np.linalg.norm(w_enc - w_plain) <= tol_w, (np.linalg.norm(w_enc - w_plain), tol_w)

    delta = float(np.linalg.norm(x_all, axis=1).max()) * tol_w
    y = tables["bank"].assign(customer_id=tables["bank"]["customer_id"].astype(str)).set_index("customer_id").loc[
        ids, "default"].to_numpy(float)
    scores = x_all @ w_plain
    assert guest["final"]["auc"] == pytest.approx(roc_auc_score(y[is_test], scores[is_test]), abs=1e-9)
    pos, neg = scores[is_test & (y == 1)], scores[is_test & (y == 0)]
    close = float(np.mean(np.abs(pos[:, None] - neg[None, :]) <= 2 * delta))
    assert abs(enc["bank"]["final"]["auc"] - guest["final"]["auc"]) <= close, (close, delta)
    assert close < 0.05  # the bound means something: few held-out pairs are that close

    steps = len(epochs[0])
    for got, want in zip([r["loss"] for r in enc["bank"]["history"]], [r["loss"] for r in guest["history"]], strict=True):
        mean_d2 = (want - LOG2_MINUS_HALF) / 2
        tol_loss = 2 * (2 * math.sqrt(mean_d2) * delta / 4 + (delta / 4) ** 2) + 2 * 4 * e * (steps + 1)
        assert abs(got - want) <= tol_loss, (got, want, tol_loss)


# ------------------------------------------------------------------------------ DP accounting


def test_dp_accounting_depends_on_neither_the_layout_nor_the_batch_size(packed_backends: None) -> None:
    """Each epoch is one Gaussian release per customer whatever the batch (disjoint batches,
    parallel composition) and whatever the residuals' layout: the same event is charged, and with
    the same noise and masks the packed run lands on the same model."""
    common = dict(epsilon=8.0, delta=1e-5, rows=1600, epochs=5, parties=2, arbiter=True, clip=1.0, logit_clip=2.0)
    small, large = calibrate(batch_size=128, **common), calibrate(batch_size=2048, **common)
    assert small.epoch_event() == large.epoch_event() and small.job_event() == large.job_event()
    assert small.sigma(intercept=True) == large.sigma(intercept=True)
    assert (small.steps_per_epoch, large.steps_per_epoch) == (13, 1)

    top = TOPOLOGIES["arbiter-1host"]
    tables = breast_cancer_tables(1, drop=0.1)
    dp = PrivacySection(epsilon=8.0)
    _, plain = run_job(_spec(top, "plain", dp=dp), tables, noise_seed=5)
    _, packed = run_job(_spec(top, "plain-packed", dp=dp), tables, noise_seed=5)
    for p in top.data_parties:
        assert packed[p]["dp"] == plain[p]["dp"] and packed[p]["epsilon"] == plain[p]["epsilon"]
        np.testing.assert_allclose(packed[p]["model"].weights, plain[p]["model"].weights, rtol=0, atol=1e-9)  # masks: see above


# ------------------------------------------------------------------------------ every backend, Keys


@pytest.mark.parametrize(("name", "params"), [("plain", {}), ("paillier", {"key_bits": 1024, "workers": 1}),
                                              ("ckks", {"profile": "matmul"})])
def test_every_backend_has_secret_key_encryption_and_the_repeated_product(name: str, params: dict[str, Any]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 1024-bit Paillier keys warn (tests only)
        backend = get_backend(name, **params)
    secret = backend.keygen()
    public = secret.public()
    tol = max(backend.info().error_bound * 10, 1e-12)
    rng = np.random.default_rng(40)
    v, m = rng.uniform(-1, 1, 9), rng.uniform(-1, 1, (9, 3))
    own = backend.encrypt_with_secret(secret, v)
    assert own.fingerprint == public.fingerprint
    total = backend.add(own, backend.encrypt(public, v))  # an ordinary ciphertext under the key pair
    np.testing.assert_allclose(backend.decrypt(secret, total), 2 * v, atol=tol)
    expected = 4 if name == "ckks" else 1
    assert backend.matmul_repeat(rows=9, columns=3) == expected
    for repeat in (1, 4):
        out = backend.matmul_repeated(backend.encrypt(public, np.repeat(v, repeat)), m, repeat=repeat)
        np.testing.assert_allclose(backend.decrypt(secret, out), v @ m, atol=tol * 10)


def test_keys_encrypt_with_the_secret_where_the_party_holds_it() -> None:
    backend = CKKSBackend(profile="matmul")
    secret = backend.keygen()
    holder, peer = Keys(backend, secret.public(), secret), Keys(backend, secret.public())
    x = np.linspace(-1, 1, 50)
    mine, theirs = holder.ser(holder.enc(x)), peer.ser(peer.enc(x))
    if secret.seeded_encryption:  # Linux: seeded, about half the bytes
        assert len(mine) < 0.55 * len(theirs)
    for blob in (mine, theirs):
        assert np.max(np.abs(holder.dec(peer.de(blob, sender="p", length=50)) - x)) < 1e-6
    with pytest.raises(ProtocolError, match="holds 50 values, expected 400"):
        peer.de(mine, sender="h0", length=400)


# ------------------------------------------------------------------------------ matmul_repeated_sum


def _repeated_terms(backend: Any, public: Any, rows_list: list[int], *, repeat: int, cols: int, seed: int = 0):
    """Terms ``(Enc(np.repeat(v_t, repeat)), M_t)`` of residual-like ``v_t`` and ``X/n``-like
    ``M_t``, and their exact sum ``Σ v_t @ M_t``."""
    rng = np.random.default_rng(seed)
    terms, want = [], np.zeros(cols)
    for rows in rows_list:
        v, m = rng.uniform(-1, 1, rows), rng.normal(size=(rows, cols)) / rows
        terms.append((backend.encrypt(public, np.repeat(v, repeat)), m))
        want += v @ m
    return terms, want


def test_ckks_sum_of_repeated_products_is_exact_within_the_documented_bound() -> None:
    """Several steps' products (batches of 512, 511 and 300 rows, the last one not filling its
    ciphertext) added before one fold: within the sum of each term's documented bound of the
    plain ``Σ v_t @ M_t``, and the same as the sum of the one-term products."""
    ckks = CKKSBackend(profile="matmul")
    sk = ckks.keygen()
    terms, want = _repeated_terms(ckks, sk.public(), [512, 511, 300, 2048], repeat=8, cols=7)
    got = ckks.decrypt(sk, ckks.matmul_repeated_sum(terms, repeat=8))
    bound = sum(ckks.matmul_error_bound(input_l1=float(np.abs(ckks.decrypt(sk, c)[::8]).sum() + 1e-3),
                                        column_l1=np.abs(m).sum(axis=0), repeat=8) for c, m in terms)
    assert got.shape == (7,)
    assert np.all(np.abs(got - want) <= bound), (np.abs(got - want), bound)
    one_by_one = sum(ckks.decrypt(sk, ckks.matmul_repeated(c, m, repeat=8)) for c, m in terms)
    assert np.all(np.abs(got - one_by_one) <= 2 * bound)
    # a single term is matmul_repeated itself
    single = ckks.decrypt(sk, ckks.matmul_repeated_sum(terms[:1], repeat=8))
    assert np.all(np.abs(single - ckks.decrypt(sk, terms[0][0])[::8] @ terms[0][1]) <= bound)


def test_ckks_sum_of_repeated_products_refuses_another_key_or_layout() -> None:
    """A term under another key, a ciphertext that does not hold whole repeats, matrices of
    different widths and terms at different depths are refused with an error naming the problem,
    before anything is computed."""
    from fedsilo.errors import ConfigError, KeyMismatchError

    ckks = CKKSBackend(profile="matmul")
    sk, other = ckks.keygen(), ckks.keygen()
    terms, _ = _repeated_terms(ckks, sk.public(), [64, 64], repeat=8, cols=5)
    foreign, _ = _repeated_terms(ckks, other.public(), [64], repeat=8, cols=5)
    with pytest.raises(KeyMismatchError):
        ckks.matmul_repeated_sum([*terms, *foreign], repeat=8)
    with pytest.raises(ConfigError, match="whole repeats"):
        ckks.matmul_repeated_sum([(ckks.encrypt(sk.public(), np.ones(63)), np.ones((7, 5)))], repeat=8)
    with pytest.raises(ConfigError, match="same columns"):
        ckks.matmul_repeated_sum([terms[0], (terms[1][0], terms[1][1][:, :4])], repeat=8)
    with pytest.raises(ConfigError, match="at most repeat"):
        ckks.matmul_repeated_sum([(terms[0][0], np.ones((64, 9)))], repeat=8)
    deeper = ckks.mul_plain(terms[1][0], 0.5)
    with pytest.raises(ConfigError, match="same depth"):
        ckks.matmul_repeated_sum([terms[0], (deeper, terms[1][1])], repeat=8)
    with pytest.raises(ConfigError, match="at least one"):
        ckks.matmul_repeated_sum([], repeat=8)


def test_generic_sum_of_repeated_products_is_the_sum_of_products() -> None:
    """The interface's default (plain backend, the generic per-column path) gives exactly the
    sum of the terms' products."""
    plain = PlainBackend()
    sk = plain.keygen()
    terms, want = _repeated_terms(plain, sk.public(), [10, 7], repeat=4, cols=3)
    np.testing.assert_allclose(plain.decrypt(sk, plain.matmul_repeated_sum(terms, repeat=4)), want, atol=1e-12)
