"""The memory plan of recipes/finetune.py (:mod:`hf_ext.plan`): every parameter trains, so one stage holds the
weights, their gradients and optimizer state, and the activations of every block."""

from __future__ import annotations

from .config import DataArguments, HfExtTrainingArguments, ModelArguments
from .plan import (
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
)

ARGUMENT_TYPES = (ModelArguments, DataArguments, HfExtTrainingArguments)  # recipes/finetune.py's
LAUNCHER_CHECK = None  # every launcher of the support matrix


def plan(run_args, *, launcher: str, num_processes: int, gpu_memory: float | None = None) -> Plan:
    """The plan of recipes/finetune.py's arguments ``run_args`` (:data:`ARGUMENT_TYPES`)."""
    model_args, data_args, training_args = run_args
    model = meta_model(model_args, local_tokenizer(model_args), label_names(data_args, model_args.task_type))
    params = list(model.parameters())
    stage = Stage("training")
    stage.add("weights", sum(rank_bytes(p, launcher, num_processes) for p in params))
    stage.add("gradients", gradient_bytes(params, launcher, num_processes))
    stage.add("optimizer state", optimizer_state_bytes(params, training_args.optim, launcher, num_processes))
    add_launcher_items(stage, model, params, launcher, num_processes)
    batch, length = training_args.per_device_train_batch_size, data_args.max_seq_length
    checkpointing = training_args.gradient_checkpointing
    activations = activation_estimate(model, batch, length, training=True, checkpointing=checkpointing)
    stage.add("activations", activations, static=False)
    result = Plan(f"full fine-tune, {model_args.model_name_or_path}", launcher, num_processes, [stage], gpu_memory)
    if not checkpointing:
        result.advice.append("gradient_checkpointing: true, or a smaller per_device_train_batch_size")
    result.advice.append("the launcher (fsdp2 or zero2 shard gradients and optimizer state), or recipes/seq_cls.py")
    return result
