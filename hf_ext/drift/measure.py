"""Drift of every layer between two sets of representations of the same examples.

- :func:`compare_dumps`: two dumps on disk (a base and a fine-tune), streamed one layer at a time.
- :func:`measure_drift`: a live model against its base, either a peft model under
  ``disable_adapter()`` in the same loop (no second model, no base dump) or a base dump streamed
  beside the forward passes.

Pairing is checked, not assumed: both sides must hold the same examples (ids and SHA-256 of their
token ids), with the same token counts, the same layers and the same architecture.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import FileFormatError
from ..models import eval_mode, model_device, model_inputs
from .metrics import DriftAccumulator, LayerDrift
from .recorders import RepresentationRecorder
from .shards import DumpReader, architecture, example_fingerprints


def _first_difference(a: Sequence, b: Sequence) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def check_paired(
    a: Mapping, b: Mapping, *, names: tuple[str, str] = ("a", "b"), keys: Sequence[str] | None = None
) -> None:
    """Raise :class:`FileFormatError` unless two dumps' metadata describe the same examples and layers.

    ``keys`` limits the check to some of ``architecture``, ``example_ids``, ``example_sha256``,
    ``token_counts`` and ``layers`` (default all).
    """
    keys = keys or ("architecture", "example_ids", "example_sha256", "token_counts", "layers")
    na, nb = names
    if "architecture" in keys and a.get("architecture") != b.get("architecture"):
        raise FileFormatError(
            f"{na} and {nb} come from different models: {na} is {a.get('architecture')}, {nb} is "
            f"{b.get('architecture')}; drift compares one model's representations before and after fine-tuning"
        )
    for key, what in (
        ("example_ids", "example ids"),
        ("example_sha256", "token ids (SHA-256)"),
        ("token_counts", "token counts"),
    ):
        if key not in keys:
            continue
        first, second = list(a[key]), list(b[key])
        if first != second:
            i = _first_difference(first, second)
            if i >= min(len(first), len(second)):
                detail = f"{na} has {len(first)} examples, {nb} has {len(second)}"
            else:
                example = a["example_ids"][i] if i < len(a["example_ids"]) else i
                detail = f"first at example {i} (id {example!r}): {first[i]!r} vs {second[i]!r}"
            raise FileFormatError(
                f"{na} and {nb} are not paired: their {what} differ ({detail}); dump both from the same data "
                "with the same tokenizer and max length"
            )
    if "layers" in keys and list(a["layers"]) != list(b["layers"]):
        raise FileFormatError(
            f"{na} holds layers {list(a['layers'])} but {nb} holds {list(b['layers'])}; compare the layers both "
            "hold (hf-ext drift compare --layers, compare_dumps(layers=...))"
        )


class _Rows:
    """Rows of several layers from an iterator of ``{layer: rows}`` chunks, handed out ``n`` at a time."""

    def __init__(self, chunks: Iterable[Mapping[int, torch.Tensor]]):
        self._chunks: Iterator[Mapping[int, torch.Tensor]] = iter(chunks)
        self._buffer: dict[int, torch.Tensor] | None = None

    def take(self, n: int) -> dict[int, torch.Tensor]:
        parts: list[dict[int, torch.Tensor]] = []
        while n > 0:
            if self._buffer is None or next(iter(self._buffer.values())).shape[0] == 0:
                chunk = next(self._chunks, None)
                if chunk is None:
                    raise FileFormatError("the base representations ran out of rows before the examples did")
                self._buffer = dict(chunk)
            available = next(iter(self._buffer.values())).shape[0]
            k = min(n, available)
            parts.append({layer: t[:k] for layer, t in self._buffer.items()})
            self._buffer = {layer: t[k:] for layer, t in self._buffer.items()}
            n -= k
        return {layer: torch.cat([p[layer] for p in parts]) for layer in parts[0]}


def compare_dumps(
    base: DumpReader | str,
    other: DumpReader | str,
    *,
    pooling: str | None = None,
    layers: Sequence[int] | None = None,
    progress: bool = True,
) -> dict[int, LayerDrift]:
    """Per-layer drift of ``other`` from ``base`` (CKA, debiased CKA, cosine), one layer in memory at a time."""
    base = base if isinstance(base, DumpReader) else DumpReader(base)
    other = other if isinstance(other, DumpReader) else DumpReader(other)
    keys = ("architecture", "example_ids", "example_sha256", "token_counts") + (("layers",) if layers is None else ())
    check_paired(base.metadata, other.metadata, names=(str(base.path), str(other.path)), keys=keys)
    if base.pooling != other.pooling and pooling is None:
        raise FileFormatError(
            f"{base.path} was dumped with pooling {base.pooling!r}, {other.path} with {other.pooling!r}: "
            "choose a pooling both can be read as"
        )
    layers = base.layers if layers is None else list(layers)
    results = {}
    for layer in tqdm(layers, desc="drift", unit="layer", disable=not progress):
        accumulator = DriftAccumulator(f"layer {layer}")
        others = _Rows({layer: t} for t in other.iter_layer(layer, pooling))
        for rows in base.iter_layer(layer, pooling):
            accumulator.update(rows.float(), others.take(rows.shape[0])[layer].float())
        results[layer] = accumulator.result()
    return results


def open_base_dump(
    base: DumpReader | str | Path, model: nn.Module, batches: Sequence[Mapping[str, torch.Tensor]]
) -> DumpReader:
    """Open a base dump and check that it holds ``batches``' examples (token SHA-256 and counts) for ``model``'s
    architecture."""
    base = base if isinstance(base, DumpReader) else DumpReader(base)
    hashes, counts = [], []
    for batch in batches:
        h, c = example_fingerprints(batch)
        hashes += h
        counts += c
    ours = {
        "architecture": architecture(model),
        "example_ids": base.example_ids,
        "example_sha256": hashes,
        "token_counts": counts,
    }
    check_paired(base.metadata, ours, names=(str(base.path), "the measured examples"), keys=tuple(ours))
    return base


@torch.no_grad()
def measure_drift(
    model: nn.Module,
    batches: Sequence[Mapping[str, torch.Tensor]],
    *,
    base: DumpReader | str | None = None,
    pooling: str = "mean",
    layers: Sequence[int] | str | None = None,
    progress: bool = False,
) -> dict[int, LayerDrift]:
    """Per-layer drift of ``model`` from its base on ``batches``, without touching any training state.

    With ``base=None`` the model must be a peft model: each batch runs once under
    ``model.disable_adapter()`` and once with the adapter, in the same loop. Otherwise ``base`` is a dump of
    the base model over the same examples (checked by token SHA-256), read beside the forward passes.
    """
    if base is None and not hasattr(model, "disable_adapter"):
        raise ValueError(
            f"{type(model).__name__} has no adapter to disable: pass the base model's dump as base= "
            "(full fine-tuning), or a peft model"
        )
    recorder = RepresentationRecorder(model, pooling=pooling, layers=layers)
    base_rows = None
    if base is not None:
        base = open_base_dump(base, model, batches)
        base_rows = _Rows(base.iter_shards(recorder.layers, pooling))
    device = model_device(model)
    accumulators = {layer: DriftAccumulator(f"layer {layer}") for layer in recorder.layers}
    with eval_mode(model), recorder:
        for batch in tqdm(batches, desc="drift", unit="batch", disable=not progress):
            inputs = model_inputs(batch, device)
            recorder.set_token_mask(inputs.get("attention_mask"))
            if base_rows is None:
                with model.disable_adapter():
                    model(**inputs)
                reference = recorder.take()
            model(**inputs)
            current = recorder.take()
            if base_rows is not None:
                reference = base_rows.take(next(iter(current.values())).shape[0])
            for layer, accumulator in accumulators.items():
                accumulator.update(reference[layer].to(current[layer].device).float(), current[layer].float())
    return {layer: accumulator.result() for layer, accumulator in accumulators.items()}


def drift_table(results: Mapping[int, LayerDrift]) -> str:
    """A plain-text table of per-layer results."""
    lines = ["layer   rows     CKA   debiased  cos mean  cos p05  mean-vec cos"]
    for layer, r in results.items():
        cells = [r.debiased_cka, r.cosine_mean, r.cosine_p05, r.mean_vector_cosine]
        text = ["    -   " if v is None else f"{v:8.4f}" for v in cells]
        lines.append(f"{layer:5d} {r.rows:6d} {r.cka:8.4f}  {'  '.join(text)}")
    return "\n".join(lines)
