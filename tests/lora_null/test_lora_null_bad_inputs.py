"""The bad-input catalogue (see tests/shared/test_bad_inputs.py), LoRA-Null: a checkpoint written by another
recipe or technique is refused before it is resumed."""

import pytest
from bad_inputs_util import unchanged
from recipes_util import run_recipe

from hf_ext.errors import RunDirectoryError

RESUMABLE = ["lr_scheduler_type=constant", "warmup_steps=0", "save_strategy=steps", "save_steps=1", "report_to=[]"]
LORA_NULL = [
    "model_name_or_path=tiny:bert",
    'lora_target_modules=["query","value"]',
    "max_train_samples=32",
    "per_device_train_batch_size=8",
    "calib_samples=32",
    "verify_samples=16",
    "max_activation_samples=256",
    "eval_strategy=no",
    *RESUMABLE,
]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """``{"finetune": checkpoint-1 of a full fine-tune, "lora_null": checkpoint-1 of a LoRA-Null run}`` (tiny:bert)."""
    root = tmp_path_factory.mktemp("checkpoints")
    run_recipe(
        "finetune",
        "finetune_minilm_sentiment.json",
        f"output_dir={root / 'finetune'}",
        "model_name_or_path=tiny:bert",
        "max_train_samples=16",
        "max_eval_samples=8",
        "max_steps=1",
        *RESUMABLE,
    )
    run_recipe(
        "lora_null", "lora_null_minilm_topic.json", f"output_dir={root / 'lora_null'}", *LORA_NULL, "max_steps=1"
    )
    return {name: root / name / "checkpoint-1" for name in ("finetune", "lora_null")}


def _full_model():
    from hf_ext.models import tiny_model

    return tiny_model("bert", "seq_cls", num_labels=4)[0]  # the topic task's four classes


def _lora_model(**lora):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(_full_model(), LoraConfig(task_type="SEQ_CLS", **lora))


@pytest.mark.parametrize(
    "checkpoint, model, message",
    [
        (
            "finetune",
            lambda: _lora_model(r=8, target_modules=["query", "value"]),
            r"holds full model weights and no peft adapter, but this run trains a peft adapter \(LoRA\): it was",
        ),
        (
            "lora_null",
            _full_model,
            r"holds a peft adapter, but this run trains the whole model: it was written by another recipe",
        ),
        (
            "lora_null",
            lambda: _lora_model(r=4, target_modules=["key"]),
            r"the adapter in .*checkpoint-1 does not fit this run's: \d+ tensor\(s\) differ \(.*: absent in the",
        ),
    ],
    ids=["full-weights-for-lora", "adapter-for-full-training", "adapter-of-other-targets"],
)
def test_a_checkpoint_of_another_technique_is_refused(checkpoints, checkpoint, model, message):
    from hf_ext.models import check_checkpoint_weights

    with unchanged(checkpoints[checkpoint]), pytest.raises(RunDirectoryError, match=message):
        check_checkpoint_weights(checkpoints[checkpoint], model())


def test_a_checkpoint_of_the_same_technique_passes_the_check(checkpoints):
    from hf_ext.models import check_checkpoint_weights

    check_checkpoint_weights(checkpoints["lora_null"], _lora_model(r=8, target_modules=["query", "value"]))
    check_checkpoint_weights(checkpoints["finetune"], _full_model())


def test_resuming_lora_null_from_a_finetune_checkpoint_is_refused(checkpoints, tmp_path):
    with unchanged(checkpoints["finetune"]), pytest.raises(RunDirectoryError, match="holds full model weights"):
        run_recipe(
            "lora_null",
            "lora_null_minilm_topic.json",
            f"output_dir={tmp_path / 'out'}",
            *LORA_NULL,
            "max_steps=2",
            f"resume_from_checkpoint={checkpoints['finetune']}",
        )
