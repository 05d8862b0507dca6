"""WaRP's gradient readers under FSDP2 (``fully_shard`` per block and at the root) on gloo, without the Trainer.

A tiny Llama classifier; the targets' weights are reparameterized in a fixed random basis through the leaf weight
(:class:`~hf_ext.warp.leaf.LeafReparameterization`), every other parameter frozen. Phase 2: 3 SGD steps on a global
batch of 16 with step importance, element-wise and per input direction; masks from it (element/global and
input/per_layer, keep 0.3); merge. Phase 3, once per mask layout from phase 2's weights: the coefficients again with
the masks frozen (:class:`~hf_ext.warp.masking.MaskedUpdate`), 3 SGD steps. Rank 0 writes OUT.safetensors (the
importance, the masks, the coefficients before and after each phase 3, whole) and in its metadata the row ranges
each rank held and whether every rank's frozen entries stayed bit-identical. up_proj's 91 rows split 46/45.

python warp_fsdp2.py OUT                                   # reference: one process, no sharding
torchrun --standalone --nproc_per_node 2 warp_fsdp2.py OUT  # two ranks, 8 examples each, sharded weights
"""

import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from hf_ext import distributed, sharding
from hf_ext.config import DataArguments
from hf_ext.data import prepare_data
from hf_ext.io import save_tensors
from hf_ext.models import tiny_model
from hf_ext.targets import find_blocks
from hf_ext.warp.arms import layout_masks
from hf_ext.warp.importance import ImportanceAccumulator
from hf_ext.warp.leaf import LeafReparameterization
from hf_ext.warp.masking import MaskedUpdate

TARGETS = ("self_attn.o_proj", "mlp.up_proj", "mlp.down_proj")
LAYOUTS = ("element/global", "input/per_layer")
BATCH, STEPS, LR, KEEP = 16, 3, 0.3, 0.3


def train(model, leaf, data, first_row, masked=None, accumulators=()) -> None:
    optimizer = torch.optim.SGD(list(leaf.coefficients.values()), lr=LR)
    share = BATCH // distributed.world_size()
    for step in range(STEPS):
        start = first_row + BATCH * step + distributed.rank() * share
        rows = [data.train[start + i] for i in range(share)]
        model(**data.collator(rows)).loss.backward()  # mean over this rank's rows; FSDP2 averages over ranks
        leaf.project_grads_()
        if masked is not None:
            masked.zero_frozen_grads_()
        for accumulator in accumulators:
            accumulator.update()
        optimizer.step()
        if masked is not None:
            masked.restore_()
        optimizer.zero_grad()
        leaf.form_weights_()


def main(out: str) -> None:
    sharded = "WORLD_SIZE" in os.environ
    if sharded:
        dist.init_process_group("gloo")
    fit_and_save(out, sharded)
    distributed.release()  # once the sharded model is gone: see release()


def fit_and_save(out: str, sharded: bool) -> None:
    model, tokenizer = tiny_model("llama", "seq_cls", seed=1, num_hidden_layers=2, intermediate_size=91)
    data = prepare_data(DataArguments(max_train_samples=96, max_eval_samples=8), tokenizer, "seq_cls")
    names = [f"model.layers.{i}.{t}" for i in range(2) for t in TARGETS]
    generator = torch.Generator().manual_seed(0)
    bases = {}
    for name in names:
        d_in = model.get_submodule(name).in_features
        bases[name] = torch.linalg.qr(torch.randn(d_in, d_in, generator=generator, dtype=torch.float64))[0].float()
    model.requires_grad_(False)
    if sharded:
        for block in find_blocks(model)[1]:
            fully_shard(block)
        fully_shard(model)
    rows = {}
    for name in names:
        weight = model.get_submodule(name).weight
        rows[name] = sharding.row_range(weight)
        if sharded:  # the rows the helper names are the rows DTensor holds
            shape, offset = compute_local_shape_and_global_offset(weight.shape, weight.device_mesh, weight.placements)
            assert (offset[0], offset[0] + shape[0]) == rows[name], (name, rows[name], offset, shape)

    leaf = LeafReparameterization(model, bases)
    accumulator = ImportanceAccumulator(leaf.coefficients, granularity="element", statistic="step")
    per_direction = ImportanceAccumulator(leaf.coefficients, granularity="input", statistic="step")
    train(model, leaf, data, 0, accumulators=[accumulator, per_direction])
    importance = accumulator.mean()
    masks = {layout: layout_masks(importance, KEEP, layout)[0] for layout in LAYOUTS}
    leaf.merge()

    phase2_weights = {name: sharding.local(model.get_submodule(name).weight).detach().clone() for name in names}
    tensors, unchanged = {}, True
    for layout, layout_mask in masks.items():
        with torch.no_grad():
            for name, weight in phase2_weights.items():
                sharding.local(model.get_submodule(name).weight).copy_(weight)
        leaf = LeafReparameterization(model, bases, masks=layout_mask)
        before = {name: sharding.full(c.detach()).clone() for name, c in leaf.coefficients.items()}
        masked = MaskedUpdate(leaf.coefficients, layout_mask)
        train(model, leaf, data, BATCH * STEPS, masked=masked)
        unchanged &= masked.unchanged()
        for name, c in leaf.coefficients.items():
            tensors[f"{name}.{layout}.mask"] = sharding.full(layout_mask[name])
            tensors[f"{name}.{layout}.before"] = before[name]
            tensors[f"{name}.{layout}.after"] = sharding.full(c.detach())
        leaf.merge()
    unchanged = torch.tensor([int(unchanged)])
    if sharded:
        dist.all_reduce(unchanged, op=dist.ReduceOp.MIN)
    per_direction = per_direction.mean()
    for name in names:
        tensors[f"{name}.importance"] = sharding.full(importance[name])
        tensors[f"{name}.input_importance"] = per_direction[name]
    every_rows = [None] * distributed.world_size()
    if sharded:
        dist.all_gather_object(every_rows, rows)
    else:
        every_rows = [rows]
    if distributed.is_main_process():
        record = {"rows": every_rows, "frozen_unchanged": bool(unchanged.item())}
        save_tensors(f"{out}.safetensors", {k: v.contiguous() for k, v in tensors.items()}, record)


if __name__ == "__main__":
    main(*sys.argv[1:])
