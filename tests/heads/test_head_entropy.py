import math

import pytest
import torch

from hf_ext.heads.entropy import attention_entropy
from hf_ext.heads.gates import HeadGates
from hf_ext.models import tiny_model

TEXTS = ["the movie was good and the acting was great", "bad", "a fine film"]
TASK_TYPES = {"bert": "seq_cls", "llama": "causal_lm"}


def _setup(architecture, texts=TEXTS, **overrides):
    """A tiny model (sdpa attention, as built) and one padded batch of ``texts`` with labels."""
    model, tokenizer = tiny_model(architecture, TASK_TYPES[architecture], **overrides)
    batch = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    batch["labels"] = torch.zeros(len(texts), dtype=torch.long) if architecture == "bert" else batch["input_ids"]
    return model, batch


def _direct_entropy(architecture, batch, causal):
    """Entropy from a separately built eager model's ``output_attentions``, one query and one head at a time, over
    only the keys the query may see (non-padding, and not after it when ``causal``); the rest must carry no mass."""
    eager, _ = tiny_model(architecture, TASK_TYPES[architecture], attn_implementation="eager")
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        attentions = eager.eval()(**inputs, output_attentions=True).attentions
    mask = batch["attention_mask"].bool()
    expected = torch.zeros(mask.shape[0], len(attentions), attentions[0].shape[1])
    for i, keep in enumerate(mask):
        positions = keep.nonzero().view(-1)
        for layer, attention in enumerate(attentions):
            for head in range(attention.shape[1]):
                values = []
                for q in positions:
                    visible = keep & (torch.arange(len(keep)) <= q) if causal else keep
                    p = attention[i, head, q]
                    assert p[~visible].sum() < 1e-6
                    values.append(-(p[visible] * p[visible].log()).sum())
                expected[i, layer, head] = torch.stack(values).mean()
    return expected


def test_bert_entropy_with_padding_matches_eager_attentions():
    model, batch = _setup("bert")
    assert (batch["attention_mask"] == 0).any()  # padded
    entropy = attention_entropy(model, [batch], progress=False)
    assert entropy.dtype == torch.float32 and entropy.device.type == "cpu"
    torch.testing.assert_close(entropy, _direct_entropy("bert", batch, causal=False), atol=1e-5, rtol=0)


def test_llama_with_grouped_query_attention_has_one_entropy_per_query_head_under_the_causal_mask():
    model, batch = _setup("llama")
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    first, rest = ({k: v[s] for k, v in batch.items()} for s in (slice(0, 1), slice(1, None)))
    entropy = attention_entropy(model, [first, rest], progress=False)
    assert entropy.shape == (len(TEXTS), *HeadGates(model).shape) == (3, 2, 4)
    torch.testing.assert_close(entropy, _direct_entropy("llama", batch, causal=True), atol=1e-5, rtol=0)


@pytest.mark.parametrize("architecture", ["bert", "llama"])
def test_padding_does_not_change_an_examples_entropy(architecture):
    model, alone = _setup(architecture, texts=["bad"])
    _, padded = _setup(architecture, texts=["bad", TEXTS[0]])
    assert (padded["attention_mask"][0] == 0).any()
    entropy = attention_entropy(model, [alone, padded], progress=False)
    torch.testing.assert_close(entropy[0], entropy[1], atol=1e-5, rtol=0)


def test_attention_implementation_training_flag_and_outputs_are_restored():
    model, batch = _setup("llama")
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    model.train()
    with torch.no_grad():
        before = model(**inputs).logits
    attention_entropy(model, [batch], progress=False)
    assert model.config._attn_implementation == "sdpa" and model.training
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, before, atol=0, rtol=0)


@pytest.mark.parametrize("architecture", ["bert", "llama"])
def test_uniform_attention_has_the_entropy_of_a_uniform_distribution(architecture):
    """Zero query and key projections: every score is equal, so a query attends uniformly to the n non-padding
    keys (entropy log n), or under the causal mask query j to keys 1..j (mean over n queries: log n! / n)."""
    model, batch = _setup(architecture)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if any(part in name for part in ("query", "key", "q_proj", "k_proj")):
                parameter.zero_()
    entropy = attention_entropy(model, [batch], progress=False)
    lengths = batch["attention_mask"].sum(1).tolist()
    if architecture == "bert":
        expected = [math.log(n) for n in lengths]
    else:
        expected = [math.lgamma(n + 1) / n for n in lengths]
    torch.testing.assert_close(entropy, torch.tensor(expected)[:, None, None].expand_as(entropy), atol=1e-5, rtol=0)
