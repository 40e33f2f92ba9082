"""Models for horizontal FL: built-in logistic regression and MLP, or any ``torch.nn.Module``.

A model is described by a small JSON-safe spec (the ``[model]`` section of a federation file)::

    {"kind": "logistic"}
    {"kind": "mlp", "hidden": [32]}
    {"kind": "mypkg.models:TabularNet", "params": {"width": 64}}

A class named by import path is called as ``Class(n_features=..., n_outputs=..., **params)``.
Every silo builds the same architecture and the same initial weights from the job seed, so
the initial global model never travels. Parameters cross the wire as one flat float64 vector
(:func:`get_flat_params` / :func:`set_flat_params`), in ``module.parameters()`` order.

Binary tasks use one logit (``BCEWithLogitsLoss``); ``k > 2`` classes use ``k`` logits
(``CrossEntropyLoss``).
"""
from __future__ import annotations

import importlib
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from fedsilo.errors import ConfigError
# torch-free: planning reads them (builtin_layer_shapes also gives the parameter count without torch)
from fedsilo.protocols.horizontal.local_plan import BUILTIN_MODELS, builtin_layer_shapes, n_outputs_for
from fedsilo.protocols.spec import ModelSection

__all__ = [
    "LogisticRegression",
    "MLP",
    "build_model",
    "get_flat_params",
    "set_flat_params",
    "n_outputs_for",
    "loss_fn",
    "predict_scores",
    "BUILTIN_MODELS",
]

# Module construction draws from torch's *global* RNG; parties run as threads in simulation, so
# seeding and building happen under one lock inside a forked RNG state (nothing leaks out).
# The lock excludes only other builds: code on other silo threads must not draw from the global
# RNG (pass a torch.Generator, as training.py does), or a draw between ``manual_seed`` and the
# init changes this silo's initial weights (tests/protocols/horizontal/test_global_rng.py).
_BUILD_LOCK = threading.Lock()


class LogisticRegression(nn.Module):
    """``n_features -> n_outputs`` affine map; logits out (the loss applies the sigmoid/softmax)."""

    def __init__(self, *, n_features: int, n_outputs: int = 1) -> None:
        super().__init__()
        ((fan_in, fan_out),) = builtin_layer_shapes("logistic", (), n_features=n_features, n_outputs=n_outputs)
        self.linear = nn.Linear(fan_in, fan_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class MLP(nn.Module):
    """Fully connected ReLU network for tabular data: ``n_features -> hidden... -> n_outputs``."""

    def __init__(self, *, n_features: int, n_outputs: int = 1, hidden: Sequence[int] = (32,)) -> None:
        super().__init__()
        *inner, (last_in, last_out) = builtin_layer_shapes("mlp", hidden, n_features=n_features, n_outputs=n_outputs)
        layers: list[nn.Module] = []
        for fan_in, fan_out in inner:
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        layers.append(nn.Linear(last_in, last_out))  # logits: no ReLU after the last layer
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _import_class(path: str) -> type[nn.Module]:
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(
            f"model kind {path!r} is neither one of {', '.join(BUILTIN_MODELS)} nor "
            "an import path of the form 'package.module:Class'"
        )
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"model kind {path!r} cannot be imported: {exc}") from exc
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise ConfigError(f"model kind {path!r} is not a torch.nn.Module subclass")
    return obj


def build_model(spec: ModelSection, *, n_features: int, n_classes: int = 2, seed: int) -> nn.Module:
    """The model described by ``spec`` (the validated ``[model]`` section) with deterministic
    initial weights for ``seed``.

    Raises:
        ConfigError: an unknown kind, an import path that does not load, or a class whose
            constructor rejects the arguments.
    """
    if not isinstance(spec, ModelSection):
        raise TypeError(f"build_model takes a ModelSection (fedsilo.protocols.spec), got {type(spec).__name__}")
    kind, hidden, params = spec.kind, spec.hidden, dict(spec.params)
    n_out = n_outputs_for(n_classes)
    cls: type[nn.Module] | None = None
    if kind not in BUILTIN_MODELS:
        cls = _import_class(kind)
    with _BUILD_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        try:
            if kind == "logistic":
                model: nn.Module = LogisticRegression(n_features=n_features, n_outputs=n_out)
            elif kind == "mlp":
                model = MLP(n_features=n_features, n_outputs=n_out, hidden=tuple(hidden))
            else:
                assert cls is not None
                model = cls(n_features=n_features, n_outputs=n_out, **params)
        except TypeError as exc:
            raise ConfigError(f"model kind {kind!r} rejected its arguments: {exc}") from exc
    model = model.to(torch.float32)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"model kind {kind!r} has no trainable parameters")
    return model


def get_flat_params(model: nn.Module) -> np.ndarray:
    """All trainable parameters as one float64 vector (``model.parameters()`` order)."""
    with torch.no_grad():
        parts = [p.detach().reshape(-1).to(torch.float64).cpu() for p in model.parameters() if p.requires_grad]
    return torch.cat(parts).numpy().copy() if parts else np.zeros(0)


def set_flat_params(model: nn.Module, flat: np.ndarray) -> None:
    """Load a vector from :func:`get_flat_params` back into ``model`` (in place)."""
    flat = np.asarray(flat, dtype=np.float64)
    params = [p for p in model.parameters() if p.requires_grad]
    total = sum(p.numel() for p in params)
    if flat.ndim != 1 or flat.shape[0] != total:
        raise ConfigError(f"parameter vector has shape {flat.shape}, the model needs ({total},)")
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(torch.from_numpy(flat[offset : offset + n]).reshape(p.shape).to(p.dtype))
            offset += n


def loss_fn(n_classes: int) -> nn.Module:
    """Mean loss matching :func:`n_outputs_for`: BCE-with-logits (binary) or cross-entropy."""
    return nn.BCEWithLogitsLoss() if n_classes == 2 else nn.CrossEntropyLoss()


def predict_scores(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Class scores: P(y=1) for a binary task (shape ``(n,)``), softmax rows otherwise."""
    model.eval()
    with torch.no_grad():
        logits = model(torch.as_tensor(np.asarray(x), dtype=torch.float32))
        if logits.ndim == 2 and logits.shape[1] == 1:
            return torch.sigmoid(logits[:, 0]).double().numpy()
        return torch.softmax(logits, dim=1).double().numpy()
