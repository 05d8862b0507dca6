"""EmpiricalFisher: the mean over examples of squared per-example coefficient gradients, read from layer
inputs and output gradients, against a one-example-at-a-time hand computation."""

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from hf_ext.io import load_tensors, save_tensors
from hf_ext.models import tiny_model
from hf_ext.warp import importance as importance_module
from hf_ext.warp.importance import (
    EmpiricalFisher,
    ImportanceAccumulator,
    importance_after_training,
    make_accumulator,
)
from hf_ext.warp.reparam import coefficient_parameters, reparameterize

TARGETS = {
    # an MLP layer, a layer fed a 2-D (examples x features) input, an attention projection and the head
    "bert": ["bert.encoder.layer.0.intermediate.dense", "bert.encoder.layer.1.output.dense", "bert.pooler.dense"],
    "llama": ["model.layers.0.mlp.down_proj", "model.layers.1.self_attn.q_proj", "score"],
}
RANK = 40  # < d_in everywhere: the frozen residual is in play


def _random_bases(model, names, seed=0):
    generator = torch.Generator().manual_seed(seed)
    bases = {}
    for name in names:
        d_in = model.get_submodule(name).in_features
        bases[name] = torch.linalg.qr(torch.randn(d_in, d_in, generator=generator, dtype=torch.float64))[0].float()
    return bases


def _tiny(architecture):
    dropout = {"bert": dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0), "llama": {}}[architecture]
    model, tokenizer = tiny_model(architecture, "seq_cls", seed=0, **dropout)
    modules = reparameterize(model, _random_bases(model, TARGETS[architecture]), rank=RANK)
    return model.eval(), tokenizer, modules


def _examples(tokenizer, count, seed=1):
    """Examples of different lengths (no special or pad ids inside) and their labels."""
    generator = torch.Generator().manual_seed(seed)
    low = max(tokenizer.all_special_ids) + 1
    lengths = torch.randint(2, 12, (count,), generator=generator).tolist()
    ids = [torch.randint(low, len(tokenizer), (n,), generator=generator) for n in lengths]
    labels = torch.randint(0, 2, (count,), generator=generator)
    return ids, labels


