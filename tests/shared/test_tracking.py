"""MLflow tracking through ``report_to``: one run per Trainer, kept open for the metrics a recipe logs after
training, the recipe's params, tags, resolved config and saved model; a clear error without mlflow."""

import ast
import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import all_runs
from recipes_util import ROOT, run_recipe
from transformers import TrainerState
from transformers.integrations import MLflowCallback

from hf_ext.config import DataArguments, HfExtTrainingArguments, ModelArguments, run_record
from hf_ext.data import prepare_data
from hf_ext.errors import ConfigError
from hf_ext.models import load_model, load_tokenizer
from hf_ext.parsing import parse_config, parse_dict
from hf_ext.tracking import HfExtMLflowCallback, end_mlflow_run, tracking_callback
from hf_ext.trainer import HfExtTrainer

ARGUMENT_TYPES = (ModelArguments, DataArguments, HfExtTrainingArguments)


def _git_head() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def test_finetune_recipe_logs_everything_to_one_run(mlflow_store, tmp_path, capsys):
    mlflow = pytest.importorskip("mlflow")
    trainer = run_recipe(
        "finetune",
        "finetune_minilm_sentiment.json",
        f"output_dir={tmp_path / 'out'}",
        'report_to=["tensorboard","mlflow"]',
        "model_name_or_path=tiny:bert",
        "max_train_samples=64",
        "max_eval_samples=32",
        "max_seq_length=32",
        "num_train_epochs=1",
        "logging_steps=1",
        "warmup_steps=0",
        "save_strategy=no",
        "eval_strategy=no",  # eval_* metrics then come only from the evaluate() after training
    )
    run_id = tracking_callback(trainer).run_id
    out = capsys.readouterr().out
    assert f"mlflow:      mlflow ui --backend-store-uri {mlflow_store}" in out and f"mlflow run:  {run_id}" in out
    client, runs = all_runs(mlflow_store)
    assert [r.info.run_id for r in runs] == [run_id]  # evaluate() after on_train_end opened no second run
    assert runs[0].info.status == "RUNNING"  # kept open for what comes after training ...
    end_mlflow_run(trainer)  # ... until ended explicitly (or by the next Trainer, or at exit)
    assert mlflow.active_run() is None
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "out"  # output_dir's name (mlflow's own random name repeats under a fixed seed)

    params = run.data.params
    assert float(params["learning_rate"]) == 5e-5  # TrainingArguments (transformers)
    assert params["max_seq_length"] == "32" and params["max_train_samples"] == "64"  # DataArguments
    assert params["model_name_or_path"] == "tiny:bert" and params["task_type"] == "seq_cls"  # ModelArguments
    assert params["ModelArguments.dtype"] == "float32"  # the model config's dtype param keeps its plain name

    assert len({m.step for m in client.get_metric_history(run_id, "loss")}) >= 2
    assert {"eval_accuracy", "eval_loss", "test_accuracy", "test_loss", "train_runtime"} <= set(run.data.metrics)

    tags = run.data.tags
    assert tags["hf_ext.recipe"] == "finetune"
    assert tags["hf_ext.git_commit"] == _git_head() and tags["hf_ext.git_dirty"] in ("true", "false")
    assert tags["hf_ext.config_file"] == str(ROOT / "recipes" / "configs" / "finetune_minilm_sentiment.json")
    assert tags["hf_ext.version"] == __import__("hf_ext").__version__

    model_files = {a.path for a in client.list_artifacts(run_id, "model")}
    assert {"model/config.json", "model/model.safetensors", "model/tokenizer.json"} <= model_files
    assert "model/training_args.bin" not in model_files and not any("runs" in p for p in model_files)
    assert run.info.artifact_uri.startswith(("file://" + str(tmp_path), str(tmp_path)))
    resolved = json.loads(
        Path(client.download_artifacts(run_id, "config/resolved_config.json", str(tmp_path))).read_text()
    )
    assert set(resolved) == {"ModelArguments", "DataArguments", "HfExtTrainingArguments"}
    assert resolved["DataArguments"]["max_train_samples"] == 64 and resolved["DataArguments"]["max_seq_length"] == 32
    assert resolved["DataArguments"]["validation_split_percentage"] == 10  # defaults too
    assert resolved["HfExtTrainingArguments"]["logging_steps"] == 1
    assert resolved["HfExtTrainingArguments"]["lr_scheduler_type"] == "linear"  # enums as their value


