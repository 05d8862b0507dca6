"""``HeadStudyArguments``: what the head-plasticity study adds to the model, data and training arguments."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from ..config import AT_LEAST_ONE, NON_NEGATIVE, PERCENTILE, POSITIVE, Bounds, check_bounds
from ..errors import ConfigError
from .analysis import CaseThresholds

FINETUNE_FROM = ("probed_head", "random_head")
STARTING_POINT_SETTINGS = ("finetune_from", "probe_before_importance", "probe_epochs", "probe_lr")


def _percentile(default: float, text: str) -> float:
    return field(default=default, metadata={"help": text})


@dataclass
class HeadStudyArguments:
    """What the head-plasticity study adds to the model, data and training arguments."""

    BOUNDS: ClassVar[dict[str, Bounds]] = {
        "eval_subset_size": AT_LEAST_ONE,
        "top_k": AT_LEAST_ONE,
        "important_percentile": PERCENTILE,
        "static_percentile": PERCENTILE,
        "plastic_percentile": PERCENTILE,
        "unimportant_percentile": PERCENTILE,
        "log_head_importance_steps": NON_NEGATIVE,
        "probe_epochs": AT_LEAST_ONE,
        "probe_lr": POSITIVE,
        "bootstrap_samples": NON_NEGATIVE,
        "prune_step": Bounds(0, 1),
        "prune_random_orders": NON_NEGATIVE,
        "prune_eval_size": AT_LEAST_ONE,
    }

    seeds: list[int] = field(default_factory=list, metadata={"help": "Training seeds; empty: just the 'seed' key."})
    eval_subset_size: int = field(
        default=1024,
        metadata={"help": "Examples of the validation split every measurement uses."},
    )
    subset_seed: int = field(default=999, metadata={"help": "Seed that draws the evaluation subset."})
    top_k: int = field(
        default=20,
        metadata={"help": "K of the top-K overlap statistics (at most the number of heads)."},
    )
    important_percentile: float = _percentile(90.0, "I_pre percentile at or above which a head is important.")
    static_percentile: float = _percentile(30.0, "Urel percentile at or below which a head is static.")
    plastic_percentile: float = _percentile(90.0, "Urel percentile at or above which a head is plastic.")
    unimportant_percentile: float = _percentile(30.0, "I_pre percentile at or below which a head is unimportant.")
    log_head_importance_steps: int = field(
        default=0,
        metadata={
            "help": "Log gradient head importance to TensorBoard every N steps during training (0: never).",
        },
    )

    probe_before_importance: bool = field(
        default=True,
        metadata={
            "help": "seq_cls: fit only the task head (classifier and pooler) on frozen features before measuring "
            "I_pre/G_pre/F_pre, so importance is that of a model that does the task, not of a random head; "
            "probe.json records the probe's accuracy and loss on the evaluation subset."
        },
    )
    probe_epochs: int = field(default=3, metadata={"help": "Epochs of the probe over the training data."})
    probe_lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate of the probe."})
    finetune_from: Literal["probed_head", "random_head"] = field(
        default="probed_head",
        metadata={
            "help": "seq_cls: the task head fine-tuning starts from. probed_head: the head the probe fitted, the one "
            "I_pre/G_pre/F_pre were measured through (linear probing then fine-tuning, LP-FT), so U measures how "
            "the encoder learns the task; random_head: the random head, restored bit for bit, so U also holds the "
            "encoder's movement while a random head is fitted. probed_head needs probe_before_importance=true. "
            "Causal LMs are not probed: they start from their pretrained LM head (recorded as pretrained_head)."
        },
    )
    probe_seeds: list[int] = field(
        default_factory=list,
        metadata={
            "help": "Other head initialisations to probe and measure I_pre with: probe.json reports their "
            "Spearman rho and top-K overlap with the run's I_pre (how much the head's initialisation decides it)."
        },
    )

    ablation: Literal["zero", "mean"] = field(
        default="zero",
        metadata={
            "help": "What an ablated head outputs in I_pre, I_post and the pruning curve: zero (Michel et al. 2019) "
            "or its mean output over the evaluation subset (mean ablation)."
        },
    )
    importance_metric: Literal["loss", "accuracy"] = field(
        default="loss",
        metadata={
            "help": "I_pre/I_post as the ablation's loss increase or accuracy drop (both are saved; 'hf-ext heads "
            "aggregate --metric' switches later). Accuracy ties heads whose removal flips no prediction."
        },
    )
    cases_by: Literal["Urel", "U"] = field(
        default="Urel",
        metadata={
            "help": "Update size the important-but-static and plastic-but-unimportant cases are cut on: Urel "
            "(relative to the head's weights) or U (absolute, grows with depth); they pick different heads."
        },
    )
    bootstrap_samples: int = field(
        default=1000,
        metadata={
            "help": "Resamplings of the evaluation examples for the 95% intervals of importance and of every "
            "statistic (stats.json, heads.csv), and of the seeds for the across-seeds means; 0: none."
        },
    )
    prune_step: float = field(
        default=0.1,
        metadata={
            "help": "Pruning curves of the fine-tuned model (prune_curve.json): share of the heads closed per "
            "round; 0: no curves."
        },
    )
    prune_order: Literal["gradient", "ablation"] = field(
        default="gradient",
        metadata={
            "help": "Importance that orders the pruning: gradient (Michel et al., normalised per layer) or "
            "ablation (exact, a full ablation sweep per round)."
        },
    )
    prune_random_orders: int = field(
        default=3, metadata={"help": "Random pruning orders drawn as the control of the pruning curve."}
    )
    prune_eval_size: int | None = field(
        default=None,
        metadata={
            "help": "Held-out examples the pruning curves are evaluated on (heads are ranked on the evaluation "
            "subset): the test split where the data has one, else validation examples outside the evaluation "
            "subset; examples whose content is in the evaluation subset are left out. Drawn with subset_seed; "
            "default (null): eval_subset_size."
        },
    )

    def __post_init__(self):
        check_bounds(self)
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds {self.seeds} repeat a seed; each seed's run goes to its own seed-<s> directory")
        self._check_finetune_from()

    def _check_finetune_from(self) -> None:
        if self.finetune_from not in FINETUNE_FROM:
            raise ConfigError(f"finetune_from={self.finetune_from!r} is not one of {', '.join(FINETUNE_FROM)}")
        if self.finetune_from == "probed_head" and not self.probe_before_importance:
            raise ConfigError(
                "finetune_from=probed_head needs probe_before_importance=true (there is no probed head without a "
                "probe); set finetune_from=random_head to fine-tune from the random head"
            )

    def start_settings(self, task_type: str) -> dict:
        """What decides the model fine-tuning starts from, recorded in each seed's ``study.json`` and checked when
        a run is resumed or rerun in the same ``output_dir``. A causal LM is not probed: it starts from its
        pretrained LM head (``finetune_from: pretrained_head``) whatever the config says."""
        settings = {name: getattr(self, name) for name in STARTING_POINT_SETTINGS}
        return settings if task_type == "seq_cls" else settings | {"finetune_from": "pretrained_head"}

    @property
    def heldout_size(self) -> int:
        """How many held-out examples the pruning curves are evaluated on (``prune_eval_size``, else
        ``eval_subset_size``)."""
        return self.prune_eval_size or self.eval_subset_size

    @property
    def thresholds(self) -> CaseThresholds:
        return CaseThresholds(
            self.important_percentile, self.static_percentile, self.plastic_percentile, self.unimportant_percentile
        )
