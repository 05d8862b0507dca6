"""Sharded launchers: every callback that reads weights or gradients says so, and binding refuses the launchers
that split what it reads, with an error naming the combination; FSDP asked for on a CPU is refused, not dropped."""

import importlib
import pkgutil
import re

import pytest
import torch
from recipes_util import run_recipe
from transformers import TrainingArguments

import hf_ext
from hf_ext.config import DataArguments
from hf_ext.data import prepare_data
from hf_ext.distributed import check_launcher, sharded_launcher
from hf_ext.drift.callbacks import DriftCallback
from hf_ext.errors import ConfigError
from hf_ext.heads.callbacks import HeadImportanceCallback
from hf_ext.models import tiny_model
from hf_ext.run_logger import LoggingCallback
from hf_ext.trainer import HfExtTrainer

READS = {
    "GradientCallback": "gradients",
    "ImportanceCallback": "gradients",
    "MaskedUpdateCallback": "gradients",
    "LeafWeightCallback": "gradients",
    "CoefficientDriftCallback": "weights",
    "HeadImportanceCallback": "weights",
    "DriftCallback": "weights",
    "LoraNullCallback": "weights",
}
FSDP = {"ACCELERATE_USE_FSDP": "true"}
ZERO2 = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}
ZERO3 = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_callback_that_reads_the_model_declares_what_it_reads():
    for module in pkgutil.walk_packages(hf_ext.__path__, "hf_ext."):
        importlib.import_module(module.name)
    found = {cls.__name__: cls.reads for cls in _subclasses(LoggingCallback) if cls.__module__.startswith("hf_ext.")}
    assert found == READS  # a new callback must be placed in the support matrix (docs/launching.md)


def _args(tmp_path, **kwargs):
    return TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, **kwargs)


@pytest.mark.parametrize(
    "env, launcher, refused",
    [
        ({}, None, set()),
        (FSDP, "FSDP", {"weights", "gradients"}),
        (ZERO2, "DeepSpeed ZeRO-2", {"gradients"}),
        (ZERO3, "DeepSpeed ZeRO-3", {"weights", "gradients"}),
    ],
)
def test_launcher_matrix(tmp_path, monkeypatch, env, launcher, refused):
    args = _args(tmp_path)  # before the environment: TrainingArguments would import DeepSpeed
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert sharded_launcher(args) == launcher
    for reads in ("weights", "gradients"):
        if reads in refused:
            with pytest.raises(ConfigError, match=f"^Reader cannot run under {launcher}: it reads whole {reads}"):
                check_launcher(args, "Reader", reads)
        else:
            check_launcher(args, "Reader", reads)


def _trainer(tmp_path):
    model, tokenizer = tiny_model("bert", "seq_cls")
    data = prepare_data(DataArguments(max_train_samples=16, max_eval_samples=8), tokenizer, "seq_cls")
    trainer = HfExtTrainer(model=model, args=_args(tmp_path), train_dataset=data.train, data_collator=data.collator)
    return trainer, [data.collator([data.train[i] for i in range(4)])]


def test_weight_readers_bind_under_zero2_and_are_refused_under_zero3_and_fsdp(tmp_path, monkeypatch):
    trainer, batches = _trainer(tmp_path)
    for env, refused in ((ZERO2, False), (ZERO3, True), (FSDP, True)):
        with monkeypatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            for callback in (DriftCallback(batches, every=1), HeadImportanceCallback(batches, every=1)):
                if refused:
                    with pytest.raises(ConfigError, match=f"{type(callback).__name__} cannot run under"):
                        trainer.add_callback(callback)
                else:
                    trainer.add_callback(callback)
                    assert callback.trainer is trainer
                    trainer.remove_callback(callback)


def test_fsdp_asked_for_on_a_cpu_is_refused_instead_of_silently_dropped(tmp_path, monkeypatch):
    """accelerate enables FSDP only for GPU process groups; on CPUs (``accelerate launch`` with an FSDP config, or
    ``fsdp`` under torchrun) it trains unsharded without a word."""
    model, _ = tiny_model("bert", "seq_cls")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigError, match="accelerate runs FSDP only on GPUs: on cpu this run would silently train"):
        HfExtTrainer(model=model, args=_args(tmp_path), train_dataset=[{"input_ids": torch.ones(4, dtype=torch.long)}])


@pytest.mark.parametrize(
    "recipe, config, who, reads",
    [
        ("head_plasticity", "head_plasticity_minilm_rotten_tomatoes.json", "the head study", "weights"),
        ("drift", "drift_minilm_sentiment.json", "the drift study", "weights"),
        ("lora_null", "lora_null_minilm_topic.json", "LoRA-Null (its verification)", "weights"),
        (
            "lora_null_preservation",
            "lora_null_preservation_minilm.json",
            "the LoRA-Null preservation study (its calibration and initialisation)",
            "weights",
        ),
        ("warp", "warp_tiny_llama.json", "WaRP (its importance and masked updates)", "gradients"),
    ],
)
def test_studies_refuse_fsdp_before_measuring_or_writing(tmp_path, monkeypatch, recipe, config, who, reads):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=rf"^{re.escape(who)} cannot run under FSDP: it reads whole {reads}"):
        run_recipe(recipe, config, f"output_dir={out}")
    assert not out.exists()
