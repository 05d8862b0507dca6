"""The memory plan of the head-plasticity study (recipes/head_plasticity.py, :mod:`hf_ext.plan`), from the model on
the meta device. Per seed (:func:`~hf_ext.heads.study.run_seed`) a rank holds, one after the other:

- ``importance (before)``: the gradient/Fisher pass (:func:`~hf_ext.heads.importance.gradient_importance`) on the
  unwrapped model: the weights, the head gates (the all-ones ``[layers, heads]`` gates, the per-example
  ``[batch, layers, heads]`` gates that require grad and their gradient, all float32; with ``ablation: mean`` the
  float32 ``[layers, heads, head_dim]`` baseline) and the activations of a forward and backward at
  ``per_device_eval_batch_size`` (at most ``eval_subset_size``): what the pass saves for its backward, counted by
  running it on the meta device as it runs (eval mode, parameters frozen, the per-example gates the only leaves:
  no linear layer keeps its input for a weight gradient, no dropout mask, nothing before the first gate).
- ``attention entropy (before)``: :func:`~hf_ext.heads.entropy.attention_entropy`, a forward without gradients
  in eager attention at ``per_device_eval_batch_size`` that returns every layer's attention probabilities at once
  (``[batch, heads, length, length]`` per layer, in the model's dtype, counted at ``max_seq_length``: the longest
  batch); the rest is one layer's activations.
- ``training``: the full fine-tune, as :mod:`hf_ext.finetune_plan` plans it (weights, gradients, optimizer
  state, what the launcher holds, activations). With ``use_cpu: true`` it also holds the initial weights that
  rank 0 copies to the CPU for the update sizes (every tensor of ``model.state_dict()``, a tied weight once per
  name); on a GPU run that copy is host memory, not the GPU's, so it is not in the stages: a note under the table
  gives its size.
- ``importance (after)``, when the study makes gradient passes while the Trainer holds its optimizer
  (``log_head_importance_steps`` during training, after an optimizer step has freed the gradients; the pruning
  curves' ``prune_order: gradient`` after training, where the Trainer still holds the optimizer state): the
  weights, the optimizer state, what the launcher holds, and the gates and activations of ``importance (before)``.

Every stage of a ``seq_cls`` study with ``probe_before_importance`` also holds the two copies of the task head the
probe keeps (the random and the probed head, :func:`~hf_ext.probe.head_state`). Not planned: the probe itself (it
trains the task head alone), the ablation passes (forwards without gradients; their cache of one block's output for
every batch of the rank's shard grows with ``eval_subset_size``) and anything on the host.
"""

from __future__ import annotations

import torch

from ..config import DataArguments, HfExtTrainingArguments, ModelArguments
from ..models import eval_mode
from ..plan import (
    GIB,
    Plan,
    Stage,
    activation_estimate,
    add_launcher_items,
    gradient_bytes,
    label_names,
    local_tokenizer,
    meta_batch,
    meta_model,
    optimizer_state_bytes,
    rank_bytes,
    refuse_if_unsupported,
    saved_bytes,
    tensor_bytes,
)
from ..targets import find_attention
from .config import HeadStudyArguments
from .gates import HeadGates

ARGUMENT_TYPES = (ModelArguments, DataArguments, HeadStudyArguments, HfExtTrainingArguments)  # the recipe's
LAUNCHER_CHECK = ("the head study", "weights")  # run_head_study's: who, what it reads whole


def gate_bytes(layers: int, heads: int, batch: int) -> int:
    """What one gradient pass of :func:`~hf_ext.heads.importance.gradient_importance` allocates for the gates: the
    float32 ``[layers, heads]`` gates, their ``[batch, layers, heads]`` per-example copy and its gradient."""
    f32 = torch.float32
    return tensor_bytes((layers, heads), f32) + 2 * tensor_bytes((batch, layers, heads), f32)


def head_copy_bytes(model) -> int:
    """One :func:`~hf_ext.probe.head_state` copy of the task head (its state dict: classifier and pooler)."""
    from ..probe import task_head

    return sum(
        t.numel() * t.dtype.itemsize for module in task_head(model).values() for t in module.state_dict().values()
    )


def state_dict_bytes(model) -> int:
    """The initial weights rank 0 copies for the update sizes: every tensor of ``model.state_dict()`` (one copy per
    name, tied weights included)."""
    return sum(t.numel() * t.dtype.itemsize for t in model.state_dict().values())


def gate_pass_activations(model, batch_size: int, seq_len: int) -> int:
    """What the gate-gradient pass (:func:`~hf_ext.heads.importance.gradient_importance`) saves for its backward:
    eval mode, the parameters frozen, the per-example gates the only leaves, counted on the meta device; the
    training estimate (an upper bound) when the pass cannot run on meta."""
    gates = torch.ones((batch_size, *HeadGates(model).shape), device="meta", requires_grad=True)
    trains = {p: p.requires_grad for p in model.parameters()}
    model.requires_grad_(False)

    def forward():
        with eval_mode(model), HeadGates(model, gates):
            model(**meta_batch(model, batch_size, seq_len))

    try:
        saved = saved_bytes(forward, model)
    finally:
        for parameter, flag in trains.items():
            parameter.requires_grad_(flag)
    if saved is None:  # the pass runs in eval mode, where gradient checkpointing is off
        return activation_estimate(model, batch_size, seq_len, training=True, checkpointing=False)
    return saved


