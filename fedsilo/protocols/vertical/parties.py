"""The parties' training: one function per role (:func:`guest_train`, :func:`host_train`,
:func:`arbiter_train`) over a :class:`Channel`, and one step function per role and topology.

One training step on a mini-batch (arbiter topology, key K of the arbiter; ``[[·]]`` is
encryption under K)::

    host h  : b_h = u_h/4 (u_h = X_h w_h, clipped to ±B under DP)   -- [[b_h]] -->  guest
    guest   : [[d]] = Σ_h [[b_h]] + (u_g/4 − y'/2)                   -- [[d]]   -->  hosts
    party p : [[d]] @ (X_p / n_b) + m_p     (mask m_p ~ U(−M, M), ciphertext × plaintext)
              -- [[g_p + m_p]] --> arbiter
    party q : (DP) noise shares [[n_qp]] for every other data party p, inside its ledger
              charge                                                 -- [[n_qp]] --> arbiter
              (and its own share n_pp, added with its mask: [[g_p + m_p + n_pp]])
    arbiter : z_p = Dec([[g_p + m_p + n_pp]] + Σ_q [[n_qp]] + n_ap)  -- z_p     -->  p
    party p : g_p = z_p − m_p;  w_p ← w_p − lr_e (g_p + λ w_p)

Two-party (no arbiter: guest g and host h each hold their own key pair; ``[[·]]_p`` is
encryption under p's key, and each party decrypts only the other's masked gradient)::

    guest   : a = u_g/4 − y'/2                                       -- [[a]]_g -->  host
    host    : b = u_h/4 (clipped to ±B under DP)                     -- [[b]]_h -->  guest
    guest   : [[d]]_h = [[b]]_h + a;  [[d]]_h @ (X_g / n_b) + m_g + n_gg
              -- [[g_g + m_g + n_gg]]_h --> host
    host    : [[d]]_g = [[a]]_g + b;  [[d]]_g @ (X_h / n_b) + m_h + n_hh
              -- [[g_h + m_h + n_hh]]_g --> guest
    party q : z_p = Dec_q([[g_p + m_p + n_pp]]_q + [[n_qp]]_q)  (q the other party, DP)
                                                                     -- z_p     -->  p
    party p : g_p = z_p − m_p;  w_p ← w_p − lr_e (g_p + λ w_p)

On Paillier the masked gradient travels BatchCrypt-packed (:class:`.keys.GradSlots`): party p
packs ``[[g_p + n_pp]]`` into ``ceil(m_p / slots)`` ciphertexts under an integer mask ``R_p``
uniform mod ``n`` instead of ``m_p``, the noise shares come packed alike, the key holder returns
the decrypted ``(V + R_p) mod n`` as integers and p subtracts ``R_p`` mod ``n``, checks the result
against the public layout and unpacks. The layout for the largest batch is checked before SETUP.

Every residual ciphertext of a step (``[[b_h]]``, ``[[a]]``, ``[[d]]``) holds the batch's values
in the layout the backend asks for (:class:`.keys.Packing`: on CKKS each value repeated over a
power of two of slots at least the longest gradient), and ``[[d]] @ X_p`` is the backend's
``matmul_repeated``: on CKKS one plaintext product per ciphertext and a few rotations instead of
one rotate-and-sum per feature. Gradients, masks and noise shares are the plain ``m_p``-value
vectors whatever the layout.

The message kinds and their payloads are listed in :mod:`.messages`; who learns what, and the
DP accounting, in :mod:`.lr`.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import numpy as np

from fedsilo.crypto.base import Ciphertext, CryptoBackend
from fedsilo.errors import ConfigError, DataError, EncodingOverflowError, ProtocolError
from fedsilo.privacy.ledger import PrivacyLedger
from fedsilo.protocols.channel import Channel
from fedsilo.protocols.spec import PrivacySection
from fedsilo.protocols.vertical.config import (
    Topology,
    TrainingConfig,
    check_dp_ledger,
    dp_digest,
    dp_plan,
    refuse_exact_gradients,
    spent_epsilon,
)
from fedsilo.protocols.vertical.data import check_bounds
from fedsilo.protocols.vertical.keys import (
    GradSlots,
    Keys,
    NoiseTap,
    Packing,
    PartyKeys,
    capped_mask_scale,
    decrypt_for_peer,
    draw_share,
    epoch_charge,
    noise_shares,
    own_share,
    setup_keys,
)
from fedsilo.protocols.vertical.loss import (
    accumulate,
    cross_term,
    request_loss,
    serve_loss,
    square_term,
)
from fedsilo.protocols.vertical.messages import (
    CROSS,
    EPOCH,
    GRAD,
    HELLO,
    KEY,
    NOISE,
    PARTIAL,
    PLAIN,
    RESIDUAL,
    SETUP,
    as_float_vector,
    check_partition,
    check_setup,
    gather_all,
)
from fedsilo.protocols.vertical.model import FitResult, LocalModel, check_matrix, check_rows, clip_logits, fit_model, update
from fedsilo.protocols.vertical.taylor import (
    DpPlan,
    epoch_partition,
    guest_residual_part,
    host_residual_part,
    learning_rate,
)

__all__ = ["arbiter_train", "guest_train", "host_train"]


# ------------------------------------------------------------------------------ shared by the data parties


@dataclass(frozen=True, slots=True)
class _Run:
    """What a data party's steps share for a whole training run (fixed after the set-up round)."""

    channel: Channel
    topology: Topology
    backend: CryptoBackend
    keys: PartyKeys
    plan: DpPlan | None
    dims: Mapping[str, int]
    rng: np.random.Generator  #: this party's secret randomness (masks, noise shares)
    timeout: float
    tap: NoiseTap | None
    track_loss: bool
    batchcrypt: bool = True  #: ``TrainingConfig.batchcrypt``

    @property
    def me(self) -> str:
        return self.channel.party

    @property
    def holder(self) -> str:
        """Who decrypts this party's gradient: the arbiter, or two-party the other party."""
        return self.topology.grad_key_holder(self.me)

    @property
    def others(self) -> tuple[str, ...]:
        """The other data parties: whose gradients this party adds noise shares to."""
        return tuple(p for p in self.topology.data_parties if p != self.me)

    def slots(self, owner: str, norm: float) -> GradSlots | None:
        """How ``owner``'s masked gradient of a step of ``norm`` rows travels (None: unpacked)."""
        return GradSlots.for_step(self.backend, enabled=self.batchcrypt, rows=int(norm), owner=owner,
                                  topology=self.topology, dims=self.dims, dp=self.plan is not None)

    def packing(self, rows: int) -> Packing:
        """The layout of a step's residual ciphertexts (every party derives the same one)."""
        return Packing.for_step(self.backend, rows=rows, dims=self.dims)

    @property
    def own(self) -> Keys:
        """This party's own key pair (two-party only)."""
        if self.keys.own is None:  # pragma: no cover - programming error
            raise ProtocolError(f"{self.me}: no key pair of its own (the arbiter holds the key)")
        return self.keys.own


