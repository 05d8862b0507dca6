"""Masks: choosing them from importance scores and applying them exactly.

:func:`build_masks` marks the most important ``keep_ratio`` share as ``True`` (frozen), per layer or over
all layers together (:func:`top_k_masks`). The k-th largest score is found by bisection on the bit
patterns of the float32 scores, so masks are exact for any tensor size (``torch.quantile`` refuses more
than ~16M elements) and need no concatenated copy for a global threshold. :func:`mask_overlap` compares
two sets of masks.

Exact mask-restricted updates (:class:`MaskedUpdate`): masked entries of a parameter never change, bit for bit.

Zeroing a gradient is not a freeze: AdamW's weight decay and momentum still move an entry whose
gradient is zero. :class:`MaskedUpdate` keeps a copy of the frozen values only, zeroes their
gradients before clipping (so they do not count in the gradient norm) and writes the copy back
after every optimizer step. A mask is either element-wise (the parameter's shape) or per input
column (shape ``(in_features,)`` for a 2-D parameter), stored as bools with ``True`` = frozen.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .. import sharding

THRESHOLDS = ("per_layer", "global")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


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
    entries are ``True``. Returns the masks and the threshold (the k-th largest score). Scores sharded by
    rows (:mod:`hf_ext.sharding`) give masks sharded alike, equal to the masks of the whole scores: every
    count is a local count plus one all-reduce, and a shard's flat indices follow the lower ranks' ones.
    """
    keys = {name: _sortable_bits(sharding.local(s)) for name, s in scores.items()}
    split = {name for name, s in scores.items() if sharding.is_sharded(s)}
    process_group = sharding.group(scores.values())
    n = sum(s.numel() for s in scores.values())
    if not 0 <= k <= n:
        raise ValueError(f"k must be in 0..{n}, got {k}")

    device = next(iter(keys.values())).device  # NCCL reduces tensors on the GPU only

    def count(compare, bits: int) -> int:
        counts = torch.zeros(2, dtype=torch.int64, device=device)  # sharded tensors' entries, summed; whole ones'
        for name, key in keys.items():
            counts[0 if name in split else 1] += int(compare(key, bits).sum())
        sharding.all_reduce_([counts[:1]], process_group)
        return int(counts.sum())

    if k == 0:
        masks = {name: torch.zeros_like(key, dtype=torch.bool) for name, key in keys.items()}
        return {name: sharding.shard_like(m, scores[name]) for name, m in masks.items()}, math.inf
    lo, hi = 0, 0x7F800000  # bits of 0.0 and +inf; count(>= lo) = n >= k
    while lo < hi:  # largest t with count(>= t) >= k
        mid = (lo + hi + 1) // 2
        if count(torch.ge, mid) >= k:
            lo = mid
        else:
            hi = mid - 1
    ties = {name: key == lo for name, key in keys.items()}
    ties_before = _ties_on_lower_ranks(
        {name: int(tie.sum()) for name, tie in ties.items() if name in split}, process_group, device
    )
    masks, ties_left = {}, k - count(torch.gt, lo)
    for name, key in keys.items():
        tie, before = ties[name], ties_before.get(name, (0, 0))
        take = tie.flatten().cumsum(0) <= ties_left - before[0]
        masks[name] = sharding.shard_like((key > lo) | (tie & take.view_as(tie)), scores[name])
        ties_left -= min(ties_left, before[1] if name in split else int(tie.sum()))
    threshold = torch.tensor(lo, dtype=torch.int32).view(torch.float32).item()
    return masks, threshold


def _ties_on_lower_ranks(ties: dict[str, int], process_group, device) -> dict[str, tuple[int, int]]:
    """``{name: (ties on the ranks before this one, ties on every rank)}`` of each sharded tensor."""
    if process_group is None or not ties:
        return {name: (0, count) for name, count in ties.items()}
    mine = torch.tensor(list(ties.values()), dtype=torch.int64, device=device)
    every = [torch.zeros_like(mine) for _ in range(dist.get_world_size(process_group))]
    dist.all_gather(every, mine, group=process_group)
    table, rank = torch.stack(every), dist.get_rank(process_group)
    return {name: (int(table[:rank, i].sum()), int(table[:, i].sum())) for i, name in enumerate(ties)}


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
    _check_scores(scores)
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
        {n: sharding.count_true(m) for n, m in masks.items()},
        {n: m.numel() for n, m in masks.items()},
        thresholds,
    )
    return masks, info


