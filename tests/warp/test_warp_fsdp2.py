"""WaRP's gradient readers on FSDP2 shards: two gloo processes with ``fully_shard`` per block against one process
(tests/scripts/warp_fsdp2.py), and the refusals of what cannot run on shards."""

import pytest
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Replicate, Shard, distribute_tensor

from hf_ext import sharding
from hf_ext.io import load_tensors
from hf_ext.warp.importance import ImportanceAccumulator

LAYOUTS = ("element/global", "input/per_layer")


@pytest.mark.multiprocess
def test_fsdp2_phases_2_and_3_match_one_process(tmp_path):
    """Importance to float rounding, masks exact, phase-3 coefficients to rtol 1e-3, frozen ones bit-identical."""
    from launch_util import run_script, torchrun

    run_script("warp_fsdp2.py", str(tmp_path / "one"))
    torchrun("warp_fsdp2.py", str(tmp_path / "two"))
    one, one_meta = load_tensors(tmp_path / "one.safetensors")
    two, two_meta = load_tensors(tmp_path / "two.safetensors")
    assert one.keys() == two.keys()
    ranks = two_meta["rows"]
    assert ranks[0]["model.layers.0.mlp.up_proj"] == [0, 46] and ranks[1]["model.layers.0.mlp.up_proj"] == [46, 91]
    assert all(r0[name][1] == r1[name][0] for r0, r1 in [ranks] for name in r0)  # contiguous, rank order
    assert one_meta["frozen_unchanged"] and two_meta["frozen_unchanged"]
    names = sorted({key.split(".importance")[0] for key in one if key.endswith(".importance")})
    assert len(names) == 6
    for name in names:
        torch.testing.assert_close(two[f"{name}.importance"], one[f"{name}.importance"], rtol=1e-4, atol=1e-9)
        per_direction = two[f"{name}.input_importance"]
        torch.testing.assert_close(per_direction, one[f"{name}.input_importance"], rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(per_direction, two[f"{name}.importance"].sum(0), rtol=1e-5, atol=1e-9)
        for layout in LAYOUTS:
            mask = one[f"{name}.{layout}.mask"]
            assert torch.equal(two[f"{name}.{layout}.mask"], mask), (name, layout)
            assert 0 < int(mask.sum()) < mask.numel()
            if mask.ndim == 1:
                mask = mask.expand_as(one[f"{name}.{layout}.before"])
            for run in (one, two):
                before, after = run[f"{name}.{layout}.before"], run[f"{name}.{layout}.after"]
                assert torch.equal(after[mask], before[mask])  # frozen: bit-identical
                assert (after - before)[~mask].norm() > 0.01  # the compared coefficients moved
            torch.testing.assert_close(
                two[f"{name}.{layout}.after"], one[f"{name}.{layout}.after"], rtol=1e-3, atol=1e-6
            )


@pytest.fixture
def mesh():
    """A one-process gloo group in this process and a 1-D mesh over it (sharded tensors without torchrun)."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield init_device_mesh("cpu", (1,))
    dist.destroy_process_group()


def test_micro_batch_statistic_is_refused_on_sharded_parameters(mesh):
    param = torch.nn.Parameter(distribute_tensor(torch.ones(4, 3), mesh, [Shard(0)]))
    with pytest.raises(ValueError, match="reduce-scattered.*statistic 'step'"):
        ImportanceAccumulator({"w": param})
    assert ImportanceAccumulator({"w": param}, statistic="step").sums["w"].shape == (4, 3)


def test_layouts_other_than_rows_on_a_1d_mesh_are_refused(mesh):
    columns = distribute_tensor(torch.ones(4, 3), mesh, [Shard(1)])
    with pytest.raises(ValueError, match="sharded along dim 0 on a 1-D mesh"):
        sharding.is_sharded(columns)
    assert not sharding.is_sharded(distribute_tensor(torch.ones(4, 3), mesh, [Replicate()]))


@pytest.mark.parametrize("rank", [0, 5, 7])
def test_simulated_8_ranks_on_llama_31_8b(rank):
    """World size 8 in one process per rank (torch's fake process group; a DeviceMesh keeps the first group's
    coordinate for the life of a process, so each rank gets its own): tests/scripts/warp_fsdp2_simulated.py."""
    from launch_util import run_script

    run_script("warp_fsdp2_simulated.py", str(rank))
