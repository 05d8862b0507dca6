import re

import pytest
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from hf_ext.models import tiny_model
from hf_ext.targets import find_attention, find_blocks, match_modules, parse_int_set, pattern_to_regex, select_linear

LINEAR_NAMES = {
    "llama": ("model.layers", "self_attn.o_proj", "mlp.down_proj"),
    "qwen2": ("model.layers", "self_attn.o_proj", "mlp.down_proj"),
    "bert": ("bert.encoder.layer", "attention.output.dense", "layer.*.output.dense"),
    "deberta-v2": ("deberta.encoder.layer", "attention.output.dense", "layer.*.output.dense"),
}


@pytest.mark.parametrize(
    "pattern, name, expected",
    [
        ("mlp.down_proj", "model.layers.3.mlp.down_proj", True),
        ("down_proj", "model.layers.3.mlp.down_proj", True),
        ("proj", "model.layers.3.mlp.down_proj", False),
        ("layers.31.mlp.down_proj", "model.layers.31.mlp.down_proj", True),
        ("layers.31.mlp.down_proj", "model.layers.1.mlp.down_proj", False),
        ("layers.[28-31].mlp.*", "model.layers.29.mlp.up_proj", True),
        ("layers.[28-31].mlp.*", "model.layers.27.mlp.up_proj", False),
        ("layers.[0,2,5-7].mlp.*", "model.layers.6.mlp.gate_proj", True),
        ("layers.[0,2,5-7].mlp.*", "model.layers.3.mlp.gate_proj", False),
        ("self_attn.*_proj", "model.layers.0.self_attn.q_proj", True),
        ("layers.0.**", "model.layers.0.self_attn.q_proj", True),
        ("layers.0.**", "model.layers.1.self_attn.q_proj", False),
        ("layers.**.q_proj", "model.layers.1.self_attn.q_proj", True),
        ("re:.*layers\\.1\\..*", "model.layers.1.mlp.up_proj", True),
        ("re:layers\\.1", "model.layers.1.mlp.up_proj", False),
    ],
)
def test_pattern_language(pattern, name, expected):
    assert bool(pattern_to_regex(pattern).fullmatch(name)) is expected


def test_int_sets():
    assert parse_int_set("28-31") == [28, 29, 30, 31]
    assert parse_int_set("0, 2,5-7") == [0, 2, 5, 6, 7]
    for bad in ["a-b", "3-1", "", "1-"]:
        with pytest.raises(ValueError):
            parse_int_set(bad)


def test_invalid_patterns():
    for bad in ["", ".mlp", "mlp.", "a..b"]:
        with pytest.raises(ValueError, match="invalid target pattern"):
            pattern_to_regex(bad)
    with pytest.raises(ValueError, match="invalid regular expression"):
        pattern_to_regex("re:(")


def test_select_on_each_tiny_architecture(tiny_architecture):
    model, _ = tiny_model(tiny_architecture, "causal_lm" if tiny_architecture in ("llama", "qwen2") else "seq_cls")
    prefix, o_proj, down = LINEAR_NAMES[tiny_architecture]
    assert find_blocks(model)[0] == prefix
    selected = select_linear(model, down)
    down_rel = down.removeprefix("layer.*.")
    expected = [f"{prefix}.{i}.{down_rel}" for i in range(2)]
    assert list(selected) == expected
    assert all(isinstance(m, nn.Linear) for m in selected.values())
    only_last = select_linear(model, [o_proj, down], layers="1")
    assert list(only_last) == [f"{prefix}.1.{o_proj}", f"{prefix}.1.{down_rel}"]
    assert list(select_linear(model, "re:" + re.escape(expected[0]))) == [expected[0]]


def test_select_keeps_model_order_and_deduplicates():
    model, _ = tiny_model("llama")
    names = list(select_linear(model, ["mlp.down_proj", "layers.0.mlp.*", "layers.[0-1].mlp.down_proj"]))
    assert names == [
        "model.layers.0.mlp.gate_proj",
        "model.layers.0.mlp.up_proj",
        "model.layers.0.mlp.down_proj",
        "model.layers.1.mlp.down_proj",
    ]


def test_selection_errors_say_what_was_found():
    model, _ = tiny_model("llama")
    with pytest.raises(ValueError, match=r"'mlp.dwn_proj' matches no nn.Linear .* named like: model.layers.0"):
        select_linear(model, ["mlp.down_proj", "mlp.dwn_proj"])
    with pytest.raises(ValueError, match="none is nn.Linear .*LlamaMLP"):
        select_linear(model, "layers.0.mlp")
    with pytest.raises(ValueError, match=r"layers \[5\] do not exist: LlamaForCausalLM has blocks 0-1"):
        select_linear(model, "mlp.down_proj", layers="5")
    with pytest.raises(ValueError, match="no target patterns"):
        select_linear(model, [])


def test_match_modules_returns_any_type():
    model, _ = tiny_model("llama")
    assert list(match_modules(model, "layers.*.mlp")) == ["model.layers.0.mlp", "model.layers.1.mlp"]


@pytest.mark.parametrize(
    "architecture, heads, kv_heads, head_dim",
    [("llama", 4, 2, 16), ("qwen2", 4, 2, 16), ("bert", 4, 4, 16), ("deberta-v2", 4, 4, 16)],
)
def test_find_attention(architecture, heads, kv_heads, head_dim):
    model, _ = tiny_model(architecture, "seq_cls")
    prefix, o_proj, _ = LINEAR_NAMES[architecture]
    found = find_attention(model)
    assert [a.layer for a in found] == [0, 1]
    assert [a.o for a in found] == [f"{prefix}.{i}.{o_proj}" for i in range(2)]
    a = found[0]
    assert (a.num_heads, a.num_kv_heads, a.head_dim, a.queries_per_kv) == (
        heads,
        kv_heads,
        head_dim,
        heads // kv_heads,
    )
    assert model.get_submodule(a.k).out_features == kv_heads * head_dim


def test_find_attention_on_embedded_minilm():
    from transformers import AutoModel

    from hf_ext.models import embedded_model_path

    found = find_attention(AutoModel.from_pretrained(embedded_model_path("embedded:minilm")))
    assert len(found) == 6
    assert {(a.num_heads, a.head_dim) for a in found} == {(12, 32)}
    assert found[5].o == "encoder.layer.5.attention.output.dense"


def test_unknown_architecture_names_what_was_looked_for():
    gpt2 = AutoModelForCausalLM.from_config(
        AutoConfig.for_model("gpt2", n_layer=2, n_head=2, n_embd=16, vocab_size=50, n_positions=32)
    )
    with pytest.raises(ValueError, match="self_attn.o_proj, attention.output.dense.*ATTENTION_LAYOUTS"):
        find_attention(gpt2)
    with pytest.raises(ValueError, match="cannot find the transformer blocks"):
        select_linear(nn.Sequential(nn.Linear(2, 2)), "0", layers="0")


def test_config_that_contradicts_the_weights():
    model, _ = tiny_model("llama")
    model.config.num_key_value_heads = 4
    with pytest.raises(ValueError, match="k_proj.out_features is 32.*expected 64"):
        find_attention(model)
