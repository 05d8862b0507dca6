"""Output directories: refused early when unusable or holding a finished run; extra TensorBoard runs.

A recipe checks its ``output_dir`` before it loads a model or data: a path that is a file or cannot
be written to is an error, and so is a directory that already holds the results of a finished run
unless ``overwrite_output_dir`` is set (or the run is being resumed from a checkpoint).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from transformers import TrainingArguments
from transformers.integrations.integration_utils import default_logdir

from . import distributed
from .errors import RunDirectoryError


def check_output_dir(
    output_dir: str | os.PathLike, *, finished: Iterable[str | os.PathLike], overwrite: bool, resuming: bool
) -> Path:
    """Make sure ``output_dir`` can be used, without creating it (a run that fails later leaves no empty folder).

    Args:
        finished: files whose presence means a run already finished there (absolute, or relative
            to ``output_dir``).
        overwrite: ``overwrite_output_dir``: finished results may be replaced.
        resuming: the run resumes from a checkpoint, so earlier outputs are expected.

    Raises:
        RunDirectoryError: the path is a file, cannot be created or written, or holds a finished run.
    """
    root = Path(output_dir)
    if root.exists() and not root.is_dir():
        raise RunDirectoryError(f"output_dir {root} is a file, not a directory; choose another output_dir")
    existing = next(p for p in (root, *root.absolute().parents) if p.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is a file")
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".write-test-"):
            pass
    except OSError as err:
        raise RunDirectoryError(
            f"output_dir {root} cannot be written ({err.strerror or err}); choose a writable output_dir"
        ) from None
    done = [str(Path(p).relative_to(root) if Path(p).is_absolute() else p) for p in finished if (root / p).exists()]
    if done and not overwrite and not resuming:
        raise RunDirectoryError(
            f"output_dir {root} already holds a finished run ({', '.join(done)}); set overwrite_output_dir=true "
            "to replace it, resume_from_checkpoint=true to continue it (if it saved checkpoints), or choose "
            "another output_dir"
        )
    return root


def changed_settings(saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    """``"seeds=[1, 2] (now [1, 3]), layers=..."`` for every key of ``wanted`` whose value differs in ``saved``
    (the settings a run recorded); ``""`` when none does."""
    return ", ".join(
        f"{key}={saved.get(key)!r} (now {wanted[key]!r})" for key in wanted if saved.get(key) != wanted[key]
    )


def tensorboard_writer(args: TrainingArguments, directory: str | os.PathLike) -> SummaryWriter | None:
    """A SummaryWriter for work outside a Trainer (e.g. WaRP phase 1), as its own run under ``directory``;
    ``None`` unless ``report_to`` includes tensorboard, and on every process but the main one."""
    if "tensorboard" not in (args.report_to or []) or not distributed.is_main_process():
        return None
    return SummaryWriter(log_dir=str(Path(directory) / default_logdir()))
