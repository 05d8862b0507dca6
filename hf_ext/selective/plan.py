"""The memory plan of a selective fine-tune (recipes/seq_cls.py, :mod:`hf_ext.plan`), from the model on the meta
device with the selection applied (:func:`~hf_ext.selective.selection.select_trainable`): the weights (with
LoRA adapters when ``finetuning`` is ``lora``), gradients and optimizer state of what trains, and the activations
autograd saves (counted on the meta device: the frozen prefix keeps none for the backward)."""

from __future__ import annotations

import warnings

from ..config import DataArguments, HfExtTrainingArguments, ModelArguments
from ..plan import (
    Plan,
    Stage,
    activation_estimate,
    add_launcher_items,
    gradient_bytes,
    label_names,
    local_tokenizer,
    meta_model,
    optimizer_state_bytes,
    rank_bytes,
    saved_activation_bytes,
)
from .config import SelectiveArguments
from .selection import select_trainable
from .study import require_seq_cls

ARGUMENT_TYPES = (ModelArguments, DataArguments, SelectiveArguments, HfExtTrainingArguments)  # recipes/seq_cls.py's
LAUNCHER_CHECK = None  # every launcher of the support matrix


def plan(run_args, *, launcher: str, num_processes: int, gpu_memory: float | None = None) -> Plan:
    """The plan of recipes/seq_cls.py's arguments ``run_args`` (:data:`ARGUMENT_TYPES`)."""
    model_args, data_args, selective, training_args = run_args
    require_seq_cls(model_args.task_type)
    labels = label_names(data_args, model_args.task_type)
    base = meta_model(model_args, local_tokenizer(model_args), labels)
    with warnings.catch_warnings():  # peft asks transformers a deprecated question; nothing for the user to change
        warnings.simplefilter("ignore", FutureWarning)
        model, selection = select_trainable(base, selective, model_args.task_type, no_grad_prefix=False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    stage = Stage("training")
    stage.add("weights", sum(rank_bytes(p, launcher, num_processes) for p in model.parameters()))
    stage.add("gradients", gradient_bytes(trainable, launcher, num_processes))
    stage.add("optimizer state", optimizer_state_bytes(trainable, training_args.optim, launcher, num_processes))
    add_launcher_items(stage, model, trainable, launcher, num_processes)
    batch, length = training_args.per_device_train_batch_size, data_args.max_seq_length
    counted = None if training_args.gradient_checkpointing else saved_activation_bytes(model, batch, length)
    if counted is None:  # the estimate of every block, scaled to the trained ones (the prefix keeps none)
        every = activation_estimate(
            model, batch, length, training=True, checkpointing=training_args.gradient_checkpointing
        )
        share = (selection.num_blocks - selection.prefix_blocks) / selection.num_blocks
        counted = int(every * max(share, 1 / selection.num_blocks))
    stage.add("activations", counted, static=False)
    result = Plan(
        f"selective ({selection.finetuning}), {model_args.model_name_or_path}", launcher, num_processes, [stage]
    )
    result.gpu_memory = gpu_memory
    if not training_args.gradient_checkpointing:
        result.advice.append("gradient_checkpointing: true, or a smaller per_device_train_batch_size")
    result.advice.append("fewer trained blocks (train_layers), or finetuning: lora")
    return result
