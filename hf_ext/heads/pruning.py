"""Iterative head pruning (Michel et al. 2019; HF bertology): close the least important open heads (a fixed
share of all heads per round), recompute importance on what is left, repeat; the curve is loss and accuracy
against the share of heads removed. Importance is recomputed every round because heads interact: of two
heads that duplicate each other, each alone looks unimportant, and only after one is closed does the other
show its worth.

Orders: ``gradient`` (Michel et al.'s ``sum_x |dL_x/dgate|`` at the current gates, normalised per layer),
``ablation`` (the loss increase of closing each open head, at the current gates: exact but a full ablation
sweep per round) and ``random`` (a fixed random order from ``seed``: the control that importance must beat).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import distributed
from ..models import eval_mode, model_device, no_kv_cache
from .gates import HeadGates
from .importance import GradientImportance, _inputs, ablation_importance, gradient_importance, per_example_loss

PRUNING_ORDERS = ("gradient", "ablation", "random")


@dataclass
class PruneStep:
    """The model after one round: how many heads are closed, its loss and accuracy, the heads closed this round."""

    heads_removed: int
    share_removed: float
    loss: float
    accuracy: float
    removed: list[tuple[int, int]]

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"removed": [list(head) for head in self.removed]}


def iterative_pruning(
    score: Callable[[torch.Tensor], torch.Tensor],
    evaluate: Callable[[torch.Tensor], tuple[float, float]],
    shape: tuple[int, int],
    *,
    step: float,
    progress: bool = False,
) -> list[PruneStep]:
    """The pruning curve from all heads open to all closed.

    ``score(gates)`` gives the importance ``[num_layers, num_heads]`` of the heads at the current ``gates``
    (1 open, 0 closed), ``evaluate(gates)`` the ``(loss, accuracy)`` there. Each round closes the
    ``max(1, round(step * heads))`` open heads of lowest score (ties: lowest index first).
    """
    if not 0 < step <= 1:
        raise ValueError(f"step is a share of the heads, in (0, 1]; got {step}")
    gates = torch.ones(shape)
    total = gates.numel()
    per_round = max(1, round(step * total))
    loss, accuracy = evaluate(gates.clone())
    curve = [PruneStep(0, 0.0, loss, accuracy, [])]
    with tqdm(total=total, desc="head pruning", disable=not progress) as bar:
        while gates.sum() > 0:
            scores = score(gates.clone()).detach().float().cpu().reshape(-1)
            open_heads = gates.reshape(-1).nonzero().view(-1)
            if not torch.isfinite(scores[open_heads]).all():
                raise ValueError(
                    f"the importance of the open heads is not finite after {total - len(open_heads)} heads were "
                    "closed (a NaN or infinite loss?); the pruning curve cannot order them"
                )
            closing = open_heads[torch.argsort(scores[open_heads], stable=True)[:per_round]]
            gates.view(-1)[closing] = 0.0
            loss, accuracy = evaluate(gates.clone())
            removed = total - int(gates.sum())
            heads = [divmod(int(i), shape[1]) for i in closing]
            curve.append(PruneStep(removed, removed / total, loss, accuracy, heads))
            bar.update(len(closing))
    return curve


@torch.no_grad()
def gated_loss(
    model: nn.Module,
    batches: Sequence[dict[str, Any]],
    gates: torch.Tensor,
    *,
    baseline: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example ``(loss, accuracy)`` over ``batches`` with the heads gated by ``gates`` (eval mode)."""
    device = model_device(model)
    losses, accuracies = [torch.zeros(0)], [torch.zeros(0)]
    with eval_mode(model), no_kv_cache(model), HeadGates(model, gates.to(device), baseline):
        for batch in batches:
            inputs, labels = _inputs(batch, device)
            loss, accuracy = per_example_loss(model(**inputs).logits, labels)
            losses.append(loss.cpu())
            accuracies.append(accuracy.cpu())
    return torch.cat(losses), torch.cat(accuracies)


def prune_curve(
    model: nn.Module,
    batches: Sequence[dict[str, Any]],
    *,
    order: str = "gradient",
    step: float = 0.1,
    baseline: torch.Tensor | None = None,
    seed: int = 0,
    all_ranks: bool = False,
    progress: bool = True,
) -> list[PruneStep]:
    """The iterative pruning curve of ``model`` on ``batches`` in one of :data:`PRUNING_ORDERS` (see the module).

    ``baseline`` is what a closed head outputs (``None``: zero, :func:`mean_head_outputs`: its mean). With
    ``all_ranks`` every rank passes its shard of the batches and every measurement covers all shards.
    """
    if order not in PRUNING_ORDERS:
        raise ValueError(f"order {order!r} is not one of {', '.join(PRUNING_ORDERS)}")
    gather = distributed.gather_examples if all_ranks else (lambda t: t)
    shape = HeadGates(model).shape

    def evaluate(gates: torch.Tensor) -> tuple[float, float]:
        loss, accuracy = (gather(t) for t in gated_loss(model, batches, gates, baseline=baseline))
        return loss.double().mean().item(), accuracy.double().mean().item()

    if order == "random":
        permutation = torch.randperm(shape[0] * shape[1], generator=torch.Generator().manual_seed(seed))
        fixed = torch.empty(shape[0] * shape[1]).scatter_(0, permutation, torch.arange(permutation.numel()).float())

        def score(gates):
            return fixed.view(shape)
    elif order == "ablation":

        def score(gates):
            result = ablation_importance(model, batches, gates=gates, baseline=baseline, progress=False)
            return (result.gathered() if all_ranks else result).loss_increase
    else:

        def score(gates):
            result = gradient_importance(model, batches, gates=gates, baseline=baseline, progress=False)
            per_example = (result.gathered() if all_ranks else result).example_gradient
            return GradientImportance(per_example * gates).normalised()  # closed heads count for nothing

    return iterative_pruning(score, evaluate, shape, step=step, progress=progress)
