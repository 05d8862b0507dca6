"""Attention-head gates and per-head update sizes, for any architecture :func:`find_attention` knows.

transformers 5 has no ``head_mask``. The input of each block's attention output projection is the
concatenation of the query heads' outputs, so a forward pre-hook that scales slice
``h * head_dim : (h + 1) * head_dim`` by ``gates[layer, h]`` gates head ``h`` in BERT, DeBERTa-v2,
Llama and Qwen2 alike (with grouped-query attention the gate is per query head).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..models import model_device
from ..targets import AttentionModules, find_attention


class HeadGates:
    """Multiply each head's output by ``gates[layer, head]`` while attached.

    ``gates`` is any ``[num_layers, num_heads]`` tensor: all ones (outputs bit-identical to the
    ungated model), a fixed ablation pattern, soft values, or an ``nn.Parameter`` to train or to
    read ``dL/dgate`` from. A ``[batch, num_layers, num_heads]`` tensor gives every example of the
    batch its own gates (per-example gradients in one backward pass, several ablations in one
    forward pass). Use as a context manager (``with HeadGates(model, gates): ...``) or call
    :meth:`attach` / :meth:`remove`; :attr:`gates` may be replaced while attached.
    """

    def __init__(self, model: nn.Module, gates: torch.Tensor | None = None):
        self.model = model
        self.attention = find_attention(model)
        self.shape = (len(self.attention), self.attention[0].num_heads)
        if gates is None:
            gates = torch.ones(self.shape, device=model_device(model))
        if tuple(gates.shape[-2:]) != self.shape or gates.ndim not in (2, 3):
            raise ValueError(
                f"gates have shape {tuple(gates.shape)}; this model "
                f"needs [num_layers, num_heads] = {list(self.shape)} "
                "or [batch, num_layers, num_heads]"
            )
        self.gates = gates
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def attach(self) -> HeadGates:
        if self._handles:
            raise RuntimeError("head gates are already attached")
        for a in self.attention:
            hook = self._hook(a)
            self._handles.append(self.model.get_submodule(a.o).register_forward_pre_hook(hook))
        return self

    def _hook(self, a: AttentionModules):
        def gate_heads(module, args):
            x = args[0]
            if self.gates.ndim == 2:
                gate = self.gates[a.layer].to(x.dtype)[:, None]  # [heads, 1]
            else:  # per example: [batch, 1 (positions), heads, 1]
                gate = self.gates[:, a.layer].to(x.dtype).view(x.shape[0], *([1] * (x.ndim - 2)), a.num_heads, 1)
            gated = (x.unflatten(-1, (a.num_heads, a.head_dim)) * gate).flatten(-2)
            return (gated, *args[1:])

        return gate_heads

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> HeadGates:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.remove()


def _head_rows(weight: torch.Tensor, head: int, head_dim: int) -> torch.Tensor:
    return weight[head * head_dim : (head + 1) * head_dim]


@torch.no_grad()
def head_update_sizes(
    initial: Mapping[str, torch.Tensor], final: Mapping[str, torch.Tensor], attention: list[AttentionModules]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head update size between two checkpoints: ``(U, Urel)``, each ``[num_layers, num_heads]``.

    ``initial`` and ``final`` map ``"<module>.weight"`` to weights (e.g. two ``state_dict()``s).
    For query head ``h``: Q rows of ``h``, K and V rows of its key/value head ``h // queries_per_kv``,
    O input columns of ``h``. ``U = sqrt(|dQ|^2 + |dK|^2 + |dV|^2 + |dO|^2)`` (Frobenius norms of the
    deltas) and ``Urel = U / (|Q0| + |K0| + |V0| + |O0|)`` on the same slices.
    """
    layers, heads = len(attention), attention[0].num_heads
    size, scale = torch.zeros(layers, heads, dtype=torch.float64), torch.zeros(layers, heads, dtype=torch.float64)
    for a in attention:
        weights = {}
        for role in ("q", "k", "v", "o"):
            key = f"{getattr(a, role)}.weight"
            if key not in initial or key not in final:
                raise KeyError(f"{key} missing from the {'initial' if key not in initial else 'final'} weights")
            w0, w1 = initial[key].double().cpu(), final[key].double().cpu()
            weights[role] = (w0.T, w1.T) if role == "o" else (w0, w1)  # O: the head's input columns
        for h in range(heads):
            kv = h // a.queries_per_kv
            delta_sq = norm_sum = 0.0
            for role, index in (("q", h), ("k", kv), ("v", kv), ("o", h)):
                w0, w1 = (_head_rows(w, index, a.head_dim) for w in weights[role])
                delta_sq += (w1 - w0).square().sum().item()
                norm_sum += w0.norm().item()
            size[a.layer, h] = delta_sq**0.5
            scale[a.layer, h] = norm_sum
    return size, size / scale
