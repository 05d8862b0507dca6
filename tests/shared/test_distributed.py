import json
import shutil
import time

import numpy as np
import pytest
import torch
from launch_util import ROOT, assert_only_rank0_writes, launch, run_path, run_script, torchrun
from safetensors.torch import load_file

from hf_ext.io import load_tensors
from hf_ext.warp.verify import verify_run


@pytest.mark.multiprocess
def test_two_process_statistics_and_bases_equal_one_process(tmp_path):
    """Each rank takes every 2nd batch: the all-reduced statistics equal one process's (float64); each rank
    decomposes every 2nd module and broadcasts it, so both ranks end with the same bases, equal to one process's
    up to the statistics' summation order."""
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    run_script("input_statistics.py", str(one))
    torchrun("input_statistics.py", str(two))
    single, meta_one = load_tensors(one)
    double, meta_two = load_tensors(two)
    assert (meta_one["world_size"], meta_two["world_size"]) == (1, 2)
    assert set(single) == set(double) and len(single) == 12  # 4 modules x (count, total, gram)
    for name in single:
        torch.testing.assert_close(double[name], single[name], atol=1e-9, rtol=1e-9)
    assert single["model.layers.0.mlp.down_proj.count"].item() > 100

    single, _ = load_tensors(tmp_path / "one.safetensors.rank0.safetensors")
    rank0, _ = load_tensors(tmp_path / "two.safetensors.rank0.safetensors")
    rank1, _ = load_tensors(tmp_path / "two.safetensors.rank1.safetensors")
    assert set(rank0) == set(single) and len(single) == 8
    for name in single:
        assert torch.equal(rank0[name], rank1[name]), name
        if name.endswith(".eigenvalues"):
            torch.testing.assert_close(rank0[name], single[name], rtol=1e-5, atol=1e-7)
        else:  # the leading directions agree, signs included
            assert (rank0[name] * single[name]).sum(0)[:3].min() > 0.999, name


def _assert_same_training(reference, other):
    (ref, ref_meta), (got, got_meta) = load_tensors(reference), load_tensors(other)
    # Summation order differs between the three ways, and SGD at lr 0.5 amplifies it; the bug this
    # guards against is a factor of 2, far outside these tolerances.
    assert got_meta["losses"] == pytest.approx(ref_meta["losses"], rel=1e-3)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], atol=1e-4, rtol=1e-3, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.multiprocess
@pytest.mark.parametrize("task_type", ["seq_cls", pytest.param("causal_lm", marks=pytest.mark.slow)])
def test_ddp_and_gradient_accumulation_match_one_big_batch(tmp_path, task_type):
    """Same global batch of 16, three ways: the loss scale must not depend on processes or accumulation."""
    one = tmp_path / "one.safetensors"
    run_script("train_steps.py", str(one), task_type, "16", "1")
    accumulated = tmp_path / "accumulated.safetensors"
    run_script("train_steps.py", str(accumulated), task_type, "8", "2")
    _assert_same_training(one, accumulated)
    ddp = tmp_path / "ddp.safetensors"
    torchrun("train_steps.py", str(ddp), task_type, "8", "1")
    _assert_same_training(one, ddp)


