import logging

import pytest
import torch
from launch_util import run_script, torchrun
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import TrainingArguments

from hf_ext.config import DataArguments, ModelArguments
from hf_ext.data import prepare_data
from hf_ext.errors import ConfigError
from hf_ext.io import load_tensors
from hf_ext.lora_null.callbacks import LoraNullCallback
from hf_ext.lora_null.init import check_frozen_A, initialize_lora_null_weights, save_lora_null
from hf_ext.lora_null.verify import METRICS, verify_adapter
from hf_ext.models import load_model, load_tokenizer
from hf_ext.texts import load_texts, text_batches
from hf_ext.trainer import HfExtTrainer

TARGETS = ["query", "value", "intermediate.dense"]


def _model(seed=0):
    tokenizer = load_tokenizer("tiny:bert")
    model = load_model(ModelArguments(model_name_or_path="tiny:bert"), tokenizer, ["a", "b"], seed=seed).eval()
    return model, tokenizer


def _batches(tokenizer, n=96, task="sentiment"):
    _, texts = load_texts(f"builtin:{task}", split="train", limit=n)
    return text_batches(tokenizer, texts, batch_size=16, max_length=32)


def _peft(model, r=4, targets=TARGETS):
    return get_peft_model(model, LoraConfig(r=r, lora_alpha=8, target_modules=targets, task_type="SEQ_CLS")).eval()


@pytest.mark.parametrize("mode", ["null_frozen_A", "null_projection"])
def test_the_model_is_unchanged_at_init(mode):
    model, tokenizer = _model()
    batches = _batches(tokenizer)
    with torch.no_grad():
        before = [model(**b).logits for b in batches[:2]]
    peft_model = _peft(model)
    init = initialize_lora_null_weights(peft_model, batches, mode=mode, progress=False)
    with torch.no_grad():
        after = [peft_model(**b).logits for b in batches[:2]]
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0 if mode == "null_frozen_A" else 1e-5)
    assert init.freeze_A == (mode == "null_frozen_A") and len(init.layers) == 6
    if mode == "null_projection":  # the base weights now hold W - P, and B A holds P
        layer = peft_model.base_model.model.bert.encoder.layer[0].attention.self.query
        assert layer.lora_B["default"].weight.abs().max() > 0


def test_calibration_in_groups_under_a_memory_budget_gives_the_same_adapters():
    """calib_memory_gb: one pass over the texts per group of layers, each group's statistics freed before the next;
    the null spaces and the calibration record equal one pass's."""
    from hf_ext.activations import group_by_memory, statistics_bytes
    from hf_ext.lora_null.init import lora_layers

    model, tokenizer = _model()
    batches = _batches(tokenizer)
    one = _peft(model)
    whole = initialize_lora_null_weights(one, batches, progress=False)
    grouped_model = _peft(_model()[0])
    layers = {name: layer.base_layer for name, layer in lora_layers(grouped_model).items()}
    budget_gb = 1.2 * max(statistics_bytes(layer, torch.float64) for layer in layers.values()) / 2**30
    assert len(group_by_memory(layers, budget_gb * 2**30, torch.float64)) > 2
    grouped = initialize_lora_null_weights(grouped_model, batches, memory_gb=budget_gb, progress=False)
    assert grouped.to_dict() == whole.to_dict()
    for (name, a), (_, b) in zip(one.named_parameters(), grouped_model.named_parameters(), strict=True):
        assert torch.equal(a, b), name
        assert a.requires_grad == b.requires_grad, name


def test_measured_null_ratio_on_the_calibration_data_equals_the_theoretical_value():
    model, tokenizer = _model()
    batches = _batches(tokenizer, n=160)
    peft_model = _peft(model)
    init = initialize_lora_null_weights(peft_model, batches, progress=False)
    result = verify_adapter(peft_model, batches, max_activation_samples=10**6, init=init.to_dict())
    for name, values in result["layers"].items():
        assert values["null_ratio"] == pytest.approx(values["theoretical_ratio"], rel=1e-6, abs=1e-9), name
        assert values["null_ratio"] == pytest.approx(values["a_ratio"], rel=1e-6)  # A has orthonormal rows (float32)
        assert values["adapter_effect"] == 0 and values["norm_B"] == 0
    other = verify_adapter(peft_model, _batches(tokenizer, n=160, task="topic"), init=init.to_dict())
    assert other["mean"]["null_ratio"] > 2 * result["mean"]["null_ratio"]  # other data uses the "null" space more


def test_verification_json_has_every_metric_per_layer(tmp_path):
    from hf_ext.lora_null.verify import load_verification, save_verification

    model, tokenizer = _model()
    peft_model = _peft(model)
    init = initialize_lora_null_weights(peft_model, _batches(tokenizer), progress=False)
    result = verify_adapter(peft_model, _batches(tokenizer, n=32), init=init.to_dict())
    save_verification(result, tmp_path / "v.json")
    loaded = load_verification(tmp_path / "v.json")
    assert len(loaded["layers"]) == 6
    for values in loaded["layers"].values():
        assert set(METRICS) <= set(values) and values["rows"] > 0
    assert set(METRICS) == set(loaded["mean"])


def _train(peft_model, tokenizer, tmp_path, callbacks=(), steps=4):
    data = prepare_data(DataArguments(max_train_samples=64, max_eval_samples=16), tokenizer, "seq_cls")
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=steps,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        weight_decay=0.1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
    )
    trainer = HfExtTrainer(
        model=peft_model, args=args, train_dataset=data.train, data_collator=data.collator, callbacks=list(callbacks)
    )
    trainer.train()
    return trainer


