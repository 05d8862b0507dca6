"""A representation dump of a tiny model over fixed batches, by however many ranks run this.

python drift_dump.py OUT                      # one process writes every shard
torchrun --nproc_per_node 2 drift_dump.py OUT  # rank r writes the shards i with i % 2 == r
"""

import os
import sys

import torch.distributed as dist

from hf_ext.drift.shards import dump_representations
from hf_ext.models import tiny_model
from hf_ext.texts import load_texts, text_batches


def main(out: str) -> None:
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("gloo")
    model, tokenizer = tiny_model("qwen2", seed=3)
    ids, texts = load_texts("builtin:topic", limit=45)
    batches = text_batches(tokenizer, texts, batch_size=6, max_length=32)
    dump_representations(model, batches, out, example_ids=ids, pooling="tokens", dtype="float32", progress=False)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
