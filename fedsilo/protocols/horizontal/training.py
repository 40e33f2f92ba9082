"""Local training inside one silo: a few epochs of SGD/Adam from the current global model.

Pure in the sense of the house rules: everything a run depends on comes in as arguments (data,
starting parameters, a :class:`LocalConfig`, an optional :class:`RecordDP` plan and a seed),
and the result is a small :class:`LocalResult`. Nothing is kept between rounds.

* **FedProx** (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020): the
  proximal term ``mu/2 ||w - w_global||^2`` is applied as a decoupled step
  ``w <- w - lr * mu * (w - w_global)`` after every optimizer step. For SGD this equals adding
  the term to the loss; for Adam it is the decoupled variant (as AdamW treats weight decay).
  Being data-independent it is also pure post-processing under DP-SGD, which is why it is not
  folded into the per-example gradients.
* **Record-level DP-SGD** (Abadi et al., CCS 2016) with Opacus' ``PrivacyEngine.make_private``:
  per-example gradients clipped to ``max_grad_norm``, Gaussian noise of
  ``noise_multiplier * max_grad_norm``, Poisson sampling at rate ``q = 1/m`` where ``m`` is
  the number of steps per epoch. :func:`record_dp_plan` picks ``z`` for the job's target ε
  over all ``rounds * local_epochs * m`` steps with :func:`fedsilo.privacy.accounting.noise_multiplier`,
  so each round costs exactly ``GaussianEvent(z, q, local_epochs * m)``.
* **The event is what runs.** ``GaussianEvent(z, q, T)`` is dp-accounting's
  ``SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(z)), T)``: T steps, each over a
  batch in which every record is included independently with probability q. Opacus'
  ``DPDataLoader`` runs ``int(1 / q)`` such steps per epoch, which floating point makes ``m - 1``
  for some ``m`` (``int(1 / (1 / 93)) == 92``), so the loader here is :class:`PoissonBatchSampler`:
  exactly ``steps_per_epoch`` Poisson batches per epoch at rate ``q``, drawn from the generator
  passed in. Opacus only clips and noises (``poisson_sampling=False``, it does not re-wrap it).
* **Your own loop** (``[model] trainer``, :mod:`.trainer`): :func:`train_local` hands the model,
  the same shuffled loader and a frozen :class:`~.trainer.TrainerSettings` to the user's function
  instead of running :func:`_run_epochs`, and checks what it returns; refused under local DP-SGD.
* **Distributed DP-SGD** (``[privacy] mode = "distributed"``, :class:`.dp.DistributedDPSGD`):
  no local training at all. Each round a silo draws one Poisson sample of its rows
  (:func:`poisson_sample`, rate ``q`` public, randomness secret) and computes the sum of the
  per-example gradients clipped to ``C`` (:func:`clipped_gradient_sum`, torch.func ``vmap`` of
  ``grad`` over ``functional_call``, flattened in :func:`~.models.get_flat_params` order); the
  noise is added as shares of the secure sum, not here.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset
from torch.utils.data._utils.collate import default_collate

from fedsilo.errors import ConfigError, DataError
from fedsilo.privacy.mechanisms import clip_rows_l2
# the torch-free planning half, re-exported: planning a job (and refusing it) imports no torch
from fedsilo.protocols.horizontal.local_plan import LocalConfig, RecordDP, record_dp_plan
from fedsilo.protocols.horizontal.models import get_flat_params, loss_fn, set_flat_params

# Opacus' per-example-gradient hooks make torch warn on every backward pass that the inputs need
# no gradient; harmless here, and a thread-local suppression is impossible (filters are global).
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")

__all__ = [
    "LocalConfig",
    "LocalResult",
    "PoissonBatchSampler",
    "RecordDP",
    "check_per_example_gradients",
    "clipped_gradient_sum",
    "poisson_loader",
    "poisson_sample",
    "record_dp_plan",
    "make_optimizer",
    "train_local",
    "warm_up_torch",
]


def warm_up_torch() -> None:
    """Import ``torch._dynamo`` now: ``torch.optim``'s first optimizer imports it (~2-3 s), so a
    silo calls this before its key ceremony and its first round is not the one that pays. Not at
    module import: a job refused by its pre-flight (a budget, a config key) then never pays it."""
    import torch._dynamo  # noqa: F401


@dataclass(frozen=True, slots=True)
class LocalResult:
    """Outcome of one round of local training; only ``update`` ever leaves the silo (encrypted)."""

    update: np.ndarray  #: local parameters minus the global parameters (float64)
    num_examples: int
    steps: int
    loss: float  #: mean training loss over the last local epoch (stays local)


class PoissonBatchSampler(Sampler[list[int]]):
    """Exactly ``steps`` batches, each row in each batch independently with probability ``q``.

    The sampling the Poisson-subsampled Gaussian's analysis assumes (Mironov, Talwar & Zhang,
    "Rényi Differential Privacy of the Sampled Gaussian Mechanism", 2019, section 3), so
    ``GaussianEvent(z, q, steps)`` describes one pass exactly. Unlike Opacus'
    ``UniformWithReplacementSampler`` default, the number of steps is given, not ``int(1 / q)``.
    Batches may be empty. Randomness comes only from ``generator``.
    """

    def __init__(self, *, num_samples: int, sample_rate: float, steps: int, generator: torch.Generator) -> None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise DataError(f"Poisson sampling needs at least one row, got {num_samples!r}")
        if not (isinstance(sample_rate, float) and 0.0 < sample_rate <= 1.0):
            raise ConfigError(f"Poisson sample rate must be a float in (0, 1], got {sample_rate!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"Poisson sampling needs an integer number of steps >= 1, got {steps!r}")
        self.num_samples = num_samples
        self.sample_rate = sample_rate
        self.steps = steps
        self.generator = generator

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Any:
        for _ in range(self.steps):
            # float64: float32 draws lie on a 2**-24 grid, which rounds the inclusion
            # probability up (up to 7e-4 relative for q = 1/12345), an ε under-count
            mask = torch.rand(self.num_samples, generator=self.generator, dtype=torch.float64) < self.sample_rate
            yield mask.nonzero(as_tuple=False).reshape(-1).tolist()


def poisson_loader(dataset: TensorDataset, *, sample_rate: float, steps: int, generator: torch.Generator) -> DataLoader:
    """A DataLoader of :class:`PoissonBatchSampler` batches; an empty batch is a tuple of
    zero-row tensors of the dataset's shapes and dtypes (Opacus handles those)."""
    empty = [t[:0] for t in dataset.tensors]

    def collate(batch: list[Any]) -> Any:
        return [t.clone() for t in empty] if not batch else default_collate(batch)

    sampler = PoissonBatchSampler(num_samples=len(dataset), sample_rate=sample_rate, steps=steps, generator=generator)
    # A private generator: each iteration of a DataLoader draws its worker base seed (unused
    # with num_workers=0) from ``generator``, else from torch's process-wide RNG. On the
    # threads engine that draw could fall between another silo's ``manual_seed`` and its
    # weight init in models.build_model, giving that silo different initial weights (seen in
    # 8 of 200 record-DP runs; tests/protocols/horizontal/test_global_rng.py). Not ``generator``
    # itself: the extra draw would shift the Poisson samples the seed reproduces.
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, generator=torch.Generator())


