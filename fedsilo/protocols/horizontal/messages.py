"""The messages of one noised secure sum (:mod:`.secure_aggregation`), as its figure lists them.

Round 0, the key ceremony (the leader is the first silo in sorted order)::

    leader     -- KEY_SECRET  KeySecret(secret)   -->  every other silo
    leader     -- KEY_PUBLIC  KeyPublic(public)   -->  aggregator

Rounds 1.., one secure sum each::

    silo       -- HELLO       Hello()                               -->  aggregator
    aggregator -- CONTROL     Present(n)                            -->  announced silos
    silo       -- UPDATE      Update("ok", ct) | Update("withdraw") -->  aggregator
    aggregator -- CONTROL     TopupRequest(present, contributors)   -->  contributors (dropouts only)
    silo       -- TOPUP       Topup(ct)                             -->  aggregator
    aggregator -- CONTROL     Result(ct, contributors, failures)    -->  every silo still in the job
    aggregator -- CONTROL     Abort(reason) | Stop(reason)          -->  silos (instead of the above)

Each kind has one payload type. CONTROL's type is the tagged union :data:`Control` (its
``type`` field names the variant): a silo waits for the aggregator's next instruction, whichever
it is. Payloads travel as plain codec maps (:meth:`wire`); :func:`parse` turns a received map
back into its type or raises :class:`~fedsilo.errors.ProtocolError` naming the sender, so a
malformed message never reaches the protocol's logic.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, Union

from fedsilo.errors import ProtocolError

__all__ = [
    "CONTROL",
    "HELLO",
    "KEY_PUBLIC",
    "KEY_SECRET",
    "MESSAGE_KINDS",
    "TOPUP",
    "UPDATE",
    "Abort",
    "Control",
    "Hello",
    "KeyPublic",
    "KeySecret",
    "Present",
    "Result",
    "Stop",
    "Topup",
    "TopupRequest",
    "Update",
    "parse",
    "parse_control",
]

KEY_SECRET = "key.secret"
KEY_PUBLIC = "key.public"
HELLO = "sum.hello"
UPDATE = "sum.update"
TOPUP = "sum.topup"
CONTROL = "sum.ctl"
MESSAGE_KINDS = (KEY_SECRET, KEY_PUBLIC, HELLO, UPDATE, TOPUP, CONTROL)


@dataclass(frozen=True, slots=True)
class KeySecret:
    """The shared secret key, exported by the leader (silo to silo only)."""

    secret: bytes

    def wire(self) -> dict[str, Any]:
        return {"secret": self.secret}


@dataclass(frozen=True, slots=True)
class KeyPublic:
    """The public context (no secret), for the aggregator."""

    public: bytes

    def wire(self) -> dict[str, Any]:
        return {"public": self.public}


@dataclass(frozen=True, slots=True)
class Hello:
    """A silo announces it takes part in this sum (no data)."""

    def wire(self) -> dict[str, Any]:
        return {"status": "ready"}


@dataclass(frozen=True, slots=True)
class Update:
    """The ciphertext of a silo's contribution plus its noise share, or its withdrawal (budget
    exhausted: nothing of its data is sent)."""

    status: Literal["ok", "withdraw"]
    ct: bytes | None = None

    def wire(self) -> dict[str, Any]:
        return {"status": "ok", "ct": self.ct} if self.status == "ok" else {"status": "withdraw"}


@dataclass(frozen=True, slots=True)
class Topup:
    """A contributor's extra, noise-only ciphertext after a dropout."""

    ct: bytes

    def wire(self) -> dict[str, Any]:
        return {"ct": self.ct}


@dataclass(frozen=True, slots=True)
class Present:
    """How many silos announced themselves: each sizes its noise share for ``n``."""

    n: int

    def wire(self) -> dict[str, Any]:
        return {"type": "present", "n": self.n}


@dataclass(frozen=True, slots=True)
class TopupRequest:
    """Fewer updates than announced silos arrived: top up the noise."""

    present: int
    contributors: int

    def wire(self) -> dict[str, Any]:
        return {"type": "topup", "present": self.present, "contributors": self.contributors}


@dataclass(frozen=True, slots=True)
class Result:
    """The encrypted sum and who is in it."""

    ct: bytes
    contributors: tuple[str, ...]
    failures: tuple[str, ...]

    def wire(self) -> dict[str, Any]:
        return {"type": "result", "ct": self.ct, "contributors": list(self.contributors), "failures": list(self.failures)}


@dataclass(frozen=True, slots=True)
class Abort:
    """This sum is off (nothing is decrypted); the job goes on."""

    reason: str

    def wire(self) -> dict[str, Any]:
        return {"type": "abort", "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Stop:
    """The job is over (too few silos remain)."""

    reason: str

    def wire(self) -> dict[str, Any]:
        return {"type": "stop", "reason": self.reason}


#: The aggregator's instruction to a silo (kind :data:`CONTROL`).
Control = Union[Present, TopupRequest, Result, Abort, Stop]

M = TypeVar("M")


def _bad(sender: str, what: str) -> ProtocolError:
    return ProtocolError(f"malformed {what} message from {sender!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _names(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def parse(kind: str, payload: Any, *, sender: str) -> Any:
    """The typed message of ``kind`` from a received payload; ProtocolError if malformed."""
    if kind == CONTROL:
        return parse_control(payload, sender=sender)
    if not isinstance(payload, Mapping):
        raise _bad(sender, kind)
    if kind == KEY_SECRET and isinstance(payload.get("secret"), bytes):
        return KeySecret(payload["secret"])
    if kind == KEY_PUBLIC and isinstance(payload.get("public"), bytes):
        return KeyPublic(payload["public"])
    if kind == HELLO and payload.get("status") == "ready":
        return Hello()
    if kind == UPDATE:
        if payload.get("status") == "withdraw":
            return Update("withdraw")
        if payload.get("status") == "ok" and isinstance(payload.get("ct"), bytes):
            return Update("ok", payload["ct"])
    if kind == TOPUP and isinstance(payload.get("ct"), bytes):
        return Topup(payload["ct"])
    raise _bad(sender, kind)


def parse_control(payload: Any, *, sender: str) -> Control:
    """The aggregator's instruction from a received :data:`CONTROL` payload."""
    if not isinstance(payload, Mapping):
        raise _bad(sender, CONTROL)
    kind = payload.get("type")
    if kind == "present" and _is_int(payload.get("n")) and payload["n"] >= 1:
        return Present(payload["n"])
    if kind == "topup" and _is_int(payload.get("present")) and _is_int(payload.get("contributors")):
        return TopupRequest(payload["present"], payload["contributors"])
    if kind == "result" and isinstance(payload.get("ct"), bytes) and _names(payload.get("contributors")) and _names(
        payload.get("failures")
    ):
        return Result(payload["ct"], tuple(payload["contributors"]), tuple(payload["failures"]))
    if kind in ("abort", "stop"):
        reason = str(payload.get("reason", ""))
        return Abort(reason) if kind == "abort" else Stop(reason)
    raise ProtocolError(f"unexpected control message {kind!r} from {sender!r}")
