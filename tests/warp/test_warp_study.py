"""The WaRP study's wiring: the class subset of each phase is chosen by task name, restrictions do not stack."""

import dataclasses

import torch
from transformers import TrainingArguments

from hf_ext.config import DataArguments, ModelArguments
from hf_ext.warp.config import WarpArguments
from hf_ext.warp.layout import WarpLayout
from hf_ext.warp.phases import _trainer, restrict_classes
from hf_ext.warp.run import WarpRun


def _run(tmp_path) -> WarpRun:
    data = DataArguments(dataset_name="builtin:sentiment", max_train_samples=16, max_eval_samples=8)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, max_steps=1)
    return WarpRun.build(
        ModelArguments(model_name_or_path="tiny:bert"), data, WarpArguments(targets=["output.dense"]), args
    )


def _allowed_classes(model, batch) -> set[int]:
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    return set(torch.nonzero(logits[0] > torch.finfo(logits.dtype).min).flatten().tolist())


def test_restrict_classes_replaces_the_previous_restriction():
    from hf_ext.models import tiny_model

    model, tokenizer = tiny_model("bert", "seq_cls", num_labels=4)
    batch = dict(tokenizer(["a short text"], return_tensors="pt"))
    restrict_classes(model, [0, 1])
    assert _allowed_classes(model, batch) == {0, 1}
    restrict_classes(model, [2, 3])
    assert _allowed_classes(model, batch) == {2, 3}
    assert len(model.classifier._forward_hooks) == 1


def test_phase_trainers_pick_the_task_by_name_not_by_dataset_identity(tmp_path):
    run = _run(tmp_path)
    assert run.labels == ["safety:benign", "safety:harmful", "utility:negative", "utility:positive"]
    # A copy of the safety data (what dataclasses.replace or a user's wrapper produces) is still the safety task.
    run = dataclasses.replace(run, safety=dataclasses.replace(run.safety))
    model = run.load_model()
    batch = next(iter(torch.utils.data.DataLoader(run.safety.train, batch_size=2, collate_fn=run.safety.collator)))
    trainer = _trainer(run, model, "phase2", "safety", [])
    assert trainer.train_dataset is run.safety.train and _allowed_classes(model, batch) == {0, 1}
    trainer = _trainer(run, model, "phase3", "utility", [])
    assert trainer.train_dataset is run.utility.train and _allowed_classes(model, batch) == {2, 3}
    assert trainer.args.output_dir == str(WarpLayout(tmp_path).phase_dir("phase3"))


def test_layout_names_every_documented_file(tmp_path):
    layout = WarpLayout(tmp_path)
    relative = {
        str(p.relative_to(tmp_path))
        for p in (
            layout.config,
            layout.basis,
            layout.metadata("phase1"),
            layout.model("phase2"),
            layout.importance,
            layout.masks,
            layout.coefficients,
            layout.arm_masks("phase3_random"),
            layout.delta("plain"),
            layout.eval_json,
            layout.eval_md,
            layout.figure,
            layout.seed_dir(43),
        )
    }
    assert relative == {
        "config.json",
        "phase1/basis.safetensors",
        "phase1/metadata.json",
        "phase2/model",
        "phase2/importance.safetensors",
        "phase2/masks.safetensors",
        "phase3/coefficients.safetensors",
        "phase3_random/masks.safetensors",
        "plain/delta.safetensors",
        "eval.json",
        "eval.md",
        "safety_vs_utility.png",
        "seed-43",
    }