def plan(run_args, *, launcher: str, num_processes: int, gpu_memory: float | None = None) -> Plan:
    """The plan of recipes/head_plasticity.py's arguments ``run_args`` (:data:`ARGUMENT_TYPES`); the launcher is
    checked as the recipe checks it (FSDP2 is refused: the study reads whole weights on every rank)."""
    model_args, data_args, study, training_args = run_args
    refuse_if_unsupported(launcher, *LAUNCHER_CHECK)
    model = meta_model(model_args, local_tokenizer(model_args), label_names(data_args, model_args.task_type))
    params = list(model.parameters())
    attention = find_attention(model)
    layers, heads, head_dim = len(attention), attention[0].num_heads, attention[0].head_dim
    length = data_args.max_seq_length
    eval_batch = min(training_args.per_device_eval_batch_size, study.eval_subset_size)
    weights = sum(rank_bytes(p, launcher, num_processes) for p in params)  # whole: ddp and zero2 do not shard them
    copies = 2 * head_copy_bytes(model) if model_args.task_type == "seq_cls" and study.probe_before_importance else 0
    baseline = tensor_bytes((layers, heads, head_dim), torch.float32) if study.ablation == "mean" else 0
    host_copy = state_dict_bytes(model) if training_args.use_cpu else 0  # the accelerator is the host

    checkpointing = training_args.gradient_checkpointing
    batch = training_args.per_device_train_batch_size
    training_activations = activation_estimate(model, batch, length, training=True, checkpointing=checkpointing)
    pass_activations = gate_pass_activations(model, eval_batch, length)
    model.set_attn_implementation("eager")  # as attention_entropy runs the model: one layer's activations held
    entropy_activations = activation_estimate(model, eval_batch, length, training=False, checkpointing=False)

    def gradient_pass(stage: Stage) -> None:
        stage.add("head gates", gate_bytes(layers, heads, eval_batch))
        stage.add("mean-ablation baseline", baseline)
        stage.add("activations", pass_activations, static=False)

    before = Stage("importance (before)")
    before.add("weights", weights)
    before.add("task-head copies", copies)
    gradient_pass(before)

    entropy = Stage("attention entropy (before)")
    entropy.add("weights", weights)
    entropy.add("task-head copies", copies)
    probabilities = layers * tensor_bytes((eval_batch, heads, length, length), params[0].dtype)
    entropy.add("attention probabilities", probabilities)
    entropy.add("activations", entropy_activations, static=False)

    training = Stage("training")
    training.add("weights", weights)
    training.add("task-head copies", copies)
    training.add("gradients", gradient_bytes(params, launcher, num_processes))
    optimizer = optimizer_state_bytes(params, training_args.optim, launcher, num_processes)
    training.add("optimizer state", optimizer)
    add_launcher_items(training, model, params, launcher, num_processes)
    training.add("activations", training_activations, static=False)
    training.add("initial weights (rank 0, host copy)", host_copy)
    stages = [before, entropy, training]

    if study.log_head_importance_steps or (study.prune_step and study.prune_order == "gradient"):
        after = Stage("importance (after)")
        after.add("weights", weights)
        after.add("task-head copies", copies)
        after.add("optimizer state", optimizer)
        add_launcher_items(after, model, params, launcher, num_processes)
        gradient_pass(after)
        after.add("initial weights (rank 0, host copy)", host_copy)
        stages.append(after)

    result = Plan(f"head plasticity, {model_args.model_name_or_path}", launcher, num_processes, stages, gpu_memory)
    if not training_args.use_cpu:
        size = state_dict_bytes(model)
        amount = f"{size / GIB:.3f} GiB" if size >= GIB else f"{size / 2**20:.3f} MiB"
        result.notes.append(
            f"host memory, not in these totals: rank 0 keeps a CPU copy of the initial weights ({amount}) from "
            "training to the end of the seed (use_cpu=true counts it)"
        )
    shard = launcher != "zero2"
    if result.peak.name == "training":
        if not checkpointing:
            result.advice.append("gradient_checkpointing: true, or a smaller per_device_train_batch_size")
        if shard:
            result.advice.append("the launcher (zero2 shards gradients and optimizer state; the study refuses fsdp2)")
    else:
        result.advice.append(f"a smaller per_device_eval_batch_size (the {result.peak.name} pass)")
        if result.peak.name == "attention entropy (before)":
            result.advice.append("a smaller max_seq_length (the probabilities grow with its square)")
        if result.peak.name == "importance (after)" and shard:
            result.advice.append("the launcher (zero2 shards the optimizer state the Trainer still holds)")
    return result
