"""What the parties of a job across agents tell the submitter's agent: codec-safe, never pickled.

A party run by another agent sends the coordinator (the submitter's agent) one
:class:`PartyOutcome`: its status, its wall time, the bytes it sent and a **reduced** report,
only what the submitter may know; the coordinator rebuilds each task's native report from it
(:func:`incoming`, which validates every field of what a peer sent) and assembles the results
with the task's own :meth:`~fedsilo.silos.runner.Task.results`.

What travels, per task and role (:func:`outgoing`):

``horizontal`` silo
    status, reason, the rounds it contributed to, its DP events (JSON, rebuilt by
    :func:`fedsilo.privacy.events.event_from_json`, which refuses unknown kinds) and its DP
    parameters. **Not** its final model, not the federated metrics (a silo submitter received
    them itself, an aggregator submitter is not their recipient) and never its
    ``local_evaluation``: a silo's metrics on its own held-out rows are known only to it.
``horizontal`` / ``statistics`` aggregator
    status, reason and, per round, who contributed, failed or withdrew (it never sees a
    plaintext).
``statistics`` silo
    status, reason, whether it was charged, the contributors; not the statistics (released to
    the silos; the submitter, a silo, has them itself).
``vertical`` host / arbiter
    role, ε spent, PSI sizes, row counts, epochs. Never the local model (the submitter's
    results therefore have no ``simulation_metrics``), never IDs. The guest (the label holder)
    must be the submitter: its report stays with it.

A failed party sends its error instead: its type, one line of message, and the step it was at
(``plan``, ``start``, ``round 3``, ...), which the submitter shows as ``silo 'h2' failed at
round 3: DataError: ...``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedsilo.errors import ConfigError, DataError, ProtocolError
from fedsilo.privacy.events import event_from_json

__all__ = [
    "jsonable",
    "MAX_MESSAGE_CHARS",
    "PartyError",
    "PartyOutcome",
    "check_progress",
    "for_results",
    "incoming",
    "one_line",
    "outgoing",
    "progress_out",
]

#: longest error message or reason a report carries (longer ones are cut)
MAX_MESSAGE_CHARS = 2000
_MAX_ITEMS = 100_000


def one_line(text: object, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` on one line, at most ``limit`` characters."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


# -- field checks (everything a peer sends is checked before use) -----------------------------------
class _Check:
    def __init__(self, who: str) -> None:
        self.who = who

    def fail(self, what: str) -> ProtocolError:
        return ProtocolError(f"malformed report from {self.who}: {what}")

    def dict(self, obj: Any, what: str) -> dict[str, Any]:
        if not isinstance(obj, dict):
            raise self.fail(f"{what} is not a mapping")
        return obj

    def str(self, obj: Any, what: str, *, limit: int = MAX_MESSAGE_CHARS) -> str:
        if not isinstance(obj, str) or len(obj) > limit:
            raise self.fail(f"{what} is not a string of at most {limit} characters")
        return obj

    def int(self, obj: Any, what: str, *, low: int = 0) -> int:
        if isinstance(obj, bool) or not isinstance(obj, int) or obj < low:
            raise self.fail(f"{what} is not an integer >= {low}")
        return obj

    def num(self, obj: Any, what: str, *, none: bool = False) -> float | None:
        if obj is None and none:
            return None
        if isinstance(obj, bool) or not isinstance(obj, (int, float)) or not math.isfinite(obj):
            raise self.fail(f"{what} is not a finite number")
        return float(obj)

    def bool(self, obj: Any, what: str) -> bool:
        if not isinstance(obj, bool):
            raise self.fail(f"{what} is not true/false")
        return obj

    def choice(self, obj: Any, what: str, options: tuple[str, ...]) -> str:
        if obj not in options:
            raise self.fail(f"{what} is {obj!r}, expected one of {', '.join(options)}")
        return str(obj)

    def names(self, obj: Any, what: str) -> list[str]:
        if not isinstance(obj, list) or len(obj) > _MAX_ITEMS:
            raise self.fail(f"{what} is not a list")
        return [self.str(x, what, limit=256) for x in obj]

    def ints(self, obj: Any, what: str) -> list[int]:
        if not isinstance(obj, list) or len(obj) > _MAX_ITEMS:
            raise self.fail(f"{what} is not a list")
        return [self.int(x, what) for x in obj]

    def scalars(self, obj: Any, what: str) -> dict[str, Any]:
        """A flat mapping of public parameters (numbers, strings, booleans, None)."""
        d = self.dict(obj, what)
        for k, v in d.items():
            if v is not None and not isinstance(v, (bool, int, float, str)):
                raise self.fail(f"{what}.{k} is not a number, string or boolean")
            if isinstance(v, float) and not math.isfinite(v):
                raise self.fail(f"{what}.{k} is not finite")
            if isinstance(v, str) and len(v) > 256:
                raise self.fail(f"{what}.{k} is too long")
        return d

    def keys(self, obj: dict[str, Any], what: str, required: set[str], optional: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        missing = required - set(obj)
        extra = set(obj) - required - set(optional)
        if missing or extra:
            raise self.fail(f"{what} has keys {sorted(obj)}, expected {sorted(required | set(optional))}")


# -- outcomes ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PartyError:
    """A party's failure as the submitter sees it: which silo, at which step, what."""

    party: str
    step: str
    type: str
    message: str

    def line(self) -> str:
        who = f"silo {self.party!r}" if self.party != "aggregator" else "the aggregator"
        return f"{who} failed at {self.step}: {self.type}: {self.message}"

    def to_wire(self) -> dict[str, Any]:
        return {"step": self.step, "type": self.type, "message": self.message}

    @classmethod
    def from_exception(cls, party: str, step: str, exc: BaseException) -> "PartyError":
        """The error as another silo may see it. A data error's text quotes the silo's own data
        (a cell's value, an ID, a file path), so only its kind travels; the operator of that silo
        has the full text in its log and audit log."""
        kind = type(exc).__name__[:64]
        if isinstance(exc, DataError):
            return cls(party, step, kind, "its data failed the job's checks (the details stay in that silo's audit log)")
        return cls(party, step, kind, one_line(exc) or kind)


