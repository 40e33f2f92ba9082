"""What the commands that write a plot (``--plot FILE``) share: the output path check."""
from __future__ import annotations

from pathlib import Path

__all__ = ["check_plot_path"]


def check_plot_path(plot: Path, *, example: str = "plot.png") -> None:
    """Refuse, before any work is done, a plot path that cannot be written: a directory, a
    missing directory, or a format matplotlib cannot write (it would silently append .png to a
    name without an extension). ``example``: the file name suggested for a directory.

    Raises:
        ConfigError: naming the path and the problem (one line).
    """
    from matplotlib.backend_bases import FigureCanvasBase

    from fedsilo.errors import ConfigError

    try:
        if plot.is_dir():
            raise ConfigError(f"cannot write plot {plot}: it is a directory; give a file name such as {plot / example}")
        if plot.parent.exists() and not plot.parent.is_dir():
            raise ConfigError(f"cannot write plot {plot}: {plot.parent} is a file, not a directory")
        if not plot.parent.is_dir():
            raise ConfigError(f"cannot write plot {plot}: directory {plot.parent} does not exist")
    except OSError as exc:  # e.g. a name too long for the file system
        raise ConfigError(f"cannot write plot {plot}: {exc.strerror or exc}") from None
    # pgf and ps-via-LaTeX formats need a TeX installation; the rest are matplotlib's own
    formats = sorted(set(FigureCanvasBase.get_supported_filetypes()) - {"pgf"})
    suffix = plot.suffix.lower().lstrip(".")
    if suffix not in formats:
        raise ConfigError(
            f"cannot write plot {plot}: "
            + (f"unknown image format {suffix!r}" if suffix else "no file extension")
            + f" (use one of: {', '.join(formats)})"
        )