def _check_scores(scores: Mapping[str, torch.Tensor]) -> None:
    """Refuse negative or non-finite importance on every rank at once (a rank raising alone leaves the others
    waiting in the threshold's all-reduces)."""
    local = {name: sharding.local(s) for name, s in scores.items()}
    bad = [name for name, s in local.items() if not torch.isfinite(s).all() or (s < 0).any()]
    if not local:
        return
    flags = torch.tensor([len(bad)], device=next(iter(local.values())).device)
    sharding.all_reduce_([flags], sharding.group(scores.values()))
    if flags.item():
        where = repr(bad[0]) if bad else "a layer on another rank"
        raise ValueError(f"importance of {where} has negative or non-finite entries")


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


class _FrozenEntries:
    """The frozen values of one parameter and how to read and write them; of this rank's rows when the
    parameter is sharded (:mod:`hf_ext.sharding`), with a mask given whole or sharded alike."""

    def __init__(self, name: str, param: torch.Tensor, mask: torch.Tensor):
        if mask.shape == param.shape:
            self.columns = None
            self.mask = sharding.rows_of(mask, param).to(device=sharding.local(param).device, dtype=torch.bool)
        elif param.ndim == 2 and mask.shape == (param.shape[1],):
            self.columns = sharding.local(mask).to(device=sharding.local(param).device, dtype=torch.bool)
            self.columns = self.columns.nonzero().squeeze(1)
            self.mask = None
        else:
            raise ValueError(
                f"mask for {name!r} has shape {tuple(mask.shape)}; expected {tuple(param.shape)} (element-wise)"
                + (f" or ({param.shape[1]},) (one flag per input direction)" if param.ndim == 2 else "")
            )
        self.param = param
        self.values = self.read(param.detach()).clone()

    def read(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = sharding.local(tensor)
        return tensor[self.mask] if self.columns is None else tensor.index_select(1, self.columns)

    def zero_(self, tensor: torch.Tensor) -> None:
        tensor = sharding.local(tensor)
        if self.columns is None:
            tensor.masked_fill_(self.mask, 0)
        else:
            tensor.index_fill_(1, self.columns, 0)

    def restore_(self) -> None:
        data = sharding.local(self.param.data)
        if self.columns is None:
            data.masked_scatter_(self.mask, self.values)
        else:
            data.index_copy_(1, self.columns, self.values)

    @property
    def count(self) -> int:
        return self.values.numel()


class MaskedUpdate:
    """Freeze the ``True`` entries of ``masks[name]`` in ``params[name]`` at their current values.

    Call :meth:`zero_frozen_grads_` after backward (before clipping) and :meth:`restore_` after
    every ``optimizer.step()``; :meth:`max_deviation` reports how far frozen entries are from the
    snapshot (0.0 means bit-identical). Parameters sharded by rows (FSDP2, :mod:`hf_ext.sharding`) keep their
    masks' rows on each rank; every method then works on, and reports, this rank's rows only.
    """

    def __init__(self, params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]):
        missing = sorted(set(params) - set(masks))
        unknown = sorted(set(masks) - set(params))
        if missing or unknown:
            raise ValueError(
                "masks do not match the parameters: "
                + (f"no mask for {missing}" if missing else "")
                + ("; " if missing and unknown else "")
                + (f"masks for unknown parameters {unknown}" if unknown else "")
            )
        self.entries = {name: _FrozenEntries(name, params[name], masks[name]) for name in params}

    @torch.no_grad()
    def zero_frozen_grads_(self) -> None:
        for entry in self.entries.values():
            if entry.param.grad is not None:
                entry.zero_(entry.param.grad)

    @torch.no_grad()
    def restore_(self) -> None:
        for entry in self.entries.values():
            entry.restore_()

    @torch.no_grad()
    def max_deviation(self) -> dict[str, float]:
        """Largest ``|value - snapshot|`` over each parameter's frozen entries."""
        return {
            name: (e.read(e.param.detach()).float() - e.values.float()).abs().max().item() if e.count else 0.0
            for name, e in self.entries.items()
        }

    @torch.no_grad()
    def unchanged(self) -> bool:
        """True if every frozen entry is bit-identical to the snapshot."""
        return all(torch.equal(e.read(e.param.detach()), e.values) for e in self.entries.values())

    @property
    def frozen_counts(self) -> dict[str, int]:
        """Frozen entries per parameter (a frozen column counts ``d_out`` entries)."""
        return {name: e.count for name, e in self.entries.items()}
