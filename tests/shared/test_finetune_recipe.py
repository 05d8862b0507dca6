import json

from recipes_util import run_recipe
from tb_events import read_events
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from hf_ext.cli import main as cli
from hf_ext.run_logger import RunLogger


def test_finetune_classifier_writes_model_metrics_and_tensorboard(tmp_path, capsys):
    trainer = run_recipe(
        "finetune",
        "finetune_minilm_sentiment.json",
        f"output_dir={tmp_path}",
        "model_name_or_path=tiny:bert",
        "max_train_samples=1024",
        "max_eval_samples=128",
        "learning_rate=2e-3",
        "logging_steps=4",
    )
    out = capsys.readouterr().out
    assert f"outputs:     {tmp_path}" in out and "tensorboard: tensorboard --logdir" in out
    test_metrics = json.loads((tmp_path / "test_results.json").read_text())
    assert test_metrics["test_accuracy"] > 0.75  # clearly above chance after 32 steps
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    scalars = read_events(RunLogger(trainer).logging_dir).Tags()["scalars"]
    assert {"train/loss", "eval/accuracy"} <= set(scalars)


def test_finetune_causal_lm_from_local_files(tmp_path):
    data = tmp_path / "data"
    assert cli(["data", "export", "safety", "--out", str(data)]) == 0
    run_recipe(
        "finetune",
        "finetune_tiny_llama_safety.json",
        f"output_dir={tmp_path / 'run'}",
        "dataset_name=null",
        f"train_file={data / 'train.jsonl'}",
        f"validation_file={data / 'validation.jsonl'}",
        "max_train_samples=1024",
        "max_eval_samples=64",
        "report_to=[]",
    )
    metrics = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    assert metrics["eval_loss"] < 4.0  # uniform guessing over the 747-token vocabulary gives 6.6
    assert metrics["eval_response_token_accuracy"] > 0.4
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "run").config.model_type == "llama"
