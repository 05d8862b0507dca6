"""The few distributed facts and collectives hf_ext needs, thin over ``accelerate``, safe without a process group.

Without an initialised ``torch.distributed`` group every function here answers for one process and touches
nothing: no :class:`accelerate.PartialState` is built, since building one can start a process group, set the
CUDA device and rewrite ``os.environ``; accelerate is imported only once a group of several processes exists.
With such a group, the collectives go through ``accelerate.utils``.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, TypeVar

import torch
import torch.distributed as dist

from .errors import ConfigError

if TYPE_CHECKING:
    from accelerate import PartialState

T = TypeVar("T")


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def _state() -> PartialState:
    """accelerate's view of the default group; call only with a group of more than one process.

    ``PartialState`` is a singleton built once from the launcher's environment. Built here first, in a gloo group
    that the caller started (a script, no Trainer), it needs ``cpu=True``, or it describes one process and every
    ``accelerate.utils`` collective silently does nothing; a state that does not describe the live group is
    refused rather than used.
    """
    from accelerate import PartialState
    from accelerate.utils.constants import TORCH_DISTRIBUTED_OPERATION_TYPES

    state = PartialState(cpu=dist.get_backend() == "gloo")
    if state.distributed_type not in TORCH_DISTRIBUTED_OPERATION_TYPES or state.num_processes != world_size():
        raise RuntimeError(
            f"accelerate's PartialState ({state.distributed_type}, {state.num_processes} process(es)) does not "
            f"describe the torch.distributed group of {world_size()} processes; launch with torchrun or "
            "accelerate launch, and build no PartialState before the process group exists"
        )
    return state


# world_size and rank read the live group, not PartialState.num_processes / process_index: those are a copy taken
# when the singleton was built, from the launcher's environment, and can disagree with the group (one built before
# the group, or after release()).
def world_size() -> int:
    """Number of processes in the default group, 1 without one."""
    return dist.get_world_size() if _initialized() else 1


def rank() -> int:
    """This process's rank in the default group, 0 without one."""
    return dist.get_rank() if _initialized() else 0


def is_main_process() -> bool:
    """True on the process that writes shared files (rank 0)."""
    return rank() == 0


def all_reduce_sum_(tensors: Iterable[torch.Tensor]) -> None:
    """Sum each tensor in place across ranks. Every rank must call this with the same tensors in the same order."""
    if world_size() == 1:
        return
    for tensor in tensors:
        # torch, not accelerate.utils.reduce: reduce clones each tensor and returns the sum, a second copy of
        # every tensor (importance sums as large as the weights) and a copy back to keep this in place.
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def barrier() -> None:
    """Wait for every rank (``PartialState.wait_for_everyone``); a no-op in a single process."""
    if world_size() > 1:
        _state().wait_for_everyone()


def release() -> None:
    """End a successful multi-process run: drop what still holds the group (a DDP reducer in a reference cycle,
    DTensor's plan caches, which keep every device mesh they saw), wait for every rank, destroy the default
    group. A process that exits with a live gloo group can abort in its destructor (a gloo thread freeing a
    tensor after the interpreter is gone) and turn a finished run into a failed one. A no-op without a group."""
    if not _initialized():
        return
    _clear_dtensor_cache()
    gc.collect()
    barrier()
    # torch, not PartialState.destroy_process_group: that one leaves the group alive under notebook_launcher.
    dist.destroy_process_group()


def _clear_dtensor_cache() -> None:
    """Empty DTensor's module-level caches of sharding and redistribution plans: their entries hold device
    meshes, and a mesh holds its process group. Private and version-dependent, so each is cleared only if
    present."""
    try:
        from torch.distributed.tensor import _redistribute, debug
    except ImportError:  # torch before 2.5: DTensor under another path, no FSDP2 without the Trainer there
        return
    for clear in (
        getattr(debug, "_clear_sharding_prop_cache", None),
        getattr(_redistribute, "clear_redistribute_planner_cache", None),
        getattr(getattr(_redistribute, "_gen_transform_infos", None), "cache_clear", None),
    ):
        if clear is not None:
            clear()


def broadcast_(tensor: torch.Tensor, src: int) -> None:
    """Overwrite ``tensor`` in place on every rank with rank ``src``'s (``accelerate.utils.broadcast``); a no-op in
    a single process. Under NCCL ``tensor`` must be on this rank's GPU."""
    if world_size() > 1:
        from accelerate.utils import broadcast

        _state()  # refuses a PartialState that would skip the broadcast
        broadcast(tensor, from_process=src)


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of ``items`` (every ``world_size()``-th item from ``rank()``); all of them in one process."""
    return list(items[rank() :: world_size()])


def _collective_device(tensor: torch.Tensor, state: PartialState) -> torch.device:
    """Where ``accelerate.utils.gather`` can take ``tensor``: any device on gloo; otherwise this rank's device,
    where it allocates the gathered tensor (NCCL moves only CUDA tensors)."""
    return tensor.device if state.backend == "gloo" else state.device


def gather_examples(tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along ``dim`` in rank order, on ``tensor``'s device; ranks may hold
    different numbers of examples (none included) but must agree on the other dimensions and the dtype. Every
    rank must call it. Two ``accelerate.utils.gather`` calls: the lengths, then the examples padded to the
    longest (``pad_across_processes`` would gather the lengths a second time)."""
    if world_size() == 1:
        return tensor
    from accelerate.utils import gather

    state = _state()
    device = _collective_device(tensor, state)
    moved = tensor.movedim(dim, 0).contiguous().to(device)
    sizes = gather(torch.tensor([moved.shape[0]], device=device)).tolist()
    longest = max(sizes)
    if longest == 0:  # every rank agrees: no second gather (NCCL cannot reshape an empty gather)
        return tensor.clone()
    padded = moved.new_zeros(longest, *moved.shape[1:])
    padded[: moved.shape[0]] = moved
    parts = gather(padded).view(len(sizes), longest, *moved.shape[1:])
    return torch.cat([part[:size] for part, size in zip(parts, sizes)]).movedim(0, dim).to(tensor.device)


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
