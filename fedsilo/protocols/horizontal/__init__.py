"""Horizontal federated learning (secure FedAvg with DP) and federated statistics.

Entry points for ``fedsilo simulate``: :func:`simulate_horizontal` and
:func:`simulate_statistics`. The per-party functions (:func:`~.protocol.silo`,
:func:`~.protocol.aggregator`, :func:`~.statistics.statistics_silo`,
:func:`~.statistics.statistics_aggregator`) are what silo agents run.
"""
from fedsilo.protocols.horizontal.protocol import aggregator, silo, simulate_horizontal

__all__ = ["aggregator", "silo", "simulate_horizontal", "simulate_statistics"]


def __getattr__(name: str):  # statistics imports pandas lazily
    if name == "simulate_statistics":
        from fedsilo.protocols.horizontal.statistics import simulate_statistics

        return simulate_statistics
    raise AttributeError(name)
