"""Attention-head gates and per-head update sizes, for any architecture :func:`find_attention` knows.

transformers 5 has no ``head_mask``. The input of each block's attention output projection is the
concatenation of the query heads' outputs, so a forward pre-hook that scales slice
``h * head_dim : (h + 1) * head_dim`` by ``gates[layer, h]`` gates head ``h`` in BERT, DeBERTa-v2,
Llama and Qwen2 alike (with grouped-query attention the gate is per query head).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .. import distributed
from ..models import eval_mode, model_device, model_inputs, no_kv_cache
from ..targets import AttentionModules, find_attention


class HeadGates:
    """Multiply each head's output by ``gates[layer, head]`` while attached.

    ``gates`` is any ``[num_layers, num_heads]`` tensor: all ones (outputs bit-identical to the
    ungated model), a fixed ablation pattern, soft values, or an ``nn.Parameter`` to train or to
    read ``dL/dgate`` from. A ``[batch, num_layers, num_heads]`` tensor gives every example of the
    batch its own gates (per-example gradients in one backward pass, several ablations in one
    forward pass). Use as a context manager (``with HeadGates(model, gates): ...``) or call
    :meth:`attach` / :meth:`remove`; :attr:`gates` may be replaced while attached.

    ``baseline`` (``[num_layers, num_heads, head_dim]``, e.g. :func:`mean_head_outputs`) is what a gate
    of 0 leaves: the head's output becomes ``gate * output + (1 - gate) * baseline`` (mean ablation);
    without it a closed gate zeroes the head.
    """

    def __init__(self, model: nn.Module, gates: torch.Tensor | None = None, baseline: torch.Tensor | None = None):
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
        head_dim = self.attention[0].head_dim
        if baseline is not None and tuple(baseline.shape) != (*self.shape, head_dim):
            raise ValueError(
                f"baseline has shape {tuple(baseline.shape)}; this model needs "
                f"[num_layers, num_heads, head_dim] = {[*self.shape, head_dim]}"
            )
        self.gates, self.baseline = gates, baseline
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
            gated = x.unflatten(-1, (a.num_heads, a.head_dim)) * gate
            if self.baseline is not None:
                gated = gated + (1 - gate) * self.baseline[a.layer].to(x.dtype)
            return (gated.flatten(-2), *args[1:])

        return gate_heads

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> HeadGates:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.remove()


@torch.no_grad()
def mean_head_outputs(
    model: nn.Module, batches: Sequence[Mapping[str, Any]], *, all_ranks: bool = False
) -> torch.Tensor:
    """Each head's mean output ``[num_layers, num_heads, head_dim]`` (float32) over the non-padding tokens of
    ``batches`` (eval mode): the baseline of mean ablation. With ``all_ranks`` every rank passes its shard
    and gets the mean over all of them."""
    attention = find_attention(model)
    shape = (len(attention), attention[0].num_heads, attention[0].head_dim)
    device = model_device(model)
    sums, tokens = torch.zeros(shape, dtype=torch.float64, device=device), torch.zeros(1, device=device)
    mask: list[torch.Tensor] = []

    def accumulate(a: AttentionModules):
        def hook(module, args):
            x = args[0].unflatten(-1, (a.num_heads, a.head_dim)).double()  # [batch, positions, heads, dim]
            sums[a.layer] += (x * mask[0][..., None, None]).sum((0, 1))

        return hook

    handles = [model.get_submodule(a.o).register_forward_pre_hook(accumulate(a)) for a in attention]
    try:
        with eval_mode(model), no_kv_cache(model):
            for batch in batches:
                inputs = model_inputs(batch, device)
                ids = inputs["input_ids"]
                mask[:] = [inputs.get("attention_mask", torch.ones_like(ids)).double()]
                tokens += mask[0].sum()
                model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    if all_ranks:
        distributed.all_reduce_sum_([sums, tokens])
    if tokens.item() == 0:
        raise ValueError("mean_head_outputs got no tokens: the batches are empty")
    return (sums / tokens).float()


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
