"""LoRA-Null calibration of a tiny model over fixed batches, split across however many ranks run this.

python lora_null_calibration.py OUT.safetensors                      # one process, all batches
torchrun --nproc_per_node 2 lora_null_calibration.py OUT.safetensors  # each rank takes every 2nd batch
"""

import os
import sys

import torch.distributed as dist
from peft import LoraConfig, get_peft_model

from hf_ext import distributed
from hf_ext.io import save_tensors
from hf_ext.lora_null.init import initialize_lora_null_weights
from hf_ext.models import tiny_model
from hf_ext.texts import load_texts, text_batches


def main(out: str) -> None:
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("gloo")
    model, tokenizer = tiny_model("qwen2", seed=3)
    _, texts = load_texts("builtin:topic", limit=96)
    batches = text_batches(tokenizer, texts, batch_size=6, max_length=32)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "down_proj"]))
    init = initialize_lora_null_weights(
        peft_model, batches[distributed.rank() :: distributed.world_size()], progress=False
    )
    if distributed.is_main_process():
        tensors = {n: p for n, p in peft_model.named_parameters() if "lora_A" in n}
        save_tensors(out, tensors, {"world_size": distributed.world_size(), "init": init.to_dict()})
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
