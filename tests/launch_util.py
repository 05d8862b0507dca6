"""Start test scripts (``tests/scripts/``) in a new process, alone or under torchrun with gloo (test helper)."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent / "scripts"
ROOT = Path(__file__).resolve().parents[1]


def torchrun(script: str, *args: str, nproc: int = 2, writes: Path | None = None) -> None:
    """Run a test script (or, by absolute path, a recipe) under torchrun on the CPU with gloo, as
    docs/launching.md describes. With ``writes``, each rank lists the files it wrote in ``writes/rank<R>.json``
    (scripts/traced.py)."""
    result = launch(script, *args, nproc=nproc, writes=writes)
    assert result.returncode == 0, failure(result)


def launch(script: str, *args: str, nproc: int = 2, writes: Path | None = None, fail: str | None = None):
    """The finished torchrun process; ``fail="RANK:module:function"`` makes that function raise on that rank."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    assert writes is not None or fail is None, "traced.py needs a directory for its write logs"
    traced = [str(SCRIPTS / "traced.py"), str(writes), *([fail] if fail else [])] if writes else []
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--standalone",
        *traced,
        str(SCRIPTS / script),  # an absolute script path is used as is
        *args,
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def assert_only_rank0_writes(writes: Path, under: Path, own_files: str | None = None) -> None:
    """Rank 0 wrote files under ``under`` and the other ranks none, except files of their own (names matching
    the glob ``own_files``, e.g. dump shards), which no two ranks share."""
    ranks = {path.stem: json.loads(path.read_text()) for path in writes.glob("rank*.json")}
    assert set(ranks) == {"rank0", "rank1"}, ranks.keys()
    inside = {rank: {Path(p) for p in paths if Path(p).is_relative_to(under)} for rank, paths in ranks.items()}
    assert inside["rank0"], f"rank 0 wrote nothing under {under}"
    others = {p for p in inside["rank1"] if not (own_files and p.match(own_files))}
    assert not others, f"rank 1 wrote shared files: {sorted(others)[:5]}"
    assert not inside["rank0"] & inside["rank1"], "two ranks wrote the same file"


def failure(result: subprocess.CompletedProcess) -> str:
    """The first traceback of a failed run (progress bars would push it out of a plain tail), with what came just
    before it: a rank aborted from C++ prints one line and no traceback, and torchrun's own comes next."""
    start = result.stderr.find("Traceback")
    if start < 0:
        return result.stdout[-3000:] + result.stderr[-3000:]
    return result.stderr[max(0, start - 1500) : start + 6000]


def run_script(script: str, *args: str) -> None:
    run_path(SCRIPTS / script, *args)


def run_path(script, *args: str) -> None:
    result = subprocess.run(
        [sys.executable, str(script), *map(str, args)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, failure(result)
