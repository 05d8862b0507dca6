"""``hf-ext plan``: the plans of the shipped 8B and 7B examples (models built on the meta device, nothing
downloaded), its verdicts, and one clear line for every mistake."""

from pathlib import Path

import pytest

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
    code, eight, _ = plan(capsys, CONFIGS / "warp_llama31_8b.json", "--launcher", "fsdp2", "--num-processes", "8")
    assert code == 0
    weights = [float(next(li for li in t.splitlines() if li.startswith("weights")).split()[1]) for t in (one, eight)]
    assert weights[1] == pytest.approx(weights[0] / 8, rel=1e-3)
    assert "recipes/warp.py refuses FSDP2 today" in eight


def test_lora_null_7b_calibration_does_not_fit_80_gib_and_says_what_to_change(capsys):
    code, out, _ = plan(capsys, CONFIGS / "lora_null_llama2_7b.json", "--gpu-memory", "80")
    assert code == 0
    assert "(calibration): does not fit in 80 GiB" in out
    assert "fewer lora_target_modules" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["warp_llama31_8b.json", "--launcher", "zero2", "--num-processes", "2"], "cannot run under DeepSpeed ZeRO-2"),
        (["lora_null_llama2_7b.json", "--launcher", "fsdp2", "--num-processes", "2"], "cannot run under FSDP"),
        (["warp_minilm.json", "--launcher", "fsdp2"], "with --num-processes 1 use ddp"),
        (["warp_minilm.json", "bad_key=1"], "unknown key(s) on the command line: 'bad_key'"),
        (["missing.json"], "missing.json not found"),
    ],
)
def test_mistakes_get_one_line(capsys, argv, message):
    code, out, err = plan(capsys, CONFIGS / argv[0], *argv[1:])
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1, err
