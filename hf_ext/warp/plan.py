"""The memory plan of a WaRP run (:mod:`hf_ext.plan`): what one rank holds in phase 1, phase 2, a masked arm, the
plain arm and the full fine-tune, from the model on the meta device.

- phase 1: the weights and the input statistics of the largest group ``basis_memory_gb`` makes (float64 ``X^T X``
  and sum, float32 buffer; modules sharing an input, q/k/v or gate/up, hold one set);
- phase 2 (:func:`~hf_ext.warp.reparam.reparameterize`): each target's weight replaced by ``C`` (float32
  ``d_out x r``), its basis ``U`` (float32 ``d_in x r``) and, with ``basis_rank`` < ``d_in``, the residual
  (float32 ``d_out x d_in``); gradients and optimizer state of ``C`` and the head; the importance sums (and the
  micro-batch pending sums). Under FSDP2 phase 2 runs through the leaf weight as the arms do (W kept);
- a masked arm (:class:`~hf_ext.warp.leaf.LeafReparameterization`): the weights, ``C``, the basis columns still
  trained, the constant share of ``W`` (float32 ``d_out x d_in``) when a column is frozen whole or the basis is
  truncated, ``W``'s gradient (model dtype) beside ``C``'s, the optimizer state of ``C``, and the masked update's
  frozen values and mask (element masks: bool ``d_out x r``; input masks: the frozen columns' indices);
- plain and full arms: the weights, and gradients and optimizer state of the targets' weights or of everything.

Element masks are planned with no column frozen whole (a column of ``d_out`` entries all among the top
``keep_ratio`` is rare); input masks freeze ``round(keep_ratio * r)`` columns per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..activations import group_by_memory
from ..config import DataArguments, HfExtTrainingArguments, ModelArguments
from ..errors import ConfigError
from ..models import classifier_head
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
    row_block_bytes,
    statistics_bytes,
    tensor_bytes,
)
from ..targets import find_attention, match_modules, select_linear
from .config import WarpArguments
from .run import safety_data_args

F32 = torch.float32
ARGUMENT_TYPES = (ModelArguments, DataArguments, WarpArguments, HfExtTrainingArguments)  # recipes/warp.py's
LAUNCHER_CHECK = ("WaRP (its importance and masked updates)", "gradients")  # the recipe's: who, what it reads whole


@dataclass
class _Planner:
    model: nn.Module
    targets: dict[str, nn.Linear]
    rank_of: dict[str, int]
    launcher: str
    n: int

    def held(self, params) -> int:
        return sum(rank_bytes(p, self.launcher, self.n) for p in params)

    def rows(self, name: str, cols: int, dtype: torch.dtype) -> int:
        """A tensor with the rows of target ``name``'s weight (sharded with them under FSDP2)."""
        return row_block_bytes(self.targets[name].out_features, cols, dtype, self.launcher, self.n)

    @property
    def coefficients(self) -> list[torch.Tensor]:
        return [
            torch.empty(m.out_features, self.rank_of[n], dtype=F32, device="meta") for n, m in self.targets.items()
        ]

    def leaf(self, stage: Stage, keep: float | None, granularity: str) -> None:
        """What :class:`~hf_ext.warp.leaf.LeafReparameterization` and the masked update hold (no masks: keep None).
        Frozen counts are those of a per-layer threshold (a global one moves them between layers; under FSDP2 they
        are rank 0's share of the layer's)."""
        stage.add("weights", self.held(self.model.parameters()))
        stage.add("coefficients C", self.held(self.coefficients))
        columns, fixed, frozen = 0, 0, 0
        for name, module in self.targets.items():
            r, d_in = self.rank_of[name], module.in_features
            cut = round(keep * r) if keep is not None and granularity == "input" else 0
            columns += tensor_bytes((d_in, r - cut), F32) + (tensor_bytes((r - cut,), torch.int64) if cut else 0)
            fixed += self.rows(name, d_in, F32) if cut or r < d_in else 0
            if keep is None:
                continue
            if granularity == "input":
                frozen += self.rows(name, cut, F32) + tensor_bytes((cut,), torch.int64)
            else:
                entries = self.rows(name, r, torch.bool)  # one byte per entry of rank 0's rows
                frozen += entries + 4 * round(keep * entries)  # the mask, the frozen float32 values
        stage.add("bases U", columns)
        stage.add("frozen share of W", fixed)
        stage.add("gradients", self.held([m.weight for m in self.targets.values()]) + self.held(self.coefficients))
        stage.add("masks and frozen values", frozen)


