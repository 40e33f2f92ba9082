"""Secure aggregation recipes: key ceremony, encrypt → add ciphertexts → decrypt the noised sum.

Roles
-----
* **Silos** hold data *and* the decryption key (CKKS default key model: one key pair shared by
  the silos). Each silo encrypts its (clipped, noised) contribution under the shared public key.
* The **aggregator** holds **no key**: it receives only ciphertexts (and content-free control
  messages), adds them homomorphically and returns the encrypted sum.
* Every silo, as a key holder, decrypts only that sum, which already carries the full DP noise.

Key ceremony (round 0)
----------------------
The first silo in sorted order (the *leader*) generates the key pair, sends the exported
secret key to every other silo over the channel, and sends the public context (no secret) to the
aggregator. In production the channel is the silo agents' gRPC transport with mutual TLS, so the
secret key only ever travels silo-to-silo, encrypted and authenticated by certificate; the
aggregator never receives the secret key nor any plaintext update. A threshold scheme (no single
party able to decrypt) is not available in the backends yet; see ``docs/horizontal.md`` for what
the shared-key model does not protect against (a key holder colluding with the aggregator).

One noised secure sum (the two-phase round)
-------------------------------------------
1. ``hello``: each silo that wants to take part announces itself (the payload holds no data).
2. ``present``: the aggregator tells the announced silos how many (``n``) were announced by the
   deadline; fewer than ``min_silos`` → ``abort`` (nothing is encrypted, nothing decrypted).
3. ``update``: each silo charges its privacy ledger (*before* anything that contains its data
   leaves it), draws a noise share sized for ``n`` present silos and sends the ciphertext of
   contribution + share. A silo whose budget would be exceeded sends ``withdraw`` instead.
4. ``topup``: if only ``k < n`` updates arrived, the aggregator asks the ``k`` contributors for
   an extra, noise-only ciphertext so that the total noise is again at least the target
   (``noise_share_topup_sigma``); if fewer than ``min_silos`` contributed, or a top-up is
   missing, the round is aborted and nothing is decrypted.
5. ``result``: the aggregator adds everything and sends the encrypted sum to every silo still in
   the job (also those that sat this round out, so all key holders keep the same model).

Noise shares are sized to tolerate ``colluders`` curious key holders that subtract their own
shares (``noise_share_sigma(parties = n − colluders)``): any ``k − colluders`` shares of the
``k`` in the sum already carry the target noise.

Sums that expose one silo
-------------------------
A decrypted sum of exactly **two** contributions gives each contributor the other's exact
contribution (the sum minus its own); a sum of **one** contribution that reaches other silos gives
it to them. Both sides refuse such a sum unless ``allow_exposed=True``
(:func:`exposed_sums_allowed`: ``[crypto] insecure = true``, or silo-level DP, whose noise shares
protect a whole contribution even after a colluder subtracts its own). The aggregator aborts the
round like a round with too few silos (nothing is decrypted; before anyone encrypts when only two
silos announce themselves); a silo refuses to send its update into an announced sum of two, and to
decrypt a result it could subtract down to one other silo's contribution
(:class:`~fedsilo.errors.ProtocolError`). A federation of exactly two silos can never sum safely:
:func:`check_federation` refuses it at job start.

The aggregator must not be a silo: it would hold the shared secret key and see every silo's
ciphertext. Both sides of the key ceremony refuse that (:class:`~fedsilo.errors.ConfigError`).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ContextManager, Literal

import numpy as np

from fedsilo.crypto.base import Ciphertext, CryptoBackend, PublicContext, SecretKey
from fedsilo.errors import BudgetExceededError, ConfigError, ProtocolError
from fedsilo.protocols.channel import Channel
from fedsilo.protocols.horizontal import messages as msgs

__all__ = [
    "KIND_HELLO",
    "KIND_UPDATE",
    "KIND_TOPUP",
    "KIND_CTL",
    "KIND_KEY_SECRET",
    "KIND_KEY_PUBLIC",
    "DROP_PHASES",
    "Contribution",
    "SiloRoundOutcome",
    "AggregatorRoundOutcome",
    "check_federation",
    "exposed_sums_allowed",
    "exposes_contribution",
    "key_leader",
    "silo_key_ceremony",
    "aggregator_key_ceremony",
    "encrypt_vector",
    "add_ciphertexts",
    "decrypt_vector",
    "share_parties",
    "topup_parties",
    "required_contributors",
    "ledger_recipient",
    "recipients_mechanism",
    "silo_secure_sum",
    "aggregator_secure_sum",
]

# The message kinds and their payload types are listed in .messages (the protocol's figure);
# the KIND_* names are kept for the tests and tools that inspect a hub's log.
KIND_KEY_SECRET = msgs.KEY_SECRET
KIND_KEY_PUBLIC = msgs.KEY_PUBLIC
KIND_HELLO = msgs.HELLO
KIND_UPDATE = msgs.UPDATE
KIND_TOPUP = msgs.TOPUP
KIND_CTL = msgs.CONTROL

#: Where a silo can be made to go silent (test hook): before announcing, after announcing but
#: before sending its update, or before sending its top-up share.
DROP_PHASES: tuple[str, ...] = ("hello", "update", "topup")


# ---------------------------------------------------------------------------------------------
# Key ceremony
# ---------------------------------------------------------------------------------------------
def key_leader(silos: Sequence[str]) -> str:
    """The silo that generates the shared key pair: the first name in sorted order."""
    if not silos:
        raise ConfigError("a federation needs at least one silo")
    return sorted(silos)[0]


def _refuse_aggregator_silo(party: str, aggregator: str, silos: Sequence[str]) -> None:
    if aggregator in silos:
        raise ConfigError(
            f"{party}: the aggregator {aggregator!r} is also a silo of this job; it would hold the shared "
            "secret key and receive every silo's ciphertext, so it could decrypt each update. Run the "
            "aggregator as a separate party that holds no data and no key"
        )


def silo_key_ceremony(
    channel: Channel,
    backend: CryptoBackend,
    *,
    silos: Sequence[str],
    aggregator: str,
    timeout: float,
) -> SecretKey:
    """Round 0: the leader makes the key pair and hands it out; every silo returns the secret key.

    The secret goes only to peer silos (mTLS in production); the aggregator gets the public
    context, which ``serialize()`` guarantees holds no secret.

    Raises:
        ConfigError: ``aggregator`` is one of ``silos`` (it would receive the secret key), before
            any key is made or sent.
    """
    _refuse_aggregator_silo(channel.party, aggregator, silos)
    leader = key_leader(silos)
    if channel.party == leader:
        secret = backend.keygen()
        exported = secret.export_secret()
        for peer in sorted(silos):
            if peer != leader:
                channel.send(peer, KIND_KEY_SECRET, msgs.KeySecret(exported).wire(), round=0)
        channel.send(aggregator, KIND_KEY_PUBLIC, msgs.KeyPublic(secret.public().serialize()).wire(), round=0)
        return secret
    key = _received(channel, KIND_KEY_SECRET, channel.recv(leader, KIND_KEY_SECRET, round=0, timeout=timeout), leader)
    return backend.load_secret(key.secret)


def aggregator_key_ceremony(
    channel: Channel, backend: CryptoBackend, *, silos: Sequence[str], timeout: float
) -> PublicContext:
    """Round 0 on the aggregator: receive the public context (never a secret key).

    Raises:
        ConfigError: this party (``channel.party``) is also one of ``silos``.
    """
    _refuse_aggregator_silo(channel.party, channel.party, silos)
    leader = key_leader(silos)
    key = _received(channel, KIND_KEY_PUBLIC, channel.recv(leader, KIND_KEY_PUBLIC, round=0, timeout=timeout), leader)
    return backend.load_public(key.public)


# ---------------------------------------------------------------------------------------------
# Recipes over the backend primitives
# ---------------------------------------------------------------------------------------------
def encrypt_vector(backend: CryptoBackend, public: PublicContext, values: np.ndarray) -> bytes:
    """Encrypt a float vector for aggregation and serialize it for the wire."""
    return backend.serialize(backend.encrypt(public, np.asarray(values, dtype=np.float64)))


def add_ciphertexts(backend: CryptoBackend, public: PublicContext, blobs: Sequence[bytes]) -> bytes:
    """Deserialize (checking the key fingerprint), add, serialize: all the aggregator can do."""
    cts: list[Ciphertext] = [backend.deserialize(public, b) for b in blobs]
    lengths = {ct.length for ct in cts}
    if len(lengths) != 1:
        raise ProtocolError(f"ciphertexts to add have different lengths {sorted(lengths)}")
    return backend.serialize(backend.sum(cts))


def decrypt_vector(backend: CryptoBackend, secret: SecretKey, blob: bytes) -> np.ndarray:
    """Decrypt an aggregate from the wire (key holders only)."""
    return backend.decrypt(secret, backend.deserialize(secret.public(), blob))


# ---------------------------------------------------------------------------------------------
# Noise-share sizing (pure)
# ---------------------------------------------------------------------------------------------
def share_parties(*, present: int, colluders: int) -> int:
    """``parties`` for :func:`~fedsilo.privacy.mechanisms.noise_share_sigma`: ``present − colluders``.

    Each of ``present`` shares carries ``σ²/(present − colluders)``, so the shares of any
    ``present − colluders`` silos already add up to the target ``σ²``.
    """
    if present - colluders < 1:
        raise ConfigError(f"{present} silos cannot tolerate {colluders} colluding key holders")
    return present - colluders


def topup_parties(*, present: int, contributors: int, colluders: int) -> tuple[int, int]:
    """``(parties, present)`` for :func:`~fedsilo.privacy.mechanisms.noise_share_topup_sigma`.

    Shares were drawn for ``present`` silos but only ``contributors`` sent theirs: each
    contributor's total must become ``σ²/(contributors − colluders)``.
    """
    return share_parties(present=present, colluders=colluders), share_parties(
        present=contributors, colluders=colluders
    )


#: The ledger's ``recipient`` column holds at most this many characters.
_RECIPIENT_MAX = 256


def ledger_recipient(silos: Sequence[str], *, keyless: bool = False, aggregator: str = "aggregator") -> str:
    """The ledger ``recipient`` of a noised secure sum: ``"silos:a,b,c"``.

    Shared key: the decrypted sum goes to the silos, not the aggregator: every silo of the job
    holds the shared key, and the aggregator sends the encrypted result to every silo still in
    the job (also those that sat the round out); it only relays ciphertexts. Keyless (SecAgg+):
    the aggregator unmasks the noised sum itself, so it is a recipient too:
    ``"aggregator+silos:a,b,c"``. Federations too large for the ledger's 256-character column
    are recorded by count; :func:`recipients_mechanism` always lists every name.
    """
    names = sorted(silos)
    full = "silos:" + ",".join(names)
    recipient = full if len(full) <= _RECIPIENT_MAX else f"silos:{len(names)} key holders"
    if not keyless:
        return recipient
    both = f"{aggregator}+{full}"
    return both if len(both) <= _RECIPIENT_MAX else f"{aggregator}+silos:{len(names)} silos"


def recipients_mechanism(silos: Sequence[str], *, aggregator: str, keyless: bool = False) -> dict[str, Any]:
    """Who receives a noised secure sum, for the ledger's mechanism record (keyless: the
    aggregator unmasks it, ``unmasked_by``)."""
    out: dict[str, Any] = {"recipients": sorted(silos), "relayed_by": aggregator}
    if keyless:
        out["unmasked_by"] = aggregator
    return out


def required_contributors(*, min_silos: int, colluders: int) -> int:
    """Fewest contributions a sum may be decrypted with: ``max(min_silos, colluders + 1)``."""
    return max(int(min_silos), int(colluders) + 1)


def exposes_contribution(*, contributors: int, other_recipients: int, colluders: int = 1) -> bool:
    """Whether a decrypted sum lets ``colluders`` pooling recipients compute one silo's exact
    contribution.

    ``contributors``: contributions in the sum; ``other_recipients``: silos that receive the
    result without having contributed. With ``2 <= contributors <= colluders + 1``, the other
    contributors (at most ``colluders``) subtract their own and hold the last one's (two
    contributors and one curious silo: each holds the other's); one contributor's sum *is* its
    contribution, exposed if anyone else receives it.
    """
    c = max(1, int(colluders))
    return 2 <= contributors <= c + 1 or (contributors == 1 and other_recipients > 0)


def exposed_sums_allowed(*, insecure: bool, silo_level_dp: bool) -> bool:
    """The ``allow_exposed`` policy of a job: ``[crypto] insecure = true`` or silo-level DP.

    Silo-level DP-FedAvg sizes each noise share for ``colluders >= 1`` curious key holders, so
    what a silo learns by subtracting its own contribution still carries the full noise
    calibrated to a whole silo's update. Record-level DP (DP-SGD) and DP statistics protect single
    records only: the other silo's whole update or statistics would be in the clear up to that
    noise. Without DP nothing protects it.
    """
    return bool(insecure) or bool(silo_level_dp)


def check_federation(*, silos: Sequence[str], allow_exposed: bool, colluders: int = 1) -> None:
    """Refuse, at job start, a federation whose every decrypted sum would expose one silo.

    With ``2 <= n <= colluders + 1`` silos, any sum has at most ``colluders + 1`` contributions
    (two silos: each gets the other's) or one (the others receive it). One silo alone, or more
    than ``colluders + 1``, can sum safely.

    Raises:
        ConfigError: such a federation and ``allow_exposed`` is False.
    """
    names = sorted(set(silos))
    if not allow_exposed and 2 <= len(names) <= max(1, colluders) + 1:
        who = (
            f"exactly 2 silos ({', '.join(names)}) lets each compute the other's exact contribution "
            "(the decrypted sum minus its own)"
            if len(names) == 2
            else f"{len(names)} silos ({', '.join(names)}) with {colluders} colluding silos tolerated lets the "
            "colluders compute another silo's exact contribution (the decrypted sum minus their own)"
        )
        raise ConfigError(
            f"a job of {who}; add silos, use silo-level DP, or set [crypto] insecure = true (tests and baselines only)"
        )


# ---------------------------------------------------------------------------------------------
# One noised secure sum: silo side
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Contribution:
    """What a silo puts into one secure sum.

    ``values(present)`` returns the silo's (clipped) data vector plus its noise share sized for
    ``present`` announced silos; ``topup(present, contributors)`` the extra noise-only vector
    when some announced silos did not send; ``charge()`` is the ledger charge (a context
    manager raising :class:`~fedsilo.errors.BudgetExceededError`) entered before the ciphertext
    leaves the silo, or ``None`` when the release is not a DP release (no DP configured).
    ``session_noise``: noise the secure-sum session itself adds (a keyless session's distributed
    discrete Gaussian, :mod:`.sums`); ``None`` for shared-key sums, whose noise is in ``values``.
    """

    values: Callable[[int], np.ndarray]
    topup: Callable[[int, int], np.ndarray]
    charge: Callable[[], ContextManager[Any]] | None = None
    session_noise: Any = None


@dataclass(frozen=True, slots=True)
class SiloRoundOutcome:
    """How one secure sum ended for one silo."""

    status: Literal["ok", "aborted", "withdrawn", "stopped"]
    total: np.ndarray | None = None
    contributors: tuple[str, ...] = ()
    failures: tuple[str, ...] = ()
    contributed: bool = False
    charged: bool = False
    reason: str = ""


def silo_secure_sum(
    channel: Channel,
    *,
    round: int,
    aggregator: str,
    backend: CryptoBackend,
    secret: SecretKey,
    public: PublicContext,
    contribution: Contribution | None,
    timeout: float,
    drop: str | None = None,
    allow_exposed: bool = False,
    colluders: int = 1,
) -> SiloRoundOutcome:
    """A silo's side of one secure sum. ``contribution=None``: sit this round out but stay in sync.

    ``drop`` (test hook, one of :data:`DROP_PHASES`) makes the silo go silent at that phase: a
    real missing message, as a crash or network loss would produce.

    ``allow_exposed`` (default False, see :func:`exposed_sums_allowed`): unless True, the silo
    sends no update into a sum announced with only two silos, and decrypts no result from which it
    could compute one other silo's exact contribution (it contributed to a sum of two, or did not
    contribute to a sum of one).

    Raises:
        ProtocolError: the aggregator announced or returned such a sum although it is not allowed
            (an aggregator running another policy); nothing was charged, sent or decrypted.
    """
    if drop is not None and drop not in DROP_PHASES:
        raise ConfigError(f"drop phase must be one of {DROP_PHASES}, got {drop!r}")
    me = channel.party
    participating = contribution is not None and drop != "hello"
    if participating:
        channel.send(aggregator, KIND_HELLO, msgs.Hello().wire(), round=round)
    contributed = charged = topped_up = False
    while True:
        msg = _received(channel, KIND_CTL, channel.recv(aggregator, KIND_CTL, round=round, timeout=timeout), aggregator)
        if isinstance(msg, msgs.Present):
            if not participating or drop == "update":
                continue
            assert contribution is not None
            if contributed or charged:
                # one update per round: a second announcement would draw a second charge and a
                # second freshly noised update of the same data (found by the privacy review)
                raise ProtocolError(
                    f"{me}: round {round}: the aggregator {aggregator!r} announced the sum a second time; {me} "
                    "sends one update per round and nothing more"
                )
            n = msg.n
            if not allow_exposed and exposes_contribution(contributors=n, other_recipients=0, colluders=colluders):
                who = "each could compute the other's" if n == 2 else f"{n - 1} colluding silos could compute another's"
                raise ProtocolError(
                    f"{me}: round {round}: the aggregator {aggregator!r} announced a sum of {n} silos, from which "
                    f"{who} exact update; {me} sends nothing (allowed only with silo-level DP or [crypto] "
                    "insecure = true)"
                )
            try:
                with contribution.charge() if contribution.charge is not None else contextlib.nullcontext():
                    charged = contribution.charge is not None
                    blob = encrypt_vector(backend, public, contribution.values(n))
                    channel.send(aggregator, KIND_UPDATE, msgs.Update("ok", blob).wire(), round=round)
                contributed = True
            except BudgetExceededError as exc:
                channel.send(aggregator, KIND_UPDATE, msgs.Update("withdraw").wire(), round=round)
                return SiloRoundOutcome("withdrawn", reason=str(exc))
        elif isinstance(msg, msgs.TopupRequest):
            if not contributed or drop == "topup":
                continue
            assert contribution is not None
            if topped_up:
                raise ProtocolError(
                    f"{me}: round {round}: the aggregator {aggregator!r} asked for a second noise top-up; {me} "
                    "sends one per round and nothing more"
                )
            topped_up = True
            noise = contribution.topup(msg.present, msg.contributors)
            channel.send(aggregator, KIND_TOPUP, msgs.Topup(encrypt_vector(backend, public, noise)).wire(), round=round)
        elif isinstance(msg, msgs.Abort):
            return SiloRoundOutcome("aborted", contributed=contributed, charged=charged, reason=msg.reason)
        elif isinstance(msg, msgs.Stop):
            return SiloRoundOutcome("stopped", contributed=contributed, charged=charged, reason=msg.reason)
        else:
            summed = list(msg.contributors)
            others = [c for c in summed if c != me]
            # what this silo, pooled with up to colluders - 1 others, can subtract from the sum:
            # one contribution must never be left alone
            k, c = len(summed), max(1, colluders)
            if not allow_exposed and (2 <= k <= c + 1 if me in summed else 1 <= k <= c):
                raise ProtocolError(
                    f"{me}: round {round}: refusing to decrypt the sum the aggregator {aggregator!r} sent: "
                    f"it holds {len(summed)} contribution(s), so {me}"
                    + (" would learn " if len(others) == 1 else f" and {len(summed) - 2} colluding silo(s) would learn ")
                    + f"{others[-1]!r}'s exact update (allowed only with silo-level DP or [crypto] insecure = true)"
                )
            total = decrypt_vector(backend, secret, msg.ct)
            return SiloRoundOutcome(
                "ok",
                total=total,
                contributors=msg.contributors,
                failures=msg.failures,
                contributed=contributed,
                charged=charged,
            )


# ---------------------------------------------------------------------------------------------
# One noised secure sum: aggregator side
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AggregatorRoundOutcome:
    """How one secure sum ended on the aggregator (which never learns a plaintext)."""

    status: Literal["ok", "aborted"]
    contributors: tuple[str, ...] = ()
    failures: tuple[str, ...] = ()
    withdrawn: tuple[str, ...] = ()
    reason: str = ""
    topup: bool = False


def _exposed_reason(contributors: int) -> str:
    if contributors == 2:
        return "a sum of 2 would let each contributor compute the other's exact update"
    if contributors > 2:
        return f"a sum of {contributors} would let {contributors - 1} colluding contributors compute the last one's exact update"
    return "a sum of 1 would give that silo's exact update to the others"


def _received(channel: Channel, kind: str, payload: Any, sender: str) -> Any:
    """The typed message (:mod:`.messages`); ProtocolError naming this party if malformed."""
    try:
        return msgs.parse(kind, payload, sender=sender)
    except ProtocolError as exc:
        raise ProtocolError(f"{channel.party}: {exc}") from None


def _typed(kind: str, payloads: dict[str, Any]) -> dict[str, Any]:
    """Each sender's typed message, or None where it is malformed (that sender counts as missing)."""
    out: dict[str, Any] = {}
    for sender, payload in payloads.items():
        try:
            out[sender] = msgs.parse(kind, payload, sender=sender)
        except ProtocolError:
            out[sender] = None
    return out


