"""Data for recipes: built-in tasks, hub datasets or local files, tokenized for seq_cls or causal_lm.

Every recipe takes the same :class:`~hf_ext.config.DataArguments`: ``dataset_name`` is
``builtin:<task>`` (generated offline by :mod:`hf_ext.tasks`), ``corpus:<name>`` (human-written text from
:mod:`hf_ext.corpora`) or a hub name, and
``train_file``/``validation_file``/``test_file`` (json, jsonl, csv) take precedence over both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Value, load_dataset
from transformers import (
    DataCollatorForSeq2Seq,
    DataCollatorWithPadding,
    EvalPrediction,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from . import corpora, distributed, models, tasks
from .config import DataArguments, ModelArguments
from .data_files import check_data_file, data_format, load_data_files
from .errors import ConfigError, DataError, RunDirectoryError
from .io import read_json, write_json

logger = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"


def load_raw_datasets(args: DataArguments) -> DatasetDict:
    """Load the splits named by ``args``; make a validation split from train when there is none.

    ``args.split_seed`` draws the carved-out validation split (the same for every training seed). Sample
    limits are applied last.
    """
    if args.train_file:
        raw = _load_files(args)
    elif args.dataset_name and args.dataset_name.startswith(BUILTIN_PREFIX):
        raw = tasks.load_builtin_task(args.dataset_name[len(BUILTIN_PREFIX) :], seed=args.task_seed)
    elif args.dataset_name and args.dataset_name.startswith(corpora.PREFIX):
        raw = corpora.load_corpus(args.dataset_name, seed=args.split_seed)
    elif args.dataset_name:
        try:
            raw = load_dataset(args.dataset_name, args.dataset_config_name)
        except (OSError, ValueError, ConnectionError) as err:  # not on the hub, not cached, or offline
            raise DataError(
                f"cannot load dataset {args.dataset_name!r}: {str(err).splitlines()[0]}; use 'builtin:<task>', a "
                "dataset in the local cache, or local files with train_file"
            ) from None
    else:
        raise ConfigError(
            "no data given: set dataset_name ('builtin:sentiment', 'corpus:rotten_tomatoes', a hub name) or train_file"
        )
    if "train" not in raw:
        raise DataError(f"the data has no 'train' split (found {list(raw)})")
    if "validation" not in raw:
        if len(raw["train"]) < 2:
            raise DataError(
                f"the training data has {len(raw['train'])} example(s): too few to hold some out as validation"
            )
        logger.warning(
            "the data has no validation split: holding out %d%% of train (validation_split_percentage)",
            args.validation_split_percentage,
        )
        split = raw["train"].train_test_split(test_size=args.validation_split_percentage / 100, seed=args.split_seed)
        raw = DatasetDict({**raw, "train": split["train"], "validation": split["test"]})
    limits = {"train": args.max_train_samples, "validation": args.max_eval_samples, "test": args.max_eval_samples}
    return DatasetDict(
        {name: ds.select(range(min(len(ds), limits[name]))) if limits.get(name) else ds for name, ds in raw.items()}
    )


def _load_files(args: DataArguments) -> DatasetDict:
    files = _data_files(args)
    kinds = {data_format(path) for path in files.values()}
    if len(kinds) > 1:
        raise DataError(f"data files mix formats {sorted(kinds)}; use one format for all splits")
    columns = {split: check_data_file(path) for split, path in files.items()}
    for split, names in columns.items():
        if set(names) != set(columns["train"]):
            raise DataError(
                f"{files[split]} has columns {names} but {files['train']} has {columns['train']}: "
                "every split needs the same columns"
            )
    return load_data_files(files)


def infer_label_names(raw: DatasetDict, args: DataArguments) -> list[str]:
    """Class names: a ClassLabel's names, else the sorted distinct values of the training labels.

    Raises :class:`DataError` for a missing label column, a null label, or a label that appears in
    the validation or test split but never in train (the model would get a class it never trains on).
    """
    train = raw["train"]
    if args.label_column not in train.column_names:
        raise DataError(
            f"label column {args.label_column!r} not in the data (columns: {train.column_names}); set label_column"
        )
    feature = train.features[args.label_column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    if not isinstance(feature, Value):
        raise DataError(
            f"label column {args.label_column!r} holds {type(feature).__name__} values (e.g. lists); "
            "a label must be one text or number per example"
        )
    for name, split in raw.items():
        values = split[args.label_column]
        if None in values:
            raise DataError(
                f"{name} split: row {values.index(None) + 1} has no {args.label_column!r} (null); "
                "every seq_cls example needs a label"
            )
    known = set(train.unique(args.label_column))
    for name, split in raw.items():
        unseen = sorted(set(split.unique(args.label_column)) - known, key=str)
        if unseen:
            count = sum(v in unseen for v in split[args.label_column])
            raise DataError(
                f"label(s) {unseen[:5]} appear in the {name} split ({count} row(s)) but never in train: the model "
                "would get classes it never trains on; fix the labels or add training examples of them"
            )
    if len(known) < 2:
        raise DataError(
            f"the training labels hold {len(known)} class ({sorted(known, key=str)}): a classifier needs at least two"
        )
    return [str(v) for v in sorted(known)]


def tokenize_datasets(
    raw: DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    task_type: str,
    args: DataArguments,
    labels: list[str] | None = None,
) -> DatasetDict:
    """Tokenize every split for ``task_type``; the original columns are dropped.

    - ``seq_cls``: ``input_ids``, ``attention_mask`` and ``labels`` (class index in ``labels``).
    - ``causal_lm``: prompt + response + EOS; ``labels`` are -100 on the prompt so that the loss
      covers the response only. Examples whose response is truncated away are dropped (with a warning);
      a split left with none is a :class:`DataError`.
    """
    if task_type not in ("seq_cls", "causal_lm"):
        raise ValueError(f"task_type must be 'seq_cls' or 'causal_lm', got {task_type!r}")
    if task_type == "seq_cls" and labels is None:
        raise ValueError("seq_cls tokenization needs the label names")
    out = {}
    for name, split in raw.items():
        if task_type == "seq_cls":
            class_label = isinstance(split.features.get(args.label_column), ClassLabel)
            function = _seq_cls_tokenizer(tokenizer, args, None if class_label else labels)
        else:
            function = _causal_lm_tokenizer(tokenizer, args)
        tokenized = split.map(function, batched=True, remove_columns=split.column_names, desc=f"tokenize {name}")
        if task_type == "causal_lm":
            before = len(tokenized)
            tokenized = tokenized.filter(lambda b: [any(x != -100 for x in row) for row in b["labels"]], batched=True)
            if len(tokenized) == 0:
                raise DataError(
                    f"every one of the {before} examples of the {name} split was dropped: each prompt fills "
                    f"max_seq_length={args.max_seq_length} tokens, leaving none of the response to learn from; raise "
                    "max_seq_length or shorten the prompts"
                )
            if len(tokenized) < before:
                logger.warning(
                    "%s: dropped %d examples whose response did not fit in max_seq_length=%d",
                    name,
                    before - len(tokenized),
                    args.max_seq_length,
                )
        out[name] = tokenized
    return DatasetDict(out)


def _require_columns(batch: dict[str, list], columns: list[str]) -> None:
    missing = [c for c in columns if c not in batch]
    if missing:
        raise ValueError(f"column(s) {missing} not in the data (columns: {sorted(batch)}); set the *_column arguments")


def _seq_cls_tokenizer(tokenizer: PreTrainedTokenizerBase, args: DataArguments, labels: list[str] | None) -> Callable:
    """``labels=None``: the column already holds class indices (ClassLabel); else values are mapped by name."""
    index = None if labels is None else {name: i for i, name in enumerate(labels)}

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        pair = [args.text_pair_column] if args.text_pair_column else []
        _require_columns(batch, [args.text_column, *pair, args.label_column])
        segments = [batch[column] for column in (args.text_column, *pair)]
        encoded = tokenizer(*segments, truncation=True, max_length=args.max_seq_length)
        values = batch[args.label_column]
        encoded["labels"] = list(values) if index is None else [index[str(v)] for v in values]
        return encoded

    return tokenize


def format_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, use_chat_template: bool) -> str:
    """The text a causal LM sees before its response: the chat template if asked for and present."""
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
    return tasks.PLAIN_PROMPT.format(prompt=prompt)


def uses_chat_template(tokenizer: PreTrainedTokenizerBase, args: DataArguments) -> bool:
    return bool(args.use_chat_template and getattr(tokenizer, "chat_template", None))


def _causal_lm_tokenizer(tokenizer: PreTrainedTokenizerBase, args: DataArguments) -> Callable:
    if tokenizer.eos_token_id is None:
        raise ValueError("causal_lm needs a tokenizer with an EOS token")
    chat = uses_chat_template(tokenizer, args)

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        _require_columns(batch, [args.prompt_column, args.response_column])
        prompts = [format_prompt(tokenizer, p, chat) for p in batch[args.prompt_column]]
        responses = [r if chat else " " + r for r in batch[args.response_column]]
        prompt_ids = tokenizer(prompts, add_special_tokens=not chat)["input_ids"]
        response_ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
        out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
        for p, r in zip(prompt_ids, response_ids):
            ids = (p + r + [tokenizer.eos_token_id])[: args.max_seq_length]
            labels = ([-100] * len(p) + r + [tokenizer.eos_token_id])[: args.max_seq_length]
            out["input_ids"].append(ids)
            out["attention_mask"].append([1] * len(ids))
            out["labels"].append(labels)
        return out

    return tokenize


def data_collator(tokenizer: PreTrainedTokenizerBase, task_type: str, pad_to_multiple_of: int | None = None):
    """Dynamic padding; for causal_lm the labels are padded with -100."""
    if task_type == "causal_lm":
        return DataCollatorForSeq2Seq(
            tokenizer, padding=True, label_pad_token_id=-100, pad_to_multiple_of=pad_to_multiple_of
        )
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)


def argmax_logits(logits: Any, labels: torch.Tensor) -> torch.Tensor:
    """``preprocess_logits_for_metrics``: keep the predicted ids instead of full logits during eval."""
    return (logits[0] if isinstance(logits, tuple) else logits).argmax(dim=-1)


def compute_metrics_fn(task_type: str) -> Callable[[EvalPrediction], dict[str, float]]:
    """Accuracy and macro-F1 for seq_cls; next-token accuracy over response tokens for causal_lm (use with
    :func:`argmax_logits`)."""

    def seq_cls(pred: EvalPrediction) -> dict[str, float]:
        from .metrics import ClassificationScores

        scores = ClassificationScores(keep_in_memory=True)
        return scores.compute(predictions=pred.predictions, references=pred.label_ids)

    def causal_lm(pred: EvalPrediction) -> dict[str, float]:
        predicted, labels = np.asarray(pred.predictions)[:, :-1], np.asarray(pred.label_ids)[:, 1:]
        keep = labels != -100
        return {"response_token_accuracy": float((predicted[keep] == labels[keep]).mean())}

    return causal_lm if task_type == "causal_lm" else seq_cls


@dataclass
class PreparedData:
    """Everything a Trainer needs about the data, built by :func:`prepare_data`."""

    raw: DatasetDict
    train: Dataset
    validation: Dataset
    test: Dataset | None
    labels: list[str] | None
    collator: Any
    compute_metrics: Callable[[EvalPrediction], dict[str, float]]
    preprocess_logits_for_metrics: Callable
    source: dict[str, Any] | None = None

    def trainer_kwargs(self) -> dict[str, Any]:
        """The Trainer's data arguments: ``HfExtTrainer(model=..., args=..., **data.trainer_kwargs())``."""
        return {
            "train_dataset": self.train,
            "eval_dataset": self.validation,
            "data_collator": self.collator,
            "compute_metrics": self.compute_metrics,
            "preprocess_logits_for_metrics": self.preprocess_logits_for_metrics,
            "data_source": self.source,
        }


