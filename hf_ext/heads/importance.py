"""Importance of every attention head on a fixed set of batches: ablation, gradient and Fisher.

- ablation: the increase in mean loss and the drop in accuracy when one head's gate is 0. Hidden
  states entering block ``l`` do not depend on gates of blocks ``>= l``, so the output of block
  ``l - 1`` is cached once per layer and only blocks ``l ..`` are recomputed for that layer's heads
  (the blocks before ``l`` are replaced by stand-ins that return the cached output). Equal to the
  naive per-head ablation (``cache_prefix=False``), which recomputes every block every time.
- gradient: ``sum over examples |dL_x/dgate|`` (Michel et al. 2019); Fisher proxy: the mean over
  examples of ``(dL_x/dgate)^2``. Every example of a batch gets its own gates, so one backward pass
  gives the per-example gradients.

``batches`` are dicts of model inputs with ``labels`` (class indices for ``seq_cls``; token ids
with -100 outside the response for ``causal_lm``); the loss and accuracy of an example are its
cross-entropy and accuracy over its labelled tokens.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import distributed
from ..models import eval_mode, model_device, model_inputs, no_kv_cache
from ..targets import find_blocks
from .gates import HeadGates


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, accuracy)`` per example, in float32: class logits ``[B, C]`` with labels ``[B]``, or
    token logits ``[B, T, V]`` with labels ``[B, T]`` (next-token; -100 ignored)."""
    logits = logits.float()
    if logits.ndim == 2:
        loss = nn.functional.cross_entropy(logits, labels, reduction="none")
        return loss, (logits.argmax(-1) == labels).float()
    logits, labels = logits[:, :-1], labels[:, 1:]
    keep = labels != -100
    token_loss = nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
    count = keep.sum(1).clamp(min=1)
    correct = (logits.argmax(-1) == labels) & keep
    return (token_loss * keep).sum(1) / count, correct.sum(1) / count


@dataclass
class AblationResult:
    """Per example: loss and accuracy with each head ablated (``[num_layers, num_heads, examples]``) and
    without (``[examples]``); the per-head summaries are means over the examples."""

    example_loss: torch.Tensor
    example_accuracy: torch.Tensor
    base_example_loss: torch.Tensor
    base_example_accuracy: torch.Tensor
    block_evaluations: int

    @property
    def base_loss(self) -> float:
        return self.base_example_loss.double().mean().item()

    @property
    def base_accuracy(self) -> float:
        return self.base_example_accuracy.double().mean().item()

    @property
    def loss_increase(self) -> torch.Tensor:
        """``[num_layers, num_heads]``: mean loss with the head ablated minus without."""
        return (self.example_loss.double().mean(-1) - self.base_loss).float()

    @property
    def accuracy_drop(self) -> torch.Tensor:
        """``[num_layers, num_heads]``: accuracy without ablation minus with the head ablated."""
        return (self.base_accuracy - self.example_accuracy.double().mean(-1)).float()

    def gathered(self) -> AblationResult:
        """Every rank's examples (each rank measured its shard), in rank order; every rank must call it.
        ``block_evaluations`` stays this rank's count."""
        return AblationResult(
            distributed.gather_examples(self.example_loss, -1),
            distributed.gather_examples(self.example_accuracy, -1),
            distributed.gather_examples(self.base_example_loss),
            distributed.gather_examples(self.base_example_accuracy),
            self.block_evaluations,
        )


