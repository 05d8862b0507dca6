"""``LoraNullArguments``: the LoRA-Null adapter, its calibration data and its verification."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from ..config import AT_LEAST_ONE, POSITIVE, Bounds, LoraArguments, check_bounds
from ..errors import ConfigError


@dataclass
class LoraNullArguments(LoraArguments):
    """A peft LoRA adapter initialised in the null space of each target layer's inputs."""

    BOUNDS: ClassVar[dict[str, Bounds]] = {
        **LoraArguments.BOUNDS,
        "calib_samples": AT_LEAST_ONE,
        "calib_max_length": AT_LEAST_ONE,
        "calib_memory_gb": POSITIVE,
        "max_activation_samples": AT_LEAST_ONE,
        "verify_samples": AT_LEAST_ONE,
    }

    mode: Literal["null_frozen_A", "null_projection"] = field(
        default="null_frozen_A",
        metadata={
            "help": "'null_frozen_A': A = the r smallest-eigenvalue directions of the inputs, frozen; B = 0, trained. "
            "'null_projection': B A = the weight projected on that null space, removed from the base weight."
        },
    )
    freeze_A: bool | None = field(
        default=None, metadata={"help": "Freeze lora_A; None: True for null_frozen_A, False for null_projection."}
    )
    calib_dataset: str | None = field(
        default=None,
        metadata={
            "help": "Calibration texts: 'builtin:<task>' or a .jsonl/.json/.csv file; None: the training data's texts."
        },
    )
    calib_split: str = field(default="train", metadata={"help": "Split of a builtin calibration task."})
    calib_text_column: str = field(default="text", metadata={"help": "Column holding the calibration texts."})
    calib_samples: int = field(default=16, metadata={"help": "Calibration sequences (the research code's default)."})
    calib_max_length: int | None = field(
        default=None, metadata={"help": "Tokens per calibration sequence; None: max_seq_length."}
    )
    calib_memory_gb: float | None = field(
        default=None,
        metadata={
            "help": "Memory the float64 input statistics may take at once, in GiB: the targets are calibrated in "
            "groups that fit, one pass over the calibration texts per group; None: every target in one pass."
        },
    )
    verify_samples: int = field(
        default=256, metadata={"help": "Validation examples the verification runs on (at init, evaluations, end)."}
    )
    max_activation_samples: int = field(
        default=4096, metadata={"help": "Input rows (tokens) per layer the verification measures at most."}
    )

    def __post_init__(self):
        check_bounds(self)
        if self.mode == "null_frozen_A" and self.freeze_A is False:
            raise ConfigError("freeze_A=false contradicts mode null_frozen_A (A is frozen by definition)")
