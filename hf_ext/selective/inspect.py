"""What one training forward pass records, block by block: trainable parameters, autograd nodes and the
bytes of tensors saved for backward, so a user sees that a no-grad prefix holds nothing.

Saved tensors are seen through ``torch.autograd.graph.saved_tensors_hooks`` and counted once per
storage (views and tensors saved by several nodes share it); parameters saved for backward are
listed apart, since they take no memory of their own. Nodes are found by walking back from every
new tensor's ``grad_fn`` during the forward, each node counted once, in the block that created it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..models import model_device
from ..targets import find_blocks

BEFORE, AFTER = "before blocks", "after blocks"


@dataclass
class BlockRecord:
    """One row of the report: a block (``index``) or the code before/after the blocks (``index`` None)."""

    name: str
    index: int | None
    trainable_parameters: int = 0
    autograd_nodes: int = 0
    saved_tensors: int = 0
    saved_bytes: int = 0
    saved_parameter_bytes: int = 0


@dataclass
class GraphReport:
    """Per-block records of one forward pass plus the loss it produced."""

    rows: list[BlockRecord]
    loss: float
    storages: dict[int, int] = field(default_factory=dict, repr=False)

    def block(self, index: int) -> BlockRecord:
        return next(r for r in self.rows if r.index == index)

    @property
    def saved_bytes(self) -> int:
        """Bytes of distinct non-parameter storages saved for backward in the whole pass."""
        return sum(self.storages.values())

    @property
    def autograd_nodes(self) -> int:
        return sum(r.autograd_nodes for r in self.rows)


class _Tracker(TorchFunctionMode):
    def __init__(self, report: dict[str, BlockRecord], parameters: set[int]):
        super().__init__()
        self.records = report
        self.where = [BEFORE]
        self.seen: set[int] = set()
        self.owner_of_storage: dict[int, str] = {}
        self.storages: dict[int, int] = {}
        self.parameters = parameters
        self.keep: list = []  # nodes stay alive while counted, so ids are not reused

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for value in _tensors(result):
            self._discover(value.grad_fn)
        return result

    def _discover(self, node) -> None:
        stack = [node]
        while stack:
            node = stack.pop()
            if node is None or id(node) in self.seen:
                continue
            self.seen.add(id(node))
            self.keep.append(node)
            self.records[self.where[-1]].autograd_nodes += 1
            stack.extend(next_node for next_node, _ in node.next_functions)

    def pack(self, tensor: torch.Tensor):
        record = self.records[self.where[-1]]
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self.parameters:
            record.saved_parameter_bytes += storage.nbytes() if key not in self.owner_of_storage else 0
            self.owner_of_storage.setdefault(key, record.name)
        elif key not in self.owner_of_storage:
            self.owner_of_storage[key] = record.name
            self.storages[key] = storage.nbytes()
            record.saved_tensors += 1
            record.saved_bytes += storage.nbytes()
        return tensor


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)


def inspect_graph(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> GraphReport:
    """Run ``model(**batch)`` once in training mode and report, per transformer block, its trainable
    parameters, the autograd nodes it created and the tensors it saved for backward.

    ``batch`` must make the model return a loss (include ``labels``). The graph is freed afterwards;
    no gradient is computed and no weight changes.
    """
    name, blocks = find_blocks(model)
    records = {BEFORE: BlockRecord(BEFORE, None)}
    for index in range(len(blocks)):
        records[f"{name}.{index}"] = BlockRecord(f"block {index}", index)
    records[AFTER] = BlockRecord(AFTER, None)
    _count_trainable(model, name, len(blocks), records)
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    tracker = _Tracker(records, parameters)
    handles = []
    for index, block in enumerate(blocks):
        key = f"{name}.{index}"
        handles.append(block.register_forward_pre_hook(lambda *_, key=key: tracker.where.append(key)))
        handles.append(block.register_forward_hook(lambda m, a, output: _leave(tracker, output), always_call=True))
    device = model_device(model)
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    was_training = model.training
    model.train()
    try:
        with torch.autograd.graph.saved_tensors_hooks(tracker.pack, lambda t: t), tracker:
            output = model(**batch)
        if getattr(output, "loss", None) is None:
            raise ValueError("the batch gives no loss: include 'labels' so the pass records a training graph")
        loss = float(output.loss.detach())
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    del output
    tracker.keep.clear()
    return GraphReport(list(records.values()), loss, tracker.storages)


def _leave(tracker: _Tracker, output) -> None:
    for value in _tensors(output):  # nodes made outside torch functions (a reentrant checkpoint's) belong here
        tracker._discover(value.grad_fn)
    tracker.where.pop()
    if len(tracker.where) == 1:
        tracker.where[0] = AFTER


def _count_trainable(model: nn.Module, blocks_name: str, count: int, records: dict[str, BlockRecord]) -> None:
    seen_blocks = False
    for parameter_name, parameter in model.named_parameters():
        block = _block_of(parameter_name, blocks_name, count)
        if block is not None:
            seen_blocks = True
            key = f"{blocks_name}.{block}"
        else:
            key = AFTER if seen_blocks and "embed" not in parameter_name else BEFORE
        if parameter.requires_grad:
            records[key].trainable_parameters += parameter.numel()


def _block_of(parameter_name: str, blocks_name: str, count: int) -> int | None:
    marker = blocks_name + "."
    position = parameter_name.find(marker)
    if position < 0:
        return None
    index = parameter_name[position + len(marker) :].split(".", 1)[0]
    return int(index) if index.isdigit() and int(index) < count else None


def format_report(report: GraphReport, prefix_blocks: int | None = None) -> str:
    """A fixed-width table of the report (bytes in MiB), with totals."""
    mib = 2**20
    lines = [
        f"{'where':<16} {'trainable':>11} {'nodes':>7} {'saved':>6} {'saved MiB':>10} {'params saved MiB':>17}",
    ]
    for row in report.rows:
        mark = " (no-grad prefix)" if prefix_blocks and row.index is not None and row.index < prefix_blocks else ""
        lines.append(
            f"{row.name:<16} {row.trainable_parameters:>11,} {row.autograd_nodes:>7} {row.saved_tensors:>6} "
            f"{row.saved_bytes / mib:>10.3f} {row.saved_parameter_bytes / mib:>17.3f}{mark}"
        )
    total = sum(r.trainable_parameters for r in report.rows)
    lines.append(
        f"{'total':<16} {total:>11,} {report.autograd_nodes:>7} {sum(r.saved_tensors for r in report.rows):>6} "
        f"{report.saved_bytes / mib:>10.3f}"
    )
    lines.append(f"loss {report.loss:.4f}")
    return "\n".join(lines)