def _inputs(batch: dict[str, Any], device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    return model_inputs(batch, device), batch["labels"].to(device)


class _StopForward(Exception):
    pass


class _Replay(nn.Module):
    """Stands in for a block before the layer being ablated: returns the cached output of the last
    such block for the current batch, whatever it is given."""

    def __init__(self, block: nn.Module, cache: list):
        super().__init__()
        # Some models read attributes of their blocks in the loop (e.g. attention_type).
        self.__dict__.update({k: v for k, v in vars(block).items() if not k.startswith("_") and k != "training"})
        self.cache, self.index, self.repeat = cache, 0, 1

    def forward(self, *args, **kwargs):
        # always a copy (repeat copies, even once): the next block may write into its input in place
        return _repeat(self.cache[self.index], self.repeat)


class _PrefixCache:
    """Swap blocks ``0 .. l-1`` for :class:`_Replay` stand-ins fed by a per-batch cache."""

    def __init__(self, model: nn.Module):
        self.model = model
        _, self.blocks = find_blocks(model)
        self.originals = list(self.blocks)

    def run(self, layer: int, cache: list, batches, fn, repeat: int = 1):
        replays = [_Replay(self.originals[i], cache) for i in range(layer)]
        for i, replay in enumerate(replays):
            replay.repeat = repeat
            self.blocks[i] = replay
        try:
            results = []
            for index, batch in enumerate(batches):
                for replay in replays:
                    replay.index = index
                results.append(fn(batch))
            return results
        finally:
            for i in range(layer):
                self.blocks[i] = self.originals[i]

    def outputs_of_block(self, layer: int, previous: list | None, batches, device) -> list:
        """Output of block ``layer`` per batch, computing only that block (earlier ones replayed)."""
        captured = []

        def capture(module, args, output):
            captured.append(output)
            raise _StopForward

        handle = self.originals[layer].register_forward_hook(capture)

        def forward(batch):
            inputs, _ = _inputs(batch, device)
            try:
                self.model(**inputs)
            except _StopForward:
                pass

        try:
            self.run(layer, previous or [], batches, forward)
        finally:
            handle.remove()
        return captured


def _repeat(value, times: int):
    """``value`` with every tensor repeated ``times`` along the batch dimension (dicts, tuples, lists recursed)."""
    if torch.is_tensor(value):
        return value.repeat(times, *([1] * (value.ndim - 1)))
    if isinstance(value, dict):
        return {k: _repeat(v, times) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_repeat(v, times) for v in value)
    return value


@torch.no_grad()
def ablation_importance(
    model: nn.Module,
    batches: Sequence[dict[str, Any]],
    *,
    gates: torch.Tensor | None = None,
    baseline: torch.Tensor | None = None,
    cache_prefix: bool = True,
    ablations_per_pass: int = 1,
    progress: bool = True,
) -> AblationResult:
    """Loss and accuracy per example of every single-head ablation over ``batches`` (eval mode).

    ``gates`` (``[num_layers, num_heads]``, default all ones) is the model being measured: heads already
    closed stay closed, and only open heads are ablated (a closed head's rows repeat the base). ``baseline``
    is what an ablated head outputs (:class:`HeadGates`; ``None``: zero ablation, :func:`mean_head_outputs`:
    mean ablation). ``ablations_per_pass`` heads of one layer are ablated in the same forward pass, each on its
    own copy of the batch (per-example gates): fewer, larger passes, for accelerators with memory to spare.
    """
    if ablations_per_pass < 1:
        raise ValueError(f"ablations_per_pass must be >= 1, got {ablations_per_pass}")
    device = model_device(model)
    hooks = HeadGates(model, baseline=baseline)
    layers, heads = hooks.shape
    base_gates = torch.ones(layers, heads, device=device) if gates is None else gates.to(device, torch.float32)
    examples = sum(len(_inputs(b, "cpu")[1]) for b in batches)
    example_loss, example_accuracy = torch.zeros(layers, heads, examples), torch.zeros(layers, heads, examples)
    prefix = _PrefixCache(model)
    blocks = 0

    def evaluate(batch, patterns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example (loss, accuracy) under gate ``patterns`` [g, layers, heads], shaped [g, batch]."""
        inputs, labels = _inputs(batch, device)
        g, size = patterns.shape[0], labels.shape[0]
        hooks.gates = patterns.repeat_interleave(size, dim=0)
        loss, accuracy = per_example_loss(model(**_repeat(inputs, g)).logits, _repeat(labels, g))
        return loss.view(g, size), accuracy.view(g, size)

    def stacked(results) -> tuple[torch.Tensor, torch.Tensor]:
        if not results:
            return torch.zeros(0), torch.zeros(0)
        return tuple(torch.cat([r[i] for r in results], dim=-1).cpu() for i in (0, 1))

    with eval_mode(model), hooks, no_kv_cache(model):
        base_loss, base_accuracy = stacked([evaluate(b, base_gates[None]) for b in batches])
        base_loss, base_accuracy = base_loss.view(-1), base_accuracy.view(-1)
        example_loss[:], example_accuracy[:] = base_loss, base_accuracy
        blocks += layers
        cache = None
        bar = tqdm(total=int((base_gates != 0).sum()), desc="head ablation", disable=not progress)
        for layer in range(layers):
            if cache_prefix and layer > 0:
                hooks.gates = base_gates
                cache = prefix.outputs_of_block(layer - 1, cache, batches, device)
                blocks += 1
            start = layer if cache_prefix else 0
            open_heads = (base_gates[layer] != 0).nonzero().view(-1).tolist()
            for first in range(0, len(open_heads), ablations_per_pass):
                group = open_heads[first : first + ablations_per_pass]
                patterns = base_gates.repeat(len(group), 1, 1)
                patterns[torch.arange(len(group)), layer, group] = 0.0
                run = functools.partial(evaluate, patterns=patterns)
                if start > 0:
                    results = prefix.run(start, cache, batches, run, repeat=len(group))
                else:
                    results = [run(b) for b in batches]
                blocks += len(group) * (layers - start)
                example_loss[layer, group], example_accuracy[layer, group] = stacked(results)
                bar.update(len(group))
        bar.close()
    return AblationResult(example_loss, example_accuracy, base_loss, base_accuracy, blocks)


@contextlib.contextmanager
def _frozen_parameters(model: nn.Module) -> Iterator[None]:
    """No parameter requires grad inside the block (only the gates get gradients); flags restored after."""
    requires_grad = {p: p.requires_grad for p in model.parameters()}
    try:
        for p in requires_grad:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in requires_grad.items():
            p.requires_grad_(flag)


@dataclass
class GradientImportance:
    """Per-example gate gradients ``dL_x/dgate`` (``[examples, num_layers, num_heads]``) and their summaries."""

    example_gradient: torch.Tensor

    @property
    def examples(self) -> int:
        return self.example_gradient.shape[0]

    @property
    def gradient(self) -> torch.Tensor:
        """``sum_x |dL_x/dgate|`` per head (Michel et al. 2019)."""
        return self.example_gradient.double().abs().sum(0).float()

    @property
    def fisher(self) -> torch.Tensor:
        """``mean_x (dL_x/dgate)^2`` per head."""
        return (self.example_gradient.double().square().sum(0) / max(self.examples, 1)).float()

    def normalised(self) -> torch.Tensor:
        """Gradient importance divided by each layer's L2 norm (Michel et al.'s per-layer normalisation)."""
        gradient = self.gradient
        return gradient / gradient.norm(dim=1, keepdim=True).clamp(min=1e-20)

    def gathered(self) -> GradientImportance:
        """Every rank's examples (each rank measured its shard); every rank must call it."""
        return GradientImportance(distributed.gather_examples(self.example_gradient))


def gradient_importance(
    model: nn.Module,
    batches: Sequence[dict[str, Any]],
    *,
    gates: torch.Tensor | None = None,
    baseline: torch.Tensor | None = None,
    progress: bool = True,
) -> GradientImportance:
    """Per-example gate gradients over ``batches`` at ``gates`` (``[num_layers, num_heads]``, default all
    ones), in eval mode; the parameters' gradients are untouched. With a ``baseline`` (:class:`HeadGates`) the
    gradient is that of moving each head towards it (the first-order estimate of mean ablation)."""
    device = model_device(model)
    shape = HeadGates(model).shape
    base_gates = torch.ones(shape, device=device) if gates is None else gates.to(device, torch.float32)
    rows = []
    with eval_mode(model), _frozen_parameters(model), no_kv_cache(model):
        for batch in tqdm(batches, desc="head gradients", disable=not progress):
            inputs, labels = _inputs(batch, device)
            per_example_gates = base_gates.repeat(labels.shape[0], 1, 1).requires_grad_(True)
            with HeadGates(model, per_example_gates, baseline):
                loss, _ = per_example_loss(model(**inputs).logits, labels)
            (per_example,) = torch.autograd.grad(loss.sum(), per_example_gates)
            rows.append(per_example.float().cpu())
    return GradientImportance(torch.cat(rows) if rows else torch.zeros(0, *shape))
