import pytest
import torch
from torch import nn

from hf_ext.heads.gates import HeadGates, head_update_sizes
from hf_ext.models import tiny_model
from hf_ext.targets import find_attention
from hf_ext.tasks import load_builtin_task


def _model_and_batch(architecture, task_type="causal_lm"):
    model, tokenizer = tiny_model(architecture, task_type, seed=0)
    model.eval()
    texts = load_builtin_task("topic")["validation"]["text"][:4]
    return model, dict(tokenizer(texts, padding=True, return_tensors="pt"))


def _task_type(architecture):
    return "seq_cls" if architecture in ("bert", "deberta-v2") else "causal_lm"


def test_all_ones_gates_leave_outputs_bit_identical(tiny_architecture):
    model, batch = _model_and_batch(tiny_architecture, _task_type(tiny_architecture))
    with torch.no_grad():
        expected = model(**batch).logits
        with HeadGates(model):
            gated = model(**batch).logits
        after = model(**batch).logits
    assert torch.equal(gated, expected) and torch.equal(after, expected)


def test_zero_gate_equals_zeroing_that_slice_of_the_projection_input_by_hand(tiny_architecture):
    model, batch = _model_and_batch(tiny_architecture, _task_type(tiny_architecture))
    attention = find_attention(model)
    layer, head = 1, 2
    a = attention[layer]
    gates = torch.ones(len(attention), a.num_heads)
    gates[layer, head] = 0.0

    def zero_slice(module, args):
        x = args[0].clone()
        x[..., head * a.head_dim : (head + 1) * a.head_dim] = 0
        return (x,)

    with torch.no_grad():
        handle = model.get_submodule(a.o).register_forward_pre_hook(zero_slice)
        by_hand = model(**batch).logits
        handle.remove()
        with HeadGates(model, gates):
            gated = model(**batch).logits
        plain = model(**batch).logits
    assert torch.equal(gated, by_hand) and not torch.allclose(gated, plain)


def test_gate_gradient_matches_finite_difference():
    # BERT runs entirely in float64 after .double() (Llama's RMSNorm computes in float32), and the
    # loss is computed here in float64 (transformers' own losses cast logits to float32).
    model, batch = _model_and_batch("bert", "seq_cls")
    model.double()
    labels = torch.tensor([0, 1, 1, 0])

    def loss() -> torch.Tensor:
        return nn.functional.cross_entropy(model(**batch).logits, labels)

    gates = nn.Parameter(torch.ones(2, 4, dtype=torch.float64))
    with HeadGates(model, gates):
        loss().backward()
        eps = 1e-6
        for layer, head in [(0, 1), (1, 3)]:
            with torch.no_grad():
                gates[layer, head] += eps
                up = loss().item()
                gates[layer, head] -= 2 * eps
                down = loss().item()
                gates[layer, head] += eps
            assert abs(gates.grad[layer, head].item()) > 1e-7  # not trivially zero
            assert gates.grad[layer, head].item() == pytest.approx((up - down) / (2 * eps), rel=1e-5)


def test_gates_of_wrong_shape_are_an_error():
    model, _ = _model_and_batch("qwen2")
    with pytest.raises(ValueError, match=r"needs \[num_layers, num_heads\] = \[2, 4\]"):
        HeadGates(model, torch.ones(4, 2))


def test_architecture_without_attention_output_projection_is_an_error():
    with pytest.raises(ValueError, match="cannot find the transformer blocks"):
        HeadGates(nn.Sequential(nn.Linear(4, 4)))


def test_update_size_slices_follow_grouped_query_attention():
    model, _ = _model_and_batch("llama")  # 4 query heads share 2 key/value heads
    attention = find_attention(model)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    final = {k: v.clone() for k, v in initial.items()}
    a = attention[1]
    final[f"{a.q}.weight"][2 * a.head_dim : 3 * a.head_dim] += 0.5  # query head 2 only
    size, relative = head_update_sizes(initial, final, attention)
    assert size[0].abs().sum() == 0 and (size[1] > 0).tolist() == [False, False, True, False]
    expected = (0.5**2 * a.head_dim * 64) ** 0.5
    assert size[1, 2].item() == pytest.approx(expected)

    final = {k: v.clone() for k, v in initial.items()}
    final[f"{a.v}.weight"][1 * a.head_dim : 2 * a.head_dim] += 0.5  # key/value head 1: query heads 2 and 3
    final[f"{a.o}.weight"][:, 0 : a.head_dim] += 0.5  # output columns of query head 0
    size, relative = head_update_sizes(initial, final, attention)
    assert (size[1] > 0).tolist() == [True, False, True, True]
    norms = sum(
        initial[f"{getattr(a, r)}.weight"][s].norm()
        for r, s in (("q", slice(0, a.head_dim)), ("k", slice(0, a.head_dim)), ("v", slice(0, a.head_dim)))
    )
    norms += initial[f"{a.o}.weight"][:, : a.head_dim].norm()
    assert relative[1, 0].item() == pytest.approx(size[1, 0].item() / norms.item())


def test_update_size_names_a_missing_weight():
    model, _ = _model_and_batch("bert", "seq_cls")
    attention = find_attention(model)
    state = model.state_dict()
    partial = {k: v for k, v in state.items() if "layer.1.attention.self.key" not in k}
    with pytest.raises(KeyError, match="layer.1.attention.self.key.weight missing from the final"):
        head_update_sizes(state, partial, attention)
