"""Held-out scores of a WaRP run's models: classification accuracy over a subset of classes, and
greedy-generation scores for causal LMs (refusal correctness on safety prompts, label-word accuracy);
:func:`evaluate_run` scores phase 2's model and every arm's (``eval.json``, ``eval.md``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..data import PreparedData, format_prompt, uses_chat_template
from ..errors import RunDirectoryError
from ..io import write_json
from ..models import eval_mode, model_device
from ..outputs import tensorboard_writer
from ..tasks import is_refusal
from .layout import PHASE2_LABEL
from .run import WarpRun


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


def _held_out(data: PreparedData):
    return data.test if data.test is not None else data.validation


def score_model(run: WarpRun, model: PreTrainedModel) -> dict[str, float]:
    """Held-out safety and utility scores (test split, else validation) of one model."""
    batch_size = run.training_args.per_device_eval_batch_size
    scores = {}
    for task in ("safety", "utility"):
        data = run.data(task)
        if run.model_args.task_type == "seq_cls":
            held_out = _held_out(data)
            scores[f"{task}_accuracy"] = classification_accuracy(
                model, held_out, data.collator, run.classes(task), batch_size=batch_size, desc=f"{task} accuracy"
            )
            continue
        raw = data.raw["test"] if "test" in data.raw else data.raw["validation"]
        args = run.data_args
        prompts, references = raw[args.prompt_column], raw[args.response_column]
        responses = generate_responses(
            model,
            run.tokenizer,
            prompts,
            use_chat_template=uses_chat_template(run.tokenizer, args),
            max_new_tokens=run.warp_args.max_new_tokens,
            batch_size=batch_size,
        )
        if task == "safety":
            scores["safety_accuracy"] = refusal_accuracy(responses, [is_refusal(r) for r in references])
        else:
            scores["utility_accuracy"] = first_word_accuracy(responses, references)
    return scores


def evaluate_run(run: WarpRun) -> dict[str, dict[str, float]]:
    """Score phase 2's model and every arm's; writes ``eval.json`` and ``eval.md`` and returns the rows."""
    if not run.layout.model("phase2").is_dir():
        raise RunDirectoryError(f"{run.layout.model('phase2')} not found: nothing to evaluate before phase 2")
    labels = {"phase2": PHASE2_LABEL} | {arm.name: arm.label for arm in run.arms}
    rows = {}
    for name, label in labels.items():
        if run.layout.model(name).is_dir() or (name != "phase2" and run.layout.delta(name).is_file()):
            rows[name] = {"label": label, **score_model(run, run.load_model(name))}
    reference = rows["phase2"]["safety_accuracy"]
    for row in rows.values():
        row["safety_retention"] = row["safety_accuracy"] / reference if reference else float("nan")
    write_json(run.layout.eval_json, rows)
    run.layout.eval_md.write_text(format_table(rows) + "\n", encoding="utf-8")
    writer = tensorboard_writer(run.training_args, run.layout.phase_dir("eval"))
    if writer is not None:
        writer.add_text("eval/held_out", format_table(rows))
        writer.close()
    return rows


def format_table(rows: dict[str, dict[str, float]]) -> str:
    lines = ["| model | safety accuracy | safety retention | utility accuracy |", "| --- | --- | --- | --- |"]
    for row in rows.values():
        lines.append(
            f"| {row['label']} | {row['safety_accuracy']:.3f} | "
            f"{row['safety_retention']:.3f} | {row['utility_accuracy']:.3f} |"
        )
    return "\n".join(lines)
