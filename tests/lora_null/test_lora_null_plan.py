"""The LoRA-Null memory plan against the tensors a run allocates (calibration statistics, gradients and AdamW state
after a step, the verification's bases), on the MiniLM topic config."""

from pathlib import Path

import torch
from peft import get_peft_model
from plan_util import storage_bytes

from hf_ext import DataArguments, HfExtTrainingArguments, LoraNullArguments, ModelArguments
from hf_ext.activations import collect_input_statistics
from hf_ext.lora_null.init import lora_layers
from hf_ext.lora_null.plan import plan
from hf_ext.lora_null.verify import _LayerSums
from hf_ext.models import load_model, load_tokenizer
from hf_ext.parsing import parse_config

CONFIG = Path(__file__).resolve().parents[2] / "recipes" / "configs" / "lora_null_minilm_topic.json"


def test_planned_static_bytes_equal_the_allocated_ones():
    args = parse_config(
        (ModelArguments, DataArguments, LoraNullArguments, HfExtTrainingArguments),
        [str(CONFIG), "output_dir=unused", "report_to=[]"],
    )
    model_args, _, lora_args, _ = args
    stages = {stage.name: stage for stage in plan(args, launcher="ddp", num_processes=1).stages}
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    model = get_peft_model(load_model(model_args, tokenizer, ["a", "b", "c", "d"]), lora_args.lora_config("seq_cls"))
    layers = lora_layers(model)
    batch = tokenizer(["a short sentence", "and another, a little longer one"], padding=True, return_tensors="pt")

    with model.disable_adapter():
        statistics = collect_input_statistics(
            model, {n: layer.base_layer for n, layer in layers.items()}, [dict(batch)], compute_dtype=torch.float64
        )
    distinct = {id(s): s for s in statistics.values()}.values()
    held = storage_bytes(t for s in distinct for t in (s.count, s.total, s.gram, s._buffer))
    assert stages["calibration"].bytes_of("calibration statistics") == held
    assert stages["calibration"].bytes_of("weights") == storage_bytes(model.parameters())

    for layer in layers.values():  # null_frozen_A, after calibration (leaving disable_adapter() unfreezes adapters)
        layer.lora_A["default"].weight.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3, fused=True)
    model(**batch, labels=torch.tensor([0, 3])).loss.backward()
    optimizer.step()
    training = stages["training"]
    assert training.bytes_of("gradients") == storage_bytes(p.grad for p in trainable)
    state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    assert training.bytes_of("optimizer state") == storage_bytes(state)
    bases = [_LayerSums(layer, "default", 16).q for layer in layers.values()]
    assert training.bytes_of("verification bases") == storage_bytes(bases)


def test_with_calib_memory_gb_the_plan_holds_the_largest_group_the_calibration_holds(monkeypatch):
    import hf_ext.activations as activations
    from hf_ext.lora_null.init import initialize_lora_null_weights

    args = parse_config(
        (ModelArguments, DataArguments, LoraNullArguments, HfExtTrainingArguments),
        [str(CONFIG), "output_dir=unused", "report_to=[]", "calib_memory_gb=0.05"],
    )
    model_args, _, lora_args, _ = args
    planned = next(s for s in plan(args, launcher="ddp", num_processes=1).stages if s.name == "calibration")
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    model = get_peft_model(load_model(model_args, tokenizer, ["a", "b", "c", "d"]), lora_args.lora_config("seq_cls"))
    batch = dict(
        tokenizer(["a short sentence", "and another, a little longer one"], padding=True, return_tensors="pt")
    )
    held, collect = [], activations.collect_input_statistics

    def recorded(*args, **kwargs):
        statistics = collect(*args, **kwargs)
        distinct = {id(s): s for s in statistics.values()}.values()
        held.append(storage_bytes(t for s in distinct for t in (s.count, s.total, s.gram, s._buffer)))
        return statistics

    monkeypatch.setattr(activations, "collect_input_statistics", recorded)
    initialize_lora_null_weights(model, [batch] * 120, memory_gb=lora_args.calib_memory_gb, progress=False)
    assert len(held) > 2  # one pass per group
    assert planned.bytes_of("calibration statistics") == max(held)


def test_the_calibration_forward_is_planned_at_the_recipes_calibration_batch_not_the_eval_batch():
    from hf_ext.lora_null.plan import CALIBRATION_BATCH, calibration_stage, peft_meta_model

    def calibration(*overrides):
        args = parse_config(
            (ModelArguments, DataArguments, LoraNullArguments, HfExtTrainingArguments),
            [str(CONFIG), "output_dir=unused", "report_to=[]", "calib_max_length=512", *overrides],
        )
        return next(s for s in plan(args, launcher="ddp", num_processes=1).stages if s.name == "calibration"), args

    small, args = calibration("per_device_eval_batch_size=1")
    large, _ = calibration("per_device_eval_batch_size=256")
    item = "forward or eigendecomposition"
    assert small.bytes_of(item) == large.bytes_of(item)
    model_args, data_args, lora_args, _ = args
    model, layers = peft_meta_model(model_args, data_args, lora_args)

    def planned_at(batch):
        stage = calibration_stage(model, layers, batch=batch, length=512, launcher="ddp", num_processes=1)
        return stage.bytes_of(item)

    assert small.bytes_of(item) == planned_at(CALIBRATION_BATCH)
    assert planned_at(256) > planned_at(CALIBRATION_BATCH)  # the forward, not the eigendecomposition, decides here
