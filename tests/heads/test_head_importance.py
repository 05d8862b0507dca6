import pytest
import torch

from hf_ext.config import DataArguments
from hf_ext.data import prepare_data
from hf_ext.heads.gates import HeadGates
from hf_ext.heads.importance import ablation_importance, gradient_importance, per_example_loss
from hf_ext.models import tiny_model


def _setup(architecture, n=12, batch_size=4):
    task_type = "seq_cls" if architecture in ("bert", "deberta-v2") else "causal_lm"
    task = "builtin:sentiment" if task_type == "seq_cls" else "builtin:safety"
    model, tokenizer = tiny_model(architecture, task_type, seed=0)
    data = prepare_data(DataArguments(dataset_name=task, max_eval_samples=n), tokenizer, task_type)
    batches = [data.collator([data.validation[j] for j in range(i, i + batch_size)]) for i in range(0, n, batch_size)]
    return model, batches


def test_prefix_cached_ablation_equals_naive_ablation(tiny_architecture):
    model, batches = _setup(tiny_architecture)
    cached = ablation_importance(model, batches, progress=False)
    naive = ablation_importance(model, batches, cache_prefix=False, progress=False)
    torch.testing.assert_close(cached.loss_increase, naive.loss_increase, atol=1e-6, rtol=0)
    torch.testing.assert_close(cached.accuracy_drop, naive.accuracy_drop, atol=0, rtol=0)
    assert cached.loss_increase.abs().sum() > 0
    # 2 layers x 4 heads: naive 2 + 8 x 2 blocks; cached 2 + 4 x 2 + 1 (cache) + 4 x 1
    assert (naive.block_evaluations, cached.block_evaluations) == (18, 15)
    for per_pass in (3, 4):  # several ablations per forward pass, each on its own copy of the batch
        grouped = ablation_importance(model, batches, ablations_per_pass=per_pass, progress=False)
        torch.testing.assert_close(grouped.loss_increase, naive.loss_increase, atol=1e-6, rtol=0)
        torch.testing.assert_close(grouped.accuracy_drop, naive.accuracy_drop, atol=0, rtol=0)


def test_a_block_that_writes_into_its_input_does_not_corrupt_the_prefix_cache():
    """Block 1's pre-hook adds into its input in place; the cached output of block 0 it is fed must stay intact,
    so the cached ablation still equals the naive one (it did not when the cache was handed out as is)."""
    model, batches = _setup("llama")
    blocks = model.model.layers

    def in_place(module, args, kwargs):
        args[0].add_(0.5) if args else kwargs["hidden_states"].add_(0.5)

    blocks[1].register_forward_pre_hook(in_place, with_kwargs=True)
    seen = []
    blocks[0].register_forward_hook(lambda m, a, o: seen.append(model.config.use_cache))
    cached = ablation_importance(model, batches, progress=False)
    naive = ablation_importance(model, batches, cache_prefix=False, progress=False)
    torch.testing.assert_close(cached.loss_increase, naive.loss_increase, atol=1e-6, rtol=0)
    assert seen and not any(seen) and model.config.use_cache is True  # no KV cache while measuring, restored


def test_ablation_of_one_head_matches_a_gated_forward_by_hand():
    model, batches = _setup("llama")
    result = ablation_importance(model, batches, progress=False)
    gates = torch.ones(2, 4)
    gates[1, 2] = 0
    losses = []
    with torch.no_grad(), HeadGates(model, gates):
        for batch in batches:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            losses.append(per_example_loss(model(**inputs).logits, batch["labels"])[0])
    assert result.loss_increase[1, 2].item() == pytest.approx(
        torch.cat(losses).mean().item() - result.base_loss, abs=1e-6
    )


def test_gradient_importance_equals_per_example_backward():
    model, batches = _setup("qwen2", n=4)
    result = gradient_importance(model, batches, progress=False)
    expected_abs, expected_sq = torch.zeros(2, 4), torch.zeros(2, 4)
    batch = batches[0]
    for i in range(4):
        gates = torch.ones(2, 4, requires_grad=True)
        with HeadGates(model, gates):
            inputs = {k: v[i : i + 1] for k, v in batch.items() if k != "labels"}
            loss, _ = per_example_loss(model(**inputs).logits, batch["labels"][i : i + 1])
        (grad,) = torch.autograd.grad(loss.sum(), gates)
        expected_abs += grad.abs()
        expected_sq += grad.square()
    torch.testing.assert_close(result.gradient, expected_abs, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(result.fisher, expected_sq / 4, rtol=1e-4, atol=1e-9)
    assert result.examples == 4 and result.gradient.abs().sum() > 0
    torch.testing.assert_close(result.normalised().norm(dim=1), torch.ones(2))
    assert all(p.grad is None for p in model.parameters())
