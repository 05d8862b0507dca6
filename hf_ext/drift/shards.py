"""Representation dumps on disk: one safetensors shard per batch of examples, written in the background.

A dump directory holds ``metadata.json`` and ``shard-00000.safetensors``, ``shard-00001...`` (each
with the JSON sidecar of :func:`hf_ext.io.save_tensors`). Shard ``i`` holds batch ``i``: one tensor
``layer.<l>`` per recorded layer (rows of that batch, in the dump's dtype) and, in its sidecar, the
ids, SHA-256 and token counts of its examples. ``metadata.json`` records the model, adapter,
checkpoint step, architecture, layers, pooling and dtype; it is marked complete, with every
example's id, SHA-256 (of its token ids) and token count, only when the last shard is on disk.

Writing: :func:`dump_representations` runs the model and hands each batch's rows to a writer thread
through a bounded queue, so writing overlaps with the next forward pass and at most ``queue_size``
batches wait in memory. Run again with the same settings, it resumes at the first missing shard.
Under ``torch.distributed`` rank ``r`` runs and writes the batches ``i`` with ``i % world_size == r``;
the files are the same as from one process.

Reading: :class:`DumpReader` checks the dump when opened and streams one layer (or all layers) shard
by shard, pooled as asked (a ``tokens`` dump can be read as ``mean``, ``first`` or ``last``).
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import shutil
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from tqdm.auto import tqdm

from .. import distributed
from ..errors import FileFormatError, RunDirectoryError
from ..io import file_sha256, read_json, read_sidecar, save_tensors, write_json
from ..models import eval_mode, model_device, model_inputs
from ..outputs import changed_settings
from ..targets import find_blocks
from ..version import __version__
from .recorders import POOLINGS, RepresentationRecorder, pool_token_rows

DUMP_FORMAT = "hf_ext.representation_dump"
DUMP_FORMAT_VERSION = 1
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# Keys that must be equal for a dump to be resumed, and for two dumps to come from the same architecture.
SETTINGS = ("model", "adapter", "adapter_enabled", "checkpoint_step", "architecture", "layers", "pooling", "dtype")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def architecture(model: nn.Module) -> dict[str, Any]:
    """What identifies a model's representation space: type, number of blocks and width."""
    config = getattr(model, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return {
        "model_type": getattr(config, "model_type", type(model).__name__),
        "num_blocks": len(find_blocks(model)[1]),
        "hidden_size": getattr(config, "hidden_size", None),
    }


def example_fingerprints(batch: Mapping[str, torch.Tensor]) -> tuple[list[str], list[int]]:
    """SHA-256 of each example's non-pad token ids, and its number of non-pad tokens."""
    ids = batch["input_ids"].cpu()
    mask = batch.get("attention_mask")
    mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.cpu().bool()
    hashes, counts = [], []
    for row, keep in zip(ids, mask, strict=True):
        tokens = row[keep].tolist()
        hashes.append(hashlib.sha256(",".join(map(str, tokens)).encode()).hexdigest())
        counts.append(len(tokens))
    return hashes, counts


class ShardWriter:
    """A thread that saves shards from a bounded queue; errors surface on the next call."""

    _STOP = object()

    def __init__(self, queue_size: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, queue_size))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="hf_ext-shard-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not self._STOP:
            if self._error is None:
                try:
                    save_tensors(*item)
                except BaseException as err:  # reported to the producer on its next call
                    self._error = err

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> None:
        self._raise()
        self._queue.put((path, tensors, metadata))

    def close(self) -> None:
        """Wait for every queued shard; re-raise a write error."""
        self._queue.put(self._STOP)
        self._thread.join()
        self._raise()


def _shard_is_complete(path: Path, hashes: list[str]) -> bool:
    """A shard on disk whose size matches its sidecar and that holds these examples."""
    if not path.is_file() or not path.with_suffix(".json").is_file():
        return False
    info = read_sidecar(path)
    if path.stat().st_size != info["size_bytes"]:
        return False
    if info["metadata"].get("example_sha256") != hashes:
        raise RunDirectoryError(
            f"{path} holds other examples than batch {info['metadata'].get('index')} of this data: the dump in "
            f"{path.parent} was made from other data; choose another output directory"
        )
    return True


