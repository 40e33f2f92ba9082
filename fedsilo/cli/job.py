"""``fedsilo job submit|status|results|list``: jobs across silo agents, through one's own agent."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from fedsilo.cli import check_output_path, cli_errors, to_json, write_output

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, help="Jobs across silo agents, submitted through this silo's agent.")

SiloOpt = Annotated[Path, typer.Option("--silo-config", "-s", help="This silo's silo.toml: the job goes through its agent.")]
JsonOpt = Annotated[Optional[Path], typer.Option("--json", help="Write the results contract as JSON to this file.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar; print only the results.")]
JobArg = Annotated[str, typer.Argument(help="The job id `fedsilo job submit` printed.")]
PlotsOpt = Annotated[
    Optional[Path],
    typer.Option("--plots", help="Write metrics.png (metrics per round) and epsilon.png (epsilon per party per round) "
                 "to this directory (created if missing; checked before anything is sent)."),
]


def _client(silo_config: Path) -> Any:
    from fedsilo.silos.agent import AgentClient
    from fedsilo.silos.silo_config import load_silo_config

    return AgentClient.for_silo(load_silo_config(silo_config))


def _refusal(reasons: list[dict[str, Any]]) -> Exception:
    from fedsilo.errors import ConfigError, PeerTimeoutError

    text = "job refused: " + "; ".join(f"silo {r.get('silo')!r}: {r.get('reason')}" for r in reasons)
    policy = any(r.get("kind") == "policy" for r in reasons)
    return ConfigError(text) if policy else PeerTimeoutError(text)


def _show(results: dict[str, Any]) -> None:
    from rich.console import Console

    from fedsilo.cli.simulate import _print_results, _print_stats

    if results.get("task") == "statistics":
        _print_stats(results)
    else:
        _print_results(results)
    seconds = results.get("party_seconds") or {}
    Console().print(
        f"job {results.get('job')}: engine {results.get('engine')}, transport {results.get('transport')}, "
        f"{results.get('seconds', 0.0):.2f} s; per party: " + ", ".join(f"{p} {s:.2f} s" for p, s in seconds.items())
    )


def _watch(client: Any, job: str, quiet: bool) -> dict[str, Any]:
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    since, bar, task_id = 0, None, None
    try:
        while True:
            st = client.status(job, since=since)
            if bar is None and not quiet:
                bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("rounds"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                               transient=False)
                bar.start()
                task_id = bar.add_task(str(st.get("task")), total=int(st.get("rounds") or 1))
            for ev in st.get("events") or []:
                if bar is not None and isinstance(ev.get("round"), int):
                    bar.update(task_id, completed=ev["round"])
            since = int(st.get("next") or since)
            if st.get("state") in ("completed", "failed", "refused", "aborted"):
                if bar is not None and st.get("state") == "completed":
                    bar.update(task_id, completed=int(st.get("rounds") or 1))
                return st
            time.sleep(0.25)
    finally:
        if bar is not None:
            bar.stop()


@app.command("submit")
@cli_errors
def submit(
    job_file: Annotated[Path, typer.Argument(help="The job: a federation TOML whose \\[\\[silos]] data name datasets of the silos' agents.")],
    silo_config: SiloOpt,
    json_out: JsonOpt = None,
    quiet: QuietOpt = False,
    detach: Annotated[bool, typer.Option("--detach", help="Return once every agent accepted; print the job id.")] = False,
    plots: PlotsOpt = None,
) -> None:
    """Submit a job through this silo's agent; every party's agent validates it against its own
    policy. Shows per-round progress, then the results (exit 1 if a party failed, 2 if refused)."""
    from fedsilo.cli.simulate import check_plots, write_plots
    from fedsilo.errors import ConfigError, JobAbortedError

    if not job_file.is_file():
        raise ConfigError(f"job file not found: {job_file}")
    try:
        text = job_file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{job_file}: cannot read the job file: {exc}") from None
    if json_out is not None:
        check_output_path(json_out, "--json")
    check_plots(plots, json_out)  # before the job is submitted: no budget is spent for plots that cannot be written
    with _client(silo_config) as client:
        reply = client.submit(text, source=str(job_file))
        if reply.get("status") != "accepted":
            raise _refusal(list(reply.get("reasons") or []))
        job = str(reply["job"])
        typer.echo(f"job {job} accepted by every silo")
        if detach:
            return
        try:
            st = _watch(client, job, quiet)
        except KeyboardInterrupt:
            typer.echo(f"interrupted: job {job} keeps running at the agents; `fedsilo job status {job} "
                       f"--silo-config {silo_config}` follows it", err=True)
            raise typer.Exit(130) from None
        if st.get("state") != "completed":
            raise JobAbortedError(f"job {job} {st.get('state')}: {st.get('error')}")
        results = client.results(job)["results"]
    if json_out is not None:
        write_output(json_out, to_json(results), "--json")
    _show(results)
    write_plots(plots, results)


@app.command("status")
@cli_errors
def status(job: JobArg, silo_config: SiloOpt) -> None:
    """A job's state, its parties' states, the last round and its error."""
    with _client(silo_config) as client:
        st = client.status(job)
    events = st.get("events") or []
    typer.echo(f"job {job}: {st.get('state')} ({st.get('task')}, round {events[-1]['round'] if events else 0} of "
               f"{st.get('rounds')})")
    for party, state in (st.get("parties") or {}).items():
        typer.echo(f"  {party}: {state}")
    if st.get("error"):
        typer.echo(f"error: {st['error']}")


@app.command("results")
@cli_errors
def results(job: JobArg, silo_config: SiloOpt, json_out: JsonOpt = None, plots: PlotsOpt = None) -> None:
    """The results of a completed job (the simulate contract plus engine, transport, party wall times)."""
    from fedsilo.cli.simulate import check_plots, write_plots
    from fedsilo.errors import JobAbortedError, ProtocolError

    check_plots(plots, json_out)
    with _client(silo_config) as client:
        got = client.results(job)
    if got.get("results") is None:
        if got.get("state") in ("failed", "refused", "aborted"):
            raise JobAbortedError(f"job {job} {got.get('state')}: {got.get('error')}")
        raise ProtocolError(f"job {job} is {got.get('state')}: no results yet")
    if json_out is not None:
        check_output_path(json_out, "--json")
        write_output(json_out, to_json(got["results"]), "--json")
    _show(got["results"])
    write_plots(plots, got["results"])


@app.command("list")
@cli_errors
def list_jobs(
    silo_config: SiloOpt,
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
) -> None:
    """The jobs submitted through this silo's agent."""
    from rich.console import Console
    from rich.table import Table

    with _client(silo_config) as client:
        jobs = client.jobs()
    if as_json:
        typer.echo(to_json(jobs))
        return
    table = Table(title="jobs submitted through this silo")
    for col in ("job", "task", "state", "submitted", "seconds", "error"):
        table.add_column(col, no_wrap=col != "error", overflow="fold")
    for j in jobs:
        secs = j.get("seconds")
        submitted = str(j.get("submitted") or "")[:19].replace("T", " ")
        table.add_row(str(j.get("job")), str(j.get("task")), str(j.get("state")), submitted,
                      f"{secs:.1f}" if isinstance(secs, (int, float)) else "", str(j.get("error") or ""))
    Console().print(table)
