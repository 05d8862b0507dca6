"""A run interrupted at a checkpoint and resumed gives the outputs of an uninterrupted run (CPU: bit-identical).

The interruption is a run that stops at the checkpoint (``max_steps`` of the checkpoint, constant learning rate
so that the schedule does not depend on ``max_steps``); the resumed run continues from it with
``resume_from_checkpoint=true`` in the same output directory.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from recipes_util import run_recipe
from safetensors.torch import load_file, save_file

from hf_ext.errors import RunDirectoryError
from hf_ext.heads.analysis import read_jsonl

SCHEDULE = [
    "lr_scheduler_type=constant",
    "warmup_steps=0",
    "save_strategy=steps",
    "save_steps=2",
    "logging_steps=1",
    "report_to=[]",
]


def _interrupted_and_resumed(tmp_path, recipe: str, config: str, *overrides: str, steps: int = 4, crash=None):
    """(uninterrupted run's result, resumed run's result, result resumed from a checkpoint whose weights were
    perturbed): the last one differs only if the resumed run really starts from the checkpoint. ``crash(dir)``
    removes what the stopped run wrote after its checkpoint, where a rerun would otherwise keep it."""
    whole = run_recipe(recipe, config, f"output_dir={tmp_path / 'whole'}", *overrides, f"max_steps={steps}")
    run_recipe(recipe, config, f"output_dir={tmp_path / 'resumed'}", *overrides, f"max_steps={steps // 2}")
    if crash is not None:
        crash(tmp_path / "resumed")
    shutil.copytree(tmp_path / "resumed", tmp_path / "perturbed")
    weight_files = list((tmp_path / "perturbed").rglob(f"checkpoint-{steps // 2}/*model.safetensors"))
    assert weight_files, "no checkpoint weights to perturb"  # model.safetensors, or a peft adapter_model.safetensors
    for path in weight_files:
        weights = load_file(path)
        save_file({k: v * 1.01 if v.is_floating_point() else v for k, v in weights.items()}, path)
    results = [whole]
    for name in ("resumed", "perturbed"):
        more = [f"max_steps={steps}", "resume_from_checkpoint=true"]
        results.append(run_recipe(recipe, config, f"output_dir={tmp_path / name}", *overrides, *more))
    return results


def test_head_study_resumed_equals_uninterrupted(tmp_path):
    """The probe, I_pre and the initial weights are recomputed on resume (deterministic); fine-tuning continues
    from the checkpoint, so I_post, U and the pruning curve equal an uninterrupted run's."""
    overrides = [
        "model_name_or_path=tiny:bert",
        "seeds=[1]",
        "eval_subset_size=24",
        "max_train_samples=64",
        "per_device_train_batch_size=8",
        "per_device_eval_batch_size=8",
        "top_k=3",
        "probe_epochs=1",
        "probe_seeds=[]",
        "prune_step=0.5",
        "bootstrap_samples=10",
        "log_head_importance_steps=0",
        *SCHEDULE,
    ]
    (whole,), (resumed,), (perturbed,) = _interrupted_and_resumed(
        tmp_path, "head_plasticity", "head_plasticity_minilm_rotten_tomatoes.json", *overrides
    )
    assert (resumed / "checkpoint-2").is_dir() and (resumed / "checkpoint-4").is_dir()
    assert 0.5 <= json.loads((whole / "chance.json").read_text())["majority_class_accuracy"] < 1  # a classifier
    for name, field in (("U.jsonl", "U"), ("I_post.jsonl", "loss_increase"), ("I_pre.jsonl", "loss_increase")):
        np.testing.assert_array_equal(read_jsonl(resumed / name, field), read_jsonl(whole / name, field), err_msg=name)
    assert read_jsonl(whole / "U.jsonl", "U").min() > 0  # fine-tuning moved every head
    assert not np.array_equal(read_jsonl(perturbed / "U.jsonl", "U"), read_jsonl(whole / "U.jsonl", "U"))
    assert (resumed / "prune_curve.json").read_text() == (whole / "prune_curve.json").read_text()
    assert (resumed / "final" / "model.safetensors").read_bytes() == (
        whole / "final" / "model.safetensors"
    ).read_bytes()


