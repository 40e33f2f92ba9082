"""fedsilo: cross-silo federated learning with homomorphic encryption and differential privacy.

The card's top-level folders (crypto, privacy, protocols, silos) live under this one import
package so that ``import fedsilo.crypto`` never collides with unrelated PyPI packages.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fedsilo.errors import FedsiloError

__version__ = "0.1.0"
__all__ = ["FedsiloError", "__version__", "simulate"]


def simulate(
    config: str | Path,
    *,
    ledger_dir: str | Path | None = None,
    backend: str | None = None,
    silos: int | None = None,
    rounds: int | None = None,
    epsilon: float | None = None,
    seed: int | None = None,
    engine: str = "threads",
) -> dict[str, Any]:
    """Run a federation config like ``fedsilo simulate`` and return the results contract
    (docs/results.md). Keyword overrides match the command-line flags; ``engine`` is
    ``--engine`` (``"threads"`` or ``"processes"``)."""
    from fedsilo.silos.config import load_config
    from fedsilo.silos.runner import run_job

    cfg = load_config(config, overrides=dict(backend=backend, silos=silos, rounds=rounds, epsilon=epsilon, seed=seed))
    return run_job(cfg, ledger_dir=Path(ledger_dir) if ledger_dir is not None else None, engine=engine)