def _targets(y: np.ndarray, n_classes: int) -> torch.Tensor:
    if n_classes == 2:
        return torch.as_tensor(np.asarray(y), dtype=torch.float32).reshape(-1, 1)
    return torch.as_tensor(np.asarray(y), dtype=torch.int64).reshape(-1)


def make_optimizer(name: str, params: Any, lr: float) -> torch.optim.Optimizer:
    """The local optimizer ``training.optimizer`` names (``"sgd"`` or ``"adam"``) at ``lr``."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    return torch.optim.Adam(params, lr=lr)


def train_local(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    global_params: np.ndarray,
    config: LocalConfig,
    n_classes: int,
    seed: int,
    record_dp: RecordDP | None = None,
) -> LocalResult:
    """Train ``model`` (loaded with ``global_params``) on ``(x, y)``; return the update.

    ``seed`` drives batch order / Poisson sampling and, under DP-SGD, the noise (a fresh
    ``torch.Generator`` per stream). In production pass a seed from OS entropy (the silo passes
    256 bits). Limitation: a ``torch.Generator`` is an MT19937 seeded with at most 64 bits, so
    each stream is seeded with 63 bits derived from ``seed`` by a SeedSequence, and MT19937 is
    not a cryptographic generator. Opacus' ``secure_mode`` would replace it with torchcsprng,
    which has no build for this torch; see ``docs/horizontal.md``, "Randomness".

    Raises:
        DataError: ``x`` and ``y`` disagree in length, or the silo holds no rows.
    """
    torch.set_num_threads(1)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise DataError(f"training data must be a non-empty (n, d) array with n labels, got {x.shape} / {np.shape(y)}")
    set_flat_params(model, global_params)
    anchors = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    dataset = TensorDataset(torch.from_numpy(x), _targets(y, n_classes))
    seeds = np.random.SeedSequence(int(seed)).generate_state(2, dtype=np.uint64)
    g_data = torch.Generator().manual_seed(int(seeds[0] >> np.uint64(1)))
    g_noise = torch.Generator().manual_seed(int(seeds[1] >> np.uint64(1)))
    criterion = loss_fn(n_classes)
    module: nn.Module = model
    if config.trainer is not None:
        return _user_trainer(model, dataset, g_data, global_params=global_params, config=config,
                             n_classes=n_classes, record_dp=record_dp)
    optimizer = make_optimizer(config.optimizer, [p for p in model.parameters() if p.requires_grad], config.lr)
    if record_dp is None:
        loader: DataLoader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, generator=g_data)
    else:
        from opacus import PrivacyEngine

        # exactly the charged steps per epoch (not DPDataLoader's int(1/q)): see the module docstring
        loader = poisson_loader(
            dataset, sample_rate=record_dp.sample_rate, steps=record_dp.steps_per_epoch, generator=g_data
        )
        with warnings.catch_warnings():
            # "Secure RNG turned off": randomness comes from the seeded generators passed in
            # (secure_mode needs torchcsprng, not available for this torch; see the docstring).
            warnings.simplefilter("ignore")
            engine = PrivacyEngine(accountant="rdp")
            module, optimizer, loader = engine.make_private(
                module=model,
                optimizer=optimizer,
                data_loader=loader,
                noise_multiplier=record_dp.noise_multiplier,
                max_grad_norm=record_dp.max_grad_norm,
                poisson_sampling=False,  # the loader above already Poisson-samples, with our generator
                noise_generator=g_noise,
            )
    module.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    steps, last_epoch_loss = _run_epochs(module, optimizer, loader, criterion, config, trainable, anchors)
    if record_dp is not None:
        # Detach Opacus' hooks so the model object is clean for the caller.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if hasattr(module, "_close"):
                module._close()
    update = get_flat_params(model) - np.asarray(global_params, dtype=np.float64)
    return LocalResult(update=update, num_examples=int(len(x)), steps=steps, loss=last_epoch_loss)


def _user_trainer(
    model: nn.Module, dataset: TensorDataset, generator: torch.Generator, *, global_params: np.ndarray,
    config: LocalConfig, n_classes: int, record_dp: RecordDP | None,
) -> LocalResult:
    """The ``[model] trainer`` hook: the user's loop on the loader the built-in one would use
    (:mod:`.trainer`); refused under local DP-SGD (per-example clipping cannot be verified)."""
    from fedsilo.protocols.horizontal.trainer import TrainerSettings, run_trainer

    assert config.trainer is not None
    if record_dp is not None:
        raise ConfigError(f"key 'model.trainer': {config.trainer!r} cannot run under record-level local DP-SGD "
                          "(see fedsilo.protocols.horizontal.trainer); use privacy.level = \"silo\"")
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, generator=generator)
    settings = TrainerSettings(
        epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, optimizer=config.optimizer,  # type: ignore[arg-type]
        l2=config.l2, proximal_mu=config.proximal_mu, generator=generator, device=torch.device("cpu"),
        loss=loss_fn(n_classes), n_classes=n_classes, rows=len(dataset),
    )
    model.train()
    update, n = run_trainer(config.trainer, model, loader, settings, global_params=global_params)
    # steps and loss are the user loop's own: not reported
    return LocalResult(update=update, num_examples=n, steps=0, loss=float("nan"))


def _run_epochs(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    criterion: nn.Module,
    config: LocalConfig,
    trainable: list[torch.nn.Parameter],
    anchors: list[torch.Tensor],
) -> tuple[int, float]:
    """The training loop; returns (optimizer steps, mean loss of the last epoch)."""
    steps = 0
    last_epoch_loss = float("nan")
    mu = float(config.proximal_mu)
    for _ in range(config.epochs):
        total, count = 0.0, 0
        for xb, yb in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(module(xb), yb)
            loss.backward()
            optimizer.step()
            steps += 1
            if mu > 0:  # FedProx, decoupled (see the module docstring)
                with torch.no_grad():
                    for p, p0 in zip(trainable, anchors):
                        p.sub_(config.lr * mu * (p - p0))
            if len(xb):
                total += float(loss.detach()) * len(xb)
                count += len(xb)
        last_epoch_loss = total / count if count else float("nan")
    return steps, last_epoch_loss




# ---------------------------------------------------------------------------------------------
# Distributed DP-SGD: one Poisson sample and its clipped per-example gradient sum per round
# ---------------------------------------------------------------------------------------------
#: Rows per vmap call of :func:`clipped_gradient_sum`: bounds the per-example gradient matrix
#: (rows × parameters float32) whatever the batch.
GRADIENT_CHUNK = 256


def poisson_sample(*, rows: int, sample_rate: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of one Poisson sample: each of ``rows`` rows independently with probability
    ``q``, from ``rng`` (secret randomness: amplification by sampling needs the sample hidden).

    float64 uniforms, as :class:`PoissonBatchSampler` (a coarser grid would round ``q`` up).
    """
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise DataError(f"Poisson sampling needs at least one row, got {rows!r}")
    if not (isinstance(sample_rate, float) and 0.0 < sample_rate <= 1.0):
        raise ConfigError(f"Poisson sample rate must be a float in (0, 1], got {sample_rate!r}")
    return np.flatnonzero(rng.random(rows) < sample_rate)


