"""Horizontal federated learning (secure FedAvg with DP) and federated statistics.

The per-party functions (:func:`silo`, :func:`aggregator`, :func:`statistics_silo`,
:func:`statistics_aggregator`) are what every engine runs, in-process or in a silo agent; the
``horizontal`` and ``statistics`` tasks of :mod:`fedsilo.silos.tasks` start them. See
``docs/horizontal.md``.

The names below are loaded on first use (PEP 562): importing any submodule (the planning ones,
e.g. :mod:`.strategies` or :mod:`.secure_aggregation`) then does not import the training
modules, and with them torch, so a job refused before round 1 never pays for torch.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__all__ = [
    "HorizontalJob",
    "aggregator",
    "silo",
    "statistics_aggregator",
    "statistics_silo",
]

#: public name -> the submodule that defines it
_HOMES = {
    "HorizontalJob": "protocol",
    "aggregator": "protocol",
    "silo": "protocol",
    "statistics_aggregator": "statistics",
    "statistics_silo": "statistics",
}

if TYPE_CHECKING:
    from fedsilo.protocols.horizontal.protocol import HorizontalJob, aggregator, silo
    from fedsilo.protocols.horizontal.statistics import statistics_aggregator, statistics_silo


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
