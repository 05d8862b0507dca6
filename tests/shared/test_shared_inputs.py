"""Modules that receive the same input tensor (q/k/v, gate/up) share one set of input statistics and one
eigendecomposition; the results under each name equal those computed for each module alone."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import hf_ext.activations as activations
from hf_ext.activations import (
    InputRecorder,
    InputStatistics,
    collect_input_statistics,
    compute_bases,
    group_by_memory,
    statistics_bytes,
)
from hf_ext.models import tiny_model
from hf_ext.targets import select_linear

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
TEXTS = ["a good film", "the plot was bad and long", "fine", "sports news of the week", "how to bake bread"]


@pytest.fixture(scope="module")
def llama():
    model, tokenizer = tiny_model("llama", seed=2)
    batches = [dict(tokenizer(TEXTS[i : i + 2], padding=True, return_tensors="pt")) for i in (0, 2, 4)]
    return model, batches


def _layer(i: int, part: str) -> str:
    return f"model.layers.{i}.{part}"


def _same_statistics(a: InputStatistics, b: InputStatistics) -> bool:
    a.flush_(), b.flush_()
    return torch.equal(a.count, b.count) and torch.equal(a.total, b.total) and torch.equal(a.gram, b.gram)


def _count_calls(monkeypatch, owner, name: str) -> list:
    calls = []
    original = getattr(owner, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def test_qkv_statistics_are_recorded_once_and_equal_those_of_q_alone(llama, monkeypatch):
    model, batches = llama
    modules = select_linear(model, TARGETS)
    assert len(modules) == 12
    updates = _count_calls(monkeypatch, InputStatistics, "update")
    stats = collect_input_statistics(model, modules, batches, compute_dtype=torch.float64, progress=False)
    # per layer and batch: one update for q/k/v, one for gate/up, one for down_proj
    assert len(updates) == 2 * 3 * len(batches)
    assert list(stats) == list(modules)
    for i in range(2):
        q, k, v = (stats[_layer(i, f"self_attn.{p}_proj")] for p in "qkv")
        assert q is k is v
        assert stats[_layer(i, "mlp.gate_proj")] is stats[_layer(i, "mlp.up_proj")]
    assert len({id(s) for s in stats.values()}) == 6
    monkeypatch.undo()
    for i in range(2):
        alone = collect_input_statistics(
            model,
            select_linear(model, f"layers.{i}.self_attn.q_proj"),
            batches,
            compute_dtype=torch.float64,
            progress=False,
        )
        name = _layer(i, "self_attn.q_proj")
        assert _same_statistics(stats[name], alone[name])
        assert stats[name].count.item() == sum(b["attention_mask"].sum().item() for b in batches)


def test_modules_that_do_not_share_an_input_are_not_aliased(llama):
    model, batches = llama
    modules = select_linear(model, [*TARGETS, "self_attn.o_proj"])
    with torch.no_grad(), InputRecorder(modules, torch.float64) as recorder:
        for batch in batches:
            recorder.set_token_mask(batch["attention_mask"])
            model(**batch)
    stats = recorder.statistics
    for i in range(2):
        q = _layer(i, "self_attn.q_proj")
        assert {recorder.aliases[_layer(i, f"self_attn.{p}_proj")] for p in "qkv"} == {q}
        assert recorder.aliases[_layer(i, "mlp.up_proj")] == _layer(i, "mlp.gate_proj")
        # o_proj has q's parent and width but its own input; down_proj consumes up_proj's product
        for name in (_layer(i, "self_attn.o_proj"), _layer(i, "mlp.down_proj")):
            assert recorder.aliases[name] == name
        assert stats[_layer(i, "mlp.down_proj")] is not stats[_layer(i, "mlp.up_proj")]
        assert stats[_layer(i, "self_attn.o_proj")] is not stats[q]
        assert not _same_statistics(stats[_layer(i, "self_attn.o_proj")], stats[q])
    assert stats[_layer(0, "self_attn.q_proj")] is not stats[_layer(1, "self_attn.q_proj")]


def test_bases_are_decomposed_once_per_shared_input_and_equal_separate_runs(llama, monkeypatch):
    model, batches = llama
    modules = select_linear(model, TARGETS)
    eighs = _count_calls(monkeypatch, activations, "eigenbasis")
    bases, values, counts = compute_bases(model, modules, batches, compute_dtype=torch.float64, progress=False)
    assert len(eighs) == 6  # 2 layers x (q/k/v, gate/up, down)
    assert list(bases) == list(values) == list(counts) == list(modules)
    for i in range(2):
        q, k, v = (_layer(i, f"self_attn.{p}_proj") for p in "qkv")
        assert bases[q] is bases[k] is bases[v] and values[q] is values[k] is values[v]
        assert counts[q] == counts[k] == counts[v] > 0
    del eighs[:]
    for name, module in modules.items():
        alone = compute_bases(model, {name: module}, batches, compute_dtype=torch.float64, progress=False)
        assert torch.equal(alone[0][name], bases[name]), name
        assert torch.equal(alone[1][name], values[name]), name
        assert alone[2][name] == counts[name]
        assert bases[name].dtype == torch.float32 and bases[name].shape == (module.in_features,) * 2
    assert len(eighs) == len(modules)


def test_memory_groups_keep_shared_inputs_together_and_give_the_same_bases(llama, monkeypatch):
    model, batches = llama
    modules = select_linear(model, TARGETS)
    one = compute_bases(model, modules, batches, progress=False)
    budget = statistics_bytes(modules[_layer(0, "mlp.down_proj")])  # one 128-wide = four 64-wide statistics
    groups = group_by_memory(modules, budget)
    expected = [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["mlp.gate_proj", "mlp.up_proj"]]
    expected = [[_layer(i, p) for p in group] for i in range(2) for group in [*expected, ["mlp.down_proj"]]]
    assert [list(g) for g in groups] == expected  # q/k/v (3 units) are not split by adding gate/up after them
    eighs = _count_calls(monkeypatch, activations, "eigenbasis")
    grouped = compute_bases(model, modules, batches, memory_gb=budget / 2**30, progress=False)
    assert len(eighs) == 6
    for a, b in zip(one, grouped):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)
    # a budget smaller than q/k/v splits them: still correct, q/k and v are then decomposed separately
    qkv = select_linear(model, ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], layers=[0])
    small = 2 * statistics_bytes(qkv[_layer(0, "self_attn.q_proj")])
    assert [len(g) for g in group_by_memory(qkv, small)] == [2, 1]
    del eighs[:]
    split = compute_bases(model, qkv, batches, memory_gb=small / 2**30, progress=False)
    assert len(eighs) == 2
    for name in qkv:
        assert torch.equal(split[0][name], one[0][name]) and torch.equal(split[1][name], one[1][name])


class _Fork(nn.Module):
    """Two linear layers fed the same tensor, a copy of it, or the same tensor modified in place between them."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)
        self.mode = "share"

    def forward(self, x):
        self.a(x)
        if self.mode == "copy":
            x = x.clone()
        elif self.mode == "in-place":
            x.mul_(2)
        self.b(x)


