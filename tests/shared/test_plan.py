"""``hf-ext plan``: the plans of the shipped 8B and 7B examples (models built on the meta device, nothing
downloaded), its verdicts, and one clear line for every mistake."""

from pathlib import Path

import pytest
from plan_util import storage_bytes

from hf_ext.cli import main as cli

CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "configs"


def plan(capsys, *argv):
    code = cli(["plan", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_warp_8b_plan_counts_the_phase1_statistics_of_its_four_down_proj_layers(capsys):
    code, out, _ = plan(capsys, CONFIGS / "warp_llama31_8b.json", "--gpu-memory", "80")
    assert code == 0
    statistics = next(line for line in out.splitlines() if line.startswith("phase-1 statistics"))
    planned = 4 * (14336 * 14336 * 12 + 14336 * 8 + 8) / 2**30
    assert statistics.split()[2] == f"{planned:.3f}"
    weights = next(line for line in out.splitlines() if line.startswith("weights"))
    assert weights.split()[1] == f"{8_030_261_248 * 2 / 2**30:.3f}"  # Llama-3.1-8B in bf16
    assert "fits in 80 GiB" in out


def test_fsdp2_divides_what_is_sharded_and_says_the_recipe_refuses_it(capsys):
    _, one, _ = plan(capsys, CONFIGS / "warp_llama31_8b.json")
    argv = ["importance_statistic=step", "--launcher", "fsdp2", "--num-processes", "8"]
    code, eight, _ = plan(capsys, CONFIGS / "warp_llama31_8b.json", *argv)
    assert code == 0
    weights = [float(next(li for li in t.splitlines() if li.startswith("weights")).split()[1]) for t in (one, eight)]
    assert weights[1] == pytest.approx(weights[0] / 8, rel=1e-3)
    assert "recipes/warp.py refuses FSDP2 today" in eight


def test_ddp_on_several_processes_adds_the_gradient_buckets(capsys):
    _, one, _ = plan(capsys, CONFIGS / "warp_minilm.json")
    _, two, _ = plan(capsys, CONFIGS / "warp_minilm.json", "--num-processes", "2")
    assert "DDP gradient buckets" not in one
    buckets = next(line for line in two.splitlines() if line.startswith("DDP gradient buckets")).split()
    gradients = next(line for line in two.splitlines() if line.startswith("gradients")).split()
    assert buckets[-1] == gradients[-1]  # the full fine-tune: a second copy of every gradient


def test_lora_null_7b_calibrates_in_groups_to_fit_80_gib_and_without_them_says_what_to_change(capsys):
    code, out, _ = plan(capsys, CONFIGS / "lora_null_llama2_7b.json", "--gpu-memory", "80")
    assert code == 0 and "(calibration): fits in 80 GiB" in out  # calib_memory_gb 40, as shipped
    statistics = float(next(line for line in out.splitlines() if line.startswith("calibration statistics")).split()[2])
    assert statistics <= 40
    code, out, _ = plan(capsys, CONFIGS / "lora_null_llama2_7b.json", "calib_memory_gb=null", "--gpu-memory", "80")
    assert code == 0
    assert "(calibration): does not fit in 80 GiB" in out
    assert "calib_memory_gb (calibrate in groups of targets that fit)" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["warp_llama31_8b.json", "--launcher", "zero2", "--num-processes", "2"], "cannot run under DeepSpeed ZeRO-2"),
        (["lora_null_llama2_7b.json", "--launcher", "fsdp2", "--num-processes", "2"], "cannot run under FSDP"),
        (["warp_minilm.json", "--launcher", "fsdp2"], "with --num-processes 1 use ddp"),
        (["warp_minilm.json", "--launcher", "fsdp2", "--num-processes", "2"], "set importance_statistic: step"),
        (["warp_minilm.json", "--num-processes", "2", "--bogus"], "'--bogus' is neither an option"),
        (["drift_minilm_sentiment.json", "--launcher", "fsdp2", "--num-processes", "2"], "drift study cannot run"),
        (["."], "is not a file"),
        (["warp_minilm.json", "bad_key=1"], "unknown key(s) on the command line: 'bad_key'"),
        (["missing.json"], "missing.json not found"),
    ],
)
def test_mistakes_get_one_line(capsys, argv, message):
    code, out, err = plan(capsys, CONFIGS / argv[0], *argv[1:])
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_a_config_of_no_recipe_names_the_recipes_it_knows(capsys, tmp_path):
    config = tmp_path / "other.json"
    config.write_text('{"colour": "blue", "size": 3, "shape": "round"}')
    code, _, err = plan(capsys, config)
    assert code == 2
    assert "is not a config of a recipe hf-ext plan knows (warp.py" in err and "drift.py" in err, err


@pytest.mark.parametrize(
    ("config", "title"),
    [
        ("finetune_tiny_llama_safety.json", "full fine-tune, tiny:llama"),  # sets no technique key
        ("warp_tiny_llama.json", "WaRP, tiny:llama"),
        ("seq_cls_tiny_qwen2_last_block.json", "selective (full), tiny:qwen2"),
    ],
)
def test_a_config_is_planned_as_the_recipe_whose_keys_it_sets(capsys, config, title):
    code, out, _ = plan(capsys, CONFIGS / config)
    assert code == 0 and out.startswith(f"memory plan: {title};")


def test_full_fine_tune_static_bytes_equal_the_allocated_ones():
    import torch

    from hf_ext import DataArguments, HfExtTrainingArguments, ModelArguments
    from hf_ext.finetune_plan import plan as finetune_plan
    from hf_ext.models import load_model, load_tokenizer
    from hf_ext.parsing import parse_config

    args = parse_config(
        (ModelArguments, DataArguments, HfExtTrainingArguments),
        [str(CONFIGS / "finetune_tiny_llama_safety.json"), "output_dir=unused", "report_to=[]"],
    )
    (stage,) = finetune_plan(args, launcher="ddp", num_processes=1).stages
    tokenizer = load_tokenizer("tiny:llama")
    model = load_model(args[0], tokenizer, None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    batch = tokenizer(["a short sentence"], return_tensors="pt")
    model(**batch, labels=batch["input_ids"]).loss.backward()
    optimizer.step()

    assert stage.bytes_of("weights") == storage_bytes(model.parameters())
    assert stage.bytes_of("gradients") == storage_bytes(p.grad for p in model.parameters())
    state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    assert stage.bytes_of("optimizer state") == storage_bytes(state)


def test_the_command_plans_host_memory_only_for_a_config_that_sets_use_cpu(capsys):
    """The command parses every config with use_cpu (a bf16 config parses without a GPU); the plans that count host
    memory still read the config's own setting."""
    config = CONFIGS / "head_plasticity_minilm_rotten_tomatoes.json"
    _, gpu, _ = plan(capsys, config)
    _, cpu, _ = plan(capsys, config, "use_cpu=true")
    assert "initial weights (rank 0, host copy)" not in gpu and "host memory, not in these totals" in gpu
    assert "initial weights (rank 0, host copy)" in cpu and "host memory, not in these totals" not in cpu
