"""The few torch.distributed facts hf_ext needs, safe to call when no process group exists."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist


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


def broadcast_(tensor: torch.Tensor, src: int) -> None:
    """Overwrite ``tensor`` on every rank with rank ``src``'s; a no-op in a single process."""
    if world_size() > 1:
        dist.broadcast(tensor, src=src)
