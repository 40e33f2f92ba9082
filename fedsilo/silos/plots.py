"""PNG figures of one job's results (the contract of docs/results.md).

:func:`plot_results` writes, into one directory,

``metrics.png``
    the federated metrics per round from ``rounds``: accuracy and AUC on one panel, loss on
    another. Horizontal: only the rounds where metrics were released (every round without DP,
    the last one, noised, under record-level DP); vertical: the training loss per epoch.
``epsilon.png``
    each party's cumulative ε after every round (``rounds[].epsilon``), one line per party, the
    job's target ε as a dashed line when the results carry one (``dp.target_epsilon``), and a
    star where the job's total (``epsilon``) is above the last round's value (charges after
    training: the record-level final metrics release). Statistics: ε per silo as bars (one
    release, no rounds).

A figure the results hold nothing for (silo-level DP releases no metrics; without DP no ε is
spent) is not written; :func:`skipped_plots` says why, so nothing empty or misleading is drawn.

matplotlib is imported only when a figure is drawn, and only its Agg canvas is used (no
pyplot state, no display).
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedsilo.errors import ConfigError
from fedsilo.silos.data import check_creatable

__all__ = ["EPSILON_PNG", "METRICS_PNG", "check_plot_dir", "plot_results", "skipped_plots"]

METRICS_PNG = "metrics.png"
EPSILON_PNG = "epsilon.png"

_METRICS = ("accuracy", "auc", "loss")
_LABELS = {"accuracy": "accuracy", "auc": "AUC", "loss": "loss"}
#: a job total this much above the last round's value is drawn as a separate point
_REL_TOL = 1e-9


def check_plot_dir(path: Path, option: str = "--plots") -> None:
    """Refuse, before any job runs, a plot directory that cannot be written: it must be a
    directory that exists or can be created (its nearest existing ancestor a writable
    directory), writable, and not hold a directory under a figure's name. Nothing is created.

    A directory, not an image file: unlike ``fedsilo privacy report --plot FILE`` the figures'
    names (:data:`METRICS_PNG`, :data:`EPSILON_PNG`) and format are fixed.

    Raises:
        ConfigError: naming ``option``, the path and what is wrong.
    """
    try:
        if path.is_symlink() and not path.exists():
            raise ConfigError(f"{option} {path}: is a dangling symbolic link")
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{option} {path}: is a file, not a directory")
        if not path.exists():
            check_creatable(path, option)
            return
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{option} {path}: directory {path} is not writable")
        for name in (METRICS_PNG, EPSILON_PNG):
            figure = path / name
            if figure.is_dir():
                raise ConfigError(f"{option} {path}: {figure} is a directory, not an image")
            if figure.is_symlink() and not figure.exists():
                raise ConfigError(f"{option} {path}: {figure} is a dangling symbolic link")
            if figure.exists() and not os.access(figure, os.W_OK):
                raise ConfigError(f"{option} {path}: {figure} exists and is not writable")
    except OSError as exc:  # e.g. a name too long for the file system
        raise ConfigError(f"{option} {path}: {exc.strerror or exc}") from None


def skipped_plots(results: Mapping[str, Any]) -> dict[str, str]:
    """The figures :func:`plot_results` does not write for ``results``, each with the reason."""
    _check_results(results)
    out: dict[str, str] = {}
    if not _metric_series(results):
        out[METRICS_PNG] = _why_no_metrics(results)
    if not _epsilon_values(results):
        out[EPSILON_PNG] = _why_no_epsilon(results)
    return out


def plot_results(results: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Write ``metrics.png`` and ``epsilon.png`` of ``results`` into ``out_dir`` (created if
    missing), each only if the results hold something to draw (:func:`skipped_plots` says why
    one is missing). Returns the paths written, in that order.

    Raises:
        ConfigError: ``results`` is not a results object, or a file cannot be written.
    """
    skipped = skipped_plots(results)
    todo = [(name, draw) for name, draw in ((METRICS_PNG, _draw_metrics), (EPSILON_PNG, _draw_epsilon))
            if name not in skipped]
    if todo:  # nothing to draw: no directory either
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create plot directory {out_dir}: {exc.strerror or exc}") from None
    written: list[Path] = []
    for name, draw in todo:
        path = out_dir / name
        fig = draw(results)
        try:
            fig.savefig(path, dpi=120)
        except OSError as exc:
            raise ConfigError(f"cannot write plot {path}: {exc.strerror or exc}") from None
        written.append(path)
    return written


