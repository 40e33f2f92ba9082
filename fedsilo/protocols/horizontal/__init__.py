"""Horizontal federated learning (secure FedAvg with DP) and federated statistics.

The per-party functions (:func:`silo`, :func:`aggregator`, :func:`statistics_silo`,
:func:`statistics_aggregator`) are what every engine runs, in-process or in a silo agent; the
``horizontal`` and ``statistics`` tasks of :mod:`fedsilo.silos.tasks` start them. See
``docs/horizontal.md``.
"""
from fedsilo.protocols.horizontal.protocol import HorizontalJob, aggregator, silo
from fedsilo.protocols.horizontal.statistics import statistics_aggregator, statistics_silo

__all__ = [
    "HorizontalJob",
    "aggregator",
    "silo",
    "statistics_aggregator",
    "statistics_silo",
]