def _padded_batch(ids, labels, pad_id):
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id)
    attention_mask = torch.zeros(len(ids), width, dtype=torch.long)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = x
        attention_mask[row, : len(x)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _per_example_fisher(model, params, ids, labels):
    """mean_i (dl_i/dC)^2, each example run alone (no padding)."""
    squares = {name: torch.zeros_like(p) for name, p in params.items()}
    for x, y in zip(ids, labels, strict=True):
        loss = model(input_ids=x[None], attention_mask=torch.ones(1, len(x), dtype=torch.long), labels=y[None]).loss
        for name, grad in zip(params, torch.autograd.grad(loss, list(params.values())), strict=True):
            squares[name] += grad.square()
    return {name: total / len(ids) for name, total in squares.items()}


def _train_like(model, accumulators, ids, labels, pad_id, *, batch_size=4, accumulation=2):
    """What the Trainer does: each micro-batch's mean loss divided by the accumulation steps, one update per step."""
    for accumulator in accumulators:
        accumulator.loss_divisor = float(accumulation)
    starts = list(range(0, len(ids), batch_size))
    for step in range(0, len(starts), accumulation):
        for start in starts[step : step + accumulation]:
            batch = _padded_batch(ids[start : start + batch_size], labels[start : start + batch_size], pad_id)
            (model(**batch).loss / accumulation).backward()
        assert all(accumulator.update() for accumulator in accumulators)
        model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("gram", [True, False], ids=["input-by-gram", "input-direct"])
@pytest.mark.parametrize("architecture", ["bert", "llama"])
def test_equals_per_example_hand_computation_with_padding_and_accumulation(architecture, gram, monkeypatch):
    monkeypatch.setattr(importance_module, "_use_gram", lambda *shape: gram)
    model, tokenizer, modules = _tiny(architecture)
    params = coefficient_parameters(modules)
    ids, labels = _examples(tokenizer, 16)
    assert len({len(x) for x in ids[:4]}) > 1  # the first micro-batch has padding
    expected = _per_example_fisher(model, params, ids, labels)

    element = EmpiricalFisher(modules)
    per_input = EmpiricalFisher(modules, granularity="input")
    _train_like(model, [element, per_input], ids, labels, tokenizer.pad_token_id)  # 4 micro-batches, 2 steps

    assert (element.steps, element.micro_batches, element.examples) == (2, 4, 16)
    assert element.kind == "empirical_fisher" and element.statistic == "micro_batch"
    assert element.params == params
    for name, fisher in element.mean().items():
        scale = expected[name].max()
        assert scale > 0
        torch.testing.assert_close(fisher, expected[name], rtol=1e-4, atol=1e-5 * scale)
        torch.testing.assert_close(per_input.mean()[name], expected[name].sum(0), rtol=1e-4, atol=1e-5 * scale)
        assert per_input.sums[name].shape == (RANK,)


def test_differs_from_the_square_of_the_micro_batch_mean_gradient():
    model, tokenizer, modules = _tiny("bert")
    params = coefficient_parameters(modules)
    ids, labels = _examples(tokenizer, 8)
    fisher = make_accumulator(modules, kind="empirical_fisher")
    squared = make_accumulator(modules, kind="squared")
    assert type(fisher) is EmpiricalFisher and type(squared) is ImportanceAccumulator and squared.params == params
    _train_like(model, [fisher, squared], ids, labels, tokenizer.pad_token_id)
    for name, value in fisher.mean().items():
        square_of_mean = squared.mean()[name]
        assert not torch.allclose(value, square_of_mean, rtol=0.05)
        # per micro-batch, the mean of squares is at least the square of the mean (equal-sized micro-batches)
        assert (value >= square_of_mean * (1 - 1e-4)).all() and value.sum() > 1.5 * square_of_mean.sum()


class _TwoLayers(nn.Module):
    """tanh MLP on (examples, tokens, features); loss: mean over examples of each one's token-mean squared error."""

    def __init__(self, checkpointing=None):
        super().__init__()
        torch.manual_seed(0)
        self.first, self.second = nn.Linear(6, 5), nn.Linear(5, 3)
        self.checkpointing = checkpointing

    def block(self, x):
        return self.second(torch.tanh(self.first(x)))

    def forward(self, x, target):
        if self.checkpointing is None:
            y = self.block(x)
        else:
            y = checkpoint(self.block, x, use_reentrant=self.checkpointing == "reentrant")
        return (y - target).square().mean(dim=(1, 2)).mean()


def _small(checkpointing=None):
    model = _TwoLayers(checkpointing)
    bases = _random_bases(model, ["first", "second"], seed=3)
    modules = reparameterize(model, bases, rank=4)
    torch.manual_seed(4)
    batches = [(torch.randn(3, 2, 6, requires_grad=True), torch.randn(3, 2, 3)) for _ in range(4)]
    return model, modules, batches


def _hand(model, modules, batches):
    params = coefficient_parameters(modules)
    squares = {name: torch.zeros_like(p) for name, p in params.items()}
    count = 0
    for x, target in batches:
        for i in range(len(x)):
            grads = torch.autograd.grad(model(x[i : i + 1], target[i : i + 1]), list(params.values()))
            for name, grad in zip(params, grads, strict=True):
                squares[name] += grad.square()
            count += 1
    return {name: total / count for name, total in squares.items()}


def _steps(model, accumulator, batches, *, scale=1.0, grad_scale=1.0):
    for x, target in batches:
        (model(x, target) * scale).backward()
        accumulator.update(grad_scale)
        model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("checkpointing", [None, "reentrant", "non_reentrant"])
def test_gradient_checkpointing_counts_each_example_once(checkpointing):
    model, modules, batches = _small(checkpointing)
    fisher = EmpiricalFisher(modules)
    _steps(model, fisher, batches)
    assert (fisher.steps, fisher.micro_batches, fisher.examples) == (4, 4, 12)
    reference, reference_modules, _ = _small()  # the same weights, without checkpointing
    expected = _hand(reference, reference_modules, batches)
    for name, value in fisher.mean().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-8)