# -- what the results hold ---------------------------------------------------------------------
def _check_results(results: Any) -> None:
    if not isinstance(results, Mapping) or not isinstance(results.get("task"), str):
        raise ConfigError("not a results object (docs/results.md): it has no 'task'")
    if not isinstance(results.get("rounds", []), list):
        raise ConfigError("not a results object (docs/results.md): 'rounds' is not a list")


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _rounds(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [r for r in results.get("rounds") or [] if isinstance(r, Mapping) and _number(r.get("round")) is not None]


def _metric_series(results: Mapping[str, Any]) -> dict[str, list[tuple[int, float]]]:
    """``{metric: [(round, value)]}`` of the metrics released (null ones, e.g. an undefined AUC,
    left out)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for row in _rounds(results):
        for k in _METRICS:
            v = _number(row.get(k))
            if v is not None:
                out.setdefault(k, []).append((int(row["round"]), v))
    return out


def _epsilon_series(results: Mapping[str, Any]) -> dict[str, list[tuple[int, float]]]:
    """``{party: [(round, cumulative ε)]}`` from ``rounds[].epsilon``."""
    out: dict[str, list[tuple[int, float]]] = {}
    for row in _rounds(results):
        eps = row.get("epsilon")
        if not isinstance(eps, Mapping):
            continue
        for party, v in eps.items():
            e = _number(v)
            if e is not None:
                out.setdefault(str(party), []).append((int(row["round"]), e))
    return out


def _totals(results: Mapping[str, Any]) -> dict[str, float]:
    """Each party's ε for the whole job (``epsilon[party].epsilon``)."""
    out: dict[str, float] = {}
    for party, e in (results.get("epsilon") or {}).items():
        v = _number(e.get("epsilon")) if isinstance(e, Mapping) else None
        if v is not None:
            out[str(party)] = v
    return out


def _grouped(series: Mapping[str, list[tuple[int, float]]],
             totals: Mapping[str, float] | None = None) -> dict[tuple[str, ...], list[tuple[int, float]]]:
    """Parties with the same curve and the same job total as one entry (one line, not lines
    hidden under each other; a total after the last round is drawn per line)."""
    by_points: dict[tuple[Any, ...], list[str]] = {}
    for party, points in series.items():
        by_points.setdefault((tuple(points), (totals or {}).get(party)), []).append(party)
    return {tuple(parties): list(key[0]) for key, parties in by_points.items()}


def _names(parties: tuple[str, ...], limit: int = 3) -> str:
    if len(parties) <= limit:
        return ", ".join(parties)
    return ", ".join(parties[:limit]) + f", … ({len(parties)} parties, equal)"


def _epsilon_values(results: Mapping[str, Any]) -> bool:
    if results.get("task") == "statistics":
        return bool(_totals(results))
    return bool(_epsilon_series(results))


def _why_no_metrics(results: Mapping[str, Any]) -> str:
    task = results.get("task")
    if task == "statistics":
        return "a statistics job has no rounds: its one release is in 'statistics'"
    if task == "horizontal" and results.get("evaluation") == "none":
        return ("silo-level DP releases no federated metrics (each silo knows only its own held-out metrics, "
                "'silo_metrics')")
    if task == "vertical" and results.get("dp"):
        return "vertical DP: the training loss is not decrypted and no held-out score is released"
    return "the results hold no metric released per round"


def _why_no_epsilon(results: Mapping[str, Any]) -> str:
    if not results.get("dp"):
        return "no DP: the job spent no epsilon"
    if results.get("task") == "statistics":
        return "no silo was charged"
    return "the results carry no per-round epsilon (rounds[].epsilon)"


def _dp(results: Mapping[str, Any]) -> Mapping[str, Any]:
    dp = results.get("dp")
    return dp if isinstance(dp, Mapping) else {}


def _x_label(results: Mapping[str, Any]) -> str:
    return "epoch" if results.get("task") == "vertical" else "round"


# -- figures ---------------------------------------------------------------------------------------
def _figure(panels: int) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5 * panels + 1.5, 4.5), layout="constrained")
    FigureCanvasAgg(fig)  # the Agg canvas: PNG without a display or pyplot's global state
    return fig, [fig.add_subplot(1, panels, i + 1) for i in range(panels)]


