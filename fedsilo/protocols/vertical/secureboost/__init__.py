"""SecureBoost: vertical gradient-boosted trees (Cheng et al., "SecureBoost: A Lossless Federated
Learning Framework", IEEE Intelligent Systems 36(6), 2021), with packed Paillier histograms
(SecureBoost+, Chen et al., arXiv:2110.10927) and optional DP noise on the histograms.

The guest holds the labels and the Paillier key; hosts hold features and never see ``g`` or
``h`` in the clear; split thresholds never leave their host. One module per concept:

* :mod:`.boosting` — the maths (gradients, bins, gains, leaf values), pure;
* :mod:`.packing` — fixed-point integers and their slots in a Paillier plaintext, pure;
* :mod:`.cipher` — the ciphertext recipes on those integers (encrypt rows, bin sums, pack, open);
* :mod:`.dp` — the DP calibration, the hosts' noise and their ledger charge;
* :mod:`.config` — what the parties agree on (trees, crypto) and its digests;
* :mod:`.messages` — the message kinds in job order, one payload shape each;
* :mod:`.model` — each party's share of the trees (binning, the guest's trees, a host's lookup table);
* :mod:`.parties` — :func:`guest_boost` and :func:`host_boost`, the figure of one tree;
* :mod:`.prediction` — the joint prediction;
* :mod:`.job` — :func:`secureboost_party`, a whole job of one party.

See docs/secureboost.md for the protocol, who learns what, and the DP accounting.
"""
from fedsilo.protocols.vertical.secureboost.config import BoostConfig, CryptoSettings
from fedsilo.protocols.vertical.secureboost.dp import HistogramDp, calibrate
from fedsilo.protocols.vertical.secureboost.job import SecureBoostSpec, holdout_split, secureboost_party
from fedsilo.protocols.vertical.secureboost.model import GuestModel, HostModel, joint_scores
from fedsilo.protocols.vertical.secureboost.parties import BoostResult, guest_boost, host_boost
from fedsilo.protocols.vertical.secureboost.prediction import predict_guest, serve_routes

__all__ = [
    "BoostConfig",
    "BoostResult",
    "CryptoSettings",
    "GuestModel",
    "HistogramDp",
    "HostModel",
    "SecureBoostSpec",
    "calibrate",
    "guest_boost",
    "holdout_split",
    "host_boost",
    "joint_scores",
    "predict_guest",
    "secureboost_party",
    "serve_routes",
]