#: The guest's loss steps held for one shared fold (:meth:`_Epoch.flush`): at most this many
#: steps' ``[[b]]`` (one ~0.4 MB ciphertext each on CKKS at N = 8192) wait in memory.
_LOSS_GROUP = 32


@dataclass(frozen=True, slots=True)
class _LossStep:
    """One step's whole part of ``Σ d²/R`` as the guest holds it (:mod:`.loss`): the cross term
    ``[[b]] @ (2a/R)`` still to compute (``b`` = Σ_h [[b_h]] in a layout of ``repeat``), the
    hosts' encrypted square and cross terms of the step, and ``Σa²/R`` in plaintext."""

    b: Ciphertext
    column: np.ndarray
    repeat: int
    terms: tuple[Ciphertext, ...]
    plain: float


@dataclass(slots=True)
class _Epoch:
    """What the steps of one epoch share: ``rows``, the epoch's ``R`` training rows (every party
    scales its loss terms by ``1/R``), and the guest's encrypted loss: ``loss``, its running
    sums, and ``steps``, the steps whose terms wait for one shared product (:meth:`flush`).

    The cross terms ``2 a·Σ_h b_h / R`` of up to :data:`_LOSS_GROUP` steps are one
    ``matmul_repeated_sum`` (on CKKS one plaintext product per step and one fold per group,
    where a product per step cost one fold per step). Every ciphertext added to ``loss`` holds
    whole steps' ``Σ d²/R`` (the cross, square and plain terms of the same steps), so the key
    holder, which decrypts each running sum, sees sums of whole steps' losses only, as it did
    with one product per step (the crypto review found partial sums of one kind of term
    alone when the terms were gathered per kind)."""

    rows: int
    loss: list[Ciphertext] = field(default_factory=list)
    steps: list[_LossStep] = field(default_factory=list)
    group: int = _LOSS_GROUP  # steps per shared product: lowered to what fitted the bound

    def flush(self, backend: CryptoBackend, *, force: bool = False) -> None:
        """Add the waiting steps' losses to ``loss`` once ``group`` steps wait (or ``force``,
        at the end of the epoch). A group that overflows the backend's magnitude bound is
        halved (:func:`_step_losses`), and later groups of the epoch take the size that fitted,
        so its products are not computed twice again."""
        if not self.steps or (len(self.steps) < self.group and not force):
            return
        for repeat in sorted({st.repeat for st in self.steps}):
            runs = _step_losses(backend, [st for st in self.steps if st.repeat == repeat])
            if len(runs) > 1:
                self.group = max(1, min(self.group, max(n for _, n in runs)))
            for term, _ in runs:
                accumulate(backend, self.loss, term)
        self.steps.clear()


