"""Keys, masks and DP noise shares: the crypto and privacy plumbing under the steps.

* :class:`Keys` and :func:`setup_keys` — the few recipes on top of the backend, and who holds
  which key (the arbiter's, or in the two-party topology each party's own);
* :class:`Packing` — how a step's residual vectors are laid out in their ciphertexts, so that
  each party's ``X_pᵀd`` is one ``matmul_repeated`` (one product and a few rotations on CKKS);
* :func:`capped_mask_scale` — the scale ``M`` of the uniform masks, and what they leak;
* :func:`draw_share`, :func:`noise_shares`, :func:`own_share`, :func:`decrypt_for_peer` — every
  party's noise share of every gradient (:meth:`.taylor.DpPlan.share_sigma`), so that no
  ``colluders`` parties know the whole noise on any gradient;
* :func:`epoch_charge` — the ledger charge each data party makes once per epoch, before it
  contributes the noise shares that every decryption of that epoch waits for.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ContextManager

import numpy as np

from fedsilo.crypto.base import Ciphertext, CryptoBackend, PublicContext, SecretKey
from fedsilo.crypto.encoding import SlotLayout
from fedsilo.crypto.paillier import PaillierBackend, PaillierPublic, unpack_slots
from fedsilo.errors import ConfigError, CryptoError, ProtocolError
from fedsilo.privacy.ledger import PrivacyLedger
from fedsilo.privacy.mechanisms import gaussian_noise
from fedsilo.privacy.relations import REPLACE_RECORD
from fedsilo.protocols.channel import Channel
from fedsilo.protocols.vertical.config import Topology, TrainingConfig
from fedsilo.protocols.vertical.messages import GRAD, KEY, PLAIN, PROTOCOL
from fedsilo.protocols.vertical.taylor import DpPlan

__all__ = [
    "GradSlots",
    "Keys",
    "NoiseDraw",
    "NoiseTap",
    "Packing",
    "PartyKeys",
    "capped_mask_scale",
    "decrypt_for_peer",
    "draw_share",
    "epoch_charge",
    "noise_shares",
    "own_share",
    "setup_keys",
]


# ------------------------------------------------------------------------------ crypto recipes


class Keys:
    """The few recipes the protocol needs on top of the backend (serialize on every send)."""

    def __init__(self, backend: CryptoBackend, public: PublicContext, secret: SecretKey | None = None) -> None:
        self.backend = backend
        self.public = public
        self.secret = secret

    def enc(self, values: np.ndarray) -> Ciphertext:
        """Encrypt ``values`` (as float64) under this key: with the secret key where this party
        holds it (two-party, its own inputs; on CKKS a seeded ciphertext of half the bytes), else
        under the public key. Either way an ordinary ciphertext for its receiver."""
        values = np.asarray(values, dtype=np.float64)
        if self.secret is not None:
            return self.backend.encrypt_with_secret(self.secret, values)
        return self.backend.encrypt(self.public, values)

    def ser(self, ct: Ciphertext) -> bytes:
        """The wire form of ``ct``."""
        return self.backend.serialize(ct)

    def de(self, data: Any, *, sender: str, length: int | None = None) -> Ciphertext:
        """A ciphertext under this key from ``sender``'s wire bytes (of ``length`` values, if given).

        Raises:
            ProtocolError: ``data`` is not bytes, is not a well-formed ciphertext under this key
                (truncated, a value outside ``Z*_(n^2)``, an impossible header), or holds another
                number of values than ``length``; naming ``sender``.
        """
        if not isinstance(data, bytes):
            raise ProtocolError(f"expected a ciphertext from {sender!r}, got {type(data).__name__}")
        try:
            ct = self.backend.deserialize(self.public, data)
        except CryptoError as exc:
            raise ProtocolError(f"the ciphertext from {sender!r} is malformed: {exc}") from exc
        if length is not None and ct.length != length:
            raise ProtocolError(
                f"the ciphertext from {sender!r} holds {ct.length} values, expected {length} (another batch or layout?)"
            )
        return ct

    def de_gradient(self, data: Any, *, sender: str, slots: "GradSlots | None") -> Ciphertext:
        """:meth:`de` for a masked gradient or a noise share of one: as it is, or packed in
        ``slots``, its header checked against the public layout (:meth:`PaillierBackend.check_slots`).

        Raises:
            ProtocolError: as :meth:`de`, or the header is not that of a vector in ``slots``.
        """
        if slots is None:
            return self.de(data, sender=sender)
        ct = self.de(data, sender=sender, length=slots.count)
        assert isinstance(self.backend, PaillierBackend)
        try:
            return self.backend.check_slots(ct, slots.layout, coordinates=slots.length)
        except CryptoError as exc:
            raise ProtocolError(f"the ciphertext from {sender!r} is malformed: {exc}") from exc

    def dec(self, ct: Ciphertext) -> np.ndarray:
        """Decrypt ``ct`` (only the key holder can)."""
        if self.secret is None:  # pragma: no cover - programming error
            raise ProtocolError("this party holds no secret key")
        return self.backend.decrypt(self.secret, ct)

    def enc_noise(self, values: np.ndarray, slots: "GradSlots | None") -> Ciphertext:
        """A noise share of a gradient that travels in ``slots`` (packed alike), else :meth:`enc`."""
        if slots is None:
            return self.enc(values)
        assert isinstance(self.backend, PaillierBackend)
        return self.backend.encrypt_slots(self.public, np.asarray(values, dtype=np.float64), slots.layout)

    def seal(self, g: Ciphertext, slots: "GradSlots | None") -> tuple[bytes, list[int] | None]:
        """A party's masked gradient ``g`` for its key holder: the wire bytes, packed in
        ``slots`` (with the masks to :meth:`GradSlots.open` the answer), or as it is."""
        if slots is None:
            return self.ser(g), None
        assert isinstance(self.backend, PaillierBackend)
        packed, masks = self.backend.pack_slots(g, slots.layout)
        return self.ser(packed), masks

    def dec_gradient(self, ct: Ciphertext, slots: "GradSlots | None", *, sender: str) -> Any:
        """The key holder's answer for ``sender``'s gradient: the decrypted floats, or in
        ``slots`` the masked packed integers ``(V + R) mod n`` (exact, uniform on ``[0, n)``;
        only their sender can unmask them).

        Raises:
            ProtocolError: the ciphertext does not decrypt within its bounds (naming ``sender``).
        """
        if self.secret is None:  # pragma: no cover - programming error
            raise ProtocolError("this party holds no secret key")
        try:
            if slots is None:
                return self.dec(ct)
            assert isinstance(self.backend, PaillierBackend)
            return self.backend.decrypt_integers(self.secret, ct)
        except CryptoError as exc:
            raise ProtocolError(f"the ciphertext from {sender!r} is malformed: {exc}") from exc

    def unseal(self, answer: Any, masks: Sequence[int], slots: "GradSlots", *, sender: str) -> np.ndarray:
        """The inverse of :meth:`seal` on the key holder's ``answer``: :meth:`GradSlots.open`
        under this key's modulus."""
        assert isinstance(self.public, PaillierPublic)
        return slots.open(answer, masks, sender=sender, modulus=self.public.n)


