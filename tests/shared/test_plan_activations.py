"""The plan's activations of a training step, counted on the meta device, against the tensors autograd really saves
for the backward (parameters left out) on a full-length batch in train mode: a full fine-tune of MiniLM (dropout
masks, the CPU's fused attention), a tiny Llama causal LM, and LoRA adapters on a frozen MiniLM."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from hf_ext.config import ModelArguments
from hf_ext.models import load_model, load_tokenizer, tiny_model
from hf_ext.plan import local_tokenizer, meta_batch, meta_model, saved_activation_bytes


def saved_for_backward(model, batch) -> int:
    own = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    saved, alive = {}, []

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in own:
            saved[storage.data_ptr()] = storage.nbytes()
            alive.append(tensor)
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(**batch)
    return sum(saved.values())


def real_batch(model, size, length):
    return {
        k: torch.zeros_like(v, device="cpu") + (5 if k == "input_ids" else 0)
        for k, v in meta_batch(model, size, length).items()
    }


def lora(model):
    return get_peft_model(model, LoraConfig(r=4, target_modules=["query", "value"], task_type="SEQ_CLS"))


@pytest.mark.parametrize("adapters", [False, True], ids=["full fine-tune", "lora"])
def test_minilm_saves_what_the_meta_count_says(adapters):
    args = ModelArguments(model_name_or_path="embedded:minilm", task_type="seq_cls")
    real = load_model(args, load_tokenizer(args.model_name_or_path), ["a", "b"])
    meta = meta_model(args, local_tokenizer(args), ["a", "b"])
    if adapters:
        real, meta = lora(real), lora(meta)
    assert saved_activation_bytes(meta, 3, 20) == saved_for_backward(real, real_batch(real, 3, 20))


def test_a_causal_lm_saves_what_the_meta_count_says():
    real, _ = tiny_model("llama", "causal_lm")
    with torch.device("meta"):
        meta, _ = tiny_model("llama", "causal_lm")
    assert saved_activation_bytes(meta, 2, 16) == saved_for_backward(real, real_batch(real, 2, 16))