@dataclass(frozen=True)
class PartyOutcome:
    """One party's end of a job, as it travels to the coordinator."""

    party: str
    status: str  # "ok" | "failed"
    seconds: float
    bytes_sent: int
    report: dict[str, Any] | None = None
    error: PartyError | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {
            "party": self.party, "status": self.status, "seconds": float(self.seconds), "bytes_sent": int(self.bytes_sent),
            "report": self.report, "error": self.error.to_wire() if self.error else None,
        }

    @classmethod
    def from_wire(cls, wire: Any, *, party: str) -> "PartyOutcome":
        c = _Check(f"party {party!r}")
        d = c.dict(wire, "the outcome")
        c.keys(d, "the outcome", {"party", "status", "seconds", "bytes_sent", "report", "error"})
        if d["party"] != party:
            raise c.fail(f"it names party {d['party']!r}")
        status = c.choice(d["status"], "status", ("ok", "failed"))
        seconds = c.num(d["seconds"], "seconds")
        sent = c.int(d["bytes_sent"], "bytes_sent")
        error = None
        if status == "failed":
            e = c.dict(d["error"], "error")
            c.keys(e, "error", {"step", "type", "message"})
            error = PartyError(party, one_line(c.str(e["step"], "error.step", limit=64)),
                               one_line(c.str(e["type"], "error.type", limit=64)), one_line(c.str(e["message"], "error.message")))
        report = c.dict(d["report"], "report") if status == "ok" else None
        return cls(party, status, float(seconds or 0.0), sent, report, error)


