"""Heterogeneous (vertical) logistic regression: one function per party over a :class:`Channel`.

The guest holds labels and some features, each host other features of the same (aligned)
rows, and the key holder decrypts. Two topologies:

* **arbiter** (Hardy et al., arXiv:1711.10677, §3; FATE's hetero-LR): a third party without
  data generates the key pair and only ever decrypts masked values.
* **two-party** (no arbiter, exactly one host): each of the two parties holds its *own* key
  pair. One key is not enough: if the guest held the only key, every host value encrypted for
  the guest's residual would be readable by the guest. The host's partial logits travel under
  the host's key, the guest's residual part under the guest's key, and each party decrypts
  only the other's *masked* gradient (cf. Yang et al., "Parallel distributed logistic
  regression for vertical federated learning without third-party coordinator",
  arXiv:1911.09824).

One training step on a mini-batch (arbiter topology, key K of the arbiter; ``[[·]]`` is
encryption under K)::

    host h  : b_h = u_h/4 (u_h = X_h w_h, clipped to ±B under DP)   -- [[b_h]] -->  guest
    guest   : [[d]] = Σ_h [[b_h]] + (u_g/4 − y'/2)                   -- [[d]]   -->  hosts
    party p : [[d]] @ (X_p / n_b) + m_p     (mask m_p ~ U(−M, M), ciphertext × plaintext)
              -- [[g_p + m_p]] --> arbiter
    party q : (DP) noise shares [[n_qp]] for every other data party p, inside its ledger
              charge                                                 -- [[n_qp]] --> arbiter
              (and its own share n_pp, added with its mask: [[g_p + m_p + n_pp]])
    arbiter : z_p = Dec([[g_p + m_p + n_pp]] + Σ_q [[n_qp]] + n_ap)  -- z_p     -->  p
    party p : g_p = z_p − m_p;  w_p ← w_p − lr_e (g_p + λ w_p)

Who learns what:

* hosts receive only ciphertexts under a key they do not hold, batch indices, and their own
  gradient (noised, under DP, by every party) — never labels, residuals or another
  party's features or weights;
* the guest receives ciphertexts it cannot decrypt and its own (noised) gradient — never a
  host's features, partial logits or weights;
* the key holder decrypts only ``g_p + m_p (+ noise)``: the uniform mask hides ``g_p`` up to a
  statistical distance of ``|g_p| / (2M)`` per coordinate *per step* (the masks are reals, not
  uniform over the plaintext ring: a value outside ``[−M, M]`` gives away the sign of ``g_p``
  and a lower bound on it). These leaks add up over the steps of a run — up to
  ``Σ_steps |g_p| / (2M)`` per coordinate — so without DP there is no run-level guarantee,
  only a per-step one that a larger ``M`` improves; under DP the decrypted value is already
  noised and the run-level guarantee is the DP one;
* without DP, the key holder also decrypts the training loss once per epoch (the mean Taylor
  loss ``log 2 − 1/2 + 2·mean(d²)``, see :mod:`.taylor`; as one scalar, or a few partial sums
  over groups of steps when CKKS's magnitude bound forbids one sum); the guest receives it.
  Under DP the training loss is not decrypted (it would be a further release), so early
  stopping is off and the planned number of epochs — the one the budget was calibrated for —
  runs.
* the joint prediction protocol (:func:`predict_guest` / :func:`serve_predictions`) reveals
  the hosts' exact partial scores ``X_h w_h`` of the requested rows to the guest, as in FATE.
  A job uses it at most once, after training, on the held-out rows, and only without DP
  (``insecure``): a per-customer score cannot be released under DP with any useful accuracy
  (its sensitivity is the whole score range), so a DP job releases no held-out scores at all.
  Nothing is evaluated during training: repeated scores under changing weights would reveal
  the column space of the hosts' features;
* without DP, every party receives its **exact** gradient ``X_pᵀd / n_b``: from it a host
  recovers the residuals, hence the labels, once it has as many features as a batch has rows
  (with zero initial weights, 100 % of the training labels in epoch 1), and a guest the hosts'
  partial logits. Training without DP is refused unless the config opts in with ``[crypto]
  insecure = true``, and refused even then when a party has at least ``batch_size`` features
  (docs/vertical.md).

DP (record level, replace one customer's row) is described in :mod:`.taylor`: features are
scaled with public bounds (``bounds``, required for every feature under DP), each epoch's
batches are a shuffled partition of the training rows, each released gradient ``g_p`` carries
Gaussian noise of at least ``σ_p = z·Δ_p`` (``Δ_p`` the replace-one sensitivity) that no
``colluders`` parties can subtract: every data party (``p`` included, under encryption before
it masks) and the arbiter, if any, add a share (:meth:`.taylor.DpPlan.share_sigma`), so no
single party knows the noise on any gradient. Each data party charges its ledger (required
under DP) with ``GaussianEvent(z/sqrt(P), 1.0, 1)`` once per epoch **before** it contributes
the noise shares that every decryption of that epoch waits for. A host checks that the guest's
batches partition the training rows before it charges.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, ContextManager

import numpy as np

from fedsilo.crypto.base import Ciphertext, CryptoBackend, PublicContext, SecretKey
from fedsilo.errors import ConfigError, DataError, EncodingOverflowError, PeerTimeoutError, ProtocolError
from fedsilo.privacy.accounting import epsilon
from fedsilo.privacy.ledger import PrivacyLedger
from fedsilo.privacy.mechanisms import clip_rows_l2, gaussian_noise
from fedsilo.privacy.relations import REPLACE_RECORD
from fedsilo.protocols.channel import Channel
from fedsilo.protocols.metrics import accuracy, auc, ks_statistic, log_loss
from fedsilo.protocols.scaling import scale_with_bounds
from fedsilo.protocols.vertical.data import check_bounds, feature_bounds
from fedsilo.protocols.vertical.taylor import (
    DpPlan,
    calibrate,
    epoch_partition,
    guest_residual_part,
    host_residual_part,
    learning_rate,
    sigmoid,
    standardize_apply,
    standardize_fit,
    taylor_loss,
)

__all__ = [
    "MESSAGE_KINDS",
    "DpConfig",
    "FitResult",
    "LocalModel",
    "NoiseDraw",
    "Topology",
    "TrainingConfig",
    "arbiter_train",
    "evaluation_metrics",
    "guest_train",
    "host_train",
    "predict_guest",
    "serve_predictions",
]

PROTOCOL = "vertical_lr"

# ------------------------------------------------------------------------------ message kinds
# One payload shape each, in the order of one job (the figure in the module docstring);
# ``[[x]]`` is a serialized ciphertext (bytes), party names are strings.
#: host -> guest, once: ``{"rows", "train", "eval", "dim", "config", "dp"}`` (counts, digests)
HELLO = "vlr/hello"
#: guest -> hosts (+ arbiter), once: ``{"dims": {party: int}, "plan": DpPlan JSON | None, "loss": bool}``
SETUP = "vlr/setup"
#: key holder -> party, once: ``{"public": bytes}`` (a public context, never a secret key)
KEY = "vlr/key"
#: guest -> hosts ``{"stop": bool, "batches": [int array]}``; guest -> arbiter ``{"stop", "sizes": [int]}``
EPOCH = "vlr/epoch"
#: host -> guest, per step: ``{"ct": [[b_h]], "sq"?: [[‖b_h‖²/R]]}`` (``sq`` only when the loss is tracked)
PARTIAL = "vlr/partial"
#: guest -> host, per step: ``{"ct": [[d]] (arbiter) or [[a]] (two-party), "prefix"?: [[Σ_{h'<h} b_h']]}``
RESIDUAL = "vlr/residual"
#: host -> guest, per step (loss tracked, arbiter, 2nd host on): ``[[2 prefix·b_h / R]]``
CROSS = "vlr/cross"
#: party -> key holder, per step: ``[[g_p + m_p (+ n_pp)]]``
GRAD = "vlr/grad"
#: party -> arbiter, per step (DP): ``{owner: [[n_qp]]}``, one noise share per other data party
NOISE = "vlr/noise"
#: key holder -> party, per step: the decrypted masked (and noised) gradient, a float vector
PLAIN = "vlr/plain"
#: guest -> key holder, per epoch (no DP): ``[[[partial loss sums]]]``, a list of ciphertexts
LOSS = "vlr/loss"
#: key holder -> guest, per epoch (no DP): ``{"sum": float}``
LOSS_VALUE = "vlr/loss_value"
#: guest -> hosts, once after training (no DP): ``{"rows": int array}``
PREDICT = "vlr/predict"
#: host -> guest, answer to PREDICT: the exact partial scores of those rows, a float vector
SCORE = "vlr/score"

MESSAGE_KINDS = (HELLO, SETUP, KEY, EPOCH, PARTIAL, RESIDUAL, CROSS, GRAD, NOISE, PLAIN, LOSS, LOSS_VALUE, PREDICT, SCORE)


# ------------------------------------------------------------------------------ configuration


@dataclass(frozen=True, slots=True)
class TrainingConfig:
    """Hyper-parameters every party must agree on (the guest checks a digest of them).

    Args:
        epochs: passes over the training rows (the job's ``rounds``).
        batch_size: rows per step: each epoch is a fresh shuffled partition of the training
            rows into ``ceil(rows / batch_size)`` batches of near-equal size.
        lr: base learning rate; ``lr_schedule`` ``"sqrt"`` uses ``lr / sqrt(epoch)``.
        l2: L2 penalty ``λ/2 ‖w‖²`` on each party's weights (not the intercept).
        tol: stop when the training loss improves by less than this (no DP only).
        mask_scale: ``M``, masks are uniform in ``[−M, M]``; larger hides better. Capped at
            half the backend's ``value_bound`` (CKKS: 4096 by default, so ``M`` = 2048).
        track_loss: compute the encrypted Taylor loss each epoch (no DP only).
        timeout: seconds to wait for any one message.
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.3
    lr_schedule: str = "sqrt"
    l2: float = 0.0
    tol: float | None = None
    mask_scale: float = 1e4
    track_loss: bool = True
    timeout: float = 600.0

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ConfigError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        for name in ("lr", "mask_scale", "timeout"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ConfigError(f"{name} must be a number > 0, got {v!r}")
        if not (isinstance(self.l2, (int, float)) and math.isfinite(self.l2) and self.l2 >= 0):
            raise ConfigError(f"l2 must be a number >= 0, got {self.l2!r}")
        if self.tol is not None and not (isinstance(self.tol, (int, float)) and self.tol > 0):
            raise ConfigError(f"tol must be a number > 0 or None, got {self.tol!r}")
        learning_rate(base=self.lr, epoch=1, schedule=self.lr_schedule)

    def digest(self) -> str:
        return _digest({k: getattr(self, k) for k in self.__slots__ if k != "timeout"})


@dataclass(frozen=True, slots=True)
class DpConfig:
    """Record-level DP for vertical LR (see :mod:`.taylor`).

    Args:
        epsilon, delta: the target per data party for the whole training run.
        clip: L2 bound ``C`` of each party's scaled feature row (features in ``[-1, 1]``).
        logit_clip: bound ``B`` on each party's partial logit during training.
        accountant: ``"rdp"`` or ``"pld"``.
        colluders: noise adders (data parties, arbiter) that may pool the noise shares they
            drew and still leave each gradient the full noise (each share is scaled up
            accordingly); at least 1, since a gradient's owner knows its own share.
    """

    epsilon: float
    delta: float = 1e-5
    clip: float = 1.0
    logit_clip: float = 2.0
    accountant: str = "rdp"
    colluders: int = 1

    def __post_init__(self) -> None:
        for name in ("epsilon", "clip", "logit_clip"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0):
                raise ConfigError(f"dp.{name} must be a number > 0, got {v!r}")
        if not (isinstance(self.delta, (int, float)) and 0 < self.delta < 1):
            raise ConfigError(f"dp.delta must be in (0, 1), got {self.delta!r}")
        if isinstance(self.colluders, bool) or not isinstance(self.colluders, int) or self.colluders < 1:
            raise ConfigError(
                f"dp.colluders must be an integer >= 1 (each party knows its own noise share), got {self.colluders!r}"
            )


@dataclass(frozen=True, slots=True)
class Topology:
    """Who plays which role. ``arbiter=None`` is the two-party topology (exactly one host)."""

    guest: str
    hosts: tuple[str, ...]
    arbiter: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "hosts", tuple(self.hosts))
        names = [self.guest, *self.hosts] + ([self.arbiter] if self.arbiter else [])
        if len(set(names)) != len(names):
            raise ConfigError(f"vertical roles must name distinct parties, got {names}")
        if not self.hosts:
            raise ConfigError("vertical learning needs at least one host")
        if self.arbiter is None and len(self.hosts) != 1:
            raise ConfigError(
                f"without an arbiter exactly one host is supported (got {len(self.hosts)}); add an arbiter"
            )

    @property
    def data_parties(self) -> tuple[str, ...]:
        return (self.guest, *self.hosts)

    def grad_key_holder(self, party: str) -> str:
        """Who decrypts ``party``'s masked gradient."""
        if self.arbiter is not None:
            return self.arbiter
        return self.hosts[0] if party == self.guest else self.guest


# ------------------------------------------------------------------------------ models / results


@dataclass(frozen=True, slots=True)
class LocalModel:
    """One party's share of the model: its own preprocessing and weights (never sent).

    Columns with public ``bounds`` (``(lo, hi)`` arrays, NaN where a column has none) are
    clipped to them and mapped to ``[-1, 1]``; the others are standardized with ``mean`` and
    ``scale`` (training statistics; never under DP).
    """

    columns: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    clip: float | None
    weights: np.ndarray  #: one per column, plus the intercept last for the guest
    intercept: bool
    bounds: tuple[np.ndarray, np.ndarray] | None = None

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Scale (public bounds, else train statistics), clip rows under DP, append the
        guest's constant 1."""
        z = standardize_apply(x, mean=self.mean, scale=self.scale)
        if self.bounds is not None:
            lo, hi = self.bounds
            has = ~np.isnan(lo)
            if has.any():
                z[:, has] = scale_with_bounds(np.asarray(x, dtype=np.float64)[:, has], lo[has], hi[has])
        if self.clip is not None and z.shape[1]:
            z = clip_rows_l2(z, max_norm=self.clip)
        if self.intercept:
            z = np.hstack([z, np.ones((z.shape[0], 1))])
        return z

    def partial_logits(self, x: np.ndarray) -> np.ndarray:
        return self.transform(x) @ self.weights


@dataclass
class FitResult:
    """What a party's training function returns."""

    model: LocalModel | None
    history: list[dict[str, Any]] = field(default_factory=list)
    dp: DpPlan | None = None
    epochs_run: int = 0
    stopped_early: bool = False
    next_round: int = 0
    epsilon: float | None = None  #: ε this job spent for this party (computed from its events)


@dataclass(frozen=True, slots=True)
class NoiseDraw:
    """One noise share as drawn (a test hook's view; never sent in the clear): ``drawer`` added
    ``share`` (already divided by the batch size, like the gradient) to ``owner``'s gradient in
    the step of ``round``."""

    round: int
    drawer: str
    owner: str
    share: np.ndarray


#: Optional hook called with every :class:`NoiseDraw` a party makes (tests inspect the shares).
NoiseTap = Callable[[NoiseDraw], None]


# ------------------------------------------------------------------------------ crypto recipes


class _Keys:
    """The few recipes the protocol needs on top of the backend (serialize on every send)."""

    def __init__(self, backend: CryptoBackend, public: PublicContext, secret: SecretKey | None = None) -> None:
        self.backend = backend
        self.public = public
        self.secret = secret

    def enc(self, values: np.ndarray) -> Ciphertext:
        return self.backend.encrypt(self.public, np.asarray(values, dtype=np.float64))

    def ser(self, ct: Ciphertext) -> bytes:
        return self.backend.serialize(ct)

    def de(self, data: Any, *, sender: str) -> Ciphertext:
        if not isinstance(data, bytes):
            raise ProtocolError(f"expected a ciphertext from {sender!r}, got {type(data).__name__}")
        return self.backend.deserialize(self.public, data)

    def dec(self, ct: Ciphertext) -> np.ndarray:
        if self.secret is None:  # pragma: no cover - programming error
            raise ProtocolError("this party holds no secret key")
        return self.backend.decrypt(self.secret, ct)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _dp_digest(dp: DpConfig | None) -> str:
    return _digest(None if dp is None else {k: getattr(dp, k) for k in dp.__slots__})


def _gather_all(ch: Channel, senders: Sequence[str], kind: str, *, round: int, timeout: float) -> dict[str, Any]:
    got = ch.gather(senders, kind, round=round, timeout=timeout)
    missing = sorted(set(senders) - set(got))
    if missing:
        raise PeerTimeoutError(
            f"{ch.party}: no {kind!r} from {', '.join(map(repr, missing))} for round {round} within {timeout:g}s"
        )
    return got


def _as_float_vector(value: Any, *, length: int, sender: str, what: str) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype != np.float64 or value.shape != (length,):
        raise ProtocolError(f"malformed {what} from {sender!r} (expected {length} float64 values)")
    return value


def _check_partition(batches: Any, rows: int, *, who: str) -> list[np.ndarray]:
    """The guest's batches of one epoch, checked to be a partition of ``range(rows)``: each
    training row in exactly one batch — what this party's per-epoch DP charge assumes."""
    if not isinstance(batches, list) or any(
        not isinstance(b, np.ndarray) or b.ndim != 1 or b.dtype.kind != "i" for b in batches
    ):
        raise ProtocolError(f"{who}: malformed batches from the guest")
    flat = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
    if flat.size != rows or not np.array_equal(np.sort(flat), np.arange(rows)):
        raise ProtocolError(
            f"{who}: the guest's batches do not partition the {rows} training rows (each row exactly once per epoch)"
        )
    return batches


def _fit_model(
    x: np.ndarray,
    train_rows: np.ndarray,
    columns: Sequence[str] | None,
    *,
    dp: DpConfig | None,
    intercept: bool,
    bounds: Mapping[str, tuple[float, float]],
    who: str,
) -> LocalModel:
    """This party's preprocessing: public bounds where given (every column under DP), else
    standardization with its own training rows' statistics (no DP only)."""
    cols = tuple(columns) if columns is not None else tuple(f"x{j}" for j in range(x.shape[1]))
    if len(cols) != x.shape[1]:
        raise DataError(f"{who}: {len(cols)} column names for {x.shape[1]} feature columns")
    lo, hi = feature_bounds(cols, bounds, source=who, required=dp is not None)
    free = np.isnan(lo)
    mean, scale = np.zeros(x.shape[1]), np.ones(x.shape[1])
    if free.any():  # never under DP (feature_bounds refused it)
        mean[free], scale[free] = standardize_fit(x[train_rows][:, free])
    dim = x.shape[1] + (1 if intercept else 0)
    return LocalModel(cols, mean, scale, dp.clip if dp else None, np.zeros(dim), intercept,
                      (lo, hi) if not free.all() else None)


def _check_dp_ledger(dp: DpConfig | None, ledger: PrivacyLedger | None, dataset: str | None, *, who: str) -> None:
    if dp is not None and (ledger is None or dataset is None):
        raise ConfigError(
            f"{who}: differential privacy needs a privacy ledger and the dataset name to charge "
            f"(got ledger={'set' if ledger is not None else None}, dataset={dataset!r}); "
            "nothing is released without a ledger entry"
        )


def _check_matrix(x: np.ndarray, *, who: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise DataError(f"{who}: features must be a 2-D matrix, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{who}: features contain NaN or infinite values")
    return arr


def _check_rows(rows: np.ndarray, n: int, *, who: str, what: str) -> np.ndarray:
    r = np.asarray(rows, dtype=np.int64).ravel()
    if r.size and (r.min() < 0 or r.max() >= n):
        raise DataError(f"{who}: {what} rows outside 0..{n - 1}")
    return r


def _charge(
    ledger: PrivacyLedger | None, dataset: str | None, plan: DpPlan | None, *, job: str, epoch: int, recipients: Sequence[str]
) -> ContextManager[Any]:
    if plan is None:
        return nullcontext()
    if ledger is None or dataset is None:  # pragma: no cover - refused when training starts
        raise ConfigError("differential privacy needs a privacy ledger and the dataset name to charge")
    return ledger.charge(
        dataset,
        plan.epoch_event(),
        job=job,
        round=epoch,
        protocol=PROTOCOL,
        mechanism={
            "name": "gaussian_noise_shares",
            "released": "every data party's gradient (its own included: it moves its weights)",
            "neighbours": plan.neighbouring,
            "noise_multiplier": plan.noise_multiplier,
            "event_multiplier": plan.event_multiplier,
            "clip": plan.clip,
            "logit_clip": plan.logit_clip,
            "residual_bound": plan.residual_bound,
            "sensitivity_guest": plan.sensitivity(intercept=True),
            "sensitivity_host": plan.sensitivity(intercept=False),
            "sample_rate": plan.sample_rate,
            "batches": "public to every party, disjoint: one release per customer per epoch",
            "batches_per_epoch": plan.steps_per_epoch,
            "shares": len(recipients) + 1,
            "noise_adders": plan.noise_adders,
            "colluders": plan.colluders,
        },
        recipient=",".join(sorted(recipients)),
        relation=REPLACE_RECORD,
    )


def _draw_share(
    plan: DpPlan,
    *,
    owner: str,
    me: str,
    topology: Topology,
    dims: Mapping[str, int],
    norm: float,
    rng: np.random.Generator,
    round: int,
    tap: NoiseTap | None,
) -> np.ndarray:
    """One noise share of ``owner``'s gradient, at mean scale (divided by the public batch size)."""
    sigma = plan.share_sigma(intercept=owner == topology.guest) / norm
    share = gaussian_noise(sigma=sigma, size=dims[owner], rng=rng)
    if tap is not None:
        tap(NoiseDraw(round, me, owner, share.copy()))
    return share


def _noise_shares(
    keys_for: Mapping[str, _Keys],
    *,
    plan: DpPlan,
    me: str,
    topology: Topology,
    dims: Mapping[str, int],
    norm: float,
    rng: np.random.Generator,
    round: int,
    tap: NoiseTap | None,
) -> dict[str, bytes]:
    """This party's encrypted noise share for every other data party's gradient (its share of
    its own gradient is added with its mask, see :func:`_own_share`)."""
    out: dict[str, bytes] = {}
    for p in topology.data_parties:
        if p == me:
            continue
        noise = _draw_share(plan, owner=p, me=me, topology=topology, dims=dims, norm=norm, rng=rng, round=round, tap=tap)
        out[p] = keys_for[p].ser(keys_for[p].enc(noise))
    return out


def _own_share(
    plan: DpPlan | None,
    *,
    me: str,
    topology: Topology,
    dims: Mapping[str, int],
    norm: float,
    rng: np.random.Generator,
    round: int,
    tap: NoiseTap | None,
) -> np.ndarray | float:
    """This party's noise share of its *own* gradient (0 without DP). It is added under
    encryption together with the mask, and only the mask is removed after decryption, so the
    share stays in the gradient and no other party learns it."""
    if plan is None:
        return 0.0
    return _draw_share(plan, owner=me, me=me, topology=topology, dims=dims, norm=norm, rng=rng, round=round, tap=tap)


def _update(model: LocalModel, grad: np.ndarray, *, lr: float, l2: float) -> LocalModel:
    reg = l2 * model.weights
    if model.intercept:
        reg[-1] = 0.0
    w = model.weights - lr * (grad + reg)
    return LocalModel(model.columns, model.mean, model.scale, model.clip, w, model.intercept, model.bounds)


def _plan(dp: DpConfig | None, *, rows: int, config: TrainingConfig, parties: int, arbiter: bool) -> DpPlan | None:
    if dp is None:
        return None
    return calibrate(
        epsilon=dp.epsilon,
        delta=dp.delta,
        rows=rows,
        batch_size=config.batch_size,
        epochs=config.epochs,
        parties=parties,
        clip=dp.clip,
        logit_clip=dp.logit_clip,
        accountant=dp.accountant,
        colluders=dp.colluders,
        arbiter=arbiter,
    )


def _refuse_exact_gradients(dims: Mapping[str, int], *, rows: int, batch_size: int, who: str) -> None:
    """Without DP each party receives its exact gradient ``X_pᵀd / n``: with as many gradient
    coordinates (features, plus the guest's intercept) as rows in a batch, ``X_p`` is
    invertible on the batch and ``d`` (hence the labels, or another party's partial logits)
    follows exactly. The batch that counts is the smallest one an epoch really has
    (:func:`.taylor.epoch_partition` splits ``rows`` into ``ceil(rows / batch_size)`` near-equal
    batches, which may hold fewer rows than ``batch_size``). Refused even under ``insecure``."""
    smallest = rows // max(1, math.ceil(rows / batch_size)) if rows else 0
    wide = {p: d for p, d in dims.items() if d >= smallest}
    if wide:
        listed = ", ".join(f"{p} ({d})" for p, d in sorted(wide.items()))
        raise ConfigError(
            f"{who}: vertical training without DP reveals each party's exact gradient, and with at least as "
            f"many gradient coordinates (features, plus the guest's intercept) as rows in a batch (the smallest "
            f"batch has {smallest} of {rows} training rows, training.batch_size = {batch_size}) that gradient gives "
            f"away the residuals (the labels): {listed}; give the job more training rows or a larger batch_size, "
            "or enable [privacy]"
        )


def _clip_logits(u: np.ndarray, plan: DpPlan | None) -> np.ndarray:
    return u if plan is None else np.clip(u, -plan.logit_clip, plan.logit_clip)


def _spent(plan: DpPlan | None, epochs: int) -> float | None:
    if plan is None or epochs == 0:
        return None
    return epsilon(plan.job_event(epochs), delta=plan.delta, accountant=plan.accountant)


# ------------------------------------------------------------------------------ key set-up


def _setup_keys(ch: Channel, topology: Topology, backend: CryptoBackend, *, round: int, timeout: float) -> dict[str, Any]:
    """Every data party's view of the keys: ``grad`` (keys for its own gradient's holder),
    ``own`` (its secret keys, two-party only) and ``peer`` (the other's public, two-party)."""
    me = ch.party
    if topology.arbiter is not None:
        msg = ch.recv(topology.arbiter, KEY, round=round, timeout=timeout)
        pub = backend.load_public(msg["public"] if isinstance(msg, dict) else b"")
        k = _Keys(backend, pub)
        return {"shared": k}
    other = topology.hosts[0] if me == topology.guest else topology.guest
    sk = backend.keygen()
    own = _Keys(backend, sk.public(), sk)
    ch.send(other, KEY, {"public": own.public.serialize()}, round=round)
    msg = ch.recv(other, KEY, round=round, timeout=timeout)
    peer = _Keys(backend, backend.load_public(msg["public"] if isinstance(msg, dict) else b""))
    return {"own": own, "peer": peer}


# ------------------------------------------------------------------------------ guest


def guest_train(
    channel: Channel,
    *,
    topology: Topology,
    x: np.ndarray,
    y: np.ndarray,
    train_rows: np.ndarray,
    eval_rows: np.ndarray,
    backend: CryptoBackend,
    config: TrainingConfig,
    dp: DpConfig | None = None,
    ledger: PrivacyLedger | None = None,
    dataset: str | None = None,
    columns: Sequence[str] | None = None,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    rng: np.random.Generator,
    batch_rng: np.random.Generator,
    start_round: int = 1,
    progress: Callable[[dict[str, Any]], None] | None = None,
    noise_tap: NoiseTap | None = None,
) -> FitResult:
    """The guest's side of training: drives the epochs, draws the batches, forms residuals.

    ``x``/``y`` are the guest's aligned rows; ``train_rows`` and ``eval_rows`` index them (the
    hosts get the same index sets). Nothing is evaluated on ``eval_rows`` during training:
    each per-epoch joint prediction would release the hosts' partial scores again (with enough
    epochs, the column space of their features); see :func:`predict_guest`. ``rng``: this party's
    secret randomness (masks, noise shares; the OS CSPRNG outside tests); ``batch_rng``: the
    public batch order (from the job seed: the batches are public among the parties anyway).
    ``bounds``: public ``column -> (lo, hi)`` feature bounds (required
    for every column under DP); ``ledger`` and ``dataset``: required under DP. ``noise_tap``
    (tests): called with every noise share this party draws.

    Raises:
        DataError: a host's row counts differ from the guest's, labels are not 0/1.
        ConfigError: DP without a ledger, or without bounds for every feature.
    """
    me, hosts, arb = channel.party, topology.hosts, topology.arbiter
    T, r = config.timeout, start_round
    _check_dp_ledger(dp, ledger, dataset, who=me)
    x = _check_matrix(x, who=me)
    y = np.asarray(y, dtype=np.float64).ravel()
    if y.shape[0] != x.shape[0]:
        raise DataError(f"{me}: {y.shape[0]} labels for {x.shape[0]} feature rows")
    if not np.all((y == 0) | (y == 1)):
        raise DataError(f"{me}: labels must be 0 or 1")
    train_rows = _check_rows(train_rows, x.shape[0], who=me, what="training")
    eval_rows = _check_rows(eval_rows, x.shape[0], who=me, what="evaluation")
    model = _fit_model(x, train_rows, columns, dp=dp, intercept=True, bounds=check_bounds(bounds), who=me)

    # -- hello: row counts, dimensions, agreement on the configuration ------------------------
    hellos = _gather_all(channel, hosts, HELLO, round=r, timeout=T)
    for h, msg in hellos.items():
        if msg.get("rows") != x.shape[0] or msg.get("train") != train_rows.size or msg.get("eval") != eval_rows.size:
            raise DataError(
                f"host {h!r} has {msg.get('rows')} aligned rows ({msg.get('train')} for training, "
                f"{msg.get('eval')} for evaluation); the guest {me!r} has {x.shape[0]} "
                f"({train_rows.size}, {eval_rows.size}): the parties' tables are not aligned"
            )
        if msg.get("config") != config.digest() or msg.get("dp") != _dp_digest(dp):
            raise ConfigError(f"host {h!r} was started with other training or DP settings than the guest {me!r}")
    dims = {me: model.weights.size, **{h: int(hellos[h]["dim"]) for h in hosts}}
    plan = _plan(dp, rows=train_rows.size, config=config, parties=len(topology.data_parties),
                 arbiter=topology.arbiter is not None)
    if plan is None:
        _refuse_exact_gradients(dims, rows=train_rows.size, batch_size=config.batch_size, who=me)
    setup = {"dims": dims, "plan": plan.to_json() if plan else None, "loss": bool(config.track_loss and plan is None)}
    channel.broadcast([*hosts, *([arb] if arb else [])], SETUP, setup, round=r)
    keys = _setup_keys(channel, topology, backend, round=r, timeout=T)
    r += 1

    xt = model.transform(x[train_rows])
    yt = y[train_rows]
    history: list[dict[str, Any]] = []
    track_loss = setup["loss"]
    prev_loss: float | None = None
    stopped = False
    epochs_run = 0
    for epoch in range(1, config.epochs + 1):
        batches = epoch_partition(rows=train_rows.size, batch_size=config.batch_size, rng=batch_rng)
        channel.broadcast(hosts, EPOCH, {"stop": False, "batches": batches}, round=r)
        if arb:
            channel.send(arb, EPOCH, {"stop": False, "sizes": [int(b.size) for b in batches]}, round=r)
        lr_e = learning_rate(base=config.lr, epoch=epoch, schedule=config.lr_schedule)
        loss_cts: list[Ciphertext] = []
        rows_e = max(1, sum(int(b.size) for b in batches))  # every party scales its loss terms by 1/rows_e
        mask_scale = _mask_scale(backend, config)
        with _charge(ledger, dataset, plan, job=channel.job, epoch=epoch, recipients=hosts):
            for s, idx in enumerate(batches):
                step_round = r + 1 + s
                if idx.size == 0:
                    continue
                norm = float(idx.size)  # public: the batches are known to every party
                xb = xt[idx]
                a = guest_residual_part(logits=_clip_logits(xb @ model.weights, plan), labels=yt[idx])
                mask = rng.uniform(-mask_scale, mask_scale, size=model.weights.size)
                mine = _own_share(plan, me=me, topology=topology, dims=dims, norm=norm, rng=rng,
                                  round=step_round, tap=noise_tap)
                if arb:
                    k = keys["shared"]
                    parts = _gather_all(channel, hosts, PARTIAL, round=step_round, timeout=T)
                    cts = [k.de(parts[h].get("ct"), sender=h) for h in hosts]
                    b_sum = backend.sum(cts)
                    d = backend.add_plain(b_sum, a)
                    for j, h in enumerate(hosts):
                        msg: dict[str, Any] = {"ct": k.ser(d)}
                        if track_loss and j > 0:
                            msg["prefix"] = k.ser(backend.sum(cts[:j]))
                        channel.send(h, RESIDUAL, msg, round=step_round)
                    g = backend.add_plain(backend.matmul_plain(d, xb / norm), mask + mine)
                    channel.send(arb, GRAD, k.ser(g), round=step_round)
                    if plan is not None:
                        shares = _noise_shares(
                            {p: k for p in hosts}, plan=plan, me=me, topology=topology, dims=dims, norm=norm, rng=rng,
                            round=step_round, tap=noise_tap,
                        )
                        channel.send(arb, NOISE, shares, round=step_round)
                    if track_loss:
                        term = _guest_loss_term(backend, b_sum, a, rows=rows_e)
                        term = backend.sum([term] + [k.de(parts[h].get("sq"), sender=h) for h in hosts])
                        if len(hosts) > 1:
                            cross = _gather_all(channel, hosts[1:], CROSS, round=step_round, timeout=T)
                            term = backend.sum([term] + [k.de(cross[h], sender=h) for h in hosts[1:]])
                        _accumulate(backend, loss_cts, term)
                    z = channel.recv(arb, PLAIN, round=step_round, timeout=T)
                else:
                    (host,) = hosts
                    own, peer = keys["own"], keys["peer"]
                    channel.send(host, RESIDUAL, {"ct": own.ser(own.enc(a))}, round=step_round)
                    part = channel.recv(host, PARTIAL, round=step_round, timeout=T)
                    b = peer.de(part.get("ct"), sender=host)
                    d = backend.add_plain(b, a)
                    g = backend.add_plain(backend.matmul_plain(d, xb / norm), mask + mine)
                    channel.send(host, GRAD, peer.ser(g), round=step_round)
                    if track_loss:
                        term = backend.add(_guest_loss_term(backend, b, a, rows=rows_e), peer.de(part.get("sq"), sender=host))
                        _accumulate(backend, loss_cts, term)
                    _decrypt_for_peer(channel, own, peer=host, plan=plan, me=me, topology=topology,
                                      dims=dims, norm=norm, rng=rng, round=step_round, timeout=T, tap=noise_tap)
                    z = channel.recv(host, PLAIN, round=step_round, timeout=T)
                z = _as_float_vector(z, length=model.weights.size, sender=topology.grad_key_holder(me), what="gradient")
                model = _update(model, z - mask, lr=lr_e, l2=config.l2)
        end_round = r + 1 + len(batches)
        epochs_run = epoch
        record: dict[str, Any] = {"round": epoch, "lr": lr_e, "loss": None}
        if track_loss:
            holder = arb if arb else hosts[0]
            k_loss = keys["shared" if arb else "peer"]
            channel.send(holder, LOSS, [k_loss.ser(c) for c in loss_cts], round=end_round)
            value = channel.recv(holder, LOSS_VALUE, round=end_round, timeout=T)
            if loss_cts:
                record["loss"] = taylor_loss(sum_squared_residuals=float(value["sum"]), rows=1)
        history.append(record)
        if progress is not None:
            spent = _spent(plan, epoch)
            progress({**record, "epsilon": {p: spent for p in topology.data_parties} if spent is not None else None})
        r = end_round + 1
        loss = record["loss"]
        if config.tol is not None and loss is not None and prev_loss is not None and abs(prev_loss - loss) < config.tol:
            stopped = True
            break
        prev_loss = loss if loss is not None else prev_loss
    channel.broadcast([*hosts, *([arb] if arb else [])], EPOCH, {"stop": True}, round=r)
    return FitResult(
        model=model,
        history=history,
        dp=plan,
        epochs_run=epochs_run,
        stopped_early=stopped,
        next_round=r + 1,
        epsilon=_spent(plan, epochs_run),
    )


def _guest_loss_term(backend: CryptoBackend, b_sum: Ciphertext, a: np.ndarray, *, rows: int) -> Ciphertext:
    """``[[(Σa² + 2 a·b) / R]]``: the guest's part of ``Σ d² / R = Σ (a + b)² / R`` over the
    epoch's ``R`` rows (scaled in plaintext so the encrypted sum stays small)."""
    cross = backend.matmul_plain(b_sum, (2.0 * a / rows)[:, None])
    return backend.add_plain(cross, np.array([float(a @ a) / rows]))


def _accumulate(backend: CryptoBackend, acc: list[Ciphertext], term: Ciphertext) -> None:
    """Add ``term`` to the last running sum, or start a new one when the backend's (public,
    conservative) magnitude bound would overflow — CKKS tracks ``value_bound`` per summand."""
    if acc:
        try:
            acc[-1] = backend.add(acc[-1], term)
            return
        except EncodingOverflowError:
            pass
    acc.append(term)


def _decrypt_loss(keys: _Keys, blobs: Any, *, sender: str) -> float:
    """The key holder's side of the loss: decrypt the (few) partial sums, add them up."""
    if not isinstance(blobs, list):
        raise ProtocolError(f"malformed loss message from {sender!r}")
    return float(sum(float(keys.dec(keys.de(b, sender=sender))[0]) for b in blobs))


def _mask_scale(backend: CryptoBackend, config: TrainingConfig) -> float:
    """``M``, capped at half the backend's ``value_bound`` (CKKS and Paillier refuse larger
    plaintext operands).

    Leakage: with ``m ~ U(−M, M)`` the key holder sees ``g + m``, which falls outside
    ``[−M, M]`` (revealing the sign of ``g`` and a lower bound on ``|g|``) with probability
    ``|g| / (2M)`` per coordinate per step — the statistical distance between ``g + m`` and
    ``m``. Over T steps these add up (up to ``Σ_t |g_t| / (2M)``), and when ``g`` changes little
    between steps, averaging T masked values shrinks the mask's spread to ``M / sqrt(3T)``: without DP there is no run-level
    guarantee. The CKKS default ``M = 2048`` gives 2.4e-4 per coordinate and step for
    ``|g| = 1``.
    """
    bound = backend.params().get("value_bound")
    if isinstance(bound, (int, float)) and bound > 0:
        return min(config.mask_scale, 0.5 * float(bound))
    return config.mask_scale


def _decrypt_for_peer(
    ch: Channel,
    own: _Keys,
    *,
    peer: str,
    plan: DpPlan | None,
    me: str,
    topology: Topology,
    dims: Mapping[str, int],
    norm: float,
    rng: np.random.Generator,
    round: int,
    timeout: float,
    tap: NoiseTap | None,
) -> None:
    """Two-party: decrypt the peer's masked gradient, adding this party's DP noise share first
    (the peer has added its own share under encryption before masking)."""
    ct = own.de(ch.recv(peer, GRAD, round=round, timeout=timeout), sender=peer)
    if plan is not None:
        noise = _draw_share(plan, owner=peer, me=me, topology=topology, dims=dims, norm=norm, rng=rng, round=round, tap=tap)
        ct = own.backend.add(ct, own.enc(noise))
    ch.send(peer, PLAIN, own.dec(ct), round=round)


def evaluation_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    return {
        "auc": auc(labels=labels, scores=probs),
        "accuracy": accuracy(labels=labels, scores=probs),
        "ks": ks_statistic(labels=labels, scores=probs),
        "test_loss": log_loss(labels=labels, probabilities=probs),
    }


# ------------------------------------------------------------------------------ host


def host_train(
    channel: Channel,
    *,
    topology: Topology,
    x: np.ndarray,
    train_rows: np.ndarray,
    eval_rows: np.ndarray,
    backend: CryptoBackend,
    config: TrainingConfig,
    dp: DpConfig | None = None,
    ledger: PrivacyLedger | None = None,
    dataset: str | None = None,
    columns: Sequence[str] | None = None,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    rng: np.random.Generator,
    start_round: int = 1,
    noise_tap: NoiseTap | None = None,
) -> FitResult:
    """A host's side of training: partial logits, its encrypted gradient, noise shares.

    ``bounds``, ``ledger``, ``dataset`` and ``noise_tap`` as for :func:`guest_train`. Under DP the host
    checks that each epoch's batches partition the training rows before it charges its ledger.

    Raises:
        ConfigError: DP without a ledger, or without bounds for every feature.
        ProtocolError: malformed messages, or batches that are not a partition of the rows.
    """
    me, guest, arb = channel.party, topology.guest, topology.arbiter
    T, r = config.timeout, start_round
    _check_dp_ledger(dp, ledger, dataset, who=me)
    x = _check_matrix(x, who=me)
    if x.shape[1] == 0:
        raise DataError(f"{me}: a host needs at least one feature column")
    train_rows = _check_rows(train_rows, x.shape[0], who=me, what="training")
    eval_rows = _check_rows(eval_rows, x.shape[0], who=me, what="evaluation")
    model = _fit_model(x, train_rows, columns, dp=dp, intercept=False, bounds=check_bounds(bounds), who=me)
    channel.send(
        guest,
        HELLO,
        {
            "rows": x.shape[0],
            "train": train_rows.size,
            "eval": eval_rows.size,
            "dim": model.weights.size,
            "config": config.digest(),
            "dp": _dp_digest(dp),
        },
        round=r,
    )
    setup = channel.recv(guest, SETUP, round=r, timeout=T)
    if not isinstance(setup, dict) or not isinstance(setup.get("dims"), dict):
        raise ProtocolError(f"{me}: malformed setup message from the guest")
    plan = _plan(dp, rows=train_rows.size, config=config, parties=len(topology.data_parties),
                 arbiter=topology.arbiter is not None)
    if plan is None:
        _refuse_exact_gradients({me: model.weights.size}, rows=train_rows.size, batch_size=config.batch_size, who=me)
    if (plan.to_json() if plan else None) != setup.get("plan"):
        raise ConfigError(f"{me}: the guest's DP plan differs from this host's; refusing to train")
    dims = {str(k): int(v) for k, v in setup["dims"].items()}
    if dims.get(me) != model.weights.size or set(dims) != set(topology.data_parties):
        raise ProtocolError(f"{me}: the guest's setup names other dimensions or parties")
    # never trust the guest to keep the loss off under DP: it would be one more release
    track_loss = bool(setup.get("loss")) and plan is None
    keys = _setup_keys(channel, topology, backend, round=r, timeout=T)
    r += 1

    xt = model.transform(x[train_rows])
    others = [p for p in topology.data_parties if p != me]
    j_me = topology.hosts.index(me)
    epochs_run = 0
    while True:
        ep = channel.recv(guest, EPOCH, round=r, timeout=T)
        if ep.get("stop"):
            break
        epoch = epochs_run + 1
        batches = _check_partition(ep.get("batches"), train_rows.size, who=me)
        lr_e = learning_rate(base=config.lr, epoch=epoch, schedule=config.lr_schedule)
        rows_e = max(1, sum(int(b.size) for b in batches))
        mask_scale = _mask_scale(backend, config)
        with _charge(ledger, dataset, plan, job=channel.job, epoch=epoch, recipients=others):
            for s, idx in enumerate(batches):
                step_round = r + 1 + s
                if idx.size == 0:
                    continue
                norm = float(idx.size)  # public: the batches are known to every party
                xb = xt[idx]
                b = host_residual_part(logits=_clip_logits(xb @ model.weights, plan))
                mask = rng.uniform(-mask_scale, mask_scale, size=model.weights.size)
                mine = _own_share(plan, me=me, topology=topology, dims=dims, norm=norm, rng=rng,
                                  round=step_round, tap=noise_tap)
                if arb:
                    k = keys["shared"]
                    msg: dict[str, Any] = {"ct": k.ser(k.enc(b))}
                    if track_loss:
                        msg["sq"] = k.ser(k.enc(np.array([float(b @ b) / rows_e])))
                    channel.send(guest, PARTIAL, msg, round=step_round)
                    res = channel.recv(guest, RESIDUAL, round=step_round, timeout=T)
                    if not isinstance(res, dict):
                        raise ProtocolError(f"{me}: malformed residual from the guest")
                    d = k.de(res.get("ct"), sender=guest)
                    g = backend.add_plain(backend.matmul_plain(d, xb / norm), mask + mine)
                    channel.send(arb, GRAD, k.ser(g), round=step_round)
                    if plan is not None:
                        shares = _noise_shares(
                            {p: k for p in others}, plan=plan, me=me, topology=topology, dims=dims, norm=norm, rng=rng,
                            round=step_round, tap=noise_tap,
                        )
                        channel.send(arb, NOISE, shares, round=step_round)
                    if track_loss and j_me > 0:
                        prefix = k.de(res.get("prefix"), sender=guest)
                        channel.send(guest, CROSS, k.ser(backend.matmul_plain(prefix, (2.0 * b / rows_e)[:, None])), round=step_round)
                    z = channel.recv(arb, PLAIN, round=step_round, timeout=T)
                else:
                    own, peer = keys["own"], keys["peer"]
                    msg = {"ct": own.ser(own.enc(b))}
                    if track_loss:
                        msg["sq"] = own.ser(own.enc(np.array([float(b @ b) / rows_e])))
                    channel.send(guest, PARTIAL, msg, round=step_round)
                    res = channel.recv(guest, RESIDUAL, round=step_round, timeout=T)
                    if not isinstance(res, dict):
                        raise ProtocolError(f"{me}: malformed residual from the guest")
                    a = peer.de(res.get("ct"), sender=guest)
                    d = backend.add_plain(a, b)
                    g = backend.add_plain(backend.matmul_plain(d, xb / norm), mask + mine)
                    channel.send(guest, GRAD, peer.ser(g), round=step_round)
                    _decrypt_for_peer(channel, own, peer=guest, plan=plan, me=me, topology=topology,
                                      dims=dims, norm=norm, rng=rng, round=step_round, timeout=T, tap=noise_tap)
                    z = channel.recv(guest, PLAIN, round=step_round, timeout=T)
                z = _as_float_vector(z, length=model.weights.size, sender=topology.grad_key_holder(me), what="gradient")
                model = _update(model, z - mask, lr=lr_e, l2=config.l2)
        end_round = r + 1 + len(batches)
        epochs_run = epoch
        if track_loss and arb is None:
            own = keys["own"]
            blobs = channel.recv(guest, LOSS, round=end_round, timeout=T)
            channel.send(guest, LOSS_VALUE, {"sum": _decrypt_loss(own, blobs, sender=guest)}, round=end_round)
        r = end_round + 1
    return FitResult(model=model, dp=plan, epochs_run=epochs_run, next_round=r + 1, epsilon=_spent(plan, epochs_run))


# ------------------------------------------------------------------------------ arbiter


def arbiter_train(
    channel: Channel,
    *,
    topology: Topology,
    backend: CryptoBackend,
    config: TrainingConfig,
    rng: np.random.Generator | None = None,
    start_round: int = 1,
    noise_tap: NoiseTap | None = None,
) -> FitResult:
    """The key holder's side: generate keys, decrypt masked (and, under DP, noised) gradients.

    The arbiter holds no data and learns only masked gradients and, without DP, one loss value
    per epoch. Under DP it adds its own noise share to each gradient before decrypting (sized by
    the guest's plan, which every host has checked against its own), so that no data party
    colluding with it alone, nor the arbiter alone, knows the whole noise. ``rng`` draws those
    shares: required when the guest's setup turns DP on (without DP the arbiter draws nothing).

    Raises:
        ConfigError: DP is on and no ``rng`` was given (before anything is decrypted).
    """
    me, guest = channel.party, topology.guest
    T, r = config.timeout, start_round
    parties = topology.data_parties
    sk = backend.keygen()
    keys = _Keys(backend, sk.public(), sk)
    channel.broadcast(parties, KEY, {"public": keys.public.serialize()}, round=r)
    setup = channel.recv(guest, SETUP, round=r, timeout=T)
    if not isinstance(setup, dict) or not isinstance(setup.get("dims"), dict):
        raise ProtocolError(f"{me}: malformed setup message from the guest")
    dims = {str(k): int(v) for k, v in setup["dims"].items()}
    plan = DpPlan.from_json(setup["plan"]) if setup.get("plan") is not None else None
    dp_on = plan is not None
    if dp_on and rng is None:
        raise ConfigError(f"{me}: under DP the arbiter adds a noise share and needs an rng")
    track_loss = bool(setup.get("loss")) and not dp_on  # under DP the loss is never decrypted
    r += 1
    epochs_run = 0
    while True:
        ep = channel.recv(guest, EPOCH, round=r, timeout=T)
        if ep.get("stop"):
            break
        sizes = ep["sizes"]
        if not isinstance(sizes, list) or any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in sizes):
            raise ProtocolError(f"{me}: malformed batch sizes from the guest")
        for s, size in enumerate(sizes):
            step_round = r + 1 + s
            if not size:
                continue
            grads = _gather_all(channel, parties, GRAD, round=step_round, timeout=T)
            noise = _gather_all(channel, parties, NOISE, round=step_round, timeout=T) if dp_on else {}
            for p in parties:
                ct = keys.de(grads[p], sender=p)
                if plan is not None:
                    shares = [keys.de(noise[q].get(p), sender=q) for q in parties if q != p]
                    mine = _draw_share(plan, owner=p, me=me, topology=topology, dims=dims, norm=float(size),
                                       rng=rng, round=step_round, tap=noise_tap)  # type: ignore[arg-type]
                    ct = backend.add_plain(backend.sum([ct, *shares]), mine)
                z = keys.dec(ct)
                if z.shape != (dims[p],):
                    raise ProtocolError(f"{me}: {p!r} sent a gradient of {z.shape[0]} values, expected {dims[p]}")
                channel.send(p, PLAIN, z, round=step_round)
        end_round = r + 1 + len(sizes)
        epochs_run += 1
        if track_loss:
            blobs = channel.recv(guest, LOSS, round=end_round, timeout=T)
            channel.send(guest, LOSS_VALUE, {"sum": _decrypt_loss(keys, blobs, sender=guest)}, round=end_round)
        r = end_round + 1
    return FitResult(model=None, epochs_run=epochs_run, next_round=r + 1)


# ------------------------------------------------------------------------------ prediction


def predict_guest(
    channel: Channel,
    *,
    hosts: Sequence[str],
    model: LocalModel,
    x: np.ndarray,
    rows: np.ndarray,
    round: int,
    timeout: float = 600.0,
    transformed: np.ndarray | None = None,
) -> np.ndarray:
    """Joint prediction, the guest's side: probabilities for ``rows`` of the aligned data.

    The guest sends the row indices; each host answers with its partial scores ``X_h w_h`` for
    those rows (exact, as in FATE's hetero-LR prediction; never called in a DP job); the guest
    adds its own and the intercept and applies the sigmoid. Only the guest learns the scores.
    """
    rows = np.asarray(rows, dtype=np.int64)
    xg = transformed if transformed is not None else model.transform(x)
    channel.broadcast(hosts, PREDICT, {"rows": rows}, round=round)
    got = _gather_all(channel, hosts, SCORE, round=round, timeout=timeout)
    u = xg[rows] @ model.weights
    for h in hosts:
        u = u + _as_float_vector(got[h], length=rows.size, sender=h, what="partial scores")
    return sigmoid(u)


def serve_predictions(
    channel: Channel,
    *,
    guest: str,
    model: LocalModel,
    x: np.ndarray,
    round: int,
    timeout: float = 600.0,
    allowed: np.ndarray | None = None,
    transformed: np.ndarray | None = None,
) -> np.ndarray:
    """Joint prediction, a host's side: answer one request with its exact partial scores.

    ``allowed`` restricts which rows the guest may ask about (e.g. only evaluation rows, never
    training rows); a request outside it raises :class:`ProtocolError`. The scores leave the
    host unnoised, so a DP job never calls this (see the module docstring, "Who learns what").
    """
    msg = channel.recv(guest, PREDICT, round=round, timeout=timeout)
    rows = msg.get("rows") if isinstance(msg, dict) else None
    if not isinstance(rows, np.ndarray) or rows.ndim != 1 or rows.dtype.kind != "i":
        raise ProtocolError(f"malformed prediction request from {guest!r}")
    n = x.shape[0]
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise ProtocolError(f"prediction request from {guest!r} names rows outside 0..{n - 1}")
    if allowed is not None and not np.isin(rows, allowed).all():
        raise ProtocolError(f"prediction request from {guest!r} names rows it may not score (training rows?)")
    xh = transformed if transformed is not None else model.transform(x)
    scores = xh[rows] @ model.weights
    channel.send(guest, SCORE, scores, round=round)
    return scores
