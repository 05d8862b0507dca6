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
        "importance": {
            "fisher": "'squared' (it was the square of the mean gradient, not a Fisher estimate), or "
            "'empirical_fisher' (mean squared per-example gradient)"
        }
    }
    BOUNDS: ClassVar[dict[str, Bounds]] = {
        "basis_rank": AT_LEAST_ONE,
        "basis_memory_gb": POSITIVE,
        "safety_lr": POSITIVE,
        "safety_weight_decay": NON_NEGATIVE,
        "safety_epochs": POSITIVE,
        "keep_ratio": OPEN_UNIT,
        "max_new_tokens": AT_LEAST_ONE,
        "seeds": AT_LEAST_ONE,
        "diverged_spread_ratio": OPEN_UNIT,
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
    importance: Literal["abs", "squared", "empirical_fisher"] = field(
        default="abs",
        metadata={
            "help": "Mean of |dL/dC| or of (dL/dC)^2 (each micro-batch's or step's mean gradient, squared), or "
            "'empirical_fisher': the mean over examples of the squared per-example gradient (micro_batch "
            "statistic only; about 1.4-1.8x the phase-2 step time on MiniLM, measured)."
        },
    )
    extra_trainable: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Modules trained fully in phases 2, 3 and plain, e.g. ['classifier'] for a new seq_cls head."
        },
    )
    max_new_tokens: int = field(default=16, metadata={"help": "causal_lm evaluation: greedy tokens per response."})
    head: Literal["prototypes", "shared"] = field(
        default="prototypes",
        metadata={
            "help": "seq_cls: 'prototypes': safety rows trained in phase 2, utility rows class means, frozen in "
            "the arms; 'shared': trained as extra_trainable says."
        },
    )
    head_seed: int | None = field(
        default=0, metadata={"help": "Seed of the head's initialisation, fixed across training seeds; null: seed."}
    )
    keep_ratios: list[float] | None = field(
        default=None, metadata={"help": "keep_ratio sweep of the masked arms; null: [keep_ratio]."}
    )
    mask_layouts: list[Literal["input/per_layer", "input/global", "element/per_layer", "element/global"]] | None = (
        field(default=None, metadata={"help": "granularity/threshold sweep of the masks; null: the configured one."})
    )
    phase3_learning_rates: list[float] | None = field(
        default=None, metadata={"help": "Learning rates of the masked arms; null: [learning_rate]."}
    )
    arm_optim: str | None = field(
        default=None, metadata={"help": "optim of every arm after phase 2 (e.g. 'sgd'); null: optim."}
    )
    diverged_spread_ratio: float = field(
        default=0.1,
        metadata={"help": "Flag an arm diverged below this share of phase 2's feature spread (or at chance)."},
    )
    ood_dataset_name: str | None = field(
        default=None,
        metadata={"help": "seq_cls: an outside safety set (same classes) every arm is scored on, e.g. real requests."},
    )
    mask_controls: list[Literal["none", "random", "eigenvalue"]] = field(
        default_factory=lambda: ["none", "random", "eigenvalue"],
        metadata={
            "help": "Phase-3 control arms beside the importance masks, each from the same phase-2 model with as many "
            "coefficients frozen per layer: 'none' (nothing frozen: the reparameterization alone), 'random', "
            "'eigenvalue' (the top-eigenvalue directions). Run directories phase3_<control>/."
        },
    )
    plain_learning_rates: list[float] | None = field(
        default=None,
        metadata={
            "help": "Learning rates of the plain arm (target layers trained, no reparameterization), so masks "
            "and plain are compared at matched utility; null: learning_rate only. Directories plain/ (at "
            "learning_rate) and plain_lr<lr>/."
        },
    )
    full_learning_rates: list[float] = field(
        default_factory=list,
        metadata={
            "help": "Learning rates of plain full fine-tunes (every parameter trained). Directories full_lr<lr>/."
        },
    )
    seeds: int = field(
        default=1,
        metadata={
            "help": "Repeat phases 2, 3 and the plain arms with seeds seed, seed+1, ... in output_dir/seed-<seed>/ "
            "(phase 1 does not depend on the seed and is computed once); eval.json/eval.md/safety_vs_utility.png "
            "in output_dir then give each arm's mean and 95% interval over seeds."
        },
    )
    save_full_models: bool = field(
        default=False,
        metadata={
            "help": "Also save each phase-3 and plain arm as a full model in <arm>/model; by default an arm keeps "
            "only its delta.safetensors (phase 2's full model is always saved: the arms start from it)."
        },
    )

    @property
    def sweep_keep_ratios(self) -> list[float]:
        return self.keep_ratios or [self.keep_ratio]

    @property
    def sweep_layouts(self) -> list[str]:
        return self.mask_layouts or [f"{self.granularity}/{self.threshold}"]

    @property
    def importance_granularity(self) -> str:
        """Phase 2 accumulates element-wise importance when any layout needs it (input scores are its row sums)."""
        layouts = [*self.sweep_layouts, f"{self.granularity}/{self.threshold}"]
        return "element" if any(layout.startswith("element") for layout in layouts) else "input"

    def __post_init__(self):
        check_bounds(self)
        orphans = [k for k in ("safety_validation_file", "safety_test_file") if getattr(self, k)]
        if orphans and not self.safety_train_file:
            raise ConfigError(
                f"{' and '.join(orphans)} set but safety_train_file is not: local safety files are used only "
                "together with safety_train_file; set it"
            )
        if self.importance == "empirical_fisher" and self.importance_statistic != "micro_batch":
            raise ConfigError(
                "importance 'empirical_fisher' reads the per-example gradients of each micro-batch: set "
                "importance_statistic to 'micro_batch'"
            )
        rates = [*(self.plain_learning_rates or []), *self.full_learning_rates, *(self.phase3_learning_rates or [])]
        if any(not rate > 0 for rate in rates):
            raise ConfigError(f"plain_learning_rates and full_learning_rates must be positive; got {rates}")
        for key in ("plain_learning_rates", "phase3_learning_rates", "keep_ratios", "mask_layouts"):
            if getattr(self, key) == []:
                raise ConfigError(f"{key} is empty: give at least one value, or null for the single default")
        if any(not 0 < k < 1 for k in self.keep_ratios or []):
            raise ConfigError(
                f"keep_ratios must lie in (0, 1) (shares of coefficients to freeze); got {self.keep_ratios}"
            )
        if self.head == "prototypes" and any("classifier" in p or p == "score" for p in self.extra_trainable):
            raise ConfigError(
                f"extra_trainable {self.extra_trainable} names the head, which head 'prototypes' handles itself "
                "(safety rows trained in phase 2, frozen in the arms): remove it, or set head to 'shared'"
            )
        for key in (
            "mask_controls", "plain_learning_rates", "full_learning_rates", "phase3_learning_rates", "keep_ratios",
            "mask_layouts",
        ):  # fmt: skip
            values = getattr(self, key) or []
            if len(set(values)) < len(values):
                raise ConfigError(f"{key} repeats a value: {values}")
        if not self.targets:
            raise ConfigError("targets is empty: name the linear modules to reparameterize, e.g. ['mlp.down_proj']")
