"""Selective-layer fine-tuning: train chosen blocks (fully or with LoRA) while the blocks below them run
under ``torch.no_grad()``, so the frozen prefix records no autograd graph and saves no activations."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_EXPORTS = {
    "config": ["SelectiveArguments"],
    "inspect": ["inspect_graph"],
    "prefix": ["NoGradPrefix", "attach_no_grad_prefix"],
    "selection": ["resolve_train_layers", "select_trainable"],
    "study": ["prepare_seq_cls", "record_selection"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

if TYPE_CHECKING:
    from .config import SelectiveArguments
    from .inspect import inspect_graph
    from .prefix import NoGradPrefix, attach_no_grad_prefix
    from .selection import resolve_train_layers, select_trainable
    from .study import prepare_seq_cls, record_selection
