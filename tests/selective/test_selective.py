"""Selective-layer training: the no-grad prefix records nothing, changes no gradient, and the selection
is exactly what the config says."""

import copy
import re

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

from hf_ext.errors import ConfigError
from hf_ext.models import tiny_model
from hf_ext.selective.config import SelectiveArguments
from hf_ext.selective.inspect import inspect_graph
from hf_ext.selective.prefix import attach_no_grad_prefix, no_grad_prefix_of
from hf_ext.selective.selection import resolve_train_layers, select_trainable

ARCHITECTURES = ["llama", "qwen2", "bert", "deberta-v2"]
NO_DROPOUT = {
    "llama": {"attention_dropout": 0.0},
    "qwen2": {"attention_dropout": 0.0},
    "bert": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
    "deberta-v2": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
}
TEXTS = ["a good and happy film", "bad boring plot that never ends", "fine", "the worst acting of the year"]


def _model(architecture, layers=4, seed=0):
    return tiny_model(
        architecture, "seq_cls", seed=seed, num_labels=3, num_hidden_layers=layers, **NO_DROPOUT[architecture]
    )


def _batch(tokenizer):
    batch = dict(tokenizer(TEXTS, return_tensors="pt", padding=True))
    batch["labels"] = torch.tensor([0, 1, 2, 1])
    return batch


def _checkpointing(model, mode):
    """mode: None (off), 'non-reentrant' (transformers' default) or 'reentrant'."""
    if mode is None:
        model.enable_input_require_grads()  # what makes a plain frozen prefix record its graph
    else:
        model.activation_checkpointing_enable({"use_reentrant": mode == "reentrant"})


@pytest.mark.parametrize("finetuning", ["full", "lora"])
@pytest.mark.parametrize("checkpointing", [None, "non-reentrant", "reentrant"])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_prefix_records_no_node_and_saves_no_tensor(architecture, checkpointing, finetuning):
    model, tokenizer = _model(architecture)
    model, selection = select_trainable(model, SelectiveArguments(train_layers="last:2", finetuning=finetuning))
    _checkpointing(model, checkpointing)
    report = inspect_graph(model, _batch(tokenizer))
    assert selection.prefix_blocks == 2
    for index in (0, 1):
        row = report.block(index)
        assert (row.autograd_nodes, row.saved_tensors, row.saved_bytes, row.trainable_parameters) == (0, 0, 0, 0)
    for index in (2, 3):
        assert report.block(index).autograd_nodes > 0 and report.block(index).trainable_parameters > 0
        assert report.block(index).saved_tensors > 0


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_a_plain_frozen_prefix_is_recorded_which_is_what_the_prefix_removes(architecture):
    """The control: without the no-grad prefix the same frozen blocks record nodes and save activations."""
    model, tokenizer = _model(architecture)
    model, _ = select_trainable(model, SelectiveArguments(train_layers="last:2"), no_grad_prefix=False)
    model.enable_input_require_grads()
    report = inspect_graph(model, _batch(tokenizer))
    assert report.block(0).trainable_parameters == 0
    assert report.block(0).autograd_nodes > 10 and report.block(0).saved_bytes > 0


def _gradients(model, batch):
    model.train()
    output = model(**batch)
    output.loss.backward()
    return output.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("checkpointing", [None, "non-reentrant", "reentrant"])
