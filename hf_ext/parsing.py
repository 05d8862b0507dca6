"""Strict parsing of one JSON config file into argument dataclasses.

A recipe is run as ``python recipe.py config.json [key=value ...]``: the JSON file holds the keys
of every dataclass the recipe parses (ours and ``TrainingArguments``), and ``key=value`` pairs on
the command line override single keys (values are read as JSON, else as strings). Unknown keys,
values of the wrong type and numbers out of range are errors that name the key and where it was
given (the file or the command line), before any model or data is loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import json
import logging
import math
import os
import re
import sys
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from transformers import HfArgumentParser, TrainingArguments

from .config import RUN_RECORD_FIELD, RunRecord, bounds_of, field_help, invalid_value
from .errors import ConfigError

logger = logging.getLogger(__name__)


def parse_config(
    dataclass_types: Sequence[type], argv: Sequence[str] | None = None, *, recipe: str | None = None
) -> tuple[Any, ...]:
    """Parse ``config.json [key=value ...]`` into instances of ``dataclass_types``.

    ``argv`` defaults to ``sys.argv[1:]``; ``recipe`` is the calling script's path for the run record (a
    recipe passes ``__file__``; default ``sys.argv[0]`` when ``argv`` comes from the command line).
    Training arguments with a ``run_record`` field (``HfExtTrainingArguments``) carry the
    :class:`~hf_ext.config.RunRecord` of the whole parse. ``-h``/``--help`` prints every key (type,
    default, help) and exits.

    Raises:
        ConfigError: no file, unreadable JSON, an unknown key (with the closest known keys), a
            value of the wrong type or out of range; the message names the key and where it was given.
    """
    if argv is None:
        argv, recipe = sys.argv[1:], recipe or sys.argv[0]
    argv = list(argv)
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
    return parse_dict(dataclass_types, values | overrides, source=origins, recipe=recipe, config_file=str(path))


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
    dataclass_types: Sequence[type],
    values: dict[str, Any],
    *,
    source: str | Mapping[str, str] = "config",
    recipe: str | None = None,
    config_file: str | None = None,
) -> tuple[Any, ...]:
    """Like ``HfArgumentParser.parse_dict`` but every key must be known, well typed and in range.

    ``source`` names where the keys came from (one name, or one per key) for the error messages;
    ``recipe`` and ``config_file`` go into the run record each instance carries (see :func:`parse_config`).
    """
    where = (lambda key: source.get(key, "config")) if isinstance(source, Mapping) else (lambda key: source)
    fields = {f.name: (f, t) for t in dataclass_types for f in _keys(t)}
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
            raise ConfigError(f"{where(key)}: " + invalid_value(key, value, expected, owner, field_))
        if key == "resume_from_checkpoint" and value is True:
            continue  # true: the last checkpoint in output_dir, as Trainer.train(resume_from_checkpoint=True)
        if not _matches(value, annotation):
            raise ConfigError(f"{where(key)}: " + invalid_value(key, value, _describe(annotation), owner, field_))
        bounds = bounds_of(owner, key)
        if bounds is not None and not bounds.allows(value):
            raise ConfigError(f"{where(key)}: " + invalid_value(key, value, bounds.describe(), owner, field_))
    try:
        parsed = HfArgumentParser(list(dataclass_types)).parse_dict(values)
    except (TypeError, ValueError) as err:  # a dataclass's own check, naming the keys it is about
        named = [key for key in values if re.search(rf"\b{re.escape(key)}\b", str(err))]
        origins = sorted({where(key) for key in named or values})
        raise ConfigError(f"{' and '.join(origins) or 'config'}: {err}") from None
    given = {
        type(instance).__name__: frozenset(key for key in values if key in {f.name for f in _keys(type(instance))})
        for instance in parsed
    }
    for instance in parsed:
        _warn_superseded(instance, given[type(instance).__name__])
    recipe_file = os.path.abspath(recipe) if recipe and os.path.isfile(recipe) else None  # not "-c", "<stdin>"
    record = RunRecord(
        recipe=Path(recipe_file).stem if recipe_file else "unknown",
        recipe_file=recipe_file,
        config_file=config_file,
        resolved={type(instance).__name__: _resolved(instance) for instance in parsed},
        given=given,
    )
    for instance in parsed:
        if hasattr(instance, RUN_RECORD_FIELD):
            instance.run_record = record
    return parsed


def _warn_superseded(instance: Any, given: frozenset[str]) -> None:
    """A set key that another set key makes unused (the class's ``SUPERSEDED_BY``) gets a warning."""
    for key, winner in getattr(instance, "SUPERSEDED_BY", {}).items():
        if key in given and getattr(instance, winner):
            logger.warning("%s is set: %s=%r is not used", winner, key, getattr(instance, key))


def _keys(kind: type) -> list[dataclasses.Field]:
    """The fields of ``kind`` a config may set (the run record is the parser's own)."""
    return [f for f in dataclasses.fields(kind) if f.init and f.name != RUN_RECORD_FIELD]


def _non_finite(value: Any) -> bool:
    """A NaN or infinite float, also inside a list (Python's json reads NaN and Infinity; no range check can)."""
    if isinstance(value, list):
        return any(_non_finite(item) for item in value)
    return isinstance(value, float) and not math.isfinite(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _in(origin: str) -> str:
    return "on the command line" if origin == "the command line" else f"in {origin}"


def _resolved(instance: Any) -> dict[str, Any]:
    """Every key of a parsed dataclass with its value, JSON-safe (``TrainingArguments.to_dict`` masks tokens)."""
    if isinstance(instance, TrainingArguments):
        return _json_safe(instance.to_dict())
    return {f.name: _json_safe(getattr(instance, f.name)) for f in _keys(type(instance))}


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
        for f in _keys(kind):
            if f.name.startswith("_"):
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
            text = field_help(f)
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
