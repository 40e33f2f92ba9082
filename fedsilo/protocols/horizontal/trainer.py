"""Bring your own training loop: ``[model] trainer = "package.module:function"``.

The contract (docs/horizontal.md, "Bring your own training loop")::

    def my_trainer(model: torch.nn.Module, loader: torch.utils.data.DataLoader,
                   settings: TrainerSettings) -> tuple[torch.nn.Module | numpy.ndarray, int]:
        ...
        return model, settings.rows          # or (update, n_examples)

* ``model`` arrives holding the current global parameters (built by fedsilo, the job's
  ``[model] kind``); ``loader`` batches this silo's training rows ``(x float32, y)``
  (``y``: float32 ``(n, 1)`` for a binary task, int64 ``(n,)`` otherwise) at
  ``settings.batch_size``, shuffled by ``settings.generator``; ``loader.dataset`` is the
  ``TensorDataset`` itself. ``settings`` is a frozen :class:`TrainerSettings`.
* It returns ``(trained, n_examples)``: ``trained`` is the trained model (any module with the
  same trainable parameter shapes; the update is its flat parameters minus the global ones) or
  the update itself, a 1-D array / tensor in :func:`~.models.get_flat_params` order;
  ``n_examples`` is the number of rows it trained on, ``1 <= n_examples <= settings.rows``.

The shape follows Flower's ``NumPyClient.fit(parameters, config) -> (parameters, num_examples,
metrics)`` (parameters in, trained parameters and the example count out, the run's settings
from the server) with a torch model and loader instead of NumPy lists, as Opacus'
``make_private(module, optimizer, data_loader)`` takes and returns a user's own torch objects.

DP modes (:func:`check_trainer`, when the job is planned):

* **no DP / silo-level DP-FedAvg**: any loop. Silo-level DP-FedAvg clips the *returned update*
  to ``privacy.clip`` and noises the sum (:class:`.dp.DPFedAvg`), so its guarantee holds
  whatever the loop does with its own rows, and the ε charged is the same as with the built-in
  loop (it depends on the rounds, the clip and the noise only).
* **record-level, ``mode = "local"``** (local DP-SGD): refused. Its ε is Opacus' accounting of
  per-example clipping and noise at every step on Poisson batches of the silo's rows; an
  arbitrary loop can read ``loader.dataset`` directly, step another optimizer, add a
  data-dependent term or run more steps than charged, and none of that is visible afterwards
  from the update. fedsilo cannot check that per-example clipping happened, so it does not run
  the loop rather than charge an ε it cannot stand behind.
* **record-level, ``mode = "distributed"``**: refused: there is no local loop (each round is
  one joint DP-SGD step whose clipped per-example gradients fedsilo computes itself).
"""
from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from fedsilo.errors import ConfigError
from fedsilo.protocols.spec import ModelSection, PrivacySection

if TYPE_CHECKING:  # torch only where a loop runs: planning calls check_trainer, and imports no torch
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

__all__ = ["KEY", "Trainer", "TrainerSettings", "check_trainer", "resolve_trainer", "run_trainer"]

#: The config key, named by every error of this module.
KEY = "model.trainer"

#: A user training loop (see the module docstring for the contract).
Trainer = Callable[["nn.Module", "DataLoader", "TrainerSettings"], Any]


@dataclass(frozen=True, slots=True)
class TrainerSettings:
    """What a user training loop gets besides the model and the loader (frozen, typed).

    The ``[training]`` section's local keys as this round runs them, and what the built-in loop
    would use: :meth:`make_optimizer` builds the configured optimizer, ``loss`` is the task's
    loss (BCE-with-logits or cross-entropy, :func:`~.models.loss_fn`).
    """

    epochs: int  #: ``training.local_epochs``
    batch_size: int  #: ``training.batch_size`` (the loader's)
    lr: float  #: ``training.lr``
    optimizer: Literal["sgd", "adam"]  #: ``training.optimizer``
    l2: float  #: ``training.l2`` (0 unless set; the built-in loop refuses it, a user loop may apply it)
    proximal_mu: float  #: the strategy's FedProx mu this round (0 unless ``strategy = "fedprox"``)
    generator: torch.Generator  #: batch-order randomness (the loader's; public: from the job seed)
    device: torch.device  #: where fedsilo trains (CPU)
    loss: nn.Module  #: the task's mean loss on the model's logits
    n_classes: int  #: 2 for a binary task
    rows: int  #: this silo's training rows (``len(loader.dataset)``): the most ``n_examples`` may be

    def make_optimizer(self, params: Any) -> torch.optim.Optimizer:
        """The optimizer the built-in loop uses (``optimizer`` at ``lr``) over ``params``."""
        from fedsilo.protocols.horizontal.training import make_optimizer

        return make_optimizer(self.optimizer, params, self.lr)


def _split(path: str) -> tuple[str, str]:
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"key '{KEY}': {path!r} is not an import path of the form 'package.module:function'")
    return module_name, attr


