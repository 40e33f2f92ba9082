"""What the parties of SecureBoost agree on: the trees' hyper-parameters and the crypto settings.

:class:`BoostConfig` comes from the job's validated ``[model]`` section (``kind =
"secureboost"``, the one place its defaults and ranges live: :class:`~fedsilo.protocols.spec.ModelSection`);
:class:`CryptoSettings` from ``[crypto]``: the guest's key and the histogram encoding. The guest
compares a digest of both, and of the DP settings, with every host's before anything else.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedsilo.crypto.base import CryptoBackend
from fedsilo.crypto.paillier import PaillierBackend
from fedsilo.crypto.registry import get_backend
from fedsilo.errors import ConfigError, did_you_mean
from fedsilo.protocols.spec import PrivacySection, ModelSection
from fedsilo.protocols.vertical.secureboost.boosting import Objective, objective
from fedsilo.protocols.vertical.secureboost.cipher import HistogramCipher, PaillierHistograms, PlainHistograms

__all__ = ["BACKENDS", "DP_KEYS", "READ_PARAMS", "BoostConfig", "CryptoSettings", "digest", "dp_digest"]

#: The backends SecureBoost runs on: exact integer sums under the guest's key (or none at all).
BACKENDS = ("paillier", "plain")
#: The ``[privacy]`` keys SecureBoost reads (``level`` is always record).
DP_KEYS = ("epsilon", "delta", "accountant", "clip")
#: The ``[crypto] params`` of the Paillier backend SecureBoost reads (the rest it sizes itself).
READ_PARAMS = ("key_bits", "precision", "packed", "workers")
#: Largest fixed-point precision: ``g · 2**P`` must stay exact in a float64.
MAX_PRECISION = 52


def digest(obj: Any) -> str:
    """A short hash of a JSON-able object (what parties compare)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def dp_digest(dp: PrivacySection | None) -> str:
    """What the parties compare of their DP settings (:data:`DP_KEYS`)."""
    return digest(None if dp is None else {k: getattr(dp, k) for k in DP_KEYS})


@dataclass(frozen=True, slots=True)
class BoostConfig:
    """The trees every party agrees on (the guest checks a digest of them).

    Args:
        trees, depth, learning_rate, bins, min_child_weight, l2, subsample, min_leaf_rows,
            objective, missing, guest_trees: the ``[model]`` keys of the same names
            (docs/secureboost.md).
        timeout: seconds to wait for any one message (``federation.round_timeout``; local,
            not compared).
    """

    trees: int
    depth: int
    learning_rate: float
    bins: int
    min_child_weight: float
    l2: float
    subsample: float
    min_leaf_rows: int
    timeout: float
    objective: str = "log_loss"
    missing: str = "refuse"
    guest_trees: int = 0

    @classmethod
    def from_section(cls, model: ModelSection, *, timeout: float) -> "BoostConfig":
        """The agreed trees of a job from its validated ``[model]`` section."""
        if not isinstance(model, ModelSection):
            raise TypeError(f"from_section takes a ModelSection (fedsilo.protocols.spec), got {type(model).__name__}")
        if model.kind != "secureboost":
            raise ConfigError(f"key 'model.kind': SecureBoost needs kind = \"secureboost\", got {model.kind!r}")
        return cls(model.trees, model.depth, float(model.learning_rate), model.bins, float(model.min_child_weight),
                   float(model.l2), float(model.subsample), model.min_leaf_rows, float(timeout), model.objective,
                   model.missing, model.guest_trees)

    @property
    def loss(self) -> Objective:
        """The :class:`~.boosting.Objective` of ``objective``."""
        return objective(self.objective)

    @property
    def missing_bins(self) -> bool:
        """Missing-value bins (``missing = "bin"``): NaNs get a bin of their own."""
        return self.missing == "bin"

    @property
    def hist_bins(self) -> int:
        """Bins per feature in a histogram: ``bins``, and one for the NaNs with missing-value bins."""
        return self.bins + self.missing_bins

    def guest_only(self, tree: int) -> bool:
        """Tree ``tree`` (0-based) is grown on the guest's features only (the first ``guest_trees``)."""
        return tree < self.guest_trees

    @property
    def joint_trees(self) -> int:
        """Trees the hosts take part in (each releases up to ``depth`` histograms per host)."""
        return self.trees - self.guest_trees

    def sample_size(self, rows: int) -> int:
        """Rows each tree is grown on out of ``rows`` training rows (public)."""
        return max(1, int(round(self.subsample * rows)))

    def digest(self) -> str:
        return digest({k: getattr(self, k) for k in self.__slots__ if k != "timeout"})