@dataclass(frozen=True, slots=True)
class Packing:
    """How one step's residual vectors (``[[b_h]]``, ``[[a]]``, ``[[d]]`` and the loss prefix)
    are laid out in their ciphertexts: each of the batch's ``rows`` values ``repeat`` times in a
    row, as the backend's ``matmul_repeat`` asks (CKKS: a power of two at least the longest
    gradient; Paillier and ``plain``: 1, the plain vector), so that each party's ``X_pᵀd`` is one
    ``matmul_repeated``. Every party derives it from public values, the batch size and the data
    parties' gradient lengths (:meth:`for_step`), and checks the length of what it receives.

    The layout changes no value anyone decrypts: gradients come out as ``m_p`` values as before,
    under the same masks and noise shares.
    """

    rows: int
    repeat: int = 1

    @classmethod
    def for_step(cls, backend: CryptoBackend, *, rows: int, dims: Mapping[str, int]) -> "Packing":
        """The layout of a step of ``rows`` rows, for gradients of the lengths in ``dims``."""
        return cls(rows, backend.matmul_repeat(rows=rows, columns=max(dims.values())))

    @property
    def length(self) -> int:
        """Values in a residual ciphertext of this layout."""
        return self.rows * self.repeat

    def spread(self, values: np.ndarray) -> np.ndarray:
        """``values`` (one per row of the batch) in this layout: each repeated ``repeat`` times."""
        return np.repeat(np.asarray(values, dtype=np.float64), self.repeat)

    def product(self, backend: CryptoBackend, d: Ciphertext, matrix: np.ndarray) -> Ciphertext:
        """``[[d]] @ matrix`` (``matrix``: one row per row of the batch) for ``[[d]]`` in this layout."""
        return backend.matmul_repeated(d, matrix, repeat=self.repeat)


