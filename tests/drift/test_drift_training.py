import pytest
import torch
from launch_util import run_script, torchrun
from peft import LoraConfig, get_peft_model
from tb_events import read_events
from transformers import TrainingArguments

from hf_ext.config import DataArguments, ModelArguments
from hf_ext.data import prepare_data
from hf_ext.drift.callbacks import DriftCallback
from hf_ext.drift.shards import DumpReader
from hf_ext.models import load_model, load_tokenizer
from hf_ext.run_logger import RunLogger
from hf_ext.trainer import HfExtTrainer


def _trainer(tmp_path, callbacks=(), lora=False):
    tokenizer = load_tokenizer("tiny:bert")
    data = prepare_data(DataArguments(max_train_samples=64, max_eval_samples=16), tokenizer, "seq_cls")
    model = load_model(ModelArguments(model_name_or_path="tiny:bert"), tokenizer, data.labels, seed=3)
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["query", "value"], task_type="SEQ_CLS"))
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=5,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        logging_steps=5,
        report_to=["tensorboard"],
        save_strategy="no",
        use_cpu=True,
        seed=7,
    )
    batches = [data.collator([data.validation[i] for i in range(j, j + 8)]) for j in (0, 8)]
    trainer = HfExtTrainer(model=model, args=args, train_dataset=data.train, data_collator=data.collator)
    for callback in callbacks:
        trainer.add_callback(callback(batches) if callable(callback) else callback)
    return trainer, batches


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("lora", [False, True])
def test_in_training_drift_is_logged_and_leaves_training_unchanged(tmp_path, lora):
    plain, _ = _trainer(tmp_path / "plain", lora=lora)
    plain.train()
    base_dump = tmp_path / "base"
    measured, _ = _trainer(
        tmp_path / "measured",
        [lambda batches: DriftCallback(batches, every=2, pooling="mean", base_dump=None if lora else base_dump)],
        lora=lora,
    )
    measured.train()
    callback = next(c for c in measured.callback_handler.callbacks if isinstance(c, DriftCallback))
    assert [h["step"] for h in callback.history] == [2, 4, 5]
    assert base_dump.is_dir() != lora  # full fine-tuning dumps the base at step 0; LoRA needs no dump
    if not lora:
        assert DumpReader(base_dump).pooling == "mean"
    first, last = callback.history[0]["layers"]["2"]["cka"], callback.history[-1]["layers"]["2"]["cka"]
    assert last < first < 1  # drift grows with training
    if lora:  # the embeddings carry no adapter
        assert callback.history[-1]["layers"]["0"]["cka"] == pytest.approx(1, abs=1e-6)
    for name, value in _weights(plain).items():
        assert torch.equal(value, _weights(measured)[name]), name
    logged = [e for e in measured.state.log_history if "drift/cka/layer_2" in e]
    assert [e["step"] for e in logged] == [2, 4, 5]
    events = read_events(RunLogger(measured).logging_dir)
    assert len(events.Scalars("train/drift/cka/layer_2")) == 3
    assert "train/drift/cosine/layer_1" in events.Tags()["scalars"]


def test_full_fine_tuning_without_a_base_dump_is_refused(tmp_path):
    trainer, batches = _trainer(tmp_path, [lambda batches: DriftCallback(batches, every=2)])
    with pytest.raises(ValueError, match="needs base_dump"):
        trainer.train()
    with pytest.raises(ValueError, match="at least one batch"):
        DriftCallback([])


@pytest.mark.multiprocess
@pytest.mark.slow  # the default run covers it: test_two_process_drift_run_matches_one_process dumps on 2 ranks
def test_two_process_dump_has_the_same_rows_as_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    run_script("drift_dump.py", str(one))
    torchrun("drift_dump.py", str(two))
    single, double = DumpReader(one), DumpReader(two)
    assert len(single) == 8 and single.example_ids == double.example_ids
    assert single.metadata["token_counts"] == double.metadata["token_counts"]
    for layer in single.layers:
        torch.testing.assert_close(single.read_layer(layer), double.read_layer(layer), rtol=1e-6, atol=1e-6)
