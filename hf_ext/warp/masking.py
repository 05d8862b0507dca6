"""Exact mask-restricted updates: masked entries of a parameter never change, bit for bit.

Zeroing a gradient is not a freeze: AdamW's weight decay and momentum still move an entry whose
gradient is zero. :class:`MaskedUpdate` keeps a copy of the frozen values only, zeroes their
gradients before clipping (so they do not count in the gradient norm) and writes the copy back
after every optimizer step. A mask is either element-wise (the parameter's shape) or per input
column (shape ``(in_features,)`` for a 2-D parameter), stored as bools with ``True`` = frozen.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


class _FrozenEntries:
    """The frozen values of one parameter and how to read and write them."""

    def __init__(self, name: str, param: torch.Tensor, mask: torch.Tensor):
        mask = mask.to(device=param.device, dtype=torch.bool)
        if mask.shape == param.shape:
            self.columns = None
            self.mask = mask
        elif param.ndim == 2 and mask.shape == (param.shape[1],):
            self.columns = mask.nonzero().squeeze(1)
            self.mask = None
        else:
            raise ValueError(
                f"mask for {name!r} has shape {tuple(mask.shape)}; expected {tuple(param.shape)} (element-wise)"
                + (f" or ({param.shape[1]},) (one flag per input direction)" if param.ndim == 2 else "")
            )
        self.param = param
        self.values = self.read(param.detach()).clone()

    def read(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor[self.mask] if self.columns is None else tensor.index_select(1, self.columns)

    def zero_(self, tensor: torch.Tensor) -> None:
        if self.columns is None:
            tensor.masked_fill_(self.mask, 0)
        else:
            tensor.index_fill_(1, self.columns, 0)

    def restore_(self) -> None:
        data = self.param.data
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
    snapshot (0.0 means bit-identical).
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