def test_training_keeps_a_bit_identical_and_changes_b(tmp_path):
    model, tokenizer = _model()
    peft_model = _peft(model)
    batches = _batches(tokenizer)
    init = initialize_lora_null_weights(peft_model, batches, progress=False)
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_" in n}
    callback = LoraNullCallback(batches[:2], init=init.to_dict())
    _train(peft_model.train(), tokenizer, tmp_path, [callback])
    after = dict(peft_model.named_parameters())
    for name, value in before.items():
        if "lora_A" in name:
            assert torch.equal(after[name], value), name  # through AdamW weight decay too
        else:
            assert not torch.equal(after[name], value), name
    assert [h["event"] for h in callback.history] == ["init", "end"]
    assert callback.history[0]["result"]["mean"]["norm_B"] == 0 < callback.history[-1]["result"]["mean"]["norm_B"]


def test_a_wrongly_frozen_projection_is_refused_before_training(tmp_path):
    model, tokenizer = _model()
    peft_model = _peft(model)
    initialize_lora_null_weights(peft_model, _batches(tokenizer), progress=False)
    for name, parameter in peft_model.named_parameters():  # the research code's typo: froze B instead of A
        if "lora_B" in name and "query" in name:
            parameter.requires_grad_(False)
    with pytest.raises(RuntimeError, match="every lora_B must be trainable; frozen: .*query.lora_B"):
        check_frozen_A(peft_model)
    for name, parameter in peft_model.named_parameters():
        if "lora_" in name:
            parameter.requires_grad_("lora_B" in name or "value.lora_A" in name)
    with pytest.raises(RuntimeError, match="lora_A must be frozen, but 2 require grad"):
        _train(peft_model.train(), tokenizer, tmp_path, [LoraNullCallback(_batches(tokenizer, n=16))])
    for name, parameter in peft_model.named_parameters():
        if "lora_A" in name:
            parameter.requires_grad_(False)
    optimizer = torch.optim.SGD([p for n, p in peft_model.named_parameters() if "lora_" in n], lr=0.1)
    with pytest.raises(RuntimeError, match="the optimizer holds frozen lora_A parameters"):
        check_frozen_A(peft_model, optimizer)


@pytest.mark.parametrize("mode", ["null_frozen_A", "null_projection"])
def test_the_saved_adapter_reloads_with_plain_peft_and_gives_identical_logits(tmp_path, mode):
    model, tokenizer = _model()
    model.save_pretrained(tmp_path / "base")
    peft_model = _peft(model)
    batches = _batches(tokenizer)
    initialize_lora_null_weights(peft_model, batches, mode=mode, progress=False)
    peft_model.save_pretrained(str(tmp_path / "init"))
    _train(peft_model.train(), tokenizer, tmp_path / "train")
    projection = mode == "null_projection"
    save_lora_null(peft_model, tmp_path / "adapter", initial_adapter=tmp_path / "init" if projection else None)
    peft_model.eval()
    with torch.no_grad():
        expected = [peft_model(**b).logits for b in batches[:2]]
    fresh = load_model(ModelArguments(model_name_or_path=str(tmp_path / "base")), tokenizer, ["a", "b"])
    reloaded = PeftModel.from_pretrained(fresh, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        got = [reloaded(**b).logits for b in batches[:2]]
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    merged = reloaded.merge_and_unload()
    with torch.no_grad():
        torch.testing.assert_close(merged(**batches[0]).logits, expected[0], rtol=1e-4, atol=1e-4)
    assert reloaded.peft_config["default"].r == (8 if projection else 4)  # projection: a rank-2r standard LoRA


def test_bad_inputs_are_refused_or_warned(caplog):
    model, tokenizer = _model()
    with pytest.raises(ConfigError, match="LoRA rank r=65 is larger than d_in=64"):
        initialize_lora_null_weights(_peft(model, r=65, targets=["query"]), _batches(tokenizer), progress=False)
    model, _ = _model()
    with pytest.raises(ConfigError, match="has no LoRA layer"):
        initialize_lora_null_weights(model, _batches(tokenizer), progress=False)
    with pytest.raises(ConfigError, match="mode 'null' is not one of"):
        initialize_lora_null_weights(_peft(model), _batches(tokenizer), mode="null", progress=False)
    model, _ = _model()
    with caplog.at_level(logging.WARNING):
        initialize_lora_null_weights(_peft(model), _batches(tokenizer, n=4), progress=False)
    assert "a stable covariance needs at least 256 tokens (4 x d_in)" in caplog.text


@pytest.mark.multiprocess
@pytest.mark.slow  # covered by default: test_two_process_lora_null_run_matches_one_process calibrates on 2 ranks
def test_two_process_calibration_equals_one_process(tmp_path):
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    run_script("lora_null_calibration.py", str(one))
    torchrun("lora_null_calibration.py", str(two))
    single, meta_one = load_tensors(one)
    double, meta_two = load_tensors(two)
    assert (meta_one["world_size"], meta_two["world_size"]) == (1, 2) and len(single) == 4
    assert meta_one["init"]["layers"].keys() == meta_two["init"]["layers"].keys()
    for name, layer in meta_one["init"]["layers"].items():
        assert layer["tokens"] == meta_two["init"]["layers"][name]["tokens"]
    for name in single:
        # eigenvectors of the same float64 moment; summation order differs, so compare the subspaces
        a, b = single[name].double(), double[name].double()
        assert (a @ b.T).norm() ** 2 / a.shape[0] == pytest.approx(1, abs=1e-6), name
