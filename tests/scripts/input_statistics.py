"""Input statistics of a tiny model over fixed batches, split across however many ranks run this.

Accumulates in float64 so that one process and two agree to rounding, whatever the summation order.

    python input_statistics.py OUT.safetensors                      # one process, all batches
    torchrun --nproc_per_node 2 input_statistics.py OUT.safetensors  # each rank takes every 2nd batch

Rank 0 writes the statistics to OUT; every rank also writes the eigenbases it ended with to OUT.rank<r>.safetensors.
"""

import os
import sys

import torch
import torch.distributed as dist

from hf_ext import distributed
from hf_ext.activations import collect_input_statistics, compute_bases
from hf_ext.io import save_tensors
from hf_ext.models import tiny_model
from hf_ext.targets import select_linear
from hf_ext.tasks import load_builtin_task


def main(out: str) -> None:
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("gloo")
    model, tokenizer = tiny_model("qwen2", seed=3)
    texts = load_builtin_task("topic")["validation"]["text"][:48]
    batches = [dict(tokenizer(texts[i : i + 6], padding=True, return_tensors="pt")) for i in range(0, 48, 6)]
    mine = batches[distributed.rank() :: distributed.world_size()]
    modules = select_linear(model, ["mlp.down_proj", "self_attn.q_proj"])
    stats = collect_input_statistics(model, modules, mine, compute_dtype=torch.float64, progress=False)
    if distributed.is_main_process():
        tensors = {}
        for name, s in stats.items():
            tensors |= s.state_dict(prefix=f"{name}.")
        save_tensors(out, tensors, {"world_size": distributed.world_size()})
    found, values, _ = compute_bases(model, modules, mine, compute_dtype=torch.float64, progress=False)
    tensors = {f"{n}.U": u for n, u in found.items()} | {f"{n}.eigenvalues": v for n, v in values.items()}
    save_tensors(f"{out}.rank{distributed.rank()}.safetensors", tensors, {"world_size": distributed.world_size()})
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1])
