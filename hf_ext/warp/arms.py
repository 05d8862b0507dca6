"""The arms of a WaRP study after phase 2, and the control masks of the masked ones.

Every arm fine-tunes the phase-2 model on the utility data:

- ``phase3``: the coefficients in the phase-1 basis, the importance masks frozen (WaRP);
- ``phase3_none`` / ``phase3_random`` / ``phase3_eigenvalue``: the same, with nothing frozen, with as many
  coefficients per layer frozen at random, or the same count frozen along the top-eigenvalue directions.
  If these keep safety as well as the importance masks do, the importance is not what keeps it.
  A sweep (``keep_ratios``, ``mask_layouts``, ``phase3_learning_rates``) adds the swept values to the name,
  only for the dimensions that take more than one value: ``phase3_random_k0.5_element-global_lr0.0001``;
- ``plain`` / ``plain_lr<lr>``: the target layers' weights trained directly, at each learning rate of the
  sweep, so that masks and plain training can be compared at matched utility;
- ``full_lr<lr>``: every parameter trained (the papers' full fine-tuning baseline).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from .. import sharding
from .masking import MaskInfo, build_masks

_MASK_LABELS = {
    "importance": "WaRP masks",
    "none": "no masks",
    "random": "random masks",
    "eigenvalue": "top-eigenvalue masks",
}


@dataclass(frozen=True)
class Arm:
    """One utility fine-tune from the phase-2 model; ``name`` is its run subdirectory."""

    name: str
    kind: Literal["masked", "plain", "full"]
    masks: str | None = None  # masked arms: importance | none | random | eigenvalue
    learning_rate: float | None = None  # None: the run's learning_rate
    keep_ratio: float | None = None  # masked arms other than none
    layout: str | None = None  # masked arms other than none: "<granularity>/<threshold>"

    @property
    def family(self) -> str:
        """The arm's curve across learning rates: every setting but the learning rate."""
        if self.kind != "masked":
            return self.kind
        if self.masks == "none":
            return "none"
        return f"{self.masks} k{self.keep_ratio:g} {self.layout}"

    @property
    def label(self) -> str:
        if self.kind == "masked":
            label = f"phase 3: {_MASK_LABELS[self.masks]}"
            if self.masks != "none":
                label += f", keep {self.keep_ratio:g}, {self.layout}"
            return label + ("" if self.learning_rate is None else f", lr {self.learning_rate:g}")
        scope = "target layers" if self.kind == "plain" else "full fine-tune"
        return f"plain, {scope}, lr {self.learning_rate:g}"

    @property
    def lineage(self) -> str:
        """Which phase-2 files the arm reads (:data:`hf_ext.warp.lineage.INPUTS`)."""
        return "phase3" if self.kind == "masked" else "plain"


def study_arms(warp_args, learning_rate: float) -> list[Arm]:
    """The arms ``warp_args`` asks for, masked ones first (each learning rate's arms together)."""
    keeps, layouts = warp_args.sweep_keep_ratios, warp_args.sweep_layouts
    rates = warp_args.phase3_learning_rates or [learning_rate]
    arms = []
    for rate in rates:
        lr_suffix = f"_lr{rate:g}" if len(rates) > 1 else ""
        for masks in ["importance", *warp_args.mask_controls]:
            base = "phase3" if masks == "importance" else f"phase3_{masks}"
            if masks == "none":
                arms.append(Arm(base + lr_suffix, "masked", masks, rate))
                continue
            for keep in keeps:
                for layout in layouts:
                    suffix = f"_k{keep:g}" if len(keeps) > 1 else ""
                    suffix += f"_{layout.replace('/', '-')}" if len(layouts) > 1 else ""
                    arms.append(Arm(base + suffix + lr_suffix, "masked", masks, rate, keep, layout))
    for rate in warp_args.plain_learning_rates or [learning_rate]:
        arms.append(Arm("plain" if rate == learning_rate else f"plain_lr{rate:g}", "plain", learning_rate=rate))
    arms += [Arm(f"full_lr{rate:g}", "full", learning_rate=rate) for rate in warp_args.full_learning_rates]
    return arms


def control_masks(
    control: str, masks: Mapping[str, torch.Tensor], eigenvalues: Mapping[str, torch.Tensor], *, seed: int
) -> dict[str, torch.Tensor]:
    """Masks with as many ``True`` (frozen) entries per module as ``masks``, placed by ``control``:

    ``"none"`` freezes nothing; ``"random"`` draws the entries uniformly (``seed``); ``"eigenvalue"`` takes the
    basis directions (columns of ``C``) in decreasing eigenvalue order, every row of a column before the next.
    """
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, mask in masks.items():
        count = int(mask.sum())
        frozen = torch.zeros(mask.numel(), dtype=torch.bool)
        if control == "random":
            frozen[torch.randperm(mask.numel(), generator=generator)[:count]] = True
        elif control == "eigenvalue":
            columns = mask.shape[-1]
            order = torch.argsort(eigenvalues[name][:columns].float(), descending=True, stable=True)
            rows = mask.shape[0] if mask.ndim == 2 else 1
            flat = (torch.arange(rows)[None, :] * columns + order[:, None]).reshape(-1)  # column by column
            frozen[flat[:count]] = True
        elif control != "none":
            raise ValueError(f"unknown mask control {control!r}; choose none, random or eigenvalue")
        out[name] = frozen.reshape(mask.shape)
    return out


def layout_masks(
    importance: Mapping[str, torch.Tensor], keep_ratio: float, layout: str
) -> tuple[dict[str, torch.Tensor], MaskInfo]:
    """The importance masks of one ``"<granularity>/<threshold>"`` layout from phase 2's importance: element
    scores are summed over output rows for ``input`` masks (the score of an input direction is the sum of its
    coefficients' scores, so one element-wise accumulation serves both granularities)."""
    granularity, threshold = layout.split("/")
    if granularity == "input":
        importance = {name: sharding.sum_rows(s) if s.ndim == 2 else s for name, s in importance.items()}
    elif any(s.ndim != 2 for s in importance.values()):
        raise ValueError(f"layout {layout!r} needs element-wise importance; phase 2 accumulated per input direction")
    return build_masks(importance, keep_ratio, threshold)
