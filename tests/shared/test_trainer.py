import pytest
import torch
from tb_events import read_events
from transformers import Trainer, TrainingArguments

from hf_ext.config import DataArguments, ModelArguments
from hf_ext.data import prepare_data
from hf_ext.models import load_model, load_tokenizer
from hf_ext.run_logger import LoggingCallback, RunLogger
from hf_ext.trainer import HfExtTrainer

try:  # matplotlib is optional (hf_ext[plots]): without it the probe logs no figure
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    plt = None


class StepProbe(LoggingCallback):
    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)
        logger = self._require_bound()
        logger.scalars({"probe/step": state.global_step})
        if state.global_step == 2:
            logger.histogram("probe/weights", torch.arange(10.0))
            if plt is not None:
                figure = plt.figure()
                plt.plot([0, 1], [1, 0])
                logger.figure("probe/figure", figure)


def _setup(tmp_path, **overrides):
    tokenizer = load_tokenizer("tiny:bert")
    data = prepare_data(DataArguments(max_train_samples=64, max_eval_samples=16), tokenizer, "seq_cls")
    model = load_model(ModelArguments(model_name_or_path="tiny:bert"), tokenizer, data.labels)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=4,
        per_device_train_batch_size=8,
        logging_steps=2,
        report_to=["tensorboard"],
        save_strategy="no",
        use_cpu=True,
        **overrides,
    )
    return dict(model=model, args=args, train_dataset=data.train, data_collator=data.collator)


def test_recorded_metrics_are_averaged_into_the_training_log(tmp_path):
    pytest.importorskip("matplotlib")  # the probe's figure is one of the events checked
    probe = StepProbe()
    trainer = HfExtTrainer(callbacks=[probe], **_setup(tmp_path))
    assert probe.trainer is trainer
    trainer.train()
    logged = {entry["step"]: entry["probe/step"] for entry in trainer.state.log_history if "probe/step" in entry}
    assert logged == {2: 1.5, 4: 3.5}
    events = read_events(RunLogger(trainer).logging_dir)
    assert [e.value for e in events.Scalars("train/probe/step")] == [1.5, 3.5]
    assert [e.step for e in events.Histograms("probe/weights")] == [2]
    assert [e.step for e in events.Images("probe/figure")] == [2]
    assert "train/loss" in events.Tags()["scalars"]


def test_callbacks_added_later_are_bound_and_can_log_after_training(tmp_path):
    trainer = HfExtTrainer(**_setup(tmp_path))
    probe = StepProbe()
    trainer.add_callback(probe)
    assert probe.run_logger is not None
    trainer.train()
    logger = RunLogger(trainer)
    logger.histogram("after/train", torch.ones(5), step=99)
    logger.close()
    assert [e.step for e in read_events(logger.logging_dir).Histograms("after/train")] == [99]


def test_plain_trainer_needs_explicit_bind_and_logs_at_once(tmp_path):
    probe = StepProbe()
    trainer = Trainer(callbacks=[probe], **_setup(tmp_path))
    with pytest.raises(RuntimeError, match="not bound to a Trainer"):
        trainer.train()
    probe = StepProbe()
    trainer = Trainer(callbacks=[probe], **_setup(tmp_path))
    probe.bind(trainer)
    trainer.train()
    assert [e["probe/step"] for e in trainer.state.log_history if "probe/step" in e] == [1, 2, 3, 4]


def test_without_tensorboard_figures_are_skipped_with_a_warning(tmp_path, caplog):
    setup = _setup(tmp_path)
    setup["args"].report_to = []
    trainer = HfExtTrainer(**setup)
    with caplog.at_level("WARNING"):
        RunLogger(trainer).histogram("x", torch.ones(2))
    assert "add 'tensorboard' to report_to" in caplog.text


def _head_lr_args(tmp_path, head_learning_rate):
    from hf_ext.config import HfExtTrainingArguments

    return HfExtTrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=8,
        learning_rate=1e-5,
        head_learning_rate=head_learning_rate,
        warmup_steps=0,
        lr_scheduler_type="constant",
        report_to=[],
        save_strategy="no",
        use_cpu=True,
    )


def test_head_learning_rate_trains_the_head_alone_at_its_rate(tmp_path):
    setup = _setup(tmp_path)
    setup["args"] = _head_lr_args(tmp_path, 1e-2)
    model = setup["model"]
    trainer = HfExtTrainer(**setup)
    trainer.train()
    groups = {id(p): g["lr"] for g in trainer.optimizer.param_groups for p in g["params"]}
    rates = {n: groups[id(p)] for n, p in model.named_parameters()}
    assert {n for n, lr in rates.items() if lr == 1e-2} == {
        "bert.pooler.dense.weight",
        "bert.pooler.dense.bias",
        "classifier.weight",
        "classifier.bias",
    }
    assert {lr for n, lr in rates.items() if "pooler" not in n and "classifier" not in n} == {1e-5}
    decay = {g["weight_decay"] for g in trainer.optimizer.param_groups if g.get("name") == "head"}
    assert decay == {0.0}  # weight_decay 0 in these arguments: the head keeps its group's settings


def test_head_learning_rate_on_a_model_without_a_classifier_is_refused(tmp_path):
    from hf_ext.errors import ConfigError

    tokenizer = load_tokenizer("tiny:llama")
    data = prepare_data(DataArguments(max_train_samples=16, max_eval_samples=8), tokenizer, "causal_lm")
    model = load_model(ModelArguments(model_name_or_path="tiny:llama", task_type="causal_lm"), tokenizer, data.labels)
    trainer = HfExtTrainer(
        model=model, args=_head_lr_args(tmp_path, 1e-3), train_dataset=data.train, data_collator=data.collator
    )
    with pytest.raises(ConfigError, match="head_learning_rate=0.001 but LlamaForCausalLM has no trainable classifier"):
        trainer.train()
