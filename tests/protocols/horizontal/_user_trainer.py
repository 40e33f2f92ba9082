"""User training loops for ``[model] trainer`` tests (importable as ``_user_trainer``: pytest puts
this directory on sys.path). Each call is logged in :data:`CALLS` as (global params in, update out)."""
from __future__ import annotations

import threading

import numpy as np
import torch

from fedsilo.protocols.horizontal.models import get_flat_params
from fedsilo.protocols.horizontal.trainer import TrainerSettings

#: (flat global parameters the model arrived with, the update returned, n_examples), per call
CALLS: list[tuple[np.ndarray, np.ndarray, int]] = []
_LOCK = threading.Lock()
PROX_MU = 0.05


def _log(start: np.ndarray, update: np.ndarray, n: int) -> None:
    with _LOCK:
        CALLS.append((start, update.copy(), n))


def adam_prox(model: torch.nn.Module, loader: torch.utils.data.DataLoader, settings: TrainerSettings):
    """Not the built-in loop: Adam with a step-decay learning-rate schedule and a FedProx
    proximal term ``mu/2 ||w - w_global||^2`` added to the loss; returns the update as an array."""
    start = get_flat_params(model)
    anchors = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    schedule = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.7)
    for _ in range(settings.epochs):
        for xb, yb in loader:
            opt.zero_grad()
            prox = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchors))
            loss = settings.loss(model(xb), yb) + 0.5 * PROX_MU * prox
            loss.backward()
            opt.step()
            schedule.step()
    update = get_flat_params(model) - start
    n = len(loader.dataset)
    _log(start, update, n)
    return update, n


def returns_model(model, loader, settings: TrainerSettings):
    """The built-in optimizer (``settings.make_optimizer``) for one epoch; returns the model."""
    start = get_flat_params(model)
    opt = settings.make_optimizer(model.parameters())
    for xb, yb in loader:
        opt.zero_grad()
        settings.loss(model(xb), yb).backward()
        opt.step()
    _log(start, get_flat_params(model) - start, settings.rows)
    return model, settings.rows


NOT_CALLABLE = 3


def _size(model) -> int:
    return sum(p.numel() for p in model.parameters())


def wrong_return(model, loader, settings):
    return model


def wrong_first(model, loader, settings):
    return "weights", 5


def nan_update(model, loader, settings):
    return np.full(_size(model), np.nan), 5


def wrong_shape(model, loader, settings):
    return np.zeros(_size(model) + 1), 5


def zero_examples(model, loader, settings):
    return np.zeros(_size(model)), 0


def too_many_examples(model, loader, settings):
    return np.zeros(_size(model)), settings.rows + 1


def float_examples(model, loader, settings):
    return np.zeros(_size(model)), 5.0


def raises(model, loader, settings):
    raise RuntimeError("my loop broke\nsecond line")


#: the settings of the last :func:`records_settings` call
SEEN: list[TrainerSettings] = []


def records_settings(model, loader, settings: TrainerSettings):
    with _LOCK:
        SEEN.append(settings)
    return np.zeros(_size(model)), settings.rows
