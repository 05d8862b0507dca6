"""Held-out scores of a trained model: classification accuracy over a subset of classes, and
greedy-generation scores for causal LMs (refusal correctness on safety prompts, label-word accuracy).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .data import format_prompt
from .models import eval_mode, model_device
from .tasks import is_refusal


@torch.no_grad()
def classification_accuracy(
    model: PreTrainedModel,
    dataset,
    collator,
    class_ids: Sequence[int],
    *,
    batch_size: int = 128,
    desc: str = "accuracy",
) -> float:
    """Accuracy of a classifier whose prediction is the argmax over ``class_ids`` only.

    A classifier trained on two tasks with one head (their classes side by side) is scored on each
    task among that task's classes.
    """
    device = model_device(model)
    ids = torch.tensor(list(class_ids), device=device)
    correct = total = 0
    with eval_mode(model):
        for batch in tqdm(DataLoader(dataset, batch_size=batch_size, collate_fn=collator), desc=desc, leave=False):
            batch = {k: v.to(device) for k, v in batch.items()}
            labels = batch.pop("labels")
            predicted = ids[model(**batch).logits[:, ids].argmax(-1)]
            correct += int((predicted == labels).sum())
            total += labels.numel()
    return correct / total


@torch.no_grad()
def generate_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    use_chat_template: bool = False,
    max_new_tokens: int = 16,
    batch_size: int = 64,
) -> list[str]:
    """Greedy responses to ``prompts`` (formatted as in training), decoded without special tokens."""
    device = model_device(model)
    left = copy.copy(tokenizer)
    left.padding_side = "left"
    responses = []
    with eval_mode(model):
        for start in tqdm(range(0, len(prompts), batch_size), desc="generate", leave=False):
            texts = [format_prompt(tokenizer, p, use_chat_template) for p in prompts[start : start + batch_size]]
            inputs = left(texts, return_tensors="pt", padding=True, add_special_tokens=not use_chat_template).to(
                device
            )
            output = model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            responses += tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return responses


def refusal_accuracy(responses: Sequence[str], must_refuse: Sequence[bool]) -> float:
    """Share of responses that refuse exactly when they must (see :func:`hf_ext.tasks.is_refusal`)."""
    return sum(is_refusal(r) == bool(m) for r, m in zip(responses, must_refuse, strict=True)) / len(responses)


def first_word_accuracy(responses: Sequence[str], references: Sequence[str]) -> float:
    """Share of responses whose first word equals the reference's first word (case-insensitive)."""

    def first(text: str) -> str:
        words = text.strip().lower().split()
        return words[0].strip(".,!?;:") if words else ""

    return sum(first(r) == first(t) for r, t in zip(responses, references, strict=True)) / len(responses)
