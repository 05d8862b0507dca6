"""Sequence classification with selective-layer training: the body of ``recipes/seq_cls.py`` and of
``hf-ext selective inspect``.

Files in ``output_dir``: the model (``finetuning: full``) or the peft adapter (``lora``), as
``save_pretrained`` writes them; ``selection.json`` (blocks, modules, trainable parameters, prefix, the class
names: an adapter loads onto ``AutoModelForSequenceClassification.from_pretrained(base, id2label=...)`` with
``PeftModel.from_pretrained(base_model, output_dir)``);
``{init,train,eval,test}_results.json`` (accuracy and macro-F1 on the validation split before training, the
training summary, accuracy and macro-F1 on the validation and test splits after it).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .. import distributed
from ..config import DataArguments, HfExtTrainingArguments, ModelArguments
from ..data import PreparedData, load_model_and_data
from ..errors import ConfigError, RunDirectoryError
from ..io import read_json, write_json
from ..outputs import changed_settings
from .config import SelectiveArguments
from .inspect import GraphReport, format_report, inspect_graph
from .selection import Selection, select_trainable

logger = logging.getLogger(__name__)

SEQ_CLS_ARGUMENT_TYPES = (ModelArguments, DataArguments, SelectiveArguments, HfExtTrainingArguments)


def require_seq_cls(task_type: str) -> None:
    """recipes/seq_cls.py trains classifiers: refuse another task type first, naming the key."""
    if task_type != "seq_cls":
        raise ConfigError(f"task_type={task_type!r}: the seq_cls recipe trains classifiers; set seq_cls")


def prepare_seq_cls(model_args: ModelArguments, data_args: DataArguments, selective: SelectiveArguments, seed: int):
    """Tokenizer, data and the classifier with the selection applied: ``(model, tokenizer, data, selection)``."""
    require_seq_cls(model_args.task_type)
    tokenizer, data, model = load_model_and_data(model_args, data_args, seed=seed)
    model, selection = select_trainable(model, selective, "seq_cls", seed=seed)
    if not selective.train_head:
        logger.warning(
            "train_head=false: the classifier keeps its initial weights (random unless %s has a trained one)",
            model_args.model_name_or_path,
        )
    return model, tokenizer, data, selection


def selection_record(model: torch.nn.Module, selection: Selection, labels: list[str] | None = None) -> dict:
    """What trains, as written to ``selection.json`` (with the class names a saved adapter's base needs)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {
        "finetuning": selection.finetuning,
        "blocks": selection.blocks_name,
        "num_blocks": selection.num_blocks,
        "train_layers": selection.layers,
        "no_grad_prefix_blocks": selection.prefix_blocks,
        "modules": sorted(set(selection.modules.values())),
        "head": selection.head,
        "extra": selection.extra,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "labels": labels,
    }


WEIGHT_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "adapter_config.json")
WEIGHT_PATTERNS = ("model-*.safetensors", "adapter_model*.safetensors")
SAME_SELECTION = ("finetuning", "train_layers", "modules", "head", "extra", "trainable_parameters")


def _prepare_run_directory(output_dir: Path, record: dict, resuming: bool) -> None:
    """On resume the selection must be the one the checkpoint was trained with; otherwise a model or adapter
    left by an earlier run (a full model beside a new adapter) is removed, and the selection written."""
    path = output_dir / "selection.json"
    if resuming and path.is_file():
        changed = changed_settings(read_json(path), {key: record[key] for key in SAME_SELECTION})
        if changed:
            raise RunDirectoryError(
                f"{output_dir} was trained with another selection ({changed}); resume with the same train_layers, "
                "train_modules, finetuning and train_head, or start afresh without resume_from_checkpoint"
            )
        return
    if not distributed.is_main_process():
        return
    for stale in [
        *(output_dir / name for name in WEIGHT_FILES),
        *(p for g in WEIGHT_PATTERNS for p in output_dir.glob(g)),
    ]:
        stale.unlink(missing_ok=True)
    write_json(path, record)


def record_selection(
    training_args: HfExtTrainingArguments, model: torch.nn.Module, selection: Selection, labels: list[str] | None
) -> dict:
    """Write ``selection.json`` (a resume must use the checkpoint's selection; an earlier run's model or adapter
    in ``output_dir`` is removed) and say what trains; returns the record."""
    record = selection_record(model, selection, labels)
    _prepare_run_directory(Path(training_args.output_dir), record, bool(training_args.resume_from_checkpoint))
    logger.warning(
        "training %s of %s parameters: blocks %s of %d (%s), head %s; blocks below %d run without autograd",
        f"{record['trainable_parameters']:,}",
        f"{record['total_parameters']:,}",
        selection.layers,
        selection.num_blocks,
        selection.finetuning,
        selection.head or "frozen",
        selection.prefix_blocks,
    )
    return record


def inspect_config(
    model_args: ModelArguments,
    data_args: DataArguments,
    selective: SelectiveArguments,
    training_args: HfExtTrainingArguments,
) -> tuple[GraphReport, Selection]:
    """The graph report of one training batch of a seq_cls config (``per_device_train_batch_size`` examples),
    with gradient checkpointing on when the config sets it."""
    model, _, data, selection = prepare_seq_cls(model_args, data_args, selective, training_args.seed)
    if training_args.gradient_checkpointing:
        model.activation_checkpointing_enable(training_args.gradient_checkpointing_kwargs)
    model.to(training_args.device)
    batch = first_batch(data, training_args.per_device_train_batch_size)
    return inspect_graph(model, batch), selection


def first_batch(data: PreparedData, size: int) -> dict[str, torch.Tensor]:
    """The first ``size`` training examples, padded by the recipe's collator."""
    examples = [data.train[i] for i in range(min(size, len(data.train)))]
    return dict(data.collator(examples))


def format_inspection(report: GraphReport, selection: Selection) -> str:
    """The table of :func:`~hf_ext.selective.inspect.format_report` plus a one-line verdict on the prefix."""
    table = format_report(report, selection.prefix_blocks)
    prefix = [row for row in report.rows if row.index is not None and row.index < selection.prefix_blocks]
    if not prefix:
        return table + "\nno no-grad prefix: block 0 trains"
    held = sum(r.autograd_nodes + r.saved_tensors for r in prefix)
    verdict = "holds nothing" if held == 0 else f"records {held} nodes/saved tensors (unexpected)"
    return table + f"\nno-grad prefix (blocks 0-{selection.prefix_blocks - 1}) {verdict}"