def _step_losses(backend: CryptoBackend, steps: list[_LossStep]) -> list[tuple[Ciphertext, int]]:
    """``Σ_s Σ d_s²/R`` over ``steps`` (one layout, in order) as few ciphertexts as the
    backend's magnitude bound allows, each the whole loss of a run of these steps, with the
    run's length: one shared product plus the steps' terms, or the two halves of ``steps``
    where that would overflow.

    Raises:
        ProtocolError: one step's loss alone overflows the bound (many hosts on CKKS: their
            square and cross terms add up past its headroom).
    """
    try:
        total = backend.matmul_repeated_sum([(st.b, st.column[:, None]) for st in steps], repeat=steps[0].repeat)
        terms = [t for st in steps for t in st.terms]
        if terms:
            total = backend.sum([total, *terms])
        return [(backend.add_plain(total, np.array([sum(st.plain for st in steps)])), len(steps))]
    except EncodingOverflowError as exc:
        if len(steps) == 1:
            raise ProtocolError(
                f"the encrypted training loss of one step, with {len(steps[0].terms)} host term(s), exceeds the "
                f"{backend.name} backend's magnitude bound ({exc}); run with fewer hosts, or under DP (the loss is "
                "then not computed)"
            ) from None
        half = len(steps) // 2
        return _step_losses(backend, steps[:half]) + _step_losses(backend, steps[half:])


class _Step(Protocol):
    """One step of one role in one topology, from this party's residual part (``a`` for the
    guest, ``b`` for a host) to its key holder's answer: the decrypted ``g + offset``, unchecked.
    ``offset`` is the mask plus this party's noise share of its own gradient."""

    def __call__(
        self, run: _Run, epoch: _Epoch, *, round: int, norm: float, xb: np.ndarray, part: np.ndarray, offset: np.ndarray
    ) -> Any: ...


def _train_epoch(
    run: _Run,
    model: LocalModel,
    xt: np.ndarray,
    batches: Sequence[np.ndarray],
    *,
    first_round: int,
    lr: float,
    l2: float,
    mask_scale: float,
    epoch: _Epoch,
    residual: Callable[[np.ndarray, np.ndarray], np.ndarray],
    step: _Step,
) -> LocalModel:
    """One epoch of a data party, the same for every role and topology: per batch, its residual
    part ``residual(clipped logits, batch)``, a fresh mask and its own noise share, the
    topology's ``step``, and the update with the unmasked gradient. Step ``s`` runs in round
    ``first_round + s``; empty batches are skipped (the round numbers stay)."""
    for s, idx in enumerate(batches):
        step_round = first_round + s
        epoch.flush(run.backend)
        if idx.size == 0:
            continue
        norm = float(idx.size)  # public: the batches are known to every party
        xb = xt[idx]
        part = residual(clip_logits(xb @ model.weights, run.plan), idx)
        mask = run.rng.uniform(-mask_scale, mask_scale, size=model.weights.size)
        if run.slots(run.me, norm) is not None:
            # BatchCrypt masks each packed ciphertext with an integer instead (GradSlots); the
            # draw above stays, so that the noise shares drawn after it are the same on every path
            mask = np.zeros_like(mask)
        mine = own_share(run.plan, me=run.me, topology=run.topology, dims=run.dims, norm=norm, rng=run.rng,
                         round=step_round, tap=run.tap)
        z = step(run, epoch, round=step_round, norm=norm, xb=xb, part=part, offset=mask + mine)
        z = as_float_vector(z, length=model.weights.size, sender=run.holder, what="gradient")
        model = update(model, z - mask, lr=lr, l2=l2)
    epoch.flush(run.backend, force=True)
    return model


def _epoch_state(batches: Sequence[np.ndarray]) -> _Epoch:
    """A data party's state for an epoch of ``batches``: every party scales its loss terms by
    ``1 / rows`` (the batches are public)."""
    return _Epoch(rows=max(1, sum(int(b.size) for b in batches)))


def _grad_to_arbiter(run: _Run, g: Ciphertext, *, norm: float, round: int) -> list[int] | None:
    """Arbiter topology: this party's masked gradient and, under DP, its noise shares of the
    other data parties' gradients (all under the arbiter's key) to the arbiter; the masks of a
    packed gradient (:class:`.keys.GradSlots`)."""
    ch, k, arb = run.channel, run.keys.grad, run.holder
    data, masks = k.seal(g, run.slots(run.me, norm))
    ch.send(arb, GRAD, data, round=round)
    if run.plan is not None:
        shares = noise_shares(
            {p: k for p in run.others}, plan=run.plan, me=run.me, topology=run.topology, dims=run.dims, norm=norm,
            rng=run.rng, round=round, tap=run.tap, slots={p: run.slots(p, norm) for p in run.others},
        )
        ch.send(arb, NOISE, shares, round=round)
    return masks


def _opened(run: _Run, answer: Any, masks: list[int] | None, *, norm: float) -> Any:
    """The key holder's answer for this party's gradient: as it came, or unpacked and unmasked."""
    slots = run.slots(run.me, norm)
    return answer if slots is None or masks is None else run.keys.grad.unseal(answer, masks, slots, sender=run.holder)


