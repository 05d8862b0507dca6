"""Run a recipe's or command's ``main``: a user error becomes one line and exit code 2, a success ends the run's
process group (:func:`hf_ext.distributed.release`), a bug keeps its traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .distributed import release
from .errors import HfExtError


def exit_on_user_error(main: Callable[[], Any], prog: str | None = None) -> int:
    """Run ``main()``; on an :class:`~hf_ext.errors.HfExtError` print ``prog: error: message`` and return 2 (on
    ranks other than 0 the line starts with ``[rank N]``).

    Returns 0 when ``main`` succeeds, after :func:`hf_ext.distributed.release`. Other exceptions propagate with
    their traceback.
    """
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