def aggregator_secure_sum(
    channel: Channel,
    *,
    round: int,
    silos: Sequence[str],
    backend: CryptoBackend,
    public: PublicContext,
    min_silos: int,
    colluders: int,
    timeout: float,
    allow_exposed: bool = False,
) -> AggregatorRoundOutcome:
    """The aggregator's side of one secure sum over the silos still in the job.

    ``allow_exposed`` (default False, see :func:`exposed_sums_allowed`): unless True, a round in
    which the decrypted sum would let a recipient compute one silo's exact contribution (two
    contributors, or one whose result other silos receive) is aborted like a round with too few
    silos: nothing is decrypted. When only two silos announce themselves it is aborted before
    anyone encrypts or charges a ledger.
    """
    active = sorted(silos)
    need = required_contributors(min_silos=min_silos, colluders=colluders)

    def finish_abort(reason: str, *, failures: Sequence[str] = (), withdrawn: Sequence[str] = ()) -> AggregatorRoundOutcome:
        for s in active:
            if s not in withdrawn:
                channel.send(s, KIND_CTL, msgs.Abort(reason).wire(), round=round)
        return AggregatorRoundOutcome("aborted", failures=tuple(sorted(failures)), withdrawn=tuple(sorted(withdrawn)), reason=reason)

    hellos = _typed(KIND_HELLO, channel.gather(active, KIND_HELLO, round=round, timeout=timeout))
    ready = sorted(s for s, m in hellos.items() if isinstance(m, msgs.Hello))
    missing = sorted(set(active) - set(ready))
    if len(ready) < need:
        return finish_abort(
            f"round {round}: only {len(ready)} of {len(active)} silos announced themselves "
            f"(need {need}); nothing was decrypted",
            failures=missing,
        )
    if not allow_exposed and exposes_contribution(
        contributors=len(ready), other_recipients=len(active) - len(ready), colluders=colluders
    ):
        return finish_abort(
            f"round {round}: {len(ready)} of {len(active)} silos announced themselves; "
            f"{_exposed_reason(len(ready))}; nothing was decrypted",
            failures=missing,
        )
    n = len(ready)
    for s in ready:
        channel.send(s, KIND_CTL, msgs.Present(n).wire(), round=round)
    received = channel.gather(ready, KIND_UPDATE, round=round, timeout=timeout)
    updates = _typed(KIND_UPDATE, received)
    # an "ok" update without a ciphertext is an error; any other unreadable update counts as missing
    bad = sorted(s for s, m in updates.items() if m is None and isinstance(received[s], dict) and received[s].get("status") == "ok")
    if bad:
        raise ProtocolError(f"round {round}: malformed update from {bad}")
    withdrawn = sorted(s for s, m in updates.items() if m is not None and m.status == "withdraw")
    blobs = {s: m.ct for s, m in updates.items() if m is not None and m.status == "ok"}
    contributors = sorted(blobs)
    failures = sorted(set(active) - set(contributors))
    if len(contributors) < need:
        return finish_abort(
            f"round {round}: only {len(contributors)} of {n} announced silos sent their update "
            f"(need {need})"
            + (f"; {', '.join(withdrawn)} withdrew (privacy budget exhausted)" if withdrawn else "")
            + "; nothing was decrypted",
            failures=failures,
            withdrawn=withdrawn,
        )
    receivers = set(active) - set(withdrawn)
    if not allow_exposed and exposes_contribution(
        contributors=len(contributors), other_recipients=len(receivers - set(contributors)), colluders=colluders
    ):
        return finish_abort(
            f"round {round}: only {len(contributors)} of {n} announced silos sent their update; "
            f"{_exposed_reason(len(contributors))}; nothing was decrypted",
            failures=failures,
            withdrawn=withdrawn,
        )
    extra: list[bytes] = []
    topup = len(contributors) < n
    if topup:
        for s in contributors:
            channel.send(s, KIND_CTL, msgs.TopupRequest(n, len(contributors)).wire(), round=round)
        tops = _typed(KIND_TOPUP, channel.gather(contributors, KIND_TOPUP, round=round, timeout=timeout))
        got = {s: m.ct if m is not None else None for s, m in tops.items()}
        if set(s for s, b in got.items() if b is not None) != set(contributors):
            late = sorted(set(contributors) - set(s for s, b in got.items() if b is not None))
            return finish_abort(
                f"round {round}: top-up noise missing from {late}; the sum would carry too little "
                "noise, so nothing was decrypted",
                failures=sorted(set(failures) | set(late)),
                withdrawn=withdrawn,
            )
        extra = [got[s] for s in contributors]  # type: ignore[misc]
    total = add_ciphertexts(backend, public, [blobs[s] for s in contributors] + extra)  # type: ignore[misc]
    # one serialization of the encrypted sum for every silo
    channel.broadcast([s for s in active if s not in withdrawn], KIND_CTL,
                      msgs.Result(total, tuple(contributors), tuple(failures)).wire(), round=round)
    return AggregatorRoundOutcome(
        "ok", contributors=tuple(contributors), failures=tuple(failures), withdrawn=tuple(withdrawn), topup=topup
    )


def stop_silos(channel: Channel, *, silos: Sequence[str], round: int, reason: str) -> None:
    """Tell every remaining silo the job is over (they return without decrypting anything)."""
    for s in sorted(silos):
        channel.send(s, KIND_CTL, msgs.Stop(reason).wire(), round=round)


__all__.append("stop_silos")