def _per_example_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, criterion: nn.Module) -> torch.Tensor:
    """``(n, P)`` per-example gradients of ``criterion`` at the model's parameters, columns in
    :func:`~.models.get_flat_params` order (``named_parameters`` order, trainable only)."""
    from torch.func import functional_call, grad, vmap

    names = [k for k, p in model.named_parameters() if p.requires_grad]
    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    buffers = {k: b.detach() for k, b in model.named_buffers()}

    def loss_one(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        # a batch of one: the mean loss is this example's loss
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return criterion(out, yi.unsqueeze(0))

    grads = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, y)
    return torch.cat([grads[k].reshape(x.shape[0], -1) for k in names], dim=1)


def clipped_gradient_sum(
    model: nn.Module, x: np.ndarray, y: np.ndarray, *, global_params: np.ndarray, clip: float, n_classes: int
) -> np.ndarray:
    """``Σ_i clip_C(∇ℓ(w; x_i, y_i))`` over the rows given, at ``w = global_params``: a float64
    vector in :func:`~.models.get_flat_params` order (zeros for no rows).

    Per-example gradients by torch.func (``vmap(grad(...))`` over ``functional_call``; the
    model is evaluated on one row at a time, so layers that mix rows, such as batch norm, are
    refused), clipped with :func:`~fedsilo.privacy.mechanisms.clip_rows_l2` (each row's norm
    ``<= C`` exactly as numpy computes it; Abadi et al., CCS 2016, Algorithm 1).

    Raises:
        DataError: ``x`` and ``y`` disagree in length or ``x`` is not 2-D.
        ConfigError: the model cannot give per-example gradients this way.
    """
    torch.set_num_threads(1)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or len(x) != len(y):
        raise DataError(f"rows must be an (n, d) array with n labels, got {x.shape} / {np.shape(y)}")
    set_flat_params(model, global_params)
    size = int(np.asarray(global_params).shape[0])
    total = np.zeros(size)
    if len(x) == 0:
        return total
    criterion = loss_fn(n_classes)
    targets = _targets(y, n_classes)
    for start in range(0, len(x), GRADIENT_CHUNK):
        xb = torch.from_numpy(x[start:start + GRADIENT_CHUNK])
        try:
            per_example = _per_example_gradients(model, xb, targets[start:start + GRADIENT_CHUNK], criterion)
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(
                f"the model ({type(model).__name__}) cannot compute per-example gradients with torch.func, which "
                f'privacy.mode = "distributed" needs ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); '
                'use privacy.mode = "local"'
            ) from None
        total += clip_rows_l2(per_example.detach().to(torch.float64).numpy(), max_norm=clip).sum(axis=0)
    return total


def check_per_example_gradients(model: nn.Module, *, n_features: int, n_classes: int, clip: float) -> None:
    """Refuse, before any release, a model :func:`clipped_gradient_sum` cannot run on (two
    all-zero rows of label 0)."""
    clipped_gradient_sum(model, np.zeros((2, n_features)), np.zeros(2, dtype=np.int64),
                         global_params=get_flat_params(model), clip=clip, n_classes=n_classes)
