"""What the parties of vertical LR agree on before training, and the plan derived from it.

:class:`TrainingConfig` (hyper-parameters), the job's validated ``[privacy]`` section
(:class:`~fedsilo.protocols.spec.PrivacySection`, read as record-level DP) and
:class:`Topology` (who plays which role); their digests, which the guest compares with every
host's; the DP plan (:func:`dp_plan`, calibrated in :mod:`.taylor`), the refusal of exact
gradients without DP, and the ε a run has spent.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedsilo.crypto.base import CryptoBackend
from fedsilo.errors import ConfigError
from fedsilo.privacy.accounting import epsilon
from fedsilo.privacy.ledger import PrivacyLedger
from fedsilo.protocols.spec import PrivacySection, TrainingSection
from fedsilo.protocols.vertical.taylor import DpPlan, calibrate, learning_rate

__all__ = [
    "DP_KEYS",
    "Topology",
    "TrainingConfig",
    "check_dp_ledger",
    "dp_digest",
    "dp_plan",
    "refuse_exact_gradients",
    "spent_epsilon",
]


@dataclass(frozen=True, slots=True)
class TrainingConfig:
    """Hyper-parameters every party must agree on (the guest checks a digest of them).

    The first six come from the job's validated ``[training]`` section and its round timeout
    (:meth:`from_sections`, the one place their defaults and ranges live), like ``fill_slots``;
    ``lr_schedule``, ``mask_scale``, ``track_loss`` and ``batchcrypt`` are the protocol's own constants.

    Args:
        epochs: passes over the training rows (``training.rounds``).
        batch_size: rows per step: each epoch is a fresh shuffled partition of the training
            rows into ``ceil(rows / batch_size)`` batches of near-equal size.
        lr: base learning rate; ``lr_schedule`` ``"sqrt"`` uses ``lr / sqrt(epoch)``.
        l2: L2 penalty ``λ/2 ‖w‖²`` on each party's weights (not the intercept).
        tol: stop when the training loss improves by less than this (no DP only;
            ``training.early_stopping_tol``).
        timeout: seconds to wait for any one message (``federation.round_timeout``).
        lr_schedule: ``"sqrt"`` or ``"constant"``.
        mask_scale: ``M``, masks are uniform in ``[−M, M]``; larger hides better. Capped at
            half the backend's ``value_bound`` (CKKS: 4096 by default, so ``M`` = 2048).
        track_loss: compute the encrypted Taylor loss each epoch (no DP only).
        fill_slots: each step's batch is the rows that fill one ciphertext of the backend's
            packed layout (``backend.matmul_fill_rows`` of the longest gradient: 512 rows at
            up to 8 coordinates on CKKS) instead of ``batch_size``
            (``training.fill_slots``; :meth:`batch_rows`).
        batchcrypt: on (unpacked) Paillier, each masked gradient goes to its key holder
            BatchCrypt-packed, many coordinates per ciphertext (:class:`.keys.GradSlots`);
            off, one ciphertext per coordinate (the path before; the tests compare the two).
    """

    epochs: int
    batch_size: int
    lr: float
    l2: float
    tol: float | None
    timeout: float
    lr_schedule: str = "sqrt"
    mask_scale: float = 1e4
    track_loss: bool = True
    fill_slots: bool = False
    batchcrypt: bool = True

    def __post_init__(self) -> None:
        learning_rate(base=self.lr, epoch=1, schedule=self.lr_schedule)
        if not (isinstance(self.mask_scale, (int, float)) and math.isfinite(self.mask_scale) and self.mask_scale > 0):
            raise ConfigError(f"mask_scale must be a number > 0, got {self.mask_scale!r}")

    @classmethod
    def from_sections(cls, training: TrainingSection, *, timeout: float) -> "TrainingConfig":
        """The agreed hyper-parameters of a job from its validated ``[training]`` section."""
        if not isinstance(training, TrainingSection):
            raise TypeError(f"from_sections takes a TrainingSection (fedsilo.protocols.spec), got {type(training).__name__}")
        if training.fill_slots and "batch_size" in training.model_fields_set:
            raise ConfigError(
                "key 'training.batch_size': training.fill_slots = true picks the batch (the rows that fill one "
                "ciphertext); set one of the two"
            )
        return cls(epochs=training.rounds, batch_size=training.batch_size, lr=float(training.lr), l2=float(training.l2),
                   tol=training.early_stopping_tol, timeout=float(timeout), fill_slots=training.fill_slots)

    def batch_rows(self, backend: CryptoBackend, dims: Mapping[str, int]) -> int:
        """The rows per step: ``batch_size``, or with ``fill_slots`` the rows whose residuals,
        in the backend's layout for the longest gradient in ``dims``, fill one ciphertext
        (:meth:`~fedsilo.crypto.base.CryptoBackend.matmul_fill_rows`). Every party derives it
        from public values (the backend's parameters and SETUP's gradient lengths).

        Raises:
            ConfigError: ``fill_slots`` on a backend without slots (Paillier, ``plain``).
        """
        if not self.fill_slots:
            return self.batch_size
        rows = backend.matmul_fill_rows(columns=max(dims.values()))
        if rows is None:
            raise ConfigError(
                f"key 'training.fill_slots': backend {backend.name!r} has no slots to fill (one value per "
                "ciphertext); use crypto.backend = 'ckks' or set training.batch_size instead"
            )
        return rows

    def digest(self) -> str:
        """What the parties compare: a hash of every setting but the (local) ``timeout``."""
        return _digest({k: getattr(self, k) for k in self.__slots__ if k != "timeout"})


#: The ``[privacy]`` keys vertical LR reads (record level always; ``level`` is not one of them).
DP_KEYS = ("epsilon", "delta", "clip", "logit_clip", "accountant", "colluders")


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
        """The guest, then the hosts: every party with data (and a gradient)."""
        return (self.guest, *self.hosts)

    def grad_key_holder(self, party: str) -> str:
        """Who decrypts ``party``'s masked gradient."""
        if self.arbiter is not None:
            return self.arbiter
        return self.hosts[0] if party == self.guest else self.guest


