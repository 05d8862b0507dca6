"""Head pruning curves (Michel et al. 2019; HF bertology): close the least important open heads (a fixed share of
all heads per round) until none is open; the curve is loss and accuracy against the share of heads removed.

Heads are ranked on one set of batches and the curve is evaluated on another (held-out examples): ranked and
scored on the same examples, a curve measures how well the ranking fits those examples, not which heads the
model needs. Schedules (:data:`SCHEDULES`):

- ``recomputed``: importance is recomputed on the heads left after every round. Heads interact: of two heads
  that duplicate each other, each alone looks unimportant, and only after one is closed does the other show
  its worth.
- ``one_shot``: the heads are ranked once, with every head open, and closed in that order.
- ``reverse``: the one-shot order reversed, most important first: the curve importance should stay above.

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
SCHEDULES = ("recomputed", "one_shot", "reverse")


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
            scores = _flat_scores(score, gates)
            open_heads = gates.reshape(-1).nonzero().view(-1)
            _check_finite(scores[open_heads], closed=total - len(open_heads))
            closing = open_heads[torch.argsort(scores[open_heads], stable=True)[:per_round]]
            gates.view(-1)[closing] = 0.0
            loss, accuracy = evaluate(gates.clone())
            removed = total - int(gates.sum())
            heads = [divmod(int(i), shape[1]) for i in closing]
            curve.append(PruneStep(removed, removed / total, loss, accuracy, heads))
            bar.update(len(closing))
    return curve


def _flat_scores(score: Callable[[torch.Tensor], torch.Tensor], gates: torch.Tensor) -> torch.Tensor:
    return score(gates.clone()).detach().float().cpu().reshape(-1)


def _check_finite(scores: torch.Tensor, *, closed: int) -> None:
    if not torch.isfinite(scores).all():
        raise ValueError(
            f"the importance of the open heads is not finite after {closed} heads were closed (a NaN or infinite "
            "loss?); the pruning curve cannot order them"
        )


def fixed_order(order: torch.Tensor, shape: tuple[int, int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """A score for :func:`iterative_pruning` that closes the heads in ``order`` (flat head indices, first closed
    first), whatever the gates."""
    positions = torch.empty(order.numel()).scatter_(0, order, torch.arange(order.numel()).float()).view(shape)
    return lambda gates: positions


def one_shot_order(
    score: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, int], *, reverse: bool = False
) -> torch.Tensor:
    """Flat head indices from least to most important by ``score`` at all gates open, measured once (ties:
    lowest index first); ``reverse``: that order reversed, most important first."""
    scores = _flat_scores(score, torch.ones(shape))
    _check_finite(scores, closed=0)
    order = torch.argsort(scores, stable=True)
    return order.flip(0) if reverse else order


def scheduled(
    score: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, int], schedule: str
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``score`` as :func:`iterative_pruning` should call it under ``schedule`` (one of :data:`SCHEDULES`)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule!r} is not one of {', '.join(SCHEDULES)}")
    if schedule == "recomputed":
        return score
    return fixed_order(one_shot_order(score, shape, reverse=schedule == "reverse"), shape)


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


def importance_score(
    model: nn.Module,
    batches: Sequence[dict[str, Any]],
    order: str,
    *,
    baseline: torch.Tensor | None = None,
    seed: int = 0,
    all_ranks: bool = False,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``score(gates)``: the importance ``[num_layers, num_heads]`` of the heads at ``gates`` measured on
    ``batches`` by ``order`` (one of :data:`PRUNING_ORDERS`; closed heads count for nothing)."""
    if order not in PRUNING_ORDERS:
        raise ValueError(f"order {order!r} is not one of {', '.join(PRUNING_ORDERS)}")
    shape = HeadGates(model).shape
    if order == "random":
        return fixed_order(torch.randperm(shape[0] * shape[1], generator=torch.Generator().manual_seed(seed)), shape)
    if order == "ablation":

        def score(gates):
            result = ablation_importance(model, batches, gates=gates, baseline=baseline, progress=False)
            return (result.gathered() if all_ranks else result).loss_increase

        return score

    def score(gates):
        result = gradient_importance(model, batches, gates=gates, baseline=baseline, progress=False)
        per_example = (result.gathered() if all_ranks else result).example_gradient
        return GradientImportance(per_example * gates).normalised()

    return score


def gated_evaluation(
    model: nn.Module,
    batches: Sequence[dict[str, Any]],
    *,
    baseline: torch.Tensor | None = None,
    all_ranks: bool = False,
) -> Callable[[torch.Tensor], tuple[float, float]]:
    """``evaluate(gates)``: mean ``(loss, accuracy)`` over ``batches`` (every rank's with ``all_ranks``)."""
    gather = distributed.gather_examples if all_ranks else (lambda t: t)

    def evaluate(gates: torch.Tensor) -> tuple[float, float]:
        loss, accuracy = (gather(t) for t in gated_loss(model, batches, gates, baseline=baseline))
        return loss.double().mean().item(), accuracy.double().mean().item()

    return evaluate


def prune_curve(
    model: nn.Module,
    ranking_batches: Sequence[dict[str, Any]],
    evaluation_batches: Sequence[dict[str, Any]],
    *,
    order: str = "gradient",
    schedule: str = "recomputed",
    step: float = 0.1,
    baseline: torch.Tensor | None = None,
    seed: int = 0,
    all_ranks: bool = False,
    progress: bool = True,
) -> list[PruneStep]:
    """The pruning curve of ``model``: heads ranked on ``ranking_batches`` in one of :data:`PRUNING_ORDERS` under
    one of :data:`SCHEDULES`, loss and accuracy measured on ``evaluation_batches`` (see the module).

    ``baseline`` is what a closed head outputs (``None``: zero, :func:`mean_head_outputs`: its mean). With
    ``all_ranks`` every rank passes its shard of both and every measurement covers all shards.
    """
    shape = HeadGates(model).shape
    score = importance_score(model, ranking_batches, order, baseline=baseline, seed=seed, all_ranks=all_ranks)
    evaluate = gated_evaluation(model, evaluation_batches, baseline=baseline, all_ranks=all_ranks)
    return iterative_pruning(scheduled(score, shape, schedule), evaluate, shape, step=step, progress=progress)
