"""``fedsilo simulate`` and ``fedsilo stats``: run a federation config and report."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from fedsilo.cli import check_output_path, cli_errors, to_json, write_output

__all__ = ["check_plots", "register", "write_plots"]

ConfigArg = Annotated[Path, typer.Argument(help="Federation TOML file (see docs/config.md).")]
BackendOpt = Annotated[Optional[str], typer.Option("--backend", help="Crypto backend: plain | paillier | ckks | secagg | a plugin's name.")]
SilosOpt = Annotated[Optional[int], typer.Option("--silos", min=1, help="Number of silos (built-in data only).")]
RoundsOpt = Annotated[Optional[int], typer.Option("--rounds", min=1, help="Training rounds (vertical: epochs).")]
EpsilonOpt = Annotated[Optional[float], typer.Option("--epsilon", min=0.0, help="Per-silo target epsilon; 0 turns DP off.")]
SeedOpt = Annotated[
    Optional[int],
    typer.Option("--seed", min=0, help="Seed of the public choices only (splits, initial model, batch order); DP noise, masks and sampling always come from the OS CSPRNG."),
]
InsecureOpt = Annotated[
    bool,
    typer.Option("--insecure", help="Set \\[crypto] insecure = true: allow the plain backend, small keys, vertical training without DP and sums of two silos (tests and baselines only)."),
]
JsonOpt = Annotated[Optional[Path], typer.Option("--json", help="Write the results contract as JSON to this file.")]
LedgerOpt = Annotated[
    Optional[Path],
    typer.Option("--ledger-dir", help="Ledger directory; reuse one to enforce budgets across runs (default: a new runs/<job>-<time>/ledgers)."),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the final summary.")]
PlotsOpt = Annotated[
    Optional[Path],
    typer.Option("--plots", help="Write metrics.png (metrics per round) and epsilon.png (epsilon per party per round) "
                 "to this directory (created if missing; checked before the job runs)."),
]
NoBaselinesOpt = Annotated[
    bool,
    typer.Option("--no-baselines", help="Skip the baselines block (simulation only, not private): horizontal, central "
                 "training on the pooled rows and each silo alone ((silos + 1) trainings of rounds x local_epochs epochs); "
                 "vertical, the same model on every party's columns joined and the guest alone on its own; "
                 "statistics jobs have none (the option does nothing)."),
]
EngineOpt = Annotated[
    str,
    typer.Option("--engine", help="How the parties run: 'threads' (one process, in-process channels) | 'processes' "
                 "(one OS process per party on 127.0.0.1, gRPC with mutual TLS and a throw-away CA: the agents' path) | "
                 "'ray' (each party a Ray actor with its own gRPC server and certificate, mutual TLS, for 50+ silos; "
                 "a private local Ray, or the cluster RAY_ADDRESS names; needs pip install 'fedsilo\\[ray]')."),
]


def _load(config: Path, **overrides: Any):
    from fedsilo.silos.config import load_config

    return load_config(config, insecure=bool(overrides.get("insecure")), overrides=overrides)


def _print_results(results: dict[str, Any]) -> None:
    """Show a job's results: a statistics job's as ``fedsilo stats`` does (:func:`_print_stats`),
    a training job's metrics, privacy, baselines and traffic."""
    from rich.console import Console
    from rich.table import Table

    if results.get("task") == "statistics":
        _print_stats(results)
        return

    from rich.markup import escape

    console = Console()
    final = results.get("final") or {}
    released = {
        "every_round": "released exactly (secure sum of every silo's held-out metric inputs)",
        "final": "released once, noised under DP and charged (secure sum of held-out metric inputs)",
        "none": "not released (silo-level DP)",
    }.get(results.get("evaluation", ""), "")
    table = Table(title=f"{results['task']} job on backend {results['backend']}"
                  + (f" — federated metrics {released}" if released else ""))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in final.items():
        table.add_row(k, "not released" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v))
    if results.get("psi"):
        table.add_row("PSI intersection", str(results["psi"].get("intersection")))
    console.print(table)
    own = {s: m for s, m in (results.get("silo_metrics") or {}).items() if m}
    if own:
        st = Table(title="each silo's own held-out rows (known only to that silo)")
        for col in ("silo", "rows", "accuracy", "auc"):
            st.add_column(col, justify="left" if col == "silo" else "right")
        for silo, m in own.items():
            st.add_row(silo, f"{m['rows']:.0f}", f"{m['accuracy']:.4f}", f"{m['auc']:.4f}")
        console.print(st)
    oracle = results.get("simulation_metrics") or {}
    if oracle and not final:
        ot = Table(title="held-out metrics computed by the simulation (simulation only, not private; no party sees them)")
        ot.add_column("metric")
        ot.add_column("value", justify="right")
        for k, v in oracle.items():
            ot.add_row(k, f"{v:.4f}")
        console.print(ot)
    _print_baselines(console, results)
    eps = {s: e for s, e in (results.get("epsilon") or {}).items() if e and e.get("epsilon") is not None}
    if eps:
        et = Table(title="privacy spent per silo" + (f" (accountant: {results['dp'].get('accountant', 'rdp')})" if results.get("dp") else ""))
        et.add_column("silo")
        et.add_column("epsilon", justify="right")
        et.add_column("delta", justify="right")
        for silo, e in eps.items():
            et.add_row(silo, f"{e['epsilon']:.4f}", f"{e['delta']:g}")
        console.print(et)
    adaptive = (results.get("dp") or {}).get("adaptive_clip")
    if isinstance(adaptive, dict) and adaptive.get("final_clip") is not None:
        console.print(f"adaptive clipping: clip {adaptive['initial_clip']:.4g} -> {adaptive['final_clip']:.4g} after the "
                      f"last round (target quantile {adaptive['target_quantile']:g}, clip_lr {adaptive['clip_lr']:g})")
    sent = results.get("bytes_sent") or {}
    if sent:
        console.print("bytes sent: " + ", ".join(f"{p} {n / 1e6:.2f} MB" for p, n in sent.items()))
    for note in results.get("notes", []):
        console.print(f"[yellow]note:[/] {escape(str(note))}")


