"""The maths of heterogeneous (vertical) logistic regression: pure, keyword-only functions.

Taylor-approximated logistic loss (Hardy et al., "Private federated learning on vertically
partitioned data via entity resolution and additively homomorphic encryption",
arXiv:1711.10677, 2017, §3.2, eq. 3–4). With labels ``y' ∈ {−1, +1}`` and logit
``u = x·w``, the second-order expansion of ``log(1 + e^{−y'u})`` around ``u = 0`` is

    ℓ(u) ≈ log 2 − y'u/2 + u²/8,   ∂ℓ/∂w = (u/4 − y'/2) x = d · x,

so the gradient needs only the *residual* ``d = u/4 − y'/2``, which is linear in the parties'
partial logits ``u = Σ_p u_p``: it can be formed under additively homomorphic encryption.
Since ``2d² = u²/8 − y'u/2 + 1/2``, the loss is ``ℓ = log 2 − 1/2 + 2d²`` — the mean of
``d²`` is all a key holder has to decrypt to report it.

Differential privacy (record level: one customer's row). PSI tells every party which customers
are aligned, so whether a customer takes part is not hidden: the neighbouring relation is
**replace one customer's row** (its features at every party and its label), not add/remove.
Every party scales its features with public bounds to ``[-1, 1]`` (:mod:`fedsilo.protocols.scaling`),
clips each row to L2 norm ``C`` (:func:`fedsilo.privacy.clip_rows_l2`) and its partial logits to
``|u_p| <= B``; then ``|d| <= D = P·B/4 + 1/2`` for ``P`` data parties, and one customer's
contribution ``d_i x_{p,i}`` to party p's gradient sum has L2 norm at most ``C_p · D``
(``C_p = sqrt(C² + 1)`` for the guest's rows, which carry the intercept's constant 1).
Replacing the row moves that contribution between two points of the ball of radius ``C_p·D``,
so the replace-one sensitivity of the sum is ``Δ_p = 2·C_p·D``, and it is attained (``d`` from
``−D`` to ``+D`` with the same ``x``). See :func:`residual_bound` and :meth:`DpPlan.sensitivity`.

Batches are public (the guest announces them to every party, so the parties that receive noised
gradients know who is in each batch): no amplification by subsampling is claimed. Each epoch is
a fresh shuffled *partition* of the training rows (:func:`epoch_partition`), so each customer is
in exactly one batch per epoch, and the epoch costs one Gaussian mechanism per customer
(parallel composition over disjoint batches: McSherry, "Privacy integrated queries", SIGMOD
2009, Thm. 4: the partition does not depend on the data, so a replaced row stays in its batch;
under adaptive composition the steps whose batch does not hold the customer do not depend on
its row given the earlier releases). The releases composed in a step are **all ``P`` noised
gradients**, each party's own included: every party's later messages depend on every party's
weights, which are functions of the noised gradients, so the analysis treats the whole
transcript of noised gradients as released. For that to hold against any party, no party may
know the whole noise on any gradient: every party that can (the ``P`` data parties, the
gradient's owner included, and the arbiter when there is one) adds a noise share, sized so that
``colluders`` of them subtracting their shares still leave ``σ_p²`` (:meth:`DpPlan.share_sigma`).
See :func:`calibrate`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedsilo.errors import ConfigError, ProtocolError
from fedsilo.privacy.accounting import noise_multiplier
from fedsilo.privacy.events import GaussianEvent
from fedsilo.privacy.mechanisms import noise_share_sigma

__all__ = [
    "DpPlan",
    "LOG2_MINUS_HALF",
    "calibrate",
    "epoch_partition",
    "guest_residual_part",
    "host_residual_part",
    "learning_rate",
    "residual_bound",
    "sigmoid",
    "standardize_fit",
    "standardize_apply",
    "taylor_loss",
]

#: ``log 2 − 1/2``: the constant of the Taylor loss written in the residual.
LOG2_MINUS_HALF = math.log(2.0) - 0.5


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def guest_residual_part(*, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The guest's share of the residual: ``u_g/4 − y'/2`` with ``y' = 2y − 1`` for 0/1 labels."""
    y_pm = 2.0 * np.asarray(labels, dtype=np.float64) - 1.0
    return 0.25 * np.asarray(logits, dtype=np.float64) - 0.5 * y_pm


def host_residual_part(*, logits: np.ndarray) -> np.ndarray:
    """A host's share of the residual: ``u_h/4`` (scaled in plaintext so the encrypted circuit
    needs no multiplication before the gradient's ciphertext × plaintext product)."""
    return 0.25 * np.asarray(logits, dtype=np.float64)


def taylor_loss(*, sum_squared_residuals: float, rows: int) -> float:
    """Mean Taylor loss ``log 2 − 1/2 + 2·mean(d²)`` from ``Σ d²`` over ``rows`` rows."""
    if rows <= 0:
        raise ConfigError("the loss needs at least one row")
    return LOG2_MINUS_HALF + 2.0 * float(sum_squared_residuals) / rows