def test_loss_scale_chunking_and_state_round_trip(tmp_path):
    model, modules, batches = _small()
    plain = EmpiricalFisher(modules)
    _steps(model, plain, batches)
    plain.remove_hooks()
    scaled = EmpiricalFisher(modules, max_chunk_elements=1)  # one example at a time
    _steps(model, scaled, batches, scale=1024.0, grad_scale=1024.0)
    for name, value in plain.mean().items():
        torch.testing.assert_close(scaled.mean()[name], value)

    state = plain.state_dict()
    assert all(torch.is_tensor(v) for v in state.values()) and int(state["examples"]) == 12
    save_tensors(tmp_path / "fisher.safetensors", state)
    loaded, _ = load_tensors(tmp_path / "fisher.safetensors")
    restored = EmpiricalFisher(modules, granularity="element")
    restored.load_state_dict(loaded)
    assert (restored.steps, restored.micro_batches, restored.examples) == (4, 4, 12)
    for name, value in plain.mean().items():
        torch.testing.assert_close(restored.mean()[name], value)
    with pytest.raises(ValueError, match="not an empirical-Fisher state"):
        restored.load_state_dict(ImportanceAccumulator(plain.params, kind="squared").state_dict())


def test_non_finite_step_is_skipped():
    model, modules, batches = _small()
    fisher = EmpiricalFisher(modules, granularity="input")
    (x, target), good = batches[0], batches[1:]
    model(x, target).mul(float("inf")).backward()
    with pytest.warns(UserWarning, match="non-finite"):
        assert fisher.update() is False
    model.zero_grad(set_to_none=True)
    _steps(model, fisher, good)
    assert (fisher.steps, fisher.skipped_steps, fisher.micro_batches, fisher.examples) == (3, 1, 3, 9)
    expected = _hand(model, modules, good)
    for name, value in fisher.mean().items():
        torch.testing.assert_close(value, expected[name].sum(0), rtol=1e-5, atol=1e-8)


def test_clear_errors():
    with pytest.raises(ValueError, match="not a reparameterized nn.Linear"):
        EmpiricalFisher({"plain": nn.Linear(3, 2)})
    with pytest.raises(ValueError, match="not a reparameterized nn.Linear"):
        EmpiricalFisher({"act": nn.Tanh()})
    with pytest.raises(ValueError, match="EmpiricalFisher"):
        ImportanceAccumulator({"w": torch.zeros(2, 2)}, kind="empirical_fisher")
    model, modules, batches = _small()
    with pytest.raises(ValueError, match="statistic 'step' does not apply"):
        make_accumulator(modules, kind="empirical_fisher", statistic="step")
    with pytest.raises(ValueError, match="needs modules="):
        importance_after_training(model, coefficient_parameters(modules), [], kind="empirical_fisher")

    EmpiricalFisher(modules)
    x, target = batches[0]
    twice = (model.first(x).sum() + model.first(x).sum()) * 0 + model(x, target)  # first layer used 3 times
    with pytest.raises(RuntimeError, match="two output gradients in one backward"):
        twice.backward()
    with torch.no_grad():
        model(x, target)  # no backward follows: nothing is read
    with pytest.raises(RuntimeError, match="got no gradient"):
        EmpiricalFisher(modules).update()


def test_importance_after_training_with_empirical_fisher():
    model, modules, batches = _small()

    class WithLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x, target):
            return type("Out", (), {"loss": self.net(x, target)})()

    wrapped = WithLoss().train()
    data = [{"x": x.detach(), "target": target} for x, target in batches]
    params = coefficient_parameters(modules)
    result = importance_after_training(wrapped, None, data, kind="empirical_fisher", modules=modules)
    assert isinstance(result, EmpiricalFisher) and result.examples == 12 and not result._hooks
    expected = _hand(model, modules, batches)
    for name, value in result.mean().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-8)
    assert wrapped.training and all(p.grad is None for p in params.values())
    same = importance_after_training(
        wrapped, params, data, kind="empirical_fisher", granularity="input", modules=modules
    )
    torch.testing.assert_close(same.mean()["first"], expected["first"].sum(0), rtol=1e-5, atol=1e-8)
    abs_kind = importance_after_training(wrapped, None, data, modules=modules)  # params from modules
    assert abs_kind.kind == "abs" and abs_kind.params == params
