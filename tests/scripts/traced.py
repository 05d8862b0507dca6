"""Run a script as torchrun would, recording the files this rank writes and, optionally, making one rank fail.

torchrun ... traced.py LOG_DIR [RANK:module:function] SCRIPT ARGS...

Every path this process opens for writing (``open``/``io.open``, ``Path.write_*``) or renames into place
(``os.replace``, hf_ext's atomic writes) is listed in ``LOG_DIR/rank<R>.json`` when it exits, however it exits.
With ``RANK:module:function``, that function raises ``RuntimeError("injected failure on rank RANK")`` on rank
RANK (other ranks call the original).
"""

import atexit
import builtins
import functools
import importlib
import io
import json
import os
import runpy
import sys


def _record_writes(log: str) -> None:
    written, real_open, real_replace = set(), builtins.open, os.replace

    def open_for_record(file, mode="r", *args, **kwargs):
        # tempfile passes the directory as ``file`` with an opener that makes the file in it: not a write there
        if isinstance(file, str | os.PathLike) and any(c in mode for c in "wax+") and not os.path.isdir(file):
            written.add(os.path.abspath(file))
        return real_open(file, mode, *args, **kwargs)

    def replace_for_record(src, dst, *args, **kwargs):
        written.add(os.path.abspath(dst))
        return real_replace(src, dst, *args, **kwargs)

    def save() -> None:
        with real_open(log, "w") as f:
            json.dump(sorted(written), f)

    builtins.open = io.open = open_for_record
    os.replace = replace_for_record
    atexit.register(save)


def _inject_failure(spec: str) -> None:
    rank, module_name, name = spec.split(":")
    if os.environ.get("RANK", "0") != rank:
        return
    module = importlib.import_module(module_name)
    original = getattr(module, name)

    @functools.wraps(original)
    def fail(*args, **kwargs):
        raise RuntimeError(f"injected failure on rank {rank}")

    setattr(module, name, fail)


def main(argv: list[str]) -> None:
    log_dir, rest = argv[0], argv[1:]
    os.makedirs(log_dir, exist_ok=True)
    _record_writes(os.path.join(log_dir, f"rank{os.environ.get('RANK', '0')}.json"))
    if rest[0].count(":") == 2:
        _inject_failure(rest.pop(0))
    sys.argv = rest
    runpy.run_path(rest[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
