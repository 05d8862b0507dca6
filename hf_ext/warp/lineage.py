"""Which files each WaRP phase was computed from, recorded by SHA-256 and checked before use.

Phase 2 records the basis it trained in and the model and masks it wrote; phase 3 and the plain
arm check, before training, that the files they are about to use are those ones, and record them
in turn. A basis, mask file or phase-2 model replaced after the fact (another run's, with the same
targets) is then an error instead of a run in the wrong basis, and ``hf-ext warp verify`` reports
the same comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import RunDirectoryError
from ..io import directory_sha256, file_sha256, read_json
from .layout import WarpLayout

# What each phase reads, by the name phase 2 records it under.
INPUTS = {"phase3": ("basis", "importance", "masks", "model"), "plain": ("model",)}
_DESCRIBE = {
    "basis": "phase1/basis.safetensors",
    "importance": "phase2/importance.safetensors",
    "masks": "phase2/masks.safetensors",
    "model": "phase2/model",
}


def current(layout: WarpLayout, names: tuple[str, ...]) -> dict[str, str]:
    """SHA-256 of the named inputs as they are on disk now."""
    paths = {"basis": layout.basis, "importance": layout.importance, "masks": layout.masks}
    return {
        name: directory_sha256(layout.model("phase2")) if name == "model" else file_sha256(paths[name])
        for name in names
    }


def phase2_record(layout: WarpLayout, basis_sha256: str) -> dict[str, str]:
    """What phase 2 stores under ``lineage`` in its metadata: its basis and its own outputs."""
    return {"basis": basis_sha256, **current(layout, ("importance", "masks", "model"))}


@dataclass
class Link:
    """One input of a phase: the hash phase 2 recorded for it and the hash of the file now."""

    name: str
    recorded: str | None
    found: str

    @property
    def ok(self) -> bool:
        return self.recorded == self.found

    def describe(self) -> str:
        if self.recorded is None:
            return f"{_DESCRIBE[self.name]}: no SHA-256 recorded by phase 2"
        return f"{_DESCRIBE[self.name]}: recorded {self.recorded[:12]}, found {self.found[:12]}"


def links(layout: WarpLayout, phase: str) -> list[Link]:
    """The inputs of ``phase`` (``"phase3"`` or ``"plain"``) against phase 2's record."""
    recorded = read_json(layout.metadata("phase2")).get("lineage", {})
    found = current(layout, INPUTS[phase])
    return [Link(name, recorded.get(name), sha) for name, sha in found.items()]


def check_inputs(layout: WarpLayout, phase: str) -> dict[str, str]:
    """Raise :class:`RunDirectoryError` unless every input of ``phase`` is the file phase 2 recorded;
    return their hashes for the phase's own metadata."""
    chain = links(layout, phase)
    broken = [link for link in chain if not link.ok]
    if broken:
        raise RunDirectoryError(
            f"{layout.root}: {'; '.join(link.describe() for link in broken)}. The file changed after phase 2 "
            "(e.g. another run's copy), so it does not belong with the rest of this run; restore it or rerun "
            "from the phase that writes it"
        )
    return {link.name: link.found for link in chain}