LORA_NULL = [
    "model_name_or_path=tiny:bert",
    'lora_target_modules=["query","value"]',
    "max_train_samples=64",
    "per_device_train_batch_size=8",
    "calib_samples=32",
    "verify_samples=16",
    "max_activation_samples=256",
    "eval_strategy=no",
    *SCHEDULE,
]


def test_lora_null_resumed_equals_uninterrupted_and_keeps_the_verification_at_init(tmp_path):
    """Before, the recipe ignored resume_from_checkpoint (trained afresh) and a resumed callback would have
    recorded its first verification, at the checkpoint's step, as the one at init."""
    whole, resumed, perturbed = _interrupted_and_resumed(
        tmp_path, "lora_null", "lora_null_minilm_topic.json", *LORA_NULL
    )
    assert (resumed / "checkpoint-2" / "lora_null_history.json").is_file()
    for name in ("verify_init.json", "verify_trained.json"):
        assert json.loads((resumed / name).read_text()) == json.loads((whole / name).read_text()), name
    weights = [load_file(run / "adapter" / "adapter_model.safetensors") for run in (whole, resumed, perturbed)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


def test_lora_null_resume_without_the_saved_history_is_refused(tmp_path, capsys):
    overrides = [f"output_dir={tmp_path}", *LORA_NULL]
    run_recipe("lora_null", "lora_null_minilm_topic.json", *overrides, "max_steps=2")
    (tmp_path / "checkpoint-2" / "lora_null_history.json").unlink()
    with pytest.raises(RunDirectoryError, match="verification at init cannot be recovered"):
        run_recipe(
            "lora_null", "lora_null_minilm_topic.json", *overrides, "max_steps=4", "resume_from_checkpoint=true"
        )


ARMS = ("full-lr0.0001", "lora-r8-lr0.01")


def test_drift_run_resumed_equals_uninterrupted_and_keeps_the_drift_measured_before(tmp_path):
    overrides = [
        "model_name_or_path=tiny:bert",
        'methods=["full", "lora"]',
        "full_learning_rates=[0.0001]",
        "lora_learning_rates=[0.01]",
        "lora_ranks=[8]",
        "seeds=[1]",
        "eval_subset_size=16",
        "max_train_samples=64",
        "per_device_train_batch_size=8",
        "per_device_eval_batch_size=8",
        "drift_steps=1",
        "bootstrap_samples=20",
        *SCHEDULE,
    ]

    def crash(root):
        """As if the process died after checkpoint-2 of every run: no metrics, dumps or analysis."""
        for path in (root / "drift.json", *root.glob("seed-1/*/metrics.json")):
            path.unlink()
        for path in root.glob("seed-1/*/dump"):
            shutil.rmtree(path)

    roots = _interrupted_and_resumed(tmp_path, "drift", "drift_minilm_sentiment.json", *overrides, crash=crash)
    records = {
        (name, method): json.loads((root / "seed-1" / method / "metrics.json").read_text())
        for name, root in zip(("whole", "resumed", "perturbed"), roots)
        for method in ARMS
    }
    assert (roots[1] / "seed-1" / "full-lr0.0001" / "checkpoint-2" / "drift_history.json").is_file()
    for method in ARMS:
        whole, resumed = records["whole", method], records["resumed", method]
        assert [h["step"] for h in resumed["in_training"]] == [1, 2, 3, 4]  # steps 1-2 restored from the checkpoint
        assert resumed["in_training"] == whole["in_training"] and resumed["eval_loss"] == whole["eval_loss"]
        assert records["perturbed", method]["in_training"][2:] != whole["in_training"][2:]
    assert (roots[1] / "drift.csv").read_text() == (roots[0] / "drift.csv").read_text()


def test_selective_training_resumed_equals_uninterrupted(tmp_path):
    overrides = ["max_train_samples=64", "per_device_train_batch_size=8", "eval_strategy=no", *SCHEDULE]
    trainers = _interrupted_and_resumed(tmp_path, "seq_cls", "seq_cls_tiny_qwen2_last_block.json", *overrides)
    weights = [(Path(t.args.output_dir) / "model.safetensors").read_bytes() for t in trainers]
    assert weights[1] == weights[0] and weights[2] != weights[0]
    metrics = [json.loads((Path(t.args.output_dir) / "test_results.json").read_text()) for t in trainers[:2]]
    assert metrics[1]["test_loss"] == metrics[0]["test_loss"]
