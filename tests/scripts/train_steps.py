"""A few SGD steps of HfExtTrainer on a tiny model with dropout off; rank 0 saves the weights and losses.

python train_steps.py OUT.safetensors TASK_TYPE PER_DEVICE_BATCH GRAD_ACCUM
torchrun --standalone --nproc_per_node 2 train_steps.py OUT.safetensors TASK_TYPE PER_DEVICE_BATCH GRAD_ACCUM
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


def main(out: str, task_type: str, batch_size: int, grad_accum: int) -> None:
    architecture, task = ("bert", "builtin:sentiment") if task_type == "seq_cls" else ("llama", "builtin:safety")
    model, tokenizer = tiny_model(
        architecture, task_type, seed=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    data = prepare_data(
        DataArguments(dataset_name=task, max_train_samples=96, max_eval_samples=8), tokenizer, task_type
    )
    args = TrainingArguments(
        output_dir="/tmp/hf_ext_train_steps",
        max_steps=3,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=grad_accum,
        optim="sgd",
        learning_rate=0.5,
        max_grad_norm=0.0,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=7,
        dataloader_drop_last=True,
    )
    trainer = HfExtTrainer(model=model, args=args, train_dataset=data.train, data_collator=data.collator)
    trainer.train()
    if distributed.is_main_process():
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        save_tensors(out, dict(model.named_parameters()), {"losses": losses, "world_size": distributed.world_size()})
    del trainer
    distributed.release()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
