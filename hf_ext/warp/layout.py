"""Every path inside a WaRP run directory, in one place.

::

    config.json                      model/data/warp arguments, for `hf-ext warp verify|eval`
    phase1/basis.safetensors         <module>.U (d_in x d_in), <module>.eigenvalues; + metadata.json
    phase2/model/                    safety-tuned model, plain weights (from_pretrained loads it)
    <phase>/delta.safetensors        the parameters a phase trained (phase2, phase3, plain): base + deltas = model
    phase2/importance.safetensors    per module, float32 (d_in,) or (d_out, d_in) by granularity
    phase2/masks.safetensors         per module, bool, True = frozen; + metadata.json
    phase2/prototypes.safetensors    head 'prototypes': the utility rows of the head (class-mean features)
    phase3/coefficients.safetensors  C after the masked utility fine-tune; + metadata.json
    phase3_<control>/                the control arms (none, random, eigenvalue): masks.safetensors (theirs),
                                     coefficients.safetensors, metadata.json; swept arms add _k<keep>,
                                     _<granularity>-<threshold>, _lr<lr> (hf_ext.warp.arms), masks included
    plain/, plain_lr<lr>/, full_lr<lr>/   the unmasked arms: metadata.json
    <arm>/model/                     only with save_full_models (delta.safetensors is always there)
    eval.json, eval.md               held-out scores of phase 2 and every arm
    safety_vs_utility.png            one point per arm
    frontier.png                     seeds > 1: safety margin retention against utility loss, a panel per
                                     keep_ratio and layout, a curve per mask type and unmasked arm

With ``seeds`` > 1 each seed's run is ``seed-<seed>/`` (all of the above, phase 1 copied from the first),
and ``eval.json``, ``eval.md`` and ``safety_vs_utility.png`` in the root give every arm over the seeds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PHASE2_LABEL = "phase 2: safety"


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
        """``phase1``, ``phase2`` or an arm (``phase3``, ``phase3_random``, ``plain``, ``full_lr1e-05``, ...)."""
        return self.root / phase

    def seed_dir(self, seed: int) -> Path:
        return self.root / f"seed-{seed}"

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
    def prototypes(self) -> Path:
        """head 'prototypes': the utility rows phase 2 set (class-mean features)."""
        return self.phase_dir("phase2") / "prototypes.safetensors"

    @property
    def masks(self) -> Path:
        return self.phase_dir("phase2") / "masks.safetensors"

    @property
    def coefficients(self) -> Path:
        return self.arm_coefficients("phase3")

    def arm_coefficients(self, arm: str) -> Path:
        return self.phase_dir(arm) / "coefficients.safetensors"

    def arm_masks(self, arm: str) -> Path:
        """A control arm's own masks (the ``phase3`` arm uses phase 2's)."""
        return self.phase_dir(arm) / "masks.safetensors"

    @property
    def eval_json(self) -> Path:
        return self.root / "eval.json"

    @property
    def eval_md(self) -> Path:
        return self.root / "eval.md"

    @property
    def figure(self) -> Path:
        return self.root / "safety_vs_utility.png"

    @property
    def frontier_figure(self) -> Path:
        return self.root / "frontier.png"