def _start(out: Path, settings: dict[str, Any], num_shards: int, overwrite: bool) -> None:
    meta_path = out / "metadata.json"
    if out.exists() and not out.is_dir():
        raise RunDirectoryError(f"{out} is a file; name a directory for the dump")
    if meta_path.is_file():
        existing = read_json(meta_path)
        if existing.get("format") != DUMP_FORMAT:
            raise RunDirectoryError(f"{meta_path} is not the metadata of a representation dump; choose another out")
        if existing.get("complete") and not overwrite:
            raise RunDirectoryError(
                f"{out} already holds a complete representation dump: use it as it is, or pass --overwrite "
                "(overwrite=True) to dump again"
            )
        if not overwrite:
            wanted = {**settings, "num_shards": num_shards}
            changed = changed_settings(existing, wanted)
            if changed:
                raise RunDirectoryError(
                    f"{out} holds an unfinished dump made with {changed}: it cannot be resumed with these "
                    "settings; choose another output directory, or pass --overwrite (overwrite=True) to start over"
                )
            return
    elif out.is_dir() and any(out.iterdir()):
        raise RunDirectoryError(
            f"{out} is not empty and holds no dump metadata.json; choose an empty or new directory"
        )
    if overwrite and out.is_dir():
        shutil.rmtree(out)
    write_json(meta_path, {**_stamp(), **settings, "num_shards": num_shards, "complete": False})


def _stamp() -> dict[str, Any]:
    return {"format": DUMP_FORMAT, "format_version": DUMP_FORMAT_VERSION, "hf_ext_version": __version__}


