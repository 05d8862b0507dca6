"""A fixed set of texts as padded batches: from a built-in task's or a corpus's split, or a local
.jsonl/.json/.csv file.

Used where a technique needs calibration or evaluation inputs outside a recipe's training data
(``hf-ext drift dump``, LoRA-Null calibration, ``hf-ext lora-null verify``).
"""

from __future__ import annotations

import torch
from transformers import DataCollatorWithPadding

from .corpora import PREFIX as CORPUS_PREFIX
from .data import BUILTIN_PREFIX
from .data_files import check_data_file, load_data_files
from .errors import ConfigError, DataError
from .tasks import load_builtin_task


def load_texts(
    data: str,
    *,
    split: str = "validation",
    column: str = "text",
    limit: int | None = None,
    option: str = "--text-column",
):
    """``(example ids, texts)`` from ``builtin:<task>`` or ``corpus:<name>`` (one of its splits) or a
    .jsonl/.json/.csv file.

    ``option`` is how the user names ``column`` (a CLI flag or a config key), for the error message."""
    if data.startswith(BUILTIN_PREFIX):
        splits = load_builtin_task(data[len(BUILTIN_PREFIX) :])
        if split not in splits:
            raise ConfigError(f"split {split!r} is not one of {list(splits)}")
        dataset, prefix = splits[split], f"{split}:"
    elif data.startswith(CORPUS_PREFIX):
        from .corpora import load_corpus

        dataset, prefix = load_corpus(data[len(CORPUS_PREFIX) :], splits=[split])[split], f"{split}:"
    else:
        check_data_file(data)

        dataset, prefix = load_data_files({"train": data})["train"], ""
    if column not in dataset.column_names:
        raise DataError(f"{data} has no column {column!r} (columns: {dataset.column_names}); set {option}")
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
