"""Every path inside a WaRP run directory, in one place.

::

    config.json                      model/data/warp arguments, for `hf-ext warp verify|eval`
    phase1/basis.safetensors         <module>.U (d_in x d_in), <module>.eigenvalues; + metadata.json
    phase2/model/                    safety-tuned model, plain weights (from_pretrained loads it)
    <phase>/delta.safetensors        the parameters a phase trained (phase2, phase3, plain): base + deltas = model
    phase2/importance.safetensors    per module, float32 (d_in,) or (d_out, d_in) by granularity
    phase2/masks.safetensors         per module, bool, True = frozen; + metadata.json
    phase3/model/, coefficients.safetensors, metadata.json
    plain/model/, metadata.json
    eval.json, eval.md               the retention/utility table
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Run subdirectories of the phases that train, and how the evaluation table names their models.
PHASE_LABELS = {"phase2": "phase 2: safety", "phase3": "phase 3: WaRP masks", "plain": "phase 3: plain"}


@dataclass(frozen=True)
class WarpLayout:
    """The files of one WaRP run under ``root`` (the run's ``output_dir``)."""

    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    def phase_dir(self, phase: str) -> Path:
        """``phase1``, ``phase2``, ``phase3`` or ``plain``."""
        return self.root / phase

    def model(self, phase: str) -> Path:
        return self.phase_dir(phase) / "model"

    def delta(self, phase: str) -> Path:
        """The parameters ``phase`` trained, merged (``phase2``, ``phase3``, ``plain``)."""
        return self.phase_dir(phase) / "delta.safetensors"

    def metadata(self, phase: str) -> Path:
        return self.phase_dir(phase) / "metadata.json"

    @property
    def basis(self) -> Path:
        return self.phase_dir("phase1") / "basis.safetensors"

    @property
    def importance(self) -> Path:
        return self.phase_dir("phase2") / "importance.safetensors"

    @property
    def masks(self) -> Path:
        return self.phase_dir("phase2") / "masks.safetensors"

    @property
    def coefficients(self) -> Path:
        return self.phase_dir("phase3") / "coefficients.safetensors"

    @property
    def eval_json(self) -> Path:
        return self.root / "eval.json"

    @property
    def eval_md(self) -> Path:
        return self.root / "eval.md"
