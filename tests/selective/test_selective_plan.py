"""The selective fine-tune's memory plan against the tensors a run allocates (weights with adapters, gradients and
AdamW state after one step) on the MiniLM LoRA and tiny Qwen2 full-block configs."""

from pathlib import Path

import pytest
import torch
from plan_util import storage_bytes

from hf_ext import DataArguments, HfExtTrainingArguments, ModelArguments, SelectiveArguments
from hf_ext.models import load_model, load_tokenizer
from hf_ext.parsing import parse_config
from hf_ext.plan import label_names
from hf_ext.selective.plan import plan
from hf_ext.selective.selection import select_trainable

CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "configs"


@pytest.mark.parametrize("config", ["seq_cls_minilm_lora_last2.json", "seq_cls_tiny_qwen2_last_block.json"])
def test_planned_static_bytes_equal_the_allocated_ones(config):
    args = parse_config(
        (ModelArguments, DataArguments, SelectiveArguments, HfExtTrainingArguments),
        [str(CONFIGS / config), "output_dir=unused", "report_to=[]"],
    )
    model_args, data_args, selective, _ = args
    (stage,) = plan(args, launcher="ddp", num_processes=1).stages
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    labels = label_names(data_args, "seq_cls")
    model, _ = select_trainable(load_model(model_args, tokenizer, labels), selective, "seq_cls")
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3, fused=True)
    batch = tokenizer(["a short sentence", "and another, a little longer one"], padding=True, return_tensors="pt")
    model(**batch, labels=torch.tensor([0, 1])).loss.backward()
    optimizer.step()
    assert stage.bytes_of("weights") == storage_bytes(model.parameters())
    assert stage.bytes_of("gradients") == storage_bytes(p.grad for p in trainable)
    state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    assert stage.bytes_of("optimizer state") == storage_bytes(state)
