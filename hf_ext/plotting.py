"""matplotlib is optional (``pip install 'hf_ext[plots]'``): studies skip their figures without it, with one
line saying so, and the commands that only draw figures fail with a clear error."""

from __future__ import annotations

from typing import Any

from .errors import ConfigError

INSTALL = "pip install 'hf_ext[plots]'"


def _import_pyplot() -> Any | None:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def require_pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend; :class:`~hf_ext.errors.ConfigError` if matplotlib is missing."""
    plt = _import_pyplot()
    if plt is None:
        raise ConfigError(f"drawing figures needs matplotlib, which is not installed: {INSTALL}")
    return plt


def has_matplotlib() -> bool:
    return _import_pyplot() is not None


def plotting_available(what: str) -> bool:
    """True if matplotlib is installed; otherwise print that ``what`` is skipped and how to get it."""
    if has_matplotlib():
        return True
    print(f"matplotlib is not installed: no {what} ({INSTALL}); the numbers are in the run directory", flush=True)
    return False


def save_figures(figures: dict[str, Any], directory) -> list:
    """Write each ``{name: figure}`` as ``directory/<name>.png`` and close it; returns the paths."""
    from pathlib import Path

    plt = require_pyplot()
    paths = []
    for name, figure in figures.items():
        paths.append(Path(directory) / f"{name}.png")
        figure.savefig(paths[-1], dpi=110)
        plt.close(figure)
    return paths
