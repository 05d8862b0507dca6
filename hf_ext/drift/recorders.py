"""Capture the hidden states of the embeddings and of every transformer block, padding excluded.

Layer ``0`` is the input of the first block (the embeddings' output) and layer ``i`` the output of
block ``i - 1``, the numbering of ``output_hidden_states`` (block outputs are taken before any final
norm). The blocks are found by :func:`hf_ext.targets.find_blocks` (BERT, DeBERTa-v2, Llama, Qwen2 and
kin, also inside a peft model). Each forward pass leaves one pooled batch per layer in the recorder,
which the caller takes with :meth:`RepresentationRecorder.take` before the next one.

Poolings: ``tokens`` (every non-pad token, in order), ``mean`` (mean over non-pad tokens), ``first``
(the first token: CLS of an encoder) and ``last`` (the last non-pad token, for decoders, left or right
padded).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..models import ENCODER_ONLY
from ..targets import find_blocks, parse_int_set

POOLINGS = ("tokens", "mean", "first", "last")


def is_encoder(model: nn.Module) -> bool:
    """True for BERT-like encoders (every token sees the whole sequence)."""
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) in ENCODER_ONLY


def check_pooling(model: nn.Module, pooling: str) -> None:
    """Refuse a pooling that does not exist or does not fit the architecture."""
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
    kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    if pooling == "first" and not is_encoder(model):
        raise ConfigError(
            f"pooling 'first' does not fit {kind}, a decoder: its first token attends only to itself, so the "
            "pooled rows carry nothing about the input; use 'last', 'mean' or 'tokens'"
        )
    if pooling == "last" and is_encoder(model):
        raise ConfigError(
            f"pooling 'last' does not fit {kind}, an encoder: its last token is the [SEP] marker; "
            "use 'first' (CLS), 'mean' or 'tokens'"
        )


def pool(hidden: torch.Tensor, mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """Rows of ``hidden`` ``[batch, seq, d]`` for one pooling; ``mask`` ``[batch, seq]`` marks real tokens."""
    if mask is None:
        mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
    mask = mask.to(hidden.device).bool()
    if mask.shape != hidden.shape[:2]:
        raise ValueError(f"hidden states {tuple(hidden.shape)} do not match the attention mask {tuple(mask.shape)}")
    if pooling == "tokens":
        return hidden[mask]
    if pooling == "mean":
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    if pooling == "first":
        index = torch.where(mask, positions, mask.shape[1]).min(1).values
    elif pooling == "last":
        index = torch.where(mask, positions, -1).max(1).values
    else:
        raise ConfigError(f"pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index.clamp(0, mask.shape[1] - 1)]


def pool_token_rows(rows: torch.Tensor, token_counts: Iterable[int], pooling: str) -> torch.Tensor:
    """Pool the rows of a ``tokens`` capture (examples' tokens one after another) per example."""
    counts = list(token_counts)
    if sum(counts) != rows.shape[0]:
        raise ValueError(f"{rows.shape[0]} token rows but the token counts add up to {sum(counts)}")
    if pooling == "tokens":
        return rows
    if pooling == "mean":
        return torch.stack([chunk.mean(0) for chunk in rows.split(counts)])
    ends = torch.tensor(counts).cumsum(0)
    return rows[ends - torch.tensor(counts)] if pooling == "first" else rows[ends - 1]


def resolve_layers(model: nn.Module, layers: str | Iterable[int] | None) -> list[int]:
    """Hidden-state indices ``0..num_blocks`` (all when ``layers`` is None), checked against the model."""
    count = len(find_blocks(model)[1]) + 1
    if layers is None:
        return list(range(count))
    wanted = parse_int_set(layers) if isinstance(layers, str) else sorted(set(layers))
    absent = [layer for layer in wanted if not 0 <= layer < count]
    if absent:
        raise ConfigError(
            f"layers {absent} do not exist: {type(model).__name__} has hidden states 0-{count - 1} "
            "(0 = embeddings, i = output of block i-1)"
        )
    return wanted


class RepresentationRecorder:
    """Hooks that keep the pooled hidden states of chosen layers for the current forward pass.

    ::

        with RepresentationRecorder(model, pooling="mean") as recorder:
            for batch in batches:
                recorder.set_token_mask(batch["attention_mask"])
                model(**batch)
                rows = recorder.take()  # {layer: [rows, d]}
    """

    def __init__(self, model: nn.Module, *, pooling: str = "mean", layers: str | Iterable[int] | None = None):
        check_pooling(model, pooling)
        self.model, self.pooling = model, pooling
        self.layers = resolve_layers(model, layers)
        self._blocks = find_blocks(model)[1]
        self._mask: torch.Tensor | None = None
        self._captured: dict[int, torch.Tensor] = {}
        self._handles: list[Any] = []

    def set_token_mask(self, mask: torch.Tensor | None) -> None:
        """The attention mask ``[batch, seq]`` of the next forward pass (``None``: every token is real)."""
        self._mask = mask

    def _keep(self, layer: int, hidden: Any) -> None:
        if isinstance(hidden, (tuple, list)):
            hidden = hidden[0]
        self._captured[layer] = pool(hidden.detach(), self._mask, self.pooling)

    def __enter__(self) -> RepresentationRecorder:
        if 0 in self.layers:

            def embeddings(module: nn.Module, args: tuple, kwargs: dict) -> None:
                self._keep(0, args[0] if args else kwargs["hidden_states"])

            self._handles.append(self._blocks[0].register_forward_pre_hook(embeddings, with_kwargs=True))
        for layer in self.layers:
            if layer > 0:
                hook = self._output_hook(layer)
                self._handles.append(self._blocks[layer - 1].register_forward_hook(hook))
        return self

    def _output_hook(self, layer: int):
        def output(module: nn.Module, args: tuple, out: Any) -> None:
            self._keep(layer, out)

        return output

    def take(self) -> dict[int, torch.Tensor]:
        """The rows captured since the last call, per layer; raises if a layer did not run."""
        missing = [layer for layer in self.layers if layer not in self._captured]
        if missing:
            raise RuntimeError(f"layers {missing} produced no hidden states: the model did not run them")
        captured, self._captured = self._captured, {}
        return captured

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._captured, self._mask = [], {}, None
