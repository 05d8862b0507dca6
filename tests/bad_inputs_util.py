"""Helpers of the bad-input catalogue (tests/*/test_*_bad_inputs.py): ``unchanged``, which checks that a block
leaves a directory as it was (SHA-256 of every file), and the ways a tensor file is tampered with (test helper)."""

import contextlib
import hashlib
import shutil
from pathlib import Path

from hf_ext.io import load_tensors, save_tensors, sidecar_path


def _hashes(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` by relative path; ``"directory"`` for each folder (an empty one too)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "directory"
        for p in root.rglob("*")
    }


@contextlib.contextmanager
def unchanged(directory: Path):
    """The block leaves everything under ``directory`` as it was: no file or folder added (no temporaries either),
    removed or changed (SHA-256). Checked also when the block raises."""
    before = _hashes(directory)
    try:
        yield
    finally:
        after = _hashes(directory)
        changed = sorted(name for name in before.keys() & after.keys() if before[name] != after[name])
        assert after == before, (
            f"under {directory}: added {sorted(after.keys() - before.keys())}, "
            f"removed {sorted(before.keys() - after.keys())}, changed {changed}"
        )


# ---- tampered tensor files ----


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_a_byte(path: Path) -> None:
    """Change the last tensor bytes in place (the sidecar is left as it was)."""
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))


def _use_another_runs_sidecar(path: Path) -> None:
    """Replace the sidecar by that of another file with the same names and shapes (another run's)."""
    tensors, metadata = load_tensors(path)
    other = path.parent / "other" / path.name
    save_tensors(other, {name: t + 1 if t.is_floating_point() else t for name, t in tensors.items()}, metadata)
    shutil.copy(sidecar_path(other), sidecar_path(path))
    shutil.rmtree(other.parent)


TAMPERING = [
    (_truncate, r"is \d+ bytes but its sidecar basis.json records \d+: the file is truncated or was replaced"),
    (_flip_a_byte, r"does not match the SHA-256 in basis.json: the file is corrupt or was replaced without its"),
    (_use_another_runs_sidecar, r"does not match the SHA-256 in basis.json"),
]
TAMPERING_IDS = ["truncated", "bytes-changed", "another-runs-sidecar"]
