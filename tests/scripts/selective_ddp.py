"""Train the last block of a tiny Llama classifier behind a no-grad prefix with gradient checkpointing, global
batch 16 split over however many ranks run this (DDP, gloo); rank 0 writes how much the prefix and the trained
block moved, how far the ranks' weights differ (OUT-result.json) and the trained weights (OUT.safetensors).

python selective_ddp.py OUT                                   # one process, batches of 16
torchrun --standalone --nproc_per_node 2 selective_ddp.py OUT  # two processes, batches of 8
"""

import copy
import os
import sys

import torch
import torch.distributed as dist
from transformers import TrainingArguments

from hf_ext import distributed
from hf_ext.config import DataArguments
from hf_ext.data import prepare_data
from hf_ext.io import save_tensors, write_json
from hf_ext.models import tiny_model
from hf_ext.selective.config import SelectiveArguments
from hf_ext.selective.selection import select_trainable
from hf_ext.trainer import HfExtTrainer


def main(out: str) -> None:
    model, tokenizer = tiny_model("llama", "seq_cls", seed=1, num_hidden_layers=3)
    data = prepare_data(DataArguments(max_train_samples=64, max_eval_samples=8), tokenizer, "seq_cls")
    model, _ = select_trainable(model, SelectiveArguments(train_layers="last:1"))
    before = copy.deepcopy(model.state_dict())
    args = TrainingArguments(
        output_dir="/tmp/hf_ext_selective_ddp",
        max_steps=3,
        per_device_train_batch_size=16 // int(os.environ.get("WORLD_SIZE", 1)),
        learning_rate=1e-2,
        gradient_checkpointing=True,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=7,
    )
    HfExtTrainer(model=model, args=args, train_dataset=data.train, data_collator=data.collator).train()
    after = model.state_dict()

    def moved(prefix: str) -> float:
        return max(float((after[k] - before[k]).abs().max()) for k in after if k.startswith(prefix))

    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(distributed.world_size())]
    if dist.is_initialized():
        dist.all_gather(gathered, flat)
    else:
        gathered = [flat]
    if distributed.is_main_process():
        write_json(
            f"{out}-result.json",  # "{out}.json" is the tensors' sidecar
            {
                "prefix_changed": max(moved("model.layers.0."), moved("model.layers.1.")),
                "trained_changed": moved("model.layers.2."),
                "max_rank_difference": max(float((g - gathered[0]).abs().max()) for g in gathered),
            },
        )
        save_tensors(f"{out}.safetensors", {k: v.contiguous() for k, v in after.items()})
    if dist.is_initialized():
        distributed.barrier()  # no rank leaves while another still talks to it
        dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