def plan(run_args, *, launcher: str, num_processes: int, gpu_memory: float | None = None) -> Plan:
    """The plan of recipes/warp.py's arguments ``run_args`` (:data:`ARGUMENT_TYPES`): the classes of the safety and
    the utility data are read (not tokenized) to size a ``seq_cls`` head; the launcher is checked as the recipe
    checks it (FSDP2 is planned with a note: the recipe refuses it, the readers run on shards)."""
    model_args, data_args, warp, _ = run_args
    if launcher == "zero2":
        refuse_if_unsupported(launcher, *LAUNCHER_CHECK)
    if launcher == "fsdp2" and (warp.importance_statistic != "step" or warp.importance == "empirical_fisher"):
        raise ConfigError(
            f"importance {warp.importance!r} with importance_statistic {warp.importance_statistic!r} reads each "
            "rank's gradient of every backward, which FSDP2 reduce-scatters at once: on shards set "
            "importance_statistic: step (and importance abs or squared)"
        )
    labels = None
    if model_args.task_type == "seq_cls":
        labels = label_names(safety_data_args(data_args, warp), "seq_cls") + label_names(data_args, "seq_cls")
    result = warp_plan(
        run_args,
        labels=labels,
        tokenizer=local_tokenizer(model_args),
        launcher=launcher,
        num_processes=num_processes,
        gpu_memory=gpu_memory,
    )
    if launcher == "fsdp2":
        result.notes.append(
            "recipes/warp.py refuses FSDP2 today (its Trainer path has not run on GPUs here); this is the plan of "
            "the library's readers on shards (docs/warp.md, Past one GPU)"
        )
    return result


