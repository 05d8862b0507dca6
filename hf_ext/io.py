"""Named tensors on disk: a safetensors file plus a JSON sidecar, written atomically.

``save_tensors("run/basis.safetensors", tensors, metadata)`` writes ``run/basis.safetensors`` and
``run/basis.json``. The sidecar records the library and format versions, every tensor's shape and
dtype, the file's size and SHA-256, and the caller's metadata. ``load_tensors`` checks all of it,
so a missing, truncated, corrupted or mismatched file fails with an error that says what was
expected and what was found instead of surfacing later as a shape error deep inside training.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import FileFormatError, WriteError
from .version import __version__

FORMAT = "hf_ext.tensors"
FORMAT_VERSION = 1


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON metadata file that belongs to a ``.safetensors`` file."""
    return Path(path).with_suffix(".json")


# The errors of a write that the user can fix, and how.
_WRITE_FIXES = {
    errno.ENOSPC: "free disk space (or write to a larger disk: another output_dir) and run again",
    errno.EDQUOT: "free space within your disk quota and run again",
    errno.EROFS: "the file system is read-only: write elsewhere (another output_dir)",
    errno.EACCES: "make the directory writable or write elsewhere (another output_dir)",
    errno.EPERM: "make the directory writable or write elsewhere (another output_dir)",
}


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    On error the temporary file is removed and ``path`` is left as it was. A full disk, a read-only file
    system or a missing permission is raised as :class:`~hf_ext.errors.WriteError` saying so.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if isinstance(err, WriteError) or err.errno not in _WRITE_FIXES:
            raise
        raise _write_error(path, err) from err
    finally:
        tmp.unlink(missing_ok=True)