def _swap_decryptions(run: _Run, *, peer: str, norm: float, round: int) -> Any:
    """Two-party, after this party has sent its masked gradient: decrypt the peer's (adding this
    party's noise share of it), then receive the peer's decryption of this party's."""
    decrypt_for_peer(run.channel, run.own, peer=peer, plan=run.plan, me=run.me, topology=run.topology,
                     dims=run.dims, norm=norm, rng=run.rng, round=round, timeout=run.timeout, tap=run.tap,
                     slots=run.slots(peer, norm))
    return run.channel.recv(peer, PLAIN, round=round, timeout=run.timeout)


def _preflight_slots(
    backend: CryptoBackend, config: TrainingConfig, topology: Topology, dims: Mapping[str, int], *, dp: bool,
    batch: int, rows: int,
) -> None:
    """The packed gradients' layout for the largest batch (``epoch_partition``'s batches have at
    most ``batch`` rows, and at most the ``rows`` training rows), refused before SETUP, keys or
    any ledger charge (:meth:`.keys.GradSlots.preflight`)."""
    GradSlots.preflight(backend, enabled=config.batchcrypt, rows=max(1, min(batch, rows)), topology=topology,
                        dims=dims, dp=dp, setting=_batch_setting(config))


def _batch_setting(config: TrainingConfig) -> str:
    """Where a run's batch size comes from, for error messages."""
    return "the batch training.fill_slots picks" if config.fill_slots else "training.batch_size"


# ------------------------------------------------------------------------------ guest


