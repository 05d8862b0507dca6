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
from torch import nn

from ..activations import group_by_memory
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
CALIBRATION_BATCH = 8  # texts per calibration forward, in both LoRA-Null recipes


def plan(run_args, *, launcher: str, num_processes: int, gpu_memory: float | None = None) -> Plan:
    """The plan of recipes/lora_null.py's arguments ``run_args`` (:data:`ARGUMENT_TYPES`)."""
    model_args, data_args, args, training_args = run_args
    refuse_if_unsupported(launcher, *LAUNCHER_CHECK)
    model, layers = peft_meta_model(model_args, data_args, args)
    calibration = calibration_stage(
        model,
        layers,
        batch=CALIBRATION_BATCH,
        length=args.calib_max_length or data_args.max_seq_length,
        launcher=launcher,
        num_processes=num_processes,
        memory_gb=args.calib_memory_gb,
    )
    freeze_a = args.mode == "null_frozen_A" if args.freeze_A is None else args.freeze_A
    training = training_stage(
        model,
        layers,
        data_args,
        training_args,
        freeze_a=freeze_a,
        verification=True,
        launcher=launcher,
        num_processes=num_processes,
    )
    result = Plan(f"LoRA-Null, {model_args.model_name_or_path}", launcher, num_processes, [calibration, training])
    result.gpu_memory = gpu_memory
    if result.peak.name == "calibration":
        result.advice.append("calib_memory_gb (calibrate in groups of targets that fit), or fewer lora_target_modules")
    elif not training_args.gradient_checkpointing:
        result.advice.append("gradient_checkpointing: true, or a smaller per_device_train_batch_size")
    return result


def peft_meta_model(model_args, data_args, args: LoraNullArguments) -> tuple[nn.Module, dict[str, nn.Module]]:
    """The model of ``model_args`` on the meta device wrapped by peft with ``args``' adapter, and its LoRA layers
    (:func:`~hf_ext.lora_null.init.lora_layers`); targets that match nothing get the recipe's own line."""
    from peft import get_peft_model

    labels = label_names(data_args, model_args.task_type)
    base = meta_model(model_args, local_tokenizer(model_args), labels)
    args.check_targets(base)
    with warnings.catch_warnings():  # peft asks transformers a deprecated question; nothing for the user to change
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(base, args.lora_config(model_args.task_type))
    return model, lora_layers(model)


def calibration_stage(
    model: nn.Module,
    layers: dict[str, nn.Module],
    *,
    batch: int,
    length: int,
    launcher: str,
    num_processes: int,
    memory_gb: float | None = None,
) -> Stage:
    """What calibrating ``model`` (the peft model of :func:`peft_meta_model`) holds: its weights, the float64 input
    statistics of the largest group ``memory_gb`` makes (every LoRA layer at once without one), the launcher's
    items, and the larger of two estimates that never coexist: the activations of a forward of ``batch`` sequences
    of ``length`` tokens without gradients, and the eigendecomposition of the widest input."""
    stage = Stage("calibration")
    stage.add("weights", sum(rank_bytes(p, launcher, num_processes) for p in model.parameters()))
    outputs = {attention.o for attention in find_attention(model)}
    bases = {name: layer.base_layer for name, layer in layers.items()}
    groups = group_by_memory(bases, None if memory_gb is None else memory_gb * 2**30, torch.float64)
    stage.add("calibration statistics", max(statistics_bytes(group, outputs, torch.float64) for group in groups))
    widest = max(distinct_inputs(bases, outputs))  # decomposed while its group's statistics are alive
    add_launcher_items(stage, model, [], launcher, num_processes)
    # the forwards that collect the statistics end before the eigendecompositions start: the larger of the two
    forward = activation_estimate(model, batch, length, training=False, checkpointing=False)
    stage.add("forward or eigendecomposition", max(forward, 5 * 8 * widest**2), static=False)
    return stage


def training_stage(
    model: nn.Module,
    layers: dict[str, nn.Module],
    data_args,
    training_args,
    *,
    freeze_a: bool,
    verification: bool,
    launcher: str,
    num_processes: int,
) -> Stage:
    """What training ``model`` holds: its weights, the gradients and optimizer state of what trains (``lora_B``,
    ``lora_A`` unless ``freeze_a``, peft's trainable head copy; ``freeze_a`` is set on the meta model), with
    ``verification`` the verification's orthonormal basis of each ``A``'s row space (float64 ``d_in x r``), the
    launcher's items and the activations of a training micro-batch."""
    for layer in layers.values():
        layer.lora_A["default"].weight.requires_grad_(not freeze_a)
    trainable = [p for p in model.parameters() if p.requires_grad]
    stage = Stage("training")
    stage.add("weights", sum(rank_bytes(p, launcher, num_processes) for p in model.parameters()))
    stage.add("gradients", gradient_bytes(trainable, launcher, num_processes))
    stage.add("optimizer state", optimizer_state_bytes(trainable, training_args.optim, launcher, num_processes))
    if verification:
        shapes = [(layer.base_layer.in_features, layer.r["default"]) for layer in layers.values()]
        stage.add("verification bases", sum(tensor_bytes(shape, torch.float64) for shape in shapes))
    add_launcher_items(stage, model, trainable, launcher, num_processes)
    activations = activation_estimate(
        model,
        training_args.per_device_train_batch_size,
        data_args.max_seq_length,
        training=True,
        checkpointing=training_args.gradient_checkpointing,
    )
    stage.add("activations", activations, static=False)
    return stage
