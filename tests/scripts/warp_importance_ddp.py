"""Micro-batch importance under DDP: 2 processes x batch 1, 2 steps at lr 0 over 4 examples; rank 0 saves the
importance (the test compares it with the mean of the 4 single-example gradients).

torchrun --standalone --nproc_per_node 2 warp_importance_ddp.py OUT.safetensors
"""

import sys

import torch
from transformers import TrainingArguments

from hf_ext import distributed
from hf_ext.config import DataArguments
from hf_ext.data import prepare_data
from hf_ext.io import save_tensors
from hf_ext.models import tiny_model
from hf_ext.trainer import HfExtTrainer
from hf_ext.warp.callbacks import ImportanceCallback
from hf_ext.warp.importance import ImportanceAccumulator
from hf_ext.warp.reparam import coefficient_parameters, reparameterize

TARGETS = sys.argv[2].split(",")


def main(out: str) -> None:
    model, tokenizer = tiny_model("bert", "seq_cls", seed=0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    bases = {}
    for i, name in enumerate(TARGETS):
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
    args = TrainingArguments(
        output_dir="/tmp/hf_ext_importance_ddp",
        max_steps=2,
        per_device_train_batch_size=1,
        learning_rate=0.0,
        optim="sgd",
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=3,
    )
    trainer = HfExtTrainer(model=model, args=args, train_dataset=data.train, data_collator=data.collator)
    trainer.add_callback(ImportanceCallback(accumulator))
    trainer.train()
    importance = accumulator.mean()  # every rank
    if distributed.is_main_process():
        save_tensors(out, importance, {"micro_batches_here": accumulator.micro_batches})
    distributed.barrier()  # no rank leaves while another still talks to it
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
