"""Selective training under FSDP2 (``fully_shard`` per block and at the root) on gloo: the last block of a tiny
Llama classifier trains behind the no-grad prefix, 3 SGD steps on a global batch of 16. Rank 0 writes the full
trained weights (OUT.safetensors) and how much the frozen prefix moved.

python selective_fsdp2.py OUT                                   # reference: one process, no sharding
torchrun --standalone --nproc_per_node 2 selective_fsdp2.py OUT  # two ranks, 8 examples each, sharded weights
"""

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from hf_ext import distributed
from hf_ext.config import DataArguments
from hf_ext.data import prepare_data
from hf_ext.io import save_tensors
from hf_ext.models import tiny_model
from hf_ext.selective.config import SelectiveArguments
from hf_ext.selective.selection import select_trainable
from hf_ext.targets import find_blocks


def main(out: str) -> None:
    sharded = "WORLD_SIZE" in os.environ
    if sharded:
        dist.init_process_group("gloo")
    train_and_save(out, sharded)
    distributed.release()  # once the sharded model is gone: see release()
    assert not gloo_threads(), f"the gloo group outlived release(): {gloo_threads()}"


def gloo_threads() -> list[str]:
    """This process's gloo threads (Linux names them in /proc); a group freed at interpreter exit instead of in
    release() can abort the process from one of them."""
    names = (Path(task, "comm").read_text().strip() for task in Path("/proc/self/task").iterdir())
    return [name for name in names if "gloo" in name]


def train_and_save(out: str, sharded: bool) -> None:
    model, tokenizer = tiny_model("llama", "seq_cls", seed=1, num_hidden_layers=3)
    data = prepare_data(DataArguments(max_train_samples=48, max_eval_samples=8), tokenizer, "seq_cls")
    model, _ = select_trainable(model, SelectiveArguments(train_layers="last:1"))
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if sharded:
        for block in find_blocks(model)[1]:
            fully_shard(block)
        fully_shard(model)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    share = 16 // distributed.world_size()
    for step in range(3):
        rows = [data.train[16 * step + distributed.rank() * share + i] for i in range(share)]
        model(**data.collator(rows)).loss.backward()  # mean over this rank's rows; FSDP2 averages over ranks
        optimizer.step()
        optimizer.zero_grad()
    after = {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach() for k, v in model.state_dict().items()}
    if distributed.is_main_process():
        prefix = [k for k in after if k.startswith(("model.layers.0.", "model.layers.1.", "model.embed"))]

        def moved(names):
            return max(float((after[k] - before[k]).abs().max()) for k in names)

        trained = [k for k in after if k.startswith("model.layers.2.")]
        record = {"prefix_moved": moved(prefix), "trained_moved": moved(trained)}
        save_tensors(f"{out}.safetensors", {k: v.contiguous() for k, v in after.items()}, record)


if __name__ == "__main__":
    main(*sys.argv[1:])
