"""``HeadStudyArguments``: what the head-plasticity study adds to the model, data and training arguments."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import ConfigError
from .analysis import CaseThresholds


@dataclass
class HeadStudyArguments:
    """What the head-plasticity study adds to the model, data and training arguments."""

    seeds: list[int] = field(default_factory=list, metadata={"help": "Training seeds; empty: just the 'seed' key."})
    eval_subset_size: int = field(
        default=1024, metadata={"help": "Examples of the validation split every measurement uses."}
    )
    subset_seed: int = field(default=999, metadata={"help": "Seed that draws the evaluation subset."})
    top_k: int = field(default=20, metadata={"help": "K of the top-K overlap statistics."})
    important_percentile: float = field(
        default=90.0, metadata={"help": "I_pre percentile at or above which a head is important."}
    )
    static_percentile: float = field(
        default=30.0, metadata={"help": "Urel percentile at or below which a head is static."}
    )
    plastic_percentile: float = field(
        default=90.0, metadata={"help": "Urel percentile at or above which a head is plastic."}
    )
    unimportant_percentile: float = field(
        default=30.0, metadata={"help": "I_pre percentile at or below which a head is unimportant."}
    )
    log_head_importance_steps: int = field(
        default=0,
        metadata={"help": "Log gradient head importance to TensorBoard every N steps during training (0: never)."},
    )

    def __post_init__(self):
        if self.eval_subset_size < 1:
            raise ConfigError(f"eval_subset_size must be >= 1, got {self.eval_subset_size}")

    @property
    def thresholds(self) -> CaseThresholds:
        return CaseThresholds(
            self.important_percentile, self.static_percentile, self.plastic_percentile, self.unimportant_percentile
        )