def test_changing_sharing_is_an_error_and_in_place_changes_are_not_sharing():
    fork = _Fork()
    x = torch.randn(5, 4)
    with torch.no_grad(), InputRecorder({"a": fork.a, "b": fork.b}) as recorder:
        fork(x)
        assert recorder.statistics["a"] is recorder.statistics["b"]
        fork.mode = "copy"
        with pytest.raises(ValueError, match="b shared its input with a in an earlier forward pass but with b now"):
            fork(x)
    fork.mode = "in-place"
    with torch.no_grad(), InputRecorder({"a": fork.a, "b": fork.b}) as recorder:
        fork(x.clone())
        fork(x.clone())
    a, b = recorder.statistics["a"], recorder.statistics["b"]
    assert a is not b and recorder.aliases == {"a": "a", "b": "b"}
    torch.testing.assert_close(b.second_moment(), 4 * a.second_moment())


DDP_SCRIPT = """
import sys

import torch
import torch.distributed as dist

from hf_ext import distributed
from hf_ext.activations import compute_bases
from hf_ext.io import save_tensors
from hf_ext.models import tiny_model
from hf_ext.targets import select_linear

dist.init_process_group("gloo")
torch.set_num_threads(1)
model, tokenizer = tiny_model("llama", seed=2)
texts = ["a good film", "the plot was bad and long", "fine", "sports news of the week"]
batches = [dict(tokenizer(texts[i : i + 2], padding=True, return_tensors="pt")) for i in (0, 2)]
modules = select_linear(model, {targets!r})
# rank 1 sees no batch at all: it learns the sharing from rank 0 and still joins the same all-reduces
mine = batches if distributed.rank() == 0 else []
bases, values, counts = compute_bases(model, modules, mine, compute_dtype=torch.float64, progress=False)
q, k = "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"
assert bases[q] is bases[k], "aliases differ on rank %d" % distributed.rank()
tensors = {{f"{{n}}.U": u for n, u in bases.items()}} | {{f"{{n}}.eigenvalues": v for n, v in values.items()}}
save_tensors(f"{{sys.argv[1]}}.rank{{distributed.rank()}}.safetensors", tensors)
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.multiprocess
def test_two_ranks_agree_on_sharing_when_one_rank_saw_no_data(tmp_path, llama):
    from hf_ext.io import load_tensors

    model, _ = llama
    script = tmp_path / "shared_inputs_ddp.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(targets=TARGETS)))
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    result = subprocess.run(
        [*command, str(script), str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    rank0, _ = load_tensors(tmp_path / "two.rank0.safetensors")
    rank1, _ = load_tensors(tmp_path / "two.rank1.safetensors")
    tokenizer_batches = tiny_model("llama", seed=2)[1]
    batches = [dict(tokenizer_batches(TEXTS[i : i + 2], padding=True, return_tensors="pt")) for i in (0, 2)]
    modules = select_linear(model, TARGETS)
    bases, values, _ = compute_bases(model, modules, batches, compute_dtype=torch.float64, progress=False)
    assert set(rank0) == set(rank1) and len(rank0) == 2 * len(modules)
    for name in modules:
        assert torch.equal(rank0[f"{name}.U"], rank1[f"{name}.U"]), name
        torch.testing.assert_close(rank0[f"{name}.eigenvalues"], values[name], rtol=1e-6, atol=1e-7)
        assert (rank0[f"{name}.U"] * bases[name]).sum(0)[:3].min() > 0.999, name
