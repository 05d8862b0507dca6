"""The drift study's memory plan against what a run allocates: the LoRA arm's weights, gradients and AdamW state,
and the drift accumulators in both of their regimes (rows kept, then feature sums)."""

from pathlib import Path

import pytest
import torch
from peft import get_peft_model
from plan_util import optimizer_bytes, storage_bytes

from hf_ext import DataArguments, DriftArguments, HfExtTrainingArguments, ModelArguments
from hf_ext.drift.metrics import DriftAccumulator
from hf_ext.drift.plan import accumulator_bytes, plan
from hf_ext.models import load_model, load_tokenizer
from hf_ext.parsing import parse_config
from hf_ext.plan import label_names

CONFIG = Path(__file__).resolve().parents[2] / "recipes" / "configs" / "drift_minilm_sentiment.json"


def parsed(*overrides):
    types = (ModelArguments, DataArguments, DriftArguments, HfExtTrainingArguments)
    return parse_config(types, [str(CONFIG), "output_dir=unused", "report_to=[]", *overrides])


def held_by(accumulator: DriftAccumulator) -> int:
    cka = accumulator.cka
    rows = [t for side in cka._rows for t in side] if cka._rows is not None else []
    return storage_bytes(
        [*rows, *cka._shift, *cka._sums.values(), accumulator._hist, accumulator._mean_x, accumulator._mean_y]
    )


@pytest.mark.parametrize("rows", [40, 100])  # fewer rows than features (kept), then more (summed)
def test_accumulator_bytes_equal_what_an_accumulator_holds(rows):
    accumulator = DriftAccumulator()
    generator = torch.Generator().manual_seed(0)
    for _ in range(rows // 20):
        accumulator.update(torch.randn(20, 64, generator=generator), torch.randn(20, 64, generator=generator))
    assert accumulator.cka.space == ("gram" if rows <= 64 else "feature")
    assert accumulator_bytes(rows, 64) == held_by(accumulator)


def test_lora_arm_plan_equals_the_allocated_bytes_and_drift_steps_add_a_measurement():
    args = parsed("drift_steps=5", "layers=0-3")
    model_args, data_args, drift, _ = args
    stages = {stage.name: stage for stage in plan(args, launcher="ddp", num_processes=1).stages}
    assert list(stages) == ["full", "drift, full", "lora r32", "drift, lora"]

    tokenizer = load_tokenizer(model_args.model_name_or_path)
    labels = label_names(data_args, model_args.task_type)
    arm = max(drift.arms(1e-4), key=lambda a: a.rank or 0)
    model = get_peft_model(load_model(model_args, tokenizer, labels), drift.lora_config_of(arm, "seq_cls"))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3, fused=True)
    batch = tokenizer(["a short sentence", "and another, a little longer one"], padding=True, return_tensors="pt")
    model(**batch, labels=torch.tensor([0, 1])).loss.backward()
    optimizer.step()
    lora = stages["lora r32"]
    assert lora.bytes_of("weights") == storage_bytes(model.parameters())
    assert lora.bytes_of("gradients") == storage_bytes(p.grad for p in trainable)
    assert lora.bytes_of("optimizer state") == optimizer_bytes(optimizer)

    measurement = stages["drift, lora"]
    width = model.config.hidden_size
    assert measurement.bytes_of("drift accumulators") == 4 * accumulator_bytes(drift.eval_subset_size, width)
    assert measurement.bytes_of("gradients") == 0  # the callback measures after the step, gradients freed
    assert measurement.bytes_of("optimizer state") == lora.bytes_of("optimizer state")


def test_token_pooling_sums_features_and_without_drift_steps_there_is_no_measurement():
    token_stages = {
        s.name: s for s in plan(parsed("drift_steps=5", "pooling=tokens"), launcher="ddp", num_processes=1).stages
    }
    rows = 256 * 48  # eval_subset_size x max_seq_length tokens at most
    assert token_stages["drift, full"].bytes_of("drift accumulators") == 7 * accumulator_bytes(rows, 384)
    assert [s.name for s in plan(parsed(), launcher="ddp", num_processes=1).stages] == ["full", "lora r32"]