REQUIRED_COLUMNS = {"seq_cls": ("text_column", "label_column"), "causal_lm": ("prompt_column", "response_column")}


def check_columns(raw: DatasetDict, args: DataArguments, task_type: str) -> None:
    """Every split holds the columns ``task_type`` reads and at least one example, or :class:`DataError`."""
    for name, split in raw.items():
        if len(split) == 0:
            raise DataError(f"the {name} split is empty")
        keys = REQUIRED_COLUMNS[task_type]
        if task_type == "seq_cls" and args.text_pair_column:
            keys = ("text_column", "text_pair_column", "label_column")
        missing = [f"{key}={getattr(args, key)!r}" for key in keys if getattr(args, key) not in split.column_names]
        if missing:
            raise DataError(
                f"{task_type} reads {', '.join(missing)}, not in the {name} split (columns: {split.column_names}); "
                "set the *_column keys to the data's column names"
            )
        for key in (k for k in keys if k != "label_column"):
            column = getattr(args, key)
            feature = split.features[column]
            if getattr(feature, "dtype", None) not in ("string", "large_string"):
                raise DataError(
                    f"{key}={column!r} holds {getattr(feature, 'dtype', type(feature).__name__)} in the {name} split, "
                    "expected text; point it at the column with the text"
                )
            if not any(text.strip() for text in split[column] if text):
                raise DataError(f"every {column!r} in the {name} split is empty: there is no text to learn from")


