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
from pathlib import Path
from typing import Any, TypeVar

import typer

from fedsilo import __version__

__all__ = ["app", "main", "cli_errors", "check_output_path", "to_json", "write_output"]

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


def _show_warning(default: Callable[..., None]) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints fedsilo's own warnings (classes defined in a
    ``fedsilo`` module, e.g. ``LowOverlapWarning``) as one ``warning: ...`` line on stderr: the
    message is written for the user, the file and source line of the ``warn`` call are not.
    Other libraries' warnings keep Python's format (``default``)."""

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:
        if category.__module__.split(".")[0] == "fedsilo":
            typer.echo(f"warning: {' '.join(str(message).split())}", err=True)
        else:
            default(message, category, filename, lineno, file, line)

    return show


def cli_errors(fn: F) -> F:
    """Turn fedsilo's errors into one line on stderr and an exit code (no traceback), and its
    warnings into one ``warning:`` line each (:func:`_show_warning`)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import warnings

        from fedsilo.errors import FedsiloError

        try:
            with warnings.catch_warnings():  # restores the hook when the command ends
                warnings.showwarning = _show_warning(warnings.showwarning)
                return fn(*args, **kwargs)
        except FedsiloError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exit_code_for(exc)) from None

    return wrapper  # type: ignore[return-value]


def check_output_path(path: Path, option: str) -> None:
    """Refuse, before any work is done, an output path that cannot be written.

    Checked: the path is not a directory, its nearest existing ancestor is a directory and
    writable (missing directories are created when the file is written). Nothing is created here.
    """
    from fedsilo.errors import ConfigError
    from fedsilo.silos.data import check_creatable

    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a directory; give a file name")
    check_creatable(path, option)


def write_output(path: Path, text: str, option: str) -> None:
    """Write ``text`` to ``path`` (creating missing directories); ConfigError naming the option."""
    from fedsilo.errors import ConfigError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot write: {exc.strerror or exc}") from None


def to_json(obj: Any) -> str:
    """JSON text of a results dict: numpy values as Python numbers, NaN/infinity as null
    (strict JSON has neither), anything else unknown as its string."""
    import json

    from fedsilo.silos.reports import jsonable

    return json.dumps(jsonable(obj), indent=2, allow_nan=False)


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
    from fedsilo.cli import certs, crypto, federation, job, privacy, psi, silo, simulate

    app.add_typer(certs.app, name="certs", help="Federation CA and silo certificates for mTLS.")
    crypto.register(app)
    app.add_typer(privacy.app, name="privacy", help="Privacy accounting and ledgers.")
    psi.register(app)
    simulate.register(app)
    app.add_typer(silo.app, name="silo", help="Run and inspect this organization's silo agent (silo.toml).")
    app.add_typer(job.app, name="job", help="Jobs across silo agents, submitted through this silo's agent.")
    app.add_typer(federation.app, name="federation", help="A job's federation: parties, roles, who sends what to whom.")


_mount()


def main() -> None:  # console-script entry point
    sys.exit(app())
