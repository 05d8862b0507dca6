"""Gradient importance: a running accumulator over optimizer steps and exact top-k mask builders.

Importance of a coefficient is a mean of ``|dL/dC|`` (``kind="abs"``) or ``(dL/dC)^2``
(``kind="squared"``, the square of a gradient, not a Fisher estimate) over

- ``statistic="micro_batch"`` (default, as the WaRP references sum per-batch ``|gradient|``): the
  gradient of every backward pass, read by a tensor hook before it is added to ``.grad``, times the
  loss divisor (the gradient-accumulation steps the Trainer divides each micro-batch loss by), so
  it is the gradient of the micro-batch's mean loss whatever the accumulation or the number of
  processes (under DDP each rank adds its own micro-batches; :meth:`~ImportanceAccumulator.mean`
  sums across ranks). A loss the Trainer normalises by the step's token count instead (causal LMs)
  weights each micro-batch by its share of those tokens;
- ``statistic="step"``: the gradient of each optimizer step (averaged over its micro-batches and,
  under DDP, ranks). Averaging before the absolute value cancels opposite signs, so this one
  depends on gradient accumulation x number of processes.

With ``granularity="input"`` each gradient is summed over the output dimension first, giving one
score per input direction (column); as the mean is linear this equals summing the element-wise
importance afterwards, but needs only ``d_in`` floats.

Masks mark the most important ``keep_ratio`` share as ``True`` (frozen). The k-th largest score is
found by bisection on the bit patterns of the float32 scores, so masks are exact for any tensor
size (``torch.quantile`` refuses more than ~16M elements) and need no concatenated copy for a
global threshold.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .. import distributed

KINDS = ("abs", "squared")
STATISTICS = ("micro_batch", "step")
GRANULARITIES = ("element", "input")
THRESHOLDS = ("per_layer", "global")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


class ImportanceAccumulator:
    """Running sum of gradient magnitudes of named parameters, per micro-batch or per step; memory is fixed.

    Call :meth:`update` once per optimizer step, after the gradients are complete (accumulated
    and, under DDP, averaged) and before clipping. ``grad_scale`` is the loss scale of fp16 mixed
    precision, divided out so importance does not depend on it. With ``statistic="micro_batch"``
    the backward passes of the step were already read by tensor hooks; :meth:`update` then checks
    them and adds them (a step with a non-finite gradient is skipped whole). Set ``loss_divisor`` to
    the gradient-accumulation steps the training loop divides each micro-batch loss by.
    """

    def __init__(
        self,
        params: Mapping[str, torch.Tensor],
        *,
        kind: str = "abs",
        granularity: str = "element",
        statistic: str = "micro_batch",
    ):
        _check_choice("kind", kind, KINDS)
        _check_choice("granularity", granularity, GRANULARITIES)
        _check_choice("statistic", statistic, STATISTICS)
        if not params:
            raise ValueError("no parameters to accumulate importance for")
        self.params = dict(params)
        self.kind, self.granularity, self.statistic = kind, granularity, statistic
        self.sums = {name: self._zeros(p) for name, p in self.params.items()}
        self.steps = 0
        self.skipped_steps = 0
        self.micro_batches = 0
        self.loss_divisor = 1.0
        self._pending = {name: self._zeros(p) for name, p in self.params.items()} if statistic == "micro_batch" else {}
        self._pending_passes = dict.fromkeys(self.params, 0)
        self._hooks = [
            p.register_hook(functools.partial(self._read_micro_batch, name))
            for name, p in self.params.items()
            if statistic == "micro_batch"
        ]

    def _zeros(self, param: torch.Tensor) -> torch.Tensor:
        return torch.zeros(self._score_shape(param), dtype=torch.float32, device=param.device)

    def _score_shape(self, param: torch.Tensor) -> tuple[int, ...]:
        if self.granularity == "input":
            if param.ndim != 2:
                raise ValueError(f"granularity 'input' needs 2-D parameters, got shape {tuple(param.shape)}")
            return (param.shape[1],)
        return tuple(param.shape)

    def _score(self, grad: torch.Tensor, scale: float) -> torch.Tensor:
        g = grad.float()
        if scale != 1.0:
            g = g * scale
        score = g.abs() if self.kind == "abs" else g.square()
        return score.sum(dim=0) if self.granularity == "input" else score

    @torch.no_grad()
    def _read_micro_batch(self, name: str, grad: torch.Tensor) -> None:
        self._pending[name] += self._score(grad, self.loss_divisor)
        self._pending_passes[name] += 1

    @torch.no_grad()
    def update(self, grad_scale: float = 1.0) -> bool:
        """Add this step's gradients; returns False (and adds nothing) if any gradient is non-finite."""
        if self.statistic == "micro_batch":
            return self._add_pending(grad_scale)
        grads = {}
        for name, param in self.params.items():
            if param.grad is None:
                raise RuntimeError(f"parameter {name!r} has no gradient: is it trainable and on the loss path?")
            grads[name] = param.grad
        if not self._finite(grads.values()):
            return False
        for name, grad in grads.items():
            self.sums[name] += self._score(grad, 1.0 / grad_scale)
        self.steps += 1
        return True

    def _add_pending(self, grad_scale: float) -> bool:
        passes = set(self._pending_passes.values())
        if passes == {0}:
            raise RuntimeError(
                f"parameters {sorted(self.params)[:3]} got no gradient in this step: are they trainable and on the "
                "loss path?"
            )
        finite = self._finite(self._pending.values())
        if finite:
            divisor = grad_scale if self.kind == "abs" else grad_scale**2
            for name, pending in self._pending.items():
                self.sums[name] += pending / divisor
            self.steps += 1
            self.micro_batches += max(passes)
        for pending in self._pending.values():
            pending.zero_()
        self._pending_passes = dict.fromkeys(self.params, 0)
        return finite

    def _finite(self, tensors) -> bool:
        if torch.stack([torch.isfinite(t).all() for t in tensors]).all().item():
            return True
        self.skipped_steps += 1
        warnings.warn(
            f"non-finite gradient at importance step {self.steps + self.skipped_steps}: step skipped", stacklevel=3
        )
        return False

    def mean(self, *, across_ranks: bool = True) -> dict[str, torch.Tensor]:
        """The importance (float32): the mean over micro-batches of every rank (``statistic="micro_batch"``;
        every rank must call it unless ``across_ranks=False``, which gives this rank's own mean) or over
        optimizer steps."""
        if self.steps == 0:
            raise RuntimeError(
                f"no importance accumulated: {self.skipped_steps} step(s) had non-finite gradients and none was finite"
                if self.skipped_steps
                else "no importance accumulated: no optimizer step ran"
            )
        if self.statistic == "step":
            return {name: total / self.steps for name, total in self.sums.items()}
        totals = {name: total.clone() for name, total in self.sums.items()}
        count = torch.tensor(float(self.micro_batches), device=next(iter(totals.values())).device)
        if across_ranks:
            distributed.all_reduce_sum_([*totals.values(), count])
        return {name: total / count for name, total in totals.items()}

    def gather_(self) -> None:
        """Sum the micro-batch sums across ranks into rank 0 (the others keep zero), so rank 0 can save the
        whole state; every rank must call it. A no-op for ``statistic="step"`` (the ranks agree)."""
        if self.statistic != "micro_batch" or distributed.world_size() == 1:
            return
        count = torch.tensor(float(self.micro_batches), device=next(iter(self.sums.values())).device)
        distributed.all_reduce_sum_([*self.sums.values(), count])
        if not distributed.is_main_process():
            for total in self.sums.values():
                total.zero_()
            count.zero_()
        self.micro_batches = int(count.item())

    def remove_hooks(self) -> None:
        """Stop reading micro-batch gradients (the accumulated sums stay)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"{name}.sum": total for name, total in self.sums.items()}
        state["steps"] = torch.tensor(self.steps)
        state["skipped_steps"] = torch.tensor(self.skipped_steps)
        state["micro_batches"] = torch.tensor(self.micro_batches)
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore a saved state (rank 0's, which holds every rank's sums; the other ranks start from zero)."""
        for name, total in self.sums.items():
            saved = state[f"{name}.sum"]
            if saved.shape != total.shape:
                raise ValueError(
                    f"saved importance for {name!r} has shape {tuple(saved.shape)}, expected {tuple(total.shape)}"
                )
            total.copy_(saved)
        self.steps, self.skipped_steps = int(state["steps"]), int(state["skipped_steps"])
        self.micro_batches = int(state["micro_batches"]) if "micro_batches" in state else 0
        if self.statistic == "micro_batch" and not distributed.is_main_process():
            for total in self.sums.values():
                total.zero_()
            self.micro_batches = 0