def _round_axis(ax: Any, results: Mapping[str, Any]) -> None:
    """Integer ticks over the job's whole run (round 1 to the last), so a metric released only
    after the last round is seen to be at the end."""
    from matplotlib.ticker import MaxNLocator

    last = max((int(r["round"]) for r in _rounds(results)), default=1)
    ax.set_xlim(0.5, last + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _draw_metrics(results: Mapping[str, Any]) -> Any:
    series = _metric_series(results)
    groups = [g for g in (("accuracy", "auc"), ("loss",)) if any(k in series for k in g)]
    fig, axes = _figure(len(groups))
    for ax, group in zip(axes, groups):
        for k in group:
            if k in series:
                xs, ys = zip(*series[k])
                ax.plot(xs, ys, marker="o", markersize=4, label=_LABELS[k])
        if group[0] == "accuracy":
            ax.set_ylim(0.0, 1.05)  # both live in [0, 1]: the full range, not a zoom that exaggerates
            ax.set_ylabel("accuracy / AUC")
        else:
            ax.set_ylabel("training loss" if results.get("task") == "vertical" else "loss")
        ax.set_xlabel(_x_label(results))
        _round_axis(ax, results)
        ax.grid(alpha=0.3)
        ax.legend()
    task = results.get("task")
    if task == "vertical":
        title = "vertical job: training loss per epoch"
    elif results.get("evaluation") == "final":
        title = "horizontal job: federated metrics, released once after training (noised, record-level DP)"
    else:
        title = f"{task} job: federated metrics per round (held-out rows of every silo)"
    fig.suptitle(title, fontsize=10)
    return fig


def _draw_epsilon(results: Mapping[str, Any]) -> Any:
    from matplotlib.lines import Line2D

    dp = _dp(results)
    accountant = str(dp.get("accountant", "rdp")).upper()
    delta = _number(dp.get("delta"))
    unit = f"ε ({accountant}" + (f", δ = {delta:g})" if delta is not None else ")")
    fig, (ax,) = _figure(1)
    totals = _totals(results)
    extra: list[tuple[Any, str]] = []  # legend entries drawn once for every party
    if results.get("task") == "statistics":
        parties = list(totals)
        ax.bar(parties, [totals[p] for p in parties], color="tab:blue")
        ax.set_ylabel(unit)
        ax.set_xlabel("silo")
        queries = _number(dp.get("releases"))
        what = f"{int(queries)} noised queries in one secure sum" if queries else "one secure sum"
        fig.suptitle(f"statistics job: ε per silo ({what})", fontsize=10)
    else:
        starred = False
        for parties, points in _grouped(_epsilon_series(results), totals).items():
            xs, ys = zip(*points)
            (line,) = ax.plot(xs, ys, marker="o", markersize=3, label=_names(parties))
            total = max((totals[p] for p in parties if p in totals), default=None)
            if total is not None and total > ys[-1] * (1.0 + _REL_TOL) + _REL_TOL:
                # charged after the last round (the final metrics release): drawn apart, at the
                # last round, so the line stays "after this round's training"
                ax.plot([xs[-1], xs[-1]], [ys[-1], total], color=line.get_color(), linestyle=":", linewidth=1)
                ax.plot([xs[-1]], [total], marker="*", markersize=10, color=line.get_color(), linestyle="none")
                starred = True
        if starred:
            extra.append((Line2D([], [], marker="*", markersize=10, color="black", linestyle="none"),
                          "job total, with the final metrics release"))
        ax.set_ylabel(f"cumulative {unit}")
        ax.set_xlabel(_x_label(results))
        _round_axis(ax, results)
        fig.suptitle(f"{results.get('task')} job: ε spent per party after each {_x_label(results)}", fontsize=10)
    target = _number(dp.get("target_epsilon"))
    if target is not None:
        extra.append((ax.axhline(target, color="grey", linestyle="--", linewidth=1), f"target ε = {target:g}"))
    ax.set_ylim(bottom=0.0)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    handles += [h for h, _ in extra]
    labels += [label for _, label in extra]
    if handles:
        ax.legend(handles, labels, fontsize=8)
    return fig
