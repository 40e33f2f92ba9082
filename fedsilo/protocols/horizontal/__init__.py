"""Horizontal federated learning (secure FedAvg with DP) and federated statistics.

Entry points for ``fedsilo simulate``: :func:`simulate_horizontal` and
:func:`simulate_statistics`. The per-party functions (:func:`silo`, :func:`aggregator`,
:func:`statistics_silo`, :func:`statistics_aggregator`) are what silo agents run over their
gRPC channel. See ``docs/horizontal.md``.
"""
from fedsilo.protocols.horizontal.protocol import HorizontalJob, aggregator, silo, simulate_horizontal
from fedsilo.protocols.horizontal.statistics import simulate_statistics, statistics_aggregator, statistics_silo

__all__ = [
    "HorizontalJob",
    "aggregator",
    "silo",
    "simulate_horizontal",
    "simulate_statistics",
    "statistics_aggregator",
    "statistics_silo",
]
