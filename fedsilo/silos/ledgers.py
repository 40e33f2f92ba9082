"""Each party's own privacy ledger, opened by the party itself.

A party of a job receives a :class:`LedgerSpec` (where its ledger file is, which dataset it
charges, the budget to register), never an open ledger: it opens the file in its own process,
registers its dataset at its budget and closes the file when its part of the job ends. On one
machine (``fedsilo simulate``) the files are ``LEDGER_DIR/<party>.sqlite``; an agent names its
own in ``silo.toml``.

A test run with reproducible (seeded) noise is not private: its ledger is wrapped so that every
entry's mechanism records ``"reproducible_noise": true`` and ``"private": false``.

Before round 1 a job's planned releases are checked against every party's ledger
(:func:`check_budgets`): the same composition the ledger applies at each charge
(:meth:`~fedsilo.privacy.ledger.PrivacyLedger.preview`), so a job that cannot finish within a
silo's budget is refused before any training, release or ledger entry.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsilo.errors import ConfigError
from fedsilo.privacy.events import DpEvent
from fedsilo.privacy.ledger import BudgetCheck, JobBudgetError, PrivacyLedger, budget_check

__all__ = ["LedgerSpec", "NotPrivateLedger", "Release", "check_budgets", "check_planned"]

#: One planned release: its DP event and the neighbouring relation it is charged under.
Release = tuple[DpEvent, str]


class NotPrivateLedger:
    """A ledger whose entries say the run was not private (reproducible noise, tests only).

    Delegates everything to the wrapped :class:`PrivacyLedger`; :meth:`charge` adds
    ``"reproducible_noise": true, "private": false`` to the recorded mechanism.
    """

    def __init__(self, ledger: PrivacyLedger) -> None:
        self._ledger = ledger

    def charge(self, dataset: str, event: Any, *, mechanism: Mapping[str, Any], **kwargs: Any) -> Any:
        tagged = {**dict(mechanism), "reproducible_noise": True, "private": False}
        return self._ledger.charge(dataset, event, mechanism=tagged, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)


@dataclass(frozen=True)
class LedgerSpec:
    """Where one party's ledger lives and what it registers there.

    ``budget`` is ``(epsilon, delta)`` for ``dataset``; registering it again with the same
    budget is a no-op, with another budget an error (the ledger keeps the first). The accountant
    is the job's (``[privacy] accountant``). ``reproducible_noise`` (tests only) wraps the
    ledger in :class:`NotPrivateLedger`.
    """

    path: Path
    silo: str
    dataset: str
    budget: tuple[float, float]
    accountant: str
    reproducible_noise: bool = False

    @contextlib.contextmanager
    def open(self) -> Iterator[Any]:
        """The party's open ledger with its dataset registered; closed on exit."""
        if self.path.exists() and self.path.is_dir():
            raise ConfigError(f"ledger {self.path} is a directory, not a ledger file")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the ledger directory {self.path.parent}: {exc.strerror or exc}") from None
        ledger = PrivacyLedger(self.path, silo=self.silo, accountant=self.accountant)
        try:
            ledger.register_dataset(self.dataset, epsilon=float(self.budget[0]), delta=float(self.budget[1]))
            yield NotPrivateLedger(ledger) if self.reproducible_noise else ledger
        finally:
            ledger.close()


def _check_writable(path: Path) -> None:
    """An existing ledger the job could not charge is refused before the job starts, naming the
    file (found by the bad-input sweep: a read-only ledger failed a party at its first charge with
    sqlite's traceback). The file is opened for writing and closed: nothing changes."""
    import os

    for target in (path, path.parent):
        try:
            if target.is_dir():
                if not os.access(target, os.W_OK | os.X_OK):
                    raise PermissionError(f"directory {target} is not writable (sqlite writes its journal there)")
            else:
                os.close(os.open(target, os.O_RDWR))
        except OSError as exc:
            raise ConfigError(f"ledger {path}: cannot be written ({exc.strerror or exc}); make it writable for the "
                              "silo, or give another --ledger-dir; nothing was trained or charged") from None


def check_planned(spec: LedgerSpec, planned: Sequence[Release]) -> BudgetCheck:
    """Dry run of ``planned`` against the ledger ``spec`` names, read-only: an existing ledger
    is read (nothing is registered or charged), a missing one is not created (its history is
    empty and its budget the spec's).

    Raises:
        ConfigError: the ledger holds the dataset at another budget than the spec's (the job
            would be refused when its party registers it), or another accountant or silo.
        PrivacyError: the planned releases cannot be composed with the dataset's history.
        LedgerIntegrityError: the ledger's hash chain or anchor is broken.
    """
    eps, delta = float(spec.budget[0]), float(spec.budget[1])
    if spec.path.is_dir():
        raise ConfigError(f"ledger {spec.path} is a directory, not a ledger file")
    if not spec.path.exists():
        return budget_check(silo=spec.silo, dataset=spec.dataset, budget=eps, delta=delta,
                            accountant=spec.accountant, planned=planned)
    _check_writable(spec.path)
    with PrivacyLedger(spec.path, silo=spec.silo, accountant=spec.accountant) as ledger:
        if spec.dataset not in ledger.datasets():
            return budget_check(silo=spec.silo, dataset=spec.dataset, budget=eps, delta=delta,
                                accountant=spec.accountant, planned=planned)
        held = ledger.budget(spec.dataset)
        if held != (eps, delta):
            raise ConfigError(
                f"dataset {spec.dataset!r} of silo {spec.silo!r} is registered in ledger {spec.path} with budget "
                f"epsilon={held[0]:g}, delta={held[1]:g}, not the job's epsilon={eps:g}, delta={delta:g} "
                "(a budget never changes)"
            )
        return ledger.preview(spec.dataset, planned)


def check_budgets(planned: Mapping[str, tuple[LedgerSpec, Sequence[Release]]]) -> list[BudgetCheck]:
    """Check every party's planned releases against its ledger (:func:`check_planned`) before
    the job starts; returns the checks.

    Raises:
        JobBudgetError: some party's ledger cannot cover its planned releases (the message
            names each such silo, its remaining ε and what the job needs); nothing was written.
    """
    checks = [check_planned(spec, releases) for spec, releases in planned.values() if releases]
    short = [c for c in checks if not c.fits]
    if short:
        raise JobBudgetError(short)
    return checks


@contextlib.contextmanager
def opened(spec: LedgerSpec | None) -> Iterator[Any]:
    """``spec.open()``, or ``None`` for a party without a ledger (no DP, aggregator)."""
    if spec is None:
        yield None
    else:
        with spec.open() as ledger:
            yield ledger
