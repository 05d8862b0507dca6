"""The memory plan of the drift study (recipes/drift.py, :mod:`hf_ext.plan`), from the model on the meta device.

Every arm trains from the base model, one at a time, so a rank holds one arm at a time:

- ``full``: a full fine-tune (weights, gradients, optimizer state, activations);
- ``lora r<R>``: the base weights with the adapter of the largest rank, and the gradients and optimizer state of
  what trains (the adapter and, for ``seq_cls``, the classifier head);
- ``drift, full`` and ``drift, lora`` (``drift_steps`` > 0): the measurement the callback makes after an
  optimizer step, on the main process: the weights and optimizer state of the arm (its gradients are freed by then),
  the streaming CKA and cosine accumulators of every recorded layer at once (:class:`DriftAccumulator`), and the
  activations of a forward without gradients at the evaluation batch size.

The dumps are written one batch at a time and the analysis compares them one layer at a time, both on the host.
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
    gradient_bytes,
    label_names,
    local_tokenizer,
    meta_model,
    optimizer_state_bytes,
    rank_bytes,
    refuse_if_unsupported,
)
from .config import DriftArguments
from .metrics import COSINE_BINS
from .recorders import resolve_layers

ARGUMENT_TYPES = (ModelArguments, DataArguments, DriftArguments, HfExtTrainingArguments)  # recipes/drift.py's
LAUNCHER_CHECK = ("the drift study", "weights")  # run_drift_study's: who, what it reads whole


def accumulator_bytes(rows: int, width: int) -> int:
    """What one layer's :class:`~hf_ext.drift.metrics.DriftAccumulator` holds after ``rows`` paired rows of
    ``width`` features: the float64 rows of both sides while there are no more rows than features (CKA in Gram
    space), else the float64 feature sums (three ``width x width`` cross products and ten vectors and scalars);
    plus the shifts and column sums of both sides and the cosine histogram."""
    f64 = torch.float64.itemsize
    if rows <= width:
        cka = 2 * rows * width * f64
    else:
        cka = (3 * width * width + 6 * width + 5) * f64
    return cka + 4 * width * f64 + COSINE_BINS * f64


def measured_rows(drift: DriftArguments, max_seq_length: int) -> int:
    """Rows one drift measurement streams per layer: one per example, or one per token (at most) when
    ``pooling`` is ``tokens``."""
    return drift.eval_subset_size * (max_seq_length if drift.pooling == "tokens" else 1)


def plan(run_args, *, launcher: str, num_processes: int, gpu_memory: float | None = None) -> Plan:
    """The plan of recipes/drift.py's arguments ``run_args`` (:data:`ARGUMENT_TYPES`)."""
    from peft import get_peft_model

    model_args, data_args, drift, training_args = run_args
    refuse_if_unsupported(launcher, *LAUNCHER_CHECK)
    labels = label_names(data_args, model_args.task_type)
    arms = drift.arms(training_args.learning_rate)
    stages = []

    def train_stage(name: str, model) -> tuple[Stage, list[torch.Tensor]]:
        trainable = [p for p in model.parameters() if p.requires_grad]
        stage = Stage(name)
        stage.add("weights", sum(rank_bytes(p, launcher, num_processes) for p in model.parameters()))
        stage.add("gradients", gradient_bytes(trainable, launcher, num_processes))
        stage.add("optimizer state", optimizer_state_bytes(trainable, training_args.optim, launcher, num_processes))
        add_launcher_items(stage, model, trainable, launcher, num_processes)
        stage.add("activations", activations(model, training=True), static=False)
        return stage, trainable

    def activations(model, *, training: bool) -> int:
        batch = training_args.per_device_train_batch_size if training else training_args.per_device_eval_batch_size
        return activation_estimate(
            model,
            batch,
            data_args.max_seq_length,
            training=training,
            checkpointing=training_args.gradient_checkpointing,
        )

    def measurement_stage(name: str, model, trainable) -> Stage:
        layers = resolve_layers(model, drift.layers)
        width = model.config.hidden_size
        stage = Stage(name)
        stage.add("weights", sum(rank_bytes(p, launcher, num_processes) for p in model.parameters()))
        stage.add("optimizer state", optimizer_state_bytes(trainable, training_args.optim, launcher, num_processes))
        rows = measured_rows(drift, data_args.max_seq_length)
        stage.add("drift accumulators", len(layers) * accumulator_bytes(rows, width))
        stage.add("activations", activations(model, training=False), static=False)
        return stage

    if any(arm.method == "full" for arm in arms):
        model = meta_model(model_args, local_tokenizer(model_args), labels)
        full, trainable = train_stage("full", model)
        stages.append(full)
        if drift.drift_steps:
            stages.append(measurement_stage("drift, full", model, trainable))
    lora_arms = [arm for arm in arms if arm.method == "lora"]
    if lora_arms:
        widest = max(lora_arms, key=lambda arm: arm.rank)
        base = meta_model(model_args, local_tokenizer(model_args), labels)
        drift.check_targets(base)  # the recipe's own line for targets that match nothing
        with warnings.catch_warnings():  # peft asks transformers a deprecated question; nothing for the user to change
            warnings.simplefilter("ignore", FutureWarning)
            model = get_peft_model(base, drift.lora_config_of(widest, model_args.task_type))
        lora, trainable = train_stage(f"lora r{widest.rank}", model)
        stages.append(lora)
        if drift.drift_steps:
            stages.append(measurement_stage("drift, lora", model, trainable))
    title = f"drift study ({', '.join(dict.fromkeys(arm.frontier for arm in arms))}), {model_args.model_name_or_path}"
    result = Plan(title, launcher, num_processes, stages, gpu_memory)
    if result.peak.name.startswith("drift, "):
        result.advice.append("layers (fewer recorded hidden states), or pooling other than tokens")
    if not training_args.gradient_checkpointing:
        result.advice.append("gradient_checkpointing: true, or a smaller per_device_train_batch_size")
    if result.peak.name == "full":
        result.advice.append("methods: [lora] (the full fine-tune holds every gradient and optimizer state)")
    return result
