"""Under DDP (2 processes, gloo), how many buffer elements are broadcast per forward of a tiny Llama whose
down projection is reparameterized, with the basis kept out of the broadcast (ours) and without (control).

torchrun --standalone --nproc_per_node 2 warp_ddp_buffers.py OUT.json
"""

import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from hf_ext.io import write_json
from hf_ext.models import tiny_model
from hf_ext.warp.reparam import DDP_IGNORE, reparameterize


def broadcast_per_forward(keep_basis_out: bool) -> int:
    model, tokenizer = tiny_model("llama", seed=0)
    basis = torch.linalg.qr(torch.randn(128, 128, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
    reparameterize(model, {"model.layers.0.mlp.down_proj": basis})
    if not keep_basis_out:
        delattr(model, DDP_IGNORE)
    ddp = DistributedDataParallel(model)
    sent = []
    original = ddp._distributed_broadcast_coalesced

    def spy(tensors, buffer_size, authoritative_rank=0):
        sent.append(sum(t.numel() for t in tensors))
        return original(tensors, buffer_size, authoritative_rank)

    ddp._distributed_broadcast_coalesced = spy
    batch = tokenizer(["a good film", "a bad film"], return_tensors="pt", padding=True)
    for _ in range(2):
        ddp(**batch, labels=batch["input_ids"]).loss.backward()
    return sum(sent) // 2


def main(out: str) -> None:
    dist.init_process_group("gloo")
    ours, control = broadcast_per_forward(True), broadcast_per_forward(False)
    if dist.get_rank() == 0:
        write_json(out, {"ours": ours, "control": control, "basis": 128 * 128})
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