def warp_plan(run_args, *, labels, tokenizer, launcher: str, num_processes: int, gpu_memory=None) -> Plan:
    """``run_args``: the recipe's ``(model_args, data_args, warp_args, training_args)``; ``labels``: the head's
    classes (seq_cls), ``tokenizer``: needed for tiny models only."""
    model_args, data_args, warp, training_args = run_args
    model = meta_model(model_args, tokenizer, labels)
    targets = select_linear(model, warp.targets, layers=warp.layers)
    planner = _Planner(
        model, targets, {n: warp.basis_rank or m.in_features for n, m in targets.items()}, launcher, num_processes
    )
    head = classifier_head(model) if model_args.task_type == "seq_cls" and warp.head == "prototypes" else None
    head_params = list(head.parameters()) if head is not None else []
    extra_modules = match_modules(model, warp.extra_trainable) if warp.extra_trainable else {}
    extra = [p for module in extra_modules.values() for p in module.parameters()]
    target_weights = [m.weight for m in targets.values()]

    def optimizer(params, optim) -> int:
        return optimizer_state_bytes(list(params), optim, launcher, num_processes)

    def activations(trained=None) -> int:
        """Phase 1's forward without gradients (``trained`` None), or a training step of ``trained`` (what autograd
        saves depends on what requires grad; the coefficients are counted as their weights)."""
        if trained is None:
            batch = training_args.per_device_eval_batch_size
            return activation_estimate(model, batch, data_args.max_seq_length, training=False, checkpointing=False)
        flags = {parameter: parameter.requires_grad for parameter in model.parameters()}
        ids = {id(parameter) for parameter in trained}
        for parameter in model.parameters():
            parameter.requires_grad_(id(parameter) in ids)
        try:
            return activation_estimate(
                model,
                training_args.per_device_train_batch_size,
                data_args.max_seq_length,
                training=True,
                checkpointing=training_args.gradient_checkpointing,
            )
        finally:
            for parameter, flag in flags.items():
                parameter.requires_grad_(flag)

    phase1 = Stage("phase 1")
    phase1.add("weights", planner.held(model.parameters()))
    groups = group_by_memory(targets, None if warp.basis_memory_gb is None else warp.basis_memory_gb * 2**30)
    outputs = {attention.o for attention in find_attention(model)}
    phase1.add("phase-1 statistics", max(statistics_bytes(group, outputs, F32) for group in groups))
    widths = distinct_inputs(targets, outputs)  # every group's bases and eigenvalues (float32) are kept to the end
    phase1.add("bases U", sum(w * w * 4 + w * 4 for w in widths))
    add_launcher_items(phase1, model, [], launcher, num_processes)
    # the forwards that collect the statistics end before the eigendecomposition (float64 copies of the widest
    # moment) starts: the stage holds the larger of the two
    phase1.add("forward or eigendecomposition", max(activations(), 5 * 8 * max(widths) ** 2), static=False)

    phase2 = Stage("phase 2")
    trained_with_c = [*head_params, *extra]  # phase 2 trains the head's safety rows (prototypes) and extra_trainable
    if launcher == "fsdp2":
        planner.leaf(phase2, None, "input")
        phase2.add("gradients", planner.held(trained_with_c))
    else:
        ids = {id(w) for w in target_weights}
        phase2.add("weights", planner.held(p for p in model.parameters() if id(p) not in ids))
        phase2.add("coefficients C", planner.held(planner.coefficients))
        phase2.add("bases U", sum(tensor_bytes((m.in_features, planner.rank_of[n]), F32) for n, m in targets.items()))
        residual = [
            planner.rows(n, m.in_features, F32) for n, m in targets.items() if planner.rank_of[n] < m.in_features
        ]
        phase2.add("basis residual", sum(residual))
        phase2.add("gradients", planner.held([*planner.coefficients, *trained_with_c]))
    phase2.add("optimizer state", optimizer([*planner.coefficients, *trained_with_c], training_args.optim))
    copies = 2 if warp.importance_statistic == "micro_batch" else 1  # the running sums and one step's pending sums
    element = warp.importance_granularity == "element"
    importance = [
        planner.rows(n, planner.rank_of[n], F32) if element else tensor_bytes((planner.rank_of[n],), F32)
        for n in targets
    ]
    phase2.add("importance", copies * sum(importance))
    reduced = [*target_weights, *trained_with_c] if launcher == "fsdp2" else [*planner.coefficients, *trained_with_c]
    add_launcher_items(phase2, model, reduced, launcher, num_processes)
    phase2.add("activations", activations([*target_weights, *trained_with_c]), static=False)

    arms = []
    for keep in warp.sweep_keep_ratios:
        for layout in warp.sweep_layouts:
            arm = Stage("phase 3")
            planner.leaf(arm, keep, layout.split("/")[0])
            arm.add("gradients", planner.held(extra))
            arm.add(
                "optimizer state", optimizer([*planner.coefficients, *extra], warp.arm_optim or training_args.optim)
            )
            arms.append(arm)
    masked = max(arms, key=lambda stage: stage.total)
    add_launcher_items(masked, model, [*target_weights, *extra], launcher, num_processes)  # C stays out of DDP
    masked.add("activations", activations([*target_weights, *extra]), static=False)
    stages = [phase1, phase2, masked]

    optim = warp.arm_optim or training_args.optim
    unmasked = [("plain", list({id(p): p for p in [*target_weights, *extra]}.values()))]
    if warp.full_learning_rates:
        head_ids = {id(h) for h in head_params}
        unmasked.append(("full", [p for p in model.parameters() if id(p) not in head_ids]))
    for name, trained in unmasked:
        stage = Stage(name)
        stage.add("weights", planner.held(model.parameters()))
        stage.add("gradients", gradient_bytes(trained, launcher, num_processes))
        stage.add("optimizer state", optimizer(trained, optim))
        add_launcher_items(stage, model, trained, launcher, num_processes)
        stage.add("activations", activations(trained), static=False)
        stages.append(stage)
    plan = Plan(f"WaRP, {model_args.model_name_or_path}", launcher, num_processes, stages, gpu_memory)
    plan.advice = _advice(plan, training_args, launcher)
    return plan


def _advice(plan: Plan, training_args, launcher: str) -> list[str]:
    peak = plan.peak
    advice = []
    if peak.name == "phase 1":
        advice.append("basis_memory_gb (phase 1 in groups that fit), or fewer targets")
    if peak.bytes_of("activations") > peak.total / 3 and not training_args.gradient_checkpointing:
        advice.append("gradient_checkpointing: true, or a smaller per_device_train_batch_size")
    if launcher == "ddp":
        advice.append("the launcher (fsdp2 shards weights, gradients and optimizer state over the processes)")
    advice.append("fewer targets (targets, layers) or a basis_rank below the input width")
    return advice