def _print_baselines(console: Any, results: dict[str, Any]) -> None:
    """The federation's final model against the ``baselines`` block, on the same held-out rows
    (the results' ``simulation_metrics``): horizontal, every silo's pooled; vertical, the
    aligned rows the guest held out."""
    from rich.markup import escape
    from rich.table import Table

    base = results.get("baselines")
    fed = results.get("simulation_metrics") or {}
    if not base or not fed:
        return
    # classification: accuracy and AUC; SecureBoost's squared error: RMSE and R²
    cols = [k for k in ("accuracy", "auc") if k in fed] or [k for k in ("rmse", "r2") if k in fed]
    if not cols:
        return
    bt = Table(title=f"did federating pay off? {'aligned' if results.get('task') == 'vertical' else 'pooled'} "
                     f"held-out rows ({escape(base['label'])})")
    for col in ("model", *cols):
        bt.add_column(col, justify="left" if col == "model" else "right")

    def row(name: str, m: dict[str, Any]) -> None:
        bt.add_row(name, *(f"{m[c]:.4f}" if isinstance(m.get(c), float) else "-" for c in cols))

    row("federation (this job)", fed)
    length = f"{base['epochs']} epochs" if "epochs" in base else f"{base['trees']} trees"
    joined = "every party's columns joined" if results.get("task") == "vertical" else "pooled rows"
    row(f"central, {joined}, no DP ({length})", base["central"])
    for silo, m in base["alone"].items():
        row(f"{silo} alone, no DP", m)
    console.print(bt)
    for key in ("hosts", "guest"):
        if base.get(key):
            console.print(f"baselines: {escape(str(base[key]))}")
    key = "auc" if "auc" in cols else "r2" if "r2" in cols else None
    if key is None or not isinstance(base["central"].get(key), float):
        return
    line = f"federation {key.upper()} {fed[key] - base['central'][key]:+.4f} vs central"
    scored = {n: m for n, m in base["alone"].items() if isinstance(m.get(key), float)}
    if scored:
        best = max(scored, key=lambda n: scored[n][key])
        line += f", {fed[key] - scored[best][key]:+.4f} vs the best silo alone ({best})"
    console.print(line)


def _baselines(cfg: Any) -> dict[str, Any] | None:
    """The ``baselines`` block of a horizontal or vertical (LR, SecureBoost) config (None: a
    vertical job that held out no row)."""
    if cfg.federation.task == "vertical":
        from fedsilo.silos.tasks.vertical import vertical_baselines

        return vertical_baselines(cfg)
    from fedsilo.silos.tasks.horizontal import horizontal_baselines

    return horizontal_baselines(cfg)


def _progress_printer(quiet: bool):
    if quiet:
        return None
    from rich.console import Console

    console = Console()

    def show(event: dict[str, Any]) -> None:
        parts = [f"round {event.get('round')}"]
        for k in ("loss", "accuracy", "auc", "ks", "silos"):
            v = event.get(k)
            if v is None:
                continue
            if isinstance(v, list):
                parts.append(f"{k} {len(v)}")
            else:
                parts.append(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}")
        eps = event.get("epsilon")
        if eps:
            parts.append("ε " + " ".join(f"{s}={e:.3f}" for s, e in eps.items()))
        console.print("  ".join(parts))

    return show