@dataclass(frozen=True, slots=True)
class GradSlots:
    """How one data party's masked gradient travels to its key holder on (unpacked) Paillier:
    BatchCrypt-packed (Zhang et al., USENIX ATC 2020), ``layout.slots`` fixed-point coordinates
    per ciphertext, so the party sends and the key holder decrypts :attr:`count` ciphertexts
    instead of one per coordinate.

    The party packs its ``[[g + n_pp]]`` homomorphically (:meth:`PaillierBackend.pack_slots`),
    with an integer mask ``R`` per ciphertext uniform on ``[0, n)``: the key holder's plaintext
    ``(V + R) mod n`` is exactly uniform whatever the packed value ``V`` (a one-time pad on
    ``Z_n``), even when the key holder wrote the inputs and lied about their bound (two-party:
    its own ``[[b]]``); the real-valued mask ``m_p`` of the unpacked path is not needed. Under DP
    every other noise share of the gradient is packed alike (:meth:`Keys.enc_noise`) and added
    slot by slot: ``summands`` packed vectors in all, each slot sized with headroom for their
    offsets. The key holder checks each packed operand's header (:meth:`Keys.de_gradient`),
    decrypts the masked packed integers exactly and returns them; the party subtracts its masks
    mod ``n`` and unpacks (:meth:`open`), which refuses a value outside the public layout (a
    false bound is caught there, as a :class:`ProtocolError` naming the key holder). Every party
    derives the layout from public values (the batch size, the number of hosts and noise adders,
    the backend's parameters), and checks it before round 1 (:meth:`preflight`).
    """

    layout: SlotLayout
    length: int  #: the gradient's coordinates
    summands: int  #: packed vectors the key holder adds: the party's own and one per noise share

    @classmethod
    def for_step(
        cls, backend: CryptoBackend, *, enabled: bool, rows: int, owner: str, topology: Topology,
        dims: Mapping[str, int], dp: bool,
    ) -> "GradSlots | None":
        """The layout of ``owner``'s gradient in a step of ``rows`` rows, or None (the unpacked
        path: another backend, or ``enabled`` (``TrainingConfig.batchcrypt``) off)."""
        if not enabled or not isinstance(backend, PaillierBackend) or backend.encoding.packed:
            return None
        # [[d]] is the sum of every host's [[b_h]] and the guest's plain part (two-party too)
        noise = len(topology.data_parties) - 1 + (topology.arbiter is not None) if dp else 0
        layout = backend.matmul_layout(terms=len(topology.hosts) + 1, rows=rows, summands=1 + noise)
        return cls(layout, dims[owner], 1 + noise)

    @classmethod
    def preflight(
        cls, backend: CryptoBackend, *, enabled: bool, rows: int, topology: Topology, dims: Mapping[str, int],
        dp: bool, setting: str = "training.batch_size",
    ) -> None:
        """Refuse, before round 1, a step of ``rows`` rows (the largest batch: the slot width
        grows with it) whose packed gradients would not fit a plaintext, with the keys to change
        (``setting``: where the batch size comes from), instead of in the first epoch's charge.

        Raises:
            ConfigError: no slot layout for a batch of ``rows`` rows.
        """
        try:
            for p in topology.data_parties:
                cls.for_step(backend, enabled=enabled, rows=rows, owner=p, topology=topology, dims=dims, dp=dp)
        except ConfigError as exc:
            raise ConfigError(
                f"key '{setting}': a batch of {rows} rows does not fit the packed (BatchCrypt) gradients of "
                f"this key: {exc}. Lower {setting} or crypto.params precision/value_bound, or raise "
                "crypto.params key_bits"
            ) from exc

    @property
    def count(self) -> int:
        """Ciphertexts of the packed gradient."""
        return self.layout.plaintexts_for(self.length)

    def open(self, answer: Any, masks: Sequence[int], *, sender: str, modulus: int) -> np.ndarray:
        """The key holder's ``answer`` (the decrypted masked packed integers, in ``[0, modulus)``)
        minus ``masks`` mod ``modulus`` (the key's ``n``), unpacked: the gradient plus the noise
        shares, exactly.

        Raises:
            ProtocolError: ``answer`` is not :attr:`count` integers in ``[0, modulus)`` whose
                unmasked values fit this layout (naming ``sender``, the key holder).
        """
        if not isinstance(answer, list) or len(answer) != self.count or any(
            isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < modulus for v in answer
        ):
            raise ProtocolError(f"malformed packed gradient from {sender!r} (expected {self.count} integers mod n)")
        try:
            return unpack_slots(self.layout, answer, masks, modulus=modulus, length=self.length,
                                summands=self.summands)
        except CryptoError as exc:
            raise ProtocolError(f"the packed gradient from {sender!r} does not unpack: {exc}") from exc


