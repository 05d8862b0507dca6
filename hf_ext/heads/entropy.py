"""Attention entropy of every head, per example: how spread out (high) or focused (low) a head's attention is.

For each query position the entropy ``-sum_k p_k log p_k`` (nats) of the head's attention distribution
over the keys is taken, then averaged over the example's non-padding query positions. Padded keys have
probability 0 and add nothing (``0 log 0 = 0``); a causal model's queries see only keys up to their own
position, so its entropies are over that causal, unpadded prefix.

The attention probabilities come from ``output_attentions=True``, which only the ``eager`` attention
implementation answers (sdpa and flash attention never form the probability matrix and return none), so
the model runs with eager attention while measuring and gets its previous implementation back afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..models import eval_mode, model_device, model_inputs, no_kv_cache
from .gates import HeadGates


@torch.no_grad()
def attention_entropy(model: nn.Module, batches: Sequence[dict[str, Any]], *, progress: bool = True) -> torch.Tensor:
    """Mean attention entropy per example, layer and (query) head: ``[num_examples, num_layers, num_heads]``.

    ``batches`` are dicts of model inputs (``labels``, if any, are dropped); padding positions are the zeros
    of ``attention_mask``. Runs in eval mode with eager attention, both restored afterwards. Float32, on CPU.
    """
    device = model_device(model)
    layers, heads = HeadGates(model).shape
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    entropies = [torch.zeros(0, layers, heads)]  # a rank's shard may hold no batch
    try:
        with eval_mode(model), no_kv_cache(model):
            for batch in tqdm(batches, desc="attention entropy", disable=not progress):
                inputs = model_inputs(batch, device)
                attentions = model(**inputs, output_attentions=True).attentions
                if not attentions:
                    raise ValueError(f"{type(model).__name__} returns no attention probabilities, even with eager")
                entropy = torch.stack([_entropy(a) for a in attentions], dim=1)  # [batch, layers, heads, queries]
                queries = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"])).bool()[:, None, None]
                total = torch.where(queries, entropy, 0.0).sum(-1)
                entropies.append((total / queries.sum(-1).clamp(min=1)).cpu())
    finally:
        model.set_attn_implementation(previous)
    return torch.cat(entropies)


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy over the last dimension, in float32; zero probabilities add 0 (``xlogy(0, 0) = 0``)."""
    probs = probs.float()
    return -torch.special.xlogy(probs, probs).sum(-1)