@functools.lru_cache(maxsize=32)
def resolve_trainer(path: str) -> Trainer:
    """The function named by ``path`` (``"package.module:function"``, dotted attributes allowed
    after the colon), like ``[model] kind = "package.module:Class"`` (:mod:`.models`).

    Raises:
        ConfigError: a malformed path, a module that does not import, a missing attribute, or
            an attribute that is not callable (each naming ``model.trainer`` and the path).
    """
    module_name, attr = _split(path)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, and whatever the module's own code raises (SyntaxError, ...)
        first = (str(exc).splitlines() or [""])[0][:200]
        raise ConfigError(
            f"key '{KEY}': {path!r}: module {module_name!r} cannot be imported ({type(exc).__name__}: {first})"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"key '{KEY}': {path!r}: module {module_name!r} has no attribute {attr!r}") from None
        obj = getattr(obj, part)
    if not callable(obj) or isinstance(obj, type):
        raise ConfigError(f"key '{KEY}': {path!r} is a {type(obj).__name__}, not a function "
                          "(model, loader, settings) -> (trained model or update, n_examples)")
    return obj


def check_trainer(model: ModelSection, privacy: PrivacySection | None) -> None:
    """Refuse, when the job is planned, a trainer that does not load or a DP mode that cannot
    run an arbitrary loop (record level: see the module docstring). Nothing without a trainer."""
    if model.trainer is None:
        return
    if privacy is None or privacy.level != "record":
        resolve_trainer(model.trainer)  # imported only once the job can run it (import-time code runs)
        return
    if privacy.mode == "distributed":
        raise ConfigError(
            f"key '{KEY}': {model.trainer!r} cannot run under privacy.mode = \"distributed\": there is no local "
            "training loop (each round is one joint DP-SGD step whose clipped per-example gradients fedsilo computes); "
            f"remove {KEY} or use privacy.level = \"silo\""
        )
    raise ConfigError(
        f"key '{KEY}': {model.trainer!r} cannot run under record-level local DP-SGD: fedsilo cannot verify per-example "
        "clipping and noise at every step inside an arbitrary loop, so it cannot stand behind the epsilon it would "
        f"charge; use privacy.level = \"silo\" (the returned update is clipped and noised by fedsilo) or remove {KEY}"
    )


def run_trainer(
    path: str, model: nn.Module, loader: DataLoader, settings: TrainerSettings, *, global_params: np.ndarray,
) -> tuple[np.ndarray, int]:
    """Call the trainer ``path`` and check what it returns: ``(update, n_examples)``, the update
    a finite float64 vector of the global parameters' length.

    Raises:
        ConfigError: the function raised, returned something else than ``(model or update,
            int)``, an update of the wrong shape or with NaN/inf, or ``n_examples`` outside
            ``1..settings.rows`` (each naming ``model.trainer`` and the function).
    """
    import torch
    from torch import nn

    from fedsilo.protocols.horizontal.models import get_flat_params

    fn = resolve_trainer(path)
    where = f"key '{KEY}': {path!r}"
    try:
        out = fn(model, loader, settings)
    except ConfigError:
        raise
    except (Exception, SystemExit) as exc:  # the user's code: one line naming it, not a traceback (nor an exit 0)
        first = (str(exc).splitlines() or [""])[0][:200]
        raise ConfigError(f"{where} raised {type(exc).__name__}: {first}") from exc
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ConfigError(f"{where} returned {_describe(out)}; it must return (trained model or update, n_examples)")
    trained, n = out
    size = int(np.asarray(global_params).shape[0])
    if isinstance(trained, nn.Module):
        expected = sum(p.numel() for p in trained.parameters() if p.requires_grad)
        if expected != size:
            raise ConfigError(f"{where} returned a model with {expected} trainable parameters; the job's model has {size}")
        update = get_flat_params(trained) - np.asarray(global_params, dtype=np.float64)
    elif isinstance(trained, (np.ndarray, torch.Tensor)):
        arr = trained.detach().cpu().numpy() if isinstance(trained, torch.Tensor) else trained
        if arr.shape != (size,):
            raise ConfigError(f"{where} returned an update of shape {tuple(arr.shape)}; the job's model needs ({size},)")
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise ConfigError(f"{where} returned an update of dtype {arr.dtype}; it must be real numbers")
        update = np.asarray(arr, dtype=np.float64).copy()
    else:
        raise ConfigError(
            f"{where} returned {_describe(trained)} as its first value; it must be the trained torch.nn.Module or the "
            "update (a 1-D array or tensor)"
        )
    if not np.all(np.isfinite(update)):
        bad = int(np.sum(~np.isfinite(update)))
        raise ConfigError(f"{where} returned an update with {bad} NaN/inf value(s) (training diverged?); lower training.lr")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ConfigError(f"{where} returned n_examples = {_describe(n)}; it must be an int")
    if not 1 <= int(n) <= settings.rows:
        # not the row count itself: the message may leave the silo (the processes engine's coordinator)
        raise ConfigError(f"{where} returned n_examples = {int(n)}; it must be between 1 and the number of "
                          "training rows the silo gave it")
    return update, int(n)


def _describe(value: Any) -> str:
    if isinstance(value, tuple):
        return f"a tuple of {len(value)}"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}" if len(text) <= 40 else f"a {type(value).__name__}"