@dataclass(frozen=True, slots=True)
class PartyKeys:
    """Every data party's view of the keys: ``grad`` (keys of its own gradient's holder: the
    arbiter's, which every party shares, or two-party the peer's public key) and ``own`` (its
    secret keys, two-party only)."""

    grad: Keys
    own: Keys | None = None


def setup_keys(ch: Channel, topology: Topology, backend: CryptoBackend, *, round: int, timeout: float) -> PartyKeys:
    """A data party's side of the key set-up round: receive the arbiter's public key, or
    (two-party) generate its own key pair and swap public keys with the other party."""
    me = ch.party
    if topology.arbiter is not None:
        msg = ch.recv(topology.arbiter, KEY, round=round, timeout=timeout)
        pub = backend.load_public(msg["public"] if isinstance(msg, dict) else b"")
        return PartyKeys(grad=Keys(backend, pub))
    other = topology.hosts[0] if me == topology.guest else topology.guest
    sk = backend.keygen()
    own = Keys(backend, sk.public(), sk)
    ch.send(other, KEY, {"public": own.public.serialize()}, round=round)
    msg = ch.recv(other, KEY, round=round, timeout=timeout)
    peer = Keys(backend, backend.load_public(msg["public"] if isinstance(msg, dict) else b""))
    return PartyKeys(grad=peer, own=own)


def capped_mask_scale(backend: CryptoBackend, config: TrainingConfig) -> float:
    """``M``, capped at half the backend's ``value_bound`` (CKKS and Paillier refuse larger
    plaintext operands).

    Leakage: with ``m ~ U(−M, M)`` the key holder sees ``g + m``, which falls outside
    ``[−M, M]`` (revealing the sign of ``g`` and a lower bound on ``|g|``) with probability
    ``|g| / (2M)`` per coordinate per step — the statistical distance between ``g + m`` and
    ``m``. Over T steps these add up (up to ``Σ_t |g_t| / (2M)``), and when ``g`` changes little
    between steps, averaging T masked values shrinks the mask's spread to ``M / sqrt(3T)``: without DP there is no run-level
    guarantee. The CKKS default ``M = 2048`` gives 2.4e-4 per coordinate and step for
    ``|g| = 1``.
    """
    # the interface's bound (BackendInfo.value_bound, inf when the backend has none)
    return min(config.mask_scale, 0.5 * backend.info().value_bound)


# ------------------------------------------------------------------------------ noise shares


@dataclass(frozen=True, slots=True)
class NoiseDraw:
    """One noise share as drawn (a test hook's view; never sent in the clear): ``drawer`` added
    ``share`` (already divided by the batch size, like the gradient) to ``owner``'s gradient in
    the step of ``round``."""

    round: int
    drawer: str
    owner: str
    share: np.ndarray


#: Optional hook called with every :class:`NoiseDraw` a party makes (tests inspect the shares).
NoiseTap = Callable[[NoiseDraw], None]


def draw_share(
    plan: DpPlan,
    *,
    owner: str,
    me: str,
    topology: Topology,
    dims: Mapping[str, int],
    norm: float,
    rng: np.random.Generator,
    round: int,
    tap: NoiseTap | None,
) -> np.ndarray:
    """One noise share of ``owner``'s gradient, at mean scale (divided by the public batch size)."""
    sigma = plan.share_sigma(intercept=owner == topology.guest) / norm
    share = gaussian_noise(sigma=sigma, size=dims[owner], rng=rng)
    if tap is not None:
        tap(NoiseDraw(round, me, owner, share.copy()))
    return share