@dataclass(frozen=True, slots=True)
class CryptoSettings:
    """The guest's key and the histogram encoding, from ``[crypto]``.

    ``backend`` ``"paillier"`` (``params``: ``key_bits``, ``precision`` — the fixed-point bits of
    ``g`` and ``h`` —, ``packed``, ``workers``; the backend validates them) or ``"plain"`` (no
    encryption: tests and baselines, ``insecure`` only). ``packed`` (default true here): one
    ciphertext per row for ``(g, h)`` and many bins per ciphertext; false is the textbook
    SecureBoost, one ciphertext per value.
    """

    backend: str
    key_bits: int
    precision: int
    packed: bool
    workers: int
    params: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_params(cls, backend: str, params: Mapping[str, Any]) -> "CryptoSettings":
        """Checked settings; the Paillier backend validates its own parameters.

        Raises:
            ConfigError: another backend, or a parameter SecureBoost does not read (naming it).
        """
        if backend not in BACKENDS:
            raise ConfigError(
                f"key 'crypto.backend': SecureBoost sums gradients exactly under the guest's key and runs on "
                f"{' or '.join(repr(b) for b in BACKENDS)} (insecure tests), not {backend!r}"
            )
        params = dict(params)
        if backend == "plain":
            if params:
                raise ConfigError(f"key 'crypto.params': the plain backend takes no parameters, got {sorted(params)}")
            return cls("plain", 2048, 32, True, 1)
        unread = sorted(set(params) - set(READ_PARAMS))
        if unread:
            raise ConfigError(
                f"key 'crypto.params.{unread[0]}' is not read by SecureBoost{did_you_mean(unread[0], READ_PARAMS)}"
                f" (it sizes its slots from the rows and bins itself; it reads {', '.join(READ_PARAMS)}); remove it"
            )
        full = {"packed": True, **params}
        be = get_backend("paillier", **full)
        assert isinstance(be, PaillierBackend)
        if be.encoding.precision > MAX_PRECISION:
            raise ConfigError(
                f"key 'crypto.params.precision': SecureBoost encodes g and h with at most {MAX_PRECISION} fractional "
                f"bits, got {be.encoding.precision}"
            )
        return cls("paillier", be.key_bits, be.encoding.precision, be.encoding.packed, be.workers,
                   tuple(sorted(full.items())))

    def backend_object(self) -> CryptoBackend:
        """The backend (for its key generation and its confidentiality check)."""
        return get_backend(self.backend, **dict(self.params))

    def keygen(self) -> tuple[HistogramCipher, bytes]:
        """The guest's key pair: its cipher (with the secret key) and the public key to send."""
        if self.backend == "plain":
            return PlainHistograms(key_bits=self.key_bits), b""
        sk = self.backend_object().keygen()
        public = sk.public()
        return PaillierHistograms(public, secret=sk, workers=self.workers), public.serialize()  # type: ignore[arg-type]

    def host_cipher(self, public: Any) -> HistogramCipher:
        """A host's cipher under the guest's public key (``public``: its wire bytes).

        Raises:
            CiphertextFormatError, ConfigError: a malformed key, or one made with other parameters.
        """
        if self.backend == "plain":
            return PlainHistograms(key_bits=self.key_bits)
        if not isinstance(public, bytes):
            raise ConfigError("the guest sent no public key")
        pub = self.backend_object().load_public(public)
        return PaillierHistograms(pub, workers=self.workers)  # type: ignore[arg-type]

    def digest(self) -> str:
        return digest({"backend": self.backend, "key_bits": self.key_bits, "precision": self.precision,
                       "packed": self.packed})