def guest_train(
    channel: Channel,
    *,
    topology: Topology,
    x: np.ndarray,
    y: np.ndarray,
    train_rows: np.ndarray,
    eval_rows: np.ndarray,
    backend: CryptoBackend,
    config: TrainingConfig,
    dp: PrivacySection | None = None,
    ledger: PrivacyLedger | None = None,
    dataset: str | None = None,
    columns: Sequence[str] | None = None,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    rng: np.random.Generator,
    batch_rng: np.random.Generator,
    start_round: int = 1,
    progress: Callable[[dict[str, Any]], None] | None = None,
    noise_tap: NoiseTap | None = None,
) -> FitResult:
    """The guest's side of training: drives the epochs, draws the batches, forms residuals.

    ``x``/``y`` are the guest's aligned rows; ``train_rows`` and ``eval_rows`` index them (the
    hosts get the same index sets). Nothing is evaluated on ``eval_rows`` during training:
    each per-epoch joint prediction would release the hosts' partial scores again (with enough
    epochs, the column space of their features); see :func:`.prediction.predict_guest`. ``rng``: this party's
    secret randomness (masks, noise shares; the OS CSPRNG outside tests); ``batch_rng``: the
    public batch order (from the job seed: the batches are public among the parties anyway).
    ``bounds``: public ``column -> (lo, hi)`` feature bounds (required
    for every column under DP); ``ledger`` and ``dataset``: required under DP. ``noise_tap``
    (tests): called with every noise share this party draws.

    Raises:
        DataError: a host's row counts differ from the guest's, labels are not 0/1.
        ConfigError: DP without a ledger, or without bounds for every feature.
    """
    me, hosts, arb = channel.party, topology.hosts, topology.arbiter
    T, r = config.timeout, start_round
    check_dp_ledger(dp, ledger, dataset, who=me)
    x = check_matrix(x, who=me)
    y = np.asarray(y, dtype=np.float64).ravel()
    if y.shape[0] != x.shape[0]:
        raise DataError(f"{me}: {y.shape[0]} labels for {x.shape[0]} feature rows")
    if not np.all((y == 0) | (y == 1)):
        raise DataError(f"{me}: labels must be 0 or 1")
    train_rows = check_rows(train_rows, x.shape[0], who=me, what="training")
    eval_rows = check_rows(eval_rows, x.shape[0], who=me, what="evaluation")
    model = fit_model(x, train_rows, columns, dp=dp, intercept=True, bounds=check_bounds(bounds), who=me)

    dims = _hello(channel, hosts, rows=x.shape[0], train=train_rows.size, evaluation=eval_rows.size,
                  dim=model.weights.size, config=config, dp=dp, round=r, timeout=T)
    batch = config.batch_rows(backend, dims)
    plan = dp_plan(dp, rows=train_rows.size, config=config, parties=len(topology.data_parties),
                   arbiter=topology.arbiter is not None, batch_size=batch)
    _preflight_slots(backend, config, topology, dims, dp=plan is not None, batch=batch, rows=train_rows.size)
    if plan is None:
        refuse_exact_gradients(dims, rows=train_rows.size, batch_size=batch, who=me, setting=_batch_setting(config))
    setup = {"dims": dims, "plan": plan.to_json() if plan else None, "loss": bool(config.track_loss and plan is None)}
    channel.broadcast([*hosts, *([arb] if arb else [])], SETUP, setup, round=r)
    keys = setup_keys(channel, topology, backend, round=r, timeout=T)
    r += 1

    run = _Run(channel, topology, backend, keys, plan, dims, rng, T, noise_tap, track_loss=setup["loss"],
               batchcrypt=config.batchcrypt)
    step: _Step = _guest_step_arbiter if arb else _guest_step_two_party
    xt = model.transform(x[train_rows])
    yt = y[train_rows]

    def residual(logits: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return guest_residual_part(logits=logits, labels=yt[idx])

    history: list[dict[str, Any]] = []
    prev_loss: float | None = None
    stopped = False
    epochs_run = 0
    for epoch in range(1, config.epochs + 1):
        batches = epoch_partition(rows=train_rows.size, batch_size=batch, rng=batch_rng)
        channel.broadcast(hosts, EPOCH, {"stop": False, "batches": batches}, round=r)
        if arb:
            channel.send(arb, EPOCH, {"stop": False, "sizes": [int(b.size) for b in batches]}, round=r)
        lr_e = learning_rate(base=config.lr, epoch=epoch, schedule=config.lr_schedule)
        state = _epoch_state(batches)
        mask_scale = capped_mask_scale(backend, config)
        with epoch_charge(ledger, dataset, plan, job=channel.job, epoch=epoch, recipients=hosts):
            model = _train_epoch(run, model, xt, batches, first_round=r + 1, lr=lr_e, l2=config.l2,
                                 mask_scale=mask_scale, epoch=state, residual=residual, step=step)
        end_round = r + 1 + len(batches)
        epochs_run = epoch
        record: dict[str, Any] = {"round": epoch, "lr": lr_e, "loss": None}
        if run.track_loss:  # the loss sums are under the key of whoever decrypts the guest's gradient
            record["loss"] = request_loss(channel, keys.grad, holder=topology.grad_key_holder(me), sums=state.loss,
                                          round=end_round, timeout=T)
        history.append(record)
        if progress is not None:
            spent = spent_epsilon(plan, epoch)
            progress({**record, "epsilon": {p: spent for p in topology.data_parties} if spent is not None else None})
        r = end_round + 1
        loss = record["loss"]
        if config.tol is not None and loss is not None and prev_loss is not None and abs(prev_loss - loss) < config.tol:
            stopped = True
            break
        prev_loss = loss if loss is not None else prev_loss
    channel.broadcast([*hosts, *([arb] if arb else [])], EPOCH, {"stop": True}, round=r)
    return FitResult(
        model=model,
        history=history,
        dp=plan,
        epochs_run=epochs_run,
        stopped_early=stopped,
        next_round=r + 1,
        epsilon=spent_epsilon(plan, epochs_run),
    )


def _hello(
    channel: Channel,
    hosts: Sequence[str],
    *,
    rows: int,
    train: int,
    evaluation: int,
    dim: int,
    config: TrainingConfig,
    dp: PrivacySection | None,
    round: int,
    timeout: float,
) -> dict[str, int]:
    """The guest's side of HELLO: every host's row counts and settings checked against its own;
    every data party's gradient length (the guest's ``dim`` first)."""
    me = channel.party
    # -- hello: row counts, dimensions, agreement on the configuration ------------------------
    hellos = gather_all(channel, hosts, HELLO, round=round, timeout=timeout)
    for h, msg in hellos.items():
        if msg.get("rows") != rows or msg.get("train") != train or msg.get("eval") != evaluation:
            raise DataError(
                f"host {h!r} has {msg.get('rows')} aligned rows ({msg.get('train')} for training, "
                f"{msg.get('eval')} for evaluation); the guest {me!r} has {rows} "
                f"({train}, {evaluation}): the parties' tables are not aligned"
            )
        if msg.get("config") != config.digest() or msg.get("dp") != dp_digest(dp):
            raise ConfigError(f"host {h!r} was started with other training or DP settings than the guest {me!r}")
    return {me: dim, **{h: int(hellos[h]["dim"]) for h in hosts}}


def _guest_step_arbiter(
    run: _Run, epoch: _Epoch, *, round: int, norm: float, xb: np.ndarray, part: np.ndarray, offset: np.ndarray
) -> Any:
    """The guest's step with an arbiter: ``[[d]] = Σ_h [[b_h]] + a`` to every host, its masked
    gradient (and noise shares) to the arbiter, the loss terms; the arbiter's answer."""
    ch, backend, k = run.channel, run.backend, run.keys.grad
    hosts, a, pk = run.topology.hosts, part, run.packing(xb.shape[0])
    parts = gather_all(ch, hosts, PARTIAL, round=round, timeout=run.timeout)
    cts = [k.de(parts[h].get("ct"), sender=h, length=pk.length) for h in hosts]
    b_sum = backend.sum(cts)
    d = backend.add_plain(b_sum, pk.spread(a))
    for j, h in enumerate(hosts):
        msg: dict[str, Any] = {"ct": k.ser(d)}
        if run.track_loss and j > 0:
            msg["prefix"] = k.ser(backend.sum(cts[:j]))
        ch.send(h, RESIDUAL, msg, round=round)
    g = backend.add_plain(pk.product(backend, d, xb / norm), offset)
    masks = _grad_to_arbiter(run, g, norm=norm, round=round)
    if run.track_loss:
        terms = [k.de(parts[h].get("sq"), sender=h, length=1) for h in hosts]
        if len(hosts) > 1:
            cross = gather_all(ch, hosts[1:], CROSS, round=round, timeout=run.timeout)
            terms += [k.de(cross[h], sender=h, length=1) for h in hosts[1:]]
        _guest_loss_step(epoch, b_sum, a, pk, terms)
    return _opened(run, ch.recv(run.holder, PLAIN, round=round, timeout=run.timeout), masks, norm=norm)


def _guest_loss_step(epoch: _Epoch, b_sum: Ciphertext, a: np.ndarray, pk: Packing, terms: list[Ciphertext]) -> None:
    """A step's ``Σ d²/R = Σ (a + b)²/R`` (:mod:`.loss`) as the guest holds it: ``Σa²/R`` in
    plaintext, the cross term ``[[b]] @ (2a/R)`` (a one-column product in the step's layout
    ``pk``) left for the epoch's shared product, and the hosts' ``terms`` of the same step
    (:meth:`_Epoch.flush`)."""
    epoch.steps.append(_LossStep(b=b_sum, column=2.0 * a / epoch.rows, repeat=pk.repeat, terms=tuple(terms),
                                 plain=float(a @ a) / epoch.rows))


def _guest_step_two_party(
    run: _Run, epoch: _Epoch, *, round: int, norm: float, xb: np.ndarray, part: np.ndarray, offset: np.ndarray
) -> Any:
    """The guest's step without an arbiter: ``[[a]]`` under its own key to the host, its masked
    gradient from ``[[b]]`` under the host's key, the loss terms; then the two decryptions."""
    ch, backend, own, peer = run.channel, run.backend, run.own, run.keys.grad
    (host,) = run.topology.hosts
    a, pk = part, run.packing(xb.shape[0])
    ch.send(host, RESIDUAL, {"ct": own.ser(own.enc(pk.spread(a)))}, round=round)
    partial_msg = ch.recv(host, PARTIAL, round=round, timeout=run.timeout)
    b = peer.de(partial_msg.get("ct"), sender=host, length=pk.length)
    d = backend.add_plain(b, pk.spread(a))
    g = backend.add_plain(pk.product(backend, d, xb / norm), offset)
    data, masks = peer.seal(g, run.slots(run.me, norm))
    ch.send(host, GRAD, data, round=round)
    if run.track_loss:
        _guest_loss_step(epoch, b, a, pk, [peer.de(partial_msg.get("sq"), sender=host, length=1)])
    return _opened(run, _swap_decryptions(run, peer=host, norm=norm, round=round), masks, norm=norm)


# ------------------------------------------------------------------------------ host


def host_train(
    channel: Channel,
    *,
    topology: Topology,
    x: np.ndarray,
    train_rows: np.ndarray,
    eval_rows: np.ndarray,
    backend: CryptoBackend,
    config: TrainingConfig,
    dp: PrivacySection | None = None,
    ledger: PrivacyLedger | None = None,
    dataset: str | None = None,
    columns: Sequence[str] | None = None,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    rng: np.random.Generator,
    start_round: int = 1,
    noise_tap: NoiseTap | None = None,
) -> FitResult:
    """A host's side of training: partial logits, its encrypted gradient, noise shares.

    ``bounds``, ``ledger``, ``dataset`` and ``noise_tap`` as for :func:`guest_train`. Under DP the host
    checks that each epoch's batches partition the training rows before it charges its ledger.

    Raises:
        ConfigError: DP without a ledger, or without bounds for every feature.
        ProtocolError: malformed messages, or batches that are not a partition of the rows.
    """
    me, guest, arb = channel.party, topology.guest, topology.arbiter
    T, r = config.timeout, start_round
    check_dp_ledger(dp, ledger, dataset, who=me)
    x = check_matrix(x, who=me)
    if x.shape[1] == 0:
        raise DataError(f"{me}: a host needs at least one feature column")
    train_rows = check_rows(train_rows, x.shape[0], who=me, what="training")
    eval_rows = check_rows(eval_rows, x.shape[0], who=me, what="evaluation")
    model = fit_model(x, train_rows, columns, dp=dp, intercept=False, bounds=check_bounds(bounds), who=me)
    channel.send(
        guest,
        HELLO,
        {
            "rows": x.shape[0],
            "train": train_rows.size,
            "eval": eval_rows.size,
            "dim": model.weights.size,
            "config": config.digest(),
            "dp": dp_digest(dp),
        },
        round=r,
    )
    setup = check_setup(channel.recv(guest, SETUP, round=r, timeout=T), who=me)
    dims = {str(k): int(v) for k, v in setup["dims"].items()}
    if dims.get(me) != model.weights.size or set(dims) != set(topology.data_parties):
        raise ProtocolError(f"{me}: the guest's setup names other dimensions or parties")
    batch = config.batch_rows(backend, dims)  # the guest's, from the same public values
    plan = dp_plan(dp, rows=train_rows.size, config=config, parties=len(topology.data_parties),
                   arbiter=topology.arbiter is not None, batch_size=batch)
    _preflight_slots(backend, config, topology, dims, dp=plan is not None, batch=batch, rows=train_rows.size)
    if plan is None:
        refuse_exact_gradients({me: model.weights.size}, rows=train_rows.size, batch_size=batch, who=me,
                               setting=_batch_setting(config))
    if (plan.to_json() if plan else None) != setup.get("plan"):
        raise ConfigError(f"{me}: the guest's DP plan differs from this host's; refusing to train")
    # never trust the guest to keep the loss off under DP: it would be one more release
    track_loss = bool(setup.get("loss")) and plan is None
    keys = setup_keys(channel, topology, backend, round=r, timeout=T)
    r += 1

    run = _Run(channel, topology, backend, keys, plan, dims, rng, T, noise_tap, track_loss=track_loss,
               batchcrypt=config.batchcrypt)
    position = topology.hosts.index(me)
    # with an arbiter, the hosts after the first also send the guest a cross term of the loss
    step: _Step = partial(_host_step_arbiter, cross=track_loss and position > 0) if arb else _host_step_two_party
    # two-party, the guest's loss sums are under this host's key: the host decrypts them
    serves_loss = track_loss and arb is None
    xt = model.transform(x[train_rows])
    epochs_run = 0
    while True:
        ep = channel.recv(guest, EPOCH, round=r, timeout=T)
        if ep.get("stop"):
            break
        epoch = epochs_run + 1
        batches = check_partition(ep.get("batches"), train_rows.size, who=me)
        lr_e = learning_rate(base=config.lr, epoch=epoch, schedule=config.lr_schedule)
        state = _epoch_state(batches)
        mask_scale = capped_mask_scale(backend, config)
        with epoch_charge(ledger, dataset, plan, job=channel.job, epoch=epoch, recipients=run.others):
            model = _train_epoch(run, model, xt, batches, first_round=r + 1, lr=lr_e, l2=config.l2,
                                 mask_scale=mask_scale, epoch=state, residual=_host_residual, step=step)
        end_round = r + 1 + len(batches)
        epochs_run = epoch
        if serves_loss:
            serve_loss(channel, run.own, guest=guest, round=end_round, timeout=T)
        r = end_round + 1
    return FitResult(model=model, dp=plan, epochs_run=epochs_run, next_round=r + 1, epsilon=spent_epsilon(plan, epochs_run))


def _host_residual(logits: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return host_residual_part(logits=logits)


def _host_partial(run: _Run, k: Keys, b: np.ndarray, pk: Packing, epoch: _Epoch, *, round: int) -> dict[str, Any]:
    """A host's ``[[b]]`` in the step's layout ``pk`` (and, loss tracked, ``[[‖b‖²/R]]``) under
    ``k`` to the guest; the guest's RESIDUAL in return."""
    ch, guest = run.channel, run.topology.guest
    msg: dict[str, Any] = {"ct": k.ser(k.enc(pk.spread(b)))}
    if run.track_loss:
        msg["sq"] = k.ser(k.enc(square_term(b, rows=epoch.rows)))
    ch.send(guest, PARTIAL, msg, round=round)
    res = ch.recv(guest, RESIDUAL, round=round, timeout=run.timeout)
    if not isinstance(res, dict):
        raise ProtocolError(f"{run.me}: malformed residual from the guest")
    return res


def _host_step_arbiter(
    run: _Run, epoch: _Epoch, *, round: int, norm: float, xb: np.ndarray, part: np.ndarray, offset: np.ndarray,
    cross: bool,
) -> Any:
    """A host's step with an arbiter: ``[[b_h]]`` to the guest, its masked gradient from the
    guest's ``[[d]]`` (and noise shares) to the arbiter, the loss cross term if ``cross``; the
    arbiter's answer."""
    backend, k, guest, b = run.backend, run.keys.grad, run.topology.guest, part
    pk = run.packing(xb.shape[0])
    res = _host_partial(run, k, b, pk, epoch, round=round)
    d = k.de(res.get("ct"), sender=guest, length=pk.length)
    g = backend.add_plain(pk.product(backend, d, xb / norm), offset)
    masks = _grad_to_arbiter(run, g, norm=norm, round=round)
    if cross:
        prefix = k.de(res.get("prefix"), sender=guest, length=pk.length)
        run.channel.send(guest, CROSS, k.ser(cross_term(backend, prefix, b, rows=epoch.rows, packing=pk)), round=round)
    return _opened(run, run.channel.recv(run.holder, PLAIN, round=round, timeout=run.timeout), masks, norm=norm)


def _host_step_two_party(
    run: _Run, epoch: _Epoch, *, round: int, norm: float, xb: np.ndarray, part: np.ndarray, offset: np.ndarray
) -> Any:
    """The host's step without an arbiter: ``[[b]]`` under its own key to the guest, its masked
    gradient from the guest's ``[[a]]`` (under the guest's key); then the two decryptions."""
    backend, peer, guest, b = run.backend, run.keys.grad, run.topology.guest, part
    pk = run.packing(xb.shape[0])
    res = _host_partial(run, run.own, b, pk, epoch, round=round)
    a = peer.de(res.get("ct"), sender=guest, length=pk.length)
    d = backend.add_plain(a, pk.spread(b))
    g = backend.add_plain(pk.product(backend, d, xb / norm), offset)
    data, masks = peer.seal(g, run.slots(run.me, norm))
    run.channel.send(guest, GRAD, data, round=round)
    return _opened(run, _swap_decryptions(run, peer=guest, norm=norm, round=round), masks, norm=norm)


# ------------------------------------------------------------------------------ arbiter


def arbiter_train(
    channel: Channel,
    *,
    topology: Topology,
    backend: CryptoBackend,
    config: TrainingConfig,
    rng: np.random.Generator | None = None,
    start_round: int = 1,
    noise_tap: NoiseTap | None = None,
) -> FitResult:
    """The key holder's side: generate keys, decrypt masked (and, under DP, noised) gradients.

    The arbiter holds no data and learns only masked gradients and, without DP, one loss value
    per epoch. Under DP it adds its own noise share to each gradient before decrypting (sized by
    the guest's plan, which every host has checked against its own), so that no data party
    colluding with it alone, nor the arbiter alone, knows the whole noise. ``rng`` draws those
    shares: required when the guest's setup turns DP on (without DP the arbiter draws nothing).

    Raises:
        ConfigError: DP is on and no ``rng`` was given (before anything is decrypted).
    """
    me, guest = channel.party, topology.guest
    T, r = config.timeout, start_round
    parties = topology.data_parties
    sk = backend.keygen()
    keys = Keys(backend, sk.public(), sk)
    channel.broadcast(parties, KEY, {"public": keys.public.serialize()}, round=r)
    setup = check_setup(channel.recv(guest, SETUP, round=r, timeout=T), who=me)
    dims = {str(k): int(v) for k, v in setup["dims"].items()}
    plan = DpPlan.from_json(setup["plan"]) if setup.get("plan") is not None else None
    dp_on = plan is not None
    if dp_on and rng is None:
        raise ConfigError(f"{me}: under DP the arbiter adds a noise share and needs an rng")
    track_loss = bool(setup.get("loss")) and not dp_on  # under DP the loss is never decrypted
    r += 1
    epochs_run = 0
    while True:
        ep = channel.recv(guest, EPOCH, round=r, timeout=T)
        if ep.get("stop"):
            break
        sizes = ep["sizes"]
        if not isinstance(sizes, list) or any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in sizes):
            raise ProtocolError(f"{me}: malformed batch sizes from the guest")
        for s, size in enumerate(sizes):
            step_round = r + 1 + s
            if not size:
                continue
            slots = {p: GradSlots.for_step(backend, enabled=config.batchcrypt, rows=size, owner=p, topology=topology,
                                           dims=dims, dp=dp_on) for p in parties}
            _arbiter_step(channel, keys, topology=topology, dims=dims, plan=plan, rng=rng, norm=float(size),
                          round=step_round, timeout=T, tap=noise_tap, slots=slots)
        end_round = r + 1 + len(sizes)
        epochs_run += 1
        if track_loss:
            serve_loss(channel, keys, guest=guest, round=end_round, timeout=T)
        r = end_round + 1
    return FitResult(model=None, epochs_run=epochs_run, next_round=r + 1)


def _arbiter_step(
    channel: Channel,
    keys: Keys,
    *,
    topology: Topology,
    dims: Mapping[str, int],
    plan: DpPlan | None,
    rng: np.random.Generator | None,
    norm: float,
    round: int,
    timeout: float,
    tap: NoiseTap | None,
    slots: Mapping[str, GradSlots | None],
) -> None:
    """The arbiter's step: every data party's masked gradient, plus (DP) the other parties'
    noise shares and its own, decrypted and sent back to that party (packed in ``slots[p]``:
    the masked packed integers, which only ``p`` can unmask)."""
    me, parties, backend = channel.party, topology.data_parties, keys.backend
    grads = gather_all(channel, parties, GRAD, round=round, timeout=timeout)
    noise = gather_all(channel, parties, NOISE, round=round, timeout=timeout) if plan is not None else {}
    for p in parties:
        sl = slots[p]
        ct = keys.de_gradient(grads[p], sender=p, slots=sl)
        if plan is not None:
            shares = [keys.de_gradient(noise[q].get(p), sender=q, slots=sl) for q in parties if q != p]
            mine = draw_share(plan, owner=p, me=me, topology=topology, dims=dims, norm=norm,
                              rng=rng, round=round, tap=tap)  # type: ignore[arg-type]
            if sl is None:
                ct = backend.add_plain(backend.sum([ct, *shares]), mine)
            else:
                ct = backend.sum([ct, *shares, keys.enc_noise(mine, sl)])
        z = keys.dec_gradient(ct, sl, sender=p)
        if sl is None and z.shape != (dims[p],):
            raise ProtocolError(f"{me}: {p!r} sent a gradient of {z.shape[0]} values, expected {dims[p]}")
        channel.send(p, PLAIN, z, round=round)