# -- reports ------------------------------------------------------------------------------------
def outgoing(task: str, role: str, report: Any) -> dict[str, Any]:
    """The reduced report a party run by a remote agent sends to the submitter's agent."""
    if task == "horizontal" and role == "silo":
        return {
            "status": report.status, "reason": one_line(report.reason), "rounds_contributed": [int(r) for r in report.rounds_contributed],
            "events": [e.to_json() for e in report.events], "dp": dict(report.dp) if report.dp is not None else None,
        }
    if task == "horizontal" and role == "aggregator":
        return {"status": report.status, "reason": one_line(report.reason),
                "rounds": [_round_out(r) for r in report.rounds]}
    if task == "statistics" and role == "silo":
        return {"status": report["status"], "reason": one_line(report["reason"] or ""), "charged": bool(report["charged"]),
                "contributors": list(report["contributors"])}
    if task == "statistics" and role == "aggregator":
        return {"status": report["status"], "reason": one_line(report["reason"] or ""),
                "contributors": list(report["contributors"]), "failures": list(report["failures"]),
                "withdrawn": list(report["withdrawn"])}
    if task == "vertical" and role == "host":
        return {"role": "host", "epsilon": report.get("epsilon"), "epochs": int(report["epochs"]),
                "stopped_early": bool(report["stopped_early"]),
                "psi": {"intersection": int(report["psi"]["intersection"]), "local": int(report["psi"]["local"]),
                        "pairwise": {str(k): int(v) for k, v in report["psi"]["pairwise"].items()}},
                "rows": {"train": int(report["rows"]["train"]), "test": int(report["rows"]["test"])}}
    if task == "vertical" and role == "arbiter":
        return {"role": "arbiter", "epochs": int(report["epochs"])}
    raise ConfigError(f"a {task} job's {role} report does not travel to another agent")


def _round_out(r: Mapping[str, Any]) -> dict[str, Any]:
    return {"round": int(r["round"]), "status": str(r["status"]), "contributors": list(r["contributors"]),
            "failures": list(r["failures"]), "withdrawn": list(r["withdrawn"]), "topup": bool(r["topup"]),
            "reason": one_line(r["reason"] or "")}


def incoming(task: str, role: str, party: str, wire: Any) -> Any:
    """The task's native report rebuilt from what a remote party sent (every field checked)."""
    c = _Check(f"{role} {party!r}")
    d = c.dict(wire, "report")
    if task == "horizontal" and role == "silo":
        from fedsilo.errors import PrivacyError
        from fedsilo.protocols.horizontal.protocol import SiloReport

        c.keys(d, "report", {"status", "reason", "rounds_contributed", "events", "dp"})
        if not isinstance(d["events"], list) or len(d["events"]) > _MAX_ITEMS:
            raise c.fail("events is not a list")
        try:
            events = tuple(event_from_json(e) for e in d["events"])
        except PrivacyError as exc:
            raise c.fail(f"a DP event: {exc}") from None
        return SiloReport(
            silo=party, status=c.choice(d["status"], "status", ("completed", "withdrawn", "stopped")),  # type: ignore[arg-type]
            params=np.zeros(0), events=events, rounds_contributed=tuple(c.ints(d["rounds_contributed"], "rounds_contributed")),
            reason=one_line(c.str(d["reason"], "reason")), dp=None if d["dp"] is None else c.scalars(d["dp"], "dp"),
            evaluation=(), local_evaluation=None,
        )
    if task == "horizontal" and role == "aggregator":
        from fedsilo.protocols.horizontal.protocol import AggregatorReport

        c.keys(d, "report", {"status", "reason", "rounds"})
        if not isinstance(d["rounds"], list) or len(d["rounds"]) > _MAX_ITEMS:
            raise c.fail("rounds is not a list")
        rounds = tuple(_round_in(c, r) for r in d["rounds"])
        return AggregatorReport(c.choice(d["status"], "status", ("completed", "stopped")), rounds,  # type: ignore[arg-type]
                                one_line(c.str(d["reason"], "reason")))
    if task == "statistics" and role == "silo":
        c.keys(d, "report", {"status", "reason", "charged", "contributors"})
        return {"status": c.str(d["status"], "status", limit=32), "reason": one_line(c.str(d["reason"], "reason")),
                "charged": c.bool(d["charged"], "charged"), "contributors": c.names(d["contributors"], "contributors"),
                "statistics": None, "raw": None}
    if task == "statistics" and role == "aggregator":
        c.keys(d, "report", {"status", "reason", "contributors", "failures", "withdrawn"})
        return {"status": c.str(d["status"], "status", limit=32), "reason": one_line(c.str(d["reason"], "reason")),
                "contributors": c.names(d["contributors"], "contributors"), "failures": c.names(d["failures"], "failures"),
                "withdrawn": c.names(d["withdrawn"], "withdrawn")}
    if task == "vertical" and role == "host":
        c.keys(d, "report", {"role", "epsilon", "epochs", "stopped_early", "psi", "rows"})
        psi = c.dict(d["psi"], "psi")
        c.keys(psi, "psi", {"intersection", "local", "pairwise"})
        rows = c.dict(d["rows"], "rows")
        c.keys(rows, "rows", {"train", "test"})
        pairwise = c.dict(psi["pairwise"], "psi.pairwise")
        return {
            "role": "host", "epsilon": c.num(d["epsilon"], "epsilon", none=True), "epochs": c.int(d["epochs"], "epochs"),
            "stopped_early": c.bool(d["stopped_early"], "stopped_early"), "history": [], "dp": None, "model": None,
            "psi": {"intersection": c.int(psi["intersection"], "psi.intersection"), "local": c.int(psi["local"], "psi.local"),
                    "pairwise": {c.str(k, "psi.pairwise", limit=256): c.int(v, "psi.pairwise") for k, v in pairwise.items()}},
            "rows": {"train": c.int(rows["train"], "rows.train"), "test": c.int(rows["test"], "rows.test")},
        }
    if task == "vertical" and role == "arbiter":
        c.keys(d, "report", {"role", "epochs"})
        return {"role": "arbiter", "epochs": c.int(d["epochs"], "epochs")}
    raise ProtocolError(f"a {task} job's {role} report cannot come from another agent ({party!r})")


