"""hf_ext.distributed without a process group (a fresh process), and its collectives in a gloo group that a script
started itself (no Trainer, so no accelerate state built beforehand)."""

import os
import subprocess
import sys
import textwrap

import pytest
from launch_util import ROOT

SINGLE = """
import os
import sys

import torch
import torch.distributed as dist

from hf_ext import distributed

env = dict(os.environ)
threads = torch.get_num_threads()
assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main_process()
distributed.barrier()
x = torch.tensor([1.0, 2.0])
distributed.all_reduce_sum_([x])
assert x.tolist() == [1.0, 2.0]
distributed.broadcast_(x, src=0)
assert x.tolist() == [1.0, 2.0]
y = torch.arange(6.0).reshape(2, 3)
assert distributed.gather_examples(y) is y and distributed.gather_examples(y, -1) is y
assert distributed.shard([1, 2, 3]) == [1, 2, 3]
distributed.release()

assert not dist.is_initialized(), "a process group was started"
assert dict(os.environ) == env, "os.environ changed"
assert torch.get_num_threads() == threads, "the thread count changed"
assert not torch.cuda.is_initialized(), "CUDA was initialised"
# accelerate's PartialState (which can start a group, set the device, edit os.environ) was never built
assert "accelerate.state" not in sys.modules or not sys.modules["accelerate.state"].PartialState._shared_state
print("ok")
"""


def test_single_process_answers_without_a_group_and_starts_none():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    result = subprocess.run([sys.executable, "-c", SINGLE], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"


GROUP = """
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from hf_ext import distributed

dist.init_process_group("gloo")  # by the script: accelerate's state is built by hf_ext.distributed, with cpu=True
rank = distributed.rank()
assert distributed.world_size() == 2 and distributed.is_main_process() == (rank == 0)
x = torch.tensor([1.0, 10.0]) * (rank + 1)
view = x[:]
distributed.all_reduce_sum_([x])
assert x.tolist() == [3.0, 30.0] and view.tolist() == [3.0, 30.0], x  # in place
b = torch.full((2,), float(rank))
distributed.broadcast_(b, src=1)
assert b.tolist() == [1.0, 1.0], b
# different lengths along dim, one rank with none
mine = torch.arange(3 * 4.0).reshape(4, 3)[:, : 3 - 3 * rank]
got = distributed.gather_examples(mine, dim=1)
assert torch.equal(got, torch.arange(3 * 4.0).reshape(4, 3)), got
assert distributed.gather_examples(torch.zeros(0, 2)).shape == (0, 2)
ints = distributed.gather_examples(torch.tensor([rank] * (rank + 1)))
assert ints.tolist() == [0, 1, 1] and ints.dtype == torch.long
distributed.barrier()
distributed.release()
assert not dist.is_initialized() and distributed.world_size() == 1
Path(sys.argv[1], f"ok{rank}").touch()  # a file per rank: two ranks' prints interleave on one pipe
"""


@pytest.mark.multiprocess
def test_collectives_in_a_gloo_group_the_script_started(tmp_path):
    script = tmp_path / "group.py"
    script.write_text(textwrap.dedent(GROUP))
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        str(script),
        str(tmp_path),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("ok*")) == ["ok0", "ok1"]
