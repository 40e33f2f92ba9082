"""``fedsilo federation show``: a job's federation — its parties, who sends what to whom, and
whether it can run — from its TOML file, without running anything.

The graph is :func:`fedsilo.silos.topology.federation` and the verdict
:func:`fedsilo.silos.topology.check_topology`, the check ``run_job`` makes before it plans a
job. Exit codes: 0 the federation is valid; 2 bad input (missing or malformed file, unknown
task, unusable ``--plot`` path) or an invalid federation, reported as one ``error: ...`` line on
stderr after the parties and edges are shown.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fedsilo.cli import cli_errors, to_json

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, help="A job's federation: its parties, roles and who sends what to whom.")

#: role colours of the plot; other roles (a plug-in task's) take the next colours of tab10
ROLE_COLOURS = {"aggregator": "#f4a261", "silo": "#2a9d8f", "guest": "#e76f51", "host": "#457b9d",
                "arbiter": "#8d99ae"}


@app.command("show")
@cli_errors
def show(
    config: Annotated[Path, typer.Argument(help="Federation TOML file (see docs/config.md).")],
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Also draw the federation to this image file (e.g. PNG).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the federation as one JSON object.")] = False,
) -> None:
    """Print the parties (role, data, budget), the edges (what travels) and whether the federation is valid."""
    from fedsilo.cli.plotting import check_plot_path
    from fedsilo.errors import ConfigError
    from fedsilo.silos.config import load_config
    from fedsilo.silos.topology import check_topology, describe, federation

    if plot is not None:  # before the config is read: nothing is done for a plot that cannot be written
        check_plot_path(plot, example="federation.png")
    cfg = load_config(config)
    graph = federation(cfg)
    problem: ConfigError | None = None
    try:
        check_topology(graph, cfg)
    except ConfigError as exc:
        problem = exc
    if plot is not None:
        _draw(graph, plot)
    if as_json:
        typer.echo(to_json({**describe(graph), "valid": problem is None,
                            "problem": None if problem is None else str(problem)}))
    else:
        _print(describe(graph), plot)
    if problem is not None:
        raise problem
    if not as_json:
        typer.echo(f"valid: every data party reaches {graph.graph['hub']!r} and back; no party sends to itself")


def _print(fed: dict[str, Any], plot: Path | None) -> None:
    parties, edges = fed["parties"], fed["edges"]
    typer.echo(f"federation {fed['name']!r} (task {fed['task']}, hub {fed['hub']}): "
               f"{len(parties)} parties, {len(edges)} edges")
    rows = [(p["name"], p["role"], p["data"] or "-",
             "-" if p["budget"] is None else f"epsilon {p['budget']['epsilon']:g}, delta {p['budget']['delta']:g}")
            for p in parties]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    typer.echo("parties (name, role, data, budget):")
    for r in rows:
        typer.echo("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)) + f"  {r[3]}")
    typer.echo("edges (sender -> receiver: what travels):")
    for e in edges:
        what = ", ".join(f["what"] + (f" ({f['when']})" if f["when"] else "") for f in e["travels"])
        typer.echo(f"  {e['from']} -> {e['to']}: {what}")
    if plot is not None:
        typer.echo(f"plot written to {plot}")


def _draw(graph: nx.DiGraph, out: Path) -> None:
    """Draw the federation to ``out`` (matplotlib's Agg backend): the hub in the middle, the
    other parties around it, coloured by role, each edge labelled with what travels."""
    import networkx as nx
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from fedsilo.errors import ConfigError

    hub = graph.graph.get("hub")
    others = [n for n in graph if n != hub]
    if hub in graph and others:
        pos = nx.shell_layout(graph, nlist=[[hub], others])
    else:
        pos = nx.circular_layout(graph)
    roles = list(dict.fromkeys(str(a.get("role")) for _, a in graph.nodes(data=True)))
    spare = iter(colormaps["tab10"].colors)
    colour = {r: ROLE_COLOURS.get(r) or next(spare) for r in roles}
    size = 3600
    rad = 0.25  # both directions of a pair are drawn apart, each with its own label
    fig = Figure(figsize=(12, 9))  # no pyplot: no global figure state, no display
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    nx.draw_networkx_nodes(graph, pos, ax=ax, node_size=size,
                           node_color=[colour[str(a.get("role"))] for _, a in graph.nodes(data=True)])
    nx.draw_networkx_labels(graph, pos, ax=ax, font_size=8,
                            labels={n: f"{n}\n({a.get('role')})" for n, a in graph.nodes(data=True)})
    nx.draw_networkx_edges(graph, pos, ax=ax, node_size=size, arrows=True, arrowstyle="-|>", arrowsize=14,
                           connectionstyle=f"arc3,rad={rad}", edge_color="#555555")
    for s, r, a in graph.edges(data=True):
        (x1, y1), (x2, y2) = pos[s], pos[r]
        # the middle of matplotlib's arc3 curve: half the control point's offset
        x = (x1 + x2) / 2 + rad * (y2 - y1) / 2
        y = (y1 + y2) / 2 - rad * (x2 - x1) / 2
        text = "\n".join(dict.fromkeys(f.what for f in a.get("flows") or ()))
        ax.text(x, y, text, fontsize=6, ha="center", va="center", color="#222222",
                bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "#cccccc", "alpha": 0.85})
    ax.legend(handles=[Patch(color=colour[r], label=r) for r in roles], loc="upper left", fontsize=8,
              title="role")
    ax.set_title(f"federation {graph.graph.get('name')!r}: {graph.graph.get('task')} job (hub {hub})")
    ax.set_aspect("equal")
    ax.margins(0.15)
    ax.axis("off")
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=120)
    except OSError as exc:
        raise ConfigError(f"cannot write plot {out}: {exc.strerror or exc}") from None
