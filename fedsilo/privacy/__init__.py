"""fedsilo.privacy: DP mechanisms, accounting and the per-silo privacy ledger.

* :mod:`~fedsilo.privacy.mechanisms` — pure functions: calibration (Laplace, classic and
  analytic Gaussian), L2 clipping, noise shares, grid-safe discrete samplers.
* :mod:`~fedsilo.privacy.events` — frozen DP events; every noising step emits one.
* :mod:`~fedsilo.privacy.accounting` — ε of a composition (RDP or PLD via dp-accounting) and
  the noise multiplier a target ε needs.
* :mod:`~fedsilo.privacy.relations` — neighbouring relations (zero-out a silo, add/remove a
  record, replace a record) and the conservative conversion between them.
* :mod:`~fedsilo.privacy.ledger` — durable, hash-chained, anchored, write-ahead ε ledger per
  silo; every release records its relation.

This package imports nothing from ``fedsilo.crypto``, ``protocols``, ``silos`` or ``cli``.
See docs/privacy.md.
"""
from fedsilo.privacy.accounting import ACCOUNTANTS, epsilon, noise_multiplier
from fedsilo.privacy.events import (
    ApproxDpEvent,
    ComposedEvent,
    CoveredEvent,
    DpEvent,
    GaussianEvent,
    LaplaceEvent,
    event_from_json,
)
from fedsilo.privacy.ledger import (
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
from fedsilo.privacy.relations import (
    ADD_REMOVE_RECORD,
    LEVELS,
    RELATIONS,
    REPLACE_RECORD,
    ZERO_OUT_SILO,
    composition_target,
    convert,
    level_of,
    to_composition_target,
)

__all__ = [
    "ACCOUNTANTS",
    "ADD_REMOVE_RECORD",
    "LEVELS",
    "RELATIONS",
    "REPLACE_RECORD",
    "ZERO_OUT_SILO",
    "ApproxDpEvent",
    "ComposedEvent",
    "CoveredEvent",
    "DatasetReport",
    "DpEvent",
    "GaussianEvent",
    "LaplaceEvent",
    "LedgerEntry",
    "PrivacyLedger",
    "Reservation",
    "clip_l2",
    "clip_rows_l2",
    "composition_target",
    "convert",
    "discrete_gaussian",
    "discrete_laplace",
    "epsilon",
    "event_from_json",
    "gaussian_noise",
    "gaussian_sigma_analytic",
    "gaussian_sigma_classic",
    "laplace_scale",
    "level_of",
    "noise_multiplier",
    "noise_share_sigma",
    "noise_share_topup_sigma",
    "round_to_grid",
    "secure_rng",
    "to_composition_target",
]
