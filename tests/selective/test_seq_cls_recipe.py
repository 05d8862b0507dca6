"""recipes/seq_cls.py: classifiers trained on selected blocks, fully or with LoRA; `hf-ext selective inspect`."""

import json

import pytest
import torch
from conftest import all_runs
from launch_util import run_script, torchrun
from peft import PeftConfig
from recipes_util import run_recipe
from transformers import AutoModelForSequenceClassification

from hf_ext.cli import main as cli
from hf_ext.errors import ConfigError, RunDirectoryError
from hf_ext.io import load_tensors
from hf_ext.models import tiny_model

QWEN = "seq_cls_tiny_qwen2_last_block.json"
MINILM = "seq_cls_minilm_lora_last2.json"
QUICK = ("max_train_samples=512", "max_eval_samples=200", "warmup_steps=0", "report_to=[]")


def _results(path, split):
    return json.loads((path / f"{split}_results.json").read_text())


def test_tiny_qwen2_last_block_learns_sentiment_and_saves_a_plain_model(tmp_path, capsys):
    run_recipe("seq_cls", QWEN, f"output_dir={tmp_path}", *QUICK, "num_train_epochs=3")
    test, validation = _results(tmp_path, "test"), _results(tmp_path, "eval")
    printed = capsys.readouterr().out  # the chance level and the accuracy's resolution beside each split
    assert "power (eval): chance " in printed and "power (test): chance " in printed
    assert f"an accuracy near {test['test_accuracy']:.2f} on " in printed
    assert _results(tmp_path, "init")["init_accuracy"] < 0.7  # the untrained classifier, on the validation split
    assert test["test_accuracy"] > 0.75 and validation["eval_accuracy"] > 0.75  # chance: 0.5
    assert 0 < test["test_macro_f1"] <= 1
    selection = json.loads((tmp_path / "selection.json").read_text())
    assert selection["train_layers"] == [1] and selection["no_grad_prefix_blocks"] == 1
    assert selection["head"] == ["score"] and selection["finetuning"] == "full"
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert model.config.pad_token_id is not None


def test_lora_on_chosen_blocks_with_gradient_checkpointing_saves_an_adapter(tmp_path):
    run_recipe(
        "seq_cls",
        QWEN,
        f"output_dir={tmp_path}",
        *QUICK,
        "num_train_epochs=2",
        "finetuning=lora",
        "train_modules=q_proj|v_proj",
        "learning_rate=1e-2",
        "gradient_checkpointing=true",
    )
    config = PeftConfig.from_pretrained(tmp_path)
    assert config.layers_to_transform == [1] and sorted(config.target_modules) == [
        "self_attn.q_proj",
        "self_attn.v_proj",
    ]
    assert not (tmp_path / "model.safetensors").exists()
    assert _results(tmp_path, "test")["test_accuracy"] > 0.7


def test_minilm_lora_on_the_last_two_blocks_learns_topics(tmp_path):
    run_recipe(
        "seq_cls",
        MINILM,
        f"output_dir={tmp_path}",
        *QUICK,
        "dataset_name=builtin:topic",
        "num_train_epochs=1",
        "max_train_samples=320",
    )
    assert _results(tmp_path, "test")["test_accuracy"] > 0.6  # chance: 0.25 (four topics)
    config = PeftConfig.from_pretrained(tmp_path)
    assert config.layers_to_transform == [4, 5]


