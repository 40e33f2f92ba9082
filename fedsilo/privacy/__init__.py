"""fedsilo.privacy: DP mechanisms, accounting and the per-silo privacy ledger.

* :mod:`~fedsilo.privacy.mechanisms` — pure functions: calibration (Laplace, classic and
  analytic Gaussian), L2 clipping, noise shares, grid-safe discrete samplers.
* :mod:`~fedsilo.privacy.events` — frozen DP events; every noising step emits one.
* :mod:`~fedsilo.privacy.accounting` — ε of a composition (RDP or PLD via dp-accounting) and
  the noise multiplier a target ε needs.
* :mod:`~fedsilo.privacy.ledger` — durable, hash-chained, write-ahead ε ledger per silo.

This package imports nothing from ``fedsilo.crypto``, ``protocols``, ``silos`` or ``cli``.
See docs/privacy.md.
"""
from fedsilo.privacy.accounting import ACCOUNTANTS, epsilon, noise_multiplier
from fedsilo.privacy.events import (
    ComposedEvent,
    DpEvent,
    GaussianEvent,
    LaplaceEvent,
    event_from_json,
)
from fedsilo.privacy.ledger import (
    LEVELS,
    DatasetReport,
    LedgerEntry,
    PrivacyLedger,
    Reservation,
)
from fedsilo.privacy.mechanisms import (
    clip_l2,
    clip_rows_l2,
    discrete_gaussian,
    discrete_laplace,
    gaussian_noise,
    gaussian_sigma_analytic,
    gaussian_sigma_classic,
    laplace_scale,
    noise_share_sigma,
    noise_share_topup_sigma,
    round_to_grid,
    secure_rng,
)

__all__ = [
    "ACCOUNTANTS",
    "LEVELS",
    "ComposedEvent",
    "DatasetReport",
    "DpEvent",
    "GaussianEvent",
    "LaplaceEvent",
    "LedgerEntry",
    "PrivacyLedger",
    "Reservation",
    "clip_l2",
    "clip_rows_l2",
    "discrete_gaussian",
    "discrete_laplace",
    "epsilon",
    "event_from_json",
    "gaussian_noise",
    "gaussian_sigma_analytic",
    "gaussian_sigma_classic",
    "laplace_scale",
    "noise_multiplier",
    "noise_share_sigma",
    "noise_share_topup_sigma",
    "round_to_grid",
    "secure_rng",
]