@pytest.mark.multiprocess
def test_two_process_warp_phases_2_and_3_match_one_process(tmp_path):
    """Same phase-1 basis, same global batch of 8: 2 ranks x 4 give the importance and masks of 1 x 8 with the
    per-step statistic (the gradient after DDP averaging; the per-micro-batch one is tested in test_warp_training).
    Then phase 3 from one phase-2 model trains C through a leaf W that DDP all-reduces (C itself is on DDP's
    ignore list): 2 ranks x 4 give the coefficients of 1 x 8, and the frozen ones stay bit-identical.

    Phase 3 runs SGD: Adam divides by the root of the second moment, so a coefficient whose gradient is float
    noise takes a full-size step of either sign, and the two launches differ there by about the learning rate
    on some machines. SGD keeps a rounding difference a rounding difference."""
    recipe, config = ROOT / "recipes" / "warp.py", ROOT / "recipes" / "configs" / "warp_tiny_llama.json"
    common = [
        "importance_statistic=step",
        "max_train_samples=64",
        "max_eval_samples=16",
        "safety_epochs=1",
        "num_train_epochs=1",
        "report_to=[]",
        "dataloader_drop_last=true",
        "warmup_steps=0",
        "mask_controls=[]",
        "arm_optim=sgd",
    ]
    one, two, three = tmp_path / "one", tmp_path / "two", tmp_path / "three"

    def launch_both(phase, single_dir, double_dir, *extra):
        run_path(recipe, config, f"output_dir={single_dir}", phase, "per_device_train_batch_size=8", *extra, *common)
        writes = tmp_path / f"writes-{phase}"
        torchrun(
            str(recipe),
            str(config),
            f"output_dir={double_dir}",
            phase,
            "per_device_train_batch_size=4",
            *extra,
            *common,
            writes=writes,
        )
        assert_only_rank0_writes(writes, double_dir)

    run_path(recipe, config, f"output_dir={one}", "phase=1", *common)
    shutil.copytree(one, two)
    launch_both("phase=2", one, two)
    for name in ("importance", "masks"):
        single, _ = load_tensors(one / "phase2" / f"{name}.safetensors")
        double, _ = load_tensors(two / "phase2" / f"{name}.safetensors")
        assert set(single) == set(double) and len(single) == 14  # 2 layers x (4 attention + 3 mlp) linears
        for key in single:
            if name == "masks":
                assert torch.equal(single[key], double[key]), key
            else:
                torch.testing.assert_close(double[key], single[key], rtol=1e-3, atol=1e-6)  # float32 over 8 steps
    meta_one = json.loads((one / "phase2" / "metadata.json").read_text())
    meta_two = json.loads((two / "phase2" / "metadata.json").read_text())
    assert meta_one["steps"] == meta_two["steps"] == 8

    shutil.copytree(one, three)
    launch_both("phase=3", one, three, "learning_rate=0.3")  # SGD moves C by lr x gradient: enough to compare
    single, _ = load_tensors(one / "phase3" / "coefficients.safetensors")
    double, _ = load_tensors(three / "phase3" / "coefficients.safetensors")
    masks, _ = load_tensors(one / "phase2" / "masks.safetensors")
    assert set(single) == set(double) == set(masks) and len(single) == 14
    for key in single:
        torch.testing.assert_close(double[key], single[key], rtol=1e-3, atol=1e-5)
        assert torch.equal(double[key][:, masks[key]], single[key][:, masks[key]])
    meta = json.loads((three / "phase3" / "metadata.json").read_text())
    assert meta["steps"] == 8 and meta["frozen_unchanged"] is True
    frozen_checks = [c for c in verify_run(three) if c.what.endswith("frozen coefficients bit-identical")]
    assert len(frozen_checks) == 14 and all(c.ok for c in frozen_checks)
    moved = [float(c.value.rsplit(" ", 1)[-1]) for c in frozen_checks]  # "... trainable moved <norm>"
    assert min(moved) > 0.01, moved  # the comparison above is of coefficients that trained


