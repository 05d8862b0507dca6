"""The classifier head of a two-task WaRP study, and what is read through it.

One head holds the safety classes and the utility classes side by side. With ``head: "prototypes"`` phase 2
trains the safety rows with the coefficients; :func:`set_prototype_rows` then sets each utility row to its
class's mean feature (the head's input) on the utility training data, with bias ``-|mean|^2 / 2``, so the
rows score nearest-class-mean (as WaRP-CIFSL's prototypes), and the arms freeze the whole head: utility has to
be learned through the trained layers, and the safety rows stay bit for bit what phase 2 made them.

:func:`head_outputs` gives the head's inputs (one feature vector per example) and logits;
:func:`logit_margins`, :func:`feature_spread` and :func:`decision_cosine` are the study's continuous
outcomes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from ..models import classifier_head, eval_mode, model_device


def _pooled(features: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """One vector per example: a decoder's score head sees every token and keeps the last non-pad one."""
    if features.ndim == 2:
        return features
    if attention_mask is None:
        return features[:, -1]
    last = attention_mask.shape[1] - 1 - attention_mask.flip(1).long().argmax(1)
    return features[torch.arange(features.shape[0], device=features.device), last]


@torch.no_grad()
def head_outputs(model: nn.Module, batches: Iterable[dict]) -> dict[str, torch.Tensor]:
    """``{"features", "logits", "labels"}`` (float32, on CPU) of a sequence classifier in eval mode: the input
    of its classifier head per example, its logits and the batch labels."""
    head = classifier_head(model)
    if head is None:
        raise ValueError(f"{type(model).__name__} has no classifier head")
    device = model_device(model)
    captured: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda module, inputs: captured.append(inputs[0].detach()))
    out = {"features": [], "logits": [], "labels": []}
    try:
        with eval_mode(model):
            for batch in batches:
                batch = {k: v.to(device) for k, v in batch.items()}
                labels = batch.pop("labels")
                captured.clear()
                logits = model(**batch).logits
                out["features"].append(_pooled(captured[-1], batch.get("attention_mask")).float().cpu())
                out["logits"].append(logits.float().cpu())
                out["labels"].append(labels.cpu())
    finally:
        handle.remove()
    return {key: torch.cat(values) for key, values in out.items()}


@torch.no_grad()
def set_prototype_rows(head: nn.Linear, features: torch.Tensor, labels: torch.Tensor, class_ids: Sequence[int]):
    """Set row ``c`` of ``head`` to the mean of ``features`` whose label is ``c`` and its bias to
    ``-|mean|^2 / 2`` for every ``c`` in ``class_ids``; returns the prototypes ``(len(class_ids), features)``."""
    prototypes = []
    for class_id in class_ids:
        chosen = features[labels == class_id]
        if not len(chosen):
            raise ValueError(f"no training example of class {class_id}: its prototype is undefined")
        prototypes.append(chosen.double().mean(0).float())
    prototypes = torch.stack(prototypes)
    rows = torch.tensor(list(class_ids))
    head.weight[rows] = prototypes.to(head.weight)
    if head.bias is not None:
        head.bias[rows] = (-0.5 * prototypes.double().pow(2).sum(1)).to(head.bias)
    return prototypes


def logit_margins(logits: torch.Tensor, labels: torch.Tensor, class_ids: Sequence[int]) -> torch.Tensor:
    """Per example: the true class's logit minus the largest other logit among ``class_ids`` (positive: right)."""
    ids = torch.tensor(list(class_ids))
    task = logits[:, ids].double()
    position = (labels[:, None] == ids[None, :]).long().argmax(1)
    true = task.gather(1, position[:, None]).squeeze(1)
    others = task.scatter(1, position[:, None], float("-inf")).amax(1)
    return true - others


def task_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, class_ids: Sequence[int]) -> float:
    """Mean cross-entropy of the softmax over ``class_ids`` only."""
    ids = torch.tensor(list(class_ids))
    position = (labels[:, None] == ids[None, :]).long().argmax(1)
    return float(nn.functional.cross_entropy(logits[:, ids].double(), position))


def feature_spread(features: torch.Tensor) -> float:
    """Spread of the features across examples: the root of the summed per-dimension variances (a collapse of
    every example onto one point gives 0)."""
    return float(features.double().var(0, unbiased=False).sum().sqrt())


def decision_cosine(weight: torch.Tensor, safety: Sequence[int], utility: Sequence[int]) -> float:
    """The cosine between the two tasks' decision directions in the head (each task's rows centred on their
    mean) with the largest magnitude, signed: near 0 the tasks read different feature directions."""

    def centred(ids):
        rows = weight[torch.tensor(list(ids))].double()
        return rows - rows.mean(0)

    a = nn.functional.normalize(centred(safety), dim=1)
    b = nn.functional.normalize(centred(utility), dim=1)
    cosines = (a @ b.T).flatten()
    return float(cosines[cosines.abs().argmax()])
