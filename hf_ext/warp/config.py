"""``WarpArguments``: what the WaRP study adds to the model, data and training arguments."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from ..config import AT_LEAST_ONE, NON_NEGATIVE, OPEN_UNIT, POSITIVE, Bounds, check_bounds
from ..errors import ConfigError


@dataclass
class WarpArguments:
    """What the WaRP study adds to the model, data and training arguments."""

    RENAMED_VALUES: ClassVar[dict[str, dict[str, str]]] = {
        "importance": {"fisher": "'squared' (it is the square of the step's mean gradient, not a Fisher estimate)"}
    }
    BOUNDS: ClassVar[dict[str, Bounds]] = {
        "basis_rank": AT_LEAST_ONE,
        "basis_memory_gb": POSITIVE,
        "safety_lr": POSITIVE,
        "safety_weight_decay": NON_NEGATIVE,
        "safety_epochs": POSITIVE,
        "keep_ratio": OPEN_UNIT,
        "max_new_tokens": AT_LEAST_ONE,
    }

    phase: Literal[1, 2, 3, "plain", "eval", "all"] = field(
        default="all",
        metadata={
            "help": "1 basis, 2 safety fine-tune + importance + masks, 3 masked utility fine-tune, 'plain' "
            "the unmasked baseline, 'eval' the held-out table; 'all' runs 1, 2, 3, plain and eval."
        },
    )
    targets: list[str] = field(
        default_factory=lambda: ["mlp.down_proj"],
        metadata={"help": "Linear modules to reparameterize, as patterns ('mlp.down_proj', 'layers.[28-31].mlp.*')."},
    )
    layers: str | None = field(default=None, metadata={"help": "Keep only targets in these blocks, e.g. '28-31'."})
    basis_rank: int | None = field(
        default=None,
        metadata={
            "help": "Keep the top-r basis directions; the rest of W is a frozen residual. None: all.",
        },
    )
    centered: bool = field(default=False, metadata={"help": "Basis from the centred covariance instead of E[x x^T]."})
    basis_memory_gb: float | None = field(
        default=None,
        metadata={
            "help": "Memory budget of the phase-1 statistics (12 bytes x d_in^2 per target): targets are processed "
            "in groups that fit, one pass over the basis data each, stopped after the group's last target; null: "
            "all targets in one pass."
        },
    )
    basis_eigh_dtype: Literal["float64", "float32"] = field(
        default="float64",
        metadata={
            "help": "Precision of the phase-1 eigendecompositions: float32 is about twice as fast (orthonormal to "
            "~1e-6) and resolves the smallest eigenvalues less well."
        },
    )
    basis_data: Literal["safety", "utility"] = field(default="safety", metadata={"help": "Data of the phase-1 basis."})
    safety_dataset_name: str | None = field(
        default="builtin:safety",
        metadata={"help": "Safety data: 'builtin:safety', a hub name, or null with safety_*_file."},
    )
    safety_train_file: str | None = field(
        default=None, metadata={"help": "Local safety training data (.json/.jsonl/.csv)."}
    )
    safety_validation_file: str | None = field(default=None, metadata={"help": "Local safety validation data."})
    safety_test_file: str | None = field(default=None, metadata={"help": "Local safety test data."})
    safety_lr: float = field(default=1e-4, metadata={"help": "Phase-2 learning rate."})
    safety_weight_decay: float = field(default=0.0, metadata={"help": "Phase-2 AdamW weight decay."})
    safety_epochs: float = field(
        default=1.0,
        metadata={"help": "Phase-2 epochs (num_train_epochs applies to phase 3)."},
    )
    keep_ratio: float = field(
        default=0.1,
        metadata={
            "help": "Share of coefficients frozen in phase 3 (the most important), in (0, 1).",
        },
    )
    granularity: Literal["input", "element"] = field(
        default="input", metadata={"help": "'input': one flag per basis direction; 'element': one per coefficient."}
    )
    threshold: Literal["per_layer", "global"] = field(
        default="per_layer",
        metadata={"help": "Freeze keep_ratio of every layer, or one quantile over all target layers."},
    )
    importance_statistic: Literal["micro_batch", "step"] = field(
        default="micro_batch",
        metadata={
            "help": "'micro_batch': the mean over backward passes of each micro-batch's gradient statistic (the "
            "references' per-batch sum; independent of gradient accumulation and processes); 'step': of each "
            "optimizer step's averaged gradient (opposite signs cancel first)."
        },
    )
    importance_pass: Literal["during_training", "after_training"] = field(
        default="during_training",
        metadata={
            "help": "Masks from the importance accumulated while phase 2 trains, or from a separate eval-mode "
            "pass over the safety training data on the phase-2 model (the Safety-WaRP reference's current "
            "choice); with after_training both are measured and their mask overlap is reported."
        },
    )
    importance: Literal["abs", "squared"] = field(
        default="abs",
        metadata={"help": "Mean over optimizer steps of |dL/dC| or of (dL/dC)^2 (the step's mean gradient, squared)."},
    )
    extra_trainable: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Modules trained fully in phases 2, 3 and plain, e.g. ['classifier'] for a new seq_cls head."
        },
    )
    max_new_tokens: int = field(default=16, metadata={"help": "causal_lm evaluation: greedy tokens per response."})

    def __post_init__(self):
        check_bounds(self)
        orphans = [k for k in ("safety_validation_file", "safety_test_file") if getattr(self, k)]
        if orphans and not self.safety_train_file:
            raise ConfigError(
                f"{' and '.join(orphans)} set but safety_train_file is not: local safety files are used only "
                "together with safety_train_file; set it"
            )
        if not self.targets:
            raise ConfigError("targets is empty: name the linear modules to reparameterize, e.g. ['mlp.down_proj']")