@torch.no_grad()
def dump_representations(
    model: nn.Module,
    batches: Sequence[Mapping[str, torch.Tensor]],
    out: str | Path,
    *,
    example_ids: Sequence[str] | None = None,
    pooling: str = "tokens",
    layers: str | Sequence[int] | None = None,
    dtype: str = "float16",
    model_name: str | None = None,
    adapter: str | None = None,
    disable_adapter: bool = False,
    checkpoint_step: int | None = None,
    overwrite: bool = False,
    queue_size: int = 2,
    progress: bool = True,
) -> Path:
    """Run ``model`` over ``batches`` and write the hidden states of ``layers`` to the dump directory ``out``.

    Args:
        batches: the fixed evaluation set as padded batches (``input_ids``, ``attention_mask``); labels
            are ignored. Shard ``i`` holds batch ``i``.
        example_ids: one id per example, in batch order (default ``"0"``, ``"1"``, ...).
        pooling: ``tokens`` (every non-pad token), ``mean``, ``first`` or ``last``.
        layers: hidden-state indices (``"0-6"``, a list; default all: embeddings and every block).
        dtype: ``float16`` (default), ``bfloat16`` or ``float32`` on disk.
        model_name, adapter, checkpoint_step: recorded in ``metadata.json``.
        disable_adapter: dump a peft model's base representations, under ``model.disable_adapter()``.
        overwrite: replace a complete dump in ``out`` (an unfinished one with the same settings is resumed).

    Every rank of a process group must call this with the same batches. Returns ``out``.
    """
    if not batches:
        raise ValueError("no batches to dump: the example set is empty")
    if dtype not in DTYPES:
        raise ValueError(f"dump dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    out = Path(out)
    recorder = RepresentationRecorder(model, pooling=pooling, layers=layers)
    if disable_adapter and not hasattr(model, "disable_adapter"):
        raise ValueError(f"disable_adapter needs a peft model; {type(model).__name__} has no adapter to disable")
    settings = {
        "model": model_name or getattr(getattr(model, "config", None), "_name_or_path", type(model).__name__),
        "adapter": adapter,
        "adapter_enabled": adapter is not None and not disable_adapter,
        "checkpoint_step": checkpoint_step,
        "architecture": architecture(model),
        "layers": recorder.layers,
        "pooling": pooling,
        "dtype": dtype,
    }
    counts_per_batch = [b["input_ids"].shape[0] for b in batches]
    ids = [str(i) for i in range(sum(counts_per_batch))] if example_ids is None else [str(i) for i in example_ids]
    if len(ids) != sum(counts_per_batch):
        raise ValueError(f"{len(ids)} example ids for {sum(counts_per_batch)} examples in the batches")
    if distributed.is_main_process():
        _start(out, settings, len(batches), overwrite)
    distributed.barrier()
    rank, world = distributed.rank(), distributed.world_size()
    starts = [sum(counts_per_batch[:i]) for i in range(len(batches))]
    device, writer = model_device(model), ShardWriter(queue_size)
    mine = [i for i in range(len(batches)) if i % world == rank]
    try:
        adapter_off = model.disable_adapter() if disable_adapter else contextlib.nullcontext()
        with eval_mode(model), recorder, adapter_off:
            for i in tqdm(mine, desc=f"dump {out.parent.name}/{out.name}", unit="batch", disable=not progress):
                batch = batches[i]
                hashes, counts = example_fingerprints(batch)
                path = out / shard_name(i)
                if _shard_is_complete(path, hashes):
                    continue
                inputs = model_inputs(batch, device)
                recorder.set_token_mask(inputs.get("attention_mask"))
                model(**inputs)
                rows = {f"layer.{layer}": t.to(DTYPES[dtype]) for layer, t in recorder.take().items()}
                meta = {
                    "index": i,
                    "example_ids": ids[starts[i] : starts[i] + len(hashes)],
                    "example_sha256": hashes,
                    "token_counts": counts,
                }
                writer.put(path, rows, meta)
    finally:
        writer.close()
    distributed.barrier()
    if distributed.is_main_process():
        _finish(out, settings, len(batches))
    distributed.barrier()
    return out


def _finish(out: Path, settings: dict[str, Any], num_shards: int) -> None:
    examples: dict[str, list] = {"example_ids": [], "example_sha256": [], "token_counts": []}
    for i in range(num_shards):
        meta = read_sidecar(out / shard_name(i))["metadata"]
        for key in examples:
            examples[key].extend(meta[key])
    rows = sum(examples["token_counts"]) if settings["pooling"] == "tokens" else len(examples["example_ids"])
    write_json(
        out / "metadata.json",
        {**_stamp(), **settings, "num_shards": num_shards, "complete": True, "rows_per_layer": rows, **examples},
    )


class DumpReader:
    """A complete dump, checked when opened, read shard by shard.

    Opening checks the format, that the dump is complete and that every shard is present with the size
    its sidecar records (a truncated shard is named); :meth:`verify` also checks the SHA-256 of each.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / "metadata.json"
        if not meta_path.is_file():
            raise FileFormatError(f"{self.path} is not a representation dump: it has no metadata.json")
        self.metadata = read_json(meta_path)
        if self.metadata.get("format") != DUMP_FORMAT:
            raise FileFormatError(f"{meta_path} is not the metadata of a representation dump")
        if not self.metadata.get("complete"):
            raise FileFormatError(f"{self.path} is an unfinished dump: run the same dump command again to resume it")
        self._shard_meta = []
        for i in range(self.metadata["num_shards"]):
            shard = self.path / shard_name(i)
            if not shard.is_file():
                raise FileFormatError(f"{shard} is missing: the dump is damaged; dump again")
            info = read_sidecar(shard)
            if shard.stat().st_size != info["size_bytes"]:
                raise FileFormatError(
                    f"{shard} is {shard.stat().st_size} bytes but its sidecar records {info['size_bytes']}: the "
                    "shard is truncated or was replaced; dump again"
                )
            self._shard_meta.append(info["metadata"])

    @property
    def layers(self) -> list[int]:
        return list(self.metadata["layers"])

    @property
    def pooling(self) -> str:
        return self.metadata["pooling"]

    @property
    def example_ids(self) -> list[str]:
        return list(self.metadata["example_ids"])

    @property
    def token_counts(self) -> list[int]:
        return list(self.metadata["token_counts"])

    def __len__(self) -> int:
        return self.metadata["num_shards"]

    def verify(self) -> None:
        """Compare every shard's SHA-256 with its sidecar."""
        for i in range(len(self)):
            shard = self.path / shard_name(i)
            if file_sha256(shard) != read_sidecar(shard)["sha256"]:
                raise FileFormatError(f"{shard} does not match the SHA-256 in its sidecar: the shard is corrupt")

    def _check_read(self, layers: Sequence[int], pooling: str) -> None:
        absent = [layer for layer in layers if layer not in self.layers]
        if absent:
            raise FileFormatError(f"{self.path} holds layers {self.layers}, not {absent}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
        if pooling != self.pooling and self.pooling != "tokens":
            raise FileFormatError(
                f"{self.path} was dumped with pooling {self.pooling!r} and cannot be read as {pooling!r} "
                "(only a 'tokens' dump can be pooled after the fact)"
            )

    def iter_shards(
        self, layers: Sequence[int] | None = None, pooling: str | None = None, device: str | torch.device = "cpu"
    ) -> Iterator[dict[int, torch.Tensor]]:
        """``{layer: rows}`` of each shard in order (one shard in memory at a time)."""
        layers = self.layers if layers is None else list(layers)
        pooling = pooling or self.pooling
        self._check_read(layers, pooling)
        for i in range(len(self)):
            shard = self.path / shard_name(i)
            try:
                with safe_open(str(shard), framework="pt", device=str(device)) as f:
                    rows = {layer: f.get_tensor(f"layer.{layer}") for layer in layers}
            except (SafetensorError, OSError) as err:
                raise FileFormatError(f"{shard} is not a readable safetensors file: {err}") from err
            if pooling != self.pooling:
                counts = self._shard_meta[i]["token_counts"]
                rows = {layer: pool_token_rows(t, counts, pooling) for layer, t in rows.items()}
            yield rows

    def iter_layer(self, layer: int, pooling: str | None = None, device: str | torch.device = "cpu"):
        """The rows of one layer, shard by shard."""
        for rows in self.iter_shards([layer], pooling, device):
            yield rows[layer]

    def read_layer(self, layer: int, pooling: str | None = None) -> torch.Tensor:
        """All rows of one layer as one tensor."""
        return torch.cat(list(self.iter_layer(layer, pooling)))
