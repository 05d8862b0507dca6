"""``DriftArguments``: what the drift study adds to the model, data and training arguments."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from ..config import AT_LEAST_ONE, NON_NEGATIVE, OPEN_UNIT, POSITIVE, Bounds, LoraArguments, check_bounds
from ..errors import ConfigError
from ..targets import parse_int_set

METHODS = ("full", "lora")


@dataclass
class DriftArguments(LoraArguments):
    """Full fine-tuning against LoRA: how far each moves the representations from the base, per layer."""

    BOUNDS: ClassVar[dict[str, Bounds]] = {
        **LoraArguments.BOUNDS,
        "eval_subset_size": AT_LEAST_ONE,
        "drift_steps": NON_NEGATIVE,
        "lora_learning_rate": POSITIVE,
        "min_reduction": Bounds(0, 1, high_open=True),
        "bootstrap_samples": AT_LEAST_ONE,
        "confidence": OPEN_UNIT,
    }

    methods: list[str] = field(
        default_factory=lambda: list(METHODS), metadata={"help": "Fine-tuning methods to compare: 'full', 'lora'."}
    )
    seeds: list[int] = field(default_factory=lambda: [42, 43], metadata={"help": "Training seeds, one run each."})
    eval_subset_size: int = field(
        default=256, metadata={"help": "Validation examples whose representations are dumped and compared."}
    )
    subset_seed: int = field(default=999, metadata={"help": "Seed that draws the evaluation subset."})
    pooling: Literal["mean", "first", "last", "tokens"] = field(
        default="mean",
        metadata={
            "help": "Representation the statistics test and in-training drift uses: 'mean' over tokens, 'first' "
            "(CLS, encoders), 'last' (last token, decoders) or 'tokens' (every token). Dumps keep every token, "
            "and drift.csv reports token-level and pooled CKA both."
        },
    )
    layers: str | None = field(
        default=None, metadata={"help": "Hidden states to record, e.g. '0-6' (0 = embeddings); None: all."}
    )
    dump_dtype: Literal["float16", "bfloat16", "float32"] = field(
        default="float16", metadata={"help": "dtype of the representation shards on disk."}
    )
    drift_steps: int = field(
        default=0,
        metadata={"help": "Log per-layer drift to TensorBoard every N training steps and at the end (0: at the end)."},
    )
    lora_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the LoRA runs; None: learning_rate."}
    )
    min_reduction: float = field(
        default=0.2,
        metadata={"help": "Relative drift reduction tested besides 'less': LoRA drift <= (1 - min_reduction) x full."},
    )
    bootstrap_samples: int = field(default=1000, metadata={"help": "Bootstrap resamples of the examples per layer."})
    confidence: float = field(default=0.95, metadata={"help": "Level of the bootstrap intervals."})

    def __post_init__(self):
        check_bounds(self)
        if self.layers is not None:
            try:
                parse_int_set(self.layers)
            except ConfigError as err:
                raise ConfigError(f"layers={self.layers!r}: {err} (0 = embeddings, i = output of block i-1)") from None
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ConfigError(f"methods {self.methods} must be a non-empty list of {', '.join(METHODS)}")
        if len(set(self.seeds)) != len(self.seeds) or not self.seeds:
            raise ConfigError(f"seeds {self.seeds} must be a non-empty list without repeats")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"methods {self.methods} repeat a method")
