"""A linear probe: fit only the task head on frozen features (the head study before importance, the drift study's
frozen-base control).

A sequence classifier's head is freshly initialised before fine-tuning, so ablation importance of the
encoder's attention heads measured through it describes the random head, not the encoder (on the
embedded MiniLM, 4 topics: base loss ln 4, and two head initialisations ranked the attention heads with
Spearman -0.10). Fitting the head alone first (the encoder frozen: a linear probe) gives importance a
model that does the task. :func:`fit_probe` trains only :func:`task_head` (the classifier and, where the
model has one, the pooler feeding it). The study fine-tunes from the probed head by default (linear probing
then fine-tuning, LP-FT); :func:`head_state` / :func:`restore_head` put the random head back bit for bit where
it is asked to fine-tune from that instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .models import POOLER_NAMES, classifier_head, model_device


def task_head(model: nn.Module) -> dict[str, nn.Module]:
    """``{name: module}`` of the task head: the classifier (``classifier`` / ``score``) and the pooler of the
    base model, if it has one. A model without a classifier head (a causal LM) has no head to probe."""
    head = classifier_head(model)
    if head is None:
        raise ValueError(f"{type(model).__name__} has no classifier head to probe (a causal LM keeps its LM head)")
    names = {module: name for name, module in model.named_modules()}
    modules = {names[head]: head}
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    for pooler_name in POOLER_NAMES:
        pooler = getattr(base, pooler_name, None) if base is not None else None
        if isinstance(pooler, nn.Module) and any(True for _ in pooler.parameters()):
            modules[names[pooler]] = pooler
    return modules


def head_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the task head's parameters, for :func:`restore_head`."""
    return {
        f"{name}.{key}": value.detach().clone()
        for name, module in task_head(model).items()
        for key, value in module.state_dict().items()
    }


@torch.no_grad()
def restore_head(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Put back the head :func:`head_state` copied (bit-identical)."""
    for name, module in task_head(model).items():
        module.load_state_dict({key[len(name) + 1 :]: v for key, v in state.items() if key.startswith(name + ".")})


@dataclass
class ProbeResult:
    """How well the probed head does the task on the probe's evaluation batches."""

    accuracy: float
    loss: float
    steps: int
    trainable_parameters: int

    def to_json(self) -> dict:
        return asdict(self)


def _batches_on(batches: Iterable[Mapping], device) -> Iterable[dict]:
    for batch in batches:
        yield {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}


def fit_probe(
    model: nn.Module,
    train_batches: list[Mapping[str, torch.Tensor]],
    eval_batches: list[Mapping[str, torch.Tensor]],
    *,
    epochs: int = 3,
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> ProbeResult:
    """Train only the task head (AdamW, eval mode: no dropout) over ``train_batches`` for ``epochs``; the rest
    of the model keeps its weights and gets no gradient. Returns the probe's accuracy and loss on
    ``eval_batches``. The order of the batches is shuffled by ``seed`` without touching the global RNG."""
    device = model_device(model)
    params = [p for module in task_head(model).values() for p in module.parameters()]
    flags = {p: p.requires_grad for p in model.parameters()}
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    steps = 0
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
        model.eval()
        for _ in range(epochs):
            for index in torch.randperm(len(train_batches), generator=generator).tolist():
                (batch,) = _batches_on([train_batches[index]], device)
                model(**batch).loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                steps += 1
        with torch.no_grad():
            losses, correct, count = 0.0, 0, 0
            for batch in _batches_on(eval_batches, device):
                output = model(**batch)
                size = batch["labels"].shape[0]
                losses += output.loss.item() * size
                correct += int((output.logits.argmax(-1) == batch["labels"]).sum())
                count += size
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(was_training)
    return ProbeResult(
        accuracy=correct / count if count else math.nan,
        loss=losses / count if count else math.nan,
        steps=steps,
        trainable_parameters=sum(p.numel() for p in params),
    )


@torch.no_grad()
def reinitialise_head(model: nn.Module, seed: int) -> None:
    """A fresh random head from ``seed`` (normal weights with the config's ``initializer_range``, zero biases),
    as a new classifier is initialised; the global RNG is not touched."""
    std = getattr(getattr(model, "config", None), "initializer_range", 0.02)
    generator = torch.Generator().manual_seed(seed)
    for module in task_head(model).values():
        for name, param in module.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
