import json

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from hf_ext.activations import compute_bases
from hf_ext.models import tiny_model
from hf_ext.targets import select_linear
from hf_ext.tasks import load_builtin_task
from hf_ext.warp.reparam import coefficient_parameters, coefficients, merge, merge_model, reparameterize


def _random_basis(d: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q.float()


def _batches(tokenizer, n=24, size=6):
    texts = load_builtin_task("safety")["train"]["prompt"][:n]
    return [dict(tokenizer(texts[i : i + size], padding=True, return_tensors="pt")) for i in range(0, n, size)]


def test_reparameterized_forward_equals_original_at_init(tiny_architecture):
    """Tolerance: 1e-5 absolute on logits of order 1 (float32 rounding of C @ U.T)."""
    model, tokenizer = tiny_model(
        tiny_architecture, "seq_cls" if tiny_architecture in ("bert", "deberta-v2") else "causal_lm", seed=0
    )
    model.eval()
    batch = _batches(tokenizer)[0]
    with torch.no_grad():
        before = model(**batch).logits
    encoder = tiny_architecture in ("bert", "deberta-v2")
    modules = select_linear(
        model, ["intermediate.dense", "layer.*.output.dense"] if encoder else ["mlp.*", "self_attn.*"]
    )
    bases, eigenvalues, counts = compute_bases(model, modules, _batches(tokenizer), progress=False)
    reparameterize(model, bases)
    with torch.no_grad():
        after = model(**batch).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    for name, values in eigenvalues.items():
        assert (values[:-1] >= values[1:]).all() and counts[name] > 0


def test_gradients_reach_coefficients_not_basis():
    layer = nn.Linear(6, 4)
    reparameterize(nn.ModuleDict({"layer": layer}), {"layer": _random_basis(6)})
    layer(torch.randn(3, 6)).square().sum().backward()
    parametrization = layer.parametrizations.weight[0]
    assert coefficients(layer).grad is not None and coefficients(layer).grad.abs().sum() > 0
    assert not parametrization.basis.requires_grad and parametrization.basis.grad is None
    assert [name for name, p in layer.named_parameters()] == ["bias", "parametrizations.weight.original"]


def test_coefficient_gradient_is_weight_gradient_rotated():
    torch.manual_seed(0)
    layer, x = nn.Linear(6, 4), torch.randn(5, 6)
    layer(x).square().sum().backward()
    weight_grad = layer.weight.grad.clone()
    layer.zero_grad()
    u = _random_basis(6)
    reparameterize(nn.ModuleDict({"layer": layer}), {"layer": u})
    layer(x).square().sum().backward()
    torch.testing.assert_close(coefficients(layer).grad, weight_grad @ u, atol=1e-5, rtol=1e-5)


def test_low_rank_basis_keeps_a_frozen_residual():
    torch.manual_seed(0)
    layer, x = nn.Linear(8, 3), torch.randn(10, 8)
    expected = layer(x)
    reparameterize(nn.ModuleDict({"layer": layer}), {"layer": _random_basis(8)}, rank=3)
    assert coefficients(layer).shape == (3, 3)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    assert set(dict(layer.named_parameters())) == {"bias", "parametrizations.weight.original"}


def test_merge_gives_plain_weight_that_from_pretrained_loads(tmp_path):
    model, tokenizer = tiny_model("llama", seed=0)
    modules = select_linear(model, ["mlp.down_proj"])
    reparameterize(model, {name: _random_basis(m.in_features, i) for i, (name, m) in enumerate(modules.items())})
    with torch.no_grad():
        for c in coefficient_parameters(modules).values():
            c.add_(0.01)
        batch = _batches(tokenizer)[0]
        expected = model(**batch).logits
    merge_model(model)
    assert not any("parametrizations" in key for key in model.state_dict())
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "basis, rank, message",
    [(torch.eye(5), None, "has shape"), (torch.ones(6, 6), None, "not orthonormal"), (torch.eye(6), 7, "rank")],
)
def test_bad_basis_is_refused_before_any_change(basis, rank, message):
    layer = nn.Linear(6, 2)
    with pytest.raises(ValueError, match=message):
        reparameterize(nn.ModuleDict({"layer": layer}), {"layer": basis}, rank=rank)
    assert type(layer) is nn.Linear


def test_basis_for_a_module_that_does_not_exist_names_it():
    model = nn.ModuleDict({"a": nn.Linear(2, 2), "b": nn.ReLU()})
    with pytest.raises(ValueError, match="'c', which does not exist in the model"):
        reparameterize(model, {"a": torch.eye(2), "c": torch.eye(2)})
    with pytest.raises(ValueError, match="'b', which is not an nn.Linear"):
        reparameterize(model, {"b": torch.eye(2)})
    assert type(model["a"]) is nn.Linear


def test_tied_weight_is_refused():
    model, _ = tiny_model("llama", seed=0)
    with pytest.raises(ValueError, match="tied"):
        reparameterize(model, {"lm_head": torch.eye(64)})


def test_twice_is_an_error_and_merge_undoes():
    model = nn.ModuleDict({"l": nn.Linear(3, 3)})
    reparameterize(model, {"l": torch.eye(3)})
    with pytest.raises(ValueError, match="already reparameterized"):
        reparameterize(model, {"l": torch.eye(3)})
    merge({"l": model["l"]})
    assert type(model["l"]) is nn.Linear


@pytest.mark.multiprocess
def test_the_basis_is_not_broadcast_by_ddp(tmp_path):
    """DDP broadcasts every buffer before each forward; a basis (the same file on every rank) must not travel."""
    from launch_util import torchrun

    torchrun("warp_ddp_buffers.py", str(tmp_path / "sent.json"))
    sent = json.loads((tmp_path / "sent.json").read_text())
    assert sent["control"] >= sent["basis"]  # the spy sees the basis when it is a plain buffer
    assert sent["ours"] < sent["basis"] and sent["ours"] == sent["control"] - sent["basis"]


def test_bf16_weights_keep_their_values_and_float32_coefficients_take_small_steps():
    torch.manual_seed(0)
    layer = nn.Linear(64, 32).to(torch.bfloat16)
    model = nn.Sequential(layer)
    before = layer.weight.detach().clone()
    basis = torch.linalg.qr(torch.randn(64, 64, dtype=torch.float64))[0]
    reparameterize(model, {"0": basis})
    assert torch.equal(layer.weight, before)  # re-expressing in bf16 changed 51% of the weights
    c = coefficients(layer)
    assert c.dtype == torch.float32 and layer.weight.dtype == torch.bfloat16
    optimizer = torch.optim.AdamW([c], lr=1e-5, weight_decay=0.0)
    c_before = c.detach().clone()
    layer(torch.randn(8, 64, dtype=torch.bfloat16)).float().pow(2).sum().backward()
    optimizer.step()
    assert (c != c_before).float().mean() > 0.99  # in bf16 about one in five moved
    merge_model(model)
    assert type(layer.weight) is nn.Parameter and layer.weight.dtype == torch.bfloat16
    assert model._ddp_params_and_buffers_to_ignore == []