@pytest.mark.multiprocess
def test_two_process_head_study_measures_shards_and_matches_one_process(tmp_path):
    """Every rank measures its shard of the evaluation batches (none waits in a collective while another
    measures) and the gathered results equal one process's: probe, ablation, gradients, entropy, pruning."""
    from hf_ext.heads.analysis import read_jsonl

    recipe = ROOT / "recipes" / "head_plasticity.py"
    config = ROOT / "recipes" / "configs" / "head_plasticity_minilm_rotten_tomatoes.json"
    common = [
        "model_name_or_path=tiny:bert",
        "seeds=[1]",
        "eval_subset_size=40",
        "per_device_eval_batch_size=8",  # 5 batches: 3 on rank 0, 2 on rank 1
        "max_train_samples=32",
        "per_device_train_batch_size=16",  # also the probe's batches, the same in both runs
        "warmup_steps=0",
        "top_k=3",
        "log_head_importance_steps=0",
        "probe_epochs=1",
        "probe_seeds=[7]",
        "prune_step=0.25",
        "prune_random_orders=1",
        "bootstrap_samples=20",
        "report_to=[]",
    ]
    one, two = tmp_path / "one", tmp_path / "two"
    run_path(recipe, config, f"output_dir={one}", *common)
    writes = tmp_path / "writes"
    torchrun(str(recipe), str(config), f"output_dir={two}", *common, writes=writes)
    assert_only_rank0_writes(writes, two)
    single, double = one / "seed-1", two / "seed-1"
    for file, field in (
        ("I_pre.jsonl", "loss_increase"),
        ("I_pre.jsonl", "accuracy_drop"),
        ("G_pre.jsonl", "gradient"),
        ("G_pre.jsonl", "fisher"),
        ("entropy.jsonl", "entropy"),
    ):
        np.testing.assert_allclose(
            read_jsonl(double / file, field), read_jsonl(single / file, field), rtol=1e-4, atol=1e-6
        )
    probes = [json.loads((run / "probe.json").read_text()) for run in (single, double)]
    assert probes[0]["accuracy"] == probes[1]["accuracy"]
    stability = [probe["stability"]["probe_seeds"]["7"] for probe in probes]
    assert stability[0] == pytest.approx(stability[1])
    examples = [load_tensors(run / "I_post_examples.safetensors")[0]["base_example_loss"] for run in (single, double)]
    assert examples[0].shape == examples[1].shape == (40,)  # every example once, gathered from both ranks
    curves = [json.loads((run / "prune_curve.json").read_text())["curves"]["random-0"] for run in (single, double)]
    assert [row["removed"] for row in curves[0]] == [row["removed"] for row in curves[1]]
    assert (double / "heads.csv").is_file() and (double / "final" / "config.json").is_file()


# 2 processes equal 1 only without dropout: each rank draws its own dropout masks.
TINY_QWEN2 = ["model_name_or_path=tiny:qwen2", 'lora_target_modules=["q_proj","v_proj"]']
DRIFT = [
    *TINY_QWEN2,
    'methods=["full", "lora"]',
    "full_learning_rates=[0.0001]",
    "lora_learning_rates=[0.01]",
    "lora_ranks=[8]",
    "seeds=[1]",
    "eval_subset_size=16",
    "max_train_samples=64",
    "per_device_eval_batch_size=4",  # 4 dump batches: 2 per rank
    "drift_steps=2",
    "max_steps=4",
    "warmup_steps=0",
    "bootstrap_samples=20",
    "report_to=[]",
]


# Similarities near 1 are compared as drifts (1 - similarity), where a wrong gradient scale would show.
DRIFTS = {"cka", "debiased_cka", "cka_low", "cka_high", "cosine", "cosine_mean", "mean_vector_cosine"}


def _assert_same_drift(double: float, single: float, name: str, where) -> None:
    if name in DRIFTS:
        assert 1 - double == pytest.approx(1 - single, rel=1e-2, abs=1e-7), (where, name)
    else:  # percentiles, spreads, row counts, the permutation chance level
        assert double == pytest.approx(single, rel=1e-2, abs=1e-5), (where, name)


@pytest.mark.multiprocess
def test_two_process_drift_run_matches_one_process(tmp_path):
    """Same global batch of 8: the in-training drift and the drift table of 2 ranks x 4 equal 1 x 8's (drifts
    within 1%: float32 over 4 steps of a different summation order); rank 1 writes only its dump shards."""
    recipe, config = ROOT / "recipes" / "drift.py", ROOT / "recipes" / "configs" / "drift_minilm_sentiment.json"
    one, two, writes = tmp_path / "one", tmp_path / "two", tmp_path / "writes"
    run_path(recipe, config, f"output_dir={one}", "per_device_train_batch_size=8", *DRIFT)
    torchrun(str(recipe), str(config), f"output_dir={two}", "per_device_train_batch_size=4", *DRIFT, writes=writes)
    assert_only_rank0_writes(writes, two, own_files="*shard-*")
    for method in ("full-lr0.0001", "lora-r8-lr0.01"):
        single, double = (json.loads((run / "seed-1" / method / "metrics.json").read_text()) for run in (one, two))
        assert [h["step"] for h in double["in_training"]] == [h["step"] for h in single["in_training"]] == [2, 4]
        for a, b in zip(single["in_training"], double["in_training"]):
            for layer, stats in a["layers"].items():
                for name, value in stats.items():
                    _assert_same_drift(b["layers"][layer][name], value, name, (method, a["step"], layer))
    rows = [
        np.genfromtxt(run / "drift.csv", delimiter=",", names=True, dtype=None, encoding="utf-8") for run in (one, two)
    ]
    assert (
        rows[0].dtype.names == rows[1].dtype.names and len(rows[0]) == len(rows[1]) == 24
    )  # 2 arms x 2 text sets x 3 layers x 2 poolings
    for name in rows[0].dtype.names:
        if rows[0][name].dtype.kind != "f":
            assert list(rows[1][name]) == list(rows[0][name]), name
            continue
        for i, (single, double) in enumerate(zip(rows[0][name], rows[1][name])):
            if not np.isnan(single) or not np.isnan(double):
                _assert_same_drift(double, single, name, ("drift.csv row", i))
    assert 1 - rows[0]["cka"].min() > 1e-4  # training moved the representations: the comparison is not of 1 with 1


