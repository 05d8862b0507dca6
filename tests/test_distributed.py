import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_ext.io import load_tensors

SCRIPTS = Path(__file__).parent / "scripts"


def torchrun(script: str, *args: str, nproc: int = 2) -> None:
    """Run a test script under torchrun on the CPU with gloo, as the README describes."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--standalone", str(SCRIPTS / script), *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.multiprocess
def test_two_process_statistics_equal_one_process(tmp_path):
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    result = subprocess.run([sys.executable, str(SCRIPTS / "input_statistics.py"), str(one)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    torchrun("input_statistics.py", str(two))
    single, meta_one = load_tensors(one)
    double, meta_two = load_tensors(two)
    assert (meta_one["world_size"], meta_two["world_size"]) == (1, 2)
    assert set(single) == set(double) and len(single) == 12  # 4 modules x (count, total, gram)
    for name in single:
        torch.testing.assert_close(double[name], single[name], atol=1e-9, rtol=1e-9)
    assert single["model.layers.0.mlp.down_proj.count"].item() > 100


def _run(script: str, *args: str) -> None:
    result = subprocess.run([sys.executable, str(SCRIPTS / script), *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _assert_same_training(reference, other):
    (ref, ref_meta), (got, got_meta) = load_tensors(reference), load_tensors(other)
    assert got_meta["losses"] == pytest.approx(ref_meta["losses"], rel=1e-4)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], atol=2e-5, rtol=1e-4, msg=name)


@pytest.mark.multiprocess
@pytest.mark.parametrize("task_type", ["seq_cls", "causal_lm"])
def test_ddp_and_gradient_accumulation_match_one_big_batch(tmp_path, task_type):
    """Same global batch of 16, three ways: the loss scale must not depend on processes or accumulation."""
    one = tmp_path / "one.safetensors"
    _run("train_steps.py", str(one), task_type, "16", "1")
    accumulated = tmp_path / "accumulated.safetensors"
    _run("train_steps.py", str(accumulated), task_type, "8", "2")
    _assert_same_training(one, accumulated)
    ddp = tmp_path / "ddp.safetensors"
    torchrun("train_steps.py", str(ddp), task_type, "8", "1")
    _assert_same_training(one, ddp)
