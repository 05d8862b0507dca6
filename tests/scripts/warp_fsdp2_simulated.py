"""Rank RANK of 8, simulated in one process: torch's fake process group (collectives return at once, moving nothing),
Llama-3.1-8B built on the meta device and sharded with ``fully_shard`` per block and at the root. Checks (asserts)
the rows this rank owns of every linear layer, then, for block 0's seven linear layers with this rank's rows made
real and a rank-64 basis, the leaf weight, importance, masks and masked update: shapes, placements, values against
the local products, and the size of every collective they issue.

python warp_fsdp2_simulated.py RANK
"""

import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
from torch.testing._internal.distributed.fake_pg import FakeStore
from transformers import AutoModelForCausalLM, LlamaConfig

from hf_ext import sharding
from hf_ext.warp.arms import layout_masks
from hf_ext.warp.importance import ImportanceAccumulator
from hf_ext.warp.leaf import LeafReparameterization
from hf_ext.warp.masking import MaskedUpdate

LLAMA_31_8B = LlamaConfig(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
)
TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
TARGETS += ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
WORLD, RANK_OF_BASIS = 8, 64
CALLS = []  # (collective, numel) of every all_reduce / all_gather


def _recorded(kind: str):
    original = getattr(dist, kind)

    def record(*args, **kwargs):
        CALLS.append((kind, (args[0] if kind == "all_reduce" else args[1]).numel()))
        return original(*args, **kwargs)

    return record


def owned_rows(model, rank: int) -> None:
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n}
    assert len(linears) == 32 * 7
    for module in linears.values():
        weight = module.weight
        shape, offset = compute_local_shape_and_global_offset(weight.shape, weight.device_mesh, weight.placements)
        rows = module.out_features // WORLD
        assert sharding.row_range(weight) == (offset[0], offset[0] + shape[0]) == (rank * rows, (rank + 1) * rows)


def readers(model, rank: int) -> None:
    generator = torch.Generator().manual_seed(rank)
    names = [f"model.layers.0.{target}" for target in TARGETS]
    bases, grads = {}, {}
    for name in names:
        module = model.get_submodule(name)
        weight = module.weight
        local = torch.randn(weight.to_local().shape, generator=generator)
        real = DTensor.from_local(
            local, weight.device_mesh, weight.placements, shape=weight.shape, stride=weight.stride()
        )
        module.weight = torch.nn.Parameter(real)
        bases[name] = torch.linalg.qr(torch.randn(module.in_features, RANK_OF_BASIS, generator=generator))[0]
        grads[name] = torch.randn(local.shape, generator=generator)

    leaf = LeafReparameterization(model, bases, rank=RANK_OF_BASIS)
    for name, coefficients in leaf.coefficients.items():
        module = model.get_submodule(name)
        assert sharding.is_sharded(coefficients) and coefficients.shape == (module.out_features, RANK_OF_BASIS)
        assert coefficients.device_mesh is module.weight.device_mesh
        expected = sharding.local(module.weight) @ bases[name]
        torch.testing.assert_close(sharding.local(coefficients), expected, rtol=1e-5, atol=1e-5)
        module.weight.grad = sharding.shard_like(grads[name], module.weight)
    leaf.project_grads_()
    assert CALLS == []  # FSDP2 already reduce-scattered W.grad
    for name, coefficients in leaf.coefficients.items():
        assert model.get_submodule(name).weight.grad is None
        torch.testing.assert_close(sharding.local(coefficients.grad), grads[name] @ bases[name])

    element = ImportanceAccumulator(leaf.coefficients, granularity="element", statistic="step")
    per_direction = ImportanceAccumulator(leaf.coefficients, granularity="input", statistic="step")
    element.update()
    per_direction.update()
    assert CALLS == [("all_reduce", 1)] * 2, CALLS  # a non-finite step is skipped on every rank or on none
    CALLS.clear()
    importance = element.mean()
    assert CALLS == []  # element importance stays with its rows
    summed = per_direction.mean()
    assert CALLS == [("all_reduce", RANK_OF_BASIS)] * len(names), CALLS  # one per layer, of its directions
    for name in names:
        local_score = (grads[name] @ bases[name]).abs()
        assert sharding.is_sharded(importance[name]) and importance[name].shape[1] == RANK_OF_BASIS
        torch.testing.assert_close(sharding.local(importance[name]), local_score)
        torch.testing.assert_close(summed[name], local_score.sum(0))  # the fake group adds no other rank's rows

    CALLS.clear()
    masks, _ = layout_masks(importance, 0.1, "element/global")
    counts = [size for kind, size in CALLS if kind == "all_reduce"]
    # one each: the scores' check, the 31 bisection steps, the count above the threshold, and each layer's frozen count
    assert set(counts) == {1} and len(counts) == 1 + 31 + 1 + len(names), CALLS
    assert [size for kind, size in CALLS if kind == "all_gather"] == [len(names)]  # ties per layer, once
    masked = MaskedUpdate(leaf.coefficients, masks)
    for name in names:
        rows = model.get_submodule(name).out_features // WORLD
        assert sharding.is_sharded(masks[name]) and sharding.local(masks[name]).shape == (rows, RANK_OF_BASIS)
        assert masked.entries[name].mask.shape == (rows, RANK_OF_BASIS)


def main(rank: str) -> None:
    dist.init_process_group("fake", store=FakeStore(), rank=int(rank), world_size=WORLD)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(LLAMA_31_8B)
    for block in model.model.layers:
        fully_shard(block)
    fully_shard(model)
    owned_rows(model, int(rank))
    for kind in ("all_reduce", "all_gather"):
        setattr(dist, kind, _recorded(kind))
    readers(model, int(rank))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
