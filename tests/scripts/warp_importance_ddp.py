"""Micro-batch importance under DDP (2 processes, gloo): each rank backpropagates 2 of 4 examples, one at a time,
through the DDP-wrapped model; rank 0 saves the importance (the test compares it with the mean of the 4
single-example gradients). The tensor hooks read each rank's own gradient, before DDP averages it.

torchrun --standalone --nproc_per_node 2 warp_importance_ddp.py OUT.safetensors TARGET,TARGET
"""

import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from hf_ext import distributed
from hf_ext.config import DataArguments
from hf_ext.data import prepare_data
from hf_ext.io import save_tensors
from hf_ext.models import tiny_model
from hf_ext.warp.importance import ImportanceAccumulator
from hf_ext.warp.reparam import coefficient_parameters, reparameterize


def main(out: str, targets: str) -> None:
    dist.init_process_group("gloo")
    model, tokenizer = tiny_model("bert", "seq_cls", seed=0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    bases = {}
    for i, name in enumerate(targets.split(",")):
        d_in = model.get_submodule(name).in_features
        bases[name] = torch.linalg.qr(torch.randn(d_in, d_in, generator=torch.Generator().manual_seed(i)))[0]
    params = coefficient_parameters(reparameterize(model, bases))
    for p in model.parameters():
        p.requires_grad_(False)
    for p in [*params.values(), *model.classifier.parameters()]:
        p.requires_grad_(True)
    data = prepare_data(
        DataArguments(dataset_name="builtin:sentiment", max_train_samples=4, max_eval_samples=8), tokenizer, "seq_cls"
    )
    accumulator = ImportanceAccumulator(params)
    ddp = DistributedDataParallel(model)
    for index in range(distributed.rank(), 4, distributed.world_size()):
        ddp(**data.collator([data.train[index]])).loss.backward()
        accumulator.update()
        model.zero_grad()
    importance = accumulator.mean()  # every rank
    if distributed.is_main_process():
        save_tensors(out, importance, {"micro_batches_here": accumulator.micro_batches})
    dist.barrier()
    # Free DDP's reducer while the group is alive: freed after destroy_process_group (when main returns), its
    # gloo group's destructor can wait forever on a peer that has already exited.
    del ddp
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