@pytest.mark.multiprocess
@pytest.mark.parametrize(
    "fail, where",
    [
        ("1:hf_ext.heads.study:_measure_gradients_and_entropy", "rank 1 measuring, rank 0 waiting in a gather"),
        ("0:hf_ext.heads.study:aggregate", "rank 0 writing the analysis, rank 1 waiting at the barrier"),
    ],
)
def test_a_rank_that_raises_stops_the_others_promptly_with_its_error(tmp_path, fail, where):
    recipe = ROOT / "recipes" / "head_plasticity.py"
    config = ROOT / "recipes" / "configs" / "head_plasticity_minilm_rotten_tomatoes.json"
    quick = ["model_name_or_path=tiny:bert", "seeds=[1]", "eval_subset_size=16", "max_train_samples=16"]
    quick += ["top_k=3", "probe_epochs=1", "prune_step=0", "bootstrap_samples=0", "warmup_steps=0", "report_to=[]"]
    start = time.monotonic()
    out, writes = tmp_path / "run", tmp_path / "writes"
    result = launch(str(recipe), str(config), f"output_dir={out}", *quick, writes=writes, fail=fail)
    elapsed = time.monotonic() - start
    rank = fail.split(":")[0]
    assert result.returncode != 0, where
    assert f"RuntimeError: injected failure on rank {rank}" in result.stderr, where
    assert elapsed < 120, f"{where}: the run took {elapsed:.0f} s to stop"  # not the 30-minute collective timeout


@pytest.mark.multiprocess
def test_two_process_lora_null_run_matches_one_process(tmp_path):
    """Same global batch of 8: the calibration (split across ranks), the verification and the trained adapter of
    2 ranks x 4 equal 1 x 8's up to summation order; only rank 0 writes."""
    recipe, config = ROOT / "recipes" / "lora_null.py", ROOT / "recipes" / "configs" / "lora_null_minilm_topic.json"
    common = [
        *TINY_QWEN2,
        "max_train_samples=64",
        "calib_samples=32",
        "verify_samples=16",
        "max_activation_samples=256",
        "eval_strategy=no",
        "max_steps=4",
        "warmup_steps=0",
        "report_to=[]",
    ]
    one, two, writes = tmp_path / "one", tmp_path / "two", tmp_path / "writes"
    run_path(recipe, config, f"output_dir={one}", "per_device_train_batch_size=8", *common)
    torchrun(str(recipe), str(config), f"output_dir={two}", "per_device_train_batch_size=4", *common, writes=writes)
    assert_only_rank0_writes(writes, two)
    for name in ("verify_init.json", "verify_trained.json"):
        single, double = (json.loads((run / name).read_text()) for run in (one, two))
        assert single["layers"].keys() == double["layers"].keys() and single["layers"], name
        for layer, metrics in single["layers"].items():
            for metric, value in metrics.items():
                if isinstance(value, float):
                    assert double["layers"][layer][metric] == pytest.approx(value, rel=1e-3, abs=1e-5), (layer, metric)
    single, double = (load_file(run / "adapter" / "adapter_model.safetensors") for run in (one, two))
    assert single.keys() == double.keys() and single
    assert max(float(single[k].abs().max()) for k in single if "lora_B" in k) > 1e-3  # B left its zero init
    for key in single:
        torch.testing.assert_close(double[key], single[key], rtol=1e-3, atol=1e-5)
