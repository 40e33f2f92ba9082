"""The ``fedsilo`` command.

Commands are thin: they parse options, call one library function and print. Library errors
(:class:`~fedsilo.errors.FedsiloError`) become one clear line on stderr and an exit code here,
and only here: 2 for bad input (config, data, arguments), 1 for everything else fedsilo refuses
(an exhausted budget, a failed protocol). Heavy imports live inside commands so ``--help`` is fast.
"""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from fedsilo import __version__

__all__ = ["app", "main", "cli_errors"]

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="fedsilo",
    help="Cross-silo federated learning with homomorphic encryption and differential privacy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def exit_code_for(exc: BaseException) -> int:
    from fedsilo.errors import ConfigError, DataError

    return 2 if isinstance(exc, (ConfigError, DataError)) else 1


def cli_errors(fn: F) -> F:
    """Turn fedsilo's errors into one line on stderr and an exit code (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from fedsilo.errors import FedsiloError

        try:
            return fn(*args, **kwargs)
        except FedsiloError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exit_code_for(exc)) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fedsilo {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    """fedsilo: federated learning across organizations, encrypted and differentially private."""


def _mount() -> None:
    from fedsilo.cli import crypto, privacy, psi, simulate

    crypto.register(app)
    app.add_typer(privacy.app, name="privacy", help="Privacy accounting and ledgers.")
    psi.register(app)
    simulate.register(app)


_mount()


def main() -> None:  # console-script entry point
    sys.exit(app())