def noise_shares(
    keys_for: Mapping[str, Keys],
    *,
    plan: DpPlan,
    me: str,
    topology: Topology,
    dims: Mapping[str, int],
    norm: float,
    rng: np.random.Generator,
    round: int,
    tap: NoiseTap | None,
    slots: Mapping[str, GradSlots | None] | None = None,
) -> dict[str, bytes]:
    """This party's encrypted noise share for every other data party's gradient (its share of
    its own gradient is added with its mask, see :func:`own_share`), packed like that gradient
    where it travels packed (``slots``)."""
    out: dict[str, bytes] = {}
    for p in topology.data_parties:
        if p == me:
            continue
        noise = draw_share(plan, owner=p, me=me, topology=topology, dims=dims, norm=norm, rng=rng, round=round, tap=tap)
        out[p] = keys_for[p].ser(keys_for[p].enc_noise(noise, (slots or {}).get(p)))
    return out


def own_share(
    plan: DpPlan | None,
    *,
    me: str,
    topology: Topology,
    dims: Mapping[str, int],
    norm: float,
    rng: np.random.Generator,
    round: int,
    tap: NoiseTap | None,
) -> np.ndarray | float:
    """This party's noise share of its *own* gradient (0 without DP). It is added under
    encryption together with the mask, and only the mask is removed after decryption, so the
    share stays in the gradient and no other party learns it."""
    if plan is None:
        return 0.0
    return draw_share(plan, owner=me, me=me, topology=topology, dims=dims, norm=norm, rng=rng, round=round, tap=tap)


def decrypt_for_peer(
    ch: Channel,
    own: Keys,
    *,
    peer: str,
    plan: DpPlan | None,
    me: str,
    topology: Topology,
    dims: Mapping[str, int],
    norm: float,
    rng: np.random.Generator,
    round: int,
    timeout: float,
    tap: NoiseTap | None,
    slots: GradSlots | None = None,
) -> None:
    """Two-party: decrypt the peer's masked gradient, adding this party's DP noise share first
    (the peer has added its own share under encryption before masking); packed in ``slots``,
    the answer is the masked packed integers (:class:`GradSlots`)."""
    data = ch.recv(peer, GRAD, round=round, timeout=timeout)
    ct = own.de_gradient(data, sender=peer, slots=slots)
    if plan is not None:
        noise = draw_share(plan, owner=peer, me=me, topology=topology, dims=dims, norm=norm, rng=rng, round=round, tap=tap)
        try:
            ct = own.backend.add(ct, own.enc_noise(noise, slots))
        except CryptoError as exc:  # the unpacked path: a declared bound too large to add to
            raise ProtocolError(f"the ciphertext from {peer!r} is malformed: {exc}") from exc
    ch.send(peer, PLAIN, own.dec_gradient(ct, slots, sender=peer), round=round)


# ------------------------------------------------------------------------------ ledger charge


def epoch_charge(
    ledger: PrivacyLedger | None, dataset: str | None, plan: DpPlan | None, *, job: str, epoch: int, recipients: Sequence[str]
) -> ContextManager[Any]:
    """This data party's charge for one epoch (``plan.epoch_event()``), to hold while the epoch's
    steps run: every noise share the party contributes is drawn inside it. No charge without DP."""
    if plan is None:
        return nullcontext()
    if ledger is None or dataset is None:  # pragma: no cover - refused when training starts
        raise ConfigError("differential privacy needs a privacy ledger and the dataset name to charge")
    return ledger.charge(
        dataset,
        plan.epoch_event(),
        job=job,
        round=epoch,
        protocol=PROTOCOL,
        mechanism={
            "name": "gaussian_noise_shares",
            "released": "every data party's gradient (its own included: it moves its weights)",
            "neighbours": plan.neighbouring,
            "noise_multiplier": plan.noise_multiplier,
            "event_multiplier": plan.event_multiplier,
            "clip": plan.clip,
            "logit_clip": plan.logit_clip,
            "residual_bound": plan.residual_bound,
            "sensitivity_guest": plan.sensitivity(intercept=True),
            "sensitivity_host": plan.sensitivity(intercept=False),
            "sample_rate": plan.sample_rate,
            "batches": "public to every party, disjoint: one release per customer per epoch",
            "batches_per_epoch": plan.steps_per_epoch,
            "shares": len(recipients) + 1,
            "noise_adders": plan.noise_adders,
            "colluders": plan.colluders,
        },
        recipient=",".join(sorted(recipients)),
        relation=REPLACE_RECORD,
    )
