"""Run the frozen blocks below the first trained block without autograd.

``requires_grad=False`` stops updates but not recording: once anything upstream requires grad
(``enable_input_require_grads``, which transformers calls whenever gradient checkpointing is on, or
a trainable embedding) autograd records every frozen block and keeps its activations for a backward
pass that only needs the blocks above. :class:`NoGradPrefix` puts a forward pre-hook and a forward
hook on each prefix block: the pre-hook turns grad mode off, the hook restores it and detaches the
block's output. Hooks leave the module tree and state dict untouched (``save_pretrained`` writes a
plain model), move with the blocks under DDP and peft wrapping, and run outside transformers'
checkpointed ``forward``; a block running with grad mode off is never checkpointed.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils._pytree import tree_map_only

from ..errors import ConfigError
from ..targets import find_blocks

_ATTRIBUTE = "_hf_ext_no_grad_prefix"


class NoGradPrefix:
    """Blocks ``0 .. num_blocks - 1`` of ``model`` run under ``torch.no_grad()``; their outputs are detached.

    Attach with :func:`attach_no_grad_prefix`; :meth:`remove` takes the hooks off. A model holds at
    most one prefix: attaching another replaces it.
    """

    def __init__(self, model: nn.Module, num_blocks: int):
        name, blocks = find_blocks(model)
        if not 0 <= num_blocks <= len(blocks):
            raise ConfigError(f"a no-grad prefix of {num_blocks} blocks does not fit {name}, which has {len(blocks)}")
        self.model = model
        self.num_blocks = num_blocks
        self.first_trained = blocks[num_blocks] if num_blocks < len(blocks) else None
        self._grad_modes: list[bool] = []
        self._handles = []
        for index, block in enumerate(blocks[:num_blocks]):
            last = index == num_blocks - 1
            self._handles.append(block.register_forward_pre_hook(self._enter))
            self._handles.append(block.register_forward_hook(functools.partial(self._leave, last), always_call=True))

    def _enter(self, module: nn.Module, args) -> None:
        self._grad_modes.append(torch.is_grad_enabled())
        torch.set_grad_enabled(False)

    def _leave(self, last: bool, module: nn.Module, args, output):
        grad_mode = self._grad_modes.pop()
        torch.set_grad_enabled(grad_mode)
        if output is None:  # the block raised; the exception propagates once grad mode is restored
            return None
        output = tree_map_only(torch.Tensor, torch.Tensor.detach, output)
        if last and grad_mode and self._reentrant_checkpoint_above():
            # A reentrant checkpoint computes no gradient when none of its inputs requires grad, so the
            # trained blocks would silently get none: the boundary becomes a leaf that does.
            output = tree_map_only(torch.Tensor, _require_grad_if_float, output)
        return output

    def _reentrant_checkpoint_above(self) -> bool:
        block = self.first_trained
        if block is None or not (getattr(block, "gradient_checkpointing", False) and block.training):
            return False
        checkpoint = getattr(block, "_gradient_checkpointing_func", None)
        return bool(getattr(checkpoint, "keywords", {}).get("use_reentrant", False))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if getattr(self.model, _ATTRIBUTE, None) is self:
            delattr(self.model, _ATTRIBUTE)


def _require_grad_if_float(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.requires_grad_(True) if tensor.is_floating_point() else tensor


def attach_no_grad_prefix(model: nn.Module, num_blocks: int) -> NoGradPrefix:
    """Make the first ``num_blocks`` transformer blocks of ``model`` run without autograd (see module doc)."""
    previous = no_grad_prefix_of(model)
    if previous is not None:
        previous.remove()
    prefix = NoGradPrefix(model, num_blocks)
    object.__setattr__(model, _ATTRIBUTE, prefix)
    return prefix


def no_grad_prefix_of(model: nn.Module) -> NoGradPrefix | None:
    """The prefix attached to ``model`` (or to the model a peft wrapper holds), if any."""
    for candidate in (model, getattr(model, "get_base_model", lambda: None)()):
        prefix = getattr(candidate, _ATTRIBUTE, None) if candidate is not None else None
        if prefix is not None:
            return prefix
    return None