def _write_error(path: Path, err: OSError) -> WriteError:
    kept = f"the previous {path.name} is left as it was" if path.exists() else f"no {path.name} was written"
    error = WriteError(f"cannot write {path}: {err.strerror or err}; {kept}; {_WRITE_FIXES[err.errno]}")
    error.errno = err.errno
    return error


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"{path} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise FileFormatError(
            f"{path} is not valid JSON ({err}); the file is corrupt or was not written by hf_ext"
        ) from err


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 16 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def directory_sha256(path: str | os.PathLike, pattern: str = "*.safetensors") -> str:
    """One SHA-256 over the names and contents of the files matching ``pattern`` in a directory
    (a saved model's weights), so a replaced or retrained model is told apart from the one recorded."""
    files = sorted(Path(path).glob(pattern))
    if not files:
        raise FileFormatError(f"{path} holds no {pattern} files")
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}:{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def save_tensors(
    path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None
) -> None:
    """Save named tensors to ``path`` (safetensors) and their description to the JSON sidecar.

    Tensors are copied to CPU and made contiguous; views that share storage are fine. Both files are
    written to temporary names first and the tensors are renamed into place last, so a failed write (a full
    disk) leaves any earlier pair untouched.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"tensor files must end in .safetensors, got {path}")
    cpu = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    stamp = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "hf_ext_version": __version__}
    with atomic_path(path) as tmp_tensors:
        save_file(cpu, str(tmp_tensors), metadata=stamp)
        sidecar = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "hf_ext_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "file": path.name,
            "size_bytes": tmp_tensors.stat().st_size,
            "sha256": file_sha256(tmp_tensors),
            "tensors": {name: {"shape": list(t.shape), "dtype": _dtype_name(t.dtype)} for name, t in cpu.items()},
            "metadata": dict(metadata or {}),
        }
        write_json(sidecar_path(path), sidecar)


def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON sidecar of a tensor file, checked for format and version."""
    side = sidecar_path(path)
    info = read_json(side)
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise FileFormatError(f"{side} is not an hf_ext tensor sidecar (missing 'format': '{FORMAT}')")
    if info.get("format_version", 0) > FORMAT_VERSION:
        raise FileFormatError(
            f"{side} has format version {info['format_version']} from hf_ext {info.get('hf_ext_version')}; "
            f"this hf_ext ({__version__}) reads up to version {FORMAT_VERSION}: upgrade hf_ext"
        )
    return info


PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")


def _refuse_other_formats(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise FileFormatError(
            f"{path} is a {path.suffix} file, a Python pickle: unpickling it can run arbitrary code, so hf_ext reads "
            "tensors only from .safetensors files; if you trust where it comes from, convert it once with "
            f"hf_ext.io.save_tensors('{path.stem}.safetensors', torch.load('{path.name}', weights_only=True)), or "
            "re-create it with hf_ext"
        )
    if path.suffix != ".safetensors":
        raise FileFormatError(
            f"{path}: expected a .safetensors tensor file (with its .json sidecar), got {path.suffix or 'no suffix'}"
        )


def load_tensors(
    path: str | os.PathLike,
    *,
    expected_shapes: Mapping[str, tuple[int, ...]] | None = None,
    device: str | torch.device = "cpu",
    verify_checksum: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a tensor file written by :func:`save_tensors`; return ``(tensors, metadata)``.

    Args:
        path: the ``.safetensors`` file; its JSON sidecar must sit beside it.
        expected_shapes: if given, every named tensor must exist with exactly this shape.
        device: where to place the tensors.
        verify_checksum: compare the file's SHA-256 with the sidecar (reads the file twice).

    Raises:
        FileFormatError: not a ``.safetensors`` file (a pickle is refused: unpickling can run code), or a
            missing, truncated, corrupted or mismatched file, naming what differs.
    """
    path = Path(path)
    _refuse_other_formats(path)
    if not path.is_file():
        raise FileFormatError(f"{path} not found")
    info = read_sidecar(path)
    size = path.stat().st_size
    if size != info["size_bytes"]:
        raise FileFormatError(
            f"{path} is {size} bytes but its sidecar {sidecar_path(path).name} records {info['size_bytes']}: "
            "the file is truncated or was replaced; re-create it"
        )
    if verify_checksum and file_sha256(path) != info["sha256"]:
        raise FileFormatError(
            f"{path} does not match the SHA-256 in {sidecar_path(path).name}: the file is corrupt or was replaced "
            "without its sidecar; re-create it"
        )
    try:
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise FileFormatError(f"{path} is not a readable safetensors file: {err}") from err
    described = {name: (tuple(d["shape"]), d["dtype"]) for name, d in info["tensors"].items()}
    found = {name: (tuple(t.shape), _dtype_name(t.dtype)) for name, t in tensors.items()}
    if described != found:
        diff = sorted(set(described.items()) ^ set(found.items()))
        raise FileFormatError(
            f"{path} does not match its sidecar; differing entries (name, (shape, dtype)): {diff[:10]}"
        )
    if expected_shapes is not None:
        check_shapes(tensors, expected_shapes, source=str(path))
    return tensors, info["metadata"]


def check_shapes(
    tensors: Mapping[str, torch.Tensor], expected_shapes: Mapping[str, tuple[int, ...]], *, source: str
) -> None:
    """Raise :class:`FileFormatError` unless every expected name is present with its expected shape."""
    missing = [name for name in expected_shapes if name not in tensors]
    if missing:
        raise FileFormatError(
            f"{source} has no tensor for {missing[:5]}{' ...' if len(missing) > 5 else ''}; "
            f"it holds {sorted(tensors)[:5]}{' ...' if len(tensors) > 5 else ''}"
        )
    wrong = [
        f"{name}: expected {tuple(shape)}, found {tuple(tensors[name].shape)}"
        for name, shape in expected_shapes.items()
        if tuple(tensors[name].shape) != tuple(shape)
    ]
    if wrong:
        raise FileFormatError(f"{source} has tensors of the wrong shape ({'; '.join(wrong[:5])})")
