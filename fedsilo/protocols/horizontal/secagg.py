"""SecAgg+ secure sum with distributed discrete Gaussian noise: no key, dropout-tolerant.

The rounds of Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
Learning" (CCS 2017, Fig. 4, semi-honest variant), over the neighbourhood graph of Bell et al.,
"Secure Single-Server Aggregation with (Poly)Logarithmic Overhead" (CCS 2020), with the noise of
Kairouz, Liu & Steinke, "The Distributed Discrete Gaussian Mechanism" (ICML 2021) added under the
masks. The maths is :mod:`fedsilo.crypto.secagg`; the accounting
:mod:`fedsilo.privacy.distributed`. Every silo ↔ silo message is relayed (sealed) by the
aggregator, which holds no key of any kind. ``N(u)`` is silo ``u``'s neighbourhood in the public
graph (:func:`round_graph`), ``t`` the threshold::

    0  silo u     -- ADVERTISE    Advertise(c_pk, s_pk, H(b_u), cert_u, sig_u) --> aggregator
       aggregator -- CONTROL      Keys({v: (c_pk, s_pk, H(b_v), cert_v, sig_v)}) --> u in U1, v in N(u) ∩ U1
    1  silo u     -- SHARES       Shares({v: seal(b_u, s_u shares)})     --> aggregator
       aggregator -- CONTROL      Forward({u: sealed for v})             --> v in U2
    2  silo u     -- MASKED       Masked(y_u, sig_u(N(u) ∩ U2))           --> aggregator
       aggregator -- CONTROL      Survivors(U2, U3)                       --> v in U3
    3  silo v     -- CONSISTENCY  Consistency(cert_v, sig_v(U2, U3))      --> aggregator
       aggregator -- CONTROL      Unmask(self_mask, pairwise, {w: sig_w}, {u: mask list sig_u}) --> v in U3' 
    4  silo v     -- REVEAL       Reveal({u: b_u share} | {u: s_u share}) --> aggregator
       aggregator -- CONTROL      Result(sum, contributors, dropped) | Abort(reason) --> every silo

* **Advertise keys.** Each silo makes two fresh X25519 key pairs for the round: ``c`` (to seal
  the Shamir shares it sends its neighbours) and ``s`` (for the pairwise masks), and signs them
  with its identity (:mod:`fedsilo.protocols.identity`: the agent's certificate key; in-process,
  the hub's Ed25519 directory). Each neighbour checks the signature against the signer's
  certificate before sealing anything for it, so the relaying aggregator cannot substitute keys.
  U1: the silos whose keys arrived.
* **Share keys.** Each silo draws a self-mask seed ``b_u`` and Shamir-shares ``b_u`` and its
  masking secret ``s_u`` ``t``-of-``|N(u)|`` among its neighbours (share index: the neighbour's
  position in sorted ``N(u)``, plus one), each neighbour's pair of shares sealed with
  ChaCha20-Poly1305 under the HKDF of their ``c`` agreement. U2: the silos whose shares arrived.
* **Masked input.** ``y_u = x_u + PRG(b_u) + Σ_{v ∈ N(u) ∩ U2} ±PRG(s_uv)`` in ``Z_{2^b}`` (``+``
  when ``u < v``), where ``x_u`` is the fixed-point update, or under DP the rotated, scaled,
  conditionally rounded update plus the silo's discrete Gaussian share. The silo's ledger is
  charged *before* ``y_u`` leaves it, and ``y_u`` carries ``u``'s signature on the list of
  neighbours it masked with. U3: the silos whose masked input arrived (with that list equal to
  ``N(u) ∩ U2``).
* **Consistency check.** The aggregator sends every silo of U3 the survivor sets (U2, U3). A silo
  signs them only if they agree with what it saw (it is in U3, its forwarded shares came from
  exactly ``N(v) ∩ U2``), U3 holds at least ``max(quorum, ⌊(n + c)/2⌋ + 1)`` silos and is
  connected in the graph (each part of a disconnected U3 could be unmasked alone). Signers: U3'.
* **Unmasking.** Each signer ``v`` is asked, for every neighbour ``u``, for **either** its
  share of ``b_u`` (``u`` ∈ U3: its self mask must be removed) **or** its share of ``s_u``
  (``u`` ∈ U2 \\ U3: its pairwise masks with U3 did not cancel) — **never both**: with both, the
  aggregator could unmask ``u``'s input alone. The silo enforces it (:class:`ProtocolError`,
  nothing sent), answers one unmasking request per round, and only with the signatures of at
  least ``⌊(n + c)/2⌋ + 1`` silos on the survivor set it signed itself
  (:func:`required_signatures`: no second set can be certified, so every honest silo is asked
  for the shares of the same U3) and a request that follows it; and it reveals its share of
  ``b_u`` only with ``u``'s signature on having masked with exactly ``N(u) ∩ U2`` (else an
  aggregator that forwarded ``u`` only chosen shares could unmask a chosen partial sum). U4: the silos whose reveal arrived.
* **Result.** The aggregator reconstructs every needed secret from ``t`` shares (checking each
  reconstructed ``s_u`` against its advertised public key), removes the masks, decodes (and under
  DP undoes the rotation) and sends the sum to every silo.

Abort rule: when any of U1..U4 has fewer than ``t`` silos, or a silo's secret has fewer than
``t`` holders left, the round aborts *before anything is reconstructed*; the reason names how
many silos were left and ``t``. Fewer than ``t`` shares of a secret are, information
theoretically, independent of it, so an aborted round unmasks nothing.

Threat model (docs/secagg.md): an honest-but-curious aggregator colluding with fewer than ``t``
silos learns nothing about an honest silo's input beyond the sum of the honest survivors (plus,
under DP, the noise); ``t`` colluding neighbours of a silo can reconstruct both its secrets.
Against an *active* aggregator (Bonawitz et al.'s malicious variant): the advertised keys and the
survivor set are signed, the never-both rule and ``2t > k + c`` keep one silo's two secrets
apart, and the certified U3 keeps every silo's request consistent. Participation (U1..U3) is
public to the aggregator. The neighbourhood graph comes from public randomness the submitter's
job id feeds (:func:`round_graph`); the threshold needs ``c < t`` colluders *in total*, so no
choice of graph puts ``t`` colluders next to a silo.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ContextManager, Literal

import numpy as np

from fedsilo.crypto import secagg as sa
from fedsilo.errors import (
    BudgetExceededError,
    CiphertextFormatError,
    ConfigError,
    CryptoError,
    EncodingOverflowError,
    ProtocolError,
)
from fedsilo.privacy.distributed import ddg_noise_sigma, rounded_l1_bound, rounded_l2_bound
from fedsilo.privacy.events import DistributedDiscreteGaussianEvent
from fedsilo.protocols import codec
from fedsilo.protocols.channel import Channel
from fedsilo.protocols.identity import PartyIdentity, signed_message

__all__ = [
    "KIND_ADVERTISE",
    "KIND_SHARES",
    "KIND_MASKED",
    "KIND_CONSISTENCY",
    "KIND_REVEAL",
    "KIND_CONTROL",
    "KIND_WITHDRAW",
    "MESSAGE_KINDS",
    "DROP_PHASES",
    "DEFAULT_BAD_FRACTION",
    "DEFAULT_BETA",
    "RoundSecrets",
    "SecAggDP",
    "SecAggSpec",
    "SiloSecAggOutcome",
    "AggregatorSecAggOutcome",
    "secagg_spec",
    "calibrate_dp",
    "default_threshold",
    "required_signatures",
    "noised_input",
    "decode_sum",
    "advert_digest",
    "masked_digest",
    "self_mask_commitment",
    "survivors_digest",
    "round_graph",
    "rotation_seed",
    "share_key",
    "mask_seed",
    "share_aad",
    "open_share",
    "silo_secagg_sum",
    "aggregator_secagg_sum",
    "stop_secagg_silos",
]

# ---------------------------------------------------------------------------------------------
# The message kinds (the protocol's figure above)
# ---------------------------------------------------------------------------------------------
KIND_ADVERTISE = "secagg.advertise"  #: silo -> aggregator: Advertise
KIND_SHARES = "secagg.shares"  #: silo -> aggregator: Shares (sealed, one per neighbour)
KIND_MASKED = "secagg.masked"  #: silo -> aggregator: Masked
KIND_CONSISTENCY = "secagg.consistency"  #: silo -> aggregator: Consistency (its signature on the survivor set)
KIND_REVEAL = "secagg.reveal"  #: silo -> aggregator: Reveal
KIND_CONTROL = "secagg.ctl"  #: aggregator -> silo: Keys | Forward | Unmask | Result | Abort | Stop
KIND_WITHDRAW = "secagg.withdraw"  #: silo -> aggregator: its ledger refused the charge (no data)
MESSAGE_KINDS = (KIND_ADVERTISE, KIND_SHARES, KIND_MASKED, KIND_CONSISTENCY, KIND_REVEAL, KIND_CONTROL, KIND_WITHDRAW)

#: Where a silo can be made to go silent (test hook, a real missing message): before advertising
#: its keys, after advertising (no shares), after its shares (no masked input), after its masked
#: input (no signature, no unmasking shares: "dropped mid-round", recovered from the survivors),
#: after signing the survivor set (no unmasking shares).
DROP_PHASES: tuple[str, ...] = ("advertise", "shares", "masked", "reveal", "unmask")

#: Colluding plus dropped fraction the default degree is sized for (:func:`secagg.secagg_plus_degree`).
DEFAULT_BAD_FRACTION = 1.0 / 3.0
#: Conditional rounding's β (Kairouz, Liu & Steinke 2021 use e^{-0.5}; each try is accepted with
#: probability at least 1 − β, and the norm bound grows with log(1/β)).
DEFAULT_BETA = math.exp(-0.5)


# ---------------------------------------------------------------------------------------------
# Public parameters of one job's secure sums
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SecAggDP:
    """Public parameters of the distributed discrete Gaussian (grid units unless said otherwise).

    Attributes:
        clip: L2 bound ``C`` of each silo's vector, in data units (the caller clips).
        noise_sigma: σ of each silo's discrete Gaussian share, in grid steps.
        colluders: silos whose shares an adversary may subtract; each round's event counts
            ``min_contributors − colluders`` shares (:meth:`SecAggSpec.dp_event`).
        beta: conditional rounding's β.
    """

    clip: float
    noise_sigma: float
    colluders: int = 1
    beta: float = DEFAULT_BETA


@dataclass(frozen=True, slots=True)
class SecAggSpec:
    """Everything every party of a secure sum agrees on; build it with :func:`secagg_spec`.

    Attributes:
        silos: the silos of the job, sorted.
        length: values per vector.
        threshold: ``t``, shares needed to reconstruct a secret, and the fewest silos a round
            goes on with.
        degree: ``k``, neighbours per silo (``len(silos) − 1``: SecAgg's complete graph).
        granularity: fixed-point grid step (a power of two).
        bits: ring ``Z_{2^bits}``.
        value_bound: largest ``|x|`` per value without DP (data units); ``None`` under DP.
        dp: distributed discrete Gaussian parameters, or ``None`` (exact sums).
        prg: mask generator (``"aes-ctr"`` or ``"chacha20"``).
        norm_bound: under DP, the L2 bound (grid steps) of a rounded vector.
        quorum: the fewest contributions a released sum may hold when a protocol needs more than
            ``threshold`` (its exposure rule, ``min_silos``): the aggregator aborts before
            unmasking below it, and under DP the noise is sized for it. ``None``: ``threshold``.
        colluders: silos that may collude with the aggregator (under DP, ``dp.colluders``): the
            threshold and the survivor-set certificate (:func:`required_signatures`) are sized
            against them.
    """

    silos: tuple[str, ...]
    length: int
    threshold: int
    degree: int
    granularity: float
    bits: int
    value_bound: float | None = None
    dp: SecAggDP | None = None
    prg: str = "aes-ctr"
    norm_bound: float | None = None
    quorum: int | None = None
    colluders: int = 1

    @property
    def min_survivors(self) -> int:
        """Fewest signatures that certify a round's survivor set: :func:`required_signatures`."""
        return required_signatures(len(self.silos), self.colluders)

    @property
    def min_contributors(self) -> int:
        """Fewest masked inputs a released sum holds: ``max(threshold, quorum, min_survivors)``
        (the aggregator aborts below it, and an honest silo signs no smaller survivor set)."""
        return max(self.threshold, self.quorum or 0, self.min_survivors)

    @property
    def dimension(self) -> int:
        """Coordinates of a masked input: ``length``, padded to a power of two under DP."""
        return sa.padded_dimension(self.length) if self.dp is not None else self.length

    @property
    def bytes_per_value(self) -> int:
        """Wire bytes of one masked coordinate (4 up to 32 bits, else 8)."""
        return np.dtype(sa.ring_dtype(self.bits)).itemsize

    def dp_event(self) -> DistributedDiscreteGaussianEvent:
        """The DP event one round's release costs each contributing silo (``shares =
        min_contributors − colluders``: every released sum holds at least ``min_contributors``
        noised inputs, which honest silos enforce by signing no smaller survivor set)."""
        if self.dp is None or self.norm_bound is None:
            raise ConfigError("this secure sum has no DP noise (spec.dp is None)")
        d = self.dimension
        return DistributedDiscreteGaussianEvent(
            noise_sigma=self.dp.noise_sigma,
            shares=self.min_contributors - self.dp.colluders,
            l2_sensitivity=self.norm_bound,
            l1_sensitivity=rounded_l1_bound(l2_bound=self.norm_bound, dimension=d),
            dimension=d,
        )

    def mechanism(self) -> dict[str, Any]:
        """Mechanism parameters for the ledger (JSON-safe)."""
        out: dict[str, Any] = {"name": "secagg+", "threshold": self.threshold, "degree": self.degree,
                               "bits": self.bits, "granularity": self.granularity, "prg": self.prg,
                               "min_contributors": self.min_contributors}
        if self.dp is not None:
            out.update({"noise": "distributed discrete gaussian", "clip": self.dp.clip,
                        "noise_sigma_steps": self.dp.noise_sigma, "colluders": self.dp.colluders,
                        "beta": self.dp.beta, "norm_bound_steps": self.norm_bound,
                        "rotation": "randomized walsh-hadamard"})
        return out


def default_threshold(degree: int, colluders: int = 0) -> int:
    """``⌊(k + c)/2⌋ + 1`` for ``c`` colluding silos: the smallest t with ``2t > k + c``.

    Without the consistency round of Bonawitz et al.'s malicious-server protocol, an
    aggregator can tell two disjoint sets of honest neighbours different stories about one
    silo (dropped / survived) and collect t shares of each of its two secrets; with ``c``
    colluders that needs ``2t <= k + c``, so ``2t > k + c`` rules it out."""
    return max(2, (int(degree) + int(colluders)) // 2 + 1)


def required_signatures(silos: int, colluders: int) -> int:
    """``⌊(n + c)/2⌋ + 1``: signatures that certify one round's survivor set (U2, U3).

    Every honest silo signs one survivor set per round. Two different certified sets would need
    two signer sets of more than ``(n + c)/2`` silos each, sharing at most the ``c`` colluders
    (who sign anything): more than ``n`` silos. So an active aggregator can certify at most one
    set, and every honest silo it asks to unmask sees the same U2 and U3 (the consistency check
    of Bonawitz et al. 2017, §4, with a majority in place of their ``t > 2n/3`` rule)."""
    return (int(silos) + int(colluders)) // 2 + 1


def advert_digest(*, job: str, round: int, silo: str, c: bytes, s: bytes, commit: bytes) -> bytes:
    """What a silo signs when it advertises its round keys (Bonawitz et al. 2017, Fig. 4, round 0)
    and its commitment ``SHA-256(b_u)`` to its self-mask seed (so a corrupt share is detected)."""
    return signed_message(purpose="secagg-advertise", job=job, round=round, signer=silo, content=[c, s, commit])


def masked_digest(*, job: str, round: int, silo: str, masked_with: Sequence[str]) -> bytes:
    """What a silo signs with its masked input: the neighbours it added pairwise masks with.

    A holder reveals its share of ``b_u`` only if ``u`` masked with exactly ``N(u) ∩ U2`` of the
    certified survivor set: an aggregator that forwarded ``u`` only some shares (so that ``u``'s
    input carries masks with chosen silos only) cannot have ``u``'s self mask removed."""
    return signed_message(purpose="secagg-masked", job=job, round=round, signer=silo, content=sorted(masked_with))


def self_mask_commitment(seed: bytes) -> bytes:
    """``SHA-256`` of a self-mask seed (advertised, signed; checked after reconstruction)."""
    return hashlib.sha256(b"fedsilo-secagg-self-mask" + seed).digest()


def survivors_digest(*, job: str, round: int, silo: str, u2: Sequence[str], u3: Sequence[str]) -> bytes:
    """What a silo signs when it accepts a round's survivor set (Bonawitz et al. 2017, Fig. 4, round 3)."""
    return signed_message(purpose="secagg-survivors", job=job, round=round, signer=silo,
                          content=[sorted(u2), sorted(u3)])


def connected(graph: Mapping[str, Sequence[str]], nodes: Sequence[str]) -> bool:
    """Whether ``nodes`` induce a connected subgraph of ``graph``.

    A sum over survivors that fall apart into components would let the aggregator unmask each
    component's sum on its own (no pairwise mask joins two components): Bell et al. 2020 need the
    honest survivors connected."""
    left = set(nodes)
    if not left:
        return False
    stack = [min(left)]
    seen = {stack[0]}
    while stack:
        u = stack.pop()
        for v in graph[u]:
            if v in left and v not in seen:
                seen.add(v)
                stack.append(v)
    return seen == left


def secagg_spec(
    *,
    silos: Sequence[str],
    length: int,
    granularity: float,
    threshold: int | None = None,
    value_bound: float | None = None,
    dp: SecAggDP | None = None,
    degree: int | None = None,
    bad_fraction: float = DEFAULT_BAD_FRACTION,
    prg: str = "aes-ctr",
    quorum: int | None = None,
    colluders: int = 1,
) -> SecAggSpec:
    """Validate and complete the public parameters (degree, ring bits, the rounded norm bound).

    Exactly one of ``value_bound`` (exact sums of ``|x| <= value_bound``) and ``dp`` is given.
    Ring bits: without DP from ``value_bound``; under DP from the rounded norm bound (a coordinate
    is at most the vector's L2 norm) and the noise, for ``len(silos)`` summands
    (:func:`fedsilo.crypto.secagg.ring_bits`).

    Raises:
        ConfigError: naming the parameter (a threshold outside ``[2, degree]``, ``colluders >=
            threshold``, more than 64 ring bits, ...).
    """
    names = tuple(sorted(silos))
    n = len(names)
    if n < 2 or len(set(names)) != n:
        raise ConfigError(f"a secure sum needs at least 2 distinct silos, got {list(silos)!r}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ConfigError(f"length must be an integer >= 1, got {length!r}")
    if prg not in sa.PRGS:
        raise ConfigError(f"unknown mask generator {prg!r}; expected one of {', '.join(sa.PRGS)}")
    if (value_bound is None) == (dp is None):
        raise ConfigError("give exactly one of value_bound (exact sums) and dp (distributed discrete Gaussian)")
    k = sa.secagg_plus_degree(n, bad_fraction=bad_fraction) if degree is None else degree
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n - 1:
        raise ConfigError(f"degree must be an integer in [1, {n - 1}] for {n} silos, got {degree!r}")
    if k < n - 1 and k % 2:
        raise ConfigError(f"degree must be even below {n - 1} (Harary graph), got {k}")
    c = dp.colluders if isinstance(dp, SecAggDP) else colluders
    if isinstance(c, bool) or not isinstance(c, int) or c < 0:
        raise ConfigError(f"colluders must be an integer >= 0, got {c!r}")
    t = default_threshold(k, c) if threshold is None else threshold
    if isinstance(t, bool) or not isinstance(t, int) or not 2 <= t <= k:
        raise ConfigError(
            f"threshold must be an integer in [2, degree = {k}], got {t!r}"
            + (f" (the default for {c} colluder(s) among {k} neighbours: add silos or lower colluders)"
               if threshold is None else "")
        )
    if c >= t or 2 * t <= k + c:
        raise ConfigError(
            f"threshold {t} with {c} colluder(s) among {k} neighbours: SecAgg+ needs colluders < t and "
            f"2t > k + colluders (else the aggregator and the colluders could rebuild a silo's masks); "
            f"use threshold >= {default_threshold(k, c)} or fewer colluders"
        )
    if quorum is not None and (isinstance(quorum, bool) or not isinstance(quorum, int) or not 1 <= quorum <= n):
        raise ConfigError(f"quorum must be an integer in [1, {n}] for {n} silos, got {quorum!r}")
    q = None if quorum is None or quorum <= t else quorum
    g = sa.check_granularity(granularity)
    if dp is None:
        assert value_bound is not None
        bits = sa.fixed_point_bits(value_bound=value_bound, granularity=g, summands=n)
        return SecAggSpec(names, length, t, k, g, bits, value_bound=float(value_bound), prg=prg, quorum=q, colluders=c)
    if not isinstance(dp, SecAggDP):
        raise ConfigError(f"dp must be a SecAggDP, got {type(dp).__name__}")
    least = max(t, q or 0)
    if isinstance(dp.colluders, bool) or not isinstance(dp.colluders, int) or not 0 <= dp.colluders < least:
        raise ConfigError(f"colluders must be an integer in [0, threshold = {least}), got {dp.colluders!r}")
    if not (math.isfinite(dp.clip) and dp.clip > 0) or not (math.isfinite(dp.noise_sigma) and dp.noise_sigma >= 0.5):
        raise ConfigError(f"dp needs clip > 0 and noise_sigma >= 0.5 grid steps, got {dp!r}")
    sa.check_granularity(g)
    dim = sa.padded_dimension(length)
    bound = rounded_l2_bound(norm=dp.clip / g, dimension=dim, beta=dp.beta)
    bits = sa.ring_bits(value_bound=math.floor(bound), summands=n, noise_sigma=dp.noise_sigma)
    return SecAggSpec(names, length, t, k, g, bits, dp=dp, prg=prg, norm_bound=bound, quorum=q, colluders=c)


def calibrate_dp(
    *,
    epsilon: float,
    delta: float,
    rounds: int,
    clip: float,
    granularity: float,
    length: int,
    threshold: int,
    colluders: int = 1,
    beta: float = DEFAULT_BETA,
) -> SecAggDP:
    """The per-share σ meeting ``epsilon`` over ``rounds`` secure sums (RDP, Proposition 14 of
    Kairouz, Liu & Steinke 2021, ``threshold − colluders`` shares counted; callers pass the spec's
    ``min_contributors`` as ``threshold``)."""
    if isinstance(colluders, bool) or not isinstance(colluders, int) or not 0 <= colluders < threshold:
        raise ConfigError(f"colluders must be an integer in [0, threshold = {threshold}), got {colluders!r}")
    dim = sa.padded_dimension(length)
    l2 = rounded_l2_bound(norm=clip / granularity, dimension=dim, beta=beta)
    sigma = ddg_noise_sigma(target_epsilon=epsilon, delta=delta, steps=rounds, shares=threshold - colluders,
                            l2_sensitivity=l2, l1_sensitivity=rounded_l1_bound(l2_bound=l2, dimension=dim),
                            dimension=dim)
    return SecAggDP(clip=float(clip), noise_sigma=sigma, colluders=colluders, beta=beta)


def round_graph(spec: SecAggSpec, *, job: str, round: int) -> dict[str, tuple[str, ...]]:
    """The neighbourhood graph of one round, from public randomness (every party computes it)."""
    return sa.neighbourhood_graph(spec.silos, degree=spec.degree, seed=sa.public_seed(job=job, round=round, purpose="graph"))


def rotation_seed(*, job: str, round: int) -> bytes:
    """The public seed of one round's random sign flip."""
    return sa.public_seed(job=job, round=round, purpose="rotation")


# ---------------------------------------------------------------------------------------------
# Pairwise keys and sealed shares (used by silos, the aggregator's recovery and audit tests)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, repr=False)
class RoundSecrets:
    """One silo's secrets for one round: two X25519 key pairs and the self-mask seed.

    ``fresh()`` draws them from the OS CSPRNG (what production uses); passing them in is how a
    test plays a colluding silo that knows its own secrets.
    """

    c: sa.AgreementKey
    s: sa.AgreementKey
    self_seed: bytes

    @classmethod
    def fresh(cls) -> "RoundSecrets":
        return cls(sa.AgreementKey.generate(), sa.AgreementKey.generate(), os.urandom(sa.SEED_BYTES))

    def __repr__(self) -> str:
        return f"<RoundSecrets c={self.c!r} s={self.s!r} (self seed hidden)>"


def share_key(c: sa.AgreementKey, peer_c_public: bytes, *, job: str, round: int, me: str, peer: str) -> bytes:
    """The key that seals the Shamir shares between ``me`` and ``peer`` (both directions)."""
    return sa.derive_seed(c.agree(peer_c_public), job=job, round=round, a=me, b=peer, purpose="share-key")


def mask_seed(s: sa.AgreementKey, peer_s_public: bytes, *, job: str, round: int, me: str, peer: str) -> bytes:
    """The seed of the pairwise mask between ``me`` and ``peer``."""
    return sa.derive_seed(s.agree(peer_s_public), job=job, round=round, a=me, b=peer, purpose="mask")


def share_aad(*, job: str, round: int, sender: str, recipient: str) -> bytes:
    """Associated data of a sealed share: binds job, round and direction."""
    return codec.encode(["secagg-share", job, int(round), sender, recipient])


def _seal_share(key: bytes, *, job: str, round: int, sender: str, recipient: str, index: int,
                self_share: bytes, key_share: bytes) -> bytes:
    plain = codec.encode({"from": sender, "to": recipient, "index": index, "b": self_share, "s": key_share})
    return sa.seal(key, plain, aad=share_aad(job=job, round=round, sender=sender, recipient=recipient))


def open_share(key: bytes, blob: bytes, *, job: str, round: int, sender: str, recipient: str) -> tuple[int, bytes, bytes]:
    """``(index, share of b_sender, share of s_sender)`` from a sealed share; ProtocolError if it
    does not authenticate or is not what ``sender`` should have sealed for ``recipient``."""
    try:
        plain = codec.decode(sa.unseal(key, blob, aad=share_aad(job=job, round=round, sender=sender, recipient=recipient)))
    except (CryptoError, ProtocolError) as exc:
        raise ProtocolError(f"{recipient}: the sealed shares from {sender!r} do not open: {exc}") from None
    ok = (isinstance(plain, dict) and plain.get("from") == sender and plain.get("to") == recipient
          and isinstance(plain.get("index"), int) and isinstance(plain.get("b"), bytes) and len(plain["b"]) == 32
          and isinstance(plain.get("s"), bytes) and len(plain["s"]) == 32)
    if not ok:
        raise ProtocolError(f"{recipient}: malformed sealed shares from {sender!r}")
    return plain["index"], plain["b"], plain["s"]


def _holder_index(graph: Mapping[str, tuple[str, ...]], owner: str, holder: str) -> int:
    """Shamir index of ``holder``'s share of ``owner``'s secrets: position in sorted N(owner), + 1."""
    return graph[owner].index(holder) + 1


def _sign(me: str, peer: str) -> int:
    """``+1`` when ``me < peer``: the smaller name adds the pairwise mask, the larger subtracts it."""
    return 1 if me < peer else -1


# ---------------------------------------------------------------------------------------------
# Control messages (aggregator -> silo)
# ---------------------------------------------------------------------------------------------
def _ctl(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, **fields}


def _names(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _expect_ctl(channel: Channel, aggregator: str, round: int, timeout: float) -> dict[str, Any]:
    payload = channel.recv(aggregator, KIND_CONTROL, round=round, timeout=timeout)
    if not isinstance(payload, dict) or payload.get("type") not in ("keys", "forward", "survivors", "unmask", "result", "abort", "stop"):
        raise ProtocolError(f"{channel.party}: round {round}: malformed control message from {aggregator!r}")
    return payload


def _identity(channel: Channel) -> PartyIdentity:
    """The party's signing identity; SecAgg+ relays keys and survivor sets through the aggregator,
    so without one nothing could stop the relay from substituting them."""
    ident = channel.identity
    if ident is None:
        raise ConfigError(
            f"{channel.party}: a keyless secure sum needs signing identities (the silos' certificates): this "
            "channel has none (plaintext transport); run the job with TLS"
        )
    return ident


def _signed_sets(payload: Any, silos: Sequence[str]) -> tuple[list[str], list[str]] | None:
    """``(U2, U3)`` from a survivors message: sorted, distinct silos of the sum, ``U3 ⊆ U2``."""
    if not isinstance(payload, dict):
        return None
    u2, u3 = payload.get("u2"), payload.get("u3")
    if not (_names(u2) and _names(u3)) or u2 != sorted(set(u2)) or u3 != sorted(set(u3)):
        return None
    if not set(u3) <= set(u2) <= set(silos):
        return None
    return u2, u3


def _ring_bytes(ring: np.ndarray, bits: int) -> bytes:
    return np.ascontiguousarray(ring, dtype=np.dtype(sa.ring_dtype(bits)).newbyteorder("<")).tobytes()


def _ring_from(data: Any, *, bits: int, length: int) -> np.ndarray | None:
    """A masked input from the wire, or None if it is not exactly ``length`` ring words."""
    dt = np.dtype(sa.ring_dtype(bits))
    if not isinstance(data, bytes) or len(data) != length * dt.itemsize:
        return None
    ring = np.frombuffer(data, dtype=dt.newbyteorder("<")).astype(dt)
    if bits < 8 * dt.itemsize and np.any(ring >> dt.type(bits)):
        return None  # a word outside Z_{2^b}
    return ring


# ---------------------------------------------------------------------------------------------
# Outcomes
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SiloSecAggOutcome:
    """How one secure sum ended for one silo.

    ``revealed`` maps each neighbour this silo sent a share of to what it revealed
    (``"self-mask"`` or ``"pairwise"``), never both. ``"withdrawn"``: the ledger refused the
    charge, so no masked input left the silo (the round goes on without it, as after a dropout).
    """

    status: Literal["ok", "aborted", "dropped", "withdrawn", "stopped"]
    total: np.ndarray | None = None
    contributors: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    contributed: bool = False
    charged: bool = False
    reason: str = ""
    revealed: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AggregatorSecAggOutcome:
    """How one secure sum ended on the aggregator.

    ``total`` is the released (under DP: noised) sum; ``stage`` where an abort happened
    (``"advertise"``, ``"shares"``, ``"masked"``, ``"consistency"``, ``"reveal"``); ``recovered`` the dropped
    silos whose pairwise masks were removed from their masking secret.
    """

    status: Literal["ok", "aborted"]
    total: np.ndarray | None = None
    contributors: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    recovered: tuple[str, ...] = ()
    stage: str = ""
    reason: str = ""
    #: silos that withdrew this round (their ledger refused the charge; no masked input)
    withdrawn: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------
# Silo side
# ---------------------------------------------------------------------------------------------
def noised_input(spec: SecAggSpec, values: np.ndarray, *, job: str, round: int, stream: sa.SecretStream) -> np.ndarray:
    """The silo's vector in ``Z_{2^b}`` before masking: fixed point, or under DP the rotated,
    scaled, conditionally rounded vector plus the silo's discrete Gaussian share (public so that
    the privacy audit runs exactly this).

    Raises:
        ConfigError: ``spec`` is not a :class:`SecAggSpec`, ``values`` not ``spec.length`` finite
            real numbers, or (under DP) their L2 norm above ``spec.dp.clip``; ``stream`` not a
            :class:`~fedsilo.crypto.secagg.SecretStream`.
        EncodingOverflowError: without DP, a value above ``spec.value_bound``.
    """
    if not isinstance(spec, SecAggSpec):
        raise ConfigError(f"noised_input: spec must be a SecAggSpec (secagg_spec(...)), got {type(spec).__name__}")
    if not isinstance(stream, sa.SecretStream):
        raise ConfigError(f"noised_input: stream must be a SecretStream (fedsilo.crypto.secagg.secret_stream()), "
                          f"got {type(stream).__name__}")
    x = _check_values(spec, values, "noised_input")
    if spec.dp is None:
        return sa.encode_fixed(x, granularity=spec.granularity, bits=spec.bits)
    assert spec.norm_bound is not None
    rotated = sa.hadamard_rotate(x, seed=rotation_seed(job=job, round=round)) / spec.granularity
    rounded = sa.conditional_round(rotated, norm_bound=spec.norm_bound, stream=stream)
    noise = sa.discrete_gaussian_integers(sigma=spec.dp.noise_sigma, size=rounded.shape[0], stream=stream)
    return sa.encode_integers(rounded + noise, bits=spec.bits)


def _masked_input(channel: Channel, spec: SecAggSpec, x: np.ndarray, keys: RoundSecrets,
                  held: Mapping[str, Any], seeds: Mapping[str, bytes], ident: PartyIdentity, *,
                  aggregator: str, round: int, stream: sa.SecretStream) -> None:
    """Encode (and noise), add the self mask and the pairwise masks with every neighbour that sent
    shares (``held``), send ``y_u`` with the signed list of those neighbours."""
    me, job = channel.party, channel.job
    ring = noised_input(spec, x, job=job, round=round, stream=stream)
    ring += sa.expand_mask(keys.self_seed, ring.shape[0], bits=spec.bits, prg=spec.prg)  # type: ignore[arg-type]
    for v in sorted(held):
        m = sa.expand_mask(seeds[v], ring.shape[0], bits=spec.bits, prg=spec.prg)  # type: ignore[arg-type]
        if _sign(me, v) > 0:
            ring += m
        else:
            ring -= m
    sa.ring_reduce(ring, bits=spec.bits)
    signature = ident.sign(masked_digest(job=job, round=round, silo=me, masked_with=sorted(held)))
    channel.send(aggregator, KIND_MASKED, {"y": _ring_bytes(ring, spec.bits), "sig": signature}, round=round)


def decode_sum(spec: SecAggSpec, total: np.ndarray, *, job: str, round: int) -> np.ndarray:
    """The released sum from the unmasked total in ``Z_{2^b}`` (reduced in place): exact fixed
    point, or under DP the signed integers times the grid with the round's rotation undone.

    Raises:
        ConfigError: ``spec`` is not a :class:`SecAggSpec`, or ``total`` is not a writable
            ``spec.dimension``-long vector of the ring's unsigned dtype (``uint32`` up to 32 bits,
            else ``uint64``) with every word in ``Z_{2^bits}``.
    """
    if not isinstance(spec, SecAggSpec):
        raise ConfigError(f"decode_sum: spec must be a SecAggSpec (secagg_spec(...)), got {type(spec).__name__}")
    dt = np.dtype(sa.ring_dtype(spec.bits))
    if not isinstance(total, np.ndarray) or total.dtype != dt or total.shape != (spec.dimension,):
        got = f"{total.dtype} array of shape {total.shape}" if isinstance(total, np.ndarray) else type(total).__name__
        raise ConfigError(f"decode_sum: total must be a {dt} vector of {spec.dimension} ring words "
                          f"(Z_2^{spec.bits}), got a {got}")
    if not total.flags.writeable:
        raise ConfigError("decode_sum: total must be writable (it is reduced in place)")
    sa.ring_reduce(total, bits=spec.bits)
    if spec.dp is None:
        return sa.decode_fixed(total, granularity=spec.granularity, bits=spec.bits)
    steps = sa.decode_integers(total, bits=spec.bits).astype(np.float64) * spec.granularity
    return sa.hadamard_unrotate(steps, seed=rotation_seed(job=job, round=round), dim=spec.length)


def _check_values(spec: SecAggSpec, values: Any, me: str) -> np.ndarray:
    """Check the silo's vector before anything is charged or sent: ``spec.length`` finite real
    numbers (bool, complex, object and string arrays refused, not cast), within the clip or the
    value bound."""
    try:
        raw = np.asarray(values) if not isinstance(values, (str, bytes)) else np.asarray(None, dtype=object)
    except (TypeError, ValueError):  # a ragged sequence
        raise ConfigError(f"{me}: the values of a secure sum must be a flat vector of numbers") from None
    if raw.dtype.kind not in "iuf":
        raise ConfigError(f"{me}: the values of a secure sum must be real numbers (int or float), got dtype {raw.dtype}")
    x = raw.astype(np.float64, copy=False)
    if x.shape != (spec.length,):
        raise ConfigError(f"{me}: expected {spec.length} values, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ConfigError(f"{me}: the values of a secure sum contain NaN or infinite values")
    if spec.dp is not None:
        if float(np.linalg.norm(x)) > spec.dp.clip * (1.0 + 1e-12):
            raise ConfigError(f"{me}: the vector's L2 norm exceeds the clip {spec.dp.clip:g}; clip it before the secure sum")
    elif spec.value_bound is not None and float(np.max(np.abs(x), initial=0.0)) > spec.value_bound:
        raise EncodingOverflowError(f"{me}: a value exceeds the secure sum's value_bound {spec.value_bound:g}")
    return x


def silo_secagg_sum(
    channel: Channel,
    *,
    round: int,
    aggregator: str,
    spec: SecAggSpec,
    values: Any,
    timeout: float,
    charge: Callable[[], ContextManager[Any]] | None = None,
    drop: str | None = None,
    stream: sa.SecretStream | None = None,
    round_secrets: RoundSecrets | None = None,
) -> SiloSecAggOutcome:
    """A silo's side of one SecAgg+ sum (see the module docstring for the rounds).

    Args:
        values: this silo's vector of ``spec.length`` values (under DP already clipped to
            ``spec.dp.clip``; checked before anything is charged or sent).
        charge: the ledger charge (a context manager raising
            :class:`~fedsilo.errors.BudgetExceededError`), entered before the masked input
            leaves the silo; ``None`` without DP. A refused charge sends nothing more and returns
            ``"withdrawn"``.
        drop: test hook, one of :data:`DROP_PHASES`: go silent there (returns ``"dropped"``).
        stream: secret randomness for the noise and the rounding (default: a fresh
            :func:`~fedsilo.crypto.secagg.secret_stream`, the OS CSPRNG).
        round_secrets: this round's key pairs and self-mask seed (default: fresh from the OS CSPRNG).

    Raises:
        ProtocolError: the aggregator asked for both shares of one peer, for shares this silo does
            not hold, or sent malformed or unauthenticated material; nothing further was sent.
        ConfigError / EncodingOverflowError: bad values (nothing sent).
    """
    if drop is not None and drop not in DROP_PHASES:
        raise ConfigError(f"drop phase must be one of {DROP_PHASES}, got {drop!r}")
    me, job = channel.party, channel.job
    if me not in spec.silos:
        raise ConfigError(f"{me} is not a silo of this secure sum ({', '.join(spec.silos)})")
    if aggregator in spec.silos:
        raise ConfigError(f"{me}: the aggregator {aggregator!r} must not be a silo of the secure sum")
    x = _check_values(spec, values, me)
    graph = round_graph(spec, job=job, round=round)
    mine = graph[me]
    if drop == "advertise":
        return SiloSecAggOutcome("dropped", reason="dropped before advertising its keys (test hook)")
    ident = _identity(channel)
    keys = round_secrets if round_secrets is not None else RoundSecrets.fresh()
    commit = self_mask_commitment(keys.self_seed)
    signature = ident.sign(advert_digest(job=job, round=round, silo=me, c=keys.c.public, s=keys.s.public, commit=commit))
    channel.send(aggregator, KIND_ADVERTISE, {"c": keys.c.public, "s": keys.s.public, "commit": commit,
                                              "cred": ident.credential, "sig": signature}, round=round)
    if drop == "shares":
        return SiloSecAggOutcome("dropped", reason="dropped after advertising its keys (test hook)")

    def finish(msg: dict[str, Any], *, contributed: bool = False, charged: bool = False,
               revealed: Mapping[str, str] | None = None) -> SiloSecAggOutcome:
        if msg["type"] in ("abort", "stop"):
            return SiloSecAggOutcome("aborted" if msg["type"] == "abort" else "stopped", contributed=contributed,
                                     charged=charged, reason=str(msg.get("reason", "")), revealed=dict(revealed or {}))
        total = msg.get("total")
        if msg["type"] != "result" or not isinstance(total, np.ndarray) or total.shape != (spec.length,) \
                or not np.issubdtype(total.dtype, np.floating) or not bool(np.all(np.isfinite(total))) \
                or not _names(msg.get("contributors")) or not _names(msg.get("dropped")) \
                or not set(msg["contributors"]) | set(msg["dropped"]) <= set(spec.silos):
            raise ProtocolError(f"{me}: round {round}: unexpected {msg['type']!r} message from {aggregator!r}")
        return SiloSecAggOutcome("ok", total=total.astype(np.float64), contributors=tuple(msg["contributors"]),
                                 dropped=tuple(msg["dropped"]), contributed=contributed, charged=charged,
                                 revealed=dict(revealed or {}))

    # -- round 1: share keys ----------------------------------------------------------------------
    msg = _expect_ctl(channel, aggregator, round, timeout)
    if msg["type"] != "keys":
        return finish(msg)
    peers = msg.get("peers")
    if not isinstance(peers, dict) or not set(peers) <= set(mine):
        raise ProtocolError(f"{me}: round {round}: the aggregator sent keys of silos that are not its neighbours")
    pub: dict[str, tuple[bytes, bytes]] = {}
    creds: dict[str, bytes] = {}
    for v, item in peers.items():
        if not (isinstance(item, list) and len(item) == 5 and all(isinstance(p, bytes) for p in item)
                and len(item[0]) == 32 and len(item[1]) == 32 and len(item[2]) == 32):
            raise ProtocolError(f"{me}: round {round}: malformed public keys of {v!r}")
        # the keys came through the aggregator: only v's own signature makes them v's (an
        # aggregator that substituted them would hold the keys sealing v's shares and masks)
        ident.verify(v, item[3], advert_digest(job=job, round=round, silo=v, c=item[0], s=item[1], commit=item[2]),
                     item[4])
        pub[v] = (item[0], item[1])
        creds[v] = item[3]
    if len(pub) + 1 < spec.threshold:  # U1, itself included (Bonawitz et al. 2017, Fig. 4)
        raise ProtocolError(f"{me}: round {round}: only {len(pub) + 1} silos advertised keys (threshold "
                            f"t = {spec.threshold}): the round is refused before anything is shared")
    try:
        # both agreements now, before anything is shared: a signed but unusable (low-order) key
        # stops this silo here, not after its ledger was charged
        sealing = {v: share_key(keys.c, pub[v][0], job=job, round=round, me=me, peer=v) for v in pub}
        seeds = {v: mask_seed(keys.s, pub[v][1], job=job, round=round, me=me, peer=v) for v in pub}
    except (CryptoError, CiphertextFormatError) as exc:
        raise ProtocolError(f"{me}: round {round}: unusable public key: {exc}") from None
    b_shares = sa.share_secret(keys.self_seed, threshold=spec.threshold, holders=len(mine))
    s_shares = sa.share_secret(keys.s.export_secret(), threshold=spec.threshold, holders=len(mine))
    sealed = {}
    for v in sorted(pub):
        i = _holder_index(graph, me, v)
        sealed[v] = _seal_share(sealing[v], job=job, round=round, sender=me, recipient=v, index=i,
                                self_share=b_shares[i - 1][1], key_share=s_shares[i - 1][1])
    del b_shares, s_shares
    channel.send(aggregator, KIND_SHARES, {"sealed": sealed}, round=round)
    if drop == "masked":
        return SiloSecAggOutcome("dropped", reason="dropped after sending its shares (test hook)")

    # -- round 2: masked input ----------------------------------------------------------------------
    msg = _expect_ctl(channel, aggregator, round, timeout)
    if msg["type"] != "forward":
        return finish(msg)
    forwarded = msg.get("sealed")
    if not isinstance(forwarded, dict) or not set(forwarded) <= set(pub):
        raise ProtocolError(f"{me}: round {round}: the aggregator forwarded shares from silos that are not its neighbours")
    held: dict[str, tuple[int, bytes, bytes]] = {}
    for u, blob in forwarded.items():
        index, b_share, s_share = open_share(sealing[u], blob, job=job, round=round, sender=u, recipient=me)
        if index != _holder_index(graph, u, me):
            raise ProtocolError(f"{me}: round {round}: {u!r} sealed shares with the wrong index")
        held[u] = (index, b_share, s_share)
    if len(held) + 1 < spec.threshold:
        # U2, itself included: with fewer pairwise masks its masked input could be opened with
        # its self-mask shares alone (Bonawitz et al. 2017, Fig. 4)
        raise ProtocolError(f"{me}: round {round}: shares from only {len(held) + 1} silos were forwarded "
                            f"(threshold t = {spec.threshold}): the masked input is not sent")
    rng = stream if stream is not None else sa.secret_stream()
    charged = False
    try:
        with charge() if charge is not None else contextlib.nullcontext():
            charged = charge is not None
            _masked_input(channel, spec, x, keys, held, seeds, ident, aggregator=aggregator, round=round, stream=rng)
    except BudgetExceededError as exc:
        # nothing of this silo's data left it; to the aggregator it is a silo that dropped after
        # sharing, whose pairwise masks come off through its reconstructed key. It says so (no
        # data in the message) so the aggregator stops waiting for it in later rounds.
        channel.send(aggregator, KIND_WITHDRAW, {"withdraw": True}, round=round)
        return SiloSecAggOutcome("withdrawn", reason=str(exc))
    if drop == "reveal":
        return SiloSecAggOutcome("dropped", contributed=True, charged=charged,
                                 reason="dropped after sending its masked input (test hook)")

    # -- round 3: consistency check (sign the survivor set) ---------------------------------------------
    msg = _expect_ctl(channel, aggregator, round, timeout)
    if msg["type"] != "survivors":
        return finish(msg, contributed=True, charged=charged)
    sets = _signed_sets(msg, spec.silos)
    if sets is None:
        raise ProtocolError(f"{me}: round {round}: malformed survivor set from {aggregator!r}")
    u2, u3 = sets
    if me not in u3:
        raise ProtocolError(f"{me}: round {round}: the survivor set leaves out {me}, whose masked input was sent; refusing")
    if set(held) != set(mine) & set(u2):
        raise ProtocolError(f"{me}: round {round}: the survivor set disagrees with the shares forwarded to {me}; refusing")
    least = max(spec.min_contributors, spec.min_survivors)
    if len(u3) < least:
        raise ProtocolError(f"{me}: round {round}: a survivor set of {len(u3)} silos, below the {least} a released "
                            "sum needs; refusing")
    if not connected(graph, u3):
        raise ProtocolError(f"{me}: round {round}: the survivors fall apart in the neighbourhood graph (each part's "
                            "sum could be unmasked alone); refusing")
    channel.send(aggregator, KIND_CONSISTENCY, {"cred": ident.credential, "sig": ident.sign(
        survivors_digest(job=job, round=round, silo=me, u2=u2, u3=u3))}, round=round)
    if drop == "unmask":
        return SiloSecAggOutcome("dropped", contributed=True, charged=charged,
                                 reason="dropped after signing the survivor set (test hook)")

    # -- round 4: unmasking ----------------------------------------------------------------------------
    msg = _expect_ctl(channel, aggregator, round, timeout)
    if msg["type"] != "unmask":
        return finish(msg, contributed=True, charged=charged)
    signatures = msg.get("signatures")
    if not isinstance(signatures, dict) or not set(signatures) <= set(u3):
        raise ProtocolError(f"{me}: round {round}: the unmasking request carries signatures of silos outside the "
                            "survivor set")
    for w, item in sorted(signatures.items()):
        if not (isinstance(item, list) and len(item) == 2):
            raise ProtocolError(f"{me}: round {round}: malformed signature of {w!r}")
        ident.verify(w, item[0], survivors_digest(job=job, round=round, silo=w, u2=u2, u3=u3), item[1])
    if len(signatures) < spec.min_survivors:
        raise ProtocolError(f"{me}: round {round}: the survivor set is signed by {len(signatures)} silos, fewer than the "
                            f"{spec.min_survivors} that certify it; refusing, nothing was sent")
    want_self, want_pair = msg.get("self_mask"), msg.get("pairwise")
    if not _names(want_self) or not _names(want_pair):
        raise ProtocolError(f"{me}: round {round}: malformed unmasking request from {aggregator!r}")
    both = sorted(set(want_self) & set(want_pair))
    if both:
        # the safety rule: with both shares of one peer the aggregator could remove that peer's
        # self mask *and* its pairwise masks, i.e. read its input alone
        raise ProtocolError(
            f"{me}: round {round}: the aggregator {aggregator!r} asked for both the self-mask and the pairwise "
            f"share of {', '.join(both)}; refusing (SecAgg never reveals both for one silo), nothing was sent"
        )
    unknown = sorted((set(want_self) | set(want_pair)) - set(held))
    if unknown:
        raise ProtocolError(f"{me}: round {round}: the aggregator asked for shares of {', '.join(unknown)}, which {me} does not hold")
    if len(set(want_self)) != len(want_self) or len(set(want_pair)) != len(want_pair):
        raise ProtocolError(f"{me}: round {round}: the unmasking request repeats a silo")
    if sorted(want_self) != sorted(set(mine) & set(u3)) or sorted(want_pair) != sorted(set(mine) & (set(u2) - set(u3))):
        raise ProtocolError(f"{me}: round {round}: the unmasking request does not follow the certified survivor set; "
                            "refusing, nothing was sent")
    masked_with = msg.get("masked_with")
    if not isinstance(masked_with, dict) or not set(want_self) <= set(masked_with):
        raise ProtocolError(f"{me}: round {round}: the unmasking request lacks the signed mask lists of the silos whose "
                            "self masks it asks for; refusing, nothing was sent")
    for u in sorted(want_self):
        # u's self mask comes off only if u masked with all of N(u) ∩ U2 (certified): else the
        # sum of chosen silos, or u's input, could be unmasked
        ident.verify(u, creds[u], masked_digest(job=job, round=round, silo=u, masked_with=sorted(set(graph[u]) & set(u2))),
                     masked_with[u] if isinstance(masked_with[u], bytes) else b"")
    reveal = {"self_mask": {u: held[u][1] for u in want_self}, "pairwise": {u: held[u][2] for u in want_pair}}
    revealed = {**{u: "self-mask" for u in want_self}, **{u: "pairwise" for u in want_pair}}
    channel.send(aggregator, KIND_REVEAL, reveal, round=round)

    # -- the result ------------------------------------------------------------------------------------------
    msg = _expect_ctl(channel, aggregator, round, timeout)
    if msg["type"] not in ("result", "abort", "stop"):
        raise ProtocolError(f"{me}: round {round}: a second {msg['type']!r} request from {aggregator!r}; each is answered once")
    return finish(msg, contributed=True, charged=charged, revealed=revealed)


# ---------------------------------------------------------------------------------------------
# Aggregator side
# ---------------------------------------------------------------------------------------------
def _parse_advertise(payload: Any, *, silo: str, job: str, round: int,
                     ident: PartyIdentity | None) -> tuple[bytes, bytes, bytes, bytes, bytes] | None:
    """``(c_pk, s_pk, commitment, credential, signature)`` of a well-formed advert with usable keys
    whose signature verifies (checked here too when the aggregator has an identity), else None:
    one silo's bad advert drops that silo instead of derailing its neighbours."""
    if not isinstance(payload, dict):
        return None
    c, s, commit = payload.get("c"), payload.get("s"), payload.get("commit")
    cred, sig = payload.get("cred"), payload.get("sig")
    probe = sa.AgreementKey.generate()
    try:
        probe.agree(c)  # a low-order point fails the agreement (cryptography refuses an all-zero secret)
        probe.agree(s)
    except (CiphertextFormatError, CryptoError):
        return None
    if not isinstance(commit, bytes) or len(commit) != 32 or not isinstance(cred, bytes) or not isinstance(sig, bytes):
        return None
    if ident is not None:
        try:
            ident.verify(silo, cred, advert_digest(job=job, round=round, silo=silo, c=c, s=s, commit=commit), sig)
        except ProtocolError:
            return None
    return c, s, commit, cred, sig


#: t-subsets of a secret's revealed shares tried before a corrupt share aborts the round
MAX_RECONSTRUCTION_TRIES = 64


def _reconstruct(shares: Sequence[tuple[int, bytes]], t: int, ok: Callable[[bytes], bool]) -> bytes | None:
    """The secret of the first ``t``-subset of ``shares`` that passes ``ok`` (its commitment),
    trying at most :data:`MAX_RECONSTRUCTION_TRIES` subsets; None if none does (corrupt shares)."""
    for combo in itertools.islice(itertools.combinations(shares, t), MAX_RECONSTRUCTION_TRIES):
        try:
            secret = sa.combine_shares(list(combo), threshold=t)
        except CryptoError:
            continue
        if ok(secret):
            return secret
    return None


def aggregator_secagg_sum(channel: Channel, *, round: int, spec: SecAggSpec, timeout: float,
                          absent: Sequence[str] = ()) -> AggregatorSecAggOutcome:
    """The aggregator's side of one SecAgg+ sum: relay, check the thresholds, unmask, decode.

    Never holds a key: it sees public keys, sealed shares, masked inputs and, at unmasking, one
    kind of share per silo. Returns ``"aborted"`` (and tells every silo) when fewer than
    ``spec.threshold`` silos are left at any stage or a secret has fewer than ``t`` holders left;
    nothing is reconstructed then; likewise, before any unmasking, when fewer than
    ``spec.min_contributors`` masked inputs arrived (a quorum). ``absent``: silos known to have
    left the job (not waited for; they count as dropped before advertising).

    Masked inputs whose signed mask list is not ``N(u) ∩ U2`` are dropped (as if they never came).
    Every reconstructed secret is checked against what its owner committed to in its signed advert
    (``SHA-256`` of the self-mask seed, the masking public key); when a corrupt share spoils a
    reconstruction, other ``t``-subsets of the revealed shares are tried, and if none works the
    round aborts (every silo told) with nothing released.
    """
    me, job, t = channel.party, channel.job, spec.threshold
    if me in spec.silos:
        raise ConfigError(f"the aggregator {me!r} must not be a silo of the secure sum")
    graph = round_graph(spec, job=job, round=round)
    silos = list(spec.silos)
    n = len(silos)

    withdrawn: list[str] = []

    def abort(stage: str, reason: str, *, contributors: Sequence[str] = ()) -> AggregatorSecAggOutcome:
        for s in silos:
            channel.send(s, KIND_CONTROL, _ctl("abort", reason=reason), round=round)
        return AggregatorSecAggOutcome("aborted", contributors=tuple(sorted(contributors)),
                                       dropped=tuple(sorted(set(silos) - set(contributors))), stage=stage, reason=reason,
                                       withdrawn=tuple(sorted(withdrawn)))

    def who(left: Sequence[str]) -> str:
        """The silos missing from ``left``, by cause (found by the bad-input sweep: an abort named
        the silo whose neighbours were short, never the dead or withdrawn one)."""
        gone = set(silos) - set(left)
        parts = []
        if gone & set(absent):
            parts.append(f"left the job: {', '.join(sorted(gone & set(absent)))}")
        if gone & set(withdrawn):
            parts.append(f"withdrew (privacy budget exhausted): {', '.join(sorted(gone & set(withdrawn)))}")
        silent = sorted(gone - set(absent) - set(withdrawn))
        if silent:
            parts.append(f"did not answer in time or sent invalid messages: {', '.join(silent)}")
        return f" [{'; '.join(parts)}]" if parts else ""

    def too_few(stage: str, left: Sequence[str], what: str) -> AggregatorSecAggOutcome | None:
        if len(left) >= t:
            return None
        return abort(stage, f"round {round}: only {len(left)} of {n} silos {what} (threshold t = {t}){who(left)}; "
                            "the round is aborted and nothing was unmasked")

    def holders_short(stage: str, owners: Sequence[str], holders: set[str], what: str) -> AggregatorSecAggOutcome | None:
        for u in owners:
            left = sorted(set(graph[u]) & holders)
            if len(left) < t:
                return abort(stage, f"round {round}: only {len(left)} neighbours of {u!r} {what} (threshold t = {t})"
                                    f"{who(sorted(holders))}; the round is aborted and nothing was unmasked")
        return None

    # -- advertise keys -------------------------------------------------------------------------------
    waited = [s for s in silos if s not in set(absent)]
    ident = channel.identity
    adverts = {s: _parse_advertise(p, silo=s, job=job, round=round, ident=ident)
               for s, p in channel.gather(waited, KIND_ADVERTISE, round=round, timeout=timeout).items()}
    keys = {s: k for s, k in adverts.items() if k is not None}
    u1 = sorted(keys)
    stop = too_few("advertise", u1, "advertised their keys") or holders_short("advertise", u1, set(u1), "advertised their keys")
    if stop:
        return stop
    for u in u1:
        peers = {v: list(keys[v]) for v in graph[u] if v in keys}
        channel.send(u, KIND_CONTROL, _ctl("keys", peers=peers), round=round)

    # -- share keys -----------------------------------------------------------------------------------
    sealed: dict[str, dict[str, bytes]] = {}
    for u, p in channel.gather(u1, KIND_SHARES, round=round, timeout=timeout).items():
        blobs = p.get("sealed") if isinstance(p, dict) else None
        expected = {v for v in graph[u] if v in keys}
        if isinstance(blobs, dict) and set(blobs) == expected and all(isinstance(b, bytes) for b in blobs.values()):
            sealed[u] = blobs
    u2 = sorted(sealed)
    stop = too_few("shares", u2, "sent their shares") or holders_short("shares", u2, set(u2), "sent their shares")
    if stop:
        return stop
    for v in u2:
        fwd = {u: sealed[u][v] for u in graph[v] if u in sealed}
        channel.send(v, KIND_CONTROL, _ctl("forward", sealed=fwd), round=round)

    # -- masked input -----------------------------------------------------------------------------------
    dim = spec.dimension
    masked: dict[str, np.ndarray] = {}
    masked_sigs: dict[str, bytes] = {}
    # a silo whose ledger refused the charge says so instead (no data): a dropout of this round,
    # and not waited for
    for u, p in channel.gather(u2, (KIND_MASKED, KIND_WITHDRAW), round=round, timeout=timeout).items():
        if isinstance(p, dict) and p.get("withdraw") is True and "y" not in p:
            withdrawn.append(u)
            continue
        ring = _ring_from(p.get("y") if isinstance(p, dict) else None, bits=spec.bits, length=dim)
        sig = p.get("sig") if isinstance(p, dict) else None
        if ring is None or not isinstance(sig, bytes):
            continue
        if ident is not None:
            # u masked with every neighbour whose shares were forwarded to it (N(u) ∩ U2)
            try:
                ident.verify(u, keys[u][3], masked_digest(job=job, round=round, silo=u,
                                                          masked_with=sorted(set(graph[u]) & set(u2))), sig)
            except ProtocolError:
                continue
        masked[u], masked_sigs[u] = ring, sig
    u3 = sorted(masked)
    withdrawn.sort()
    stop = too_few("masked", u3, "sent their masked input")
    if stop:
        return stop
    if len(u3) < spec.min_contributors:
        return abort("masked", f"round {round}: only {len(u3)} of {n} silos sent their masked input and a released sum "
                               f"needs {spec.min_contributors} contributions (the quorum){who(u3)}; the round is aborted "
                               "and nothing was unmasked")
    if len(u3) < spec.min_survivors:
        return abort("masked", f"round {round}: only {len(u3)} of {n} silos sent their masked input and the survivor set "
                               f"must be certified by {spec.min_survivors} of them{who(u3)}; the round is aborted and "
                               "nothing was unmasked")
    if not connected(graph, u3):
        return abort("masked", f"round {round}: the {len(u3)} silos that sent their masked input fall apart in the "
                               "neighbourhood graph; the round is aborted and nothing was unmasked")
    dropped_after_shares = set(u2) - set(u3)

    # -- consistency check: every survivor signs (U2, U3) --------------------------------------------------
    for v in u3:
        channel.send(v, KIND_CONTROL, _ctl("survivors", u2=list(u2), u3=list(u3)), round=round)
    signatures: dict[str, list[bytes]] = {}
    for v, p in channel.gather(u3, KIND_CONSISTENCY, round=round, timeout=timeout).items():
        cred, sig = (p.get("cred"), p.get("sig")) if isinstance(p, dict) else (None, None)
        if not isinstance(cred, bytes) or not isinstance(sig, bytes):
            continue
        if ident is not None:
            try:
                ident.verify(v, cred, survivors_digest(job=job, round=round, silo=v, u2=u2, u3=u3), sig)
            except ProtocolError:
                continue
        signatures[v] = [cred, sig]
    signers = sorted(signatures)
    if len(signers) < spec.min_survivors:
        return abort("consistency", f"round {round}: only {len(signers)} of {n} silos signed the survivor set (it needs "
                                    f"{spec.min_survivors}){who(signers)}; the round is aborted and nothing was unmasked")
    for v in signers:
        near = set(graph[v]) & set(u2)
        own = sorted(near & set(u3))
        channel.send(v, KIND_CONTROL, _ctl("unmask", self_mask=own, pairwise=sorted(near & dropped_after_shares),
                                           signatures=signatures, masked_with={u: masked_sigs[u] for u in own}),
                     round=round)

    # -- unmasking ------------------------------------------------------------------------------------------
    reveals: dict[str, dict[str, dict[str, bytes]]] = {}
    for v, p in channel.gather(signers, KIND_REVEAL, round=round, timeout=timeout).items():
        if not isinstance(p, dict):
            continue
        own, pair = p.get("self_mask"), p.get("pairwise")
        near = set(graph[v]) & set(u2)
        if (isinstance(own, dict) and isinstance(pair, dict) and set(own) == near & set(u3)
                and set(pair) == near & dropped_after_shares
                and all(isinstance(x, bytes) and len(x) == 32 for x in (*own.values(), *pair.values()))):
            reveals[v] = {"self_mask": own, "pairwise": pair}
    u4 = set(reveals)
    stop = too_few("reveal", sorted(u4), "survived to unmasking") or holders_short(
        "reveal", u3, u4, "survived to unmasking")
    needs_pairwise = sorted(u for u in dropped_after_shares if set(graph[u]) & set(u3))
    stop = stop or holders_short("reveal", needs_pairwise, u4, "survived to unmasking")
    if stop:
        return stop

    # -- reconstruct (only now: every check has passed), each secret checked against its commitment --------
    def shares_of(u: str, kind: str) -> list[tuple[int, bytes]]:
        return [(_holder_index(graph, u, v), reveals[v][kind][u]) for v in sorted(set(graph[u]) & u4)]

    def pairwise_ok(u: str) -> Callable[[bytes], bool]:
        def ok(secret: bytes) -> bool:
            try:
                return sa.AgreementKey.from_secret(secret).public == keys[u][1]
            except (CryptoError, CiphertextFormatError):
                return False
        return ok

    self_seeds: dict[str, bytes] = {}
    pair_keys: dict[str, sa.AgreementKey] = {}
    for u in u3:
        seed = _reconstruct(shares_of(u, "self_mask"), t, lambda b, u=u: self_mask_commitment(b) == keys[u][2])
        if seed is None:
            return abort("reveal", f"round {round}: the self-mask shares of {u!r} do not reconstruct its committed seed "
                                   "(a corrupt share); the round is aborted and nothing was released")
        self_seeds[u] = seed
    for u in needs_pairwise:
        secret = _reconstruct(shares_of(u, "pairwise"), t, pairwise_ok(u))
        if secret is None:
            return abort("reveal", f"round {round}: the masking-key shares of {u!r} do not reconstruct its advertised "
                                   "key (a corrupt share); the round is aborted and nothing was released")
        pair_keys[u] = sa.AgreementKey.from_secret(secret)

    total = np.zeros(dim, dtype=sa.ring_dtype(spec.bits))
    for u in u3:
        total += masked[u]
        total -= sa.expand_mask(self_seeds[u], dim, bits=spec.bits, prg=spec.prg)  # type: ignore[arg-type]
    for u in needs_pairwise:
        key = pair_keys[u]
        for v in sorted(set(graph[u]) & set(u3)):
            m = sa.expand_mask(mask_seed(key, keys[v][1], job=job, round=round, me=u, peer=v), dim, bits=spec.bits,
                               prg=spec.prg)  # type: ignore[arg-type]
            # v added sign(v, u)·m; take it out
            if _sign(v, u) > 0:
                total -= m
            else:
                total += m
    result = decode_sum(spec, total, job=job, round=round)
    dropped = tuple(sorted(set(silos) - set(u3)))
    channel.broadcast(silos, KIND_CONTROL, _ctl("result", total=result, contributors=list(u3), dropped=list(dropped)), round=round)
    return AggregatorSecAggOutcome("ok", total=result, contributors=tuple(u3), dropped=dropped,
                                   recovered=tuple(needs_pairwise), withdrawn=tuple(sorted(withdrawn)))


def stop_secagg_silos(channel: Channel, *, silos: Sequence[str], round: int, reason: str) -> None:
    """Tell every remaining silo the job is over: each returns ``"stopped"`` without sending more."""
    for s in sorted(silos):
        channel.send(s, KIND_CONTROL, _ctl("stop", reason=reason), round=round)