def register(app: typer.Typer) -> None:
    @app.command("simulate")
    @cli_errors
    def simulate(
        config: ConfigArg,
        backend: BackendOpt = None,
        silos: SilosOpt = None,
        rounds: RoundsOpt = None,
        epsilon: EpsilonOpt = None,
        seed: SeedOpt = None,
        json_out: JsonOpt = None,
        ledger_dir: LedgerOpt = None,
        quiet: QuietOpt = False,
        insecure: InsecureOpt = False,
        engine: EngineOpt = "threads",
        plots: PlotsOpt = None,
        no_baselines: NoBaselinesOpt = False,
    ) -> None:
        """Run every silo of a federation on this machine and print per-round metrics and epsilon."""
        from fedsilo.errors import ConfigError, DataError, FedsiloError
        from fedsilo.silos.runner import run_job

        cfg = _load(config, backend=backend, silos=silos, rounds=rounds, epsilon=epsilon, seed=seed,
                    insecure=True if insecure else None)
        if json_out is not None:  # checked before the run spends any privacy budget
            check_output_path(json_out, "--json")
        check_plots(plots, json_out)
        results = run_job(cfg, ledger_dir=ledger_dir, progress=_progress_printer(quiet), engine=engine)
        failed = None
        if cfg.federation.task in ("horizontal", "vertical") and not no_baselines:
            # simulation only: this process can read every silo's rows (an agent never can)
            try:
                base = _baselines(cfg)
            except FedsiloError as exc:  # the job ran and charged its ledgers: never lose its results
                failed = exc
            else:
                if base is not None:
                    results["baselines"] = base
        _save(json_out, results, _print_results)
        _print_results(results)
        write_plots(plots, results)
        if failed is not None:
            kind = DataError if isinstance(failed, DataError) else ConfigError
            raise kind(f"the job completed (results above), but its baselines failed: {failed} "
                       "(--no-baselines skips them)") from None

    @app.command("stats")
    @cli_errors
    def stats(
        config: ConfigArg,
        epsilon: EpsilonOpt = None,
        seed: SeedOpt = None,
        json_out: JsonOpt = None,
        ledger_dir: LedgerOpt = None,
        insecure: InsecureOpt = False,
        engine: EngineOpt = "threads",
        plots: PlotsOpt = None,
        backend: BackendOpt = None,
    ) -> None:
        """Federated statistics (sums, counts, means, histograms) of a statistics config."""
        from fedsilo.errors import ConfigError
        from fedsilo.silos.runner import run_job

        cfg = _load(config, backend=backend, epsilon=epsilon, seed=seed, insecure=True if insecure else None)
        if cfg.federation.task != "statistics":
            raise ConfigError(f"{config}: federation.task is {cfg.federation.task!r}; `fedsilo stats` needs 'statistics'")
        if json_out is not None:
            check_output_path(json_out, "--json")
        check_plots(plots, json_out)
        results = run_job(cfg, ledger_dir=ledger_dir, progress=None, engine=engine)
        _save(json_out, results, _print_stats)
        _print_stats(results)
        write_plots(plots, results)


def check_plots(plots: Path | None, json_out: Path | None = None) -> None:
    """``--plots DIR`` refused before the job runs (a file, an unwritable or uncreatable
    directory, the ``--json`` file's own path)."""
    if plots is not None:
        from fedsilo.errors import ConfigError
        from fedsilo.silos.plots import check_plot_dir

        if json_out is not None and Path(os.path.abspath(plots)) == Path(os.path.abspath(json_out)):
            raise ConfigError(f"--plots {plots}: the same path as --json {json_out} (a directory of figures, "
                              "not the results file)")
        check_plot_dir(plots, "--plots")


def write_plots(plots: Path | None, results: dict[str, Any]) -> None:
    """Write the figures of ``results`` into ``--plots DIR`` and print each path written, and
    why a figure was not (after the results are saved and shown: a plot never loses them)."""
    if plots is None:
        return
    from fedsilo.errors import ConfigError
    from fedsilo.silos.plots import plot_results, skipped_plots

    try:
        written = plot_results(results, plots)
    except ConfigError as exc:
        raise ConfigError(f"--plots {plots}: {exc}") from None
    for path in written:
        typer.echo(f"plot: {path}")
    for name, why in skipped_plots(results).items():
        typer.echo(f"plot: no {name}: {why}")


def _save(json_out: Path | None, results: dict[str, Any], show: Any) -> None:
    """Write the results contract first (a display problem must never lose the results); if the
    file cannot be written after all, show the results before reporting the error."""
    from fedsilo.errors import FedsiloError

    if json_out is None:
        return
    try:
        write_output(json_out, to_json(results), "--json")
    except FedsiloError:
        show(results)
        raise


def _print_stats(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="federated statistics (DP noise added under encryption before decryption)" if results.get("dp") else "federated statistics")
    table.add_column("column")
    table.add_column("query")
    table.add_column("value", justify="right")
    for col, queries in (results.get("statistics") or {}).items():
        for q, v in queries.items():
            if isinstance(v, dict):  # histogram: {edges, counts}
                shown = " ".join(f"{c:.0f}" for c in v["counts"]) + f"  (edges {v['edges'][0]:g}..{v['edges'][-1]:g})"
            else:
                shown = f"{v:.6g}"
            table.add_row(col, q, shown)
    console.print(table)
    eps = {s: e for s, e in (results.get("epsilon") or {}).items() if e and e.get("epsilon") is not None}
    if eps:
        console.print("epsilon spent: " + ", ".join(f"{s} {e['epsilon']:.3f}" for s, e in eps.items()))
