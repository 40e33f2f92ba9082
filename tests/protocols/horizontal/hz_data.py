"""Test helpers: breast_cancer split into label-skewed silos exactly as ``fedsilo simulate`` does."""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
from fedsilo.silos.config import parse_config
from fedsilo.silos.tasks.horizontal import prepare_horizontal


@lru_cache(maxsize=8)
def breast_cancer_silos(silos: int = 3, alpha: float = 0.5, seed: int = 7) -> Any:
    cfg = parse_config(
        {
            "federation": {"name": "t", "task": "horizontal", "seed": seed},
            "crypto": {"backend": "plain", "insecure": True},
            "data": {
                "source": "sklearn:breast_cancer",
                "label": "target",
                "partition": {"kind": "label_skew", "silos": silos, "alpha": alpha},
                "test_fraction": 0.2,
            },
        }
    )
    return prepare_horizontal(cfg)


def base_kwargs(data: Any, **over: Any) -> dict[str, Any]:
    kw: dict[str, Any] = dict(
        silos=data.silos,
        tests=data.tests,
        backend="plain",
        backend_params={},
        model={"kind": "logistic"},
        training={"rounds": 5, "local_epochs": 1, "batch_size": 32, "lr": 0.5, "optimizer": "sgd", "strategy": "fedavg"},
        privacy=None,
        ledger_dir=None,
        budgets={n: (8.0, 1e-5) for n in data.silos},
        job="test-job",
        seed=7,
        min_silos=2,
        round_timeout=30.0,
        insecure=True,  # the plain backend (a test baseline: same model as CKKS/Paillier)
    )
    kw.update(over)
    return kw


def central_accuracy(data: Any, *, model: dict[str, Any], training: dict[str, Any], seed: int = 7) -> float:
    """The same model trained on the pooled rows (epochs = rounds * local_epochs)."""
    from fedsilo.protocols.horizontal.models import build_model, get_flat_params
    from fedsilo.protocols.horizontal.training import LocalConfig, train_local
    from fedsilo.protocols.spec import ModelSection, TrainingSection, section
    from fedsilo.silos.tasks.horizontal import evaluate

    model = section(ModelSection, model, key="model")

    x = np.vstack([x for x, _ in data.silos.values()])
    y = np.concatenate([y for _, y in data.silos.values()])
    m = build_model(model, n_features=x.shape[1], n_classes=2, seed=seed)
    section_ = section(TrainingSection, training, key="training")
    cfg = LocalConfig.from_sections(section_, epochs=section_.rounds * section_.local_epochs)
    p0 = get_flat_params(m)
    res = train_local(m, x, y, global_params=p0, config=cfg, n_classes=2, seed=seed)
    return evaluate(model, p0 + res.update, *pooled_test(data), n_features=x.shape[1], n_classes=2)["accuracy"]


def pooled_test(data: Any) -> tuple[np.ndarray, np.ndarray]:
    """Every silo's held-out rows pooled: a test-only central reference, never a party's view."""
    return (np.vstack([x for x, _ in data.tests.values()]), np.concatenate([y for _, y in data.tests.values()]))


def backend_available(name: str, **params: Any) -> bool:
    """Whether a crypto backend can be built here (paillier/ckks land separately)."""
    from fedsilo.crypto.registry import get_backend
    from fedsilo.errors import FedsiloError

    try:
        get_backend(name, **params)
    except (FedsiloError, ImportError):
        return False
    return True


def hz_job(*, model: Any = None, training: Any = None, privacy: Any = None, **kw: Any) -> Any:
    """A typed HorizontalJob for tests that drive the party functions directly: mappings are
    validated as the config sections, and the job-level keys get their config defaults."""
    from fedsilo.protocols.horizontal.protocol import HorizontalJob
    from fedsilo.protocols.spec import ModelSection, PrivacySection, TrainingSection, section

    defaults: dict[str, Any] = {"n_classes": 2, "seed": 0, "min_silos": 2, "round_timeout": 120.0, "insecure": False}
    return HorizontalJob(
        model=section(ModelSection, model or {}, key="model"),
        training=section(TrainingSection, training or {}, key="training"),
        privacy=None if privacy is None else section(PrivacySection, privacy, key="privacy"),
        **{**defaults, **kw},
    )


def local_cfg(*, proximal_mu: float = 0.0, epochs: int = 1, **training: Any) -> Any:
    """A LocalConfig of a test: the [training] keys through their section (``epochs`` is
    ``local_epochs``)."""
    from fedsilo.protocols.horizontal.training import LocalConfig
    from fedsilo.protocols.spec import TrainingSection, section

    return LocalConfig.from_sections(section(TrainingSection, {"local_epochs": epochs, **training}, key="training"),
                                     proximal_mu=proximal_mu)