def importance_after_training(
    model: torch.nn.Module,
    params: Mapping[str, torch.Tensor],
    batches,
    *,
    kind: str = "abs",
    granularity: str = "element",
    keep_training=(),
) -> ImportanceAccumulator:
    """Importance from a separate pass over ``batches`` (dicts the model takes, with labels) on the trained
    model, as the Safety-WaRP reference now measures it: eval mode (no dropout), one backward per batch,
    no optimizer step, per-micro-batch statistic. ``keep_training``: modules left in training mode (a
    head whose class restriction acts only there). Under DDP give each rank its shard of the data;
    ``.mean()`` (every rank) sums across ranks. Gradients are cleared afterwards."""
    accumulator = ImportanceAccumulator(params, kind=kind, granularity=granularity, statistic="micro_batch")
    device = next(iter(params.values())).device
    was_training = model.training
    model.eval()
    for module in keep_training:
        module.train()
    try:
        for batch in tqdm(batches, desc="importance after training", leave=False):
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            model(**batch).loss.backward()
            accumulator.update()
            model.zero_grad(set_to_none=True)
    finally:
        accumulator.remove_hooks()
        model.train(was_training)
    return accumulator


def mask_overlap(first: Mapping[str, torch.Tensor], second: Mapping[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Per layer: the share of ``first``'s frozen entries that ``second`` freezes too, and that share's chance
    level (``second``'s frozen share: two random masks of these sizes)."""
    out = {}
    for name, mask in first.items():
        other = second[name]
        frozen = int(mask.sum())
        out[name] = {
            "shared": float((mask & other).sum()) / frozen if frozen else float("nan"),
            "chance": float(other.float().mean()),
        }
    return out


@dataclass
class MaskInfo:
    """What :func:`build_masks` realised: frozen share per layer and the thresholds used."""

    keep_ratio: float
    threshold: str
    frozen: dict[str, int]
    total: dict[str, int]
    thresholds: dict[str, float]

    @property
    def realised(self) -> dict[str, float]:
        return {name: self.frozen[name] / self.total[name] for name in self.total}

    def to_json(self) -> dict:
        return {
            "keep_ratio": self.keep_ratio,
            "threshold": self.threshold,
            "frozen": self.frozen,
            "total": self.total,
            "realised_ratio": self.realised,
            "thresholds": self.thresholds,
        }


def _sortable_bits(scores: torch.Tensor) -> torch.Tensor:
    """int32 keys that order like the float32 scores (scores must be >= 0 and not NaN)."""
    return scores.detach().float().contiguous().view(torch.int32)


def top_k_masks(scores: Mapping[str, torch.Tensor], k: int) -> tuple[dict[str, torch.Tensor], float]:
    """Masks selecting exactly the ``k`` largest scores over all tensors together.

    Ties at the threshold are broken by order (tensor order, then flat index), so exactly ``k``
    entries are ``True``. Returns the masks and the threshold (the k-th largest score).
    """
    keys = {name: _sortable_bits(s) for name, s in scores.items()}
    n = sum(key.numel() for key in keys.values())
    if not 0 <= k <= n:
        raise ValueError(f"k must be in 0..{n}, got {k}")
    if k == 0:
        return {name: torch.zeros_like(key, dtype=torch.bool) for name, key in keys.items()}, math.inf

    def at_least(t: int) -> int:
        return sum(int((key >= t).sum()) for key in keys.values())

    lo, hi = 0, 0x7F800000  # bits of 0.0 and +inf; count(>= lo) = n >= k
    while lo < hi:  # largest t with count(>= t) >= k
        mid = (lo + hi + 1) // 2
        if at_least(mid) >= k:
            lo = mid
        else:
            hi = mid - 1
    masks, ties_left = {}, k - sum(int((key > lo).sum()) for key in keys.values())
    for name, key in keys.items():
        tie = key == lo
        take = tie.flatten().cumsum(0) <= ties_left
        mask = (key > lo) | (tie & take.view_as(tie))
        ties_left -= int((tie & take.view_as(tie)).sum())
        masks[name] = mask
    threshold = torch.tensor(lo, dtype=torch.int32).view(torch.float32).item()
    return masks, threshold


def build_masks(
    scores: Mapping[str, torch.Tensor], keep_ratio: float, threshold: str = "per_layer"
) -> tuple[dict[str, torch.Tensor], MaskInfo]:
    """Freeze the most important ``keep_ratio`` share of entries: ``True`` = frozen.

    ``threshold="per_layer"`` freezes ``round(keep_ratio * n)`` entries of every tensor;
    ``"global"`` freezes ``round(keep_ratio * N)`` over all tensors together, so layers with larger
    scores get more frozen entries.
    """
    if not 0 < keep_ratio < 1:
        raise ValueError(f"keep_ratio must be in (0, 1) (the share of coefficients to freeze), got {keep_ratio}")
    _check_choice("threshold", threshold, THRESHOLDS)
    for name, s in scores.items():
        if not torch.isfinite(s).all() or (s < 0).any():
            raise ValueError(f"importance of {name!r} has negative or non-finite entries")
    if threshold == "per_layer":
        masks, thresholds = {}, {}
        for name, s in scores.items():
            layer_mask, thresholds[name] = top_k_masks({name: s}, round(keep_ratio * s.numel()))
            masks[name] = layer_mask[name]
    else:
        total = sum(s.numel() for s in scores.values())
        masks, value = top_k_masks(scores, round(keep_ratio * total))
        thresholds = {"global": value}
    info = MaskInfo(
        keep_ratio,
        threshold,
        {n: int(m.sum()) for n, m in masks.items()},
        {n: m.numel() for n, m in masks.items()},
        thresholds,
    )
    return masks, info


def importance_vs_eigenvalues(
    importance: Mapping[str, torch.Tensor], eigenvalues: Mapping[str, torch.Tensor], keep_ratio: float
) -> dict[str, dict[str, float]]:
    """How far gradient importance ranks the basis directions like the eigenvalues already do, per layer.

    Importance per direction is the score (summed over output rows for element scores); the basis
    is sorted by eigenvalue, so direction ``i`` has the ``i``-th largest. Returns, per layer, the
    Spearman correlation of the two rankings, the overlap of their top ``k = round(keep_ratio * n)``
    directions and that overlap's chance level ``k^2 / n`` (two random k-sets of n).
    """
    from scipy.stats import spearmanr

    out = {}
    for name, score in importance.items():
        per_direction = (score.sum(dim=0) if score.ndim == 2 else score).double().cpu()
        n = per_direction.numel()
        values = eigenvalues[name][:n].double().cpu()
        k = max(1, round(keep_ratio * n))
        top_importance = set(torch.topk(per_direction, k).indices.tolist())
        top_eigenvalue = set(torch.topk(values, k).indices.tolist())
        rho = spearmanr(per_direction.numpy(), values.numpy()).statistic
        out[name] = {
            "spearman": float(rho),
            "top_k": k,
            "overlap": len(top_importance & top_eigenvalue),
            "chance_overlap": k * k / n,
        }
    return out
