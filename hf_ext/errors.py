"""Errors a user can fix, and the one-line report recipes and the CLI give for them.

Every :class:`HfExtError` says what was expected, what was found and how to fix it. Recipes run
their ``main`` through :func:`exit_on_user_error`: such an error prints one line and exits with
code 2, while any other exception (a bug) keeps its traceback. The subclasses also derive from the
built-in exception a caller would catch for that kind of problem.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


class HfExtError(Exception):
    """A problem with the user's input (config, data, files, run directory) rather than a bug."""


class ConfigError(HfExtError, ValueError):
    """A config key or value that cannot be used, with the reason and the fix."""


class DataError(HfExtError, ValueError):
    """A data file or dataset that cannot be used: missing, empty, unparseable, or with bad labels or columns."""


class FileFormatError(HfExtError, RuntimeError):
    """A file written by hf_ext is missing, truncated, corrupted or does not match what was asked for."""


class RunDirectoryError(HfExtError, RuntimeError):
    """An output or run directory that cannot be used: not writable, holding a finished run, a phase not run
    yet, or files that do not belong together."""


class WriteError(HfExtError, OSError):
    """A file could not be written (disk full, read-only file system, no permission); the file it was to
    replace is left as it was and no partial file remains. ``errno`` is the operating system's error number."""


class TrainingDivergedError(HfExtError, FloatingPointError):
    """The training loss became NaN or infinite: the model diverged or a batch holds values it cannot fit."""


def exit_on_user_error(main: Callable[[], Any], prog: str | None = None) -> int:
    """Run ``main()``; on an :class:`HfExtError` print ``prog: error: message`` and return 2 (on ranks other
    than 0 the line starts with ``[rank N]``).

    Returns 0 when ``main`` succeeds, after :func:`hf_ext.distributed.release`. Other exceptions propagate with
    their traceback.
    """
    from .distributed import release  # here: distributed imports this module

    try:
        main()
        release()
    except HfExtError as err:
        # Every rank says why it stops: a launcher ends the others when one exits, so an error seen only on
        # rank 1 would otherwise be lost. Rank 0's line has no prefix.
        rank = os.environ.get("RANK", "0")
        where = "" if rank == "0" else f"[rank {rank}] "
        print(f"{where}{prog or Path(sys.argv[0]).name}: error: {err}", file=sys.stderr, flush=True)
        return 2
    return 0
