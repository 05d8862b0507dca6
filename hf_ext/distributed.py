"""The few torch.distributed facts hf_ext needs, safe to call when no process group exists."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterable, Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

from .errors import ConfigError

T = TypeVar("T")


def world_size() -> int:
    """Number of processes in the default group, 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the default group, 0 without one."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    """True on the process that writes shared files."""
    return rank() == 0


def all_reduce_sum_(tensors: Iterable[torch.Tensor]) -> None:
    """Sum each tensor in place across ranks. Every rank must call this with the same tensors in the same order."""
    if world_size() == 1:
        return
    for tensor in tensors:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def barrier() -> None:
    """Wait for every rank; a no-op in a single process."""
    if world_size() > 1:
        dist.barrier()


def release() -> None:
    """End a successful multi-process run: collect what still holds the group (a DDP reducer in a reference
    cycle), wait for every rank, destroy the default group. A process that exits with a live gloo group can
    abort in its destructor and turn a finished run into a failed one. A no-op without a group."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def broadcast_(tensor: torch.Tensor, src: int) -> None:
    """Overwrite ``tensor`` on every rank with rank ``src``'s; a no-op in a single process."""
    if world_size() > 1:
        dist.broadcast(tensor, src=src)


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of ``items`` (every ``world_size()``-th item from ``rank()``); all of them in one process."""
    return list(items[rank() :: world_size()])


def _collective_device(tensor: torch.Tensor) -> torch.device:
    """Where the default group can move ``tensor``: NCCL moves only CUDA tensors."""
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return tensor.device


def gather_examples(tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along ``dim`` in rank order, on ``tensor``'s device; ranks may hold
    different numbers of examples (none included) but must agree on the other dimensions and the dtype. Every
    rank must call it."""
    if world_size() == 1:
        return tensor
    device = _collective_device(tensor)
    moved = tensor.movedim(dim, 0).contiguous().to(device)
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([moved.shape[0]], device=device))
    longest = max(int(s) for s in sizes)
    padded = torch.zeros(longest, *moved.shape[1:], dtype=moved.dtype, device=device)
    padded[: moved.shape[0]] = moved
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[: int(size)] for part, size in zip(parts, sizes)]).movedim(0, dim).to(tensor.device)


def sharded_launcher(args) -> str | None:
    """The sharding launcher that TrainingArguments ``args`` ask for, in the arguments or (under ``accelerate
    launch``) in the environment: ``"FSDP"``, ``"DeepSpeed ZeRO-<stage>"``, or None for one device and DDP."""
    if args.fsdp or _env_flag("ACCELERATE_USE_FSDP"):
        return "FSDP"
    if args.deepspeed or _env_flag("ACCELERATE_USE_DEEPSPEED"):
        plugin = getattr(args, "deepspeed_plugin", None)
        stage = plugin.zero_stage if plugin is not None else os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", 2)
        return f"DeepSpeed ZeRO-{stage}"
    return None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true")


_HOW = {
    "weights": "shards the weights, so a forward or a weight read on some processes waits for the others",
    "gradients": "shards the gradients (FSDP, ZeRO-2/3) or steps the optimizer inside backward (DeepSpeed)",
}


def check_launcher(args, who: str, reads: str) -> None:
    """Refuse, with a :class:`~hf_ext.errors.ConfigError` naming the combination, a sharded launcher that splits
    what ``who`` reads whole: ``reads="weights"`` (forwards on the main process only, or whole parameters: FSDP
    and DeepSpeed ZeRO-3 are refused; ZeRO-1/2 keep every weight on every process) or ``"gradients"`` (every
    gradient once per optimizer step: FSDP and every DeepSpeed stage are refused)."""
    launcher = sharded_launcher(args)
    if launcher is None or (reads == "weights" and launcher not in ("FSDP", "DeepSpeed ZeRO-3")):
        return
    raise ConfigError(
        f"{who} cannot run under {launcher}: it reads whole {reads} and {launcher} {_HOW[reads]}; launch with DDP "
        "(accelerate_configs/multi_gpu.yaml) or on one device"
    )