@pytest.mark.parametrize(
    "architecture, finetuning", [(a, "full") for a in ARCHITECTURES] + [("llama", "lora"), ("bert", "lora")]
)
def test_gradients_equal_those_of_the_plain_frozen_model(architecture, finetuning, checkpointing):
    base, tokenizer = _model(architecture)
    args = SelectiveArguments(train_layers="2-3", finetuning=finetuning, train_modules=None)
    plain, _ = select_trainable(copy.deepcopy(base), args, no_grad_prefix=False)
    selective, _ = select_trainable(base, args)
    if finetuning == "lora":  # B = 0 at init gives A no gradient; both models get the same random adapters
        with torch.no_grad():
            for name, parameter in selective.named_parameters():
                if "lora_B" in name:
                    parameter.normal_()
        plain.load_state_dict(selective.state_dict())
    _checkpointing(selective, checkpointing)
    batch = _batch(tokenizer)
    loss, grads = _gradients(selective, batch)
    plain_loss, plain_grads = _gradients(plain, batch)
    torch.testing.assert_close(loss, plain_loss, rtol=1e-6, atol=1e-6)
    assert set(grads) == set(plain_grads) and len(grads) > 4
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, name  # every trained tensor got a gradient (reentrant checkpoints need care)
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-5, atol=1e-6, msg=name)


def test_trainable_parameter_counts_are_exact():
    model, _ = _model("qwen2")  # hidden 64, 4 heads, 2 kv heads of 16, q/k/v with bias
    model, _ = select_trainable(model, SelectiveArguments(train_layers="last:2", train_modules="q_proj|v_proj"))
    q, v, score = 64 * 64 + 64, 64 * 32 + 32, 64 * 3
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2 * (q + v) + score

    model, _ = _model("qwen2")
    args = SelectiveArguments(train_layers="last:2", train_modules="q_proj|v_proj", finetuning="lora", lora_r=4)
    model, _ = select_trainable(model, args)
    lora_q, lora_v = 4 * (64 + 64), 4 * (64 + 32)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2 * (lora_q + lora_v) + score

    model, _ = _model("bert")  # a whole BERT block: q, k, v, o + 2 LayerNorms + the 64->128->64 MLP
    model, _ = select_trainable(model, SelectiveArguments(train_layers="3"))
    block = 4 * (64 * 64 + 64) + 2 * 128 + (64 * 128 + 128) + (128 * 64 + 64)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == block + (64 * 3 + 3)

    model, _ = _model("deberta-v2")  # the regex is searched: query_proj and pos_query_proj; the head has a pooler
    model, selection = select_trainable(model, SelectiveArguments(train_layers="3", train_modules="query_proj"))
    assert sorted(selection.modules.values()) == ["attention.self.pos_query_proj", "attention.self.query_proj"]
    assert selection.head == ["pooler", "classifier"]
    expected = 2 * (64 * 64 + 64) + (64 * 64 + 64) + (64 * 3 + 3)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected


def test_train_layers_forms():
    assert resolve_train_layers("last:4", 20) == [16, 17, 18, 19]
    assert resolve_train_layers("16-19", 20) == [16, 17, 18, 19]
    assert resolve_train_layers("0,2,5-6", 8) == [0, 2, 5, 6]
    assert resolve_train_layers(None, 3) == [0, 1, 2]
    assert resolve_train_layers("none", 3) == []


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_none_trains_the_head_alone_on_an_encoder_that_records_nothing(architecture):
    """The frozen-encoder probe: every block in the no-grad prefix, only the head has gradients."""
    model, tokenizer = _model(architecture)
    model, selection = select_trainable(model, SelectiveArguments(train_layers="none"))
    assert selection.layers == [] and selection.modules == {} and selection.prefix_blocks == 4
    report = inspect_graph(model, _batch(tokenizer))
    for index in range(4):
        row = report.block(index)
        assert (row.autograd_nodes, row.saved_tensors, row.trainable_parameters) == (0, 0, 0)
    loss, grads = _gradients(model, _batch(tokenizer))
    assert grads and all(name.split(".")[0] in selection.head for name in grads)
    assert all(g.abs().sum() > 0 for g in grads.values())


