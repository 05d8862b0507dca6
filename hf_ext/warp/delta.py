"""A phase's trained weights as a delta: the parameters it trained (the merged target weights and the extra
trainable modules, such as a classifier head), a small file beside a full model (470 MB against 16 GB for
four ``down_proj`` of an 8B model), and how to apply it to the model the phase started from."""

from __future__ import annotations

import os

import torch
from torch import nn

from ..errors import FileFormatError
from ..io import load_tensors, save_tensors


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{parameter name: tensor}`` of the parameters that require grad (what a phase trained)."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def save_delta(model: nn.Module, path: str | os.PathLike, metadata: dict | None = None) -> list[str]:
    """Write the trainable parameters of ``model`` (after :func:`~hf_ext.warp.reparam.merge_model`) to ``path``."""
    state = trainable_state(model)
    if not state:
        raise ValueError("the model has no trainable parameters: there is no delta to save")
    save_tensors(path, state, metadata or {})
    return list(state)


@torch.no_grad()
def apply_delta(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """Overwrite the parameters of ``model`` named in the delta file ``path``; returns their names.

    Raises :class:`~hf_ext.errors.FileFormatError` if a name is not a parameter of ``model`` or a shape
    differs: the delta belongs to another model.
    """
    tensors, _ = load_tensors(path)
    parameters = dict(model.named_parameters())
    absent = [name for name in tensors if name not in parameters]
    wrong = [
        f"{name} {tuple(t.shape)} vs {tuple(parameters[name].shape)}"
        for name, t in tensors.items()
        if name in parameters and t.shape != parameters[name].shape
    ]
    if absent or wrong:
        found = f"parameters {absent[:3]} that the model lacks" if absent else f"shapes that differ: {wrong[:3]}"
        raise FileFormatError(f"{path} holds {found}: it is a delta of another model")
    for name, tensor in tensors.items():
        parameters[name].copy_(tensor.to(parameters[name].dtype))
    return list(tensors)
