import pytest
import torch
from torch import nn

from hf_ext.activations import (
    InputRecorder,
    InputStatistics,
    collect_input_statistics,
    eigenbasis,
    orthonormality_error,
)
from hf_ext.models import tiny_model
from hf_ext.targets import select_linear


def _random_orthogonal(d, seed):
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def test_eigenbasis_recovers_a_known_basis():
    d = 6
    q = _random_orthogonal(d, 0)
    eigenvalues = torch.tensor([9.0, 5.0, 3.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    moment = q @ torch.diag(eigenvalues) @ q.T
    u, found = eigenbasis(moment)
    torch.testing.assert_close(found, eigenvalues)
    torch.testing.assert_close(u.T @ u, torch.eye(d, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(u @ torch.diag(found) @ u.T, moment, atol=1e-12, rtol=0)
    # Each direction equals the planted one up to sign, and the sign rule makes the largest entry positive.
    torch.testing.assert_close((u * q).sum(0).abs(), torch.ones(d, dtype=torch.float64), atol=1e-10, rtol=0)
    assert (u[u.abs().argmax(0), torch.arange(d)] > 0).all()


def test_eigenbasis_of_data_reconstructs_weights_exactly():
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(1)) @ torch.randn(
        8, 8, generator=torch.Generator().manual_seed(2)
    )
    stats = InputStatistics.zeros(8)
    stats.update(x)
    u, eigenvalues = eigenbasis(stats.second_moment())
    assert (eigenvalues[:-1] >= eigenvalues[1:]).all()
    w = torch.randn(3, 8, dtype=torch.float64)
    torch.testing.assert_close((w @ u) @ u.T, w, atol=1e-12, rtol=0)


def test_eigenbasis_rejects_bad_input():
    with pytest.raises(ValueError, match="square"):
        eigenbasis(torch.ones(2, 3))
    with pytest.raises(ValueError, match="non-finite"):
        eigenbasis(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))


def test_batched_accumulation_equals_one_shot_float64():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1000, 16, generator=g) * 3 + 1
    stats = InputStatistics.zeros(16)
    for chunk in x.split(37):
        stats.update(chunk)
    x64 = x.double()
    assert stats.count.item() == 1000
    torch.testing.assert_close(stats.mean, x64.mean(0), atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(stats.second_moment(), x64.T @ x64 / 1000, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(
        stats.second_moment(centered=True), torch.cov(x64.T, correction=0), atol=1e-6, rtol=1e-6
    )
    exact = InputStatistics.zeros(16, compute_dtype=torch.float64)
    for chunk in x.split(37):
        exact.update(chunk)
    torch.testing.assert_close(exact.flush_().gram, x64.T @ x64, atol=1e-9, rtol=1e-12)


@pytest.mark.parametrize("dim", [300, 700, 1100])  # 1, 2 and 4 row blocks of the symmetric product
def test_block_triangular_products_and_flushes_give_the_full_gram(dim):
    x = torch.randn(400, dim, generator=torch.Generator().manual_seed(dim), dtype=torch.float64)
    stats = InputStatistics.zeros(dim, compute_dtype=torch.float64)
    stats.flush_tokens = 150  # flush after every 2 chunks of 100
    for chunk in x.split(100):
        stats.update(chunk)
    assert stats._buffered_tokens == 0
    torch.testing.assert_close(stats.gram, x.T @ x, atol=1e-9, rtol=1e-12)
    assert torch.equal(stats.gram, stats.gram.T)


def test_memory_does_not_grow_with_batches():
    stats = InputStatistics.zeros(4)
    before = [(t.data_ptr(), t.shape) for t in stats.state_dict().values()]
    for _ in range(50):
        stats.update(torch.randn(10, 4))
    assert [(t.data_ptr(), t.shape) for t in stats.state_dict().values()] == before


def test_statistics_are_float64_for_low_precision_inputs():
    stats = InputStatistics.zeros(4)
    stats.update(torch.randn(8, 4).to(torch.bfloat16))
    assert stats.gram.dtype == stats.total.dtype == stats.count.dtype == torch.float64


def test_padding_tokens_are_excluded():
    layer = nn.Linear(4, 3)
    g = torch.Generator().manual_seed(4)
    real = [torch.randn(n, 4, generator=g) for n in (5, 2, 7)]
    padded = torch.full((3, 7, 4), 1e6)
    mask = torch.zeros(3, 7, dtype=torch.long)
    for i, r in enumerate(real):
        padded[i, : len(r)] = r
        mask[i, : len(r)] = 1
    with InputRecorder({"layer": layer}) as recorder:
        recorder.set_token_mask(mask)
        layer(padded)
    stats = recorder.statistics["layer"]
    flat = torch.cat(real).double()
    assert stats.count.item() == 14
    torch.testing.assert_close(stats.flush_().gram, flat.T @ flat, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(stats.total, flat.sum(0), atol=1e-5, rtol=1e-6)


def test_mask_shape_mismatch_is_an_error():
    layer = nn.Linear(4, 3)
    with InputRecorder({"layer": layer}) as recorder:
        recorder.set_token_mask(torch.ones(2, 5))
        with pytest.raises(ValueError, match=r"input of shape \(2, 6, 4\) but the token mask has shape \(2, 5\)"):
            layer(torch.randn(2, 6, 4))


def test_hooks_are_removed_on_exit():
    layer = nn.Linear(4, 3)
    with InputRecorder({"layer": layer}):
        assert len(layer._forward_pre_hooks) == 1
    assert len(layer._forward_pre_hooks) == 0


def test_collect_on_a_tiny_model_matches_manual_capture():
    model, tokenizer = tiny_model("llama")
    modules = select_linear(model, "mlp.down_proj")
    batch = tokenizer(
        ["how can i wash a car ?", "explain how to bake bread at home please"], padding=True, return_tensors="pt"
    )
    stats = collect_input_statistics(model, modules, [dict(batch)], progress=False)
    captured = {}
    handles = [
        m.register_forward_pre_hook(lambda mod, args, n=n: captured.__setitem__(n, args[0].detach()))
        for n, m in modules.items()
    ]
    with torch.no_grad():
        model(**batch)
    for h in handles:
        h.remove()
    for name in modules:
        x = captured[name][batch["attention_mask"].bool()].double()
        assert stats[name].count.item() == batch["attention_mask"].sum().item()
        torch.testing.assert_close(stats[name].flush_().gram, x.T @ x, atol=1e-5, rtol=1e-5)
    assert model.training  # restored


def test_collect_with_no_tokens_is_an_error():
    model, tokenizer = tiny_model("llama")
    batch = dict(tokenizer(["wash a car"], return_tensors="pt"))
    batch["attention_mask"] = torch.zeros_like(batch["attention_mask"])
    with pytest.raises(ValueError, match="no tokens reached"):
        collect_input_statistics(model, select_linear(model, "mlp.down_proj"), [batch], progress=False)
    with pytest.raises(ValueError, match="at least one module"):
        InputRecorder({})


def test_progress_bar_has_a_total_for_an_unsized_stream(capsys):
    """A rank's share of the batches (an islice, no len) still shows N/N and an ETA when the total is given."""
    from itertools import islice

    model, tokenizer = tiny_model("bert", "seq_cls")
    batches = [dict(tokenizer(["a short text", "another one"], padding=True, return_tensors="pt"))] * 6
    modules = select_linear(model, "layer.0.output.dense")
    collect_input_statistics(model, modules, islice(batches, 0, None, 2), progress=True, total=3)
    err = capsys.readouterr().err
    assert "input statistics: 100%" in err and "3/3" in err


def test_float32_eigenbasis_is_orthonormal_and_matches_float64_on_the_leading_directions():
    torch.manual_seed(0)
    x = torch.randn(2000, 48, dtype=torch.float64) * torch.linspace(3, 0.1, 48, dtype=torch.float64)
    moment = x.T @ x / 2000
    u64, values64 = eigenbasis(moment)
    u32, values32 = eigenbasis(moment, dtype=torch.float32)
    assert u32.dtype == torch.float32 and orthonormality_error(u32) < 1e-5
    torch.testing.assert_close(values32.double(), values64, rtol=1e-4, atol=1e-5)
    assert (u32.double() * u64).sum(0)[:10].min() > 0.9999  # same directions, same signs
    with pytest.raises(ValueError, match="float64 or float32"):
        eigenbasis(moment, dtype=torch.bfloat16)


def test_bases_in_memory_groups_equal_one_pass_and_each_pass_stops_after_its_group():
    from hf_ext.activations import compute_bases, group_by_memory, statistics_bytes
    from hf_ext.models import tiny_model
    from hf_ext.targets import select_linear

    model, tokenizer = tiny_model("llama", seed=1)
    modules = select_linear(model, ["self_attn.q_proj", "mlp.down_proj"])  # 64- and 128-wide, 2 layers
    texts = ["a good film", "the plot was bad and long", "fine", "sports news of the week"]
    batches = [dict(tokenizer(texts[i : i + 2], padding=True, return_tensors="pt")) for i in (0, 2)]
    one = compute_bases(model, modules, batches, compute_dtype=torch.float64, progress=False)
    budget = statistics_bytes(modules["model.layers.0.mlp.down_proj"], torch.float64) / 2**30
    groups = group_by_memory(modules, budget * 2**30, torch.float64)
    assert [list(g) for g in groups] == [[name] for name in modules]  # one 128-wide target fits at a time
    calls = []
    last = model.model.layers[1].mlp.down_proj
    handle = last.register_forward_pre_hook(lambda *_: calls.append(1))
    grouped = compute_bases(model, modules, batches, compute_dtype=torch.float64, memory_gb=budget, progress=False)
    handle.remove()
    assert len(calls) == 2  # only the group that holds it ran it: the other passes stopped earlier
    (bases, values, counts), (grouped_bases, grouped_values, grouped_counts) = one, grouped
    assert counts == grouped_counts and bases.keys() == grouped_bases.keys()
    assert all(torch.equal(bases[k], grouped_bases[k]) and torch.equal(values[k], grouped_values[k]) for k in bases)
    with pytest.raises(ValueError, match="one-pass iterator"):
        compute_bases(model, modules, iter(batches), memory_gb=budget, progress=False)
    with pytest.raises(ValueError, match="more than the memory budget"):
        compute_bases(model, modules, batches, memory_gb=budget / 100, progress=False)