@pytest.mark.parametrize("override", [{"finetuning": "lora"}, {"train_head": False}])
def test_none_without_a_trainable_head_is_refused(override):
    model, _ = _model("bert")
    with pytest.raises(ConfigError, match="train_layers='none' trains the head alone"):
        select_trainable(model, SelectiveArguments(train_layers="none", **override))


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "train_layers is empty"),
        ("  ", "train_layers is empty"),
        ("last:0", "positive count"),
        ("last:x", "positive count"),
        ("last:5", "asks for 5 blocks but the model has blocks 0-3"),
        ("3-6", "names block(s) [4, 5, 6] but the model has blocks 0-3"),
        ("3-1", "runs backwards"),
        ("two", "cannot read 'two'"),
    ],
)
def test_bad_train_layers_say_what_exists(spec, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve_train_layers(spec, 4)


def test_train_modules_matching_nothing_lists_the_names_inside_a_block():
    model, _ = _model("llama")
    with pytest.raises(ConfigError, match=r"matches none of the modules with parameters inside blocks 2-3.*q_proj"):
        select_trainable(model, SelectiveArguments(train_layers="last:2", train_modules="query"))
    with pytest.raises(ConfigError, match=r"none of the linear layers.*mlp.down_proj"):
        select_trainable(model, SelectiveArguments(train_layers="last:2", train_modules="norm", finetuning="lora"))
    with pytest.raises(ConfigError, match="not a regular expression"):
        select_trainable(model, SelectiveArguments(train_layers="last:2", train_modules="q_proj("))
    assert all(p.requires_grad for p in model.parameters())  # the refusals changed nothing


def test_extra_modules_below_the_prefix_are_refused_and_above_it_train():
    model, _ = _model("llama")
    with pytest.raises(ConfigError, match=r"'model.embed_tokens'.*runs below the first trained block \(3\)"):
        select_trainable(model, SelectiveArguments(train_layers="last:1", train_extra_modules="embed_tokens"))
    with pytest.raises(ConfigError, match=r"'model.layers.0.mlp.*runs below"):
        select_trainable(model, SelectiveArguments(train_layers="last:1", train_extra_modules=r"layers\.0\.mlp"))
    with pytest.raises(ConfigError, match="matches no module with parameters"):
        select_trainable(model, SelectiveArguments(train_layers="last:1", train_extra_modules="pooler"))
    model, selection = select_trainable(
        model, SelectiveArguments(train_layers="last:1", train_extra_modules=r"\.norm$")
    )
    assert selection.extra == ["model.norm"] and model.model.norm.weight.requires_grad
    model, selection = select_trainable(
        _model("llama")[0], SelectiveArguments(train_layers="0-3", train_extra_modules="embed_tokens")
    )
    assert selection.prefix_blocks == 0 and model.model.embed_tokens.weight.requires_grad


def test_saved_checkpoints_are_plain_models_and_adapters(tmp_path):
    model, tokenizer = _model("llama")
    model, _ = select_trainable(model, SelectiveArguments(train_layers="last:1"))
    model.save_pretrained(tmp_path / "full")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "full")
    assert set(reloaded.state_dict()) == set(model.state_dict())
    batch = _batch(tokenizer)
    batch.pop("labels")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits)

    base, _ = _model("llama")
    args = SelectiveArguments(train_layers="last:2", train_modules="q_proj|v_proj", finetuning="lora")
    adapted, _ = select_trainable(copy.deepcopy(base), args)
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.normal_()
    adapted.save_pretrained(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    assert loaded.peft_config["default"].layers_to_transform == [2, 3]
    assert sorted(loaded.peft_config["default"].target_modules) == ["self_attn.q_proj", "self_attn.v_proj"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, adapted(**batch).logits)


def test_ambiguous_module_suffixes_get_adapters_only_where_chosen():
    """peft matches target_modules by suffix: BERT's 'output.dense' is also the end of 'attention.output.dense'."""
    model, _ = _model("bert")
    args = SelectiveArguments(train_layers="last:1", train_modules=r"^output\.dense$", finetuning="lora")
    model, selection = select_trainable(model, args)
    adapted = [n for n, m in model.named_modules() if hasattr(m, "lora_A")]
    assert [n.removeprefix("base_model.model.") for n in adapted] == ["bert.encoder.layer.3.output.dense"]


def test_prefix_restores_grad_mode_when_a_block_raises_and_can_be_removed():
    model, tokenizer = _model("llama")
    model, _ = select_trainable(model, SelectiveArguments(train_layers="last:1"))

    def fail(module, args):
        raise RuntimeError("boom")

    handle = model.model.layers[1].register_forward_pre_hook(fail)
    batch = _batch(tokenizer)
    with pytest.raises(RuntimeError, match="boom"):
        model(**batch)
    assert torch.is_grad_enabled()
    handle.remove()
    model.enable_input_require_grads()
    no_grad_prefix_of(model).remove()
    assert no_grad_prefix_of(model) is None
    assert inspect_graph(model, batch).block(0).autograd_nodes > 0
    attach_no_grad_prefix(model, 3)
    attach_no_grad_prefix(model, 3)  # a second attach replaces the first
    assert inspect_graph(model, batch).block(0).autograd_nodes == 0


def test_arguments_are_checked_before_any_model_is_involved():
    with pytest.raises(ConfigError, match="finetuning='LoRA': expected one of 'full', 'lora'"):
        SelectiveArguments(finetuning="LoRA")
    with pytest.raises(ConfigError, match="runs backwards"):
        SelectiveArguments(train_layers="3-1")
    with pytest.raises(ConfigError, match="train_modules='q_proj\\(' is not a regular expression"):
        SelectiveArguments(train_modules="q_proj(")
    assert SelectiveArguments(train_layers=1).train_layers == "1"  # one block, as `train_layers=1` reads


def test_models_that_do_not_fit_are_refused():
    model, _ = _model("llama")
    peft_model, _ = select_trainable(
        copy.deepcopy(model), SelectiveArguments(train_layers="last:1", finetuning="lora")
    )
    with pytest.raises(ConfigError, match="already wrapped by peft"):
        select_trainable(peft_model, SelectiveArguments(train_layers="last:1"))
    with pytest.raises(ConfigError, match="task_type='causal_lm' needs a ...ForCausalLM model"):
        select_trainable(model, SelectiveArguments(train_layers="last:1", finetuning="lora"), "causal_lm")
    causal, _ = tiny_model("llama", "causal_lm", num_hidden_layers=4)  # lm_head tied to the input embeddings
    with pytest.raises(ConfigError, match="'lm_head' shares its weight with the input embeddings"):
        select_trainable(causal, SelectiveArguments(train_layers="last:1"), "causal_lm")
    causal, selection = select_trainable(
        causal, SelectiveArguments(train_layers="last:1", train_head=False), "causal_lm"
    )
    assert not causal.model.embed_tokens.weight.requires_grad and selection.head == []
    with pytest.raises(ConfigError, match="holds LoRA targets of train_modules"):
        args = SelectiveArguments(
            train_layers="last:1", finetuning="lora", train_extra_modules=r"layers\.3\.self_attn"
        )
        select_trainable(model, args)


def test_lora_without_head_trains_only_adapters_and_adapters_are_seeded():
    args = SelectiveArguments(
        train_layers="last:1", train_modules="q_proj", finetuning="lora", lora_r=2, train_head=False
    )
    state = torch.random.get_rng_state()
    first, _ = select_trainable(_model("qwen2")[0], args, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    second, _ = select_trainable(_model("qwen2")[0], args, seed=3)
    trainable = {n: p for n, p in first.named_parameters() if p.requires_grad}
    assert sorted(trainable) == [
        "base_model.model.model.layers.3.self_attn.q_proj.lora_A.default.weight",
        "base_model.model.model.layers.3.self_attn.q_proj.lora_B.default.weight",
    ]
    torch.testing.assert_close(trainable[sorted(trainable)[0]], dict(second.named_parameters())[sorted(trainable)[0]])
