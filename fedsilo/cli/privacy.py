"""``fedsilo privacy``: ε for a noise level, noise for a target ε, ledger report and verification.

A typer sub-app (``app``); the main CLI mounts it as ``fedsilo privacy``. Commands are thin:
they parse flags, call one function of :mod:`fedsilo.privacy`, and print either a small table
or, with ``--json``, one JSON object on stdout (the contracts are in docs/privacy.md).

Exit codes: 0 success; 1 ledger integrity failure (``verify``/``report`` on a broken chain, a
rolled-back or truncated database, a missing or forged anchor, a missing key); 2 bad arguments
(out-of-range values, unknown accountant, missing ledger, a key file others can read) — reported
as one ``error: ...`` line on stderr, no traceback. Heavy imports (dp-accounting, scipy, matplotlib)
happen inside the commands so ``--help`` stays fast.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from fedsilo.cli.plotting import check_plot_path
from fedsilo.errors import ConfigError, FedsiloError, LedgerIntegrityError

__all__ = ["app"]

app = typer.Typer(
    help="Differential privacy: epsilon for a noise level, noise for a target epsilon, "
    "and the per-silo privacy ledger (report, verify).",
    no_args_is_help=True,
    add_completion=False,
)

_LEGEND = "z: noise multiplier, q: sample rate, T: steps"

EXIT_INTEGRITY = 1
EXIT_USAGE = 2

AccountantOpt = Annotated[
    str, typer.Option("--accountant", help="Accountant: rdp (Renyi DP) or pld (privacy loss distributions).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")]
LedgerOpt = Annotated[
    Path, typer.Option("--ledger", help="Path of the silo's ledger (SQLite file).", show_default=False)
]


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {' '.join(str(message).split())}", err=True)
    raise typer.Exit(code)


def _finite_or_none(obj: Any) -> Any:
    """JSON has no Infinity/NaN: such values (e.g. an unbounded epsilon) become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite_or_none(v) for v in obj]
    return obj


def _emit_json(obj: dict[str, Any]) -> None:
    typer.echo(json.dumps(_finite_or_none(obj), allow_nan=False))


