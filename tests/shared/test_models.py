import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from hf_ext.config import ModelArguments
from hf_ext.models import embedded_model_path, load_model, load_tokenizer, tiny_model, tiny_tokenizer
from hf_ext.tasks import load_builtin_task


def test_embedded_minilm_loads_offline_with_any_auto_class():
    path = embedded_model_path("embedded:minilm")
    encoder = AutoModel.from_pretrained(path)
    assert encoder.config.num_hidden_layers == 6 and encoder.config.num_attention_heads == 12
    tokenizer = load_tokenizer("embedded:minilm")
    model = load_model(ModelArguments(), tokenizer, ["negative", "positive"])
    assert isinstance(model, AutoModelForSequenceClassification._model_mapping[type(encoder.config)])
    assert model.config.id2label == {0: "negative", 1: "positive"}
    batch = tokenizer(["a fine film"], return_tensors="pt")
    with torch.no_grad():
        pretrained = encoder(**batch).last_hidden_state
        ours = model.bert(**batch).last_hidden_state
    torch.testing.assert_close(ours, pretrained)  # the pretrained weights, not a random init
    assert AutoTokenizer.from_pretrained(path)("hello")["input_ids"] == tokenizer("hello")["input_ids"]


def test_unknown_names_are_explained():
    with pytest.raises(ValueError, match="embedded:minilm"):
        embedded_model_path("embedded:bert-large")
    with pytest.raises(ValueError, match="tiny:llama, tiny:qwen2"):
        load_tokenizer("tiny:gpt2")
    with pytest.raises(ValueError, match="label names"):
        load_model(ModelArguments(model_name_or_path="tiny:bert"), load_tokenizer("tiny:bert"))


def test_tiny_models_run_both_task_types(tiny_architecture):
    tokenizer = load_tokenizer(f"tiny:{tiny_architecture}")
    batch = tokenizer(["how can i wash a car ?", "the pizza was great ."], padding=True, return_tensors="pt")
    classifier = load_model(ModelArguments(model_name_or_path=f"tiny:{tiny_architecture}"), tokenizer, ["a", "b", "c"])
    out = classifier(**batch, labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and torch.isfinite(out.loss)
    if tiny_architecture in ("llama", "qwen2"):
        lm = load_model(
            ModelArguments(model_name_or_path=f"tiny:{tiny_architecture}", task_type="causal_lm"), tokenizer
        )
        out = lm(**batch, labels=batch["input_ids"])
        assert out.logits.shape[-1] == len(tokenizer) and torch.isfinite(out.loss)
        assert lm.config.num_key_value_heads == 2


def test_tiny_models_are_seeded_without_touching_global_rng():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, _ = tiny_model("llama", seed=5)
    assert torch.equal(torch.rand(1), expected_next)
    b, _ = tiny_model("llama", seed=5)
    c, _ = tiny_model("llama", seed=6)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_tiny_tokenizer_covers_builtin_tasks_and_round_trips():
    for architecture in ("llama", "bert"):
        tokenizer = tiny_tokenizer(architecture)
        for task in ("safety", "sentiment", "topic"):
            rows = load_builtin_task(task)["validation"][:50]
            for text in rows["prompt"] + rows["response"]:
                assert tokenizer.unk_token_id not in tokenizer(text)["input_ids"], text
    llama, bert = tiny_tokenizer("llama"), tiny_tokenizer("bert")
    assert llama("wash a car")["input_ids"][0] == llama.bos_token_id
    ids = bert("wash a car")["input_ids"]
    assert (ids[0], ids[-1]) == (bert.cls_token_id, bert.sep_token_id)
    assert (
        llama.decode(llama("How can I wash a car?", add_special_tokens=False)["input_ids"]) == "how can i wash a car ?"
    )


def test_tiny_model_saves_and_reloads_with_plain_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    model, tokenizer = tiny_model("llama")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert all(torch.equal(p, q) for p, q in zip(model.state_dict().values(), reloaded.state_dict().values()))
    assert AutoTokenizer.from_pretrained(tmp_path)("wash a car")["input_ids"] == tokenizer("wash a car")["input_ids"]


@pytest.mark.parametrize("architecture", ["qwen2", "llama"])
def test_a_saved_tiny_tokenizer_tokenises_as_before(tmp_path, architecture):
    """transformers 5's AutoTokenizer loads the model type's class (Qwen2Tokenizer) for a saved directory, which
    split words differently from the saved tokenizer.json, so tools reading a saved run saw other tokens."""
    model, tokenizer = tiny_model(architecture, "causal_lm", seed=0)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    text = "Hello world, a test of the saved tokenizer."
    assert load_tokenizer(str(tmp_path))(text)["input_ids"] == tokenizer(text)["input_ids"]