# ------------------------------------------------------------------------------ digests


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def dp_digest(dp: PrivacySection | None) -> str:
    """What the parties compare of their DP settings (``None``: no DP): the keys vertical LR
    reads (:data:`DP_KEYS`)."""
    return _digest(None if dp is None else {k: getattr(dp, k) for k in DP_KEYS})


# ------------------------------------------------------------------------------ planning


def check_dp_ledger(dp: PrivacySection | None, ledger: PrivacyLedger | None, dataset: str | None, *, who: str) -> None:
    """Under DP, refuse to start without a ledger and the dataset to charge.

    Raises:
        ConfigError: ``dp`` is set and ``ledger`` or ``dataset`` is missing.
    """
    if dp is not None and (ledger is None or dataset is None):
        raise ConfigError(
            f"{who}: differential privacy needs a privacy ledger and the dataset name to charge "
            f"(got ledger={'set' if ledger is not None else None}, dataset={dataset!r}); "
            "nothing is released without a ledger entry"
        )


def dp_plan(
    dp: PrivacySection | None, *, rows: int, config: TrainingConfig, parties: int, arbiter: bool,
    batch_size: int | None = None,
) -> DpPlan | None:
    """The DP plan of a run over ``rows`` training rows in batches of ``batch_size`` (default
    ``config.batch_size``; :meth:`TrainingConfig.batch_rows` in a run) (:func:`.taylor.calibrate`),
    or None without DP. The batch size sets only ``steps_per_epoch``: the charged events do not
    depend on it (disjoint batches, parallel composition)."""
    if dp is None:
        return None
    return calibrate(
        epsilon=dp.epsilon,
        delta=dp.delta,
        rows=rows,
        batch_size=config.batch_size if batch_size is None else batch_size,
        epochs=config.epochs,
        parties=parties,
        clip=dp.clip,
        logit_clip=dp.logit_clip,
        accountant=dp.accountant,
        colluders=dp.colluders,
        arbiter=arbiter,
    )


def refuse_exact_gradients(
    dims: Mapping[str, int], *, rows: int, batch_size: int, who: str, setting: str = "training.batch_size"
) -> None:
    """Without DP each party receives its exact gradient ``X_pᵀd / n``: with as many gradient
    coordinates (features, plus the guest's intercept) as rows in a batch, ``X_p`` is
    invertible on the batch and ``d`` (hence the labels, or another party's partial logits)
    follows exactly. The batch that counts is the smallest one an epoch really has
    (:func:`.taylor.epoch_partition` splits ``rows`` into ``ceil(rows / batch_size)`` near-equal
    batches, which may hold fewer rows than ``batch_size``). Refused even under ``insecure``;
    ``setting`` names where the batch size came from."""
    smallest = rows // max(1, math.ceil(rows / batch_size)) if rows else 0
    wide = {p: d for p, d in dims.items() if d >= smallest}
    if wide:
        listed = ", ".join(f"{p} ({d})" for p, d in sorted(wide.items()))
        raise ConfigError(
            f"{who}: vertical training without DP reveals each party's exact gradient, and with at least as "
            f"many gradient coordinates (features, plus the guest's intercept) as rows in a batch (the smallest "
            f"batch has {smallest} of {rows} training rows, {setting} = {batch_size}) that gradient gives "
            f"away the residuals (the labels): {listed}; give the job more training rows or a larger batch_size, "
            "or enable [privacy]"
        )


def spent_epsilon(plan: DpPlan | None, epochs: int) -> float | None:
    """The ε a data party has spent after ``epochs`` epochs of ``plan`` (None without DP or epochs)."""
    if plan is None or epochs == 0:
        return None
    return epsilon(plan.job_event(epochs), delta=plan.delta, accountant=plan.accountant)