def fit_max_seq_length(args: DataArguments, tokenizer: PreTrainedTokenizerBase) -> DataArguments:
    """``args`` with ``max_seq_length`` lowered, with a warning, to what the tokenizer's model can take."""
    reserved = tokenizer.num_special_tokens_to_add(pair=False)
    if args.max_seq_length <= reserved:
        raise ConfigError(
            f"max_seq_length={args.max_seq_length} leaves no room for text: the tokenizer adds {reserved} special "
            "token(s) to every example; use a larger value (e.g. 128)"
        )
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < args.max_seq_length:
        logger.warning(
            "max_seq_length=%d is more than the model takes (%d); using %d", args.max_seq_length, limit, limit
        )
        return dataclasses.replace(args, max_seq_length=limit)
    return args


def prepare_data(args: DataArguments, tokenizer: PreTrainedTokenizerBase, task_type: str) -> PreparedData:
    """Load, check, label and tokenize the data named by ``args`` for ``task_type``."""
    if task_type not in REQUIRED_COLUMNS:
        raise ConfigError(f"task_type must be one of {sorted(REQUIRED_COLUMNS)}, got {task_type!r}")
    args = fit_max_seq_length(args, tokenizer)
    raw = load_raw_datasets(args)
    check_columns(raw, args, task_type)
    labels = (
        infer_label_names(raw, args)
        if task_type == "seq_cls" or args.label_column in raw["train"].column_names
        else None
    )
    tokenized = tokenize_datasets(raw, tokenizer, task_type, args, labels)
    return PreparedData(
        raw=raw,
        train=tokenized["train"],
        validation=tokenized["validation"],
        test=tokenized.get("test"),
        labels=labels,
        collator=data_collator(tokenizer, task_type),
        compute_metrics=compute_metrics_fn(task_type),
        preprocess_logits_for_metrics=argmax_logits,
        source=data_source(args, raw),
    )