def _tiny_parts(**data):
    tokenizer = load_tokenizer("tiny:bert")
    prepared = prepare_data(DataArguments(max_train_samples=32, max_eval_samples=16, **data), tokenizer, "seq_cls")
    model = load_model(ModelArguments(model_name_or_path="tiny:bert"), tokenizer, prepared.labels)
    return model, prepared


def test_study_trainers_get_one_run_each_ended_before_the_next(mlflow_store, tmp_path):
    values = {
        "model_name_or_path": "tiny:bert",
        "max_train_samples": 32,
        "output_dir": str(tmp_path / "a"),
        "max_steps": 2,
        "logging_steps": 1,
        "per_device_train_batch_size": 8,
        "save_strategy": "no",
        "report_to": ["mlflow"],
        "use_cpu": True,
    }
    _, _, args = parse_dict(ARGUMENT_TYPES, values, recipe=__file__)
    second_args = dataclasses.replace(args, output_dir=str(tmp_path / "b"), seed=7)  # as the studies do
    assert run_record(second_args) == run_record(args) and run_record(args)["recipe"] == "test_tracking"

    model, data = _tiny_parts()
    first = HfExtTrainer(model=model, args=args, **data.trainer_kwargs())
    first.train()
    first.evaluate(metric_key_prefix="test")
    first_run = tracking_callback(first).run_id
    second = HfExtTrainer(model=model, args=second_args, **data.trainer_kwargs())
    second.train()
    second_run = tracking_callback(second).run_id
    client, runs = all_runs(mlflow_store)
    assert {r.info.run_id: r.info.status for r in runs} == {first_run: "FINISHED", second_run: "RUNNING"}
    first.evaluate(metric_key_prefix="late")  # the first run has ended: its metrics still go to it, by id
    end_mlflow_run(second)
    client, runs = all_runs(mlflow_store)
    assert {r.info.run_id: r.info.status for r in runs} == {first_run: "FINISHED", second_run: "FINISHED"}
    first_data, second_data = client.get_run(first_run).data, client.get_run(second_run).data
    assert {"test_loss", "late_loss"} <= set(first_data.metrics) and "late_loss" not in second_data.metrics
    assert (first_data.params["seed"], second_data.params["seed"]) == ("42", "7")
    assert first_data.tags["hf_ext.recipe"] == second_data.tags["hf_ext.recipe"] == "test_tracking"
    assert first_data.tags["hf_ext.config_file"] == "unknown"  # parse_dict: no file


def test_library_trainer_without_parsed_config(mlflow_store, tmp_path, capsys):
    model, data = _tiny_parts()
    args = HfExtTrainingArguments(output_dir=str(tmp_path / "lib"), report_to=["mlflow"], use_cpu=True)
    assert run_record(args) is None
    trainer = HfExtTrainer(model=model, args=args, **data.trainer_kwargs())
    trainer.save_model()  # before any training or log: the run starts here
    trainer.evaluate()
    run_id = tracking_callback(trainer).run_id
    from hf_ext.run_logger import print_run_locations

    print_run_locations(trainer)
    assert f"mlflow run:  {run_id}" in capsys.readouterr().out
    end_mlflow_run()  # no trainer: the active run, since hf_ext started it
    client, runs = all_runs(mlflow_store)
    assert [(r.info.run_id, r.info.status) for r in runs] == [(run_id, "FINISHED")]
    run = client.get_run(run_id)
    assert run.data.tags["hf_ext.recipe"] == "unknown" and "eval_loss" in run.data.metrics
    assert {"model/config.json", "model/model.safetensors"} <= {a.path for a in client.list_artifacts(run_id, "model")}
    resolved = json.loads(
        Path(client.download_artifacts(run_id, "config/resolved_config.json", str(tmp_path))).read_text()
    )
    assert resolved == {"HfExtTrainingArguments": json.loads(json.dumps(args.to_dict()))}