def test_inspect_shows_the_prefix_holds_nothing(capsys):
    code = cli(["selective", "inspect", f"recipes/configs/{QWEN}", "model_name_or_path=tiny:llama",
                "train_layers=last:1", "gradient_checkpointing=true", "output_dir=/tmp/unused"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "no-grad prefix (blocks 0-0) holds nothing" in out
    block0 = next(line for line in out.splitlines() if line.startswith("block 0"))
    assert block0.split()[2:6] == ["0", "0", "0", "0.000"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("train_layers=2-3", r"train_layers='2-3' names block\(s\) \[2, 3\] but the model has blocks 0-1"),
        ("train_layers=", "train_layers is empty"),
        ("train_modules=query", "matches none of the modules with parameters inside blocks 1 of"),
        ("train_layers=one", "cannot read .one. as a set of integers"),
        ("finetuning=LoRA", "finetuning=.LoRA. is invalid"),
        ("task_type=causal_lm", "the seq_cls recipe trains classifiers"),
    ],
)
def test_bad_selection_is_refused_before_training(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        run_recipe("seq_cls", QWEN, f"output_dir={tmp_path / 'run'}", *QUICK, override)
    assert not (tmp_path / "run").exists()


def test_a_decoder_without_pad_or_eos_token_is_refused(tmp_path):
    model, tokenizer = tiny_model("qwen2", "seq_cls")
    tokenizer.pad_token = None
    tokenizer.eos_token = None
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    with pytest.raises(ConfigError, match="no pad token and no EOS token to pad with"):
        run_recipe("seq_cls", QWEN, f"output_dir={tmp_path / 'run'}", *QUICK, f"model_name_or_path={tmp_path}/model")


@pytest.mark.multiprocess
def test_two_process_ddp_training_with_the_prefix_matches_one_process(tmp_path):
    """Global batch 16 as 1 x 16 and 2 x 8: the prefix stays bit-identical, the ranks agree exactly, and the
    trained block equals one process's up to summation order (float32, 3 steps)."""
    run_script("selective_ddp.py", str(tmp_path / "one"))
    torchrun("selective_ddp.py", str(tmp_path / "two"))
    result = json.loads((tmp_path / "two-result.json").read_text())
    assert result["prefix_changed"] == 0.0 and result["trained_changed"] > 0
    assert result["max_rank_difference"] == 0.0
    (single, _), (double, _) = load_tensors(tmp_path / "one.safetensors"), load_tensors(tmp_path / "two.safetensors")
    assert single.keys() == double.keys()
    for name in single:
        torch.testing.assert_close(double[name], single[name], rtol=1e-3, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.multiprocess
def test_fsdp2_sharded_selective_training_on_gloo_matches_one_process(tmp_path):
    """FSDP2 (fully_shard per block) runs on gloo without the Trainer (accelerate enables FSDP only on GPUs): the
    no-grad prefix composes with sharded blocks, stays bit-identical, and the trained block equals one process's."""
    run_script("selective_fsdp2.py", str(tmp_path / "one"))
    torchrun("selective_fsdp2.py", str(tmp_path / "two"))
    (single, meta_one), (double, meta_two) = (load_tensors(tmp_path / f"{r}.safetensors") for r in ("one", "two"))
    assert meta_one["prefix_moved"] == meta_two["prefix_moved"] == 0.0
    assert meta_two["trained_moved"] > 1e-3 and single.keys() == double.keys()
    for name in single:
        torch.testing.assert_close(double[name], single[name], rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_mlflow_run_holds_the_adapter_the_selection_and_the_test_scores(mlflow_store, tmp_path):
    run_recipe(
        "seq_cls",
        QWEN,
        f"output_dir={tmp_path / 'run'}",
        *QUICK,
        'report_to=["tensorboard","mlflow"]',
        "finetuning=lora",
        "max_train_samples=64",
        "num_train_epochs=1",
        "logging_steps=1",
    )
    client, runs = all_runs(mlflow_store)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the recipe ends its run
    run = runs[0]
    assert run.data.params["train_layers"] == "last:1" and run.data.params["finetuning"] == "lora"
    assert {"init_accuracy", "eval_macro_f1", "test_accuracy", "test_macro_f1", "loss"} <= set(run.data.metrics)
    assert run.data.tags["hf_ext.recipe"] == "seq_cls"
    model_files = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/adapter_config.json", "model/adapter_model.safetensors"} <= model_files


def test_one_block_index_on_the_command_line_reads_as_text(tmp_path):
    run_recipe("seq_cls", QWEN, f"output_dir={tmp_path}", *QUICK, "max_train_samples=32", "train_layers=1")
    assert json.loads((tmp_path / "selection.json").read_text())["train_layers"] == [1]


def test_resume_with_another_selection_is_refused_and_overwrite_leaves_no_stale_model(tmp_path):
    common = (f"output_dir={tmp_path}", *QUICK, "max_train_samples=32", "save_strategy=steps", "save_steps=1")
    run_recipe("seq_cls", QWEN, *common, "max_steps=1")
    assert (tmp_path / "model.safetensors").is_file()
    with pytest.raises(RunDirectoryError, match=r"another selection \(train_layers=\[1\] \(now \[0, 1\]\)"):
        run_recipe("seq_cls", QWEN, *common, "max_steps=2", "resume_from_checkpoint=true", "train_layers=0-1")
    run_recipe("seq_cls", QWEN, *common, "max_steps=2", "resume_from_checkpoint=true")  # the same selection resumes
    run_recipe("seq_cls", QWEN, *common, "max_steps=1", "overwrite_output_dir=true", "finetuning=lora")
    assert (tmp_path / "adapter_config.json").is_file()
    assert not (tmp_path / "model.safetensors").exists() and not (tmp_path / "config.json").exists()
