"""The memory plan of a LoRA-Null run (:mod:`hf_ext.plan`), from the model on the meta device wrapped by peft:

- calibration: the weights and adapters, and the float64 input statistics of every LoRA layer at once (float64
  ``X^T X``, sum and buffer per distinct input: q/k/v and gate/up share one);
- training: the weights and adapters, gradients and optimizer state of what trains (``lora_B``, ``lora_A``
  unless frozen, peft's trainable head copy), and the verification's orthonormal basis of each ``A``'s row space
  (float64 ``d_in x r``).
"""

from __future__ import annotations

import warnings

import torch

from ..config import DataArguments, HfExtTrainingArguments, ModelArguments
from ..plan import (
    Plan,
    Stage,
    activation_estimate,
    add_launcher_items,
    distinct_inputs,
    gradient_bytes,
    label_names,
    local_tokenizer,
    meta_model,
    optimizer_state_bytes,
    rank_bytes,
    refuse_if_unsupported,
    statistics_bytes,
    tensor_bytes,
)
from ..targets import find_attention
from .config import LoraNullArguments
from .init import lora_layers

ARGUMENT_TYPES = (ModelArguments, DataArguments, LoraNullArguments, HfExtTrainingArguments)  # recipes/lora_null.py's
LAUNCHER_CHECK = ("LoRA-Null (its verification)", "weights")  # the recipe's: who, what it reads whole


def plan(run_args, *, launcher: str, num_processes: int, gpu_memory: float | None = None) -> Plan:
    """The plan of recipes/lora_null.py's arguments ``run_args`` (:data:`ARGUMENT_TYPES`)."""
    from peft import get_peft_model

    model_args, data_args, args, training_args = run_args
    refuse_if_unsupported(launcher, *LAUNCHER_CHECK)
    labels = label_names(data_args, model_args.task_type)
    base = meta_model(model_args, local_tokenizer(model_args), labels)
    args.check_targets(base)  # the recipe's own line for targets that match nothing
    with warnings.catch_warnings():  # peft asks transformers a deprecated question; nothing for the user to change
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(base, args.lora_config(model_args.task_type))
    layers = lora_layers(model)
    freeze_a = args.mode == "null_frozen_A" if args.freeze_A is None else args.freeze_A
    for layer in layers.values():
        layer.lora_A["default"].weight.requires_grad_(not freeze_a)
    trainable = [p for p in model.parameters() if p.requires_grad]

    def held(params) -> int:
        return sum(rank_bytes(p, launcher, num_processes) for p in params)

    def activations(training: bool) -> int:
        batch = training_args.per_device_train_batch_size if training else training_args.per_device_eval_batch_size
        length = data_args.max_seq_length if training else args.calib_max_length or data_args.max_seq_length
        checkpointing = training_args.gradient_checkpointing
        return activation_estimate(model, batch, length, training=training, checkpointing=checkpointing)

    calibration = Stage("calibration")
    calibration.add("weights", held(model.parameters()))
    outputs = {attention.o for attention in find_attention(model)}
    bases = {name: layer.base_layer for name, layer in layers.items()}
    calibration.add("calibration statistics", statistics_bytes(bases, outputs, torch.float64))
    widest = max(distinct_inputs(bases, outputs))  # decomposed while every layer's statistics are alive
    calibration.add("eigendecomposition", 5 * 8 * widest**2, static=False)
    add_launcher_items(calibration, model, [], launcher, num_processes)
    calibration.add("activations", activations(training=False), static=False)

    training = Stage("training")
    training.add("weights", held(model.parameters()))
    training.add("gradients", gradient_bytes(trainable, launcher, num_processes))
    training.add("optimizer state", optimizer_state_bytes(trainable, training_args.optim, launcher, num_processes))
    verification = [(layer.base_layer.in_features, layer.r["default"]) for layer in layers.values()]
    training.add("verification bases", sum(tensor_bytes(shape, torch.float64) for shape in verification))
    add_launcher_items(training, model, trainable, launcher, num_processes)
    training.add("activations", activations(training=True), static=False)
    result = Plan(f"LoRA-Null, {model_args.model_name_or_path}", launcher, num_processes, [calibration, training])
    result.gpu_memory = gpu_memory
    if result.peak.name == "calibration":
        result.advice.append("fewer lora_target_modules (calibration holds every target's statistics at once)")
    elif not training_args.gradient_checkpointing:
        result.advice.append("gradient_checkpointing: true, or a smaller per_device_train_batch_size")
    return result
