"""``DriftArguments``: what the drift study adds to the model, data and training arguments."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from ..config import AT_LEAST_ONE, NON_NEGATIVE, OPEN_UNIT, Bounds, LoraArguments, check_bounds
from ..errors import ConfigError
from ..targets import parse_int_set

METHODS = ("full", "lora")


@dataclass
class DriftArguments(LoraArguments):
    """Full fine-tuning against LoRA: how far each moves the representations from the base, per layer, along
    a learning-rate sweep per method, compared at matched task loss."""

    BOUNDS: ClassVar[dict[str, Bounds]] = {
        **LoraArguments.BOUNDS,
        "eval_subset_size": AT_LEAST_ONE,
        "drift_steps": NON_NEGATIVE,
        "offtask_samples": AT_LEAST_ONE,
        "matched_levels": AT_LEAST_ONE,
        "bootstrap_samples": AT_LEAST_ONE,
        "confidence": OPEN_UNIT,
    }

    methods: list[str] = field(
        default_factory=lambda: list(METHODS), metadata={"help": "Fine-tuning methods to compare: 'full', 'lora'."}
    )
    seeds: list[int] = field(
        default_factory=lambda: [42, 43, 44, 45, 46],
        metadata={"help": "Training seeds, one run per seed and arm; the seeds are the units of the comparison."},
    )
    full_learning_rates: list[float] | None = field(
        default=None, metadata={"help": "Learning rates of the full fine-tunes; None: [learning_rate]."}
    )
    lora_learning_rates: list[float] | None = field(
        default=None, metadata={"help": "Learning rates of the LoRA runs (every rank); None: [learning_rate]."}
    )
    lora_ranks: list[int] | None = field(
        default=None,
        metadata={"help": "LoRA ranks, one frontier each, alpha / r kept at lora_alpha / lora_r; None: [lora_r]."},
    )
    eval_subset_size: int = field(
        default=256,
        metadata={
            "help": "Validation examples whose representations are dumped and compared, and the task is scored on."
        },
    )
    subset_seed: int = field(default=999, metadata={"help": "Seed that draws the evaluation subset."})
    offtask_dataset: str | None = field(
        default=None,
        metadata={
            "help": "Texts the model is not tuned on (corpus:<name>, builtin:<task> or a file with a text column), "
            "whose drift is measured beside the task's; None: the task's texts only."
        },
    )
    offtask_split: str = field(default="validation", metadata={"help": "Split of offtask_dataset."})
    offtask_text_column: str = field(default="text", metadata={"help": "Text column of offtask_dataset."})
    offtask_samples: int = field(default=256, metadata={"help": "Off-task texts dumped (the first N of the split)."})
    pooling: Literal["mean", "first", "last", "tokens"] = field(
        default="mean",
        metadata={
            "help": "Representation the frontier and in-training drift use: 'mean' over tokens, 'first' "
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
    matched_levels: int = field(
        default=3,
        metadata={"help": "Task-loss levels inside the range every arm reached, where the arms are compared."},
    )
    bootstrap_samples: int = field(default=1000, metadata={"help": "Bootstrap resamples of the examples per layer."})
    confidence: float = field(default=0.95, metadata={"help": "Level of the intervals."})

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
        for key in ("full_learning_rates", "lora_learning_rates", "lora_ranks"):
            values = getattr(self, key)
            if values is None:
                continue
            if not values or len(set(values)) != len(values) or any(v <= 0 for v in values):
                raise ConfigError(f"{key}={values} must be a non-empty list of distinct positive values (or null)")

    def arms(self, learning_rate: float) -> list[Arm]:
        """Every run of one seed: each method at each of its learning rates (and LoRA at each rank);
        ``learning_rate`` stands in for a grid that is not set."""
        arms = []
        if "full" in self.methods:
            arms += [Arm("full", lr) for lr in self.full_learning_rates or [learning_rate]]
        if "lora" in self.methods:
            arms += [
                Arm("lora", lr, rank)
                for rank in self.lora_ranks or [self.lora_r]
                for lr in self.lora_learning_rates or [learning_rate]
            ]
        return arms

    def lora_config_of(self, arm: Arm, task_type: str):
        """The peft ``LoraConfig`` of a LoRA ``arm``: its rank, alpha scaled to keep ``lora_alpha / lora_r``."""
        shape = dataclasses.replace(self, lora_r=arm.rank, lora_alpha=self.lora_alpha * arm.rank / self.lora_r)
        return shape.lora_config(task_type)


@dataclass(frozen=True)
class Arm:
    """One training setting of the study: a method, its learning rate and, for LoRA, the rank."""

    method: str
    learning_rate: float
    rank: int | None = None

    @property
    def frontier(self) -> str:
        """The curve this arm is a point of: ``full`` or ``lora-r<rank>``."""
        return self.method if self.rank is None else f"{self.method}-r{self.rank}"

    @property
    def name(self) -> str:
        """Directory name of its runs: ``full-lr5e-05``, ``lora-r8-lr0.002``."""
        return f"{self.frontier}-lr{self.learning_rate:g}"
