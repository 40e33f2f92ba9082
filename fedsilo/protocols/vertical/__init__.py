"""Vertical federated learning: same customers, different columns, in different silos.

* :mod:`.taylor` — the maths (Taylor-approximated logistic loss, DP calibration), pure.
* :mod:`.data` — checking one party's table (IDs, labels, numeric features).
* :mod:`.lr` — heterogeneous logistic regression: the overview (topologies, who learns what)
  and the public names of its modules: :mod:`.messages` (the message kinds), :mod:`.config`
  (agreed settings, digests, the DP plan), :mod:`.model` (each party's local model),
  :mod:`.keys` (keys, masks, noise shares, ledger charges), :mod:`.loss` (the encrypted
  Taylor loss), :mod:`.parties` (one step function per role and topology) and
  :mod:`.prediction` (the joint prediction protocol).
* :mod:`.job` — a whole job per party (PSI alignment, split, training, evaluation); the
  ``vertical`` task of :mod:`fedsilo.silos.tasks` starts the parties on an engine.

See docs/vertical.md for the protocol, who learns what, and the DP accounting.
"""
from fedsilo.protocols.vertical.data import PartyTable, prepare_table
from fedsilo.protocols.vertical.job import VerticalSpec, vertical_party
from fedsilo.protocols.vertical.lr import (
    FitResult,
    LocalModel,
    Topology,
    TrainingConfig,
    arbiter_train,
    evaluation_metrics,
    guest_train,
    host_train,
    predict_guest,
    serve_predictions,
)
from fedsilo.protocols.vertical.taylor import DpPlan, calibrate

__all__ = [
    "DpPlan",
    "FitResult",
    "LocalModel",
    "PartyTable",
    "Topology",
    "TrainingConfig",
    "VerticalSpec",
    "arbiter_train",
    "calibrate",
    "evaluation_metrics",
    "guest_train",
    "host_train",
    "predict_guest",
    "prepare_table",
    "serve_predictions",
    "vertical_party",
]