def learning_rate(*, base: float, epoch: int, schedule: str) -> float:
    """``base`` (``"constant"``) or ``base / sqrt(epoch)`` (``"sqrt"``, epochs counted from 1)."""
    if epoch < 1:
        raise ConfigError(f"epochs count from 1, got {epoch}")
    if schedule == "constant":
        return base
    if schedule == "sqrt":
        return base / math.sqrt(epoch)
    raise ConfigError(f"unknown learning-rate schedule {schedule!r} (expected 'constant' or 'sqrt')")


def epoch_partition(*, rows: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch's mini-batches: a fresh uniformly random partition of ``range(rows)`` into
    ``ceil(rows / batch_size)`` disjoint batches whose sizes differ by at most one.

    Every row is in exactly one batch, which is what the per-epoch DP accounting relies on
    (:func:`calibrate`); near-equal sizes avoid a small last batch whose mean gradient would
    carry a large share of the noise.
    """
    if rows < 1 or batch_size < 1:
        raise ConfigError(f"rows and batch_size must be >= 1 (got {rows}, {batch_size})")
    return np.array_split(rng.permutation(rows), math.ceil(rows / batch_size))


def standardize_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and scales (population std; 1.0 for constant columns) of ``x``.

    Not for DP: the statistics depend on every row (use public bounds instead)."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[~(scale > 0)] = 1.0
    return mean, scale


def standardize_apply(x: np.ndarray, *, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``(x − mean) / scale``."""
    return (np.asarray(x, dtype=np.float64) - mean) / scale


def residual_bound(*, parties: int, logit_clip: float) -> float:
    """``D = P·B/4 + 1/2``: the largest ``|d|`` when every partial logit is clipped to ``±B``."""
    if parties < 2:
        raise ConfigError(f"vertical learning needs at least 2 data parties, got {parties}")
    if not logit_clip > 0:
        raise ConfigError(f"logit_clip must be > 0, got {logit_clip!r}")
    return parties * logit_clip / 4.0 + 0.5


@dataclass(frozen=True, slots=True)
class DpPlan:
    """The DP calibration every party derives from the same public inputs.

    ``noise_multiplier`` (``z``) sets the noise on each released gradient sum:
    ``σ_p = z · Δ_p`` with ``Δ_p`` the replace-one sensitivity (:meth:`sensitivity`). In the
    step whose batch holds a customer, the customer's row reaches ``releases`` (= ``P``) noised
    gradients — every data party's, its own included — so each party's privacy loss per epoch
    is that of one Gaussian mechanism with multiplier ``z / sqrt(releases)`` on the
    concatenation — the ``event_multiplier``, charged to its ledger once per epoch without
    subsampling (``sample_rate`` is 1.0: batches are public among the parties).
    ``steps_per_epoch`` is the number of batches (gradient steps) per epoch. ``noise_adders``
    parties add a share of the noise on each gradient (every data party, plus the arbiter when
    there is one); ``colluders`` of them may pool their shares (:meth:`share_sigma`).
    """

    epsilon: float
    delta: float
    clip: float
    logit_clip: float
    noise_multiplier: float
    event_multiplier: float
    sample_rate: float
    steps_per_epoch: int
    epochs: int
    releases: int
    parties: int
    noise_adders: int
    accountant: str
    colluders: int = 1

    #: The neighbouring relation the sensitivities are measured for.
    neighbouring: ClassVar[str] = "replace one customer's row"

    @property
    def residual_bound(self) -> float:
        return residual_bound(parties=self.parties, logit_clip=self.logit_clip)

    def sensitivity(self, *, intercept: bool) -> float:
        """``Δ_p = 2·C_p·D``: replace-one L2 sensitivity of party p's gradient sum (each row's
        contribution has norm at most ``C_p·D``; a replaced row swaps one such contribution for
        another)."""
        c = math.sqrt(self.clip**2 + 1.0) if intercept else self.clip
        return 2.0 * c * self.residual_bound

    def sigma(self, *, intercept: bool) -> float:
        """Least total noise standard deviation on party p's gradient *sum* that any coalition
        of ``colluders`` parties cannot subtract: ``σ_p = z · Δ_p``."""
        return self.noise_multiplier * self.sensitivity(intercept=intercept)

    def share_sigma(self, *, intercept: bool) -> float:
        """One noise share of party p's gradient sum. Each of the ``noise_adders`` parties (p
        itself, under encryption before it masks; every other data party; the arbiter, if any)
        adds ``N(0, σ_p² / max(1, noise_adders − colluders))``, so any ``colluders`` of them that
        subtract the shares they drew still leave at least ``σ_p²``
        (:func:`fedsilo.privacy.noise_share_sigma`); the total is
        ``σ_p² · noise_adders / max(1, noise_adders − colluders)``."""
        return noise_share_sigma(
            sigma=self.sigma(intercept=intercept), parties=max(1, self.noise_adders - self.colluders)
        )

    def epoch_event(self) -> GaussianEvent:
        """What one epoch costs each data party (charged before its first noise share leaves
        it): one Gaussian release per customer, no subsampling."""
        return GaussianEvent(self.event_multiplier, 1.0, 1)

    def job_event(self, epochs: int | None = None) -> GaussianEvent:
        """What ``epochs`` (default: all planned) epochs cost each data party."""
        e = self.epochs if epochs is None else epochs
        return GaussianEvent(self.event_multiplier, 1.0, max(1, e))

    def to_json(self) -> dict[str, float | int | str]:
        return {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "clip": self.clip,
            "logit_clip": self.logit_clip,
            "noise_multiplier": self.noise_multiplier,
            "event_multiplier": self.event_multiplier,
            "sample_rate": self.sample_rate,
            "steps_per_epoch": self.steps_per_epoch,
            "rounds": self.epochs * self.steps_per_epoch,
            "epochs": self.epochs,
            "releases": self.releases,
            "parties": self.parties,
            "noise_adders": self.noise_adders,
            "colluders": self.colluders,
            "accountant": self.accountant,
            "neighbouring": self.neighbouring,
        }

    @classmethod
    def from_json(cls, data: object) -> DpPlan:
        """The plan :meth:`to_json` wrote (the arbiter, which has no data, reads the guest's).

        Raises:
            ProtocolError: a malformed or inconsistent plan.
        """
        names = [f for f in cls.__slots__ if f != "neighbouring"]
        if not isinstance(data, dict) or not set(names) <= set(data):
            raise ProtocolError("malformed DP plan")
        try:
            plan = cls(**{f: data[f] for f in names})
        except TypeError as exc:  # pragma: no cover - wrong field types
            raise ProtocolError(f"malformed DP plan: {exc}") from None
        if plan.to_json() != data:
            raise ProtocolError("inconsistent DP plan")
        return plan


def calibrate(
    *,
    epsilon: float,
    delta: float,
    rows: int,
    batch_size: int,
    epochs: int,
    parties: int,
    arbiter: bool,
    clip: float,
    logit_clip: float,
    accountant: str = "rdp",
    colluders: int = 1,
) -> DpPlan:
    """The noise for a target ``(ε, δ)`` per data party over the whole training run.

    Each epoch partitions the training rows into ``ceil(rows / batch_size)`` disjoint batches
    (:func:`epoch_partition`), and the batches are known to every party, so no amplification by
    subsampling applies: each epoch is one Gaussian mechanism per customer (parallel
    composition over the disjoint batches, McSherry 2009, Thm. 4), ``epochs`` of them in
    sequence. ``z_event`` is calibrated with :func:`fedsilo.privacy.noise_multiplier` for
    ``sample_rate=1.0, steps=epochs``; ``z = sqrt(P) · z_event`` because a customer's row
    reaches all ``P`` noised gradients of its step (each party's own included: it updates that
    party's weights, on which every later message of every party depends).

    ``arbiter``: whether a data-less key holder takes part (it adds a noise share too).
    ``colluders`` (>= 1): how many of the noise adders may pool the shares they drew — a
    gradient's owner knows its own share, so 1 is the least that protects against it — and
    still leave each gradient ``σ_p²`` (see :meth:`DpPlan.share_sigma`); it costs utility, not ε.

    Raises:
        ConfigError: bad sizes; PrivacyParameterError: the budget is too small.
    """
    if rows < 1 or batch_size < 1 or epochs < 1:
        raise ConfigError(f"rows, batch_size and epochs must be >= 1 (got {rows}, {batch_size}, {epochs})")
    if not clip > 0:
        raise ConfigError(f"clip must be > 0, got {clip!r}")
    if isinstance(colluders, bool) or not isinstance(colluders, int) or colluders < 1:
        raise ConfigError(
            f"colluders must be an integer >= 1 (each party knows its own noise share), got {colluders!r}"
        )
    if not isinstance(arbiter, bool):
        raise ConfigError(f"arbiter must be True or False, got {arbiter!r}")
    residual_bound(parties=parties, logit_clip=logit_clip)
    z_event = noise_multiplier(
        target_epsilon=epsilon, delta=delta, sample_rate=1.0, steps=epochs, accountant=accountant
    )
    return DpPlan(
        epsilon=float(epsilon),
        delta=float(delta),
        clip=float(clip),
        logit_clip=float(logit_clip),
        noise_multiplier=z_event * math.sqrt(parties),
        event_multiplier=z_event,
        sample_rate=1.0,
        steps_per_epoch=math.ceil(rows / batch_size),
        epochs=epochs,
        releases=parties,
        parties=parties,
        noise_adders=parties + (1 if arbiter else 0),
        accountant=accountant,
        colluders=colluders,
    )