def _table(
    title: str,
    columns: list[str],
    rows: list[list[str]],
    caption: str | None = None,
    keep: frozenset[str] = frozenset(),
) -> None:
    """Print a rich table. The first column and the columns in ``keep`` (e.g. the relation)
    are never wrapped or truncated, whatever the terminal width; the others may wrap."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, caption=caption)
    for i, c in enumerate(columns):
        if i == 0 or c in keep:
            width = max([len(c)] + [len(r[i]) for r in rows])
            table.add_column(c, no_wrap=True, min_width=width)
        else:
            table.add_column(c)
    for r in rows:
        table.add_row(*r)
    Console().print(table)


def _exit_code(exc: FedsiloError) -> int:
    """1 for a ledger that cannot be trusted, 2 for a usage/configuration problem."""
    if isinstance(exc, ConfigError) and not isinstance(exc, LedgerIntegrityError):
        return EXIT_USAGE
    return EXIT_INTEGRITY


def _open_ledger(path: Path) -> Any:
    """Open an existing ledger or exit (one line): 1 if it cannot be trusted, 2 otherwise."""
    from fedsilo.privacy.ledger import PrivacyLedger

    try:
        return PrivacyLedger.open(path)
    except FedsiloError as exc:
        _fail(str(exc), _exit_code(exc))


def _event_text(event: Any) -> str:
    """A short table cell for a DP event."""
    from fedsilo.privacy.events import (
        ApproxDpEvent,
        ComposedEvent,
        CoveredEvent,
        DistributedDiscreteGaussianEvent,
        GaussianEvent,
        LaplaceEvent,
    )

    if isinstance(event, GaussianEvent):
        return f"gaussian z={event.noise_multiplier:.4g} q={event.sample_rate:g} T={event.steps}"
    if isinstance(event, LaplaceEvent):
        return f"laplace eps={event.epsilon:.4g} T={event.steps}"
    if isinstance(event, ComposedEvent):
        return "composed(" + ", ".join(_event_text(e) for e in event.events) + ")"
    if isinstance(event, ApproxDpEvent):
        return f"approx eps={event.epsilon:.4g} delta={event.delta:g} T={event.steps}"
    if isinstance(event, CoveredEvent):
        return f"covered({_event_text(event.event)}) by {event.cover}"
    if isinstance(event, DistributedDiscreteGaussianEvent):
        return f"distributed discrete gaussian sigma={event.noise_sigma:.4g} shares={event.shares} T={event.steps}"
    return repr(event)  # pragma: no cover - the ledger refuses other events


def _entry_json(e: Any) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "time": e.time,
        "dataset": e.dataset,
        "job": e.job,
        "round": e.round,
        "protocol": e.protocol,
        "recipient": e.recipient,
        "relation": e.relation,
        "level": e.level,
        "event": e.event.to_json(),
        "mechanism": dict(e.mechanism),
        "epsilon_spent": e.epsilon_spent,
        "delta": e.delta,
        "status": e.status,
        "finalized_at": e.finalized_at,
    }


@app.command("epsilon")
def epsilon_cmd(
    noise_multiplier: Annotated[
        float, typer.Option("--noise-multiplier", help="Noise multiplier z = sigma / sensitivity (> 0).")
    ],
    delta: Annotated[float, typer.Option("--delta", help="Target delta in (0, 1).")],
    sample_rate: Annotated[
        float, typer.Option("--sample-rate", help="Poisson sampling rate q in (0, 1].")
    ] = 1.0,
    steps: Annotated[int, typer.Option("--steps", help="Number of rounds T (>= 1).")] = 1,
    accountant: AccountantOpt = "rdp",
    as_json: JsonOpt = False,
) -> None:
    """Epsilon of T rounds of the (subsampled) Gaussian mechanism at a given delta."""
    try:
        from fedsilo.privacy.accounting import epsilon
        from fedsilo.privacy.events import GaussianEvent

        event = GaussianEvent(noise_multiplier, sample_rate, steps)
        eps = epsilon(event, delta=delta, accountant=accountant)
    except FedsiloError as exc:
        _fail(str(exc), EXIT_USAGE)
    if as_json:
        _emit_json({"epsilon": eps, "delta": delta, "accountant": accountant})
        return
    _table(
        "Gaussian mechanism",
        ["z", "q", "T", "delta", "accountant", "epsilon"],
        [[f"{noise_multiplier:g}", f"{sample_rate:g}", str(steps), f"{delta:g}", accountant, f"{eps:.4f}"]],
        caption=_LEGEND,
    )


@app.command("noise")
def noise_cmd(
    target_epsilon: Annotated[float, typer.Option("--target-epsilon", help="Epsilon to meet (> 0).")],
    delta: Annotated[float, typer.Option("--delta", help="Target delta in (0, 1).")],
    sample_rate: Annotated[
        float, typer.Option("--sample-rate", help="Poisson sampling rate q in (0, 1].")
    ] = 1.0,
    steps: Annotated[int, typer.Option("--steps", help="Number of rounds T (>= 1).")] = 1,
    accountant: AccountantOpt = "rdp",
    as_json: JsonOpt = False,
) -> None:
    """Smallest noise multiplier (to 1 %) whose epsilon does not exceed the target."""
    try:
        from fedsilo.privacy.accounting import epsilon, noise_multiplier
        from fedsilo.privacy.events import GaussianEvent

        z = noise_multiplier(
            target_epsilon=target_epsilon,
            delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
        )
        eps = epsilon(GaussianEvent(z, sample_rate, steps), delta=delta, accountant=accountant)
    except FedsiloError as exc:
        _fail(str(exc), EXIT_USAGE)
    if as_json:
        _emit_json({"noise_multiplier": z, "epsilon": eps, "delta": delta, "accountant": accountant})
        return
    _table(
        "Noise calibration",
        ["target epsilon", "q", "T", "delta", "accountant", "z", "epsilon"],
        [
            [
                f"{target_epsilon:g}",
                f"{sample_rate:g}",
                str(steps),
                f"{delta:g}",
                accountant,
                f"{z:.4f}",
                f"{eps:.4f}",
            ]
        ],
        caption=_LEGEND,
    )


def _plot(ledger: Any, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from datetime import datetime

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    try:
        for rep in ledger.report():
            entries = ledger.entries(rep.dataset)
            if not entries:
                continue
            times = [datetime.fromisoformat(e.time) for e in entries]
            eps = [e.epsilon_spent for e in entries]
            (line,) = ax.step(times, eps, where="post", marker="o", markersize=3, label=rep.dataset)
            ax.axhline(rep.epsilon_budget, color=line.get_color(), linestyle="--", linewidth=1)
        ax.set_xlabel("time (UTC)")
        ax.set_ylabel(f"epsilon spent ({ledger.accountant.upper()})")
        ax.set_title(f"Privacy ledger of silo {ledger.silo!r} (dashed: budgets)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        fig.autofmt_xdate()
        fig.tight_layout()
        fig.savefig(out)
    finally:
        plt.close(fig)


@app.command("report")
def report_cmd(
    ledger_path: LedgerOpt,
    as_json: JsonOpt = False,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="Also write a plot of epsilon over time per dataset (PNG).", show_default=False),
    ] = None,
    show_entries: Annotated[
        bool, typer.Option("--entries", help="Also list every release with its neighbouring relation.")
    ] = False,
) -> None:
    """Per dataset: relation, budget, spent and remaining epsilon, releases. Verifies the chain first."""
    try:
        if plot is not None:
            check_plot_path(plot, example="ledger.png")
    except FedsiloError as exc:
        _fail(str(exc), EXIT_USAGE)
    ledger = _open_ledger(ledger_path)
    try:
        try:
            ledger.verify()
            reports = ledger.report()
            entries = ledger.entries() if show_entries else []
        except FedsiloError as exc:
            _fail(f"{exc}; refusing to report from a broken ledger", _exit_code(exc))
        if plot is not None:
            try:
                _plot(ledger, plot)
            except OSError as exc:
                _fail(f"cannot write plot {plot}: {exc.strerror or exc}", EXIT_USAGE)
        if as_json:
            out: dict[str, Any] = {
                "ledger": str(ledger_path),
                "silo": ledger.silo,
                "accountant": ledger.accountant,
                "datasets": [r.to_json() for r in reports],
            }
            if show_entries:
                out["entries"] = [_entry_json(e) for e in entries]
            _emit_json(out)
            return
        if not reports:  # an empty table says less than one line
            typer.echo(f"ledger {ledger_path} of silo {ledger.silo!r} has no datasets yet (nothing charged)")
            return
        _table(
            f"Privacy ledger of silo {ledger.silo!r}: epsilon ({ledger.accountant.upper()} accountant)",
            ["dataset", "relation", "delta", "budget", "spent", "left", "releases"],
            [
                [
                    r.dataset,
                    r.relation or "-",
                    f"{r.delta:g}",
                    f"{r.epsilon_budget:.4g}",
                    f"{r.spent:.4f}",
                    f"{r.remaining:.4f}",
                    f"{r.releases}" + (f" ({r.pending} pending)" if r.pending else ""),
                ]
                for r in reports
            ],
            caption="relation: every release was converted to it, then composed "
            "(zero-out-silo: silo level; add-remove-record, replace-record: record level)",
            keep=frozenset({"relation", "delta", "budget", "spent", "left"}),
        )
        if show_entries:
            _table(
                "Releases",
                ["seq", "dataset", "relation", "event", "eps after", "status"],
                [
                    [
                        str(e.seq),
                        e.dataset,
                        e.relation,
                        _event_text(e.event),
                        f"{e.epsilon_spent:.4f}",
                        e.status,
                    ]
                    for e in entries
                ],
                caption="eps after: the dataset's total right after the release "
                "(--json adds job, round, protocol, recipient, mechanism)",
                keep=frozenset({"dataset", "relation", "eps after", "status"}),
            )
    finally:
        ledger.close()


@app.command("verify")
def verify_cmd(ledger_path: LedgerOpt, as_json: JsonOpt = False) -> None:
    """Check the ledger's hash chain and its anchor; exit 1 if a row was edited, deleted or
    inserted, or the database was rolled back or truncated."""
    ledger = _open_ledger(ledger_path)
    try:
        try:
            ledger.verify()
            seq, head = ledger.head
            anchored, _ = ledger.anchored
        except FedsiloError as exc:
            if as_json:
                _emit_json({"ok": False, "ledger": str(ledger_path), "error": str(exc)})
            _fail(str(exc), _exit_code(exc))
        if as_json:
            _emit_json(
                {
                    "ok": True,
                    "ledger": str(ledger_path),
                    "entries": seq,
                    "head": head,
                    "anchor": str(ledger.anchor_path),
                    "anchored_seq": anchored,
                }
            )
        else:
            typer.echo(
                f"ledger OK: {ledger_path} ({seq} entries, head {head[:16]}, anchored at seq {anchored})"
            )
    finally:
        ledger.close()
