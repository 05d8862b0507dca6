"""The fixed example set and the model of ``hf-ext drift dump|measure``: texts from a built-in task or a
file, tokenized into padded batches; a model by name, optionally with a peft adapter."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import DataCollatorWithPadding

from ..config import ModelArguments
from ..data import BUILTIN_PREFIX
from ..data_files import check_data_file, data_format
from ..errors import ConfigError, DataError
from ..io import read_json
from ..models import load_model, load_tokenizer, resolve_model_path
from ..tasks import load_builtin_task


def load_texts(data: str, *, split: str = "validation", column: str = "text", limit: int | None = None):
    """``(example ids, texts)`` from ``builtin:<task>`` (one of its splits) or a .jsonl/.json/.csv file."""
    if data.startswith(BUILTIN_PREFIX):
        splits = load_builtin_task(data[len(BUILTIN_PREFIX) :])
        if split not in splits:
            raise ConfigError(f"split {split!r} is not one of {list(splits)}")
        dataset, prefix = splits[split], f"{split}:"
    else:
        check_data_file(data)
        from datasets import load_dataset

        dataset, prefix = load_dataset(data_format(data), data_files=str(data), split="train"), ""
    if column not in dataset.column_names:
        raise DataError(f"{data} has no column {column!r} (columns: {dataset.column_names}); pass --text-column")
    count = len(dataset) if limit is None else min(limit, len(dataset))
    ids = [str(v) for v in dataset["id"][:count]] if "id" in dataset.column_names else None
    return ids or [f"{prefix}{i}" for i in range(count)], [str(t) for t in list(dataset[column])[:count]]


def text_batches(tokenizer, texts: list[str], *, batch_size: int, max_length: int) -> list[dict[str, torch.Tensor]]:
    """Padded batches of the tokenized texts, in order."""
    if not texts:
        raise DataError("no examples to run: the data is empty")
    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    features = [dict(zip(encoded.keys(), values, strict=True)) for values in zip(*encoded.values(), strict=True)]
    collator = DataCollatorWithPadding(tokenizer)
    return [collator(features[i : i + batch_size]) for i in range(0, len(features), batch_size)]


def load_for_drift(model: str, adapter: str | None, task_type: str, num_labels: int | None):
    """``(model, tokenizer)``: ``model`` as saved (head sized from its config or ``num_labels``), with the peft
    adapter in ``adapter`` loaded on top when given."""
    tokenizer = load_tokenizer(model)
    config_path = Path(resolve_model_path(model)) / "config.json"
    saved = read_json(config_path) if config_path.is_file() else {}
    labels = list((saved.get("id2label") or {}).values()) if num_labels is None else []
    labels = labels or [str(i) for i in range(num_labels or 2)]
    loaded = load_model(ModelArguments(model_name_or_path=model, task_type=task_type), tokenizer, labels)
    if adapter is None:
        return loaded, tokenizer
    if not (Path(adapter) / "adapter_config.json").is_file():
        raise ConfigError(f"--adapter {adapter} holds no adapter_config.json: it is not a saved peft adapter")
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(loaded, adapter), tokenizer
    except (RuntimeError, ValueError) as err:
        raise ConfigError(
            f"the adapter in {adapter} does not fit {model} ({str(err).strip().splitlines()[0]}); check --model, "
            "--task-type and --num-labels"
        ) from None