def _round_in(c: _Check, r: Any) -> dict[str, Any]:
    d = c.dict(r, "a round")
    c.keys(d, "a round", {"round", "status", "contributors", "failures", "withdrawn", "topup", "reason"})
    return {"round": c.int(d["round"], "round", low=1), "status": c.choice(d["status"], "round status", ("ok", "aborted")),
            "contributors": c.names(d["contributors"], "contributors"), "failures": c.names(d["failures"], "failures"),
            "withdrawn": c.names(d["withdrawn"], "withdrawn"), "topup": c.bool(d["topup"], "topup"),
            "reason": one_line(c.str(d["reason"], "reason"))}


def for_results(task: str, role: str, report: Any) -> Any:
    """The submitter's own party report as its results use it: nothing that identifies rows
    (the vertical guest's held-out IDs) and no local model."""
    if task == "vertical" and isinstance(report, dict):
        return {**report, "test_ids": [], "model": None}
    return report


# -- progress ------------------------------------------------------------------------------------
_PROGRESS_KEYS = ("round", "rounds", "silos")


def progress_out(event: Mapping[str, Any]) -> dict[str, Any]:
    """What a remote party tells the submitter about its progress: the round and who took part
    (public to the job), never a metric the submitter may not be a recipient of."""
    out: dict[str, Any] = {}
    if isinstance(event.get("round"), int):
        out["round"] = int(event["round"])
    if isinstance(event.get("rounds"), int):
        out["rounds"] = int(event["rounds"])
    if isinstance(event.get("silos"), (list, tuple)):
        out["silos"] = [str(s) for s in event["silos"]]
    return out


def check_progress(wire: Any, *, party: str) -> dict[str, Any]:
    c = _Check(f"party {party!r}")
    d = c.dict(wire, "progress")
    if set(d) - set(_PROGRESS_KEYS):
        raise c.fail(f"progress has keys {sorted(d)}")
    out: dict[str, Any] = {}
    if "round" in d:
        out["round"] = c.int(d["round"], "round")
    if "rounds" in d:
        out["rounds"] = c.int(d["rounds"], "rounds")
    if "silos" in d:
        out["silos"] = c.names(d["silos"], "silos")
    return out


def jsonable(obj: Any) -> Any:
    """Results as plain JSON values: numpy as Python numbers, NaN/infinity as None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)
