"""What local training will be, decided before any silo trains, without torch.

The torch-free half of :mod:`.training` (which re-exports every name here): a round's local
settings (:class:`LocalConfig`), a silo's record-level DP-SGD plan (:class:`RecordDP`,
:func:`record_dp_plan`: the sampling rate and noise multiplier, from the accountant) and the
built-in model kinds (:data:`BUILTIN_MODELS`, re-exported by :mod:`.models`). Planning a job and
its budget pre-flight (:func:`fedsilo.silos.runner.check_job_budgets`) need only these, so a job
refused before round 1 never pays torch's import (about 2 s); the silo imports torch when it
trains.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedsilo.errors import ConfigError, DataError
from fedsilo.privacy.accounting import noise_multiplier as _noise_multiplier
from fedsilo.privacy.events import GaussianEvent
from fedsilo.protocols.spec import TrainingSection

__all__ = ["BUILTIN_MODELS", "MAX_MODEL_PARAMETERS", "LocalConfig", "RecordDP", "builtin_layer_shapes",
           "builtin_parameter_count", "n_outputs_for", "record_dp_plan"]

#: The model kinds fedsilo builds itself (:func:`~.models.build_model`); any other kind is an
#: import path to a ``torch.nn.Module`` class.
BUILTIN_MODELS: tuple[str, ...] = ("logistic", "mlp")

#: Most parameters a model may have (2^27, 512 MiB of float32 per copy): a job whose model is
#: larger is refused at planning, with the key, before any ledger or party exists (a typo in
#: ``hidden`` would otherwise fail inside torch's allocator, in every silo).
MAX_MODEL_PARAMETERS: int = 2**27


def n_outputs_for(n_classes: int) -> int:
    """One logit for a binary task, one per class otherwise."""
    if n_classes < 2:
        raise ConfigError(f"a classification task needs at least 2 classes, got {n_classes}")
    return 1 if n_classes == 2 else n_classes


def builtin_layer_shapes(kind: str, hidden: Sequence[int], *, n_features: int, n_outputs: int) -> list[tuple[int, int]]:
    """The ``(in, out)`` widths of a built-in model's linear layers, in order: ``logistic`` is
    one layer ``n_features → n_outputs`` (``hidden`` unused), ``mlp`` is ``n_features → hidden… →
    n_outputs``.

    The one statement of the built-in architectures: :class:`~.models.LogisticRegression` and
    :class:`~.models.MLP` build their ``nn.Linear`` layers from it and
    :func:`builtin_parameter_count` counts from it, so the count planning uses cannot drift from
    the model a silo trains (and it needs no torch).
    """
    if kind not in BUILTIN_MODELS:
        raise ConfigError(f"model kind {kind!r} is not a built-in model ({', '.join(BUILTIN_MODELS)})")
    widths = [int(n_features), *([int(h) for h in hidden] if kind == "mlp" else []), int(n_outputs)]
    return list(zip(widths, widths[1:]))


def builtin_parameter_count(kind: str, hidden: Sequence[int], *, n_features: int, n_classes: int) -> int:
    """Trainable parameters of a built-in model (:data:`BUILTIN_MODELS`), without building it:
    a weight and a bias per layer of :func:`builtin_layer_shapes` (``nn.Linear``)."""
    shapes = builtin_layer_shapes(kind, hidden, n_features=n_features, n_outputs=n_outputs_for(n_classes))
    return sum(a * b + b for a, b in shapes)


@dataclass(frozen=True, slots=True)
class LocalConfig:
    """What one silo does with the global model in one round: the ``[training]`` section's
    local keys (:meth:`from_sections`, where their defaults and ranges live) and the strategy's
    FedProx ``mu``."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: str
    proximal_mu: float = 0.0  #: FedProx mu (0 = plain FedAvg local training)
    #: ``[model] trainer``: a user training loop run instead of the built-in one (:mod:`.trainer`)
    trainer: str | None = None
    l2: float = 0.0  #: ``training.l2``: passed to a user trainer only (the built-in loop has no L2 term)

    def __post_init__(self) -> None:
        if not (isinstance(self.proximal_mu, (int, float)) and self.proximal_mu >= 0):
            raise ConfigError(f"FedProx mu must be a number >= 0, got {self.proximal_mu!r}")
        if self.l2 and self.trainer is None:
            raise ConfigError("training.l2 is read only by a user training loop ([model] trainer); remove it")

    @classmethod
    def from_sections(cls, training: TrainingSection, *, proximal_mu: float = 0.0, epochs: int | None = None,
                      trainer: str | None = None) -> "LocalConfig":
        """Local training of the validated ``[training]`` section (``epochs``: override of
        ``local_epochs``, e.g. a centralized baseline's ``rounds × local_epochs``; ``trainer``:
        the ``[model] trainer`` import path, which alone reads ``training.l2``)."""
        if not isinstance(training, TrainingSection):
            raise TypeError(f"from_sections takes a TrainingSection (fedsilo.protocols.spec), got {type(training).__name__}")
        return cls(epochs=training.local_epochs if epochs is None else int(epochs), batch_size=training.batch_size,
                   lr=float(training.lr), optimizer=training.optimizer, proximal_mu=float(proximal_mu),
                   trainer=trainer, l2=float(training.l2) if trainer is not None else 0.0)


@dataclass(frozen=True, slots=True)
class RecordDP:
    """Record-level DP-SGD parameters for one silo (see :func:`record_dp_plan`)."""

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float  #: Poisson rate q = 1 / steps_per_epoch
    steps_per_epoch: int  #: Poisson batches per epoch, exactly (:class:`~.training.PoissonBatchSampler`)

    def event(self, *, epochs: int) -> GaussianEvent:
        """The DP event of one round of local training (``epochs`` passes)."""
        return GaussianEvent(self.noise_multiplier, self.sample_rate, epochs * self.steps_per_epoch)


def record_dp_plan(
    *,
    n_examples: int,
    batch_size: int,
    local_epochs: int,
    rounds: int,
    target_epsilon: float,
    delta: float,
    max_grad_norm: float,
    accountant: str = "rdp",
) -> RecordDP:
    """Sampling rate and noise multiplier so ``rounds`` rounds of DP-SGD meet ``target_epsilon``.

    ``m = max(1, round(n / batch_size))`` steps per epoch with Poisson rate ``q = 1/m`` (so the
    expected batch is about ``batch_size``); ``z`` from the accountant for
    ``T = rounds * local_epochs * m`` steps (Abadi et al. 2016; Mironov, Talwar & Zhang 2019).
    Computed locally: a silo's row count never leaves it.
    """
    if n_examples < 1:
        raise DataError("a silo with no rows cannot train")
    if not (isinstance(max_grad_norm, (int, float)) and max_grad_norm > 0):
        raise ConfigError(f"privacy.clip must be > 0, got {max_grad_norm!r}")
    m = max(1, int(round(n_examples / batch_size)))
    q = 1.0 / m
    z = _noise_multiplier(
        target_epsilon=target_epsilon,
        delta=delta,
        sample_rate=q,
        steps=rounds * local_epochs * m,
        accountant=accountant,
    )
    return RecordDP(noise_multiplier=z, max_grad_norm=float(max_grad_norm), sample_rate=q, steps_per_epoch=m)