def split_sha256(split: Dataset) -> str:
    """SHA-256 of a split's rows in order (every column): equal hashes, equal data."""
    digest = hashlib.sha256()
    for row in split:
        digest.update(json.dumps(row, sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def data_source(args: DataArguments, raw: DatasetDict) -> dict[str, Any]:
    """Where the data of ``args`` came from (files, builtin task, corpus with its packages, hashes and licence, or
    hub name) and the size and content hash of each split of ``raw``: the run record's data entry."""
    if args.train_file:
        origin: dict[str, Any] = {"files": _data_files(args)}
    elif args.dataset_name.startswith(BUILTIN_PREFIX):
        origin = {"dataset": args.dataset_name, "task_seed": args.task_seed}
    elif args.dataset_name.startswith(corpora.PREFIX):
        origin = {"dataset": args.dataset_name, **corpora.get_corpus(args.dataset_name).describe()}
    else:
        origin = {"dataset": args.dataset_name, "dataset_config_name": args.dataset_config_name}
    splits = {name: {"rows": len(split), "sha256": split_sha256(split)} for name, split in raw.items()}
    return {**origin, "split_seed": args.split_seed, "splits": splits}


def _data_files(args: DataArguments) -> dict[str, str]:
    files = {"train": args.train_file, "validation": args.validation_file, "test": args.test_file}
    return {split: path for split, path in files.items() if path}


def example_hashes(dataset, indices: list[int]) -> list[str]:
    """A short SHA-256 of each chosen example (every column, e.g. its tokens and label): what the example is,
    not where it sits."""
    return [
        hashlib.sha256(json.dumps(row, sort_keys=True, default=str).encode()).hexdigest()[:16]
        for row in dataset.select(indices)
    ]


def eval_subset(dataset, size: int, seed: int, path: Path) -> list[int]:
    """Indices of the evaluation subset, drawn once and saved to ``path`` with each example's content hash;
    reused when it exists, after checking that those indices still hold the same examples."""
    if path.is_file():
        saved = read_json(path)
        if saved["size"] != min(size, len(dataset)) or saved["seed"] != seed:
            raise RunDirectoryError(
                f"{path} holds a subset of size {saved['size']} seed "
                f"{saved['seed']}; delete it or use another output_dir"
            )
        if max(saved["indices"], default=-1) >= len(dataset) or (
            "hashes" in saved and example_hashes(dataset, saved["indices"]) != saved["hashes"]
        ):
            raise RunDirectoryError(
                f"{path} was drawn from other validation examples than this run's (their content hashes differ or "
                "indices are out of range): the data, its split (split_seed) or the tokenizer changed; delete it or "
                "use another output_dir"
            )
        return saved["indices"]
    if size > len(dataset):
        logger.warning(
            "eval_subset_size=%d is more than the %d validation examples; using all of them", size, len(dataset)
        )
    generator = torch.Generator().manual_seed(seed)
    indices = sorted(torch.randperm(len(dataset), generator=generator)[: min(size, len(dataset))].tolist())
    if distributed.is_main_process():
        write_json(
            path, {"size": len(indices), "seed": seed, "indices": indices, "hashes": example_hashes(dataset, indices)}
        )
    return indices


class ModelAndData(NamedTuple):
    """What :func:`load_model_and_data` returns: unpack as ``tokenizer, data, model``."""

    tokenizer: PreTrainedTokenizerBase
    data: PreparedData
    model: PreTrainedModel


def load_model_and_data(model_args: ModelArguments, data_args: DataArguments, *, seed: int = 0) -> ModelAndData:
    """The opening of every recipe: the tokenizer of ``model_args``, the data of ``data_args`` tokenized for its
    task type, and the model (a classifier gets the data's labels; ``seed`` initialises new weights)."""
    tokenizer = models.load_tokenizer(model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code)
    data = prepare_data(data_args, tokenizer, model_args.task_type)
    return ModelAndData(tokenizer, data, models.load_model(model_args, tokenizer, data.labels, seed=seed))
