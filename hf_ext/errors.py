"""Errors a user can fix: the exception classes, and nothing else (this module imports nothing from hf_ext).

Every :class:`HfExtError` says what was expected, what was found and how to fix it. Recipes run their ``main``
through :func:`hf_ext.entrypoint.exit_on_user_error`, which turns such an error into one line and exit code 2,
while any other exception (a bug) keeps its traceback. The subclasses also derive from the built-in exception a
caller would catch for that kind of problem.
"""

from __future__ import annotations


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
