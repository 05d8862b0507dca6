"""Row-sharded tensors as one rank sees them: FSDP2 (``fully_shard``) keeps each parameter as a DTensor split
along dim 0 over a 1-D device mesh, so a rank holds a contiguous block of rows (``torch.chunk`` sizes, rank
order). The gradient readers work on that block: anything computed per row (``C = W @ U``, element
importance, element masks, masked updates) is local, a sum over rows is a local sum plus one all-reduce, and a
count over all entries (a top-k threshold) is a local count plus one all-reduce.

Every function takes plain tensors too, and then answers for one process with no collective.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Replicate, Shard


def is_sharded(tensor: torch.Tensor) -> bool:
    """True for a DTensor split along dim 0 (FSDP2's layout); other DTensor layouts are refused."""
    if not isinstance(tensor, DTensor):
        return False
    placements = tuple(tensor.placements)
    if placements == (Shard(0),):
        return True
    if all(isinstance(p, Replicate) for p in placements):
        return False
    raise ValueError(
        f"a DTensor placed as {placements} on a {tensor.device_mesh.ndim}-D mesh: hf_ext's gradient readers take "
        "parameters sharded along dim 0 on a 1-D mesh (fully_shard with one mesh dimension), or whole ones"
    )


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's rows of a sharded tensor (a view), the tensor itself otherwise."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def row_range(tensor: torch.Tensor) -> tuple[int, int]:
    """``(start, stop)``: the global rows this rank holds (all of them for a plain tensor)."""
    if not is_sharded(tensor):
        return 0, tensor.shape[0]
    rows, ranks, index = tensor.shape[0], tensor.device_mesh.size(), tensor.device_mesh.get_local_rank()
    chunk = -(-rows // ranks)  # torch.chunk: equal blocks of ceil(rows / ranks), the last ones short or empty
    start = min(index * chunk, rows)
    return start, min(start + chunk, rows)


def rows_of(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The rows of ``tensor`` that this rank holds of ``like``: ``tensor``'s own local rows if it is sharded,
    the matching slice of a whole tensor of ``like``'s first dimension, else ``tensor`` unchanged (a vector
    over the input directions applies to every row)."""
    if isinstance(tensor, DTensor):
        return local(tensor)
    if is_sharded(like) and tensor.ndim == like.ndim and tensor.shape[0] == like.shape[0]:
        start, stop = row_range(like)
        return tensor[start:stop]
    return tensor


def shard_like(local_rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A tensor sharded as ``like`` from this rank's rows (whose other dimensions may differ from ``like``'s);
    ``local_rows`` itself when ``like`` is not sharded."""
    if not is_sharded(like):
        return local_rows
    shape = (like.shape[0], *local_rows.shape[1:])
    return DTensor.from_local(local_rows, like.device_mesh, like.placements, shape=shape, stride=_contiguous(shape))


def _contiguous(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def group(tensors) -> dist.ProcessGroup | None:
    """The process group the sharded tensors among ``tensors`` are split over; None if none is sharded."""
    groups = {t.device_mesh.get_group() for t in tensors if is_sharded(t)}
    if len(groups) > 1:
        raise ValueError("the tensors are sharded over different process groups: shard them on one mesh")
    return next(iter(groups), None)


def all_reduce_(tensors, process_group: dist.ProcessGroup | None, op=dist.ReduceOp.SUM) -> None:
    """Reduce each tensor in place over ``process_group`` (nothing without one)."""
    if process_group is None:
        return
    for tensor in tensors:
        dist.all_reduce(tensor, op=op, group=process_group)


def sum_rows(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor.sum(dim=0)`` over every rank's rows, whole on every rank."""
    total = local(tensor).sum(dim=0)
    all_reduce_([total], group([tensor]))
    return total


def all_rows(mask: torch.Tensor) -> torch.Tensor:
    """``mask.all(dim=0)`` over every rank's rows, whole on every rank."""
    every = local(mask).all(dim=0).to(torch.int32)
    all_reduce_([every], group([mask]), op=dist.ReduceOp.MIN)
    return every.bool()


def count_true(mask: torch.Tensor) -> int:
    """The number of ``True`` entries over every rank's rows."""
    total = local(mask).sum(dtype=torch.int64).reshape(1)
    all_reduce_([total], group([mask]))
    return int(total)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every rank (an all-gather for a sharded one): for saving and for small tensors."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