def test_a_users_own_run_is_logged_into_and_left_open(mlflow_store, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    model, data = _tiny_parts()
    args = HfExtTrainingArguments(output_dir=str(tmp_path), report_to=["mlflow"], max_steps=1, use_cpu=True)
    with mlflow.start_run() as outer:
        trainer = HfExtTrainer(model=model, args=args, **data.trainer_kwargs())
        trainer.train()
        end_mlflow_run(trainer)
        assert mlflow.active_run().info.run_id == outer.info.run_id == tracking_callback(trainer).run_id
    assert "train_loss" in mlflow.tracking.MlflowClient(mlflow_store).get_run(outer.info.run_id).data.metrics


def test_only_the_main_process_talks_to_mlflow(mlflow_store, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    callback = HfExtMLflowCallback()
    args = HfExtTrainingArguments(output_dir=str(tmp_path), report_to=["mlflow"], use_cpu=True)
    state = TrainerState(is_world_process_zero=False)
    callback.on_train_begin(args, state, None)
    callback.on_log(args, state, None, logs={"loss": 1.0})
    callback.on_train_end(args, state, None)
    assert callback.run_id is None and mlflow.active_run() is None and not (tmp_path / "mlflow.db").exists()


def test_report_to_without_mlflow_writes_no_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    model, data = _tiny_parts()
    args = HfExtTrainingArguments(
        output_dir=str(tmp_path / "out"), report_to=["tensorboard"], max_steps=1, use_cpu=True
    )
    trainer = HfExtTrainer(model=model, args=args, **data.trainer_kwargs())
    trainer.train()
    trainer.save_model()
    trainer.evaluate()
    assert tracking_callback(trainer) is None
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


@pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning"
)  # MLflowCallback.__del__ after a failed init
def test_missing_mlflow_is_a_config_error_before_any_model_loads(tmp_path, monkeypatch):
    if importlib.util.find_spec("mlflow") is None:
        pytest.skip("the unreachable-store check needs mlflow installed")
    config = ROOT / "recipes" / "configs" / "finetune_minilm_sentiment.json"
    overrides = [f"output_dir={tmp_path}", 'report_to=["tensorboard","mlflow"]']
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow fails, find_spec finds nothing
    with pytest.raises(RuntimeError, match="requires mlflow"):
        MLflowCallback()  # transformers' own check: only when the Trainer is built, after the model loaded
    with pytest.raises(ConfigError, match=r"pip install 'hf_ext\[mlflow\]'") as error:
        parse_config(ARGUMENT_TYPES, [str(config), *overrides])
    assert "\n" not in str(error.value) and "report_to" in str(error.value)
    parse_config(ARGUMENT_TYPES, [str(config), f"output_dir={tmp_path}"])  # without mlflow in report_to: fine
    monkeypatch.delitem(sys.modules, "mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/absent/mlflow.db")
    with pytest.raises(ConfigError, match=r"the folder .*absent does not exist; point it at a writable path"):
        parse_config(ARGUMENT_TYPES, [str(config), *overrides])  # mlflow would retry for minutes
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.delitem(sys.modules, "mlflow")
    monkeypatch.setenv("DISABLE_MLFLOW_INTEGRATION", "TRUE")
    with pytest.raises(ConfigError, match="DISABLE_MLFLOW_INTEGRATION"):
        parse_config(ARGUMENT_TYPES, [str(config), *overrides])


def test_mlflow_is_imported_only_inside_functions():
    """``import hf_ext`` (and every module) works without the optional mlflow extra."""
    for path in (ROOT / "hf_ext").rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "mlflow" for n in names), f"{path}: module-level mlflow import"


def test_run_record_is_json_safe_and_names_the_caller(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"output_dir": str(tmp_path), "model_name_or_path": "tiny:bert"}))
    model_args, data_args, training_args = parse_config(
        ARGUMENT_TYPES, [str(config), "max_seq_length=16"], recipe=__file__
    )
    record = run_record(training_args)
    assert set(record["resolved"]) == {"ModelArguments", "DataArguments", "HfExtTrainingArguments"}
    assert (record["recipe"], record["recipe_file"], record["config_file"]) == ("test_tracking", __file__, str(config))
    assert json.loads(json.dumps(record)) == record
    assert record["resolved"]["DataArguments"]["max_seq_length"] == 16
    assert record["resolved"]["HfExtTrainingArguments"]["save_strategy"] == "steps"
    assert run_record(HfExtTrainingArguments(output_dir=str(tmp_path))) is None
    assert (
        "run_record" not in training_args.to_dict()
        and "run_record" not in record["resolved"]["HfExtTrainingArguments"]
    )


def test_only_the_files_save_model_writes_are_logged(mlflow_store, tmp_path):
    model, data = _tiny_parts()
    out = tmp_path / "out"
    out.mkdir()
    (out / "eval_results.json").write_text("{}")  # left by an earlier run
    args = HfExtTrainingArguments(output_dir=str(out), report_to=["mlflow"], max_steps=1, use_cpu=True)
    trainer = HfExtTrainer(model=model, args=args, **data.trainer_kwargs())
    trainer.train()
    trainer.save_model()
    client, runs = all_runs(mlflow_store)
    logged = {a.path for a in client.list_artifacts(runs[0].info.run_id, "model")}
    assert "model/model.safetensors" in logged and "model/eval_results.json" not in logged
    end_mlflow_run(trainer)
